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
    let (table, fts_table, weights, extra) = match record {
        Kind::Entity => ("entities", "entities_fts", "10.0, 3.0, 5.0", ""),
        _ => (
            "notes",
            "notes_fts",
            "10.0, 3.0",
            "AND (t.expires_at IS NULL OR t.expires_at > ?5)",
        ),
    };
    // Top k without sorting every match: FTS5 orders its matches by `rank` (here the weighted
    // bm25, set per query), the CROSS JOIN keeps the FTS table the outer loop so that order
    // holds, and rows, filters and snippets are read for matches in rank order until `limit`
    // rows passed (not for every match, then sorted, as `ORDER BY bm25(...)` did). The score
    // is the same bm25 called for the rows returned: selecting the `rank` column itself cost
    // 0.4-2 ms more over 4,000 matches (benches/search.rs).
    let sql = format!(
        "SELECT t.ns, t.id, t.kind, t.name, snippet({fts_table}, -1, '[', ']', '…', 16), -bm25({fts_table}, {weights})
         FROM {fts_table} CROSS JOIN {table} t ON t.rowid = {fts_table}.rowid
         WHERE {fts_table} MATCH ?1 AND {fts_table}.rank MATCH 'bm25({weights})'
           AND (?2 IS NULL OR t.ns = ?2) AND (?3 IS NULL OR t.kind = ?3) {extra}
         ORDER BY {fts_table}.rank LIMIT ?4"
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let hit = |r: &rusqlite::Row<'_>| {
        Ok(SearchHit {
            record,
            ns: r.get(0)?,
            id: r.get(1)?,
            kind: r.get(2)?,
            name: r.get(3)?,
            snippet: r.get(4)?,
            score: r.get(5)?,
        })
    };
    // The time is a parameter (?5, notes only), so the statement is prepared once.
    let limit = clamp_limit(q.limit);
    let rows = if record == Kind::Entity {
        stmt.query_map(params![fts, q.ns, q.kind, limit], hit)?
    } else {
        stmt.query_map(params![fts, q.ns, q.kind, limit, now_us], hit)?
    };
    Ok(rows.collect::<rusqlite::Result<_>>()?)
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
