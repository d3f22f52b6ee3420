//! The client half of the protocol, sans I/O: one session for every hivesync client (the
//! relay's upstream link, `hivesync watch`), next to the node's [`super::Session`].
//!
//! The shell owns the socket, the clock and the store; it tells the session what happened
//! (connected, a frame, a connection that failed or ended, a batch applied or not, a write
//! to send) and carries out the [`ClientAction`]s it gets back. The session owns, once:
//! - the resume cursor (the last seq the shell confirmed applied) and the `subscribe` from it;
//! - the ahead-of-head check: a cursor past the node's head means another node's log;
//! - gap detection: a batch whose `prev` is not the last seq handed out is never applied;
//! - the ack cadence: one `ack` per applied batch (and per finished snapshot);
//! - which failures are fatal ([`is_fatal_code`], [`ConnectFailure`]) and which are retried;
//! - one backoff policy with jitter, reset once a connection has been healthy for a while;
//! - writes in flight: answered by `written` or `error` with their `req`, or refused when the
//!   link is down or is lost before their answer;
//! - for an edge fed from NATS, the hand-over between feeds: once caught up, the live changes
//!   come from another feed ([`ClientSession::go_external`]) through the same gap check
//!   ([`ClientSession::external_changes`]), and when that feed breaks or skips a seq the node's
//!   own feed takes over again from the cursor ([`ClientSession::external_lost`]), the
//!   connection kept for writes throughout.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{ClientMsg, ErrorCode, ErrorMsg, ServerMsg, Subscribe};
use crate::model::{Change, Kind, Origin, WriteOp};

/// The first retry waits up to this long ...
pub const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// ... doubling per failed attempt up to this ...
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// ... each delay drawn uniformly from its upper half (so clients that lost one node do not all
/// come back in the same millisecond). A connection subscribed for this long was healthy: the
/// next outage starts again from the first delay.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// Error codes that no retry can cure: the token is wrong or lacks the scope, or the node
/// does not understand what this client sends (another protocol version).
pub fn is_fatal_code(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unauthorized | ErrorCode::Forbidden | ErrorCode::BadRequest
    )
}

/// Error codes in answer to a `write` that mean the node refused that write for good (it is
/// invalid, out of the token's scope, or too large): a replica takes it back and tells the app.
/// Any other answer (`overloaded`, `internal`, a lost connection) leaves it to be sent again.
pub fn is_refusal_code(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::BadRequest | ErrorCode::Forbidden | ErrorCode::TooLarge
    )
}

/// Why a connection attempt failed, as the shell saw it.
#[derive(Clone, Debug, PartialEq)]
pub enum ConnectFailure {
    /// Not a WebSocket URL (`http://`, a typo): fatal.
    BadUrl(String),
    /// The server answered the upgrade with this HTTP status: a 4xx (a wrong path, no
    /// WebSocket there) is fatal, except 408 and 429; a 5xx (a node at its connection limit)
    /// is retried.
    Http(u16),
    /// Refused, reset, timed out, DNS, TLS: retried.
    Network(String),
}

/// Settings of a client session.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The `client` name sent in `hello`.
    pub client: String,
    /// The token sent in `hello`.
    pub token: Option<String>,
    /// The subscription id.
    pub sub: String,
    /// Where to resume: the last seq applied (0: the whole log); None: snapshot first.
    pub from: Option<i64>,
    /// Namespaces wanted (None: every readable one).
    pub namespaces: Option<Vec<String>>,
    /// Kinds wanted (None: all).
    pub kinds: Option<Vec<Kind>>,
    /// Seed of the jitter (any value; differing between clients).
    pub seed: u64,
}

/// A write the shell asked to send, named by the shell.
pub type WriteId = u64;

/// Why the session stopped for good.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The node refused this client (`unauthorized`, `forbidden`, `bad_request`).
    #[error("the node refused this client: {}: {}", .0.code.as_str(), .0.message)]
    Refused(ErrorMsg),
    /// The URL cannot reach a hivesync feed.
    #[error("{0}")]
    BadUrl(String),
    /// The node's log ends before the cursor: it is another node, or was restored.
    #[error("the node's log ends at seq {head}, before this client's cursor {cursor}: it is not the node this client followed (or it was restored from a backup)")]
    AheadOfHead {
        /// The client's cursor.
        cursor: i64,
        /// The node's head.
        head: i64,
    },
    /// A frame this client cannot decode.
    #[error(
        "the node sent a frame this client cannot read ({0}); is it another hivesync version?"
    )]
    Protocol(String),
}

/// What the shell must do.
#[derive(Debug, PartialEq)]
pub enum ClientAction {
    /// Send this message.
    Send(ClientMsg),
    /// The node accepted this client (its `welcome`); the subscription follows from `from`
    /// (None: a snapshot). For the shell's status and log; nothing to do.
    Welcome {
        /// The node's name.
        node: String,
        /// Its log's head.
        head: i64,
        /// Where this client resumes (None: it asks for a snapshot).
        from: Option<i64>,
        /// The key the node signs its NATS messages with (binary `welcome` only).
        publish_key: Option<String>,
    },
    /// The node reported an error that answered no write and stops nothing (a
    /// [`Reconnect`](Self::Reconnect) follows): for the shell's user to see.
    NodeError(ErrorMsg),
    /// A snapshot taken at `at` begins: its rows replace the replica's state.
    SnapshotBegin {
        /// Its seq.
        at: i64,
    },
    /// Rows of the open snapshot.
    SnapshotRows(Vec<Change>),
    /// The snapshot is complete: commit it, then call [`ClientSession::applied`] with `at`.
    SnapshotFinish {
        /// Its seq.
        at: i64,
    },
    /// Drop the open snapshot (the connection ended before its last chunk).
    SnapshotAbort,
    /// Apply these changes (gap-checked: `prev` is the last seq handed out), then call
    /// [`ClientSession::applied`] with the last seq, or [`ClientSession::apply_failed`].
    Apply {
        /// The seq they follow.
        prev: i64,
        /// The changes, in seq order.
        changes: Vec<Change>,
    },
    /// Caught up with the node at `seq`.
    Live {
        /// The node's head when it said so.
        seq: i64,
    },
    /// The write `id` committed at the node with this seq.
    Resolve {
        /// The shell's id.
        id: WriteId,
        /// Its last seq.
        seq: i64,
    },
    /// The write `id` was refused, or its fate is unknown (the link was lost).
    Reject {
        /// The shell's id.
        id: WriteId,
        /// Why.
        error: ErrorMsg,
    },
    /// Close this connection (if open) and connect again after `after`.
    Reconnect {
        /// The delay (backoff with jitter).
        after: Duration,
        /// Why, for the log.
        why: String,
    },
    /// Stop: no retry can succeed.
    Fatal(ClientError),
}

#[derive(Debug, PartialEq)]
enum Phase {
    Down,
    Hello,
    Subscribed,
    Stopped,
}

/// One client's session across its connections.
pub struct ClientSession {
    cfg: ClientConfig,
    phase: Phase,
    /// The last seq the shell confirmed applied: where a new connection resumes.
    cursor: Option<i64>,
    /// The last seq handed out to apply on this connection.
    handed: Option<i64>,
    /// The open snapshot's seq.
    snapshot: Option<i64>,
    /// When this connection subscribed (the shell's clock, ms).
    subscribed_at: Option<u64>,
    /// Delays between attempts.
    backoff: Backoff,
    writes: BTreeMap<String, WriteId>,
    next_req: u64,
    /// Live changes come from another feed, not this connection's subscription.
    external: bool,
    /// This connection holds a subscription at the node.
    at_node: bool,
}

impl ClientSession {
    /// A session that has not connected yet.
    pub fn new(cfg: ClientConfig) -> Self {
        ClientSession {
            cursor: cfg.from,
            backoff: Backoff::new(cfg.seed),
            cfg,
            phase: Phase::Down,
            handed: None,
            snapshot: None,
            subscribed_at: None,
            writes: BTreeMap::new(),
            next_req: 0,
            external: false,
            at_node: false,
        }
    }

    /// True while the live changes come from another feed ([`ClientSession::go_external`]).
    pub fn external(&self) -> bool {
        self.external
    }

    /// Take the live changes from another feed from here on (a NATS stream the shell has
    /// positioned after [`ClientSession::cursor`]): the subscription at the node ends (or, before
    /// a connection's `welcome`, is not made), and the connection stays for writes. `None`
    /// while that cannot be: a snapshot is open, or the session has no cursor or has stopped.
    pub fn go_external(&mut self) -> Option<Vec<ClientAction>> {
        if self.stopped() || self.snapshot.is_some() || self.cursor.is_none() {
            return None;
        }
        self.external = true;
        self.handed = self.cursor;
        if !self.at_node {
            return Some(vec![]);
        }
        self.at_node = false;
        Some(vec![ClientAction::Send(ClientMsg::Unsubscribe {
            sub: self.cfg.sub.clone(),
        })])
    }

    /// The other feed broke: the node's feed takes over again from the cursor (a catch-up, or
    /// a snapshot if the node no longer holds it), on this connection or the next.
    pub fn external_lost(&mut self) -> Vec<ClientAction> {
        self.external = false;
        if self.phase != Phase::Subscribed || self.at_node {
            return vec![];
        }
        self.at_node = true;
        self.handed = self.cursor;
        vec![self.subscribe()]
    }

    /// Changes from the other feed, each with the seq it follows (`prev`), in the feed's
    /// order. Those already handed out are dropped (a feed resumed from before the cursor);
    /// the rest must continue the chain from the last seq handed out. A break in the chain
    /// drops the batch and ends the other feed ([`ClientSession::external_lost`]): check
    /// [`ClientSession::external`] after the call.
    pub fn external_changes(&mut self, items: Vec<(i64, Change)>) -> Vec<ClientAction> {
        if !self.external || self.stopped() {
            return vec![];
        }
        let first = self.handed.unwrap_or(0);
        let mut expected = first;
        let mut changes = Vec::with_capacity(items.len());
        for (prev, c) in items {
            if c.seq <= expected && changes.is_empty() {
                continue;
            }
            if prev != expected {
                tracing::warn!(
                    prev,
                    expected,
                    "the stream skips seqs here (trimmed, or purged): catching up from the node"
                );
                // The node's feed resends the whole batch from the cursor.
                return self.external_lost();
            }
            expected = c.seq;
            changes.push(c);
        }
        if changes.is_empty() {
            return vec![];
        }
        self.handed = Some(expected);
        vec![ClientAction::Apply {
            prev: first,
            changes,
        }]
    }

    fn subscribe(&self) -> ClientAction {
        ClientAction::Send(ClientMsg::Subscribe(Subscribe {
            sub: self.cfg.sub.clone(),
            from: self.cursor,
            namespaces: self.cfg.namespaces.clone(),
            kinds: self.cfg.kinds.clone(),
        }))
    }

    /// Where a new connection resumes (None: with a snapshot).
    pub fn cursor(&self) -> Option<i64> {
        self.cursor
    }

    /// True once the session stopped for good.
    pub fn stopped(&self) -> bool {
        self.phase == Phase::Stopped
    }

    /// True while subscribed: writes can go out.
    pub fn subscribed(&self) -> bool {
        self.phase == Phase::Subscribed
    }

    /// The socket is open: say hello.
    pub fn connected(&mut self) -> Vec<ClientAction> {
        if self.stopped() {
            return vec![];
        }
        self.phase = Phase::Hello;
        self.at_node = false;
        self.handed = self.cursor;
        self.snapshot = None;
        self.subscribed_at = None;
        vec![ClientAction::Send(ClientMsg::Hello {
            token: self.cfg.token.clone(),
            client: Some(self.cfg.client.clone()),
        })]
    }

    /// A connection attempt failed.
    pub fn connect_failed(&mut self, f: ConnectFailure, now_ms: u64) -> Vec<ClientAction> {
        match f {
            ConnectFailure::BadUrl(why) => self.fatal(ClientError::BadUrl(why)),
            ConnectFailure::Http(s) if (400..500).contains(&s) && s != 408 && s != 429 => {
                self.fatal(ClientError::BadUrl(format!(
                    "the server answered HTTP {s} instead of a WebSocket: is the URL the node's feed (ws://host:port/v1/sync)?"
                )))
            }
            ConnectFailure::Http(s) => self.retry(format!("the server answered HTTP {s}"), now_ms),
            ConnectFailure::Network(why) => self.retry(why, now_ms),
        }
    }

    /// The connection ended (closed, reset, or the shell gave up on it). Nothing to do when
    /// the session already ended it (a reconnect or a stop it decided).
    pub fn disconnected(&mut self, why: &str, now_ms: u64) -> Vec<ClientAction> {
        if matches!(self.phase, Phase::Down | Phase::Stopped) {
            return vec![];
        }
        self.retry(why.to_string(), now_ms)
    }

    /// A frame the shell could not decode.
    pub fn undecodable(&mut self, why: &str) -> Vec<ClientAction> {
        self.fatal(ClientError::Protocol(why.to_string()))
    }

    /// The shell committed everything up to `seq` (a batch, or a finished snapshot).
    pub fn applied(&mut self, seq: i64) -> Vec<ClientAction> {
        self.cursor = Some(seq);
        if self.phase != Phase::Subscribed || !self.at_node {
            return vec![];
        }
        vec![ClientAction::Send(ClientMsg::Ack {
            sub: self.cfg.sub.clone(),
            seq,
        })]
    }

    /// The shell could not apply what it was handed: resume from the last confirmed seq.
    pub fn apply_failed(&mut self, why: &str, now_ms: u64) -> Vec<ClientAction> {
        self.retry(format!("applying the node's changes failed: {why}"), now_ms)
    }

    /// Send a write; its answer comes back as [`ClientAction::Resolve`] or `Reject` with `id`.
    /// With an `origin`, the node applies it at most once however often it is sent.
    pub fn write(
        &mut self,
        id: WriteId,
        ops: Vec<WriteOp>,
        origin: Option<Origin>,
    ) -> Vec<ClientAction> {
        if self.phase != Phase::Subscribed {
            return vec![ClientAction::Reject {
                id,
                error: ErrorMsg::new(
                    ErrorCode::Overloaded,
                    "not connected to the node; the write was not sent: retry shortly",
                ),
            }];
        }
        self.next_req += 1;
        let req = format!("w{}", self.next_req);
        self.writes.insert(req.clone(), id);
        let (client, n, entries) = match origin {
            Some(o) => (
                Some(o.client),
                Some(o.n),
                (!o.entries.is_empty()).then_some(o.entries),
            ),
            None => (None, None, None),
        };
        vec![ClientAction::Send(ClientMsg::Write {
            req,
            ops,
            client,
            n,
            entries,
        })]
    }

    /// A frame from the node.
    pub fn frame(&mut self, m: ServerMsg, now_ms: u64) -> Vec<ClientAction> {
        if self.stopped() {
            return vec![];
        }
        match m {
            ServerMsg::Welcome {
                head,
                node,
                publish_key,
                ..
            } => {
                if let Some(cursor) = self.cursor.filter(|&c| c > head) {
                    return self.fatal(ClientError::AheadOfHead { cursor, head });
                }
                self.phase = Phase::Subscribed;
                self.subscribed_at = Some(now_ms);
                let mut out = vec![ClientAction::Welcome {
                    node,
                    head,
                    from: self.cursor,
                    publish_key,
                }];
                if !self.external {
                    self.at_node = true;
                    out.push(self.subscribe());
                }
                out
            }
            // What the node sent for a subscription this session has ended (before it saw the
            // `unsubscribe`): the other feed carries those changes.
            ServerMsg::Snapshot { .. } | ServerMsg::Changes { .. } | ServerMsg::Live { .. }
                if !self.at_node =>
            {
                vec![]
            }
            ServerMsg::Snapshot { at, rows, done, .. } => {
                let mut out = Vec::new();
                match self.snapshot {
                    Some(open) if open != at => {
                        return self.retry(
                            format!("snapshot chunks disagree on their seq ({open}, {at})"),
                            now_ms,
                        )
                    }
                    Some(_) => {}
                    None => {
                        self.snapshot = Some(at);
                        out.push(ClientAction::SnapshotBegin { at });
                    }
                }
                out.push(ClientAction::SnapshotRows(rows));
                if done {
                    self.snapshot = None;
                    self.handed = Some(at);
                    out.push(ClientAction::SnapshotFinish { at });
                }
                out
            }
            ServerMsg::Changes { prev, changes, .. } => {
                if self.snapshot.is_some() {
                    return self.retry("changes before the snapshot's last chunk".into(), now_ms);
                }
                let expected = self.handed.unwrap_or(0);
                if prev != expected {
                    return self.retry(
                        format!("gap: a batch continues from seq {prev}, the last seq received is {expected}"),
                        now_ms,
                    );
                }
                let Some(last) = changes.last().map(|c| c.seq) else {
                    return vec![];
                };
                self.handed = Some(last);
                vec![ClientAction::Apply { prev, changes }]
            }
            ServerMsg::Live { seq, .. } => vec![ClientAction::Live { seq }],
            ServerMsg::Written { req, seq } => match self.writes.remove(&req) {
                Some(id) => vec![ClientAction::Resolve { id, seq }],
                None => vec![],
            },
            ServerMsg::Error(e) => {
                if let Some(id) = e.req.as_ref().and_then(|r| self.writes.remove(r)) {
                    return vec![ClientAction::Reject { id, error: e }];
                }
                if is_fatal_code(e.code) {
                    return self.fatal(ClientError::Refused(e));
                }
                let why = format!("{}: {}", e.code.as_str(), e.message);
                let mut out = vec![ClientAction::NodeError(e)];
                out.extend(self.retry(why, now_ms));
                out
            }
        }
    }

    /// End the connection: drop an open snapshot, refuse the writes in flight.
    fn end(&mut self, out: &mut Vec<ClientAction>) {
        if self.snapshot.take().is_some() {
            out.push(ClientAction::SnapshotAbort);
        }
        for (_, id) in std::mem::take(&mut self.writes) {
            out.push(ClientAction::Reject {
                id,
                error: ErrorMsg::new(
                    ErrorCode::Overloaded,
                    "the link to the node was lost before the write was answered; it may or may not have committed: retry (upserts with ids are idempotent)",
                ),
            });
        }
        self.handed = self.cursor;
        self.external = false;
        self.at_node = false;
    }

    fn retry(&mut self, why: String, now_ms: u64) -> Vec<ClientAction> {
        if self.stopped() {
            return vec![];
        }
        let mut out = Vec::new();
        self.end(&mut out);
        let healthy = self
            .subscribed_at
            .is_some_and(|t| now_ms.saturating_sub(t) >= HEALTHY_AFTER.as_millis() as u64);
        if healthy {
            self.backoff.reset();
        }
        self.phase = Phase::Down;
        self.subscribed_at = None;
        let after = self.backoff.next_delay();
        out.push(ClientAction::Reconnect { after, why });
        out
    }

    fn fatal(&mut self, e: ClientError) -> Vec<ClientAction> {
        let mut out = Vec::new();
        self.end(&mut out);
        self.phase = Phase::Stopped;
        out.push(ClientAction::Fatal(e));
        out
    }
}

/// The one backoff policy for reconnecting (the client session's, and the NATS publisher's):
/// the delay doubles from [`BACKOFF_FIRST`] up to [`BACKOFF_MAX`], each jittered into the upper
/// half of its ceiling; [`Backoff::reset`] once a connection has been healthy.
#[derive(Clone, Debug)]
pub struct Backoff {
    /// Failed attempts since the last reset.
    attempts: u32,
    rng: u64,
}

impl Backoff {
    /// A policy whose jitter starts from `seed` (any value; differing between clients).
    pub fn new(seed: u64) -> Self {
        Backoff {
            attempts: 0,
            rng: seed | 1,
        }
    }

    /// Start again from the first delay.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }

    /// The delay before the next attempt: the attempt's ceiling, jittered into its upper half.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = BACKOFF_FIRST
            .saturating_mul(1u32 << self.attempts.min(16))
            .min(BACKOFF_MAX);
        self.attempts = self.attempts.saturating_add(1);
        let ms = ceiling.as_millis() as u64;
        // xorshift64: jitter needs no cryptographic quality, and must run in wasm32 too.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        Duration::from_millis(ms / 2 + self.rng % (ms / 2 + 1))
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
