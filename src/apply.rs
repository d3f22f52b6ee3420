//! The replica side: apply upstream changes (full row images) idempotently, in one
//! transaction per batch, refusing a batch that does not continue from what was applied.
//!
//! While applying, `sync_ctx.applying = 1` silences the logging triggers and the upstream
//! change rows are copied into `changes` verbatim, so a replica's log carries the upstream's
//! seq numbers (an edge node serves its own subscribers from it).

use rusqlite::Connection;

pub use crate::applying::{applied_seq, apply_row};
use crate::applying::{
    begin_applying, check_change_key, end_applying, entity_image, in_tx, set_applied, write_row,
};
use crate::error::{Error, Result};
use crate::model::{Change, Kind, Op};
use crate::ops;
use crate::query::ChangeFilter;

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
            return Err(Error::Gap { prev, applied });
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
