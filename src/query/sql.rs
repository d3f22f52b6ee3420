//! Read-only SQL with JSON parameters and a JSON answer (`{"columns": [..], "rows": [[..]..]}`):
//! the replica's `sql` read, shared by the browser and live queries.

use rusqlite::types::{Value as Sql, ValueRef};
use rusqlite::Connection;
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// Run `sql` (refused unless it only reads) with `params` (JSON scalars; arrays and objects are
/// bound as their JSON text); blobs come back as `{"blob_bytes": n}`.
pub fn sql_json(conn: &Connection, sql: &str, params: &[Value]) -> Result<Value> {
    let mut stmt = conn.prepare(sql)?;
    if !stmt.readonly() {
        return Err(Error::invalid(
            "only read-only statements run on a replica: its state comes from the node",
        ));
    }
    let columns: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
    let bound: Vec<Sql> = params
        .iter()
        .map(|v| match v {
            Value::Null => Sql::Null,
            Value::Bool(b) => Sql::Integer(*b as i64),
            Value::Number(n) => n
                .as_i64()
                .map(Sql::Integer)
                .unwrap_or_else(|| Sql::Real(n.as_f64().unwrap_or(0.0))),
            Value::String(s) => Sql::Text(s.clone()),
            other => Sql::Text(other.to_string()),
        })
        .collect();
    let n = columns.len();
    let mut rows = stmt.query(rusqlite::params_from_iter(bound))?;
    let mut out: Vec<Vec<Value>> = Vec::new();
    while let Some(r) = rows.next()? {
        let mut row = Vec::with_capacity(n);
        for i in 0..n {
            row.push(match r.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(i) => json!(i),
                ValueRef::Real(f) => json!(f),
                ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
                ValueRef::Blob(b) => json!({"blob_bytes": b.len()}),
            });
        }
        out.push(row);
    }
    Ok(json!({"columns": columns, "rows": out}))
}
