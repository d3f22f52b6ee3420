//! Row writes, one statement per row, shared by the node's writes and the replica's apply.

use rusqlite::{params, Connection, OptionalExtension};

use super::bulk::created_clause;
use super::*;
use crate::error::Result;
use crate::model::{embedding_to_blob, Edge, Entity, Event, Note, Vector};

/// Insert or replace one entity row.
pub(crate) fn write_entity(conn: &Connection, ns: &str, e: &Entity, replica: bool) -> Result<()> {
    let row = EntityRow::new(ns, e)?;
    write_entities(conn, std::slice::from_ref(&row), replica, None).map_err(|(_, e)| e)
}

/// Insert or replace an edge row.
pub(crate) fn write_edge(conn: &Connection, ns: &str, e: &Edge, replica: bool) -> Result<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO edges(ns, id, source, target, relation, weight, properties, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT(ns, id) DO UPDATE SET source = excluded.source, target = excluded.target,
           relation = excluded.relation, weight = excluded.weight, properties = excluded.properties,
           updated_at = excluded.updated_at{}",
        created_clause(replica)
    ))?
    .execute(params![
        ns,
        e.id,
        e.source,
        e.target,
        e.relation,
        e.weight,
        json_obj("edge properties", &e.properties)?,
        e.created_at,
        e.updated_at
    ])?;
    Ok(())
}

/// Insert or replace a note row.
pub(crate) fn write_note(conn: &Connection, ns: &str, n: &Note, replica: bool) -> Result<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO notes(ns, id, kind, name, content, salience, expires_at, properties, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT(ns, id) DO UPDATE SET kind = excluded.kind, name = excluded.name,
           content = excluded.content, salience = excluded.salience, expires_at = excluded.expires_at,
           properties = excluded.properties, updated_at = excluded.updated_at{}",
        created_clause(replica)
    ))?
    .execute(params![
        ns,
        n.id,
        n.kind,
        n.name,
        n.content,
        n.salience,
        n.expires_at,
        json_obj("note properties", &n.properties)?,
        n.created_at,
        n.updated_at
    ])?;
    Ok(())
}

/// Append an event row; an id already stored is left as it is (events are append-only, and
/// re-sending one must be harmless).
pub(crate) fn write_event(conn: &Connection, ns: &str, e: &Event) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO events(ns, id, verb, actor, outcome, target, data, duration_us, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT(ns, id) DO NOTHING",
    )?
    .execute(params![
        ns,
        e.id,
        e.verb,
        e.actor,
        e.outcome,
        e.target,
        json_obj("event data", &e.data)?,
        e.duration_us,
        e.created_at
    ])?;
    Ok(())
}

/// Insert or replace a vector row (its model must be registered), its embedding stored once:
/// in the vec0 table of its dimension count, written here, the row's own `embedding` NULL
/// (schema 7; see `schema::models`). The vector triggers stand aside for the row write
/// (`sync_ctx.applying = 5`), so this function logs the change itself, the embedding by
/// reference (`vectors.log_seq`), unless a replica is applying (which copies its upstream's
/// log rows).
///
/// `table` is the vec0 table its model's pair is in ([`crate::schema::ModelInfo::table`]); a
/// small pair that reaches [`crate::schema::SMALL_PAIR_VECTORS`] moves to the large one.
pub(crate) fn write_vector(
    conn: &Connection,
    ns: &str,
    v: &Vector,
    table: &str,
    replica: bool,
) -> Result<()> {
    // Index work queued for vectors (a delete earlier in this transaction, another program's
    // write) is done first: a queued removal must not meet the entry written here.
    if conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM fts_queue WHERE tbl = 'vectors')")?
        .query_row([], |r| r.get::<_, bool>(0))?
    {
        crate::schema::drain_fts_queue(conn)?;
    }
    let existing: Option<(i64, Option<i64>)> = conn
        .prepare_cached(
            "SELECT rowid, log_seq FROM vectors WHERE ns = ?1 AND subject = ?2 AND model = ?3",
        )?
        .query_row(params![ns, v.subject, v.model], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    if let Some((rowid, Some(seq))) = existing {
        // The change that logged the current embedding by reference gets its copy first.
        conn.prepare_cached(&format!(
            "UPDATE changes SET embedding = (SELECT {} FROM vectors WHERE rowid = ?1)
             WHERE seq = ?2 AND embedding IS NULL",
            crate::schema::embedding_sql("vectors.")
        ))?
        .execute(params![rowid, seq])?;
    }
    let (rowid, log_seq) = crate::schema::with_mode(
        conn,
        crate::schema::Mode::WriterWritesVector,
        |before| {
            // The store logs the change itself, with the embedding by reference (the log
            // row's own `embedding` NULL, `vectors.log_seq` naming it: one copy on disk, read
            // back through the index by `schema::LOGGED_EMBEDDING_SQL`); a replica applying
            // copies its upstream's rows.
            let log_seq: Option<i64> = if before != Some(crate::schema::Mode::Applying) {
                Some(
                    conn.prepare_cached(&format!("SELECT {}", crate::schema::NEXT_SEQ))?
                        .query_row([], |r| r.get(0))?,
                )
            } else {
                None
            };
            let rowid = conn
                .prepare_cached(&format!(
                    "INSERT INTO vectors(ns, subject, model, kind, embedding, created_at, updated_at, log_seq)
                     VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6, ?7)
                     ON CONFLICT(ns, subject, model) DO UPDATE SET kind = excluded.kind,
                       embedding = NULL, updated_at = excluded.updated_at, log_seq = excluded.log_seq{}
                     RETURNING rowid",
                    created_clause(replica)
                ))?
                .query_row(
                    params![ns, v.subject, v.model, v.kind, v.created_at, v.updated_at, log_seq],
                    |r| r.get::<_, i64>(0),
                )?;
            Ok((rowid, log_seq))
        },
    )?;
    let blob = embedding_to_blob(&v.embedding);
    let t = table;
    if existing.is_some() {
        conn.prepare_cached(&format!("DELETE FROM {t} WHERE rowid = ?1"))?
            .execute([rowid])?;
    }
    conn.prepare_cached(&format!(
        "INSERT INTO {t}(rowid, embedding, ns, model, kind) VALUES (?1, ?2, ?3, ?4, ?5)"
    ))?
    .execute(params![rowid, blob, ns, v.model, v.kind])?;
    if existing.is_none() && t == crate::schema::small_vec_table(v.embedding.len()) {
        crate::schema::grow_pair(conn, ns, &v.model, v.embedding.len())?;
    }
    if let Some(seq) = log_seq {
        // Built once: the row image's SQL is assembled from the column list.
        static LOG_VECTOR: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let sql = LOG_VECTOR.get_or_init(|| {
            format!(
                "INSERT INTO changes(seq, tx, ts, ns, kind, op, id, model, data, embedding)
                 SELECT ?2, coalesce((SELECT tx FROM sync_ctx), ?2), coalesce((SELECT ts FROM sync_ctx), {now}),
                        ns, 'vector', 'upsert', subject, model, {img}, NULL
                 FROM vectors WHERE rowid = ?1",
                now = crate::schema::NOW_US,
                img = crate::schema::row_image_sql(crate::model::Kind::Vector, ""),
            )
        });
        conn.prepare_cached(sql)?.execute(params![rowid, seq])?;
    }
    Ok(())
}
