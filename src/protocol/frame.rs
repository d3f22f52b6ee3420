//! Frames: a server message in either encoding, and `changes` batches assembled from changes
//! encoded once per encoding.

use super::bin::BIN_CHANGES_VARIANT;
use super::json::json_str;
use super::*;
use crate::model::Change;

/// Encode a node message in the given encoding: text for JSON, bytes for binary.
pub(crate) fn encode_server(enc: Encoding, m: &ServerMsg) -> Frame {
    match enc.vectors() {
        Some(form) => Frame::Text(encode_server_json_as(m, form)),
        None => Frame::Binary(encode_server_bin(m)),
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
        if enc.is_json() && i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(p);
    }
    changes_frame_end(enc, out)
}

/// Encode `changes` straight into one `changes` frame in `enc` only (the catch-up path, where
/// no other subscriber shares the encoding).
pub(crate) fn changes_frame_of<'a>(
    enc: Encoding,
    sub: &str,
    prev: i64,
    changes: impl ExactSizeIterator<Item = &'a Change>,
) -> Frame {
    let n = changes.len();
    let mut out = changes_frame_head(enc, sub, prev, n, n * 320);
    for (i, c) in changes.enumerate() {
        match enc.vectors() {
            Some(form) => {
                if i > 0 {
                    out.push(b',');
                }
                encode_change_json_as(&mut out, c, form);
            }
            None => encode_change_bin(&mut out, c),
        }
    }
    changes_frame_end(enc, out)
}

fn changes_frame_head(enc: Encoding, sub: &str, prev: i64, n: usize, body: usize) -> Vec<u8> {
    match enc {
        Encoding::Json | Encoding::JsonB64 => {
            use std::io::Write;
            let mut out = Vec::with_capacity(64 + sub.len() * 2 + body);
            out.extend_from_slice(b"{\"type\":\"changes\",\"sub\":");
            json_str(&mut out, sub);
            let _ = write!(out, ",\"prev\":{prev},\"changes\":[");
            out
        }
        Encoding::Bin => {
            let out = Vec::with_capacity(32 + sub.len() + body);
            // Infallible: a tuple of integers and a string, extending a Vec.
            postcard::to_extend(&(BIN_CHANGES_VARIANT, sub, prev, n), out)
                .expect("a changes frame head always encodes")
        }
    }
}

fn changes_frame_end(enc: Encoding, mut out: Vec<u8>) -> Frame {
    match enc {
        Encoding::Json | Encoding::JsonB64 => {
            out.extend_from_slice(b"]}");
            // UTF-8 by construction: the head and the fragments are JSON text.
            Frame::Text(String::from_utf8(out).expect("a JSON changes frame is UTF-8"))
        }
        Encoding::Bin => Frame::Binary(out),
    }
}
