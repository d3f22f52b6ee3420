//! Write throughput of entity upserts through `hivesync::store::Store::write`, against a raw
//! rusqlite baseline measured in the same run.
//!
//! Run with `cargo bench --bench write_throughput`. A plain `fn main()` program (no harness):
//! it times with `std::time::Instant`, repeats every measurement `ROUNDS` times on fresh
//! database files and prints the median. It is a measurement, not a test: nothing is asserted.
//! hivesync and the baseline write side by side in the same round, taking turns of
//! max(batch, 256) rows, so that other processes on the machine (builds, say) slow both alike.
//!
//! hivesync: `Store::write(&ops[i..i + batch])`, one call (= one transaction) per batch. Each op
//! is an entity upsert; the store validates it and writes the `entities` row, and its triggers
//! write the change-log row (a JSON row image) and the FTS5 update (since schema migration 2
//! queued by the trigger and applied in bulk just before the commit), all in one transaction.
//!
//! Baseline: raw rusqlite on a table with the same columns, the same UNIQUE(ns, id) key and
//! `(ns, kind)` index, and an external-content FTS5 table over name, description and tags
//! with the same tokenizer, which the baseline fills itself (no triggers, no change log). Same
//! pragmas as the store's writer (WAL, synchronous=NORMAL, 64 MiB cache, 256 MiB mmap,
//! temp_store=MEMORY); one `BEGIN IMMEDIATE` transaction per batch, statements cached.
//! Checkpoints differ, by design: the store's writer never checkpoints inside a commit (its
//! background thread does), while the baseline keeps SQLite's default automatic checkpoint
//! (every 1000 WAL pages, inside the commit that crosses it). At batch 1 this favours the store
//! on wall time; the CPU-time ratio, which counts the checkpoint thread, shows it.
//!
//! Both sides get the same pre-generated rows (ids, texts, JSON, timestamps); building the
//! `WriteOp`s and the baseline's JSON text happens before the clock starts. Besides wall time
//! the program records CPU time (the writing thread's during each side's turns, plus, for
//! hivesync, its checkpoint thread's), a cross-check less sensitive to other processes on the
//! machine. Running side by side, the store's checkpoint thread may take CPU during the
//! baseline's turns; on a busy 2-core machine that can slow the baseline's wall time a little.
//!
//! After the main table, diagnostics time self-contained raw-SQL variants (their own DDL, not
//! the store's) that separate the costs: the change-log row itself (with and without its JSON
//! row image, with and without AUTOINCREMENT); triggers writing FTS5 directly (one INSERT per
//! row, or one multi-row INSERT per batch); and triggers queueing the FTS5 work for one drain
//! per transaction (the queue holding the text, or only rowids).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/mod.rs"]
mod common;
use common::{load_average, machine_info, BASELINE_DDL};

use std::ops::Range;
use std::path::Path;
use std::time::{Duration, Instant};

use hivesync::model::{Kind, WriteOp};
use hivesync::store::{Store, StoreOptions};
use rusqlite::{params, Connection, TransactionBehavior};
use serde_json::json;

/// Repetitions of every measurement (the median is reported).
const ROUNDS: usize = 5;
/// (batch size, rows per measurement).
const CASES: &[(usize, usize)] = &[(1, 4_000), (64, 64 * 800), (1024, 1024 * 50)];
/// The product's stated goal for hivesync / baseline.
const GOAL: f64 = 0.8;

// ---------------------------------------------------------------------------------------------
// Small helpers (machine info is in benches/common).

/// CPU time (scheduler statistics, ns) of one thread, from its `schedstat` file.
fn thread_cpu(schedstat: &Path) -> Duration {
    let stat = std::fs::read_to_string(schedstat).unwrap_or_default();
    let ns = stat
        .split_whitespace()
        .next()
        .and_then(|x| x.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// CPU time consumed so far by the calling thread. Less sensitive than wall time to other
/// processes competing for the 2 cores (not to a busy hyperthread sibling, though).
fn cpu_time() -> Duration {
    thread_cpu(Path::new("/proc/thread-self/schedstat"))
}

/// CPU time consumed so far by all live threads of this process (the store's checkpoint
/// thread included).
fn process_cpu_time() -> Duration {
    let mut total = Duration::ZERO;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            total += thread_cpu(&t.path().join("schedstat"));
        }
    }
    total
}

/// Wall-clock and CPU time of one measurement.
#[derive(Clone, Copy)]
struct Timing {
    wall: Duration,
    cpu: Duration,
}

/// Time `f` by wall clock and by the calling thread's CPU time.
fn timed(f: impl FnOnce()) -> Timing {
    let (c0, t0) = (cpu_time(), Instant::now());
    f();
    let wall = t0.elapsed();
    Timing {
        wall,
        cpu: cpu_time().saturating_sub(c0),
    }
}

/// xorshift64*: a tiny seeded PRNG, so every run writes the same rows.
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
    fn range(&mut self, lo: usize, hi_incl: usize) -> usize {
        lo + self.below(hi_incl - lo + 1)
    }
}

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[s.len() / 2]
}

fn fmt_int(n: f64) -> String {
    let s = format!("{:.0}", n);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Rows.

const WORDS: &[&str] = &[
    "river", "signal", "harbor", "lantern", "orbit", "granite", "meadow", "cipher", "falcon",
    "ember", "quartz", "willow", "beacon", "canyon", "delta", "summit", "tundra", "vertex",
    "anchor", "breeze", "cobalt", "dynamo", "echo", "fjord", "glacier", "horizon", "island",
    "jasper", "kernel", "lagoon", "mosaic", "nebula", "oasis", "prism", "quiver", "ripple",
    "sierra", "thistle", "umbra", "valley", "walnut", "xenon", "yonder", "zephyr", "atlas",
    "binary", "cluster", "daemon", "engine", "fabric", "gateway", "handler", "index", "journal",
    "ledger", "matrix", "network", "object", "packet", "query", "router", "schema", "thread",
    "update", "vector", "widget", "buffer", "cache", "driver", "event", "filter", "graph", "hash",
    "input", "join", "key", "latency", "memory", "node", "output", "pipeline", "queue", "replica",
    "stream", "token", "unicode", "version", "window", "archive", "battery", "circuit", "document",
    "element", "feature", "garden", "history", "image", "jacket", "kitchen", "library", "machine",
    "notebook", "office", "picture", "question", "record", "station", "teacher", "uniform",
    "village", "weather", "yellow", "zebra", "amber", "bright", "careful", "distant", "early",
    "gentle", "hidden", "quiet", "rapid", "silent", "steady", "tiny", "vivid", "warm", "wild",
    "ancient", "modern", "fragile", "robust", "café", "naïve", "résumé", "über", "façade",
];

const KINDS: &[&str] = &["person", "place", "project", "document", "device", "team"];

/// One pre-generated entity row, in both shapes.
struct Row {
    id: String,
    kind: &'static str,
    name: String,
    description: String,
    /// `properties` as JSON text, exactly as hivesync stores it.
    properties_text: String,
    /// `tags` as JSON text, exactly as hivesync stores it.
    tags_text: String,
    created_at: i64,
    updated_at: i64,
    /// The same row as a write op.
    op: WriteOp,
}

fn words(rng: &mut Rng, lo: usize, hi_incl: usize) -> Vec<&'static str> {
    let n = rng.range(lo, hi_incl);
    (0..n).map(|_| WORDS[rng.below(WORDS.len())]).collect()
}

fn make_rows(n: usize, seed: u64) -> Vec<Row> {
    let mut rng = Rng::new(seed);
    let t0: i64 = 1_750_000_000_000_000;
    (0..n)
        .map(|i| {
            let id = format!("ent-{i:07}");
            let kind = KINDS[rng.below(KINDS.len())];
            let name = words(&mut rng, 2, 3).join(" ");
            let description = words(&mut rng, 20, 40).join(" ");
            let tags: Vec<&str> = words(&mut rng, 1, 3);
            let properties = json!({
                "source": "bench",
                "rank": rng.below(1000),
                "score": (rng.below(10_000) as f64) / 100.0,
                "active": rng.below(2) == 1,
            });
            let created_at = t0 + i as i64 * 1000;
            let updated_at = created_at + rng.below(1_000_000) as i64;
            let properties_text = serde_json::to_string(&properties).expect("properties json");
            let tags_text = serde_json::to_string(&tags).expect("tags json");
            let op = WriteOp::upsert(
                Kind::Entity,
                "default",
                json!({
                    "id": id, "kind": kind, "name": name, "description": description,
                    "properties": properties, "tags": tags,
                    "created_at": created_at, "updated_at": updated_at,
                }),
            );
            Row {
                id,
                kind,
                name,
                description,
                properties_text,
                tags_text,
                created_at,
                updated_at,
                op,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The two writers.

/// Writes `rows[range]` as one transaction.
type Writer<'a> = Box<dyn FnMut(Range<usize>) + 'a>;

/// Rows each writer writes per turn: turns alternate between the writers (rotating which goes
/// first), so that load from other processes falls on all of them alike.
fn turn_rows(batch: usize) -> usize {
    batch.max(256)
}

/// Run `writers` side by side over rows `0..n` in transactions of `batch` rows, taking turns of
/// `turn_rows(batch)` rows; return each writer's total time.
fn interleave(writers: &mut [Writer<'_>], n: usize, batch: usize) -> Vec<Timing> {
    let zero = Timing {
        wall: Duration::ZERO,
        cpu: Duration::ZERO,
    };
    let mut totals = vec![zero; writers.len()];
    let k = writers.len();
    for (turn, start) in (0..n).step_by(turn_rows(batch)).enumerate() {
        let end = (start + turn_rows(batch)).min(n);
        for j in 0..k {
            let i = (turn + j) % k;
            let w = &mut writers[i];
            let t = timed(|| {
                for s in (start..end).step_by(batch) {
                    w(s..(s + batch).min(end));
                }
            });
            totals[i].wall += t.wall;
            totals[i].cpu += t.cpu;
        }
    }
    totals
}

/// One round of the main table: a fresh store and a fresh baseline database, written side by
/// side. Returns (hivesync, baseline).
fn run_pair(dir: &Path, rows: &[Row], batch: usize) -> (Timing, Timing) {
    let hs_path = dir.join("hivesync.db");
    let base_path = dir.join("baseline.db");
    let store = Store::open(&hs_path, StoreOptions::default()).expect("open store");
    let mut conn = open_baseline(&base_path);
    let ops: Vec<WriteOp> = rows.iter().map(|r| r.op.clone()).collect();
    // CPU of threads other than this one: the store's checkpoint thread, which may run during
    // either side's turn; it is charged to hivesync.
    let others = || process_cpu_time().saturating_sub(cpu_time());
    let others_before = others();
    let mut t = {
        let mut writers: Vec<Writer<'_>> = vec![
            Box::new(|r: Range<usize>| {
                store.write(&ops[r]).expect("hivesync write");
            }),
            Box::new(|r: Range<usize>| baseline_tx(&mut conn, &rows[r])),
        ];
        interleave(&mut writers, rows.len(), batch)
    };
    t[0].cpu += others().saturating_sub(others_before);
    drop(store);
    drop(conn);
    remove_db(&hs_path);
    remove_db(&base_path);
    (t[0], t[1])
}

fn open_baseline(path: &Path) -> Connection {
    let conn = open_raw(path);
    conn.execute_batch(BASELINE_DDL).expect("baseline ddl");
    conn
}

/// A plain rusqlite connection with the store writer's pragmas, no schema.
fn open_raw(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open raw connection");
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .expect("wal");
    assert!(
        mode.eq_ignore_ascii_case("wal"),
        "baseline not in WAL mode: {mode}"
    );
    conn.pragma_update(None, "synchronous", "NORMAL")
        .expect("pragma");
    // The store's PoolConfig defaults: 64 MiB page cache, 256 MiB mmap, temp_store in memory.
    conn.pragma_update(None, "cache_size", -64 * 1024)
        .expect("pragma");
    conn.pragma_update(None, "mmap_size", 256 * 1024 * 1024)
        .expect("pragma");
    conn.pragma_update(None, "temp_store", "MEMORY")
        .expect("pragma");
    conn.set_prepared_statement_cache_capacity(128);
    conn
}

fn baseline_tx(conn: &mut Connection, chunk: &[Row]) {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .expect("begin");
    baseline_rows(&tx, chunk, |_| {});
    tx.commit().expect("commit");
}

/// The baseline's work for `chunk`: each row and its FTS5 entry, one statement each, then
/// `each(row)` (a variant's extra statement for that row).
fn baseline_rows(tx: &Connection, chunk: &[Row], mut each: impl FnMut(&Row)) {
    let mut ins = tx
        .prepare_cached(&format!(
            "{INSERT_COLS}(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        ))
        .expect("prepare");
    let mut fts = tx
        .prepare_cached(
            "INSERT INTO entities_fts(rowid, name, description, tags)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .expect("prepare");
    for r in chunk {
        ins.execute(row_params(r).as_slice()).expect("insert");
        let rowid = tx.last_insert_rowid();
        fts.execute(params![rowid, r.name, r.description, r.tags_text])
            .expect("fts insert");
        each(r);
    }
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
}

/// Check once, outside the timings, that both writers store the same row values.
fn check_same_rows(dir: &Path, rows: &[Row]) {
    let sample = &rows[..64];
    let hs_path = dir.join("check-hivesync.db");
    let store = Store::open(&hs_path, StoreOptions::default()).expect("open");
    let ops: Vec<WriteOp> = sample.iter().map(|r| r.op.clone()).collect();
    store.write(&ops).expect("write");
    let base_path = dir.join("check-baseline.db");
    let conn = open_baseline(&base_path);
    conn.execute_batch("BEGIN").expect("begin");
    for r in sample {
        conn.execute(
            "INSERT INTO entities(ns, id, kind, name, description, properties, tags, created_at,
               updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                "default",
                r.id,
                r.kind,
                r.name,
                r.description,
                r.properties_text,
                r.tags_text,
                r.created_at,
                r.updated_at
            ],
        )
        .expect("insert");
    }
    conn.execute_batch("COMMIT").expect("commit");
    let dump = |c: &rusqlite::Connection| -> Vec<String> {
        let mut st = c
            .prepare(
                "SELECT json_array(ns, id, kind, name, description, properties, tags, created_at,
                   updated_at) FROM entities ORDER BY id",
            )
            .expect("prepare");
        let rows = st.query_map([], |r| r.get::<_, String>(0)).expect("query");
        rows.collect::<rusqlite::Result<Vec<_>>>().expect("rows")
    };
    let a = store.read(|c| Ok(dump(c))).expect("read");
    let b = dump(&conn);
    println!(
        "row check: the {} sample rows stored by hivesync and by the baseline are {}",
        sample.len(),
        if a == b {
            "identical"
        } else {
            "DIFFERENT (the comparison is not like for like!)"
        }
    );
    drop(store);
    drop(conn);
    remove_db(&hs_path);
    remove_db(&base_path);
}

// ---------------------------------------------------------------------------------------------
// Diagnostics: self-contained raw-SQL variants that locate the gap (printed after the main
// table). They use their own DDL, so they show the SQLite mechanism whatever the store's
// schema currently is.

/// Rows and rounds of each diagnostic cell (fewer than the main table, to stay within ~2 min).
const DIAG_ROWS: usize = 1024 * 8;
const DIAG_ROUNDS: usize = 5;

const INSERT_COLS: &str = "INSERT INTO entities(ns, id, kind, name, description, properties, tags,
   created_at, updated_at) VALUES ";

fn row_params(r: &Row) -> [&dyn rusqlite::ToSql; 9] {
    [
        &"default",
        &r.id,
        &r.kind,
        &r.name,
        &r.description,
        &r.properties_text,
        &r.tags_text,
        &r.created_at,
        &r.updated_at,
    ]
}

const CHANGES_DDL: &str = "CREATE TABLE changes(
   seq INTEGER PRIMARY KEY AUTOINCREMENT, tx INTEGER NOT NULL, ts INTEGER NOT NULL,
   ns TEXT NOT NULL, kind TEXT NOT NULL, op TEXT NOT NULL, id TEXT NOT NULL,
   model TEXT, data TEXT, embedding BLOB);";

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    /// The baseline of the main table.
    Baseline,
    /// The baseline plus a change-log row per op from a plain statement (no triggers).
    BaselineWithLog,
    /// The same, with `changes.seq` a plain INTEGER PRIMARY KEY (no AUTOINCREMENT).
    BaselineWithLogNoAutoinc,
    /// The baseline plus a key-only change-log row (no row image: `data` NULL).
    BaselineWithKeyLog,
    /// The baseline plus the same change-log rows written the cheapest way we know: the row
    /// image built in Rust (no SQL JSON functions), 64 rows per INSERT, no triggers. The floor
    /// for any design that keeps a row image in the log, written in the same transaction.
    BaselineWithLogMultiRow,
    /// An AFTER INSERT trigger writes the FTS5 row and the change-log row (hivesync's
    /// migration-1 design); one INSERT statement per row.
    TriggersPerRow,
    /// The same triggers; one multi-row INSERT statement per batch.
    TriggersMultiRow,
    /// The trigger writes the change-log row and queues the FTS5 work in a plain table, applied
    /// with one INSERT ... SELECT per transaction (hivesync's migration-2 design); one INSERT
    /// statement per row.
    TriggersQueuedFts,
    /// The same, but the queue holds only the rowid of an inserted row and the drain reads the
    /// text from the base table (for an insert the queue needs no copy of the text).
    TriggersQueuedRowid,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline (as in the main table)",
            Variant::BaselineWithLog => "baseline + change-log row, no triggers",
            Variant::BaselineWithLogNoAutoinc => "  the same, changes.seq without AUTOINCREMENT",
            Variant::BaselineWithKeyLog => "  the same, log row without the row image",
            Variant::BaselineWithLogMultiRow => "  the same, image built in Rust, 64 rows/INSERT",
            Variant::TriggersPerRow => "triggers -> FTS + log, 1 INSERT per row",
            Variant::TriggersMultiRow => "triggers -> FTS + log, 1 INSERT per batch",
            Variant::TriggersQueuedFts => "triggers -> log + FTS queue, 1 INSERT per row",
            Variant::TriggersQueuedRowid => "  the same, queue holds rowids, not the text",
        }
    }
}

fn open_variant(path: &Path, v: Variant) -> Connection {
    let conn = open_baseline(path);
    let image = hivesync::schema::row_image_sql(Kind::Entity, "new.");
    let ddl = match v {
        Variant::Baseline => String::new(),
        Variant::BaselineWithLog
        | Variant::BaselineWithKeyLog
        | Variant::BaselineWithLogMultiRow => CHANGES_DDL.to_string(),
        Variant::BaselineWithLogNoAutoinc => CHANGES_DDL.replace(" AUTOINCREMENT", ""),
        Variant::TriggersPerRow | Variant::TriggersMultiRow => format!(
            "{CHANGES_DDL}
             CREATE TRIGGER entities_ai AFTER INSERT ON entities BEGIN
               INSERT INTO entities_fts(rowid, name, description, tags)
                 VALUES (new.rowid, new.name, new.description, new.tags);
               INSERT INTO changes(tx, ts, ns, kind, op, id, data)
                 VALUES (1, new.updated_at, new.ns, 'entity', 'upsert', new.id, {image});
             END;"
        ),
        Variant::TriggersQueuedFts => format!(
            "{CHANGES_DDL}
             CREATE TABLE fts_queue(seq INTEGER PRIMARY KEY, rid INTEGER NOT NULL,
               c1 TEXT, c2 TEXT, c3 TEXT);
             CREATE TRIGGER entities_ai AFTER INSERT ON entities BEGIN
               INSERT INTO fts_queue(rid, c1, c2, c3)
                 VALUES (new.rowid, new.name, new.description, new.tags);
               INSERT INTO changes(tx, ts, ns, kind, op, id, data)
                 VALUES (1, new.updated_at, new.ns, 'entity', 'upsert', new.id, {image});
             END;"
        ),
        Variant::TriggersQueuedRowid => format!(
            "{CHANGES_DDL}
             CREATE TABLE fts_queue(seq INTEGER PRIMARY KEY, rid INTEGER NOT NULL);
             CREATE TRIGGER entities_ai AFTER INSERT ON entities BEGIN
               INSERT INTO fts_queue(rid) VALUES (new.rowid);
               INSERT INTO changes(tx, ts, ns, kind, op, id, data)
                 VALUES (1, new.updated_at, new.ns, 'entity', 'upsert', new.id, {image});
             END;"
        ),
    };
    conn.execute_batch(&ddl).expect("variant ddl");
    conn
}

/// The JSON row image of `r`, byte for byte what `row_image_sql` makes of the stored row.
fn rust_image(r: &Row) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("json string");
    format!(
        "{{\"id\":{},\"kind\":{},\"name\":{},\"description\":{},\"properties\":{},\"tags\":{},\"created_at\":{},\"updated_at\":{}}}",
        q(&r.id),
        q(r.kind),
        q(&r.name),
        q(&r.description),
        r.properties_text,
        r.tags_text,
        r.created_at,
        r.updated_at
    )
}

fn variant_tx(conn: &mut Connection, v: Variant, chunk: &[Row]) {
    if v == Variant::Baseline {
        return baseline_tx(conn, chunk);
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .expect("begin");
    match v {
        Variant::Baseline => unreachable!(),
        Variant::BaselineWithLogMultiRow => {
            baseline_rows(&tx, chunk, |_| {});
            for part in chunk.chunks(64) {
                let values = vec!["(1, ?, ?, 'entity', 'upsert', ?, ?)"; part.len()].join(",");
                let mut log = tx
                    .prepare_cached(&format!(
                        "INSERT INTO changes(tx, ts, ns, kind, op, id, data) VALUES {values}"
                    ))
                    .expect("prepare");
                for (i, r) in part.iter().enumerate() {
                    let b = i * 4;
                    log.raw_bind_parameter(b + 1, r.updated_at).expect("bind");
                    log.raw_bind_parameter(b + 2, "default").expect("bind");
                    log.raw_bind_parameter(b + 3, &r.id).expect("bind");
                    log.raw_bind_parameter(b + 4, rust_image(r)).expect("bind");
                }
                log.raw_execute().expect("log insert");
            }
        }
        Variant::BaselineWithLog
        | Variant::BaselineWithLogNoAutoinc
        | Variant::BaselineWithKeyLog => {
            let image = if v == Variant::BaselineWithKeyLog {
                "NULL"
            } else {
                "json_object('id',?2,'kind',?3,'name',?4,'description',?5,
                   'properties',json(?6),'tags',json(?7),'created_at',?8,'updated_at',?9)"
            };
            let mut log = tx
                .prepare_cached(&format!(
                    "INSERT INTO changes(tx, ts, ns, kind, op, id, data)
                     VALUES (1, ?9, ?1, 'entity', 'upsert', ?2, {image})"
                ))
                .expect("prepare");
            baseline_rows(&tx, chunk, |r| {
                log.execute(row_params(r).as_slice()).expect("log insert");
            });
        }
        Variant::TriggersPerRow | Variant::TriggersQueuedFts | Variant::TriggersQueuedRowid => {
            let mut ins = tx
                .prepare_cached(&format!(
                    "{INSERT_COLS}(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
                ))
                .expect("prepare");
            for r in chunk {
                ins.execute(row_params(r).as_slice()).expect("insert");
            }
        }
        Variant::TriggersMultiRow => {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| {
                    let p: Vec<String> = (1..=9).map(|j| format!("?{}", i * 9 + j)).collect();
                    format!("({})", p.join(","))
                })
                .collect();
            let params: Vec<&dyn rusqlite::ToSql> = chunk.iter().flat_map(row_params).collect();
            tx.prepare_cached(&format!("{INSERT_COLS}{}", values.join(",")))
                .expect("prepare")
                .execute(params.as_slice())
                .expect("insert");
        }
    }
    if matches!(v, Variant::TriggersQueuedFts | Variant::TriggersQueuedRowid) {
        tx.prepare_cached(if v == Variant::TriggersQueuedFts {
            "INSERT INTO entities_fts(rowid, name, description, tags)
             SELECT rid, c1, c2, c3 FROM fts_queue ORDER BY seq"
        } else {
            "INSERT INTO entities_fts(rowid, name, description, tags)
             SELECT e.rowid, e.name, e.description, e.tags
             FROM fts_queue q JOIN entities e ON e.rowid = q.rid ORDER BY q.seq"
        })
        .expect("prepare")
        .execute([])
        .expect("drain");
        tx.prepare_cached("DELETE FROM fts_queue")
            .expect("prepare")
            .execute([])
            .expect("drain");
    }
    tx.commit().expect("commit");
}

/// One round of the diagnostics: every variant on its own fresh database, written side by
/// side; then each database is checked.
fn run_variants(dir: &Path, variants: &[Variant], rows: &[Row], batch: usize) -> Vec<Timing> {
    let paths: Vec<_> = (0..variants.len())
        .map(|i| dir.join(format!("diag-{i}.db")))
        .collect();
    let mut conns: Vec<Connection> = variants
        .iter()
        .zip(&paths)
        .map(|(v, p)| open_variant(p, *v))
        .collect();
    let t = {
        let mut writers: Vec<Writer<'_>> = conns
            .iter_mut()
            .zip(variants)
            .map(|(c, v)| -> Writer<'_> {
                let v = *v;
                Box::new(move |r: Range<usize>| variant_tx(c, v, &rows[r]))
            })
            .collect();
        interleave(&mut writers, rows.len(), batch)
    };
    for ((conn, v), path) in conns.into_iter().zip(variants).zip(&paths) {
        // Every variant must leave a complete, consistent index (and log, where it keeps one).
        let fts_ok = conn
            .execute(
                "INSERT INTO entities_fts(entities_fts, rank) VALUES ('integrity-check', 1)",
                [],
            )
            .is_ok();
        let logged: i64 = if *v == Variant::Baseline {
            rows.len() as i64
        } else {
            conn.query_row("SELECT count(*) FROM changes", [], |r| r.get(0))
                .expect("count")
        };
        if *v == Variant::BaselineWithLogMultiRow {
            // Its images, built in Rust, must be the ones SQLite builds of the stored rows.
            let image = hivesync::schema::row_image_sql(Kind::Entity, "e.");
            let differ: i64 = conn
                .query_row(
                    &format!(
                        "SELECT count(*) FROM changes c JOIN entities e ON e.id = c.id
                         WHERE c.data IS NOT {image}"
                    ),
                    [],
                    |r| r.get(0),
                )
                .expect("compare images");
            assert_eq!(differ, 0, "Rust-built row images differ from SQLite's");
        }
        if !fts_ok || logged as usize != rows.len() {
            println!("  !! {}: fts ok {fts_ok}, {logged} logged", v.label());
        }
        drop(conn);
        remove_db(path);
    }
    t
}

fn diagnostics(dir: &Path, rows: &[Row]) {
    let rows = &rows[..DIAG_ROWS];
    println!();
    println!(
        "-- diagnostics: raw-SQL variants written side by side, {DIAG_ROWS} rows, {DIAG_ROUNDS} \
         rounds, medians; ratio = variant / baseline, by wall time and by CPU time --"
    );
    println!(
        "{:>5} | {:<48} {:>10} {:>6} {:>6}",
        "batch", "variant", "rows/s", "ratio", "cpu"
    );
    println!("{}", "-".repeat(82));
    let variants = [
        Variant::Baseline,
        Variant::BaselineWithLog,
        Variant::BaselineWithLogNoAutoinc,
        Variant::BaselineWithKeyLog,
        Variant::BaselineWithLogMultiRow,
        Variant::TriggersPerRow,
        Variant::TriggersMultiRow,
        Variant::TriggersQueuedFts,
        Variant::TriggersQueuedRowid,
    ];
    for batch in [64, 1024] {
        let mut times: Vec<Vec<Timing>> = vec![Vec::new(); variants.len()];
        for _ in 0..DIAG_ROUNDS {
            for (i, t) in run_variants(dir, &variants, rows, batch)
                .into_iter()
                .enumerate()
            {
                times[i].push(t);
            }
        }
        let wall = |t: &[Timing]| median(&t.iter().map(|x| x.wall).collect::<Vec<_>>());
        let cpu = |t: &[Timing]| median(&t.iter().map(|x| x.cpu).collect::<Vec<_>>());
        let (bw, bc) = (wall(&times[0]), cpu(&times[0]));
        for (i, v) in variants.iter().enumerate() {
            let (w, c) = (wall(&times[i]), cpu(&times[i]));
            println!(
                "{:>5} | {:<48} {:>10} {:>6.2} {:>6.2}",
                batch,
                v.label(),
                fmt_int(rows.len() as f64 / w.as_secs_f64()),
                bw.as_secs_f64() / w.as_secs_f64(),
                bc.as_secs_f64() / c.as_secs_f64(),
            );
        }
    }
    println!(
        "Why the per-row trigger designs lose: inside an explicit transaction, an INSERT into a \
         table with triggers runs under a statement journal (every page it touches is copied \
         first); opening one calls xSavepoint on each virtual table already written in the \
         transaction, and FTS5's xSavepoint flushes its pending terms to a new segment, so \
         FTS5 written from a per-row trigger gets one segment per row, then merges them."
    );
}

fn main() {
    println!("== hivesync write throughput: Store::write entity upserts vs raw rusqlite ==");
    println!("machine : {}", machine_info());
    println!("sqlite  : {}", rusqlite::version());
    println!("load avg: {} (1/5/15 min, at start)", load_average());
    println!(
        "method  : {ROUNDS} rounds per cell, fresh database files each; hivesync and the \
         baseline write side by side, taking turns of max(batch, 256) rows; median shown; \
         rows/s = rows / total time in that side's transactions"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    println!("db dir  : {}", dir.path().display());
    let max_rows = CASES.iter().map(|c| c.1).max().unwrap_or(0);
    let rows = make_rows(max_rows, 0x5EED_1234);
    let avg_desc =
        rows.iter().map(|r| r.description.len()).sum::<usize>() as f64 / rows.len() as f64;
    println!(
        "rows    : {} pre-generated entities, description avg {:.0} bytes (20-40 words)",
        rows.len(),
        avg_desc
    );
    check_same_rows(dir.path(), &rows);

    // Warm-up: one small round, not reported (page cache, allocator, code paths).
    run_pair(dir.path(), &rows[..2_048], 64);

    let mut results = Vec::new();
    for &(batch, n) in CASES {
        let mut hs: Vec<Timing> = Vec::new();
        let mut base: Vec<Timing> = Vec::new();
        for _ in 0..ROUNDS {
            let (h, b) = run_pair(dir.path(), &rows[..n], batch);
            hs.push(h);
            base.push(b);
        }
        let rate = |d: Duration| n as f64 / d.as_secs_f64();
        let walls = |v: &[Timing]| v.iter().map(|t| t.wall).collect::<Vec<_>>();
        let cpus = |v: &[Timing]| v.iter().map(|t| t.cpu).collect::<Vec<_>>();
        let spread = |v: &[Timing]| {
            let lo = v.iter().map(|t| rate(t.wall)).fold(f64::INFINITY, f64::min);
            let hi = v.iter().map(|t| rate(t.wall)).fold(0.0, f64::max);
            format!("{}..{}", fmt_int(lo), fmt_int(hi))
        };
        let (h, b) = (rate(median(&walls(&hs))), rate(median(&walls(&base))));
        let cpu_ratio = median(&cpus(&base)).as_secs_f64() / median(&cpus(&hs)).as_secs_f64();
        eprintln!(
            "  batch {batch:>4}: hivesync {} rows/s, baseline {} rows/s",
            fmt_int(h),
            fmt_int(b)
        );
        results.push((batch, n, h, b, spread(&hs), spread(&base), cpu_ratio));
    }

    println!();
    println!(
        "{:>5} {:>6} | {:>12} {:>15} | {:>12} {:>15} | {:>6} {:>8} | {:>9}",
        "batch",
        "rows",
        "hivesync r/s",
        "(min..max)",
        "baseline r/s",
        "(min..max)",
        "ratio",
        "goal 0.8",
        "cpu ratio"
    );
    println!("{}", "-".repeat(104));
    for (batch, n, h, b, hs_spread, b_spread, cpu_ratio) in &results {
        let ratio = h / b;
        println!(
            "{:>5} {:>6} | {:>12} {:>15} | {:>12} {:>15} | {:>6.2} {:>8} | {:>9.2}",
            batch,
            n,
            fmt_int(*h),
            hs_spread,
            fmt_int(*b),
            b_spread,
            ratio,
            if ratio >= GOAL { "met" } else { "NOT MET" },
            cpu_ratio
        );
    }
    println!();
    println!(
        "ratio = hivesync rows/s / baseline rows/s (median wall time); cpu ratio = the same from \
         median CPU time (the writing thread in each side's turns; hivesync's checkpoint thread \
         charged to hivesync). hivesync also writes one change-log row per op (with a JSON \
         image of the row); the baseline writes no log."
    );
    diagnostics(dir.path(), &rows);
    println!("load avg: {} (1/5/15 min, at end)", load_average());
}
