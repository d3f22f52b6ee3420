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
        .query_row("SELECT count(*) FROM vec_1", [], |r| r.get(0))
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
