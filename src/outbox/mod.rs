//! A replica's own writes (local-first): applied at once, kept in order in the outbox in the
//! same transaction, uploaded with their origin (the replica's client id and the entry's
//! number, so the node applies each at most once), and kept on top of the node's changes
//! until the feed carries them.
//!
//! How pending writes stay on top (docs/design.md, "Offline writes"): while a local write runs,
//! temporary triggers record, for every row it touches (cascades included), the node's image
//! of that row in `outbox_shadow` (the first image wins: the state before any pending write)
//! and which entry touched which row in `outbox_keys`. Before a feed batch is applied, the
//! pending entries that share a row with the batch (and, transitively, with each other) are
//! undone by writing the shadows back; the batch is applied to the node's state; entries the
//! node has confirmed at or below the new applied seq leave the outbox; the rest are redone in
//! order. Entries that share no row with the batch are not touched, so draining a long outbox
//! costs each batch only its own rows. A refused entry is taken back the same way.
//!
//! A node delete that cascades (an entity takes its edges and vectors, a note its vectors) also
//! sets aside the entries that wrote those rows, so they are redone after it. Two writers on
//! one row: the last committed at the node wins; a local write shows on top until the node has
//! it.

use std::collections::BTreeSet;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::applying::{applied_seq, apply_row, in_tx};
use crate::error::{Error, Result};
use crate::model::{blob_to_embedding, Change, Kind, Op, WriteOp};
use crate::ops;
use capture::ensure_capture;

mod capture;
mod carry;

pub use carry::{carry_in, carry_out, Carried, CARRIED};

/// One pending write.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    /// Its number: the client write number it is uploaded with.
    pub n: i64,
    /// Its ops, ids filled in (so the node writes the rows the replica shows).
    pub ops: Vec<WriteOp>,
    /// When it was made (µs since the Unix epoch).
    pub created_us: i64,
    /// The node's seq once it answered `written` (the entry leaves when the feed reaches it).
    pub seq: Option<i64>,
    /// The size of its ops as JSON text (for batching uploads by size).
    #[serde(skip)]
    pub size: usize,
}

impl From<Pending> for crate::protocol::upload::Entry {
    fn from(p: Pending) -> Self {
        crate::protocol::upload::Entry {
            n: p.n,
            ops: p.ops,
            size: p.size,
        }
    }
}

/// The outbox at a glance, for a status line.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OutboxStatus {
    /// Pending writes.
    pub pending: i64,
    /// Pending writes the node has not answered yet.
    pub unsent: i64,
    /// When the oldest pending write was made (µs since the Unix epoch).
    pub oldest_us: Option<i64>,
    /// The last upload error, until a later upload succeeds.
    pub error: Option<String>,
}

/// What a local write did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocalWrite {
    /// The outbox entry's number.
    pub n: i64,
    /// Each op's row id, in op order.
    pub ids: Vec<String>,
}

/// The replica's client id: made once (random, 128 bits) and kept in `meta`.
pub fn client_id(conn: &Connection) -> Result<String> {
    if let Some(id) = meta(conn, "client_id")? {
        return Ok(id);
    }
    let id: String = conn.query_row("SELECT 'r-' || lower(hex(randomblob(16)))", [], |r| {
        r.get(0)
    })?;
    conn.execute(
        "INSERT OR IGNORE INTO meta(key, value) VALUES ('client_id', ?1)",
        [&id],
    )?;
    Ok(meta(conn, "client_id")?.unwrap_or(id))
}

fn meta(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

fn set_meta(conn: &Connection, key: &str, value: Option<&str>) -> Result<()> {
    match value {
        Some(v) => conn
            .prepare_cached("INSERT INTO meta(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value")?
            .execute([key, v])?,
        None => conn.prepare_cached("DELETE FROM meta WHERE key = ?1")?.execute([key])?,
    };
    Ok(())
}

/// Fill in what the replica decides when a write is made, as the node would have: an id for
/// every upsert without one (but vectors, keyed by subject), so the node writes the very rows
/// the replica shows; and the time, `created_at` and `updated_at` (events: `created_at`) where
/// the write leaves them out, so a write uploaded hours later keeps the moment it was made (the
/// node keeps given times, within [`ops::MAX_CLOCK_AHEAD_US`] of its own clock). A patch gets
/// its `updated_at` (it names its row already).
fn fill_local(conn: &Connection, ops_: &mut [WriteOp]) -> Result<()> {
    let mut now = None;
    for op in ops_.iter_mut() {
        if op.op == Op::Delete {
            continue;
        }
        let Some(serde_json::Value::Object(m)) = op.data.as_mut() else {
            continue;
        };
        if op.op == Op::Upsert && op.kind != Kind::Vector && !m.contains_key("id") {
            m.insert("id".into(), ops::new_id(conn)?.into());
        }
        let fields: &[&str] = match (op.op, op.kind) {
            (Op::Patch, _) => &["updated_at"],
            (_, Kind::Event) => &["created_at"],
            _ => &["created_at", "updated_at"],
        };
        for f in fields {
            if m.get(*f).is_none_or(serde_json::Value::is_null) {
                let t = match now {
                    Some(t) => t,
                    None => *now.insert(ops::now_us(conn)?),
                };
                m.insert((*f).into(), t.into());
            }
        }
    }
    Ok(())
}

/// Apply `ops` to this replica now, with an outbox entry, in one transaction: all or nothing
/// (the error names the op). The rows are visible to every query at once.
pub fn write_local(conn: &Connection, mut ops_: Vec<WriteOp>) -> Result<LocalWrite> {
    fill_local(conn, &mut ops_)?;
    ensure_capture(conn)?;
    in_tx(conn, || {
        let n = meta(conn, "outbox_n")?
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
            + 1;
        let ids = run_ops(conn, n, &ops_)?;
        conn.prepare_cached("INSERT INTO outbox(n, ops, created_us) VALUES (?1, ?2, ?3)")?
            .execute(params![
                n,
                serde_json::to_string(&ops_)?,
                ops::now_us(conn)?
            ])?;
        set_meta(conn, "outbox_n", Some(&n.to_string()))?;
        Ok(LocalWrite { n, ids })
    })
}

/// Run one entry's ops with capture on (inside the caller's applying transaction).
fn run_ops(conn: &Connection, n: i64, ops_: &[WriteOp]) -> Result<Vec<String>> {
    conn.prepare_cached("INSERT INTO temp.outbox_capture(n) VALUES (?1)")?
        .execute([n])?;
    let now = ops::now_us(conn)?;
    let res = ops_
        .iter()
        .enumerate()
        .map(|(index, op)| {
            ops::execute(conn, op, now)
                .map(|r| r.id)
                .map_err(|e| Error::Op {
                    index,
                    cause: Box::new(e),
                })
        })
        .collect::<Result<Vec<_>>>();
    conn.prepare_cached("DELETE FROM temp.outbox_capture")?
        .execute([])?;
    res
}

/// Pending writes, oldest first.
pub fn pending(conn: &Connection) -> Result<Vec<Pending>> {
    pending_after(conn, 0, false, i64::MAX)
}

/// Up to `limit` pending writes numbered above `after`, oldest first; `unsent`: only those the
/// node has not answered.
pub fn pending_after(
    conn: &Connection,
    after: i64,
    unsent: bool,
    limit: i64,
) -> Result<Vec<Pending>> {
    let mut stmt = conn.prepare_cached(
        "SELECT n, ops, created_us, seq FROM outbox
         WHERE n > ?1 AND (seq IS NULL OR NOT ?2) ORDER BY n LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![after, unsent, limit], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, Option<i64>>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (n, ops_, created_us, seq) = row?;
        out.push(Pending {
            n,
            ops: serde_json::from_str(&ops_)?,
            created_us,
            seq,
            size: ops_.len(),
        });
    }
    Ok(out)
}

/// The outbox at a glance.
pub fn status(conn: &Connection) -> Result<OutboxStatus> {
    let (pending, unsent, oldest_us) = conn.query_row(
        "SELECT count(*), count(*) - count(seq), min(created_us) FROM outbox",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok(OutboxStatus {
        pending,
        unsent,
        oldest_us,
        error: meta(conn, "outbox_error")?,
    })
}

/// Record an upload that failed for now (it is retried); `None` clears it.
pub fn set_error(conn: &Connection, error: Option<&str>) -> Result<()> {
    set_meta(conn, "outbox_error", error)
}

/// The node committed entry `n` at `seq`. Once the feed has reached `seq`, the entry leaves.
pub fn confirm(conn: &Connection, n: i64, seq: i64) -> Result<()> {
    confirm_many(conn, &[(n, seq)])
}

/// [`confirm`] for many entries, in one transaction.
pub fn confirm_many(conn: &Connection, confirmed: &[(i64, i64)]) -> Result<()> {
    if confirmed.is_empty() {
        return Ok(());
    }
    ensure_capture(conn)?;
    in_tx(conn, || {
        record(conn, confirmed)?;
        let applied = applied_seq(conn)?;
        let undone = undo(conn, &[], applied)?;
        redo(conn, &undone, applied)
    })
}

/// Record the node's answers (inside the caller's transaction: a feed batch's, so answers cost
/// no commit of their own).
pub(crate) fn record(conn: &Connection, confirmed: &[(i64, i64)]) -> Result<()> {
    let mut stmt = conn.prepare_cached("UPDATE outbox SET seq = ?2 WHERE n = ?1")?;
    for (n, seq) in confirmed {
        stmt.execute(params![n, seq])?;
    }
    if !confirmed.is_empty() {
        set_error(conn, None)?;
    }
    Ok(())
}

/// The node refused entry `n`: take it back (its neighbours stay) and return its ops.
pub fn reject(conn: &Connection, n: i64) -> Result<Option<Vec<WriteOp>>> {
    ensure_capture(conn)?;
    in_tx(conn, || {
        let Some(ops_) = conn
            .prepare_cached("SELECT ops FROM outbox WHERE n = ?1")?
            .query_row([n], |r| r.get::<_, String>(0))
            .optional()?
        else {
            return Ok(None);
        };
        let undone = undo_entries(conn, closure(conn, BTreeSet::from([n]))?)?;
        conn.prepare_cached("DELETE FROM outbox WHERE n = ?1")?
            .execute([n])?;
        redo(conn, &undone, applied_seq(conn)?)?;
        Ok(Some(serde_json::from_str(&ops_)?))
    })
}

/// True when the outbox holds anything (one indexed probe: the apply path asks per batch).
fn any_pending(conn: &Connection) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM outbox)")?
        .query_row([], |r| r.get(0))?)
}

/// Inside an apply transaction, before `changes` (up to seq `upto`) are applied: undo the entries that share a row with them or will be confirmed by them. Returns
/// those entries, for [`redo`] after the batch.
pub(crate) fn undo(conn: &Connection, changes: &[Change], upto: i64) -> Result<Vec<i64>> {
    if !any_pending(conn)? {
        return Ok(Vec::new());
    }
    ensure_capture(conn)?;
    // The batch's edge upserts with their (source, target, relation), read once.
    let triples = changes
        .iter()
        .filter(|c| c.kind == Kind::Edge && c.op == Op::Upsert)
        .filter_map(|c| edge_triple(c).transpose().map(|t| t.map(|t| (c, t))))
        .collect::<Result<Vec<_>>>()?;
    let mut seed = BTreeSet::new();
    // A pending edge holds the triple of another edge in the batch: the batch must meet the
    // node's state in its own order, so nothing may skip the undo.
    let mut clash = false;
    {
        let mut by_key = conn.prepare_cached(
            "SELECT n FROM outbox_keys WHERE kind = ?1 AND ns = ?2 AND id = ?3 AND model = ?4",
        )?;
        for c in changes {
            let model = c.model.as_deref().unwrap_or("");
            for n in by_key.query_map(params![c.kind.as_str(), c.ns, c.id, model], |r| {
                r.get::<_, i64>(0)
            })? {
                seed.insert(n?);
            }
        }
        // A delete reaches further than its own row: an entity takes its edges and vectors
        // with it, a note its vectors. Entries that wrote those rows step aside too.
        let mut dependents = conn.prepare_cached(
            "SELECT k.n FROM outbox_keys k JOIN edges e ON e.ns = k.ns AND e.id = k.id
              WHERE k.kind = 'edge' AND k.ns = ?1 AND (e.source = ?2 OR e.target = ?2) AND ?3
             UNION
             SELECT n FROM outbox_keys WHERE kind = 'vector' AND ns = ?1 AND id = ?2",
        )?;
        for c in changes.iter().filter(|c| c.op == Op::Delete) {
            if matches!(c.kind, Kind::Entity | Kind::Note) {
                let entity = c.kind == Kind::Entity;
                for n in
                    dependents.query_map(params![c.ns, c.id, entity], |r| r.get::<_, i64>(0))?
                {
                    seed.insert(n?);
                }
            }
        }
        // An edge is unique by (source, target, relation) too: entries that held the triple of
        // an edge in the batch (under any id) step aside for it; and if a pending edge holds it
        // now under another id, the batch must meet the node's state in its own order.
        let mut by_triple = conn.prepare_cached(
            "SELECT n FROM outbox_keys WHERE kind = 'edge-triple' AND ns = ?1 AND id = ?2",
        )?;
        let mut held = conn.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM edges WHERE ns = ?1 AND source = ?2 AND target = ?3
                              AND relation = ?4 AND id <> ?5)",
        )?;
        for (c, (source, target, relation)) in &triples {
            let key = triple_key(source, target, relation);
            for n in by_triple.query_map(params![c.ns, key], |r| r.get::<_, i64>(0))? {
                seed.insert(n?);
            }
            clash |= held.query_row(params![c.ns, source, target, relation, c.id], |r| {
                r.get::<_, bool>(0)
            })?;
        }
        let mut confirmed =
            conn.prepare_cached("SELECT n FROM outbox WHERE seq IS NOT NULL AND seq <= ?1")?;
        for n in confirmed.query_map([upto], |r| r.get::<_, i64>(0))? {
            seed.insert(n?);
        }
    }
    let entries = closure(conn, seed)?;
    if !clash && settled_by(conn, &entries, changes, &triples, upto)? {
        // Every entry concerned is one the node committed, and the batch carries the node's
        // images of all the rows each touched: they leave without being undone (draining an
        // outbox then costs each batch only its own rows). An entry with a row outside the
        // batch may have been redone over the node's row since: it must be undone.
        forget(conn, &entries)?;
        return Ok(Vec::new());
    }
    undo_entries(conn, entries)
}

/// An edge change's (source, target, relation), from its row image.
fn edge_triple(c: &Change) -> Result<Option<(String, String, String)>> {
    let Some(image) = c.data.as_deref() else {
        return Ok(None);
    };
    let v: serde_json::Value = serde_json::from_str(image)?;
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    Ok(Some((field("source"), field("target"), field("relation"))))
}

/// The row record of an edge triple (`outbox_keys` kind `edge-triple`), as the triggers write it.
fn triple_key(source: &str, target: &str, relation: &str) -> String {
    format!("{source}\u{0}{target}\u{0}{relation}")
}

/// True when every entry of `entries` was committed by the node at or below `upto` and every
/// row it touched has a change in `changes`.
fn settled_by(
    conn: &Connection,
    entries: &BTreeSet<i64>,
    changes: &[Change],
    triples: &[(&Change, (String, String, String))],
    upto: i64,
) -> Result<bool> {
    if changes.is_empty() || entries.is_empty() {
        return Ok(entries.is_empty());
    }
    let mut in_batch: BTreeSet<(String, String, String, String)> = changes
        .iter()
        .map(|c| {
            let model = c.model.clone().unwrap_or_default();
            (
                c.kind.as_str().to_string(),
                c.ns.clone(),
                c.id.clone(),
                model,
            )
        })
        .collect();
    for (c, (s, t, r)) in triples {
        in_batch.insert((
            "edge-triple".into(),
            c.ns.clone(),
            triple_key(s, t, r),
            String::new(),
        ));
    }
    let mut seq_of = conn.prepare_cached("SELECT seq FROM outbox WHERE n = ?1")?;
    let mut keys_of =
        conn.prepare_cached("SELECT kind, ns, id, model FROM outbox_keys WHERE n = ?1")?;
    for n in entries {
        let seq: Option<i64> = seq_of.query_row([n], |r| r.get(0)).optional()?.flatten();
        if seq.is_none_or(|s| s > upto) {
            return Ok(false);
        }
        let keys = keys_of.query_map([n], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
            ))
        })?;
        for k in keys {
            if !in_batch.contains(&k?) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Drop `entries`, their row records and the shadows no other entry needs.
fn forget(conn: &Connection, entries: &BTreeSet<i64>) -> Result<()> {
    let mut drop_shadow = conn.prepare_cached(
        "DELETE FROM outbox_shadow WHERE (kind, ns, id, model) IN
           (SELECT kind, ns, id, model FROM outbox_keys WHERE n = ?1)",
    )?;
    let mut drop_keys = conn.prepare_cached("DELETE FROM outbox_keys WHERE n = ?1")?;
    let mut drop_entry = conn.prepare_cached("DELETE FROM outbox WHERE n = ?1")?;
    for n in entries {
        // The closure holds every entry that shares a row with these: no other needs them.
        drop_shadow.execute([n])?;
        drop_keys.execute([n])?;
        drop_entry.execute([n])?;
    }
    Ok(())
}

/// Undo every pending entry (before a snapshot replaces the replica's state).
pub(crate) fn undo_all(conn: &Connection) -> Result<Vec<i64>> {
    if !any_pending(conn)? {
        return Ok(Vec::new());
    }
    ensure_capture(conn)?;
    let all = conn
        .prepare_cached("SELECT n FROM outbox")?
        .query_map([], |r| r.get::<_, i64>(0))?
        .collect::<rusqlite::Result<BTreeSet<_>>>()?;
    undo_entries(conn, all)
}

/// After a snapshot applied at `at`: redo every pending entry (see [`undo_all`]).
pub(crate) fn redo_all(conn: &Connection, at: i64) -> Result<()> {
    let all = conn
        .prepare_cached("SELECT n FROM outbox ORDER BY n")?
        .query_map([], |r| r.get::<_, i64>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    redo(conn, &all, at)
}

/// The entries that share a row with `seed`'s, transitively.
fn closure(conn: &Connection, mut set: BTreeSet<i64>) -> Result<BTreeSet<i64>> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT b.n FROM outbox_keys a JOIN outbox_keys b
           ON b.kind = a.kind AND b.ns = a.ns AND b.id = a.id AND b.model = a.model
         WHERE a.n = ?1",
    )?;
    let mut todo: Vec<i64> = set.iter().copied().collect();
    while let Some(n) = todo.pop() {
        for m in stmt.query_map([n], |r| r.get::<_, i64>(0))? {
            let m = m?;
            if set.insert(m) {
                todo.push(m);
            }
        }
    }
    Ok(set)
}

/// Write back the node's image of every row `entries` touched, and forget their keys.
fn undo_entries(conn: &Connection, entries: BTreeSet<i64>) -> Result<Vec<i64>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    conn.execute_batch("DELETE FROM temp.outbox_undo")?;
    {
        let mut mark = conn.prepare_cached("INSERT INTO temp.outbox_undo(n) VALUES (?1)")?;
        for n in &entries {
            mark.execute([n])?;
        }
    }
    // Rows the entries created go first (children before parents), then the node's images
    // come back (parents before children: an edge needs its entities).
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT s.kind, s.ns, s.id, s.model, s.present, s.data, s.embedding
         FROM temp.outbox_undo u JOIN outbox_keys k ON k.n = u.n
         JOIN outbox_shadow s
           ON s.kind = k.kind AND s.ns = k.ns AND s.id = k.id AND s.model = k.model
         ORDER BY s.present,
           CASE s.kind WHEN 'entity' THEN 1 WHEN 'note' THEN 2 WHEN 'event' THEN 3
                       WHEN 'edge' THEN 4 ELSE 5 END * (2 * s.present - 1)",
    )?;
    let shadows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, bool>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, Option<Vec<u8>>>(6)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (kind, ns, id, model, present, data, emb) in shadows {
        let kind: Kind = kind.parse()?;
        let change = Change {
            seq: 0,
            tx: 0,
            ts: 0,
            kind,
            op: if present { Op::Upsert } else { Op::Delete },
            model: (kind == Kind::Vector).then(|| model.clone()),
            data: if present { data } else { None },
            embedding: emb.as_deref().and_then(blob_to_embedding),
            ns: ns.clone(),
            id: id.clone(),
        };
        apply_row(conn, &change)?;
        conn.prepare_cached(
            "DELETE FROM outbox_shadow WHERE kind = ?1 AND ns = ?2 AND id = ?3 AND model = ?4",
        )?
        .execute(params![kind.as_str(), ns, id, model])?;
    }
    conn.execute_batch(
        "DELETE FROM outbox_keys WHERE n IN (SELECT n FROM temp.outbox_undo);
         DELETE FROM temp.outbox_undo;",
    )?;
    Ok(entries.into_iter().collect())
}

/// After a batch applied up to `applied`: drop the undone entries the node has confirmed at or
/// below it, and redo the others in order. A redo that fails now (its entity was deleted
/// upstream, say) leaves that entry without effect here; it stays for the node to judge.
pub(crate) fn redo(conn: &Connection, undone: &[i64], applied: i64) -> Result<()> {
    if undone.is_empty() {
        return Ok(());
    }
    let mut get = conn.prepare_cached("SELECT ops, seq FROM outbox WHERE n = ?1")?;
    for &n in undone {
        let Some((text, seq)) = get
            .query_row([n], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<i64>>(1)?))
            })
            .optional()?
        else {
            continue;
        };
        if seq.is_some_and(|s| s <= applied) {
            // The node's state holds it now.
            conn.prepare_cached("DELETE FROM outbox WHERE n = ?1")?
                .execute([n])?;
            continue;
        }
        let ops_: Vec<WriteOp> = serde_json::from_str(&text)?;
        conn.execute_batch("SAVEPOINT outbox_redo")?;
        match run_ops(conn, n, &ops_) {
            Ok(_) => conn.execute_batch("RELEASE outbox_redo")?,
            // It does not apply over the node's state now: no effect here until the node judges.
            Err(_) => conn.execute_batch("ROLLBACK TO outbox_redo; RELEASE outbox_redo")?,
        }
    }
    Ok(())
}
