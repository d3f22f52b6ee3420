//! The reads a live query can be: each one's arguments (as the page's methods take them), how
//! it runs (the store's own query functions), what it depends on, and the key of each row of
//! its answer (for the diff between two answers).

use std::collections::HashSet;

use rusqlite::Connection;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::touch::TouchRow;
use crate::error::{Error, Result};
use crate::model::Kind;
use crate::ops;
use crate::query::{self, Direction, KnnQuery, ListQuery, SearchQuery};

/// One read, with its arguments.
#[derive(Clone)]
pub enum Read {
    /// One row (`get(kind, ns, id, model?)`).
    Get {
        /// Its kind.
        kind: Kind,
        /// Its namespace.
        ns: String,
        /// Its id (a vector's subject).
        id: String,
        /// A vector's model.
        model: Option<String>,
    },
    /// A page of rows of one kind in id order (`list(kind, ns, { kind, after, limit })`).
    List {
        /// The rows' kind.
        kind: Kind,
        /// The page.
        query: ListQuery,
    },
    /// Full-text search (`search(query)`).
    Search(SearchQuery),
    /// Nearest vectors (`knn(query)`).
    Knn(KnnQuery),
    /// Both, fused (`hybrid(text, knn, limit?)`).
    Hybrid {
        /// The text part.
        text: SearchQuery,
        /// The vector part.
        knn: KnnQuery,
        /// Hits wanted.
        limit: usize,
    },
    /// Edges around a node (`neighbors(ns, id, { direction, relation, limit })`).
    Neighbors {
        /// The namespace.
        ns: String,
        /// The node.
        id: String,
        /// Which edges.
        direction: Direction,
        /// Only this relation.
        relation: Option<String>,
        /// Edges wanted.
        limit: usize,
    },
    /// A breadth-first walk (`traverse(ns, id, { direction, relation, depth, limit })`).
    Traverse {
        /// The namespace.
        ns: String,
        /// The start.
        id: String,
        /// Which edges.
        direction: Direction,
        /// Only this relation.
        relation: Option<String>,
        /// Hops at most.
        depth: u32,
        /// Nodes wanted.
        limit: usize,
    },
    /// Read-only SQL (`sql(query, params?)`).
    Sql {
        /// The statement.
        sql: String,
        /// Its parameters.
        params: Vec<Value>,
    },
}

// (Through text, not `from_value`: the browser's module then carries one deserializer per type,
// not two; the same for answers below.)
fn arg<T: DeserializeOwned>(read: &str, args: &[Value], i: usize, what: &str) -> Result<T> {
    serde_json::from_str(&args.get(i).unwrap_or(&Value::Null).to_string())
        .map_err(|e| Error::invalid(format!("live {read}: argument {} ({what}): {e}", i + 1)))
}

fn as_value<T: serde::Serialize>(v: &T) -> Result<Value> {
    Ok(serde_json::from_str(&serde_json::to_string(v)?)?)
}

fn opts(args: &[Value], i: usize) -> &Value {
    args.get(i).filter(|v| !v.is_null()).unwrap_or(&Value::Null)
}

fn opt_str(o: &Value, k: &str) -> Option<String> {
    o.get(k).and_then(Value::as_str).map(String::from)
}

fn opt_num(o: &Value, k: &str, default: u64) -> u64 {
    o.get(k).and_then(Value::as_u64).unwrap_or(default)
}

fn direction(o: &Value) -> Result<Direction> {
    opt_str(o, "direction").as_deref().unwrap_or("out").parse()
}

impl Read {
    /// The read `name` with `args`, the arguments the page's method of that name takes.
    pub fn from_args(name: &str, args: &[Value]) -> Result<Read> {
        Ok(match name {
            "get" => Read::Get {
                kind: arg::<String>(name, args, 0, "kind")?.parse()?,
                ns: arg(name, args, 1, "ns")?,
                id: arg(name, args, 2, "id")?,
                model: arg(name, args, 3, "model")?,
            },
            "list" => {
                let o = opts(args, 2);
                Read::List {
                    kind: arg::<String>(name, args, 0, "kind")?.parse()?,
                    query: ListQuery {
                        ns: arg(name, args, 1, "ns")?,
                        kind: opt_str(o, "kind"),
                        after: opt_str(o, "after"),
                        limit: opt_num(o, "limit", 100) as usize,
                    },
                }
            }
            "search" => Read::Search(arg(name, args, 0, "query")?),
            "knn" => Read::Knn(arg(name, args, 0, "query")?),
            "hybrid" => Read::Hybrid {
                text: arg(name, args, 0, "text")?,
                knn: arg(name, args, 1, "knn")?,
                limit: arg::<Option<usize>>(name, args, 2, "limit")?.unwrap_or(20),
            },
            "neighbors" | "traverse" => {
                let o = opts(args, 2);
                let (ns, id) = (arg(name, args, 0, "ns")?, arg(name, args, 1, "id")?);
                let (direction, relation) = (direction(o)?, opt_str(o, "relation"));
                if name == "neighbors" {
                    let limit = opt_num(o, "limit", 100) as usize;
                    Read::Neighbors { ns, id, direction, relation, limit }
                } else {
                    let depth = opt_num(o, "depth", 2).min(u32::MAX as u64) as u32;
                    let limit = opt_num(o, "limit", 100) as usize;
                    Read::Traverse { ns, id, direction, relation, depth, limit }
                }
            }
            "sql" => Read::Sql {
                sql: arg(name, args, 0, "query")?,
                params: arg::<Option<Vec<Value>>>(name, args, 1, "params")?.unwrap_or_default(),
            },
            other => {
                return Err(Error::invalid(format!(
                    "no read {other:?} to keep live: get, list, search, knn, hybrid, neighbors, traverse or sql"
                )))
            }
        })
    }

    /// Run it: its answer as JSON, as the page's method of that name answers.
    pub fn run(&self, conn: &Connection) -> Result<Value> {
        let now = || ops::now_us(conn);
        match self {
            Read::Get {
                kind,
                ns,
                id,
                model,
            } => Ok(query::get_json(conn, *kind, ns, id, model.as_deref())?.unwrap_or(Value::Null)),
            Read::List { kind, query: q } => {
                Ok(Value::Array(query::list_json(conn, *kind, q, now()?)?))
            }
            Read::Search(q) => {
                let mut q = q.clone();
                if q.limit == 0 {
                    q.limit = 20;
                }
                as_value(&query::search(conn, &q, now()?)?)
            }
            Read::Knn(q) => as_value(&query::knn(conn, q)?),
            Read::Hybrid { text, knn, limit } => {
                as_value(&query::hybrid(conn, text, knn, *limit, now()?)?)
            }
            Read::Neighbors {
                ns,
                id,
                direction,
                relation,
                limit,
            } => as_value(&query::neighbors(
                conn,
                ns,
                id,
                *direction,
                relation.as_deref(),
                *limit,
            )?),
            Read::Traverse {
                ns,
                id,
                direction,
                relation,
                depth,
                limit,
            } => as_value(&query::traverse(
                conn,
                ns,
                id,
                *direction,
                relation.as_deref(),
                *depth,
                *limit,
            )?),
            Read::Sql { sql, params } => query::sql_json(conn, sql, params),
        }
    }

    /// The rows of an answer, in order: a list's, a search's, ..., an SQL answer's `rows`, a
    /// `get`'s one row (none when absent).
    pub(super) fn rows<'a>(&self, answer: &'a Value) -> Vec<&'a Value> {
        match (self, answer) {
            (Read::Get { .. }, Value::Null) => vec![],
            (Read::Get { .. }, v) => vec![v],
            (Read::Sql { .. }, v) => v
                .get("rows")
                .and_then(Value::as_array)
                .map(|r| r.iter().collect())
                .unwrap_or_default(),
            (_, Value::Array(a)) => a.iter().collect(),
            _ => vec![],
        }
    }

    /// The key of each row of an answer, in order (a diff matches rows by it).
    pub(super) fn keys(&self, answer: &Value) -> Vec<String> {
        let field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let rows = self.rows(answer);
        rows.into_iter()
            .map(|r| match self {
                Read::Get { id, .. } => id.clone(),
                Read::List { .. } => field(r, "id"),
                Read::Search(_) => format!(
                    "{}/{}/{}",
                    field(r, "record"),
                    field(r, "ns"),
                    field(r, "id")
                ),
                Read::Knn(_) => format!("{}/{}", field(r, "ns"), field(r, "subject")),
                Read::Hybrid { .. } => format!("{}/{}", field(r, "ns"), field(r, "id")),
                Read::Neighbors { .. } => r.get("edge").map(|e| field(e, "id")).unwrap_or_default(),
                Read::Traverse { .. } => field(r, "node"),
                Read::Sql { .. } => r.to_string(),
            })
            .collect()
    }

    /// The graph nodes an answer depends on: an edge touching one of them can change it.
    pub(super) fn nodes(&self, answer: &Value) -> HashSet<String> {
        let mut nodes = HashSet::new();
        match self {
            Read::Neighbors { id, .. } => {
                nodes.insert(id.clone());
            }
            Read::Traverse { id, .. } => {
                nodes.insert(id.clone());
                for hop in answer.as_array().into_iter().flatten() {
                    for k in ["node", "from"] {
                        if let Some(n) = hop.get(k).and_then(Value::as_str) {
                            nodes.insert(n.to_string());
                        }
                    }
                }
            }
            _ => {}
        }
        nodes
    }

    /// Whether a change to row `t` can change this read's answer (`nodes`: see
    /// [`Read::nodes`]). False only where it cannot.
    pub(super) fn touched_by(&self, t: &TouchRow, nodes: &HashSet<String>) -> bool {
        let ns_ok = |ns: &Option<String>| ns.as_ref().is_none_or(|n| *n == t.ns);
        let sub_ok = |k: &Option<String>| k.is_none() || *k == t.sub;
        match self {
            Read::Get {
                kind,
                ns,
                id,
                model,
            } => {
                t.kind == *kind
                    && t.ns == *ns
                    && t.id == *id
                    && (*kind != Kind::Vector || *model == t.sub)
            }
            Read::List { kind, query } => {
                t.kind == *kind
                    && t.ns == query.ns
                    && (!matches!(kind, Kind::Entity | Kind::Note) || sub_ok(&query.kind))
            }
            Read::Search(q) => search_touched(q, t, ns_ok(&q.ns)),
            Read::Knn(q) => knn_touched(q, t, ns_ok(&q.ns)),
            Read::Hybrid { text, knn, .. } => {
                search_touched(text, t, ns_ok(&text.ns)) || knn_touched(knn, t, ns_ok(&knn.ns))
            }
            Read::Neighbors { ns, .. } | Read::Traverse { ns, .. } => {
                t.kind == Kind::Edge
                    && t.ns == *ns
                    && [&t.a, &t.b]
                        .into_iter()
                        .flatten()
                        .any(|n| nodes.contains(n))
            }
            Read::Sql { sql, .. } => {
                let tables = sql_kinds(sql);
                tables.is_empty() || tables.contains(&t.kind)
            }
        }
    }
}

/// For a search that [`Read::touched_by`] matched: whether any of `rows` can come or go from
/// its hits, that is, is among them (`keys`: its hits' keys) or matches its text now. A row of
/// its namespace that neither holds nor finds moves only the scores (bm25 weighs terms by all
/// the text), which the next run that must happen brings up to date, as for a write in another
/// namespace.
pub(super) fn search_affected(
    conn: &Connection,
    q: &SearchQuery,
    keys: &[String],
    rows: &[&TouchRow],
) -> Result<bool> {
    if rows
        .iter()
        .any(|t| keys.contains(&format!("{}/{}/{}", t.kind.as_str(), t.ns, t.id)))
    {
        return Ok(true);
    }
    let Some(fts) = query::fts_query(&q.text) else {
        return Ok(false);
    };
    for t in rows {
        let (table, index) = match t.kind {
            Kind::Entity => ("entities", "entities_fts"),
            Kind::Note => ("notes", "notes_fts"),
            _ => continue,
        };
        let found: bool = conn
            .prepare_cached(&format!(
                "SELECT EXISTS (SELECT 1 FROM {index} WHERE {index} MATCH ?1
                   AND rowid = (SELECT rowid FROM {table} WHERE ns = ?2 AND id = ?3))"
            ))?
            .query_row(rusqlite::params![fts, t.ns, t.id], |r| r.get(0))?;
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

fn search_touched(q: &SearchQuery, t: &TouchRow, ns_ok: bool) -> bool {
    matches!(t.kind, Kind::Entity | Kind::Note)
        && q.records.as_ref().is_none_or(|r| r.contains(&t.kind))
        && ns_ok
        && (q.kind.is_none() || q.kind == t.sub)
}

fn knn_touched(q: &KnnQuery, t: &TouchRow, ns_ok: bool) -> bool {
    t.kind == Kind::Vector && ns_ok && t.sub.as_deref() == Some(q.model.as_str())
}

/// The kinds of rows a statement can read, by the tables (and views) it names; none found: it
/// may read anything (so every change re-runs it).
fn sql_kinds(sql: &str) -> Vec<Kind> {
    let lower = sql.to_ascii_lowercase();
    let words: HashSet<&str> = lower
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .collect();
    let mut kinds = Vec::new();
    for k in Kind::ALL {
        let t = k.table();
        let index = match k {
            Kind::Entity => "entities_fts",
            Kind::Note => "notes_fts",
            Kind::Vector => "vec_all",
            _ => t,
        };
        if words.contains(t) || words.contains(index) {
            kinds.push(k);
        }
    }
    // A statement naming any other table (a vec0 table, the log) is taken to read anything.
    let others = words
        .iter()
        .any(|w| w.starts_with("vec_") || *w == "changes" || *w == "sqlite_master");
    if others {
        Vec::new()
    } else {
        kinds
    }
}
