//! `hivesync watch`: follow a node's feed and print each change as a JSON line, resuming after
//! a disconnect from the last seq printed, so nothing repeats and nothing is skipped. A thin
//! shell over [`ClientSession`], which decides what is fatal (a refused token, a URL that is
//! no feed) and how long to wait before reconnecting.

use std::collections::VecDeque;
use std::io::Write;
use std::time::{Duration, Instant};

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use anyhow::Result;
use hivesync::node::dial;
use hivesync::protocol::client::{ClientAction, ClientConfig, ClientSession};
use hivesync::protocol::{self, SUBPROTOCOL_JSON};

/// What `hivesync watch` follows and how it prints.
#[derive(Clone, Debug, Default)]
pub(crate) struct WatchOptions {
    /// The node's feed, e.g. ws://127.0.0.1:7070/v1/sync.
    pub(crate) url: String,
    /// Last seq already seen (0: everything in the log); None: a snapshot of current state first.
    pub(crate) from: Option<i64>,
    /// Only these namespaces (empty: every readable one).
    pub(crate) ns: Vec<String>,
    /// The token sent in `hello`.
    pub(crate) token: Option<String>,
    /// Print JSON lines (else a short line per change).
    pub(crate) json: bool,
    /// Exit once caught up (after `live`) instead of following.
    pub(crate) until_live: bool,
}

/// Run the watcher until interrupted (or until live, with `--until-live`).
pub(crate) fn watch_blocking(args: WatchOptions) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(watch(args))
}

fn print(
    args: &WatchOptions,
    out: &mut impl Write,
    c: &hivesync::model::Change,
) -> std::io::Result<()> {
    if args.json {
        let mut b = Vec::new();
        protocol::encode_change_json(&mut b, c);
        out.write_all(&b)?;
        out.write_all(b"\n")
    } else {
        let data = c.data.as_deref().unwrap_or("");
        writeln!(
            out,
            "#{} {} {} {}/{} {}",
            c.seq,
            c.op.as_str(),
            c.kind,
            c.ns,
            c.id,
            data
        )
    }
}

/// How a connection ended.
enum End {
    /// Connect again after this delay.
    Retry(Duration),
    /// Stop: done (interrupted, `--until-live`, stdout closed) or failed for good.
    Stop(Result<()>),
}

/// The I/O shell over the client session: the socket, the clock, stdout.
async fn watch(args: WatchOptions) -> Result<()> {
    let start = Instant::now();
    let mut session = ClientSession::new(ClientConfig {
        client: "hivesync-watch".into(),
        token: args.token.clone(),
        sub: "watch".into(),
        from: args.from,
        namespaces: (!args.ns.is_empty()).then(|| args.ns.clone()),
        kinds: None,
        seed: dial::jitter_seed(),
    });
    loop {
        let actions = match dial::dial(&args.url, SUBPROTOCOL_JSON).await {
            Ok(ws) => {
                let mut acts = VecDeque::from(session.connected());
                let end = connection(&args, &mut session, ws, &mut acts, start).await;
                match end {
                    End::Stop(r) => return r,
                    End::Retry(after) => {
                        if interrupted_during(after).await {
                            return Ok(());
                        }
                        continue;
                    }
                }
            }
            Err(f) => session.connect_failed(f, dial::millis_since(start)),
        };
        let mut acts = VecDeque::from(actions);
        match run(&args, &mut session, None, &mut acts, start).await {
            Some(End::Stop(r)) => return r,
            Some(End::Retry(after)) if interrupted_during(after).await => return Ok(()),
            Some(End::Retry(_)) | None => {}
        }
    }
}

/// Wait `after` before connecting again; true when interrupted (Ctrl-C) meanwhile.
async fn interrupted_during(after: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(after) => false,
        _ = tokio::signal::ctrl_c() => true,
    }
}

async fn connection(
    args: &WatchOptions,
    session: &mut ClientSession,
    ws: dial::Ws,
    acts: &mut VecDeque<ClientAction>,
    start: Instant,
) -> End {
    let (mut tx, mut rx) = ws.split();
    loop {
        if let Some(end) = run(args, session, Some(&mut tx), acts, start).await {
            return end;
        }
        let now = || dial::millis_since(start);
        let more = tokio::select! {
            m = rx.next() => match m {
                Some(Ok(Message::Text(t))) => match protocol::decode_server_json(&t) {
                    Ok(m) => session.frame(m, now()),
                    Err(e) => session.undecodable(&e.to_string()),
                },
                Some(Ok(Message::Close(f))) => session.disconnected(
                    &format!("the node closed the connection: {}", f.map(|f| f.reason.to_string()).unwrap_or_default()),
                    now(),
                ),
                Some(Ok(_)) => continue,
                Some(Err(e)) => session.disconnected(&e.to_string(), now()),
                None => session.disconnected("connection ended", now()),
            },
            _ = tokio::signal::ctrl_c() => return End::Stop(Ok(())),
        };
        acts.extend(more);
    }
}

/// Carry out the session's actions, feeding back what applying them produced.
async fn run(
    args: &WatchOptions,
    session: &mut ClientSession,
    mut tx: Option<&mut SplitSink<dial::Ws, Message>>,
    acts: &mut VecDeque<ClientAction>,
    start: Instant,
) -> Option<End> {
    let mut stdout = std::io::stdout().lock();
    while let Some(a) = acts.pop_front() {
        match a {
            ClientAction::Send(m) => {
                let frame = Message::Text(protocol::encode_client_json(&m).into());
                if let Some(tx) = tx.as_deref_mut() {
                    if let Err(e) = tx.send(frame).await {
                        acts.extend(
                            session.disconnected(&e.to_string(), dial::millis_since(start)),
                        );
                    }
                }
            }
            ClientAction::SnapshotRows(rows) => {
                for r in &rows {
                    if print(args, &mut stdout, r).is_err() {
                        return Some(End::Stop(Ok(())));
                    }
                }
            }
            ClientAction::SnapshotFinish { at } => acts.extend(session.applied(at)),
            ClientAction::Apply { changes, .. } => {
                for c in &changes {
                    if print(args, &mut stdout, c).is_err() {
                        return Some(End::Stop(Ok(())));
                    }
                }
                let _ = stdout.flush();
                if let Some(last) = changes.last() {
                    acts.extend(session.applied(last.seq));
                }
            }
            ClientAction::Live { seq } => {
                eprintln!("live at seq {seq}");
                if args.until_live {
                    let _ = stdout.flush();
                    return Some(End::Stop(Ok(())));
                }
            }
            // watch writes nothing, keeps no state of its own, and reads no external feed.
            ClientAction::SnapshotBegin { .. }
            | ClientAction::SnapshotAbort
            | ClientAction::Resolve { .. }
            | ClientAction::Reject { .. }
            | ClientAction::OpenExternal
            | ClientAction::LeaveExternal { .. }
            | ClientAction::NodeHead { .. } => {}
            ClientAction::Welcome {
                node,
                head,
                from,
                snapshot,
                ..
            } => {
                eprintln!(
                    "following {node} (head {head}) from {}",
                    match (from, snapshot) {
                        (Some(c), false) => format!("seq {c}"),
                        (Some(c), true) => format!(
                            "a snapshot (the node's log no longer holds the changes after seq {c})"
                        ),
                        (None, _) => "a snapshot".into(),
                    }
                );
            }
            ClientAction::NodeError(e) => {
                eprintln!("the node said {}: {}", e.code.as_str(), e.message)
            }
            ClientAction::Reconnect { after, why } => {
                let _ = stdout.flush();
                eprintln!(
                    "disconnected ({why}); reconnecting in {after:?} from {}",
                    session
                        .cursor()
                        .map_or("a snapshot".into(), |c| format!("seq {c}"))
                );
                return Some(End::Retry(after));
            }
            ClientAction::Fatal(e) => {
                let _ = stdout.flush();
                return Some(End::Stop(Err(e.into())));
            }
        }
    }
    None
}
