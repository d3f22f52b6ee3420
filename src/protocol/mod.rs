//! Wire protocol v1: the messages, their encodings, and the session state machine.
//!
//! No I/O here (sans-IO): the node's WebSocket shell feeds frames in and carries out the
//! [`Action`]s that come back; the wasm sync client uses the same codecs. Two subprotocols:
//! - `hivesync.v1.json`: text frames, each a JSON object with a `type` (the default);
//! - `hivesync.v1.json-b64`: the JSON encoding with each embedding as a base64 string of its
//!   packed little-endian f32 (a third of the bytes of a JSON number array, and exact), for
//!   clients that ask for it; decoders take either form;
//! - `hivesync.v1.bin`: binary frames, the same messages encoded with postcard, embeddings
//!   as raw f32 and row images as JSON text.
//!
//! Fan-out encodes each change once per encoding ([`encode_change_json`],
//! [`encode_change_bin`]) and assembles a batch frame from the shared fragments
//! ([`changes_frame`]), so the cost per extra subscriber is a copy, not an encode. The server's
//! feed decisions (where a subscription starts, frames of whole transactions, the `prev` chain)
//! are in [`feed`], the client's in [`client`].

use serde::{Deserialize, Serialize};

use crate::model::{Change, Kind, WriteOp};

mod auth;
mod backoff;
mod bin;
pub mod client;

pub mod feed;
mod frame;
mod json;
#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod probe;
mod session;
pub mod upload;

pub use auth::{AuthError, Authorizer, Principal, Scope};
pub use bin::{
    decode_client_bin, decode_server_bin, encode_change_bin, encode_client_bin, encode_server_bin,
};
pub use client::{ClientAction, ClientConfig, ClientError, ClientSession, ConnectFailure};
pub use frame::{changes_frame, Frame};
#[cfg(any(feature = "node", test))]
pub(crate) use frame::{changes_frame_of, encode_server};
#[cfg(feature = "node")]
pub(crate) use json::decode_change_json;
pub use json::{
    decode_client_json, decode_server_json, encode_change_json, encode_client_json,
    encode_server_json, VectorForm,
};
pub(crate) use json::{encode_change_json_as, encode_server_json_as};
pub use session::{Action, Session, CLOSE_INVALID_DATA, CLOSE_POLICY, CLOSE_TOO_BIG};

/// The protocol version in `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;
/// JSON subprotocol name.
pub const SUBPROTOCOL_JSON: &str = "hivesync.v1.json";
/// Binary (postcard) subprotocol name.
pub const SUBPROTOCOL_BIN: &str = "hivesync.v1.bin";
/// JSON with embeddings as base64 of packed little-endian f32: subprotocol name. A client offers
/// it before `hivesync.v1.json` (a node that does not know it picks the next).
pub const SUBPROTOCOL_JSON_B64: &str = "hivesync.v1.json-b64";
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
    /// `hivesync.v1.json-b64`
    JsonB64,
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
                SUBPROTOCOL_JSON_B64 => return Some(Encoding::JsonB64),
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
            Encoding::JsonB64 => SUBPROTOCOL_JSON_B64,
        }
    }

    /// True for the JSON encodings (text frames).
    pub fn is_json(self) -> bool {
        self != Encoding::Bin
    }

    /// How the JSON encodings write an embedding (None for binary).
    pub fn vectors(self) -> Option<VectorForm> {
        match self {
            Encoding::Json => Some(VectorForm::Array),
            Encoding::JsonB64 => Some(VectorForm::Base64),
            Encoding::Bin => None,
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
        /// For an exactly-once upload: the client id ([`crate::model::Origin`]); with `n`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        /// For an exactly-once upload: the client's write number; with `client`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        n: Option<i64>,
        /// A batch of consecutive client writes, the last numbered `n`: each one's op count.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entries: Option<Vec<u32>>,
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
    /// A fresh token for this connection (a JWT renewed before it expires): the rights it
    /// grants replace the connection's from the next frame on. Sent only after `welcome`.
    Auth {
        /// The token.
        token: String,
    },
}

/// An `error` message. (Its serde form is the binary one: fields in order, none skipped.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorMsg {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// What went wrong and what to do.
    pub message: String,
    /// The subscription it concerns.
    pub sub: Option<String>,
    /// The write request it concerns.
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

/// Node to client: the one type both encodings read and write.
///
/// Its serde form *is* the binary encoding (postcard: the variant's index, then its fields in
/// order), so variants and fields are only ever appended. The JSON encoding
/// (`{"type":"welcome",...}`, the row images verbatim) is written and read by [`encode_server_json`]
/// and [`decode_server_json`] over this same type; there is no second message type to keep in step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
        /// The key the node signs its NATS stream's messages with (base64 of an Ed25519
        /// public key), when it publishes to one: edges fed from that stream check every
        /// message against it. Binary encoding only, appended after the fields above
        /// ([`encode_server_bin`]): decoders that predate it ignore a frame's trailing bytes,
        /// and the JSON encodings never carry it.
        #[serde(skip)]
        publish_key: Option<String>,
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

#[cfg(test)]
mod tests;
