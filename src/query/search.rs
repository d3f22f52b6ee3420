//! Full-text search over entities and notes (FTS5, bm25 order, snippets).

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

use super::clamp_limit;
use crate::error::Result;
use crate::model::Kind;

/// A text search.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SearchQuery {
    /// What the user typed: words (all must match), `"quoted phrases"`, `prefix*`. Any text is
    /// accepted; FTS5 operators in it are taken literally.
    pub text: String,
    /// Only this namespace.
    #[serde(default)]
    pub ns: Option<String>,
    /// Only rows with this `kind` column (e.g. `person`).
    #[serde(default)]
    pub kind: Option<String>,
    /// Only these record kinds (entity, note); both when absent.
    #[serde(default)]
    pub records: Option<Vec<Kind>>,
    /// Most hits returned.
    #[serde(default)]
    pub limit: usize,
}

/// One search hit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    /// `entity` or `note`.
    pub record: Kind,
    /// Namespace.
    pub ns: String,
    /// Row id.
    pub id: String,
    /// The row's `kind` column.
    pub kind: String,
    /// The row's name.
    pub name: String,
    /// Matching text with the hits in `[brackets]`.
    pub snippet: String,
    /// Relevance (negated bm25: higher is better).
    pub score: f64,
}

/// Turn user text into an FTS5 query that cannot be a syntax error: every word becomes a
/// quoted string (so `AND`, `-`, `:`, `(` are literal), `"..."` stays a phrase, and a trailing
/// `*` stays a prefix search. `None` when the text holds nothing to search for.
pub fn fts_query(text: &str) -> Option<String> {
    let mut terms: Vec<String> = Vec::new();
    let mut push = |t: &str, phrase: bool| {
        let (body, prefix) = match t.strip_suffix('*') {
            Some(b) if !phrase && !b.is_empty() => (b, true),
            _ => (t, false),
        };
        let body = body.trim_matches('*');
        if body.chars().any(char::is_alphanumeric) {
            let q = format!("\"{}\"", body.replace('"', "\"\""));
            terms.push(if prefix { format!("{q}*") } else { q });
        }
    };
    let mut rest = text;
    while let Some(start) = rest.find('"') {
        for w in rest[..start].split_whitespace() {
            push(w, false);
        }
        let after = &rest[start + 1..];
        match after.find('"') {
            Some(end) => {
                push(&after[..end], true);
                rest = &after[end + 1..];
            }
            None => {
                rest = after;
                break;
            }
        }
    }
    for w in rest.split_whitespace() {
        push(w, false);
    }
    if terms.is_empty() {
        None
    } else {
        Some(terms.join(" "))
    }
}

fn search_table(
    conn: &Connection,
    record: Kind,
    fts: &str,
    q: &SearchQuery,
    now_us: i64,
) -> Result<Vec<SearchHit>> {
    let (table, fts_table, weights, notes) = match record {
        Kind::Entity => ("entities", "entities_fts", "10.0, 3.0, 5.0", false),
        _ => ("notes", "notes_fts", "10.0, 3.0", true),
    };
    let limit = clamp_limit(q.limit);
    // Top k from FTS5 alone: it orders its matches by `rank` (here the weighted bm25, set per
    // query), and with nothing else in its subquery, rows come out in that order until LIMIT;
    // snippets and scores are computed for those rows only, then joined to their rows (the
    // subquery is the outer loop, so the order holds) and the filters (namespace, kind, a
    // note's expiry) applied here. The score is the same bm25 called for the rows returned:
    // selecting the `rank` column itself cost 0.4-2 ms more over 4,000 matches
    // (benches/search.rs).
    let expiry = if notes { "t.expires_at" } else { "NULL" };
    let top_sql = format!(
        "SELECT t.ns, t.id, t.kind, t.name, m.snippet, m.score, {expiry}
         FROM (SELECT rowid AS r, snippet({fts_table}, -1, '[', ']', '…', 16) AS snippet,
                      -bm25({fts_table}, {weights}) AS score
               FROM {fts_table} WHERE {fts_table} MATCH ?1 AND rank MATCH 'bm25({weights})'
               ORDER BY rank LIMIT ?2) AS m
         CROSS JOIN {table} t ON t.rowid = m.r"
    );
    let mut stmt = conn.prepare_cached(&top_sql)?;
    let mut rows = stmt.query(params![fts, limit])?;
    let mut seen = 0;
    let mut hits = Vec::new();
    while let Some(r) = rows.next()? {
        seen += 1;
        let h = hit(record, r)?;
        let passes = q.ns.as_ref().is_none_or(|n| *n == h.ns)
            && q.kind.as_ref().is_none_or(|k| *k == h.kind)
            && r.get::<_, Option<i64>>(6)?.is_none_or(|e| e > now_us);
        if passes {
            hits.push(h);
        }
    }
    drop(rows);
    // Every match was seen, or the best `limit` all passed: done.
    if seen < limit || hits.len() as i64 == limit {
        return Ok(hits);
    }
    // The filters turned some of the best away: rows, filters and snippets in rank order
    // until `limit` rows pass (the CROSS JOIN keeps the FTS table the outer loop, so its rank
    // order holds).
    let extra = if notes {
        "AND (t.expires_at IS NULL OR t.expires_at > ?5)"
    } else {
        ""
    };
    let sql = format!(
        "SELECT t.ns, t.id, t.kind, t.name, snippet({fts_table}, -1, '[', ']', '…', 16), -bm25({fts_table}, {weights})
         FROM {fts_table} CROSS JOIN {table} t ON t.rowid = {fts_table}.rowid
         WHERE {fts_table} MATCH ?1 AND {fts_table}.rank MATCH 'bm25({weights})'
           AND (?2 IS NULL OR t.ns = ?2) AND (?3 IS NULL OR t.kind = ?3) {extra}
         ORDER BY {fts_table}.rank LIMIT ?4"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let hit = |r: &rusqlite::Row<'_>| hit(record, r);
    // The time is a parameter (?5, notes only), so the statement is prepared once.
    let rows = if notes {
        stmt.query_map(params![fts, q.ns, q.kind, limit, now_us], hit)?
    } else {
        stmt.query_map(params![fts, q.ns, q.kind, limit], hit)?
    };
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// A hit from a row of either plan: ns, id, kind, name, snippet, score.
fn hit(record: Kind, r: &rusqlite::Row<'_>) -> rusqlite::Result<SearchHit> {
    Ok(SearchHit {
        record,
        ns: r.get(0)?,
        id: r.get(1)?,
        kind: r.get(2)?,
        name: r.get(3)?,
        snippet: r.get(4)?,
        score: r.get(5)?,
    })
}

/// Search entities and notes; best hits first.
pub fn search(conn: &Connection, q: &SearchQuery, now_us: i64) -> Result<Vec<SearchHit>> {
    let Some(fts) = fts_query(&q.text) else {
        return Ok(Vec::new());
    };
    let wants = |k: Kind| q.records.as_ref().is_none_or(|r| r.contains(&k));
    let mut hits = Vec::new();
    if wants(Kind::Entity) {
        hits.extend(search_table(conn, Kind::Entity, &fts, q, now_us)?);
    }
    if wants(Kind::Note) {
        hits.extend(search_table(conn, Kind::Note, &fts, q, now_us)?);
    }
    hits.sort_by(|a, b| b.score.total_cmp(&a.score));
    hits.truncate(clamp_limit(q.limit) as usize);
    Ok(hits)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn user_text_becomes_a_safe_query() {
        assert_eq!(fts_query("ada lovelace").unwrap(), r#""ada" "lovelace""#);
        assert_eq!(
            fts_query(r#"say "hello world" now"#).unwrap(),
            r#""say" "hello world" "now""#
        );
        assert_eq!(fts_query("comp*").unwrap(), r#""comp"*"#);
        assert_eq!(
            fts_query("AND OR NOT (x:").unwrap(),
            r#""AND" "OR" "NOT" "(x:""#
        );
        assert_eq!(
            fts_query(r#"unbalanced "quote"#).unwrap(),
            r#""unbalanced" "quote""#
        );
        assert!(fts_query("  * - ( ) \" ").is_none());
    }
}
