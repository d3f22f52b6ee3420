//! hivesync in the browser: the same schema, query, apply and protocol code as the native
//! node, compiled to wasm32 with SQLite + FTS5 + sqlite-vec (sqlite-wasm-rs).
//!
//! This is the first piece of the browser replica: an in-memory [`Replica`] that applies
//! node messages (JSON) and answers text search locally. Persistence (OPFS), the sync client
//! and the JS package build on it.
#![cfg(target_arch = "wasm32")]

use hivesync::protocol::{decode_server_json, ServerMsg};
use hivesync::query::{ChangeFilter, SearchQuery};
use hivesync::{apply, query, schema};
use wasm_bindgen::prelude::*;

fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// A replica of a node's state, answering queries locally.
#[wasm_bindgen]
pub struct Replica {
    conn: hivesync::rusqlite::Connection,
}

#[wasm_bindgen]
impl Replica {
    /// An empty in-memory replica.
    #[wasm_bindgen(constructor)]
    pub fn new() -> Result<Replica, JsError> {
        let conn = schema::open_in_memory(&Default::default()).map_err(js_err)?;
        Ok(Replica { conn })
    }

    /// Apply one node message (JSON text): `snapshot` (a single, complete chunk) or `changes`.
    /// Returns the applied seq.
    #[wasm_bindgen(js_name = applyMessage)]
    pub fn apply_message(&self, text: &str) -> Result<f64, JsError> {
        match decode_server_json(text).map_err(js_err)? {
            ServerMsg::Changes { prev, changes, .. } => {
                Ok(apply::apply_changes(&self.conn, prev, &changes)
                    .map_err(js_err)?
                    .seq as f64)
            }
            ServerMsg::Snapshot {
                at,
                rows,
                done: true,
                ..
            } => Ok(
                apply::apply_snapshot(&self.conn, &ChangeFilter::default(), at, &rows)
                    .map_err(js_err)?
                    .seq as f64,
            ),
            _ => Err(JsError::new(
                "expected a `changes` message or a complete `snapshot`",
            )),
        }
    }

    /// The last applied seq.
    #[wasm_bindgen(js_name = appliedSeq)]
    pub fn applied_seq(&self) -> Result<f64, JsError> {
        Ok(apply::applied_seq(&self.conn).map_err(js_err)? as f64)
    }

    /// Full-text search; returns the hits as JSON text.
    pub fn search(&self, text: &str, limit: usize) -> Result<String, JsError> {
        let q = SearchQuery {
            text: text.into(),
            limit,
            ..Default::default()
        };
        let now = hivesync::ops::now_us(&self.conn).map_err(js_err)?;
        let hits = query::search(&self.conn, &q, now).map_err(js_err)?;
        serde_json::to_string(&hits).map_err(js_err)
    }
}
