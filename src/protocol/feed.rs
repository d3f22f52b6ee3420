//! The server half of the feed, without I/O: where a subscription starts ([`plan`]), how changes
//! are cut into frames of whole transactions ([`Fill`], [`cut`]), and the `prev` chain that runs
//! through the frames ([`Chain`]). The node's subscription task (`node/serve/sub.rs`: live from the
//! fan-out window, catch-up from the log), the window itself (`node/serve/hub.rs`) and the NATS
//! publisher only read, encode and move what these decide.

use std::ops::Range;

use super::{ErrorCode, ErrorMsg, FRAME_SPLIT_BYTES};

/// Where a subscription starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// A snapshot of the current state (pages of rows), then the changes after it.
    Snapshot,
    /// The changes after `after`: the client holds everything up to it.
    CatchUp {
        /// The client's cursor.
        after: i64,
    },
}

/// Plan a subscription that asks to resume after `from` (None: it asks for a snapshot) from a
/// node whose log ends at `head` and holds every change after `horizon - 1` (retention trims
/// below `horizon`): a catch-up when the log still covers the cursor, a snapshot when it does not
/// (the changes the client missed are gone: never a silent gap), and a refusal for a cursor past
/// the head (the client followed another node, or this one was restored from a backup).
pub fn plan(from: Option<i64>, head: i64, horizon: i64) -> Result<Start, ErrorMsg> {
    match from {
        Some(f) if f > head => Err(ErrorMsg::new(
            ErrorCode::BadRequest,
            format!("cursor from the future: from={f} but this node's log ends at {head}; the replica belongs to another node or was restored from elsewhere: subscribe without `from` to take a snapshot"),
        )),
        Some(f) if covered(f, horizon) => Ok(Start::CatchUp { after: f }),
        _ => Ok(Start::Snapshot),
    }
}

/// Whether a log beginning at `horizon` still holds every change after `after`. A subscription
/// catching up re-checks this on every page: retention (or an edge's re-sync) may trim the log
/// past it meanwhile, and then it takes a snapshot instead.
pub fn covered(after: i64, horizon: i64) -> bool {
    after >= horizon.saturating_sub(1)
}

/// What one frame holds at most: `changes` and about `bytes` encoded bytes, in whole
/// transactions (see [`Fill`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Most changes, counted at transaction boundaries.
    pub changes: usize,
    /// Most encoded bytes, counted at transaction boundaries.
    pub bytes: usize,
}

/// A frame being filled, change by change in seq order. Frames hold whole transactions: a frame
/// that is full ([`FrameLimits`]) ends where the next transaction begins, so it may pass its
/// limits by the rest of its last transaction; a transaction is split only where its own
/// changes in the frame reach [`FRAME_SPLIT_BYTES`]. So a frame holds at most `limits.bytes`
/// plus one transaction's part under [`FRAME_SPLIT_BYTES`], plus one change.
#[derive(Clone, Debug)]
pub struct Fill {
    limits: FrameLimits,
    changes: usize,
    bytes: usize,
    /// The transaction of the last change taken (sent or scanned past).
    tx: Option<i64>,
    /// Bytes of that transaction in this frame.
    tx_bytes: usize,
}

impl Fill {
    /// An empty frame.
    pub fn new(limits: FrameLimits) -> Self {
        Fill {
            limits,
            changes: 0,
            bytes: 0,
            tx: None,
            tx_bytes: 0,
        }
    }

    /// Whether a change of transaction `tx` belongs to the next frame (never for an empty
    /// frame: each frame holds at least one change).
    pub fn ends_before(&self, tx: i64) -> bool {
        if self.changes == 0 {
            return false;
        }
        if self.tx == Some(tx) {
            self.tx_bytes >= FRAME_SPLIT_BYTES
        } else {
            self.changes >= self.limits.changes || self.bytes >= self.limits.bytes
        }
    }

    /// Take a change of transaction `tx` into the frame: `bytes` encoded, or None for a change
    /// scanned past without being sent (another subscriber's namespace), which still marks
    /// where its transaction runs.
    pub fn take(&mut self, tx: i64, bytes: Option<usize>) {
        if self.tx != Some(tx) {
            self.tx = Some(tx);
            self.tx_bytes = 0;
        }
        if let Some(b) = bytes {
            self.changes += 1;
            self.bytes += b;
            self.tx_bytes += b;
        }
    }

    /// Changes taken and sent.
    pub fn len(&self) -> usize {
        self.changes
    }

    /// Whether no change was taken to be sent.
    pub fn is_empty(&self) -> bool {
        self.changes == 0
    }

    /// Encoded bytes taken.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// Cut `items` (in seq order, each with its transaction and encoded size) into frames by
/// [`Fill`]'s rule: the ranges cover `items` in order, each non-empty.
pub fn cut<T>(
    items: &[T],
    limits: FrameLimits,
    tx: impl Fn(&T) -> i64,
    bytes: impl Fn(&T) -> usize,
) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut fill = Fill::new(limits);
    for (i, it) in items.iter().enumerate() {
        let t = tx(it);
        if fill.ends_before(t) {
            out.push(start..i);
            start = i;
            fill = Fill::new(limits);
        }
        fill.take(t, Some(bytes(it)));
    }
    if start < items.len() {
        out.push(start..items.len());
    }
    out
}

/// The `prev` chain of one subscription: each `changes` frame names the seq the frame before it
/// ended at (the subscription's start for the first), so a client sees any gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chain {
    last: i64,
}

impl Chain {
    /// A chain whose next frame follows `seq`.
    pub fn after(seq: i64) -> Self {
        Chain { last: seq }
    }

    /// The `prev` of the next frame, which ends at `last`; the chain moves past it.
    pub fn next(&mut self, last: i64) -> i64 {
        std::mem::replace(&mut self.last, last)
    }

    /// The seq the last frame ended at.
    pub fn last(&self) -> i64 {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn a_subscription_starts_where_the_log_can_serve_it() {
        assert_eq!(plan(None, 10, 1), Ok(Start::Snapshot));
        assert_eq!(plan(Some(0), 10, 1), Ok(Start::CatchUp { after: 0 }));
        assert_eq!(plan(Some(10), 10, 1), Ok(Start::CatchUp { after: 10 }));
        // Retention kept changes from 6 on: a client holding up to 5 can catch up, not one at 4.
        assert_eq!(plan(Some(5), 10, 6), Ok(Start::CatchUp { after: 5 }));
        assert_eq!(plan(Some(4), 10, 6), Ok(Start::Snapshot));
        assert_eq!(plan(Some(-3), 10, 1), Ok(Start::Snapshot));
        let e = plan(Some(11), 10, 1).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("cursor from the future: from=11"));
        assert!(covered(i64::MIN, i64::MIN), "no overflow at the edges");
    }

    #[test]
    fn whole_transactions_per_frame_and_a_huge_one_split() {
        let lim = FrameLimits {
            changes: 3,
            bytes: 1000,
        };
        // (tx, bytes)
        let items = [
            (1, 10),
            (1, 10),
            (1, 10),
            (1, 10),
            (2, 10),
            (3, 10),
            (3, 10),
        ];
        let cuts = cut(&items, lim, |i| i.0, |i| i.1);
        assert_eq!(
            cuts,
            vec![0..4, 4..7],
            "tx 1 whole though it passes 3 changes"
        );
        let big = FRAME_SPLIT_BYTES / 2 + 1;
        let items = [(1, big), (1, big), (1, big), (2, 1)];
        let cuts = cut(&items, lim, |i| i.0, |i| i.1);
        assert_eq!(
            cuts,
            vec![0..2, 2..3, 3..4],
            "split where the transaction reached the limit"
        );
        assert!(cut::<(i64, usize)>(&[], lim, |i| i.0, |i| i.1).is_empty());
    }

    #[test]
    fn the_chain_runs_through_frames() {
        let mut c = Chain::after(7);
        assert_eq!(c.next(9), 7);
        assert_eq!(c.next(15), 9);
        assert_eq!(c.last(), 15);
    }

    /// Property tests (native only: proptest does not build for wasm32).
    #[cfg(not(target_arch = "wasm32"))]
    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn cuts_cover_everything_in_order_and_split_only_huge_transactions(
                txs in proptest::collection::vec((1usize..6, 1usize..400_000), 0..60),
                changes in 1usize..50,
                bytes in 1usize..3_000_000,
            ) {
                // Items: transactions of 1-5 changes of up to 400 KB each.
                let mut items = Vec::new();
                for (t, (n, b)) in txs.iter().enumerate() {
                    for k in 0..*n {
                        items.push((t as i64, (b + k * 7919) % 400_000 + 1));
                    }
                }
                let lim = FrameLimits { changes, bytes };
                let cuts = cut(&items, lim, |i| i.0, |i| i.1);
                let mut next = 0;
                for r in &cuts {
                    prop_assert_eq!(r.start, next);
                    prop_assert!(r.end > r.start);
                    next = r.end;
                    let frame = &items[r.clone()];
                    // A cut inside a transaction: its part in this frame reached the split size.
                    if r.end < items.len() && items[r.end].0 == frame[frame.len() - 1].0 {
                        let tx = frame[frame.len() - 1].0;
                        let part: usize = frame.iter().filter(|i| i.0 == tx).map(|i| i.1).sum();
                        prop_assert!(part >= FRAME_SPLIT_BYTES);
                    }
                    // Bounded: the limit, plus a transaction's part under the split size, plus one.
                    let total: usize = frame.iter().map(|i| i.1).sum();
                    prop_assert!(total < bytes + FRAME_SPLIT_BYTES + 400_000);
                    // Not cut early: the frame was full, or the next change split its transaction.
                    if r.end < items.len() {
                        let full = frame.len() >= changes || total >= bytes;
                        prop_assert!(full || items[r.end].0 == frame[frame.len() - 1].0);
                    }
                }
                prop_assert_eq!(next, items.len());
                // The chain over the cuts: each prev is the last seq of the frame before.
                let mut chain = Chain::after(0);
                let mut last = 0;
                for r in &cuts {
                    prop_assert_eq!(chain.next(r.end as i64), last);
                    last = r.end as i64;
                }
            }
        }
    }
}
