//! The connection pool: one writer behind a mutex, N read-only readers in a lock-free queue.
//!
//! SQLite in WAL mode lets readers run beside one writer, each reader seeing the last commit
//! made before its read transaction began. Readers are checked out from a crossbeam
//! `ArrayQueue` (no lock on the hot path), returned on drop, and replaced when they come back
//! unhealthy. An in-memory database cannot be shared between connections, so it degrades to
//! the single writer connection for reads too.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use parking_lot::{Condvar, Mutex, MutexGuard};
use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};
use crate::schema;

/// Pool settings.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Number of read-only connections.
    pub readers: usize,
    /// How long a checkout waits for a free reader before failing with [`Error::PoolTimeout`].
    pub checkout_timeout: Duration,
    /// How long a statement waits on a locked database before SQLITE_BUSY.
    pub busy_timeout: Duration,
    /// Open no writer: follower mode, for a file something else (LiteFS) writes.
    pub read_only: bool,
    /// The writer's page cache, in KiB.
    pub cache_kib: i64,
    /// Each reader's page cache, in KiB.
    pub reader_cache_kib: i64,
    /// Memory-mapped I/O size per connection, in bytes.
    pub mmap_bytes: i64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            readers: 4,
            checkout_timeout: Duration::from_secs(5),
            busy_timeout: Duration::from_secs(5),
            read_only: false,
            // 64 MiB for the writer's working set. Readers read the database file through the
            // mmap below (the OS page cache, shared); only pages still in the WAL go through
            // their own caches, so 16 MiB each is plenty (at 64 MiB, the readers' caches held
            // about 250 MiB during the hostile suite's write flood).
            cache_kib: 64 * 1024,
            reader_cache_kib: 16 * 1024,
            // 2 GiB, the bundled SQLite's ceiling: with 256 MiB, 56% of a 100k x 384 vec0
            // index lay past the mapping and was re-read through each reader's page cache on
            // every KNN query (benches/knn.rs: 1.86x the scan floor at 256 MiB, 1.46x at 2 GiB).
            mmap_bytes: 2047 * 1024 * 1024,
        }
    }
}

/// Where the database lives.
#[derive(Clone, Debug)]
pub enum Location {
    /// A database file (WAL mode).
    File(PathBuf),
    /// A private in-memory database (one connection).
    Memory,
}

/// The pool.
pub struct Pool {
    location: Location,
    config: PoolConfig,
    writer: Option<Mutex<Connection>>,
    readers: ArrayQueue<Connection>,
    /// Wakes checkouts waiting for a reader; the mutex guards nothing but the wait itself.
    returned: (Mutex<()>, Condvar),
}

fn server_pragmas(conn: &Connection, cfg: &PoolConfig, cache_kib: i64) -> Result<()> {
    conn.busy_timeout(cfg.busy_timeout)?;
    conn.pragma_update(None, "cache_size", -cache_kib)?;
    conn.pragma_update(None, "mmap_size", cfg.mmap_bytes)?;
    schema::configure(conn)?;
    Ok(())
}

impl Pool {
    /// Open the pool: the writer first (which creates the file, sets WAL and migrates), then
    /// the readers.
    pub fn open(
        location: Location,
        config: PoolConfig,
        opts: &schema::SchemaOptions,
    ) -> Result<Pool> {
        schema::register_extensions();
        let mut pool = Pool {
            readers: ArrayQueue::new(config.readers.max(1)),
            location,
            config,
            writer: None,
            returned: (Mutex::new(()), Condvar::new()),
        };
        match &pool.location {
            Location::Memory => {
                let conn = Connection::open_in_memory()?;
                server_pragmas(&conn, &pool.config, pool.config.cache_kib)?;
                conn.pragma_update(None, "temp_store", "MEMORY")?;
                schema::migrate(&conn, opts)?;
                pool.writer = Some(Mutex::new(conn));
            }
            Location::File(path) => {
                if pool.config.read_only {
                    if !path.exists() {
                        return Err(Error::NotFound(format!(
                            "database {} does not exist; a read-only node serves an existing file",
                            path.display()
                        )));
                    }
                } else {
                    let conn = Self::open_writer(path, &pool.config, opts)?;
                    pool.writer = Some(Mutex::new(conn));
                }
                for _ in 0..pool.config.readers.max(1) {
                    let r = pool.open_reader()?;
                    let _ = pool.readers.push(r);
                }
                // Refuse a file written by a newer build even when we never migrate it.
                let r = pool.reader()?;
                schema::check_version(&r)?;
            }
        }
        Ok(pool)
    }

    fn open_writer(
        path: &Path,
        cfg: &PoolConfig,
        opts: &schema::SchemaOptions,
    ) -> Result<Connection> {
        create_private(path);
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        server_pragmas(&conn, cfg, cfg.cache_kib)?;
        // The writer's temporary tables (sorts inside its transactions) stay in memory. The
        // readers keep SQLite's default (in memory up to the cache's size, then a file): with
        // `temp_store = MEMORY` FTS5's sort of its matches by rank, which holds each match's
        // position list, ran 9% slower over 20,000 matches (benches/search.rs, issue 16).
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::invalid(format!(
                "{} could not be put in WAL mode (got {mode}); is it on a filesystem without shared memory?",
                path.display()
            )));
        }
        // NORMAL is durable in WAL mode except for the last commits before a power loss (not
        // a process crash), and saves an fsync per commit.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Checkpoints run on their own thread (see checkpoint.rs), never inside a commit.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // A restarted WAL keeps its file (up to this size) and overwrites it: appends that
        // reuse blocks need no allocation, so no wait on the filesystem journal while the
        // checkpointer syncs (a 4 MiB limit, cutting the file back at every restart, doubled
        // the commit latency's p99.9 at 1,000 commits/s).
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
        schema::migrate(&conn, opts)?;
        Ok(conn)
    }

    fn open_reader(&self) -> Result<Connection> {
        let Location::File(path) = &self.location else {
            return Err(Error::invalid("an in-memory pool has no separate readers"));
        };
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        server_pragmas(&conn, &self.config, self.config.reader_cache_kib)?;
        conn.pragma_update(None, "query_only", true)?;
        Ok(conn)
    }

    /// The number of read connections.
    pub fn readers(&self) -> usize {
        self.config.readers
    }

    /// The database file, if any.
    pub fn path(&self) -> Option<&Path> {
        match &self.location {
            Location::File(p) => Some(p),
            Location::Memory => None,
        }
    }

    /// True when the pool has no writer.
    pub fn is_read_only(&self) -> bool {
        self.writer.is_none()
    }

    /// The writer, waiting for the one in use to be returned.
    pub fn writer(&self) -> Result<MutexGuard<'_, Connection>> {
        let w = self.writer.as_ref().ok_or(Error::ReadOnly)?;
        w.try_lock_for(self.config.checkout_timeout)
            .ok_or(Error::PoolTimeout(self.config.checkout_timeout))
    }

    /// A reader, waiting up to the checkout timeout for one to be free.
    pub fn reader(&self) -> Result<Reader<'_>> {
        let Some(_) = self.path() else {
            let w = self.writer()?;
            return Ok(Reader {
                pool: self,
                inner: ReaderInner::Writer(w),
            });
        };
        let deadline = Instant::now() + self.config.checkout_timeout;
        loop {
            if let Some(conn) = self.readers.pop() {
                return Ok(Reader {
                    pool: self,
                    inner: ReaderInner::Pooled(Some(conn)),
                });
            }
            let mut g = self.returned.0.lock();
            // Re-check under the lock so a return between pop and wait is not missed.
            if let Some(conn) = self.readers.pop() {
                return Ok(Reader {
                    pool: self,
                    inner: ReaderInner::Pooled(Some(conn)),
                });
            }
            if self.returned.1.wait_until(&mut g, deadline).timed_out() {
                return Err(Error::PoolTimeout(self.config.checkout_timeout));
            }
        }
    }

    fn give_back(&self, conn: Connection) {
        // A reader that comes back inside a transaction, or whose last use failed badly, is
        // closed and replaced rather than handed to the next caller.
        let healthy = conn.is_autocommit() || conn.execute_batch("ROLLBACK").is_ok();
        let conn = if healthy
            && conn
                .prepare_cached("SELECT 1")
                .and_then(|mut s| s.query_row([], |_| Ok(())))
                .is_ok()
        {
            Some(conn)
        } else {
            tracing::warn!("replacing an unhealthy reader connection");
            match self.open_reader() {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!(error = %e, "could not reopen a reader; the pool shrinks by one");
                    None
                }
            }
        };
        if let Some(c) = conn {
            let _ = self.readers.push(c);
        }
        let _g = self.returned.0.lock();
        self.returned.1.notify_one();
    }
}

enum ReaderInner<'p> {
    Pooled(Option<Connection>),
    Writer(MutexGuard<'p, Connection>),
}

/// A checked-out read connection; returns itself to the pool on drop.
pub struct Reader<'p> {
    pool: &'p Pool,
    inner: ReaderInner<'p>,
}

impl Deref for Reader<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        match &self.inner {
            ReaderInner::Pooled(Some(c)) => c,
            ReaderInner::Pooled(None) => unreachable!("reader used after return"),
            ReaderInner::Writer(g) => g,
        }
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let ReaderInner::Pooled(c) = &mut self.inner {
            if let Some(c) = c.take() {
                self.pool.give_back(c);
            }
        }
    }
}

/// A new database file is created readable by its owner only (SQLite would make it 0644, and
/// its WAL and shared-memory files take the database file's mode): it holds every namespace's
/// rows and the node's NATS signing key. An existing file keeps its mode.
fn create_private(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
    }
    #[cfg(not(unix))]
    let _ = path;
}
