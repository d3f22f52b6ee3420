//! Vector models, per namespace. A model is identified by (ns, model); the first vector of a
//! model in a namespace fixes that pair's dimension count, so namespaces never affect each
//! other's models.
//!
//! Every model with the same dimension count shares one sqlite-vec `vec0` table, `vec_d<dims>`,
//! with `ns` and `model` as its partition keys (a KNN query names both, or just the model, and
//! vec0 only scans the chunks of that partition).
//!
//! vec0 gives every partition chunks of its own, 1,024 vectors each by default, allocated whole:
//! one 8,192-dimension vector in a new (ns, model) pair took 32 MiB of disk, so any writer could
//! fill a disk with a few writes to new namespaces (issue 23). So a pair starts in a second
//! table of its dimension count, `vec_s<dims>`, whose chunks hold 8 vectors (vec0's smallest),
//! and moves to `vec_d<dims>` once it has [`SMALL_PAIR_VECTORS`] vectors, where a chunk is at
//! most 1,024 / 128 = 8 times the bytes its pair's vectors take: a pair's index is never more
//! than about 8 times its vectors' bytes, plus a few hundred bytes of rows, whatever the mix of
//! namespaces and models. `vector_models.small` says which table holds a pair (schema 8: pairs
//! registered before stay in `vec_d<dims>`); KNN on a small pair scans at most 16 chunks. Registering a model of a dimension count
//! already seen is one row in `vector_models`: no DDL, no trigger. (Until migration 5 each model
//! had its own vec0 table and three triggers of its own on `vectors`: every registration
//! re-parsed a schema that grew with the number of models, and every vector write evaluated
//! every model's trigger; with 1,800 models one write of 100 new models held the writer 30 s.)
//!
//! The three fixed `vectors` triggers queue each change of the table in `fts_queue` (rows with
//! `tbl = 'vectors'`: `i` with the rowid to index, `d` with the rowid and the dimension count of
//! the embedding to remove), and [`drain_vectors`] applies them to the vec0 tables when the
//! queue is drained, before hivesync commits: the same path as full-text updates, so a vector
//! written with plain SQL by another program is indexed when a hivesync process next touches
//! the file, like its text.
//!
//! Each embedding is stored once (migration 7): once the drain has put a row's embedding into
//! its vec0 table, the row's `embedding` is set to NULL, and the vec0 table is its store of
//! record; a NULL `embedding` always means "held by the index". `vec_all` is a view over every
//! vec0 table (`vid`, `embedding`), so SQL reads either copy with [`embedding_sql`]: the log
//! triggers, snapshots, the digest and point reads. A row whose embedding is not indexed (a
//! plain-SQL write not yet drained, or one of no registered model) keeps it in the row.

use rusqlite::{params, Connection, OptionalExtension};

use super::triggers::{log_triggers, log_triggers_when, with_mode, Mode};
use crate::error::{Error, Result};
use crate::model::Kind;

/// Largest embedding accepted. sqlite-vec's own limit is 8192 dimensions.
pub const MAX_DIMS: usize = 8192;

/// Most vector models one namespace may register through the write path. A write that would
/// register one more is refused with an error naming this limit. (Databases migrated from
/// schema 4, where models were global, keep every model they had, even past the limit; a
/// replica registers what its upstream sends, unchecked, as the upstream checked it.)
pub const MAX_MODELS_PER_NS: usize = 64;

/// Vectors a (ns, model) pair keeps in its dimension count's small-chunk table (`vec_s<dims>`)
/// before they move to `vec_d<dims>`: with 1,024-vector chunks there, a pair that moves takes at
/// most 8 times its vectors' bytes, as in the small table (chunks of `SMALL_CHUNK`).
pub const SMALL_PAIR_VECTORS: i64 = 128;
/// Vectors per chunk in the small tables: vec0's smallest (a multiple of 8).
const SMALL_CHUNK: usize = 8;

/// A registered vector model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    /// The namespace the model belongs to.
    pub ns: String,
    /// Model name as given by writers.
    pub model: String,
    /// Fixed dimension count of its embeddings.
    pub dims: usize,
    /// Name of the vec0 table it shares with the other models of its dimension count
    /// (`vec_d<dims>`, or `vec_s<dims>` while it has few vectors).
    pub table: String,
}

/// A vector row's embedding as SQL, for the row `p` (`new.`, `old.`, `vectors.`): the row's
/// own copy, or the one its vec0 table holds (see the module documentation).
pub fn embedding_sql(p: &str) -> String {
    format!("coalesce({p}embedding, (SELECT embedding FROM vec_all WHERE vid = {p}rowid))")
}

/// A change row's embedding (read with the row as `changes`, unaliased): its own copy, or,
/// for the vector upsert that is its key's current one (logged by reference, schema 7), the
/// embedding the index holds now. Every change to a key's embedding first copies it into the
/// by-reference row (`ops::write_vector`, the `vectors` triggers), so that row always reads
/// what it logged.
pub(crate) const LOGGED_EMBEDDING_SQL: &str = "coalesce(changes.embedding,
    CASE WHEN changes.kind = 'vector' AND changes.op = 'upsert' THEN
      (SELECT x.embedding FROM vectors v JOIN vec_all x ON x.vid = v.rowid
       WHERE v.ns = changes.ns AND v.subject = changes.id AND v.model = changes.model
         AND v.log_seq = changes.seq) END)";

/// The statement that copies a vector's embedding (as the row `p` holds it, see
/// [`embedding_sql`]) into the change row that logged it by reference, if there is one.
fn materialize_sql(p: &str) -> String {
    format!(
        "UPDATE changes SET embedding = {} WHERE seq = {p}log_seq AND embedding IS NULL;",
        embedding_sql(p)
    )
}

/// (Re)create the view `vec_all(vid, embedding)` over every vec0 table there is.
fn refresh_vec_view(conn: &Connection) -> Result<()> {
    let tables: Vec<String> = conn
        .prepare_cached(
            "SELECT name FROM sqlite_master WHERE type = 'table'
               AND (name GLOB 'vec_d[0-9]*' OR name GLOB 'vec_s[0-9]*')
               AND name NOT GLOB 'vec_?*_*' ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let body = if tables.is_empty() {
        "SELECT NULL, NULL WHERE 0".to_string()
    } else {
        tables
            .iter()
            .map(|t| format!("SELECT rowid, embedding FROM {t}"))
            .collect::<Vec<_>>()
            .join(" UNION ALL ")
    };
    conn.execute_batch(&format!(
        "DROP VIEW IF EXISTS vec_all; CREATE VIEW vec_all(vid, embedding) AS {body};"
    ))?;
    Ok(())
}

/// The vec0 table of the models with `dims` dimensions that have many vectors.
pub(crate) fn vec_table(dims: usize) -> String {
    format!("vec_d{dims}")
}

/// The vec0 table (chunks of [`SMALL_CHUNK`]) of the models with `dims` dimensions that have
/// fewer than [`SMALL_PAIR_VECTORS`] vectors.
pub(crate) fn small_vec_table(dims: usize) -> String {
    format!("vec_s{dims}")
}

fn table_for(dims: usize, small: bool) -> String {
    if small {
        small_vec_table(dims)
    } else {
        vec_table(dims)
    }
}

fn info_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ModelInfo> {
    let dims: i64 = r.get(2)?;
    Ok(ModelInfo {
        ns: r.get(0)?,
        model: r.get(1)?,
        dims: dims as usize,
        table: table_for(dims as usize, r.get(3)?),
    })
}

/// The model `model` of namespace `ns`, if registered.
pub fn model_by_name(conn: &Connection, ns: &str, model: &str) -> Result<Option<ModelInfo>> {
    Ok(conn
        .prepare_cached(
            "SELECT ns, model, dims, small FROM vector_models WHERE ns = ?1 AND model = ?2",
        )?
        .query_row([ns, model], info_from_row)
        .optional()?)
}

/// The vec0 tables that hold the model `model`'s vectors of `dims` dimensions, across
/// namespaces (one or both of `vec_d<dims>` and `vec_s<dims>`).
pub(crate) fn model_tables(conn: &Connection, model: &str, dims: usize) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached(
        "SELECT DISTINCT small FROM vector_models WHERE model = ?1 AND dims = ?2 ORDER BY small",
    )?;
    let rows = stmt.query_map(params![model, dims as i64], |r| r.get::<_, bool>(0))?;
    Ok(rows
        .map(|s| s.map(|s| table_for(dims, s)))
        .collect::<rusqlite::Result<_>>()?)
}

/// The dimension counts the model `model` has across namespaces, smallest first (one, unless
/// namespaces chose different ones).
pub(crate) fn model_dims(conn: &Connection, model: &str) -> Result<Vec<usize>> {
    let mut stmt = conn
        .prepare_cached("SELECT DISTINCT dims FROM vector_models WHERE model = ?1 ORDER BY dims")?;
    let rows = stmt.query_map([model], |r| r.get::<_, i64>(0))?;
    Ok(rows
        .map(|d| d.map(|d| d as usize))
        .collect::<rusqlite::Result<_>>()?)
}

/// All registered models, in the order they were registered.
pub fn models(conn: &Connection) -> Result<Vec<ModelInfo>> {
    let mut stmt =
        conn.prepare_cached("SELECT ns, model, dims, small FROM vector_models ORDER BY rowid")?;
    let rows = stmt.query_map([], info_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Whether [`ensure_model`] enforces [`MAX_MODELS_PER_NS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ModelLimit {
    /// The write path: a namespace's models are capped.
    Enforce,
    /// A replica applying its upstream's rows: the upstream already decided.
    Upstream,
}

/// Return the model `model` of `ns`, registering it if it is new (one row in `vector_models`,
/// and the small vec0 table of its dimension count if this is the first model with that count).
/// Must run inside the caller's write transaction so the model and its first vector commit
/// together.
pub(crate) fn ensure_model(
    conn: &Connection,
    ns: &str,
    model: &str,
    dims: usize,
    limit: ModelLimit,
) -> Result<ModelInfo> {
    if let Some(info) = model_by_name(conn, ns, model)? {
        if info.dims != dims {
            return Err(Error::invalid(format!(
                "model {model:?} has {} dimensions in namespace {ns:?}, this embedding has {dims}",
                info.dims
            )));
        }
        return Ok(info);
    }
    if model.is_empty() || model.len() > 128 || model.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "invalid model name {model:?}: 1 to 128 bytes, no control characters"
        )));
    }
    if dims == 0 || dims > MAX_DIMS {
        return Err(Error::invalid(format!(
            "an embedding needs 1 to {MAX_DIMS} dimensions, got {dims}"
        )));
    }
    if limit == ModelLimit::Enforce {
        let n: i64 = conn
            .prepare_cached("SELECT count(*) FROM vector_models WHERE ns = ?1")?
            .query_row([ns], |r| r.get(0))?;
        if n as usize >= MAX_MODELS_PER_NS {
            return Err(Error::invalid(format!(
                "namespace {ns:?} already has {n} vector models, the limit \
                 (MAX_MODELS_PER_NS = {MAX_MODELS_PER_NS}): model {model:?} is not registered; \
                 reuse a model name or write to another namespace"
            )));
        }
    }
    conn.prepare_cached(
        "INSERT INTO vector_models(ns, model, dims, small) VALUES (?1, ?2, ?3, 1)",
    )?
    .execute(params![ns, model, dims as i64])?;
    let t = ensure_vec_table(conn, dims, true)?;
    // Vectors of this (ns, model) written before it was registered (plain SQL) are indexed now,
    // except those the queue will index when it is drained.
    conn.prepare_cached(&index_sql(
        &t,
        "AND v.ns = ?2 AND v.model = ?3 AND v.rowid NOT IN (SELECT rid FROM fts_queue WHERE tbl = 'vectors' AND op = 'i')",
    ))?
    .execute(params![dims as i64, ns, model])?;
    let t = grow_pair(conn, ns, model, dims)?.unwrap_or(t);
    Ok(ModelInfo {
        ns: ns.to_string(),
        model: model.to_string(),
        dims,
        table: t,
    })
}

/// Move the pair (ns, model) from the small table of `dims` dimensions to the large one once
/// it has [`SMALL_PAIR_VECTORS`] vectors; returns the large table's name when it moved. Call
/// it after adding a vector to a small pair.
pub(crate) fn grow_pair(
    conn: &Connection,
    ns: &str,
    model: &str,
    dims: usize,
) -> Result<Option<String>> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM (SELECT 1 FROM vectors WHERE ns = ?1 AND model = ?2 LIMIT ?3)",
        )?
        .query_row(params![ns, model, SMALL_PAIR_VECTORS], |r| r.get(0))?;
    if n < SMALL_PAIR_VECTORS {
        return Ok(None);
    }
    let (small, large) = (small_vec_table(dims), ensure_vec_table(conn, dims, false)?);
    let rows: Vec<(i64, String)> = conn
        .prepare_cached("SELECT rowid, kind FROM vectors WHERE ns = ?1 AND model = ?2")?
        .query_map([ns, model], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut copy = conn.prepare_cached(&format!(
        "INSERT INTO {large}(rowid, embedding, ns, model, kind)
         SELECT rowid, embedding, ?2, ?3, ?4 FROM {small} WHERE rowid = ?1"
    ))?;
    let mut remove = conn.prepare_cached(&format!("DELETE FROM {small} WHERE rowid = ?1"))?;
    for (rowid, kind) in rows {
        if copy.execute(params![rowid, ns, model, kind])? > 0 {
            remove.execute([rowid])?;
        }
    }
    conn.prepare_cached("UPDATE vector_models SET small = 0 WHERE ns = ?1 AND model = ?2")?
        .execute([ns, model])?;
    Ok(Some(large))
}

/// True when `vec_all` exists (schema 7 and later).
fn view_exists(conn: &Connection) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'view' AND name = 'vec_all')",
        )?
        .query_row([], |r| r.get(0))?)
}

/// True when the vec0 table `t` exists.
fn table_exists(conn: &Connection, t: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
        )?
        .query_row([t], |r| r.get(0))?)
}

/// The statement that indexes, in the vec0 table `t` of `?1` dimensions, the vectors of
/// registered models of that count which also meet `cond` (`AND ...`, or empty; `m` is the
/// vector's model).
fn index_sql(t: &str, cond: &str) -> String {
    format!(
        "INSERT INTO {t}(rowid, embedding, ns, model, kind)
         SELECT v.rowid, v.embedding, v.ns, v.model, v.kind FROM vectors v
         JOIN vector_models m ON m.ns = v.ns AND m.model = v.model AND m.dims = ?1
         WHERE length(v.embedding) = ?1 * 4 {cond}
         ORDER BY v.rowid"
    )
}

/// Create the vec0 table of `dims` dimensions (the small one, or the large one) if it does not
/// exist yet; returns its name.
fn ensure_vec_table(conn: &Connection, dims: usize, small: bool) -> Result<String> {
    let t = table_for(dims, small);
    if !table_exists(conn, &t)? {
        let chunk = if small {
            format!(", chunk_size={SMALL_CHUNK}")
        } else {
            String::new()
        };
        conn.execute_batch(&format!(
            "CREATE VIRTUAL TABLE {t} USING vec0(
               embedding float[{dims}] distance_metric=cosine,
               ns text partition key, model text partition key, kind text{chunk})"
        ))?;
        if view_exists(conn)? {
            refresh_vec_view(conn)?;
        }
    }
    Ok(t)
}

/// Apply the queued `vectors` changes to the vec0 tables (part of
/// [`drain_fts_queue`](super::drain_fts_queue), which then empties the queue).
///
/// Every queued removal is applied first (a row's old embedding leaves the table of its old
/// dimension count; a rowid that is not there is no error), then every row with a queued insert
/// that still exists and belongs to a registered model of its length is indexed with what it
/// holds now. A row changed several times since the last drain thus ends up indexed once, as
/// it is.
pub(super) fn drain_vectors(conn: &Connection) -> Result<()> {
    // Embeddings move between rows and the index only for rows queued to be indexed (schema 7).
    let once = view_exists(conn)?
        && conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM fts_queue WHERE tbl = 'vectors' AND op = 'i')",
            )?
            .query_row([], |r| r.get::<_, bool>(0))?;
    if once {
        // A queued row whose embedding the index holds (the row's is NULL) gets it back first:
        // its index entry is about to be removed, and it is indexed again from the row.
        with_mode(conn, Mode::DrainMovesEmbeddings, |_| {
            conn.prepare_cached(
                "UPDATE vectors SET embedding = (SELECT embedding FROM vec_all WHERE vid = vectors.rowid)
                 WHERE embedding IS NULL
                   AND rowid IN (SELECT rid FROM fts_queue WHERE tbl = 'vectors' AND op = 'i')",
            )?
            .execute([])?;
            Ok(())
        })?;
    }
    let removed: Vec<(i64, i64)> = conn
        .prepare_cached(
            "SELECT DISTINCT rid, CAST(c1 AS INTEGER) FROM fts_queue
             WHERE tbl = 'vectors' AND op = 'd'",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    // The tables each dimension count has, as found (a removal may be in either).
    let mut existing: Vec<(i64, Vec<String>)> = Vec::new();
    for (rid, dims) in removed {
        let tables = match existing.iter().find(|(d, _)| *d == dims) {
            Some((_, t)) => t,
            None => {
                let mut t = Vec::new();
                for small in [false, true] {
                    let name = table_for(dims as usize, small);
                    if table_exists(conn, &name)? {
                        t.push(name);
                    }
                }
                existing.push((dims, t));
                &existing[existing.len() - 1].1
            }
        };
        for t in tables {
            conn.prepare_cached(&format!("DELETE FROM {t} WHERE rowid = ?1"))?
                .execute([rid])?;
        }
    }
    let tiers: Vec<(i64, bool)> = conn
        .prepare_cached(
            "SELECT DISTINCT m.dims, m.small FROM fts_queue q
             JOIN vectors v ON v.rowid = q.rid
             JOIN vector_models m ON m.ns = v.ns AND m.model = v.model
             WHERE q.tbl = 'vectors' AND q.op = 'i'",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (d, small) in tiers {
        let t = ensure_vec_table(conn, d as usize, small)?;
        conn.prepare_cached(&index_sql(
            &t,
            &format!("AND m.small = {} AND v.rowid IN (SELECT rid FROM fts_queue WHERE tbl = 'vectors' AND op = 'i')", small as i64),
        ))?
        .execute([d])?;
    }
    // Small pairs that grew past their table.
    let grown: Vec<(String, String, i64)> = conn
        .prepare_cached(
            "SELECT DISTINCT m.ns, m.model, m.dims FROM fts_queue q
             JOIN vectors v ON v.rowid = q.rid
             JOIN vector_models m ON m.ns = v.ns AND m.model = v.model
             WHERE q.tbl = 'vectors' AND q.op = 'i' AND m.small = 1",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (ns, model, d) in grown {
        grow_pair(conn, &ns, &model, d as usize)?;
    }
    if once {
        // The index now holds them: one copy of each embedding.
        with_mode(conn, Mode::DrainMovesEmbeddings, |_| {
            conn.prepare_cached(
                "UPDATE vectors SET embedding = NULL
                 WHERE rowid IN (SELECT rid FROM fts_queue WHERE tbl = 'vectors' AND op = 'i')
                   AND embedding IS NOT NULL
                   AND EXISTS (SELECT 1 FROM vec_all WHERE vid = vectors.rowid)",
            )?
            .execute([])?;
            Ok(())
        })?;
    }
    Ok(())
}

/// Migration 7's queue statements: as [`vector_queue_sql`], with a removal's dimension count
/// taken from the row's model when the row's embedding is held by the index (NULL), and the
/// change that logged the old embedding by reference given its copy first.
fn vector_queue_sql_v7() -> (String, String, String) {
    let dims = "coalesce(length(old.embedding) / 4,
                  (SELECT dims FROM vector_models WHERE ns = old.ns AND model = old.model))";
    let ins = "INSERT INTO fts_queue(tbl, op, rid) VALUES ('vectors', 'i', new.rowid);".to_string();
    let ch = "old.rowid IS NOT new.rowid OR old.embedding IS NOT new.embedding \
              OR old.ns IS NOT new.ns OR old.model IS NOT new.model OR old.kind IS NOT new.kind";
    // The change that logged the old embedding by reference gets its copy first.
    let keep = materialize_sql("old.");
    let upd = format!(
        "{keep}
         INSERT INTO fts_queue(tbl, op, rid, c1)
           SELECT 'vectors', 'd', old.rowid, {dims} WHERE {ch};
         INSERT INTO fts_queue(tbl, op, rid) SELECT 'vectors', 'i', new.rowid WHERE {ch};"
    );
    let del = format!(
        "{keep}
         INSERT INTO fts_queue(tbl, op, rid, c1) VALUES ('vectors', 'd', old.rowid, {dims});"
    );
    (ins, upd, del)
}

/// Migration 7: each embedding stored once. `vectors.embedding` becomes nullable (the table is
/// rebuilt with its rowids, which are the vec0 rowids); every row whose embedding its vec0
/// table holds, and has no index work queued, gives up its own copy; `vec_all` is created and
/// the triggers read embeddings through it. `vectors.log_seq` is the seq of the change that
/// logged the row's embedding by reference (NULL: none; the log rows written before keep
/// their copies).
pub(super) fn migration_7(conn: &Connection) -> Result<()> {
    refresh_vec_view(conn)?;
    let (ins, upd, del) = vector_queue_sql_v7();
    conn.execute_batch(&format!(
        "CREATE TABLE vectors_new(
           ns TEXT NOT NULL, subject TEXT NOT NULL, model TEXT NOT NULL, kind TEXT NOT NULL DEFAULT '',
           embedding BLOB,
           created_at INTEGER NOT NULL DEFAULT ({now}), updated_at INTEGER NOT NULL DEFAULT ({now}),
           log_seq INTEGER,
           UNIQUE(ns, subject, model));
         INSERT INTO vectors_new(rowid, ns, subject, model, kind, embedding, created_at, updated_at)
           SELECT v.rowid, v.ns, v.subject, v.model, v.kind,
                  CASE WHEN EXISTS (SELECT 1 FROM vec_all x WHERE x.vid = v.rowid)
                         AND v.rowid NOT IN (SELECT rid FROM fts_queue WHERE tbl = 'vectors')
                       THEN NULL ELSE v.embedding END,
                  v.created_at, v.updated_at
           FROM vectors v ORDER BY v.rowid;
         DROP TABLE vectors;
         ALTER TABLE vectors_new RENAME TO vectors;
         CREATE INDEX vectors_ns_model ON vectors(ns, model);
         {triggers}",
        now = super::NOW_US,
        triggers = vector_log_triggers_v7(&ins, &upd, &del),
    ))?;
    Ok(())
}

/// The trigger statements (insert, update, delete) that queue `vectors` changes for
/// [`drain_vectors`]. An update that changes nothing the index holds queues nothing.
pub(super) fn vector_queue_sql() -> (String, String, String) {
    let ins = "INSERT INTO fts_queue(tbl, op, rid) VALUES ('vectors', 'i', new.rowid);".to_string();
    let ch = "old.rowid IS NOT new.rowid OR old.embedding IS NOT new.embedding \
              OR old.ns IS NOT new.ns OR old.model IS NOT new.model OR old.kind IS NOT new.kind";
    let upd = format!(
        "INSERT INTO fts_queue(tbl, op, rid, c1)
           SELECT 'vectors', 'd', old.rowid, length(old.embedding) / 4 WHERE {ch};
         INSERT INTO fts_queue(tbl, op, rid) SELECT 'vectors', 'i', new.rowid WHERE {ch};"
    );
    let del = "INSERT INTO fts_queue(tbl, op, rid, c1)
                 VALUES ('vectors', 'd', old.rowid, length(old.embedding) / 4);"
        .to_string();
    (ins, upd, del)
}

/// Where the vec0 tables disagree with `vectors` (for `check` and the fuzz targets): each
/// problem in words; empty when they agree. Call it with the queue drained.
pub fn vec_index_problems(conn: &Connection) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let mut tiers: Vec<(i64, bool)> = conn
        .prepare("SELECT DISTINCT dims, small FROM vector_models")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    // Tables no model uses any more must be empty.
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND (name GLOB 'vec_d[0-9]*' OR name GLOB 'vec_s[0-9]*') AND name NOT GLOB 'vec_?*_*'")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for t in tables {
        if let Ok(d) = t["vec_d".len()..].parse::<i64>() {
            let tier = (d, t.starts_with("vec_s"));
            if !tiers.contains(&tier) {
                tiers.push(tier);
            }
        }
    }
    tiers.sort_unstable();
    for (d, small) in tiers {
        let t = table_for(d as usize, small);
        let exists = table_exists(conn, &t)?;
        // A row's embedding is indexed when it is of its model's length, or held by the
        // index alone (NULL, schema 7).
        let indexed = format!(
            "FROM vectors v JOIN vector_models m
             ON m.ns = v.ns AND m.model = v.model AND m.dims = ?1 AND m.small = {}
             WHERE (v.embedding IS NULL OR length(v.embedding) = ?1 * 4)",
            small as i64
        );
        let base: i64 = conn.query_row(&format!("SELECT count(*) {indexed}"), [d], |r| r.get(0))?;
        if !exists {
            if base > 0 {
                problems.push(format!(
                    "the vec0 table {t} of {d}-dimension models is missing ({base} vectors unindexed)"
                ));
            }
            continue;
        }
        let idx: i64 = conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))?;
        let missing: i64 = conn.query_row(
            &format!(
                "SELECT count(*) {indexed}
                 AND NOT EXISTS (SELECT 1 FROM {t} x WHERE x.rowid = v.rowid)"
            ),
            [d],
            |r| r.get(0),
        )?;
        if base != idx || missing != 0 {
            problems.push(format!(
                "vec0 index of {d}-dimension models ({t}) has {idx} vectors, the vectors table \
                 {base} ({missing} missing from the index)"
            ));
        }
    }
    let unindexed: i64 = conn.query_row(
        "SELECT count(*) FROM vectors v WHERE NOT EXISTS (SELECT 1 FROM vector_models m
           WHERE m.ns = v.ns AND m.model = v.model
             AND (v.embedding IS NULL OR length(v.embedding) = m.dims * 4))",
        [],
        |r| r.get(0),
    )?;
    if unindexed > 0 {
        problems.push(format!(
            "{unindexed} vectors belong to no registered model of their namespace and length \
             (written with plain SQL?) and are not indexed"
        ));
    }
    Ok(problems)
}

/// Migration 5: models per namespace, one vec0 table per dimension count, no per-model
/// triggers. Converts a schema-4 file: its global models become one registration per
/// namespace that has vectors of them (with the model's dimension count; a model with no
/// vectors left is dropped, and is registered again by its next write); the per-model vec0
/// tables and triggers are dropped, and the vectors are indexed again in the new tables.
pub(super) fn migration_5(conn: &Connection) -> Result<()> {
    let old: Vec<i64> = conn
        .prepare("SELECT rowid FROM vector_models ORDER BY rowid")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut sql = String::new();
    for id in old {
        sql.push_str(&format!(
            "DROP TRIGGER IF EXISTS vectors_ai_{id}; DROP TRIGGER IF EXISTS vectors_au_{id};
             DROP TRIGGER IF EXISTS vectors_ad_{id}; DROP TABLE IF EXISTS vec_{id};\n"
        ));
    }
    let (ins, upd, del) = vector_queue_sql();
    sql.push_str(&format!(
        "CREATE TABLE vector_models_new(
           ns TEXT NOT NULL, model TEXT NOT NULL, dims INTEGER NOT NULL CHECK (dims > 0),
           created_at INTEGER NOT NULL DEFAULT ({now}),
           UNIQUE(ns, model));
         INSERT INTO vector_models_new(ns, model, dims, created_at)
           SELECT v.ns, m.model, m.dims, m.created_at
           FROM vector_models m JOIN (SELECT DISTINCT ns, model FROM vectors) v USING (model)
           ORDER BY m.rowid, v.ns;
         DROP TABLE vector_models;
         ALTER TABLE vector_models_new RENAME TO vector_models;
         CREATE INDEX vector_models_model ON vector_models(model);
         DROP INDEX IF EXISTS vectors_model;
         CREATE INDEX vectors_ns_model ON vectors(ns, model);
         DROP TRIGGER vectors_ai; DROP TRIGGER vectors_au; DROP TRIGGER vectors_ad;
         {triggers}",
        now = super::NOW_US,
        triggers = vector_log_triggers(&ins, &upd, &del),
    ));
    conn.execute_batch(&sql)?;
    let dims: Vec<i64> = conn
        .prepare("SELECT DISTINCT dims FROM vector_models ORDER BY dims")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for d in dims {
        let t = ensure_vec_table(conn, d as usize, false)?;
        conn.execute(&index_sql(&t, ""), [d])?;
    }
    Ok(())
}

/// Migration 8: pairs with few vectors in small-chunk tables (see the module documentation).
/// The pairs registered before stay where they are (`small` 0).
pub(super) fn migration_8(conn: &Connection) -> Result<()> {
    conn.execute_batch("ALTER TABLE vector_models ADD COLUMN small INTEGER NOT NULL DEFAULT 0;")?;
    Ok(())
}

/// The vector triggers with the statements `on_insert`, `on_update`, `on_delete` beside the
/// logging (migration 5: this module's queue statements).
fn vector_log_triggers(on_insert: &str, on_update: &str, on_delete: &str) -> String {
    log_triggers(Kind::Vector, on_insert, on_update, on_delete)
}

/// Migration 7's vector triggers: a vector's embedding may be held by its vec0 index only (the
/// row's `embedding` NULL), so the log reads it from there (`vec_all`); and the queue drain's
/// own update (moving an embedding into the index, [`Mode::DrainMovesEmbeddings`]) logs and queues
/// nothing, as does the writer's own vector write ([`Mode::WriterWritesVector`]:
/// `ops::write_vector` keeps the index and logs the change itself).
fn vector_log_triggers_v7(on_insert: &str, on_update: &str, on_delete: &str) -> String {
    log_triggers_when(
        Kind::Vector,
        on_insert,
        on_update,
        on_delete,
        &format!(
            " WHEN NOT EXISTS (SELECT 1 FROM sync_ctx WHERE applying IN ({}, {}))",
            Mode::DrainMovesEmbeddings.code(),
            Mode::WriterWritesVector.code()
        ),
        &embedding_sql("new."),
    )
}
