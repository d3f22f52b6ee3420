//! Sync node benchmarks, each against its baseline measured in the same run:
//!
//! 1. **latency**: commit-to-receipt latency (p50 / p99 / max over every (subscriber, change)
//!    pair) at 1,000 writes/s with 10, 100 and 1,000 subscribers on the JSON subprotocol. A
//!    writer sends one-op `write` messages through the node's own WebSocket (the realistic
//!    path: a client write goes through the session, `Store::write` and the hub wake-up),
//!    paced by `tokio::time::interval`, and puts its wall-clock send time in the entity's
//!    `properties.t_us`; each subscriber (subscribed with `from` = head) computes
//!    now - `t_us` for every change it receives (same process, same clock). The change's own
//!    `ts` (taken by the store when the write transaction starts) gives a second figure,
//!    commit-to-receipt. Baseline: the same writer and subscribers against a raw
//!    tokio-tungstenite server written below, which turns each `write` into a `changes` frame
//!    with the crate's own codec and broadcasts it (`tokio::sync::broadcast`) to per-connection
//!    tasks: the transport floor, without SQLite or the hub.
//! 2. **fanout**: deliveries per second (changes received, summed over subscribers) for a burst
//!    of changes written through the node's WebSocket in batches (one `write` of `batch` ops
//!    each, pipelined), from the first write until every subscriber has every change; 100 and
//!    1,000 subscribers. Baseline: the raw server broadcasting pre-encoded `changes` frames of
//!    the same bytes and count (one frame per written batch, encoded from the very changes the
//!    node logged) to the same number of clients. The node's run includes its ingestion of the
//!    burst (SQLite commits), which the raw server does not do; so a second run ("window")
//!    commits the burst first and then has the N connections subscribe from the seq before it,
//!    timing only the fan-out from the node's in-memory window.
//! 3. **memory**: resident memory per idle subscriber. The real `hivesync serve` binary runs as
//!    a child process; its VmRSS (and RssAnon) is read from /proc/<pid>/status before and after
//!    10,000 connections each send `hello` + `subscribe` (from = head), get `live` and idle.
//!    Baseline: the raw server, also in a child process (this program re-executed with
//!    `HIVESYNC_BENCH_RAW_CHILD=1`), with the same 10,000 idle clients: once with
//!    tokio-tungstenite's default configuration (a 128 KiB read buffer per connection, which
//!    tungstenite zero-fills, so it is resident) and once with a 4 KiB read buffer.
//! 4. **catchup**: one subscriber 1,000,000 changes behind (`from` = 0) over a database
//!    prepared with `Store::write` in batches of 10,000 small entities: changes/s delivered
//!    until it has them all. Baseline: a sequential scan of the log in the same process (one
//!    plain `SELECT ... FROM changes ORDER BY seq`, each row decoded into a `Change`) plus
//!    `encode_change_json` of every change, on one thread; the same with the crate's
//!    `query::changes_since` in pages of 1,000 (the node's batch) is printed beside it.
//!
//! Run: `cargo bench --bench node`. Environment:
//! - `HIVESYNC_BENCH_PARTS=latency,fanout,memory,catchup` (default: all four);
//! - `HIVESYNC_BENCH_SCALE=small` for a quick run (latency 10,100 subscribers for 2 s,
//!   fan-out 100 subscribers x 5,000 changes, 1,000 idle connections, catch-up 100,000);
//! - finer overrides: `HIVESYNC_BENCH_LATENCY_SUBS=10,100,1000`, `HIVESYNC_BENCH_RATE=1000`
//!   (writes/s), `HIVESYNC_BENCH_LATENCY_SECS=5`, `HIVESYNC_BENCH_FANOUT_SUBS=100,1000`,
//!   `HIVESYNC_BENCH_FANOUT_CHANGES=20000`, `HIVESYNC_BENCH_FANOUT_BATCH=100`,
//!   `HIVESYNC_BENCH_IDLE=10000`, `HIVESYNC_BENCH_CATCHUP=1000000`;
//!   `HIVESYNC_BENCH_CATCHUP_DB=/path/file.db` keeps the catch-up database there and reuses it
//!   on the next run (preparing 1,000,000 changes takes a minute or more);
//!   `HIVESYNC_BENCH_BASELINE=0` skips the raw runs of parts 1 and 2 (to profile the node alone).
//!
//! Everything runs on this machine over loopback: in parts 1, 2 and 4 the node (or the raw
//! server) runs in-process on its own 2-thread tokio runtime ("srv" threads) and the clients on
//! another ("cli" threads), so both compete for the same cores; each run prints the CPU time
//! each side used, and the CPU other processes used meanwhile (builds running beside the
//! benchmark skew wall-clock numbers). Clients read frames without decoding them fully (a
//! `changes` frame's count is last seq - `prev`, seqs being gap-free; latency scans each
//! change for `ts` and `t_us`); the first `changes` frame of every subscriber is decoded with
//! `decode_server_json` and checked. It is a measurement, not a test: nothing is asserted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/mod.rs"]
mod common;
use common::{load_average, machine_info};

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use hivesync::model::{Kind, WriteOp};
use hivesync::node::config::Config;
use hivesync::node::{NodeHandle, NodeOptions};
use hivesync::protocol::{
    changes_frame, decode_client_json, decode_server_json, encode_change_json, encode_client_json,
    encode_server_json, ClientMsg, Encoding, Frame, ServerMsg, Subscribe, PROTOCOL_VERSION,
};
use hivesync::query::{self, ChangeFilter};
use hivesync::store::{Store, StoreOptions};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::{broadcast, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Set in the environment of the re-executed raw baseline server (memory part).
const RAW_CHILD_ENV: &str = "HIVESYNC_BENCH_RAW_CHILD";
/// The raw child's read buffer size per connection, in bytes (unset: tungstenite's default).
const RAW_READ_BUF_ENV: &str = "HIVESYNC_BENCH_RAW_READ_BUF";
/// Every client uses this subscription id (the raw server broadcasts one frame to all).
const SUB: &str = "s";
/// Longest wait for any single network step during setup.
const NET_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Settings

struct Settings {
    parts: Vec<String>,
    scale: String,
    lat_subs: Vec<usize>,
    rate: u64,
    lat_secs: f64,
    fan_subs: Vec<usize>,
    fan_changes: usize,
    fan_batch: usize,
    idle: usize,
    catchup: usize,
    /// Run the raw baselines of parts 1 and 2 (off: `HIVESYNC_BENCH_BASELINE=0`, for profiling).
    baseline: bool,
}

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .split(',')
            .map(|s| s.trim().replace('_', "").parse().expect(name))
            .collect(),
        _ => default.to_vec(),
    }
}

fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .replace('_', "")
            .parse()
            .ok()
            .unwrap_or_else(|| panic!("{name}: not a number: {v}")),
        _ => default,
    }
}

impl Settings {
    fn from_env() -> Settings {
        let scale = std::env::var("HIVESYNC_BENCH_SCALE").unwrap_or_else(|_| "full".into());
        let small = scale == "small";
        let parts = std::env::var("HIVESYNC_BENCH_PARTS")
            .unwrap_or_else(|_| "latency,fanout,memory,catchup".into())
            .split(',')
            .map(|s| s.trim().to_lowercase())
            .filter(|s| !s.is_empty())
            .collect();
        Settings {
            parts,
            lat_subs: env_list(
                "HIVESYNC_BENCH_LATENCY_SUBS",
                if small { &[10, 100] } else { &[10, 100, 1000] },
            ),
            rate: env_num("HIVESYNC_BENCH_RATE", 1000),
            lat_secs: env_num("HIVESYNC_BENCH_LATENCY_SECS", if small { 2.0 } else { 5.0 }),
            fan_subs: env_list(
                "HIVESYNC_BENCH_FANOUT_SUBS",
                if small { &[100] } else { &[100, 1000] },
            ),
            fan_changes: env_num(
                "HIVESYNC_BENCH_FANOUT_CHANGES",
                if small { 5_000 } else { 20_000 },
            ),
            fan_batch: env_num("HIVESYNC_BENCH_FANOUT_BATCH", 100),
            idle: env_num("HIVESYNC_BENCH_IDLE", if small { 1_000 } else { 10_000 }),
            catchup: env_num(
                "HIVESYNC_BENCH_CATCHUP",
                if small { 100_000 } else { 1_000_000 },
            ),
            baseline: env_num("HIVESYNC_BENCH_BASELINE", 1u8) != 0,
            scale,
        }
    }

    fn has(&self, part: &str) -> bool {
        self.parts.iter().any(|p| p == part)
    }
}

// ---------------------------------------------------------------------------------------------
// Machine, clock and CPU accounting

/// Today's date (UTC), from the system clock.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// Wall-clock microseconds since the Unix epoch (what `t_us` and a change's `ts` hold).
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds used so far by this process's threads, by runtime ("srv": the node or the raw
/// server; "cli": the clients; "other": the main thread, SQLite checkpointer, file watcher),
/// and by the whole machine (busy time from /proc/stat).
#[derive(Clone, Default)]
struct Cpu {
    by: HashMap<&'static str, f64>,
    machine_busy: f64,
}

fn cpu_now(tck: f64) -> Cpu {
    let mut by = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for e in dir.flatten() {
            let Ok(s) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            let (Some(a), Some(b)) = (s.find('('), s.rfind(')')) else {
                continue;
            };
            let comm = &s[a + 1..b];
            let f: Vec<&str> = s[b + 2..].split_whitespace().collect();
            let t: f64 = f.get(11).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0)
                + f.get(12).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
            let group = if comm.starts_with("srv") {
                "srv"
            } else if comm.starts_with("cli") {
                "cli"
            } else {
                "other"
            };
            *by.entry(group).or_insert(0.0) += t / tck;
        }
    }
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    Cpu {
        by,
        machine_busy: (total - idle) / tck,
    }
}

/// CPU seconds the server runtime's threads used between two readings.
fn srv_secs(a: &Cpu, b: &Cpu) -> f64 {
    b.by.get("srv").copied().unwrap_or(0.0) - a.by.get("srv").copied().unwrap_or(0.0)
}

/// "srv 1.52 s, cli 0.80 s, other processes 0.10 s" between two readings.
fn cpu_delta(a: &Cpu, b: &Cpu) -> String {
    let g = |c: &Cpu, k: &str| c.by.get(k).copied().unwrap_or(0.0);
    let (srv, cli, oth) = (
        g(b, "srv") - g(a, "srv"),
        g(b, "cli") - g(a, "cli"),
        g(b, "other") - g(a, "other"),
    );
    let foreign = (b.machine_busy - a.machine_busy - srv - cli - oth).max(0.0);
    format!("cpu: server {srv:.2} s, clients {cli:.2} s, rest of this process {oth:.2} s, other processes {foreign:.2} s")
}

/// VmRSS and RssAnon (KiB) of a process.
fn rss_kib(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let get = |k: &str| {
        s.lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("VmRSS:"), get("RssAnon:"))
}

fn runtime(name: &'static str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        // Blocking threads live through the whole run, so their CPU time is still counted.
        .thread_keep_alive(Duration::from_secs(3600))
        .enable_all()
        .build()
        .unwrap()
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// Milliseconds, shown in seconds past 1,000.
fn ms(x: f64) -> String {
    if x >= 1000.0 {
        format!("{:.1} s", x / 1000.0)
    } else if x >= 10.0 {
        format!("{x:.1} ms")
    } else {
        format!("{x:.2} ms")
    }
}

fn si(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

// ---------------------------------------------------------------------------------------------
// Frame scanning (no full decode on the hot path)

fn parse_int(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let (neg, b) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        _ => (false, b),
    };
    let mut v: i64 = 0;
    let mut n = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            break;
        }
        v = v * 10 + i64::from(c - b'0');
        n += 1;
    }
    (n > 0).then_some(if neg { -v } else { v })
}

fn num_after(s: &str, key: &str) -> Option<i64> {
    let i = s.find(key)? + key.len();
    parse_int(&s[i..])
}

const SEQ_KEY: &str = "{\"seq\":";

/// (`prev`, last seq) of a JSON `changes` frame.
fn changes_span(t: &str) -> Option<(i64, i64)> {
    if !t.starts_with("{\"type\":\"changes\"") {
        return None;
    }
    let prev = num_after(t, "\"prev\":")?;
    let i = t.rfind(SEQ_KEY)?;
    Some((prev, num_after(&t[i..], SEQ_KEY)?))
}

/// Calls `f(ts, t_us)` for each change of a JSON `changes` frame.
fn each_change(t: &str, mut f: impl FnMut(Option<i64>, Option<i64>)) {
    let mut rest = t;
    while let Some(i) = rest.find(SEQ_KEY) {
        let body = &rest[i + SEQ_KEY.len()..];
        let end = body.find(SEQ_KEY).unwrap_or(body.len());
        let one = &body[..end];
        f(num_after(one, "\"ts\":"), num_after(one, "\"t_us\":"));
        rest = &body[end..];
    }
}

// ---------------------------------------------------------------------------------------------
// The raw baseline server: tokio-tungstenite, one task per connection, tokio::sync::broadcast.

#[derive(Clone)]
struct RawState {
    tx: broadcast::Sender<Message>,
    seq: Arc<AtomicI64>,
    lagged: Arc<AtomicU64>,
    /// tungstenite's read buffer per connection (None: its default, 128 KiB).
    read_buf: Option<usize>,
}

impl RawState {
    fn new() -> RawState {
        RawState {
            tx: broadcast::channel(65_536).0,
            seq: Arc::new(AtomicI64::new(0)),
            lagged: Arc::new(AtomicU64::new(0)),
            read_buf: None,
        }
    }
}

async fn raw_serve(listener: TcpListener, st: RawState) {
    loop {
        match listener.accept().await {
            Ok((sock, _)) => {
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = sock.set_nodelay(true);
                    raw_conn(sock, st).await;
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

async fn recv_opt(
    rx: &mut Option<broadcast::Receiver<Message>>,
) -> Result<Message, broadcast::error::RecvError> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// Turn a `write` into one `changes` frame (the crate's codec) and broadcast it; returns the
/// new head.
fn raw_publish(st: &RawState, ops: &[WriteOp]) -> i64 {
    let prev = st.seq.load(Relaxed);
    let ts = now_us();
    let parts: Vec<Vec<u8>> = ops
        .iter()
        .enumerate()
        .map(|(i, op)| {
            let data = op.data.clone().unwrap_or_default();
            let c = hivesync::model::Change {
                seq: prev + 1 + i as i64,
                tx: prev + 1,
                ts,
                ns: op.ns.clone(),
                kind: op.kind,
                op: op.op,
                id: data["id"].as_str().unwrap_or("x").to_string(),
                model: None,
                data: Some(data.to_string()),
                embedding: None,
            };
            let mut out = Vec::with_capacity(256);
            encode_change_json(&mut out, &c);
            out
        })
        .collect();
    let head = prev + ops.len() as i64;
    let frame = changes_frame(
        Encoding::Json,
        SUB,
        prev,
        parts.iter().map(|p| p.as_slice()),
    );
    st.seq.store(head, Relaxed);
    if let Frame::Text(t) = frame {
        let _ = st.tx.send(Message::Text(t.into()));
    }
    head
}

async fn raw_conn(sock: TcpStream, st: RawState) {
    let cfg = st
        .read_buf
        .map(|n| WebSocketConfig::default().read_buffer_size(n));
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(sock, cfg).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let mut rx: Option<broadcast::Receiver<Message>> = None;
    'conn: loop {
        tokio::select! {
            m = stream.next() => {
                let t = match m {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                    Some(Ok(_)) => continue,
                };
                let reply = match decode_client_json(&t) {
                    Ok(ClientMsg::Hello { .. }) => ServerMsg::Welcome {
                        protocol: PROTOCOL_VERSION,
                        node: "raw".into(),
                        head: st.seq.load(Relaxed),
                        horizon: 1,
                        publish_key: None,
                    },
                    Ok(ClientMsg::Subscribe(s)) => {
                        rx = Some(st.tx.subscribe());
                        ServerMsg::Live { sub: s.sub, seq: st.seq.load(Relaxed) }
                    }
                    Ok(ClientMsg::Write { req, ops, .. }) => ServerMsg::Written { seq: raw_publish(&st, &ops), req },
                    _ => continue,
                };
                if sink.send(Message::Text(encode_server_json(&reply).into())).await.is_err() {
                    break;
                }
            }
            r = recv_opt(&mut rx) => match r {
                Ok(m) => {
                    // Queue what is already there, then one flush (one write syscall).
                    if sink.feed(m).await.is_err() {
                        break;
                    }
                    for _ in 0..63 {
                        match rx.as_mut().map(|r| r.try_recv()) {
                            Some(Ok(m)) => {
                                if sink.feed(m).await.is_err() {
                                    break 'conn;
                                }
                            }
                            Some(Err(broadcast::error::TryRecvError::Lagged(n))) => {
                                st.lagged.fetch_add(n, Relaxed);
                            }
                            _ => break,
                        }
                    }
                    if sink.flush().await.is_err() {
                        break;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    st.lagged.fetch_add(n, Relaxed);
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    }
}

/// The raw server as a child process (memory part): print the port, serve until stdin closes.
// A child process of the bench: it ends when its parent closes its stdin.
#[allow(clippy::exit)]
fn raw_child_main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    std::thread::spawn(|| {
        let mut buf = [0u8; 64];
        while matches!(std::io::stdin().read(&mut buf), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("port {}", l.local_addr().unwrap().port());
        std::io::stdout().flush().unwrap();
        let mut st = RawState::new();
        st.read_buf = std::env::var(RAW_READ_BUF_ENV)
            .ok()
            .and_then(|v| v.parse().ok());
        raw_serve(l, st).await;
    });
}

// ---------------------------------------------------------------------------------------------
// Clients

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn ws_connect(addr: SocketAddr, read_buf: usize) -> Result<Ws, String> {
    let cfg = WebSocketConfig::default().read_buffer_size(read_buf);
    let (ws, _) = tokio::time::timeout(
        NET_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(
            format!("ws://{addr}/v1/sync"),
            Some(cfg),
            true,
        ),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| format!("connect failed: {e}"))?;
    Ok(ws)
}

async fn send_msg(ws: &mut Ws, m: &ClientMsg) -> Result<(), String> {
    ws.send(Message::Text(encode_client_json(m).into()))
        .await
        .map_err(|e| format!("send failed: {e}"))
}

async fn recv_msg(ws: &mut Ws) -> Result<ServerMsg, String> {
    loop {
        match tokio::time::timeout(NET_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                return decode_server_json(&t).map_err(|e| format!("bad frame: {e}"))
            }
            Ok(Some(Ok(Message::Close(_))) | None) => return Err("closed".into()),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(format!("read failed: {e}")),
            Err(_) => return Err("no frame within the timeout".into()),
        }
    }
}

async fn hello(ws: &mut Ws) -> Result<i64, String> {
    send_msg(
        ws,
        &ClientMsg::Hello {
            token: None,
            client: Some("bench".into()),
        },
    )
    .await?;
    match recv_msg(ws).await? {
        ServerMsg::Welcome { head, .. } => Ok(head),
        other => Err(format!("expected welcome, got {other:?}")),
    }
}

/// Connect, `hello`, `subscribe` from the head, wait for `live`; returns the socket and the
/// seq it is live at.
async fn open_subscriber(addr: SocketAddr, read_buf: usize) -> Result<(Ws, i64), String> {
    let mut ws = ws_connect(addr, read_buf).await?;
    let head = hello(&mut ws).await?;
    send_msg(
        &mut ws,
        &ClientMsg::Subscribe(Subscribe {
            sub: SUB.into(),
            from: Some(head),
            namespaces: None,
            kinds: None,
        }),
    )
    .await?;
    loop {
        match recv_msg(&mut ws).await? {
            ServerMsg::Live { seq, .. } => return Ok((ws, seq)),
            ServerMsg::Error(e) => return Err(format!("subscribe refused: {e:?}")),
            _ => {}
        }
    }
}

/// Open `n` subscribers, at most `concurrency` handshakes at a time.
async fn open_many(
    addr: SocketAddr,
    n: usize,
    read_buf: usize,
    concurrency: usize,
) -> (Vec<(Ws, i64)>, Vec<String>) {
    let sem = Arc::new(Semaphore::new(concurrency));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = sem.clone().acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let r = open_subscriber(addr, read_buf).await;
            drop(permit);
            r
        }));
    }
    let (mut ok, mut failed) = (Vec::with_capacity(n), Vec::new());
    for t in tasks {
        match t.await {
            Ok(Ok(c)) => ok.push(c),
            Ok(Err(e)) => failed.push(e),
            Err(e) => failed.push(e.to_string()),
        }
    }
    (ok, failed)
}

/// What one subscriber saw.
#[derive(Default)]
struct SubOut {
    /// now - t_us (send to receipt), µs, for measured changes.
    lat_send: Vec<u32>,
    /// now - ts (store transaction start to receipt), µs, for measured changes.
    lat_commit: Vec<u32>,
    changes: u64,
    frames: u64,
    bytes: u64,
    gaps: u64,
    bad: u64,
    done: Option<Instant>,
}

/// Read `changes` frames until `expect` changes arrived (or the deadline). With
/// `measure_from` set, record latencies of changes whose `t_us` is at least its value.
async fn subscriber(
    mut ws: Ws,
    last: i64,
    expect: u64,
    measure_from: Option<Arc<AtomicI64>>,
    deadline: tokio::time::Instant,
) -> SubOut {
    let mut o = SubOut::default();
    // One timer for the whole read loop (not one per frame: clients share the cores).
    let _ = tokio::time::timeout_at(
        deadline,
        read_changes(&mut ws, &mut o, last, expect, measure_from),
    )
    .await;
    if o.changes >= expect {
        o.done = Some(Instant::now());
    }
    o
}

async fn read_changes(
    ws: &mut Ws,
    o: &mut SubOut,
    mut last: i64,
    expect: u64,
    measure_from: Option<Arc<AtomicI64>>,
) {
    let mut checked = false;
    while o.changes < expect {
        let t = match ws.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
            _ => break,
        };
        let now = now_us();
        let Some((prev, hi)) = changes_span(&t) else {
            continue;
        };
        if !checked {
            checked = true;
            match decode_server_json(&t) {
                Ok(ServerMsg::Changes { changes, .. })
                    if changes.len() as i64 == hi - prev
                        && changes.last().map(|c| c.seq) == Some(hi) => {}
                _ => o.bad += 1,
            }
        }
        if prev != last {
            o.gaps += 1;
        }
        last = hi;
        o.frames += 1;
        o.bytes += t.len() as u64;
        o.changes += (hi - prev).max(0) as u64;
        if let Some(from) = &measure_from {
            let from = from.load(Relaxed);
            each_change(&t, |ts, t_us| {
                if let Some(t_us) = t_us.filter(|&v| v >= from) {
                    o.lat_send
                        .push((now - t_us).clamp(0, u32::MAX as i64) as u32);
                    if let Some(ts) = ts {
                        o.lat_commit
                            .push((now - ts).clamp(0, u32::MAX as i64) as u32);
                    }
                }
            });
        }
    }
}

/// What a writer's answers said.
struct WriterOut {
    ok: u64,
    errors: u64,
    /// When the last answer came.
    done: Option<Instant>,
    /// Send to `written`, µs, per write (sorted).
    rtt: Vec<u32>,
}

/// A writer connection: `hello`, then the caller's sends; a task collects the answers.
struct Writer {
    sink: futures_util::stream::SplitSink<Ws, Message>,
    /// Send time (µs) of each request, indexed by its numeric `req`.
    sent: Arc<Vec<AtomicI64>>,
    answers: tokio::task::JoinHandle<WriterOut>,
}

async fn writer(addr: SocketAddr, expect_answers: usize) -> Writer {
    let mut ws = ws_connect(addr, 64 * 1024).await.expect("writer connect");
    hello(&mut ws).await.expect("writer hello");
    let (sink, mut stream) = ws.split();
    let sent: Arc<Vec<AtomicI64>> =
        Arc::new((0..expect_answers).map(|_| AtomicI64::new(0)).collect());
    let sent2 = sent.clone();
    let answers = tokio::spawn(async move {
        let mut o = WriterOut {
            ok: 0,
            errors: 0,
            done: None,
            rtt: Vec::with_capacity(expect_answers),
        };
        while ((o.ok + o.errors) as usize) < expect_answers {
            match tokio::time::timeout(Duration::from_secs(60), stream.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => match decode_server_json(&t) {
                    Ok(ServerMsg::Written { req, .. }) => {
                        o.ok += 1;
                        if let Some(at) = req.parse::<usize>().ok().and_then(|i| sent2.get(i)) {
                            o.rtt.push(
                                (now_us() - at.load(Relaxed)).clamp(0, u32::MAX as i64) as u32
                            );
                        }
                    }
                    Ok(ServerMsg::Error(e)) => {
                        if o.errors == 0 {
                            eprintln!("  write error: {e:?}");
                        }
                        o.errors += 1;
                    }
                    _ => {}
                },
                Ok(Some(Ok(_))) => {}
                _ => break,
            }
        }
        o.done = Some(Instant::now());
        o.rtt.sort_unstable();
        o
    });
    Writer {
        sink,
        sent,
        answers,
    }
}

/// Send write number `i` (its `req` is `i`).
async fn send_write(w: &mut Writer, i: usize, ops: Vec<WriteOp>) {
    let text = encode_client_json(&ClientMsg::Write {
        req: i.to_string(),
        ops,
        client: None,
        n: None,
        entries: None,
    });
    w.sent[i].store(now_us(), Relaxed);
    w.sink
        .send(Message::Text(text.into()))
        .await
        .expect("write send");
}

// ---------------------------------------------------------------------------------------------
// Part 1: latency

struct LatRun {
    p50: f64,
    p99: f64,
    max: f64,
    c50: f64,
    c99: f64,
    got: u64,
    expected: u64,
    rate: f64,
}

impl LatRun {
    fn cell(&self, target_rate: u64) -> String {
        let lost = if self.got < self.expected {
            format!(", {} lost", self.expected - self.got)
        } else {
            String::new()
        };
        let slow = if self.rate < 0.95 * target_rate as f64 {
            format!(", writer reached {:.0}/s", self.rate)
        } else {
            String::new()
        };
        format!(
            "{} / {} / {}{lost}{slow}",
            ms(self.p50),
            ms(self.p99),
            ms(self.max)
        )
    }
}

async fn latency_run(
    label: &str,
    addr: SocketAddr,
    n: usize,
    rate: u64,
    secs: f64,
    run: usize,
    tck: f64,
) -> LatRun {
    let (conns, failed) = open_many(addr, n, 64 * 1024, 100).await;
    if !failed.is_empty() {
        println!(
            "  {label}: {} of {n} subscribers failed to open: {}",
            failed.len(),
            failed[0]
        );
    }
    let warm = (rate / 2) as usize;
    let measured = (rate as f64 * secs) as usize;
    let total = warm + measured;
    let measure_from = Arc::new(AtomicI64::new(i64::MAX));
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs + 60.0);
    let subs: Vec<_> = conns
        .into_iter()
        .map(|(ws, live)| {
            tokio::spawn(subscriber(
                ws,
                live,
                total as u64,
                Some(measure_from.clone()),
                deadline,
            ))
        })
        .collect();
    let cpu0 = cpu_now(tck);
    let mf = measure_from.clone();
    // The writer paces itself on its own thread and runtime, so that 1,000 busy subscriber
    // tasks on the client runtime cannot delay its ticks.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("cli-writer".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let r = rt.block_on(async move {
                let mut w = writer(addr, total).await;
                let mut iv = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
                let mut t_meas = Instant::now();
                for i in 0..total {
                    iv.tick().await;
                    if i == warm {
                        t_meas = Instant::now();
                        mf.store(now_us(), Relaxed);
                    }
                    let op = WriteOp::upsert(
                        Kind::Entity,
                        "default",
                        json!({"id": format!("lat{run}-{i}"), "kind": "probe", "name": "latency probe",
                               "properties": {"t_us": now_us()}}),
                    );
                    send_write(&mut w, i, vec![op]).await;
                }
                let sent = t_meas.elapsed();
                let answers = w.answers.await.unwrap();
                (measured as f64 / sent.as_secs_f64(), answers)
            });
            let _ = done_tx.send(r);
        })
        .unwrap();
    let (rate_got, wo) = done_rx.await.unwrap();
    let (ok, errors) = (wo.ok, wo.errors);
    let mut lat = Vec::new();
    let mut lat_c = Vec::new();
    let (mut got, mut gaps, mut bad, mut frames) = (0u64, 0u64, 0u64, 0u64);
    for s in subs {
        let o = s.await.unwrap();
        got += o.lat_send.len() as u64;
        gaps += o.gaps;
        bad += o.bad;
        frames += o.frames;
        lat.extend_from_slice(&o.lat_send);
        lat_c.extend_from_slice(&o.lat_commit);
    }
    let cpu1 = cpu_now(tck);
    lat.sort_unstable();
    lat_c.sort_unstable();
    let r = LatRun {
        p50: pct(&lat, 0.5),
        p99: pct(&lat, 0.99),
        max: pct(&lat, 1.0),
        c50: pct(&lat_c, 0.5),
        c99: pct(&lat_c, 0.99),
        got,
        expected: (n * measured) as u64,
        rate: rate_got,
    };
    println!(
        "  {label:<8} {n:>5} subs: send->receipt p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms; commit->receipt p50 {:.2} ms, p99 {:.2} ms; \
         {}/{} deliveries, {:.2} changes/frame, {:.0} writes/s sent, {ok} written, {errors} write errors, {gaps} gaps, {bad} bad frames",
        r.p50, r.p99, r.max, r.c50, r.c99, r.got, r.expected,
        if frames > 0 { (n * total) as f64 / frames as f64 } else { 0.0 },
        r.rate
    );
    println!(
        "           write send->written p50 {:.2} ms, p99 {:.2} ms; {}",
        pct(&wo.rtt, 0.5),
        pct(&wo.rtt, 0.99),
        cpu_delta(&cpu0, &cpu1)
    );
    r
}

// ---------------------------------------------------------------------------------------------
// Part 2: fan-out

struct FanRun {
    rate: f64,
    elapsed: f64,
    complete: usize,
}

fn fan_report(
    label: &str,
    n: usize,
    total: u64,
    t0: Instant,
    outs: &[SubOut],
    cpu: (&Cpu, &Cpu),
) -> FanRun {
    let complete = outs.iter().filter(|o| o.done.is_some()).count();
    let end = outs.iter().filter_map(|o| o.done).max().unwrap_or(t0);
    let elapsed = end.duration_since(t0).as_secs_f64();
    let delivered: u64 = outs.iter().map(|o| o.changes.min(total)).sum();
    let frames: u64 = outs.iter().map(|o| o.frames).sum();
    let bytes: u64 = outs.iter().map(|o| o.bytes).sum();
    let gaps: u64 = outs.iter().map(|o| o.gaps).sum();
    let bad: u64 = outs.iter().map(|o| o.bad).sum();
    let rate = delivered as f64 / elapsed;
    println!(
        "  {label:<8} {n:>5} subs: {} deliveries in {elapsed:.2} s = {}/s ({:.0} MB/s), {complete}/{n} complete, \
         {:.1} frames/sub, {:.0} B/change, {gaps} gaps, {bad} bad frames; server CPU {:.0} ns/delivery",
        delivered,
        si(rate),
        bytes as f64 / elapsed / 1e6,
        frames as f64 / n as f64,
        bytes as f64 / delivered.max(1) as f64,
        srv_secs(cpu.0, cpu.1) * 1e9 / delivered.max(1) as f64,
    );
    FanRun {
        rate,
        elapsed,
        complete,
    }
}

fn fanout_batches(total: usize, batch: usize, tag: &str) -> Vec<Vec<WriteOp>> {
    let desc =
        "a fan-out benchmark entity with a description of about a hundred bytes, like a short note";
    (0..total.div_ceil(batch))
        .map(|b| {
            (b * batch..((b + 1) * batch).min(total))
                .map(|i| {
                    WriteOp::upsert(
                        Kind::Entity,
                        "default",
                        json!({"id": format!("fan{tag}-{i}"), "kind": "bench", "name": format!("fan-out change {i}"),
                               "description": desc, "properties": {"i": i}}),
                    )
                })
                .collect()
        })
        .collect()
}

/// Open `n` connections that said `hello` and have not subscribed yet.
async fn open_idle(addr: SocketAddr, n: usize) -> Vec<(Ws, i64)> {
    let sem = Arc::new(Semaphore::new(100));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let permit = sem.clone().acquire_owned().await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut ws = ws_connect(addr, 128 * 1024).await.expect("connect");
            let head = hello(&mut ws).await.expect("hello");
            drop(permit);
            (ws, head)
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// hivesync, as the brief has it ("live"): `n` subscribers at the head, then a burst of `total`
/// changes in pipelined writes of `batch` ops through the node's WebSocket; timed from the
/// first write until every subscriber has every change, so the node's ingestion of the burst
/// is inside the time. With `window`, the burst is committed (and published) first and the
/// clock starts when the `n` connections subscribe from the seq before it: the node then only
/// fans out from its in-memory window. Returns the run and the seq the burst starts after.
async fn fanout_node(
    addr: SocketAddr,
    window: bool,
    n: usize,
    total: usize,
    batch: usize,
    run: usize,
    tck: f64,
) -> (FanRun, i64) {
    let label = if window { "window" } else { "hivesync" };
    let batches = fanout_batches(total, batch, &format!("{run}{label}"));
    let writes = batches.len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut w = writer(addr, writes).await;
    if window {
        let conns = open_idle(addr, n).await;
        let head0 = conns.first().map_or(0, |c| c.1);
        let t_write = Instant::now();
        for (b, ops) in batches.into_iter().enumerate() {
            send_write(&mut w, b, ops).await;
        }
        let wo = w.answers.await.unwrap();
        let wsecs = t_write.elapsed().as_secs_f64();
        // The tailer publishes within milliseconds of a commit.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cpu0 = cpu_now(tck);
        let t0 = Instant::now();
        let subs: Vec<_> = conns
            .into_iter()
            .map(|(mut ws, _)| {
                tokio::spawn(async move {
                    let sub = ClientMsg::Subscribe(Subscribe {
                        sub: SUB.into(),
                        from: Some(head0),
                        namespaces: None,
                        kinds: None,
                    });
                    if send_msg(&mut ws, &sub).await.is_err() {
                        return SubOut::default();
                    }
                    subscriber(ws, head0, total as u64, None, deadline).await
                })
            })
            .collect();
        let mut outs = Vec::with_capacity(n);
        for s in subs {
            outs.push(s.await.unwrap());
        }
        let cpu1 = cpu_now(tck);
        let r = fan_report(label, n, total as u64, t0, &outs, (&cpu0, &cpu1));
        println!(
            "           (burst of {} writes committed beforehand in {wsecs:.2} s, {} errors); {}",
            wo.ok,
            wo.errors,
            cpu_delta(&cpu0, &cpu1)
        );
        return (r, head0);
    }
    let (conns, failed) = open_many(addr, n, 128 * 1024, 100).await;
    if !failed.is_empty() {
        println!("  {} subscribers failed: {}", failed.len(), failed[0]);
    }
    let head0 = conns.first().map_or(0, |c| c.1);
    let subs: Vec<_> = conns
        .into_iter()
        .map(|(ws, live)| tokio::spawn(subscriber(ws, live, total as u64, None, deadline)))
        .collect();
    let cpu0 = cpu_now(tck);
    let t0 = Instant::now();
    for (b, ops) in batches.into_iter().enumerate() {
        send_write(&mut w, b, ops).await;
    }
    let mut outs = Vec::with_capacity(n);
    for s in subs {
        outs.push(s.await.unwrap());
    }
    let wo = w.answers.await.unwrap();
    let cpu1 = cpu_now(tck);
    let r = fan_report(label, n, total as u64, t0, &outs, (&cpu0, &cpu1));
    println!(
        "           {} writes ({} errors) committed in {:.2} s; {}",
        wo.ok,
        wo.errors,
        wo.done
            .map_or(f64::NAN, |d| d.duration_since(t0).as_secs_f64()),
        cpu_delta(&cpu0, &cpu1)
    );
    (r, head0)
}

/// The frames the node would send a subscriber that keeps up: one per logged transaction.
fn frames_from_log(store: &Store, after: i64, total: usize) -> Vec<Message> {
    let mut out = Vec::new();
    let mut cursor = after;
    let end = after + total as i64;
    while cursor < end {
        // A page of one change extends to the end of its transaction.
        let cs = store
            .changes_since(cursor, &ChangeFilter::default(), 1)
            .unwrap();
        let Some(last) = cs.last() else { break };
        let parts: Vec<Vec<u8>> = cs
            .iter()
            .map(|c| {
                let mut v = Vec::with_capacity(256);
                encode_change_json(&mut v, c);
                v
            })
            .collect();
        if let Frame::Text(t) = changes_frame(
            Encoding::Json,
            SUB,
            cursor,
            parts.iter().map(|p| p.as_slice()),
        ) {
            out.push(Message::Text(t.into()));
        }
        cursor = last.seq;
    }
    out
}

async fn fanout_raw(
    addr: SocketAddr,
    st: &RawState,
    n: usize,
    head0: i64,
    frames: Vec<Message>,
    total: usize,
    tck: f64,
) -> FanRun {
    st.seq.store(head0, Relaxed);
    let lag0 = st.lagged.load(Relaxed);
    let (conns, failed) = open_many(addr, n, 128 * 1024, 100).await;
    if !failed.is_empty() {
        println!("  {} raw subscribers failed: {}", failed.len(), failed[0]);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let subs: Vec<_> = conns
        .into_iter()
        .map(|(ws, live)| tokio::spawn(subscriber(ws, live, total as u64, None, deadline)))
        .collect();
    let cpu0 = cpu_now(tck);
    let t0 = Instant::now();
    for f in frames {
        let _ = st.tx.send(f);
    }
    let mut outs = Vec::with_capacity(n);
    for s in subs {
        outs.push(s.await.unwrap());
    }
    let cpu1 = cpu_now(tck);
    let r = fan_report("raw", n, total as u64, t0, &outs, (&cpu0, &cpu1));
    println!(
        "           {} frames lost to broadcast lag; {}",
        st.lagged.load(Relaxed) - lag0,
        cpu_delta(&cpu0, &cpu1)
    );
    r
}

// ---------------------------------------------------------------------------------------------
// Part 3: memory

/// A child process killed (and reaped) on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn http_ok(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let req = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
    buf.starts_with(b"HTTP/1.1 200")
}

fn spawn_node_child(db: &Path, log: &Path) -> (ChildGuard, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let logf = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hivesync"));
    for v in [
        "HIVESYNC_DB",
        "HIVESYNC_LISTEN",
        "HIVESYNC_CONFIG",
        "HIVESYNC_TOKEN",
        "HIVESYNC_WEB",
        "RUST_LOG",
    ] {
        cmd.env_remove(v);
    }
    cmd.arg("--db")
        .arg(db)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf);
    (ChildGuard(cmd.spawn().expect("spawn hivesync serve")), port)
}

fn spawn_raw_child(read_buf: Option<usize>) -> (ChildGuard, u16) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env_remove(RAW_READ_BUF_ENV);
    if let Some(n) = read_buf {
        cmd.env(RAW_READ_BUF_ENV, n.to_string());
    }
    let mut child = cmd
        .env(RAW_CHILD_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn raw server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("port ")
        .and_then(|p| p.parse().ok())
        .expect("raw child port");
    (ChildGuard(child), port)
}

struct MemRun {
    per_sub: f64,
    per_sub_anon: f64,
    live: usize,
}

async fn memory_run(label: &str, pid: u32, port: u16, n: usize, tck: f64, http: bool) -> MemRun {
    let deadline = Instant::now() + Duration::from_secs(30);
    // The node answers /healthz once up; the raw child is up once it printed its port.
    while http && !http_ok(port).await {
        assert!(Instant::now() < deadline, "{label} did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Let start-up settle, then measure.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss0, anon0) = rss_kib(pid);
    let cpu0 = cpu_now(tck);
    let t0 = Instant::now();
    // Idle clients keep small read buffers: their memory is not what is measured.
    let (conns, failed) = open_many(addr, n, 4096, 200).await;
    let open_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss1, anon1) = rss_kib(pid);
    let cpu1 = cpu_now(tck);
    let live = conns.len();
    let r = MemRun {
        per_sub: (rss1 as f64 - rss0 as f64) * 1024.0 / n as f64,
        per_sub_anon: (anon1 as f64 - anon0 as f64) * 1024.0 / n as f64,
        live,
    };
    println!(
        "  {label:<8} {n} idle subscribers ({live} live, {} failed{}) opened in {open_s:.1} s: VmRSS {rss0} -> {rss1} KiB, RssAnon {anon0} -> {anon1} KiB: \
         {:.1} KiB ({:.1} KiB anon) per subscriber",
        failed.len(),
        failed.first().map(|e| format!(": {e}")).unwrap_or_default(),
        r.per_sub / 1024.0,
        r.per_sub_anon / 1024.0,
    );
    println!("           {}", cpu_delta(&cpu0, &cpu1));
    drop(conns);
    r
}

// ---------------------------------------------------------------------------------------------
// Part 4: catch-up

fn prepare_catchup(store: &Store, n: usize) {
    const BATCH: usize = 10_000;
    let t0 = Instant::now();
    // A reused database (HIVESYNC_BENCH_CATCHUP_DB) continues where it stopped.
    let start = store.head().unwrap().max(0) as usize;
    if start >= n {
        println!("  reusing a prepared database: {start} changes already logged");
        return;
    }
    let mut done = start;
    while done < n {
        let end = (done + BATCH).min(n);
        let ops: Vec<WriteOp> = (done..end)
            .map(|i| {
                WriteOp::upsert(
                    Kind::Entity,
                    "default",
                    json!({"id": format!("c{i}"), "name": format!("catch-up entity {i}")}),
                )
            })
            .collect();
        store.write(&ops).unwrap();
        done = end;
        if done.is_multiple_of((n / 10).max(BATCH)) || done == n {
            println!(
                "  preparing: {done}/{n} changes written ({:.0}/s)",
                (done - start) as f64 / t0.elapsed().as_secs_f64()
            );
        }
    }
}

/// Baseline: one plain `SELECT ... FROM changes ORDER BY seq` over the whole log, each row
/// decoded into a `Change` and encoded with `encode_change_json`. Returns (changes, seconds,
/// encoded bytes).
fn catchup_scan(store: &Store) -> (usize, f64, usize) {
    let t0 = Instant::now();
    let (n, bytes) = store
        .read(|c| {
            let mut stmt = c.prepare(
                "SELECT seq, tx, ts, ns, kind, op, id, model, data, embedding FROM changes ORDER BY seq",
            )?;
            let mut rows = stmt.query([])?;
            let (mut n, mut bytes) = (0usize, 0usize);
            let mut buf = Vec::with_capacity(1024);
            while let Some(r) = rows.next()? {
                let kind: String = r.get(4)?;
                let op: String = r.get(5)?;
                let emb: Option<Vec<u8>> = r.get(9)?;
                let ch = hivesync::model::Change {
                    seq: r.get(0)?,
                    tx: r.get(1)?,
                    ts: r.get(2)?,
                    ns: r.get(3)?,
                    kind: kind.parse().expect("kind"),
                    op: op.parse().expect("op"),
                    id: r.get(6)?,
                    model: r.get(7)?,
                    data: r.get(8)?,
                    embedding: emb.and_then(|b| hivesync::model::blob_to_embedding(&b)),
                };
                buf.clear();
                encode_change_json(&mut buf, &ch);
                bytes += buf.len();
                n += 1;
            }
            Ok((n, bytes))
        })
        .unwrap();
    (n, t0.elapsed().as_secs_f64(), bytes)
}

/// For comparison: the crate's own `query::changes_since` in pages of 1,000 (the node's batch)
/// plus `encode_change_json`, one thread.
fn catchup_pages(store: &Store) -> (usize, f64) {
    let t0 = Instant::now();
    let n = store
        .read(|c| {
            let (mut after, mut n) = (0i64, 0usize);
            let mut buf = Vec::with_capacity(1024);
            loop {
                let cs = query::changes_since(c, after, &ChangeFilter::default(), 1000)?;
                let Some(last) = cs.last() else { break };
                after = last.seq;
                n += cs.len();
                for ch in &cs {
                    buf.clear();
                    encode_change_json(&mut buf, ch);
                }
            }
            Ok(n)
        })
        .unwrap();
    (n, t0.elapsed().as_secs_f64())
}

async fn catchup_node(addr: SocketAddr, head: i64) -> (u64, f64, u64, u64, bool) {
    let mut ws = ws_connect(addr, 128 * 1024).await.expect("connect");
    hello(&mut ws).await.expect("hello");
    let t0 = Instant::now();
    send_msg(
        &mut ws,
        &ClientMsg::Subscribe(Subscribe {
            sub: SUB.into(),
            from: Some(0),
            namespaces: None,
            kinds: None,
        }),
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let o = subscriber(ws, 0, head as u64, None, deadline).await;
    let secs = o
        .done
        .unwrap_or_else(Instant::now)
        .duration_since(t0)
        .as_secs_f64();
    (o.changes, secs, o.frames, o.gaps + o.bad, o.done.is_some())
}

// ---------------------------------------------------------------------------------------------
// Node start-up

fn serve_args() -> NodeOptions {
    NodeOptions {
        upstream: None,
        poll_ms: None,
        ..Default::default()
    }
}

fn start_node(srv: &Runtime, store: Arc<Store>) -> NodeHandle {
    srv.block_on(async move {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        hivesync::node::start(store, l, Config::default(), None, &serve_args())
            .await
            .expect("node start")
    })
}

fn start_raw(srv: &Runtime) -> (SocketAddr, RawState, tokio::task::JoinHandle<()>) {
    let st = RawState::new();
    let st2 = st.clone();
    let (addr, task) = srv.block_on(async move {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        (addr, tokio::spawn(raw_serve(l, st2)))
    });
    (addr, st, task)
}

// ---------------------------------------------------------------------------------------------

struct Row {
    what: String,
    node: String,
    base: String,
    ratio: String,
    goal: String,
}

fn print_table(rows: &[Row]) {
    let head = Row {
        what: "measurement".into(),
        node: "hivesync".into(),
        base: "baseline".into(),
        ratio: "ratio".into(),
        goal: "goal".into(),
    };
    let all: Vec<&Row> = std::iter::once(&head).chain(rows).collect();
    let w = |f: &dyn Fn(&Row) -> &String| all.iter().map(|r| f(r).len()).max().unwrap_or(0);
    let (a, b, c, d) = (
        w(&|r| &r.what),
        w(&|r| &r.node),
        w(&|r| &r.base),
        w(&|r| &r.ratio),
    );
    for (i, r) in all.iter().enumerate() {
        println!(
            "| {:<a$} | {:>b$} | {:>c$} | {:>d$} | {} |",
            r.what, r.node, r.base, r.ratio, r.goal
        );
        if i == 0 {
            println!(
                "|{}|{}|{}|{}|{}|",
                "-".repeat(a + 2),
                "-".repeat(b + 1) + ":",
                "-".repeat(c + 1) + ":",
                "-".repeat(d + 1) + ":",
                "-".repeat(w(&|r| &r.goal) + 2)
            );
        }
    }
}

fn main() {
    if std::env::var_os(RAW_CHILD_ENV).is_some() {
        raw_child_main();
        return;
    }
    let s = Settings::from_env();
    let tck = clock_ticks();
    let started = Instant::now();
    let header = format!(
        "hivesync sync node benchmark: {} | {} | scale {} | load average at start {}",
        machine_info(),
        utc_now(),
        s.scale,
        load_average()
    );
    println!("{header}");
    let srv = runtime("srv");
    let cli = runtime("cli");
    let mut rows: Vec<Row> = Vec::new();

    if s.has("latency") || s.has("fanout") {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(Store::open(dir.path().join("node.db"), StoreOptions::default()).unwrap());
        let node = start_node(&srv, store.clone());
        let naddr = node.addr;
        let (raddr, raw, raw_task) = start_raw(&srv);

        if s.has("latency") {
            println!(
                "\n[1] latency: {} writes/s, one op per write through the node's WebSocket, {:.0} s measured after 0.5 s warm-up",
                s.rate, s.lat_secs
            );
            for (run, &n) in s.lat_subs.iter().enumerate() {
                let h = cli.block_on(latency_run(
                    "hivesync", naddr, n, s.rate, s.lat_secs, run, tck,
                ));
                std::thread::sleep(Duration::from_millis(300));
                let r = s.baseline.then(|| {
                    let r =
                        cli.block_on(latency_run("raw", raddr, n, s.rate, s.lat_secs, run, tck));
                    std::thread::sleep(Duration::from_millis(300));
                    r
                });
                rows.push(Row {
                    what: format!("latency p50/p99/max, {n} subs @ {}/s", s.rate),
                    node: h.cell(s.rate),
                    base: r.as_ref().map_or("skipped".into(), |r| r.cell(s.rate)),
                    ratio: r
                        .as_ref()
                        .map_or(String::new(), |r| format!("{:.1}x p99", h.p99 / r.p99)),
                    goal: if n >= 1000 {
                        "p99 <= 5 ms".into()
                    } else {
                        String::new()
                    },
                });
            }
        }
        if s.has("fanout") {
            println!(
                "\n[2] fan-out: {} changes written in batches of {} (pipelined writes through the node's WebSocket; \"window\": committed first, then all subscribe from before it)",
                s.fan_changes, s.fan_batch
            );
            for (run, &n) in s.fan_subs.iter().enumerate() {
                let (h, head0) = cli.block_on(fanout_node(
                    naddr,
                    false,
                    n,
                    s.fan_changes,
                    s.fan_batch,
                    run,
                    tck,
                ));
                std::thread::sleep(Duration::from_millis(300));
                let (d, _) = cli.block_on(fanout_node(
                    naddr,
                    true,
                    n,
                    s.fan_changes,
                    s.fan_batch,
                    run,
                    tck,
                ));
                std::thread::sleep(Duration::from_millis(300));
                let cell = |f: &FanRun| {
                    format!(
                        "{}/s ({:.2} s){}",
                        si(f.rate),
                        f.elapsed,
                        if f.complete < n {
                            format!(" {} incomplete", n - f.complete)
                        } else {
                            String::new()
                        }
                    )
                };
                let r = if s.baseline {
                    let frames = frames_from_log(&store, head0, s.fan_changes);
                    let r = cli.block_on(fanout_raw(
                        raddr,
                        &raw,
                        n,
                        head0,
                        frames,
                        s.fan_changes,
                        tck,
                    ));
                    std::thread::sleep(Duration::from_millis(300));
                    Some(r)
                } else {
                    None
                };
                let base = r.as_ref().map_or("skipped".into(), cell);
                let ratio = |x: &FanRun| {
                    r.as_ref()
                        .map_or(String::new(), |r| format!("{:.2}x", x.rate / r.rate))
                };
                rows.push(Row {
                    what: format!("fan-out deliveries/s, {n} subs x {} changes", s.fan_changes),
                    node: cell(&h),
                    base: base.clone(),
                    ratio: ratio(&h),
                    goal: ">= 0.5x".into(),
                });
                rows.push(Row {
                    what: "  same, burst committed first: fan-out from the window only".into(),
                    node: cell(&d),
                    base,
                    ratio: ratio(&d),
                    goal: String::new(),
                });
            }
        }
        raw_task.abort();
        srv.block_on(node.stop());
        drop(store);
    }

    if s.has("memory") {
        println!(
            "\n[3] memory: {} idle subscribers (hello + subscribe from head, got live), servers in child processes",
            s.idle
        );
        let dir = tempfile::tempdir().unwrap();
        let (node, nport) =
            spawn_node_child(&dir.path().join("mem.db"), &dir.path().join("node.log"));
        let h = cli.block_on(memory_run(
            "hivesync",
            node.0.id(),
            nport,
            s.idle,
            tck,
            true,
        ));
        drop(node);
        std::thread::sleep(Duration::from_millis(500));
        let (raw, rport) = spawn_raw_child(None);
        let r = cli.block_on(memory_run("raw", raw.0.id(), rport, s.idle, tck, false));
        drop(raw);
        std::thread::sleep(Duration::from_millis(500));
        let (raw, rport) = spawn_raw_child(Some(4096));
        let r4 = cli.block_on(memory_run(
            "raw 4KiB",
            raw.0.id(),
            rport,
            s.idle,
            tck,
            false,
        ));
        drop(raw);
        let cell = |m: &MemRun| {
            format!(
                "{:.1} KiB ({:.1} anon){}",
                m.per_sub / 1024.0,
                m.per_sub_anon / 1024.0,
                if m.live < s.idle {
                    format!(", only {} live", m.live)
                } else {
                    format!(", all {} live", m.live)
                }
            )
        };
        rows.push(Row {
            what: format!("RSS per idle subscriber, {} connections", s.idle),
            node: cell(&h),
            base: cell(&r),
            ratio: format!("{:.2}x", h.per_sub / r.per_sub),
            goal: "<= 16 KiB".into(),
        });
        rows.push(Row {
            what: "  baseline with a 4 KiB read buffer per connection".into(),
            node: String::new(),
            base: cell(&r4),
            ratio: format!("{:.2}x", h.per_sub / r4.per_sub),
            goal: String::new(),
        });
    }

    if s.has("catchup") {
        println!(
            "\n[4] catch-up: one subscriber {} changes behind",
            s.catchup
        );
        let dir = tempfile::tempdir().unwrap();
        let db = std::env::var_os("HIVESYNC_BENCH_CATCHUP_DB")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| dir.path().join("catchup.db"));
        let store = Arc::new(Store::open(&db, StoreOptions::default()).unwrap());
        prepare_catchup(&store, s.catchup);
        let head = store.head().unwrap();
        let cpu0 = cpu_now(tck);
        let (bn, bsecs, bbytes) = catchup_scan(&store);
        let cpu1 = cpu_now(tck);
        let brate = bn as f64 / bsecs;
        println!(
            "  baseline: {bn} changes read (one SELECT over changes ORDER BY seq) and encoded ({:.0} B/change) in {bsecs:.2} s = {}/s; {}",
            bbytes as f64 / bn.max(1) as f64,
            si(brate),
            cpu_delta(&cpu0, &cpu1)
        );
        let (pn, psecs) = catchup_pages(&store);
        println!(
            "  for comparison: {pn} changes read with query::changes_since in pages of 1,000 and encoded in {psecs:.2} s = {}/s",
            si(pn as f64 / psecs)
        );
        let node = start_node(&srv, store.clone());
        let cpu0 = cpu_now(tck);
        let naddr = node.addr;
        let (got, secs, frames, problems, complete) = cli
            .block_on(async move { tokio::spawn(catchup_node(naddr, head)).await })
            .unwrap();
        let cpu1 = cpu_now(tck);
        let nrate = got as f64 / secs;
        println!(
            "  hivesync: {got}/{head} changes in {secs:.2} s = {}/s, {frames} frames, {problems} gaps/bad frames{}; {}",
            si(nrate),
            if complete { "" } else { ", INCOMPLETE" },
            cpu_delta(&cpu0, &cpu1)
        );
        srv.block_on(node.stop());
        rows.push(Row {
            what: format!("catch-up changes/s, {} behind", s.catchup),
            node: format!("{}/s ({secs:.2} s)", si(nrate)),
            base: format!("{}/s ({bsecs:.2} s)", si(brate)),
            ratio: format!("{:.2}x", nrate / brate),
            goal: ">= 0.5x".into(),
        });
    }

    println!("\n{header}");
    println!(
        "finished in {:.0} s, load average at end {}\n",
        started.elapsed().as_secs_f64(),
        load_average()
    );
    print_table(&rows);
    println!(
        "\nlatency: send->receipt over every (subscriber, change) pair; baseline = raw tokio-tungstenite broadcast server, same clients.\n\
         fan-out baseline: raw server broadcasting the same pre-encoded frames; memory baseline: raw server in a child process;\n\
         catch-up baseline: one SELECT over the log ORDER BY seq + encode_change_json, one thread. No assertion on speed."
    );
    // Keep the runtimes alive until everything above is done.
    drop(cli);
    drop(srv);
}
