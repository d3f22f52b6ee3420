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
    /// A write with its origin (appended: older clients never send it, older nodes refuse it).
    WriteFrom {
        req: String,
        ops: Vec<BinWriteOp>,
        client: Option<String>,
        n: Option<i64>,
        entries: Option<Vec<u32>>,
    },
    /// A fresh token on an open connection (appended, like `WriteFrom`).
    Auth {
        token: String,
    },
}

/// Postcard's variant index of `Changes` in [`ServerMsg`] (see [`changes_frame`]).
pub(super) const BIN_CHANGES_VARIANT: u32 = 2;

/// Append a change's binary form: its serde form, written by postcard.
pub fn encode_change_bin(out: &mut Vec<u8>, c: &Change) {
    if let Ok(v) = postcard::to_extend(c, std::mem::take(out)) {
        *out = v;
    }
}

/// Encode a node message in binary: its serde form, written by postcard.
pub fn encode_server_bin(m: &ServerMsg) -> Vec<u8> {
    // Infallible: postcard writes these types to a Vec without failing: no unsized sequences, no maps, no custom Serialize that errs.
    let out = postcard::to_allocvec(m).expect("a server message always encodes");
    match m {
        // Appended after the message: decoders that predate it stop before it.
        ServerMsg::Welcome {
            publish_key: Some(k),
            ..
        } => postcard::to_extend(k, out).expect("a string always encodes"),
        _ => out,
    }
}

/// Decode a node message from binary (client side).
pub fn decode_server_bin(bytes: &[u8]) -> Result<ServerMsg> {
    let bad =
        |e: postcard::Error| Error::invalid(format!("malformed binary message from node: {e}"));
    let (mut m, rest) = postcard::take_from_bytes::<ServerMsg>(bytes).map_err(bad)?;
    if let ServerMsg::Welcome { publish_key, .. } = &mut m {
        if !rest.is_empty() {
            *publish_key = Some(postcard::from_bytes::<String>(rest).map_err(bad)?);
        }
    }
    Ok(m)
}

/// Encode a client message in binary.
pub fn encode_client_bin(m: &ClientMsg) -> Vec<u8> {
    let b = match m.clone() {
        ClientMsg::Hello { token, client } => BinClientMsg::Hello { token, client },
        ClientMsg::Subscribe(s) => BinClientMsg::Subscribe(s),
        ClientMsg::Write {
            req,
            ops,
            client,
            n,
            entries,
        } => {
            let ops = ops
                .into_iter()
                .map(|o| BinWriteOp {
                    op: o.op,
                    kind: o.kind,
                    ns: o.ns,
                    data: o.data.map(|d| d.to_string()),
                    id: o.id,
                    model: o.model,
                })
                .collect();
            if client.is_none() && n.is_none() && entries.is_none() {
                BinClientMsg::Write { req, ops }
            } else {
                BinClientMsg::WriteFrom {
                    req,
                    ops,
                    client,
                    n,
                    entries,
                }
            }
        }
        ClientMsg::Unsubscribe { sub } => BinClientMsg::Unsubscribe { sub },
        ClientMsg::Ack { sub, seq } => BinClientMsg::Ack { sub, seq },
        ClientMsg::Auth { token } => BinClientMsg::Auth { token },
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
            ops: bin_ops(ops)?,
            client: None,
            n: None,
            entries: None,
        },
        BinClientMsg::WriteFrom {
            req,
            ops,
            client,
            n,
            entries,
        } => ClientMsg::Write {
            req,
            ops: bin_ops(ops)?,
            client,
            n,
            entries,
        },
        BinClientMsg::Unsubscribe { sub } => ClientMsg::Unsubscribe { sub },
        BinClientMsg::Ack { sub, seq } => ClientMsg::Ack { sub, seq },
        BinClientMsg::Auth { token } => ClientMsg::Auth { token },
    })
}

fn bin_ops(ops: Vec<BinWriteOp>) -> Result<Vec<WriteOp>> {
    ops.into_iter()
        .enumerate()
        .map(|(i, o)| {
            // `"data":null` in JSON decodes as no data; so must its binary form.
            let data = o
                .data
                .map(|d| serde_json::from_str::<serde_json::Value>(&d))
                .transpose()
                .map_err(|e| Error::invalid(format!("op {i}: `data` is not valid JSON: {e}")))?
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
        .collect()
}
