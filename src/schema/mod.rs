//! The one schema, native and wasm: DDL, triggers and versioned, forward-only migrations.
//!
//! Base tables (`entities`, `edges`, `notes`, `events`, `vectors`) are the truth. Triggers keep
//! the derived indexes (FTS5 external-content tables, one sqlite-vec `vec0` table per vector
//! dimension count, shared by the (ns, model) pairs of that count) and the change log
//! (`changes`) in step, so a write made with plain SQL by another program is indexed and
//! captured exactly like a write made through the store.
//!
//! Full-text and vector index updates are queued by the triggers in `fts_queue` and applied in
//! bulk before hivesync commits ([`drain_fts_queue`]; why: see migration 2 in ddl.rs, and
//! models.rs for vectors).
//!
//! The trigger that writes `changes` reads an optional one-row table, `sync_ctx`: the store
//! puts the transaction's `tx` and `ts` there for the length of its transaction (so all changes
//! of one commit share a `tx`), and a replica sets `applying = 1` while it applies upstream
//! changes, whose log rows it copies verbatim instead.

mod ddl;
mod models;
mod triggers;

pub use ddl::{drain_fts_queue, fts_queue_pending};
pub use models::{
    embedding_sql, model_by_name, models, vec_index_problems, ModelInfo, MAX_DIMS,
    MAX_MODELS_PER_NS, SMALL_PAIR_VECTORS,
};
pub(crate) use models::{
    ensure_model, grow_pair, model_dims, model_tables, small_vec_table, ModelLimit,
    LOGGED_EMBEDDING_SQL,
};

#[cfg(feature = "node")]
pub(crate) use triggers::enter_writing;
pub use triggers::row_image_sql;
pub(crate) use triggers::{enter, leave, switch, with_mode, Mode, NEXT_SEQ, NOW_US};

use rusqlite::{Connection, OptionalExtension};

use crate::error::{Error, Result};

/// Newest schema version this build knows.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Which FTS5 tokenizer the full-text indexes use. Chosen when the database is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Tokenizer {
    /// Words, case- and diacritic-insensitive: right for most languages.
    #[default]
    Unicode61,
    /// Three-character substrings: matches inside CJK text and partial words.
    Trigram,
}

impl Tokenizer {
    fn fts_arg(self) -> &'static str {
        match self {
            Tokenizer::Unicode61 => "unicode61 remove_diacritics 2",
            Tokenizer::Trigram => "trigram",
        }
    }

    /// Parse `unicode61` or `trigram`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "unicode61" => Ok(Tokenizer::Unicode61),
            "trigram" => Ok(Tokenizer::Trigram),
            other => Err(Error::invalid(format!(
                "unknown tokenizer {other:?}: expected unicode61 or trigram"
            ))),
        }
    }
}

/// Options that only matter when a database is first created.
#[derive(Clone, Copy, Debug, Default)]
pub struct SchemaOptions {
    /// FTS5 tokenizer for the entity and note indexes.
    pub tokenizer: Tokenizer,
}

struct Migration {
    version: i64,
    name: &'static str,
    up: fn(&Connection, &SchemaOptions) -> Result<()>,
}

/// Append only: a released migration is never edited, a change is a new entry.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "base tables, fts5, change log",
        up: ddl::migration_1,
    },
    Migration {
        version: 2,
        name: "full-text updates through a per-transaction queue",
        up: ddl::migration_2,
    },
    Migration {
        version: 3,
        name: "full-text queue: inserts queue their rowid, not their text",
        up: ddl::migration_3,
    },
    Migration {
        version: 4,
        name: "entity triggers stand aside while the writer logs a run of upserts itself",
        up: ddl::migration_4,
    },
    Migration {
        version: 5,
        name:
            "vector models per namespace, one vec0 table per dimension count, no per-model triggers",
        up: ddl::migration_5,
    },
    Migration {
        version: 6,
        name: "local-first writes: the node's per-client ledger, the replica's outbox",
        up: ddl::migration_6,
    },
    Migration {
        version: 7,
        name: "each embedding stored once: vectors.embedding is NULL once its vec0 index holds it",
        up: ddl::migration_7,
    },
    Migration {
        version: 8,
        name: "vector pairs with few vectors in small-chunk vec0 tables",
        up: ddl::migration_8,
    },
    Migration {
        version: 9,
        name: "a client id belongs to the principal that first wrote with it",
        up: ddl::migration_9,
    },
];

/// Register sqlite-vec with every connection this process opens from now on.
#[allow(unsafe_code)]
pub fn register_extensions() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: sqlite3_vec_init has the signature of an SQLite extension entry point; the
        // crates declare it with no arguments, so it is cast to the type auto_extension takes,
        // as both crates' documentation does.
        unsafe {
            #[cfg(not(target_arch = "wasm32"))]
            let init = sqlite_vec::sqlite3_vec_init as *const ();
            #[cfg(target_arch = "wasm32")]
            let init = sqlite_wasm_vec::sqlite3_vec_init as *const ();
            // Before SQLite initialises (this runs before any connection opens; later calls
            // are refused with SQLITE_MISUSE, which only leaves the defaults): no global memory
            // statistics (they take a global mutex around every allocation) and a larger
            // per-connection lookaside (a trigger's frame no longer comes from malloc).
            // In a profile of 1,024-row writes, allocation was ~19% of the time.
            rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, 0);
            rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_LOOKASIDE, 2048, 256);
            rusqlite::ffi::sqlite3_auto_extension(Some(std::mem::transmute::<
                *const (),
                unsafe extern "C" fn(
                    *mut rusqlite::ffi::sqlite3,
                    *mut *mut std::os::raw::c_char,
                    *const rusqlite::ffi::sqlite3_api_routines,
                ) -> std::os::raw::c_int,
            >(init)));
        }
    });
}

/// The version recorded in the file's migration ledger (0 for a new file).
pub fn current_version(conn: &Connection) -> Result<i64> {
    let has_ledger: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'",
        [],
        |r| r.get(0),
    )?;
    if !has_ledger {
        return Ok(0);
    }
    Ok(conn.query_row(
        "SELECT coalesce(max(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?)
}

/// Fail with [`Error::SchemaTooNew`] when the file was written by a newer build.
pub fn check_version(conn: &Connection) -> Result<i64> {
    let found = current_version(conn)?;
    if found == 0 {
        // No ledger: a new, empty file, or someone else's database, which hivesync must not
        // migrate into (or read as if it were its own).
        let mut stmt = conn.prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name LIMIT 4",
        )?;
        let tables = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        if !tables.is_empty() {
            return Err(Error::invalid(format!(
                "this SQLite file is not a hivesync database (it has tables such as {} and no \
                 hivesync schema); point --db at a hivesync database, or at a new file to create one",
                tables.join(", ")
            )));
        }
    }
    if found > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(found)
}

/// Bring the schema up to [`SCHEMA_VERSION`], each migration in its own transaction with its
/// ledger row. Returns the version now in force.
pub fn migrate(conn: &Connection, opts: &SchemaOptions) -> Result<i64> {
    migrate_to(conn, opts, SCHEMA_VERSION)
}

/// [`migrate`], but only up to `target` (tests build files of older schemas with it).
fn migrate_to(conn: &Connection, opts: &SchemaOptions, target: i64) -> Result<i64> {
    let current = check_version(conn)?;
    if current >= target {
        return Ok(current);
    }
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations(
            version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    )?;
    for m in MIGRATIONS
        .iter()
        .filter(|m| m.version > current && m.version <= target)
    {
        conn.execute_batch("BEGIN IMMEDIATE")?;
        let res = (m.up)(conn, opts).and_then(|()| {
            conn.execute(
                &format!("INSERT INTO schema_migrations(version, name, applied_at) VALUES (?1, ?2, {NOW_US})"),
                rusqlite::params![m.version, m.name],
            )?;
            Ok(())
        });
        match res {
            Ok(()) => conn.execute_batch("COMMIT")?,
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
    }
    Ok(target)
}

/// The tokenizer the file's indexes were created with.
pub fn tokenizer(conn: &Connection) -> Result<Tokenizer> {
    let v: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'fts_tokenizer'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Tokenizer::parse(v.as_deref().unwrap_or("unicode61"))
}

/// Open a private in-memory database with the schema: for tests, tools and the wasm replica.
pub fn open_in_memory(opts: &SchemaOptions) -> Result<Connection> {
    register_extensions();
    let conn = Connection::open_in_memory()?;
    configure(&conn)?;
    migrate(&conn, opts)?;
    Ok(conn)
}

/// Per-connection settings every connection needs, on both targets.
pub fn configure(conn: &Connection) -> Result<()> {
    // Triggers cascade (entity delete -> edge deletes) and must fire from within triggers.
    conn.pragma_update(None, "recursive_triggers", false)?;
    conn.pragma_update(None, "foreign_keys", false)?;
    conn.set_prepared_statement_cache_capacity(128);
    Ok(())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod migration_tests;
