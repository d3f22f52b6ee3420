//! Exact KNN over a model's partition of the vec0 index of its dimension count (cosine), and
//! hybrid search (reciprocal-rank fusion of full-text and vector results).

use std::collections::HashMap;

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

use super::{clamp_limit, search, SearchQuery};
use crate::error::{Error, Result};
use crate::model::{embedding_to_blob, Kind};
use crate::ops::check_embedding;
use crate::schema::{model_by_name, model_dims, model_tables};

/// A nearest-neighbour query.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KnnQuery {
    /// The model whose index to search.
    pub model: String,
    /// The query embedding (same dimension count as the model).
    pub embedding: Vec<f32>,
    /// How many neighbours.
    pub k: usize,
    /// Only this namespace (filtered inside the KNN scan, so `k` hits still come back).
    #[serde(default)]
    pub ns: Option<String>,
    /// Only subjects of this `kind` (filtered inside the KNN scan).
    #[serde(default)]
    pub kind: Option<String>,
}

/// One KNN hit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KnnHit {
    /// Namespace.
    pub ns: String,
    /// Subject id.
    pub subject: String,
    /// Subject kind.
    pub kind: String,
    /// Cosine distance (0 = same direction, 2 = opposite).
    pub distance: f64,
}

/// The `k` nearest vectors to the query, nearest first. Exact: vec0 scans every vector of the
/// model (in `q.ns`, or in every namespace whose model of that name has the query's dimension
/// count: namespaces pick their models' dimension counts independently).
pub fn knn(conn: &Connection, q: &KnnQuery) -> Result<Vec<KnnHit>> {
    let dims = q.embedding.len();
    let tables = match &q.ns {
        Some(ns) => {
            let Some(model) = model_by_name(conn, ns, &q.model)? else {
                return Err(Error::NotFound(format!(
                    "no vectors exist for model {:?} in namespace {ns:?}",
                    q.model
                )));
            };
            if model.dims != dims {
                return Err(Error::invalid(format!(
                    "model {:?} has {} dimensions in namespace {ns:?}, the query has {dims}",
                    q.model, model.dims
                )));
            }
            vec![model.table]
        }
        None => {
            let all = model_dims(conn, &q.model)?;
            if all.is_empty() {
                return Err(Error::NotFound(format!(
                    "no vectors exist for model {:?}",
                    q.model
                )));
            }
            if !all.contains(&dims) {
                let list: Vec<String> = all.iter().map(ToString::to_string).collect();
                return Err(Error::invalid(format!(
                    "model {:?} has {} dimensions{}, the query has {dims}",
                    q.model,
                    list.join(" or "),
                    if all.len() > 1 {
                        " (in different namespaces)"
                    } else {
                        ""
                    }
                )));
            }
            model_tables(conn, &q.model, dims)?
        }
    };
    check_embedding(&q.embedding)?;
    // vec0 takes partition-key and metadata filters only as constraints in the KNN query
    // itself, so the four shapes get their own statements (all cached). `model` is a partition
    // key of the dimension count's table, `ns` the other: vec0 scans only their chunks.
    let mut cond = String::new();
    if q.ns.is_some() {
        cond.push_str(" AND ns = ?3");
    }
    if q.kind.is_some() {
        cond.push_str(" AND kind = ?4");
    }
    let blob = embedding_to_blob(&q.embedding);
    let k = clamp_limit(q.k.min(4096));
    // A model's pairs with few vectors are in the small table of its dimension count, the
    // others in the large one: across namespaces, both may hold some (each gives its k best).
    let mut hits = Vec::new();
    for t in &tables {
        hits.extend(knn_in(conn, t, &cond, &blob, k, q)?);
    }
    if tables.len() > 1 {
        hits.sort_by(|a, b| a.distance.total_cmp(&b.distance));
        hits.truncate(k as usize);
    }
    Ok(hits)
}

/// The `k` nearest in the vec0 table `t`.
fn knn_in(
    conn: &Connection,
    t: &str,
    cond: &str,
    blob: &[u8],
    k: i64,
    q: &KnnQuery,
) -> Result<Vec<KnnHit>> {
    let sql = format!(
        "SELECT v.ns, v.subject, v.kind, m.distance
         FROM (SELECT rowid, distance FROM {t}
               WHERE embedding MATCH ?1 AND k = ?2 AND model = ?5{cond}) m
         JOIN vectors v ON v.rowid = m.rowid ORDER BY m.distance"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let map = |r: &rusqlite::Row<'_>| {
        // No distance: an embedding stored before its length was checked (`check` names it).
        let Some(distance) = r.get::<_, Option<f64>>(3)? else {
            return Ok(None);
        };
        Ok(Some(KnnHit {
            ns: r.get(0)?,
            subject: r.get(1)?,
            kind: r.get(2)?,
            distance,
        }))
    };
    let rows = stmt
        .query_map(params![blob, k, q.ns, q.kind, q.model], map)?
        .filter_map(Result::transpose)
        .collect::<rusqlite::Result<Vec<_>>>();
    Ok(rows?)
}

/// One hybrid hit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HybridHit {
    /// Namespace.
    pub ns: String,
    /// Row id (entity or note).
    pub id: String,
    /// Fused score: the sum of 1 / (60 + rank) over the lists the row appears in.
    pub score: f64,
    /// 1-based rank in the text results, if there.
    pub text_rank: Option<usize>,
    /// 1-based rank in the vector results, if there.
    pub vector_rank: Option<usize>,
    /// The text hit's snippet, if there.
    pub snippet: Option<String>,
}

/// The RRF constant from Cormack, Clarke & Büttcher (2009): 60 damps the head of each list.
const RRF_K: f64 = 60.0;

/// Text and vector search fused by reciprocal rank. `text.limit` and `vector.k` set how deep
/// each list goes; `limit` how many fused hits come back.
pub fn hybrid(
    conn: &Connection,
    text: &SearchQuery,
    vector: &KnnQuery,
    limit: usize,
    now_us: i64,
) -> Result<Vec<HybridHit>> {
    let mut fused: HashMap<(String, String), HybridHit> = HashMap::new();
    let texts = search(conn, text, now_us)?;
    for (i, h) in texts
        .into_iter()
        .filter(|h| matches!(h.record, Kind::Entity | Kind::Note))
        .enumerate()
    {
        let e = fused
            .entry((h.ns.clone(), h.id.clone()))
            .or_insert_with(|| HybridHit {
                ns: h.ns,
                id: h.id,
                score: 0.0,
                text_rank: None,
                vector_rank: None,
                snippet: None,
            });
        if e.text_rank.is_none() {
            e.text_rank = Some(i + 1);
            e.score += 1.0 / (RRF_K + (i + 1) as f64);
            e.snippet = Some(h.snippet);
        }
    }
    for (i, h) in knn(conn, vector)?.into_iter().enumerate() {
        let e = fused
            .entry((h.ns.clone(), h.subject.clone()))
            .or_insert_with(|| HybridHit {
                ns: h.ns,
                id: h.subject,
                score: 0.0,
                text_rank: None,
                vector_rank: None,
                snippet: None,
            });
        if e.vector_rank.is_none() {
            e.vector_rank = Some(i + 1);
            e.score += 1.0 / (RRF_K + (i + 1) as f64);
        }
    }
    let mut out: Vec<HybridHit> = fused.into_values().collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
    out.truncate(clamp_limit(limit) as usize);
    Ok(out)
}
