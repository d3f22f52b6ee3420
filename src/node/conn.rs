//! One WebSocket connection: the tokio shell around the protocol's [`Session`]. It moves
//! bytes, runs the session's actions (writes, subscriptions) and nothing else.
//!
//! What one connection may hold is bounded in bytes, so a hostile or stalled client costs the
//! node a known amount of memory and never the readers other clients need:
//! - before `hello`: [`MAX_PRE_HELLO_BYTES`] read from the socket ([`HelloGate`]), and
//!   [`HELLO_TIMEOUT`] to send it;
//! - writes queued for the writer: [`CONN_WRITE_BYTES`] of frames per connection and
//!   [`NODE_WRITE_BYTES`] for the node, taken before a frame is decoded; at either limit the
//!   connection stops reading its socket until earlier writes commit;
//! - frames queued for the client: [`CONN_OUT_BYTES`]; a subscription waits for room (and is
//!   dropped after the stall timeout);
//! - snapshot and catch-up reads: one at a time per connection ([`ConnBudget::bulk`]), and
//!   all but one of the pool's readers for the node ([`super::NodeState::bulk_reads`]); a
//!   page is read, the reader released, then the page is sent.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use parking_lot::RwLock;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use super::hub::WindowRead;
use super::metrics::SubStats;
use super::NodeState;
use crate::error::Error;
use crate::model::Change;
use crate::protocol::{
    changes_frame, changes_frame_of, encode_server, Action, Encoding, ErrorCode, ErrorMsg, Frame,
    Scope, ServerMsg, Session, FRAME_SPLIT_BYTES, MAX_PRE_HELLO_BYTES,
};
use crate::query::{self, ChangeFilter, SnapshotCursor};

/// Frames queued per connection (a second bound beside [`CONN_OUT_BYTES`]).
const OUT_QUEUE: usize = 64;
/// Bytes of frames queued per connection for its client: 64 snapshot subscriptions that were
/// never read held 926 MB before this bound.
pub(crate) const CONN_OUT_BYTES: usize = 8 * 1024 * 1024;
/// Most changes per `changes` frame.
const BATCH: usize = 1000;
/// Most encoded bytes per `changes` frame from the window (whole transactions up to
/// [`FRAME_SPLIT_BYTES`]). 64 KiB rather than 1 MiB: each subscriber's frame is its own copy,
/// and big fresh allocations cost page faults (node CPU per delivery -37% at 100 subscribers).
const BATCH_BYTES: usize = 64 * 1024;
/// Rows per `snapshot` frame (and at most [`FRAME_SPLIT_BYTES`]).
const SNAPSHOT_CHUNK: usize = 1000;
/// Time a client has after the upgrade to send an accepted `hello`: 900 upgraded connections
/// that never sent one otherwise held their descriptors forever.
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A refused `hello` is answered after this delay, so guessing tokens is slow.
pub(crate) const FAILED_HELLO_DELAY: Duration = Duration::from_millis(500);
/// Bytes of write frames one connection may have queued or committing.
pub(crate) const CONN_WRITE_BYTES: usize = 16 * 1024 * 1024;
/// Bytes of write frames the whole node may have queued or committing: with 8 MiB frames, 3
/// connections pipelining writes behind slow commits took the node past 4 GB before this.
pub(crate) const NODE_WRITE_BYTES: usize = 64 * 1024 * 1024;

/// The bytes a client may still send before its `hello` is accepted; lifted by the accepted
/// hello. Shared by the connection and the socket's reader ([`Gated`]).
#[derive(Debug)]
pub(crate) struct HelloGate {
    left: AtomicI64,
}

impl HelloGate {
    /// A closed gate: [`MAX_PRE_HELLO_BYTES`] allowed.
    pub(crate) fn new() -> Arc<HelloGate> {
        Arc::new(HelloGate {
            left: AtomicI64::new(MAX_PRE_HELLO_BYTES as i64),
        })
    }

    fn open(&self) {
        self.left.store(i64::MAX, Relaxed);
    }

    /// True when the client sent more than it may before `hello`.
    fn exceeded(&self) -> bool {
        self.left.load(Relaxed) <= 0
    }
}

/// A socket whose reads fail once a closed [`HelloGate`] runs out: the WebSocket reader then
/// stops, however large a frame its header announced.
pub(crate) struct Gated<S> {
    inner: S,
    gate: Arc<HelloGate>,
}

impl<S> Gated<S> {
    /// `inner` behind `gate`.
    pub(crate) fn new(inner: S, gate: Arc<HelloGate>) -> Self {
        Gated { inner, gate }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Gated<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.gate.exceeded() {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "too many bytes before hello",
            )));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            let left = &self.gate.left;
            // Saturating: an open gate stays open.
            let _ = left.fetch_update(Relaxed, Relaxed, |v| {
                (v != i64::MAX).then_some(v - n as i64)
            });
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Gated<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The upgraded socket a connection speaks over.
pub(crate) type Socket = WebSocketStream<Gated<TokioIo<hyper::upgrade::Upgraded>>>;

/// A frame for the client, holding its share of [`CONN_OUT_BYTES`] until it is sent.
enum Out {
    Frame(Message, Option<OwnedSemaphorePermit>),
    Close(u16, String),
}

fn close_msg(code: u16, reason: impl Into<String>) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into().into(),
    }))
}

fn to_message(f: Frame) -> Message {
    match f {
        Frame::Text(s) => Message::Text(s.into()),
        Frame::Binary(b) => Message::Binary(b.into()),
    }
}

fn message_len(m: &Message) -> usize {
    match m {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        _ => 0,
    }
}

/// Permits for `n` bytes of a budget of `cap` (a frame larger than the whole budget takes all
/// of it, so it still goes, alone).
fn permits(n: usize, cap: usize) -> u32 {
    n.clamp(1, cap) as u32
}

/// What one connection shares between its session loop and its subscriptions.
pub(crate) struct ConnBudget {
    /// Bytes of frames queued for the client.
    out: Arc<Semaphore>,
    /// One snapshot page or catch-up page read at a time per connection.
    bulk: Arc<Semaphore>,
    /// Bytes of write frames queued or committing.
    writes: Arc<Semaphore>,
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

/// The error code a store error maps to.
pub(crate) fn code_for(e: &Error) -> ErrorCode {
    match e {
        Error::PoolTimeout(_) | Error::DiskFull => ErrorCode::Overloaded,
        Error::ReadOnly => ErrorCode::Forbidden,
        Error::TooLarge { .. } => ErrorCode::TooLarge,
        Error::Op { source, .. } => code_for(source),
        e if e.is_client_error() => ErrorCode::BadRequest,
        _ => ErrorCode::Internal,
    }
}

/// Write permits held from the frame's arrival until its write is answered.
pub(crate) struct WriteBudget {
    _conn: OwnedSemaphorePermit,
    _node: OwnedSemaphorePermit,
}

/// Serve one upgraded connection until it closes.
pub(crate) async fn handle(
    socket: Socket,
    node: Arc<NodeState>,
    enc: Encoding,
    gate: Arc<HelloGate>,
) {
    let conn_id = node.next_conn.fetch_add(1, Relaxed);
    node.metrics.connections.fetch_add(1, Relaxed);
    node.metrics.connections_total.fetch_add(1, Relaxed);
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(OUT_QUEUE);
    let budget = Arc::new(ConnBudget {
        out: Arc::new(Semaphore::new(CONN_OUT_BYTES)),
        bulk: Arc::new(Semaphore::new(1)),
        writes: Arc::new(Semaphore::new(CONN_WRITE_BYTES)),
    });
    let metrics = node.metrics.clone();
    // The last word for a client that stopped reading: sent after whatever frame is in flight,
    // ahead of everything still queued (which is dropped), then the connection closes.
    let (last_word_tx, last_word_rx) = oneshot::channel::<Message>();
    let writer = tokio::spawn(async move {
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
                    // A client that stopped reading blocks this send; the last word interrupts
                    // it (the frame stays in the sink's buffer and still goes out first).
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
    });

    // Answers to writes, in the order the writes arrived; the session never waits for a commit.
    let (replies_tx, mut replies_rx) = mpsc::channel::<oneshot::Receiver<ServerMsg>>(OUT_QUEUE);
    let replies_out = out_tx.clone();
    let replies = tokio::spawn(async move {
        while let Some(rx) = replies_rx.recv().await {
            let Ok(m) = rx.await else { break };
            let frame = Out::Frame(to_message(encode_server(enc, &m)), None);
            if replies_out.send(frame).await.is_err() {
                break;
            }
        }
    });
    let mut session = Session::new(enc);
    let mut stalled_end = false;
    let mut subs: HashMap<String, (JoinHandle<()>, Arc<SubStats>)> = HashMap::new();
    // The principal's read scope, shared by every subscription: a config reload narrows it for
    // the next change each one delivers.
    let scope: Arc<RwLock<Scope>> = Arc::new(RwLock::new(Scope::default()));
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(String, bool)>();
    let mut shutdown = node.shutdown.clone();
    let mut config_gen = node.auth.subscribe();
    let hello_deadline = tokio::time::sleep(HELLO_TIMEOUT);
    tokio::pin!(hello_deadline);
    let send = |m: ServerMsg| Out::Frame(to_message(encode_server(enc, &m)), None);
    'conn: loop {
        let mut write_budget = None;
        let greeted = session.principal().is_some();
        let actions = tokio::select! {
            // Ended subscriptions first (a failed one is reported here before the client hears of
            // it, so the client's next frames see it gone), then shutdown (not starved by a
            // chatty client), then the client's frames.
            biased;
            Some((sub, stalled)) = ended_rx.recv() => {
                session.subscription_ended(&sub);
                subs.remove(&sub);
                node.metrics.remove_sub(conn_id, &sub);
                if stalled {
                    // The client stopped reading: end the connection. Its queue is dropped; the
                    // error goes out if the client reads again within the stall timeout (then
                    // the connection is cut). It resumes from its last applied seq.
                    let m = ErrorMsg {
                        code: ErrorCode::Overloaded,
                        message: "subscriber stopped reading; dropped: reconnect and resume from your last applied seq".into(),
                        sub: Some(sub.clone()),
                        req: None,
                    };
                    let _ = last_word_tx.send(to_message(encode_server(enc, &ServerMsg::Error(m))));
                    stalled_end = true;
                    break 'conn;
                }
                continue;
            }
            _ = shutdown.changed() => {
                let _ = out_tx.send(Out::Close(1001, "node shutting down".into())).await;
                break;
            }
            _ = config_gen.changed() => session.reauthorize(&node.auth),
            _ = &mut hello_deadline, if !greeted => {
                let m = ErrorMsg::new(ErrorCode::BadRequest, format!("no hello within {} s: send {{\"type\":\"hello\",\"token\":\"...\"}} first", HELLO_TIMEOUT.as_secs()));
                let _ = out_tx.send(send(ServerMsg::Error(m))).await;
                let _ = out_tx.send(Out::Close(1008, "no hello".into())).await;
                break;
            }
            msg = stream.next() => {
                node.metrics.frames_in.fetch_add(1, Relaxed);
                let msg = match msg {
                    Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) if greeted => {
                        // Backpressure on writes: take the frame's bytes from this connection's
                        // and the node's write budgets before decoding it; while either is
                        // spent, this socket is not read. Released at once unless it is a write.
                        let n = message_len(&m);
                        let take = async {
                            let c = budget.writes.clone().acquire_many_owned(permits(n, CONN_WRITE_BYTES)).await.ok()?;
                            let w = node.write_budget.clone().acquire_many_owned(permits(n, NODE_WRITE_BYTES)).await.ok()?;
                            Some(WriteBudget { _conn: c, _node: w })
                        };
                        tokio::select! {
                            b = take => write_budget = b,
                            _ = shutdown.changed() => {
                                let _ = out_tx.send(Out::Close(1001, "node shutting down".into())).await;
                                break;
                            }
                        }
                        Some(Ok(m))
                    }
                    m => m,
                };
                match msg {
                    None | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Text(t))) => session.on_text(t.as_str(), &node.auth),
                    Some(Ok(Message::Binary(b))) => session.on_binary(&b, &node.auth),
                    Some(Ok(_)) => continue,
                    Some(Err(WsError::Capacity(_))) => session.on_oversized(),
                    Some(Err(WsError::Utf8(_))) => {
                        let m = ErrorMsg::new(ErrorCode::BadRequest, "invalid UTF-8 in a text frame");
                        let _ = out_tx.send(send(ServerMsg::Error(m))).await;
                        let _ = out_tx.send(Out::Close(1007, "invalid UTF-8 in a text frame".into())).await;
                        break;
                    }
                    Some(Err(_)) if gate.exceeded() => {
                        let m = ErrorMsg::new(ErrorCode::TooLarge, format!("more than {MAX_PRE_HELLO_BYTES} bytes before hello: send {{\"type\":\"hello\",\"token\":\"...\"}} first"));
                        let _ = out_tx.send(send(ServerMsg::Error(m))).await;
                        let _ = out_tx.send(Out::Close(1009, "too many bytes before hello".into())).await;
                        break;
                    }
                    Some(Err(e)) => {
                        tracing::debug!(conn = conn_id, error = %e, "connection read failed");
                        break;
                    }
                }
            }
        };
        if !greeted {
            if session.principal().is_some() {
                gate.open();
            } else if actions.iter().any(|a| matches!(a, Action::Close { .. })) {
                // A refused hello: counted, logged at most once a second, and answered late.
                if let Some(n) = node.metrics.failed_hello() {
                    tracing::warn!(refused = n, "hello refused (wrong or missing token)");
                }
                tokio::time::sleep(FAILED_HELLO_DELAY).await;
            }
        }
        for a in actions {
            match a {
                Action::Send(m) => {
                    if out_tx.send(send(m)).await.is_err() {
                        break 'conn;
                    }
                }
                Action::Welcome => {
                    let s = node.store.clone();
                    let hh = tokio::task::spawn_blocking(move || {
                        Ok::<_, Error>((s.head()?, s.horizon()?))
                    })
                    .await;
                    let m = match hh {
                        Ok(Ok((head, horizon))) => ServerMsg::Welcome {
                            protocol: crate::protocol::PROTOCOL_VERSION,
                            node: node.name.clone(),
                            head,
                            horizon,
                        },
                        _ => ServerMsg::Error(ErrorMsg::new(
                            ErrorCode::Internal,
                            "cannot read the change log head",
                        )),
                    };
                    if out_tx.send(send(m)).await.is_err() {
                        break 'conn;
                    }
                }
                Action::Subscribe {
                    sub,
                    from,
                    filter,
                    read,
                } => {
                    *scope.write() = read;
                    let stats = node.metrics.add_sub(conn_id, &sub);
                    let task = tokio::spawn(run_sub(SubCtx {
                        node: node.clone(),
                        sub: sub.clone(),
                        from,
                        filter,
                        read: scope.clone(),
                        enc,
                        out: out_tx.clone(),
                        budget: budget.clone(),
                        stats: stats.clone(),
                        ended: ended_tx.clone(),
                    }));
                    subs.insert(sub, (task, stats));
                }
                Action::Rescope { read } => *scope.write() = read,
                Action::Unsubscribe { sub } => {
                    if let Some((t, _)) = subs.remove(&sub) {
                        t.abort();
                    }
                    node.metrics.remove_sub(conn_id, &sub);
                }
                Action::Ack { sub, seq } => {
                    if let Some((_, s)) = subs.get(&sub) {
                        s.acked.store(seq, Relaxed);
                    }
                }
                Action::Write { req, ops } => {
                    let answer = write(&node, req, ops, write_budget.take()).await;
                    if replies_tx.send(answer).await.is_err() {
                        break 'conn;
                    }
                }
                Action::Close { reason } => {
                    let _ = out_tx.send(Out::Close(1008, reason)).await;
                    break 'conn;
                }
            }
        }
    }
    for (sub, (t, _)) in subs.drain() {
        t.abort();
        node.metrics.remove_sub(conn_id, &sub);
    }
    // Writes already queued still commit; their answers go out before the connection closes.
    drop(replies_tx);
    if tokio::time::timeout(Duration::from_secs(5), replies)
        .await
        .is_err()
    {
        tracing::debug!(conn = conn_id, "write answers did not finish in time");
    }
    drop(out_tx);
    let grace = if stalled_end {
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

/// A write for the node's writer thread: the ops, and where its answer goes.
pub(crate) struct WriteJob {
    req: String,
    ops: Vec<crate::model::WriteOp>,
    t0: Instant,
    reply: oneshot::Sender<ServerMsg>,
    /// Released when the writer is done with the job.
    _budget: Option<WriteBudget>,
}

/// Writes waiting for the writer thread, across all connections; a full queue makes sessions
/// wait before reading their next frame (backpressure on writers, not on subscribers).
pub(crate) const WRITE_QUEUE: usize = 1024;

/// The node's writer: one thread that commits queued writes one transaction each, in arrival
/// order, and answers each. Sessions never wait for a commit: the answer goes through the
/// connection's replies task. Measured against committing inside the session task (through
/// `spawn_blocking`, behind every subscriber's task in tokio's run queue): writer round trip at
/// 1,000 subscribers p50 29.8 s -> 0.66 s (benches/node.rs, part 1).
pub(crate) fn spawn_writer(
    store: Arc<crate::store::Store>,
    hub: Arc<super::hub::Hub>,
    metrics: Arc<super::metrics::Metrics>,
    mut jobs: mpsc::Receiver<WriteJob>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("hivesync-writer".into())
        .spawn(move || {
            while let Some(job) = jobs.blocking_recv() {
                let m = match store.write(&job.ops) {
                    Ok(r) => {
                        metrics.observe_write(job.t0.elapsed());
                        hub.wake();
                        ServerMsg::Written {
                            req: job.req,
                            seq: r.seq,
                        }
                    }
                    Err(e) => {
                        metrics.write_errors.fetch_add(1, Relaxed);
                        ServerMsg::Error(ErrorMsg {
                            code: code_for(&e),
                            message: e.to_string(),
                            sub: None,
                            req: Some(job.req),
                        })
                    }
                };
                let _ = job.reply.send(m);
            }
        })
}

/// Start a write and return where its answer will arrive. Writes from one connection are
/// committed (or forwarded upstream) in the order they arrived.
async fn write(
    node: &Arc<NodeState>,
    req: String,
    ops: Vec<crate::model::WriteOp>,
    budget: Option<WriteBudget>,
) -> oneshot::Receiver<ServerMsg> {
    let (reply, rx) = oneshot::channel();
    fn refuse(code: ErrorCode, message: String, req: String) -> ServerMsg {
        ServerMsg::Error(ErrorMsg {
            code,
            message,
            sub: None,
            req: Some(req),
        })
    }
    if node.read_only {
        node.metrics.write_errors.fetch_add(1, Relaxed);
        let message = match &node.auth.config().primary {
            Some(p) => format!("this node is a read-only follower: send writes to the primary at {p}"),
            None => "this node is a read-only follower: send writes to the primary (set `primary` in this node's config to name it here)".into(),
        };
        let _ = reply.send(refuse(ErrorCode::Forbidden, message, req));
        return rx;
    }
    let t0 = Instant::now();
    if let Some(up) = &node.upstream {
        // Edge mode: the upstream owns the log; its answer is ours. The forward is queued here,
        // in order; only the wait for the upstream's answer runs on its own.
        let (up_reply, up_rx) = oneshot::channel();
        let overloaded = |m: &str, req: String| refuse(ErrorCode::Overloaded, m.into(), req);
        if up
            .forward
            .send(super::upstream::Forward {
                ops,
                reply: up_reply,
            })
            .await
            .is_err()
        {
            let _ = reply.send(overloaded("the upstream link is not running", req));
            return rx;
        }
        let node = node.clone();
        tokio::spawn(async move {
            let _budget = budget;
            let m = match tokio::time::timeout(Duration::from_secs(30), up_rx).await {
                Ok(Ok(Ok(seq))) => {
                    node.metrics.observe_write(t0.elapsed());
                    ServerMsg::Written { req, seq }
                }
                Ok(Ok(Err(mut e))) => {
                    node.metrics.write_errors.fetch_add(1, Relaxed);
                    e.req = Some(req);
                    ServerMsg::Error(e)
                }
                _ => overloaded("the upstream did not answer the write within 30 s; it may or may not have committed", req),
            };
            let _ = reply.send(m);
        });
        return rx;
    }
    let Some(writes) = &node.writes else {
        let _ = reply.send(refuse(
            ErrorCode::Internal,
            "this node has no writer".into(),
            req,
        ));
        return rx;
    };
    let job = WriteJob {
        req,
        ops,
        t0,
        reply,
        _budget: budget,
    };
    if let Err(mpsc::error::SendError(job)) = writes.send(job).await {
        let _ = job.reply.send(refuse(
            ErrorCode::Overloaded,
            "the node is shutting down; retry the write on another connection".into(),
            job.req,
        ));
    }
    rx
}

struct SubCtx {
    node: Arc<NodeState>,
    sub: String,
    from: Option<i64>,
    filter: ChangeFilter,
    /// The connection's read scope (narrowed by config reloads).
    read: Arc<RwLock<Scope>>,
    enc: Encoding,
    out: mpsc::Sender<Out>,
    budget: Arc<ConnBudget>,
    stats: Arc<SubStats>,
    ended: mpsc::UnboundedSender<(String, bool)>,
}

enum SubEnd {
    Done,
    Stalled,
    Failed(ErrorMsg),
}

async fn run_sub(ctx: SubCtx) {
    let end = serve_sub(&ctx).await;
    let stalled = matches!(end, SubEnd::Stalled);
    match end {
        SubEnd::Done => {}
        SubEnd::Stalled => {
            // The session sends the error, ahead of the full queue.
            ctx.node.metrics.stalled_drops.fetch_add(1, Relaxed);
        }
        SubEnd::Failed(mut m) => {
            // Tell the session before the client: a client that reads this error and reuses
            // the subscription id must not be refused as a duplicate of the ended one.
            let _ = ctx.ended.send((ctx.sub.clone(), false));
            // The task is no longer the session's to abort: bound the wait for queue room.
            m.sub = Some(ctx.sub.clone());
            let frame = to_message(encode_server(ctx.enc, &ServerMsg::Error(m)));
            let _ = ctx.push(frame).await;
            return;
        }
    }
    let _ = ctx.ended.send((ctx.sub.clone(), stalled));
}

impl SubCtx {
    fn pass(&self, read: &Scope, ns: &str, kind: crate::model::Kind) -> bool {
        self.filter.matches(ns, kind) && read.allows(ns)
    }

    /// Queue a frame, waiting at most the stall timeout for room (in frames and in the
    /// connection's [`CONN_OUT_BYTES`]).
    async fn push(&self, m: Message) -> Result<(), SubEnd> {
        let n = permits(message_len(&m), CONN_OUT_BYTES);
        let queued = async {
            let permit = self.budget.out.clone().acquire_many_owned(n).await.ok();
            self.out.send(Out::Frame(m, permit)).await
        };
        match tokio::time::timeout(self.node.stall_timeout, queued).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(SubEnd::Done),
            Err(_) => Err(SubEnd::Stalled),
        }
    }

    /// Take this connection's bulk-read slot, then one of the node's bulk readers, for one
    /// page: at most one page per connection at a time, and never every reader of the pool.
    async fn bulk_slot(&self) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), SubEnd> {
        let mine = self.budget.bulk.clone().acquire_owned().await;
        let node = self.node.bulk_reads.clone().acquire_owned().await;
        match (mine, node) {
            (Ok(a), Ok(b)) => Ok((a, b)),
            _ => Err(SubEnd::Done),
        }
    }
}

fn failed(code: ErrorCode, message: impl Into<String>) -> SubEnd {
    SubEnd::Failed(ErrorMsg::new(code, message))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::Result<T> + Send + 'static,
) -> Result<T, SubEnd> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(failed(code_for(&e), e.to_string())),
        Err(_) => Err(failed(
            ErrorCode::Internal,
            "a read task failed inside the node",
        )),
    }
}

async fn serve_sub(ctx: &SubCtx) -> SubEnd {
    match serve_sub_inner(ctx).await {
        Ok(()) => SubEnd::Done,
        Err(e) => e,
    }
}

async fn serve_sub_inner(ctx: &SubCtx) -> Result<(), SubEnd> {
    let node = &ctx.node;
    let s = node.store.clone();
    let (head, horizon) = blocking(move || Ok((s.head()?, s.horizon()?))).await?;
    let (mut scan, mut sent) = match ctx.from {
        Some(f) if f > head => {
            return Err(failed(
                ErrorCode::BadRequest,
                format!("cursor from the future: from={f} but this node's log ends at {head}; the replica belongs to another node or was restored from elsewhere: subscribe without `from` to take a snapshot"),
            ))
        }
        Some(f) if f >= horizon - 1 => (f, f),
        _ => {
            let at = snapshot(ctx).await?;
            (at, at)
        }
    };
    ctx.stats.sent.store(sent, Relaxed);
    let mut live = false;
    let mut head_rx = node.hub.subscribe_head();
    let mut shutdown = node.shutdown.clone();
    loop {
        let head_now = *head_rx.borrow_and_update();
        let read_scope = ctx.read.read().clone();
        let read = node.hub.read(scan, BATCH, BATCH_BYTES, ctx.enc, |ns, k| {
            ctx.pass(&read_scope, ns, k)
        });
        // The frame to send (and the last seq in it), and the position scanned up to.
        let (frames, scanned): (Vec<(Message, i64)>, i64) = match read {
            WindowRead::Changes(parts, scanned) => {
                let frame = parts.last().map(|c| {
                    let f = changes_frame(
                        ctx.enc,
                        &ctx.sub,
                        sent,
                        parts.iter().map(|c| c.bytes(ctx.enc)),
                    );
                    (to_message(f), c.seq)
                });
                (frame.into_iter().collect(), scanned)
            }
            WindowRead::Behind => {
                // Catch-up from the log: read a page, filter and encode it in the blocking
                // task, in this subscriber's encoding only, release the reader, then send.
                let slot = ctx.bulk_slot().await?;
                let (s, filter, from) = (node.store.clone(), ctx.filter.clone(), scan);
                let (enc, sub, prev) = (ctx.enc, ctx.sub.clone(), sent);
                let res = blocking(move || {
                    s.read(|c| {
                        c.execute_batch("BEGIN")?;
                        let r = (|| {
                            // Retention (or an edge node's re-sync) may have trimmed the log
                            // past this subscription while it caught up: the changes it missed
                            // are gone, so it gets a fresh snapshot instead of a silent gap.
                            if from < query::horizon(c)? - 1 {
                                return Ok(None);
                            }
                            let head = query::head(c)?;
                            let (rows, more) =
                                query::changes_page(c, from, &filter, BATCH, FRAME_SPLIT_BYTES)?;
                            let scanned = if more {
                                rows.last().map_or(head, |r| r.seq)
                            } else {
                                head
                            };
                            // `changes_page` applied the filter; the token's scope remains.
                            let pass: Vec<&Change> =
                                rows.iter().filter(|c| read_scope.allows(&c.ns)).collect();
                            Ok(Some((changes_frames(enc, &sub, prev, &pass), scanned)))
                        })();
                        let _ = c.execute_batch("COMMIT");
                        r
                    })
                })
                .await;
                drop(slot.1);
                let Some(read) = res? else {
                    drop(slot.0);
                    let at = snapshot(ctx).await?;
                    scan = at;
                    sent = at;
                    ctx.stats.sent.store(sent, Relaxed);
                    continue;
                };
                for (m, last) in read.0 {
                    ctx.push(m).await?;
                    sent = last;
                    ctx.stats.sent.store(sent, Relaxed);
                }
                (Vec::new(), read.1)
            }
        };
        for (m, last) in frames {
            ctx.push(m).await?;
            sent = last;
            ctx.stats.sent.store(sent, Relaxed);
        }
        scan = scan.max(scanned);
        if scan >= head_now && scan >= node.hub.head() {
            if !live {
                live = true;
                let m = ServerMsg::Live {
                    sub: ctx.sub.clone(),
                    seq: scan,
                };
                ctx.push(to_message(encode_server(ctx.enc, &m))).await?;
            }
            ctx.stats.sent.store(scan.max(sent), Relaxed);
            tokio::select! {
                r = head_rx.changed() => if r.is_err() { return Ok(()) },
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }
}

/// `changes` frames of whole transactions up to [`FRAME_SPLIT_BYTES`] each (a transaction
/// larger than that alone is split), with the `prev` chain running through them; each with
/// its last seq.
fn changes_frames(
    enc: Encoding,
    sub: &str,
    mut prev: i64,
    changes: &[&Change],
) -> Vec<(Message, i64)> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < changes.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < changes.len() {
            // The end of the transaction starting at `end`.
            let mut tx_end = end;
            let mut tx_bytes = 0;
            while tx_end < changes.len() && changes[tx_end].tx == changes[end].tx {
                tx_bytes += changes[tx_end].frame_bytes();
                tx_end += 1;
            }
            if end == start && tx_bytes > FRAME_SPLIT_BYTES {
                // Too large for one frame: as much of it as fits (at least one change).
                let mut b = 0;
                while end < tx_end
                    && (end == start || b + changes[end].frame_bytes() <= FRAME_SPLIT_BYTES)
                {
                    b += changes[end].frame_bytes();
                    end += 1;
                }
                break;
            }
            if end > start && bytes + tx_bytes > FRAME_SPLIT_BYTES {
                break;
            }
            bytes += tx_bytes;
            end = tx_end;
        }
        let part = &changes[start..end];
        let last = part[part.len() - 1].seq;
        let f = changes_frame_of(enc, sub, prev, part.iter().copied());
        out.push((to_message(f), last));
        prev = last;
        start = end;
    }
    out
}

/// Send a snapshot in pages of at most [`SNAPSHOT_CHUNK`] rows and about [`FRAME_SPLIT_BYTES`],
/// each read in a read transaction of its own with the reader released before the page is
/// sent ([`query::snapshot_page`] says why the result still converges); returns its seq.
async fn snapshot(ctx: &SubCtx) -> Result<i64, SubEnd> {
    let s = ctx.node.store.clone();
    let read = ctx.read.read().clone();
    let mut filter = ctx.filter.clone();
    let (at, filter) = blocking(move || {
        s.read(|c| {
            if filter.namespaces.is_none() && !read.is_all() {
                let all = query::namespaces(c)?;
                filter.namespaces = Some(all.into_iter().filter(|n| read.allows(n)).collect());
            }
            Ok((query::head(c)?, filter))
        })
    })
    .await?;
    let filter = Arc::new(filter);
    let mut cursor = SnapshotCursor::default();
    // One page ahead: the last page goes out with `done`.
    let mut pending: Option<Vec<Change>> = None;
    loop {
        let slot = ctx.bulk_slot().await?;
        let (s, f) = (ctx.node.store.clone(), filter.clone());
        let page = blocking(move || {
            s.read(|c| {
                let p = query::snapshot_page(
                    c,
                    &f,
                    at,
                    &mut cursor,
                    SNAPSHOT_CHUNK,
                    FRAME_SPLIT_BYTES,
                )?;
                Ok((p, cursor))
            })
        })
        .await;
        drop(slot.1);
        let (page, next) = page?;
        cursor = next;
        let done = page.is_none();
        if let Some(rows) = pending.take() {
            let m = ServerMsg::Snapshot {
                sub: ctx.sub.clone(),
                at,
                rows,
                done,
            };
            ctx.push(to_message(encode_server(ctx.enc, &m))).await?;
        } else if done {
            let m = ServerMsg::Snapshot {
                sub: ctx.sub.clone(),
                at,
                rows: Vec::new(),
                done: true,
            };
            ctx.push(to_message(encode_server(ctx.enc, &m))).await?;
        }
        drop(slot.0);
        match page {
            Some(rows) => pending = Some(rows),
            None => return Ok(at),
        }
    }
}
