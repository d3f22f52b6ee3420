//! Database images: a copy of the store cut to a set of namespaces, in a replica's layout, that
//! a new replica opens instead of applying a snapshot row by row.
//!
//! An image is built in one pass, the way SQLite's own `VACUUM INTO` copies a file: a new file
//! gets the source's tables and indexes (created from the source's own `sqlite_schema`), and
//! each table's rows are copied with `INSERT INTO t SELECT * FROM src.t`, which SQLite carries
//! out as a raw copy of the b-tree records (its transfer optimisation: no row is decoded, no
//! index rebuilt) because the new table is empty, alike, and has no triggers yet; the triggers
//! and views come last. All of it reads the source in one read transaction (consistent at one
//! seq `at`; the writer is never blocked) on a connection of its own (the pool's readers are not
//! held). Unlike `VACUUM INTO`, what a replica does not hold is never copied: the node's change
//! log, its ledger of client writes, any outbox, its private `meta` (such as the NATS signing
//! seed); the applied seq is `at` and the log's sequence stays at `at`, so the file is what a
//! replica holds after a snapshot at `at`.
//!
//! For a subset of namespaces, the rows are copied with a filter, and the full-text indexes
//! (FTS5, external content) are rebuilt from them and the vector indexes (vec0) filled from the
//! source's, partition by partition: only the wanted rows are ever written.

use std::path::Path;

use rusqlite::Connection;

use crate::error::{Error, Result};
use crate::schema;

/// An image built: where its rows stand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// The seq it is consistent at.
    pub at: i64,
    /// Its size in bytes.
    pub bytes: u64,
    /// The rows it holds (entities, edges, notes, events and vectors): for a progress bar.
    pub rows: u64,
}

/// The tables whose rows belong to a namespace.
const ROW_TABLES: [&str; 5] = ["entities", "edges", "notes", "events", "vectors"];

/// Build an image of the database at `db` into `dest` (which must not exist), holding the rows
/// of `namespaces` only (None: every namespace).
pub fn build_image(db: &Path, dest: &Path, namespaces: Option<&[String]>) -> Result<ImageInfo> {
    schema::register_extensions();
    if dest.exists() {
        return Err(Error::invalid(format!("{} exists already", dest.display())));
    }
    let made = (|| {
        let conn = Connection::open(dest)?;
        let at = copy(&conn, db, namespaces)?;
        let rows = count_rows(&conn)?;
        drop(conn);
        let bytes = std::fs::metadata(dest)?.len();
        Ok(ImageInfo { at, bytes, rows })
    })();
    if made.is_err() {
        // A build that failed (a full disk, say) leaves no half file behind.
        for f in [dest.to_path_buf(), dest.with_extension("db-journal")] {
            let _ = std::fs::remove_file(f);
        }
    }
    made
}

/// Tables whose rows an image leaves out (the node's own), besides `meta` (cut to what a replica
/// needs) and `sqlite_sequence` (set for `at`).
const NOT_COPIED: [&str; 5] = [
    "changes",
    "client_writes",
    "outbox",
    "outbox_shadow",
    "outbox_keys",
];

/// One object of the source's schema.
struct Object {
    kind: String,
    name: String,
    sql: Option<String>,
    virtual_table: bool,
}

/// Copy the source into `conn` (an empty file) as the module describes; returns `at`.
fn copy(conn: &Connection, db: &Path, namespaces: Option<&[String]>) -> Result<i64> {
    let src = db
        .to_str()
        .ok_or_else(|| Error::invalid("the database's path is not UTF-8"))?;
    conn.execute(
        "ATTACH ?1 AS src",
        [format!("file:{}?mode=ro", uri_path(src))],
    )?;
    // The source's page size (the new file has no page yet), and nothing here needs to survive
    // a crash: a build cut off is removed and made again.
    let page: i64 = conn.query_row("PRAGMA src.page_size", [], |r| r.get(0))?;
    conn.execute_batch(&format!(
        "PRAGMA main.page_size = {page}; PRAGMA main.journal_mode = OFF; PRAGMA synchronous = OFF;"
    ))?;
    conn.execute_batch("BEGIN")?;
    let r = (|| {
        let at: i64 = conn.query_row(
            "SELECT coalesce((SELECT seq FROM src.sqlite_sequence WHERE name = 'changes'), 0)",
            [],
            |r| r.get(0),
        )?;
        let objects = schema_objects(conn)?;
        let virtuals: Vec<&str> = objects
            .iter()
            .filter(|o| o.virtual_table)
            .map(|o| o.name.as_str())
            .collect();
        let shadow = |name: &str| {
            virtuals.iter().any(|v| {
                name.len() > v.len() + 1 && name.starts_with(v) && name[v.len()..].starts_with('_')
            })
        };
        // Tables (a virtual table makes its own shadow tables) and indexes, then the rows.
        for o in &objects {
            let Some(sql) = &o.sql else { continue };
            if (o.kind == "table" && !shadow(&o.name)) || o.kind == "index" {
                conn.execute_batch(sql)?;
            }
        }
        let keep = namespaces.map(serde_json::to_string).transpose()?;
        copy_rows(conn, &objects, &shadow, keep.as_deref())?;
        if let Some(list) = &keep {
            reindex(conn, &virtuals, list)?;
        }
        conn.execute_batch(
            "DELETE FROM main.sqlite_sequence;
             INSERT INTO main.sqlite_sequence SELECT * FROM src.sqlite_sequence;
             INSERT INTO main.meta SELECT * FROM src.meta WHERE key = 'fts_tokenizer';",
        )?;
        conn.execute(
            "INSERT OR REPLACE INTO main.sqlite_sequence(name, seq) VALUES ('changes', ?1)",
            [at],
        )?;
        conn.execute(
            "INSERT INTO main.meta(key, value) VALUES ('applied_seq', ?1)",
            [at.to_string()],
        )?;
        for o in objects
            .iter()
            .filter(|o| o.kind == "trigger" || o.kind == "view")
        {
            if let Some(sql) = &o.sql {
                conn.execute_batch(sql)?;
            }
        }
        Ok(at)
    })();
    match r {
        Ok(at) => {
            conn.execute_batch("COMMIT; DETACH src; PRAGMA journal_mode = DELETE;")?;
            Ok(at)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// The source's schema objects, in the order they were made.
fn schema_objects(conn: &Connection) -> Result<Vec<Object>> {
    Ok(conn
        .prepare(
            "SELECT type, name, sql, sql LIKE 'CREATE VIRTUAL TABLE%' FROM src.sqlite_schema
             WHERE substr(name, 1, 7) <> 'sqlite_' ORDER BY rowid",
        )?
        .query_map([], |r| {
            Ok(Object {
                kind: r.get(0)?,
                name: r.get(1)?,
                sql: r.get(2)?,
                virtual_table: r.get(3)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Every table's rows a replica holds (`keep`: the namespaces, as a JSON array; None: all).
fn copy_rows(
    conn: &Connection,
    objects: &[Object],
    shadow: &dyn Fn(&str) -> bool,
    keep: Option<&str>,
) -> Result<()> {
    for o in objects
        .iter()
        .filter(|o| o.kind == "table" && !o.virtual_table)
    {
        let t = o.name.as_str();
        if NOT_COPIED.contains(&t) || t == "meta" {
            continue;
        }
        let q = quote(t);
        if shadow(t) {
            // Indexes of the rows: copied as they are for every namespace, rebuilt from the
            // rows copied for a subset (below).
            if keep.is_none() {
                conn.execute_batch(&format!(
                    "DELETE FROM main.{q}; INSERT INTO main.{q} SELECT * FROM src.{q};"
                ))?;
            }
        } else if let (Some(list), true) = (keep, ROW_TABLES.contains(&t) || t == "vector_models") {
            copy_namespaces(conn, t, list)?;
        } else {
            conn.execute_batch(&format!("INSERT INTO main.{q} SELECT * FROM src.{q};"))?;
        }
    }
    Ok(())
}

/// The indexes of a subset, made from its rows: FTS5 rebuilt from its external content, and
/// each vec0 table given the source's vectors of the namespaces kept (its partitions).
fn reindex(conn: &Connection, virtuals: &[&str], keep: &str) -> Result<()> {
    for v in virtuals {
        let q = quote(v);
        let module: String = conn.query_row(
            "SELECT sql FROM main.sqlite_schema WHERE name = ?1",
            [v],
            |r| r.get(0),
        )?;
        if module.contains("USING fts5") {
            conn.execute(&format!("INSERT INTO main.{q}({q}) VALUES ('rebuild')"), [])?;
        } else if module.contains("USING vec0") {
            copy_namespaces(conn, v, keep)?;
        }
    }
    Ok(())
}

/// Copy the rows of `table` (a table or a vec0 index, keyed by the same rowids) whose `ns` is
/// in `keep` (a JSON array), rowids kept: the vector indexes are keyed by them.
fn copy_namespaces(conn: &Connection, table: &str, keep: &str) -> Result<()> {
    let cols = conn
        .prepare(&format!(
            "SELECT name FROM pragma_table_info({})",
            sql_text(table)
        ))?
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?
        .iter()
        .map(|c| quote(c))
        .collect::<Vec<_>>()
        .join(", ");
    let q = quote(table);
    conn.execute(
        &format!(
            "INSERT INTO main.{q}(rowid, {cols}) SELECT rowid, {cols} FROM src.{q}
             WHERE ns IN (SELECT value FROM json_each(?1))"
        ),
        [keep],
    )?;
    Ok(())
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn sql_text(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A path as the path part of a `file:` URI: `%`, `?`, `#` and every byte outside ASCII
/// percent-encoded (SQLite decodes them back to the path's bytes).
fn uri_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for b in p.bytes() {
        match b {
            b'%' | b'?' | b'#' | 0x80.. => out.push_str(&format!("%{b:02X}")),
            _ => out.push(b as char),
        }
    }
    out
}

fn count_rows(conn: &Connection) -> Result<u64> {
    let mut n = 0u64;
    for t in ROW_TABLES {
        let c: i64 = conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))?;
        n += c.max(0) as u64;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::{Kind, WriteOp};
    use crate::store::{Store, StoreOptions};

    #[test]
    fn a_database_whose_path_is_not_plain_ascii_gives_its_image() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("bäume ?#% 1.db");
        let store = Store::open(&db, StoreOptions::default()).unwrap();
        store
            .write(&[WriteOp::upsert(
                Kind::Entity,
                "default",
                serde_json::json!({"id": "a", "name": "eiche"}),
            )])
            .unwrap();
        let info = build_image(&db, &dir.path().join("image.db"), None).unwrap();
        assert_eq!((info.at, info.rows), (1, 1));
    }
}
