//! Reads, shared by the node and the wasm replica: rows, full-text search, vector KNN, hybrid
//! search, graph traversal, and the change log. Every function takes a plain `&Connection`;
//! the caller picks the connection (a pooled reader natively, the replica's one in wasm).

mod changes;
mod digest;
mod graph;
mod search;
mod sql;
mod vector;

pub use changes::{
    changes_page, changes_since, head, horizon, snapshot, snapshot_page, ChangeFilter, Snapshot,
    SnapshotCursor,
};
pub use digest::{digest, StateDigest};
pub use graph::{neighbors, traverse, Direction, Hop, Neighbor};
pub use search::{fts_query, search, SearchHit, SearchQuery};
pub use sql::sql_json;
pub use vector::{hybrid, knn, HybridHit, KnnHit, KnnQuery};

use rusqlite::{params, Connection, OptionalExtension};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::model::{blob_to_embedding, Edge, Entity, Event, Kind, Note, Vector};
use crate::schema::row_image_sql;

/// Default and largest page sizes for list reads.
pub const DEFAULT_LIMIT: usize = 100;
/// Upper bound on any single read's result count, so one request cannot pin a reader for long.
pub const MAX_LIMIT: usize = 10_000;

pub(crate) fn clamp_limit(limit: usize) -> i64 {
    limit.clamp(1, MAX_LIMIT) as i64
}

fn decode<T: DeserializeOwned>(json: &str) -> Result<T> {
    serde_json::from_str(json)
        .map_err(|e| Error::invalid(format!("stored row does not decode ({e}): {json}")))
}

fn get_row<T: DeserializeOwned>(
    conn: &Connection,
    kind: Kind,
    ns: &str,
    id: &str,
) -> Result<Option<T>> {
    let sql = format!(
        "SELECT {} FROM {} WHERE ns = ?1 AND id = ?2",
        row_image_sql(kind, ""),
        kind.table()
    );
    let json: Option<String> = conn
        .prepare_cached(&sql)?
        .query_row(params![ns, id], |r| r.get(0))
        .optional()?;
    json.map(|j| decode(&j)).transpose()
}

/// One row of any kind, as JSON (None when absent): the one dispatch on kind that the CLI,
/// the store and the browser replica share. A vector is keyed by its subject and `model`.
pub fn get_json(
    conn: &Connection,
    kind: Kind,
    ns: &str,
    id: &str,
    model: Option<&str>,
) -> Result<Option<serde_json::Value>> {
    let v = match kind {
        Kind::Entity => serde_json::to_value(get_entity(conn, ns, id)?),
        Kind::Edge => serde_json::to_value(get_edge(conn, ns, id)?),
        Kind::Note => serde_json::to_value(get_note(conn, ns, id)?),
        Kind::Event => serde_json::to_value(get_event(conn, ns, id)?),
        Kind::Vector => {
            let model = model.ok_or_else(|| {
                Error::invalid("a vector is keyed by subject and model: give the model")
            })?;
            serde_json::to_value(get_vector(conn, ns, id, model)?)
        }
    }?;
    Ok((!v.is_null()).then_some(v))
}

/// A page of rows of one kind, in id order, as JSON (unexpired notes as of `now_us`): the
/// list counterpart of [`get_json`]. Vectors are not listed (KNN finds them; `get_json`
/// reads one).
pub fn list_json(
    conn: &Connection,
    kind: Kind,
    q: &ListQuery,
    now_us: i64,
) -> Result<Vec<serde_json::Value>> {
    fn json<T: serde::Serialize>(rows: Vec<T>) -> Result<Vec<serde_json::Value>> {
        rows.into_iter()
            .map(|r| serde_json::to_value(r).map_err(Error::from))
            .collect()
    }
    match kind {
        Kind::Entity => json(list_entities(conn, q)?),
        Kind::Edge => json(list_edges(conn, q)?),
        Kind::Note => json(list_notes(conn, q, now_us)?),
        Kind::Event => json(list_events(conn, q)?),
        Kind::Vector => Err(Error::invalid(
            "vectors are not listed: find them with knn, or read one by subject and model",
        )),
    }
}

/// One entity.
pub fn get_entity(conn: &Connection, ns: &str, id: &str) -> Result<Option<Entity>> {
    get_row(conn, Kind::Entity, ns, id)
}
/// One edge.
pub fn get_edge(conn: &Connection, ns: &str, id: &str) -> Result<Option<Edge>> {
    get_row(conn, Kind::Edge, ns, id)
}
/// One note (expired notes included: `get` is by key).
pub fn get_note(conn: &Connection, ns: &str, id: &str) -> Result<Option<Note>> {
    get_row(conn, Kind::Note, ns, id)
}
/// One event.
pub fn get_event(conn: &Connection, ns: &str, id: &str) -> Result<Option<Event>> {
    get_row(conn, Kind::Event, ns, id)
}

/// One vector.
pub fn get_vector(
    conn: &Connection,
    ns: &str,
    subject: &str,
    model: &str,
) -> Result<Option<Vector>> {
    let sql = format!(
        "SELECT {}, {} FROM vectors WHERE ns = ?1 AND subject = ?2 AND model = ?3",
        row_image_sql(Kind::Vector, ""),
        crate::schema::embedding_sql("vectors.")
    );
    let row: Option<(String, Vec<u8>)> = conn
        .prepare_cached(&sql)?
        .query_row(params![ns, subject, model], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    row.map(|(j, b)| vector_from(&j, &b)).transpose()
}

pub(crate) fn vector_from(json: &str, blob: &[u8]) -> Result<Vector> {
    let mut obj: serde_json::Map<String, serde_json::Value> = decode(json)?;
    let emb = blob_to_embedding(blob)
        .ok_or_else(|| Error::invalid("stored embedding is not a whole number of f32s"))?;
    obj.insert("embedding".into(), serde_json::to_value(emb)?);
    Ok(serde_json::from_value(serde_json::Value::Object(obj))?)
}

/// A page of rows of one kind.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Namespace to read (required: lists never mix namespaces).
    pub ns: String,
    /// Only rows of this `kind` column (entities, notes) / `relation` (edges) / `verb` (events).
    pub kind: Option<String>,
    /// Rows whose id sorts after this one (keyset pagination).
    pub after: Option<String>,
    /// Page size.
    pub limit: usize,
}

fn list_rows<T: DeserializeOwned>(
    conn: &Connection,
    kind: Kind,
    q: &ListQuery,
    extra: &str,
) -> Result<Vec<T>> {
    let kcol = match kind {
        Kind::Edge => "relation",
        Kind::Event => "verb",
        _ => "kind",
    };
    let sql = format!(
        "SELECT {} FROM {} WHERE ns = ?1 AND (?2 IS NULL OR {kcol} = ?2) AND (?3 IS NULL OR id > ?3) {extra}
         ORDER BY id LIMIT ?4",
        row_image_sql(kind, ""),
        kind.table()
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![q.ns, q.kind, q.after, clamp_limit(q.limit)], |r| {
        r.get::<_, String>(0)
    })?;
    let mut out = Vec::new();
    for j in rows {
        out.push(decode(&j?)?);
    }
    Ok(out)
}

/// Entities in id order.
pub fn list_entities(conn: &Connection, q: &ListQuery) -> Result<Vec<Entity>> {
    list_rows(conn, Kind::Entity, q, "")
}
/// Edges in id order.
pub fn list_edges(conn: &Connection, q: &ListQuery) -> Result<Vec<Edge>> {
    list_rows(conn, Kind::Edge, q, "")
}
/// Notes in id order, leaving out expired ones.
pub fn list_notes(conn: &Connection, q: &ListQuery, now_us: i64) -> Result<Vec<Note>> {
    list_rows(
        conn,
        Kind::Note,
        q,
        &format!("AND (expires_at IS NULL OR expires_at > {now_us})"),
    )
}
/// Events in id order.
pub fn list_events(conn: &Connection, q: &ListQuery) -> Result<Vec<Event>> {
    list_rows(conn, Kind::Event, q, "")
}

/// Row counts per kind in a namespace (all namespaces when `None`).
pub fn counts(conn: &Connection, ns: Option<&str>) -> Result<Vec<(Kind, i64)>> {
    let mut out = Vec::new();
    for k in Kind::ALL {
        let n: i64 = conn
            .prepare_cached(&format!(
                "SELECT count(*) FROM {} WHERE ?1 IS NULL OR ns = ?1",
                k.table()
            ))?
            .query_row([ns], |r| r.get(0))?;
        out.push((k, n));
    }
    Ok(out)
}

/// Namespaces that hold at least one row.
pub fn namespaces(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT ns FROM entities UNION SELECT ns FROM edges UNION SELECT ns FROM notes
         UNION SELECT ns FROM events UNION SELECT ns FROM vectors ORDER BY 1",
    )?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
