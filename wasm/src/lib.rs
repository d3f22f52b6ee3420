//! hivesync in the browser: the node's own schema, query, apply and protocol modules compiled
//! to wasm32 with SQLite, FTS5 and sqlite-vec (sqlite-wasm-rs), behind a [`Replica`] for
//! JavaScript.
//!
//! A replica applies the node's feed (snapshot chunks and change batches, in either encoding),
//! persists it in OPFS when opened inside a dedicated Worker (in memory elsewhere), and answers
//! the store's reads locally: rows, graph, full-text, KNN, hybrid, read-only SQL. The socket,
//! reconnects and the Worker plumbing live in `web/` (JavaScript); everything that touches
//! data is this Rust.
#![cfg(target_arch = "wasm32")]

/// The C library's memory functions for SQLite (public for its tests).
#[doc(hidden)]
pub mod mem;
mod sync;

use hivesync::model::{Kind, WriteOp};
use hivesync::protocol::{self, ClientMsg, ServerMsg, Subscribe};
use hivesync::query::{self, ChangeFilter, Direction, KnnQuery, ListQuery, SearchQuery};
use hivesync::rusqlite::{self, Connection, OpenFlags};
use hivesync::{apply, ops, schema};
use serde_json::{json, Value};
use wasm_bindgen::prelude::*;

/// The VFS name the OPFS pool registers under.
const OPFS_VFS: &str = "hivesync-opfs";
/// WAL pages after which SQLite checkpoints inside a commit (see `open_persistent`).
const WAL_BACKSTOP_PAGES: i64 = 4000;

fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

fn to_json(v: &impl serde::Serialize) -> Result<String, JsError> {
    serde_json::to_string(v).map_err(js_err)
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, JsError> {
    serde_json::from_str(text).map_err(|e| JsError::new(&format!("{what}: {e}")))
}

/// A local copy of a node's data.
#[wasm_bindgen]
pub struct Replica {
    conn: Connection,
    filter: ChangeFilter,
    snapshot_open: bool,
    storage: &'static str,
    /// The sync session, once started.
    sync: Option<sync::Sync>,
}

fn setup(conn: Connection, storage: &'static str) -> Result<Replica, JsError> {
    schema::configure(&conn).map_err(js_err)?;
    schema::migrate(&conn, &Default::default()).map_err(js_err)?;
    Ok(Replica {
        conn,
        filter: ChangeFilter::default(),
        snapshot_open: false,
        storage,
        sync: None,
    })
}

#[wasm_bindgen]
impl Replica {
    /// An empty replica in memory (Node, the main thread, tests).
    #[wasm_bindgen(js_name = openMemory)]
    pub fn open_memory() -> Result<Replica, JsError> {
        schema::register_extensions();
        setup(Connection::open_in_memory().map_err(js_err)?, "memory")
    }

    /// A replica persisted in the Origin Private File System under `name`. Works only inside a
    /// dedicated Worker in a secure context (127.0.0.1 counts); fails elsewhere.
    #[wasm_bindgen(js_name = openPersistent)]
    pub async fn open_persistent(name: String) -> Result<Replica, JsError> {
        schema::register_extensions();
        let cfg = sqlite_wasm_vfs::sahpool::OpfsSAHPoolCfgBuilder::new()
            .vfs_name(OPFS_VFS)
            .directory(".hivesync")
            .build();
        sqlite_wasm_vfs::sahpool::install::<sqlite_wasm_rs::WasmOsCallback>(&cfg, false)
            .await
            .map_err(|e| JsError::new(&format!("OPFS is not available here ({e:?}); open the replica inside a dedicated Worker")))?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
        let conn = Connection::open_with_flags_and_vfs(format!("{name}.db"), flags, OPFS_VFS)
            .map_err(js_err)?;
        // One connection owns the file (the pool is this Worker's alone), so WAL needs no
        // shared memory; a commit appends to the WAL and is not flushed until a checkpoint.
        // Durable across a tab or browser crash; an OS crash or power loss may take back the
        // last commits, never corrupt the file (IndexedDB's default, "relaxed", is the same
        // trade). Measured with a disk-backed profile: one local write 3.5 -> 2.5 ms, a write
        // through the page API 14 -> 4.6 ms (p50, wasm/bench/local-first.mjs).
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(js_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(js_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(js_err)?;
        // Checkpoints belong in idle time: the Worker calls `checkpoint` once the replica has
        // been quiet a moment. SQLite's own, inside whichever commit crosses the line, is only
        // the backstop for a replica that never goes quiet. At its default (1,000 pages) it
        // landed in one local write of every ~77, at 16 ms against 1.5 ms (the p99 of a
        // write; wasm/bench/local-first.mjs).
        conn.pragma_update(None, "wal_autocheckpoint", WAL_BACKSTOP_PAGES)
            .map_err(js_err)?;
        setup(conn, "opfs")
    }

    /// Copy the WAL into the database file and empty it (a truncating checkpoint), so that no
    /// later write or query pays for it; the Worker calls it when the replica has been idle a
    /// moment. Returns the pages the WAL held (0 for a replica in memory).
    pub fn checkpoint(&self) -> Result<u32, JsError> {
        if self.storage != "opfs" {
            return Ok(0);
        }
        // A passive checkpoint says how many pages the WAL held; the truncating one after it
        // (reporting 0s) only empties the file.
        let held: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
            .map_err(js_err)?;
        if held > 0 {
            self.conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .map_err(js_err)?;
        }
        Ok(held.max(0) as u32)
    }

    /// `opfs` or `memory`.
    #[wasm_bindgen(getter)]
    pub fn storage(&self) -> String {
        self.storage.to_string()
    }

    /// Restrict what a snapshot replaces to these namespaces (JSON array, or null for all):
    /// set it to what the subscription asks for.
    #[wasm_bindgen(js_name = setNamespaces)]
    pub fn set_namespaces(&mut self, namespaces_json: Option<String>) -> Result<(), JsError> {
        self.filter.namespaces = namespaces_json
            .map(|t| parse("namespaces", &t))
            .transpose()?;
        Ok(())
    }

    /// The last seq applied (0 when nothing was).
    #[wasm_bindgen(js_name = appliedSeq)]
    pub fn applied_seq(&self) -> Result<f64, JsError> {
        Ok(apply::applied_seq(&self.conn).map_err(js_err)? as f64)
    }

    /// Handle one binary frame from the node (`hivesync.v1.bin`); returns an event as JSON.
    #[wasm_bindgen(js_name = handleFrame)]
    pub fn handle_frame(&mut self, bytes: &[u8]) -> Result<String, JsError> {
        let m = protocol::decode_server_bin(bytes).map_err(js_err)?;
        self.handle(m)
    }

    /// Handle one text frame from the node (`hivesync.v1.json`); returns an event as JSON.
    #[wasm_bindgen(js_name = handleText)]
    pub fn handle_text(&mut self, text: &str) -> Result<String, JsError> {
        let m = protocol::decode_server_json(text).map_err(js_err)?;
        self.handle(m)
    }

    /// Abandon a snapshot that was cut off (the connection dropped): the previous state stays.
    #[wasm_bindgen(js_name = abortSnapshot)]
    pub fn abort_snapshot(&mut self) {
        if self.snapshot_open {
            apply::snapshot_abort(&self.conn);
            self.snapshot_open = false;
        }
    }

    fn handle(&mut self, m: ServerMsg) -> Result<String, JsError> {
        let ev = match m {
            ServerMsg::Welcome {
                protocol,
                node,
                head,
                horizon,
                ..
            } => {
                json!({"type": "welcome", "protocol": protocol, "node": node, "head": head, "horizon": horizon})
            }
            ServerMsg::Snapshot { at, rows, done, .. } => {
                if !self.snapshot_open {
                    apply::snapshot_begin(&self.conn, &self.filter).map_err(js_err)?;
                    self.snapshot_open = true;
                }
                if let Err(e) = apply::snapshot_rows(&self.conn, &rows) {
                    self.abort_snapshot();
                    return Err(js_err(e));
                }
                if done {
                    self.snapshot_open = false;
                    apply::snapshot_finish(&self.conn, at).map_err(js_err)?;
                }
                json!({"type": "snapshot", "at": at, "rows": rows.len(), "done": done})
            }
            ServerMsg::Changes { prev, changes, .. } => {
                self.abort_snapshot();
                match apply::apply_changes(&self.conn, prev, &changes) {
                    Ok(o) => {
                        json!({"type": "applied", "prev": prev, "seq": o.seq, "applied": o.applied, "skipped": o.skipped})
                    }
                    Err(hivesync::Error::Cursor(msg)) => json!({"type": "gap", "message": msg}),
                    Err(e) => return Err(js_err(e)),
                }
            }
            ServerMsg::Live { seq, .. } => json!({"type": "live", "seq": seq}),
            ServerMsg::Written { req, seq } => json!({"type": "written", "req": req, "seq": seq}),
            ServerMsg::Error(e) => {
                json!({"type": "error", "code": e.code, "message": e.message, "sub": e.sub, "req": e.req})
            }
        };
        Ok(ev.to_string())
    }

    /// Apply a batch of changes given as the JSON array of a `changes` message, continuing
    /// from `prev`; refuses a batch that shows a gap. Returns the applied seq.
    #[wasm_bindgen(js_name = applyChanges)]
    pub fn apply_changes(&mut self, prev: f64, changes_json: &str) -> Result<f64, JsError> {
        let text = format!(
            "{{\"type\":\"changes\",\"sub\":\"\",\"prev\":{},\"changes\":{changes_json}}}",
            prev as i64
        );
        let ServerMsg::Changes { prev, changes, .. } =
            protocol::decode_server_json(&text).map_err(js_err)?
        else {
            return Err(JsError::new("not a changes batch"));
        };
        Ok(apply::apply_changes(&self.conn, prev, &changes)
            .map_err(js_err)?
            .seq as f64)
    }

    /// The binary `hello`.
    #[wasm_bindgen(js_name = encodeHello)]
    pub fn encode_hello(token: Option<String>, client: Option<String>) -> Vec<u8> {
        protocol::encode_client_bin(&ClientMsg::Hello { token, client })
    }

    /// The binary `subscribe`; `from` absent asks for a snapshot.
    #[wasm_bindgen(js_name = encodeSubscribe)]
    pub fn encode_subscribe(
        sub: String,
        from: Option<f64>,
        namespaces_json: Option<String>,
    ) -> Result<Vec<u8>, JsError> {
        let namespaces = namespaces_json
            .map(|t| parse("namespaces", &t))
            .transpose()?;
        Ok(protocol::encode_client_bin(&ClientMsg::Subscribe(
            Subscribe {
                sub,
                from: from.map(|f| f as i64),
                namespaces,
                kinds: None,
            },
        )))
    }

    /// The binary `write` of a JSON array of write ops.
    #[wasm_bindgen(js_name = encodeWrite)]
    pub fn encode_write(req: String, ops_json: &str) -> Result<Vec<u8>, JsError> {
        let ops: Vec<WriteOp> = parse("ops", ops_json)?;
        Ok(protocol::encode_client_bin(&ClientMsg::Write {
            req,
            ops,
            client: None,
            n: None,
            entries: None,
        }))
    }

    /// The binary `ack`.
    #[wasm_bindgen(js_name = encodeAck)]
    pub fn encode_ack(sub: String, seq: f64) -> Vec<u8> {
        protocol::encode_client_bin(&ClientMsg::Ack {
            sub,
            seq: seq as i64,
        })
    }

    /// One row as JSON (`null` when absent). Vectors: `id` is the subject, `model` required.
    pub fn get(
        &self,
        kind: &str,
        ns: &str,
        id: &str,
        model: Option<String>,
    ) -> Result<String, JsError> {
        let kind = kind.parse::<Kind>().map_err(js_err)?;
        let v = query::get_json(&self.conn, kind, ns, id, model.as_deref()).map_err(js_err)?;
        let v = v.unwrap_or(Value::Null);
        Ok(v.to_string())
    }

    /// A page of rows of one kind, in id order, as a JSON array.
    pub fn list(
        &self,
        kind: &str,
        ns: &str,
        kind_filter: Option<String>,
        after: Option<String>,
        limit: usize,
    ) -> Result<String, JsError> {
        let c = &self.conn;
        let q = ListQuery {
            ns: ns.into(),
            kind: kind_filter,
            after,
            limit,
        };
        let kind = kind.parse::<Kind>().map_err(js_err)?;
        let now = ops::now_us(c).map_err(js_err)?;
        to_json(&query::list_json(c, kind, &q, now).map_err(js_err)?)
    }

    /// Edges around a node (`direction`: out, in, both) as a JSON array.
    pub fn neighbors(
        &self,
        ns: &str,
        id: &str,
        direction: &str,
        relation: Option<String>,
        limit: usize,
    ) -> Result<String, JsError> {
        let d: Direction = direction.parse().map_err(js_err)?;
        to_json(
            &query::neighbors(&self.conn, ns, id, d, relation.as_deref(), limit).map_err(js_err)?,
        )
    }

    /// Breadth-first traversal as a JSON array of hops.
    pub fn traverse(
        &self,
        ns: &str,
        id: &str,
        direction: &str,
        relation: Option<String>,
        depth: u32,
        limit: usize,
    ) -> Result<String, JsError> {
        let d: Direction = direction.parse().map_err(js_err)?;
        to_json(
            &query::traverse(&self.conn, ns, id, d, relation.as_deref(), depth, limit)
                .map_err(js_err)?,
        )
    }

    /// Full-text search; `query_json` is `{"text":..,"ns"?,"kind"?,"limit"?}`.
    pub fn search(&self, query_json: &str) -> Result<String, JsError> {
        let mut q: SearchQuery = parse("search query", query_json)?;
        if q.limit == 0 {
            q.limit = 20;
        }
        let now = ops::now_us(&self.conn).map_err(js_err)?;
        to_json(&query::search(&self.conn, &q, now).map_err(js_err)?)
    }

    /// Exact KNN; `query_json` is `{"model":..,"embedding":[..],"k":..,"ns"?,"kind"?}`.
    pub fn knn(&self, query_json: &str) -> Result<String, JsError> {
        let q: KnnQuery = parse("knn query", query_json)?;
        to_json(&query::knn(&self.conn, &q).map_err(js_err)?)
    }

    /// Hybrid search (reciprocal-rank fusion of a text query and a KNN query).
    pub fn hybrid(&self, text_json: &str, knn_json: &str, limit: usize) -> Result<String, JsError> {
        let t: SearchQuery = parse("search query", text_json)?;
        let k: KnnQuery = parse("knn query", knn_json)?;
        let now = ops::now_us(&self.conn).map_err(js_err)?;
        to_json(&query::hybrid(&self.conn, &t, &k, limit, now).map_err(js_err)?)
    }

    /// A digest of the logical state of the namespaces in `namespaces_json` (a JSON array;
    /// all when absent): equal to the node's `hivesync digest` for the same rows.
    pub fn digest(&self, namespaces_json: Option<String>) -> Result<String, JsError> {
        let ns: Option<Vec<String>> = namespaces_json
            .map(|t| parse("namespaces", &t))
            .transpose()?;
        to_json(&query::digest(&self.conn, ns.as_deref()).map_err(js_err)?)
    }

    /// The vector models this replica holds, as JSON.
    pub fn models(&self) -> Result<String, JsError> {
        let m: Vec<Value> = schema::models(&self.conn)
            .map_err(js_err)?
            .into_iter()
            .map(|m| json!({"ns": m.ns, "model": m.model, "dims": m.dims}))
            .collect();
        to_json(&m)
    }

    /// Run a read-only SQL query with JSON array parameters; returns `{"columns":[..],"rows":[[..]..]}`.
    /// Statements that would write are refused.
    pub fn sql(&self, sql: &str, params_json: Option<String>) -> Result<String, JsError> {
        let params: Vec<Value> = params_json
            .map(|p| parse("params", &p))
            .transpose()?
            .unwrap_or_default();
        let mut stmt = self.conn.prepare(sql).map_err(js_err)?;
        if !stmt.readonly() {
            return Err(JsError::new(
                "only read-only statements run on a replica: its state comes from the node",
            ));
        }
        let columns: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
        let sql_params: Vec<rusqlite::types::Value> = params
            .iter()
            .map(|v| match v {
                Value::Null => rusqlite::types::Value::Null,
                Value::Bool(b) => rusqlite::types::Value::Integer(*b as i64),
                Value::Number(n) => n
                    .as_i64()
                    .map(rusqlite::types::Value::Integer)
                    .unwrap_or_else(|| rusqlite::types::Value::Real(n.as_f64().unwrap_or(0.0))),
                Value::String(s) => rusqlite::types::Value::Text(s.clone()),
                other => rusqlite::types::Value::Text(other.to_string()),
            })
            .collect();
        let n = columns.len();
        let mut rows = stmt
            .query(rusqlite::params_from_iter(sql_params))
            .map_err(js_err)?;
        let mut out: Vec<Vec<Value>> = Vec::new();
        while let Some(r) = rows.next().map_err(js_err)? {
            let mut row = Vec::with_capacity(n);
            for i in 0..n {
                row.push(match r.get_ref(i).map_err(js_err)? {
                    rusqlite::types::ValueRef::Null => Value::Null,
                    rusqlite::types::ValueRef::Integer(i) => json!(i),
                    rusqlite::types::ValueRef::Real(f) => json!(f),
                    rusqlite::types::ValueRef::Text(t) => {
                        Value::String(String::from_utf8_lossy(t).into_owned())
                    }
                    rusqlite::types::ValueRef::Blob(b) => json!({"blob_bytes": b.len()}),
                });
            }
            out.push(row);
        }
        to_json(&json!({"columns": columns, "rows": out}))
    }

    /// The whole database as SQLite file bytes (opens in the native node: `hivesync serve --db`).
    #[wasm_bindgen(js_name = exportBytes)]
    pub fn export_bytes(&mut self) -> Result<Vec<u8>, JsError> {
        let data = self.conn.serialize(rusqlite::MAIN_DB).map_err(js_err)?;
        Ok(data.to_vec())
    }

    /// Replace this replica's contents with a database file's bytes (from `exportBytes` or a
    /// native node's file, checkpointed). The file must carry a schema this build knows.
    #[wasm_bindgen(js_name = importBytes)]
    pub fn import_bytes(&mut self, bytes: &[u8]) -> Result<(), JsError> {
        self.abort_snapshot();
        let mut image = bytes.to_vec();
        if image.len() < 100 || &image[..16] != b"SQLite format 3\0" {
            return Err(JsError::new("not an SQLite database file"));
        }
        // A WAL-mode file (the native node's) is read as a rollback-journal file: the WAL
        // itself is not part of the bytes, so the node's file must be checkpointed first.
        if image[18] == 2 || image[19] == 2 {
            image[18] = 1;
            image[19] = 1;
        }
        let mut tmp = Connection::open_in_memory().map_err(js_err)?;
        let len = image.len();
        tmp.deserialize_read_exact(rusqlite::MAIN_DB, image.as_slice(), len, false)
            .map_err(js_err)?;
        schema::check_version(&tmp).map_err(js_err)?;
        let ok: String = tmp
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(js_err)?;
        if ok != "ok" {
            return Err(JsError::new(&format!("the database file is damaged: {ok}")));
        }
        if self.storage == "memory" {
            // The checked copy simply becomes the replica.
            schema::configure(&tmp).map_err(js_err)?;
            self.conn = tmp;
        } else {
            // Backup into a file needs equal page sizes (the wasm build defaults to 8192, the
            // native one to 4096): rebuild the replica's file with the source's page size first.
            let page: i64 = tmp
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .map_err(js_err)?;
            let ours: i64 = self
                .conn
                .query_row("PRAGMA page_size", [], |r| r.get(0))
                .map_err(js_err)?;
            // Neither a page size change nor a backup goes into a WAL file: the replica leaves
            // WAL for the copy, and goes back to it after (see `open_persistent`).
            self.conn
                .pragma_update(None, "journal_mode", "DELETE")
                .map_err(js_err)?;
            if page != ours {
                self.conn
                    .execute_batch(&format!("PRAGMA page_size = {page}; VACUUM;"))
                    .map_err(js_err)?;
            }
            let b = rusqlite::backup::Backup::new(&tmp, &mut self.conn).map_err(js_err)?;
            b.run_to_completion(1024, std::time::Duration::ZERO, None)
                .map_err(js_err)?;
            drop(b);
            self.conn
                .pragma_update(None, "journal_mode", "WAL")
                .map_err(js_err)?;
        }
        schema::migrate(&self.conn, &Default::default()).map_err(js_err)?;
        Ok(())
    }
}

/// The hivesync version.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}
