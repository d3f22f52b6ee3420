//! The change log read side: head and horizon, changes after a cursor, and consistent
//! snapshots of current state.

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{Change, Kind};
use crate::schema::row_image_sql;

/// Which changes a reader wants.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeFilter {
    /// Only these namespaces; all when `None`.
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
    /// Only these kinds; all when `None`.
    #[serde(default)]
    pub kinds: Option<Vec<Kind>>,
}

impl ChangeFilter {
    /// True when a change in `ns` of `kind` passes the filter.
    pub fn matches(&self, ns: &str, kind: Kind) -> bool {
        self.namespaces
            .as_ref()
            .is_none_or(|n| n.iter().any(|x| x == ns))
            && self.kinds.as_ref().is_none_or(|k| k.contains(&kind))
    }

    fn sql_params(&self) -> Result<(Option<String>, Option<String>)> {
        let ns = self
            .namespaces
            .as_ref()
            .map(serde_json::to_string)
            .transpose()?;
        let kinds = self
            .kinds
            .as_ref()
            .map(|k| serde_json::to_string(&k.iter().map(|k| k.as_str()).collect::<Vec<_>>()))
            .transpose()?;
        Ok((ns, kinds))
    }
}

/// The last seq written (0 for an empty log). Survives trimming: it is AUTOINCREMENT's counter.
pub fn head(conn: &Connection) -> Result<i64> {
    Ok(conn
        .prepare_cached(
            "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0),
                        coalesce((SELECT max(seq) FROM changes), 0))",
        )?
        .query_row([], |r| r.get(0))?)
}

/// The oldest seq still in the log (head + 1 when the log is empty). A reader whose cursor is
/// below `horizon - 1` has missed trimmed changes and needs a snapshot.
pub fn horizon(conn: &Connection) -> Result<i64> {
    let min: Option<i64> = conn
        .prepare_cached("SELECT min(seq) FROM changes")?
        .query_row([], |r| r.get(0))?;
    match min {
        Some(m) => Ok(m),
        None => Ok(head(conn)? + 1),
    }
}

pub(crate) fn change_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Change> {
    let kind: String = r.get(4)?;
    let op: String = r.get(5)?;
    let emb: Option<Vec<u8>> = r.get(9)?;
    let bad = |what: &str, v: String| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("bad {what} {v:?} in changes").into(),
        )
    };
    Ok(Change {
        seq: r.get(0)?,
        tx: r.get(1)?,
        ts: r.get(2)?,
        ns: r.get(3)?,
        kind: kind.parse().map_err(|_| bad("kind", kind.clone()))?,
        op: op.parse().map_err(|_| bad("op", op.clone()))?,
        id: r.get(6)?,
        model: r.get(7)?,
        data: r.get(8)?,
        embedding: emb.and_then(|b| crate::model::blob_to_embedding(&b)),
    })
}

/// Changes with seq > `after` passing `filter`, ascending, at most about `limit`: the last
/// transaction is completed past `limit`, so a batch never splits a commit.
pub fn changes_since(
    conn: &Connection,
    after: i64,
    filter: &ChangeFilter,
    limit: usize,
) -> Result<Vec<Change>> {
    Ok(changes_page(conn, after, filter, limit, usize::MAX)?.0)
}

/// [`changes_since`] bounded in bytes too (`Change::frame_bytes`): it stops at a transaction's
/// end once `limit` changes or `max_bytes` are in, and inside a transaction once `max_bytes` is
/// passed twice over (a commit of millions of rows must not be read into memory whole). True
/// with the rows when it stopped early, so more may follow the last one.
pub fn changes_page(
    conn: &Connection,
    after: i64,
    filter: &ChangeFilter,
    limit: usize,
    max_bytes: usize,
) -> Result<(Vec<Change>, bool)> {
    let (ns, kinds) = filter.sql_params()?;
    let limit = limit.clamp(1, 1_000_000) as i64;
    let cols = format!(
        "seq, tx, ts, ns, kind, op, id, model, data, {}",
        crate::schema::LOGGED_EMBEDDING_SQL
    );
    let cond = "(?2 IS NULL OR ns IN (SELECT value FROM json_each(?2)))
                AND (?3 IS NULL OR kind IN (SELECT value FROM json_each(?3)))";
    // One statement without LIMIT, stepped until `limit` rows are in and the transaction
    // ends: a bound LIMIT made SQLite re-prepare the statement on every call, and a follow-up
    // `tx = ?` query scanned the rest of the log (catch-up went quadratic); benches/README.md
    // (sync node) has the measurements.
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {cols} FROM changes WHERE seq > ?1 AND {cond} ORDER BY seq"
    ))?;
    let mut rows = stmt.query(params![after, ns, kinds])?;
    let mut out: Vec<Change> = Vec::new();
    let mut bytes = 0usize;
    while let Some(r) = rows.next()? {
        let c = change_from_row(r)?;
        let full = out.len() as i64 >= limit || bytes >= max_bytes;
        if (full && out.last().is_some_and(|l| l.tx != c.tx))
            || bytes >= max_bytes.saturating_mul(2)
        {
            return Ok((out, true));
        }
        bytes += c.frame_bytes();
        out.push(c);
    }
    Ok((out, false))
}

/// Where a snapshot read in pages stands: the kind being read (index into [`Kind::ALL`]) and
/// the last rowid read of it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotCursor {
    kind: usize,
    after: i64,
}

/// One page of a snapshot read in pages, each page in a read transaction of its own, so a
/// reader is never held while the page travels: rows of the kinds and namespaces `filter`
/// passes after `cursor`, at most `max_rows` and about `max_bytes`, stamped with seq `at`. The
/// cursor moves past them; `None` once every kind was read.
///
/// Pages read at different times are not one consistent image: a row changed after `at` may
/// come as written after `at`, or not at all (deleted, or written again under a reused rowid
/// the cursor has passed). Served with every change after `at` following it, the result
/// converges to the state at the head all the same: a row unchanged since `at` keeps its rowid
/// and is always read, each change carries the row's full image, and applying an image or a
/// delete again is harmless (the snapshot's apply also replaces an edge that holds
/// the same (source, target, relation) under another id, as only a later page can show it).
pub fn snapshot_page(
    conn: &Connection,
    filter: &ChangeFilter,
    at: i64,
    cursor: &mut SnapshotCursor,
    max_rows: usize,
    max_bytes: usize,
) -> Result<Option<Vec<Change>>> {
    let (ns, _) = filter.sql_params()?;
    let max_rows = max_rows.max(1);
    let mut out = Vec::new();
    let mut bytes = 0usize;
    while cursor.kind < Kind::ALL.len() {
        let kind = Kind::ALL[cursor.kind];
        if !filter.kinds.as_ref().is_none_or(|k| k.contains(&kind)) {
            *cursor = SnapshotCursor {
                kind: cursor.kind + 1,
                after: 0,
            };
            continue;
        }
        let (id, model, ts, emb) = match kind {
            Kind::Vector => (
                "subject",
                "model",
                "updated_at",
                crate::schema::embedding_sql("vectors."),
            ),
            Kind::Event => ("id", "NULL", "created_at", "NULL".to_string()),
            _ => ("id", "NULL", "updated_at", "NULL".to_string()),
        };
        let sql = format!(
            "SELECT ?2, ?2, {ts}, ns, '{k}', 'upsert', {id}, {model}, {img}, {emb}, rowid FROM {t}
             WHERE rowid > ?3 AND (?1 IS NULL OR ns IN (SELECT value FROM json_each(?1)))
             ORDER BY rowid",
            k = kind.as_str(),
            img = row_image_sql(kind, ""),
            t = kind.table()
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(params![ns, at, cursor.after])?;
        while let Some(r) = rows.next()? {
            let c = change_from_row(r)?;
            cursor.after = r.get(10)?;
            bytes += c.frame_bytes();
            out.push(c);
            if out.len() >= max_rows || bytes >= max_bytes {
                return Ok(Some(out));
            }
        }
        *cursor = SnapshotCursor {
            kind: cursor.kind + 1,
            after: 0,
        };
    }
    Ok((!out.is_empty()).then_some(out))
}

/// A consistent image of current state.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The seq the image was taken at: every change up to it is in, none after it.
    pub at: i64,
    /// Every row, as an upsert change with `seq = at`.
    pub rows: Vec<Change>,
}

/// Read every row passing `filter` in one read transaction, handing them to `sink` in chunks of
/// at most `chunk` rows (entities, notes, edges, vectors, then events, so endpoints come
/// first). Returns the seq the snapshot was taken at.
pub fn snapshot(
    conn: &Connection,
    filter: &ChangeFilter,
    chunk: usize,
    mut sink: impl FnMut(i64, Vec<Change>) -> Result<()>,
) -> Result<i64> {
    let chunk = chunk.max(1);
    if !conn.is_autocommit() {
        return Err(Error::invalid(
            "snapshot needs a connection with no open transaction",
        ));
    }
    conn.execute_batch("BEGIN")?;
    let res = (|| {
        let at = head(conn)?;
        let mut cursor = SnapshotCursor::default();
        while let Some(rows) = snapshot_page(conn, filter, at, &mut cursor, chunk, usize::MAX)? {
            sink(at, rows)?;
        }
        Ok(at)
    })();
    // A read transaction: ending it cannot lose anything, so COMMIT whatever happened.
    let _ = conn.execute_batch("COMMIT");
    res
}
