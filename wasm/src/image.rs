//! A replica started from a database image (`GET /v1/image`, `src/node/serve/image.rs`): the
//! node's rows in a ready SQLite file, indexes built, at one seq `at`, written as it downloads
//! and then opened in place of the replica's old file, which no row-by-row snapshot can match
//! for speed (docs/design.md, "First sync").
//!
//! In OPFS the image is written, chunk by chunk as it arrives (never whole in memory), into a
//! file of its own beside the replica's: generation `g + 1` of the replica's file
//! (`name.db~N`, where generation 0 is `name.db`). When the last byte is in, the replica's own
//! state (client id, write numbers, pending writes: `hivesync::outbox::carry_out`) is carried
//! into it in one transaction that also marks it complete (`outbox::CARRIED`), the old
//! generation is closed and removed, and the new one is the replica. A page closed at any
//! moment leaves either the old file whole (an unmarked newer one is removed at the next
//! open) or the new one marked (the older ones are removed then).
//!
//! In memory (no OPFS), the image is gathered in memory (where the replica lives anyway) and
//! opened with `sqlite3_deserialize`.

use hivesync::rusqlite::{self, Connection, OpenFlags};
use hivesync::{apply, outbox, schema};
use rsqlite_vfs::transfer::{DbTransfer, ImportTarget};
use rsqlite_vfs::VfsFilesManager;
use serde_json::json;
use sqlite_wasm_vfs::sahpool::{OpfsSAHImportTarget, OpfsSAHPoolUtil};
use wasm_bindgen::prelude::*;

use crate::args::bytes;
use crate::{files_of, js_err, persistent_pragmas, Replica};

/// The largest image a replica in memory takes (it must fit in the module's memory beside the
/// replica it replaces).
const MAX_MEMORY_IMAGE: u64 = 1 << 30;

/// Where a persistent replica's file lives: its pool (held for the Worker's lifetime), and
/// which generation of the file holds the replica.
pub(crate) struct Opfs {
    pub(crate) pool: &'static OpfsSAHPoolUtil,
    pub(crate) vfs: String,
    /// `name.db`: generation 0's name and the stem of the others'.
    pub(crate) base: String,
    pub(crate) gen: u32,
}

pub(crate) fn gen_file(base: &str, gen: u32) -> String {
    if gen == 0 {
        base.to_string()
    } else {
        format!("{base}~{gen}")
    }
}

/// The generations of `base` the pool holds, newest first.
fn generations(pool: &OpfsSAHPoolUtil, base: &str) -> Result<Vec<u32>, JsValue> {
    let stem = format!("{base}~");
    let mut gens: Vec<u32> = pool
        .names()
        .map_err(|e| js_err(format!("{e:?}")))?
        .iter()
        .map(|f| f.trim_start_matches('/'))
        .filter_map(|f| {
            if f == base {
                Some(0)
            } else {
                f.strip_prefix(&stem)?.parse().ok()
            }
        })
        .collect();
    gens.sort_unstable_by(|a, b| b.cmp(a));
    gens.dedup();
    Ok(gens)
}

fn remove_gen(pool: &OpfsSAHPoolUtil, base: &str, gen: u32) {
    for f in files_of(pool, &gen_file(base, gen)) {
        let _ = pool.remove(&f);
    }
}

/// Whether generation `gen` (> 0) was completed: the outbox carried in and marked.
fn complete(vfs: &str, file: &str) -> bool {
    let Ok(c) = Connection::open_with_flags_and_vfs(file, OpenFlags::SQLITE_OPEN_READ_WRITE, vfs)
    else {
        return false;
    };
    let _ = c.pragma_update(None, "locking_mode", "EXCLUSIVE");
    c.query_row(
        "SELECT EXISTS (SELECT 1 FROM meta WHERE key = ?1)",
        [outbox::CARRIED],
        |r| r.get::<_, bool>(0),
    )
    .unwrap_or(false)
}

/// The generation that holds the replica `base`: the newest complete one. An incomplete newer
/// one (a bootstrap cut off) and every older one go.
pub(crate) fn current_gen(pool: &OpfsSAHPoolUtil, vfs: &str, base: &str) -> Result<u32, JsValue> {
    let gens = generations(pool, base)?;
    let mut chosen = None;
    for &g in &gens {
        if chosen.is_some() || (g > 0 && !complete(vfs, &gen_file(base, g))) {
            remove_gen(pool, base, g);
        } else {
            chosen = Some(g);
        }
    }
    Ok(chosen.unwrap_or(0))
}

/// An image being written.
pub(crate) enum Boot {
    Opfs {
        /// Where the bytes go (published under the generation's name by its commit).
        target: OpfsSAHImportTarget<'static>,
        /// Bytes written, of `size`.
        written: u64,
        size: u64,
        gen: u32,
        at: i64,
    },
    Memory {
        buf: Vec<u8>,
        size: usize,
        at: i64,
    },
}

impl Boot {
    /// Bytes written, of how many.
    fn progress(&self) -> (u64, u64) {
        match self {
            Boot::Opfs { written, size, .. } => (*written, *size),
            Boot::Memory { buf, size, .. } => (buf.len() as u64, *size as u64),
        }
    }

    /// The next chunk (its length checked by the caller).
    fn write(&mut self, chunk: &[u8]) -> Result<(), JsValue> {
        match self {
            Boot::Opfs {
                target, written, ..
            } => {
                let r = target.write_at(*written, chunk);
                *written += chunk.len() as u64;
                r.map_err(|e| js_err(format!("cannot store the image in OPFS: {e:?}")))
            }
            Boot::Memory { buf, .. } => {
                buf.extend_from_slice(chunk);
                Ok(())
            }
        }
    }
}

#[wasm_bindgen]
impl Replica {
    /// Start writing a database image of `size` bytes (the `Hivesync-Image-Bytes` header) at
    /// seq `at` (`Hivesync-At`): chunks follow with `bootstrapWrite`, then `bootstrapFinish`
    /// (or `bootstrapAbort`). The replica stays readable and writable meanwhile.
    #[wasm_bindgen(js_name = bootstrapBegin)]
    pub fn bootstrap_begin(&mut self, size: f64, at: f64) -> Result<(), JsValue> {
        let sig = "Replica.bootstrapBegin(size: number, at: number)";
        if !(size.is_finite() && size >= 512.0 && size.fract() == 0.0 && size < 2f64.powi(52)) {
            return Err(crate::args::type_error(
                sig,
                "`size` must be a whole number of bytes, at least 512",
            ));
        }
        if !(at.is_finite() && at >= 1.0 && at.fract() == 0.0 && at < 2f64.powi(53)) {
            return Err(crate::args::type_error(
                sig,
                "`at` must be a seq (a whole number, at least 1)",
            ));
        }
        self.bootstrap_abort();
        let (size, at) = (size as u64, at as i64);
        self.boot = Some(match &self.opfs {
            Some(o) => {
                let gen = o.gen + 1;
                // A leftover of an earlier try under this name goes first.
                remove_gen(o.pool, &o.base, gen);
                let mut target = o
                    .pool
                    .create_import(&gen_file(&o.base, gen), size)
                    .map_err(|e| js_err(format!("cannot store the image in OPFS: {e:?}")))?;
                // The file takes its whole size at once (its last page written first, the
                // rest in place as it comes): grown chunk by chunk, an in-memory OPFS (a private
                // window's) copied the whole file at every chunk, minutes for 700 MiB.
                if let Err(e) = target.write_at(size - 512, &[0u8; 512]) {
                    return Err(js_err(format!(
                        "cannot store the image in OPFS (no room for {size} bytes?): {:?}",
                        target.abort_with_error(e)
                    )));
                }
                Boot::Opfs {
                    target,
                    written: 0,
                    size,
                    gen,
                    at,
                }
            }
            None => {
                if size > MAX_MEMORY_IMAGE {
                    return Err(js_err(format!(
                        "the image ({size} bytes) is too large for a replica kept in memory"
                    )));
                }
                let mut buf = Vec::new();
                buf.try_reserve_exact(size as usize)
                    .map_err(|_| js_err(format!("no memory for an image of {size} bytes")))?;
                Boot::Memory {
                    buf,
                    size: size as usize,
                    at,
                }
            }
        });
        Ok(())
    }

    /// The next chunk of the image.
    #[wasm_bindgen(js_name = bootstrapWrite)]
    pub fn bootstrap_write(&mut self, chunk: JsValue) -> Result<(), JsValue> {
        let chunk = bytes("Replica.bootstrapWrite(chunk: Uint8Array)", "chunk", &chunk)?;
        let Some(boot) = self.boot.as_mut() else {
            return Err(js_err(
                "bootstrapWrite: no image is being written (bootstrapBegin first)",
            ));
        };
        let (written, size) = boot.progress();
        let r = if written + chunk.len() as u64 > size {
            Err(js_err(format!(
                "the image is longer than the {size} bytes announced"
            )))
        } else if written == 0 && !chunk.starts_with(b"SQLite format 3\0") {
            Err(js_err("the image is not an SQLite database file"))
        } else {
            boot.write(&chunk)
        };
        if r.is_err() {
            self.bootstrap_abort();
        }
        r
    }

    /// Give up the image being written (the replica stays as it was).
    #[wasm_bindgen(js_name = bootstrapAbort)]
    pub fn bootstrap_abort(&mut self) {
        if let Some(Boot::Opfs { target, .. }) = self.boot.take() {
            let _ = target.abort();
        }
    }

    /// The whole image is in: open it, carry the replica's own state over (pending writes
    /// redone on top), and make it the replica. Returns `{"at", "pending"}` (the
    /// pending writes carried over). On an
    /// error the replica stays as it was.
    #[wasm_bindgen(js_name = bootstrapFinish)]
    pub fn bootstrap_finish(&mut self) -> Result<String, JsValue> {
        let boot = self
            .boot
            .take()
            .ok_or_else(|| js_err("bootstrapFinish: no image is being written"))?;
        self.drop_snapshot();
        let (conn, gen, at) = match boot {
            Boot::Opfs {
                mut target,
                written,
                size,
                gen,
                at,
            } => {
                let o = self.opfs.as_ref().ok_or_else(|| js_err("no OPFS pool"))?;
                if written != size {
                    let _ = target.abort();
                    return Err(js_err(format!(
                        "the image is incomplete: {written} of {size} bytes"
                    )));
                }
                // Read as a rollback-journal file (its WAL, if it had one, is not part of it).
                if let Err(e) = target.write_at(18, &[1, 1]) {
                    return Err(js_err(format!(
                        "cannot store the image in OPFS: {:?}",
                        target.abort_with_error(e)
                    )));
                }
                target
                    .commit()
                    .map_err(|e| js_err(format!("cannot store the image in OPFS: {e:?}")))?;
                let file = gen_file(&o.base, gen);
                let opened = Connection::open_with_flags_and_vfs(
                    &file,
                    OpenFlags::SQLITE_OPEN_READ_WRITE,
                    o.vfs.as_str(),
                )
                .map_err(js_err)
                .and_then(|c| persistent_pragmas(&c).map(|()| c));
                match opened {
                    Ok(c) => (c, Some(gen), at),
                    Err(e) => {
                        remove_gen(o.pool, &o.base, gen);
                        return Err(e);
                    }
                }
            }
            Boot::Memory { buf, size, at } => {
                if buf.len() != size {
                    return Err(js_err(format!(
                        "the image is incomplete: {} of {size} bytes",
                        buf.len()
                    )));
                }
                let mut c = Connection::open_in_memory().map_err(js_err)?;
                let mut image = buf;
                if image.len() > 19 {
                    // As `importBytes`: read as a rollback-journal file.
                    image[18] = 1;
                    image[19] = 1;
                }
                c.deserialize_read_exact(rusqlite::MAIN_DB, image.as_slice(), size, false)
                    .map_err(js_err)?;
                (c, None, at)
            }
        };
        match self.adopt(conn, at) {
            Ok(v) => {
                if let (Some(o), Some(gen)) = (self.opfs.as_mut(), gen) {
                    // The old generation is closed (the connection replaced): it goes.
                    let old = o.gen;
                    o.gen = gen;
                    remove_gen(o.pool, &o.base, old);
                }
                Ok(v)
            }
            Err(e) => {
                if let (Some(o), Some(gen)) = (self.opfs.as_ref(), gen) {
                    remove_gen(o.pool, &o.base, gen);
                }
                Err(e)
            }
        }
    }
}

impl Replica {
    /// Check the image `conn` holds, carry this replica's own state into it, and make it the
    /// replica.
    fn adopt(&mut self, conn: Connection, at: i64) -> Result<String, JsValue> {
        schema::check_version(&conn)
            .map_err(|e| js_err(format!("the image cannot be used: {e}")))?;
        let seq = apply::applied_seq(&conn).map_err(js_err)?;
        if seq != at {
            return Err(js_err(format!(
                "the image is at seq {seq}, not at {at} as its header said"
            )));
        }
        schema::configure(&conn).map_err(js_err)?;
        schema::migrate(&conn, &Default::default()).map_err(js_err)?;
        let carried = outbox::carry_out(&self.conn).map_err(js_err)?;
        outbox::carry_in(&conn, &carried).map_err(js_err)?;
        self.conn = conn;
        // A new copy of everything: every live query runs again.
        self.live.mark_all();
        Ok(json!({"at": at, "pending": carried.pending()}).to_string())
    }
}
