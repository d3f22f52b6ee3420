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

mod args;
mod image;
mod live;
/// The C library's memory functions for SQLite (public for its tests).
#[doc(hidden)]
pub mod mem;
#[cfg(feature = "raw")]
mod raw;
mod sync;

use hivesync::model::Kind;
use hivesync::query::{self, ChangeFilter, Direction, KnnQuery, ListQuery, SearchQuery};
use hivesync::rusqlite::{self, Connection, OpenFlags};
use hivesync::{apply, ops, schema};
use serde_json::{json, Value};
use wasm_bindgen::prelude::*;

use args::{bytes, opt_text, text};

/// The OPFS directory of the default replica (`hivesync`), and of every replica before each
/// name had a pool of its own.
const DEFAULT_POOL: &str = ".hivesync";
/// The VFS name the default replica's pool registers under.
const DEFAULT_VFS: &str = "hivesync-opfs";
/// The longest replica name.
const MAX_NAME: usize = 128;
/// WAL pages after which SQLite checkpoints inside a commit (see `open_persistent`).
const WAL_BACKSTOP_PAGES: i64 = 4000;

fn js_err(e: impl std::fmt::Display) -> JsValue {
    JsError::new(&e.to_string()).into()
}

fn to_json(v: &impl serde::Serialize) -> Result<String, JsValue> {
    serde_json::to_string(v).map_err(js_err)
}

fn parse<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T, JsValue> {
    serde_json::from_str(text).map_err(|e| JsError::new(&format!("{what}: {e}")).into())
}

/// The OPFS directory and VFS name of replica `name`. A pool's files are held by the one
/// Worker that opened it, so each name needs its own: `.hivesync-<name>` (characters other than
/// ASCII letters, digits, `-` and `_` written as `%XX`). The default replica keeps the pool it
/// always had, `.hivesync`.
fn pool_of(name: &str) -> Result<(String, String), JsValue> {
    if name.is_empty() || name.len() > MAX_NAME || name.contains('\0') {
        return Err(args::type_error(
            "openReplica({ name })",
            &format!("a replica's name is 1 to {MAX_NAME} bytes, without NUL"),
        ));
    }
    if name == "hivesync" {
        return Ok((DEFAULT_POOL.into(), DEFAULT_VFS.into()));
    }
    let mut enc = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    Ok((
        format!("{DEFAULT_POOL}-{enc}"),
        format!("{DEFAULT_VFS}-{enc}"),
    ))
}

fn opfs_unavailable(name: &str, e: &impl std::fmt::Debug) -> JsValue {
    let why = format!("{e:?}");
    let hint = if why.contains("NoModificationAllowed") || why.contains("lock") {
        format!("replica '{name}' is open in another Worker (another tab with shareTabs: false, or a page that did not close it)")
    } else {
        "OPFS is available only inside a dedicated Worker in a secure context".into()
    };
    JsError::new(&format!(
        "OPFS is not available for replica '{name}': {hint} ({why})"
    ))
    .into()
}

/// The names `pool` holds for database `file`: the file and its journals (`file-wal`, ...).
fn files_of(pool: &sqlite_wasm_vfs::sahpool::OpfsSAHPoolUtil, file: &str) -> Vec<String> {
    use rsqlite_vfs::VfsFilesManager;
    let journal = format!("{file}-");
    pool.names()
        .unwrap_or_default()
        .into_iter()
        .filter(|f| {
            let f = f.trim_start_matches('/');
            f == file || f.starts_with(&journal)
        })
        .collect()
}

/// Before each name had its own pool, every replica lived in the default one. A replica found
/// there under `file` (and not yet in its own pool, which `conn` has just created) is copied
/// into `conn` and removed from the old pool, once. Where the old pool is held by another
/// Worker (the default replica is open) nothing is moved: the replica starts empty in its own
/// pool and the old copy stays, untouched, in the old one.
async fn move_from_shared_pool(file: &str, conn: &mut Connection) -> Result<(), JsValue> {
    use rsqlite_vfs::VfsFilesManager;
    let cfg = sqlite_wasm_vfs::sahpool::OpfsSAHPoolCfgBuilder::new()
        .vfs_name(DEFAULT_VFS)
        .directory(DEFAULT_POOL)
        .build();
    let Ok(pool) =
        sqlite_wasm_vfs::sahpool::install::<sqlite_wasm_rs::WasmOsCallback>(&cfg, false).await
    else {
        return Ok(());
    };
    if pool.resume().await.is_err() {
        return Ok(());
    }
    let ours = files_of(&pool, file);
    if ours.iter().any(|f| f.trim_start_matches('/') == file) {
        {
            let old = Connection::open_with_flags_and_vfs(
                file,
                OpenFlags::SQLITE_OPEN_READ_WRITE,
                DEFAULT_VFS,
            )
            .map_err(js_err)?;
            // As it was written: one connection, WAL without shared memory.
            old.pragma_update(None, "locking_mode", "EXCLUSIVE")
                .map_err(js_err)?;
            let b = rusqlite::backup::Backup::new(&old, conn).map_err(js_err)?;
            b.run_to_completion(1024, std::time::Duration::ZERO, None)
                .map_err(js_err)?;
        }
        for f in &ours {
            pool.remove(f).map_err(|e| js_err(format!("{e:?}")))?;
        }
    }
    // Let go of the old pool's files: the default replica may open in another Worker.
    let _ = pool.pause();
    Ok(())
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
    /// Its file in OPFS (None: in memory).
    opfs: Option<image::Opfs>,
    /// A database image being written (`bootstrapBegin`).
    boot: Option<image::Boot>,
    /// Its live queries.
    live: hivesync::live::LiveSet,
}

fn setup(conn: Connection, opfs: Option<image::Opfs>) -> Result<Replica, JsValue> {
    schema::configure(&conn).map_err(js_err)?;
    schema::migrate(&conn, &Default::default()).map_err(js_err)?;
    Ok(Replica {
        conn,
        filter: ChangeFilter::default(),
        snapshot_open: false,
        storage: if opfs.is_some() { "opfs" } else { "memory" },
        sync: None,
        opfs,
        boot: None,
        live: Default::default(),
    })
}

/// How a replica's file in OPFS is opened. One connection owns the file (the pool is this
/// Worker's alone), so WAL needs no shared memory; a commit appends to the WAL and is not
/// flushed until a checkpoint. Durable across a tab or browser crash; an OS crash or power loss
/// may take back the last commits, never corrupt the file (IndexedDB's default, "relaxed", is
/// the same trade). Measured with a disk-backed profile: one local write 3.5 -> 2.5 ms, a write
/// through the page API 14 -> 4.6 ms (p50, wasm/bench/local-first.mjs).
fn persistent_pragmas(conn: &Connection) -> Result<(), JsValue> {
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
        .map_err(js_err)?;
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(js_err)?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(js_err)?;
    // Checkpoints belong in idle time: the Worker calls `checkpoint` once the replica has been
    // quiet a moment. SQLite's own, inside whichever commit crosses the line, is only the
    // backstop for a replica that never goes quiet. At its default (1,000 pages) it landed in
    // one local write of every ~77, at 16 ms against 1.5 ms (the p99 of a write;
    // wasm/bench/local-first.mjs).
    conn.pragma_update(None, "wal_autocheckpoint", WAL_BACKSTOP_PAGES)
        .map_err(js_err)?;
    Ok(())
}

#[wasm_bindgen]
impl Replica {
    /// An empty replica in memory (Node, the main thread, tests).
    #[wasm_bindgen(js_name = openMemory)]
    pub fn open_memory() -> Result<Replica, JsValue> {
        schema::register_extensions();
        setup(Connection::open_in_memory().map_err(js_err)?, None)
    }

    /// A replica persisted in the Origin Private File System under `name`. Works only inside a
    /// dedicated Worker in a secure context (127.0.0.1 counts); fails elsewhere. Each name has
    /// a pool of its own (see [`pool_of`]), so replicas of different names persist side by side.
    #[wasm_bindgen(js_name = openPersistent)]
    pub async fn open_persistent(name: JsValue) -> Result<Replica, JsValue> {
        let name = text("Replica.openPersistent(name: string)", "name", &name)?;
        let (dir, vfs) = pool_of(&name)?;
        schema::register_extensions();
        let cfg = sqlite_wasm_vfs::sahpool::OpfsSAHPoolCfgBuilder::new()
            .vfs_name(&vfs)
            .directory(&dir)
            // The replica's file and WAL, an image's file and WAL beside them while a
            // bootstrap swaps one for the other, and room for SQLite's temporary files.
            .initial_capacity(8)
            .build();
        let pool = sqlite_wasm_vfs::sahpool::install::<sqlite_wasm_rs::WasmOsCallback>(&cfg, false)
            .await
            .map_err(|e| opfs_unavailable(&name, &e))?;
        // A pool this Worker let go of (see `move_from_shared_pool`) is taken up again.
        pool.resume()
            .await
            .map_err(|e| opfs_unavailable(&name, &e))?;
        // Held for the Worker's lifetime (a bootstrap writes through it; see `image`): one
        // handle per replica opened, never freed.
        let pool: &'static _ = Box::leak(Box::new(pool));
        let base = format!("{name}.db");
        let gen = image::current_gen(pool, &vfs, &base)?;
        let file = image::gen_file(&base, gen);
        let existing = OpenFlags::SQLITE_OPEN_READ_WRITE;
        let conn = match Connection::open_with_flags_and_vfs(&file, existing, vfs.as_str()) {
            Ok(c) => c,
            Err(e) if gen > 0 => return Err(js_err(e)),
            Err(_) => {
                let mut c = Connection::open_with_flags_and_vfs(
                    &file,
                    existing | OpenFlags::SQLITE_OPEN_CREATE,
                    vfs.as_str(),
                )
                .map_err(js_err)?;
                if dir != DEFAULT_POOL {
                    if let Err(e) = move_from_shared_pool(&file, &mut c).await {
                        // No half copy stays behind to be taken for the replica next time:
                        // the old pool still holds it whole, for the next open to move.
                        drop(c);
                        for f in files_of(pool, &file) {
                            let _ = rsqlite_vfs::VfsFilesManager::remove(pool, &f);
                        }
                        return Err(e);
                    }
                }
                c
            }
        };
        persistent_pragmas(&conn)?;
        let opfs = image::Opfs {
            pool,
            vfs,
            base,
            gen,
        };
        setup(conn, Some(opfs))
    }

    /// Copy the WAL into the database file and empty it (a truncating checkpoint), so that no
    /// later write or query pays for it; the Worker calls it when the replica has been idle a
    /// moment. Returns the pages the WAL held (0 for a replica in memory).
    pub fn checkpoint(&self) -> Result<u32, JsValue> {
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

    /// Abort, as a bug would: for tests of the page's recovery from a trap (`web/worker.js`).
    #[doc(hidden)]
    #[wasm_bindgen(js_name = __trap)]
    pub fn trap(&self) {
        std::process::abort()
    }

    /// `opfs` or `memory`.
    #[wasm_bindgen(getter)]
    pub fn storage(&self) -> String {
        self.storage.to_string()
    }

    /// Restrict what a snapshot replaces to these namespaces (JSON array, or null for all):
    /// set it to what the subscription asks for.
    #[wasm_bindgen(js_name = setNamespaces)]
    pub fn set_namespaces(&mut self, namespaces_json: JsValue) -> Result<(), JsValue> {
        let sig = "Replica.setNamespaces(namespacesJson?: string)";
        self.filter.namespaces = opt_text(sig, "namespacesJson", &namespaces_json)?
            .map(|t| parse("namespaces", &t))
            .transpose()?;
        Ok(())
    }

    /// The last seq applied (0 when nothing was).
    #[wasm_bindgen(js_name = appliedSeq)]
    pub fn applied_seq(&self) -> Result<f64, JsValue> {
        Ok(apply::applied_seq(&self.conn).map_err(js_err)? as f64)
    }

    /// Abandon a snapshot that was cut off: the previous state stays.
    fn drop_snapshot(&mut self) {
        if self.snapshot_open {
            apply::snapshot_abort(&self.conn);
            self.snapshot_open = false;
            let _ = self.live.snapshot(&self.conn, false);
        }
    }

    /// One row as JSON (`null` when absent). Vectors: `id` is the subject, `model` required.
    pub fn get(
        &self,
        kind: JsValue,
        ns: JsValue,
        id: JsValue,
        model: JsValue,
    ) -> Result<String, JsValue> {
        let sig = "Replica.get(kind: string, ns: string, id: string, model?: string)";
        let kind = text(sig, "kind", &kind)?.parse::<Kind>().map_err(js_err)?;
        let (ns, id) = (text(sig, "ns", &ns)?, text(sig, "id", &id)?);
        let model = opt_text(sig, "model", &model)?;
        let v = query::get_json(&self.conn, kind, &ns, &id, model.as_deref()).map_err(js_err)?;
        let v = v.unwrap_or(Value::Null);
        Ok(v.to_string())
    }

    /// A page of rows of one kind, in id order, as a JSON array.
    pub fn list(
        &self,
        kind: JsValue,
        ns: JsValue,
        kind_filter: JsValue,
        after: JsValue,
        limit: usize,
    ) -> Result<String, JsValue> {
        let sig = "Replica.list(kind: string, ns: string, kindFilter?: string, after?: string, limit: number)";
        let kind = text(sig, "kind", &kind)?;
        let kind_filter = opt_text(sig, "kindFilter", &kind_filter)?;
        let after = opt_text(sig, "after", &after)?;
        let c = &self.conn;
        let q = ListQuery {
            ns: text(sig, "ns", &ns)?,
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
        ns: JsValue,
        id: JsValue,
        direction: JsValue,
        relation: JsValue,
        limit: usize,
    ) -> Result<String, JsValue> {
        let sig = "Replica.neighbors(ns: string, id: string, direction: string, relation?: string, limit: number)";
        let (ns, id) = (text(sig, "ns", &ns)?, text(sig, "id", &id)?);
        let d: Direction = text(sig, "direction", &direction)?
            .parse()
            .map_err(js_err)?;
        let relation = opt_text(sig, "relation", &relation)?;
        to_json(
            &query::neighbors(&self.conn, &ns, &id, d, relation.as_deref(), limit)
                .map_err(js_err)?,
        )
    }

    /// Breadth-first traversal as a JSON array of hops.
    pub fn traverse(
        &self,
        ns: JsValue,
        id: JsValue,
        direction: JsValue,
        relation: JsValue,
        depth: u32,
        limit: usize,
    ) -> Result<String, JsValue> {
        let sig = "Replica.traverse(ns: string, id: string, direction: string, relation?: string, depth: number, limit: number)";
        let (ns, id) = (text(sig, "ns", &ns)?, text(sig, "id", &id)?);
        let d: Direction = text(sig, "direction", &direction)?
            .parse()
            .map_err(js_err)?;
        let relation = opt_text(sig, "relation", &relation)?;
        to_json(
            &query::traverse(&self.conn, &ns, &id, d, relation.as_deref(), depth, limit)
                .map_err(js_err)?,
        )
    }

    /// Full-text search; `query_json` is `{"text":..,"ns"?,"kind"?,"limit"?}`.
    pub fn search(&self, query_json: JsValue) -> Result<String, JsValue> {
        let query_json = text(
            "Replica.search(queryJson: string)",
            "queryJson",
            &query_json,
        )?;
        let mut q: SearchQuery = parse("search query", &query_json)?;
        if q.limit == 0 {
            q.limit = 20;
        }
        let now = ops::now_us(&self.conn).map_err(js_err)?;
        to_json(&query::search(&self.conn, &q, now).map_err(js_err)?)
    }

    /// Exact KNN; `query_json` is `{"model":..,"embedding":[..],"k":..,"ns"?,"kind"?}`.
    pub fn knn(&self, query_json: JsValue) -> Result<String, JsValue> {
        let query_json = text("Replica.knn(queryJson: string)", "queryJson", &query_json)?;
        let q: KnnQuery = parse("knn query", &query_json)?;
        to_json(&query::knn(&self.conn, &q).map_err(js_err)?)
    }

    /// Hybrid search (reciprocal-rank fusion of a text query and a KNN query).
    pub fn hybrid(
        &self,
        text_json: JsValue,
        knn_json: JsValue,
        limit: usize,
    ) -> Result<String, JsValue> {
        let sig = "Replica.hybrid(textJson: string, knnJson: string, limit: number)";
        let t: SearchQuery = parse("search query", &text(sig, "textJson", &text_json)?)?;
        let k: KnnQuery = parse("knn query", &text(sig, "knnJson", &knn_json)?)?;
        let now = ops::now_us(&self.conn).map_err(js_err)?;
        to_json(&query::hybrid(&self.conn, &t, &k, limit, now).map_err(js_err)?)
    }

    /// A digest of the logical state of the namespaces in `namespaces_json` (a JSON array;
    /// all when absent): equal to the node's `hivesync digest` for the same rows.
    pub fn digest(&self, namespaces_json: JsValue) -> Result<String, JsValue> {
        let sig = "Replica.digest(namespacesJson?: string)";
        let ns: Option<Vec<String>> = opt_text(sig, "namespacesJson", &namespaces_json)?
            .map(|t| parse("namespaces", &t))
            .transpose()?;
        to_json(&query::digest(&self.conn, ns.as_deref()).map_err(js_err)?)
    }

    /// The vector models this replica holds, as JSON.
    pub fn models(&self) -> Result<String, JsValue> {
        let m: Vec<Value> = schema::models(&self.conn)
            .map_err(js_err)?
            .into_iter()
            .map(|m| json!({"ns": m.ns, "model": m.model, "dims": m.dims}))
            .collect();
        to_json(&m)
    }

    /// Run a read-only SQL query with JSON array parameters; returns `{"columns":[..],"rows":[[..]..]}`.
    /// Statements that would write are refused.
    pub fn sql(&self, sql: JsValue, params_json: JsValue) -> Result<String, JsValue> {
        let sig = "Replica.sql(sql: string, paramsJson?: string)";
        let sql = text(sig, "sql", &sql)?;
        let params: Vec<Value> = opt_text(sig, "paramsJson", &params_json)?
            .map(|p| parse("params", &p))
            .transpose()?
            .unwrap_or_default();
        to_json(&query::sql_json(&self.conn, &sql, &params).map_err(js_err)?)
    }

    /// The whole database as SQLite file bytes (opens in the native node: `hivesync serve --db`).
    #[wasm_bindgen(js_name = exportBytes)]
    pub fn export_bytes(&mut self) -> Result<Vec<u8>, JsValue> {
        let data = self.conn.serialize(rusqlite::MAIN_DB).map_err(js_err)?;
        Ok(data.to_vec())
    }

    /// Replace this replica's contents with a database file's bytes (from `exportBytes` or a
    /// native node's file, checkpointed). The file must carry a schema this build knows.
    #[wasm_bindgen(js_name = importBytes)]
    pub fn import_bytes(&mut self, file: JsValue) -> Result<(), JsValue> {
        let mut image = bytes("Replica.importBytes(bytes: Uint8Array)", "bytes", &file)?;
        self.drop_snapshot();
        if image.len() < 100 || &image[..16] != b"SQLite format 3\0" {
            return Err(JsError::new("not an SQLite database file").into());
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
            return Err(JsError::new(&format!("the database file is damaged: {ok}")).into());
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
        // Everything may differ now.
        self.live.mark_all();
        Ok(())
    }
}

/// The hivesync version.
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}
