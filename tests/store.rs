//! Integration tests of the store on real database files.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use hivesync::model::{Kind, Op, WriteOp};
use hivesync::query::{ChangeFilter, Direction, KnnQuery, ListQuery, SearchQuery};
use hivesync::store::{PoolConfig, Store, StoreOptions};
use hivesync::Error;
use serde_json::json;

fn file_store(dir: &tempfile::TempDir) -> Store {
    Store::open(dir.path().join("t.db"), StoreOptions::default()).unwrap()
}

fn ent(ns: &str, id: &str, name: &str) -> WriteOp {
    WriteOp::upsert(
        Kind::Entity,
        ns,
        json!({"id": id, "kind": "person", "name": name}),
    )
}

#[test]
fn writes_commit_together_or_not_at_all() {
    let d = tempfile::tempdir().unwrap();
    let s = file_store(&d);
    let r = s
        .write(&[ent("d", "a", "Ada"), ent("d", "b", "Bob")])
        .unwrap();
    assert_eq!(r.seq, 2);
    assert_eq!(r.ids, ["a", "b"]);
    let bad = WriteOp::upsert(
        Kind::Edge,
        "d",
        json!({"source": "a", "target": "nobody", "relation": "knows"}),
    );
    let e = s
        .write(&[ent("d", "c", "Cy"), ent("d", "a", "Ada renamed"), bad])
        .unwrap_err();
    assert!(matches!(e, Error::Op { index: 2, .. }), "{e}");
    assert!(e.to_string().contains("nobody"), "{e}");
    assert!(s.get_entity("d", "c").unwrap().is_none());
    assert_eq!(s.get_entity("d", "a").unwrap().unwrap().name, "Ada");
    assert_eq!(
        s.head().unwrap(),
        2,
        "a rolled-back write leaves no change behind"
    );
    // All changes of one write share a tx: the seq of its first change.
    let ch = s.changes_since(0, &ChangeFilter::default(), 10).unwrap();
    assert_eq!(ch.iter().map(|c| c.tx).collect::<Vec<_>>(), [1, 1]);
}

#[test]
fn a_failure_inside_a_run_of_entity_upserts_names_its_op() {
    // Consecutive entity upserts are written with multi-row statements; a row that SQLite
    // itself refuses (here a trigger another program added) must still be reported as its own
    // op, with nothing of the write committed and the rows in order otherwise.
    let d = tempfile::tempdir().unwrap();
    let s = file_store(&d);
    s.write(&[ent("d", "keep", "Kept")]).unwrap();
    let c = rusqlite::Connection::open(d.path().join("t.db")).unwrap();
    c.execute_batch(
        "CREATE TRIGGER refuse_bad BEFORE INSERT ON entities WHEN new.id = 'bad'
         BEGIN SELECT RAISE(ABORT, 'bad rows are refused'); END;",
    )
    .unwrap();
    drop(c);
    let s = file_store(&d);
    for bad_at in [0usize, 5, 69, 99] {
        let ops: Vec<WriteOp> = (0..100)
            .map(|i| {
                let id = if i == bad_at {
                    "bad".to_string()
                } else {
                    format!("r{i}")
                };
                ent("d", &id, "Row")
            })
            .collect();
        let e = s.write(&ops).unwrap_err();
        assert!(
            matches!(e, Error::Op { index, .. } if index == bad_at),
            "bad row at {bad_at}: {e}"
        );
        assert!(e.to_string().contains("bad rows are refused"), "{e}");
        assert!(s.get_entity("d", "r1").unwrap().is_none());
        assert_eq!(
            s.head().unwrap(),
            1,
            "nothing of the failed write is logged"
        );
    }
    // Without the bad row, 100 upserts (64 + 16 + 16 + 4) land in order, one change each.
    let ops: Vec<WriteOp> = (0..100)
        .map(|i| ent("d", &format!("r{i}"), "Row"))
        .collect();
    let r = s.write(&ops).unwrap();
    assert_eq!(r.seq, 101);
    let ch = s.changes_since(1, &ChangeFilter::default(), 1000).unwrap();
    let ids: Vec<String> = ch.iter().map(|c| c.id.clone()).collect();
    let want: Vec<String> = (0..100).map(|i| format!("r{i}")).collect();
    assert_eq!(ids, want);
    let hits = s
        .search(&SearchQuery {
            text: "row".into(),
            ns: None,
            kind: None,
            records: None,
            limit: 1000,
        })
        .unwrap();
    assert_eq!(hits.len(), 100, "every row of the batch is searchable");
    assert!(s.check().unwrap().ok);
}

#[test]
fn odd_ids_and_text_roundtrip() {
    let d = tempfile::tempdir().unwrap();
    let s = file_store(&d);
    let ids = [
        "it's",
        "a\"b",
        "x'); DROP TABLE entities; --",
        "路径/with/slashes",
        "emoji 🐝",
        " spaced ",
        &"z".repeat(512),
    ];
    for id in ids {
        s.write(&[ent("odd ns ✓", id, "name")]).unwrap();
        let e = s.get_entity("odd ns ✓", id).unwrap().unwrap();
        assert_eq!(e.id, id);
    }
    for bad in ["", &"z".repeat(513), "nul\0byte"] {
        assert!(s.write(&[ent("d", bad, "n")]).is_err(), "{bad:?}");
    }
    let big = "word ".repeat(300_000);
    let e = s
        .write(&[WriteOp::upsert(
            Kind::Note,
            "d",
            json!({"id": "n", "content": big}),
        )])
        .unwrap_err();
    assert!(e.to_string().contains("too large"), "{e}");
    assert!(s.get_note("d", "n").unwrap().is_none());
    let near = "w".repeat(hivesync::ops::MAX_TEXT);
    s.write(&[WriteOp::upsert(
        Kind::Note,
        "d",
        json!({"id": "n", "content": near}),
    )])
    .unwrap();
}

#[test]
fn bad_json_values_are_refused_with_reasons() {
    assert!(WriteOp::from_json("{not json")
        .unwrap_err()
        .to_string()
        .contains("invalid write op"));
    assert!(WriteOp::from_json(
        r#"{"op":"upsert","kind":"entity","data":{"name":"x","embedding":[1e999]}}"#
    )
    .is_err());
    let d = tempfile::tempdir().unwrap();
    let s = file_store(&d);
    s.write(&[ent("d", "a", "Ada")]).unwrap();
    let v = |e: serde_json::Value| {
        WriteOp::upsert(
            Kind::Vector,
            "d",
            json!({"subject": "a", "model": "m", "embedding": e}),
        )
    };
    s.write(&[v(json!([1.0, 2.0, 3.0]))]).unwrap();
    let e = s.write(&[v(json!([1.0, 2.0]))]).unwrap_err().to_string();
    assert!(e.contains("has 3 dimensions"), "{e}");
    let e = s
        .write(&[v(json!([1.0, "x", 3.0]))])
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid vector data"), "{e}");
    let e = s
        .write(&[WriteOp::upsert(
            Kind::Entity,
            "d",
            json!({"name": "x", "properties": [1]}),
        )])
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid entity data"), "{e}");
    assert_eq!(s.head().unwrap(), 2);
}

#[test]
fn search_ranks_filters_and_survives_hostile_text() {
    let d = tempfile::tempdir().unwrap();
    let s = file_store(&d);
    s.write(&[
        WriteOp::upsert(Kind::Entity, "d", json!({"id": "1", "kind": "person", "name": "Ada Lovelace", "description": "wrote the first program"})),
        WriteOp::upsert(Kind::Entity, "d", json!({"id": "2", "kind": "machine", "name": "Analytical Engine", "description": "Ada wrote a program for it"})),
        WriteOp::upsert(Kind::Entity, "e", json!({"id": "3", "kind": "person", "name": "Ada Yonath"})),
        WriteOp::upsert(Kind::Note, "d", json!({"id": "n1", "content": "the first program ever published"})),
        WriteOp::upsert(Kind::Note, "d", json!({"id": "n2", "content": "expired program", "expires_at": 1})),
    ])
    .unwrap();
    let q = |text: &str, ns: Option<&str>, kind: Option<&str>| {
        let q = SearchQuery {
            text: text.into(),
            ns: ns.map(Into::into),
            kind: kind.map(Into::into),
            records: None,
            limit: 10,
        };
        s.search(&q)
            .unwrap()
            .into_iter()
            .map(|h| h.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        q("ada", Some("d"), None)[0],
        "1",
        "a name match outranks a description match"
    );
    assert_eq!(q("ada", None, Some("person")).len(), 2);
    assert_eq!(q("ada", Some("e"), None), ["3"]);
    assert_eq!(q("\"first program\"", Some("d"), None).len(), 2);
    assert_eq!(
        q("\"program first\"", Some("d"), None).len(),
        0,
        "phrases keep word order"
    );
    assert!(
        !q("progr*", Some("d"), None).contains(&"n2".to_string()),
        "expired notes are hidden"
    );
    let hits = s
        .search(&SearchQuery {
            text: "lovelace".into(),
            limit: 5,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(hits[0].snippet, "Ada [Lovelace]");
    for hostile in [
        "\"",
        "AND",
        "ada OR",
        "NEAR(",
        "a:b",
        "*",
        "^x",
        "-(-)",
        "col:ada",
        "'",
        "\u{0}",
        "ada\"\"\"",
        "((((",
        "ada NOT",
        "🐝",
    ] {
        s.search(&SearchQuery {
            text: hostile.into(),
            limit: 5,
            ..Default::default()
        })
        .unwrap();
    }
}

#[test]
fn knn_and_hybrid() {
    let d = tempfile::tempdir().unwrap();
    let s = file_store(&d);
    let mut ops = Vec::new();
    for (i, (ns, kind)) in [("d", "a"), ("d", "b"), ("e", "a"), ("d", "a")]
        .iter()
        .enumerate()
    {
        let id = format!("v{i}");
        ops.push(WriteOp::upsert(
            Kind::Entity,
            *ns,
            json!({"id": id, "kind": kind, "name": format!("vector number {i}")}),
        ));
        let angle = i as f32 * 0.3;
        ops.push(WriteOp::upsert(
            Kind::Vector,
            *ns,
            json!({"subject": id, "model": "m2", "embedding": [angle.cos(), angle.sin()]}),
        ));
    }
    s.write(&ops).unwrap();
    let q = |ns: Option<&str>, kind: Option<&str>, k| {
        let q = KnnQuery {
            model: "m2".into(),
            embedding: vec![1.0, 0.0],
            k,
            ns: ns.map(Into::into),
            kind: kind.map(Into::into),
        };
        s.knn(&q)
            .unwrap()
            .into_iter()
            .map(|h| h.subject)
            .collect::<Vec<_>>()
    };
    assert_eq!(q(None, None, 10), ["v0", "v1", "v2", "v3"]);
    assert_eq!(q(None, None, 2), ["v0", "v1"]);
    assert_eq!(q(Some("d"), None, 10), ["v0", "v1", "v3"]);
    assert_eq!(q(Some("d"), Some("a"), 10), ["v0", "v3"]);
    assert_eq!(q(None, Some("a"), 1), ["v0"]);
    let e = s
        .knn(&KnnQuery {
            model: "m2".into(),
            embedding: vec![1.0],
            k: 1,
            ..Default::default()
        })
        .unwrap_err();
    assert!(e.to_string().contains("2 dimensions"), "{e}");
    assert!(s
        .knn(&KnnQuery {
            model: "nope".into(),
            embedding: vec![1.0],
            k: 1,
            ..Default::default()
        })
        .is_err());
    let text = SearchQuery {
        text: "number 3".into(),
        limit: 10,
        ..Default::default()
    };
    let vector = KnnQuery {
        model: "m2".into(),
        embedding: vec![1.0, 0.0],
        k: 10,
        ..Default::default()
    };
    let h = s.hybrid(&text, &vector, 10).unwrap();
    assert_eq!(h[0].id, "v3", "in both lists beats first in one: {h:?}");
    assert!(h[0].text_rank.is_some() && h[0].vector_rank.is_some());
}

#[test]
fn graph_neighbors_and_traversal() {
    let d = tempfile::tempdir().unwrap();
    let s = file_store(&d);
    let mut ops: Vec<WriteOp> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|i| ent("g", i, i))
        .collect();
    for (src, dst, rel) in [
        ("a", "b", "knows"),
        ("b", "c", "knows"),
        ("c", "a", "knows"),
        ("c", "d", "likes"),
        ("d", "e", "knows"),
    ] {
        ops.push(WriteOp::upsert(
            Kind::Edge,
            "g",
            json!({"source": src, "target": dst, "relation": rel}),
        ));
    }
    s.write(&ops).unwrap();
    let n = |id, dir, rel: Option<&str>| {
        s.neighbors("g", id, dir, rel, 10)
            .unwrap()
            .into_iter()
            .map(|n| n.node)
            .collect::<Vec<_>>()
    };
    assert_eq!(n("c", Direction::Out, None), ["a", "d"]);
    assert_eq!(n("c", Direction::Out, Some("likes")), ["d"]);
    assert_eq!(n("c", Direction::In, None), ["b"]);
    assert_eq!(n("c", Direction::Both, None).len(), 3);
    let t = s.traverse("g", "a", Direction::Out, None, 10, 100).unwrap();
    let got: Vec<_> = t.iter().map(|h| (h.node.as_str(), h.depth)).collect();
    assert_eq!(
        got,
        [("b", 1), ("c", 2), ("d", 3), ("e", 4)],
        "the cycle a->b->c->a ends"
    );
    assert_eq!(
        s.traverse("g", "a", Direction::Out, Some("knows"), 10, 100)
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        s.traverse("g", "a", Direction::Out, None, 2, 100)
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        s.traverse("g", "a", Direction::Out, None, 10, 3)
            .unwrap()
            .len(),
        3
    );
    // One edge per (source, target, relation): a second upsert without id updates it.
    let r = s
        .upsert(
            Kind::Edge,
            "g",
            json!({"source": "a", "target": "b", "relation": "knows", "weight": 0.5}),
        )
        .unwrap();
    assert_eq!(s.get_edge("g", &r.ids[0]).unwrap().unwrap().weight, 0.5);
    assert_eq!(
        s.list_edges(&ListQuery {
            ns: "g".into(),
            limit: 100,
            ..Default::default()
        })
        .unwrap()
        .len(),
        5
    );
    let e = s
        .upsert(
            Kind::Edge,
            "g",
            json!({"id": "other", "source": "a", "target": "b", "relation": "knows"}),
        )
        .unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
}

#[test]
fn changes_filter_and_never_split_a_transaction() {
    let d = tempfile::tempdir().unwrap();
    let s = file_store(&d);
    s.write(&[ent("a", "1", "x"), ent("b", "2", "x"), ent("a", "3", "x")])
        .unwrap();
    s.write(&[ent("a", "4", "x")]).unwrap();
    let all = ChangeFilter::default();
    assert_eq!(
        s.changes_since(0, &all, 1).unwrap().len(),
        3,
        "the limit stretches to the end of the transaction"
    );
    let only_a = ChangeFilter {
        namespaces: Some(vec!["a".into()]),
        kinds: None,
    };
    let seqs: Vec<i64> = s
        .changes_since(0, &only_a, 10)
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(seqs, [1, 3, 4]);
    let notes_only = ChangeFilter {
        namespaces: None,
        kinds: Some(vec![Kind::Note]),
    };
    assert!(s.changes_since(0, &notes_only, 10).unwrap().is_empty());
    assert!(s.changes_since(4, &all, 10).unwrap().is_empty());
}

#[test]
fn snapshot_is_consistent_and_trimming_keeps_the_head() {
    let d = tempfile::tempdir().unwrap();
    let s = file_store(&d);
    for i in 0..50 {
        s.write(&[ent("d", &format!("e{i}"), "x")]).unwrap();
    }
    s.delete(Kind::Entity, "d", "e0").unwrap();
    let snap = s.snapshot(&ChangeFilter::default()).unwrap();
    assert_eq!(snap.at, 51);
    assert_eq!(snap.rows.len(), 49);
    assert!(snap.rows.iter().all(|r| r.op == Op::Upsert && r.seq == 51));
    assert_eq!(s.trim_changes(Some(10), None).unwrap(), 41);
    assert_eq!((s.horizon().unwrap(), s.head().unwrap()), (42, 51));
    assert_eq!(s.trim_changes(Some(0), None).unwrap(), 10);
    assert_eq!((s.horizon().unwrap(), s.head().unwrap()), (52, 51));
    let r = s.write(&[ent("d", "new", "x")]).unwrap();
    assert_eq!(r.seq, 52, "seqs never repeat after the log was emptied");
    assert!(s.check().unwrap().ok);
}

#[test]
fn pool_times_out_replaces_bad_readers_and_degrades_in_memory() {
    let d = tempfile::tempdir().unwrap();
    let cfg = PoolConfig {
        readers: 1,
        checkout_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let s = Store::open(
        d.path().join("p.db"),
        StoreOptions {
            pool: cfg,
            ..Default::default()
        },
    )
    .unwrap();
    {
        let r = s.pool().reader().unwrap();
        let t0 = Instant::now();
        let e = s.pool().reader().err().unwrap();
        assert!(matches!(e, Error::PoolTimeout(_)), "{e}");
        assert!(t0.elapsed() >= Duration::from_millis(190));
        assert!(e.to_string().contains("overloaded"));
        r.execute_batch("BEGIN; SELECT count(*) FROM entities;")
            .unwrap();
    }
    // The reader came back inside a transaction: it is cleaned up, and sees new commits.
    s.write(&[ent("d", "a", "Ada")]).unwrap();
    assert!(s.pool().reader().unwrap().is_autocommit());
    assert!(s.get_entity("d", "a").unwrap().is_some());
    let m = Store::open_in_memory(StoreOptions::default()).unwrap();
    m.write(&[ent("d", "a", "Ada")]).unwrap();
    assert_eq!(m.get_entity("d", "a").unwrap().unwrap().name, "Ada");
}

#[test]
fn readers_see_commits_while_the_writer_writes() {
    let d = tempfile::tempdir().unwrap();
    let s = std::sync::Arc::new(file_store(&d));
    let w = {
        let s = s.clone();
        std::thread::spawn(move || {
            for i in 0..200 {
                s.write(&[ent("d", &format!("e{i}"), "x")]).unwrap();
            }
        })
    };
    let mut last = 0;
    while last < 200 {
        let h = s.head().unwrap();
        assert!(h >= last, "the head never goes back");
        last = h;
    }
    w.join().unwrap();
}

#[test]
fn wal_stays_bounded_under_constant_writes() {
    let d = tempfile::tempdir().unwrap();
    let s = file_store(&d);
    let wal = d.path().join("t.db-wal");
    let text = "lorem ipsum dolor sit amet ".repeat(40);
    let mut max_wal = 0;
    let t0 = Instant::now();
    let mut i = 0;
    // About 60 MB of rows and index pages: far more than the bound if nothing checkpointed.
    while i < 40_000 {
        let ops: Vec<WriteOp> = (i..i + 500)
            .map(|j| {
                WriteOp::upsert(
                    Kind::Entity,
                    "d",
                    json!({"id": format!("e{j}"), "name": "n", "description": text}),
                )
            })
            .collect();
        s.write(&ops).unwrap();
        i += 500;
        max_wal = max_wal.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
        std::thread::sleep(Duration::from_millis(5));
    }
    let db = std::fs::metadata(d.path().join("t.db")).unwrap().len();
    println!(
        "wrote 40000 rows in {:?}; db {} MB, max WAL {} MB",
        t0.elapsed(),
        db >> 20,
        max_wal >> 20
    );
    assert!(max_wal < 40 << 20, "WAL grew to {max_wal} bytes");
    assert!(
        s.checkpoint_stats()
            .unwrap()
            .runs
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
}

#[test]
fn newer_schema_and_read_only_mode() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("v.db");
    drop(Store::open(&path, StoreOptions::default()).unwrap());
    let ro = PoolConfig {
        read_only: true,
        ..Default::default()
    };
    let r = Store::open(
        &path,
        StoreOptions {
            pool: ro.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(matches!(
        r.write(&[ent("d", "a", "A")]).unwrap_err(),
        Error::ReadOnly
    ));
    assert_eq!(r.head().unwrap(), 0);
    drop(r);
    let e = Store::open(
        d.path().join("missing.db"),
        StoreOptions {
            pool: ro,
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("does not exist"), "{e}");
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute("INSERT INTO schema_migrations VALUES (99, 'future', 0)", [])
        .unwrap();
    drop(c);
    let e = Store::open(&path, StoreOptions::default()).err().unwrap();
    assert!(matches!(e, Error::SchemaTooNew { found: 99, .. }), "{e}");
}

#[test]
fn corrupt_files_and_broken_indexes_are_reported() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("c.db");
    std::fs::write(
        &path,
        b"this is not a database, just some bytes that are long enough to look like a header....",
    )
    .unwrap();
    let e = Store::open(&path, StoreOptions::default()).err().unwrap();
    assert!(e.to_string().contains("not a database"), "{e}");

    let s = file_store(&d);
    s.write(&[ent("d", "a", "Ada"), ent("d", "b", "Bob")])
        .unwrap();
    assert!(s.check().unwrap().ok);
    {
        let w = s.pool().writer().unwrap();
        // Break the FTS index behind the triggers' back.
        w.execute("INSERT INTO entities_fts(entities_fts, rowid, name, description, tags) VALUES ('delete', 1, 'Ada', '', '[]')", []).unwrap();
    }
    let r = s.check().unwrap();
    assert!(!r.ok);
    assert!(
        r.problems.iter().any(|p| p.contains("entities_fts")),
        "{:?}",
        r.problems
    );
}

/// Issue 12, item 7: namespace `a` registering `minilm` at 2 dimensions made namespace `b`'s
/// 384-dimension `minilm` vectors fail. Models are per namespace now, on the node and on a
/// replica that applies its log (batch by batch, or as a snapshot).
#[test]
fn namespaces_keep_their_own_models_on_the_node_and_its_replicas() {
    let d = tempfile::tempdir().unwrap();
    let s = file_store(&d);
    let vec = |ns: &str, id: &str, e: Vec<f32>| {
        WriteOp::upsert(
            Kind::Vector,
            ns,
            json!({"subject": id, "model": "minilm", "embedding": e}),
        )
    };
    let wide = |i: usize| {
        let mut e = vec![0.01f32; 384];
        e[i] = 1.0;
        e
    };
    s.write(&[
        ent("a", "x", "X"),
        ent("a", "y", "Y"),
        ent("b", "x", "X"),
        ent("b", "y", "Y"),
    ])
    .unwrap();
    s.write(&[vec("a", "x", vec![1.0, 0.0]), vec("a", "y", vec![0.0, 1.0])])
        .unwrap();
    // In one write, and in two: b's first vector fixes b's minilm at 384 dimensions.
    s.write(&[vec("b", "x", wide(0)), vec("b", "y", wide(1))])
        .unwrap();
    s.write(&[vec("b", "y", wide(2))]).unwrap();
    let e = s.write(&[vec("b", "x", vec![1.0, 0.0])]).unwrap_err();
    assert!(
        e.to_string().contains("384 dimensions in namespace \"b\""),
        "{e}"
    );

    let knn = |c: &dyn Fn(&KnnQuery) -> Vec<(String, String)>, ns: Option<&str>, e: Vec<f32>| {
        c(&KnnQuery {
            model: "minilm".into(),
            embedding: e,
            k: 10,
            ns: ns.map(Into::into),
            kind: None,
        })
    };
    let on_node = |q: &KnnQuery| -> Vec<(String, String)> {
        s.knn(q)
            .unwrap()
            .into_iter()
            .map(|h| (h.ns, h.subject))
            .collect()
    };
    let pair = |ns: &str, id: &str| (ns.to_string(), id.to_string());
    let cases = [
        (Some("a"), vec![0.9, 0.1]),
        (Some("b"), wide(2)),
        (None, vec![0.1, 0.9]),
        (None, wide(0)),
    ];
    let want = [
        vec![pair("a", "x"), pair("a", "y")],
        vec![pair("b", "y"), pair("b", "x")],
        vec![pair("a", "y"), pair("a", "x")],
        vec![pair("b", "x"), pair("b", "y")],
    ];
    for ((ns, e), w) in cases.iter().zip(&want) {
        assert_eq!(&knn(&on_node, *ns, e.clone()), w, "node, ns {ns:?}");
    }
    assert!(s.check().unwrap().ok, "{:?}", s.check().unwrap().problems);

    // A replica applying the log, in two batches (the second one re-registers nothing).
    let log = s.changes_since(0, &ChangeFilter::default(), 1000).unwrap();
    let r = hivesync::schema::open_in_memory(&Default::default()).unwrap();
    let (first, rest) = log.split_at(5);
    hivesync::apply::apply_changes(&r, 0, first).unwrap();
    hivesync::apply::apply_changes(&r, first[4].seq, rest).unwrap();
    // A replica taking a snapshot instead.
    let snap = s.snapshot(&ChangeFilter::default()).unwrap();
    let r2 = hivesync::schema::open_in_memory(&Default::default()).unwrap();
    hivesync::apply::apply_snapshot(&r2, &ChangeFilter::default(), snap.at, &snap.rows).unwrap();
    for replica in [&r, &r2] {
        let on_replica = |q: &KnnQuery| -> Vec<(String, String)> {
            hivesync::query::knn(replica, q)
                .unwrap()
                .into_iter()
                .map(|h| (h.ns, h.subject))
                .collect()
        };
        for ((ns, e), w) in cases.iter().zip(&want) {
            assert_eq!(&knn(&on_replica, *ns, e.clone()), w, "replica, ns {ns:?}");
        }
        assert!(hivesync::schema::vec_index_problems(replica)
            .unwrap()
            .is_empty());
        assert_eq!(
            hivesync::query::digest(replica, None).unwrap().sha256,
            s.digest(None).unwrap().sha256
        );
    }
    // Deleting a's vectors leaves b's alone, on the node and through the log.
    let head = s.head().unwrap();
    s.write(&[WriteOp::delete(Kind::Entity, "a", "x")]).unwrap();
    assert_eq!(knn(&on_node, Some("a"), vec![1.0, 0.0]), [pair("a", "y")]);
    assert_eq!(knn(&on_node, Some("b"), wide(0)).len(), 2);
    let more = s
        .changes_since(head, &ChangeFilter::default(), 1000)
        .unwrap();
    hivesync::apply::apply_changes(&r, head, &more).unwrap();
    assert!(hivesync::schema::vec_index_problems(&r).unwrap().is_empty());
    assert_eq!(
        hivesync::query::digest(&r, None).unwrap().sha256,
        s.digest(None).unwrap().sha256
    );
}

#[test]
fn a_namespace_may_register_at_most_max_models_per_ns() {
    let d = tempfile::tempdir().unwrap();
    let s = file_store(&d);
    let cap = hivesync::schema::MAX_MODELS_PER_NS;
    s.write(&[ent("full", "x", "X"), ent("other", "x", "X")])
        .unwrap();
    let vec = |ns: &str, model: String| {
        WriteOp::upsert(
            Kind::Vector,
            ns,
            json!({"subject": "x", "model": model, "embedding": [1.0, 0.5]}),
        )
    };
    let ops: Vec<WriteOp> = (0..cap).map(|i| vec("full", format!("m{i}"))).collect();
    s.write(&ops).unwrap();
    let e = s
        .write(&[ent("full", "y", "Y"), vec("full", "m-extra".into())])
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("op 1") || matches!(e, Error::Op { index: 1, .. }),
        "the error names the op: {msg}"
    );
    assert!(
        msg.contains(&format!("limit (MAX_MODELS_PER_NS = {cap})")) && msg.contains("m-extra"),
        "{msg}"
    );
    assert!(
        s.get_entity("full", "y").unwrap().is_none(),
        "nothing committed"
    );
    // The namespace's own models still take writes; another namespace is not affected.
    s.write(&[vec("full", "m3".into()), vec("other", "m-extra".into())])
        .unwrap();
    assert!(s.check().unwrap().ok);
}

/// A snapshot read in pages (as the node sends it) while an edge is replaced by another with
/// the same (source, target, relation): the replica's snapshot holds both, its apply keeps the
/// newer one, and the changes after the snapshot's seq bring it to the node's state.
#[test]
fn a_paged_snapshot_converges_across_a_replaced_edge() {
    let dir = tempfile::tempdir().unwrap();
    let s = file_store(&dir);
    let edge = |id: &str, relation: &str| {
        WriteOp::upsert(
            Kind::Edge,
            "default",
            json!({"id": id, "source": "a", "target": "b", "relation": relation}),
        )
    };
    // `ex` keeps a higher rowid than e1, so the edge that replaces e1 is not given its rowid
    // again and comes in a later page.
    s.write(&[
        ent("default", "a", "A"),
        ent("default", "b", "B"),
        edge("e1", "knows"),
        edge("ex", "likes"),
    ])
    .unwrap();
    let filter = ChangeFilter::default();
    let at = s.head().unwrap();
    let mut cursor = hivesync::query::SnapshotCursor::default();
    let mut rows = Vec::new();
    let mut page = |rows: &mut Vec<_>| {
        s.read(|c| hivesync::query::snapshot_page(c, &filter, at, &mut cursor, 1, usize::MAX))
            .unwrap()
            .map(|p| rows.extend(p))
            .is_some()
    };
    // Entities a and b, then edge e1.
    for _ in 0..3 {
        assert!(page(&mut rows));
    }
    // Between pages: e1 goes, e2 takes its triple.
    s.write(&[
        WriteOp::delete(Kind::Edge, "default", "e1"),
        edge("e2", "knows"),
    ])
    .unwrap();
    while page(&mut rows) {}
    let ids: Vec<&str> = rows.iter().map(|c| c.id.as_str()).collect();
    assert!(ids.contains(&"e1") && ids.contains(&"e2"), "{ids:?}");
    let r = hivesync::schema::open_in_memory(&Default::default()).unwrap();
    hivesync::apply::apply_snapshot(&r, &filter, at, &rows).unwrap();
    let after = s.changes_since(at, &filter, 1000).unwrap();
    hivesync::apply::apply_changes(&r, at, &after).unwrap();
    assert_eq!(
        hivesync::query::digest(&r, None).unwrap().sha256,
        s.digest(None).unwrap().sha256
    );
}

/// Search as it was before top-k (every match joined to its row, given a snippet, then sorted
/// by weighted bm25): the reference the top-k plan must agree with.
fn search_sorting_every_match(
    s: &Store,
    record: Kind,
    fts: &str,
    limit: i64,
) -> Vec<(String, String, f64)> {
    let (table, fts_table, weights) = match record {
        Kind::Entity => ("entities", "entities_fts", "10.0, 3.0, 5.0"),
        _ => ("notes", "notes_fts", "10.0, 3.0"),
    };
    s.read(|c| {
        let sql = format!(
            "SELECT t.id, snippet({fts_table}, -1, '[', ']', '…', 16), -bm25({fts_table}, {weights})
             FROM {fts_table} JOIN {table} t ON t.rowid = {fts_table}.rowid
             WHERE {fts_table} MATCH ?1 ORDER BY bm25({fts_table}, {weights}) LIMIT ?2"
        );
        let mut st = c.prepare(&sql)?;
        let rows = st.query_map(hivesync::rusqlite::params![fts, limit], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
        Ok(rows.collect::<hivesync::rusqlite::Result<Vec<_>>>()?)
    })
    .unwrap()
}

#[test]
fn top_k_search_gives_the_scores_and_snippets_of_sorting_every_match() {
    use hivesync::schema::{SchemaOptions, Tokenizer};
    let words = [
        "amber", "basalt", "cobalt", "dune", "ember", "fjord", "garnet", "heron",
    ];
    for tokenizer in [Tokenizer::Unicode61, Tokenizer::Trigram] {
        let d = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            schema: SchemaOptions { tokenizer },
            ..Default::default()
        };
        let s = Store::open(d.path().join("t.db"), opts).unwrap();
        // Rows of varied lengths and term counts, so scores differ; some rows in another
        // namespace or of another kind, for the filters.
        let mut ops = Vec::new();
        for i in 0..600usize {
            let pick = |k: usize| words[(i * 7 + k * 3 + i / 5) % words.len()];
            let text: Vec<&str> = (0..(3 + i % 11)).map(pick).collect();
            let ns = if i % 9 == 0 { "other" } else { "d" };
            let kind = if i % 4 == 0 { "place" } else { "thing" };
            ops.push(WriteOp::upsert(
                Kind::Entity,
                ns,
                json!({
                "id": format!("e{i}"), "kind": kind, "name": format!("{} {}", pick(1), pick(i % 5)),
                "description": text.join(" "), "tags": [pick(2)]}),
            ));
            ops.push(WriteOp::upsert(
                Kind::Note,
                ns,
                json!({
                "id": format!("n{i}"), "kind": kind, "name": pick(4),
                "content": format!("{} and then {}", text.join(" "), pick(6))}),
            ));
        }
        s.write(&ops).unwrap();
        for term in ["amber", "cobalt heron", "fjord*", "\"ember dune\""] {
            let fts = hivesync::query::fts_query(term).unwrap();
            for record in [Kind::Entity, Kind::Note] {
                for limit in [5usize, 20, 1000] {
                    let hits = s
                        .search(&SearchQuery {
                            text: term.into(),
                            records: Some(vec![record]),
                            limit,
                            ..Default::default()
                        })
                        .unwrap();
                    let want = search_sorting_every_match(&s, record, &fts, limit as i64);
                    assert_eq!(
                        hits.len(),
                        want.len(),
                        "{tokenizer:?} {term} {record:?} {limit}"
                    );
                    // Scores in the same order (rows of equal score may come in either order).
                    let got_scores: Vec<f64> = hits.iter().map(|h| h.score).collect();
                    let want_scores: Vec<f64> = want.iter().map(|w| w.2).collect();
                    assert_eq!(
                        got_scores, want_scores,
                        "{tokenizer:?} {term} {record:?} {limit}"
                    );
                    // Each returned row has the snippet and score the old plan gave it.
                    let all = search_sorting_every_match(&s, record, &fts, 10_000);
                    for h in &hits {
                        let w = all.iter().find(|w| w.0 == h.id).unwrap();
                        assert_eq!(
                            (&h.snippet, h.score),
                            (&w.1, w.2),
                            "{tokenizer:?} {term} {}",
                            h.id
                        );
                    }
                }
            }
            // Filters keep their meaning: every hit of a filtered search is in the namespace
            // and of the kind asked for, and none that qualifies is missed.
            for record in [Kind::Entity, Kind::Note] {
                let records = Some(vec![record]);
                let q = SearchQuery {
                    text: term.into(),
                    ns: Some("other".into()),
                    kind: Some("place".into()),
                    limit: 1000,
                    records: records.clone(),
                };
                let hits = s.search(&q).unwrap();
                assert!(hits.iter().all(|h| h.ns == "other" && h.kind == "place"));
                let qualifying: usize = s
                    .search(&SearchQuery {
                        text: term.into(),
                        limit: 1000,
                        records,
                        ..Default::default()
                    })
                    .unwrap()
                    .iter()
                    .filter(|h| h.ns == "other" && h.kind == "place")
                    .count();
                if term == "amber" {
                    assert!(qualifying > 0, "the corpus has rows for the filter");
                }
                assert_eq!(hits.len(), qualifying, "{tokenizer:?} {term} {record:?}");
                // A small limit: the best qualifying rows, in order, where most of the best
                // matches overall do not qualify.
                let few = s
                    .search(&SearchQuery {
                        limit: 3,
                        ..q.clone()
                    })
                    .unwrap();
                assert_eq!(
                    few[..],
                    hits[..hits.len().min(3)],
                    "{tokenizer:?} {term} {record:?}"
                );
            }
        }
    }
}

#[test]
fn an_embedding_is_stored_once_and_read_back_from_its_index() {
    let d = tempfile::tempdir().unwrap();
    let s = file_store(&d);
    s.write(&[ent("d", "a", "Ada")]).unwrap();
    let v = WriteOp::upsert(
        Kind::Vector,
        "d",
        json!({"subject": "a", "model": "m", "embedding": [0.5, -0.25, 1.0]}),
    );
    s.write(&[v]).unwrap();
    let (in_row, in_index): (bool, bool) = s
        .read(|c| {
            Ok(c.query_row(
                "SELECT embedding IS NOT NULL, EXISTS (SELECT 1 FROM vec_all x WHERE x.vid = v.rowid)
                 FROM vectors v",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?)
        })
        .unwrap();
    assert_eq!((in_row, in_index), (false, true), "one copy, in the index");
    assert_eq!(
        s.get_vector("d", "a", "m").unwrap().unwrap().embedding,
        [0.5, -0.25, 1.0]
    );
    let log = s.changes_since(0, &ChangeFilter::default(), 10).unwrap();
    assert_eq!(log[1].embedding.as_deref(), Some(&[0.5, -0.25, 1.0][..]));
    // A batch of many, the model new to it, then another batch.
    for b in 0..2 {
        let mut ops = Vec::new();
        for i in 0..100 {
            ops.push(ent("d", &format!("s{b}-{i}"), "x"));
        }
        for i in 0..100 {
            ops.push(WriteOp::upsert(
                Kind::Vector,
                "d",
                json!({"subject": format!("s{b}-{i}"), "model": "m2", "embedding": [0.5, i as f32, 1.0, 2.0]}),
            ));
        }
        s.write(&ops).unwrap();
    }
    let copies: i64 = s
        .read(|c| {
            Ok(c.query_row(
                "SELECT count(*) FROM vectors WHERE embedding IS NOT NULL",
                [],
                |r| r.get(0),
            )?)
        })
        .unwrap();
    assert_eq!(copies, 0, "no row keeps a second copy");
    assert!(s.check().unwrap().ok, "{:?}", s.check().unwrap().problems);
}

#[test]
fn the_log_keeps_every_version_of_an_embedding_it_holds_by_reference() {
    let d = tempfile::tempdir().unwrap();
    let s = file_store(&d);
    s.write(&[ent("d", "a", "Ada"), ent("d", "b", "Bo")])
        .unwrap();
    let vec = |subject: &str, e: [f32; 3]| {
        WriteOp::upsert(
            Kind::Vector,
            "d",
            json!({"subject": subject, "model": "m", "embedding": e}),
        )
    };
    s.write(&[vec("a", [1.0, 0.0, 0.0])]).unwrap(); // seq 3
    s.write(&[vec("b", [0.0, 1.0, 0.0])]).unwrap(); // seq 4
    let logged = |s: &Store| -> Vec<(i64, Option<Vec<f32>>)> {
        s.changes_since(2, &ChangeFilter::default(), 100)
            .unwrap()
            .into_iter()
            .map(|c| (c.seq, c.embedding))
            .collect()
    };
    let copies = |s: &Store| -> i64 {
        s.read(|c| {
            Ok(c.query_row(
                "SELECT count(*) FROM changes WHERE kind = 'vector' AND embedding IS NOT NULL",
                [],
                |r| r.get(0),
            )?)
        })
        .unwrap()
    };
    assert_eq!(
        copies(&s),
        0,
        "the current embeddings are logged by reference"
    );
    // Overwritten, kind-only rewrite, deleted by a cascade, and by another program's SQL: each
    // change logged before still reads what it logged.
    s.write(&[vec("a", [0.0, 0.0, 1.0])]).unwrap(); // seq 5
    s.write(&[vec("a", [0.0, 0.0, 1.0])]).unwrap(); // seq 6
    s.delete(Kind::Entity, "d", "b").unwrap(); // seq 7 (b), 8 (b's vector)
    s.read(|_| Ok(())).unwrap();
    {
        let c = hivesync::rusqlite::Connection::open(d.path().join("t.db")).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        c.execute("UPDATE vectors SET kind = 'other' WHERE subject = 'a'", [])
            .unwrap(); // seq 9
    }
    s.drain_fts_if_pending().unwrap();
    let want: Vec<(i64, Option<Vec<f32>>)> = vec![
        (3, Some(vec![1.0, 0.0, 0.0])),
        (4, Some(vec![0.0, 1.0, 0.0])),
        (5, Some(vec![0.0, 0.0, 1.0])),
        (6, Some(vec![0.0, 0.0, 1.0])),
        (7, None),
        (8, None),
        (9, Some(vec![0.0, 0.0, 1.0])),
    ];
    assert_eq!(logged(&s), want);
    assert!(s.check().unwrap().ok, "{:?}", s.check().unwrap().problems);
    // A replica built from this log has the same state.
    let r = Store::open_in_memory(StoreOptions::default()).unwrap();
    r.apply_changes(
        0,
        &s.changes_since(0, &ChangeFilter::default(), 100).unwrap(),
    )
    .unwrap();
    assert_eq!(
        r.digest(None).unwrap().sha256,
        s.digest(None).unwrap().sha256
    );
}

/// Issue 23, item 5: `[1e-30, 1e-30, 0]` passed the zero check, KNN ranked it first with a NULL
/// distance and `knn --like` failed. Embeddings whose squared length is not a normal f32 are
/// refused (too small and too large), and `check` names any stored before this rule (here one
/// written with plain SQL, which the index drain takes as it is).
#[test]
fn embeddings_too_small_or_large_for_cosine_are_refused_and_reported() {
    let d = tempfile::tempdir().unwrap();
    let s = file_store(&d);
    let v = |subject: &str, e: serde_json::Value| {
        WriteOp::upsert(
            Kind::Vector,
            "d",
            json!({"subject": subject, "model": "m", "embedding": e}),
        )
    };
    for id in ["ok", "bad", "small", "old"] {
        s.write(&[ent("d", id, id)]).unwrap();
    }
    s.write(&[v("ok", json!([1.0, 0.5, 0.0]))]).unwrap();
    for bad in [
        json!([1e-30, 1e-30, 0.0]),
        json!([1e20, 1.0, 0.0]),
        json!([1e-23, 0.0, 0.0]),
    ] {
        let e = s.write(&[v("bad", bad.clone())]).unwrap_err().to_string();
        assert!(e.contains("no usable direction"), "{bad}: {e}");
    }
    // Small but usable still goes in.
    s.write(&[v("small", json!([1e-10, 2e-10, 0.0]))]).unwrap();
    let q = KnnQuery {
        model: "m".into(),
        embedding: vec![1.0, 0.0, 0.0],
        k: 5,
        ns: Some("d".into()),
        kind: None,
    };
    assert_eq!(s.knn(&q).unwrap().len(), 2);
    assert!(s.check().unwrap().ok);
    {
        let w = s.pool().writer().unwrap();
        let blob = hivesync::model::embedding_to_blob(&[1e-30, 1e-30, 0.0]);
        w.execute(
            "INSERT INTO vectors(ns, subject, model, embedding) VALUES ('d', 'old', 'm', ?1)",
            [blob],
        )
        .unwrap();
    }
    // KNN skips it instead of failing on its missing distance.
    assert_eq!(s.knn(&q).unwrap().len(), 2);
    let r = s.check().unwrap();
    assert!(!r.ok);
    assert!(
        r.problems
            .iter()
            .any(|p| p.contains("(d, m, old)") && p.contains("no usable length")),
        "{:?}",
        r.problems
    );
}

/// Bytes the database takes (its pages in use, as the file holds them once checkpointed).
fn disk_bytes(s: &Store) -> u64 {
    let w = s.pool().writer().unwrap();
    let pragma = |p: &str| {
        w.query_row(&format!("PRAGMA {p}"), [], |r| r.get::<_, i64>(0))
            .unwrap()
    };
    ((pragma("page_count") - pragma("freelist_count")) * pragma("page_size")) as u64
}

/// Issue 23, item 2: each new (namespace, model) pair reserved a whole vec0 chunk (1,024
/// vectors): 20 writes of one 8,192-dimension vector in 20 new pairs grew a database to 706 MB,
/// 200 four-dimension vectors in 200 pairs to 25.7 MB. A pair now starts in a table of
/// 8-vector chunks: disk stays within a small multiple of the vectors' bytes plus a small
/// constant per pair.
#[test]
fn new_namespace_and_model_pairs_take_disk_in_proportion_to_their_vectors() {
    let d = tempfile::tempdir().unwrap();
    for (pairs, dims) in [(20usize, 8192usize), (200, 4)] {
        let path = d.path().join(format!("p{dims}.db"));
        let s = Store::open(&path, StoreOptions::default()).unwrap();
        let empty = disk_bytes(&s);
        for i in 0..pairs {
            let ns = format!("n{i}");
            let e: Vec<f32> = (0..dims).map(|j| ((i + j) % 7) as f32 + 1.0).collect();
            s.write(&[
                ent(&ns, "s", "s"),
                WriteOp::upsert(
                    Kind::Vector,
                    &ns,
                    json!({"subject": "s", "model": "m", "embedding": e}),
                ),
            ])
            .unwrap();
        }
        let grown = disk_bytes(&s) - empty;
        let floats = (pairs * dims * 4) as u64;
        eprintln!(
            "{pairs} pairs of {dims} dimensions: {grown} bytes on disk for {floats} bytes of floats ({:.1}x, {} bytes per pair)",
            grown as f64 / floats as f64,
            grown / pairs as u64
        );
        // vec0's smallest chunk holds 8 vectors: a pair of one vector takes at most 8 times
        // its bytes, plus its rows in the base, log and index tables.
        assert!(
            grown <= 9 * floats + pairs as u64 * 8 * 1024,
            "{pairs} pairs of {dims} dimensions took {grown} bytes"
        );
        assert!(s.check().unwrap().ok);
    }
}

/// A pair moves from the small-chunk table to the large one at `SMALL_PAIR_VECTORS` vectors,
/// written one by one or in one batch; KNN across namespaces merges pairs of both tables, and
/// equals a brute-force ranking; the index stays whole, also after deletes.
#[test]
fn a_growing_pair_moves_to_the_large_table_and_knn_reads_both() {
    use hivesync::schema::SMALL_PAIR_VECTORS;
    let d = tempfile::tempdir().unwrap();
    let s = file_store(&d);
    let n = SMALL_PAIR_VECTORS as usize + 40;
    let emb =
        |i: usize| -> Vec<f32> { vec![(i as f32 * 0.37).cos(), (i as f32 * 0.37).sin(), 0.25] };
    let vec_op = |ns: &str, i: usize| {
        WriteOp::upsert(
            Kind::Vector,
            ns,
            json!({"subject": format!("e{i}"), "model": "m", "embedding": emb(i)}),
        )
    };
    let mut ents = Vec::new();
    for ns in ["big1", "big2", "few"] {
        for i in 0..n {
            ents.push(ent(ns, &format!("e{i}"), "x"));
        }
    }
    s.write(&ents).unwrap();
    // One by one in big1, in one batch in big2, five in few.
    for i in 0..n {
        s.write(&[vec_op("big1", i)]).unwrap();
    }
    s.write(&(0..n).map(|i| vec_op("big2", i)).collect::<Vec<_>>())
        .unwrap();
    s.write(&(0..5).map(|i| vec_op("few", i)).collect::<Vec<_>>())
        .unwrap();
    let table = |ns: &str| -> String {
        s.read(|c| Ok(hivesync::schema::model_by_name(c, ns, "m")?.unwrap().table))
            .unwrap()
    };
    assert_eq!(table("big1"), "vec_d3");
    assert_eq!(table("big2"), "vec_d3");
    assert_eq!(table("few"), "vec_s3");
    assert!(s.check().unwrap().ok, "{:?}", s.check().unwrap().problems);
    let q = [0.9f32, 0.1, 0.2];
    let cos = |e: &[f32]| {
        let dot: f32 = e.iter().zip(q).map(|(a, b)| a * b).sum();
        let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        1.0 - dot / (n(e) * n(&q))
    };
    let mut want: Vec<(String, String, f32)> = ["big1", "big2"]
        .iter()
        .flat_map(|ns| (0..n).map(move |i| (ns.to_string(), format!("e{i}"), i)))
        .chain((0..5).map(|i| ("few".to_string(), format!("e{i}"), i)))
        .map(|(ns, id, i)| (ns, id, cos(&emb(i))))
        .collect();
    want.sort_by(|a, b| a.2.total_cmp(&b.2));
    let knn = |ns: Option<&str>, k| {
        s.knn(&KnnQuery {
            model: "m".into(),
            embedding: q.to_vec(),
            k,
            ns: ns.map(Into::into),
            kind: None,
        })
        .unwrap()
    };
    let got = knn(None, 400);
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!((g.distance as f32 - w.2).abs() < 1e-5, "{g:?} vs {w:?}");
    }
    let few: Vec<String> = knn(Some("few"), 10)
        .into_iter()
        .map(|h| h.subject)
        .collect();
    assert_eq!(few.len(), 5);
    // Deletes and rewrites keep the index whole in both tables.
    s.write(&[
        WriteOp::delete(Kind::Entity, "big1", "e0"),
        WriteOp::delete(Kind::Entity, "few", "e1"),
        vec_op("big2", 3),
        vec_op("few", 2),
    ])
    .unwrap();
    assert!(s.check().unwrap().ok, "{:?}", s.check().unwrap().problems);
    assert_eq!(knn(Some("few"), 10).len(), 4);
    assert_eq!(knn(Some("big1"), 1000).len(), n - 1);
}

/// Issue 23, item 10: the exactly-once record was never trimmed (1,000,000 client ids took
/// 112 MB while retention held the log at 1,000 rows). It is kept as long as the log: records
/// of writes that left the log go with them; the rest still answer a re-sent write.
#[test]
fn the_exactly_once_record_is_trimmed_with_the_log() {
    use hivesync::model::Origin;
    let d = tempfile::tempdir().unwrap();
    let s = file_store(&d);
    let origin = |c: usize, n: i64| Origin {
        client: format!("c{c}"),
        n,
        entries: Vec::new(),
        principal: None,
    };
    for c in 0..500 {
        s.write_from(&[ent("d", &format!("e{c}"), "x")], Some(&origin(c, 1)))
            .unwrap();
    }
    let records = |s: &Store| -> i64 {
        s.read(|c| Ok(c.query_row("SELECT count(*) FROM client_writes", [], |r| r.get(0))?))
            .unwrap()
    };
    assert_eq!(records(&s), 500);
    assert_eq!(s.trim_changes(Some(100), None).unwrap(), 400);
    assert_eq!(
        records(&s),
        100,
        "only the writes still in the log keep a record"
    );
    // A recent client's re-sent write is answered from its record; an old one's is applied
    // again (the documented consequence of trimming).
    let again = s
        .write_from(&[ent("d", "e499", "x")], Some(&origin(499, 1)))
        .unwrap();
    assert!(again.replayed);
    let old = s
        .write_from(&[ent("d", "e0", "x")], Some(&origin(0, 1)))
        .unwrap();
    assert!(!old.replayed);
}
