//! The replica side: apply upstream changes (full row images) idempotently, in one
//! transaction per batch, refusing a batch that does not continue from what was applied.
//!
//! While applying, `sync_ctx.applying = 1` silences the logging triggers and the upstream
//! change rows are copied into `changes` verbatim, so a replica's log carries the upstream's
//! seq numbers (an edge node serves its own subscribers from it).

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::{Error, Result};
use crate::model::{Change, Edge, Entity, Event, Kind, Note, Op, Vector};
use crate::ops;
use crate::query::ChangeFilter;
use crate::schema;

/// The highest upstream seq applied (0 when nothing has been).
pub fn applied_seq(conn: &Connection) -> Result<i64> {
    let v: Option<String> = conn
        .prepare_cached("SELECT value FROM meta WHERE key = 'applied_seq'")?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(v.and_then(|s| s.parse().ok()).unwrap_or(0))
}

fn set_applied(conn: &Connection, seq: i64) -> Result<()> {
    conn.prepare_cached("INSERT INTO meta(key, value) VALUES ('applied_seq', ?1) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?
        .execute([seq.to_string()])?;
    Ok(())
}

/// What a batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Changes applied.
    pub applied: usize,
    /// Changes skipped because they were already applied.
    pub skipped: usize,
    /// The applied seq after the batch.
    pub seq: i64,
}

fn begin_applying(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         INSERT INTO sync_ctx(one, applying) VALUES (1, 1) ON CONFLICT(one) DO UPDATE SET applying = 1;",
    )?;
    Ok(())
}

/// Commit (or roll back) the apply transaction. A commit that fails (the queue drain, a full
/// disk at COMMIT) rolls back too: the connection must never be left inside a transaction, or
/// every later apply on it would fail with "cannot start a transaction within a transaction".
fn end_applying(conn: &Connection, ok: bool) -> Result<()> {
    if ok {
        let res = schema::drain_fts_queue(conn)
            .and_then(|_| Ok(conn.execute_batch("DELETE FROM sync_ctx; COMMIT;")?));
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

/// Apply a batch of changes that continues from `prev`. A batch whose `prev` is ahead of
/// what was applied shows a gap and is refused, with nothing written; changes at or below
/// the applied seq are skipped, so re-delivery is harmless.
pub fn apply_changes(conn: &Connection, prev: i64, changes: &[Change]) -> Result<ApplyOutcome> {
    apply_changes_confirming(conn, prev, changes, &[])
}

/// [`apply_changes`], recording in the same transaction the node's answers to this replica's
/// own writes (`(outbox entry, seq)`, see [`crate::outbox`]).
pub fn apply_changes_confirming(
    conn: &Connection,
    prev: i64,
    changes: &[Change],
    confirmed: &[(i64, i64)],
) -> Result<ApplyOutcome> {
    let mut last = i64::MIN;
    for c in changes {
        if c.seq <= last {
            return Err(Error::invalid(format!(
                "changes out of order: seq {} after {last}",
                c.seq
            )));
        }
        if c.seq <= prev {
            return Err(Error::invalid(format!(
                "change seq {} is not after the batch's prev {prev}",
                c.seq
            )));
        }
        last = c.seq;
    }
    in_tx(conn, || {
        let applied = applied_seq(conn)?;
        if prev > applied {
            return Err(Error::Cursor(format!(
                "gap: the batch continues from seq {prev} but this replica has applied up to {applied}; resubscribe from {applied}"
            )));
        }
        let mut out = ApplyOutcome {
            seq: applied,
            ..Default::default()
        };
        // This replica's pending writes that share rows with the batch step aside for it.
        crate::outbox::record(conn, confirmed)?;
        let upto = changes.last().map_or(applied, |c| c.seq);
        let undone = crate::outbox::undo(conn, changes, upto)?;
        // Consecutive entity upserts are written together.
        let mut run = ops::EntityRun::replica_direct();
        // The upstream's change rows, copied into this log after the batch's rows.
        let mut copied: Vec<&Change> = Vec::with_capacity(changes.len());
        for (i, c) in changes.iter().enumerate() {
            if c.seq <= applied {
                out.skipped += 1;
                continue;
            }
            if c.kind == Kind::Entity && c.op == Op::Upsert {
                check_change_key(c)?;
                run.push(i, &c.ns, entity_image(c)?);
            } else {
                run.before_other(conn).map_err(|(_, e)| e)?;
                apply_row(conn, c)?;
            }
            copied.push(c);
            out.applied += 1;
            out.seq = c.seq;
        }
        run.finish(conn).map_err(|(_, e)| e)?;
        ops::insert_rows(
            conn,
            "INSERT OR IGNORE INTO changes(seq, tx, ts, ns, kind, op, id, model, data, embedding)",
            10,
            "",
            &copied,
            |stmt, b, c| {
                stmt.raw_bind_parameter(b + 1, c.seq)?;
                stmt.raw_bind_parameter(b + 2, c.tx)?;
                stmt.raw_bind_parameter(b + 3, c.ts)?;
                stmt.raw_bind_parameter(b + 4, &c.ns)?;
                stmt.raw_bind_parameter(b + 5, c.kind.as_str())?;
                stmt.raw_bind_parameter(b + 6, c.op.as_str())?;
                stmt.raw_bind_parameter(b + 7, &c.id)?;
                stmt.raw_bind_parameter(b + 8, &c.model)?;
                stmt.raw_bind_parameter(b + 9, &c.data)?;
                stmt.raw_bind_parameter(
                    b + 10,
                    c.embedding.as_deref().map(crate::model::embedding_to_blob),
                )?;
                Ok(())
            },
        )
        .map_err(|(_, e)| e)?;
        set_applied(conn, out.seq)?;
        crate::outbox::redo(conn, &undone, out.seq)?;
        Ok(out)
    })
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
fn check_change_key(c: &Change) -> Result<()> {
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
fn entity_image(c: &Change) -> Result<Entity> {
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
fn write_row(conn: &Connection, c: &Change, snapshot: bool) -> Result<()> {
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

/// Replace the state of the namespaces `filter` covers with a snapshot, in one transaction:
/// clear them, write every row, and set the applied seq to `at`. The replica's copy of the log
/// is cleared too: it restarts at `at`.
pub fn apply_snapshot(
    conn: &Connection,
    filter: &ChangeFilter,
    at: i64,
    rows: &[Change],
) -> Result<ApplyOutcome> {
    let mut s = SnapshotApply::begin(conn, filter)?;
    s.rows(rows)?;
    s.finish(at)?;
    Ok(ApplyOutcome {
        applied: rows.len(),
        skipped: 0,
        seq: at,
    })
}

/// Snapshot application in steps, for snapshots that arrive in chunks: `snapshot_begin` opens
/// the transaction and clears the covered namespaces, `snapshot_rows` writes each chunk,
/// `snapshot_finish` commits at the snapshot's seq, `snapshot_abort` rolls back. Nothing is
/// visible to other connections until the commit; an abort leaves the previous state.
pub fn snapshot_begin(conn: &Connection, filter: &ChangeFilter) -> Result<()> {
    begin_applying(conn)?;
    // This replica's pending writes step aside (they are redone on top at the finish).
    if let Err(e) = crate::outbox::undo_all(conn).and_then(|_| clear(conn, filter)) {
        let _ = end_applying(conn, false);
        return Err(e);
    }
    Ok(())
}

/// Write one chunk of snapshot rows (inside [`snapshot_begin`]'s transaction).
pub fn snapshot_rows(conn: &Connection, rows: &[Change]) -> Result<()> {
    for r in rows {
        if r.op != Op::Upsert {
            return Err(Error::invalid(format!(
                "snapshot row for {:?} is not an upsert",
                r.id
            )));
        }
        write_row(conn, r, true)?;
    }
    Ok(())
}

/// Commit the snapshot, recording `at` as the applied seq.
pub fn snapshot_finish(conn: &Connection, at: i64) -> Result<()> {
    if let Err(e) = snapshot_mark(conn, at) {
        snapshot_abort(conn);
        return Err(e);
    }
    end_applying(conn, true)
}

fn snapshot_mark(conn: &Connection, at: i64) -> Result<()> {
    set_applied(conn, at)?;
    crate::outbox::redo_all(conn, at)?;
    // The log restarts at `at`: its head must say so even though it holds no change yet, so a
    // node serving this copy (edge mode) reports the upstream's position.
    conn.execute(
        "INSERT INTO sqlite_sequence(name, seq) SELECT 'changes', ?1
         WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'changes')",
        [at],
    )?;
    conn.execute(
        "UPDATE sqlite_sequence SET seq = max(seq, ?1) WHERE name = 'changes'",
        [at],
    )?;
    Ok(())
}

/// Abandon a snapshot in progress.
pub fn snapshot_abort(conn: &Connection) {
    let _ = end_applying(conn, false);
}

/// [`snapshot_begin`] .. [`snapshot_finish`] as a guard that aborts when dropped unfinished.
pub struct SnapshotApply<'c> {
    conn: &'c Connection,
    open: bool,
}

impl<'c> SnapshotApply<'c> {
    /// Open the transaction and clear the covered namespaces.
    pub fn begin(conn: &'c Connection, filter: &ChangeFilter) -> Result<Self> {
        snapshot_begin(conn, filter)?;
        Ok(SnapshotApply { conn, open: true })
    }

    /// Write one chunk of rows.
    pub fn rows(&mut self, rows: &[Change]) -> Result<()> {
        snapshot_rows(self.conn, rows)
    }

    /// Commit, recording `at` as the applied seq.
    pub fn finish(mut self, at: i64) -> Result<()> {
        self.open = false;
        snapshot_finish(self.conn, at)
    }
}

impl Drop for SnapshotApply<'_> {
    fn drop(&mut self) {
        if self.open {
            snapshot_abort(self.conn);
        }
    }
}

fn clear(conn: &Connection, filter: &ChangeFilter) -> Result<()> {
    let ns = filter
        .namespaces
        .as_ref()
        .map(serde_json::to_string)
        .transpose()?;
    for k in Kind::ALL {
        if filter.kinds.as_ref().is_none_or(|ks| ks.contains(&k)) {
            conn.execute(
                &format!(
                    "DELETE FROM {} WHERE ?1 IS NULL OR ns IN (SELECT value FROM json_each(?1))",
                    k.table()
                ),
                [&ns],
            )?;
        }
    }
    conn.execute("DELETE FROM changes", [])?;
    Ok(())
}
