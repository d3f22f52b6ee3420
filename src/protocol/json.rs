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
/// ["model":..,]"data":{row image}|null}`. A vector's embedding goes inside `data`.
pub fn encode_change_json(out: &mut Vec<u8>, c: &Change) {
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
            json_f32s(out, e);
            if !body.trim_start().starts_with('}') {
                out.push(b',');
            }
            out.extend_from_slice(body.as_bytes());
        }
    }
    out.push(b'}');
}

/// A change as a `serde_json::Value` (for tools that print changes).
pub fn change_to_json(c: &Change) -> serde_json::Value {
    let mut buf = Vec::new();
    encode_change_json(&mut buf, c);
    serde_json::from_slice(&buf).unwrap_or(serde_json::Value::Null)
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
                let emb = obj
                    .remove("embedding")
                    .map(serde_json::from_value::<Vec<f32>>)
                    .transpose()
                    .map_err(|e| {
                        Error::invalid(format!("change {}: bad embedding: {e}", self.seq))
                    })?;
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

/// Every field any node message has: internally tagged enums buffer their content, which
/// loses borrowed raw JSON, so the decoder reads one flat object and checks it per type.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonServerAny<'a> {
    #[serde(rename = "type")]
    ty: String,
    protocol: Option<u32>,
    node: Option<String>,
    head: Option<i64>,
    horizon: Option<i64>,
    sub: Option<String>,
    at: Option<i64>,
    #[serde(borrow)]
    rows: Option<Vec<JsonChange<'a>>>,
    done: Option<bool>,
    prev: Option<i64>,
    #[serde(borrow)]
    changes: Option<Vec<JsonChange<'a>>>,
    seq: Option<i64>,
    req: Option<String>,
    code: Option<ErrorCode>,
    message: Option<String>,
}

fn need<T>(v: Option<T>, ty: &str, field: &str) -> Result<T> {
    v.ok_or_else(|| {
        Error::invalid(format!(
            "malformed message from node: `{ty}` without `{field}`"
        ))
    })
}

fn json_changes(out: &mut Vec<u8>, changes: &[Change]) {
    out.push(b'[');
    for (i, c) in changes.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        encode_change_json(out, c);
    }
    out.push(b']');
}

/// Encode a node message as JSON text.
pub fn encode_server_json(m: &ServerMsg) -> String {
    use std::io::Write;
    let mut out = Vec::with_capacity(128);
    match m {
        ServerMsg::Welcome {
            protocol,
            node,
            head,
            horizon,
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
            json_changes(&mut out, rows);
            let _ = write!(out, ",\"done\":{done}}}");
        }
        ServerMsg::Changes { sub, prev, changes } => {
            out.extend_from_slice(b"{\"type\":\"changes\",\"sub\":");
            json_str(&mut out, sub);
            let _ = write!(out, ",\"prev\":{prev},\"changes\":");
            json_changes(&mut out, changes);
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
            // Infallible: strings and an enum, no maps with non-string keys.
            let mut v = serde_json::to_value(e).expect("an error message always encodes");
            if let Some(o) = v.as_object_mut() {
                o.insert("type".into(), "error".into());
            }
            out = serde_json::to_vec(&v).expect("a JSON value always encodes");
        }
    }
    // Every byte written above is UTF-8: ASCII punctuation and serde_json's output.
    String::from_utf8(out).expect("JSON frames are UTF-8 by construction")
}

/// Decode a node message from JSON text (client side).
pub fn decode_server_json(text: &str) -> Result<ServerMsg> {
    let m: JsonServerAny<'_> = serde_json::from_str(text)
        .map_err(|e| Error::invalid(format!("malformed message from node: {e}")))?;
    let ty = m.ty.as_str();
    let changes = |v: Option<Vec<JsonChange<'_>>>, f: &str| -> Result<Vec<Change>> {
        need(v, ty, f)?
            .into_iter()
            .map(JsonChange::into_change)
            .collect()
    };
    Ok(match ty {
        "welcome" => ServerMsg::Welcome {
            protocol: need(m.protocol, ty, "protocol")?,
            node: need(m.node, ty, "node")?,
            head: need(m.head, ty, "head")?,
            horizon: need(m.horizon, ty, "horizon")?,
        },
        "snapshot" => ServerMsg::Snapshot {
            sub: need(m.sub, ty, "sub")?,
            at: need(m.at, ty, "at")?,
            rows: changes(m.rows, "rows")?,
            done: need(m.done, ty, "done")?,
        },
        "changes" => ServerMsg::Changes {
            sub: need(m.sub, ty, "sub")?,
            prev: need(m.prev, ty, "prev")?,
            changes: changes(m.changes, "changes")?,
        },
        "live" => ServerMsg::Live {
            sub: need(m.sub, ty, "sub")?,
            seq: need(m.seq, ty, "seq")?,
        },
        "written" => ServerMsg::Written {
            req: need(m.req, ty, "req")?,
            seq: need(m.seq, ty, "seq")?,
        },
        "error" => ServerMsg::Error(ErrorMsg {
            code: need(m.code, ty, "code")?,
            message: need(m.message, ty, "message")?,
            sub: m.sub,
            req: m.req,
        }),
        other => {
            return Err(Error::invalid(format!(
                "unknown message type {other:?} from node"
            )))
        }
    })
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
