//! Shared helpers for the end-to-end tests: a real `hivesync serve` subprocess on a free port
//! over a real database file, a WebSocket test client speaking the crate's own codecs, and a
//! feed tracker that checks ordering and `prev` continuity.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hivesync::model::{Change, Kind, WriteOp};
use hivesync::protocol::{
    decode_server_bin, decode_server_json, encode_client_bin, encode_client_json, ClientMsg,
    Encoding, ErrorCode, ErrorMsg, ServerMsg, Subscribe,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single network wait may take before the test fails.
pub const NET_TIMEOUT: Duration = Duration::from_secs(10);

/// The `hivesync` binary under test: this build's, or `HIVESYNC_BIN` (a release build, for
/// measurements such as the hardening tests' memory figures).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("HIVESYNC_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_hivesync").into())
    })
}

/// A `hivesync` command with no configuration leaking in from the environment.
pub fn command() -> Command {
    let mut c = Command::new(bin());
    for v in [
        "HIVESYNC_DB",
        "HIVESYNC_LISTEN",
        "HIVESYNC_CONFIG",
        "HIVESYNC_TOKEN",
        "RUST_LOG",
    ] {
        c.env_remove(v);
    }
    c
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Options for [`Node::start`].
#[derive(Default)]
pub struct NodeOpts {
    /// Contents of a TOML config file passed with `--config`.
    pub config: Option<String>,
    /// Extra `serve` arguments.
    pub args: Vec<String>,
    /// Extra environment variables for the process.
    pub env: Vec<(String, String)>,
}

/// A running `hivesync serve` process with its own temporary directory; killed on drop.
pub struct Node {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// The database file.
    pub db: PathBuf,
    log: PathBuf,
    /// The temporary directory (removed on drop).
    pub dir: tempfile::TempDir,
    config: Option<PathBuf>,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Node {
    /// Start a node over a fresh database in a fresh temporary directory.
    pub async fn start() -> Node {
        Self::start_with(NodeOpts::default()).await
    }

    /// Start a node with options.
    pub async fn start_with(opts: NodeOpts) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("x.db");
        Self::start_in(dir, db, opts).await
    }

    /// Start a node over `db` inside `dir` (the database may already exist).
    pub async fn start_in(mut dir: tempfile::TempDir, db: PathBuf, opts: NodeOpts) -> Node {
        let log = dir.path().join("node.log");
        let config = opts.config.as_ref().map(|text| {
            let p = dir.path().join("hivesync.toml");
            std::fs::write(&p, text).unwrap();
            p
        });
        // The port is free when picked, but another process may take it before the node binds
        // it: retry with a new port when the node exits saying so.
        for attempt in 0.. {
            let port = free_port();
            // From here on the node owns the child: a panic below kills it.
            let mut node = Node {
                child: None,
                port,
                db: db.clone(),
                log: log.clone(),
                dir,
                config: config.clone(),
                args: opts.args.clone(),
                env: opts.env.clone(),
            };
            if node.spawn_and_wait(attempt < 2).await {
                return node;
            }
            // Take the directory back (the node holds no child any more) and try another port.
            dir = std::mem::replace(&mut node.dir, tempfile::tempdir().unwrap());
        }
        unreachable!("the loop above returns or panics")
    }

    /// Start the process on `self.port` and wait for `/healthz`; false when it exited because
    /// the port was taken (and `may_fail`).
    async fn spawn_and_wait(&mut self, may_fail: bool) -> bool {
        let mut cmd = command();
        cmd.arg("--db").arg(&self.db).args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", self.port),
        ]);
        if let Some(p) = &self.config {
            cmd.arg("--config").arg(p);
        }
        cmd.args(&self.args);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.env("RUST_LOG", "info,hivesync=debug");
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        cmd.stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        self.child = Some(cmd.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = self.child.as_mut().unwrap().try_wait() {
                self.child = None;
                let text = self.log_text();
                assert!(
                    may_fail && text.contains("cannot listen"),
                    "node exited early with {st}:\n{text}"
                );
                return false;
            }
            if let Some((200, _)) = http_get(self.port, "/healthz").await {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "node did not answer /healthz within 20 s:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Kill the process (SIGKILL); [`Node::start_again`] brings it back.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start the killed process again on the same port, database and options.
    pub async fn start_again(&mut self) {
        // The port can stay busy for a moment after the kill.
        for _ in 0..50 {
            if self.spawn_and_wait(true).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("could not restart the node on port {}", self.port);
    }

    /// Kill the process (SIGKILL) and start it again on the same port, database and options.
    pub async fn restart(&mut self) {
        self.kill();
        self.start_again().await;
    }

    /// The feed URL.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/v1/sync", self.port)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Replace the config file's text (the node reloads it once it settles), atomically.
    pub fn rewrite_config(&self, text: &str) {
        let p = self
            .config
            .as_ref()
            .expect("the node was started with a config");
        let tmp = p.with_extension("toml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, p).unwrap();
    }

    /// The node's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait (polling) for the process to exit, at most `d`.
    pub fn wait_exit(&mut self, d: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + d;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `GET path` over plain HTTP/1.1: (status, body), or None when the node does not answer.
    pub async fn try_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path).await
    }

    /// `/healthz` as JSON; panics unless the node answers 200.
    pub async fn health(&self) -> Value {
        let (status, body) = self
            .try_get("/healthz")
            .await
            .expect("/healthz did not answer");
        assert_eq!(status, 200, "/healthz: {body}");
        serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("/healthz body {body:?}: {e}"))
    }

    /// The log head, from `/healthz`.
    pub async fn head(&self) -> i64 {
        self.health().await["head"].as_i64().unwrap()
    }

    /// Run a CLI command against this node's database file.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli(&self.db, args)
    }

    /// `hivesync put <kind> <json> --ns <ns> --json`; returns the seq written.
    pub fn cli_put(&self, kind: &str, ns: &str, data: &Value) -> i64 {
        let out = self.cli(&["--json", "put", kind, &data.to_string(), "--ns", ns]);
        assert!(
            out.status.success(),
            "put failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["seq"].as_i64().unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- node log (port {}) ----\n{}---- end of node log ----",
                self.port,
                self.log_text()
            );
        }
    }
}

/// `GET path` on 127.0.0.1:`port` over plain HTTP/1.1: (status, body), or None when nothing
/// answers within 5 s.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let status: u16 = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .ok()
        .flatten()
}

/// Run `hivesync --db <db> args...` to completion (bounded: 30 s).
pub fn cli(db: &Path, args: &[&str]) -> Output {
    let mut child = command()
        .arg("--db")
        .arg(db)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hivesync {args:?} did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// An entity upsert op.
pub fn entity(ns: &str, id: &str, name: &str) -> WriteOp {
    WriteOp::upsert(
        Kind::Entity,
        ns,
        serde_json::json!({"id": id, "kind": "thing", "name": name}),
    )
}

/// What arrived on a connection.
#[derive(Debug)]
pub enum Event {
    /// A decoded message.
    Msg(ServerMsg),
    /// A close frame (or the end of the stream: None).
    Closed(Option<CloseFrame>),
    /// A read error (connection reset...).
    Failed(String),
}

/// A WebSocket client speaking the crate's codecs.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
    pub enc: Encoding,
}

impl Client {
    /// Connect offering no subprotocol (the node defaults to JSON).
    pub async fn connect(url: &str) -> Client {
        Self::connect_enc(url, None).await
    }

    /// Connect offering `enc`'s subprotocol.
    pub async fn connect_enc(url: &str, enc: Option<Encoding>) -> Client {
        let mut req = url.into_client_request().unwrap();
        if let Some(e) = enc {
            req.headers_mut()
                .insert("Sec-WebSocket-Protocol", e.name().parse().unwrap());
        }
        let (ws, resp) = tokio::time::timeout(
            NET_TIMEOUT,
            tokio_tungstenite::connect_async_with_config(
                req,
                Some(hivesync::node::client_ws_config()),
                true,
            ),
        )
        .await
        .expect("connect timed out")
        .expect("connect failed");
        if let Some(e) = enc {
            let got = resp
                .headers()
                .get("Sec-WebSocket-Protocol")
                .map(|v| v.to_str().unwrap().to_string());
            assert_eq!(got.as_deref(), Some(e.name()), "negotiated subprotocol");
        }
        Client {
            ws,
            enc: enc.unwrap_or(Encoding::Json),
        }
    }

    /// Send a message in this connection's encoding.
    pub async fn send(&mut self, m: &ClientMsg) {
        let frame = match self.enc {
            Encoding::Json | Encoding::JsonB64 => Message::Text(encode_client_json(m).into()),
            Encoding::Bin => Message::Binary(encode_client_bin(m).into()),
        };
        self.send_raw(frame).await;
    }

    /// Send a raw frame.
    pub async fn send_raw(&mut self, m: Message) {
        tokio::time::timeout(NET_TIMEOUT, self.ws.send(m))
            .await
            .expect("send timed out")
            .expect("send failed");
    }

    /// The next event (messages, close, error), skipping pings and pongs.
    pub async fn next_event(&mut self) -> Event {
        self.next_event_within(NET_TIMEOUT)
            .await
            .expect("no frame from the node within the timeout")
    }

    /// The next event, or None after `d` without one.
    pub async fn next_event_within(&mut self, d: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            return Some(match m {
                None => Event::Closed(None),
                Some(Ok(Message::Text(t))) => {
                    assert!(self.enc.is_json(), "text frame on a binary connection: {t}");
                    Event::Msg(
                        decode_server_json(&t)
                            .unwrap_or_else(|e| panic!("undecodable frame {t}: {e}")),
                    )
                }
                Some(Ok(Message::Binary(b))) => {
                    assert_eq!(self.enc, Encoding::Bin, "binary frame on a JSON connection");
                    Event::Msg(
                        decode_server_bin(&b)
                            .unwrap_or_else(|e| panic!("undecodable binary frame: {e}")),
                    )
                }
                Some(Ok(Message::Close(f))) => Event::Closed(f),
                Some(Ok(_)) => continue,
                Some(Err(e)) => Event::Failed(e.to_string()),
            });
        }
    }

    /// The next message; panics on close or timeout.
    pub async fn recv(&mut self) -> ServerMsg {
        match self.next_event().await {
            Event::Msg(m) => m,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// The next message, expected to be an error.
    pub async fn recv_error(&mut self) -> ErrorMsg {
        match self.recv().await {
            ServerMsg::Error(e) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// Wait until the connection is closed (close frame, end of stream or reset), skipping
    /// messages; returns the close frame if one came.
    pub async fn expect_closed(&mut self) -> Option<CloseFrame> {
        loop {
            match self.next_event().await {
                Event::Msg(_) => {}
                Event::Closed(f) => return f,
                Event::Failed(_) => return None,
            }
        }
    }

    /// `hello`; returns (head, horizon) from `welcome`.
    pub async fn hello(&mut self, token: Option<&str>) -> (i64, i64) {
        self.send(&ClientMsg::Hello {
            token: token.map(str::to_string),
            client: Some("e2e-test".into()),
        })
        .await;
        match self.recv().await {
            ServerMsg::Welcome {
                protocol,
                head,
                horizon,
                ..
            } => {
                assert_eq!(protocol, hivesync::protocol::PROTOCOL_VERSION);
                (head, horizon)
            }
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// `subscribe` (no answer awaited).
    pub async fn subscribe(
        &mut self,
        sub: &str,
        from: Option<i64>,
        namespaces: Option<Vec<String>>,
    ) {
        self.send(&ClientMsg::Subscribe(Subscribe {
            sub: sub.into(),
            from,
            namespaces,
            kinds: None,
        }))
        .await;
    }

    /// `write` (no answer awaited).
    pub async fn send_write(&mut self, req: &str, ops: Vec<WriteOp>) {
        self.send(&ClientMsg::Write {
            req: req.into(),
            ops,
            client: None,
            n: None,
            entries: None,
        })
        .await;
    }

    /// `write` and wait for its `written` (skipping feed messages, which are returned too);
    /// returns the seq.
    pub async fn write(&mut self, req: &str, ops: Vec<WriteOp>) -> i64 {
        self.send_write(req, ops).await;
        loop {
            match self.recv().await {
                ServerMsg::Written { req: r, seq } if r == req => return seq,
                ServerMsg::Error(e) => panic!("write {req} failed: {e:?}"),
                ServerMsg::Changes { .. } | ServerMsg::Live { .. } | ServerMsg::Snapshot { .. } => {
                }
                other => panic!("unexpected answer to write {req}: {other:?}"),
            }
        }
    }
}

/// Follows one subscription's feed and checks the contract as messages arrive: `changes`
/// batches continue from the last seq seen (`prev`), seqs ascend, and a snapshot's rows all
/// carry its `at`.
#[derive(Default, Debug)]
pub struct Feed {
    /// Last seq seen (snapshot `at` or the last change).
    pub last: Option<i64>,
    /// Every change received, in order.
    pub changes: Vec<Change>,
    /// Snapshot rows received.
    pub snapshot: Vec<Change>,
    /// True once the snapshot's last chunk arrived.
    pub snapshot_done: bool,
    /// Snapshot chunks received.
    pub snapshot_chunks: usize,
    /// `live` seqs received.
    pub live: Vec<i64>,
    /// Batches received.
    pub batches: usize,
    /// The tx of the last change of the previous batch.
    pub last_tx: Option<i64>,
}

impl Feed {
    /// A feed resuming after `from`.
    pub fn from(from: i64) -> Feed {
        Feed {
            last: Some(from),
            ..Default::default()
        }
    }

    /// Account one message for subscription `sub`; returns false for messages of other kinds
    /// (written, welcome...) which the caller may want to look at.
    pub fn take(&mut self, sub: &str, m: &ServerMsg) -> bool {
        match m {
            ServerMsg::Snapshot {
                sub: s,
                at,
                rows,
                done,
            } if s == sub => {
                assert!(!self.snapshot_done, "snapshot chunk after the last one");
                assert!(
                    self.last.is_none() || self.last == Some(*at),
                    "snapshot chunks disagree on `at`"
                );
                for r in rows {
                    assert_eq!(r.seq, *at, "snapshot row seq is the snapshot's `at`");
                }
                self.snapshot.extend(rows.iter().cloned());
                self.snapshot_chunks += 1;
                self.last = Some(*at);
                self.snapshot_done = *done;
                true
            }
            ServerMsg::Changes {
                sub: s,
                prev,
                changes,
            } if s == sub => {
                assert!(!changes.is_empty(), "empty changes batch");
                assert_eq!(
                    Some(*prev),
                    self.last,
                    "batch prev must equal the last seq seen (gap or overlap)"
                );
                let mut last = *prev;
                for c in changes {
                    assert!(c.seq > last, "seqs must ascend: {} after {last}", c.seq);
                    last = c.seq;
                }
                if let (Some(t), Some(first)) = (self.last_tx, changes.first()) {
                    assert_ne!(t, first.tx, "a transaction was split across batches");
                }
                self.last_tx = changes.last().map(|c| c.tx);
                self.changes.extend(changes.iter().cloned());
                self.last = Some(last);
                self.batches += 1;
                true
            }
            ServerMsg::Live { sub: s, seq } if s == sub => {
                if let Some(l) = self.last {
                    assert!(*seq >= l, "live at {seq} before the last seq seen {l}");
                }
                self.live.push(*seq);
                true
            }
            ServerMsg::Error(e) if e.sub.as_deref() == Some(sub) => {
                panic!("subscription {sub} failed: {e:?}")
            }
            _ => false,
        }
    }

    /// Seqs of the changes received.
    pub fn seqs(&self) -> Vec<i64> {
        self.changes.iter().map(|c| c.seq).collect()
    }

    /// Read from `c` until `done(self)` holds; every message is checked by [`Feed::take`];
    /// other messages are handed to `other`.
    pub async fn read_until(
        &mut self,
        c: &mut Client,
        sub: &str,
        mut done: impl FnMut(&Feed) -> bool,
    ) {
        while !done(self) {
            let m = c.recv().await;
            if !self.take(sub, &m) {
                match m {
                    ServerMsg::Written { .. } => {}
                    other => panic!("unexpected message on subscription {sub}: {other:?}"),
                }
            }
        }
    }
}

/// Check `holds` every 50 ms until it is true; after `within`, fail with `what()` (a message
/// that says what never happened, with whatever helps to see why).
pub async fn eventually<F, Fut>(within: Duration, mut holds: F, what: impl Fn() -> String)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !holds().await {
        assert!(tokio::time::Instant::now() < deadline, "{}", what());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The JSON row image of a change.
pub fn data(c: &Change) -> Value {
    serde_json::from_str(c.data.as_deref().expect("an upsert carries its row")).unwrap()
}

/// Assert an error's code.
pub fn assert_code(e: &ErrorMsg, code: ErrorCode) {
    assert_eq!(e.code, code, "error {e:?}");
}

/// Anonymous resident memory of a process (heap and stacks: what buffering costs, without the
/// database pages SQLite maps), in MiB.
pub fn rss_mib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

/// A client that says hello anonymously, sends `subscribes` (JSON texts), and never reads:
/// its socket's receive buffer is tiny, so the node's frames back up at once.
pub async fn non_reader(
    node: &Node,
    subscribes: impl IntoIterator<Item = String>,
) -> WebSocketStream<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock
        .connect(format!("127.0.0.1:{}", node.port).parse().unwrap())
        .await
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(node.url().as_str(), tcp)
        .await
        .unwrap();
    ws.send(Message::Text(r#"{"type":"hello"}"#.into()))
        .await
        .unwrap();
    for m in subscribes {
        ws.send(Message::Text(m.into())).await.unwrap();
    }
    ws
}

/// Apply `node`'s log to the replica `db` in batches of `batch` changes, up to seq `upto` (all:
/// None), never splitting a transaction (the node does not either).
pub fn feed_replica(
    node: &hivesync::store::Store,
    db: &hivesync::rusqlite::Connection,
    batch: usize,
    upto: Option<i64>,
) {
    use hivesync::query::ChangeFilter;
    loop {
        let prev = hivesync::apply::applied_seq(db).unwrap();
        let mut changes = node
            .changes_since(prev, &ChangeFilter::default(), batch)
            .unwrap();
        if let Some(u) = upto {
            changes.retain(|c| c.seq <= u);
        }
        if let Some(last) = changes.last().map(|c| c.tx) {
            let more = node
                .changes_since(prev, &ChangeFilter::default(), batch + 10_000)
                .unwrap();
            if more.len() > changes.len() && more[changes.len()].tx == last {
                changes = more.into_iter().take_while(|c| c.tx <= last).collect();
            }
        }
        if changes.is_empty() {
            return;
        }
        hivesync::apply::apply_changes(db, prev, &changes).unwrap();
    }
}
