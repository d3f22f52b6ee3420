//! What the triggers share: the row images, the logging statements, and `sync_ctx`, the
//! one-row table through which a transaction tells the triggers what it is doing ([`Mode`]).
//! The functions here are the only writers of `sync_ctx`.

use rusqlite::{Connection, OptionalExtension};

use crate::error::Result;
use crate::model::Kind;

/// What a write transaction is doing, as the triggers read it (`sync_ctx.applying`). Without a
/// `sync_ctx` row (any other program's write) the triggers log and index as for
/// [`Mode::Writing`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// hivesync's write path: the triggers log every change and queue its indexing.
    Writing,
    /// A replica applies upstream changes: logging is silenced (their log rows are copied).
    Applying,
    /// The write path writes a run of entity upserts with everything the entity triggers would
    /// do (the change rows, the full-text queue) done by itself, in multi-row statements (see
    /// `ops::EntityRun::logged`): the entity insert and update triggers stand aside.
    WriterLogsEntities,
    /// The queue drain moves embeddings into their vec0 tables (schema 7): the vector
    /// triggers, and the outbox's capture, stand aside.
    DrainMovesEmbeddings,
    /// `ops::write_vector` writes a vector row itself (schema 7): the vector triggers stand
    /// aside (it keeps the index and logs the change itself); the outbox's capture does not.
    WriterWritesVector,
}

impl Mode {
    /// The value in `sync_ctx.applying` (what the triggers' SQL compares with).
    pub(crate) const fn code(self) -> i64 {
        match self {
            Mode::Writing => 0,
            Mode::Applying => 1,
            Mode::WriterLogsEntities => 2,
            Mode::DrainMovesEmbeddings => 4,
            Mode::WriterWritesVector => 5,
        }
    }

    fn from_code(code: i64) -> Option<Mode> {
        [
            Mode::Writing,
            Mode::Applying,
            Mode::WriterLogsEntities,
            Mode::DrainMovesEmbeddings,
            Mode::WriterWritesVector,
        ]
        .into_iter()
        .find(|m| m.code() == code)
    }
}

/// Begin hivesync's own write in the open transaction ([`Mode::Writing`]): every change it
/// logs gets `tx`, the log's next seq (so all changes of one commit share it), and time `ts`.
/// Returns the `tx`.
pub(crate) fn enter_writing(conn: &Connection, ts: i64) -> Result<i64> {
    Ok(conn
        .prepare_cached(
            "INSERT INTO sync_ctx(one, tx, ts, applying)
             VALUES (1, coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0) + 1, ?1, 0)
             ON CONFLICT(one) DO UPDATE SET tx = excluded.tx, ts = excluded.ts, applying = 0
             RETURNING tx",
        )?
        .query_row([ts], |r| r.get(0))?)
}

/// Enter `mode` in the open transaction (the `sync_ctx` row made if there is none).
pub(crate) fn enter(conn: &Connection, mode: Mode) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO sync_ctx(one, applying) VALUES (1, ?1)
         ON CONFLICT(one) DO UPDATE SET applying = excluded.applying",
    )?
    .execute([mode.code()])?;
    Ok(())
}

/// Switch the open transaction's `sync_ctx` row (which must exist) to `mode`.
pub(crate) fn switch(conn: &Connection, mode: Mode) -> Result<()> {
    conn.prepare_cached("UPDATE sync_ctx SET applying = ?1")?
        .execute([mode.code()])?;
    Ok(())
}

/// Leave: remove the `sync_ctx` row, before the transaction commits.
pub(crate) fn leave(conn: &Connection) -> Result<()> {
    conn.prepare_cached("DELETE FROM sync_ctx")?.execute([])?;
    Ok(())
}

/// Run `f` in `mode`, then put `sync_ctx` back as it was, whether `f` failed or not; `f` is
/// given the mode it found (None: no row, another program's write or none at all).
pub(crate) fn with_mode<T>(
    conn: &Connection,
    mode: Mode,
    f: impl FnOnce(Option<Mode>) -> Result<T>,
) -> Result<T> {
    let before: Option<i64> = conn
        .prepare_cached("SELECT applying FROM sync_ctx WHERE one = 1")?
        .query_row([], |r| r.get(0))
        .optional()?;
    enter(conn, mode)?;
    let r = f(before.and_then(Mode::from_code));
    match before {
        Some(code) => conn
            .prepare_cached("UPDATE sync_ctx SET applying = ?1")?
            .execute([code])?,
        None => conn.prepare_cached("DELETE FROM sync_ctx")?.execute([])?,
    };
    r
}

/// Current time in microseconds since the Unix epoch, as an SQL expression. `julianday` rather
/// than `unixepoch('subsec')` because the sqlite3 shells found on servers (3.40) lack the latter,
/// and a plain-SQL insert from one must still get its timestamps.
pub(crate) const NOW_US: &str = "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)";

/// The JSON row image of a row of `kind`, with columns read through `p` (`new.`, `e.`...).
/// Triggers (for `changes`) and snapshot reads use this one definition, so a row captured by a
/// trigger and the same row read into a snapshot are byte-identical.
pub fn row_image_sql(kind: Kind, p: &str) -> String {
    match kind {
        Kind::Entity => format!(
            "json_object('id',{p}id,'kind',{p}kind,'name',{p}name,'description',{p}description,\
             'properties',json({p}properties),'tags',json({p}tags),\
             'created_at',{p}created_at,'updated_at',{p}updated_at)"
        ),
        Kind::Edge => format!(
            "json_object('id',{p}id,'source',{p}source,'target',{p}target,'relation',{p}relation,\
             'weight',{p}weight,'properties',json({p}properties),\
             'created_at',{p}created_at,'updated_at',{p}updated_at)"
        ),
        Kind::Note => format!(
            "json_object('id',{p}id,'kind',{p}kind,'name',{p}name,'content',{p}content,\
             'salience',{p}salience,'expires_at',{p}expires_at,'properties',json({p}properties),\
             'created_at',{p}created_at,'updated_at',{p}updated_at)"
        ),
        Kind::Event => format!(
            "json_object('id',{p}id,'verb',{p}verb,'actor',{p}actor,'outcome',{p}outcome,\
             'target',{p}target,'data',json({p}data),'duration_us',{p}duration_us,\
             'created_at',{p}created_at)"
        ),
        Kind::Vector => format!(
            "json_object('subject',{p}subject,'model',{p}model,'kind',{p}kind,\
             'created_at',{p}created_at,'updated_at',{p}updated_at)"
        ),
    }
}

/// The id column of a kind's row key (vectors: the subject; their model is the second half).
fn id_col(kind: Kind) -> &'static str {
    if kind == Kind::Vector {
        "subject"
    } else {
        "id"
    }
}

/// The logging triggers' condition: not while a replica applies upstream changes.
pub(super) const NOT_APPLYING: &str = "NOT EXISTS (SELECT 1 FROM sync_ctx WHERE applying = 1)";
/// The next seq of the log, as an SQL expression.
pub(crate) const NEXT_SEQ: &str =
    "(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0) + 1)";

/// `INSERT INTO changes` for an upsert of the row `new`, or a delete of the row `old`.
fn log_sql(kind: Kind, op: &str, extra_cond: &str, vector_emb: &str) -> String {
    let r = if op == "upsert" { "new." } else { "old." };
    let id = id_col(kind);
    let model = if kind == Kind::Vector {
        format!("{r}model")
    } else {
        "NULL".into()
    };
    let (data, emb) = if op == "upsert" {
        let emb = if kind == Kind::Vector {
            vector_emb
        } else {
            "NULL"
        };
        (row_image_sql(kind, "new."), emb)
    } else {
        ("NULL".to_string(), "NULL")
    };
    format!(
        "INSERT INTO changes(tx, ts, ns, kind, op, id, model, data, embedding)
         SELECT coalesce((SELECT tx FROM sync_ctx), {NEXT_SEQ}), coalesce((SELECT ts FROM sync_ctx), {NOW_US}),
                {r}ns, '{kind}', '{op}', {r}{id}, {model}, {data}, {emb}
         WHERE {NOT_APPLYING} {extra_cond};",
        kind = kind.as_str()
    )
}

/// Triggers that log every insert, update and delete of `kind` into `changes`, plus `extra`
/// statements per event (derived-index upkeep).
pub(super) fn log_triggers(
    kind: Kind,
    on_insert: &str,
    on_update: &str,
    on_delete: &str,
) -> String {
    log_triggers_when(kind, on_insert, on_update, on_delete, "", "new.embedding")
}

/// [`log_triggers`] whose insert and update triggers have the `WHEN` clause `when` (or none),
/// and which log `vector_emb` as a vector's embedding.
pub(super) fn log_triggers_when(
    kind: Kind,
    on_insert: &str,
    on_update: &str,
    on_delete: &str,
    when: &str,
    vector_emb: &str,
) -> String {
    let t = kind.table();
    let id = id_col(kind);
    let key_moved = if kind == Kind::Vector {
        "AND (old.ns IS NOT new.ns OR old.subject IS NOT new.subject OR old.model IS NOT new.model)"
            .to_string()
    } else {
        format!("AND (old.ns IS NOT new.ns OR old.{id} IS NOT new.{id})")
    };
    format!(
        "CREATE TRIGGER {t}_ai AFTER INSERT ON {t}{when} BEGIN
           {on_insert}
           {ins}
         END;
         CREATE TRIGGER {t}_au AFTER UPDATE ON {t}{when} BEGIN
           {on_update}
           {moved}
           {upd}
         END;
         CREATE TRIGGER {t}_ad AFTER DELETE ON {t} BEGIN
           {del}
           {on_delete}
         END;",
        ins = log_sql(kind, "upsert", "", vector_emb),
        moved = log_sql(kind, "delete", &key_moved, vector_emb),
        upd = log_sql(kind, "upsert", "", vector_emb),
        del = log_sql(kind, "delete", "", vector_emb),
    )
}
