//! The record types shared by the node, the replica and the wire: one definition of each.
//!
//! Rows are what the base tables hold; [`WriteOp`] is the one JSON shape of a write (the
//! protocol's `write`, a line of `hivesync import`, the argument of `hivesync put`); [`Change`]
//! is one entry of the change log, carrying the full key of its row and, for upserts, the full
//! row image, so applying it twice is harmless.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// Namespace used when a write op names none.
pub const DEFAULT_NS: &str = "default";

/// The five kinds of record. The JSON names are part of the wire contract.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A thing in the knowledge graph.
    Entity,
    /// A directed, typed relation between two entities.
    Edge,
    /// A piece of text with salience and an optional expiry.
    Note,
    /// An append-only domain event.
    Event,
    /// An embedding of an entity or a note under a named model.
    Vector,
}

impl Kind {
    /// Every kind, in the order an export writes them (endpoints before the rows that need them).
    pub const ALL: [Kind; 5] = [
        Kind::Entity,
        Kind::Note,
        Kind::Edge,
        Kind::Vector,
        Kind::Event,
    ];

    /// The name used on the wire and in the `changes.kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Entity => "entity",
            Kind::Edge => "edge",
            Kind::Note => "note",
            Kind::Event => "event",
            Kind::Vector => "vector",
        }
    }

    /// The base table holding rows of this kind.
    pub fn table(self) -> &'static str {
        match self {
            Kind::Entity => "entities",
            Kind::Edge => "edges",
            Kind::Note => "notes",
            Kind::Event => "events",
            Kind::Vector => "vectors",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "entity" | "entities" => Kind::Entity,
            "edge" | "edges" => Kind::Edge,
            "note" | "notes" => Kind::Note,
            "event" | "events" => Kind::Event,
            "vector" | "vectors" => Kind::Vector,
            other => {
                return Err(Error::invalid(format!(
                    "unknown kind {other:?}: expected one of entity, edge, note, event, vector"
                )))
            }
        })
    }
}

/// What a change or a write op does to its row.
#[derive(Serialize, Deserialize, Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Insert the row, or replace it (keeping `created_at`) when its key exists.
    Upsert,
    /// Remove the row; removing a missing row is not an error.
    Delete,
    /// Change only the fields `data` names, on the row as it is (a write op only: the change it
    /// makes is logged as an upsert of the whole row).
    Patch,
}

impl Op {
    /// The name used on the wire and in `changes.op`.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Upsert => "upsert",
            Op::Delete => "delete",
            Op::Patch => "patch",
        }
    }
}

impl FromStr for Op {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "upsert" => Ok(Op::Upsert),
            "delete" => Ok(Op::Delete),
            "patch" => Ok(Op::Patch),
            other => Err(Error::invalid(format!(
                "unknown op {other:?}: expected upsert, patch or delete"
            ))),
        }
    }
}

/// An entity row.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
pub struct Entity {
    /// Unique within its namespace.
    pub id: String,
    /// Free-form type, e.g. `person`.
    pub kind: String,
    /// Display name; indexed for full-text search.
    pub name: String,
    /// Longer text; indexed for full-text search.
    #[serde(default)]
    pub description: String,
    /// Arbitrary JSON object.
    #[serde(default)]
    pub properties: Map<String, Value>,
    /// Labels; indexed for full-text search.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Microseconds since the Unix epoch.
    pub created_at: i64,
    /// Microseconds since the Unix epoch.
    pub updated_at: i64,
}

/// An edge row: at most one per (ns, source, target, relation).
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
pub struct Edge {
    /// Unique within its namespace.
    pub id: String,
    /// Id of the entity the edge leaves.
    pub source: String,
    /// Id of the entity the edge enters.
    pub target: String,
    /// Relation name, e.g. `knows`.
    pub relation: String,
    /// Strength of the relation.
    pub weight: f64,
    /// Arbitrary JSON object.
    #[serde(default)]
    pub properties: Map<String, Value>,
    /// Microseconds since the Unix epoch.
    pub created_at: i64,
    /// Microseconds since the Unix epoch.
    pub updated_at: i64,
}

/// A note row.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
pub struct Note {
    /// Unique within its namespace.
    pub id: String,
    /// Free-form type, e.g. `observation`.
    pub kind: String,
    /// Title; indexed for full-text search.
    #[serde(default)]
    pub name: String,
    /// Body; indexed for full-text search.
    pub content: String,
    /// Importance, 0..1 by convention.
    pub salience: f64,
    /// When the note stops being returned by reads (microseconds), if ever.
    pub expires_at: Option<i64>,
    /// Arbitrary JSON object.
    #[serde(default)]
    pub properties: Map<String, Value>,
    /// Microseconds since the Unix epoch.
    pub created_at: i64,
    /// Microseconds since the Unix epoch.
    pub updated_at: i64,
}

/// A domain event row (append-only).
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Unique within its namespace.
    pub id: String,
    /// What happened, e.g. `login`.
    pub verb: String,
    /// Who did it.
    pub actor: Option<String>,
    /// How it ended, e.g. `ok`.
    pub outcome: Option<String>,
    /// What it was done to.
    pub target: Option<String>,
    /// Arbitrary JSON object.
    #[serde(default)]
    pub data: Map<String, Value>,
    /// How long it took, if known.
    pub duration_us: Option<i64>,
    /// Microseconds since the Unix epoch.
    pub created_at: i64,
}

/// A vector row: the embedding of one subject under one model.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
pub struct Vector {
    /// Id of the entity or note embedded.
    pub subject: String,
    /// Embedding model name; all vectors of a model share its dimension count.
    pub model: String,
    /// The subject's `kind` (copied so the KNN query can filter on it).
    pub kind: String,
    /// The embedding.
    pub embedding: Vec<f32>,
    /// Microseconds since the Unix epoch.
    pub created_at: i64,
    /// Microseconds since the Unix epoch.
    pub updated_at: i64,
}

/// One write, in the JSON shape shared by the protocol, `import` and `put`:
/// `{"op":"upsert","kind":"entity","ns":"default","data":{...}}` or
/// `{"op":"delete","kind":"edge","ns":"default","id":"..."}` (vectors: `id` is the subject
/// and `model` names the model).
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
#[serde(deny_unknown_fields)]
pub struct WriteOp {
    /// Upsert or delete.
    pub op: Op,
    /// Which kind of record.
    pub kind: Kind,
    /// Namespace; `default` when absent.
    #[serde(default = "default_ns")]
    pub ns: String,
    /// The row for an upsert (fields as in the row types; `id` and timestamps optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
    /// The key for a delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The model, for a vector delete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

fn default_ns() -> String {
    DEFAULT_NS.to_string()
}

impl WriteOp {
    /// A patch of row `id` of `kind` in `ns`: only the fields of `data` change.
    pub fn patch(kind: Kind, ns: impl Into<String>, id: impl Into<String>, data: Value) -> Self {
        WriteOp {
            op: Op::Patch,
            kind,
            ns: ns.into(),
            data: Some(data),
            id: Some(id.into()),
            model: None,
        }
    }

    /// An upsert of `data` into `kind` in `ns`.
    pub fn upsert(kind: Kind, ns: impl Into<String>, data: Value) -> Self {
        WriteOp {
            op: Op::Upsert,
            kind,
            ns: ns.into(),
            data: Some(data),
            id: None,
            model: None,
        }
    }

    /// A delete of the row `id` of `kind` in `ns`.
    pub fn delete(kind: Kind, ns: impl Into<String>, id: impl Into<String>) -> Self {
        WriteOp {
            op: Op::Delete,
            kind,
            ns: ns.into(),
            data: None,
            id: Some(id.into()),
            model: None,
        }
    }

    /// Parse one op from JSON text, with an error that says what was wrong.
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::invalid(format!("invalid write op: {e}")))
    }
}

/// Who sent a write, for an exactly-once upload: a client id, made once per replica and kept
/// with it, and that client's write number (1, 2, ...: its outbox order). A node applies each
/// (client, n) at most once: a write whose `n` is not above the last one it applied for that
/// client is answered from its record, not applied again.
///
/// One `write` may carry several consecutive client writes (`entries`: how many ops each has,
/// the last numbered `n`): they commit in one transaction, and those at or below the node's
/// record are skipped, so a batch sent again, or cut differently, still lands each write once.
///
/// A client id belongs to the principal that first wrote with it (issue 23): another
/// principal's write with that id is refused, and never answered from the record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The client id.
    pub client: String,
    /// The client's write number (of the last write, for a batch).
    pub n: i64,
    /// For a batch of consecutive writes: each one's op count, in order (empty: one write).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<u32>,
    /// Who the node that received the write knows the sender as (its token's name), set by
    /// the node's session, never sent: the client id is bound to it. None where the sender may
    /// write every namespace (an operator's token, an edge forwarding its clients' writes):
    /// such a writer is trusted with any client id and claims none.
    #[serde(skip)]
    pub principal: Option<String>,
}

impl Origin {
    /// Check an origin against the write it comes with: numbers start at 1, and a batch's op
    /// counts are each at least one and add up to the write's `ops`. Says what is wrong.
    pub fn check(&self, ops: usize) -> std::result::Result<(), String> {
        if self.n < 1 {
            return Err(format!(
                "`n` is {}: a client's write numbers start at 1",
                self.n
            ));
        }
        if self.entries.is_empty() {
            return Ok(());
        }
        if self.entries.contains(&0) {
            return Err("`entries`: every client write in a batch has at least one op".into());
        }
        let total: u64 = self.entries.iter().map(|&k| u64::from(k)).sum();
        if total != ops as u64 {
            return Err(format!(
                "`entries` counts {total} ops, the write has {ops}: they must be equal"
            ));
        }
        if self.entries.len() as i64 > self.n {
            return Err(format!(
                "`entries` holds {} client writes, but the last is numbered {}: numbers start at 1",
                self.entries.len(),
                self.n
            ));
        }
        Ok(())
    }
}

/// One entry of the change log, as stored in `changes` and sent on the wire.
///
/// `data` is the row image as JSON text (kept as text so the node encodes it once, without a
/// parse); for vectors the embedding travels beside it in `embedding`.
///
/// Its serde form is its binary wire form (`hivesync.v1.bin`, postcard): the field order is
/// the format, so fields are only ever appended. The JSON wire form is written by hand
/// ([`crate::protocol::encode_change_json`]): the row image goes out verbatim there.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct Change {
    /// Position in the log: gap-free, strictly increasing.
    pub seq: i64,
    /// Commit group: the seq of the first change of the transaction that wrote it.
    pub tx: i64,
    /// Commit time, microseconds since the Unix epoch.
    pub ts: i64,
    /// Namespace of the row.
    pub ns: String,
    /// Kind of the row.
    pub kind: Kind,
    /// Upsert or delete.
    pub op: Op,
    /// Row id (for vectors: the subject id).
    pub id: String,
    /// For vectors: the model, the second half of the key.
    pub model: Option<String>,
    /// Full row image as JSON text for upserts; `None` for deletes.
    pub data: Option<String>,
    /// For vector upserts: the embedding.
    pub embedding: Option<Vec<f32>>,
}

impl Change {
    /// An upper bound on this change's size inside a frame, in either encoding: its text
    /// fields as they are (the row image is JSON already and goes out verbatim) and at most 16
    /// bytes per embedding dimension (JSON's longest f32, with its comma), plus field names.
    pub(crate) fn frame_bytes(&self) -> usize {
        let text = self.ns.len()
            + self.id.len()
            + self.model.as_ref().map_or(0, String::len)
            + self.data.as_ref().map_or(0, String::len);
        text + self.embedding.as_ref().map_or(0, |e| e.len() * 16) + 128
    }
}

/// Encode an embedding as the little-endian f32 blob SQLite and sqlite-vec store.
pub fn embedding_to_blob(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    for x in v {
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// An embedding as base64 (standard alphabet, padded) of its packed little-endian f32: how
/// `hivesync.v1.json-b64` carries it, and a form `write` accepts beside a number array.
pub(crate) fn embedding_to_base64(v: &[f32]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(embedding_to_blob(v))
}

/// The embedding in a base64 string of packed little-endian f32.
pub(crate) fn embedding_from_base64(s: &str) -> crate::Result<Vec<f32>> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| crate::Error::invalid(format!("embedding is not base64: {e}")))?;
    blob_to_embedding(&bytes).ok_or_else(|| {
        crate::Error::invalid(format!(
            "embedding has {} bytes, not a whole number of f32",
            bytes.len()
        ))
    })
}

/// An embedding as JSON holds it, in a `write` or in a change of the JSON encodings: an array of
/// numbers, or a base64 string of packed little-endian f32 (decoded as it is read, with no copy
/// of the array in between; a number that does not fit an f32 is an error).
pub struct EmbeddingIn(pub Vec<f32>);

impl<'de> Deserialize<'de> for EmbeddingIn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = EmbeddingIn;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of numbers, or a base64 string of packed little-endian f32")
            }
            fn visit_str<E: serde::de::Error>(
                self,
                s: &str,
            ) -> std::result::Result<EmbeddingIn, E> {
                embedding_from_base64(s).map(EmbeddingIn).map_err(E::custom)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<EmbeddingIn, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(8192));
                while let Some(x) = seq.next_element::<f64>()? {
                    let f = x as f32;
                    if x.is_finite() && !f.is_finite() {
                        return Err(serde::de::Error::custom(format!(
                            "embedding value {} ({x}) does not fit in an f32",
                            v.len()
                        )));
                    }
                    v.push(f);
                }
                Ok(EmbeddingIn(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// Decode a little-endian f32 blob; `None` when its length is not a multiple of 4.
pub fn blob_to_embedding(b: &[u8]) -> Option<Vec<f32>> {
    if !b.len().is_multiple_of(4) {
        return None;
    }
    Some(
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn write_op_rejects_unknown_fields_and_kinds() {
        assert!(WriteOp::from_json(r#"{"op":"upsert","kind":"entity","data":{},"x":1}"#).is_err());
        let e = WriteOp::from_json(r#"{"op":"upsert","kind":"widget","data":{}}"#).unwrap_err();
        assert!(e.to_string().contains("widget"), "{e}");
        let op = WriteOp::from_json(r#"{"op":"delete","kind":"edge","id":"x1"}"#).unwrap();
        assert_eq!(op.ns, "default");
        assert_eq!(op.id.as_deref(), Some("x1"));
    }

    #[test]
    fn embedding_blob_roundtrip() {
        let v = vec![0.5f32, -1.25, 3.0];
        assert_eq!(blob_to_embedding(&embedding_to_blob(&v)).unwrap(), v);
        assert!(blob_to_embedding(&[1, 2, 3]).is_none());
    }
}
