//! Graph reads: the edges around an entity, and breadth-first multi-hop traversal.

use std::collections::{HashSet, VecDeque};

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

use super::{clamp_limit, decode};
use crate::error::{Error, Result};
use crate::model::{Edge, Kind};
use crate::schema::row_image_sql;

/// Which edges of a node to follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Edges leaving the node.
    #[default]
    Out,
    /// Edges entering the node.
    In,
    /// Both.
    Both,
}

impl std::str::FromStr for Direction {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "out" => Ok(Direction::Out),
            "in" => Ok(Direction::In),
            "both" => Ok(Direction::Both),
            o => Err(Error::invalid(format!(
                "unknown direction {o:?}: expected out, in or both"
            ))),
        }
    }
}

/// An edge next to a node, with the node at its other end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Neighbor {
    /// The id at the other end of `edge`.
    pub node: String,
    /// `out` when `edge` leaves the queried node, `in` when it enters it.
    pub direction: Direction,
    /// The edge.
    pub edge: Edge,
}

/// Edges around `id` in `ns`, optionally of one relation, at most `limit`.
pub fn neighbors(
    conn: &Connection,
    ns: &str,
    id: &str,
    dir: Direction,
    relation: Option<&str>,
    limit: usize,
) -> Result<Vec<Neighbor>> {
    let img = row_image_sql(Kind::Edge, "");
    let mut out = Vec::new();
    let lim = clamp_limit(limit);
    let mut run = |col: &str, d: Direction| -> Result<()> {
        let sql = format!(
            "SELECT {img} FROM edges WHERE ns = ?1 AND {col} = ?2 AND (?3 IS NULL OR relation = ?3)
             ORDER BY relation, weight DESC, id LIMIT ?4"
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![ns, id, relation, lim], |r| r.get::<_, String>(0))?;
        for j in rows {
            let edge: Edge = decode(&j?)?;
            let node = if d == Direction::Out {
                edge.target.clone()
            } else {
                edge.source.clone()
            };
            out.push(Neighbor {
                node,
                direction: d,
                edge,
            });
        }
        Ok(())
    };
    if matches!(dir, Direction::Out | Direction::Both) {
        run("source", Direction::Out)?;
    }
    if matches!(dir, Direction::In | Direction::Both) {
        run("target", Direction::In)?;
    }
    out.truncate(lim as usize);
    Ok(out)
}

/// A node reached by a traversal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hop {
    /// The node reached.
    pub node: String,
    /// Hops from the start (1 for direct neighbours).
    pub depth: u32,
    /// The node it was reached from.
    pub from: String,
    /// The edge followed.
    pub edge: String,
    /// The edge's relation.
    pub relation: String,
}

/// Breadth-first traversal from `start`: each node is reported once, at its shortest depth
/// (so cycles end), up to `max_depth` hops and `limit` nodes.
pub fn traverse(
    conn: &Connection,
    ns: &str,
    start: &str,
    dir: Direction,
    relation: Option<&str>,
    max_depth: u32,
    limit: usize,
) -> Result<Vec<Hop>> {
    let lim = clamp_limit(limit) as usize;
    let mut seen: HashSet<String> = HashSet::from([start.to_string()]);
    let mut queue: VecDeque<(String, u32)> = VecDeque::from([(start.to_string(), 0)]);
    let mut out = Vec::new();
    while let Some((node, depth)) = queue.pop_front() {
        if depth >= max_depth {
            continue;
        }
        for n in neighbors(conn, ns, &node, dir, relation, super::MAX_LIMIT)? {
            if out.len() >= lim {
                return Ok(out);
            }
            if seen.insert(n.node.clone()) {
                out.push(Hop {
                    node: n.node.clone(),
                    depth: depth + 1,
                    from: node.clone(),
                    edge: n.edge.id.clone(),
                    relation: n.edge.relation.clone(),
                });
                queue.push_back((n.node, depth + 1));
            }
        }
    }
    Ok(out)
}
