//! Live queries: reads that stay current. Each live query keeps its read ([`Read`]), its last
//! answer and what that answer depends on (the read's namespace, record kinds, entity kind or
//! model; for graph reads the nodes it reached). Every write to the replica's rows, by any path
//! (a feed batch, a local write, the outbox's undo and redo, a refusal taken back), is logged
//! row by row by temporary triggers (`touch`); [`LiveSet::note`] reads that log and marks the
//! live queries a touched row can affect, and [`LiveSet::rerun`] runs those again, answering
//! only the ones whose answer did change, with what changed (rows added, removed, changed, and
//! whether the order moved). A query no touched row can affect is not run (each counts its
//! runs). A snapshot marks them all (the log is quiet while it applies).
//!
//! The browser replica (`wasm/`) drives it after each batch of work, at most once per frame; a
//! native embedder the same way, on its own connection.

mod read;
mod touch;

use std::collections::{BTreeMap, HashMap, HashSet};

use rusqlite::Connection;
use serde::Serialize;
use serde_json::Value;

pub use read::Read;
pub use touch::TouchRow;

use crate::error::Result;

/// What changed between two answers, by row key (a row's id; `ns/id` for hits; `record/ns/id`
/// for search hits; the node for a traversal; the whole row for SQL).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Diff {
    /// Keys in the new answer only.
    pub added: Vec<String>,
    /// Keys in the old answer only.
    pub removed: Vec<String>,
    /// Keys in both whose row differs.
    pub changed: Vec<String>,
    /// The rows both hold are in another order.
    pub moved: bool,
}

impl Diff {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty() && !self.moved
    }
}

/// A live query's answer, as delivered.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LiveResult {
    /// The live query.
    pub id: u64,
    /// Its full answer (null with `error`).
    pub result: Value,
    /// What changed since the last answer delivered (the first: every row added).
    pub diff: Diff,
    /// How often it ran, the first run included.
    pub runs: u64,
    /// Why it failed this time (a model not there yet, a bad query); it stays open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

struct Query {
    read: Read,
    last: Value,
    nodes: HashSet<String>,
    /// Its answer's row keys, in order.
    keys: Vec<String>,
    runs: u64,
    dirty: bool,
    failed: bool,
}

/// The live queries open on one connection.
#[derive(Default)]
pub struct LiveSet {
    next: u64,
    /// The log of touched rows is installed (on the connection a query was first opened on,
    /// and on any that replaced it: `note` installs it there).
    installed: bool,
    queries: BTreeMap<u64, Query>,
}

/// What changed from `old` to `new`, answers of `read`.
pub fn diff(read: &Read, old: &Value, new: &Value) -> Diff {
    diff_keyed(read, (&read.keys(old), old), (&read.keys(new), new))
}

/// [`diff`] with each answer's keys ([`Read::keys`]) at hand.
fn diff_keyed(read: &Read, old: (&[String], &Value), new: (&[String], &Value)) -> Diff {
    let a: Vec<(&str, &Value)> = old
        .0
        .iter()
        .map(String::as_str)
        .zip(read.rows(old.1))
        .collect();
    let b: Vec<(&str, &Value)> = new
        .0
        .iter()
        .map(String::as_str)
        .zip(read.rows(new.1))
        .collect();
    let in_a: HashMap<&str, &Value> = a.iter().copied().collect();
    let in_b: HashMap<&str, &Value> = b.iter().copied().collect();
    let mut d = Diff::default();
    for &(k, v) in &b {
        match in_a.get(k) {
            None => d.added.push(k.to_string()),
            Some(old) if *old != v => d.changed.push(k.to_string()),
            Some(_) => {}
        }
    }
    d.removed = a
        .iter()
        .filter(|(k, _)| !in_b.contains_key(k))
        .map(|(k, _)| k.to_string())
        .collect();
    let order_a = a.iter().map(|(k, _)| *k).filter(|k| in_b.contains_key(k));
    let order_b = b.iter().map(|(k, _)| *k).filter(|k| in_a.contains_key(k));
    d.moved = !order_a.eq(order_b);
    d
}

impl LiveSet {
    /// No live query is open.
    pub fn is_empty(&self) -> bool {
        self.queries.is_empty()
    }

    /// Open a live query: its first answer (every row `added`). A read that finds nothing to
    /// read yet (a vector model nobody wrote) opens with that error as its first answer and
    /// answers once there is; any other error (a bad query) is returned, and nothing opens.
    pub fn open(&mut self, conn: &Connection, read: Read) -> Result<LiveResult> {
        touch::ensure(conn)?;
        self.installed = true;
        let (answer, error) = match read.run(conn) {
            Ok(a) => (a, None),
            Err(e @ crate::Error::NotFound(_)) => (Value::Null, Some(e.to_string())),
            Err(e) => return Err(e),
        };
        self.next += 1;
        let id = self.next;
        let keys = read.keys(&answer);
        let d = diff_keyed(&read, (&[], &Value::Null), (&keys, &answer));
        let nodes = read.nodes(&answer);
        let failed = error.is_some();
        self.queries.insert(
            id,
            Query {
                read,
                last: answer.clone(),
                nodes,
                keys,
                runs: 1,
                dirty: false,
                failed,
            },
        );
        Ok(LiveResult {
            id,
            result: answer,
            diff: d,
            runs: 1,
            error,
        })
    }

    /// Close live query `id`; false if it was not open. With the last one closed, the log of
    /// touched rows leaves `conn` too (no write pays for it while nothing listens).
    pub fn close(&mut self, conn: &Connection, id: u64) -> Result<bool> {
        let was = self.queries.remove(&id).is_some();
        if self.queries.is_empty() && self.installed {
            touch::remove(conn)?;
            self.installed = false;
        }
        Ok(was)
    }

    /// Read the log of touched rows and mark the live queries they can affect; returns how
    /// many are marked now. (Call it after each write to the connection, before the next
    /// read of the log could mix two batches; cheap when nothing was touched.)
    pub fn note(&mut self, conn: &Connection) -> Result<usize> {
        if !self.installed {
            return Ok(0);
        }
        touch::ensure(conn)?;
        let touched = touch::take(conn)?;
        if touched.is_empty() {
            return Ok(self.queries.values().filter(|q| q.dirty).count());
        }
        for q in self.queries.values_mut().filter(|q| !q.dirty) {
            let hits: Vec<&TouchRow> = touched
                .iter()
                .filter(|t| q.read.touched_by(t, &q.nodes))
                .collect();
            q.dirty = match &q.read {
                _ if hits.is_empty() => false,
                // A search runs again only for rows it holds or finds now.
                Read::Search(s) => read::search_affected(conn, s, &q.keys, &hits)?,
                _ => true,
            };
        }
        Ok(self.queries.values().filter(|q| q.dirty).count())
    }

    /// Everything may have changed (a snapshot, a new copy of the data): mark every query.
    pub fn mark_all(&mut self) {
        for q in self.queries.values_mut() {
            q.dirty = true;
        }
    }

    /// A snapshot begins (`true`: the log is quiet while it applies) or ends (every query is
    /// marked).
    pub fn snapshot(&mut self, conn: &Connection, applying: bool) -> Result<()> {
        if !self.installed {
            return Ok(());
        }
        touch::ensure(conn)?;
        touch::set_quiet(conn, applying)?;
        if !applying {
            self.mark_all();
        }
        Ok(())
    }

    /// Run the marked queries again; the answers that changed (or failed, or recovered).
    pub fn rerun(&mut self, conn: &Connection) -> Vec<LiveResult> {
        let mut out = Vec::new();
        for (&id, q) in self.queries.iter_mut().filter(|(_, q)| q.dirty) {
            q.dirty = false;
            q.runs += 1;
            match q.read.run(conn) {
                Ok(answer) => {
                    let keys = q.read.keys(&answer);
                    let d = diff_keyed(&q.read, (&q.keys, &q.last), (&keys, &answer));
                    if d.is_empty() && !q.failed {
                        continue;
                    }
                    q.failed = false;
                    q.nodes = q.read.nodes(&answer);
                    q.keys = keys;
                    q.last = answer.clone();
                    out.push(LiveResult {
                        id,
                        result: answer,
                        diff: d,
                        runs: q.runs,
                        error: None,
                    });
                }
                Err(e) => {
                    q.failed = true;
                    out.push(LiveResult {
                        id,
                        result: Value::Null,
                        diff: Diff::default(),
                        runs: q.runs,
                        error: Some(e.to_string()),
                    });
                }
            }
        }
        out
    }

    /// How often live query `id` ran (None: not open).
    pub fn runs(&self, id: u64) -> Option<u64> {
        self.queries.get(&id).map(|q| q.runs)
    }
}

#[cfg(test)]
mod tests;
