//! One subscription of a connection: a snapshot (in pages) or a catch-up from the log, then
//! live changes from the hub's window, each frame queued for the connection's sender within
//! its byte budget. A page is read with a pooled reader that is released before the page is
//! sent, one page at a time per connection and never on the pool's last reader.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio_tungstenite::tungstenite::Message;

use crate::model::Change;
use crate::node::budget::{
    message_len, permits, ConnBudget, OutPermit, CONN_FREE_OUT_BYTES, CONN_OUT_BYTES,
};
use crate::node::hub::WindowRead;
use crate::node::metrics::SubStats;
use crate::node::out::{code_for, to_message, Out};
use crate::node::NodeState;
use crate::protocol::feed::{self, Chain, FrameLimits, Start};
use crate::protocol::{
    changes_frame, changes_frame_of, encode_server, Encoding, ErrorCode, ErrorMsg, Scope,
    ServerMsg, FRAME_SPLIT_BYTES,
};
use crate::query::{self, ChangeFilter, SnapshotCursor};

/// Most changes per `changes` frame, and per page of catch-up read from the log.
const BATCH: usize = 1000;
/// A `changes` frame from the window: 64 KiB rather than 1 MiB, since each subscriber's frame
/// is its own copy, and big fresh allocations cost page faults (node CPU per delivery -37% at
/// 100 subscribers). Whole transactions either way ([`feed::Fill`]).
const WINDOW_FRAME: FrameLimits = FrameLimits {
    changes: BATCH,
    bytes: 64 * 1024,
};
/// A `changes` frame of catch-up from the log.
const LOG_FRAME: FrameLimits = FrameLimits {
    changes: BATCH,
    bytes: FRAME_SPLIT_BYTES,
};
/// Rows per `snapshot` frame (and at most [`FRAME_SPLIT_BYTES`]).
const SNAPSHOT_CHUNK: usize = 1000;

pub(super) struct SubCtx {
    pub(super) node: Arc<NodeState>,
    pub(super) sub: String,
    pub(super) from: Option<i64>,
    pub(super) filter: ChangeFilter,
    /// The connection's read scope (narrowed by config reloads).
    pub(super) read: Arc<RwLock<Scope>>,
    /// When the connection's rights end (seconds since the epoch, `i64::MAX`: never).
    pub(super) until: Arc<std::sync::atomic::AtomicI64>,
    pub(super) enc: Encoding,
    pub(super) out: mpsc::Sender<Out>,
    pub(super) budget: Arc<ConnBudget>,
    pub(super) stats: Arc<SubStats>,
    pub(super) ended: mpsc::UnboundedSender<(String, bool)>,
}

enum SubEnd {
    Done,
    Stalled,
    Failed(ErrorMsg),
}

pub(super) async fn run_sub(ctx: SubCtx) {
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

    /// Room for `bytes` of frames: the connection's (waiting at most the stall timeout: the
    /// client is not reading) and, for a page (`bulk`) or past the connection's first
    /// [`CONN_FREE_OUT_BYTES`], the node's (waiting as long as it takes: other connections'
    /// frames hold it).
    async fn reserve(&self, bytes: usize, bulk: bool) -> Result<OutPermit, SubEnd> {
        let n = permits(bytes, CONN_OUT_BYTES);
        // The connection's room first: a connection that does not read holds at most its own
        // share of the node's.
        let conn = self.budget.out.clone().acquire_many_owned(n);
        let conn = match tokio::time::timeout(self.node.stall_timeout, conn).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(_)) => return Err(SubEnd::Done),
            Err(_) => return Err(SubEnd::Stalled),
        };
        let queued = CONN_OUT_BYTES - self.budget.out.available_permits();
        let node = if bulk || queued > CONN_FREE_OUT_BYTES {
            match self.budget.node_bulk.clone().acquire_many_owned(n).await {
                Ok(p) => Some(p),
                Err(_) => return Err(SubEnd::Done),
            }
        } else {
            None
        };
        Ok(OutPermit { conn, node })
    }

    /// Queue a frame, waiting at most the stall timeout for room (in frames and in the
    /// connection's [`CONN_OUT_BYTES`]).
    async fn push(&self, m: Message) -> Result<(), SubEnd> {
        let mut none = None;
        self.push_from(m, &mut none).await
    }

    /// Queue a frame with room taken from `room` (reserved before its page was read), as much
    /// as it holds, and the rest waited for.
    async fn push_from(&self, m: Message, room: &mut Option<OutPermit>) -> Result<(), SubEnd> {
        // Past the token's expiry nothing more is queued (so no change committed after it goes
        // out): the connection's loop ends it with `unauthorized`, unless a fresh token moves
        // the expiry on first.
        while crate::node::out::unix_now() >= self.until.load(Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let len = permits(message_len(&m), CONN_OUT_BYTES) as usize;
        let have = room.as_ref().map_or(0, OutPermit::bytes);
        let permit = if have > len {
            room.as_mut().and_then(|r| r.split(len))
        } else {
            room.take()
        };
        let permit = match (permit, len.saturating_sub(have)) {
            (Some(p), 0) => p,
            (p, more) => {
                let mut extra = self
                    .reserve(more, p.as_ref().is_some_and(|p| p.node.is_some()))
                    .await?;
                if let Some(p) = p {
                    extra.conn.merge(p.conn);
                    if let (Some(a), Some(b)) = (&mut extra.node, p.node) {
                        a.merge(b);
                    }
                }
                extra
            }
        };
        let queued = self.out.send(Out::Frame(m, Some(permit)));
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
    let mut scan = match feed::plan(ctx.from, head, horizon).map_err(SubEnd::Failed)? {
        Start::CatchUp { after } => after,
        Start::Snapshot => snapshot(ctx).await?,
    };
    // The `prev` of the next frame: the last seq sent.
    let mut chain = Chain::after(scan);
    ctx.stats.sent.store(chain.last(), Relaxed);
    let mut live = false;
    let mut head_rx = node.hub.subscribe_head();
    let mut shutdown = node.shutdown.clone();
    loop {
        let head_now = *head_rx.borrow_and_update();
        let read_scope = ctx.read.read().clone();
        let read = node.hub.read(scan, WINDOW_FRAME, ctx.enc, |ns, k| {
            ctx.pass(&read_scope, ns, k)
        });
        // Send what there is; the position scanned up to.
        let scanned = match read {
            WindowRead::Changes(parts, scanned) => {
                // Room first, then the frame (its own copy of the window's fragments: one
                // transaction may make it 1 MiB, and 64 subscriptions of a connection that
                // does not read must not each hold one).
                let size: usize = parts.iter().map(|c| c.bytes(ctx.enc).len() + 1).sum();
                let mut room = Some(ctx.reserve(size + 128, false).await?);
                if let Some(c) = parts.last() {
                    let f = changes_frame(
                        ctx.enc,
                        &ctx.sub,
                        chain.next(c.seq),
                        parts.iter().map(|c| c.bytes(ctx.enc)),
                    );
                    ctx.push_from(to_message(f), &mut room).await?;
                    ctx.stats.sent.store(chain.last(), Relaxed);
                }
                scanned
            }
            WindowRead::Behind => {
                // Catch-up from the log: read a page, filter and encode it in the blocking
                // task, in this subscriber's encoding only, release the reader, then send.
                // Room for the page is taken before it is read.
                let mut room = Some(ctx.reserve(FRAME_SPLIT_BYTES, true).await?);
                let slot = ctx.bulk_slot().await?;
                let res = read_log_page(ctx, scan, chain, read_scope).await;
                drop(slot.1);
                let Some(read) = res? else {
                    drop(slot.0);
                    scan = snapshot(ctx).await?;
                    chain = Chain::after(scan);
                    ctx.stats.sent.store(chain.last(), Relaxed);
                    continue;
                };
                for (m, last) in read.frames {
                    ctx.push_from(m, &mut room).await?;
                    ctx.stats.sent.store(last, Relaxed);
                }
                chain = read.chain;
                read.scanned
            }
        };
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
            ctx.stats.sent.store(scan.max(chain.last()), Relaxed);
            tokio::select! {
                r = head_rx.changed() => if r.is_err() { return Ok(()) },
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }
}

/// A page of catch-up: this subscriber's frames (each with its last seq), the chain after them,
/// and the position scanned up to.
struct LogPage {
    frames: Vec<(Message, i64)>,
    chain: Chain,
    scanned: i64,
}

/// A page of catch-up from the log after `from`, as this subscriber's frames continuing
/// `chain`; read, filtered and encoded in a blocking task (one read transaction, the reader
/// released before anything is sent). None when retention (or an edge node's re-sync) trimmed
/// the log past `from` while the subscription caught up ([`feed::covered`]): the changes it
/// missed are gone, so it takes a fresh snapshot instead of a silent gap.
async fn read_log_page(
    ctx: &SubCtx,
    from: i64,
    mut chain: Chain,
    read_scope: Scope,
) -> Result<Option<LogPage>, SubEnd> {
    let (s, filter) = (ctx.node.store.clone(), ctx.filter.clone());
    let (enc, sub) = (ctx.enc, ctx.sub.clone());
    blocking(move || {
        s.read(|c| {
            c.execute_batch("BEGIN")?;
            let r = (|| {
                if !feed::covered(from, query::horizon(c)?) {
                    return Ok(None);
                }
                let head = query::head(c)?;
                let (rows, more) = query::changes_page(c, from, &filter, BATCH, FRAME_SPLIT_BYTES)?;
                let scanned = if more {
                    rows.last().map_or(head, |r| r.seq)
                } else {
                    head
                };
                // `changes_page` applied the filter; the token's scope remains.
                let pass: Vec<&Change> = rows.iter().filter(|c| read_scope.allows(&c.ns)).collect();
                let frames = changes_frames(enc, &sub, &mut chain, &pass);
                Ok(Some(LogPage {
                    frames,
                    chain,
                    scanned,
                }))
            })();
            let _ = c.execute_batch("COMMIT");
            r
        })
    })
    .await
}

/// `changes` frames of `changes` in whole transactions ([`feed::cut`]), continuing `chain`;
/// each with its last seq.
fn changes_frames(
    enc: Encoding,
    sub: &str,
    chain: &mut Chain,
    changes: &[&Change],
) -> Vec<(Message, i64)> {
    feed::cut(changes, LOG_FRAME, |c| c.tx, |c| c.frame_bytes())
        .into_iter()
        .map(|r| {
            let part = &changes[r];
            let last = part[part.len() - 1].seq;
            let f = changes_frame_of(enc, sub, chain.next(last), part.iter().copied());
            (to_message(f), last)
        })
        .collect()
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
    // One page ahead, so the last page goes out with `done` (an empty one if nothing matched),
    // with the room it was read into.
    let mut pending: Option<(Vec<Change>, OutPermit)> = None;
    loop {
        // Room for the next page, taken before it is read: pages are read only as the socket
        // drains, however many subscriptions wait.
        let room = ctx.reserve(FRAME_SPLIT_BYTES, true).await?;
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
        let mut room = Some(room);
        if pending.is_some() || done {
            let (rows, mut prev_room) = match pending.take() {
                Some((rows, r)) => (rows, Some(r)),
                None => (Vec::new(), room.take()),
            };
            let m = ServerMsg::Snapshot {
                sub: ctx.sub.clone(),
                at,
                rows,
                done,
            };
            ctx.push_from(to_message(encode_server(ctx.enc, &m)), &mut prev_room)
                .await?;
        }
        match (page, room) {
            (Some(rows), Some(room)) => pending = Some((rows, room)),
            _ => return Ok(at),
        }
    }
}
