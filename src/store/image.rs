//! Database images: a copy of the store cut to a set of namespaces, in a replica's layout, that
//! a new replica opens instead of applying a snapshot row by row.
//!
//! An image is taken with `VACUUM INTO` on a read-only connection (one read transaction, so it
//! is consistent at one seq `at`, and it neither blocks the writer nor holds the pool's
//! readers), then trimmed: rows of other namespaces deleted (the triggers keep the full-text
//! and vector indexes in step), the node's change log, its write ledger and its private state
//! (`meta` keys such as the NATS signing seed) dropped, the applied seq set to `at` and the
//! log's sequence left at `at`, so the file is what a replica holds after a snapshot at `at`.
//! Space the trim freed is given back (`VACUUM`) when it is more than a tenth of the file.

use std::path::Path;

use rusqlite::{params, Connection, OpenFlags};

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
    let src = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let dest_str = dest
        .to_str()
        .ok_or_else(|| Error::invalid("the image's path is not UTF-8"))?;
    let made = (|| {
        src.execute("VACUUM INTO ?1", params![dest_str])?;
        drop(src);
        let conn = Connection::open(dest)?;
        schema::configure(&conn)?;
        let at = trim(&conn, namespaces)?;
        let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        if free * 10 > pages {
            conn.execute_batch("VACUUM")?;
        }
        conn.pragma_update(None, "journal_mode", "DELETE")?;
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

fn count_rows(conn: &Connection) -> Result<u64> {
    let mut n = 0u64;
    for t in ROW_TABLES {
        let c: i64 = conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))?;
        n += c.max(0) as u64;
    }
    Ok(n)
}

/// Cut the copy to `namespaces` and make it a replica's; returns the seq it is at.
fn trim(conn: &Connection, namespaces: Option<&[String]>) -> Result<i64> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let r = (|| {
        let at: i64 = conn.query_row(
            "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0)",
            [],
            |r| r.get(0),
        )?;
        if let Some(keep) = namespaces {
            // As a replica applies: the triggers keep the indexes in step and log nothing.
            schema::enter(conn, schema::Mode::Applying)?;
            let list = serde_json::to_string(keep)?;
            for t in ROW_TABLES {
                conn.execute(
                    &format!("DELETE FROM {t} WHERE ns NOT IN (SELECT value FROM json_each(?1))"),
                    [&list],
                )?;
            }
            conn.execute(
                "DELETE FROM vector_models WHERE ns NOT IN (SELECT value FROM json_each(?1))",
                [&list],
            )?;
            schema::drain_fts_queue(conn)?;
            schema::leave(conn)?;
        }
        // What a replica does not hold: the node's log (a replica's starts at `at`), its
        // ledger of client writes, any outbox, and the node's private state.
        conn.execute_batch(
            "DELETE FROM changes; DELETE FROM client_writes; DELETE FROM outbox_keys;
             DELETE FROM outbox_shadow; DELETE FROM outbox;
             DELETE FROM meta WHERE key <> 'fts_tokenizer';",
        )?;
        conn.execute(
            "UPDATE sqlite_sequence SET seq = ?1 WHERE name = 'changes'",
            [at],
        )?;
        conn.execute(
            "INSERT INTO meta(key, value) VALUES ('applied_seq', ?1)",
            [at.to_string()],
        )?;
        Ok(at)
    })();
    match r {
        Ok(at) => {
            conn.execute_batch("COMMIT")?;
            Ok(at)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}
