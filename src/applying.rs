//! A replica's rows, one upstream change at a time: the applied seq, the applying transaction
//! (`sync_ctx` in [`schema::Mode::Applying`]), and one change's row image written without
//! logging it. What the batch and snapshot logic (`apply`) and the local writes kept on top of
//! them (`outbox`) both build on.

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::model::{Change, Edge, Entity, Event, Kind, Note, Op, Vector};
use crate::ops;
use crate::schema;

/// The highest upstream seq applied (0 when nothing has been).
pub fn applied_seq(conn: &Connection) -> Result<i64> {
    let v: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'applied_seq'")?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(v.and_then(|s| s.parse().ok()).unwrap_or(0))
}

pub(crate) fn set_applied(conn: &Connection, seq: i64) -> Result<()> {
    conn.prepare_cached("INSERT INTO meta(key, value) VALUES ('applied_seq', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?
        .execute([seq.to_string()])?;
    Ok(())
}

pub(crate) fn begin_applying(conn: &Connection) -> Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    if let Err(e) = schema::enter(conn, schema::Mode::Applying) {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(e);
    }
    Ok(())
}

/// Commit (or roll back) the apply transaction. A commit that fails (the queue drain, a full
/// disk at COMMIT) rolls back too: the connection must never be left inside a transaction, or
/// every later apply on it would fail with "cannot start a transaction within a transaction".
pub(crate) fn end_applying(conn: &Connection, ok: bool) -> Result<()> {
    if ok {
        let res = schema::drain_fts_queue(conn)
            .and_then(|_| schema::leave(conn))
            .and_then(|_| Ok(conn.execute_batch("COMMIT")?));
        if res.is_err() && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        res
    } else {
        let _ = conn.execute_batch("ROLLBACK");
        Ok(())
    }
}

pub(crate) fn in_tx<T>(conn: &Connection, f: impl FnOnce() -> Result<T>) -> Result<T> {
    begin_applying(conn)?;
    match f() {
        Ok(v) => {
            end_applying(conn, true)?;
            Ok(v)
        }
        Err(e) => {
            end_applying(conn, false)?;
            Err(e)
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(c: &Change) -> Result<T> {
    let data = c
        .data
        .as_deref()
        .ok_or_else(|| Error::invalid(format!("upsert change {} has no data", c.seq)))?;
    serde_json::from_str(data).map_err(|e| {
        Error::invalid(format!(
            "change {}: invalid {} row image: {e}",
            c.seq, c.kind
        ))
    })
}

/// The namespace and id of a change, checked.
pub(crate) fn check_change_key(c: &Change) -> Result<()> {
    ops::check_key("namespace", &c.ns)?;
    ops::check_key("id", &c.id)
}

/// An upsert's row image must carry the change's own id.
fn check_image_key(c: &Change, id: &str) -> Result<()> {
    if id == c.id {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "change {}: row image id {id:?} differs from the change id {:?}",
            c.seq, c.id
        )))
    }
}

/// The entity row image of an upsert change, checked against the change's id.
pub(crate) fn entity_image(c: &Change) -> Result<Entity> {
    let r: Entity = decode(c)?;
    check_image_key(c, &r.id)?;
    Ok(r)
}

/// Write one change's row image (or delete its row) without logging it.
pub fn apply_row(conn: &Connection, c: &Change) -> Result<()> {
    write_row(conn, c, false)
}

/// [`apply_row`]; `snapshot` for a snapshot's rows, where an edge replaces any other edge with
/// its (source, target, relation): a snapshot read in pages may hold a newer edge with the
/// triple of an older one it read before that one was deleted (the node's changes after the
/// snapshot's seq delete the older one anyway).
pub(crate) fn write_row(conn: &Connection, c: &Change, snapshot: bool) -> Result<()> {
    check_change_key(c)?;
    match c.op {
        Op::Delete => {
            match c.kind {
                Kind::Vector => {
                    let model = c.model.as_deref().ok_or_else(|| {
                        Error::invalid(format!("vector change {} has no model", c.seq))
                    })?;
                    conn.prepare_cached(
                        "DELETE FROM vectors WHERE ns = ?1 AND subject = ?2 AND model = ?3",
                    )?
                    .execute(params![c.ns, c.id, model])?;
                }
                k => {
                    conn.prepare_cached(&format!(
                        "DELETE FROM {} WHERE ns = ?1 AND id = ?2",
                        k.table()
                    ))?
                    .execute(params![c.ns, c.id])?;
                }
            }
            Ok(())
        }
        // The node logs a patch as the row image it made: a change is never one.
        Op::Patch => Err(Error::invalid(format!(
            "change {} is a patch; a node logs the whole row after a patch (an upsert)",
            c.seq
        ))),
        Op::Upsert => {
            let key_ok = |id: &str| check_image_key(c, id);
            match c.kind {
                Kind::Entity => ops::write_entity(conn, &c.ns, &entity_image(c)?, true),
                Kind::Edge => {
                    let r: Edge = decode(c)?;
                    key_ok(&r.id)?;
                    if snapshot {
                        conn.prepare_cached(
                            "DELETE FROM edges WHERE ns = ?1 AND source = ?2 AND target = ?3
                               AND relation = ?4 AND id <> ?5",
                        )?
                        .execute(params![c.ns, r.source, r.target, r.relation, r.id])?;
                    }
                    ops::write_edge(conn, &c.ns, &r, true)
                }
                Kind::Note => {
                    let r: Note = decode(c)?;
                    key_ok(&r.id)?;
                    ops::write_note(conn, &c.ns, &r, true)
                }
                Kind::Event => {
                    let r: Event = decode(c)?;
                    key_ok(&r.id)?;
                    ops::write_event(conn, &c.ns, &r)
                }
                Kind::Vector => {
                    let mut obj: serde_json::Map<String, serde_json::Value> = decode(c)?;
                    let emb = c.embedding.clone().ok_or_else(|| {
                        Error::invalid(format!("vector change {} has no embedding", c.seq))
                    })?;
                    ops::check_embedding(&emb)?;
                    obj.insert("embedding".into(), serde_json::to_value(&emb)?);
                    let r: Vector = serde_json::from_value(serde_json::Value::Object(obj))
                        .map_err(|e| {
                            Error::invalid(format!(
                                "change {}: invalid vector row image: {e}",
                                c.seq
                            ))
                        })?;
                    key_ok(&r.subject)?;
                    if c.model.as_deref().is_some_and(|m| m != r.model) {
                        return Err(Error::invalid(format!(
                            "change {}: model differs from its row image",
                            c.seq
                        )));
                    }
                    let model = schema::ensure_model(
                        conn,
                        &c.ns,
                        &r.model,
                        r.embedding.len(),
                        schema::ModelLimit::Upstream,
                    )?;
                    ops::write_vector(conn, &c.ns, &r, &model.table, true)
                }
            }
        }
    }
}
