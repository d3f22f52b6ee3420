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
        .query_row("SELECT count(*) FROM vec_d2", [], |r| r.get(0))
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
fn vec_op(ns: &str, subject: &str, model: &str, e: Vec<f32>) -> WriteOp {
    WriteOp::upsert(
        Kind::Vector,
        ns,
        json!({"subject": subject, "model": model, "embedding": e}),
    )
}

fn ent_op(ns: &str, id: &str, kind: &str) -> WriteOp {
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

/// What schema 4's `ensure_model` did for a new model, verbatim: a vec0 table of its own, three
/// triggers of its own, and a backfill.
fn register_model_v4(c: &Connection, model: &str, dims: usize) {
    c.execute(
        "INSERT INTO vector_models(model, dims) VALUES (?1, ?2)",
        rusqlite::params![model, dims as i64],
    )
    .unwrap();
    let id = c.last_insert_rowid();
    let t = format!("vec_{id}");
    let m = format!("'{}'", model.replace('\'', "''"));
    c.execute_batch(&format!(
        "CREATE VIRTUAL TABLE {t} USING vec0(
           embedding float[{dims}] distance_metric=cosine, ns text partition key, kind text);
         CREATE TRIGGER vectors_ai_{id} AFTER INSERT ON vectors WHEN new.model = {m} BEGIN
           INSERT INTO {t}(rowid, embedding, ns, kind) VALUES (new.rowid, new.embedding, new.ns, new.kind);
         END;
         CREATE TRIGGER vectors_au_{id} AFTER UPDATE ON vectors WHEN old.model = {m} OR new.model = {m} BEGIN
           DELETE FROM {t} WHERE rowid = old.rowid;
           INSERT INTO {t}(rowid, embedding, ns, kind)
             SELECT new.rowid, new.embedding, new.ns, new.kind WHERE new.model = {m};
         END;
         CREATE TRIGGER vectors_ad_{id} AFTER DELETE ON vectors WHEN old.model = {m} BEGIN
           DELETE FROM {t} WHERE rowid = old.rowid;
         END;
         INSERT INTO {t}(rowid, embedding, ns, kind)
           SELECT rowid, embedding, ns, kind FROM vectors WHERE model = {m};"
    ))
    .unwrap();
}

/// Schema 4's KNN query on a model's own table.
fn knn_v4(c: &Connection, table: &str, ns: Option<&str>, e: &[f32]) -> Vec<(String, String, f64)> {
    let cond = if ns.is_some() { " AND ns = ?3" } else { "" };
    let sql = format!(
        "SELECT v.ns, v.subject, m.distance
         FROM (SELECT rowid, distance FROM {table} WHERE embedding MATCH ?1 AND k = ?2{cond}) m
         JOIN vectors v ON v.rowid = m.rowid ORDER BY m.distance"
    );
    let mut st = c.prepare(&sql).unwrap();
    let blob = crate::model::embedding_to_blob(e);
    let map = |r: &rusqlite::Row<'_>| Ok((r.get(0)?, r.get(1)?, r.get(2)?));
    let rows = match ns {
        Some(ns) => st.query_map(rusqlite::params![blob, 50, ns], map),
        None => st.query_map(rusqlite::params![blob, 50], map),
    };
    rows.unwrap().collect::<rusqlite::Result<_>>().unwrap()
}

fn knn_now(c: &Connection, model: &str, ns: Option<&str>, e: &[f32]) -> Vec<(String, String, f64)> {
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

/// Three global models (one with no vectors left) and vectors in two namespaces, written into
/// a schema-4 file with the old per-model triggers in place.
fn fill_schema_4(c: &Connection) {
    register_model_v4(c, "m2", 2);
    register_model_v4(c, "m3", 3);
    register_model_v4(c, "unused", 5);
    let mut sql = String::new();
    for ns in ["a", "b"] {
        for i in 0..12 {
            sql.push_str(&format!(
                "INSERT INTO entities(ns, id, kind, name) VALUES ('{ns}', 'e{i}', 'k{}', 'e{i}');",
                i % 2
            ));
            let a = i as f32 * 0.4;
            sql.push_str(&format!(
                "INSERT INTO vectors(ns, subject, model, kind, embedding) VALUES
                   ('{ns}', 'e{i}', 'm2', 'k{}', vec_f32('[{}, {}]')),
                   ('{ns}', 'e{i}', 'm3', 'k{}', vec_f32('[{}, {}, 0.5]'));",
                i % 2,
                a.cos(),
                a.sin(),
                i % 2,
                a.sin(),
                a.cos()
            ));
        }
    }
    sql.push_str("DELETE FROM vectors WHERE ns = 'b' AND subject = 'e3' AND model = 'm2';");
    c.execute_batch(&sql).unwrap();
}

#[test]
fn migration_5_converts_per_model_tables_and_triggers() {
    register_extensions();
    let c = Connection::open_in_memory().unwrap();
    configure(&c).unwrap();
    assert_eq!(migrate_to(&c, &SchemaOptions::default(), 4).unwrap(), 4);
    fill_schema_4(&c);
    let probes: [(&str, &str, Vec<f32>); 2] = [
        ("vec_1", "m2", vec![0.9, 0.3]),
        ("vec_2", "m3", vec![0.2, 0.7, -0.1]),
    ];
    let mut before = Vec::new();
    for (t, _, e) in &probes {
        for ns in [None, Some("a"), Some("b")] {
            before.push(knn_v4(&c, t, ns, e));
        }
    }
    assert_eq!(before[0].len(), 23, "m2 in both namespaces, one deleted");
    assert!(before.iter().all(|r| !r.is_empty()));
    let changes_before = query::head(&c).unwrap();
    let objects_v4: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name GLOB 'vec_[0-9]*' OR name GLOB 'vectors_a?_[0-9]*'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(objects_v4 > 9, "the old layout is in place: {objects_v4}");

    assert_eq!(
        migrate(&c, &SchemaOptions::default()).unwrap(),
        SCHEMA_VERSION
    );

    let leftovers: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name GLOB 'vec_[0-9]*' OR name GLOB 'vectors_a?_[0-9]*'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(leftovers, 0, "per-model tables and triggers are gone");
    let mut regs: Vec<(String, String, usize)> = models(&c)
        .unwrap()
        .into_iter()
        .map(|m| (m.ns, m.model, m.dims))
        .collect();
    regs.sort();
    let want = [
        ("a", "m2", 2),
        ("a", "m3", 3),
        ("b", "m2", 2),
        ("b", "m3", 3),
    ];
    assert_eq!(
        regs,
        want.map(|(n, m, d)| (n.to_string(), m.to_string(), d))
    );
    assert!(vec_index_problems(&c).unwrap().is_empty());
    // The same results, distances included, as the old layout gave.
    let mut after = Vec::new();
    for (_, m, e) in &probes {
        for ns in [None, Some("a"), Some("b")] {
            after.push(knn_now(&c, m, ns, e));
        }
    }
    assert_eq!(after, before);
    assert_eq!(
        query::head(&c).unwrap(),
        changes_before,
        "the migration logs nothing"
    );
    // The migrated file takes writes: a new vector in a, a namespace's own m2 at 4 dimensions,
    // a delete, and the vectors triggers still log.
    ops::execute(&c, &vec_op("a", "e3", "m3", vec![0.2, 0.7, -0.1]), 1).unwrap();
    ops::execute(&c, &ent_op("c", "z", "k0"), 1).unwrap();
    ops::execute(&c, &vec_op("c", "z", "m2", vec![1.0, 0.0, 0.0, 1.0]), 1).unwrap();
    ops::execute(&c, &WriteOp::delete(Kind::Entity, "b", "e0"), 1).unwrap();
    assert_eq!(knn_now(&c, "m3", Some("a"), &[0.2, 0.7, -0.1])[0].1, "e3");
    assert_eq!(knn_now(&c, "m2", None, &[1.0, 0.0, 0.0, 1.0])[0].1, "z");
    assert!(!knn_now(&c, "m2", Some("b"), &[1.0, 0.0])
        .iter()
        .any(|h| h.1 == "e0"));
    assert!(vec_index_problems(&c).unwrap().is_empty());
    assert!(query::head(&c).unwrap() > changes_before);
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

#[test]
fn migration_7_keeps_each_embedding_once_and_changes_nothing_else() {
    register_extensions();
    let c = Connection::open_in_memory().unwrap();
    configure(&c).unwrap();
    assert_eq!(migrate_to(&c, &SchemaOptions::default(), 6).unwrap(), 6);
    ops::execute(&c, &ent_op("d", "a", "doc"), 1).unwrap();
    ops::execute(&c, &ent_op("d", "b", "doc"), 1).unwrap();
    ensure_model(&c, "d", "m", 2, ModelLimit::Enforce).unwrap();
    c.execute_batch(
        "INSERT INTO vectors(ns, subject, model, kind, embedding) VALUES ('d', 'a', 'm', 'doc', vec_f32('[1.0, 0.0]'));
         INSERT INTO vectors(ns, subject, model, kind, embedding) VALUES ('d', 'b', 'm', 'doc', vec_f32('[0.5, 0.5]'));
         INSERT INTO vectors(ns, subject, model, kind, embedding) VALUES ('d', 'b', 'unregistered', 'doc', vec_f32('[0.5, 0.5]'));",
    )
    .unwrap();
    drain_fts_queue(&c).unwrap();
    let rows = |c: &Connection, emb: &str| -> Vec<(String, String, String, Vec<u8>)> {
        c.prepare(&format!(
            "SELECT subject, model, kind, {emb} FROM vectors ORDER BY rowid"
        ))
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
    };
    let rows_before = rows(&c, "embedding");
    let knn_before = knn_now(&c, "m", Some("d"), &[1.0, 0.0]);
    let head = query::head(&c).unwrap();
    let log_before: Vec<Option<Vec<u8>>> = c
        .prepare("SELECT embedding FROM changes ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();

    assert_eq!(
        migrate(&c, &SchemaOptions::default()).unwrap(),
        SCHEMA_VERSION
    );

    let copies: Vec<(String, String, bool)> = c
        .prepare("SELECT subject, model, embedding IS NOT NULL FROM vectors ORDER BY rowid")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let s = |a: &str, b: &str, k| (a.to_string(), b.to_string(), k);
    assert_eq!(
        copies,
        [
            s("a", "m", false),
            s("b", "m", false),
            s("b", "unregistered", true)
        ],
        "indexed rows give up their copy; an unindexed one keeps it"
    );
    assert_eq!(
        rows(&c, &embedding_sql("vectors.")),
        rows_before,
        "every embedding reads back"
    );
    assert_eq!(knn_now(&c, "m", Some("d"), &[1.0, 0.0]), knn_before);
    assert_eq!(query::head(&c).unwrap(), head, "the migration logs nothing");
    assert_eq!(
        vec_index_problems(&c).unwrap().len(),
        1,
        "the unregistered one, as before"
    );
    // A plain-SQL update of a row the index holds: logged with its embedding, kept indexed.
    c.execute(
        "UPDATE vectors SET kind = 'memo' WHERE subject = 'a' AND model = 'm'",
        [],
    )
    .unwrap();
    drain_fts_queue(&c).unwrap();
    let logged: Option<Vec<u8>> = c
        .query_row(
            "SELECT embedding FROM changes ORDER BY seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        logged,
        log_before.iter().flatten().next().cloned(),
        "a's embedding, from the index"
    );
    assert_eq!(knn_now(&c, "m", Some("d"), &[1.0, 0.0])[0].1, "a");
    let a_copy: bool = c
        .query_row(
            "SELECT embedding IS NOT NULL FROM vectors WHERE subject = 'a' AND model = 'm'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(!a_copy, "moved back into the index alone");
    // Writes through the store path keep one copy and log the embedding.
    ops::execute(&c, &vec_op("d", "b", "m", vec![0.0, 1.0]), 1).unwrap();
    let mut del = WriteOp::delete(Kind::Vector, "d", "a");
    del.model = Some("m".into());
    ops::execute(&c, &del, 1).unwrap();
    drain_fts_queue(&c).unwrap();
    assert_eq!(
        knn_now(&c, "m", Some("d"), &[0.0, 1.0])
            .iter()
            .map(|h| h.1.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
    assert_eq!(vec_index_problems(&c).unwrap().len(), 1);
}
