//! Vector models: each gets its own sqlite-vec `vec0` index, created on first use, with
//! triggers that keep it in step with the `vectors` base table.

use rusqlite::{Connection, OptionalExtension};

use crate::error::{Error, Result};

/// Largest embedding accepted. sqlite-vec's own limit is 8192 dimensions.
pub const MAX_DIMS: usize = 8192;

/// A registered vector model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    /// Model name as given by writers.
    pub model: String,
    /// Fixed dimension count of its embeddings.
    pub dims: usize,
    /// Name of its vec0 table (`vec_<n>`).
    pub table: String,
}

fn info_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ModelInfo> {
    let id: i64 = r.get(0)?;
    let dims: i64 = r.get(2)?;
    Ok(ModelInfo {
        model: r.get(1)?,
        dims: dims as usize,
        table: format!("vec_{id}"),
    })
}

/// The model named `model`, if registered.
pub fn model_by_name(conn: &Connection, model: &str) -> Result<Option<ModelInfo>> {
    Ok(conn
        .prepare_cached("SELECT rowid, model, dims FROM vector_models WHERE model = ?1")?
        .query_row([model], info_from_row)
        .optional()?)
}

/// All registered models.
pub fn models(conn: &Connection) -> Result<Vec<ModelInfo>> {
    let mut stmt =
        conn.prepare_cached("SELECT rowid, model, dims FROM vector_models ORDER BY rowid")?;
    let rows = stmt.query_map([], info_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Return the model, registering it (vec0 table + triggers + backfill) if it is new. Must run
/// inside the caller's write transaction so the model and its first vector commit together.
pub fn ensure_model(conn: &Connection, model: &str, dims: usize) -> Result<ModelInfo> {
    if let Some(info) = model_by_name(conn, model)? {
        if info.dims != dims {
            return Err(Error::invalid(format!(
                "model {model:?} has {} dimensions, this embedding has {dims}",
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
    conn.execute(
        "INSERT INTO vector_models(model, dims) VALUES (?1, ?2)",
        rusqlite::params![model, dims as i64],
    )?;
    let id = conn.last_insert_rowid();
    let t = format!("vec_{id}");
    let m = sql_literal(model);
    conn.execute_batch(&format!(
        "CREATE VIRTUAL TABLE {t} USING vec0(
           embedding float[{dims}] distance_metric=cosine, ns text partition key, kind text);
         CREATE TRIGGER vectors_ai_{id} AFTER INSERT ON vectors WHEN new.model = {m} BEGIN
           INSERT INTO {t}(rowid, embedding, ns, kind) VALUES (new.rowid, new.embedding, new.ns, new.kind);
         END;
         CREATE TRIGGER vectors_au_{id} AFTER UPDATE ON vectors WHEN old.model = {m} OR new.model = {m} BEGIN
           DELETE FROM {t} WHERE rowid = old.rowid;
           INSERT INTO {t}(rowid, embedding, ns, kind)
             SELECT new.rowid, new.embedding, new.ns, new.kind WHERE new.model = {m};
         END;
         CREATE TRIGGER vectors_ad_{id} AFTER DELETE ON vectors WHEN old.model = {m} BEGIN
           DELETE FROM {t} WHERE rowid = old.rowid;
         END;
         INSERT INTO {t}(rowid, embedding, ns, kind)
           SELECT rowid, embedding, ns, kind FROM vectors WHERE model = {m};"
    ))?;
    Ok(ModelInfo {
        model: model.to_string(),
        dims,
        table: t,
    })
}
