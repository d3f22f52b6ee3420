//! Vector ingest and bytes on disk, each against its baseline in the same run.
//!
//! - Ingest: N x 384 embeddings (default 100,000) through `Store::write` in batches of 1,000
//!   vector ops (one transaction each; their subjects, notes, written before and not timed),
//!   against raw rusqlite inserting the same vectors into a vec0 table alone (same pragmas:
//!   WAL, synchronous=NORMAL; one transaction per 1,000). Goal: >= 0.8x the raw rate.
//! - Bytes: the database file after a checkpoint (WAL folded in, closed), minus the same file
//!   before the vectors were written, per vector, against the raw floats (N x 384 x 4 bytes).
//!   Goal: <= 2.2x. The raw vec0 file's own bytes per vector are printed beside it.
//!
//! Run: `cargo bench --bench vectors` (`HIVESYNC_BENCH_VECTORS=20000` for a quick run). A
//! measurement, not a test: nothing is asserted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/mod.rs"]
mod common;
use common::{load_average, machine_info};

use std::path::Path;
use std::time::Instant;

use hivesync::model::{embedding_to_blob, Kind, WriteOp};
use hivesync::rusqlite::{params, Connection};
use hivesync::store::{Store, StoreOptions};
use serde_json::json;

const DIMS: usize = 384;
const BATCH: usize = 1000;

struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }
}

fn file_bytes(path: &Path) -> u64 {
    // Fold the WAL in and close: the bytes the database holds.
    let c = Connection::open(path).unwrap();
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(c);
    std::fs::metadata(path).unwrap().len()
}

/// Seconds to insert `vectors` with `insert` (rowid ?1, blob ?2) into the table `create` makes
/// in a new file at `path` (WAL, synchronous=NORMAL), one transaction per [`BATCH`].
fn raw_ingest(path: &Path, vectors: &[Vec<f32>], create: &str, insert: &str) -> f64 {
    let t0 = Instant::now();
    let mut c = Connection::open(path).unwrap();
    c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .unwrap();
    c.pragma_update(None, "synchronous", "NORMAL").unwrap();
    c.execute_batch(create).unwrap();
    for (k, chunk) in vectors.chunks(BATCH).enumerate() {
        let first = k * BATCH;
        let tx = c.transaction().unwrap();
        {
            let mut st = tx.prepare_cached(insert).unwrap();
            for (i, v) in chunk.iter().enumerate() {
                st.execute(params![(first + i) as i64 + 1, embedding_to_blob(v)])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    drop(c);
    t0.elapsed().as_secs_f64()
}

/// Seconds for the bare SQL of the store's design (see its use in `main`); without `row`, the
/// layout where vec0 holds the vector's fields too (auxiliary columns) and there is no row.
fn design_floor(path: &Path, vectors: &[Vec<f32>], row: bool) -> f64 {
    let t0 = Instant::now();
    let mut c = Connection::open(path).unwrap();
    c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))
        .unwrap();
    c.pragma_update(None, "synchronous", "NORMAL").unwrap();
    c.execute_batch(&format!(
        "CREATE VIRTUAL TABLE v USING vec0(embedding float[{DIMS}] distance_metric=cosine,
           ns text partition key, model text partition key, kind text{aux});
         CREATE TABLE vectors(ns TEXT NOT NULL, subject TEXT NOT NULL, model TEXT NOT NULL,
           kind TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL,
           log_seq INTEGER, UNIQUE(ns, subject, model));
         CREATE TABLE changes(seq INTEGER PRIMARY KEY AUTOINCREMENT, tx INTEGER NOT NULL,
           ts INTEGER NOT NULL, ns TEXT NOT NULL, kind TEXT NOT NULL, op TEXT NOT NULL,
           id TEXT NOT NULL, model TEXT, data TEXT, embedding BLOB);",
        aux = if row {
            ""
        } else {
            ", +subject text, +created_at integer, +updated_at integer"
        }
    ))
    .unwrap();
    for (k, chunk) in vectors.chunks(BATCH).enumerate() {
        let tx = c.transaction().unwrap();
        {
            let mut ins_row = tx
                .prepare_cached(
                    "INSERT INTO vectors(ns, subject, model, kind, created_at, updated_at, log_seq)
                     VALUES ('default', ?1, 'bench-384', 'memo', 1, 1, ?2) RETURNING rowid",
                )
                .unwrap();
            let mut idx = tx
                .prepare_cached(if row {
                    "INSERT INTO v(rowid, embedding, ns, model, kind)
                     VALUES (?1, ?2, 'default', 'bench-384', 'memo')"
                } else {
                    "INSERT INTO v(rowid, embedding, ns, model, kind, subject, created_at, updated_at)
                     VALUES (?1, ?2, 'default', 'bench-384', 'memo', ?3, 1, 1)"
                })
                .unwrap();
            let mut log = tx
                .prepare_cached(
                    "INSERT INTO changes(seq, tx, ts, ns, kind, op, id, model, data)
                     VALUES (?1, ?1, 1, 'default', 'vector', 'upsert', ?2, 'bench-384', ?3)",
                )
                .unwrap();
            for (i, v) in chunk.iter().enumerate() {
                let seq = (k * BATCH + i) as i64 + 1;
                let subject = format!("s{}", k * BATCH + i);
                if row {
                    let rowid: i64 = ins_row
                        .query_row(params![subject, seq], |r| r.get(0))
                        .unwrap();
                    idx.execute(params![rowid, embedding_to_blob(v)]).unwrap();
                } else {
                    idx.execute(params![seq, embedding_to_blob(v), subject])
                        .unwrap();
                }
                let image = format!(
                    "{{\"subject\":\"{subject}\",\"model\":\"bench-384\",\"kind\":\"memo\",\"created_at\":1,\"updated_at\":1}}"
                );
                log.execute(params![seq, subject, image]).unwrap();
            }
        }
        tx.commit().unwrap();
    }
    drop(c);
    t0.elapsed().as_secs_f64()
}

fn main() {
    let n: usize = std::env::var("HIVESYNC_BENCH_VECTORS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    println!("vectors bench: {}", machine_info());
    println!("load average: {}", load_average());
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let vectors: Vec<Vec<f32>> = (0..n)
        .map(|_| (0..DIMS).map(|_| rng.f()).collect())
        .collect();
    let raw_floats = (n * DIMS * 4) as f64;

    // The store: subjects first (not timed), then the vectors.
    let path = dir.path().join("store.db");
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        for b in 0..n / BATCH {
            let ops: Vec<WriteOp> = (b * BATCH..(b + 1) * BATCH)
                .map(|i| {
                    WriteOp::upsert(
                        Kind::Note,
                        "default",
                        json!({"id": format!("s{i}"), "content": "subject"}),
                    )
                })
                .collect();
            store.write(&ops).unwrap();
        }
    }
    let before = file_bytes(&path);
    let mut store_secs = 0.0;
    {
        let store = Store::open(&path, StoreOptions::default()).unwrap();
        for b in 0..n / BATCH {
            // The ops are built outside the timing (as a node receives them, decoded).
            let ops: Vec<WriteOp> = (b * BATCH..(b + 1) * BATCH)
                .map(|i| {
                    WriteOp::upsert(
                        Kind::Vector,
                        "default",
                        json!({"subject": format!("s{i}"), "model": "bench-384", "embedding": vectors[i]}),
                    )
                })
                .collect();
            let t0 = Instant::now();
            store.write(&ops).unwrap();
            store_secs += t0.elapsed().as_secs_f64();
        }
    }
    let after = file_bytes(&path);
    {
        // Where the bytes are: pages per table (dbstat, where this SQLite has it) and free.
        let c = Connection::open(&path).unwrap();
        let free: i64 = c
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))
            .unwrap();
        let psize: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        let copies: i64 = c
            .query_row(
                "SELECT count(*) FROM vectors WHERE embedding IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        println!(
            "page size {psize}, free pages {free}, rows still holding their embedding {copies}"
        );
        if let Ok(mut st) = c.prepare(
            "SELECT name, count(*) * max(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC LIMIT 8",
        ) {
            let rows: Vec<(String, i64)> = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            for (name, bytes) in rows {
                println!("  {name}: {:.0} B per vector", bytes as f64 / n as f64);
            }
        };
    }

    // Raw: the same vectors into a vec0 table alone.
    hivesync::schema::register_extensions();
    let raw_path = dir.path().join("raw.db");
    let raw_secs = raw_ingest(
        &raw_path,
        &vectors,
        &format!(
            "CREATE VIRTUAL TABLE v USING vec0(embedding float[{DIMS}] distance_metric=cosine)"
        ),
        "INSERT INTO v(rowid, embedding) VALUES (?1, ?2)",
    );
    let raw_bytes = file_bytes(&raw_path);
    // For the record: the same into a vec0 table shaped as the store's (partition keys ns and
    // model, a `kind` metadata column).
    let part_rate = n as f64
        / raw_ingest(
            &dir.path().join("raw-partitioned.db"),
            &vectors,
            &format!(
                "CREATE VIRTUAL TABLE v USING vec0(embedding float[{DIMS}] distance_metric=cosine,
                   ns text partition key, model text partition key, kind text)"
            ),
            "INSERT INTO v(rowid, embedding, ns, model, kind) VALUES (?1, ?2, 'default', 'bench-384', 'memo')",
        );

    // For the record: the least SQL the store's design must run per vector (each embedding once,
    // in a partitioned vec0; the vector's row; its change row holding the embedding by
    // reference, with a small row image built in Rust), with nothing else: no validation, no
    // lookups, no triggers.
    let floor_rate = n as f64 / design_floor(&dir.path().join("raw-floor.db"), &vectors, true);
    let aux_rate = n as f64 / design_floor(&dir.path().join("raw-aux.db"), &vectors, false);

    let store_rate = n as f64 / store_secs;
    let raw_rate = n as f64 / raw_secs;
    println!(
        "ingest {n} x {DIMS}: store {store_rate:.0} vectors/s ({store_secs:.2} s), raw vec0 {raw_rate:.0} vectors/s ({raw_secs:.2} s): {:.2}x (goal >= 0.8x)",
        store_rate / raw_rate
    );
    println!(
        "  for the record: raw vec0 shaped as the store's (partition keys ns, model; kind metadata): {part_rate:.0} vectors/s; store = {:.2}x of it",
        store_rate / part_rate
    );
    println!(
        "  for the record: the store's design as bare SQL (partitioned vec0 + the vector's row + its change row): {floor_rate:.0} vectors/s = {:.2}x of raw vec0; store = {:.2}x of it",
        floor_rate / raw_rate,
        store_rate / floor_rate
    );
    println!(
        "  for the record: the same with vec0 holding the vector's fields (auxiliary columns), no row: {aux_rate:.0} vectors/s = {:.2}x of raw vec0",
        aux_rate / raw_rate
    );
    println!(
        "bytes per vector, log included: store {:.0} B = {:.2}x the raw floats (goal <= 2.2x); raw vec0 file {:.0} B = {:.2}x; file {} -> {} bytes",
        (after - before) as f64 / n as f64,
        (after - before) as f64 / raw_floats,
        raw_bytes as f64 / n as f64,
        raw_bytes as f64 / raw_floats,
        before,
        after,
    );
}
