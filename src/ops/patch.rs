//! Patch writes: change only the fields a write names, on the row as it is when the write is
//! applied, so that concurrent edits of different fields of one row both survive.
//!
//! `{"op":"patch","kind":"entity","ns":"default","id":"e1","data":{"name":"A"}}`: each field of
//! `data` replaces the row's; `properties` merges by key with JSON merge-patch rules (RFC 7386: a
//! `null` removes a key, nested objects merge); an entity's `tags` is either a list (the new
//! list) or `{"add": [...], "remove": [...]}` (removed first, then added where missing, order
//! kept). Entities, edges and notes take patches; events are append-only and vectors are
//! replaced whole. A patch of a row that does not exist is refused. The result is written as an
//! upsert of the whole row (validated as any upsert, logged as its row image), so the feed and
//! every replica see what they always see.

use rusqlite::Connection;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::model::{Kind, WriteOp};
use crate::query;

/// A patch op's row id and fields, checked for shape.
pub(crate) fn target(op: &WriteOp) -> Result<(&str, &Value)> {
    if op.model.is_some() {
        return Err(Error::invalid(
            "`model` applies to vector deletes, not patches",
        ));
    }
    let id = op.id.as_deref().ok_or_else(|| {
        Error::invalid(format!(
            "patch of {} needs `id` (the row to change)",
            op.kind
        ))
    })?;
    super::check_key("id", id)?;
    let fields = op.data.as_ref().ok_or_else(|| {
        Error::invalid(format!(
            "patch of {} needs `data` (the fields to change)",
            op.kind
        ))
    })?;
    Ok((id, fields))
}

/// The validated entity row an entity patch writes (None for any other op), for the node's
/// runs of entity writes (`EntityRun`), as `entity_upsert` gives for upserts. It reads the row
/// as it is: a run holding an earlier write of that row must be written first.
#[cfg(feature = "node")]
pub(crate) fn entity_patch(
    conn: &Connection,
    op: &WriteOp,
    now: i64,
) -> Result<Option<(crate::model::Entity, String)>> {
    if op.kind != Kind::Entity || op.op != crate::model::Op::Patch {
        return Ok(None);
    }
    super::check_ns(&op.ns)?;
    let (id, fields) = target(op)?;
    let plain = fields.as_object().is_some_and(|f| {
        f.keys().all(|k| {
            matches!(
                k.as_str(),
                "name" | "kind" | "description" | "properties" | "tags" | "updated_at"
            )
        })
    });
    if !plain {
        let row = patched(conn, Kind::Entity, &op.ns, id, fields)?;
        return super::validate::entity_row_text(conn, &row, now).map(Some);
    }
    entity_patch_fast(conn, &op.ns, id, fields, now).map(Some)
}

/// [`entity_patch`] of the fields a UI edits, read from the row's columns: the stored
/// `properties` text is kept as it is unless the patch changes it (no parse, no render).
#[cfg(feature = "node")]
fn entity_patch_fast(
    conn: &Connection,
    ns: &str,
    id: &str,
    fields: &Value,
    now: i64,
) -> Result<(crate::model::Entity, String)> {
    use rusqlite::OptionalExtension;
    type Cols = (String, String, String, String, String, i64);
    let cols: Option<Cols> = conn
        .prepare_cached(
            "SELECT kind, name, description, properties, tags, created_at FROM entities
             WHERE ns = ?1 AND id = ?2",
        )?
        .query_row(rusqlite::params![ns, id], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .optional()?;
    let Some((kind, name, description, mut props, tags, created_at)) = cols else {
        return Err(no_row(Kind::Entity, ns, id));
    };
    let text = |k: &str, was: String| -> Result<String> {
        match fields.get(k) {
            None => Ok(was),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(Error::invalid(format!(
                "invalid type: `{k}` of an entity patch must be a string, not {other}"
            ))),
        }
    };
    let tags: Vec<String> = match fields.get("tags") {
        None => serde_json::from_str(&tags)?,
        Some(p) => {
            let current: Value = serde_json::from_str(&tags)?;
            serde_json::from_value(patch_tags(Some(&current), p)?)
                .map_err(|e| Error::invalid(format!("invalid `tags` in a patch: {e}")))?
        }
    };
    if let Some(p) = fields.get("properties") {
        if !p.is_object() {
            return Err(Error::invalid(
                "`properties` of a patch must be an object (a `null` value removes that key)",
            ));
        }
        let mut current: Value = serde_json::from_str(&props)?;
        merge_patch(&mut current, p);
        let Value::Object(m) = current else {
            return Err(Error::invalid("stored entity properties are not an object"));
        };
        props = super::json_obj("entity properties", &m)?;
    }
    let updated_at = match fields.get("updated_at") {
        None => None,
        Some(v) => Some(v.as_i64().ok_or_else(|| {
            Error::invalid("invalid type: `updated_at` of a patch must be an integer (µs)")
        })?),
    };
    let row = crate::model::Entity {
        id: id.to_string(),
        kind: text("kind", kind)?,
        name: text("name", name)?,
        description: text("description", description)?,
        properties: Map::new(),
        tags,
        created_at,
        updated_at: super::stamp(updated_at, now),
    };
    super::validate::check_entity(&row)?;
    Ok((row, props))
}

fn no_row(kind: Kind, ns: &str, id: &str) -> Error {
    Error::invalid(format!(
        "patch of {kind} {id:?} in {ns:?}: no such row (upsert it first; a patch changes a row that exists)"
    ))
}

/// The row `kind` `id` in `ns` with `fields` patched in: the data of the upsert that writes it.
pub(crate) fn patched(
    conn: &Connection,
    kind: Kind,
    ns: &str,
    id: &str,
    fields: &Value,
) -> Result<Value> {
    match kind {
        Kind::Entity | Kind::Edge | Kind::Note => {}
        Kind::Event => {
            return Err(Error::invalid(
                "events are append-only: they cannot be patched",
            ))
        }
        Kind::Vector => {
            return Err(Error::invalid(
                "a vector is replaced whole: upsert it instead of patching it",
            ))
        }
    }
    let fields = fields.as_object().ok_or_else(|| {
        Error::invalid(format!(
            "`data` of a {kind} patch must be a JSON object of the fields to change"
        ))
    })?;
    let current = match kind {
        // The common case, without a detour through serde's Value of the struct.
        Kind::Entity => query::get_entity(conn, ns, id)?.map(|e| {
            let mut m = Map::with_capacity(8);
            m.insert("id".into(), Value::String(e.id));
            m.insert("kind".into(), Value::String(e.kind));
            m.insert("name".into(), Value::String(e.name));
            m.insert("description".into(), Value::String(e.description));
            m.insert("properties".into(), Value::Object(e.properties));
            m.insert("tags".into(), e.tags.into());
            m.insert("created_at".into(), e.created_at.into());
            Value::Object(m)
        }),
        _ => query::get_json(conn, kind, ns, id, None)?,
    };
    let Some(Value::Object(mut row)) = current else {
        return Err(no_row(kind, ns, id));
    };
    for (k, v) in fields {
        match k.as_str() {
            "id" if v.as_str() == Some(id) => {}
            "id" => {
                return Err(Error::invalid(format!(
                    "a patch cannot change `id` (the op's `id` is {id:?})"
                )))
            }
            "properties" => {
                if !v.is_object() {
                    return Err(Error::invalid(
                        "`properties` of a patch must be an object (a `null` value removes that key)",
                    ));
                }
                let target = row
                    .entry("properties")
                    .or_insert_with(|| Value::Object(Map::new()));
                merge_patch(target, v);
            }
            "tags" if kind == Kind::Entity => {
                let tags = patch_tags(row.get("tags"), v)?;
                row.insert("tags".into(), tags);
            }
            _ => {
                row.insert(k.clone(), v.clone());
            }
        }
    }
    // Stamped now by the upsert, unless the patch gives the time it was made.
    if !fields.contains_key("updated_at") {
        row.remove("updated_at");
    }
    Ok(Value::Object(row))
}

/// RFC 7386 JSON merge-patch of `target` by `patch`.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// An entity's tags after a patch's `tags`: a new list, or `{add, remove}` applied.
fn patch_tags(current: Option<&Value>, patch: &Value) -> Result<Value> {
    let strings = |v: &Value, what: &str| -> Result<Vec<String>> {
        v.as_array()
            .and_then(|a| a.iter().map(|t| t.as_str().map(String::from)).collect())
            .ok_or_else(|| {
                Error::invalid(format!(
                    "`tags.{what}` of a patch must be a list of strings"
                ))
            })
    };
    match patch {
        Value::Array(_) => Ok(patch.clone()),
        Value::Object(o) => {
            if let Some(k) = o.keys().find(|k| *k != "add" && *k != "remove") {
                return Err(Error::invalid(format!(
                    "`tags` of a patch is a list, or {{\"add\": [...], \"remove\": [...]}}; not {k:?}"
                )));
            }
            let mut tags = current.map_or(Ok(Vec::new()), |c| strings(c, "current"))?;
            if let Some(r) = o.get("remove") {
                let r = strings(r, "remove")?;
                tags.retain(|t| !r.contains(t));
            }
            if let Some(a) = o.get("add") {
                for t in strings(a, "add")? {
                    if !tags.contains(&t) {
                        tags.push(t);
                    }
                }
            }
            Ok(Value::from(tags))
        }
        _ => Err(Error::invalid(
            "`tags` of a patch is a list, or {\"add\": [...], \"remove\": [...]}",
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::{ops, schema};
    use serde_json::json;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn db() -> Connection {
        let c = schema::open_in_memory(&Default::default()).unwrap();
        ops::execute(
            &c,
            &WriteOp::upsert(
                Kind::Entity,
                "default",
                json!({"id": "e1", "kind": "task", "name": "Write", "description": "old",
                       "properties": {"a": 1, "n": {"x": 1, "y": 2}}, "tags": ["x", "y"]}),
            ),
            5,
        )
        .unwrap();
        c
    }

    fn patch(c: &Connection, fields: Value) -> Result<Value> {
        ops::execute(c, &WriteOp::patch(Kind::Entity, "default", "e1", fields), 9)?;
        Ok(query::get_json(c, Kind::Entity, "default", "e1", None)?.unwrap())
    }

    #[test]
    fn a_patch_changes_only_what_it_names() {
        let c = db();
        let row = patch(
            &c,
            json!({"description": "new", "properties": {"b": 2, "n": {"x": null, "z": 3}}}),
        )
        .unwrap();
        assert_eq!(row["name"], "Write", "untouched");
        assert_eq!(row["description"], "new");
        assert_eq!(
            row["properties"],
            json!({"a": 1, "b": 2, "n": {"y": 2, "z": 3}})
        );
        assert_eq!(row["tags"], json!(["x", "y"]));
        assert_eq!(row["created_at"], 5, "created_at kept");
        assert_eq!(row["updated_at"], 9, "updated_at now");
        let row = patch(&c, json!({"tags": {"remove": ["x"], "add": ["z", "y"]}})).unwrap();
        assert_eq!(row["tags"], json!(["y", "z"]));
        let row = patch(&c, json!({"tags": ["q"], "properties": {"a": null}})).unwrap();
        assert_eq!(row["tags"], json!(["q"]));
        assert_eq!(row["properties"], json!({"b": 2, "n": {"y": 2, "z": 3}}));
    }

    #[test]
    fn patches_that_cannot_apply_are_refused_with_a_reason() {
        let c = db();
        let e = ops::execute(
            &c,
            &WriteOp::patch(Kind::Entity, "default", "nope", json!({"name": "x"})),
            9,
        )
        .unwrap_err();
        assert!(e.to_string().contains("no such row"), "{e}");
        for (fields, want) in [
            (json!({"id": "e2"}), "cannot change `id`"),
            (json!({"properties": 3}), "must be an object"),
            (json!({"tags": "x"}), "`tags` of a patch"),
            (json!({"tags": {"put": ["x"]}}), "not \"put\""),
            (json!({"colour": "red"}), "unknown field"),
            (json!({"name": 5}), "invalid"),
        ] {
            let e = patch(&c, fields.clone()).unwrap_err().to_string();
            assert!(e.contains(want), "{fields}: {e}");
        }
        for kind in [Kind::Event, Kind::Vector] {
            let e =
                ops::execute(&c, &WriteOp::patch(kind, "default", "e1", json!({})), 9).unwrap_err();
            assert!(
                e.to_string().contains("patch") || e.to_string().contains("whole"),
                "{e}"
            );
        }
        let row = query::get_json(&c, Kind::Entity, "default", "e1", None)
            .unwrap()
            .unwrap();
        assert_eq!(row["name"], "Write", "nothing changed");
    }
}
