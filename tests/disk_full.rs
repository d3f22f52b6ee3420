//! Disk full: the node's database on a small size-limited filesystem (a 4 MiB tmpfs; a loop
//! mounted ext4 image when tmpfs cannot be mounted; skipped, saying why, only when neither can,
//! which needs root).
//!
//! A subscriber stays connected from start to end. A filler file takes all the space but a
//! little; writes of new rows then go on until one fails, and:
//! - the failure is a clear `error` (SQLite's SQLITE_FULL, "database or disk is full"), and so
//!   is the CLI's when it writes to the full disk;
//! - the node stays up (`/healthz`), its head did not move for the failed writes, and none of
//!   their rows exist;
//! - the subscriber received every acknowledged write, and nothing of the failed ones;
//! - `hivesync check` passes on the full disk;
//! - once the filler is deleted, writes succeed again and reach the same subscriber, `check`
//!   passes, and after a SIGKILL and a restart every acknowledged row is still there.
//!
//! `HIVESYNC_DISK_FULL_FS=ext4` skips tmpfs and runs on the loop-mounted ext4 image.
//!
//! Nothing waits on timing luck: every wait polls with a deadline, and the disk is topped up to
//! exactly full (the filler grows until ENOSPC) before the checks that need it full.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Client, Event, Feed, Node, NodeOpts};
use hivesync::model::{Kind, WriteOp};
use hivesync::protocol::{ErrorMsg, ServerMsg};
use hivesync::store::{PoolConfig, Store, StoreOptions};
use serde_json::json;

/// A small filesystem mounted on a fresh directory; unmounted (and removed) on drop.
struct SmallFs {
    /// The mount point.
    dir: PathBuf,
    /// What it is, for the log.
    what: String,
    /// Holds the mount point (and the ext4 image, in the fallback).
    _base: tempfile::TempDir,
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{cmd:?} did not run: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl SmallFs {
    /// A `size_mib` filesystem: tmpfs, or else a loop-mounted ext4 image.
    fn mount(size_mib: u64) -> Result<SmallFs, String> {
        let base = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dir = base.path().join("mnt");
        std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
        let tmpfs = if std::env::var("HIVESYNC_DISK_FULL_FS").as_deref() == Ok("ext4") {
            Err("HIVESYNC_DISK_FULL_FS=ext4".to_string())
        } else {
            run(Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
                .arg(&dir))
        };
        let e1 = match tmpfs {
            Ok(()) => {
                return Ok(SmallFs {
                    dir,
                    what: format!("tmpfs of {size_mib} MiB"),
                    _base: base,
                })
            }
            Err(e) => e,
        };
        let img = base.path().join("fs.img");
        let ext4 = (|| {
            let f = std::fs::File::create(&img).map_err(|e| e.to_string())?;
            f.set_len(size_mib * 1024 * 1024)
                .map_err(|e| e.to_string())?;
            run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img))?;
            run(Command::new("mount")
                .args(["-o", "loop"])
                .arg(&img)
                .arg(&dir))
        })();
        match ext4 {
            Ok(()) => Ok(SmallFs {
                dir,
                what: format!("loop-mounted ext4 image of {size_mib} MiB"),
                _base: base,
            }),
            Err(e2) => Err(format!("tmpfs: {e1}; loop ext4: {e2}")),
        }
    }

    /// Bytes free, as `df` sees them.
    fn avail(&self) -> u64 {
        let out = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.dir)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        for _ in 0..50 {
            if run(Command::new("umount").arg(&self.dir)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // Still busy after 5 s: detach it so it goes once its last user does.
        let _ = run(Command::new("umount").arg("-l").arg(&self.dir));
    }
}

/// Grow `path` by zeros until the filesystem is full (ENOSPC); returns its size.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let chunk = vec![0u8; 4096];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // tmpfs and ext4 both allocate on write: what was written is taken.
    let _ = f.sync_all();
    f.metadata().unwrap().len()
}

/// A write over the socket: `written` seq or the `error`.
async fn write(c: &mut Client, req: &str, ops: Vec<WriteOp>) -> Result<i64, ErrorMsg> {
    c.send_write(req, ops).await;
    // This connection subscribes to nothing: the answer is the next message.
    match c.recv().await {
        ServerMsg::Written { req: r, seq } if r == req => Ok(seq),
        ServerMsg::Error(e) => Err(e),
        other => panic!("unexpected answer to {req}: {other:?}"),
    }
}

/// A new entity with a large, varied description (so the file and the full-text index grow).
fn big(id: &str, n: usize) -> WriteOp {
    let words = [
        "granite", "harbor", "juniper", "kestrel", "lagoon", "meadow", "orchid", "quartz",
    ];
    let desc: Vec<String> = (0..n)
        .map(|i| format!("{}{}", words[(i * 7 + id.len()) % words.len()], i % 97))
        .collect();
    WriteOp::upsert(
        Kind::Entity,
        "default",
        json!({"id": id, "kind": "blob", "name": format!("Big {id}"), "description": desc.join(" ")}),
    )
}

/// The subscriber connected throughout: every message checked by [`Feed`]; a lost
/// connection or an unexpected message is recorded.
struct Sub {
    feed: Arc<Mutex<Feed>>,
    lost: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

async fn subscriber(url: &str) -> Sub {
    let mut c = Client::connect(url).await;
    c.hello(None).await;
    c.subscribe("s", Some(0), None).await;
    let feed = Arc::new(Mutex::new(Feed::from(0)));
    let lost = Arc::new(Mutex::new(None));
    let (f, l) = (feed.clone(), lost.clone());
    let task = tokio::spawn(async move {
        loop {
            match c.next_event_within(Duration::from_secs(3600)).await {
                Some(Event::Msg(m)) => {
                    if !f.lock().unwrap().take("s", &m) {
                        *l.lock().unwrap() = Some(format!("unexpected message {m:?}"));
                        return;
                    }
                }
                other => {
                    *l.lock().unwrap() = Some(format!("connection ended: {other:?}"));
                    return;
                }
            }
        }
    });
    Sub { feed, lost, task }
}

impl Sub {
    /// Wait until the subscriber has seen `seq` (it must still be connected).
    async fn reach(&self, seq: i64, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(why) = self.lost.lock().unwrap().clone() {
                panic!("the subscriber lost its stream ({what}): {why}");
            }
            if self.feed.lock().unwrap().last >= Some(seq) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the subscriber did not reach seq {seq} in 20 s ({what}); at {:?}",
                self.feed.lock().unwrap().last
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn ids(&self) -> Vec<String> {
        self.feed
            .lock()
            .unwrap()
            .changes
            .iter()
            .map(|c| c.id.clone())
            .collect()
    }
}

fn check_ok(db: &Path, when: &str) -> serde_json::Value {
    let out = common::cli(db, &["--json", "check"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        out.status.success() && report["ok"] == true,
        "hivesync check failed {when}: {report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    report
}

/// Entity ids present in the file.
fn entity_ids(db: &Path) -> Vec<String> {
    let store = Store::open(
        db,
        StoreOptions {
            pool: PoolConfig {
                readers: 1,
                read_only: true,
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    store
        .read(|c| {
            let mut s = c.prepare("SELECT id FROM entities WHERE ns = 'default' ORDER BY id")?;
            let ids = s
                .query_map([], |r| r.get(0))?
                .collect::<Result<Vec<String>, _>>()?;
            Ok(ids)
        })
        .unwrap()
}

fn says_disk_full(s: &str) -> bool {
    let s = s.to_lowercase();
    s.contains("disk is full") || s.contains("disk holding the database is full")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_fails_cleanly_and_recovers() {
    let t0 = Instant::now();
    let fs = match SmallFs::mount(4) {
        Ok(fs) => fs,
        Err(why) => {
            println!("SKIPPED: no small filesystem could be mounted here (needs root): {why}");
            return;
        }
    };
    println!("disk full: database on a {}", fs.what);
    let db = fs.dir.join("full.db");
    let filler = fs.dir.join("filler");
    // The node's own directory (log) is on the ordinary disk; the database on the small one.
    let mut node = Node::start_in(
        tempfile::tempdir().unwrap(),
        db.clone(),
        NodeOpts::default(),
    )
    .await;
    let sub = subscriber(&node.url()).await;
    let mut w = Client::connect(&node.url()).await;
    w.hello(None).await;

    // Some rows while there is room.
    let mut acked: Vec<(String, i64)> = Vec::new();
    for i in 0..5 {
        let id = format!("pre{i}");
        let seq = write(&mut w, &format!("pre{i}"), vec![big(&id, 200)])
            .await
            .unwrap_or_else(|e| panic!("write with room failed: {e:?}"));
        acked.push((id, seq));
    }
    sub.reach(acked.last().unwrap().1, "before the disk fills")
        .await;

    // Fill the disk, then leave a little room: a few writes fit, then one fails.
    let size = fill(&filler);
    let room = 256 * 1024;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(size - room)
        .unwrap();
    println!(
        "filler of {size} bytes, cut by {room}: {} bytes free",
        fs.avail()
    );

    let fill_start = Instant::now();
    let mut failed: Vec<String> = Vec::new();
    let err = loop {
        assert!(
            acked.len() < 2000 && fill_start.elapsed() < Duration::from_secs(45),
            "writes never failed on a full disk ({} acknowledged, {} bytes free)",
            acked.len(),
            fs.avail()
        );
        let id = format!("fill{}", acked.len());
        match write(
            &mut w,
            &id,
            vec![big(&id, 100), big(&format!("{id}b"), 100)],
        )
        .await
        {
            Ok(seq) => {
                acked.push((id.clone(), seq));
                acked.push((format!("{id}b"), seq));
            }
            Err(e) => {
                failed.push(id.clone());
                failed.push(format!("{id}b"));
                break e;
            }
        }
    };
    println!(
        "write failed after {} acknowledged rows: code {:?}, message {:?}",
        acked.len(),
        err.code,
        err.message
    );
    assert!(
        says_disk_full(&err.message),
        "the error says the disk is full: {err:?}"
    );
    let last_acked = acked.last().unwrap().1;

    // Exactly full from here on (the failed write may have left a few bytes). The failed
    // write's frames stay allocated in the WAL, and a later write small enough to fit in them
    // succeeds (SQLite reuses WAL space past the last commit), so the writes below are larger.
    fill(&filler);
    assert_eq!(fs.avail(), 0, "the filesystem is full");
    // The checkpointer runs once writes pause (~1 s): copying the WAL into the database file
    // needs the file to grow, so it fails too. Wait for that rather than race it: everything
    // below then holds with the failed checkpoint behind it.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !node.log_text().contains("wal checkpoint failed") {
        assert!(
            Instant::now() < deadline,
            "no checkpoint attempt on the full disk within 15 s:\n{}",
            node.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another socket write fails the same way; so does the CLI.
    let e = write(&mut w, "again", vec![big("again", 2000)])
        .await
        .expect_err("a write on a full disk");
    assert!(says_disk_full(&e.message), "second failure: {e:?}");
    failed.push("again".into());
    let out = node.cli(&[
        "--json",
        "put",
        &serde_json::to_string(&big("cli-full", 3000)).unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    println!("CLI put on the full disk: {}", stderr.trim());
    assert!(
        !out.status.success(),
        "the CLI put succeeded on a full disk"
    );
    assert!(
        says_disk_full(&stderr),
        "the CLI says the disk is full: {stderr}"
    );
    failed.push("cli-full".into());

    // The node is up, its head did not move, the subscriber got every acknowledged write.
    let health = node.health().await;
    assert_eq!(health["status"], "ok");
    assert_eq!(
        health["head"].as_i64(),
        Some(last_acked),
        "the head stays at the last acknowledged write"
    );
    sub.reach(last_acked, "on the full disk").await;
    let seen = sub.ids();
    for (id, _) in &acked {
        assert!(seen.contains(id), "the subscriber never got {id}");
    }
    // The database is sound while full, and holds exactly the acknowledged rows.
    let report = check_ok(&db, "on the full disk");
    assert_eq!(report["head"].as_i64(), Some(last_acked));
    let mut want: Vec<String> = acked.iter().map(|(id, _)| id.clone()).collect();
    want.sort();
    assert_eq!(entity_ids(&db), want, "exactly the acknowledged rows");

    // Free the space: writes succeed again and reach the same subscriber.
    std::fs::remove_file(&filler).unwrap();
    println!("filler deleted: {} bytes free", fs.avail());
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut attempt = 0;
    let seq = loop {
        attempt += 1;
        let id = format!("after{attempt}");
        match write(&mut w, &id, vec![big(&id, 400)]).await {
            Ok(seq) => {
                acked.push((id, seq));
                break seq;
            }
            Err(e) => {
                failed.push(id);
                assert!(
                    Instant::now() < deadline,
                    "writes still fail 20 s after space was freed: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert!(seq > last_acked);
    for i in 0..5 {
        let id = format!("more{i}");
        let s = write(&mut w, &id, vec![big(&id, 200)])
            .await
            .unwrap_or_else(|e| panic!("write after freeing space failed: {e:?}"));
        acked.push((id, s));
    }
    let cli_seq = node.cli_put(
        "entity",
        "default",
        &json!({"id": "cli-after", "name": "CLI"}),
    );
    acked.push(("cli-after".into(), cli_seq));
    sub.reach(cli_seq, "after space was freed").await;
    assert!(
        sub.lost.lock().unwrap().is_none(),
        "the subscriber kept one stream throughout"
    );
    let seen = sub.ids();
    for (id, _) in &acked {
        assert!(seen.contains(id), "the subscriber never got {id}");
    }
    for id in &failed {
        assert!(
            !seen.contains(id),
            "the subscriber got {id}, whose write failed"
        );
    }
    assert_eq!(
        sub.feed.lock().unwrap().seqs(),
        (1..=cli_seq).collect::<Vec<_>>(),
        "the subscriber saw every seq once, in order"
    );
    sub.task.abort();
    check_ok(&db, "after space was freed");

    // Nothing acknowledged is lost across a crash after the episode.
    let pid = node.pid();
    assert!(Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    node.wait_exit(Duration::from_secs(10))
        .expect("the node did not die");
    let dir = std::mem::replace(&mut node.dir, tempfile::tempdir().unwrap());
    drop(node);
    let node = Node::start_in(dir, db.clone(), NodeOpts::default()).await;
    assert_eq!(node.head().await, cli_seq, "the head after a restart");
    check_ok(&db, "after a crash and restart");
    let mut want: Vec<String> = acked.iter().map(|(id, _)| id.clone()).collect();
    want.sort();
    assert_eq!(
        entity_ids(&db),
        want,
        "exactly the acknowledged rows after a restart"
    );
    drop(node);
    println!(
        "disk full summary: {} rows acknowledged ({} before the first failure), {} writes failed \
         cleanly, subscriber got all {} changes on one stream, check passed full / freed / after \
         restart; {:.1} s",
        acked.len(),
        acked.iter().filter(|(_, s)| *s <= last_acked).count(),
        failed.len(),
        cli_seq,
        t0.elapsed().as_secs_f64()
    );
}
