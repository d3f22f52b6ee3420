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

use super::{ClientMsg, ErrorCode, ErrorMsg, ServerMsg, Subscribe};
use crate::model::{Change, Origin, WriteOp};
use external::ExternalFeed;

mod actions;
// The browser reads no external feed: there the type is empty and every branch on it is gone.
#[cfg(not(target_arch = "wasm32"))]
mod external;
#[cfg(target_arch = "wasm32")]
#[path = "external_none.rs"]
mod external;

pub use actions::{
    is_fatal_code, is_refusal_code, ClientAction, ClientConfig, ClientError, ConnectFailure,
    WriteId,
};

pub use super::backoff::{Backoff, BACKOFF_FIRST, BACKOFF_MAX, HEALTHY_AFTER};

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
    /// The node said `live` on this connection (caught up).
    live: bool,
    /// The external feed's policy, for a session that may read one.
    ext: Option<ExternalFeed>,
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
            live: false,
            ext: None,
        }
    }

    /// This session's live changes may come from an external feed (an edge reading the
    /// primary's NATS stream): once caught up, and whenever a new connection has a cursor, the
    /// session asks the shell to open it ([`ClientAction::OpenExternal`]); while it is read, the
    /// session asks the node for its head now and then and leaves the feed when it stays behind
    /// ([`ClientAction::LeaveExternal`]); a feed that could not be opened or was left is tried
    /// again after a backoff. The shell calls [`ClientSession::tick`] at
    /// [`ClientSession::next_tick`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_external_feed(mut self) -> Self {
        self.ext = Some(ExternalFeed::new(self.cfg.seed.rotate_left(17)));
        self
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

    /// The other feed broke (`why`): the node's feed takes over again from the cursor (a
    /// catch-up, or a snapshot if the node no longer holds it), on this connection or the next;
    /// a session [`with_external_feed`](Self::with_external_feed) opens it again after a backoff.
    pub fn external_lost(&mut self, why: &str, now_ms: u64) -> Vec<ClientAction> {
        if !self.external {
            return vec![];
        }
        self.leave_external(why.to_string(), false, now_ms)
    }

    fn leave_external(&mut self, why: String, stalled: bool, now_ms: u64) -> Vec<ClientAction> {
        self.external = false;
        self.live = false;
        let mut out = Vec::new();
        if let Some(ext) = &mut self.ext {
            let after = ext.failed(now_ms);
            out.push(ClientAction::LeaveExternal { why, stalled });
            tracing::debug!("the external feed is tried again in {after:?}");
        }
        out.extend(self.subscribe_here());
        out
    }

    /// Subscribe at the node on this connection, unless it already is (or is not up).
    fn subscribe_here(&mut self) -> Vec<ClientAction> {
        if self.phase != Phase::Subscribed || self.at_node || self.external {
            return vec![];
        }
        self.at_node = true;
        self.handed = self.cursor;
        vec![self.subscribe()]
    }

    /// The shell opened the external feed after a [`ClientAction::OpenExternal`] (`Ok`), or
    /// could not (`Err`: why). Opened, it takes the live changes over unless it cannot now (a
    /// snapshot is open): check [`ClientSession::external`]; the shell keeps the feed only
    /// while that is true. Not opened, the node's feed goes on and the feed is tried again
    /// after a backoff.
    pub fn external_opened(&mut self, res: Result<(), String>, now_ms: u64) -> Vec<ClientAction> {
        let Some(ext) = self.ext.as_mut().filter(|e| e.opening()) else {
            return vec![];
        };
        let mut out = Vec::new();
        match res {
            Ok(()) => {
                ext.unused();
                if let Some(acts) = self.go_external() {
                    if let Some(ext) = &mut self.ext {
                        ext.opened(now_ms);
                    }
                    return acts;
                }
            }
            Err(why) => {
                let after = ext.failed(now_ms);
                tracing::warn!("cannot read the external feed ({why}); following the node's feed, and trying the stream again in {after:?}");
            }
        }
        // A `welcome` that came meanwhile held the subscription for this answer.
        out.extend(self.subscribe_here());
        out
    }

    /// Time passed (the shell's clock): a retry of the external feed or a head probe may be
    /// due. Call at [`ClientSession::next_tick`].
    pub fn tick(&mut self, now_ms: u64) -> Vec<ClientAction> {
        let mut out = self.open_external(now_ms, true);
        let cursor = self.cursor;
        if let Some(ext) = self.ext.as_mut().filter(|_| self.external) {
            if ext.probe_due(now_ms) {
                out.extend(ext.ask_probe(cursor).map(ClientAction::Send));
            }
        }
        out
    }

    /// When [`ClientSession::tick`] has something to do (None: nothing scheduled).
    pub fn next_tick(&self) -> Option<u64> {
        let ext = self.ext.as_ref()?;
        if self.external {
            return ext.next_probe();
        }
        ext.retry_at().filter(|_| self.live && self.subscribed())
    }

    /// Ask the shell to open the external feed, if this session may read one and now is the
    /// time (`waited`: a pending backoff counts).
    fn open_external(&mut self, now_ms: u64, waited: bool) -> Vec<ClientAction> {
        let ready = !self.external && self.cursor.is_some() && !self.stopped();
        let due = if waited {
            self.live && self.subscribed()
        } else {
            true
        };
        match self.ext.as_mut() {
            Some(ext) if ready && due && ext.may_open(now_ms, waited) => {
                ext.start();
                vec![ClientAction::OpenExternal]
            }
            _ => vec![],
        }
    }

    /// Changes from the other feed, each with the seq it follows (`prev`), in the feed's
    /// order. Those already handed out are dropped (a feed resumed from before the cursor);
    /// the rest must continue the chain from the last seq handed out. A break in the chain
    /// drops the batch and ends the other feed ([`ClientSession::external_lost`]): check
    /// [`ClientSession::external`] after the call.
    pub fn external_changes(
        &mut self,
        items: Vec<(i64, Change)>,
        now_ms: u64,
    ) -> Vec<ClientAction> {
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
                // The node's feed resends the whole batch from the cursor.
                let why = format!("the stream skips seqs here (a change follows {prev}, the last seq received is {expected}: trimmed, or purged)");
                return self.leave_external(why, false, now_ms);
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

    /// A fresh token (a JWT renewed before it expires): sent on the open connection at once
    /// (`auth`) and used for every later `hello`. Nothing to send while not connected.
    pub fn set_token(&mut self, token: String) -> Vec<ClientAction> {
        if self.cfg.token.as_deref() == Some(token.as_str()) {
            return vec![];
        }
        self.cfg.token = Some(token.clone());
        if self.phase != Phase::Subscribed {
            return vec![];
        }
        vec![ClientAction::Send(ClientMsg::Auth { token })]
    }

    /// A session stopped by a refused token starts again with `token`, from the cursor it had:
    /// for a shell whose tokens come from elsewhere (a file a rotation tool renews). Nothing to
    /// do for a session that did not stop.
    pub fn restart_with_token(&mut self, token: String) {
        self.cfg.token = Some(token);
        if self.stopped() {
            self.phase = Phase::Down;
        }
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
        let mut out = vec![ClientAction::Send(ClientMsg::Hello {
            token: self.cfg.token.clone(),
            client: Some(self.cfg.client.clone()),
        })];
        // With a cursor, the external feed is tried first: the subscription at the node waits
        // for the answer (a welcome holds it). A new connection tries at once: no clock needed.
        out.extend(self.open_external(0, false));
        out
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
        if let Some(out) = self.probe_answer(&m, now_ms) {
            return out;
        }
        match m {
            ServerMsg::Welcome {
                head,
                horizon,
                node,
                publish_key,
                ..
            } => self.welcomed(node, (head, horizon), publish_key, now_ms),
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
            ServerMsg::Live { seq, .. } => {
                self.live = true;
                let mut out = vec![ClientAction::Live { seq }];
                out.extend(self.open_external(now_ms, true));
                out
            }
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

    /// The node's `welcome`: subscribe from the cursor (unless it is past the node's head, or
    /// the external feed's answer is awaited).
    fn welcomed(
        &mut self,
        node: String,
        (head, horizon): (i64, i64),
        publish_key: Option<String>,
        now_ms: u64,
    ) -> Vec<ClientAction> {
        if let Some(cursor) = self.cursor.filter(|&c| c > head) {
            return self.fatal(ClientError::AheadOfHead { cursor, head });
        }
        self.phase = Phase::Subscribed;
        self.subscribed_at = Some(now_ms);
        let mut out = vec![ClientAction::Welcome {
            node,
            head,
            from: self.cursor,
            snapshot: self
                .cursor
                .is_none_or(|c| !super::feed::covered(c, horizon)),
            publish_key,
        }];
        if !self.ext.as_ref().is_some_and(ExternalFeed::opening) {
            out.extend(self.subscribe_here());
        }
        out
    }

    /// `m` as the head probe's answer (None: not one). Behind a head the node reported for too
    /// long while reading the external feed, the session leaves it.
    fn probe_answer(&mut self, m: &ServerMsg, now_ms: u64) -> Option<Vec<ClientAction>> {
        let applied = self.cursor.unwrap_or(0);
        let a = self
            .ext
            .as_mut()?
            .answer_probe(m, applied, self.external, now_ms)?;
        let mut out: Vec<ClientAction> = a.send.into_iter().map(ClientAction::Send).collect();
        out.extend(a.head.map(|head| ClientAction::NodeHead { head }));
        if let Some(why) = a.stalled {
            out.extend(self.leave_external(why, true, now_ms));
        }
        Some(out)
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
        self.live = false;
        if let Some(ext) = &mut self.ext {
            ext.connection_ended();
        }
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

#[cfg(test)]
mod tests;
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests_external;
