//! The node's writer thread: writes from every connection, committed in arrival order, many
//! at a time (group commit), each answered on its connection's replies task.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::conn::{code_for, WriteBudget};
use crate::error::Error;
use crate::protocol::{ErrorMsg, ServerMsg};
use crate::store::{GROUP_MAX_BYTES, GROUP_MAX_OPS, GROUP_MAX_WRITES};

/// A write for the node's writer thread: the ops, and where its answer goes.
pub(crate) struct WriteJob {
    pub(crate) req: String,
    pub(crate) ops: Vec<crate::model::WriteOp>,
    pub(crate) origin: Option<crate::model::Origin>,
    pub(crate) t0: Instant,
    pub(crate) reply: oneshot::Sender<ServerMsg>,
    /// Released when the writer is done with the job.
    pub(crate) budget: Option<WriteBudget>,
}

impl WriteJob {
    /// The size of the frame that carried it (0 when unknown).
    fn bytes(&self) -> usize {
        self.budget.as_ref().map_or(0, |b| b.bytes)
    }
}

/// Writes waiting for the writer thread, across all connections; a full queue makes sessions
/// wait before reading their next frame (backpressure on writers, not on subscribers).
pub(crate) const WRITE_QUEUE: usize = 1024;

/// The node's writer: one thread that commits queued writes in arrival order and answers each.
/// Sessions never wait for a commit: the answer goes through the connection's replies task.
/// Measured against committing inside the session task (through `spawn_blocking`, behind every
/// subscriber's task in tokio's run queue): writer round trip at 1,000 subscribers p50 29.8 s
/// -> 0.66 s (benches/node.rs, part 1).
///
/// Group commit: the writes waiting in the queue when the writer is free (up to
/// [`GROUP_MAX_WRITES`], [`GROUP_MAX_OPS`] ops and [`GROUP_MAX_BYTES`] of frames) commit in
/// one transaction, each in its own savepoint (`Store::write_group`), and each is answered
/// after that commit with its own seq. The writer never waits for more writes to arrive: a
/// lone write commits at once.
pub(crate) fn spawn_writer(
    store: Arc<crate::store::Store>,
    hub: Arc<super::hub::Hub>,
    metrics: Arc<super::metrics::Metrics>,
    mut jobs: mpsc::Receiver<WriteJob>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("hivesync-writer".into())
        .spawn(move || {
            let mut next: Option<WriteJob> = None;
            let mut group: Vec<WriteJob> = Vec::new();
            loop {
                let Some(first) = next.take().or_else(|| jobs.blocking_recv()) else {
                    break;
                };
                let (mut ops, mut bytes) = (first.ops.len(), first.bytes());
                group.push(first);
                while group.len() < GROUP_MAX_WRITES {
                    let Ok(job) = jobs.try_recv() else { break };
                    if ops + job.ops.len() > GROUP_MAX_OPS || bytes + job.bytes() > GROUP_MAX_BYTES
                    {
                        next = Some(job);
                        break;
                    }
                    ops += job.ops.len();
                    bytes += job.bytes();
                    group.push(job);
                }
                let writes: Vec<crate::store::GroupWrite<'_>> = group
                    .iter()
                    .map(|j| (j.ops.as_slice(), j.origin.as_ref()))
                    .collect();
                let results = store.write_group(&writes);
                drop(writes);
                if results.as_ref().is_ok_and(|r| r.iter().any(Result::is_ok)) {
                    hub.wake();
                    metrics.observe_group(group.len());
                }
                let refused = |e: &Error, req: String| {
                    metrics.write_errors.fetch_add(1, Relaxed);
                    ServerMsg::Error(ErrorMsg {
                        code: code_for(e),
                        message: e.to_string(),
                        sub: None,
                        req: Some(req),
                    })
                };
                match results {
                    Ok(results) => {
                        for (job, r) in group.drain(..).zip(results) {
                            let m = match r {
                                Ok(r) => {
                                    metrics.observe_write(job.t0.elapsed());
                                    ServerMsg::Written {
                                        req: job.req,
                                        seq: r.seq,
                                    }
                                }
                                Err(e) => refused(&e, job.req),
                            };
                            let _ = job.reply.send(m);
                        }
                    }
                    // No writer connection: every write of the group gets that error, with its
                    // own code (busy: `overloaded`, which clients retry).
                    Err(e) => {
                        for job in group.drain(..) {
                            let _ = job.reply.send(refused(&e, job.req));
                        }
                    }
                }
            }
        })
}
