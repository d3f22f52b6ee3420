//! The binary encoding (`hivesync.v1.bin`): postcard, embeddings as raw f32, row images as
//! JSON text.

use serde::{Deserialize, Serialize};

use super::*;
use crate::error::{Error, Result};
use crate::model::{Change, Kind, Op, WriteOp};

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
pub(super) const BIN_CHANGES_VARIANT: u32 = 2;

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
    // Infallible: postcard writes these types to a Vec without failing: no unsized sequences, no maps, no custom Serialize that errs.
    postcard::to_allocvec(&r).expect("a server message always encodes")
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
    // Infallible, as for server messages above.
    postcard::to_allocvec(&b).expect("a client message always encodes")
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
