//! The migrations' DDL (vector models' in `models.rs`, the triggers' fragments in
//! `triggers.rs`) and the full-text queue drain.

use rusqlite::Connection;

use super::triggers::{log_triggers, log_triggers_when, Mode, NOW_US};
use super::SchemaOptions;
use crate::error::Result;
use crate::model::Kind;

pub(super) fn migration_1(conn: &Connection, opts: &SchemaOptions) -> Result<()> {
    let tok = opts.tokenizer.fts_arg();
    let now = NOW_US;
    let mut sql = format!(
        "
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta(key, value) VALUES ('fts_tokenizer', '{tok_name}');

CREATE TABLE entities(
  ns TEXT NOT NULL, id TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
  description TEXT NOT NULL DEFAULT '', properties TEXT NOT NULL DEFAULT '{{}}',
  tags TEXT NOT NULL DEFAULT '[]',
  created_at INTEGER NOT NULL DEFAULT ({now}), updated_at INTEGER NOT NULL DEFAULT ({now}),
  UNIQUE(ns, id));
CREATE INDEX entities_kind ON entities(ns, kind);

CREATE TABLE edges(
  ns TEXT NOT NULL, id TEXT NOT NULL, source TEXT NOT NULL, target TEXT NOT NULL,
  relation TEXT NOT NULL, weight REAL NOT NULL DEFAULT 1.0, properties TEXT NOT NULL DEFAULT '{{}}',
  created_at INTEGER NOT NULL DEFAULT ({now}), updated_at INTEGER NOT NULL DEFAULT ({now}),
  UNIQUE(ns, id), UNIQUE(ns, source, target, relation));
CREATE INDEX edges_in ON edges(ns, target, relation);

CREATE TABLE notes(
  ns TEXT NOT NULL, id TEXT NOT NULL, kind TEXT NOT NULL DEFAULT 'note', name TEXT NOT NULL DEFAULT '',
  content TEXT NOT NULL, salience REAL NOT NULL DEFAULT 0.5, expires_at INTEGER,
  properties TEXT NOT NULL DEFAULT '{{}}',
  created_at INTEGER NOT NULL DEFAULT ({now}), updated_at INTEGER NOT NULL DEFAULT ({now}),
  UNIQUE(ns, id));
CREATE INDEX notes_kind ON notes(ns, kind);

CREATE TABLE events(
  ns TEXT NOT NULL, id TEXT NOT NULL, verb TEXT NOT NULL, actor TEXT, outcome TEXT, target TEXT,
  data TEXT NOT NULL DEFAULT '{{}}', duration_us INTEGER,
  created_at INTEGER NOT NULL DEFAULT ({now}),
  UNIQUE(ns, id));
CREATE INDEX events_time ON events(ns, created_at);

CREATE TABLE vectors(
  ns TEXT NOT NULL, subject TEXT NOT NULL, model TEXT NOT NULL, kind TEXT NOT NULL DEFAULT '',
  embedding BLOB NOT NULL,
  created_at INTEGER NOT NULL DEFAULT ({now}), updated_at INTEGER NOT NULL DEFAULT ({now}),
  UNIQUE(ns, subject, model));
CREATE INDEX vectors_model ON vectors(model);

-- One row per vector model; its vec0 index is vec_<rowid> (a name no user text reaches).
CREATE TABLE vector_models(
  model TEXT NOT NULL UNIQUE, dims INTEGER NOT NULL CHECK (dims > 0),
  created_at INTEGER NOT NULL DEFAULT ({now}));

CREATE TABLE changes(
  seq INTEGER PRIMARY KEY AUTOINCREMENT, tx INTEGER NOT NULL, ts INTEGER NOT NULL,
  ns TEXT NOT NULL, kind TEXT NOT NULL, op TEXT NOT NULL, id TEXT NOT NULL, model TEXT,
  data TEXT, embedding BLOB);

CREATE TABLE sync_ctx(
  one INTEGER PRIMARY KEY CHECK (one = 1), tx INTEGER, ts INTEGER,
  applying INTEGER NOT NULL DEFAULT 0);

CREATE VIRTUAL TABLE entities_fts USING fts5(
  name, description, tags, content='entities', content_rowid='rowid', tokenize='{tok}');
CREATE VIRTUAL TABLE notes_fts USING fts5(
  name, content, content='notes', content_rowid='rowid', tokenize='{tok}');
",
        tok_name = if tok == "trigram" { "trigram" } else { "unicode61" },
    );
    sql.push_str(&log_triggers(
        Kind::Entity,
        "INSERT INTO entities_fts(rowid, name, description, tags)
           VALUES (new.rowid, new.name, new.description, new.tags);",
        "INSERT INTO entities_fts(entities_fts, rowid, name, description, tags)
           VALUES ('delete', old.rowid, old.name, old.description, old.tags);
         INSERT INTO entities_fts(rowid, name, description, tags)
           VALUES (new.rowid, new.name, new.description, new.tags);",
        // Edges never outlive their endpoints; the cascade is logged by the edge triggers.
        "INSERT INTO entities_fts(entities_fts, rowid, name, description, tags)
           VALUES ('delete', old.rowid, old.name, old.description, old.tags);
         DELETE FROM edges WHERE ns = old.ns AND (source = old.id OR target = old.id);",
    ));
    sql.push_str(&log_triggers(
        Kind::Note,
        "INSERT INTO notes_fts(rowid, name, content) VALUES (new.rowid, new.name, new.content);",
        "INSERT INTO notes_fts(notes_fts, rowid, name, content)
           VALUES ('delete', old.rowid, old.name, old.content);
         INSERT INTO notes_fts(rowid, name, content) VALUES (new.rowid, new.name, new.content);",
        "INSERT INTO notes_fts(notes_fts, rowid, name, content)
           VALUES ('delete', old.rowid, old.name, old.content);",
    ));
    sql.push_str(&log_triggers(Kind::Edge, "", "", ""));
    sql.push_str(&log_triggers(Kind::Event, "", "", ""));
    sql.push_str(&log_triggers(Kind::Vector, "", "", ""));
    conn.execute_batch(&sql)?;
    Ok(())
}

/// The full-text queue's trigger statements for `kind` (entities or notes): what migration 2
/// puts in place of direct FTS5 writes. With `insert_text` false (migration 3), an insert
/// queues only the rowid of the row to index.
fn fts_queue_sql(kind: Kind, insert_text: bool) -> (String, String, String) {
    let (t, cols): (&str, &[&str]) = match kind {
        Kind::Entity => ("entities", &["name", "description", "tags"]),
        _ => ("notes", &["name", "content"]),
    };
    let vals = |p: &str| {
        let mut v: Vec<String> = cols.iter().map(|c| format!("{p}{c}")).collect();
        v.resize(3, "NULL".into());
        v.join(", ")
    };
    let changed: Vec<String> = cols
        .iter()
        .map(|c| format!("old.{c} IS NOT new.{c}"))
        .collect();
    let ins_cols = if insert_text {
        "tbl, op, rid, c1, c2, c3"
    } else {
        "tbl, op, rid"
    };
    let ins_vals = |p: &str| {
        if insert_text {
            format!("{p}rowid, {}", vals(p))
        } else {
            format!("{p}rowid")
        }
    };
    let ins = format!(
        "INSERT INTO fts_queue({ins_cols}) VALUES ('{t}', 'i', {});",
        ins_vals("new.")
    );
    let upd = format!(
        "INSERT INTO fts_queue(tbl, op, rid, c1, c2, c3)
           SELECT '{t}', 'd', old.rowid, {old} WHERE old.rowid IS NOT new.rowid OR {ch};
         INSERT INTO fts_queue({ins_cols})
           SELECT '{t}', 'i', {new} WHERE old.rowid IS NOT new.rowid OR {ch};",
        old = vals("old."),
        new = ins_vals("new."),
        ch = changed.join(" OR ")
    );
    let del = format!(
        "INSERT INTO fts_queue(tbl, op, rid, c1, c2, c3) VALUES ('{t}', 'd', old.rowid, {});",
        vals("old.")
    );
    (ins, upd, del)
}

/// Migration 2: full-text updates go through a queue applied once per transaction.
///
/// FTS5 flushes its pending in-memory index to disk at every statement savepoint, and every
/// statement that fires a trigger inside a transaction opens one, so an index maintained row by
/// row from triggers wrote one tiny segment per row and then merged them: 49% of apply time
/// (perf, 50,000 entity upserts). Now the triggers append the FTS work to `fts_queue`, in the
/// same transaction as the row and its change, and [`drain_fts_queue`](super::drain_fts_queue)
/// applies it with one statement per index just before hivesync commits. Writes by other
/// programs stay queued (captured, not yet searchable) until a hivesync process drains them:
/// the node does so as soon as it notices the commit.
pub(super) fn migration_2(conn: &Connection, _opts: &SchemaOptions) -> Result<()> {
    let mut sql = String::from(
        "CREATE TABLE fts_queue(
           seq INTEGER PRIMARY KEY, tbl TEXT NOT NULL, op TEXT NOT NULL, rid INTEGER NOT NULL,
           c1 TEXT, c2 TEXT, c3 TEXT);",
    );
    sql.push_str(&queued_fts_triggers(true, ""));
    conn.execute_batch(&sql)?;
    Ok(())
}

/// Replace the entity and note triggers with ones that queue their full-text work (with the
/// text of inserts in the queue or not: see [`fts_queue_sql`]).
fn queued_fts_triggers(insert_text: bool, entity_when: &str) -> String {
    let mut sql = String::from(
        "DROP TRIGGER entities_ai; DROP TRIGGER entities_au; DROP TRIGGER entities_ad;
         DROP TRIGGER notes_ai; DROP TRIGGER notes_au; DROP TRIGGER notes_ad;",
    );
    let (ins, upd, del) = fts_queue_sql(Kind::Entity, insert_text);
    sql.push_str(&log_triggers_when(
        Kind::Entity,
        &ins,
        &upd,
        // Edges never outlive their endpoints; the cascade is logged by the edge triggers.
        &format!(
            "{del}\n DELETE FROM edges WHERE ns = old.ns AND (source = old.id OR target = old.id);"
        ),
        entity_when,
        "new.embedding",
    ));
    let (ins, upd, del) = fts_queue_sql(Kind::Note, insert_text);
    sql.push_str(&log_triggers(Kind::Note, &ins, &upd, &del));
    sql
}

/// Migration 3: the full-text queue carries text only for deletes (the text the index holds,
/// which the base table no longer has); an insert queues its rowid and the drain reads the
/// row's current text. Writing the text of every new row a second time, into the queue, and
/// reading it back was most of the queue's cost.
pub(super) fn migration_3(conn: &Connection, _opts: &SchemaOptions) -> Result<()> {
    conn.execute_batch(&queued_fts_triggers(false, ""))?;
    Ok(())
}

/// Migration 4: the entity insert and update triggers do nothing while
/// [`Mode::WriterLogsEntities`]. Without a `sync_ctx` row (any other
/// program's write) they run as before.
pub(super) fn migration_4(conn: &Connection, _opts: &SchemaOptions) -> Result<()> {
    conn.execute_batch(&queued_fts_triggers(
        false,
        &format!(
            " WHEN (SELECT applying FROM sync_ctx) IS NOT {}",
            Mode::WriterLogsEntities.code()
        ),
    ))?;
    Ok(())
}

/// Migration 5: vector models per namespace, one vec0 table per dimension count, vec0 kept in
/// step through the queue (see [`super::models`]).
pub(super) fn migration_5(conn: &Connection, _opts: &SchemaOptions) -> Result<()> {
    super::models::migration_5(conn)
}

/// Migration 7: each embedding stored once (see [`super::models`]).
pub(super) fn migration_7(conn: &Connection, _opts: &SchemaOptions) -> Result<()> {
    super::models::migration_7(conn)
}

/// The exactly-once ledger records which principal (token name) owns each client id (NULL:
/// none yet; the next scoped writer claims it). `store::write_in` checks it.
pub(super) fn migration_9(conn: &Connection, _opts: &SchemaOptions) -> Result<()> {
    conn.execute_batch("ALTER TABLE client_writes ADD COLUMN principal TEXT;")?;
    Ok(())
}

/// Vector pairs with few vectors in small-chunk vec0 tables (`schema::models`).
pub(super) fn migration_8(conn: &Connection, _opts: &SchemaOptions) -> Result<()> {
    super::models::migration_8(conn)
}

/// Local-first writes, both halves (docs/design.md, "Offline writes"):
/// - `client_writes` (a node): per client, the last write number applied and the log head
///   after it, written in the write's own transaction, so a re-sent write is answered from it
///   and never applied twice;
/// - `outbox`, `outbox_shadow` and `outbox_keys` (a replica): its own writes not yet seen in
///   the node's feed, in order; the node's image of every row they touched, to take them back;
///   which entry touched which row (`crate::outbox`).
pub(super) fn migration_6(conn: &Connection, _opts: &SchemaOptions) -> Result<()> {
    conn.execute_batch(
        "CREATE TABLE client_writes(
           client TEXT PRIMARY KEY, n INTEGER NOT NULL, seq INTEGER NOT NULL) WITHOUT ROWID;
         CREATE TABLE outbox(
           n INTEGER PRIMARY KEY, ops TEXT NOT NULL, created_us INTEGER NOT NULL,
           seq INTEGER, error TEXT);
         CREATE INDEX outbox_seq ON outbox(seq) WHERE seq IS NOT NULL;
         CREATE TABLE outbox_shadow(
           kind TEXT NOT NULL, ns TEXT NOT NULL, id TEXT NOT NULL, model TEXT NOT NULL,
           present INTEGER NOT NULL, data TEXT, embedding BLOB,
           PRIMARY KEY(kind, ns, id, model)) WITHOUT ROWID;
         CREATE TABLE outbox_keys(
           n INTEGER NOT NULL, kind TEXT NOT NULL, ns TEXT NOT NULL, id TEXT NOT NULL,
           model TEXT NOT NULL, PRIMARY KEY(kind, ns, id, model, n)) WITHOUT ROWID;
         CREATE INDEX outbox_keys_n ON outbox_keys(n);",
    )?;
    Ok(())
}

/// Apply queued full-text and vector index updates, then empty the queue. Returns how many
/// entries there were. (Vector entries: see [`super::models`].)
///
/// The index is as it was at the last drain; the queue says what changed since, row by row.
/// For each row, only the first entry's "before" matters: if it is a delete, the row was indexed
/// with that entry's text, which is removed; any later delete is of a version queued after it,
/// never indexed. Then every row with an insert entry that still exists is indexed with its
/// current text. (Inserts queued by migration 2's triggers carry their text; it is not needed.)
pub fn drain_fts_queue(conn: &Connection) -> Result<usize> {
    if !fts_queue_pending(conn)? {
        return Ok(0);
    }
    let (has_deletes, has_vectors): (bool, bool) = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM fts_queue WHERE op = 'd' AND tbl <> 'vectors'),
                    EXISTS (SELECT 1 FROM fts_queue WHERE tbl = 'vectors')",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    if has_vectors {
        super::models::drain_vectors(conn)?;
    }
    if has_deletes {
        conn.prepare_cached(
            "WITH first AS (SELECT min(seq) AS seq FROM fts_queue WHERE tbl = 'entities' GROUP BY rid)
             INSERT INTO entities_fts(entities_fts, rowid, name, description, tags)
             SELECT 'delete', q.rid, q.c1, q.c2, q.c3 FROM first JOIN fts_queue q ON q.seq = first.seq
             WHERE q.op = 'd'",
        )?
        .execute([])?;
        conn.prepare_cached(
            "WITH first AS (SELECT min(seq) AS seq FROM fts_queue WHERE tbl = 'notes' GROUP BY rid)
             INSERT INTO notes_fts(notes_fts, rowid, name, content)
             SELECT 'delete', q.rid, q.c1, q.c2 FROM first JOIN fts_queue q ON q.seq = first.seq
             WHERE q.op = 'd'",
        )?
        .execute([])?;
    }
    conn.prepare_cached(
        "INSERT INTO entities_fts(rowid, name, description, tags)
         SELECT rowid, name, description, tags FROM entities
         WHERE rowid IN (SELECT rid FROM fts_queue WHERE tbl = 'entities' AND op = 'i')",
    )?
    .execute([])?;
    conn.prepare_cached(
        "INSERT INTO notes_fts(rowid, name, content)
         SELECT rowid, name, content FROM notes
         WHERE rowid IN (SELECT rid FROM fts_queue WHERE tbl = 'notes' AND op = 'i')",
    )?
    .execute([])?;
    Ok(conn.prepare_cached("DELETE FROM fts_queue")?.execute([])?)
}

/// True when full-text updates are waiting in the queue.
pub fn fts_queue_pending(conn: &Connection) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM fts_queue)")?
        .query_row([], |r| r.get(0))?)
}
