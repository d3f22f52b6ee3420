//! One WebSocket connection: the tokio shell around the protocol's [`Session`]. It moves
//! bytes, runs the session's actions (writes, subscriptions) and nothing else.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::hub::WindowRead;
use super::metrics::SubStats;
use super::NodeState;
use crate::error::Error;
use crate::model::Change;
use crate::protocol::{
    changes_frame, changes_frame_of, encode_server, Action, Encoding, ErrorCode, ErrorMsg, Frame,
    Scope, ServerMsg, Session,
};
use crate::query::{self, ChangeFilter};

/// Frames queued per connection before its subscriptions stop pulling: with batches of at
/// most [`BATCH_BYTES`] (catch-up frames of [`BATCH`] changes of a few hundred bytes), this
/// bounds a connection's queued memory to a few MiB in the worst case (one transaction larger
/// than a frame is never split, so a huge one counts whole) and nothing when idle.
const OUT_QUEUE: usize = 16;
/// Most changes per `changes` frame.
const BATCH: usize = 1000;
/// Most encoded bytes per `changes` frame from the window (a transaction is never split, so
/// one may exceed it). 64 KiB rather than 1 MiB: each subscriber's frame is its own copy, and
/// big fresh allocations cost page faults (node CPU per delivery -37% at 100 subscribers).
const BATCH_BYTES: usize = 64 * 1024;
/// Rows per `snapshot` frame.
const SNAPSHOT_CHUNK: usize = 1000;

enum Out {
    Frame(Message),
    Close(u16, String),
}

fn to_message(f: Frame) -> Message {
    match f {
        Frame::Text(s) => Message::Text(s.into()),
        Frame::Binary(b) => Message::Binary(b.into()),
    }
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

fn is_capacity(e: &axum::Error) -> bool {
    let s = e.to_string();
    s.contains("Space limit exceeded") || s.contains("too long") || s.contains("Message too big")
}

/// Serve one upgraded connection until it closes.
pub(crate) async fn handle(socket: WebSocket, node: Arc<NodeState>, enc: Encoding) {
    let conn_id = node.next_conn.fetch_add(1, Relaxed);
    node.metrics.connections.fetch_add(1, Relaxed);
    node.metrics.connections_total.fetch_add(1, Relaxed);
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(OUT_QUEUE);
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
                Out::Frame(m) => {
                    let n = match &m {
                        Message::Text(t) => t.len(),
                        Message::Binary(b) => b.len(),
                        _ => 0,
                    };
                    // A client that stopped reading blocks this send; the last word interrupts
                    // it (the frame stays in the sink's buffer and still goes out first).
                    let sent = tokio::select! {
                        biased;
                        r = sink.send(m) => r.is_ok(),
                        m = wait_last_word(&mut last_word) => { final_msg = Some(m); break; }
                    };
                    if !sent {
                        break;
                    }
                    metrics.frames_out.fetch_add(1, Relaxed);
                    metrics.bytes_out.fetch_add(n as u64, Relaxed);
                }
                Out::Close(code, reason) => {
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame {
                            code,
                            reason: reason.into(),
                        })))
                        .await;
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
                    .send(Message::Close(Some(CloseFrame {
                        code: 1013,
                        reason: "overloaded: the client stopped reading".into(),
                    })))
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
            let frame = Out::Frame(to_message(encode_server(enc, &m)));
            if replies_out.send(frame).await.is_err() {
                break;
            }
        }
    });
    let mut session = Session::new(enc);
    let mut stalled_end = false;
    let mut subs: HashMap<String, (JoinHandle<()>, Arc<SubStats>)> = HashMap::new();
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(String, bool)>();
    let mut shutdown = node.shutdown.clone();
    let send = |m: ServerMsg| Out::Frame(to_message(encode_server(enc, &m)));
    'conn: loop {
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
            msg = stream.next() => {
                node.metrics.frames_in.fetch_add(1, Relaxed);
                match msg {
                    None | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Text(t))) => session.on_text(t.as_str(), &node.auth),
                    Some(Ok(Message::Binary(b))) => session.on_binary(&b, &node.auth),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) if is_capacity(&e) => session.on_oversized(),
                    Some(Err(e)) => {
                        tracing::debug!(conn = conn_id, error = %e, "connection read failed");
                        break;
                    }
                }
            }
        };
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
                    let stats = node.metrics.add_sub(conn_id, &sub);
                    let task = tokio::spawn(run_sub(SubCtx {
                        node: node.clone(),
                        sub: sub.clone(),
                        from,
                        filter,
                        read,
                        enc,
                        out: out_tx.clone(),
                        stats: stats.clone(),
                        ended: ended_tx.clone(),
                    }));
                    subs.insert(sub, (task, stats));
                }
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
                    let answer = write(&node, req, ops).await;
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
    read: Scope,
    enc: Encoding,
    out: mpsc::Sender<Out>,
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
            let frame = Out::Frame(to_message(encode_server(ctx.enc, &ServerMsg::Error(m))));
            let _ = tokio::time::timeout(ctx.node.stall_timeout, ctx.out.send(frame)).await;
            return;
        }
    }
    let _ = ctx.ended.send((ctx.sub.clone(), stalled));
}

impl SubCtx {
    fn pass(&self, ns: &str, kind: crate::model::Kind) -> bool {
        self.filter.matches(ns, kind) && self.read.allows(ns)
    }

    /// Queue a frame, waiting at most the stall timeout for room.
    async fn push(&self, m: Message) -> Result<(), SubEnd> {
        match tokio::time::timeout(self.node.stall_timeout, self.out.send(Out::Frame(m))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(SubEnd::Done),
            Err(_) => Err(SubEnd::Stalled),
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
        let read = node
            .hub
            .read(scan, BATCH, BATCH_BYTES, ctx.enc, |ns, k| ctx.pass(ns, k));
        // The frame to send (and the last seq in it), and the position scanned up to.
        let (frame, scanned): (Option<(Message, i64)>, i64) = match read {
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
                (frame, scanned)
            }
            WindowRead::Behind => {
                // Catch-up from the log: read, filter and encode in the blocking task, in this
                // subscriber's encoding only, straight into the frame.
                let (s, filter, read, from) = (
                    node.store.clone(),
                    ctx.filter.clone(),
                    ctx.read.clone(),
                    scan,
                );
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
                            let rows = query::changes_since(c, from, &filter, BATCH)?;
                            let scanned = if rows.len() < BATCH {
                                head
                            } else {
                                rows.last().map_or(head, |r| r.seq)
                            };
                            // `changes_since` applied the filter; the token's scope remains.
                            let pass: Vec<&Change> =
                                rows.iter().filter(|c| read.allows(&c.ns)).collect();
                            let frame = pass.last().map(|last| {
                                let f = changes_frame_of(enc, &sub, prev, pass.iter().copied());
                                (to_message(f), last.seq)
                            });
                            Ok(Some((frame, scanned)))
                        })();
                        let _ = c.execute_batch("COMMIT");
                        r
                    })
                })
                .await?;
                let Some(read) = res else {
                    let at = snapshot(ctx).await?;
                    scan = at;
                    sent = at;
                    ctx.stats.sent.store(sent, Relaxed);
                    continue;
                };
                read
            }
        };
        if let Some((m, last)) = frame {
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

/// Send a consistent snapshot in chunks from one read transaction; returns its seq.
async fn snapshot(ctx: &SubCtx) -> Result<i64, SubEnd> {
    let s = ctx.node.store.clone();
    let (mut filter, read, enc, sub, out) = (
        ctx.filter.clone(),
        ctx.read.clone(),
        ctx.enc,
        ctx.sub.clone(),
        ctx.out.clone(),
    );
    let stall = ctx.node.stall_timeout;
    blocking(move || {
        s.read(|c| {
            if filter.namespaces.is_none() && !read.is_all() {
                let all = query::namespaces(c)?;
                filter.namespaces = Some(all.into_iter().filter(|n| read.allows(n)).collect());
            }
            let mut pending: Option<(i64, Vec<Change>)> = None;
            let deadline_send = |m: ServerMsg| -> crate::Result<()> {
                let mut msg = Out::Frame(to_message(encode_server(enc, &m)));
                let t0 = Instant::now();
                // blocking_send would wait forever on a client that stopped reading.
                loop {
                    match out.try_send(msg) {
                        Ok(()) => return Ok(()),
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            return Err(Error::invalid("connection closed"))
                        }
                        Err(mpsc::error::TrySendError::Full(m)) => {
                            if t0.elapsed() > stall {
                                return Err(Error::PoolTimeout(stall));
                            }
                            msg = m;
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    }
                }
            };
            let at = query::snapshot(c, &filter, SNAPSHOT_CHUNK, |at, rows| {
                if let Some((a, prev)) = pending.replace((at, rows)) {
                    deadline_send(ServerMsg::Snapshot {
                        sub: sub.clone(),
                        at: a,
                        rows: prev,
                        done: false,
                    })?;
                }
                Ok(())
            })?;
            let rows = pending.map(|(_, r)| r).unwrap_or_default();
            deadline_send(ServerMsg::Snapshot {
                sub: sub.clone(),
                at,
                rows,
                done: true,
            })?;
            Ok(at)
        })
    })
    .await
}
