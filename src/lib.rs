//! hivesync: an edge sync node. A SQLite knowledge store (entities, edges, notes, events,
//! FTS5 full-text and sqlite-vec vector search) whose every change lands, in the same
//! transaction, in an ordered change log that the node streams over WebSockets.
//!
//! Modules, shared by the native node and the wasm replica unless marked native:
//! - [`model`]: the record types, the one JSON write shape ([`model::WriteOp`]) and [`model::Change`].
//! - [`error`]: typed errors.
//! - [`schema`]: the one schema: DDL, triggers keeping FTS5 / vec0 / `changes` in step, migrations.
//! - [`ops`]: validation of write ops and the row-level write statements.
//! - [`query`]: reads: rows, text search, KNN, hybrid search, graph traversal, the change log.
//! - [`apply`]: idempotent, gap-checked application of upstream changes (replica side), on
//!   `applying` (the applying transaction, one row at a time), which [`outbox`] uses too.
//! - [`protocol`]: wire protocol v1: messages, JSON and postcard codecs, the server session and
//!   the one client session ([`protocol::client`]) every hivesync client runs.
//! - `store` (native): the pooled store (one writer, N readers, WAL, background checkpoints).
//! - `node` (native): the server: WebSocket feed, fan-out hub, auth, metrics, edge mode.
//!
//! A change's path through them: a client's `write` → `protocol` session checks →
//! `node::conn`'s writer thread → `ops` (validate, write rows) → `schema` triggers → the
//! `changes` log, in the same transaction → `node::hub` (read once, encoded once, kept in a
//! window) → `node::sub` (snapshot, catch-up, live) → `node::conn`'s sender → a client's
//! `protocol::client::ClientSession` → `apply` on the replica. `docs/design.md` in the
//! repository describes each step, the protocol's invariants, the `sync_ctx` contract and the
//! bulk write path.
//!
//! ```
//! use hivesync::{model::{Kind, WriteOp}, schema, ops, query};
//! let conn = schema::open_in_memory(&Default::default())?;
//! ops::execute(&conn, &WriteOp::upsert(Kind::Entity, "default",
//!     serde_json::json!({"id": "ada", "kind": "person", "name": "Ada Lovelace"})), 1)?;
//! // Full-text updates are queued by the triggers and applied in bulk before a commit
//! // (the store and the replica do this in every transaction).
//! schema::drain_fts_queue(&conn)?;
//! let hits = query::search(&conn, &query::SearchQuery { text: "lovelace".into(), ..Default::default() }, 1)?;
//! assert_eq!(hits[0].id, "ada");
//! # Ok::<(), hivesync::Error>(())
//! ```
#![warn(missing_docs)]
// Crate-internal pieces that only the node's paths use (the bulk write path, frames of the
// fan-out) are dead in the browser's build; the native build, every feature on, checks dead code.
#![cfg_attr(not(feature = "node"), allow(dead_code))]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod apply;
mod applying;
#[cfg(test)]
mod conformance;
pub mod error;
pub mod model;
#[cfg(feature = "node")]
pub mod node;
pub mod ops;
pub mod outbox;
pub mod protocol;
pub mod query;
pub mod schema;
#[cfg(feature = "node")]
pub mod store;

pub use error::{Error, Result};
/// The rusqlite this crate is built with (so callers use the same `Connection` type).
pub use rusqlite;
