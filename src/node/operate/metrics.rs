//! Counters and gauges, rendered as Prometheus text at `/metrics`.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

/// One metric of the exposition: name, type ([`COUNTER`] or [`GAUGE`]), help, value.
pub(crate) type Sample<'a> = (&'a str, &'static str, &'a str, i64);
/// The Prometheus type of a count that only grows.
pub(crate) const COUNTER: &str = "counter";
/// The Prometheus type of a level.
pub(crate) const GAUGE: &str = "gauge";

/// Upper bounds (seconds) of the write-latency histogram buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Per-subscription progress.
#[derive(Default, Debug)]
pub(crate) struct SubStats {
    /// Last seq sent.
    pub sent: AtomicI64,
    /// Last seq the client acknowledged.
    pub acked: AtomicI64,
}

/// All metrics of a node.
#[derive(Default)]
pub(crate) struct Metrics {
    /// Open WebSocket connections.
    pub connections: AtomicI64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Frames sent.
    pub frames_out: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
    /// Frames received.
    pub frames_in: AtomicU64,
    /// Writes committed.
    pub writes: AtomicU64,
    /// Writes refused or failed.
    pub write_errors: AtomicU64,
    /// Transactions the writer committed writes in (group commit: writes per transaction is
    /// `writes / write_groups`).
    pub write_groups: AtomicU64,
    /// 1 while the NATS publisher is connected.
    pub nats_connected: AtomicU64,
    /// The last seq the NATS stream acknowledged.
    pub nats_published: AtomicI64,
    /// Times publishing to NATS stopped on an error.
    pub nats_errors: AtomicU64,
    /// Messages found in the NATS stream that this node did not sign (someone else publishes
    /// to its subjects).
    pub nats_foreign: AtomicU64,
    /// Changes the stream acknowledged as duplicates (not stored).
    pub nats_duplicates: AtomicU64,
    /// When publishing to NATS last stopped on an error (`/healthz` says `degraded` for a
    /// minute after).
    pub nats_error_at: parking_lot::Mutex<Option<std::time::Instant>>,
    /// Subscribers dropped for not draining their queue.
    pub stalled_drops: AtomicU64,
    /// WebSocket upgrades refused at the connection limit.
    pub refused_connections: AtomicU64,
    /// Hellos refused (wrong or missing token).
    pub failed_hellos: AtomicU64,
    /// Failed hellos not yet reported in a log line, and when the last line was written.
    failed_hello_log: Mutex<(u64, Option<std::time::Instant>)>,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_sum_us: AtomicU64,
    subs: Mutex<HashMap<(u64, String), Arc<SubStats>>>,
}

impl Metrics {
    /// Record one group commit of `writes` writes.
    pub(crate) fn observe_group(&self, writes: usize) {
        if writes > 0 {
            self.write_groups.fetch_add(1, Relaxed);
        }
    }

    /// Record one write's commit latency.
    pub(crate) fn observe_write(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            if s <= *b {
                self.latency_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.latency_sum_us.fetch_add(d.as_micros() as u64, Relaxed);
        self.writes.fetch_add(1, Relaxed);
    }

    /// Count a refused hello; returns how many to report when a log line is due (at most one
    /// a second, so guessing tokens cannot flood the log).
    pub(crate) fn failed_hello(&self) -> Option<u64> {
        self.failed_hellos.fetch_add(1, Relaxed);
        let mut l = self.failed_hello_log.lock();
        l.0 += 1;
        if l.1.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            let n = std::mem::take(&mut l.0);
            l.1 = Some(std::time::Instant::now());
            Some(n)
        } else {
            None
        }
    }

    /// Register a subscription; returns its stats.
    pub(crate) fn add_sub(&self, conn: u64, sub: &str) -> Arc<SubStats> {
        let s = Arc::new(SubStats::default());
        self.subs.lock().insert((conn, sub.to_string()), s.clone());
        s
    }

    /// Forget a subscription.
    pub(crate) fn remove_sub(&self, conn: u64, sub: &str) {
        self.subs.lock().remove(&(conn, sub.to_string()));
    }

    /// Prometheus text exposition: these metrics, then `extra` (what other parts of the node
    /// count: config reloads, the socket limit, the upstream link).
    pub(crate) fn render(&self, head: i64, extra: &[Sample<'_>]) -> String {
        let mut o = String::new();
        let samples = self.samples(head).into_iter().chain(self.write_samples());
        for (name, kind, help, v) in samples.chain(extra.iter().copied()) {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        self.render_latency(&mut o);
        o
    }

    /// The node's own samples, one table.
    fn samples(&self, head: i64) -> [Sample<'static>; 12] {
        let c = |a: &AtomicU64| a.load(Relaxed) as i64;
        // Aggregates only: per-subscription series named every tenant's connections and
        // subscriptions, and grew without bound.
        let (n, max_lag, sum_lag) = {
            let subs = self.subs.lock();
            let lags = subs.values().map(|s| (head - s.sent.load(Relaxed)).max(0));
            let (max, sum) = lags.fold((0i64, 0i64), |(m, t), l| (m.max(l), t + l));
            (subs.len() as i64, max, sum)
        };
        [
            (
                "hivesync_connections",
                GAUGE,
                "Open WebSocket connections.",
                self.connections.load(Relaxed),
            ),
            (
                "hivesync_connections_total",
                COUNTER,
                "Connections accepted.",
                c(&self.connections_total),
            ),
            (
                "hivesync_head_seq",
                GAUGE,
                "Last seq in the change log.",
                head,
            ),
            (
                "hivesync_frames_out_total",
                COUNTER,
                "Frames sent.",
                c(&self.frames_out),
            ),
            (
                "hivesync_bytes_out_total",
                COUNTER,
                "Bytes sent.",
                c(&self.bytes_out),
            ),
            (
                "hivesync_frames_in_total",
                COUNTER,
                "Frames received.",
                c(&self.frames_in),
            ),
            (
                "hivesync_stalled_drops_total",
                COUNTER,
                "Subscribers dropped for stalling.",
                c(&self.stalled_drops),
            ),
            (
                "hivesync_refused_connections_total",
                COUNTER,
                "WebSocket upgrades refused at the connection limit.",
                c(&self.refused_connections),
            ),
            (
                "hivesync_failed_hellos_total",
                COUNTER,
                "Hellos refused (wrong or missing token).",
                c(&self.failed_hellos),
            ),
            ("hivesync_subscriptions", GAUGE, "Active subscriptions.", n),
            (
                "hivesync_subscription_lag_max",
                GAUGE,
                "Most changes between the head and what one subscription was sent.",
                max_lag,
            ),
            (
                "hivesync_subscription_lag_sum",
                GAUGE,
                "Changes between the head and what each subscription was sent, summed.",
                sum_lag,
            ),
        ]
    }

    /// The writer's and the NATS publisher's samples.
    fn write_samples(&self) -> [Sample<'static>; 7] {
        let c = |a: &AtomicU64| a.load(Relaxed) as i64;
        [
            (
                "hivesync_write_errors_total",
                COUNTER,
                "Writes refused or failed.",
                c(&self.write_errors),
            ),
            (
                "hivesync_nats_connected",
                GAUGE,
                "1 while the NATS publisher is connected (serve --publish).",
                c(&self.nats_connected),
            ),
            (
                "hivesync_nats_published_seq",
                GAUGE,
                "The last seq the NATS stream acknowledged.",
                self.nats_published.load(Relaxed),
            ),
            (
                "hivesync_nats_errors_total",
                COUNTER,
                "Times publishing to NATS stopped on an error.",
                c(&self.nats_errors),
            ),
            (
                "hivesync_nats_foreign_messages_total",
                COUNTER,
                "Messages found at the NATS stream's end that this node did not sign (someone else can publish to its subjects).",
                c(&self.nats_foreign),
            ),
            (
                "hivesync_nats_duplicates_total",
                COUNTER,
                "Changes the NATS stream took for duplicates and did not store.",
                c(&self.nats_duplicates),
            ),
            (
                "hivesync_write_groups_total",
                COUNTER,
                "Transactions the writer committed writes in (group commit).",
                c(&self.write_groups),
            ),
        ]
    }

    /// The write commit latency histogram.
    fn render_latency(&self, o: &mut String) {
        let _ = writeln!(o, "# HELP hivesync_write_commit_seconds Write commit latency.\n# TYPE hivesync_write_commit_seconds histogram");
        for (i, b) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "hivesync_write_commit_seconds_bucket{{le=\"{b}\"}} {}",
                self.latency_buckets[i].load(Relaxed)
            );
        }
        let n = self.writes.load(Relaxed);
        let _ = writeln!(o, "hivesync_write_commit_seconds_bucket{{le=\"+Inf\"}} {n}");
        let _ = writeln!(
            o,
            "hivesync_write_commit_seconds_sum {}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(o, "hivesync_write_commit_seconds_count {n}");
    }
}
