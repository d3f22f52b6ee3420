//! Write ops: validate the one JSON write shape into typed rows, and write rows with SQL.
//!
//! The node's write path ([`execute`]) and the replica's apply path ([`crate::apply`]) share
//! the row-level statements here, so both targets write rows the same way. Everything runs
//! inside the caller's transaction; nothing here commits.

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::model::{Kind, Op, WriteOp};
use crate::schema;

mod bulk;
mod patch;
mod validate;
mod write;

pub(crate) use bulk::{insert_rows, EntityRun};
pub use bulk::{write_entities, EntityRow};
#[cfg(feature = "node")]
pub(crate) use patch::entity_patch;
#[cfg(feature = "node")]
pub(crate) use validate::entity_upsert;
use validate::upsert;
pub(crate) use write::{write_edge, write_entity, write_event, write_note, write_vector};

/// Longest id or namespace accepted, in bytes.
pub const MAX_ID: usize = 512;
/// Longest name, kind, relation or verb accepted, in bytes.
pub const MAX_NAME: usize = 16 * 1024;
/// Longest free text (description, content) accepted, in bytes: 1 MiB keeps one op well inside
/// the protocol's frame limit and keeps FTS5 tokenizing time per op in the milliseconds.
pub const MAX_TEXT: usize = 1024 * 1024;
/// Largest JSON object (properties, event data) accepted, serialized, in bytes.
pub const MAX_JSON: usize = 1024 * 1024;

/// Current time in microseconds since the Unix epoch.
pub fn now_us(conn: &Connection) -> Result<i64> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = conn;
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| Error::invalid(format!("system clock before 1970: {e}")))?;
        Ok(d.as_micros() as i64)
    }
    #[cfg(target_arch = "wasm32")]
    {
        // No SystemTime on wasm32-unknown-unknown; SQLite asks the host for the time.
        Ok(conn.query_row(&format!("SELECT {}", schema::NOW_US), [], |r| r.get(0))?)
    }
}

/// How far ahead of the writing node's clock a given `created_at`/`updated_at` may be (5
/// minutes, in µs): a later one (a writer whose clock is far ahead) is replaced with the node's
/// time. Earlier times are kept as given: a write made offline days ago, an import of history.
pub const MAX_CLOCK_AHEAD_US: i64 = 5 * 60 * 1_000_000;

/// A row's timestamp: the one the writer gave (see [`MAX_CLOCK_AHEAD_US`]), else `now`.
pub(crate) fn stamp(given: Option<i64>, now: i64) -> i64 {
    match given {
        Some(t) if t <= now.saturating_add(MAX_CLOCK_AHEAD_US) => t,
        _ => now,
    }
}

pub(crate) fn new_id(conn: &Connection) -> Result<String> {
    let mut b: [u8; 16] = conn
        .prepare_cached("SELECT randomblob(16)")?
        .query_row([], |r| {
            let v: Vec<u8> = r.get(0)?;
            Ok(v.try_into().unwrap_or([0u8; 16]))
        })?;
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// Check an id or a namespace.
pub(crate) fn check_key(what: &str, s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(Error::invalid(format!("{what} must not be empty")));
    }
    if s.len() > MAX_ID {
        return Err(Error::TooLarge {
            what: "id",
            size: s.len(),
            limit: MAX_ID,
        });
    }
    if s.contains('\0') {
        return Err(Error::invalid(format!(
            "{what} {s:?} contains a NUL character"
        )));
    }
    Ok(())
}

fn check_name(what: &'static str, s: &str, required: bool) -> Result<()> {
    if required && s.trim().is_empty() {
        return Err(Error::invalid(format!("{what} must not be empty")));
    }
    if s.len() > MAX_NAME {
        return Err(Error::TooLarge {
            what,
            size: s.len(),
            limit: MAX_NAME,
        });
    }
    Ok(())
}

fn check_text(what: &'static str, s: &str) -> Result<()> {
    if s.len() > MAX_TEXT {
        return Err(Error::TooLarge {
            what,
            size: s.len(),
            limit: MAX_TEXT,
        });
    }
    Ok(())
}

fn json_obj(what: &'static str, m: &Map<String, Value>) -> Result<String> {
    let s = serde_json::to_string(m)?;
    if s.len() > MAX_JSON {
        return Err(Error::TooLarge {
            what,
            size: s.len(),
            limit: MAX_JSON,
        });
    }
    Ok(s)
}

/// Check an embedding: finite values only, a sane dimension count.
pub(crate) fn check_embedding(v: &[f32]) -> Result<()> {
    if v.is_empty() || v.len() > schema::MAX_DIMS {
        return Err(Error::invalid(format!(
            "an embedding needs 1 to {} dimensions, got {}",
            schema::MAX_DIMS,
            v.len()
        )));
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::invalid(format!(
            "embedding value {i} is {}: only finite numbers are allowed",
            v[i]
        )));
    }
    if v.iter().all(|x| *x == 0.0) {
        return Err(Error::invalid(
            "an all-zero embedding has no direction: cosine distance is undefined",
        ));
    }
    if !cosine_safe(v) {
        return Err(Error::invalid(format!(
            "an embedding whose squared length is {} in 32-bit floats has no usable direction (cosine distance divides by its length): scale it, e.g. to length 1",
            squared_length(v)
        )));
    }
    Ok(())
}

/// The sum of the squares, in f32, as sqlite-vec sums them for cosine distance.
fn squared_length(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum()
}

/// True when sqlite-vec's cosine distance is defined for `v`: its squared length, summed in f32
/// as sqlite-vec does, is a normal number. Values such as 1e-30 square to 0 (the distance
/// divides by 0 and comes back NULL), values such as 1e20 square to infinity.
pub(crate) fn cosine_safe(v: &[f32]) -> bool {
    squared_length(v).is_normal()
}

/// Result of one executed op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpResult {
    /// The row's id (for vectors, the subject).
    pub id: String,
}

/// The namespace of a write op, checked.
fn check_ns(ns: &str) -> Result<()> {
    check_key("namespace", ns)?;
    if ns.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "namespace {ns:?} contains a control character"
        )));
    }
    Ok(())
}

/// The `data` of an upsert op, checked for shape (a JSON object, the key inside it).
fn upsert_data(op: &WriteOp) -> Result<&Value> {
    if op.id.is_some() || op.model.is_some() {
        return Err(Error::invalid(
            "an upsert carries its key inside `data`; `id` and `model` belong to deletes",
        ));
    }
    let data = op
        .data
        .as_ref()
        .ok_or_else(|| Error::invalid(format!("upsert of {} needs `data`", op.kind)))?;
    if !data.is_object() {
        return Err(Error::invalid(format!(
            "`data` of a {} upsert must be a JSON object",
            op.kind
        )));
    }
    Ok(data)
}

/// Validate and execute one write op inside the caller's transaction.
pub fn execute(conn: &Connection, op: &WriteOp, now: i64) -> Result<OpResult> {
    check_ns(&op.ns)?;
    match op.op {
        Op::Upsert => upsert(conn, op.kind, &op.ns, upsert_data(op)?, now),
        Op::Patch => {
            let (id, fields) = patch::target(op)?;
            let row = patch::patched(conn, op.kind, &op.ns, id, fields)?;
            upsert(conn, op.kind, &op.ns, &row, now)
        }
        Op::Delete => {
            if op.data.is_some() {
                return Err(Error::invalid(
                    "a delete carries `id` (and `model` for vectors), not `data`",
                ));
            }
            let id = op
                .id
                .as_deref()
                .ok_or_else(|| Error::invalid(format!("delete of {} needs `id`", op.kind)))?;
            check_key("id", id)?;
            delete(conn, op.kind, &op.ns, id, op.model.as_deref())?;
            Ok(OpResult { id: id.to_string() })
        }
    }
}

fn exists(conn: &Connection, table: &str, ns: &str, id: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached(&format!("SELECT 1 FROM {table} WHERE ns = ?1 AND id = ?2"))?
        .query_row(params![ns, id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Delete a row. Deleting an entity or note also deletes its vectors (explicitly, so each is
/// logged); deleting an entity deletes its edges (by trigger, logged too).
pub fn delete(
    conn: &Connection,
    kind: Kind,
    ns: &str,
    id: &str,
    model: Option<&str>,
) -> Result<()> {
    match kind {
        Kind::Event => {
            return Err(Error::invalid(
                "events are append-only and cannot be deleted",
            ));
        }
        Kind::Vector => {
            let model = model.ok_or_else(|| {
                Error::invalid("delete of a vector needs `model` as well as `id`")
            })?;
            conn.prepare_cached(
                "DELETE FROM vectors WHERE ns = ?1 AND subject = ?2 AND model = ?3",
            )?
            .execute(params![ns, id, model])?;
            return Ok(());
        }
        _ => {}
    }
    if model.is_some() {
        return Err(Error::invalid(format!(
            "`model` applies to vector deletes, not {kind}"
        )));
    }
    let n = conn
        .prepare_cached(&format!(
            "DELETE FROM {} WHERE ns = ?1 AND id = ?2",
            kind.table()
        ))?
        .execute(params![ns, id])?;
    if n > 0 && matches!(kind, Kind::Entity | Kind::Note) {
        let other = if kind == Kind::Entity {
            "notes"
        } else {
            "entities"
        };
        if !exists(conn, other, ns, id)? {
            conn.prepare_cached("DELETE FROM vectors WHERE ns = ?1 AND subject = ?2")?
                .execute(params![ns, id])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
