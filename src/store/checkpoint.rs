//! WAL checkpoints off the write path.
//!
//! The writer runs with `wal_autocheckpoint = 0`, so no commit ever pays for a checkpoint. This
//! thread, on its own connection, runs a PASSIVE checkpoint (which never blocks the writer or
//! readers) whenever the WAL passes a size threshold, and again when writes go quiet.
//!
//! PASSIVE alone does not bound the WAL under constant writes: the WAL only rewinds when a
//! write transaction starts after a checkpoint that caught up completely, and a busy writer
//! always gets its next commit in first (measured: 80 MB of WAL for 60 MB of writes). So past
//! [`WAL_HARD_LIMIT_BYTES`] the thread escalates to a TRUNCATE checkpoint, which holds off new
//! writes for the length of the checkpoint and leaves an empty WAL.
//!
//! A TRUNCATE checkpoint must win the write lock. Left to SQLite's busy handler it can lose
//! every time to a writer that commits back to back (its sleeps miss the short gaps between
//! transactions; seen in CI: 46 MB of WAL), so the thread first takes the pool's writer mutex,
//! which parking_lot hands over fairly. Holding it, this process cannot be mid-transaction;
//! the short busy timeout then only waits for readers and other processes, after which the
//! checkpoint gives up, releases the mutex and retries on the next tick.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;
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
/// Longest the thread waits for the pool's writer mutex before a TRUNCATE checkpoint.
const WRITER_WAIT: Duration = Duration::from_secs(2);
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
    /// Start checkpointing the database at `path`; `writer` is the pool's writer, held during
    /// TRUNCATE checkpoints (None when this process does not write).
    pub fn start(path: &Path, writer: Option<Arc<Mutex<Connection>>>) -> Result<Checkpointer> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(TRUNCATE_WAIT)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(CheckpointStats::default());
        let wal = wal_path(path);
        let (stop2, stats2) = (stop.clone(), stats.clone());
        let handle = std::thread::Builder::new()
            .name("hivesync-checkpoint".into())
            .spawn(move || run(conn, writer, &wal, &stop2, &stats2))?;
        Ok(Checkpointer {
            stop,
            handle: Some(handle),
            stats,
        })
    }
}

fn run(
    conn: Connection,
    writer: Option<Arc<Mutex<Connection>>>,
    wal: &Path,
    stop: &AtomicBool,
    stats: &CheckpointStats,
) {
    let mut last_size = 0u64;
    let mut quiet_ticks = 0u32;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(TICK);
        let size = std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0);
        quiet_ticks = if size == last_size {
            quiet_ticks + 1
        } else {
            0
        };
        last_size = size;
        // Checkpoint when the WAL is big, or when it has content and writes paused for ~1 s.
        let due = size > WAL_THRESHOLD_BYTES || (size > 0 && quiet_ticks == 20);
        if !due {
            continue;
        }
        let truncate = size > WAL_HARD_LIMIT_BYTES;
        let mode = if truncate { "TRUNCATE" } else { "PASSIVE" };
        // Keep this process's writer out while the TRUNCATE runs (see the module docs).
        let _writer = match (&writer, truncate) {
            (Some(w), true) => match w.try_lock_for(WRITER_WAIT) {
                Some(g) => Some(g),
                None => {
                    tracing::warn!("wal checkpoint: the writer stayed busy; retrying");
                    continue;
                }
            },
            _ => None,
        };
        match conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        }) {
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
    let _ = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
