//! What a connection sends: frames queued for its sender (each holding its share of the
//! connection's out budget), and the error code a failure is answered with. Below the
//! connection, its subscriptions and the writer, which all send.

use tokio_tungstenite::tungstenite::Message;

use crate::error::Error;
use crate::node::budget::OutPermit;
use crate::protocol::{ErrorCode, Frame};

/// A frame for the client, holding its share of
/// [`CONN_OUT_BYTES`](crate::node::budget::CONN_OUT_BYTES) until it is sent.
pub(super) enum Out {
    Frame(Message, Option<OutPermit>),
    Close(u16, String),
}

/// An encoded frame as a WebSocket message.
pub(super) fn to_message(f: Frame) -> Message {
    match f {
        Frame::Text(s) => Message::Text(s.into()),
        Frame::Binary(b) => Message::Binary(b.into()),
    }
}

/// The error code a store error maps to.
pub(crate) fn code_for(e: &Error) -> ErrorCode {
    match e {
        Error::PoolTimeout(_) | Error::DiskFull => ErrorCode::Overloaded,
        Error::ReadOnly | Error::Forbidden(_) => ErrorCode::Forbidden,
        Error::TooLarge { .. } => ErrorCode::TooLarge,
        Error::Op { cause, .. } => code_for(cause),
        e if e.is_client_error() => ErrorCode::BadRequest,
        _ => ErrorCode::Internal,
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
