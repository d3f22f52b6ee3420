//! The bulk write path: runs of new rows inserted many per statement, their change-log
//! copies and full-text indexing (`EntityRun`, `insert_rows*`).

use rusqlite::{params, Connection};

use super::*;
use crate::error::{Error, Result};
use crate::model::{Entity, Kind, Op};
use crate::schema::{self, Mode};

/// The `ON CONFLICT` tail: the write path keeps the stored `created_at`; a replica copies the
/// upstream row image whole.
pub(super) fn created_clause(replica: bool) -> &'static str {
    if replica {
        ", created_at = excluded.created_at"
    } else {
        ""
    }
}

/// Rows per multi-row statement in [`insert_rows`], largest first. A few fixed sizes keep the
/// prepared-statement cache small.
pub(super) const CHUNKS: [usize; 4] = [64, 16, 4, 1];

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
pub(crate) fn insert_rows<T>(
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
pub(crate) fn insert_rows_returning<T>(
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
pub(super) struct ReturnedOrder {
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
pub(super) fn statement_end(start: usize, len: usize) -> usize {
    (start + CHUNKS[0]).min(len)
}

/// Consecutive entity upserts (of a write, or of a batch a replica applies), gathered to be
/// written together by [`write_entities`] before any other op runs.
pub(crate) struct EntityRun<'a> {
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
pub(super) const LOGGED_RUN_MIN: usize = 8;

impl<'a> EntityRun<'a> {
    /// An empty run of a replica's apply, written as [`EntityRun::logged`] writes its runs,
    /// minus the change rows (the replica copies the upstream's): new rows inserted with the
    /// entity triggers standing aside and, while the batch is nothing but such runs, indexed
    /// for full-text search straight at the end.
    pub(crate) fn replica_direct() -> Self {
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
    /// Why: a trigger program per row (three `sync_ctx` lookups, a `json_object` image that
    /// re-parses `properties` and `tags`, a change-log insert and a full-text queue insert) was
    /// the cost of bulk writes; multi-row statements with images built in Rust are not
    /// (benches/README.md, write_throughput, has the measurements). The images are byte for
    /// byte those of `row_image_sql` (tested).
    ///
    /// How, for a run of [`LOGGED_RUN_MIN`] or more: with `sync_ctx.applying` at
    /// [`Mode::WriterLogsEntities`](crate::schema::Mode::WriterLogsEntities) the entity insert and update
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
    pub(crate) fn logged(tx: i64, ts: i64) -> Self {
        EntityRun {
            replica: false,
            log: Some((tx, ts)),
            rows: Vec::new(),
            direct: Some(Vec::new()),
            stand_aside: true,
        }
    }

    /// Use the queue from the start: for a queue that holds work not yet drained (an earlier
    /// write of a group commit, which drains once after its last write), where indexing new
    /// rows directly would not be right.
    pub(crate) fn queue_only(mut self) -> Self {
        self.direct = None;
        self
    }

    /// Gather entity `e` of namespace `ns`, op (or change) number `index` of the caller's.
    pub(crate) fn push(&mut self, index: usize, ns: &'a str, e: Entity) {
        self.rows.push((index, ns, e, None));
    }

    /// [`push`](Self::push) a row whose `properties` are given as the JSON text to store (the
    /// row's own map is ignored).
    pub(crate) fn push_rendered(
        &mut self,
        index: usize,
        ns: &'a str,
        e: Entity,
        properties: String,
    ) {
        self.rows.push((index, ns, e, Some(properties)));
    }

    /// Write what was gathered, before an op that is not an entity upsert (which may queue
    /// full-text work: the new rows held for direct indexing go into the queue first). On
    /// failure: the caller's `index` of the row SQLite refused, or None for a failure of no
    /// row's own, with its error.
    pub(crate) fn before_other(
        &mut self,
        conn: &Connection,
    ) -> std::result::Result<(), (Option<usize>, Error)> {
        self.flush(conn).map_err(|(i, e)| (Some(i), e))?;
        self.spill(conn).map_err(|e| (None, e))
    }

    /// Write what was gathered at the end of the write (or batch), and index the new rows held
    /// for direct indexing; the caller then drains the queue. Failures as in
    /// [`before_other`](Self::before_other).
    pub(crate) fn finish(
        &mut self,
        conn: &Connection,
    ) -> std::result::Result<(), (Option<usize>, Error)> {
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
pub(super) fn queue_for_indexing(
    conn: &Connection,
    rowids: impl Iterator<Item = i64>,
) -> Result<()> {
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

/// A long run's flush, with the entity triggers standing aside ([`EntityRun::logged`],
/// [`EntityRun::replica_direct`]); with `log`, the run's change rows too. `sync_ctx.applying`
/// is left as the caller had it: 0 on the write path, 1 in a replica's apply. Errors carry the
/// position in `rows`.
pub(super) fn write_run_aside(
    conn: &Connection,
    rows: &[EntityRow<'_>],
    replica: bool,
    log: Option<(i64, i64)>,
    direct: &mut Option<Vec<(i64, String, String, String)>>,
) -> std::result::Result<(), (usize, Error)> {
    let at0 = |e: Error| (0, e);
    schema::switch(conn, Mode::WriterLogsEntities).map_err(at0)?;
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
        schema::switch(conn, Mode::Applying).map_err(at0)?;
        let upd: Vec<EntityRow<'_>> = updates.iter().map(|&i| rows[i].clone()).collect();
        let mut upd_created = vec![None; upd.len()];
        let want = log.is_some().then_some(upd_created.as_mut_slice());
        write_entities(conn, &upd, replica, want).map_err(|(i, e)| (updates[i], e))?;
        for (k, &i) in updates.iter().enumerate() {
            created[i] = upd_created[k];
        }
    }
    let Some((tx, ts)) = log else {
        return schema::switch(conn, Mode::Applying).map_err(at0);
    };
    log_run(conn, rows, &created, tx, ts)?;
    schema::switch(conn, Mode::Writing).map_err(at0)?;
    Ok(())
}

/// The change-log copies of a run: one upsert per op, with the row image as stored.
fn log_run(
    conn: &Connection,
    rows: &[EntityRow<'_>],
    created: &[Option<i64>],
    tx: i64,
    ts: i64,
) -> std::result::Result<(), (usize, Error)> {
    let images = rows
        .iter()
        .zip(created)
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
    )
}

/// Column `i` of a returned row as text, without copying it.
pub(super) fn text_col<'r>(row: &'r rusqlite::Row<'_>, i: usize) -> Result<&'r str> {
    Ok(row.get_ref(i)?.as_str().map_err(rusqlite::Error::from)?)
}

pub(super) fn returned_unknown_row(id: &str) -> Error {
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
pub(crate) fn entity_image(r: &EntityRow<'_>, created_at: i64) -> Result<String> {
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
pub(super) fn bind_entity(
    stmt: &mut rusqlite::Statement<'_>,
    b: usize,
    r: &EntityRow<'_>,
) -> Result<()> {
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

/// Insert or replace entity rows, in order, with multi-row statements (see `insert_rows`).
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
