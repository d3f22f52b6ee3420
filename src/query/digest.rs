//! A digest of logical state: the same rows give the same hash on the node and on every
//! replica (native or wasm), whatever order they were written in and whatever the change log
//! holds, so two copies can be compared with one line each.

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::Result;
use crate::model::Kind;
use crate::schema::row_image_sql;

/// The result of [`digest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDigest {
    /// Lowercase hex SHA-256 of every row, in key order.
    pub sha256: String,
    /// Rows hashed, per kind.
    pub rows: Vec<(Kind, u64)>,
    /// The namespaces covered (`None`: all).
    pub namespaces: Option<Vec<String>>,
}

/// Hash the rows of `namespaces` (all when `None`): per kind, in (ns, key) order, each row's
/// namespace, key and full row image (the same JSON the change log carries), plus the raw
/// embedding for vectors.
pub fn digest(conn: &Connection, namespaces: Option<&[String]>) -> Result<StateDigest> {
    let ns_json = namespaces.map(serde_json::to_string).transpose()?;
    let mut h = Sha256::new();
    let mut rows = Vec::new();
    conn.execute_batch("SAVEPOINT digest")?;
    let res = (|| -> Result<()> {
        for kind in Kind::ALL {
            let (key, emb) = match kind {
                Kind::Vector => (
                    "subject || char(0) || model",
                    crate::schema::embedding_sql("vectors."),
                ),
                _ => ("id", "NULL".to_string()),
            };
            let sql = format!(
                "SELECT ns, {key}, {img}, {emb} FROM {t}
                 WHERE ?1 IS NULL OR ns IN (SELECT value FROM json_each(?1)) ORDER BY ns, {key}",
                img = row_image_sql(kind, ""),
                t = kind.table()
            );
            let mut stmt = conn.prepare(&sql)?;
            let mut q = stmt.query(params![ns_json])?;
            let mut n = 0u64;
            h.update(kind.as_str().as_bytes());
            h.update([0xff]);
            while let Some(r) = q.next()? {
                for i in 0..3 {
                    let v: String = r.get(i)?;
                    h.update((v.len() as u64).to_le_bytes());
                    h.update(v.as_bytes());
                }
                let e: Option<Vec<u8>> = r.get(3)?;
                if let Some(e) = e {
                    h.update((e.len() as u64).to_le_bytes());
                    h.update(&e);
                }
                n += 1;
            }
            rows.push((kind, n));
        }
        Ok(())
    })();
    let _ = conn.execute_batch("RELEASE digest");
    res?;
    let sha256 = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(StateDigest {
        sha256,
        rows,
        namespaces: namespaces.map(<[String]>::to_vec),
    })
}
