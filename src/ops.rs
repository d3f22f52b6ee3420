//! Write ops: validate the one JSON write shape into typed rows, and write rows with SQL.
//!
//! The node's write path ([`execute`]) and the replica's apply path ([`crate::apply`]) share
//! the row-level statements here, so both targets write rows the same way. Everything runs
//! inside the caller's transaction; nothing here commits.

use rusqlite::{params, Connection, OptionalExtension};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::model::{embedding_to_blob, Edge, Entity, Event, Kind, Note, Op, Vector, WriteOp};
use crate::schema;

/// Longest id or namespace accepted, in bytes.
pub const MAX_ID: usize = 512;
/// Longest name, kind, relation or verb accepted, in bytes.
pub const MAX_NAME: usize = 16 * 1024;
/// Longest free text (description, content) accepted, in bytes: 1 MiB keeps one op well inside
/// the protocol's frame limit and keeps FTS5 tokenizing time per op in the milliseconds.
pub const MAX_TEXT: usize = 1024 * 1024;
/// Largest JSON object (properties, event data) accepted, serialized, in bytes.
pub const MAX_JSON: usize = 1024 * 1024;

/// Current time in microseconds since the Unix epoch.
pub fn now_us(conn: &Connection) -> Result<i64> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = conn;
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| Error::invalid(format!("system clock before 1970: {e}")))?;
        Ok(d.as_micros() as i64)
    }
    #[cfg(target_arch = "wasm32")]
    {
        // No SystemTime on wasm32-unknown-unknown; SQLite asks the host for the time.
        Ok(conn.query_row(&format!("SELECT {}", schema::NOW_US), [], |r| r.get(0))?)
    }
}

fn new_id(conn: &Connection) -> Result<String> {
    let mut b: [u8; 16] = conn
        .prepare_cached("SELECT randomblob(16)")?
        .query_row([], |r| {
            let v: Vec<u8> = r.get(0)?;
            Ok(v.try_into().unwrap_or([0u8; 16]))
        })?;
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// Check an id or a namespace.
pub fn check_key(what: &str, s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(Error::invalid(format!("{what} must not be empty")));
    }
    if s.len() > MAX_ID {
        return Err(Error::TooLarge {
            what: "id",
            size: s.len(),
            limit: MAX_ID,
        });
    }
    if s.contains('\0') {
        return Err(Error::invalid(format!(
            "{what} {s:?} contains a NUL character"
        )));
    }
    Ok(())
}

fn check_name(what: &'static str, s: &str, required: bool) -> Result<()> {
    if required && s.trim().is_empty() {
        return Err(Error::invalid(format!("{what} must not be empty")));
    }
    if s.len() > MAX_NAME {
        return Err(Error::TooLarge {
            what,
            size: s.len(),
            limit: MAX_NAME,
        });
    }
    Ok(())
}

fn check_text(what: &'static str, s: &str) -> Result<()> {
    if s.len() > MAX_TEXT {
        return Err(Error::TooLarge {
            what,
            size: s.len(),
            limit: MAX_TEXT,
        });
    }
    Ok(())
}

fn json_obj(what: &'static str, m: &Map<String, Value>) -> Result<String> {
    let s = serde_json::to_string(m)?;
    if s.len() > MAX_JSON {
        return Err(Error::TooLarge {
            what,
            size: s.len(),
            limit: MAX_JSON,
        });
    }
    Ok(s)
}

fn parse_data<T: for<'de> Deserialize<'de>>(kind: Kind, data: &Value) -> Result<T> {
    T::deserialize(data).map_err(|e| Error::invalid(format!("invalid {kind} data: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntityIn {
    id: Option<String>,
    kind: Option<String>,
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    properties: Map<String, Value>,
    #[serde(default)]
    tags: Vec<String>,
    created_at: Option<i64>,
    updated_at: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EdgeIn {
    id: Option<String>,
    source: String,
    target: String,
    relation: String,
    weight: Option<f64>,
    #[serde(default)]
    properties: Map<String, Value>,
    created_at: Option<i64>,
    updated_at: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteIn {
    id: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    name: String,
    content: String,
    salience: Option<f64>,
    expires_at: Option<i64>,
    #[serde(default)]
    properties: Map<String, Value>,
    created_at: Option<i64>,
    updated_at: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventIn {
    id: Option<String>,
    verb: String,
    actor: Option<String>,
    outcome: Option<String>,
    target: Option<String>,
    #[serde(default)]
    data: Map<String, Value>,
    duration_us: Option<i64>,
    created_at: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VectorIn {
    subject: String,
    model: String,
    embedding: Vec<f64>,
    kind: Option<String>,
    created_at: Option<i64>,
    updated_at: Option<i64>,
}

/// Check an embedding: finite values only, a sane dimension count.
pub fn check_embedding(v: &[f32]) -> Result<()> {
    if v.is_empty() || v.len() > schema::MAX_DIMS {
        return Err(Error::invalid(format!(
            "an embedding needs 1 to {} dimensions, got {}",
            schema::MAX_DIMS,
            v.len()
        )));
    }
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::invalid(format!(
            "embedding value {i} is {}: only finite numbers are allowed",
            v[i]
        )));
    }
    if v.iter().all(|x| *x == 0.0) {
        return Err(Error::invalid(
            "an all-zero embedding has no direction: cosine distance is undefined",
        ));
    }
    Ok(())
}

fn to_f32(v: &[f64]) -> Result<Vec<f32>> {
    let out: Vec<f32> = v.iter().map(|x| *x as f32).collect();
    if let Some(i) = v
        .iter()
        .zip(&out)
        .position(|(a, b)| a.is_finite() && !b.is_finite())
    {
        return Err(Error::invalid(format!(
            "embedding value {i} ({}) does not fit in an f32",
            v[i]
        )));
    }
    Ok(out)
}

/// Result of one executed op.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpResult {
    /// The row's id (for vectors, the subject).
    pub id: String,
}

/// The namespace of a write op, checked.
fn check_ns(ns: &str) -> Result<()> {
    check_key("namespace", ns)?;
    if ns.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "namespace {ns:?} contains a control character"
        )));
    }
    Ok(())
}

/// The `data` of an upsert op, checked for shape (a JSON object, the key inside it).
fn upsert_data(op: &WriteOp) -> Result<&Value> {
    if op.id.is_some() || op.model.is_some() {
        return Err(Error::invalid(
            "an upsert carries its key inside `data`; `id` and `model` belong to deletes",
        ));
    }
    let data = op
        .data
        .as_ref()
        .ok_or_else(|| Error::invalid(format!("upsert of {} needs `data`", op.kind)))?;
    if !data.is_object() {
        return Err(Error::invalid(format!(
            "`data` of a {} upsert must be a JSON object",
            op.kind
        )));
    }
    Ok(data)
}

/// Validate and execute one write op inside the caller's transaction.
pub fn execute(conn: &Connection, op: &WriteOp, now: i64) -> Result<OpResult> {
    check_ns(&op.ns)?;
    match op.op {
        Op::Upsert => upsert(conn, op.kind, &op.ns, upsert_data(op)?, now),
        Op::Delete => {
            if op.data.is_some() {
                return Err(Error::invalid(
                    "a delete carries `id` (and `model` for vectors), not `data`",
                ));
            }
            let id = op
                .id
                .as_deref()
                .ok_or_else(|| Error::invalid(format!("delete of {} needs `id`", op.kind)))?;
            check_key("id", id)?;
            delete(conn, op.kind, &op.ns, id, op.model.as_deref())?;
            Ok(OpResult { id: id.to_string() })
        }
    }
}

fn exists(conn: &Connection, table: &str, ns: &str, id: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached(&format!("SELECT 1 FROM {table} WHERE ns = ?1 AND id = ?2"))?
        .query_row(params![ns, id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// `data` as an [`EntityIn`] read straight from the JSON value (serde's derived visitor over a
/// `Value` was 6% of 1,024-row writes), with `properties` borrowed, not copied; None when
/// anything is unusual (an unknown field, a wrong type, no name), for [`parse_data`] to refuse
/// with serde's message.
fn entity_in_fast(data: &Value) -> Option<(EntityIn, Option<&Map<String, Value>>)> {
    let m = data.as_object()?;
    let opt_str = |v: &Value| -> Option<Option<String>> {
        if v.is_null() {
            Some(None)
        } else {
            v.as_str().map(|s| Some(s.to_owned()))
        }
    };
    let opt_i64 = |v: &Value| -> Option<Option<i64>> {
        if v.is_null() {
            Some(None)
        } else {
            v.as_i64().map(Some)
        }
    };
    let mut e = EntityIn {
        id: None,
        kind: None,
        name: String::new(),
        description: String::new(),
        properties: Map::new(),
        tags: Vec::new(),
        created_at: None,
        updated_at: None,
    };
    let (mut named, mut props) = (false, None);
    for (k, v) in m {
        match k.as_str() {
            "id" => e.id = opt_str(v)?,
            "kind" => e.kind = opt_str(v)?,
            "name" => {
                e.name = v.as_str()?.to_owned();
                named = true;
            }
            "description" => e.description = v.as_str()?.to_owned(),
            "properties" => props = Some(v.as_object()?),
            "tags" => {
                e.tags = v
                    .as_array()?
                    .iter()
                    .map(|t| t.as_str().map(str::to_owned))
                    .collect::<Option<_>>()?
            }
            "created_at" => e.created_at = opt_i64(v)?,
            "updated_at" => e.updated_at = opt_i64(v)?,
            _ => return None,
        }
    }
    named.then_some((e, props))
}

/// The validated entity row of an upsert's `data` (a JSON object), its id generated when absent.
fn entity_row(conn: &Connection, data: &Value, now: i64) -> Result<Entity> {
    let e: EntityIn = parse_data(Kind::Entity, data)?;
    entity_row_from(conn, e, now)
}

/// [`entity_row`] with the row's `properties` as stored JSON text, rendered from `data` without
/// copying the map: the returned row's own `properties` is empty.
fn entity_row_text(conn: &Connection, data: &Value, now: i64) -> Result<(Entity, String)> {
    let Some((e, props)) = entity_in_fast(data) else {
        let mut e = entity_row(conn, data, now)?;
        let text = json_obj("entity properties", &e.properties)?;
        e.properties = Map::new();
        return Ok((e, text));
    };
    let text = match props {
        Some(p) => json_obj("entity properties", p)?,
        None => "{}".to_string(),
    };
    Ok((entity_row_from(conn, e, now)?, text))
}

fn entity_row_from(conn: &Connection, e: EntityIn, now: i64) -> Result<Entity> {
    let id = match e.id {
        Some(id) => id,
        None => new_id(conn)?,
    };
    check_key("id", &id)?;
    let row = Entity {
        id,
        kind: e.kind.unwrap_or_else(|| "thing".into()),
        name: e.name,
        description: e.description,
        properties: e.properties,
        tags: e.tags,
        created_at: e.created_at.unwrap_or(now),
        updated_at: e.updated_at.unwrap_or(now),
    };
    check_name("entity kind", &row.kind, true)?;
    check_name("entity name", &row.name, true)?;
    check_text("entity description", &row.description)?;
    for t in &row.tags {
        check_name("tag", t, true)?;
    }
    Ok(row)
}

/// The validated entity row of `op` when it is an entity upsert, None for any other op: what
/// [`execute`] would write, so a caller can gather consecutive entity upserts in an
/// [`EntityRun`].
///
/// The row comes with its `properties` as the JSON text to store; the row's own `properties`
/// map is left empty (see [`EntityRun::push_rendered`]).
pub fn entity_upsert(
    conn: &Connection,
    op: &WriteOp,
    now: i64,
) -> Result<Option<(Entity, String)>> {
    if op.kind != Kind::Entity || op.op != Op::Upsert {
        return Ok(None);
    }
    check_ns(&op.ns)?;
    entity_row_text(conn, upsert_data(op)?, now).map(Some)
}

/// `data` is an object ([`upsert_data`]).
fn upsert(conn: &Connection, kind: Kind, ns: &str, data: &Value, now: i64) -> Result<OpResult> {
    match kind {
        Kind::Entity => {
            let row = entity_row(conn, data, now)?;
            write_entity(conn, ns, &row, false)?;
            Ok(OpResult { id: row.id })
        }
        Kind::Edge => {
            let e: EdgeIn = parse_data(kind, data)?;
            check_key("edge source", &e.source)?;
            check_key("edge target", &e.target)?;
            check_name("edge relation", &e.relation, true)?;
            for end in [&e.source, &e.target] {
                if !exists(conn, "entities", ns, end)? {
                    return Err(Error::NotFound(format!(
                        "edge endpoint {end:?} is not an entity in namespace {ns:?}: write the entity first"
                    )));
                }
            }
            let existing: Option<String> = conn
                .prepare_cached(
                    "SELECT id FROM edges WHERE ns = ?1 AND source = ?2 AND target = ?3 AND relation = ?4",
                )?
                .query_row(params![ns, e.source, e.target, e.relation], |r| r.get(0))
                .optional()?;
            let id = match (e.id, existing) {
                (Some(id), Some(ex)) if id != ex => {
                    return Err(Error::invalid(format!(
                        "edge {:?} -[{}]-> {:?} already exists with id {ex:?}; update it by that id or delete it first",
                        e.source, e.relation, e.target
                    )))
                }
                (Some(id), _) => id,
                (None, Some(ex)) => ex,
                (None, None) => new_id(conn)?,
            };
            check_key("id", &id)?;
            let weight = e.weight.unwrap_or(1.0);
            if !weight.is_finite() {
                return Err(Error::invalid("edge weight must be a finite number"));
            }
            let row = Edge {
                id,
                source: e.source,
                target: e.target,
                relation: e.relation,
                weight,
                properties: e.properties,
                created_at: e.created_at.unwrap_or(now),
                updated_at: e.updated_at.unwrap_or(now),
            };
            write_edge(conn, ns, &row, false)?;
            Ok(OpResult { id: row.id })
        }
        Kind::Note => {
            let n: NoteIn = parse_data(kind, data)?;
            let id = match n.id {
                Some(id) => id,
                None => new_id(conn)?,
            };
            check_key("id", &id)?;
            let salience = n.salience.unwrap_or(0.5);
            if !salience.is_finite() {
                return Err(Error::invalid("note salience must be a finite number"));
            }
            let row = Note {
                id,
                kind: n.kind.unwrap_or_else(|| "note".into()),
                name: n.name,
                content: n.content,
                salience,
                expires_at: n.expires_at,
                properties: n.properties,
                created_at: n.created_at.unwrap_or(now),
                updated_at: n.updated_at.unwrap_or(now),
            };
            check_name("note kind", &row.kind, true)?;
            check_name("note name", &row.name, false)?;
            check_text("note content", &row.content)?;
            write_note(conn, ns, &row, false)?;
            Ok(OpResult { id: row.id })
        }
        Kind::Event => {
            let e: EventIn = parse_data(kind, data)?;
            let id = match e.id {
                Some(id) => id,
                None => new_id(conn)?,
            };
            check_key("id", &id)?;
            check_name("event verb", &e.verb, true)?;
            for s in [&e.actor, &e.outcome, &e.target].into_iter().flatten() {
                check_name("event field", s, false)?;
            }
            let row = Event {
                id,
                verb: e.verb,
                actor: e.actor,
                outcome: e.outcome,
                target: e.target,
                data: e.data,
                duration_us: e.duration_us,
                created_at: e.created_at.unwrap_or(now),
            };
            write_event(conn, ns, &row)?;
            Ok(OpResult { id: row.id })
        }
        Kind::Vector => {
            let v: VectorIn = parse_data(kind, data)?;
            check_key("vector subject", &v.subject)?;
            let embedding = to_f32(&v.embedding)?;
            check_embedding(&embedding)?;
            let subject_kind: Option<String> = conn
                .prepare_cached(
                    "SELECT kind FROM entities WHERE ns = ?1 AND id = ?2
                     UNION ALL SELECT kind FROM notes WHERE ns = ?1 AND id = ?2 LIMIT 1",
                )?
                .query_row(params![ns, v.subject], |r| r.get(0))
                .optional()?;
            let subject_kind = subject_kind.ok_or_else(|| {
                Error::NotFound(format!(
                    "vector subject {:?} is not an entity or note in namespace {ns:?}: write it first",
                    v.subject
                ))
            })?;
            schema::ensure_model(
                conn,
                ns,
                &v.model,
                embedding.len(),
                schema::ModelLimit::Enforce,
            )?;
            let row = Vector {
                subject: v.subject,
                model: v.model,
                kind: v.kind.unwrap_or(subject_kind),
                embedding,
                created_at: v.created_at.unwrap_or(now),
                updated_at: v.updated_at.unwrap_or(now),
            };
            write_vector(conn, ns, &row, false)?;
            Ok(OpResult { id: row.subject })
        }
    }
}

/// The `ON CONFLICT` tail: the write path keeps the stored `created_at`; a replica copies the
/// upstream row image whole.
fn created_clause(replica: bool) -> &'static str {
    if replica {
        ", created_at = excluded.created_at"
    } else {
        ""
    }
}

/// Rows per multi-row statement in [`insert_rows`], largest first. A few fixed sizes keep the
/// prepared-statement cache small.
const CHUNKS: [usize; 4] = [64, 16, 4, 1];

/// `INSERT ... VALUES` of `rows` in order, with multi-row statements: `head` is the statement
/// up to `VALUES`, `tail` what follows the value lists (an `ON CONFLICT` clause, or empty),
/// `cols` the parameters per row, which `bind` binds for one row from 1-based index `base + 1`.
///
/// Why: every statement that fires the logging triggers runs under a statement journal (their
/// SQL functions make SQLite assume it may abort), and one statement per row copied each page it
/// touched into that journal once per row (10-12% of write time in a profile of 1,024-row
/// batches); one statement per 64 rows copies each page once per 64 rows, and steps the VM once.
/// A statement that fails is undone whole by SQLite; its rows are then retried one by one, so
/// the error is the first failing row's own, returned with that row's position in `rows`.
pub fn insert_rows<T>(
    conn: &Connection,
    head: &str,
    cols: usize,
    tail: &str,
    rows: &[T],
    bind: impl Fn(&mut rusqlite::Statement<'_>, usize, &T) -> Result<()>,
) -> std::result::Result<(), (usize, Error)> {
    insert_rows_returning(conn, head, cols, tail, rows, bind, |_, _| Ok(()))
}

/// [`insert_rows`] for a `tail` that ends in a `RETURNING` clause: `returned(start, row)` is
/// called for each row a statement returned, whose value lists began at position `start` of
/// `rows` ([`ReturnedOrder`] finds which). A statement that fails returns no rows: SQLite makes
/// every change, and only then returns rows, on its first step. An error from `returned` comes
/// after the statement's changes were made, so it is returned as it is (with `start`), never
/// retried row by row: the caller's transaction must be rolled back.
pub fn insert_rows_returning<T>(
    conn: &Connection,
    head: &str,
    cols: usize,
    tail: &str,
    rows: &[T],
    bind: impl Fn(&mut rusqlite::Statement<'_>, usize, &T) -> Result<()>,
    mut returned: impl FnMut(usize, &rusqlite::Row<'_>) -> Result<()>,
) -> std::result::Result<(), (usize, Error)> {
    if rows.is_empty() {
        return Ok(());
    }
    // The statement text for each chunk size, built when first needed in this call.
    let one = format!("({})", vec!["?"; cols].join(","));
    let mut sqls: [Option<String>; CHUNKS.len()] = Default::default();
    // Err(Ok(e)): SQLite refused the statement (undone whole; retry its rows one by one).
    // Err(Err(e)): `returned` failed after the statement's changes were made.
    let mut run = |start: usize, chunk: &[T]| -> std::result::Result<(), Result<Error>> {
        let at = CHUNKS
            .iter()
            .position(|&n| n == chunk.len())
            .unwrap_or(CHUNKS.len() - 1);
        let sql = sqls[at].get_or_insert_with(|| {
            format!(
                "{head} VALUES {}{tail}",
                vec![one.as_str(); CHUNKS[at]].join(",")
            )
        });
        let refused = |e: Error| Ok(e);
        let mut stmt = conn.prepare_cached(sql).map_err(|e| refused(e.into()))?;
        for (i, r) in chunk.iter().enumerate() {
            bind(&mut stmt, i * cols, r).map_err(refused)?;
        }
        let mut out = stmt.raw_query();
        while let Some(row) = out.next().map_err(|e| refused(e.into()))? {
            returned(start, row).map_err(Err)?;
        }
        Ok(())
    };
    let mut rest = rows;
    let mut done = 0;
    while !rest.is_empty() {
        let n = CHUNKS.into_iter().find(|&c| c <= rest.len()).unwrap_or(1);
        let (chunk, tail) = rest.split_at(n);
        match run(done, chunk) {
            Ok(()) => {}
            Err(Err(e)) => return Err((done, e)),
            Err(Ok(e)) if n == 1 => return Err((done, e)),
            Err(Ok(_)) => {
                for (i, r) in chunk.iter().enumerate() {
                    run(done + i, std::slice::from_ref(r))
                        .map_err(|e| (done + i, e.unwrap_or_else(|e| e)))?;
                }
            }
        }
        done += n;
        rest = tail;
    }
    Ok(())
}

/// Finds where the rows that multi-row statements return came from. SQLite returns them in
/// value-list order, though it does not promise to: each is looked for from just after the
/// previous one's position in its statement (skipping rows the statement did not return, as
/// `INSERT OR IGNORE` does), and None sends the caller to its own search.
struct ReturnedOrder {
    start: usize,
    next: usize,
}

impl ReturnedOrder {
    fn new() -> Self {
        ReturnedOrder {
            start: usize::MAX,
            next: 0,
        }
    }

    /// The position, in a statement whose rows began at `start`, of the first row at or after
    /// the last one found for which `is` holds.
    fn find(&mut self, start: usize, len: usize, is: impl Fn(usize) -> bool) -> Option<usize> {
        if start != self.start {
            (self.start, self.next) = (start, start);
        }
        let j = (self.next..statement_end(start, len)).find(|&j| is(j))?;
        self.next = j + 1;
        Some(j)
    }
}

/// The end of the rows of a statement of [`insert_rows`] that began at `start` (at most).
fn statement_end(start: usize, len: usize) -> usize {
    (start + CHUNKS[0]).min(len)
}

/// Consecutive entity upserts (of a write, or of a batch a replica applies), gathered to be
/// written together by [`write_entities`] before any other op runs.
pub struct EntityRun<'a> {
    replica: bool,
    /// The write path's commit (`tx`, `ts`): the run writes its own change-log rows.
    log: Option<(i64, i64)>,
    rows: Vec<(usize, &'a str, Entity, Option<String>)>,
    /// New rows of long runs (rowid, name, description, tags text), to be put straight into
    /// the full-text index at the end of the write ([`EntityRun::index_direct`]) instead of
    /// going through the queue. None once anything went through the queue in this write.
    direct: Option<Vec<(i64, String, String, String)>>,
    /// Long runs are written with the entity triggers standing aside (see [`EntityRun::logged`]).
    stand_aside: bool,
}

/// Runs shorter than this are left to the triggers: the statements that stand them aside and
/// back cost more than they save on a few rows.
const LOGGED_RUN_MIN: usize = 8;

impl<'a> EntityRun<'a> {
    /// An empty run whose rows are logged by the triggers (or, `replica` as in
    /// [`write_entities`], not at all: a replica copies the upstream's change rows).
    pub fn new(replica: bool) -> Self {
        EntityRun {
            replica,
            log: None,
            rows: Vec::new(),
            direct: None,
            stand_aside: false,
        }
    }

    /// An empty run of a replica's apply, written as [`EntityRun::logged`] writes its runs,
    /// minus the change rows (the replica copies the upstream's): new rows inserted with the
    /// entity triggers standing aside and, while the batch is nothing but such runs, indexed
    /// for full-text search straight at the end.
    pub fn replica_direct() -> Self {
        EntityRun {
            replica: true,
            log: None,
            rows: Vec::new(),
            direct: Some(Vec::new()),
            stand_aside: true,
        }
    }

    /// An empty run of the write path, which logs its rows as change `tx` at time `ts`, doing
    /// itself, in multi-row statements, what the entity triggers do row by row.
    ///
    /// Why: a trigger program per row, with three `sync_ctx` lookups, a `json_object` image that
    /// re-parses the `properties` and `tags` text, a change-log insert and a full-text queue
    /// insert, held 1,024-row writes at 0.72x of raw SQLite, while a raw-SQL variant writing the
    /// same change rows with images built in Rust, 64 rows per INSERT, ran at 0.73-0.94x
    /// (`cargo bench --bench write_throughput`, diagnostics). The images are byte for byte
    /// those of `row_image_sql` (tested).
    ///
    /// How, for a run of [`LOGGED_RUN_MIN`] or more: with `sync_ctx.applying` at
    /// [`WRITER_LOGS_ENTITIES`](crate::schema::WRITER_LOGS_ENTITIES) the entity insert and update
    /// triggers stand aside; new rows go in with `INSERT OR IGNORE ... RETURNING` and are
    /// indexed for full-text search (see below); the ops whose row already existed are then
    /// written as ordinary upserts with only the logging silenced (as a replica's are), so the
    /// update trigger queues the full-text delete of the old text; last, every op's change row,
    /// in op order.
    ///
    /// The full-text index: while a write is nothing but such runs of new rows (the bulk-load
    /// case), their rowids do not go through the queue; [`EntityRun::finish`] indexes them
    /// before the caller drains the queue. As soon as anything else could queue full-text work
    /// (an update in a run, or another op: [`EntityRun::before_other`]), the rows held so far
    /// are queued, in order, and the rest of the write uses the queue: the drain relies on the
    /// order of the queue (a row's first entry says what is indexed).
    pub fn logged(tx: i64, ts: i64) -> Self {
        EntityRun {
            replica: false,
            log: Some((tx, ts)),
            rows: Vec::new(),
            direct: Some(Vec::new()),
            stand_aside: true,
        }
    }

    /// Gather entity `e` of namespace `ns`, op (or change) number `index` of the caller's.
    pub fn push(&mut self, index: usize, ns: &'a str, e: Entity) {
        self.rows.push((index, ns, e, None));
    }

    /// [`push`](Self::push) a row whose `properties` are given as the JSON text to store (the
    /// row's own map is ignored).
    pub fn push_rendered(&mut self, index: usize, ns: &'a str, e: Entity, properties: String) {
        self.rows.push((index, ns, e, Some(properties)));
    }

    /// Write what was gathered, before an op that is not an entity upsert (which may queue
    /// full-text work: the new rows held for direct indexing go into the queue first). On
    /// failure: the caller's `index` of the row SQLite refused, or None for a failure of no
    /// row's own, with its error.
    pub fn before_other(
        &mut self,
        conn: &Connection,
    ) -> std::result::Result<(), (Option<usize>, Error)> {
        self.flush(conn).map_err(|(i, e)| (Some(i), e))?;
        self.spill(conn).map_err(|e| (None, e))
    }

    /// Write what was gathered at the end of the write (or batch), and index the new rows held
    /// for direct indexing; the caller then drains the queue. Failures as in
    /// [`before_other`](Self::before_other).
    pub fn finish(&mut self, conn: &Connection) -> std::result::Result<(), (Option<usize>, Error)> {
        self.flush(conn).map_err(|(i, e)| (Some(i), e))?;
        self.index_direct(conn).map_err(|e| (None, e))
    }

    /// Write what was gathered, in order, and empty the run. On failure: the caller's `index`
    /// of the row SQLite refused, with its error.
    fn flush(&mut self, conn: &Connection) -> std::result::Result<(), (usize, Error)> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let aside = self.stand_aside && self.rows.len() >= LOGGED_RUN_MIN;
        if !aside {
            self.spill(conn).map_err(|e| (self.rows[0].0, e))?;
        }
        let rows = self
            .rows
            .iter()
            .map(|(i, ns, e, props)| {
                match props {
                    Some(p) => EntityRow::rendered(ns, e, p.as_str().into()),
                    None => EntityRow::new(ns, e),
                }
                .map_err(|err| (*i, err))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let index = |i: usize| self.rows[i].0;
        if aside {
            write_run_aside(conn, &rows, self.replica, self.log, &mut self.direct)
                .map_err(|(i, e)| (index(i), e))?
        } else {
            write_entities(conn, &rows, self.replica, None).map_err(|(i, e)| (index(i), e))?
        }
        drop(rows);
        self.rows.clear();
        Ok(())
    }

    /// Queue the new rows held for direct indexing, and use the queue for the rest of the
    /// write.
    fn spill(&mut self, conn: &Connection) -> Result<()> {
        match self.direct.take() {
            Some(held) if !held.is_empty() => queue_for_indexing(conn, held.iter().map(|h| h.0)),
            _ => Ok(()),
        }
    }

    /// Put the new rows held (if any) into the full-text index.
    fn index_direct(&mut self, conn: &Connection) -> Result<()> {
        let Some(held) = self.direct.take() else {
            return Ok(());
        };
        if held.is_empty() {
            return Ok(());
        }
        let mut stmt = conn.prepare_cached(
            "INSERT INTO entities_fts(rowid, name, description, tags) VALUES (?1, ?2, ?3, ?4)",
        )?;
        for (rowid, name, description, tags) in &held {
            stmt.execute(params![rowid, name, description, tags])?;
        }
        Ok(())
    }
}

/// Queue entity rows (by rowid) for full-text indexing at the drain.
fn queue_for_indexing(conn: &Connection, rowids: impl Iterator<Item = i64>) -> Result<()> {
    let rowids: Vec<i64> = rowids.collect();
    insert_rows(
        conn,
        "INSERT INTO fts_queue(tbl, op, rid)",
        3,
        "",
        &rowids,
        |stmt, b, rid| {
            stmt.raw_bind_parameter(b + 1, "entities")?;
            stmt.raw_bind_parameter(b + 2, "i")?;
            stmt.raw_bind_parameter(b + 3, rid)?;
            Ok(())
        },
    )
    .map_err(|(_, e)| e)
}

/// Set `sync_ctx.applying`, in a write transaction that has its `sync_ctx` row.
fn set_applying(conn: &Connection, v: i64) -> Result<()> {
    conn.prepare_cached("UPDATE sync_ctx SET applying = ?1")?
        .execute([v])?;
    Ok(())
}

/// A long run's flush, with the entity triggers standing aside ([`EntityRun::logged`],
/// [`EntityRun::replica_direct`]); with `log`, the run's change rows too. `sync_ctx.applying`
/// is left as the caller had it: 0 on the write path, 1 in a replica's apply. Errors carry the
/// position in `rows`.
fn write_run_aside(
    conn: &Connection,
    rows: &[EntityRow<'_>],
    replica: bool,
    log: Option<(i64, i64)>,
    direct: &mut Option<Vec<(i64, String, String, String)>>,
) -> std::result::Result<(), (usize, Error)> {
    let at0 = |e: Error| (0, e);
    set_applying(conn, crate::schema::WRITER_LOGS_ENTITIES).map_err(at0)?;
    // New rows. Within one statement the first op of a key inserts it and any later one is
    // ignored, as is every op whose key was already stored.
    let mut rowids: Vec<Option<i64>> = vec![None; rows.len()];
    let mut order = ReturnedOrder::new();
    insert_rows_returning(
        conn,
        "INSERT OR IGNORE INTO entities(ns, id, kind, name, description, properties, tags, created_at, updated_at)",
        9,
        " RETURNING rowid, ns, id",
        rows,
        bind_entity,
        |start, row| {
            let rowid: i64 = row.get(0)?;
            let (ns, id) = (text_col(row, 1)?, text_col(row, 2)?);
            let is = |j: usize| rows[j].ns == ns && rows[j].e.id == id;
            // A statement inserts the first op of a key.
            let j = order
                .find(start, rows.len(), is)
                .or_else(|| (start..statement_end(start, rows.len())).find(|&j| is(j)))
                .ok_or_else(|| returned_unknown_row(id))?;
            rowids[j] = Some(rowid);
            Ok(())
        },
    )?;
    let updates: Vec<usize> = (0..rows.len()).filter(|&i| rowids[i].is_none()).collect();
    // The new rows go to the full-text index straight (held until the end of the write) while
    // nothing has gone through the queue; otherwise they are queued before the updates below,
    // so that a row inserted and then updated in this run is first seen by the drain as an
    // insert (nothing indexed to delete).
    if !updates.is_empty() {
        if let Some(held) = direct.take() {
            queue_for_indexing(conn, held.iter().map(|h| h.0)).map_err(at0)?;
        }
    }
    match direct {
        Some(held) => held.extend(rows.iter().zip(&rowids).filter_map(|(r, rid)| {
            rid.map(|rid| {
                (
                    rid,
                    r.e.name.clone(),
                    r.e.description.clone(),
                    r.tags.clone(),
                )
            })
        })),
        None => queue_for_indexing(conn, rowids.iter().flatten().copied()).map_err(at0)?,
    }
    // The ops whose row existed: ordinary upserts, logging silenced.
    let mut created: Vec<Option<i64>> = rowids
        .iter()
        .zip(rows)
        .map(|(rid, r)| rid.map(|_| r.e.created_at))
        .collect();
    if !updates.is_empty() {
        set_applying(conn, 1).map_err(at0)?;
        let upd: Vec<EntityRow<'_>> = updates.iter().map(|&i| rows[i].clone()).collect();
        let mut upd_created = vec![None; upd.len()];
        let want = log.is_some().then_some(upd_created.as_mut_slice());
        write_entities(conn, &upd, replica, want).map_err(|(i, e)| (updates[i], e))?;
        for (k, &i) in updates.iter().enumerate() {
            created[i] = upd_created[k];
        }
    }
    let Some((tx, ts)) = log else {
        return set_applying(conn, 1).map_err(at0);
    };
    let images = rows
        .iter()
        .zip(&created)
        .enumerate()
        .map(|(i, (r, c))| {
            let c = c.ok_or_else(|| (i, returned_unknown_row(&r.e.id)))?;
            Ok((r, entity_image(r, c).map_err(|e| (i, e))?))
        })
        .collect::<std::result::Result<Vec<_>, (usize, Error)>>()?;
    insert_rows(
        conn,
        "INSERT INTO changes(tx, ts, ns, kind, op, id, data)",
        7,
        "",
        &images,
        |stmt, b, (r, image)| {
            stmt.raw_bind_parameter(b + 1, tx)?;
            stmt.raw_bind_parameter(b + 2, ts)?;
            stmt.raw_bind_parameter(b + 3, r.ns)?;
            stmt.raw_bind_parameter(b + 4, Kind::Entity.as_str())?;
            stmt.raw_bind_parameter(b + 5, Op::Upsert.as_str())?;
            stmt.raw_bind_parameter(b + 6, &r.e.id)?;
            stmt.raw_bind_parameter(b + 7, image)?;
            Ok(())
        },
    )?;
    set_applying(conn, 0).map_err(at0)?;
    Ok(())
}

/// Column `i` of a returned row as text, without copying it.
fn text_col<'r>(row: &'r rusqlite::Row<'_>, i: usize) -> Result<&'r str> {
    Ok(row.get_ref(i)?.as_str().map_err(rusqlite::Error::from)?)
}

fn returned_unknown_row(id: &str) -> Error {
    Error::invalid(format!(
        "SQLite returned no row, or an unexpected one, for entity {id:?} of a multi-row upsert"
    ))
}

/// An entity row to write, with its `properties` and `tags` as the JSON text stored.
#[derive(Clone)]
pub struct EntityRow<'a> {
    /// Namespace.
    pub ns: &'a str,
    /// The row.
    pub e: &'a Entity,
    /// `e.properties` as stored.
    pub properties: std::borrow::Cow<'a, str>,
    /// `e.tags` as stored.
    pub tags: String,
}

impl<'a> EntityRow<'a> {
    /// Entity `e` of namespace `ns`, with its JSON columns rendered.
    pub fn new(ns: &'a str, e: &'a Entity) -> Result<Self> {
        Self::rendered(ns, e, json_obj("entity properties", &e.properties)?.into())
    }

    /// Entity `e` of namespace `ns` whose `properties` are the JSON text `properties`.
    pub fn rendered(
        ns: &'a str,
        e: &'a Entity,
        properties: std::borrow::Cow<'a, str>,
    ) -> Result<Self> {
        Ok(EntityRow {
            ns,
            e,
            properties,
            tags: serde_json::to_string(&e.tags)?,
        })
    }
}

/// The change-log image of entity row `r` stored with `created_at`: byte for byte what
/// [`row_image_sql`](crate::schema::row_image_sql) makes of the stored row. (`json()` leaves
/// serde_json's compact text of the properties and tags as it is, and `json_object` escapes
/// strings as serde_json does.)
pub fn entity_image(r: &EntityRow<'_>, created_at: i64) -> Result<String> {
    let e = r.e;
    let mut b = Vec::with_capacity(
        128 + e.id.len()
            + e.kind.len()
            + e.name.len()
            + e.description.len()
            + r.properties.len()
            + r.tags.len(),
    );
    b.extend_from_slice(b"{\"id\":");
    serde_json::to_writer(&mut b, &e.id)?;
    b.extend_from_slice(b",\"kind\":");
    serde_json::to_writer(&mut b, &e.kind)?;
    b.extend_from_slice(b",\"name\":");
    serde_json::to_writer(&mut b, &e.name)?;
    b.extend_from_slice(b",\"description\":");
    serde_json::to_writer(&mut b, &e.description)?;
    b.extend_from_slice(b",\"properties\":");
    b.extend_from_slice(r.properties.as_bytes());
    b.extend_from_slice(b",\"tags\":");
    b.extend_from_slice(r.tags.as_bytes());
    use std::io::Write as _;
    write!(
        b,
        ",\"created_at\":{created_at},\"updated_at\":{}}}",
        e.updated_at
    )?;
    String::from_utf8(b).map_err(|e| Error::invalid(format!("entity image is not UTF-8: {e}")))
}

/// Bind entity row `r`'s 9 columns from parameter `b + 1` on.
fn bind_entity(stmt: &mut rusqlite::Statement<'_>, b: usize, r: &EntityRow<'_>) -> Result<()> {
    stmt.raw_bind_parameter(b + 1, r.ns)?;
    stmt.raw_bind_parameter(b + 2, &r.e.id)?;
    stmt.raw_bind_parameter(b + 3, &r.e.kind)?;
    stmt.raw_bind_parameter(b + 4, &r.e.name)?;
    stmt.raw_bind_parameter(b + 5, &r.e.description)?;
    stmt.raw_bind_parameter(b + 6, r.properties.as_ref())?;
    stmt.raw_bind_parameter(b + 7, &r.tags)?;
    stmt.raw_bind_parameter(b + 8, r.e.created_at)?;
    stmt.raw_bind_parameter(b + 9, r.e.updated_at)?;
    Ok(())
}

/// Insert or replace entity rows, in order, with multi-row statements (see [`insert_rows`]).
/// With `created`, each row's stored `created_at` (the write path keeps an existing row's) is
/// put at its position.
pub fn write_entities(
    conn: &Connection,
    rows: &[EntityRow<'_>],
    replica: bool,
    created: Option<&mut [Option<i64>]>,
) -> std::result::Result<(), (usize, Error)> {
    let tail = format!(
        " ON CONFLICT(ns, id) DO UPDATE SET kind = excluded.kind, name = excluded.name,
           description = excluded.description, properties = excluded.properties, tags = excluded.tags,
           updated_at = excluded.updated_at{}{}",
        created_clause(replica),
        if created.is_some() {
            " RETURNING ns, id, created_at"
        } else {
            ""
        }
    );
    let mut created = created;
    let mut order = ReturnedOrder::new();
    insert_rows_returning(
        conn,
        "INSERT INTO entities(ns, id, kind, name, description, properties, tags, created_at, updated_at)",
        9,
        &tail,
        rows,
        bind_entity,
        |start, row| {
            let Some(created) = created.as_deref_mut() else {
                return Ok(());
            };
            let (ns, id, at) = (text_col(row, 0)?, text_col(row, 1)?, row.get::<_, i64>(2)?);
            let is = |j: usize| rows[j].ns == ns && rows[j].e.id == id;
            match order.find(start, rows.len(), is) {
                Some(j) => created[j] = Some(at),
                // Out of order: every row of the statement with this key (a key written twice
                // in one transaction keeps its first created_at).
                None => {
                    for j in (start..statement_end(start, rows.len())).filter(|&j| is(j)) {
                        created[j] = Some(at);
                    }
                }
            }
            Ok(())
        },
    )
}

/// Insert or replace one entity row.
pub fn write_entity(conn: &Connection, ns: &str, e: &Entity, replica: bool) -> Result<()> {
    let row = EntityRow::new(ns, e)?;
    write_entities(conn, std::slice::from_ref(&row), replica, None).map_err(|(_, e)| e)
}

/// Insert or replace an edge row.
pub fn write_edge(conn: &Connection, ns: &str, e: &Edge, replica: bool) -> Result<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO edges(ns, id, source, target, relation, weight, properties, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT(ns, id) DO UPDATE SET source = excluded.source, target = excluded.target,
           relation = excluded.relation, weight = excluded.weight, properties = excluded.properties,
           updated_at = excluded.updated_at{}",
        created_clause(replica)
    ))?
    .execute(params![
        ns,
        e.id,
        e.source,
        e.target,
        e.relation,
        e.weight,
        json_obj("edge properties", &e.properties)?,
        e.created_at,
        e.updated_at
    ])?;
    Ok(())
}

/// Insert or replace a note row.
pub fn write_note(conn: &Connection, ns: &str, n: &Note, replica: bool) -> Result<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO notes(ns, id, kind, name, content, salience, expires_at, properties, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT(ns, id) DO UPDATE SET kind = excluded.kind, name = excluded.name,
           content = excluded.content, salience = excluded.salience, expires_at = excluded.expires_at,
           properties = excluded.properties, updated_at = excluded.updated_at{}",
        created_clause(replica)
    ))?
    .execute(params![
        ns,
        n.id,
        n.kind,
        n.name,
        n.content,
        n.salience,
        n.expires_at,
        json_obj("note properties", &n.properties)?,
        n.created_at,
        n.updated_at
    ])?;
    Ok(())
}

/// Append an event row; an id already stored is left as it is (events are append-only, and
/// re-sending one must be harmless).
pub fn write_event(conn: &Connection, ns: &str, e: &Event) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO events(ns, id, verb, actor, outcome, target, data, duration_us, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT(ns, id) DO NOTHING",
    )?
    .execute(params![
        ns,
        e.id,
        e.verb,
        e.actor,
        e.outcome,
        e.target,
        json_obj("event data", &e.data)?,
        e.duration_us,
        e.created_at
    ])?;
    Ok(())
}

/// Insert or replace a vector row (its model must be registered).
pub fn write_vector(conn: &Connection, ns: &str, v: &Vector, replica: bool) -> Result<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO vectors(ns, subject, model, kind, embedding, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT(ns, subject, model) DO UPDATE SET kind = excluded.kind,
           embedding = excluded.embedding, updated_at = excluded.updated_at{}",
        created_clause(replica)
    ))?
    .execute(params![
        ns,
        v.subject,
        v.model,
        v.kind,
        embedding_to_blob(&v.embedding),
        v.created_at,
        v.updated_at
    ])?;
    Ok(())
}

/// Delete a row. Deleting an entity or note also deletes its vectors (explicitly, so each is
/// logged); deleting an entity deletes its edges (by trigger, logged too).
pub fn delete(
    conn: &Connection,
    kind: Kind,
    ns: &str,
    id: &str,
    model: Option<&str>,
) -> Result<()> {
    match kind {
        Kind::Event => {
            return Err(Error::invalid(
                "events are append-only and cannot be deleted",
            ));
        }
        Kind::Vector => {
            let model = model.ok_or_else(|| {
                Error::invalid("delete of a vector needs `model` as well as `id`")
            })?;
            conn.prepare_cached(
                "DELETE FROM vectors WHERE ns = ?1 AND subject = ?2 AND model = ?3",
            )?
            .execute(params![ns, id, model])?;
            return Ok(());
        }
        _ => {}
    }
    if model.is_some() {
        return Err(Error::invalid(format!(
            "`model` applies to vector deletes, not {kind}"
        )));
    }
    let n = conn
        .prepare_cached(&format!(
            "DELETE FROM {} WHERE ns = ?1 AND id = ?2",
            kind.table()
        ))?
        .execute(params![ns, id])?;
    if n > 0 && matches!(kind, Kind::Entity | Kind::Note) {
        let other = if kind == Kind::Entity {
            "notes"
        } else {
            "entities"
        };
        if !exists(conn, other, ns, id)? {
            conn.prepare_cached("DELETE FROM vectors WHERE ns = ?1 AND subject = ?2")?
                .execute(params![ns, id])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn db() -> Connection {
        schema::open_in_memory(&Default::default()).unwrap()
    }

    /// The write path reads entity upserts without serde's visitor; it must accept, refuse
    /// (with serde's message) and produce exactly what the serde path does.
    #[test]
    fn the_fast_entity_reader_agrees_with_serde() {
        let c = db();
        let cases = [
            json!({"id": "a", "name": "n", "kind": "k", "description": "d", "properties": {"x": [1, 2.5, null, "é\n"], "y": {"z": true}}, "tags": ["t1", "t2"], "created_at": 5, "updated_at": 6}),
            json!({"id": "a", "name": "n"}),
            json!({"id": null, "kind": null, "name": "n", "created_at": null, "updated_at": null}),
            json!({"id": "a"}),
            json!({"id": "a", "name": "n", "colour": 1}),
            json!({"id": "a", "name": 3}),
            json!({"id": "a", "name": "n", "tags": ["t", 1]}),
            json!({"id": "a", "name": "n", "tags": null}),
            json!({"id": "a", "name": "n", "properties": null}),
            json!({"id": "a", "name": "n", "properties": [1]}),
            json!({"id": "a", "name": "n", "description": null}),
            json!({"id": "a", "name": "n", "created_at": 1.5}),
            json!({"id": "a", "name": "n", "updated_at": u64::MAX}),
            json!({"id": "a", "name": " "}),
            json!({"id": "", "name": "n"}),
            json!({"id": 7, "name": "n"}),
            json!([1]),
        ];
        for data in cases {
            let fast = entity_row_text(&c, &data, 9);
            let slow = entity_row(&c, &data, 9).and_then(|e| {
                let text = json_obj("entity properties", &e.properties)?;
                Ok((e, text))
            });
            match (fast, slow) {
                (Ok((f, ft)), Ok((mut s, st))) => {
                    assert!(f.properties.is_empty(), "{data}");
                    s.properties = Map::new();
                    if data["id"].is_null() {
                        // Generated: a fresh id each time.
                        assert_eq!(f.id.len(), 36);
                        s.id = f.id.clone();
                    }
                    assert_eq!(f, s, "{data}");
                    assert_eq!(ft, st, "{data}");
                }
                (Err(f), Err(s)) => assert_eq!(f.to_string(), s.to_string(), "{data}"),
                (f, s) => panic!("{data}: fast {f:?}, serde {s:?}"),
            }
        }
    }

    #[test]
    fn generated_ids_are_uuid_v4() {
        let c = db();
        let id = new_id(&c).unwrap();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, new_id(&c).unwrap());
    }

    #[test]
    fn bad_ops_are_refused_with_reasons() {
        let c = db();
        let now = 1;
        let cases = [
            (
                WriteOp::upsert(Kind::Entity, "default", json!({"name": ""})),
                "empty",
            ),
            (
                WriteOp::upsert(Kind::Entity, "default", json!({"name": "a", "colour": 1})),
                "unknown field",
            ),
            (
                WriteOp::upsert(Kind::Entity, "", json!({"name": "a"})),
                "namespace",
            ),
            (
                WriteOp::upsert(Kind::Entity, "default", json!([1])),
                "JSON object",
            ),
            (
                WriteOp::upsert(
                    Kind::Edge,
                    "default",
                    json!({"source": "a", "target": "b", "relation": "r"}),
                ),
                "write the entity first",
            ),
            (
                WriteOp::upsert(
                    Kind::Vector,
                    "default",
                    json!({"subject": "a", "model": "m", "embedding": [1.0]}),
                ),
                "write it first",
            ),
            (WriteOp::delete(Kind::Event, "default", "x"), "append-only"),
            (WriteOp::delete(Kind::Vector, "default", "x"), "model"),
        ];
        for (op, want) in cases {
            let e = execute(&c, &op, now).unwrap_err().to_string();
            assert!(e.contains(want), "{op:?}: {e}");
        }
        let big = "x".repeat(MAX_TEXT + 1);
        let e = execute(
            &c,
            &WriteOp::upsert(Kind::Entity, "d", json!({"name": "a", "description": big})),
            now,
        )
        .unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    }

    #[test]
    fn embeddings_must_be_finite_and_match_the_model() {
        let c = db();
        execute(
            &c,
            &WriteOp::upsert(Kind::Entity, "d", json!({"id": "a", "name": "A"})),
            1,
        )
        .unwrap();
        let v = |emb: Value| {
            WriteOp::upsert(
                Kind::Vector,
                "d",
                json!({"subject": "a", "model": "m", "embedding": emb}),
            )
        };
        execute(&c, &v(json!([1.0, 0.0, 0.0])), 1).unwrap();
        let e = execute(&c, &v(json!([1.0, 0.0])), 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 dimensions"), "{e}");
        let e = execute(&c, &v(json!([1.0, 1e300, 0.0])), 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("f32"), "{e}");
        assert!(check_embedding(&[f32::NAN, 1.0])
            .unwrap_err()
            .to_string()
            .contains("NaN"));
        assert!(check_embedding(&[f32::INFINITY]).is_err());
        assert!(check_embedding(&[0.0, 0.0]).is_err());
    }
}
