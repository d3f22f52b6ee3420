//! The upload policy of a replica's outbox, without I/O: which pending local writes go next on
//! a connection, in which batches, and what the node's answers mean for them. The browser
//! replica (`wasm/src/sync.rs`) reads the outbox, hands [`Uploader::batch`]'s writes to its
//! [`ClientSession`](super::client::ClientSession) and gives the session's answers back here;
//! the rules live in this one place, tested natively (unit and property tests below).
//!
//! - One `write` in flight at a time. The node's exactly-once ledger keeps, per client, the
//!   last write number it applied, and answers a write numbered at or below it as a replay. With
//!   several writes in flight, an earlier one that failed (a refused batch to be split, a full
//!   disk) while a later one committed would be answered as a replay when sent again, and its
//!   entries silently lost (the property test below found this in the window of 1,024 entries
//!   this replaced). One write at a time cannot be overtaken.
//! - Batches: consecutive entries travel in one `write` (one transaction at the node, with
//!   `entries` saying how many ops each holds, so the node applies each exactly once), up to
//!   [`BATCH_ENTRIES`] entries, [`BATCH_OPS`] ops and about [`BATCH_BYTES`]: a backlog goes
//!   up at 128 entries per round trip.
//! - A refused batch: its entries go again one per `write`, to find the one refused (the
//!   others still land); a refused single entry is taken back by the shell.
//! - Answers lost with the connection: every entry not answered goes again, from the first,
//!   on the next connection (the node answers a re-sent write from its ledger).
//! - Answers held: the node's answers are recorded with the feed batch that carries the writes
//!   back (one transaction), or on their own when the feed has passed them, the subscription
//!   goes live, the connection ends, or [`HELD_ANSWERS`] wait.

use std::collections::{BTreeMap, BTreeSet};

use super::client::{is_refusal_code, WriteId};
use super::{ErrorMsg, FRAME_SPLIT_BYTES};
use crate::model::{Origin, WriteOp};

/// Consecutive entries sent as one `write`: at most this many ...
pub const BATCH_ENTRIES: usize = 128;
/// ... this many ops ...
pub const BATCH_OPS: usize = 1024;
/// ... and about this many bytes of ops (the node takes frames up to 8 MiB).
pub const BATCH_BYTES: usize = FRAME_SPLIT_BYTES;
/// Answers held in memory at most before they are recorded on their own.
pub const HELD_ANSWERS: usize = 4096;

/// A pending outbox entry, as the shell read it.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// Its number (the client write number it is uploaded with).
    pub n: i64,
    /// Its ops.
    pub ops: Vec<WriteOp>,
    /// The size of its ops as JSON text.
    pub size: usize,
}

/// One `write` to hand to the session.
#[derive(Clone, Debug, PartialEq)]
pub struct Upload {
    /// The session's id for it (its last entry's number).
    pub id: WriteId,
    /// The ops of its entries, in order.
    pub ops: Vec<WriteOp>,
    /// This replica's client id, the last entry's number and each entry's op count.
    pub origin: Origin,
}

/// What a refused or failed `write` means for its entries.
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// A batch was refused: its entries go again one per `write`, to find the refused one.
    Split(Vec<i64>),
    /// Entry `n` was refused: the shell takes it back and reports it.
    Refused {
        /// The entry.
        n: i64,
        /// The node's answer.
        error: ErrorMsg,
    },
    /// Entry `n` did not go through this time (overloaded, the link lost): it is sent again on
    /// the next connection ([`Uploader::restart`]); the shell reports it, and ends a connection
    /// still open (`ClientSession::disconnected`), so the next comes after the session's
    /// backoff.
    Failed {
        /// The first entry of the write.
        n: i64,
        /// Why.
        error: ErrorMsg,
    },
}

/// The upload state of one replica (see the module documentation).
#[derive(Debug)]
pub struct Uploader {
    client: String,
    /// The last entry handed out on this connection (0: none yet).
    sent_upto: i64,
    /// The write in flight: its id (its last entry) and the entries it carries.
    in_flight: Option<(i64, Vec<i64>)>,
    /// A write failed on this connection: nothing more goes out on it (a later write must not
    /// commit before the failed one is sent again).
    halted: bool,
    /// Entries of a refused batch: sent one per write from now on.
    singles: BTreeSet<i64>,
    /// The node's answers (entry -> seq) not yet recorded.
    confirmed: BTreeMap<i64, i64>,
    /// The lowest seq among `confirmed` (`i64::MAX` when none).
    confirmed_min_seq: i64,
}

impl Uploader {
    /// The uploader of the replica whose client id is `client`.
    pub fn new(client: String) -> Self {
        Uploader {
            client,
            sent_upto: 0,
            in_flight: None,
            halted: false,
            singles: BTreeSet::new(),
            confirmed: BTreeMap::new(),
            confirmed_min_seq: i64::MAX,
        }
    }

    /// The connection is not subscribed: on the next one, everything not answered goes again,
    /// from the first entry.
    pub fn restart(&mut self) {
        self.sent_upto = 0;
        self.in_flight = None;
        self.halted = false;
    }

    /// Read the outbox after this entry for the next [`batch`](Self::batch) ...
    pub fn after(&self) -> i64 {
        self.sent_upto
    }

    /// ... at most this many entries (0: a write is in flight, read nothing). Answers held
    /// are skipped, so as many more are asked for.
    pub fn room(&self) -> usize {
        if self.in_flight.is_some() || self.halted {
            0
        } else {
            BATCH_ENTRIES + self.confirmed.len().min(BATCH_ENTRIES)
        }
    }

    /// The write to send next, from `entries`, the outbox's next pending entries after
    /// [`after`](Self::after), in order: the longest run of consecutive entries within the
    /// batch limits (an entry of a refused batch alone). None while a write is in flight.
    /// Entries answered and not yet recorded are skipped; entries past the write are left for
    /// the next call.
    pub fn batch(&mut self, entries: Vec<Entry>) -> Option<Upload> {
        if self.in_flight.is_some() || self.halted {
            return None;
        }
        let mut batch: Vec<Entry> = Vec::new();
        let (mut ops, mut bytes) = (0usize, 0usize);
        for e in entries {
            if e.n <= self.sent_upto {
                continue;
            }
            if self.confirmed.contains_key(&e.n) {
                if !batch.is_empty() {
                    break;
                }
                self.sent_upto = e.n;
                continue;
            }
            let alone = self.singles.contains(&e.n);
            let contiguous = batch.last().is_none_or(|b| b.n + 1 == e.n);
            if !batch.is_empty()
                && (alone
                    || !contiguous
                    || batch.len() >= BATCH_ENTRIES
                    || ops + e.ops.len() > BATCH_OPS
                    || bytes + e.size > BATCH_BYTES
                    || self.singles.contains(&batch[0].n))
            {
                break;
            }
            ops += e.ops.len();
            bytes += e.size;
            self.sent_upto = e.n;
            batch.push(e);
        }
        (!batch.is_empty()).then(|| self.upload(batch))
    }

    fn upload(&mut self, batch: Vec<Entry>) -> Upload {
        let last = batch[batch.len() - 1].n;
        let entries = if batch.len() > 1 {
            batch.iter().map(|e| e.ops.len() as u32).collect()
        } else {
            Vec::new()
        };
        self.in_flight = Some((last, batch.iter().map(|e| e.n).collect()));
        Upload {
            id: last as WriteId,
            ops: batch.into_iter().flat_map(|e| e.ops).collect(),
            origin: Origin {
                client: self.client.clone(),
                n: last,
                entries,
                principal: None,
            },
        }
    }

    /// The entries of write `id` (the write in flight, or an entry alone).
    fn entries_of(&mut self, id: WriteId) -> Vec<i64> {
        let id = id as i64;
        match self.in_flight.take() {
            Some((w, entries)) if w == id => entries,
            other => {
                self.in_flight = other;
                vec![id]
            }
        }
    }

    /// The node committed write `id` at `seq`: its entries, each written (held for recording).
    pub fn resolved(&mut self, id: WriteId, seq: i64) -> Vec<i64> {
        let entries = self.entries_of(id);
        for &n in &entries {
            self.singles.remove(&n);
            self.confirmed.insert(n, seq);
            self.confirmed_min_seq = self.confirmed_min_seq.min(seq);
        }
        entries
    }

    /// The node refused write `id`, or it did not go through (see [`Refusal`]).
    pub fn rejected(&mut self, id: WriteId, error: ErrorMsg) -> Refusal {
        let entries = self.entries_of(id);
        let refused = is_refusal_code(error.code);
        if entries.len() > 1 && refused {
            self.singles.extend(entries.iter().copied());
            self.sent_upto = self.sent_upto.min(entries[0] - 1);
            return Refusal::Split(entries);
        }
        let n = entries[0];
        if refused {
            self.singles.remove(&n);
            Refusal::Refused { n, error }
        } else {
            // Sent again on the next connection (a node that is overloaded is not asked again
            // at once, every frame; the link lost ends this connection anyway). Nothing after
            // it went out, and nothing will on this connection, so nothing can overtake it in
            // the node's ledger.
            self.halted = true;
            Refusal::Failed { n, error }
        }
    }

    /// Whether the answers held should be recorded now, on their own: the connection is not
    /// subscribed, too many wait, or the replica has applied past one of them (the feed batch
    /// that carried the write back came before its answer).
    pub fn record_due(&self, subscribed: bool, applied: i64) -> bool {
        !self.confirmed.is_empty()
            && (!subscribed
                || self.confirmed.len() >= HELD_ANSWERS
                || self.confirmed_min_seq <= applied)
    }

    /// The answers held, (entry, seq), to record (they leave memory).
    pub fn take_confirmed(&mut self) -> Vec<(i64, i64)> {
        self.confirmed_min_seq = i64::MAX;
        std::mem::take(&mut self.confirmed).into_iter().collect()
    }

    /// Answers held.
    pub fn held(&self) -> usize {
        self.confirmed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;
    use crate::protocol::ErrorCode;
    use serde_json::json;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn entry(n: i64, ops: usize) -> Entry {
        let op = WriteOp::upsert(
            Kind::Entity,
            "default",
            json!({"id": format!("e{n}"), "name": "x"}),
        );
        Entry {
            n,
            ops: vec![op; ops],
            size: 40 * ops,
        }
    }

    /// Send what the uploader makes of `outbox` (after its cursor) and answer it at once,
    /// until nothing is left; the writes' entry counts.
    fn drain(u: &mut Uploader, outbox: &[Entry]) -> Vec<usize> {
        let mut sizes = Vec::new();
        let mut seq = 0;
        loop {
            let next: Vec<Entry> = outbox
                .iter()
                .filter(|e| e.n > u.after())
                .take(u.room())
                .cloned()
                .collect();
            let Some(w) = u.batch(next) else { break };
            assert!(u.batch(outbox.to_vec()).is_none(), "one write in flight");
            assert_eq!(u.room(), 0);
            sizes.push(w.origin.entries.len().max(1));
            seq += 1;
            u.resolved(w.id, seq);
            u.take_confirmed();
        }
        sizes
    }

    #[test]
    fn consecutive_entries_travel_together_within_the_limits() {
        let mut u = Uploader::new("c".into());
        let outbox: Vec<Entry> = (1..=300).map(|n| entry(n, 1)).collect();
        assert_eq!(drain(&mut u, &outbox), vec![128, 128, 44]);
        assert_eq!(u.after(), 300);
        // Ops: 600 + 600 pass BATCH_OPS; an entry over the limits alone still goes.
        let mut u = Uploader::new("c".into());
        let outbox = vec![entry(1, 600), entry(2, 600), entry(3, 2000)];
        assert_eq!(drain(&mut u, &outbox), vec![1, 1, 1]);
        // A gap in the numbers (an entry taken back) ends a batch.
        let mut u = Uploader::new("c".into());
        let outbox = vec![entry(1, 1), entry(2, 1), entry(4, 1)];
        assert_eq!(drain(&mut u, &outbox), vec![2, 1]);
        // The write names its entries' op counts, a single entry none.
        let mut u = Uploader::new("c".into());
        let w = u.batch(vec![entry(1, 2), entry(2, 3)]).unwrap();
        assert_eq!((w.origin.n, w.origin.entries.clone()), (2, vec![2, 3]));
        let mut u = Uploader::new("c".into());
        assert!(u
            .batch(vec![entry(7, 2)])
            .unwrap()
            .origin
            .entries
            .is_empty());
    }

    #[test]
    fn a_refused_batch_is_split_and_only_the_refused_entry_is_taken_back() {
        let mut u = Uploader::new("c".into());
        let three: Vec<Entry> = (1..=3).map(|n| entry(n, 1)).collect();
        let w = u.batch(three.clone()).unwrap();
        let refusal = ErrorMsg::new(ErrorCode::Forbidden, "no");
        assert_eq!(
            u.rejected(w.id, refusal.clone()),
            Refusal::Split(vec![1, 2, 3])
        );
        assert_eq!(u.after(), 0, "read again from the first");
        // One by one now.
        assert_eq!(u.batch(three.clone()).unwrap().id, 1);
        assert_eq!(u.resolved(1, 10), vec![1]);
        assert_eq!(u.batch(three[1..].to_vec()).unwrap().id, 2);
        assert_eq!(
            u.rejected(2, refusal.clone()),
            Refusal::Refused {
                n: 2,
                error: refusal
            }
        );
        assert_eq!(u.batch(three[2..].to_vec()).unwrap().id, 3);
        assert_eq!(u.resolved(3, 11), vec![3]);
        assert_eq!(u.take_confirmed(), vec![(1, 10), (3, 11)]);
        // Not a refusal: sent again on the next connection, and nothing after it on this one.
        let w = u.batch(vec![entry(4, 1), entry(5, 1)]).unwrap();
        let busy = ErrorMsg::new(ErrorCode::Overloaded, "busy");
        assert!(matches!(
            u.rejected(w.id, busy),
            Refusal::Failed { n: 4, .. }
        ));
        assert!(
            u.batch(vec![entry(6, 1)]).is_none(),
            "halted on this connection"
        );
        assert_eq!(u.room(), 0);
        u.restart();
        assert_eq!(u.after(), 0);
        assert_eq!(
            u.batch(vec![entry(4, 1), entry(5, 1)]).unwrap().id,
            5,
            "on the next one"
        );
    }

    #[test]
    fn answers_are_held_until_the_feed_passes_them_or_the_link_ends() {
        let mut u = Uploader::new("c".into());
        let w = u.batch(vec![entry(1, 1)]).unwrap();
        u.resolved(w.id, 50);
        assert!(!u.record_due(true, 49));
        assert!(u.record_due(true, 50));
        assert!(u.record_due(false, 0));
        // An answered entry read again (not yet recorded) is not sent twice.
        u.restart();
        assert!(u.batch(vec![entry(1, 1)]).is_none());
        assert_eq!(u.held(), 1);
    }

    /// Property tests (native only: proptest does not build for wasm32).
    #[cfg(not(target_arch = "wasm32"))]
    mod prop {
        use super::*;
        use proptest::prelude::*;

        /// The property test's world: a replica's outbox, the uploader, a node that applies each
        /// entry once (its ledger) and refuses the "bad" ones, and what came of each entry.
        struct Sim {
            outbox: BTreeMap<i64, usize>,
            bad: BTreeSet<i64>,
            u: Uploader,
            in_flight: Vec<Upload>,
            applied: BTreeMap<i64, usize>,
            ledger: i64,
            refused: BTreeSet<i64>,
            connected: bool,
        }

        impl Sim {
            fn entries_of(w: &Upload) -> Vec<i64> {
                let counts = w.origin.entries.len().max(1) as i64;
                (w.origin.n - counts + 1..=w.origin.n).collect()
            }

            /// The node commits write `w` (what its ledger has not seen yet).
            fn commit(&mut self, w: &Upload) {
                for n in Self::entries_of(w) {
                    if n > self.ledger {
                        *self.applied.entry(n).or_default() += 1;
                    }
                }
                self.ledger = self.ledger.max(w.origin.n);
            }

            fn step(&mut self, s: u8) -> Result<(), TestCaseError> {
                match s {
                    // Flush: read the outbox after `after`, up to the room.
                    0..=3 if self.connected => {
                        let entries: Vec<Entry> = self
                            .outbox
                            .range(self.u.after() + 1..)
                            .take(self.u.room())
                            .map(|(&n, &k)| entry(n, k))
                            .collect();
                        if let Some(w) = self.u.batch(entries) {
                            prop_assert!(w.ops.len() <= BATCH_OPS || w.origin.entries.is_empty());
                            prop_assert!(w.origin.entries.len() <= BATCH_ENTRIES);
                            self.in_flight.push(w);
                        }
                        prop_assert!(self.in_flight.len() <= 1, "one write in flight");
                    }
                    // The node answers the oldest write.
                    4..=7 if !self.in_flight.is_empty() => {
                        let w = self.in_flight.remove(0);
                        let nums = Self::entries_of(&w);
                        if nums.iter().any(|n| self.bad.contains(n)) {
                            match self
                                .u
                                .rejected(w.id, ErrorMsg::new(ErrorCode::Forbidden, "bad"))
                            {
                                Refusal::Refused { n, .. } => {
                                    prop_assert!(self.bad.contains(&n));
                                    prop_assert!(self.refused.insert(n), "refused twice");
                                    self.outbox.remove(&n);
                                }
                                Refusal::Split(es) => prop_assert_eq!(es, nums),
                                Refusal::Failed { .. } => {
                                    prop_assert!(false, "a refusal is no failure")
                                }
                            }
                        } else {
                            self.commit(&w);
                            let got = self.u.resolved(w.id, self.ledger);
                            prop_assert_eq!(&got, &nums);
                        }
                    }
                    // The replica records the answers: written entries leave the outbox.
                    8 => {
                        for (n, _) in self.u.take_confirmed() {
                            self.outbox.remove(&n);
                        }
                    }
                    // The link drops: the oldest write may have committed with its answer lost; the
                    // writes in flight fail, and everything unanswered goes again.
                    9 => {
                        if let Some(w) = self.in_flight.first().cloned() {
                            if !Self::entries_of(&w).iter().any(|n| self.bad.contains(n)) {
                                self.commit(&w);
                            }
                        }
                        for w in std::mem::take(&mut self.in_flight) {
                            let r = self
                                .u
                                .rejected(w.id, ErrorMsg::new(ErrorCode::Overloaded, "lost"));
                            prop_assert!(matches!(r, Refusal::Failed { .. }), "{:?}", r);
                        }
                        for (n, _) in self.u.take_confirmed() {
                            self.outbox.remove(&n);
                        }
                        self.u.restart();
                        self.connected = false;
                    }
                    _ => self.connected = true,
                }
                Ok(())
            }
        }

        proptest! {
            #[test]
            fn every_entry_lands_once_or_is_refused_once_whatever_is_lost(
                sizes in proptest::collection::vec(prop_oneof![9 => 1usize..20, 1 => 200usize..700], 1..200),
                bad in proptest::collection::btree_set(0usize..200, 0..10),
                steps in proptest::collection::vec(0u8..11, 1..400),
            ) {
                let n_entries = sizes.len() as i64;
                let mut sim = Sim {
                    outbox: sizes.iter().enumerate().map(|(i, s)| (i as i64 + 1, *s)).collect(),
                    bad: bad.into_iter().map(|b| b as i64 + 1).collect(),
                    u: Uploader::new("c".into()),
                    in_flight: Vec::new(),
                    applied: BTreeMap::new(),
                    ledger: 0,
                    refused: BTreeSet::new(),
                    connected: true,
                };
                for s in steps {
                    sim.step(s)?;
                }
                // Then quiet: connected, flush and answer until the outbox is empty.
                sim.connected = true;
                for _ in 0..10_000 {
                    if sim.outbox.is_empty() {
                        break;
                    }
                    sim.step(0)?;
                    while !sim.in_flight.is_empty() {
                        sim.step(4)?;
                    }
                    sim.step(8)?;
                }
                prop_assert!(sim.outbox.is_empty(), "left: {:?}", sim.outbox.keys().collect::<Vec<_>>());
                for n in 1..=n_entries {
                    let landed = sim.applied.get(&n).copied().unwrap_or(0);
                    if sim.bad.contains(&n) {
                        prop_assert!(sim.refused.contains(&n) && landed == 0, "entry {} refused", n);
                    } else {
                        prop_assert_eq!(landed, 1, "entry {} applied once", n);
                    }
                }
            }
        }
    }
}
