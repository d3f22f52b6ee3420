//! The capture of a local write: per-connection temporary triggers that record, while an
//! outbox entry runs, each row it touches (its key) and the node's image of that row before the
//! first local change (its shadow), so the entry can be undone under the feed and redone on top.

use rusqlite::Connection;

use crate::error::Result;
use crate::model::Kind;
use crate::schema;

/// The temporary tables and triggers that record what a local write touches. Per connection,
/// idempotent; they fire only while `temp.outbox_capture` holds the entry's number. (They test
/// for an existing row rather than `INSERT OR IGNORE`: inside a trigger, an upsert's conflict
/// handling overrides the trigger's own, and the second write to a row would fail.)
pub(super) fn ensure_capture(conn: &Connection) -> Result<()> {
    let done: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM temp.sqlite_master WHERE name = 'outbox_capture')",
        )?
        .query_row([], |r| r.get(0))?;
    if done {
        return Ok(());
    }
    let mut sql = String::from(
        "CREATE TEMP TABLE IF NOT EXISTS outbox_capture(n INTEGER NOT NULL);
         CREATE TEMP TABLE IF NOT EXISTS outbox_undo(n INTEGER PRIMARY KEY);\n",
    );
    for kind in [
        Kind::Entity,
        Kind::Edge,
        Kind::Note,
        Kind::Event,
        Kind::Vector,
    ] {
        let t = kind.table();
        let k = kind.as_str();
        let (id, model) = if kind == Kind::Vector {
            ("subject", "{p}model")
        } else {
            ("id", "''")
        };
        for (when, p, present, suffix) in [
            ("AFTER INSERT", "new.", "0", "i"),
            ("BEFORE UPDATE", "old.", "1", "u"),
            ("BEFORE DELETE", "old.", "1", "d"),
        ] {
            let model = model.replace("{p}", p);
            let image = if present == "1" {
                schema::row_image_sql(kind, p)
            } else {
                "NULL".into()
            };
            // A vector's embedding may be held by its index alone (schema 7).
            let emb = if kind == Kind::Vector && present == "1" {
                schema::embedding_sql(p)
            } else {
                "NULL".into()
            };
            let name = format!("outbox_{t}_{suffix}");
            // Edges are also unique by (source, target, relation): the triples an entry held
            // or freed are rows of it too (kind `edge-triple`, no shadow).
            let mut triples = String::new();
            if kind == Kind::Edge {
                let sides: &[&str] = match suffix {
                    "i" => &["new."],
                    "u" => &["old.", "new."],
                    _ => &["old."],
                };
                for q in sides {
                    let key =
                        format!("{q}source || char(0) || {q}target || char(0) || {q}relation");
                    triples.push_str(&format!(
                        "INSERT INTO main.outbox_keys(n, kind, ns, id, model)
                         SELECT c.n, 'edge-triple', {q}ns, {key}, '' FROM temp.outbox_capture c
                         WHERE NOT EXISTS (SELECT 1 FROM main.outbox_keys WHERE n = c.n
                           AND kind = 'edge-triple' AND ns = {q}ns AND id = {key} AND model = '');\n"
                    ));
                }
            }
            sql.push_str(&format!(
                "CREATE TEMP TRIGGER IF NOT EXISTS {name} {when} ON main.{t}
                 WHEN EXISTS (SELECT 1 FROM temp.outbox_capture)
                   AND NOT EXISTS (SELECT 1 FROM main.sync_ctx WHERE applying = {moving}) BEGIN
                   INSERT INTO main.outbox_shadow(kind, ns, id, model, present, data, embedding)
                   SELECT '{k}', {p}ns, {p}{id}, {model}, {present}, {image}, {emb}
                   WHERE NOT EXISTS (SELECT 1 FROM main.outbox_shadow
                     WHERE kind = '{k}' AND ns = {p}ns AND id = {p}{id} AND model = {model});
                   INSERT INTO main.outbox_keys(n, kind, ns, id, model)
                   SELECT c.n, '{k}', {p}ns, {p}{id}, {model} FROM temp.outbox_capture c
                   WHERE NOT EXISTS (SELECT 1 FROM main.outbox_keys
                     WHERE n = c.n AND kind = '{k}' AND ns = {p}ns AND id = {p}{id} AND model = {model});
                   {triples}
                 END;\n",
                moving = schema::Mode::DrainMovesEmbeddings.code(),
            ));
        }
    }
    conn.execute_batch(&sql)?;
    Ok(())
}
