use super::*;
use crate::model::{Kind, Op, WriteOp};
use crate::{ops, query};
use serde_json::json;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn db() -> Connection {
    open_in_memory(&SchemaOptions::default()).unwrap()
}

fn search_ids(c: &Connection, text: &str) -> Vec<String> {
    // What every hivesync transaction does before it commits (and a node does for others').
    drain_fts_queue(c).unwrap();
    let q = query::SearchQuery {
        text: text.into(),
        limit: 10,
        ..Default::default()
    };
    query::search(c, &q, 0)
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect()
}

#[test]
fn migrations_are_recorded_and_idempotent() {
    let c = db();
    assert_eq!(current_version(&c).unwrap(), SCHEMA_VERSION);
    assert_eq!(
        migrate(&c, &SchemaOptions::default()).unwrap(),
        SCHEMA_VERSION
    );
    let n: i64 = c
        .query_row("SELECT count(*) FROM schema_migrations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, SCHEMA_VERSION);
}

#[test]
fn a_newer_schema_is_refused() {
    let c = db();
    c.execute(
        "INSERT INTO schema_migrations VALUES (999, 'from the future', 0)",
        [],
    )
    .unwrap();
    let e = migrate(&c, &SchemaOptions::default()).unwrap_err();
    assert!(matches!(e, Error::SchemaTooNew { found: 999, .. }), "{e}");
    assert!(e.to_string().contains("upgrade hivesync"));
}

#[test]
fn someone_elses_database_is_neither_migrated_nor_read() {
    let c = Connection::open_in_memory().unwrap();
    c.execute_batch("CREATE TABLE invoices(id INTEGER PRIMARY KEY, total REAL)")
        .unwrap();
    for e in [
        migrate(&c, &SchemaOptions::default()).unwrap_err(),
        check_version(&c).unwrap_err(),
    ] {
        let m = e.to_string();
        assert!(
            m.contains("not a hivesync database") && m.contains("invoices"),
            "{m}"
        );
    }
    let n: i64 = c
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1, "nothing was created in it");
}

#[test]
fn plain_sql_writes_are_indexed_and_logged() {
    let c = db();
    c.execute("INSERT INTO entities(ns, id, kind, name) VALUES ('default', 'e1', 'person', 'Grace Hopper')", [])
        .unwrap();
    assert_eq!(search_ids(&c, "hopper"), ["e1"]);
    let ch = query::changes_since(&c, 0, &Default::default(), 10).unwrap();
    assert_eq!(ch.len(), 1);
    assert_eq!(
        (ch[0].seq, ch[0].tx, ch[0].kind, ch[0].op),
        (1, 1, Kind::Entity, Op::Upsert)
    );
    let img: serde_json::Value = serde_json::from_str(ch[0].data.as_deref().unwrap()).unwrap();
    assert_eq!(img["name"], "Grace Hopper");
    assert_eq!(img["properties"], json!({}));

    c.execute(
        "UPDATE entities SET name = 'Rear Admiral Hopper' WHERE id = 'e1'",
        [],
    )
    .unwrap();
    assert_eq!(search_ids(&c, "admiral"), ["e1"]);
    assert!(search_ids(&c, "grace").is_empty());
    c.execute("DELETE FROM entities WHERE id = 'e1'", [])
        .unwrap();
    assert!(search_ids(&c, "hopper").is_empty());
    let ch = query::changes_since(&c, 0, &Default::default(), 10).unwrap();
    assert_eq!(
        ch.iter().map(|c| c.op).collect::<Vec<_>>(),
        [Op::Upsert, Op::Upsert, Op::Delete]
    );
    assert_eq!(ch.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2, 3]);
}

#[test]
fn moving_a_row_by_sql_logs_a_delete_of_the_old_key() {
    let c = db();
    c.execute(
        "INSERT INTO entities(ns, id, kind, name) VALUES ('a', 'e1', 'k', 'n')",
        [],
    )
    .unwrap();
    c.execute("UPDATE entities SET ns = 'b' WHERE id = 'e1'", [])
        .unwrap();
    let ch = query::changes_since(&c, 0, &Default::default(), 10).unwrap();
    let got: Vec<_> = ch.iter().map(|c| (c.ns.as_str(), c.op)).collect();
    assert_eq!(
        got,
        [("a", Op::Upsert), ("a", Op::Delete), ("b", Op::Upsert)]
    );
}

#[test]
fn deleting_an_entity_cascades_to_its_edges_and_logs_them() {
    let c = db();
    for id in ["a", "b"] {
        ops::execute(
            &c,
            &WriteOp::upsert(Kind::Entity, "d", json!({"id": id, "name": id})),
            1,
        )
        .unwrap();
    }
    ops::execute(
        &c,
        &WriteOp::upsert(
            Kind::Edge,
            "d",
            json!({"id": "x", "source": "a", "target": "b", "relation": "r"}),
        ),
        1,
    )
    .unwrap();
    ops::execute(&c, &WriteOp::delete(Kind::Entity, "d", "a"), 1).unwrap();
    assert!(query::get_edge(&c, "d", "x").unwrap().is_none());
    let ch = query::changes_since(&c, 3, &Default::default(), 10).unwrap();
    let got: Vec<_> = ch.iter().map(|c| (c.kind, c.op, c.id.as_str())).collect();
    assert_eq!(
        got,
        [
            (Kind::Entity, Op::Delete, "a"),
            (Kind::Edge, Op::Delete, "x")
        ]
    );
}

#[test]
fn vectors_keep_their_vec0_index_in_step() {
    let c = db();
    ops::execute(
        &c,
        &WriteOp::upsert(
            Kind::Entity,
            "d",
            json!({"id": "a", "kind": "doc", "name": "a"}),
        ),
        1,
    )
    .unwrap();
    ops::execute(
        &c,
        &WriteOp::upsert(Kind::Note, "d", json!({"id": "n", "content": "text"})),
        1,
    )
    .unwrap();
    let v = |s: &str, e: serde_json::Value| {
        WriteOp::upsert(
            Kind::Vector,
            "d",
            json!({"subject": s, "model": "m", "embedding": e}),
        )
    };
    ops::execute(&c, &v("a", json!([1.0, 0.0])), 1).unwrap();
    ops::execute(&c, &v("n", json!([0.0, 1.0])), 1).unwrap();
    let q = |e: Vec<f32>, kind: Option<&str>| {
        // What every hivesync transaction does before it commits: vec0 upkeep is queued.
        drain_fts_queue(&c).unwrap();
        let q = query::KnnQuery {
            model: "m".into(),
            embedding: e,
            k: 5,
            ns: Some("d".into()),
            kind: kind.map(Into::into),
        };
        query::knn(&c, &q)
            .unwrap()
            .into_iter()
            .map(|h| h.subject)
            .collect::<Vec<_>>()
    };
    assert_eq!(q(vec![1.0, 0.1], None), ["a", "n"]);
    assert_eq!(q(vec![1.0, 0.1], Some("note")), ["n"]);
    ops::execute(&c, &v("a", json!([0.0, -1.0])), 1).unwrap();
    assert_eq!(q(vec![1.0, 0.1], None), ["n", "a"]);
    ops::execute(&c, &WriteOp::delete(Kind::Entity, "d", "a"), 1).unwrap();
    assert_eq!(q(vec![1.0, 0.1], None), ["n"]);
    let n: i64 = c
        .query_row("SELECT count(*) FROM vec_all", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn trigram_tokenizer_matches_inside_cjk_text() {
    let c = open_in_memory(&SchemaOptions {
        tokenizer: Tokenizer::Trigram,
    })
    .unwrap();
    assert_eq!(tokenizer(&c).unwrap(), Tokenizer::Trigram);
    ops::execute(
        &c,
        &WriteOp::upsert(
            Kind::Note,
            "d",
            json!({"id": "n1", "content": "東京都は日本の首都です"}),
        ),
        1,
    )
    .unwrap();
    assert_eq!(search_ids(&c, "日本の"), ["n1"]);
    let u = db();
    ops::execute(
        &u,
        &WriteOp::upsert(
            Kind::Note,
            "d",
            json!({"id": "n1", "content": "東京都は日本の首都です"}),
        ),
        1,
    )
    .unwrap();
    assert!(
        search_ids(&u, "日本の").is_empty(),
        "unicode61 sees the whole run as one token"
    );
}

#[test]
fn the_queue_drains_to_what_the_rows_hold() {
    // Several changes to the same rows between two drains, as a plain-SQL transaction (or
    // several, by another program) can make them: the index must end up matching the table.
    let c = db();
    c.execute_batch(
        "INSERT INTO entities(ns, id, kind, name) VALUES ('d', 'a', 'k', 'alpha one'),
           ('d', 'b', 'k', 'beta one'), ('d', 'd', 'k', 'delta one');
         INSERT INTO notes(ns, id, content) VALUES ('d', 'n1', 'note one'), ('d', 'n2', 'note gone');",
    )
    .unwrap();
    drain_fts_queue(&c).unwrap();
    c.execute_batch(
        "BEGIN;
         UPDATE entities SET name = 'alpha two' WHERE id = 'a';
         UPDATE entities SET name = 'alpha three' WHERE id = 'a';
         DELETE FROM entities WHERE id = 'b';
         INSERT INTO entities(ns, id, kind, name) VALUES ('d', 'c', 'k', 'gamma one');
         UPDATE entities SET name = 'gamma two' WHERE id = 'c';
         DELETE FROM entities WHERE id = 'd';
         INSERT INTO entities(ns, id, kind, name) VALUES ('d', 'e', 'k', 'epsilon one');
         DELETE FROM entities WHERE id = 'e';
         INSERT INTO entities(ns, id, kind, name) VALUES ('d', 'g', 'k', 'zeta one');
         UPDATE entities SET kind = 'other' WHERE id = 'g';
         UPDATE notes SET content = 'note two' WHERE id = 'n1';
         DELETE FROM notes WHERE id = 'n2';
         COMMIT;",
    )
    .unwrap();
    // 'e' held the highest rowid and was deleted: 'g' reuses it.
    let same: bool = c
        .query_row(
            "SELECT (SELECT max(rowid) FROM entities) = (SELECT rowid FROM entities WHERE id = 'g')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(same);
    assert_eq!(search_ids(&c, "alpha"), ["a"]);
    assert!(search_ids(&c, "two").contains(&"c".to_string()));
    assert!(search_ids(&c, "beta").is_empty());
    assert!(search_ids(&c, "delta").is_empty());
    assert!(search_ids(&c, "epsilon").is_empty());
    assert_eq!(search_ids(&c, "zeta"), ["g"]);
    assert!(search_ids(&c, "gone").is_empty());
    assert_eq!(search_ids(&c, "note"), ["n1"]);
    for fts in ["entities_fts", "notes_fts"] {
        c.execute(
            &format!("INSERT INTO {fts}({fts}, rank) VALUES ('integrity-check', 1)"),
            [],
        )
        .unwrap();
    }
}

/// A vector op of `model` for `subject` in `ns`.
pub(super) fn vec_op(ns: &str, subject: &str, model: &str, e: Vec<f32>) -> WriteOp {
    WriteOp::upsert(
        Kind::Vector,
        ns,
        json!({"subject": subject, "model": model, "embedding": e}),
    )
}

pub(super) fn ent_op(ns: &str, id: &str, kind: &str) -> WriteOp {
    WriteOp::upsert(
        Kind::Entity,
        ns,
        json!({"id": id, "kind": kind, "name": id}),
    )
}

fn knn_subjects(c: &Connection, ns: Option<&str>, model: &str, e: Vec<f32>) -> Vec<String> {
    drain_fts_queue(c).unwrap();
    let q = query::KnnQuery {
        model: model.into(),
        embedding: e,
        k: 10,
        ns: ns.map(Into::into),
        kind: None,
    };
    query::knn(c, &q)
        .unwrap()
        .into_iter()
        .map(|h| format!("{}/{}", h.ns, h.subject))
        .collect()
}

fn schema_rows(c: &Connection) -> i64 {
    c.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn registering_models_of_a_seen_dimension_count_adds_no_schema() {
    // The attack of issue 12: every model used to add a vec0 table (with its shadow tables)
    // and three triggers, so each registration re-parsed an ever larger schema and every vector
    // write evaluated every model's trigger. Now it is a row in vector_models.
    let c = db();
    let namespaces: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
    for ns in &namespaces {
        ops::execute(&c, &ent_op(ns, "s", "doc"), 1).unwrap();
    }
    let register = |i: usize| {
        let ns = &namespaces[i / 50];
        ops::execute(
            &c,
            &vec_op(ns, "s", &format!("m{i}"), vec![1.0, i as f32, 0.5, 0.25]),
            1,
        )
        .unwrap();
    };
    register(0);
    register(1);
    drain_fts_queue(&c).unwrap();
    let after_two = schema_rows(&c);
    for i in 2..500 {
        register(i);
    }
    drain_fts_queue(&c).unwrap();
    assert_eq!(schema_rows(&c), after_two, "500 models of 4 dimensions");
    let models: i64 = c
        .query_row("SELECT count(*) FROM vector_models", [], |r| r.get(0))
        .unwrap();
    assert_eq!(models, 500);
    let triggers: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'vectors'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(triggers, 3, "the fixed insert, update and delete triggers");
    // Each model still finds its own vector, and only it.
    assert_eq!(
        knn_subjects(&c, Some("n9"), "m499", vec![1.0, 499.0, 0.5, 0.25]),
        ["n9/s"]
    );
    assert!(vec_index_problems(&c).unwrap().is_empty());
    // A new dimension count is a new table (once).
    ops::execute(&c, &vec_op("n0", "s", "wide", vec![1.0; 8]), 1).unwrap();
    assert!(schema_rows(&c) > after_two);
}

#[test]
fn models_are_per_namespace_and_capped() {
    let c = db();
    for ns in ["a", "b"] {
        ops::execute(&c, &ent_op(ns, "x", "doc"), 1).unwrap();
        ops::execute(&c, &ent_op(ns, "y", "doc"), 1).unwrap();
    }
    // The probe: namespace a fixes `minilm` at 2 dimensions; b still uses its own `minilm`.
    ops::execute(&c, &vec_op("a", "x", "minilm", vec![1.0, 0.0]), 1).unwrap();
    ops::execute(&c, &vec_op("a", "y", "minilm", vec![0.0, 1.0]), 1).unwrap();
    let mut b = vec![0.0f32; 384];
    b[0] = 1.0;
    ops::execute(&c, &vec_op("b", "x", "minilm", b.clone()), 1).unwrap();
    b[1] = 2.0;
    ops::execute(&c, &vec_op("b", "y", "minilm", b.clone()), 1).unwrap();
    let e = ops::execute(&c, &vec_op("a", "x", "minilm", vec![1.0; 384]), 1).unwrap_err();
    assert!(
        e.to_string()
            .contains("has 2 dimensions in namespace \"a\""),
        "{e}"
    );
    assert_eq!(
        knn_subjects(&c, Some("a"), "minilm", vec![1.0, 0.1]),
        ["a/x", "a/y"]
    );
    assert_eq!(
        knn_subjects(&c, Some("b"), "minilm", b.clone()),
        ["b/y", "b/x"]
    );
    // Without a namespace: every namespace whose model has the query's dimension count.
    assert_eq!(
        knn_subjects(&c, None, "minilm", vec![0.1, 1.0]),
        ["a/y", "a/x"]
    );
    let e = query::knn(
        &c,
        &query::KnnQuery {
            model: "minilm".into(),
            embedding: vec![1.0; 3],
            k: 1,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("2 or 384 dimensions"), "{e}");

    // The cap: MAX_MODELS_PER_NS models per namespace, counted with the one `a` has.
    for i in 1..MAX_MODELS_PER_NS {
        ops::execute(&c, &vec_op("a", "x", &format!("m{i}"), vec![1.0, 1.0]), 1).unwrap();
    }
    let e = ops::execute(&c, &vec_op("a", "x", "one-too-many", vec![1.0, 1.0]), 1).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    assert!(
        msg.contains("MAX_MODELS_PER_NS = 64") && msg.contains("one-too-many"),
        "{msg}"
    );
    // Models already registered take writes; other namespaces are not affected.
    ops::execute(&c, &vec_op("a", "y", "m5", vec![0.5, 1.0]), 1).unwrap();
    ops::execute(&c, &vec_op("b", "x", "one-too-many", vec![1.0, 1.0]), 1).unwrap();
    // Model names are still validated.
    let e = ops::execute(&c, &vec_op("b", "x", "bad\u{1}name", vec![1.0, 1.0]), 1).unwrap_err();
    assert!(e.to_string().contains("invalid model name"), "{e}");
    drain_fts_queue(&c).unwrap();
    assert!(vec_index_problems(&c).unwrap().is_empty());
}

pub(super) fn knn_now(
    c: &Connection,
    model: &str,
    ns: Option<&str>,
    e: &[f32],
) -> Vec<(String, String, f64)> {
    drain_fts_queue(c).unwrap();
    let q = query::KnnQuery {
        model: model.into(),
        embedding: e.to_vec(),
        k: 50,
        ns: ns.map(Into::into),
        kind: None,
    };
    query::knn(c, &q)
        .unwrap()
        .into_iter()
        .map(|h| (h.ns, h.subject, h.distance))
        .collect()
}

#[test]
fn plain_sql_vector_writes_are_indexed_at_the_next_drain() {
    let c = db();
    ops::execute(&c, &ent_op("d", "a", "doc"), 1).unwrap();
    ops::execute(&c, &ent_op("d", "b", "doc"), 1).unwrap();
    ops::execute(&c, &vec_op("d", "a", "m", vec![1.0, 0.0]), 1).unwrap();
    drain_fts_queue(&c).unwrap();
    c.execute_batch(
        "BEGIN;
         INSERT INTO vectors(ns, subject, model, kind, embedding) VALUES ('d', 'b', 'm', 'doc', vec_f32('[0.0, 1.0]'));
         UPDATE vectors SET embedding = vec_f32('[0.0, -1.0]') WHERE subject = 'a';
         UPDATE vectors SET embedding = vec_f32('[1.0, 1.0]') WHERE subject = 'a';
         DELETE FROM vectors WHERE subject = 'b';
         INSERT INTO vectors(ns, subject, model, kind, embedding) VALUES ('d', 'b', 'm', 'doc', vec_f32('[-1.0, 0.0]'));
         COMMIT;",
    )
    .unwrap();
    assert_eq!(
        knn_subjects(&c, Some("d"), "m", vec![1.0, 0.0]),
        ["d/a", "d/b"]
    );
    let d = knn_now(&c, "m", Some("d"), &[1.0, 0.0]);
    assert!((d[0].2 - (1.0 - 0.5f64.sqrt())).abs() < 1e-6, "{d:?}");
    assert!(vec_index_problems(&c).unwrap().is_empty());
    // A vector of a model its namespace has not registered is reported, not indexed...
    c.execute(
        "INSERT INTO vectors(ns, subject, model, kind, embedding) VALUES ('d', 'a', 'later', 'doc', vec_f32('[0.0, 1.0]'))",
        [],
    )
    .unwrap();
    drain_fts_queue(&c).unwrap();
    assert_eq!(vec_index_problems(&c).unwrap().len(), 1);
    // ... until a write registers the model, which indexes it.
    ops::execute(&c, &vec_op("d", "b", "later", vec![1.0, 0.0]), 1).unwrap();
    assert_eq!(
        knn_subjects(&c, Some("d"), "later", vec![0.0, 1.0]),
        ["d/a", "d/b"]
    );
    assert!(vec_index_problems(&c).unwrap().is_empty());
}
