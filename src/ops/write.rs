//! Row writes, one statement per row, shared by the node's writes and the replica's apply.

use rusqlite::{params, Connection};

use super::*;
use crate::error::Result;
use crate::model::{embedding_to_blob, Edge, Entity, Event, Note, Vector};

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
