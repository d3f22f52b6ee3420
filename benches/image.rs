//! Database images (`GET /v1/image`): building one against the copy floor, `VACUUM INTO` of
//! the same database, in the same run; and the image's bytes (as stored and gzipped on the
//! wire) against a replica's file made by applying the row snapshot.
//! Goals: a build <= 2x `VACUUM INTO`; the image on the wire <= the replica's file.
//! Parts (HIVESYNC_IMAGE_PARTS, default `build,storm`):
//! - `build`: the build against `VACUUM INTO`, the image's bytes against the row snapshot's
//!   replica file, and the native row-snapshot apply;
//! - `storm`: 100 fresh replicas (HIVESYNC_STORM_REPLICAS) bootstrapping at once beside a
//!   writer and a live subscriber (`image_parts/storm.rs`);
//! - `browser`: a fresh OPFS replica in headless Chromium, live at the head from the image
//!   against the row snapshot (`wasm/bench/first-sync.mjs`; needs `npm ci` in wasm/). Goals:
//!   <= 5 s at 1,000,000 rows and 100,000 vectors (HIVESYNC_IMAGE_ROWS=800000), >= 10x faster
//!   than the row snapshot.
//!
//! Run: `cargo bench --bench image` (HIVESYNC_IMAGE_ROWS entities, default 100,000, with a
//! quarter as many notes and an eighth as many 384-dimension vectors; HIVESYNC_IMAGE_ROUNDS,
//! default 3).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::time::{Duration, Instant};

use hivesync::model::{Kind, WriteOp};
use hivesync::query::ChangeFilter;
use hivesync::store::{image::build_image, Store, StoreOptions};
use serde_json::json;

#[path = "common/mod.rs"]
mod common;
#[path = "image_parts/storm.rs"]
mod storm;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn fill(store: &Store, rows: usize) {
    let words = [
        "sailing", "knots", "harbour", "tide", "compass", "anchor", "rope", "wind",
    ];
    let mut ops = Vec::with_capacity(1024);
    let flush = |ops: &mut Vec<WriteOp>| {
        if !ops.is_empty() {
            store.write(ops).unwrap();
            ops.clear();
        }
    };
    for i in 0..rows {
        let text = format!(
            "entity {i} about {} and {}",
            words[i % 8],
            words[(i / 8) % 8]
        );
        ops.push(WriteOp::upsert(Kind::Entity, format!("ns{}", i % 4), json!({"id": format!("e{i}"), "kind": "thing", "name": text, "description": "a row of the image benchmark with some text"})));
        if i % 4 == 0 {
            ops.push(WriteOp::upsert(Kind::Note, format!("ns{}", i % 4), json!({"id": format!("n{i}"), "content": format!("a note on {} for row {i}", words[i % 8])})));
        }
        if i % 8 == 0 {
            let e: Vec<f32> = (0..384)
                .map(|d| ((i * 31 + d * 7) % 97) as f32 / 97.0 + 0.01)
                .collect();
            ops.push(WriteOp::upsert(
                Kind::Vector,
                format!("ns{}", i % 4),
                json!({"subject": format!("e{i}"), "model": "m", "embedding": e}),
            ));
        }
        if ops.len() >= 1000 {
            flush(&mut ops);
        }
    }
    flush(&mut ops);
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rows = env_num("HIVESYNC_IMAGE_ROWS", 100_000);
    let rounds = env_num("HIVESYNC_IMAGE_ROUNDS", 3);
    println!("# image benchmark on {}", common::machine_info());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("node.db");
    let store = Store::open(&db, StoreOptions::default()).unwrap();
    let t0 = Instant::now();
    fill(&store, rows);
    let _ = rusqlite::Connection::open(&db)
        .and_then(|c| c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)"));
    println!(
        "{rows} entities, {} notes, {} vectors (384 dims) in 4 namespaces, written in {:.1} s; node file {} MiB",
        rows / 4,
        rows / 8,
        t0.elapsed().as_secs_f64(),
        std::fs::metadata(&db).unwrap().len() >> 20
    );
    let parts = std::env::var("HIVESYNC_IMAGE_PARTS").unwrap_or_else(|_| "build,storm".into());
    if parts.split(',').any(|p| p == "build") {
        build_part(&store, &db, dir.path(), rounds);
    }
    drop(store);
    if parts.split(',').any(|p| p == "browser") {
        browser_part(&db);
    }
    if parts.split(',').any(|p| p == "storm") {
        storm::run(
            env!("CARGO_BIN_EXE_hivesync"),
            &db,
            env_num("HIVESYNC_STORM_REPLICAS", 100),
            10,
        );
    }
    println!(
        "\nload avg: {} (1/5/15 min, at end)",
        common::load_average()
    );
}

/// The build against `VACUUM INTO`, the image's bytes against a replica's file, and the row
/// snapshot's apply.
fn build_part(store: &Store, db: &std::path::Path, dir: &std::path::Path, rounds: usize) {
    let mut vacuum = Vec::new();
    let mut all = Vec::new();
    let mut one = Vec::new();
    let mut sizes = (0, 0);
    for r in 0..rounds {
        let v = dir.join(format!("vacuum{r}.db"));
        let t = Instant::now();
        rusqlite::Connection::open(db)
            .unwrap()
            .execute("VACUUM INTO ?1", [v.to_str().unwrap()])
            .unwrap();
        vacuum.push(t.elapsed());
        std::fs::remove_file(&v).unwrap();
        let p = dir.join(format!("all{r}.db"));
        let t = Instant::now();
        let info = build_image(db, &p, None).unwrap();
        all.push(t.elapsed());
        sizes.0 = info.bytes;
        if r + 1 < rounds {
            std::fs::remove_file(&p).unwrap();
        }
        let q = dir.join(format!("one{r}.db"));
        let t = Instant::now();
        build_image(db, &q, Some(&["ns1".to_string()])).unwrap();
        one.push(t.elapsed());
        std::fs::remove_file(&q).unwrap();
    }
    let med = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    let (vm, am, om) = (med(&mut vacuum), med(&mut all), med(&mut one));
    println!("\nmedian of {rounds}:");
    println!("VACUUM INTO (the copy floor)     {vm:>9.0} ms  1.00x");
    println!(
        "image, every namespace           {am:>9.0} ms  {:.2}x (goal <= 2x: {})",
        am / vm,
        if am / vm <= 2.0 { "met" } else { "NOT met" }
    );
    println!(
        "image, one namespace of four     {om:>9.0} ms  {:.2}x",
        om / vm
    );
    // The wire: the image gzipped, against a replica's file made by the row snapshot.
    let img = dir.join(format!("all{}.db", rounds - 1));
    let bytes = std::fs::read(&img).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&bytes).unwrap();
    let gz = gz.finish().unwrap().len() as u64;
    let replica = hivesync::schema::open_in_memory(&Default::default()).unwrap();
    let snap = store.snapshot(&ChangeFilter::default()).unwrap();
    let t = Instant::now();
    hivesync::apply::snapshot_begin(&replica, &ChangeFilter::default()).unwrap();
    for chunk in snap.rows.chunks(1000) {
        hivesync::apply::snapshot_rows(&replica, chunk).unwrap();
    }
    hivesync::apply::snapshot_finish(&replica, snap.at).unwrap();
    let applied = t.elapsed().as_secs_f64() * 1e3;
    let page: i64 = replica
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap();
    let pages: i64 = replica
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    sizes.1 = (page * pages) as u64;
    println!("\nimage {} MiB as stored, {} MiB gzipped on the wire; a replica's file by the row snapshot {} MiB ({}: {})",
        sizes.0 >> 20, gz >> 20, sizes.1 >> 20,
        if gz <= sizes.1 { "goal wire <= replica file met" } else { "goal wire <= replica file NOT met" },
        format_args!("{:.2}x", gz as f64 / sizes.1 as f64));
    println!("native row-snapshot apply of the same rows (the path the image replaces): {applied:.0} ms, {:.1}x the image build", applied / am);
}

/// A fresh browser replica live at the head: from the image, and from the row snapshot.
fn browser_part(db: &std::path::Path) {
    let wasm = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("wasm");
    if !wasm.join("node_modules/playwright-core").is_dir() {
        println!("\nbrowser part skipped: run `npm ci` in wasm/ first");
        return;
    }
    let Some(v) = common::node_script(
        "first-sync.mjs",
        &[env!("CARGO_BIN_EXE_hivesync"), db.to_str().unwrap()],
    ) else {
        return;
    };
    let (img, rows) = (
        v["fromImage"]["ms"].as_f64().unwrap_or(f64::NAN),
        v["fromRows"]["ms"].as_f64().unwrap_or(f64::NAN),
    );
    println!(
        "\nfresh browser replica (headless Chromium, OPFS), live at the head (seq {}), {} rows: image {} MiB ({} MiB gzipped on the wire), built and cached at the node in {} ms",
        v["head"], v["rows"], v["imageBytes"].as_u64().unwrap_or(0) >> 20, v["wireBytes"].as_u64().unwrap_or(0) >> 20, v["buildMs"]
    );
    println!(
        "  from the image        {img:>8.0} ms (goal <= 5000 ms: {}) {}",
        if img <= 5000.0 { "met" } else { "NOT met" },
        v["fromImage"]["events"]
    );
    let capped = v["fromRows"]["live"] == false;
    let at_least = if capped { "at least " } else { "" };
    println!(
        "  from the row snapshot {rows:>8.0} ms{}",
        if capped {
            " (not live yet when stopped: FIRST_SYNC_CAP_S)"
        } else {
            ""
        }
    );
    println!(
        "  the image path {at_least}{:.1}x faster (goal >= 10x: {})",
        rows / img,
        if rows / img >= 10.0 { "met" } else { "NOT met" }
    );
}
