//! Full-text search, top 20, over 40,000 notes, through `Store::search` (notes only), against
//! its baseline in the same run: the raw FTS5 query
//! `SELECT rowid FROM notes_fts WHERE notes_fts MATCH ? ORDER BY rank LIMIT 20` on the same
//! file (rank set to the store's weighted bm25), on a connection of its own. Also timed, for
//! the record: the plan `Store::search` used before top-k (every match joined to its row and
//! given a snippet, then all sorted by weighted bm25).
//!
//! Three terms per tokenizer: rare (in 0.1% of the notes), mid (10%), common (50%); both
//! tokenizers (unicode61, trigram), each in a file of its own. Goal: `Store::search` >= 0.9x
//! the raw query's rate (ratio = raw median / search median).
//!
//! Run with `cargo bench --bench search`. The sides run alternately, query by query, so load
//! from other processes hits both. Nothing is asserted: it is a measurement.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/mod.rs"]
mod common;
use common::{load_average, machine_info};

use std::time::{Duration, Instant};

use hivesync::model::{Kind, WriteOp};
use hivesync::query::{fts_query, SearchQuery};
use hivesync::rusqlite::{params, Connection, OpenFlags};
use hivesync::schema::{SchemaOptions, Tokenizer};
use hivesync::store::{Store, StoreOptions};
use serde_json::json;

const NOTES: usize = 40_000;
const BATCH: usize = 1_000;
const LIMIT: usize = 20;
const REPS: usize = 60;
const WEIGHTS: &str = "10.0, 3.0";

/// Filler words; every note has 12-40 of them, so bm25 scores vary.
const FILLER: [&str; 16] = [
    "river", "stone", "lantern", "orchard", "meadow", "copper", "harbor", "willow", "summit",
    "canyon", "prairie", "glacier", "thicket", "estuary", "tundra", "savanna",
];

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn median(xs: &mut [Duration]) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn p90(xs: &mut [Duration]) -> Duration {
    xs.sort();
    xs[xs.len() * 9 / 10]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    println!("search bench: {}", machine_info());
    println!("load average: {}", load_average());
    for tokenizer in [Tokenizer::Unicode61, Tokenizer::Trigram] {
        run(tokenizer);
    }
}

fn run(tokenizer: Tokenizer) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("search.db");
    let store = Store::open(
        &path,
        StoreOptions {
            schema: SchemaOptions { tokenizer },
            ..Default::default()
        },
    )
    .unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let t0 = Instant::now();
    for b in 0..NOTES / BATCH {
        let ops: Vec<WriteOp> = (0..BATCH)
            .map(|j| {
                let i = b * BATCH + j;
                let mut words: Vec<&str> = (0..12 + rng.below(29))
                    .map(|_| FILLER[rng.below(FILLER.len() as u64) as usize])
                    .collect();
                // rare: 0.1% of the notes, mid: 10%, common: 50%.
                if i % 1000 == 7 {
                    words.push("zephyrine");
                }
                if i % 10 == 3 {
                    words.push("marmalade");
                }
                if i % 2 == 1 {
                    words.push("kestrel");
                }
                let at = rng.below(words.len() as u64) as usize;
                let last = words.len() - 1;
                words.swap(at, last);
                WriteOp::upsert(
                    Kind::Note,
                    "default",
                    json!({"id": format!("n{i}"), "kind": "memo", "name": format!("note {i}"),
                           "content": words.join(" ")}),
                )
            })
            .collect();
        store.write(&ops).unwrap();
    }
    println!(
        "\n{tokenizer:?}: {NOTES} notes written in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let raw = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let raw_sql = format!(
        "SELECT rowid FROM notes_fts WHERE notes_fts MATCH ?1 AND rank MATCH 'bm25({WEIGHTS})'
         ORDER BY rank LIMIT ?2"
    );
    let scored_sql = format!(
        "SELECT rowid, -bm25(notes_fts, {WEIGHTS}) FROM notes_fts
         WHERE notes_fts MATCH ?1 AND rank MATCH 'bm25({WEIGHTS})' ORDER BY rank LIMIT ?2"
    );
    let before_sql = format!(
        "SELECT t.ns, t.id, t.kind, t.name, snippet(notes_fts, -1, '[', ']', '…', 16),
                -bm25(notes_fts, {WEIGHTS}) AS score
         FROM notes_fts JOIN notes t ON t.rowid = notes_fts.rowid
         WHERE notes_fts MATCH ?1 AND (t.expires_at IS NULL OR t.expires_at > 0)
         ORDER BY bm25(notes_fts, {WEIGHTS}) LIMIT ?2"
    );
    println!("term        matches  search p50/p90 ms   raw p50/p90 ms   before p50 ms   ratio (raw/search, goal >= 0.9)");
    for (label, term) in [
        ("rare", "zephyrine"),
        ("mid", "marmalade"),
        ("common", "kestrel"),
    ] {
        let fts = fts_query(term).unwrap();
        let matches: i64 = raw
            .query_row(
                "SELECT count(*) FROM notes_fts WHERE notes_fts MATCH ?1",
                [&fts],
                |r| r.get(0),
            )
            .unwrap();
        let q = SearchQuery {
            text: term.into(),
            records: Some(vec![Kind::Note]),
            limit: LIMIT,
            ..Default::default()
        };
        let (mut s, mut r, mut b) = (Vec::new(), Vec::new(), Vec::new());
        let mut sc = Vec::new();
        for rep in 0..REPS + 3 {
            let t = Instant::now();
            let hits = store.search(&q).unwrap();
            let ds = t.elapsed();
            assert_eq!(hits.len(), LIMIT.min(matches as usize));
            let t = Instant::now();
            let n = raw
                .prepare_cached(&raw_sql)
                .unwrap()
                .query_map(params![fts, LIMIT as i64], |r| r.get::<_, i64>(0))
                .unwrap()
                .count();
            let dr = t.elapsed();
            assert_eq!(n, hits.len());
            let t = Instant::now();
            let n = raw
                .prepare_cached(&before_sql)
                .unwrap()
                .query_map(params![fts, LIMIT as i64], |r| r.get::<_, String>(1))
                .unwrap()
                .count();
            let db = t.elapsed();
            assert_eq!(n, hits.len());
            // The raw query with the score beside each rowid: the cost of returning a score
            // at all (FTS5 computes `rank`, or bm25, again for the rows returned, with a second
            // pass over the matches for the terms' frequencies).
            let t = Instant::now();
            raw.prepare_cached(&scored_sql)
                .unwrap()
                .query_map(params![fts, LIMIT as i64], |r| r.get::<_, f64>(1))
                .unwrap()
                .count();
            let dsc = t.elapsed();
            if rep >= 3 {
                s.push(ds);
                r.push(dr);
                b.push(db);
                sc.push(dsc);
            }
        }
        let (sm, rm) = (median(&mut s), median(&mut r));
        println!(
            "{label:<7} {matches:>10}  {:>7.3} / {:>7.3}   {:>7.3} / {:>7.3}   {:>10.3}      {:.2}x",
            ms(sm),
            ms(p90(&mut s)),
            ms(rm),
            ms(p90(&mut r)),
            ms(median(&mut b)),
            rm.as_secs_f64() / sm.as_secs_f64(),
        );
        println!(
            "        raw with the score: {:.3} ms p50 ({:.2}x of raw)",
            ms(median(&mut sc)),
            median(&mut sc).as_secs_f64() / rm.as_secs_f64()
        );
    }
}
