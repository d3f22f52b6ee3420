//! Patch writes against upserts: the same rows changed through the node's write path
//! (`Store::write`), by upserts of the whole row and by patches of one field and one property
//! key (a patch reads the row it changes), at batch 1 and 64, the two taking turns in the same
//! run. Goal: patches at least 0.8x the upserts' rows/s.
//! Run: `cargo bench --bench patch` (HIVESYNC_PATCH_ROWS, default 2048; HIVESYNC_PATCH_ROUNDS,
//! default 5).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use hivesync::model::{Kind, WriteOp};
use hivesync::store::{Store, StoreOptions};
use serde_json::json;

#[path = "common/mod.rs"]
mod common;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn upsert(i: usize, round: usize) -> WriteOp {
    WriteOp::upsert(
        Kind::Entity,
        "default",
        json!({"id": format!("e{i}"), "kind": "task", "name": format!("task {i} round {round}"),
               "description": "a task with a description of a few words", "properties": {"status": "open", "round": round},
               "tags": ["work"]}),
    )
}

fn patch(i: usize, round: usize) -> WriteOp {
    WriteOp::patch(
        Kind::Entity,
        "default",
        format!("e{i}"),
        json!({"name": format!("task {i} round {round}"), "properties": {"round": round}}),
    )
}

/// Write `rows` ops made by `make`, `batch` per write; the time it took.
fn run(
    store: &Store,
    rows: usize,
    batch: usize,
    round: usize,
    make: fn(usize, usize) -> WriteOp,
) -> Duration {
    let ops: Vec<WriteOp> = (0..rows).map(|i| make(i, round)).collect();
    let t0 = Instant::now();
    for chunk in ops.chunks(batch) {
        store.write(chunk).unwrap();
    }
    t0.elapsed()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rows = env_num("HIVESYNC_PATCH_ROWS", 2048);
    let rounds = env_num("HIVESYNC_PATCH_ROUNDS", 5);
    println!("# patch benchmark on {}", common::machine_info());
    println!("{rows} existing entities changed per round, {rounds} rounds per cell, the two taking turns; median rows/s\n");
    println!("batch | upsert rows/s | patch rows/s | ratio (goal >= 0.8)");
    for batch in [1usize, 64] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("patch.db"), StoreOptions::default()).unwrap();
        // The rows exist (a patch changes a row that exists).
        for chunk in (0..rows)
            .map(|i| upsert(i, 0))
            .collect::<Vec<_>>()
            .chunks(256)
        {
            store.write(chunk).unwrap();
        }
        let (mut up, mut pa) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            up.push(run(&store, rows, batch, round * 2, upsert));
            pa.push(run(&store, rows, batch, round * 2 + 1, patch));
        }
        up.sort();
        pa.sort();
        let rate = |d: Duration| rows as f64 / d.as_secs_f64();
        let (u, p) = (rate(up[rounds / 2]), rate(pa[rounds / 2]));
        let ratio = p / u;
        println!(
            "{batch:>5} | {u:>13.0} | {p:>12.0} | {ratio:.2} {}",
            if ratio >= 0.8 { "met" } else { "NOT met" }
        );
    }
    println!(
        "\nload avg: {} (1/5/15 min, at end)",
        common::load_average()
    );
}
