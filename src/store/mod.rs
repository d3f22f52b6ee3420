//! The native store: the pool, the write path, reads, retention and integrity checks.
//!
//! ```no_run
//! use hivesync::{model::{Kind, WriteOp}, store::Store};
//! let store = Store::open("hivesync.db", Default::default())?;
//! let w = store.write(&[WriteOp::upsert(Kind::Entity, "default",
//!     serde_json::json!({"id": "ada", "kind": "person", "name": "Ada Lovelace"}))])?;
//! println!("committed up to seq {}", w.seq);
//! # Ok::<(), hivesync::Error>(())
//! ```

mod checkpoint;
pub mod image;
mod pool;

pub use checkpoint::{CheckpointStats, Checkpointer, WAL_HARD_LIMIT_BYTES, WAL_THRESHOLD_BYTES};
pub use pool::{Location, Pool, PoolConfig, Reader};
use std::collections::HashSet;

use std::path::Path;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{Change, Edge, Entity, Event, Kind, Note, Op, Origin, Vector, WriteOp};
use crate::query::{
    self, ChangeFilter, Direction, Hop, HybridHit, KnnHit, KnnQuery, ListQuery, Neighbor,
    SearchHit, SearchQuery, Snapshot,
};
use crate::schema::{self, SchemaOptions};
use crate::{apply, ops};

/// How to open a store.
#[derive(Clone, Debug, Default)]
pub struct StoreOptions {
    /// Pool settings.
    pub pool: PoolConfig,
    /// Settings used only when the file is created.
    pub schema: SchemaOptions,
}

/// What a committed write did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    /// The last seq committed (the log head after this write).
    pub seq: i64,
    /// The id of each op's row, in op order (empty for a replayed write).
    pub ids: Vec<String>,
    /// The write's origin had been applied already: nothing was written, and `seq` is the log
    /// head recorded after that client's last applied write.
    #[serde(default)]
    pub replayed: bool,
}

/// The store: a pooled SQLite knowledge base with a change log.
pub struct Store {
    pool: Pool,
    checkpointer: Option<Checkpointer>,
}

impl Store {
    /// Open (creating if needed) the database file at `path`.
    pub fn open(path: impl AsRef<Path>, opts: StoreOptions) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        let read_only = opts.pool.read_only;
        let pool = Pool::open(Location::File(path.clone()), opts.pool, &opts.schema)?;
        let checkpointer = if read_only {
            None
        } else {
            Some(Checkpointer::start(&path, Some(&mut *pool.writer()?))?)
        };
        let store = Store { pool, checkpointer };
        // Full-text updates queued by other programs since the last hivesync transaction.
        store.drain_fts_if_pending()?;
        Ok(store)
    }

    /// A private in-memory store (one connection), for tests and tools.
    pub fn open_in_memory(opts: StoreOptions) -> Result<Store> {
        Ok(Store {
            pool: Pool::open(Location::Memory, opts.pool, &opts.schema)?,
            checkpointer: None,
        })
    }

    /// The pool, for callers that run their own SQL.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Checkpoint counters, when this store checkpoints.
    pub fn checkpoint_stats(&self) -> Option<Arc<CheckpointStats>> {
        self.checkpointer.as_ref().map(|c| c.stats.clone())
    }

    /// Apply `ops` in one transaction: all commit, or none does (the error names the op).
    pub fn write(&self, ops: &[WriteOp]) -> Result<WriteResult> {
        self.write_from(ops, None)
    }

    /// [`Store::write`], at most once per `origin`: the client's last applied write number is
    /// recorded in the same transaction, and a write whose number is not above it is answered
    /// from that record (`replayed`), with nothing written.
    pub fn write_from(&self, ops: &[WriteOp], origin: Option<&Origin>) -> Result<WriteResult> {
        let mut conn = self.pool.writer()?;
        write_ops(&mut conn, ops, origin)
    }

    /// Bind the client id `client` to `principal` unless another principal holds it (then
    /// [`Error::Forbidden`]): what a node that forwards writes checks for its own clients.
    pub(crate) fn bind_client(&self, client: &str, principal: &str) -> Result<()> {
        let owner: Option<Option<String>> = self.read(|c| {
            Ok(
                c.prepare_cached("SELECT principal FROM client_writes WHERE client = ?1")?
                    .query_row([client], |r| r.get(0))
                    .optional()?,
            )
        })?;
        if owner.flatten().as_deref() == Some(principal) {
            return Ok(());
        }
        let w = self.pool.writer()?;
        bind_client(&w, client, principal)
    }

    /// Group commit: many writes in one transaction, each in its own savepoint (a refused one
    /// fails alone); one result per write, in order (see [`GroupWrite`] and the bounds the
    /// node's writer keeps, `GROUP_MAX_WRITES`).
    pub fn write_group(&self, writes: &[GroupWrite<'_>]) -> Result<Vec<Result<WriteResult>>> {
        let mut conn = self.pool.writer()?;
        Ok(write_group(&mut conn, writes))
    }

    /// Upsert one row.
    pub fn upsert(&self, kind: Kind, ns: &str, data: serde_json::Value) -> Result<WriteResult> {
        self.write(&[WriteOp::upsert(kind, ns, data)])
    }

    /// Delete one row (vectors: use [`Store::write`] with `model` set).
    pub fn delete(&self, kind: Kind, ns: &str, id: &str) -> Result<WriteResult> {
        self.write(&[WriteOp::delete(kind, ns, id)])
    }

    /// Append an event.
    pub fn append_event(&self, ns: &str, data: serde_json::Value) -> Result<WriteResult> {
        self.upsert(Kind::Event, ns, data)
    }

    /// Run `f` on a pooled reader.
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let r = self.pool.reader()?;
        f(&r)
    }

    /// One entity.
    pub fn get_entity(&self, ns: &str, id: &str) -> Result<Option<Entity>> {
        self.read(|c| query::get_entity(c, ns, id))
    }
    /// One edge.
    pub fn get_edge(&self, ns: &str, id: &str) -> Result<Option<Edge>> {
        self.read(|c| query::get_edge(c, ns, id))
    }
    /// One note.
    pub fn get_note(&self, ns: &str, id: &str) -> Result<Option<Note>> {
        self.read(|c| query::get_note(c, ns, id))
    }
    /// One event.
    pub fn get_event(&self, ns: &str, id: &str) -> Result<Option<Event>> {
        self.read(|c| query::get_event(c, ns, id))
    }
    /// One vector.
    pub fn get_vector(&self, ns: &str, subject: &str, model: &str) -> Result<Option<Vector>> {
        self.read(|c| query::get_vector(c, ns, subject, model))
    }
    /// One row of any kind as JSON ([`query::get_json`]).
    pub fn get_json(
        &self,
        kind: Kind,
        ns: &str,
        id: &str,
        model: Option<&str>,
    ) -> Result<Option<serde_json::Value>> {
        self.read(|c| query::get_json(c, kind, ns, id, model))
    }
    /// A page of rows of one kind as JSON ([`query::list_json`]).
    pub fn list_json(&self, kind: Kind, q: &ListQuery) -> Result<Vec<serde_json::Value>> {
        self.read(|c| query::list_json(c, kind, q, ops::now_us(c)?))
    }
    /// A page of entities.
    pub fn list_entities(&self, q: &ListQuery) -> Result<Vec<Entity>> {
        self.read(|c| query::list_entities(c, q))
    }
    /// A page of edges.
    pub fn list_edges(&self, q: &ListQuery) -> Result<Vec<Edge>> {
        self.read(|c| query::list_edges(c, q))
    }
    /// A page of unexpired notes.
    pub fn list_notes(&self, q: &ListQuery) -> Result<Vec<Note>> {
        self.read(|c| query::list_notes(c, q, ops::now_us(c)?))
    }
    /// A page of events.
    pub fn list_events(&self, q: &ListQuery) -> Result<Vec<Event>> {
        self.read(|c| query::list_events(c, q))
    }
    /// Apply full-text updates that other programs' writes queued (see `schema`), when this
    /// store can write and there are any. Returns how many were applied.
    pub fn drain_fts_if_pending(&self) -> Result<usize> {
        if self.pool.is_read_only() || !self.read(schema::fts_queue_pending)? {
            return Ok(0);
        }
        let mut conn = self.pool.writer()?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let n = schema::drain_fts_queue(&tx)?;
        tx.commit()?;
        Ok(n)
    }

    /// A digest of the logical state of `namespaces` (all when `None`), comparable with any
    /// replica's.
    pub fn digest(&self, namespaces: Option<&[String]>) -> Result<query::StateDigest> {
        self.read(|c| query::digest(c, namespaces))
    }

    /// Full-text search.
    pub fn search(&self, q: &SearchQuery) -> Result<Vec<SearchHit>> {
        self.drain_fts_if_pending()?;
        self.read(|c| query::search(c, q, ops::now_us(c)?))
    }
    /// Exact KNN.
    pub fn knn(&self, q: &KnnQuery) -> Result<Vec<KnnHit>> {
        self.read(|c| query::knn(c, q))
    }
    /// Hybrid (RRF) search.
    pub fn hybrid(
        &self,
        text: &SearchQuery,
        vector: &KnnQuery,
        limit: usize,
    ) -> Result<Vec<HybridHit>> {
        self.drain_fts_if_pending()?;
        self.read(|c| query::hybrid(c, text, vector, limit, ops::now_us(c)?))
    }
    /// Edges around a node.
    pub fn neighbors(
        &self,
        ns: &str,
        id: &str,
        dir: Direction,
        relation: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Neighbor>> {
        self.read(|c| query::neighbors(c, ns, id, dir, relation, limit))
    }
    /// Multi-hop traversal.
    pub fn traverse(
        &self,
        ns: &str,
        start: &str,
        dir: Direction,
        relation: Option<&str>,
        depth: u32,
        limit: usize,
    ) -> Result<Vec<Hop>> {
        self.read(|c| query::traverse(c, ns, start, dir, relation, depth, limit))
    }
    /// Changes after `after`.
    pub fn changes_since(
        &self,
        after: i64,
        filter: &ChangeFilter,
        limit: usize,
    ) -> Result<Vec<Change>> {
        self.read(|c| query::changes_since(c, after, filter, limit))
    }
    /// The log head (last seq written).
    pub fn head(&self) -> Result<i64> {
        self.read(query::head)
    }
    /// The oldest seq still in the log.
    pub fn horizon(&self) -> Result<i64> {
        self.read(query::horizon)
    }
    /// A consistent snapshot of current state, whole.
    pub fn snapshot(&self, filter: &ChangeFilter) -> Result<Snapshot> {
        let mut rows = Vec::new();
        let at = self.read(|c| {
            query::snapshot(c, filter, 4096, |_, mut chunk| {
                rows.append(&mut chunk);
                Ok(())
            })
        })?;
        Ok(Snapshot { at, rows })
    }

    /// Apply upstream changes (edge mode: this store is a replica of another node).
    pub fn apply_changes(&self, prev: i64, changes: &[Change]) -> Result<apply::ApplyOutcome> {
        let conn = self.pool.writer()?;
        apply::apply_changes(&conn, prev, changes)
    }

    /// Trim the change log: drop changes older than `max_age_us` (by `ts`) and all but the
    /// newest `max_count`. Returns how many were removed. The head never moves back.
    pub fn trim_changes(&self, max_count: Option<u64>, max_age_us: Option<i64>) -> Result<usize> {
        let conn = self.pool.writer()?;
        let mut removed = 0;
        if let Some(n) = max_count {
            let head = query::head(&conn)?;
            removed += conn.execute("DELETE FROM changes WHERE seq <= ?1", [head - n as i64])?;
        }
        if let Some(age) = max_age_us {
            let cutoff = ops::now_us(&conn)? - age;
            // Trim whole transactions only, from the oldest end, so the log stays a suffix.
            let upto: Option<i64> = conn.query_row(
                "SELECT max(seq) FROM changes WHERE tx IN (SELECT tx FROM changes GROUP BY tx HAVING max(ts) < ?1)
                 AND seq < coalesce((SELECT min(seq) FROM changes WHERE ts >= ?1), 9223372036854775807)",
                [cutoff],
                |r| r.get(0),
            )?;
            if let Some(u) = upto {
                removed += conn.execute("DELETE FROM changes WHERE seq <= ?1", [u])?;
            }
        }
        if removed > 0 {
            // The exactly-once ledger is kept as long as the log: a record whose write has left
            // the log goes with it (a client that re-sends such a write, its answer lost longer
            // ago than the log's retention, has it applied again; its id can be claimed anew).
            let head = query::head(&conn)?;
            conn.prepare_cached(
                "DELETE FROM client_writes
                 WHERE seq < (SELECT coalesce(min(seq), ?1 + 1) FROM changes)",
            )?
            .execute([head])?;
        }
        Ok(removed)
    }

    /// Integrity check: SQLite's own, FTS5 and vec0 against the base tables, the log's
    /// continuity, and references between rows.
    pub fn check(&self) -> Result<CheckReport> {
        self.drain_fts_if_pending()?;
        match self.pool.writer() {
            Ok(conn) => check(&conn),
            Err(Error::ReadOnly) => {
                let r = self.pool.reader()?;
                check(&r)
            }
            Err(e) => Err(e),
        }
    }
}

/// One write in a transaction of its own.
pub(crate) fn write_ops(
    conn: &mut Connection,
    ops: &[WriteOp],
    origin: Option<&Origin>,
) -> Result<WriteResult> {
    if let Some(o) = origin {
        o.check(ops.len()).map_err(Error::invalid)?;
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let r = write_in(&tx, ops, origin)?;
    schema::drain_fts_queue(&tx)?;
    tx.commit()?;
    Ok(r)
}

/// One write of a group: its ops, and its origin (a client's numbered write) if any.
pub type GroupWrite<'a> = (&'a [WriteOp], Option<&'a Origin>);

/// Most writes one group commit takes, and most ops and bytes (the writer stops adding writes
/// at the first that would pass a bound; a single write past them still goes, alone).
pub(crate) const GROUP_MAX_WRITES: usize = 256;
/// See [`GROUP_MAX_WRITES`].
pub(crate) const GROUP_MAX_OPS: usize = 8192;
/// See [`GROUP_MAX_WRITES`].
pub(crate) const GROUP_MAX_BYTES: usize = 8 << 20;

/// Group commit: `writes` in one transaction, each in a savepoint of its own, so a refused
/// write is rolled back alone and the others commit. Each result is what [`write_ops`] would
/// have answered for that write alone, in the same order: its own seq range and `tx` (the seq
/// of its first change), the ledger of its origin. When the transaction itself fails (it
/// cannot begin, a savepoint cannot roll back, the commit fails), nothing of it committed and
/// each write runs again alone, for its own answer.
pub(crate) fn write_group(
    conn: &mut Connection,
    writes: &[GroupWrite<'_>],
) -> Vec<Result<WriteResult>> {
    if let [(ops, origin)] = writes {
        return vec![write_ops(conn, ops, *origin)];
    }
    match try_group(conn, writes) {
        Ok(results) => results,
        Err(e) => {
            tracing::warn!(error = %e, writes = writes.len(), "group commit failed; committing each write alone");
            writes
                .iter()
                .map(|(ops, origin)| write_ops(conn, ops, *origin))
                .collect()
        }
    }
}

fn try_group(conn: &mut Connection, writes: &[GroupWrite<'_>]) -> Result<Vec<Result<WriteResult>>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut out = Vec::with_capacity(writes.len());
    for (ops, origin) in writes {
        if let Some(o) = origin {
            if let Err(e) = o.check(ops.len()) {
                out.push(Err(Error::invalid(e)));
                continue;
            }
        }
        tx.execute_batch("SAVEPOINT hs_write")?;
        match write_in(&tx, ops, *origin) {
            Ok(r) => {
                tx.execute_batch("RELEASE hs_write")?;
                out.push(Ok(r));
            }
            Err(e) => {
                tx.execute_batch("ROLLBACK TO hs_write; RELEASE hs_write")?;
                out.push(Err(e));
            }
        }
    }
    schema::drain_fts_queue(&tx)?;
    tx.commit()?;
    Ok(out)
}

/// What the ledger holds for a write's client id.
enum Claim {
    /// Nothing yet.
    Unknown,
    /// The client's last write number and the log head after it.
    Recorded { n: i64, seq: i64 },
}

/// The ledger's record of `o.client`, if the writer may use that id: a client id belongs to the
/// principal that first wrote with it (`o.principal`; None is a writer trusted with any id), and
/// another principal's write with it is refused without a word of its record (issue 23: token
/// A's write with B's client id and a large `n` made the node answer B's writes from A's
/// record and store nothing).
fn claim_client(tx: &Connection, o: &Origin) -> Result<Claim> {
    let row: Option<(i64, i64, Option<String>)> = tx
        .prepare_cached("SELECT n, seq, principal FROM client_writes WHERE client = ?1")?
        .query_row([&o.client], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    match row {
        None => Ok(Claim::Unknown),
        Some((_, _, Some(owner))) if o.principal.as_ref().is_some_and(|me| *me != owner) => {
            Err(Error::Forbidden(format!(
                "client id {:?} belongs to another token: each replica makes a client id of its own; use a new one",
                o.client
            )))
        }
        Some((n, seq, _)) => Ok(Claim::Recorded { n, seq }),
    }
}

/// Bind `client` to `principal` where nothing holds it yet, and say whether `principal` may
/// write with it (an edge checks its own clients this way before it forwards their writes,
/// which the primary takes from the edge's trusted token).
fn bind_client(conn: &Connection, client: &str, principal: &str) -> Result<()> {
    conn.prepare_cached(
        // Kept as long as a record made now (trimmed with the log, `Store::trim_changes`).
        "INSERT INTO client_writes(client, n, seq, principal)
         VALUES (?1, 0, coalesce((SELECT max(seq) FROM changes), 0), ?2)
         ON CONFLICT(client) DO UPDATE SET principal = coalesce(client_writes.principal, excluded.principal)",
    )?
    .execute([client, principal])?;
    let owner: Option<String> = conn
        .prepare_cached("SELECT principal FROM client_writes WHERE client = ?1")?
        .query_row([client], |r| r.get(0))?;
    match owner {
        Some(o) if o != principal => Err(Error::Forbidden(format!(
            "client id {client:?} belongs to another token: each replica makes a client id of its own; use a new one"
        ))),
        _ => Ok(()),
    }
}

/// The body of a write, inside the caller's transaction: `sync_ctx` gives every change of the
/// write the same `tx` (the seq of its first change) and `ts`. The caller drains the full-text
/// and vector queue before it commits (a group, once after its last write).
fn write_in(tx: &Connection, ops_: &[WriteOp], origin: Option<&Origin>) -> Result<WriteResult> {
    let mut ops_ = ops_;
    if let Some(o) = origin {
        let last: Option<(i64, i64)> = match claim_client(tx, o)? {
            Claim::Unknown => None,
            Claim::Recorded { n, seq } => Some((n, seq)),
        };
        if let Some((n, seq)) = last.filter(|(n, _)| o.n <= *n) {
            tracing::debug!(client = %o.client, n = o.n, last = n, "write replayed: answered from the ledger");
            return Ok(WriteResult {
                seq,
                ids: Vec::new(),
                replayed: true,
            });
        }
        // A batch some of whose writes the node has: only the rest are applied. (`check`
        // made the counts add up, and `last < o.n` leaves at least one write.)
        if let Some((last, _)) = last.filter(|_| !o.entries.is_empty()) {
            let first = o.n - o.entries.len() as i64 + 1;
            let skip = usize::try_from(last - first + 1).unwrap_or(0);
            let skipped: usize = o.entries[..skip].iter().map(|&k| k as usize).sum();
            ops_ = &ops_[skipped..];
        }
    }
    let now = ops::now_us(tx)?;
    let first_seq = schema::enter_writing(tx, now)?;
    let mut ids = Vec::with_capacity(ops_.len());
    let as_op = |index: usize, e: Error| Error::Op {
        index,
        cause: Box::new(e),
    };
    let run_err = |(i, e): (Option<usize>, Error)| match i {
        Some(i) => as_op(i, e),
        None => e,
    };
    // Consecutive entity upserts are written together, with their change rows.
    let mut run = ops::EntityRun::logged(first_seq, now);
    // New rows are indexed directly only on a drained queue: a later write of a group (or a
    // file another program queued work in) goes through the queue.
    if schema::fts_queue_pending(tx)? {
        run = run.queue_only();
    }
    // The rows the run holds unwritten: a patch reads its row, so one of these is written first
    // (kept only for a write that holds a patch: the bulk path of plain upserts pays nothing).
    let patches = ops_.iter().any(|o| o.op == Op::Patch);
    let mut held: HashSet<(&str, String)> = HashSet::new();
    for (index, op) in ops_.iter().enumerate() {
        if op.op == Op::Patch
            && op
                .id
                .as_ref()
                .is_some_and(|id| held.contains(&(op.ns.as_str(), id.clone())))
        {
            run.before_other(tx).map_err(run_err)?;
            held.clear();
        }
        let row = match op.op {
            Op::Patch => ops::entity_patch(tx, op, now),
            _ => ops::entity_upsert(tx, op, now),
        };
        if let Some((e, props)) = row.map_err(|e| as_op(index, e))? {
            ids.push(e.id.clone());
            if patches {
                held.insert((op.ns.as_str(), e.id.clone()));
            }
            run.push_rendered(index, &op.ns, e, props);
            continue;
        }
        run.before_other(tx).map_err(run_err)?;
        held.clear();
        let r = ops::execute(tx, op, now).map_err(|e| as_op(index, e))?;
        ids.push(r.id);
    }
    run.finish(tx).map_err(run_err)?;
    schema::leave(tx)?;
    let seq = query::head(tx)?;
    if let Some(o) = origin {
        // A trusted writer (principal None) keeps the id's owner as it is.
        tx.prepare_cached(
            "INSERT INTO client_writes(client, n, seq, principal) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(client) DO UPDATE SET n = excluded.n, seq = excluded.seq,
               principal = coalesce(client_writes.principal, excluded.principal)",
        )?
        .execute(params![o.client, o.n, seq, o.principal])?;
    }
    Ok(WriteResult {
        seq,
        ids,
        replayed: false,
    })
}

/// The result of [`Store::check`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CheckReport {
    /// True when no problem was found.
    pub ok: bool,
    /// Each problem, in words.
    pub problems: Vec<String>,
    /// Rows per table.
    pub rows: Vec<(String, i64)>,
    /// Log head and horizon.
    pub head: i64,
    /// Oldest seq kept.
    pub horizon: i64,
}

/// Vectors stored before embeddings were checked for a usable length (KNN gives them no
/// distance): one problem line each, the first ten named.
fn unusable_embeddings(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(&format!(
        "SELECT ns, model, subject, {} FROM vectors",
        schema::embedding_sql("vectors.")
    ))?;
    let mut rows = stmt.query([])?;
    let (mut named, mut more) = (Vec::new(), 0);
    while let Some(r) = rows.next()? {
        let blob: Option<Vec<u8>> = r.get(3)?;
        let usable = blob
            .as_deref()
            .and_then(crate::model::blob_to_embedding)
            .is_some_and(|e| crate::ops::cosine_safe(&e));
        if usable {
            continue;
        }
        if named.len() < 10 {
            let (ns, model, subject): (String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
            named.push(format!(
                "vector ({ns}, {model}, {subject}) has an embedding with no usable length (KNN gives it no distance): write it again scaled (e.g. to length 1), or delete it"
            ));
        } else {
            more += 1;
        }
    }
    if more > 0 {
        named.push(format!("{more} more vectors like these"));
    }
    Ok(named)
}

fn check(conn: &Connection) -> Result<CheckReport> {
    let mut problems = Vec::new();
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    let msgs: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if msgs != ["ok"] {
        problems.extend(msgs.into_iter().map(|m| format!("sqlite integrity: {m}")));
    }
    for fts in ["entities_fts", "notes_fts"] {
        // With rank = 1, FTS5 also compares its index with the external content table.
        if let Err(e) = conn.execute(
            &format!("INSERT INTO {fts}({fts}, rank) VALUES ('integrity-check', 1)"),
            [],
        ) {
            problems.push(format!("{fts} disagrees with its base table: {e}; rebuild it with `INSERT INTO {fts}({fts}) VALUES ('rebuild')`"));
        }
    }
    problems.extend(schema::vec_index_problems(conn)?);
    problems.extend(unusable_embeddings(conn)?);
    let (n, lo, hi): (i64, Option<i64>, Option<i64>) = conn.query_row(
        "SELECT count(*), min(seq), max(seq) FROM changes",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    if let (Some(lo), Some(hi)) = (lo, hi) {
        if hi - lo + 1 != n {
            problems.push(format!(
                "change log has gaps: {n} changes between seq {lo} and {hi}"
            ));
        }
    }
    let dangling: i64 = conn.query_row(
        "SELECT count(*) FROM edges e WHERE NOT EXISTS (SELECT 1 FROM entities x WHERE x.ns = e.ns AND x.id = e.source)
            OR NOT EXISTS (SELECT 1 FROM entities x WHERE x.ns = e.ns AND x.id = e.target)",
        [],
        |r| r.get(0),
    )?;
    if dangling > 0 {
        problems.push(format!(
            "{dangling} edges point at entities that do not exist"
        ));
    }
    let orphans: i64 = conn.query_row(
        "SELECT count(*) FROM vectors v WHERE NOT EXISTS (SELECT 1 FROM entities x WHERE x.ns = v.ns AND x.id = v.subject)
            AND NOT EXISTS (SELECT 1 FROM notes x WHERE x.ns = v.ns AND x.id = v.subject)",
        [],
        |r| r.get(0),
    )?;
    if orphans > 0 {
        problems.push(format!(
            "{orphans} vectors embed subjects that do not exist"
        ));
    }
    let mut rows = Vec::new();
    for t in ["entities", "edges", "notes", "events", "vectors", "changes"] {
        rows.push((
            t.to_string(),
            conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))?,
        ));
    }
    Ok(CheckReport {
        ok: problems.is_empty(),
        problems,
        rows,
        head: query::head(conn)?,
        horizon: query::horizon(conn)?,
    })
}
