//! What a connection may hold, in bytes, and the node's share of it (the bounds the
//! connection's module documentation lists): room for frames queued for the client
//! ([`OutPermit`], [`ConnBudget`]) and for write frames from it ([`WriteBudget`]).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::node::NodeState;

/// Bytes of frames queued per connection for its client: 64 snapshot subscriptions that were
/// never read held 926 MB before this bound.
pub(super) const CONN_OUT_BYTES: usize = 8 * 1024 * 1024;
/// Bytes of frames waiting for sockets node-wide, past each connection's first
/// [`CONN_FREE_OUT_BYTES`] (and every snapshot or catch-up page): 128 connections that each
/// subscribed 64 times from 0 and never read held 4,487 MB before frames waited for room
/// (issue 23), and the per-connection bound alone still let them hold 1 GiB.
pub(crate) const NODE_OUT_BYTES: usize = 256 * 1024 * 1024;
/// What a connection may have queued without the node's budget: live frames to a client that
/// keeps up stay within it, so connections that stopped reading and hold the node's budget
/// never hold up live delivery to the others (only their catch-ups and snapshots).
pub(crate) const CONN_FREE_OUT_BYTES: usize = 256 * 1024;

/// Bytes of write frames one connection may have queued or committing.
pub(crate) const CONN_WRITE_BYTES: usize = 16 * 1024 * 1024;
/// Bytes of write frames the whole node may have queued or committing: with 8 MiB frames, 3
/// connections pipelining writes behind slow commits took the node past 4 GB before this.
pub(crate) const NODE_WRITE_BYTES: usize = 64 * 1024 * 1024;
/// Write frames up to this size take room from [`NODE_SMALL_WRITE_BYTES`] instead of
/// [`NODE_WRITE_BYTES`] (a one-op write is well under it).
pub(crate) const SMALL_WRITE_BYTES: usize = 256 * 1024;
/// Bytes of small write frames the whole node may have queued or committing.
pub(crate) const NODE_SMALL_WRITE_BYTES: usize = 16 * 1024 * 1024;

/// Room for frames not yet sent: bytes of the connection's [`CONN_OUT_BYTES`], and for a
/// snapshot or catch-up page or past the connection's first [`CONN_FREE_OUT_BYTES`], as many
/// of the node's [`NODE_OUT_BYTES`].
pub(super) struct OutPermit {
    pub(super) conn: OwnedSemaphorePermit,
    pub(super) node: Option<OwnedSemaphorePermit>,
}

impl OutPermit {
    /// Bytes it holds.
    pub(super) fn bytes(&self) -> usize {
        self.conn.num_permits()
    }

    /// Split off `n` bytes (less than it holds).
    pub(super) fn split(&mut self, n: usize) -> Option<OutPermit> {
        Some(OutPermit {
            conn: self.conn.split(n)?,
            node: match &mut self.node {
                Some(p) => Some(p.split(n)?),
                None => None,
            },
        })
    }
}

pub(super) fn message_len(m: &Message) -> usize {
    match m {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        _ => 0,
    }
}

/// Permits for `n` bytes of a budget of `cap` (a frame larger than the whole budget takes all
/// of it, so it still goes, alone).
pub(super) fn permits(n: usize, cap: usize) -> u32 {
    n.clamp(1, cap) as u32
}

/// What one connection shares between its session loop and its subscriptions.
pub(crate) struct ConnBudget {
    /// Bytes of frames queued for the client.
    pub(super) out: Arc<Semaphore>,
    /// The node's [`NODE_OUT_BYTES`].
    pub(super) node_bulk: Arc<Semaphore>,
    /// One snapshot page or catch-up page read at a time per connection.
    pub(super) bulk: Arc<Semaphore>,
    /// Bytes of write frames queued or committing.
    pub(super) writes: Arc<Semaphore>,
}

/// Write permits held from the frame's arrival until its write is answered: the frame's bytes,
/// then, once it is decoded, what its ops take decoded when that is more.
pub(crate) struct WriteBudget {
    conn: Option<OwnedSemaphorePermit>,
    node: Option<OwnedSemaphorePermit>,
    /// The size of the node budget `node` is of.
    node_cap: usize,
    /// For a large frame, one of the node's decode slots until its decoded size is counted:
    /// only a few large frames are decoded at once, whatever their ops take decoded.
    decoding: Option<OwnedSemaphorePermit>,
    /// The frame's size.
    pub(crate) bytes: usize,
}

impl WriteBudget {
    /// Hold room for `decoded` bytes (the frame's ops as the node holds them), as far as the
    /// budgets go: three to eight connections pipelining 8 MB writes peaked at 1.2-1.6 GB when
    /// only frames were counted (issue 23).
    ///
    /// It waits holding nothing it would wait for: the decode slot goes first, and each
    /// budget's room is given back and taken again whole (holding the frame's room while
    /// waiting for more let two decoded writes each wait for what the other held, and frames
    /// waiting for a decode slot hold room too).
    pub(super) async fn grow_to(&mut self, decoded: usize) {
        self.decoding = None;
        for (slot, cap) in [
            (&mut self.conn, CONN_WRITE_BYTES),
            (&mut self.node, self.node_cap),
        ] {
            let Some(held) = slot.take() else { continue };
            // Never more than the whole budget: a write that needs it all still goes, alone.
            let want = decoded.min(cap);
            if want <= held.num_permits() {
                *slot = Some(held);
                continue;
            }
            let sem = held.semaphore().clone();
            drop(held);
            *slot = sem.acquire_many_owned(want as u32).await.ok();
        }
    }
}

/// About how many bytes `ops` take decoded (strings, JSON values and their nodes).
pub(super) fn decoded_bytes(ops: &[crate::model::WriteOp]) -> usize {
    fn value(v: &serde_json::Value) -> usize {
        use serde_json::Value;
        32 + match v {
            Value::String(s) => s.len(),
            Value::Array(a) => a.iter().map(value).sum(),
            Value::Object(o) => o.iter().map(|(k, v)| 48 + k.len() + value(v)).sum(),
            _ => 0,
        }
    }
    ops.iter()
        .map(|o| {
            96 + o.ns.len()
                + o.id.as_ref().map_or(0, String::len)
                + o.model.as_ref().map_or(0, String::len)
                + o.data.as_ref().map_or(0, value)
        })
        .sum()
}

/// The write budget a data frame of a greeted client takes before it is decoded: its size from
/// the connection's and the node's budgets. While either is spent the caller does not read the
/// socket, which is the backpressure on writers. `Err` when the node shuts down meanwhile.
pub(super) async fn take_write_budget(
    m: &Message,
    budget: &ConnBudget,
    node: &NodeState,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<Option<WriteBudget>, ()> {
    let n = message_len(m);
    let take = async {
        let c = budget
            .writes
            .clone()
            .acquire_many_owned(permits(n, CONN_WRITE_BYTES))
            .await
            .ok()?;
        // Small frames have a node budget of their own: a connection's next small write must
        // not queue behind other connections' large ones for room.
        let small = n <= SMALL_WRITE_BYTES;
        let w = if small {
            node.small_write_budget
                .clone()
                .acquire_many_owned(permits(n, NODE_SMALL_WRITE_BYTES))
                .await
        } else {
            node.write_budget
                .clone()
                .acquire_many_owned(permits(n, NODE_WRITE_BYTES))
                .await
        }
        .ok()?;
        let decoding = if small {
            None
        } else {
            Some(node.large_decodes.clone().acquire_owned().await.ok()?)
        };
        Some(WriteBudget {
            conn: Some(c),
            node: Some(w),
            decoding,
            node_cap: if small {
                NODE_SMALL_WRITE_BYTES
            } else {
                NODE_WRITE_BYTES
            },
            bytes: n,
        })
    };
    tokio::select! {
        b = take => Ok(b),
        _ = shutdown.changed() => Err(()),
    }
}
