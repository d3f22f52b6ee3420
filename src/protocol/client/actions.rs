//! What a client session says and hears: its configuration, the failures a shell reports, the
//! errors that stop it, and the actions it hands the shell.

use std::time::Duration;

#[cfg(doc)]
use super::ClientSession;
use crate::model::{Change, Kind};
use crate::protocol::{ClientMsg, ErrorCode, ErrorMsg};

/// Error codes that no retry can cure: the token is wrong or lacks the scope, or the node
/// does not understand what this client sends (another protocol version).
pub fn is_fatal_code(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unauthorized | ErrorCode::Forbidden | ErrorCode::BadRequest
    )
}

/// Error codes in answer to a `write` that mean the node refused that write for good (it is
/// invalid, out of the token's scope, or too large): a replica takes it back and tells the app.
/// Any other answer (`overloaded`, `internal`, a lost connection) leaves it to be sent again.
pub fn is_refusal_code(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::BadRequest | ErrorCode::Forbidden | ErrorCode::TooLarge
    )
}

/// Why a connection attempt failed, as the shell saw it.
#[derive(Clone, Debug, PartialEq)]
pub enum ConnectFailure {
    /// Not a WebSocket URL (`http://`, a typo): fatal.
    BadUrl(String),
    /// The server answered the upgrade with this HTTP status: a 4xx (a wrong path, no
    /// WebSocket there) is fatal, except 408 and 429; a 5xx (a node at its connection limit)
    /// is retried.
    Http(u16),
    /// Refused, reset, timed out, DNS, TLS: retried.
    Network(String),
}

/// Settings of a client session.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The `client` name sent in `hello`.
    pub client: String,
    /// The token sent in `hello`.
    pub token: Option<String>,
    /// The subscription id.
    pub sub: String,
    /// Where to resume: the last seq applied (0: the whole log); None: snapshot first.
    pub from: Option<i64>,
    /// Namespaces wanted (None: every readable one).
    pub namespaces: Option<Vec<String>>,
    /// Kinds wanted (None: all).
    pub kinds: Option<Vec<Kind>>,
    /// Seed of the jitter (any value; differing between clients).
    pub seed: u64,
}

/// A write the shell asked to send, named by the shell.
pub type WriteId = u64;

/// Why the session stopped for good.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The node refused this client (`unauthorized`, `forbidden`, `bad_request`).
    #[error("the node refused this client: {}: {}", .0.code.as_str(), .0.message)]
    Refused(ErrorMsg),
    /// The URL cannot reach a hivesync feed.
    #[error("{0}")]
    BadUrl(String),
    /// The node's log ends before the cursor: it is another node, or was restored.
    #[error("the node's log ends at seq {head}, before this client's cursor {cursor}: it is not the node this client followed (or it was restored from a backup)")]
    AheadOfHead {
        /// The client's cursor.
        cursor: i64,
        /// The node's head.
        head: i64,
    },
    /// A frame this client cannot decode.
    #[error(
        "the node sent a frame this client cannot read ({0}); is it another hivesync version?"
    )]
    Protocol(String),
}

/// What the shell must do.
#[derive(Debug, PartialEq)]
pub enum ClientAction {
    /// Send this message.
    Send(ClientMsg),
    /// The node accepted this client (its `welcome`); the subscription follows from `from`
    /// (None: a snapshot). For the shell's status and log; nothing to do.
    Welcome {
        /// The node's name.
        node: String,
        /// Its log's head.
        head: i64,
        /// Where this client resumes (None: it asks for a snapshot).
        from: Option<i64>,
        /// A snapshot follows: the client has no cursor, or the node's log no longer holds
        /// every change after it (it fell behind the node's retention).
        snapshot: bool,
        /// The key the node signs its NATS messages with (binary `welcome` only).
        publish_key: Option<String>,
    },
    /// The node reported an error that answered no write and stops nothing (a
    /// [`Reconnect`](Self::Reconnect) follows): for the shell's user to see.
    NodeError(ErrorMsg),
    /// A snapshot taken at `at` begins: its rows replace the replica's state.
    SnapshotBegin {
        /// Its seq.
        at: i64,
    },
    /// Rows of the open snapshot.
    SnapshotRows(Vec<Change>),
    /// The snapshot is complete: commit it, then call [`ClientSession::applied`] with `at`.
    SnapshotFinish {
        /// Its seq.
        at: i64,
    },
    /// Drop the open snapshot (the connection ended before its last chunk).
    SnapshotAbort,
    /// Apply these changes (gap-checked: `prev` is the last seq handed out), then call
    /// [`ClientSession::applied`] with the last seq, or [`ClientSession::apply_failed`].
    Apply {
        /// The seq they follow.
        prev: i64,
        /// The changes, in seq order.
        changes: Vec<Change>,
    },
    /// Caught up with the node at `seq`.
    Live {
        /// The node's head when it said so.
        seq: i64,
    },
    /// The write `id` committed at the node with this seq.
    Resolve {
        /// The shell's id.
        id: WriteId,
        /// Its last seq.
        seq: i64,
    },
    /// The write `id` was refused, or its fate is unknown (the link was lost).
    Reject {
        /// The shell's id.
        id: WriteId,
        /// Why.
        error: ErrorMsg,
    },
    /// Close this connection (if open) and connect again after `after`.
    Reconnect {
        /// The delay (backoff with jitter).
        after: Duration,
        /// Why, for the log.
        why: String,
    },
    /// Stop: no retry can succeed.
    Fatal(ClientError),
    /// Open the external feed ([`ClientSession::with_external_feed`]) positioned after
    /// [`ClientSession::cursor`] as it is when the shell carries this out, and report how it
    /// went with [`ClientSession::external_opened`].
    OpenExternal,
    /// The live changes no longer come from the external feed: drop it (the node's feed
    /// catches up from the cursor; the session opens the external feed again later).
    LeaveExternal {
        /// What broke, for the log.
        why: String,
        /// It had stopped bringing the node's changes (the head probe found it behind).
        stalled: bool,
    },
    /// The node's head, as the head probe asked while the external feed is read.
    NodeHead {
        /// Its seq.
        head: i64,
    },
}
