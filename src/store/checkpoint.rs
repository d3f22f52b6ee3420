//! WAL checkpoints off the write path.
//!
//! The writer runs with `wal_autocheckpoint = 0`, so no commit ever pays for a checkpoint. This
//! thread, on its own connection, runs a PASSIVE checkpoint (which never blocks the writer or
//! readers) whenever the WAL passes a size threshold, and again when writes go quiet.
//!
//! PASSIVE alone does not bound the WAL under constant writes: the WAL only restarts from its
//! beginning when a write transaction starts after a checkpoint that caught up completely, and
//! a busy writer always gets its next commit in first (measured: 80 MB of WAL for 60 MB of
//! writes). So past [`WAL_HARD_LIMIT_BYTES`] the writer itself runs a PASSIVE checkpoint right
//! after its commit, from SQLite's WAL hook (the way SQLite's own autocheckpoint works). Since
//! this thread has already copied nearly everything, that pass copies only the last few
//! transactions' pages, and the next write transaction restarts the WAL (the writer's
//! `journal_size_limit` keeps the file for reuse). Two earlier designs stalled writes instead:
//! a TRUNCATE checkpoint from this thread (it copies a whole WAL while holding writes off, and
//! left to SQLite's busy handler it could lose the write lock every time to a writer
//! committing back to back: 46 MB of WAL seen in CI), and a second PASSIVE pass from this
//! thread holding the pool's writer mutex (on a busy 2-core machine the thread could be
//! descheduled while holding it: 10-25 ms write stalls every 16 MiB of WAL). When this process
//! has no writer (another process writes the file), the escalation is a TRUNCATE with a short
//! busy timeout, retried on the next tick.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::Result;

/// Checkpoint when the WAL file passes this many bytes: 4 MiB is about 1,000 pages of 4 KiB,
/// SQLite's own autocheckpoint default.
pub const WAL_THRESHOLD_BYTES: u64 = 4 * 1024 * 1024;
/// Escalate to a TRUNCATE checkpoint past this size.
pub const WAL_HARD_LIMIT_BYTES: u64 = 4 * WAL_THRESHOLD_BYTES;
/// Longest a TRUNCATE checkpoint waits for the writer or readers before giving up: writes
/// stall at most about this long.
const TRUNCATE_WAIT: Duration = Duration::from_millis(100);
/// How often the thread looks at the WAL size.
const TICK: Duration = Duration::from_millis(50);

/// Counters the checkpointer exposes (for `/metrics`).
#[derive(Default, Debug)]
pub struct CheckpointStats {
    /// Checkpoints run.
    pub runs: AtomicU64,
    /// Frames copied back into the database.
    pub frames: AtomicU64,
}

/// The checkpoint thread; stops when dropped.
pub struct Checkpointer {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    /// Shared counters.
    pub stats: Arc<CheckpointStats>,
}

fn wal_path(db: &Path) -> PathBuf {
    let mut s = db.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

impl Checkpointer {
    /// Start checkpointing the database at `path`; `writer` is the pool's writer, on which a
    /// WAL hook is installed (None when this process does not write).
    pub fn start(path: &Path, writer: Option<&mut Connection>) -> Result<Checkpointer> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(TRUNCATE_WAIT)?;
        let page: u64 = conn.query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))? as u64;
        // After each commit SQLite tells the writer how many frames its WAL holds. The file's
        // size cannot tell: the WAL restarts from its beginning without shrinking the file.
        let frames = Arc::new(AtomicU64::new(0));
        let has_writer = writer.is_some();
        if let Some(w) = writer {
            let f = frames.clone();
            let hard_frames = WAL_HARD_LIMIT_BYTES / (page + 24);
            w.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, n: i32| {
                let n = n.max(0) as u64;
                f.store(n, Ordering::Relaxed);
                if n > hard_frames {
                    // Past the hard limit the writer itself, between two of its
                    // transactions, runs a PASSIVE checkpoint (see the module docs).
                    if let Err(e) = wal.checkpoint() {
                        tracing::debug!(error = %e, "writer-side wal checkpoint");
                    }
                }
                Ok(())
            }))?;
        }
        let wal_bytes = move || frames.load(Ordering::Relaxed) * (page + 24);
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(CheckpointStats::default());
        let wal = wal_path(path);
        let (stop2, stats2) = (stop.clone(), stats.clone());
        let handle = std::thread::Builder::new()
            .name("hivesync-checkpoint".into())
            .spawn(move || run(conn, has_writer, &wal, wal_bytes, &stop2, &stats2))?;
        Ok(Checkpointer {
            stop,
            handle: Some(handle),
            stats,
        })
    }
}

fn run(
    conn: Connection,
    has_writer: bool,
    wal: &Path,
    wal_bytes: impl Fn() -> u64,
    stop: &AtomicBool,
    stats: &CheckpointStats,
) {
    let mut last = (0u64, None, 0u64);
    let mut file_max = 0u64;
    let mut quiet_ticks = 0u32;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(TICK);
        let meta = std::fs::metadata(wal).ok();
        let file = meta.as_ref().map_or(0, |m| m.len());
        // What the WAL holds: as this process's writer last reported it; or, when the file
        // grew (a commit by another process, which the hook does not see), the whole file.
        let hooked = wal_bytes();
        let size = if file > file_max {
            hooked.max(file)
        } else {
            hooked
        };
        file_max = file;
        let now = (file, meta.and_then(|m| m.modified().ok()), hooked);
        quiet_ticks = if now == last { quiet_ticks + 1 } else { 0 };
        last = now;
        // Checkpoint when the WAL is big, or when it has content and writes paused for ~1 s.
        let due = size > WAL_THRESHOLD_BYTES || (file > 0 && quiet_ticks == 20);
        if !due {
            continue;
        }
        // A PASSIVE checkpoint never blocks anyone; under constant writes it never catches up
        // completely, which the writer's own pass past the hard limit takes care of.
        // When another process writes this file, only a TRUNCATE, waiting on the busy timeout,
        // can hold it off long enough to restart the WAL.
        let truncate = !has_writer && size > WAL_HARD_LIMIT_BYTES;
        let res = checkpoint(&conn, if truncate { "TRUNCATE" } else { "PASSIVE" });
        match res {
            Ok((log, done)) => {
                stats.runs.fetch_add(1, Ordering::Relaxed);
                stats
                    .frames
                    .fetch_add(done.max(0) as u64, Ordering::Relaxed);
                if done < log {
                    // Readers held back part of the WAL: try again after another quiet second.
                    quiet_ticks = 0;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "wal checkpoint failed; retrying in about a second");
                quiet_ticks = 0;
            }
        }
    }
    // A last full checkpoint so a clean shutdown leaves a small WAL.
    let _ = checkpoint(&conn, "TRUNCATE");
}

/// A checkpoint in `mode` (PASSIVE or TRUNCATE): (frames in the WAL, frames checkpointed).
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    })
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
