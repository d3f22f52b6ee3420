//! One WebSocket connection: the tokio shell around the protocol's [`Session`]. It moves
//! bytes, runs the session's actions (writes, subscriptions) and nothing else.
//!
//! What one connection may hold is bounded in bytes, so a hostile or stalled client costs the
//! node a known amount of memory and never the readers other clients need:
//! - before `hello`: [`crate::protocol::MAX_PRE_HELLO_BYTES`] read from the socket
//!   ([`HelloGate`]), and [`HELLO_TIMEOUT`] to send it;
//! - writes queued for the writer: [`CONN_WRITE_BYTES`](crate::node::budget::CONN_WRITE_BYTES) of frames per connection and
//!   [`NODE_WRITE_BYTES`](crate::node::budget::NODE_WRITE_BYTES) for the node, taken before a frame is decoded; at either limit the
//!   connection stops reading its socket until earlier writes commit;
//! - frames queued for the client: [`CONN_OUT_BYTES`](crate::node::budget::CONN_OUT_BYTES); a subscription waits for room (and is
//!   dropped after the stall timeout); a snapshot or catch-up page takes its room before it is
//!   read (so pages are produced only as the socket drains, however many subscriptions wait),
//!   and so does a live frame before it is copied out of the hub's window; past its first
//!   [`CONN_FREE_OUT_BYTES`](crate::node::budget::CONN_FREE_OUT_BYTES), and for any page, a connection's frames also take room from
//!   the node's [`NODE_OUT_BYTES`](crate::node::budget::NODE_OUT_BYTES);
//! - snapshot and catch-up reads ([`crate::node::sub`]): one at a time per connection
//!   ([`ConnBudget::bulk`](crate::node::budget::ConnBudget)), and all but one of the pool's readers for the node
//!   ([`crate::node::NodeState::bulk_reads`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use parking_lot::RwLock;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::error::Error;
use crate::node::budget::{
    decoded_bytes, message_len, take_write_budget, ConnBudget, WriteBudget, CONN_OUT_BYTES,
    CONN_WRITE_BYTES,
};
use crate::node::gate::{HelloGate, Socket};
use crate::node::metrics::{Metrics, SubStats};
use crate::node::out::{to_message, unix_now, Out};
use crate::node::sub::{run_sub, SubCtx};
use crate::node::NodeState;
use crate::protocol::{
    encode_server, Action, Encoding, ErrorCode, ErrorMsg, Scope, ServerMsg, Session,
};

/// Frames queued per connection (a second bound beside [`CONN_OUT_BYTES`]).
const OUT_QUEUE: usize = 64;
/// Time a client has after the upgrade to send an accepted `hello`: 900 upgraded connections
/// that never sent one otherwise held their descriptors forever.
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A refused `hello` is answered after this delay, so guessing tokens is slow.
pub(crate) const FAILED_HELLO_DELAY: Duration = Duration::from_millis(500);

fn close_msg(code: u16, reason: impl Into<String>) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into().into(),
    }))
}

/// The session's last word for the connection, when it sends one; pending forever otherwise
/// (also once the session dropped its sender without sending).
async fn wait_last_word(rx: &mut Option<oneshot::Receiver<Message>>) -> Message {
    if let Some(r) = rx {
        if let Ok(m) = r.await {
            return m;
        }
        *rx = None;
    }
    std::future::pending().await
}

/// The connection's sender: sends queued frames in order until the queue closes or a close
/// frame goes out. A client that stopped reading blocks a send; the last word interrupts it
/// (the frame stays in the sink's buffer and still goes out first), the rest of the queue is
/// dropped, then the last word and close 1013 go out.
fn spawn_sender(
    mut sink: SplitSink<Socket, Message>,
    mut out_rx: mpsc::Receiver<Out>,
    last_word_rx: oneshot::Receiver<Message>,
    metrics: Arc<Metrics>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last_word = Some(last_word_rx);
        let mut final_msg = None;
        loop {
            let next = tokio::select! {
                biased;
                m = wait_last_word(&mut last_word) => { final_msg = Some(m); break; }
                o = out_rx.recv() => o,
            };
            let Some(o) = next else { break };
            match o {
                Out::Frame(m, permit) => {
                    let n = message_len(&m);
                    let sent = tokio::select! {
                        biased;
                        r = sink.send(m) => r.is_ok(),
                        m = wait_last_word(&mut last_word) => { final_msg = Some(m); break; }
                    };
                    drop(permit);
                    if !sent {
                        break;
                    }
                    metrics.frames_out.fetch_add(1, Relaxed);
                    metrics.bytes_out.fetch_add(n as u64, Relaxed);
                }
                Out::Close(code, reason) => {
                    let _ = sink.send(close_msg(code, reason)).await;
                    break;
                }
            }
        }
        if let Some(m) = final_msg {
            // Free the queue now: this client may never read again.
            out_rx.close();
            while out_rx.try_recv().is_ok() {}
            if sink.send(m).await.is_ok() {
                let _ = sink
                    .send(close_msg(1013, "overloaded: the client stopped reading"))
                    .await;
            }
        }
        let _ = sink.close().await;
    })
}

/// What the session loop drives besides the session: the connection's queues, subscriptions
/// and budgets. [`Shell::act`] carries out one [`Action`].
struct Shell {
    node: Arc<NodeState>,
    conn_id: u64,
    enc: Encoding,
    out: mpsc::Sender<Out>,
    /// Answers to writes, in the order the writes arrived (the session never waits for a
    /// commit).
    replies: mpsc::Sender<oneshot::Receiver<ServerMsg>>,
    budget: Arc<ConnBudget>,
    subs: HashMap<String, (JoinHandle<()>, Arc<SubStats>)>,
    /// The principal's read scope, shared by every subscription: a config reload narrows it
    /// for the next change each one delivers.
    scope: Arc<RwLock<Scope>>,
    /// When the principal's rights end (seconds since the epoch; `i64::MAX`: never): no
    /// subscription queues a frame after it.
    until: Arc<AtomicI64>,
    ended: mpsc::UnboundedSender<(String, bool)>,
}

impl Shell {
    async fn send(&self, m: ServerMsg) -> bool {
        let frame = Out::Frame(to_message(encode_server(self.enc, &m)), None);
        self.out.send(frame).await.is_ok()
    }

    /// Carry out one action; false when the connection ends.
    async fn act(&mut self, a: Action, write_budget: &mut Option<WriteBudget>) -> bool {
        match a {
            Action::Send(m) => return self.send(m).await,
            Action::Welcome => return self.send(welcome(&self.node).await).await,
            Action::Subscribe {
                sub,
                from,
                filter,
                read,
            } => {
                *self.scope.write() = read;
                let stats = self.node.metrics.add_sub(self.conn_id, &sub);
                let task = tokio::spawn(run_sub(SubCtx {
                    node: self.node.clone(),
                    sub: sub.clone(),
                    from,
                    filter,
                    read: self.scope.clone(),
                    until: self.until.clone(),
                    enc: self.enc,
                    out: self.out.clone(),
                    budget: self.budget.clone(),
                    stats: stats.clone(),
                    ended: self.ended.clone(),
                }));
                self.subs.insert(sub, (task, stats));
            }
            Action::Rescope { read } => *self.scope.write() = read,
            // The session's loop fetches keys before anything reaches here.
            Action::RefreshKeys { .. } => {}
            Action::Unsubscribe { sub } => self.end_sub(&sub),
            Action::Ack { sub, seq } => {
                if let Some((_, s)) = self.subs.get(&sub) {
                    s.acked.store(seq, Relaxed);
                }
            }
            Action::Write { req, ops, origin } => {
                if let Some(b) = write_budget.as_mut() {
                    b.grow_to(decoded_bytes(&ops)).await;
                }
                let answer = crate::node::role::route(
                    &self.node,
                    self.conn_id,
                    req,
                    ops,
                    origin,
                    write_budget.take(),
                )
                .await;
                return self.replies.send(answer).await.is_ok();
            }
            Action::Close { code, reason } => {
                let _ = self.out.send(Out::Close(code, reason)).await;
                return false;
            }
        }
        true
    }

    /// Stop a subscription's task (if it still runs) and forget it.
    fn end_sub(&mut self, sub: &str) {
        if let Some((t, _)) = self.subs.remove(sub) {
            t.abort();
        }
        self.node.metrics.remove_sub(self.conn_id, sub);
    }
}

/// The `welcome` for an accepted hello: the log's head and horizon.
async fn welcome(node: &Arc<NodeState>) -> ServerMsg {
    let s = node.store.clone();
    let hh = tokio::task::spawn_blocking(move || Ok::<_, Error>((s.head()?, s.horizon()?))).await;
    match hh {
        Ok(Ok((head, horizon))) => ServerMsg::Welcome {
            protocol: crate::protocol::PROTOCOL_VERSION,
            node: node.name.clone(),
            head,
            horizon,
            publish_key: node.publish_key.clone(),
        },
        _ => ServerMsg::Error(ErrorMsg::new(
            ErrorCode::Internal,
            "cannot read the change log head",
        )),
    }
}

/// The last word for a subscriber that stopped reading.
fn stalled_word(enc: Encoding, sub: &str) -> Message {
    let m = ErrorMsg {
        code: ErrorCode::Overloaded,
        message:
            "subscriber stopped reading; dropped: reconnect and resume from your last applied seq"
                .into(),
        sub: Some(sub.to_string()),
        req: None,
    };
    to_message(encode_server(enc, &ServerMsg::Error(m)))
}

/// Serve one upgraded connection until it closes.
pub(crate) async fn handle(
    socket: Socket,
    node: Arc<NodeState>,
    enc: Encoding,
    gate: Arc<HelloGate>,
    foreign_origin: Option<String>,
) {
    let conn_id = node.next_conn.fetch_add(1, Relaxed);
    node.metrics.connections.fetch_add(1, Relaxed);
    node.metrics.connections_total.fetch_add(1, Relaxed);
    let (sink, stream) = socket.split();
    let (out_tx, out_rx) = mpsc::channel::<Out>(OUT_QUEUE);
    // The last word for a client that stopped reading (see `spawn_sender`).
    let (last_word_tx, last_word_rx) = oneshot::channel::<Message>();
    let writer = spawn_sender(sink, out_rx, last_word_rx, node.metrics.clone());
    let (replies_tx, replies) = spawn_replies(enc, out_tx.clone());
    let (ended_tx, ended_rx) = mpsc::unbounded_channel::<(String, bool)>();
    let shell = Shell {
        node: node.clone(),
        conn_id,
        enc,
        out: out_tx,
        replies: replies_tx,
        budget: Arc::new(ConnBudget {
            out: Arc::new(Semaphore::new(CONN_OUT_BYTES)),
            node_bulk: node.bulk_out.clone(),
            bulk: Arc::new(Semaphore::new(1)),
            writes: Arc::new(Semaphore::new(CONN_WRITE_BYTES)),
        }),
        subs: HashMap::new(),
        scope: Arc::new(RwLock::new(Scope::default())),
        until: Arc::new(AtomicI64::new(i64::MAX)),
        ended: ended_tx,
    };
    let reader = Reader {
        stream,
        gate,
        ended: ended_rx,
        last_word: Some(last_word_tx),
        foreign_origin,
    };
    let stalled = reader.run(shell).await;
    // Writes already queued still commit; their answers go out before the connection closes.
    if tokio::time::timeout(Duration::from_secs(5), replies)
        .await
        .is_err()
    {
        tracing::debug!(conn = conn_id, "write answers did not finish in time");
    }
    let grace = if stalled {
        node.stall_timeout
    } else {
        Duration::from_secs(2)
    };
    let abort = writer.abort_handle();
    if tokio::time::timeout(grace, writer).await.is_err() {
        abort.abort();
        tracing::debug!(conn = conn_id, "writer did not finish in time");
    }
    node.metrics.connections.fetch_sub(1, Relaxed);
}

/// The task that sends write answers in the order the writes arrived.
fn spawn_replies(
    enc: Encoding,
    out: mpsc::Sender<Out>,
) -> (mpsc::Sender<oneshot::Receiver<ServerMsg>>, JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<oneshot::Receiver<ServerMsg>>(OUT_QUEUE);
    let task = tokio::spawn(async move {
        while let Some(reply) = rx.recv().await {
            let Ok(m) = reply.await else { break };
            let frame = Out::Frame(to_message(encode_server(enc, &m)), None);
            if out.send(frame).await.is_err() {
                break;
            }
        }
    });
    (tx, task)
}

/// The read side of a connection: the client's frames, ended subscriptions, shutdown and
/// config reloads, turned into session actions for the shell.
struct Reader {
    stream: futures_util::stream::SplitStream<Socket>,
    gate: Arc<HelloGate>,
    ended: mpsc::UnboundedReceiver<(String, bool)>,
    last_word: Option<oneshot::Sender<Message>>,
    /// The `Origin` of the web page that opened the connection, when it is neither this
    /// node's own nor an allowed one: such a page gets no anonymous access.
    foreign_origin: Option<String>,
}

/// What one read produced.
enum Step {
    Act(Vec<Action>, Option<WriteBudget>),
    Skip,
    /// End the connection (saying `node shutting down` first when true).
    End(bool),
}

fn shutting_down() -> Out {
    Out::Close(1001, "node shutting down".into())
}

impl Reader {
    /// The node's tokens, as this connection may use them.
    fn auth<'a>(&'a self, node: &'a NodeState) -> crate::node::auth::ForOrigin<'a> {
        crate::node::auth::ForOrigin {
            auth: &node.auth,
            foreign: self.foreign_origin.as_deref(),
        }
    }

    /// Read until the connection ends; true when it ended because the client stopped
    /// reading. The shell (and with it every subscription) is gone when this returns.
    async fn run(mut self, mut shell: Shell) -> bool {
        let node = shell.node.clone();
        let mut session = Session::new(shell.enc);
        let mut stalled = false;
        let mut shutdown = node.shutdown.clone();
        // A second receiver for the wait on write budgets (the select holds the first).
        let mut shutdown_reading = node.shutdown.clone();
        let mut config_gen = node.auth.subscribe();
        let hello_deadline = tokio::time::sleep(HELLO_TIMEOUT);
        tokio::pin!(hello_deadline);
        'conn: loop {
            let greeted = session.principal().is_some();
            let step = tokio::select! {
                // Ended subscriptions first (a failed one is reported here before the client
                // hears of it, so the client's next frames see it gone), then shutdown (not
                // starved by a chatty client), then the client's frames.
                biased;
                Some((sub, stall)) = self.ended.recv() => {
                    session.subscription_ended(&sub);
                    shell.end_sub(&sub);
                    if !stall {
                        continue;
                    }
                    // The client stopped reading: end the connection. Its queue is dropped;
                    // the error goes out if the client reads again within the stall timeout
                    // (then the connection is cut). It resumes from its last applied seq.
                    if let Some(w) = self.last_word.take() {
                        let _ = w.send(stalled_word(shell.enc, &sub));
                    }
                    stalled = true;
                    break 'conn;
                }
                _ = shutdown.changed() => Step::End(true),
                _ = config_gen.changed() => Step::Act(session.reauthorize(&self.auth(&node)), None),
                _ = &mut hello_deadline, if !greeted => {
                    Step::Act(session.on_hello_timeout(HELLO_TIMEOUT.as_secs()), None)
                }
                _ = until_unix(session.expires_at()) => Step::Act(session.on_expired(unix_now()), None),
                msg = self.stream.next() => {
                    self.frame(msg, &mut session, &shell, greeted, &mut shutdown_reading).await
                }
            };
            let (actions, mut write_budget) = match step {
                Step::Act(a, b) => (a, b),
                Step::Skip => continue,
                Step::End(say) => {
                    if say {
                        let _ = shell.out.send(shutting_down()).await;
                    }
                    break;
                }
            };
            let actions = self.fetch_keys(actions, &mut session, &node).await;
            shell
                .until
                .store(session.expires_at().unwrap_or(i64::MAX), Relaxed);
            if !greeted {
                self.after_hello(&session, &actions, &node).await;
            }
            for a in actions {
                if !shell.act(a, &mut write_budget).await {
                    break 'conn;
                }
            }
        }
        let subs: Vec<String> = shell.subs.keys().cloned().collect();
        for sub in subs {
            shell.end_sub(&sub);
        }
        stalled
    }

    /// One frame (or the end) from the client, through the session. A frame already read is
    /// never dropped: a write waits here for its share of the write budgets.
    async fn frame(
        &self,
        msg: Option<Result<Message, WsError>>,
        session: &mut Session,
        shell: &Shell,
        greeted: bool,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Step {
        let node = &shell.node;
        node.metrics.frames_in.fetch_add(1, Relaxed);
        let mut write_budget = None;
        if let Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) = &msg {
            if greeted {
                match take_write_budget(m, &shell.budget, node, shutdown).await {
                    Ok(b) => write_budget = b,
                    Err(()) => return Step::End(true),
                }
            }
        }
        let actions = match msg {
            None | Some(Ok(Message::Close(_))) => return Step::End(false),
            Some(Ok(Message::Text(t))) => session.on_text(t.as_str(), &self.auth(node)),
            Some(Ok(Message::Binary(b))) => session.on_binary(&b, &self.auth(node)),
            Some(Ok(_)) => return Step::Skip,
            Some(Err(WsError::Capacity(_))) => session.on_oversized(),
            Some(Err(WsError::Utf8(_))) => session.on_invalid_utf8(),
            Some(Err(_)) if self.gate.exceeded() => session.on_pre_hello_overflow(),
            Some(Err(e)) => {
                tracing::debug!(conn = shell.conn_id, error = %e, "connection read failed");
                return Step::End(false);
            }
        };
        Step::Act(actions, write_budget)
    }

    /// Before `hello` was accepted: open the gate once it is, and answer a refused one late
    /// (counted, logged at most once a second).
    /// Carry out the session's requests for keys (a token naming a key the node does not hold
    /// yet): fetch them, then let the session judge the token.
    async fn fetch_keys(
        &self,
        mut actions: Vec<Action>,
        session: &mut Session,
        node: &Arc<NodeState>,
    ) -> Vec<Action> {
        while let Some(i) = actions
            .iter()
            .position(|a| matches!(a, Action::RefreshKeys { .. }))
        {
            if let Action::RefreshKeys { kid } = actions.remove(i) {
                node.auth.refresh_keys(&kid).await;
            }
            let more = session.keys_ready(&self.auth(node));
            actions.splice(i..i, more);
        }
        actions
    }

    async fn after_hello(&self, session: &Session, actions: &[Action], node: &NodeState) {
        if session.principal().is_some() {
            self.gate.open();
        } else if actions.iter().any(
            |a| matches!(a, Action::Send(ServerMsg::Error(e)) if e.code == ErrorCode::Unauthorized),
        ) {
            if let Some(n) = node.metrics.failed_hello() {
                tracing::warn!(refused = n, "hello refused (wrong or missing token)");
            }
            tokio::time::sleep(FAILED_HELLO_DELAY).await;
        }
    }
}

/// Resolves once the clock reaches `at` (seconds since the epoch); never without one.
async fn until_unix(at: Option<i64>) {
    let Some(at) = at else {
        return std::future::pending().await;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let left = Duration::from_secs(at.max(0) as u64).saturating_sub(now);
    tokio::time::sleep(left).await;
}
