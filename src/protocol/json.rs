//! The JSON encoding (`hivesync.v1.json`): hand-written encoders for the hot messages, serde
//! for the rest, and decoders with errors that say what was wrong.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::*;
use crate::error::{Error, Result};
use crate::model::{Change, Kind, Op};

pub(super) fn json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json writes a string with the escapes JSON needs; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// How the JSON encodings write an embedding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorForm {
    /// A JSON array of numbers (`hivesync.v1.json`).
    Array,
    /// A string: base64 (standard alphabet, padded) of the packed little-endian f32
    /// (`hivesync.v1.json-b64`).
    Base64,
}

pub(super) fn json_f32s(out: &mut Vec<u8>, v: &[f32]) {
    out.push(b'[');
    for (i, x) in v.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Checked finite at write time; a non-finite value would be invalid JSON, so write null.
        if x.is_finite() {
            let _ = serde_json::to_writer(&mut *out, x);
        } else {
            out.extend_from_slice(b"null");
        }
    }
    out.push(b']');
}

/// Append a change's JSON form: `{"seq":..,"tx":..,"ts":..,"ns":..,"kind":..,"op":..,"id":..,
/// ["model":..,]"data":{row image}|null}`. A vector's embedding goes inside `data`, as an array
/// of numbers.
pub fn encode_change_json(out: &mut Vec<u8>, c: &Change) {
    encode_change_json_as(out, c, VectorForm::Array)
}

/// [`encode_change_json`] with the embedding in `form`.
pub(crate) fn encode_change_json_as(out: &mut Vec<u8>, c: &Change, form: VectorForm) {
    use std::io::Write;
    let _ = write!(
        out,
        "{{\"seq\":{},\"tx\":{},\"ts\":{},\"ns\":",
        c.seq, c.tx, c.ts
    );
    json_str(out, &c.ns);
    let _ = write!(
        out,
        ",\"kind\":\"{}\",\"op\":\"{}\",\"id\":",
        c.kind.as_str(),
        c.op.as_str()
    );
    json_str(out, &c.id);
    if let Some(m) = &c.model {
        out.extend_from_slice(b",\"model\":");
        json_str(out, m);
    }
    out.extend_from_slice(b",\"data\":");
    match (&c.data, &c.embedding) {
        (None, _) => out.extend_from_slice(b"null"),
        (Some(d), None) => out.extend_from_slice(d.as_bytes()),
        (Some(d), Some(e)) => {
            // Splice the embedding in as the object's first member: `{"embedding":[..],...}`.
            let body = d.trim_start().strip_prefix('{').unwrap_or("}");
            out.extend_from_slice(b"{\"embedding\":");
            match form {
                VectorForm::Array => json_f32s(out, e),
                VectorForm::Base64 => {
                    out.push(b'"');
                    out.extend_from_slice(crate::model::embedding_to_base64(e).as_bytes());
                    out.push(b'"');
                }
            }
            if !body.trim_start().starts_with('}') {
                out.push(b',');
            }
            out.extend_from_slice(body.as_bytes());
        }
    }
    out.push(b'}');
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonChange<'a> {
    seq: i64,
    tx: i64,
    ts: i64,
    ns: String,
    kind: Kind,
    op: Op,
    id: String,
    #[serde(default)]
    model: Option<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
}

impl JsonChange<'_> {
    fn into_change(self) -> Result<Change> {
        let (data, embedding) = match self.data {
            None => (None, None),
            Some(raw) if raw.get() == "null" => (None, None),
            Some(raw) if self.kind == Kind::Vector => {
                let mut obj: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(raw.get()).map_err(|e| {
                        Error::invalid(format!(
                            "change {}: vector data is not an object: {e}",
                            self.seq
                        ))
                    })?;
                // Either form: an array of numbers, or base64 of packed little-endian f32.
                let emb = obj
                    .remove("embedding")
                    .map(|v| crate::model::EmbeddingIn::deserialize(&v))
                    .transpose()
                    .map_err(|e| {
                        Error::invalid(format!("change {}: bad embedding: {e}", self.seq))
                    })?
                    .map(|e| e.0);
                (Some(serde_json::to_string(&obj)?), emb)
            }
            Some(raw) => (Some(raw.get().to_string()), None),
        };
        Ok(Change {
            seq: self.seq,
            tx: self.tx,
            ts: self.ts,
            ns: self.ns,
            kind: self.kind,
            op: self.op,
            id: self.id,
            model: self.model,
            data,
            embedding,
        })
    }
}

/// Decode one change in its JSON form (what [`encode_change_json`] writes: a NATS message's
/// payload, for one).
pub(crate) fn decode_change_json(bytes: &[u8]) -> Result<Change> {
    serde_json::from_slice::<JsonChange<'_>>(bytes)
        .map_err(|e| Error::invalid(format!("malformed change: {e}")))?
        .into_change()
}

/// The names a node message's JSON object may hold (any message: they are checked per type).
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Field {
    Type,
    Protocol,
    Node,
    Head,
    Horizon,
    Sub,
    At,
    Rows,
    Done,
    Prev,
    Changes,
    Seq,
    Req,
    Code,
    Message,
}

/// Reads a node message's JSON object into [`ServerMsg`]. Internally tagged enums buffer
/// their content, which loses the borrowed row images, so this reads the object's members in
/// any order, then checks them against its `type`.
struct ServerJson;

impl<'de> serde::de::Visitor<'de> for ServerJson {
    type Value = ServerMsg;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a node message: a JSON object with a `type`")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ServerMsg, A::Error> {
        use serde::de::Error as _;
        let (mut ty, mut protocol, mut node, mut head, mut horizon) =
            (None, None, None, None, None);
        let (mut sub, mut at, mut rows, mut done, mut prev) = (None, None, None, None, None);
        let (mut changes, mut seq, mut req, mut code, mut message) = (None, None, None, None, None);
        fn set<'de, A: serde::de::MapAccess<'de>, T: Deserialize<'de>>(
            map: &mut A,
            slot: &mut Option<T>,
            name: &'static str,
        ) -> Result<(), A::Error> {
            if slot.is_some() {
                return Err(A::Error::duplicate_field(name));
            }
            *slot = map.next_value()?;
            Ok(())
        }
        while let Some(k) = map.next_key::<Field>()? {
            match k {
                Field::Type => set(&mut map, &mut ty, "type")?,
                Field::Protocol => set(&mut map, &mut protocol, "protocol")?,
                Field::Node => set(&mut map, &mut node, "node")?,
                Field::Head => set(&mut map, &mut head, "head")?,
                Field::Horizon => set(&mut map, &mut horizon, "horizon")?,
                Field::Sub => set(&mut map, &mut sub, "sub")?,
                Field::At => set(&mut map, &mut at, "at")?,
                Field::Rows => set::<_, Vec<JsonChange<'de>>>(&mut map, &mut rows, "rows")?,
                Field::Done => set(&mut map, &mut done, "done")?,
                Field::Prev => set(&mut map, &mut prev, "prev")?,
                Field::Changes => {
                    set::<_, Vec<JsonChange<'de>>>(&mut map, &mut changes, "changes")?
                }
                Field::Seq => set(&mut map, &mut seq, "seq")?,
                Field::Req => set(&mut map, &mut req, "req")?,
                Field::Code => set(&mut map, &mut code, "code")?,
                Field::Message => set(&mut map, &mut message, "message")?,
            }
        }
        let ty: String = ty.ok_or_else(|| A::Error::missing_field("type"))?;
        fn need<T, E: serde::de::Error>(v: Option<T>, ty: &str, field: &str) -> Result<T, E> {
            v.ok_or_else(|| E::custom(format!("`{ty}` without `{field}`")))
        }
        let list =
            |v: Option<Vec<JsonChange<'de>>>, field: &str| -> Result<Vec<Change>, A::Error> {
                need::<_, A::Error>(v, &ty, field)?
                    .into_iter()
                    .map(|c| c.into_change().map_err(A::Error::custom))
                    .collect()
            };
        Ok(match ty.as_str() {
            "welcome" => ServerMsg::Welcome {
                protocol: need(protocol, &ty, "protocol")?,
                node: need(node, &ty, "node")?,
                head: need(head, &ty, "head")?,
                horizon: need(horizon, &ty, "horizon")?,
                publish_key: None,
            },
            "snapshot" => ServerMsg::Snapshot {
                sub: need(sub, &ty, "sub")?,
                at: need(at, &ty, "at")?,
                rows: list(rows, "rows")?,
                done: need(done, &ty, "done")?,
            },
            "changes" => ServerMsg::Changes {
                sub: need(sub, &ty, "sub")?,
                prev: need(prev, &ty, "prev")?,
                changes: list(changes, "changes")?,
            },
            "live" => ServerMsg::Live {
                sub: need(sub, &ty, "sub")?,
                seq: need(seq, &ty, "seq")?,
            },
            "written" => ServerMsg::Written {
                req: need(req, &ty, "req")?,
                seq: need(seq, &ty, "seq")?,
            },
            "error" => ServerMsg::Error(ErrorMsg {
                code: need(code, &ty, "code")?,
                message: need(message, &ty, "message")?,
                sub,
                req,
            }),
            other => {
                return Err(A::Error::custom(format!(
                    "unknown message type {other:?} from node"
                )))
            }
        })
    }
}

fn json_changes(out: &mut Vec<u8>, changes: &[Change], form: VectorForm) {
    out.push(b'[');
    for (i, c) in changes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        encode_change_json_as(out, c, form);
    }
    out.push(b']');
}

/// Encode a node message as JSON text (`hivesync.v1.json`).
pub fn encode_server_json(m: &ServerMsg) -> String {
    encode_server_json_as(m, VectorForm::Array)
}

/// Encode a node message as JSON text with embeddings in `form`.
pub(crate) fn encode_server_json_as(m: &ServerMsg, form: VectorForm) -> String {
    use std::io::Write;
    let mut out = Vec::with_capacity(128);
    match m {
        ServerMsg::Welcome {
            protocol,
            node,
            head,
            horizon,
            ..
        } => {
            let _ = write!(
                out,
                "{{\"type\":\"welcome\",\"protocol\":{protocol},\"node\":"
            );
            json_str(&mut out, node);
            let _ = write!(out, ",\"head\":{head},\"horizon\":{horizon}}}");
        }
        ServerMsg::Snapshot {
            sub,
            at,
            rows,
            done,
        } => {
            out.extend_from_slice(b"{\"type\":\"snapshot\",\"sub\":");
            json_str(&mut out, sub);
            let _ = write!(out, ",\"at\":{at},\"rows\":");
            json_changes(&mut out, rows, form);
            let _ = write!(out, ",\"done\":{done}}}");
        }
        ServerMsg::Changes { sub, prev, changes } => {
            out.extend_from_slice(b"{\"type\":\"changes\",\"sub\":");
            json_str(&mut out, sub);
            let _ = write!(out, ",\"prev\":{prev},\"changes\":");
            json_changes(&mut out, changes, form);
            out.push(b'}');
        }
        ServerMsg::Live { sub, seq } => {
            out.extend_from_slice(b"{\"type\":\"live\",\"sub\":");
            json_str(&mut out, sub);
            let _ = write!(out, ",\"seq\":{seq}}}");
        }
        ServerMsg::Written { req, seq } => {
            out.extend_from_slice(b"{\"type\":\"written\",\"req\":");
            json_str(&mut out, req);
            let _ = write!(out, ",\"seq\":{seq}}}");
        }
        ServerMsg::Error(e) => {
            let _ = write!(
                out,
                "{{\"type\":\"error\",\"code\":\"{}\",\"message\":",
                e.code.as_str()
            );
            json_str(&mut out, &e.message);
            for (name, v) in [("sub", &e.sub), ("req", &e.req)] {
                if let Some(v) = v {
                    let _ = write!(out, ",\"{name}\":");
                    json_str(&mut out, v);
                }
            }
            out.push(b'}');
        }
    }
    // Every byte written above is UTF-8: ASCII punctuation and serde_json's output.
    String::from_utf8(out).expect("JSON frames are UTF-8 by construction")
}

/// Decode a node message from JSON text (client side).
pub fn decode_server_json(text: &str) -> Result<ServerMsg> {
    use serde::Deserializer as _;
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(ServerJson)
        .and_then(|m| de.end().map(|()| m))
        .map_err(|e| Error::invalid(format!("malformed message from node: {e}")))
}

/// Encode a client message as JSON text.
pub fn encode_client_json(m: &ClientMsg) -> String {
    // Infallible: the message types hold strings, numbers and JSON values only.
    serde_json::to_string(m).expect("a client message always encodes")
}

/// Decode a client message from JSON text, with an error that says what was wrong.
pub fn decode_client_json(text: &str) -> Result<ClientMsg> {
    serde_json::from_str(text).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("unknown variant") {
            // serde names the variants it expected: say which enum the bad name was for.
            let what = if msg.contains("`hello`") {
                "unknown message type"
            } else if msg.contains("`entity`") {
                "unknown kind"
            } else if msg.contains("`upsert`") {
                "unknown op"
            } else {
                "unknown name"
            };
            Error::invalid(format!("{what}: {msg}"))
        } else if e.is_syntax() || e.is_eof() {
            Error::invalid(format!("malformed JSON: {msg}"))
        } else {
            Error::invalid(format!("invalid message: {msg}"))
        }
    })
}
