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
//!
//! An edge fed from NATS (`--upstream nats://... --primary ws://...`) runs the same link to the
//! primary, and once it has caught up it takes the live changes from the stream instead
//! ([`crate::node::follow`]): the session ends its subscription at the primary, checks the stream's
//! chain, and hands back to the primary's feed whenever the stream cannot go on.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::SplitStream;
use futures_util::{FutureExt, SinkExt, StreamExt};
use parking_lot::MutexGuard;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::apply;
use crate::error::Error;
use crate::model::{Change, WriteOp};
use crate::node::dial;
use crate::node::follow::{Feed, Follow, Item, Opening};
use crate::node::hub::{EncodedChange, Hub};
pub(crate) use crate::node::link::token_file::Credentials;
use crate::node::link::token_file::{TokenFile, TOKEN_FILE_EVERY};
use crate::protocol::client::{
    self, ClientAction, ClientConfig, ClientError, ClientSession, WriteId,
};
use crate::protocol::{self, ErrorCode, ErrorMsg, SUBPROTOCOL_BIN};
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
pub(crate) struct UpstreamState {
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
    /// The live changes come from the NATS stream (an edge fed from NATS, while it can).
    pub nats: AtomicBool,
    /// Changes applied from the NATS stream.
    pub nats_changes: AtomicU64,
    /// Messages of the NATS stream dropped because the primary did not sign them, and when the
    /// last was (`/healthz` says "degraded" for a minute after one).
    pub nats_rejected: AtomicU64,
    /// See `nats_rejected`.
    pub nats_rejected_at: parking_lot::Mutex<Option<Instant>>,
    /// The primary's head as last seen over the link (an edge fed from NATS asks for it every
    /// [`PROBE_EVERY`](crate::protocol::probe::PROBE_EVERY) while it reads the stream).
    pub primary_head: AtomicI64,
    /// Times the edge left the stream because it stalled behind the primary's head.
    pub nats_stalls: AtomicU64,
}

/// The handle the local node keeps.
pub(crate) struct Upstream {
    pub(crate) forward: mpsc::Sender<Forward>,
    pub(crate) state: Arc<UpstreamState>,
}

/// Start following `url` on a thread of its own.
pub(crate) fn start(
    url: String,
    nats: Option<Follow>,
    token: Credentials,
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
            rt.block_on(run(url, nats, token, store, hub, rx, st, shutdown));
        })?;
    Ok(Upstream { forward: tx, state })
}

/// How a connection (or an attempt) ended.
enum End {
    /// Connect again after this delay.
    Retry(Duration),
    /// The token was refused and comes from a file: connect again once the file changes.
    Refused,
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
    /// The NATS stream, for an edge fed from it (when to open it and when to leave it is the
    /// session's: [`ClientSession::with_external_feed`]).
    nats: Option<Follow>,
    /// The token file, read again when it changes.
    token_file: Option<TokenFile>,
}

#[allow(clippy::too_many_arguments)]
async fn run(
    url: String,
    nats: Option<Follow>,
    creds: Credentials,
    store: Arc<Store>,
    hub: Arc<Hub>,
    mut forwards: mpsc::Receiver<Forward>,
    state: Arc<UpstreamState>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Resume after what the file holds; an empty file starts with a snapshot.
    let from = match store.read(|c| Ok((apply::applied_seq(c)?, query::head(c)?))) {
        Ok((applied, head)) => {
            // Where this copy stands already (a restart, or a start from the upstream's image).
            state.applied.store(applied, Relaxed);
            (applied > 0 || head > 0).then_some(applied)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read this edge's position; not following upstream");
            *state.down.lock() = Some(format!("stopped: cannot read this edge's position: {e}"));
            return;
        }
    };
    if let Some(f) = &nats {
        f.load_key(&store);
    }
    let session = ClientSession::new(ClientConfig {
        client: "hivesync-edge".into(),
        token: creds.token.clone(),
        sub: "edge".into(),
        from,
        namespaces: None,
        kinds: None,
        seed: dial::jitter_seed(),
    });
    let mut link = Link {
        session: if nats.is_some() {
            session.with_external_feed()
        } else {
            session
        },
        url,
        store,
        hub,
        state,
        replies: HashMap::new(),
        next_id: 0,
        start: Instant::now(),
        nats,
        token_file: creds.file.map(TokenFile::new),
    };
    loop {
        link.reread_token();
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
        link.state.nats.store(false, Relaxed);
        if !between(&mut link, end, &mut forwards, &mut shutdown).await {
            return;
        }
    }
}

/// Between connections: wait the session's delay (a refused token with a token file: for a
/// fresh token there), answering forwarded writes meanwhile (refused). False: stop.
async fn between(
    link: &mut Link,
    end: End,
    forwards: &mut mpsc::Receiver<Forward>,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let after = match end {
        End::Stop => return false,
        End::Retry(after) => after,
        End::Refused => TOKEN_FILE_EVERY,
    };
    let until = tokio::time::sleep(after);
    tokio::pin!(until);
    loop {
        tokio::select! {
            _ = &mut until => {
                if !matches!(end, End::Refused) {
                    return true;
                }
                // A token file a rotation tool renews: a refused token waits for the next one.
                link.reread_token();
                if !link.session.stopped() {
                    return true;
                }
                until.as_mut().reset(tokio::time::Instant::now() + TOKEN_FILE_EVERY);
            }
            _ = shutdown.changed() => return false,
            Some(f) = forwards.recv() => {
                let acts = link.forward(f);
                link.after_connection(acts);
            }
        }
    }
}

impl Link {
    fn now(&self) -> u64 {
        dial::millis_since(self.start)
    }

    /// The token file changed: its token goes to the session (sent on the open connection,
    /// and used for the next hello). An unreadable or empty file keeps the token in use.
    fn reread_token(&mut self) -> Vec<ClientAction> {
        let Some(t) = self.token_file.as_mut().and_then(TokenFile::fresh) else {
            return vec![];
        };
        if self.session.stopped() {
            self.session.restart_with_token(t);
            return vec![];
        }
        self.session.set_token(t)
    }

    /// The upstream accepted this edge: it is connected (and learns the key the primary signs
    /// its NATS stream with).
    fn welcomed(&mut self, from: Option<i64>, publish_key: Option<&str>) {
        if let Some(f) = &self.nats {
            f.set_key(publish_key, &self.store);
        }
        self.state.connected.store(true, Relaxed);
        *self.state.down.lock() = None;
        tracing::info!(upstream = %self.url, from = ?from, "following upstream");
    }

    /// Messages of the stream (the first, and those already read behind it) as session input,
    /// applied here so that a break in the stream hands back to the primary's feed from the
    /// cursor they advanced. Clears `feed` when the stream cannot go on.
    fn feed_input(
        &mut self,
        first: Option<crate::Result<Item>>,
        feed: &mut Option<Feed>,
        rx: &mut Rx,
    ) -> Vec<ClientAction> {
        let mut items = Vec::new();
        let mut broken = None;
        let mut next = first;
        loop {
            match next {
                Some(Ok(Item::Change(prev, c))) => items.push((prev, c)),
                Some(Ok(Item::Omitted(seq))) => {
                    broken = Some(format!("change {seq} is too large for the stream"));
                    break;
                }
                Some(Ok(Item::Unsigned(at))) => {
                    self.state.nats_rejected.fetch_add(1, Relaxed);
                    *self.state.nats_rejected_at.lock() = Some(Instant::now());
                    broken = Some(format!("message {at} of the stream was not signed by the primary (someone else publishes to its subjects: turn on NATS authentication); dropped it"));
                    break;
                }
                Some(Err(e)) => {
                    broken = Some(e.to_string());
                    break;
                }
                None => {
                    broken = Some("the stream's consumer ended".into());
                    break;
                }
            }
            if items.len() >= COALESCE_MAX {
                break;
            }
            let Some(f) = feed.as_mut() else { break };
            match f.next().now_or_never() {
                Some(m) => next = m,
                None => break,
            }
        }
        let now = self.now();
        let mut out = Vec::new();
        for a in self.session.external_changes(items, now) {
            match a {
                ClientAction::Apply { prev, changes } => {
                    let n = changes.len() as u64;
                    let before = self.state.applies.load(Relaxed);
                    out.extend(self.apply(prev, changes, rx));
                    if self.state.applies.load(Relaxed) > before {
                        self.state.nats_changes.fetch_add(n, Relaxed);
                    }
                }
                other => out.push(other),
            }
        }
        if let Some(why) = broken {
            out.extend(self.session.external_lost(&why, now));
        }
        out
    }

    /// Carry out what the session says of the NATS stream: open it, leave it, or the
    /// primary's head its probe found.
    fn external(
        &mut self,
        a: ClientAction,
        opening: &mut Option<Opening>,
        feed: &mut Option<Feed>,
    ) {
        match a {
            ClientAction::OpenExternal => {
                let after = self.session.cursor();
                *opening = self
                    .nats
                    .as_ref()
                    .zip(after)
                    .map(|(n, after)| n.open(after));
            }
            ClientAction::LeaveExternal { why, stalled } => {
                *feed = None;
                self.state.nats.store(false, Relaxed);
                // Catching up from the primary again: its `live` hands back to the stream.
                self.state.live.store(false, Relaxed);
                if stalled {
                    self.state.nats_stalls.fetch_add(1, Relaxed);
                }
                tracing::warn!(nats = %self.nats_url(), "{why}: following the primary's feed until the stream can take over again");
            }
            ClientAction::NodeHead { head } => self.state.primary_head.store(head, Relaxed),
            _ => {}
        }
    }

    /// The stream opened (or not): the session decides whether it takes the live changes over.
    fn opened(
        &mut self,
        r: crate::Result<Option<Feed>>,
        feed: &mut Option<Feed>,
    ) -> Vec<ClientAction> {
        let now = self.now();
        let (res, f) = match r {
            Ok(Some(f)) => (Ok(()), Some(f)),
            Ok(None) => (
                Err(format!(
                    "it no longer holds what follows seq {}",
                    self.session.cursor().unwrap_or(0)
                )),
                None,
            ),
            Err(e) => (Err(e.to_string()), None),
        };
        let acts = self.session.external_opened(res, now);
        if self.session.external() {
            *feed = f;
            self.state.nats.store(true, Relaxed);
            tracing::info!(nats = %self.nats_url(), after = ?self.session.cursor(), "following the NATS stream");
        }
        acts
    }

    /// The NATS server the edge reads, for logs (empty for a plain relay).
    fn nats_url(&self) -> String {
        self.nats.as_ref().map_or(String::new(), |n| n.url())
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
                ClientAction::Fatal(ClientError::Refused(e))
                    if e.code == ErrorCode::Unauthorized && self.token_file.is_some() =>
                {
                    tracing::warn!(upstream = %self.url, "the upstream refused the token ({}); waiting for a fresh one in the token file", e.message);
                    *self.state.down.lock() =
                        Some(format!("waiting for a fresh token: {}", e.message));
                    end = End::Refused;
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
            Err(e) => {
                let now = self.now();
                self.session.apply_failed(&e.to_string(), now)
            }
        };
        out.extend(later);
        out
    }

    /// Carry out a snapshot action on `open`, the writer held for the snapshot's
    /// transaction from its first chunk to its last; returns what the session says next.
    fn snapshot<'s>(
        &mut self,
        store: &'s Store,
        open: &mut Option<MutexGuard<'s, rusqlite::Connection>>,
        a: ClientAction,
    ) -> Vec<ClientAction> {
        let res = match a {
            ClientAction::SnapshotBegin { .. } => store.pool().writer().and_then(|conn| {
                apply::snapshot_begin(&conn, &ChangeFilter::default())?;
                *open = Some(conn);
                Ok(())
            }),
            ClientAction::SnapshotRows(rows) => match open.as_deref() {
                Some(conn) => apply::snapshot_rows(conn, &rows)
                    .map_err(|e| Error::invalid(format!("snapshot rejected: {e}"))),
                None => Ok(()),
            },
            ClientAction::SnapshotFinish { at } => {
                let res = match open.take() {
                    Some(conn) => apply::snapshot_finish(&conn, at),
                    None => Err(Error::invalid("no snapshot open")),
                };
                if res.is_ok() {
                    self.state.applied.store(at, Relaxed);
                    self.hub.reset(at);
                    self.hub.wake();
                    return self.session.applied(at);
                }
                res
            }
            ClientAction::SnapshotAbort => {
                if let Some(conn) = open.take() {
                    apply::snapshot_abort(&conn);
                }
                Ok(())
            }
            _ => Ok(()),
        };
        match res {
            Ok(()) => vec![],
            Err(e) => {
                let now = self.now();
                self.session.apply_failed(&e.to_string(), now)
            }
        }
    }

    /// A message (or the end) of the socket, as session input.
    fn input(&mut self, msg: Option<Result<Message, WsError>>) -> Vec<ClientAction> {
        let now = self.now();
        match msg {
            Some(Ok(Message::Binary(b))) => match protocol::decode_server_bin(&b) {
                Ok(m) => self.session.frame(m, now),
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

/// What woke a connection up.
enum Event {
    Socket(Option<Result<Message, WsError>>),
    Opened(crate::Result<Option<Feed>>),
    Forward(Forward),
    Stream(Option<crate::Result<Item>>),
    /// The session's clock: a retry of the stream or a head probe is due.
    Tick,
    /// Time to look at the token file.
    TokenFile,
    Stop,
}

/// The next message of the stream, or never without one.
async fn next_item(feed: &mut Option<Feed>) -> Option<crate::Result<Item>> {
    match feed {
        Some(f) => f.next().await,
        None => std::future::pending().await,
    }
}

/// One connection: carry out the session's actions, feed it the socket's frames, the stream's
/// messages and the writes to forward, until it says to reconnect or stop.
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
    let mut token_tick = tokio::time::interval(TOKEN_FILE_EVERY);
    token_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The stream being opened, and the stream once it carries the live changes.
    let mut opening: Option<Opening> = None;
    let mut feed: Option<Feed> = None;
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
                a @ (ClientAction::SnapshotBegin { .. }
                | ClientAction::SnapshotRows(_)
                | ClientAction::SnapshotFinish { .. }
                | ClientAction::SnapshotAbort) => {
                    queue.extend(link.snapshot(store, &mut snapshot, a));
                }
                ClientAction::Apply { prev, changes } => {
                    queue.extend(link.apply(prev, changes, &mut rx));
                }
                ClientAction::Welcome {
                    from, publish_key, ..
                } => link.welcomed(from, publish_key.as_deref()),
                ClientAction::NodeError(e) => {
                    tracing::warn!(upstream = %link.url, code = e.code.as_str(), "upstream reported: {}", e.message);
                }
                ClientAction::Live { seq } => {
                    link.state.live.store(true, Relaxed);
                    tracing::info!(seq, "caught up with upstream");
                }
                a @ (ClientAction::OpenExternal
                | ClientAction::LeaveExternal { .. }
                | ClientAction::NodeHead { .. }) => link.external(a, &mut opening, &mut feed),
                a @ (ClientAction::Resolve { .. } | ClientAction::Reject { .. }) => link.answer(a),
                a @ (ClientAction::Reconnect { .. } | ClientAction::Fatal(_)) => {
                    let rest: Vec<_> = std::iter::once(a).chain(queue.drain(..)).collect();
                    break 'conn link.after_connection(rest);
                }
            }
        }
        let tick = link
            .session
            .next_tick()
            .map(|ms| link.start + Duration::from_millis(ms));
        let event = tokio::select! {
            m = rx.next() => Event::Socket(m),
            r = async { opening.as_mut().expect("guarded").await }, if opening.is_some() => Event::Opened(r),
            Some(f) = forwards.recv() => Event::Forward(f),
            i = next_item(&mut feed) => Event::Stream(i),
            _ = tokio::time::sleep_until(tick.unwrap_or_else(Instant::now).into()), if tick.is_some() => Event::Tick,
            _ = token_tick.tick(), if link.token_file.is_some() => Event::TokenFile,
            _ = shutdown.changed() => Event::Stop,
        };
        match event {
            Event::Socket(m) => queue.extend(link.input(m)),
            Event::TokenFile => queue.extend(link.reread_token()),
            Event::Tick => {
                let now = link.now();
                queue.extend(link.session.tick(now));
            }
            Event::Forward(f) => queue.extend(link.forward(f)),
            Event::Stream(i) => queue.extend(link.feed_input(i, &mut feed, &mut rx)),
            Event::Opened(r) => {
                opening = None;
                queue.extend(link.opened(r, &mut feed));
            }
            Event::Stop => break 'conn End::Stop,
        }
    };
    if let Some(conn) = snapshot.take() {
        apply::snapshot_abort(&conn);
    }
    end
}
