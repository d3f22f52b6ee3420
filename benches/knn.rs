//! Exact KNN (k = 10) over 100,000 vectors of 384 dimensions through `Store::knn`, against a
//! "memory-bandwidth floor" measured in the same run: a plain scalar scan in Rust over the same
//! vectors held in one contiguous `Vec<f32>` (cosine distance to each, top 10 kept).
//!
//! Run with `cargo bench --bench knn`. A plain `fn main()` program (no harness): it times each
//! query with `std::time::Instant` (and, as a cross-check less sensitive to other processes,
//! with the calling thread's CPU time), prints median and p90 latencies, the ratio
//! hivesync / floor, and recall@10 of hivesync against the floor. Nothing is asserted: it is a
//! measurement.
//! The two sides run alternately, query by query, so load from other processes hits both.
//!
//! Data: 100,000 unit-length vectors around 256 random unit centroids (clustered, like real
//! sentence embeddings, and normalised like the output of e.g. all-MiniLM-L6-v2); queries are
//! stored vectors with noise added. Entities and their vectors are written through
//! `Store::write` in transactions of 1,000 ops (500 entities + their 500 vectors).
//!
//! After the main table, diagnostics explain the ratio: vec0 queried directly (without the join
//! to `vectors`), the join as `Store::knn` runs it but as raw SQL, the query plan, where vec0's
//! chunk pages sit against the readers' mmap window, `Store::knn` on a store whose readers map
//! the whole file, the floor computed with sqlite-vec's own cosine formula, a SIMD-friendly
//! dot-product scan, and one plain pass over the memory.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/mod.rs"]
mod common;
use common::{load_average, machine_info};

use std::path::Path;
use std::time::{Duration, Instant};

use hivesync::model::{embedding_to_blob, Kind, WriteOp};
use hivesync::query::KnnQuery;
use hivesync::store::{PoolConfig, Store, StoreOptions};
use serde_json::json;

const N: usize = 100_000;
const DIMS: usize = 384;
const K: usize = 10;
const QUERIES: usize = 20;
const WARMUP: usize = 3;
/// Timed passes over the query set (main table / diagnostics).
const PASSES: usize = 3;
const DIAG_PASSES: usize = 2;
const CENTROIDS: usize = 256;
/// Subjects per `Store::write` call (each with an entity op and a vector op: 1,000 ops).
const LOAD_BATCH: usize = 500;
const MODEL: &str = "bench-384";
/// The product's stated goal: hivesync at most this many times the floor.
const GOAL: f64 = 2.0;

// ---------------------------------------------------------------------------------------------
// Small helpers (machine info is in benches/common).

/// xorshift64*: a tiny seeded PRNG, so every run builds the same data.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    fn gauss(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn normalise(v: &mut [f32]) {
    let n = v
        .iter()
        .map(|x| (*x as f64) * (*x as f64))
        .sum::<f64>()
        .sqrt();
    for x in v {
        *x = (*x as f64 / n) as f32;
    }
}

/// `p` in 0..=1, nearest-rank percentile of latencies.
fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    let rank = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    if s.len().is_multiple_of(2) {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2
    } else {
        s[s.len() / 2]
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn subject(i: usize) -> String {
    format!("v{i:06}")
}

fn index_of(subject: &str) -> usize {
    subject[1..].parse().expect("subject id")
}

// ---------------------------------------------------------------------------------------------
// Data.

fn make_data(rng: &mut Rng) -> Vec<f32> {
    let mut centroids = vec![0f32; CENTROIDS * DIMS];
    for c in centroids.chunks_mut(DIMS) {
        c.iter_mut().for_each(|x| *x = rng.gauss() as f32);
        normalise(c);
    }
    // Noise of norm ~0.8 per vector around a unit centroid: clusters that overlap loosely.
    let sigma = 0.8 / (DIMS as f64).sqrt();
    let mut data = vec![0f32; N * DIMS];
    for v in data.chunks_mut(DIMS) {
        let c = rng.below(CENTROIDS);
        for (j, x) in v.iter_mut().enumerate() {
            *x = centroids[c * DIMS + j] + (rng.gauss() * sigma) as f32;
        }
        normalise(v);
    }
    data
}

fn make_queries(rng: &mut Rng, data: &[f32], n: usize) -> Vec<Vec<f32>> {
    let sigma = 0.5 / (DIMS as f64).sqrt();
    (0..n)
        .map(|_| {
            let i = rng.below(N);
            let mut q: Vec<f32> = data[i * DIMS..(i + 1) * DIMS]
                .iter()
                .map(|x| x + (rng.gauss() * sigma) as f32)
                .collect();
            normalise(&mut q);
            q
        })
        .collect()
}

fn load(store: &Store, data: &[f32]) -> Duration {
    let start = Instant::now();
    for first in (0..N).step_by(LOAD_BATCH) {
        let last = (first + LOAD_BATCH).min(N);
        let mut ops = Vec::with_capacity(2 * (last - first));
        for i in first..last {
            ops.push(WriteOp::upsert(
                Kind::Entity,
                "default",
                json!({"id": subject(i), "kind": "doc", "name": format!("document {i}")}),
            ));
        }
        for i in first..last {
            ops.push(WriteOp::upsert(
                Kind::Vector,
                "default",
                json!({"subject": subject(i), "model": MODEL,
                       "embedding": &data[i * DIMS..(i + 1) * DIMS]}),
            ));
        }
        store.write(&ops).expect("load write");
        if (last / LOAD_BATCH).is_multiple_of(40) {
            eprintln!(
                "  loaded {last} / {N} in {:.1} s",
                start.elapsed().as_secs_f64()
            );
        }
    }
    start.elapsed()
}

// ---------------------------------------------------------------------------------------------
// The floor: a straightforward scalar scan over contiguous memory.

/// Keep the `K` smallest (distance, index) pairs, sorted ascending.
struct TopK {
    items: Vec<(f32, usize)>,
}

impl TopK {
    fn new() -> TopK {
        TopK {
            items: Vec::with_capacity(K + 1),
        }
    }
    #[inline]
    fn push(&mut self, d: f32, i: usize) {
        if self.items.len() == K && d >= self.items[K - 1].0 {
            return;
        }
        let pos = self.items.partition_point(|(x, _)| *x <= d);
        self.items.insert(pos, (d, i));
        self.items.truncate(K);
    }
}

/// Cosine distance of every row to `q` (query norm computed once), top `K`.
fn floor_knn(data: &[f32], q: &[f32]) -> Vec<(f32, usize)> {
    let qn = q.iter().map(|x| x * x).sum::<f32>().sqrt();
    let mut top = TopK::new();
    for (i, row) in data.chunks_exact(DIMS).enumerate() {
        let mut dot = 0f32;
        let mut nn = 0f32;
        for j in 0..DIMS {
            dot += row[j] * q[j];
            nn += row[j] * row[j];
        }
        top.push(1.0 - dot / (qn * nn.sqrt()), i);
    }
    top.items
}

/// Diagnostic: sqlite-vec's own `distance_cosine_float` (three sums per row, query norm
/// recomputed per row), to separate arithmetic from storage overhead.
fn floor_knn_vec_formula(data: &[f32], q: &[f32]) -> Vec<(f32, usize)> {
    let mut top = TopK::new();
    for (i, row) in data.chunks_exact(DIMS).enumerate() {
        let (mut dot, mut a, mut b) = (0f32, 0f32, 0f32);
        for j in 0..DIMS {
            dot += row[j] * q[j];
            a += row[j] * row[j];
            b += q[j] * q[j];
        }
        top.push(1.0 - dot / (a.sqrt() * b.sqrt()), i);
    }
    top.items
}

/// Diagnostic: 1 - dot product (valid because the vectors are unit length), with 16
/// independent partial sums that the compiler turns into SIMD: what a vectorised distance
/// kernel would cost.
fn floor_knn_dot16(data: &[f32], q: &[f32]) -> Vec<(f32, usize)> {
    let mut top = TopK::new();
    for (i, row) in data.chunks_exact(DIMS).enumerate() {
        let mut acc = [0f32; 16];
        for (r, qq) in row.chunks_exact(16).zip(q.chunks_exact(16)) {
            for j in 0..16 {
                acc[j] += r[j] * qq[j];
            }
        }
        top.push(1.0 - acc.iter().sum::<f32>(), i);
    }
    top.items
}

/// Diagnostic: one pass reading all the memory (a sum), the true bandwidth floor.
fn memory_pass(data: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for c in data.chunks_exact(16) {
        for j in 0..16 {
            acc[j] += c[j];
        }
    }
    acc.iter().sum()
}

// ---------------------------------------------------------------------------------------------

fn hivesync_knn(store: &Store, q: &[f32]) -> Vec<(f64, usize)> {
    let hits = store
        .knn(&KnnQuery {
            model: MODEL.into(),
            embedding: q.to_vec(),
            k: K,
            ns: None,
            kind: None,
        })
        .expect("knn");
    hits.iter()
        .map(|h| (h.distance, index_of(&h.subject)))
        .collect()
}

/// CPU time consumed so far by the calling thread, which runs every query (scheduler
/// statistics, ns; a running thread's figure may lag by up to one scheduler tick).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = stat
        .split_whitespace()
        .next()
        .and_then(|x| x.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// Wall-clock and CPU time of each run of one variant.
#[derive(Default)]
struct Samples {
    wall: Vec<Duration>,
    cpu: Vec<Duration>,
}

/// A named thing to time on one query.
type Variant<'a> = (&'a str, Box<dyn FnMut(&[f32]) + 'a>);

/// Run every variant on every query, `passes` times over the query set, interleaved query by
/// query, so that load from other processes falls on all variants alike.
fn interleaved(queries: &[Vec<f32>], passes: usize, variants: &mut [Variant<'_>]) -> Vec<Samples> {
    let mut out: Vec<Samples> = variants.iter().map(|_| Samples::default()).collect();
    for _ in 0..passes {
        for q in queries {
            for (i, (_, f)) in variants.iter_mut().enumerate() {
                let (c0, t0) = (cpu_time(), Instant::now());
                f(q);
                let wall = t0.elapsed();
                out[i].wall.push(wall);
                out[i].cpu.push(cpu_time().saturating_sub(c0));
            }
        }
    }
    out
}

fn file_mib(path: &Path) -> f64 {
    std::fs::metadata(path)
        .map(|m| m.len() as f64 / (1 << 20) as f64)
        .unwrap_or(0.0)
}

fn header() {
    println!(
        "{:<46} {:>10} {:>9} {:>7} | {:>10} {:>7}",
        "", "median ms", "p90 ms", "ratio", "cpu med ms", "ratio"
    );
    println!("{}", "-".repeat(97));
}

fn table_row(name: &str, s: &Samples, floor: &Samples) -> String {
    let (m, p, c) = (median(&s.wall), percentile(&s.wall, 0.9), median(&s.cpu));
    format!(
        "{:<46} {:>10.2} {:>9.2} {:>7.2} | {:>10.2} {:>7.2}",
        name,
        ms(m),
        ms(p),
        m.as_secs_f64() / median(&floor.wall).as_secs_f64(),
        ms(c),
        c.as_secs_f64() / median(&floor.cpu).as_secs_f64(),
    )
}

fn main() {
    println!(
        "== hivesync KNN: Store::knn (sqlite-vec vec0, cosine) vs an in-memory scalar scan =="
    );
    println!("machine : {}", machine_info());
    println!("sqlite  : {}", rusqlite::version());
    println!("load avg: {} (1/5/15 min, at start)", load_average());
    println!(
        "data    : {N} vectors x {DIMS} dims (f32, unit length, {CENTROIDS} clusters), k = {K}, \
         {QUERIES} queries x {PASSES} passes (+{WARMUP} warm-up), interleaved query by query"
    );
    let mut rng = Rng::new(0xC0FF_EE00_1234);
    let data = make_data(&mut rng);
    let queries = make_queries(&mut rng, &data, WARMUP + QUERIES);
    let (warm, queries) = queries.split_at(WARMUP);

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("knn.db");
    let store = Store::open(&path, StoreOptions::default()).expect("open store");
    eprintln!("loading {N} entities + {N} vectors through Store::write ...");
    let load_time = load(&store, &data);
    // Settle the WAL so readers read the database file, as they would in steady state.
    let (busy, log, done): (i64, i64, i64) = store
        .pool()
        .writer()
        .expect("writer")
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("checkpoint");
    println!(
        "load    : {:.1} s through Store::write ({:.0} subjects/s, 1,000 ops per transaction); \
         db file {:.0} MiB (checkpoint busy={busy} log={log} done={done})",
        load_time.as_secs_f64(),
        N as f64 / load_time.as_secs_f64(),
        file_mib(&path)
    );
    // Where the file's bytes are (dbstat), per vector.
    store
        .read(|c| {
            let free: i64 = c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
            let mut st = c.prepare(
                "SELECT name, count(*) * max(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC LIMIT 5",
            )?;
            let rows: Vec<(String, i64)> = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<hivesync::rusqlite::Result<_>>()?;
            let parts: Vec<String> = rows
                .iter()
                .map(|(n, b)| format!("{n} {:.0} B", *b as f64 / N as f64))
                .collect();
            println!("bytes per vector: {}; {free} free pages", parts.join(", "));
            Ok(())
        })
        .expect("dbstat");

    // Recall@10 of hivesync against the floor, per query (untimed), and the largest gap
    // between the distances the two report at equal ranks.
    let mut recalls = Vec::new();
    let mut max_gap = 0f64;
    for q in queries {
        let (h, f) = (hivesync_knn(&store, q), floor_knn(&data, q));
        let fset: Vec<usize> = f.iter().map(|x| x.1).collect();
        recalls.push(h.iter().filter(|x| fset.contains(&x.1)).count() as f64 / K as f64);
        for ((hd, _), (fd, _)) in h.iter().zip(&f) {
            max_gap = max_gap.max((hd - *fd as f64).abs());
        }
    }

    // Warm up both sides (page cache, mmap faults, code paths).
    for q in warm {
        hivesync_knn(&store, q);
        std::hint::black_box(floor_knn(&data, q));
    }
    let mut variants: Vec<Variant<'_>> = vec![
        (
            "hivesync Store::knn",
            Box::new(|q: &[f32]| {
                std::hint::black_box(hivesync_knn(&store, q));
            }),
        ),
        (
            "floor: scalar scan of a Vec<f32> (baseline)",
            Box::new(|q: &[f32]| {
                std::hint::black_box(floor_knn(&data, q));
            }),
        ),
    ];
    let s = interleaved(queries, PASSES, &mut variants);
    let (hs, floor) = (&s[0], &s[1]);
    let ratio = median(&hs.wall).as_secs_f64() / median(&floor.wall).as_secs_f64();
    let cpu_ratio = median(&hs.cpu).as_secs_f64() / median(&floor.cpu).as_secs_f64();

    println!();
    header();
    println!("{}", table_row(variants[0].0, hs, floor));
    println!("{}", table_row(variants[1].0, floor, floor));
    println!("{}", "-".repeat(97));
    println!(
        "ratio hivesync/floor (median latency) = {ratio:.2}  (goal <= {GOAL:.1}: {}); \
         by CPU time {cpu_ratio:.2}",
        if ratio <= GOAL { "met" } else { "NOT MET" }
    );
    let mean_recall = recalls.iter().sum::<f64>() / recalls.len() as f64;
    let min_recall = recalls.iter().cloned().fold(1.0, f64::min);
    println!(
        "recall@10 vs floor: mean {mean_recall:.3}, min {min_recall:.3} over {} queries; \
         max |distance difference| at equal ranks {max_gap:.2e}",
        recalls.len()
    );
    let per_query: Vec<String> = recalls.iter().map(|r| format!("{r:.1}")).collect();
    println!("recall per query: {}", per_query.join(" "));
    drop(variants);

    diagnostics(&store, &path, &data, queries);
    println!("load avg: {} (1/5/15 min, at end)", load_average());
}

/// Experiments that explain the ratio; printed, never asserted.
fn diagnostics(store: &Store, path: &Path, data: &[f32], queries: &[Vec<f32>]) {
    println!();
    println!(
        "-- diagnostics (same queries, interleaved; ratios against the floor measured \
         alongside) --"
    );
    let table: String = store
        .read(|c| {
            Ok(hivesync::schema::model_by_name(c, "default", MODEL)?
                .expect("model")
                .table)
        })
        .expect("model");
    let norms: (f32, f32) = store
        .read(|c| {
            // Each embedding is stored once, in the index (schema 7): read it from there.
            let mut st = c.prepare(&format!(
                "SELECT {} FROM vectors LIMIT 1000",
                hivesync::schema::embedding_sql("vectors.")
            ))?;
            let blobs = st.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
            let mut lo = f32::INFINITY;
            let mut hi = 0f32;
            for b in blobs {
                let v = hivesync::model::blob_to_embedding(&b?).expect("blob");
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                lo = lo.min(n);
                hi = hi.max(n);
            }
            Ok((lo, hi))
        })
        .expect("norms");
    println!(
        "stored embeddings: |v| in [{:.6}, {:.6}] over 1,000 rows (unit length)",
        norms.0, norms.1
    );

    // The model is a partition key of its dimension count's table, as Store::knn queries it.
    let vec_only = format!(
        "SELECT rowid, distance FROM {table}
         WHERE embedding MATCH ?1 AND k = ?2 AND model = '{MODEL}'"
    );
    let join = format!(
        "SELECT v.ns, v.subject, v.kind, m.distance
         FROM (SELECT rowid, distance FROM {table}
               WHERE embedding MATCH ?1 AND k = ?2 AND model = '{MODEL}') m
         JOIN vectors v ON v.rowid = m.rowid ORDER BY m.distance"
    );
    let plan: Vec<String> = store
        .read(|c| {
            let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {join}"))?;
            let params = rusqlite::params![embedding_to_blob(&queries[0]), K as i64];
            let r = st.query_map(params, |r| r.get::<_, String>(3))?;
            Ok(r.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .expect("plan");
    println!("query plan of Store::knn's join: {}", plan.join(" | "));
    // Where the vec0 vector chunks sit in the file, against the readers' 256 MiB mmap window.
    let (chunk_pages, beyond): (i64, i64) = store
        .read(|c| {
            Ok(c.query_row(
                &format!(
                    "SELECT count(*), sum(pageno > (256 * 1048576) / 4096) FROM dbstat
                     WHERE name = '{table}_vector_chunks00'"
                ),
                [],
                |r| Ok((r.get(0)?, r.get::<_, Option<i64>>(1)?.unwrap_or(0))),
            )?)
        })
        .unwrap_or((0, 0));
    if chunk_pages > 0 {
        println!(
            "vec0 chunk pages: {chunk_pages}, of which {beyond} ({:.0}%) lie beyond the first \
             256 MiB of the file (PoolConfig::mmap_bytes default), so are read with pread \
             into the page cache, not mapped",
            100.0 * beyond as f64 / chunk_pages as f64
        );
    }

    let sql_rows = |sql: &str, q: &[f32]| -> usize {
        store
            .read(|c| {
                let mut st = c.prepare_cached(sql)?;
                let mut rows = st.query(rusqlite::params![embedding_to_blob(q), K as i64])?;
                let mut n = 0;
                while rows.next()?.is_some() {
                    n += 1;
                }
                Ok(n)
            })
            .expect("sql knn")
    };
    // A second store on the same file whose readers map the whole file.
    let big = Store::open(
        path,
        StoreOptions {
            pool: PoolConfig {
                read_only: true,
                mmap_bytes: 2 << 30,
                ..PoolConfig::default()
            },
            ..StoreOptions::default()
        },
    )
    .expect("open read-only store");
    let effective: i64 = big
        .read(|c| Ok(c.query_row("PRAGMA mmap_size", [], |r| r.get(0))?))
        .expect("mmap_size");
    println!(
        "second store (read-only, same file): PoolConfig::mmap_bytes = 2 GiB, effective \
         mmap_size {} MiB, file {:.0} MiB",
        effective >> 20,
        file_mib(path)
    );
    for q in queries.iter().take(WARMUP) {
        hivesync_knn(&big, q);
    }
    let mut variants: Vec<Variant<'_>> = vec![
        (
            "floor (as above)",
            Box::new(|q: &[f32]| {
                std::hint::black_box(floor_knn(data, q));
            }),
        ),
        (
            "hivesync Store::knn (as above)",
            Box::new(|q: &[f32]| {
                std::hint::black_box(hivesync_knn(store, q));
            }),
        ),
        (
            "vec0 alone (SQL on a pooled reader)",
            Box::new(|q: &[f32]| {
                std::hint::black_box(sql_rows(&vec_only, q));
            }),
        ),
        (
            "vec0 + join to vectors (SQL, as Store::knn)",
            Box::new(|q: &[f32]| {
                std::hint::black_box(sql_rows(&join, q));
            }),
        ),
        (
            "Store::knn, mmap_bytes = 2 GiB (whole file)",
            Box::new(|q: &[f32]| {
                std::hint::black_box(hivesync_knn(&big, q));
            }),
        ),
        (
            "floor with sqlite-vec's cosine formula",
            Box::new(|q: &[f32]| {
                std::hint::black_box(floor_knn_vec_formula(data, q));
            }),
        ),
        (
            "floor as 1 - dot, 16 lanes (SIMD, unit vectors)",
            Box::new(|q: &[f32]| {
                std::hint::black_box(floor_knn_dot16(data, q));
            }),
        ),
        (
            "one pass over the memory (sum, 16 lanes)",
            Box::new(|_: &[f32]| {
                std::hint::black_box(memory_pass(std::hint::black_box(data)));
            }),
        ),
    ];
    let s = interleaved(queries, DIAG_PASSES, &mut variants);
    header();
    for (i, (name, _)) in variants.iter().enumerate() {
        println!("{}", table_row(name, &s[i], &s[0]));
    }
    println!(
        "vector bytes per query: {:.1} MiB; diagnostics: {QUERIES} queries x {DIAG_PASSES} passes",
        (N * DIMS * 4) as f64 / (1 << 20) as f64
    );
}
