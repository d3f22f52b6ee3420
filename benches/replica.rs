//! Browser replica benchmarks (issue 4), each against its baseline in the same run:
//! - apply rate of binary `changes` frames (decode + apply, one transaction per frame) in wasm
//!   under Node and under headless Chromium, against native apply of the same frames;
//! - wasm module size after wasm-opt, gzipped;
//! - page open to first search answer with 10,000 entities already persisted in OPFS.
//!
//! Needs the browser build with the apply exports (`bash wasm/build.sh --raw`) and `npm ci` in
//! wasm/; without them only the native part runs. Run: `cargo bench --bench replica`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use hivesync::model::{Change, Kind, Op};
use hivesync::protocol::{decode_server_bin, encode_server_bin, ServerMsg};
use hivesync::{apply, schema};

#[path = "common/mod.rs"]
mod common;

const CHANGES: usize = 50_000;
const PER_FRAME: usize = 500;
const ROUNDS: usize = 3;

fn frames() -> Vec<Vec<u8>> {
    const W: [&str; 12] = [
        "graph", "vector", "sync", "replica", "node", "edge", "search", "index", "query", "commit",
        "log", "cursor",
    ];
    let mut seed = 7u64;
    let mut word = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        W[(seed % W.len() as u64) as usize]
    };
    let mut out = Vec::new();
    let mut seq = 0i64;
    while (seq as usize) < CHANGES {
        let prev = seq;
        let mut changes = Vec::with_capacity(PER_FRAME);
        for _ in 0..PER_FRAME {
            seq += 1;
            let desc: Vec<&str> = (0..20).map(|_| word()).collect();
            let data = serde_json::json!({"id": format!("e{seq}"), "kind": "thing", "name": format!("{} {} {seq}", word(), word()),
                "description": desc.join(" "), "properties": {}, "tags": [word()], "created_at": seq, "updated_at": seq});
            changes.push(Change {
                seq,
                tx: prev + 1,
                ts: seq,
                ns: "default".into(),
                kind: Kind::Entity,
                op: Op::Upsert,
                id: format!("e{seq}"),
                model: None,
                data: Some(data.to_string()),
                embedding: None,
            });
        }
        out.push(encode_server_bin(&ServerMsg::Changes {
            sub: "s".into(),
            prev,
            changes,
        }));
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One native apply of every frame (decode + apply, one transaction per frame), in ms.
fn native_once(frames: &[Vec<u8>]) -> f64 {
    let conn = schema::open_in_memory(&Default::default()).unwrap();
    let t0 = Instant::now();
    for f in frames {
        let ServerMsg::Changes { prev, changes, .. } = decode_server_bin(f).unwrap() else {
            unreachable!()
        };
        apply::apply_changes(&conn, prev, &changes).unwrap();
    }
    t0.elapsed().as_secs_f64() * 1e3
}

/// The rows of the frames' changes, decoded ahead of time for [`floor_once`].
struct FloorRow {
    id: String,
    kind: String,
    name: String,
    description: String,
    properties: String,
    tags: String,
    created_at: i64,
    updated_at: i64,
}

fn floor_rows(frames: &[Vec<u8>]) -> Vec<Vec<FloorRow>> {
    frames
        .iter()
        .map(|f| {
            let ServerMsg::Changes { changes, .. } = decode_server_bin(f).unwrap() else {
                unreachable!()
            };
            changes
                .iter()
                .map(|c| {
                    let v: serde_json::Value =
                        serde_json::from_str(c.data.as_deref().unwrap()).unwrap();
                    FloorRow {
                        id: c.id.clone(),
                        kind: v["kind"].as_str().unwrap().into(),
                        name: v["name"].as_str().unwrap().into(),
                        description: v["description"].as_str().unwrap().into(),
                        properties: v["properties"].to_string(),
                        tags: v["tags"].to_string(),
                        created_at: v["created_at"].as_i64().unwrap(),
                        updated_at: v["updated_at"].as_i64().unwrap(),
                    }
                })
                .collect()
        })
        .collect()
}

/// The floor under any replica apply on this machine: plain rusqlite storing the same rows in
/// the same entities table with the same FTS5 index, one transaction per frame, rows decoded
/// before the clock starts, no change log, no triggers, no protocol. A replica must at least
/// store each row and index it for search.
fn floor_once(rows: &[Vec<FloorRow>]) -> f64 {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    conn.execute_batch(common::BASELINE_DDL).unwrap();
    let t0 = Instant::now();
    for frame in rows {
        let tx = conn.unchecked_transaction().unwrap();
        {
            let mut ins = tx
                .prepare_cached(
                    "INSERT INTO entities(ns, id, kind, name, description, properties, tags,
                       created_at, updated_at) VALUES ('default', ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .unwrap();
            let mut fts = tx
                .prepare_cached(
                    "INSERT INTO entities_fts(rowid, name, description, tags) VALUES (?1, ?2, ?3, ?4)",
                )
                .unwrap();
            for r in frame {
                ins.execute(rusqlite::params![
                    r.id,
                    r.kind,
                    r.name,
                    r.description,
                    r.properties,
                    r.tags,
                    r.created_at,
                    r.updated_at
                ])
                .unwrap();
                fts.execute(rusqlite::params![
                    tx.last_insert_rowid(),
                    r.name,
                    r.description,
                    r.tags
                ])
                .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    t0.elapsed().as_secs_f64() * 1e3
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let wasm_dir = root.join("wasm");
    println!(
        "# replica benchmarks on {}, load {}",
        common::machine_info(),
        common::load_average()
    );
    let frames = frames();
    // Native apply and the raw SQLite floor take turns, round by round.
    let rows = floor_rows(&frames);
    let (mut native_ms, mut floor_ms) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        native_ms.push(native_once(&frames));
        floor_ms.push(floor_once(&rows));
    }
    let (native_ms, floor_ms) = (median(native_ms), median(floor_ms));
    let native_rate = CHANGES as f64 / native_ms * 1e3;
    let floor_rate = CHANGES as f64 / floor_ms * 1e3;
    println!("native apply: {CHANGES} changes in {} frames: {native_ms:.0} ms, {native_rate:.0} changes/s", frames.len());
    println!(
        "native floor: plain rusqlite storing the same rows + FTS5 index, decoded beforehand, no log: \
         {floor_ms:.0} ms, {floor_rate:.0} rows/s (native apply = {:.2}x of it)",
        native_rate / floor_rate
    );

    // The apply scripts feed frames straight in: the package built with the session-less
    // exports (`bash wasm/build.sh --raw`).
    let built = wasm_dir.join("bench/raw/pkg/hivesync_wasm_bg.wasm");
    if !built.is_file() || !wasm_dir.join("node_modules/playwright-core").is_dir() {
        println!("wasm parts skipped: run `bash wasm/build.sh --raw` and `npm ci` in wasm/ first");
        return;
    }
    let dir = std::env::temp_dir().join(format!("hivesync-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("frames.bin");
    let mut buf = Vec::new();
    for f in &frames {
        buf.extend_from_slice(&(f.len() as u32).to_le_bytes());
        buf.extend_from_slice(f);
    }
    std::fs::write(&path, buf).unwrap();
    let p = path.to_str().unwrap();
    let rounds = ROUNDS.to_string();
    for script in ["apply-node.mjs", "apply-chromium.mjs"] {
        if let Some(v) = common::node_script(script, &[p, &rounds]) {
            let ms = median(
                v["ms"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect(),
            );
            let n = v["changes"].as_f64().unwrap();
            let rate = n / ms * 1e3;
            println!(
                "wasm apply in {:<8}: {n:.0} changes: {ms:.0} ms, {rate:.0} changes/s = {:.2}x native (goal >= 0.35x{})",
                v["where"].as_str().unwrap_or("?"),
                rate / native_rate,
                if script == "apply-node.mjs" { ", and >= 100000/s" } else { "" }
            );
        }
    }
    // The size goal is the shipped package's (without the apply exports).
    let shipped = wasm_dir.join("web/pkg/hivesync_wasm_bg.wasm");
    let raw = std::fs::metadata(&shipped).unwrap().len();
    let gz = Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -9 -c '{}' | wc -c", shipped.display()))
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    println!("wasm size: {raw} bytes raw, {gz} bytes gzipped (goal <= 700 KB = 716800 bytes)");
    if let Some(v) = common::node_script(
        "page-open.mjs",
        &[env!("CARGO_BIN_EXE_hivesync"), "10000", "7"],
    ) {
        let ms = median(
            v["ms"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect(),
        );
        let wall = median(
            v["wallMs"]
                .as_array()
                .map(|a| a.iter().filter_map(|x| x.as_f64()).collect())
                .unwrap_or_else(|| vec![f64::NAN]),
        );
        println!(
            "page open to first search answer painted (the page's clock from navigation start), {} entities in {}: median {ms:.0} ms over {} visits {} (goal <= 500 ms); first sync of all rows {} ms",
            v["entities"], v["storage"], v["ms"].as_array().unwrap().len(), v["ms"], v["firstSyncMs"]
        );
        println!(
            "  the driver's clock (goto until it sees the result; also counts the driver noticing it): median {wall:.0} ms {}",
            v["wallMs"]
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
