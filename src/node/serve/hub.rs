//! The fan-out hub: one tailer reads each commit from the change log once, encodes every
//! change once per encoding, and appends it to an in-memory window that all subscriptions
//! read from. The writer never waits for a subscriber: it only wakes the tailer; subscribers
//! pull from the window at their own pace, and one that falls behind the window's start
//! reads from the log instead.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::{watch, Notify};

use crate::model::{Change, Kind};
use crate::protocol::feed::{Fill, FrameLimits};
use crate::protocol::{
    encode_change_bin, encode_change_json, encode_change_json_as, Encoding, VectorForm,
};
use crate::query::{self, ChangeFilter};
use crate::store::Store;

/// A change encoded once for every subscriber.
#[derive(Debug)]
pub(crate) struct EncodedChange {
    /// Its seq.
    pub seq: i64,
    /// Its commit group.
    pub tx: i64,
    /// Its namespace (for filtering).
    pub ns: String,
    /// Its kind (for filtering).
    pub kind: Kind,
    /// JSON fragment.
    pub json: Box<[u8]>,
    /// JSON fragment with the embedding in base64 (`hivesync.v1.json-b64`), for a change
    /// that carries one; the others share `json`.
    pub json_b64: Option<Box<[u8]>>,
    /// Postcard fragment.
    pub bin: Box<[u8]>,
}

impl EncodedChange {
    /// Encode `c` both ways.
    pub(crate) fn new(c: &Change) -> Self {
        let mut json = Vec::with_capacity(256);
        encode_change_json(&mut json, c);
        let mut bin = Vec::with_capacity(128);
        encode_change_bin(&mut bin, c);
        let json_b64 = c.embedding.is_some().then(|| {
            let mut j = Vec::with_capacity(json.len() / 2);
            encode_change_json_as(&mut j, c, VectorForm::Base64);
            j.into()
        });
        EncodedChange {
            seq: c.seq,
            tx: c.tx,
            ns: c.ns.clone(),
            kind: c.kind,
            json: json.into(),
            json_b64,
            bin: bin.into(),
        }
    }

    /// The fragment for `enc`.
    pub(crate) fn bytes(&self, enc: Encoding) -> &[u8] {
        match enc {
            Encoding::Json => &self.json,
            Encoding::Bin => &self.bin,
            Encoding::JsonB64 => self.json_b64.as_deref().unwrap_or(&self.json),
        }
    }

    fn size(&self) -> usize {
        self.json.len()
            + self.json_b64.as_ref().map_or(0, |j| j.len())
            + self.bin.len()
            + self.ns.len()
            + 64
    }
}

/// Window limits: 100,000 changes or 64 MiB, whichever comes first. A subscriber within the
/// window is served from memory; one further behind is served from the log on disk.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WindowLimits {
    /// Most changes held.
    pub max_changes: usize,
    /// Most encoded bytes held.
    pub max_bytes: usize,
}

impl Default for WindowLimits {
    fn default() -> Self {
        WindowLimits {
            max_changes: 100_000,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

struct Window {
    changes: VecDeque<Arc<EncodedChange>>,
    bytes: usize,
    /// Every change with seq > covered_from is in the window.
    covered_from: i64,
    /// The last seq published.
    head: i64,
}

/// What a read of the window found.
pub(crate) enum WindowRead {
    /// The cursor is older than the window: read the log.
    Behind,
    /// Changes after the cursor (possibly none), and the position scanned up to.
    Changes(Vec<Arc<EncodedChange>>, i64),
}

/// The hub.
pub(crate) struct Hub {
    window: RwLock<Window>,
    limits: WindowLimits,
    head: watch::Sender<i64>,
    wake: Notify,
}

impl Hub {
    /// A hub whose window starts at `head`.
    pub(crate) fn new(head: i64, limits: WindowLimits) -> Arc<Hub> {
        Arc::new(Hub {
            window: RwLock::new(Window {
                changes: VecDeque::new(),
                bytes: 0,
                covered_from: head,
                head,
            }),
            limits,
            head: watch::channel(head).0,
            wake: Notify::new(),
        })
    }

    /// Tell the tailer there may be new commits.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// The last seq published.
    pub(crate) fn head(&self) -> i64 {
        *self.head.borrow()
    }

    /// A receiver that changes whenever the head moves.
    pub(crate) fn subscribe_head(&self) -> watch::Receiver<i64> {
        self.head.subscribe()
    }

    /// Forget the window after the log restarted at `at` (an edge node re-synced from a
    /// snapshot): subscriptions behind `at` then read the log, find it trimmed, and take a
    /// snapshot themselves.
    pub(crate) fn reset(&self, at: i64) {
        {
            let mut w = self.window.write();
            w.changes.clear();
            w.bytes = 0;
            w.covered_from = at;
            w.head = at;
        }
        self.head.send_replace(at);
    }

    /// Publish committed changes (ascending, whole transactions, continuing the log). Two
    /// publishers may race with the same changes (an edge node publishes what it applied, and
    /// its tailer may read the same rows from the log): what is already published is skipped.
    pub(crate) fn publish(&self, changes: Vec<Arc<EncodedChange>>) {
        let last = {
            let mut w = self.window.write();
            let before = w.head;
            for c in changes {
                if c.seq <= w.head {
                    continue;
                }
                w.head = c.seq;
                w.bytes += c.size();
                w.changes.push_back(c);
            }
            while w.changes.len() > self.limits.max_changes || w.bytes > self.limits.max_bytes {
                let Some(c) = w.changes.pop_front() else {
                    break;
                };
                w.bytes -= c.size();
                w.covered_from = c.seq;
            }
            (w.head > before).then_some(w.head)
        };
        if let Some(last) = last {
            self.head.send_replace(last);
        }
    }

    /// One frame's worth of changes after `cursor` passing `pass`, within `limits` in `enc`'s
    /// bytes, in whole transactions ([`Fill`]).
    pub(crate) fn read(
        &self,
        cursor: i64,
        limits: FrameLimits,
        enc: Encoding,
        pass: impl Fn(&str, Kind) -> bool,
    ) -> WindowRead {
        let w = self.window.read();
        if cursor < w.covered_from {
            return WindowRead::Behind;
        }
        // Seqs in the window are ascending, so find the first after the cursor by bisection.
        let start = w.changes.partition_point(|c| c.seq <= cursor);
        let mut out = Vec::new();
        let mut fill = Fill::new(limits);
        let mut scanned = cursor;
        for c in w.changes.range(start..) {
            if fill.ends_before(c.tx) {
                break;
            }
            scanned = c.seq;
            // A change of another subscriber's namespace is scanned past: it still marks
            // where its transaction runs.
            let sent = pass(&c.ns, c.kind);
            fill.take(c.tx, sent.then(|| c.bytes(enc).len()));
            if sent {
                out.push(c.clone());
            }
        }
        if start == w.changes.len() {
            scanned = scanned.max(w.changes.back().map_or(w.covered_from, |c| c.seq));
        }
        WindowRead::Changes(out, scanned)
    }
}

/// After a wake-up that found nothing new, look again after these delays before falling back
/// to the slow poll. Another process's commit raises its file notification when it writes its
/// WAL frames, but becomes visible only when it then updates the WAL index, which raises no
/// event (shared memory) and may come milliseconds later (with `synchronous=FULL` the writer
/// syncs the WAL in between); a read on the notification alone can miss it. Doubling delays
/// keep the extra latency under the commit's own delay, for a few cheap reads per wake-up.
const RECHECK_AFTER: [Duration; 9] = [
    Duration::from_millis(1),
    Duration::from_millis(2),
    Duration::from_millis(4),
    Duration::from_millis(8),
    Duration::from_millis(16),
    Duration::from_millis(32),
    Duration::from_millis(64),
    Duration::from_millis(128),
    Duration::from_millis(256),
];

/// The tailer: wakes on commits (and on a timer, to catch external writers whose file events
/// were missed), reads new changes from the log and publishes them.
pub(crate) async fn run_tailer(
    store: Arc<Store>,
    hub: Arc<Hub>,
    poll: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last = hub.head();
    // Index into RECHECK_AFTER of the next quick re-read, when one is pending.
    let mut recheck: Option<usize> = None;
    loop {
        let wait = recheck.map_or(poll, |i| RECHECK_AFTER[i]);
        let woken = tokio::select! {
            _ = hub.wake.notified() => true,
            _ = tokio::time::sleep(wait) => false,
            _ = shutdown.changed() => return,
        };
        let mut found = false;
        // Skip what another publisher (an edge's upstream link) already published, and after
        // a reset (edge re-sync) the log restarts past what this loop last read.
        last = last.max(hub.head());
        loop {
            let s = store.clone();
            let res = tokio::task::spawn_blocking(move || {
                let cs = s.read(|c| query::changes_since(c, last, &ChangeFilter::default(), 10_000))?;
                if !cs.is_empty() {
                    // Another program's commit leaves its full-text updates queued: apply them
                    // so its rows become searchable (a no-op after hivesync's own writes).
                    if let Err(e) = s.drain_fts_if_pending() {
                        tracing::warn!(error = %e, "applying queued full-text updates failed; will retry");
                    }
                }
                Ok::<_, crate::Error>(cs.iter().map(|c| Arc::new(EncodedChange::new(c))).collect::<Vec<_>>())
            })
            .await;
            match res {
                Ok(Ok(batch)) if batch.is_empty() => break,
                Ok(Ok(batch)) => {
                    found = true;
                    let n = batch.len();
                    if let Some(c) = batch.last() {
                        last = c.seq;
                    }
                    hub.publish(batch);
                    if n < 10_000 {
                        break;
                    }
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "reading the change log failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "change log reader panicked");
                    break;
                }
            }
        }
        recheck = if found {
            None
        } else if woken {
            Some(0)
        } else {
            recheck.map(|i| i + 1).filter(|&i| i < RECHECK_AFTER.len())
        };
    }
}
