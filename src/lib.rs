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
//! - [`live`]: live queries: reads kept current, re-run only when a row they depend on changed.
//! - [`protocol`]: wire protocol v1, sans I/O: messages, JSON and postcard codecs, the server
//!   session, the feed's plan and frames ([`protocol::feed`]), the one client session
//!   ([`protocol::client`]) every hivesync client runs, and a replica's upload policy
//!   ([`protocol::upload`]).
//! - `store` (native): the pooled store (one writer, N readers, WAL, background checkpoints).
//! - `node` (native): the server: `serve/` (sockets, connections, subscriptions, the fan-out hub,
//!   the role and the writer), `link/` (an edge's upstream link, NATS), `operate/` (config, auth,
//!   metrics, HTTP, web files).
//!
//! The two data paths (`docs/design.md` in the repository walks through each step, the
//! protocol's invariants, the `sync_ctx` contract and the bulk write path):
//! - a write: socket → `node::serve::conn` → the server [`protocol::Session`] (scope, limits)
//!   → `node::serve::role::route` (refused, forwarded upstream, or queued by the node's role) →
//!   `node::serve::writer` (group commit) → [`ops`] (validate, write rows) → [`schema`] triggers
//!   → the `changes` log, in the same transaction → commit → `written` back on the connection;
//! - a change: the log → `node::serve::hub` (read once, encoded once, kept in a window, cut into
//!   frames of whole transactions by [`protocol::feed`]) → `node::serve::sub` (where to start:
//!   [`protocol::feed::plan`]) → the connection's sender → a client's
//!   [`protocol::client::ClientSession`] (gap check) → [`apply`] on the replica, with the
//!   [`outbox`]'s pending writes undone and redone on top.
//!
//! Every protocol decision is sans I/O in [`protocol`] (the sessions, the feed plan, the upload
//! policy, the backoff); the node, the relay, `watch` and the browser are shells that move bytes.
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
pub mod live;
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
