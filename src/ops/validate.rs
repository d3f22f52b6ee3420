//! Validation: the one JSON write shape into typed rows, one row builder per kind.

use rusqlite::{params, Connection, OptionalExtension};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::*;
use crate::error::{Error, Result};
use crate::model::{Edge, Entity, Event, Kind, Note, Op, Vector, WriteOp};
use crate::schema;

pub(super) fn parse_data<T: for<'de> Deserialize<'de>>(kind: Kind, data: &Value) -> Result<T> {
    T::deserialize(data).map_err(|e| Error::invalid(format!("invalid {kind} data: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EntityIn {
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
pub(super) struct EdgeIn {
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
pub(super) struct NoteIn {
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
pub(super) struct EventIn {
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
pub(super) struct VectorIn {
    subject: String,
    model: String,
    embedding: crate::model::EmbeddingIn,
    kind: Option<String>,
    created_at: Option<i64>,
    updated_at: Option<i64>,
}

/// `data` as an [`EntityIn`] read straight from the JSON value (serde's derived visitor over a
/// `Value` was 6% of 1,024-row writes), with `properties` borrowed, not copied; None when
/// anything is unusual (an unknown field, a wrong type, no name), for [`parse_data`] to refuse
/// with serde's message.
pub(super) fn entity_in_fast(data: &Value) -> Option<(EntityIn, Option<&Map<String, Value>>)> {
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
pub(super) fn entity_row(conn: &Connection, data: &Value, now: i64) -> Result<Entity> {
    let e: EntityIn = parse_data(Kind::Entity, data)?;
    entity_row_from(conn, e, now)
}

/// [`entity_row`] with the row's `properties` as stored JSON text, rendered from `data` without
/// copying the map: the returned row's own `properties` is empty.
pub(crate) fn entity_row_text(
    conn: &Connection,
    data: &Value,
    now: i64,
) -> Result<(Entity, String)> {
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

pub(super) fn entity_row_from(conn: &Connection, e: EntityIn, now: i64) -> Result<Entity> {
    let id = id_or_new(conn, e.id)?;
    let row = Entity {
        id,
        kind: e.kind.unwrap_or_else(|| "thing".into()),
        name: e.name,
        description: e.description,
        properties: e.properties,
        tags: e.tags,
        created_at: stamp(e.created_at, now),
        updated_at: stamp(e.updated_at, now),
    };
    check_entity(&row)?;
    Ok(row)
}

/// The checks an entity row passes before it is written.
pub(super) fn check_entity(row: &Entity) -> Result<()> {
    check_name("entity kind", &row.kind, true)?;
    check_name("entity name", &row.name, true)?;
    check_text("entity description", &row.description)?;
    for t in &row.tags {
        check_name("tag", t, true)?;
    }
    Ok(())
}

/// The validated entity row of `op` when it is an entity upsert, None for any other op: what
/// [`execute`] would write, so a caller can gather consecutive entity upserts in an
/// [`EntityRun`].
///
/// The row comes with its `properties` as the JSON text to store; the row's own `properties`
/// map is left empty (see [`EntityRun::push_rendered`]).
pub(crate) fn entity_upsert(
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
pub(super) fn upsert(
    conn: &Connection,
    kind: Kind,
    ns: &str,
    data: &Value,
    now: i64,
) -> Result<OpResult> {
    match kind {
        Kind::Entity => {
            let row = entity_row(conn, data, now)?;
            write_entity(conn, ns, &row, false)?;
            Ok(OpResult { id: row.id })
        }
        Kind::Edge => {
            let row = edge_row(conn, ns, data, now)?;
            write_edge(conn, ns, &row, false)?;
            Ok(OpResult { id: row.id })
        }
        Kind::Note => {
            let row = note_row(conn, data, now)?;
            write_note(conn, ns, &row, false)?;
            Ok(OpResult { id: row.id })
        }
        Kind::Event => {
            let row = event_row(conn, data, now)?;
            write_event(conn, ns, &row)?;
            Ok(OpResult { id: row.id })
        }
        Kind::Vector => {
            let (row, table) = vector_row(conn, ns, data, now)?;
            write_vector(conn, ns, &row, &table, false)?;
            Ok(OpResult { id: row.subject })
        }
    }
}

/// An edge row from an upsert's data, checked.
fn edge_row(conn: &Connection, ns: &str, data: &Value, now: i64) -> Result<Edge> {
    let e: EdgeIn = parse_data(Kind::Edge, data)?;
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
        created_at: stamp(e.created_at, now),
        updated_at: stamp(e.updated_at, now),
    };
    Ok(row)
}

/// The id given, checked, or a new one.
fn id_or_new(conn: &Connection, id: Option<String>) -> Result<String> {
    let id = match id {
        Some(id) => id,
        None => new_id(conn)?,
    };
    check_key("id", &id)?;
    Ok(id)
}

/// A note row from an upsert's data, checked.
fn note_row(conn: &Connection, data: &Value, now: i64) -> Result<Note> {
    let n: NoteIn = parse_data(Kind::Note, data)?;
    let id = id_or_new(conn, n.id)?;
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
        created_at: stamp(n.created_at, now),
        updated_at: stamp(n.updated_at, now),
    };
    check_name("note kind", &row.kind, true)?;
    check_name("note name", &row.name, false)?;
    check_text("note content", &row.content)?;
    Ok(row)
}

/// An event row from an upsert's data, checked.
fn event_row(conn: &Connection, data: &Value, now: i64) -> Result<Event> {
    let e: EventIn = parse_data(Kind::Event, data)?;
    let id = id_or_new(conn, e.id)?;
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
        created_at: stamp(e.created_at, now),
    };
    Ok(row)
}

/// A vector row from an upsert's data, checked, and the vec0 table its model's pair is in.
fn vector_row(conn: &Connection, ns: &str, data: &Value, now: i64) -> Result<(Vector, String)> {
    let v: VectorIn = parse_data(Kind::Vector, data)?;
    check_key("vector subject", &v.subject)?;
    let embedding = v.embedding.0;
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
    let model = schema::ensure_model(
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
        created_at: stamp(v.created_at, now),
        updated_at: stamp(v.updated_at, now),
    };
    Ok((row, model.table))
}
