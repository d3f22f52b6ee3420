//! Wire protocol v1: the messages, their two encodings, and the session state machine.
//!
//! No I/O here (sans-IO): the node's WebSocket shell feeds frames in and carries out the
//! [`Action`]s that come back; the wasm sync client uses the same codecs. Two subprotocols:
//! - `hivesync.v1.json`: text frames, each a JSON object with a `type` (the default);
//! - `hivesync.v1.bin`: binary frames, the same messages encoded with postcard, embeddings
//!   as raw f32 and row images as JSON text.
//!
//! Fan-out encodes each change once per encoding ([`encode_change_json`],
//! [`encode_change_bin`]) and assembles a batch frame from the shared fragments
//! ([`changes_frame`]), so the cost per extra subscriber is a copy, not an encode.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{Error, Result};
use crate::model::{Change, Kind, Op, WriteOp};
use crate::query::ChangeFilter;

/// The protocol version in `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;
/// JSON subprotocol name.
pub const SUBPROTOCOL_JSON: &str = "hivesync.v1.json";
/// Binary (postcard) subprotocol name.
pub const SUBPROTOCOL_BIN: &str = "hivesync.v1.bin";
/// Largest frame a node or client accepts: room for a write of a few 1 MiB rows, small enough
/// that a hostile client cannot make the node buffer much.
pub const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;
/// A node starts a new `snapshot` or `changes` frame once one holds this many bytes: a frame
/// is one allocation per subscriber, and a client applies a frame as one transaction.
pub const FRAME_SPLIT_BYTES: usize = 1024 * 1024;
/// The largest frame any hivesync client accepts from a node (the relay, `watch`, the
/// browser, the tests), and so the most a node ever sends. A node's frames stay near
/// [`FRAME_SPLIT_BYTES`]; only a single change larger than that goes out alone, and the row
/// limits (1 MiB of text, 1 MiB of JSON properties, 8,192 dimensions) keep any one change far
/// below this, however its text escapes.
pub const MAX_SERVER_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// Most bytes a client may send before its `hello` is accepted: a hello (a token and a client
/// name) fits in a few KiB, and a stranger must not make the node buffer 8 MiB frames.
pub const MAX_PRE_HELLO_BYTES: usize = 16 * 1024;
/// Most ops in one `write`.
pub const MAX_OPS_PER_WRITE: usize = 10_000;
/// Longest `sub` or `req` id.
pub const MAX_CLIENT_ID: usize = 128;
/// Most subscriptions one connection may hold.
pub const MAX_SUBS_PER_CONNECTION: usize = 64;

/// Which encoding a connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `hivesync.v1.json`
    Json,
    /// `hivesync.v1.bin`
    Bin,
}

impl Encoding {
    /// Pick the encoding from the subprotocols a client offered (JSON when none).
    pub fn negotiate<'a>(offered: impl IntoIterator<Item = &'a str>) -> Option<Encoding> {
        let mut any = false;
        for p in offered {
            any = true;
            match p.trim() {
                SUBPROTOCOL_JSON => return Some(Encoding::Json),
                SUBPROTOCOL_BIN => return Some(Encoding::Bin),
                _ => {}
            }
        }
        if any {
            None
        } else {
            Some(Encoding::Json)
        }
    }

    /// The subprotocol name.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Json => SUBPROTOCOL_JSON,
            Encoding::Bin => SUBPROTOCOL_BIN,
        }
    }
}

/// Error codes of the `error` message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Missing or wrong token.
    Unauthorized,
    /// The token may not read or write that namespace.
    Forbidden,
    /// The message is malformed or not allowed now.
    BadRequest,
    /// The message is too large.
    TooLarge,
    /// The node is shedding load, or the client is too slow.
    Overloaded,
    /// The node failed.
    Internal,
}

impl ErrorCode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A subscription request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subscribe {
    /// Client-chosen subscription id.
    pub sub: String,
    /// Last seq the client applied (0: from the beginning); absent: snapshot, then live.
    #[serde(default)]
    pub from: Option<i64>,
    /// Namespaces wanted; all readable ones when absent.
    #[serde(default)]
    pub namespaces: Option<Vec<String>>,
    /// Kinds wanted; all when absent.
    #[serde(default)]
    pub kinds: Option<Vec<Kind>>,
}

/// Client to node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientMsg {
    /// First message of a connection.
    Hello {
        /// Bearer token; may be omitted where anonymous access is allowed.
        #[serde(default)]
        token: Option<String>,
        /// Free-form client name, for logs.
        #[serde(default)]
        client: Option<String>,
    },
    /// Start a subscription.
    Subscribe(Subscribe),
    /// Apply ops in one transaction.
    Write {
        /// Client-chosen request id, echoed in `written` / `error`.
        req: String,
        /// The ops.
        ops: Vec<WriteOp>,
    },
    /// End a subscription.
    Unsubscribe {
        /// Its id.
        sub: String,
    },
    /// The client has applied up to `seq` (for lag accounting).
    Ack {
        /// Subscription id.
        sub: String,
        /// Last seq applied.
        seq: i64,
    },
}

/// An `error` message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorMsg {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// What went wrong and what to do.
    pub message: String,
    /// The subscription it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The write request it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub req: Option<String>,
}

impl ErrorMsg {
    /// An error with no sub or req.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorMsg {
            code,
            message: message.into(),
            sub: None,
            req: None,
        }
    }
}

/// Node to client. (The binary encoding relies on this variant order: append only.)
#[derive(Clone, Debug, PartialEq)]
pub enum ServerMsg {
    /// Answer to `hello`.
    Welcome {
        /// Protocol version.
        protocol: u32,
        /// Node name.
        node: String,
        /// Last seq in the log.
        head: i64,
        /// Oldest seq kept in the log.
        horizon: i64,
    },
    /// A chunk of a snapshot.
    Snapshot {
        /// Subscription id.
        sub: String,
        /// The seq the snapshot was taken at.
        at: i64,
        /// Rows, as upsert changes.
        rows: Vec<Change>,
        /// True on the last chunk.
        done: bool,
    },
    /// A batch of changes, ascending, never splitting a transaction.
    Changes {
        /// Subscription id.
        sub: String,
        /// The seq this batch continues from.
        prev: i64,
        /// The changes.
        changes: Vec<Change>,
    },
    /// Caught up: what follows is live.
    Live {
        /// Subscription id.
        sub: String,
        /// The seq the subscription is caught up to.
        seq: i64,
    },
    /// A write committed.
    Written {
        /// Request id.
        req: String,
        /// Last seq of the write.
        seq: i64,
    },
    /// Something failed.
    Error(ErrorMsg),
}

// ---------------------------------------------------------------- JSON encoding

fn json_str(out: &mut Vec<u8>, s: &str) {
    // serde_json writes a string with the escapes JSON needs; writing to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn json_f32s(out: &mut Vec<u8>, v: &[f32]) {
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
            let mut v = serde_json::to_value(e).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("type".into(), "error".into());
            }
            out = serde_json::to_vec(&v).unwrap_or_default();
        }
    }
    // Every byte written above is UTF-8: ASCII punctuation and serde_json's output.
    String::from_utf8(out).unwrap_or_default()
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
    serde_json::to_string(m).unwrap_or_default()
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

// ---------------------------------------------------------------- binary encoding

/// A write op in binary form: the row as JSON text (postcard cannot carry free-form JSON).
#[derive(Serialize, Deserialize)]
struct BinWriteOp {
    op: Op,
    kind: Kind,
    ns: String,
    data: Option<String>,
    id: Option<String>,
    model: Option<String>,
}

#[derive(Serialize, Deserialize)]
enum BinClientMsg {
    Hello {
        token: Option<String>,
        client: Option<String>,
    },
    Subscribe(Subscribe),
    Write {
        req: String,
        ops: Vec<BinWriteOp>,
    },
    Unsubscribe {
        sub: String,
    },
    Ack {
        sub: String,
        seq: i64,
    },
}

/// Binary form of a change: field order is the wire format.
#[derive(Serialize)]
struct BinChange<'a> {
    seq: i64,
    tx: i64,
    ts: i64,
    ns: &'a str,
    kind: Kind,
    op: Op,
    id: &'a str,
    model: Option<&'a str>,
    data: Option<&'a str>,
    embedding: Option<&'a [f32]>,
}

#[derive(Deserialize)]
struct BinChangeOwned {
    seq: i64,
    tx: i64,
    ts: i64,
    ns: String,
    kind: Kind,
    op: Op,
    id: String,
    model: Option<String>,
    data: Option<String>,
    embedding: Option<Vec<f32>>,
}

impl From<BinChangeOwned> for Change {
    fn from(b: BinChangeOwned) -> Change {
        Change {
            seq: b.seq,
            tx: b.tx,
            ts: b.ts,
            ns: b.ns,
            kind: b.kind,
            op: b.op,
            id: b.id,
            model: b.model,
            data: b.data,
            embedding: b.embedding,
        }
    }
}

fn bin_change(c: &Change) -> BinChange<'_> {
    BinChange {
        seq: c.seq,
        tx: c.tx,
        ts: c.ts,
        ns: &c.ns,
        kind: c.kind,
        op: c.op,
        id: &c.id,
        model: c.model.as_deref(),
        data: c.data.as_deref(),
        embedding: c.embedding.as_deref(),
    }
}

#[derive(Serialize)]
enum BinServerRef<'a> {
    Welcome {
        protocol: u32,
        node: &'a str,
        head: i64,
        horizon: i64,
    },
    Snapshot {
        sub: &'a str,
        at: i64,
        rows: Vec<BinChange<'a>>,
        done: bool,
    },
    Changes {
        sub: &'a str,
        prev: i64,
        changes: Vec<BinChange<'a>>,
    },
    Live {
        sub: &'a str,
        seq: i64,
    },
    Written {
        req: &'a str,
        seq: i64,
    },
    Error {
        code: ErrorCode,
        message: &'a str,
        sub: Option<&'a str>,
        req: Option<&'a str>,
    },
}

#[derive(Deserialize)]
enum BinServerOwned {
    Welcome {
        protocol: u32,
        node: String,
        head: i64,
        horizon: i64,
    },
    Snapshot {
        sub: String,
        at: i64,
        rows: Vec<BinChangeOwned>,
        done: bool,
    },
    Changes {
        sub: String,
        prev: i64,
        changes: Vec<BinChangeOwned>,
    },
    Live {
        sub: String,
        seq: i64,
    },
    Written {
        req: String,
        seq: i64,
    },
    Error {
        code: ErrorCode,
        message: String,
        sub: Option<String>,
        req: Option<String>,
    },
}

/// Postcard's variant index of `Changes` in the server enum (see [`changes_frame`]).
const BIN_CHANGES_VARIANT: u32 = 2;

/// Append a change's binary form.
pub fn encode_change_bin(out: &mut Vec<u8>, c: &Change) {
    if let Ok(v) = postcard::to_extend(&bin_change(c), std::mem::take(out)) {
        *out = v;
    }
}

/// Encode a node message in binary.
pub fn encode_server_bin(m: &ServerMsg) -> Vec<u8> {
    let r = match m {
        ServerMsg::Welcome {
            protocol,
            node,
            head,
            horizon,
        } => BinServerRef::Welcome {
            protocol: *protocol,
            node,
            head: *head,
            horizon: *horizon,
        },
        ServerMsg::Snapshot {
            sub,
            at,
            rows,
            done,
        } => BinServerRef::Snapshot {
            sub,
            at: *at,
            rows: rows.iter().map(bin_change).collect(),
            done: *done,
        },
        ServerMsg::Changes { sub, prev, changes } => BinServerRef::Changes {
            sub,
            prev: *prev,
            changes: changes.iter().map(bin_change).collect(),
        },
        ServerMsg::Live { sub, seq } => BinServerRef::Live { sub, seq: *seq },
        ServerMsg::Written { req, seq } => BinServerRef::Written { req, seq: *seq },
        ServerMsg::Error(e) => BinServerRef::Error {
            code: e.code,
            message: &e.message,
            sub: e.sub.as_deref(),
            req: e.req.as_deref(),
        },
    };
    postcard::to_allocvec(&r).unwrap_or_default()
}

/// Decode a node message from binary (client side).
pub fn decode_server_bin(bytes: &[u8]) -> Result<ServerMsg> {
    let m: BinServerOwned = postcard::from_bytes(bytes)
        .map_err(|e| Error::invalid(format!("malformed binary message from node: {e}")))?;
    Ok(match m {
        BinServerOwned::Welcome {
            protocol,
            node,
            head,
            horizon,
        } => ServerMsg::Welcome {
            protocol,
            node,
            head,
            horizon,
        },
        BinServerOwned::Snapshot {
            sub,
            at,
            rows,
            done,
        } => ServerMsg::Snapshot {
            sub,
            at,
            rows: rows.into_iter().map(Change::from).collect(),
            done,
        },
        BinServerOwned::Changes { sub, prev, changes } => ServerMsg::Changes {
            sub,
            prev,
            changes: changes.into_iter().map(Change::from).collect(),
        },
        BinServerOwned::Live { sub, seq } => ServerMsg::Live { sub, seq },
        BinServerOwned::Written { req, seq } => ServerMsg::Written { req, seq },
        BinServerOwned::Error {
            code,
            message,
            sub,
            req,
        } => ServerMsg::Error(ErrorMsg {
            code,
            message,
            sub,
            req,
        }),
    })
}

/// Encode a client message in binary.
pub fn encode_client_bin(m: &ClientMsg) -> Vec<u8> {
    let b = match m.clone() {
        ClientMsg::Hello { token, client } => BinClientMsg::Hello { token, client },
        ClientMsg::Subscribe(s) => BinClientMsg::Subscribe(s),
        ClientMsg::Write { req, ops } => BinClientMsg::Write {
            req,
            ops: ops
                .into_iter()
                .map(|o| BinWriteOp {
                    op: o.op,
                    kind: o.kind,
                    ns: o.ns,
                    data: o.data.map(|d| d.to_string()),
                    id: o.id,
                    model: o.model,
                })
                .collect(),
        },
        ClientMsg::Unsubscribe { sub } => BinClientMsg::Unsubscribe { sub },
        ClientMsg::Ack { sub, seq } => BinClientMsg::Ack { sub, seq },
    };
    postcard::to_allocvec(&b).unwrap_or_default()
}

/// Decode a client message from binary, with an error that says what was wrong.
pub fn decode_client_bin(bytes: &[u8]) -> Result<ClientMsg> {
    let b: BinClientMsg = postcard::from_bytes(bytes)
        .map_err(|e| Error::invalid(format!("malformed binary message: {e}")))?;
    Ok(match b {
        BinClientMsg::Hello { token, client } => ClientMsg::Hello { token, client },
        BinClientMsg::Subscribe(s) => ClientMsg::Subscribe(s),
        BinClientMsg::Write { req, ops } => ClientMsg::Write {
            req,
            ops: ops
                .into_iter()
                .enumerate()
                .map(|(i, o)| {
                    // `"data":null` in JSON decodes as no data; so must its binary form.
                    let data = o
                        .data
                        .map(|d| serde_json::from_str::<serde_json::Value>(&d))
                        .transpose()
                        .map_err(|e| {
                            Error::invalid(format!("op {i}: `data` is not valid JSON: {e}"))
                        })?
                        .filter(|v| !v.is_null());
                    Ok(WriteOp {
                        op: o.op,
                        kind: o.kind,
                        ns: o.ns,
                        data,
                        id: o.id,
                        model: o.model,
                    })
                })
                .collect::<Result<_>>()?,
        },
        BinClientMsg::Unsubscribe { sub } => ClientMsg::Unsubscribe { sub },
        BinClientMsg::Ack { sub, seq } => ClientMsg::Ack { sub, seq },
    })
}

/// Encode a node message in the given encoding: text for JSON, bytes for binary.
pub fn encode_server(enc: Encoding, m: &ServerMsg) -> Frame {
    match enc {
        Encoding::Json => Frame::Text(encode_server_json(m)),
        Encoding::Bin => Frame::Binary(encode_server_bin(m)),
    }
}

/// An encoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A text frame (JSON).
    Text(String),
    /// A binary frame (postcard).
    Binary(Vec<u8>),
}

/// Assemble a `changes` frame from changes already encoded one by one in `enc` (JSON
/// fragments or postcard fragments), without re-encoding them. The frame is allocated once at
/// its exact size (growing it by doubling was two thirds of the fan-out's own CPU time).
pub fn changes_frame<'a>(
    enc: Encoding,
    sub: &str,
    prev: i64,
    parts: impl ExactSizeIterator<Item = &'a [u8]> + Clone,
) -> Frame {
    let body: usize = parts.clone().map(|p| p.len() + 1).sum();
    let mut out = changes_frame_head(enc, sub, prev, parts.len(), body);
    for (i, p) in parts.enumerate() {
        if enc == Encoding::Json && i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(p);
    }
    changes_frame_end(enc, out)
}

/// Encode `changes` straight into one `changes` frame in `enc` only (the catch-up path, where
/// no other subscriber shares the encoding).
pub fn changes_frame_of<'a>(
    enc: Encoding,
    sub: &str,
    prev: i64,
    changes: impl ExactSizeIterator<Item = &'a Change>,
) -> Frame {
    let n = changes.len();
    let mut out = changes_frame_head(enc, sub, prev, n, n * 320);
    for (i, c) in changes.enumerate() {
        match enc {
            Encoding::Json => {
                if i > 0 {
                    out.push(b',');
                }
                encode_change_json(&mut out, c);
            }
            Encoding::Bin => encode_change_bin(&mut out, c),
        }
    }
    changes_frame_end(enc, out)
}

fn changes_frame_head(enc: Encoding, sub: &str, prev: i64, n: usize, body: usize) -> Vec<u8> {
    match enc {
        Encoding::Json => {
            use std::io::Write;
            let mut out = Vec::with_capacity(64 + sub.len() * 2 + body);
            out.extend_from_slice(b"{\"type\":\"changes\",\"sub\":");
            json_str(&mut out, sub);
            let _ = write!(out, ",\"prev\":{prev},\"changes\":[");
            out
        }
        Encoding::Bin => {
            let out = Vec::with_capacity(32 + sub.len() + body);
            postcard::to_extend(&(BIN_CHANGES_VARIANT, sub, prev, n), out).unwrap_or_default()
        }
    }
}

fn changes_frame_end(enc: Encoding, mut out: Vec<u8>) -> Frame {
    match enc {
        Encoding::Json => {
            out.extend_from_slice(b"]}");
            Frame::Text(String::from_utf8(out).unwrap_or_default())
        }
        Encoding::Bin => Frame::Binary(out),
    }
}

// ---------------------------------------------------------------- auth model

/// Namespace patterns a token may use: exact names, `prefix*`, or `*` for all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Scope(pub Vec<String>);

impl Scope {
    /// Every namespace.
    pub fn all() -> Self {
        Scope(vec!["*".into()])
    }

    /// True when `ns` matches a pattern.
    pub fn allows(&self, ns: &str) -> bool {
        self.0.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => ns.starts_with(prefix),
            None => p == ns,
        })
    }

    /// True when every namespace matches.
    pub fn is_all(&self) -> bool {
        self.0.iter().any(|p| p == "*")
    }
}

/// Who a connection is, after `hello`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Token name (or `anonymous`).
    pub name: String,
    /// Namespaces it may read.
    pub read: Scope,
    /// Namespaces it may write.
    pub write: Scope,
}

/// Why a `hello` was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthError(pub String);

/// Token lookup, supplied by the node (pure data: no I/O in the session).
pub trait Authorizer {
    /// The principal for `token` (None: anonymous).
    fn authenticate(&self, token: Option<&str>) -> std::result::Result<Principal, AuthError>;
}

// ---------------------------------------------------------------- the session state machine

/// What the shell must do after a frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Send this message.
    Send(ServerMsg),
    /// Send `welcome` (the shell knows head and horizon).
    Welcome,
    /// Start a subscription. `filter.namespaces` is what the client asked for; `read` is the
    /// principal's scope, which every change must also pass.
    Subscribe {
        /// Subscription id.
        sub: String,
        /// Cursor (None: snapshot first).
        from: Option<i64>,
        /// Namespaces and kinds asked for.
        filter: ChangeFilter,
        /// What the principal may read.
        read: Scope,
    },
    /// Stop a subscription.
    Unsubscribe {
        /// Subscription id.
        sub: String,
    },
    /// Commit these ops and answer `written` or `error` with `req`.
    Write {
        /// Request id.
        req: String,
        /// The ops (already checked against the write scope).
        ops: Vec<WriteOp>,
    },
    /// Record an acknowledgement.
    Ack {
        /// Subscription id.
        sub: String,
        /// Last seq applied.
        seq: i64,
    },
    /// The principal's read scope changed (a config reload): every subscription of the
    /// connection filters its next changes with this one.
    Rescope {
        /// What the principal may read now.
        read: Scope,
    },
    /// Close the connection (after sending what came before).
    Close {
        /// The WebSocket close code ([`CLOSE_POLICY`], [`CLOSE_INVALID_DATA`],
        /// [`CLOSE_TOO_BIG`]).
        code: u16,
        /// Why, for the close frame.
        reason: String,
    },
}

/// One connection's protocol state.
#[derive(Debug)]
pub struct Session {
    encoding: Encoding,
    principal: Option<Principal>,
    /// The token the principal was granted for, re-checked by [`Session::reauthorize`].
    token: Option<String>,
    subs: std::collections::HashSet<String>,
}

fn err(code: ErrorCode, message: impl Into<String>) -> Action {
    Action::Send(ServerMsg::Error(ErrorMsg::new(code, message)))
}

/// WebSocket close code 1008: the client broke a rule (no or wrong credentials, no hello).
pub const CLOSE_POLICY: u16 = 1008;
/// WebSocket close code 1007: a text frame that is not UTF-8.
pub const CLOSE_INVALID_DATA: u16 = 1007;
/// WebSocket close code 1009: more bytes than allowed.
pub const CLOSE_TOO_BIG: u16 = 1009;

/// The error, then the close: what ends a connection on the client's fault.
fn fail_and_close(code: ErrorCode, message: String, close: u16, reason: &str) -> Vec<Action> {
    vec![
        err(code, message),
        Action::Close {
            code: close,
            reason: reason.into(),
        },
    ]
}

fn check_client_id(what: &str, id: &str) -> std::result::Result<(), String> {
    if id.is_empty() || id.len() > MAX_CLIENT_ID {
        Err(format!("`{what}` must be 1 to {MAX_CLIENT_ID} bytes"))
    } else {
        Ok(())
    }
}

impl Session {
    /// A new connection speaking `encoding`.
    pub fn new(encoding: Encoding) -> Self {
        Session {
            encoding,
            principal: None,
            token: None,
            subs: Default::default(),
        }
    }

    /// The encoding.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Who the client is, once `hello` succeeded.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// Active subscription ids.
    pub fn subscriptions(&self) -> impl Iterator<Item = &str> {
        self.subs.iter().map(String::as_str)
    }

    /// The shell ended a subscription on its own (an error while serving it).
    pub fn subscription_ended(&mut self, sub: &str) {
        self.subs.remove(sub);
    }

    /// The node's tokens or scopes changed: check the principal again. A token no longer
    /// accepted ends the connection with `unauthorized`; a changed scope applies to the next
    /// write at once and, through [`Action::Rescope`], to the next change delivered.
    pub fn reauthorize(&mut self, auth: &dyn Authorizer) -> Vec<Action> {
        let Some(old) = &self.principal else {
            return Vec::new();
        };
        match auth.authenticate(self.token.as_deref()) {
            Ok(p) if p == *old => Vec::new(),
            Ok(p) => {
                let read = p.read.clone();
                self.principal = Some(p);
                vec![Action::Rescope { read }]
            }
            Err(AuthError(why)) => {
                self.principal = None;
                self.subs.clear();
                fail_and_close(
                    ErrorCode::Unauthorized,
                    format!("this connection's credentials are no longer accepted ({why}); the node's config changed"),
                    CLOSE_POLICY,
                    "unauthorized",
                )
            }
        }
    }

    /// A text frame arrived.
    pub fn on_text(&mut self, text: &str, auth: &dyn Authorizer) -> Vec<Action> {
        if self.encoding == Encoding::Bin {
            return vec![err(
                ErrorCode::BadRequest,
                "this connection speaks hivesync.v1.bin: send binary frames",
            )];
        }
        match decode_client_json(text) {
            Ok(m) => self.on_message(m, auth),
            Err(e) => vec![err(ErrorCode::BadRequest, e.to_string())],
        }
    }

    /// A binary frame arrived.
    pub fn on_binary(&mut self, bytes: &[u8], auth: &dyn Authorizer) -> Vec<Action> {
        if self.encoding == Encoding::Json {
            return vec![err(
                ErrorCode::BadRequest,
                "this connection speaks hivesync.v1.json: send text frames holding JSON",
            )];
        }
        match decode_client_bin(bytes) {
            Ok(m) => self.on_message(m, auth),
            Err(e) => vec![err(ErrorCode::BadRequest, e.to_string())],
        }
    }

    /// A frame over [`MAX_FRAME_BYTES`] arrived (or began to): the stream cannot be trusted to
    /// resynchronise, so the connection ends.
    pub fn on_oversized(&mut self) -> Vec<Action> {
        fail_and_close(
            ErrorCode::TooLarge,
            format!("frame larger than {MAX_FRAME_BYTES} bytes; split the write into smaller ones"),
            CLOSE_POLICY,
            "frame too large",
        )
    }

    /// The client sent more than [`MAX_PRE_HELLO_BYTES`] before its `hello` was accepted.
    pub fn on_pre_hello_overflow(&mut self) -> Vec<Action> {
        fail_and_close(
            ErrorCode::TooLarge,
            format!("more than {MAX_PRE_HELLO_BYTES} bytes before hello: send {{\"type\":\"hello\",\"token\":\"...\"}} first"),
            CLOSE_TOO_BIG,
            "too many bytes before hello",
        )
    }

    /// No accepted `hello` within `secs` seconds of the upgrade (nothing to do once greeted).
    pub fn on_hello_timeout(&mut self, secs: u64) -> Vec<Action> {
        if self.principal.is_some() {
            return Vec::new();
        }
        fail_and_close(
            ErrorCode::BadRequest,
            format!(
                "no hello within {secs} s: send {{\"type\":\"hello\",\"token\":\"...\"}} first"
            ),
            CLOSE_POLICY,
            "no hello",
        )
    }

    /// A text frame that is not UTF-8: the stream is not what it claims, so it ends.
    pub fn on_invalid_utf8(&mut self) -> Vec<Action> {
        fail_and_close(
            ErrorCode::BadRequest,
            "invalid UTF-8 in a text frame".into(),
            CLOSE_INVALID_DATA,
            "invalid UTF-8 in a text frame",
        )
    }

    /// A decoded message.
    pub fn on_message(&mut self, m: ClientMsg, auth: &dyn Authorizer) -> Vec<Action> {
        let Some(p) = &self.principal else {
            return match m {
                ClientMsg::Hello { token, .. } => match auth.authenticate(token.as_deref()) {
                    Ok(p) => {
                        self.principal = Some(p);
                        self.token = token;
                        vec![Action::Welcome]
                    }
                    Err(AuthError(why)) => {
                        fail_and_close(ErrorCode::Unauthorized, why, CLOSE_POLICY, "unauthorized")
                    }
                },
                _ => vec![err(
                    ErrorCode::BadRequest,
                    "say hello first: {\"type\":\"hello\",\"token\":\"...\"}",
                )],
            };
        };
        match m {
            ClientMsg::Hello { .. } => vec![err(
                ErrorCode::BadRequest,
                "hello was already received on this connection",
            )],
            ClientMsg::Subscribe(s) => {
                let fail = |code, message: String| {
                    vec![Action::Send(ServerMsg::Error(ErrorMsg {
                        code,
                        message,
                        sub: Some(s.sub.clone()),
                        req: None,
                    }))]
                };
                if let Err(e) = check_client_id("sub", &s.sub) {
                    return fail(ErrorCode::BadRequest, e);
                }
                if self.subs.contains(&s.sub) {
                    return fail(
                        ErrorCode::BadRequest,
                        format!(
                            "subscription {:?} is already active; unsubscribe first",
                            s.sub
                        ),
                    );
                }
                if self.subs.len() >= MAX_SUBS_PER_CONNECTION {
                    return fail(
                        ErrorCode::TooLarge,
                        format!("at most {MAX_SUBS_PER_CONNECTION} subscriptions per connection"),
                    );
                }
                if let Some(f) = s.from {
                    if f < 0 {
                        return fail(
                            ErrorCode::BadRequest,
                            format!("`from` must be 0 or more, got {f}"),
                        );
                    }
                }
                if let Some(ns) = &s.namespaces {
                    if let Some(bad) = ns.iter().find(|n| !p.read.allows(n)) {
                        return fail(
                            ErrorCode::Forbidden,
                            format!("token {:?} may not read namespace {bad:?}", p.name),
                        );
                    }
                }
                self.subs.insert(s.sub.clone());
                vec![Action::Subscribe {
                    sub: s.sub,
                    from: s.from,
                    filter: ChangeFilter {
                        namespaces: s.namespaces,
                        kinds: s.kinds,
                    },
                    read: p.read.clone(),
                }]
            }
            ClientMsg::Write { req, ops } => {
                let fail = |code, message: String| {
                    vec![Action::Send(ServerMsg::Error(ErrorMsg {
                        code,
                        message,
                        sub: None,
                        req: Some(req.clone()),
                    }))]
                };
                if let Err(e) = check_client_id("req", &req) {
                    return fail(ErrorCode::BadRequest, e);
                }
                if ops.is_empty() {
                    return fail(
                        ErrorCode::BadRequest,
                        "a write needs at least one op".into(),
                    );
                }
                if ops.len() > MAX_OPS_PER_WRITE {
                    return fail(
                        ErrorCode::TooLarge,
                        format!(
                            "{} ops in one write; the limit is {MAX_OPS_PER_WRITE}",
                            ops.len()
                        ),
                    );
                }
                if let Some((i, op)) = ops.iter().enumerate().find(|(_, o)| !p.write.allows(&o.ns))
                {
                    return fail(
                        ErrorCode::Forbidden,
                        format!(
                            "op {i}: token {:?} may not write namespace {:?}",
                            p.name, op.ns
                        ),
                    );
                }
                vec![Action::Write { req, ops }]
            }
            ClientMsg::Unsubscribe { sub } => {
                if self.subs.remove(&sub) {
                    vec![Action::Unsubscribe { sub }]
                } else {
                    vec![Action::Send(ServerMsg::Error(ErrorMsg {
                        code: ErrorCode::BadRequest,
                        message: format!("no active subscription {sub:?}"),
                        sub: Some(sub),
                        req: None,
                    }))]
                }
            }
            ClientMsg::Ack { sub, seq } => {
                if self.subs.contains(&sub) {
                    vec![Action::Ack { sub, seq }]
                } else {
                    vec![err(
                        ErrorCode::BadRequest,
                        format!("ack for unknown subscription {sub:?}"),
                    )]
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

pub mod client;
pub use client::{ClientAction, ClientConfig, ClientError, ClientSession, ConnectFailure};
