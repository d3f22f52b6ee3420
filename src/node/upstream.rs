//! Edge mode (`serve --upstream URL`): this node is a native replica of another node. A
//! dedicated thread subscribes to the upstream feed over the same protocol (binary), applies
//! snapshots and change batches to the local file (idempotent, gap-checked, upstream seqs
//! kept), and wakes the local hub so this node's own subscribers get them. Writes this node
//! receives are forwarded upstream and answered with the upstream's `written` or `error`.
//!
//! The protocol decisions (resume cursor, gaps, acks, what is fatal, backoff) are the client
//! session's ([`ClientSession`]); this file is its I/O shell: the socket, the store, the hub.
//! A refused token (or any fatal error) stops the link: `/healthz` reports it as the upstream's
//! error, and the node keeps serving its copy until restarted with a working token.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::SplitStream;
use futures_util::{FutureExt, SinkExt, StreamExt};
use parking_lot::MutexGuard;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::dial;
use super::hub::{EncodedChange, Hub};
use crate::apply;
use crate::error::Error;
use crate::model::{Change, WriteOp};
use crate::protocol::client::{self, ClientAction, ClientConfig, ClientSession, WriteId};
use crate::protocol::{self, ErrorMsg, ServerMsg, SUBPROTOCOL_BIN};
use crate::query::{self, ChangeFilter};
use crate::store::Store;

/// Most changes applied in one transaction when frames queue up behind each other.
const COALESCE_MAX: usize = 8192;

/// A write to forward, with where to send the answer.
pub(crate) struct Forward {
    pub(crate) ops: Vec<WriteOp>,
    /// Who sent it, for an exactly-once upload: passed on, so the primary's ledger decides.
    pub(crate) origin: Option<crate::model::Origin>,
    pub(crate) reply: oneshot::Sender<Result<i64, ErrorMsg>>,
}

/// What the local node sees of the upstream link.
#[derive(Default, Debug)]
pub struct UpstreamState {
    /// Connected and subscribed.
    pub connected: AtomicBool,
    /// Caught up with the upstream (after its `live`).
    pub live: AtomicBool,
    /// Last upstream seq applied locally.
    pub applied: AtomicI64,
    /// Change frames applied.
    pub frames: AtomicU64,
    /// Transactions they were applied in.
    pub applies: AtomicU64,
    /// Why the link is down, while it is (for `/healthz`).
    pub down: parking_lot::Mutex<Option<String>>,
}

/// The handle the local node keeps.
pub(crate) struct Upstream {
    pub(crate) forward: mpsc::Sender<Forward>,
    pub(crate) state: Arc<UpstreamState>,
}

/// Start following `url` on a thread of its own.
pub(crate) fn start(
    url: String,
    token: Option<String>,
    store: Arc<Store>,
    hub: Arc<Hub>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<Upstream> {
    let (tx, rx) = mpsc::channel(256);
    let state = Arc::new(UpstreamState::default());
    let st = state.clone();
    std::thread::Builder::new()
        .name("hivesync-upstream".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the upstream client");
                    return;
                }
            };
            rt.block_on(follow(url, token, store, hub, rx, st, shutdown));
        })?;
    Ok(Upstream { forward: tx, state })
}

/// How a connection (or an attempt) ended.
enum End {
    /// Connect again after this delay.
    Retry(Duration),
    /// Shut down, or stopped for good.
    Stop,
}

/// The link's state across connections: the client session and the shell's own bookkeeping.
struct Link {
    url: String,
    session: ClientSession,
    store: Arc<Store>,
    hub: Arc<Hub>,
    state: Arc<UpstreamState>,
    /// Where each forwarded write's answer goes, by the id the session knows it by.
    replies: HashMap<WriteId, oneshot::Sender<Result<i64, ErrorMsg>>>,
    next_id: WriteId,
    start: Instant,
}

async fn follow(
    url: String,
    token: Option<String>,
    store: Arc<Store>,
    hub: Arc<Hub>,
    mut forwards: mpsc::Receiver<Forward>,
    state: Arc<UpstreamState>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Resume after what the file holds; an empty file starts with a snapshot.
    let from = match store.read(|c| Ok((apply::applied_seq(c)?, query::head(c)?))) {
        Ok((applied, head)) => (applied > 0 || head > 0).then_some(applied),
        Err(e) => {
            tracing::error!(error = %e, "cannot read this edge's position; not following upstream");
            *state.down.lock() = Some(format!("stopped: cannot read this edge's position: {e}"));
            return;
        }
    };
    let mut link = Link {
        session: ClientSession::new(ClientConfig {
            client: "hivesync-edge".into(),
            token,
            sub: "edge".into(),
            from,
            namespaces: None,
            kinds: None,
            seed: dial::jitter_seed(),
        }),
        url,
        store,
        hub,
        state,
        replies: HashMap::new(),
        next_id: 0,
        start: Instant::now(),
    };
    loop {
        let end = tokio::select! {
            r = dial::dial(&link.url, SUBPROTOCOL_BIN) => match r {
                Ok(ws) => {
                    let store = link.store.clone();
                    let hello = link.session.connected();
                    connection(&mut link, &store, ws, hello, &mut forwards, &mut shutdown).await
                }
                Err(f) => {
                    let now = link.now();
                    let acts = link.session.connect_failed(f, now);
                    link.after_connection(acts)
                }
            },
            _ = shutdown.changed() => End::Stop,
        };
        link.state.connected.store(false, Relaxed);
        link.state.live.store(false, Relaxed);
        match end {
            End::Stop => return,
            End::Retry(after) => {
                let until = tokio::time::sleep(after);
                tokio::pin!(until);
                // Forwarded writes are refused while disconnected (by the session), not queued
                // blindly.
                loop {
                    tokio::select! {
                        _ = &mut until => break,
                        _ = shutdown.changed() => return,
                        Some(f) = forwards.recv() => {
                            let acts = link.forward(f);
                            link.after_connection(acts);
                        }
                    }
                }
            }
        }
    }
}

impl Link {
    fn now(&self) -> u64 {
        dial::millis_since(self.start)
    }

    /// Hand a forwarded write to the session.
    fn forward(&mut self, f: Forward) -> Vec<ClientAction> {
        self.next_id += 1;
        self.replies.insert(self.next_id, f.reply);
        self.session.write(self.next_id, f.ops, f.origin)
    }

    /// Carry out what the session decided with no connection open: answer writes, and say
    /// whether (and when) to connect again.
    fn after_connection(&mut self, acts: Vec<ClientAction>) -> End {
        let mut end = End::Retry(client::BACKOFF_FIRST);
        for a in acts {
            match a {
                ClientAction::Resolve { .. } | ClientAction::Reject { .. } => self.answer(a),
                ClientAction::Reconnect { after, why } => {
                    tracing::warn!(upstream = %self.url, "upstream link down ({why}); retrying in {after:?}");
                    *self.state.down.lock() = Some(why);
                    end = End::Retry(after);
                }
                ClientAction::Fatal(e) => {
                    tracing::error!(upstream = %self.url, "stopped following the upstream: {e}; fix it (for a refused token: --upstream-token-file) and restart this node");
                    *self.state.down.lock() = Some(format!("stopped: {e}"));
                    end = End::Stop;
                }
                _ => {}
            }
        }
        end
    }

    /// Answer a forwarded write.
    fn answer(&mut self, a: ClientAction) {
        let (id, res) = match a {
            ClientAction::Resolve { id, seq } => (id, Ok(seq)),
            ClientAction::Reject { id, error } => (id, Err(error)),
            _ => return,
        };
        if let Some(r) = self.replies.remove(&id) {
            let _ = r.send(res);
        }
    }

    /// Apply a batch the session handed out (with the batches already read behind it), publish
    /// it, and tell the session. Returns what the session said, plus the actions of read-ahead
    /// frames that were not changes, to carry out next.
    fn apply(&mut self, prev: i64, mut changes: Vec<Change>, rx: &mut Rx) -> Vec<ClientAction> {
        // Change frames that have already arrived behind this one go into the same
        // transaction: one commit for all of them, so a backlog (after a stall of this thread
        // or of the machine) clears in one step instead of one commit per frame.
        let mut later = Vec::new();
        let mut frames = 1;
        while changes.len() < COALESCE_MAX && later.is_empty() {
            let Some(msg) = rx.next().now_or_never() else {
                break;
            };
            for a in self.input(msg) {
                match a {
                    ClientAction::Apply { changes: more, .. } if later.is_empty() => {
                        changes.extend(more);
                        frames += 1;
                    }
                    other => later.push(other),
                }
            }
        }
        let mut out = match self.store.apply_changes(prev, &changes) {
            Ok(o) => {
                self.state.applied.store(o.seq, Relaxed);
                self.state.frames.fetch_add(frames, Relaxed);
                self.state.applies.fetch_add(1, Relaxed);
                // Publish what was just committed, as received: the rows in the log are these
                // very changes, so the tailer's re-read of them (a wake-up, a blocking read, an
                // encode) is skipped on the hop's critical path.
                self.hub.publish(
                    changes
                        .iter()
                        .map(|c| Arc::new(EncodedChange::new(c)))
                        .collect(),
                );
                self.session.applied(o.seq)
            }
            Err(Error::Cursor(why)) => {
                let now = self.now();
                self.session.apply_failed(&why, now)
            }
            Err(e) => {
                let now = self.now();
                self.session.apply_failed(&e.to_string(), now)
            }
        };
        out.extend(later);
        out
    }

    /// A message (or the end) of the socket, as session input.
    fn input(&mut self, msg: Option<Result<Message, WsError>>) -> Vec<ClientAction> {
        let now = self.now();
        match msg {
            Some(Ok(Message::Binary(b))) => match protocol::decode_server_bin(&b) {
                Ok(m) => {
                    let welcome = matches!(m, ServerMsg::Welcome { .. });
                    let acts = self.session.frame(m, now);
                    if welcome && !self.session.stopped() {
                        self.state.connected.store(true, Relaxed);
                        *self.state.down.lock() = None;
                        tracing::info!(upstream = %self.url, from = ?self.session.cursor(), "following upstream");
                    }
                    acts
                }
                Err(e) => self.session.undecodable(&e.to_string()),
            },
            Some(Ok(Message::Close(_))) | None => self
                .session
                .disconnected("upstream closed the connection", now),
            Some(Ok(_)) => vec![],
            Some(Err(e)) => self.session.disconnected(&e.to_string(), now),
        }
    }
}

type Rx = SplitStream<dial::Ws>;

/// One connection: carry out the session's actions, feed it the socket's frames and the
/// writes to forward, until it says to reconnect or stop.
async fn connection<'s>(
    link: &mut Link,
    store: &'s Store,
    ws: dial::Ws,
    hello: Vec<ClientAction>,
    forwards: &mut mpsc::Receiver<Forward>,
    shutdown: &mut watch::Receiver<bool>,
) -> End {
    let (mut tx, mut rx) = ws.split();
    // An open snapshot holds the writer (and its transaction) until its last chunk.
    let mut snapshot: Option<MutexGuard<'s, rusqlite::Connection>> = None;
    let mut queue = VecDeque::from(hello);
    let end = 'conn: loop {
        while let Some(a) = queue.pop_front() {
            match a {
                ClientAction::Send(m) => {
                    let frame = Message::Binary(protocol::encode_client_bin(&m).into());
                    if let Err(e) = tx.send(frame).await {
                        let now = link.now();
                        queue.extend(link.session.disconnected(&e.to_string(), now));
                    }
                }
                ClientAction::SnapshotBegin { .. } => {
                    let begun = store.pool().writer().and_then(|conn| {
                        apply::snapshot_begin(&conn, &ChangeFilter::default())?;
                        Ok(conn)
                    });
                    match begun {
                        Ok(conn) => snapshot = Some(conn),
                        Err(e) => {
                            let now = link.now();
                            queue.extend(link.session.apply_failed(&e.to_string(), now));
                        }
                    }
                }
                ClientAction::SnapshotRows(rows) => {
                    if let Some(conn) = snapshot.as_deref() {
                        if let Err(e) = apply::snapshot_rows(conn, &rows) {
                            let now = link.now();
                            queue.extend(
                                link.session
                                    .apply_failed(&format!("snapshot rejected: {e}"), now),
                            );
                        }
                    }
                }
                ClientAction::SnapshotFinish { at } => {
                    let res = match snapshot.take() {
                        Some(conn) => apply::snapshot_finish(&conn, at),
                        None => Err(Error::invalid("no snapshot open")),
                    };
                    match res {
                        Ok(()) => {
                            link.state.applied.store(at, Relaxed);
                            link.hub.reset(at);
                            link.hub.wake();
                            queue.extend(link.session.applied(at));
                        }
                        Err(e) => {
                            let now = link.now();
                            queue.extend(link.session.apply_failed(&e.to_string(), now));
                        }
                    }
                }
                ClientAction::SnapshotAbort => {
                    if let Some(conn) = snapshot.take() {
                        apply::snapshot_abort(&conn);
                    }
                }
                ClientAction::Apply { prev, changes } => {
                    queue.extend(link.apply(prev, changes, &mut rx));
                }
                ClientAction::Live { seq } => {
                    link.state.live.store(true, Relaxed);
                    tracing::info!(seq, "caught up with upstream");
                }
                a @ (ClientAction::Resolve { .. } | ClientAction::Reject { .. }) => link.answer(a),
                a @ (ClientAction::Reconnect { .. } | ClientAction::Fatal(_)) => {
                    let rest: Vec<_> = std::iter::once(a).chain(queue.drain(..)).collect();
                    break 'conn link.after_connection(rest);
                }
            }
        }
        let acts = tokio::select! {
            m = rx.next() => link.input(m),
            Some(f) = forwards.recv() => link.forward(f),
            _ = shutdown.changed() => break 'conn End::Stop,
        };
        queue.extend(acts);
    };
    if let Some(conn) = snapshot.take() {
        apply::snapshot_abort(&conn);
    }
    end
}
