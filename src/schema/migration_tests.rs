//! Migrations 5 and 7 on databases made by the schema before each, with the tests' helpers.

use super::tests::{ent_op, knn_now, vec_op};
use super::*;
use crate::model::{Kind, WriteOp};
use crate::{ops, query};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

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

/// A schema-6 database with two entities, model `m` (2 dimensions) registered, and three
/// vectors written with plain SQL and drained: two of `m`, one of an unregistered model.
fn schema_6_with_vectors() -> Connection {
    register_extensions();
    let c = Connection::open_in_memory().unwrap();
    configure(&c).unwrap();
    assert_eq!(migrate_to(&c, &SchemaOptions::default(), 6).unwrap(), 6);
    ops::execute(&c, &ent_op("d", "a", "doc"), 1).unwrap();
    ops::execute(&c, &ent_op("d", "b", "doc"), 1).unwrap();
    // What schema 6's `ensure_model` and queue drain did, verbatim (today's read schema 8's
    // `vector_models.small`).
    c.execute_batch(
        "INSERT INTO vector_models(ns, model, dims) VALUES ('d', 'm', 2);
         CREATE VIRTUAL TABLE vec_d2 USING vec0(
           embedding float[2] distance_metric=cosine,
           ns text partition key, model text partition key, kind text);
         INSERT INTO vectors(ns, subject, model, kind, embedding) VALUES ('d', 'a', 'm', 'doc', vec_f32('[1.0, 0.0]'));
         INSERT INTO vectors(ns, subject, model, kind, embedding) VALUES ('d', 'b', 'm', 'doc', vec_f32('[0.5, 0.5]'));
         INSERT INTO vectors(ns, subject, model, kind, embedding) VALUES ('d', 'b', 'unregistered', 'doc', vec_f32('[0.5, 0.5]'));
         INSERT INTO vec_d2(rowid, embedding, ns, model, kind)
           SELECT v.rowid, v.embedding, v.ns, v.model, v.kind FROM vectors v
           JOIN vector_models m ON m.ns = v.ns AND m.model = v.model AND m.dims = 2
           WHERE length(v.embedding) = 2 * 4 ORDER BY v.rowid;
         DELETE FROM fts_queue WHERE tbl = 'vectors';",
    )
    .unwrap();
    c
}

/// Every vector row: subject, model, kind, and the embedding as `emb` reads it.
fn vector_rows(c: &Connection, emb: &str) -> Vec<(String, String, String, Vec<u8>)> {
    c.prepare(&format!(
        "SELECT subject, model, kind, {emb} FROM vectors ORDER BY rowid"
    ))
    .unwrap()
    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

#[test]
fn migration_7_keeps_each_embedding_once_and_changes_nothing_else() {
    let c = schema_6_with_vectors();
    let rows_before = vector_rows(&c, "embedding");
    let knn_before = knn_v4(&c, "vec_d2", Some("d"), &[1.0, 0.0]);
    let head = query::head(&c).unwrap();

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
        vector_rows(&c, &embedding_sql("vectors.")),
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
}

#[test]
fn after_migration_7_sql_updates_and_store_writes_keep_one_copy() {
    let c = schema_6_with_vectors();
    let a_logged: Option<Vec<u8>> = c
        .query_row(
            "SELECT embedding FROM changes WHERE kind = 'vector' AND id = 'a' ORDER BY seq LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    migrate(&c, &SchemaOptions::default()).unwrap();
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
    assert_eq!(logged, a_logged, "a's embedding, from the index");
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
