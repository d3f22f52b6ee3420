//! Crash harness: the real node (`hivesync serve`, a child process over a database file in a
//! temporary directory) is killed with SIGKILL at random moments while it takes writes from two
//! sources at once, and restarted on the same file each time (on a new port).
//!
//! Load:
//! - two socket writers (`w0`, `w1`, each in its own namespace) send `write`s of 1–20 ops
//!   (entity upserts and deletes, edges between existing entities, notes, note deletes) and
//!   wait for `written`; every acknowledged write is recorded with its req, seq and the exact
//!   rows (and cascaded edge deletes) it wrote;
//! - a CLI writer (namespace `cli`) runs `hivesync --db X put|delete ...` subprocesses in a loop;
//!   the ones that exit 0 are recorded the same way (with the seq they print).
//!
//! Each writer keeps a reference model of its namespace: the last acknowledged image per key
//! (deletes, and the edges an entity delete cascades to, included). Every upsert row of a write
//! carries the write's marker in `properties.m`.
//!
//! After every restart (writers parked, CLI paused) and at the end it checks:
//! - `hivesync check` passes (SQLite integrity, FTS5 and vec0 against the base tables, the
//!   change log gap-free: count == max - min + 1), and the head never moved backwards: it is at
//!   least every acknowledged seq, every seq the replica applied and the previous head;
//! - the write in flight when the node died (one per socket writer, unacknowledged) is all or
//!   nothing: the rows carrying its marker are all there or none is, and its namespace equals
//!   the model either before or after it (then the model takes that state);
//! - per marker, the file holds exactly the rows of that write no later write replaced (no
//!   write, acknowledged or not, is half there);
//! - every namespace equals its model exactly: each acknowledged write is present with its
//!   data or superseded by a later acknowledged write to the same key, and nothing else is there;
//! - every acknowledged write not yet checked is in the change log at its seq: its
//!   transaction's changes are exactly the rows it wrote (same images), and `seq` is the last
//!   change of that transaction.
//!
//! A replica (a test client applying the feed into an in-memory `Store`: `apply_changes`, and
//! `apply_snapshot` for its first, snapshot, subscription) reconnects after each restart with
//! `from` = its last applied seq; at the end its digest equals the file's (`hivesync digest`).
//!
//! Size: by default 25 kills (at least 20, stopping early past ~50 s; about 15 s on a 2-core
//! machine). Longer manual runs (100 kills take about a minute):
//!
//! ```text
//! HIVESYNC_CRASH_KILLS=500 cargo test --test crash -- --nocapture
//! ```
//!
//! `HIVESYNC_CRASH_SEED=N` replays a run's random choices (the seed is printed; the timing of
//! the kills still varies).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Client, Event, Feed, Node, NodeOpts};
use futures_util::SinkExt;
use hivesync::model::{Change, Kind, Op, WriteOp};
use hivesync::protocol::{encode_client_json, ClientMsg, Encoding, ServerMsg, Subscribe};
use hivesync::query::ChangeFilter;
use hivesync::rusqlite::{params, Connection, OptionalExtension};
use hivesync::store::{PoolConfig, Store, StoreOptions};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

// ------------------------------------------------------------------------------ randomness

/// splitmix64: small, seedable, good enough to pick ops and delays.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

const WORDS: &[&str] = &[
    "amber", "basalt", "cedar", "delta", "ember", "fjord", "granite", "harbor", "iris", "juniper",
    "kestrel", "lagoon", "meadow", "nectar", "orchid", "pebble", "quartz", "river", "saffron",
    "tundra", "umber", "violet", "willow", "zephyr",
];

fn words(rng: &mut Rng, n: usize) -> String {
    (0..n)
        .map(|_| *rng.pick(WORDS))
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------------- the reference model

/// A row's key within a namespace.
type Key = (Kind, String);

/// The fields a test write sets, picked out of a row image (the JSON the log and `row_image_sql`
/// carry) or out of the data sent; timestamps (set by the node) are left out.
fn image(kind: Kind, row: &Value) -> Value {
    let num = |f: &str| json!(row[f].as_f64());
    match kind {
        Kind::Entity => json!({
            "kind": row["kind"], "name": row["name"], "description": row["description"],
            "properties": row["properties"], "tags": row["tags"],
        }),
        Kind::Edge => json!({
            "source": row["source"], "target": row["target"], "relation": row["relation"],
            "weight": num("weight"), "properties": row["properties"],
        }),
        Kind::Note => json!({
            "kind": row["kind"], "name": row["name"], "content": row["content"],
            "salience": num("salience"), "properties": row["properties"],
        }),
        other => panic!("the harness writes no {other}"),
    }
}

/// One namespace's rows: key -> image.
#[derive(Clone, Default, Debug, PartialEq)]
struct Model {
    rows: BTreeMap<Key, Value>,
}

impl Model {
    fn ids(&self, kind: Kind) -> Vec<String> {
        self.rows
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// Apply one op; returns the changes it logs (the op's own, then cascaded edge deletes).
    fn apply(&mut self, op: &WriteOp) -> Vec<ChangeKey> {
        match op.op {
            Op::Upsert => {
                let data = op.data.as_ref().unwrap();
                let id = data["id"].as_str().unwrap().to_string();
                let img = image(op.kind, data);
                self.rows.insert((op.kind, id.clone()), img.clone());
                vec![ChangeKey::new(op.kind, Op::Upsert, &id, Some(&img))]
            }
            Op::Patch => panic!("the generator makes no patches"),
            Op::Delete => {
                let id = op.id.clone().unwrap();
                assert!(
                    self.rows.remove(&(op.kind, id.clone())).is_some(),
                    "the generator deletes existing rows only"
                );
                let mut out = vec![ChangeKey::new(op.kind, Op::Delete, &id, None)];
                if op.kind == Kind::Entity {
                    // Edges never outlive their endpoints (a trigger deletes them, logged).
                    let gone: Vec<Key> = self
                        .rows
                        .iter()
                        .filter(|((k, _), v)| {
                            *k == Kind::Edge && (v["source"] == id || v["target"] == id)
                        })
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in gone {
                        self.rows.remove(&k);
                        out.push(ChangeKey::new(Kind::Edge, Op::Delete, &k.1, None));
                    }
                }
                out
            }
        }
    }

    /// Rows carrying `marker`.
    fn marked(&self, marker: &str) -> usize {
        self.rows
            .values()
            .filter(|v| v["properties"]["m"] == marker)
            .count()
    }

    /// Rows per marker.
    fn markers(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for v in self.rows.values() {
            let m = v["properties"]["m"].as_str().unwrap().to_string();
            *out.entry(m).or_default() += 1;
        }
        out
    }

    /// A short description of how `self` (the file) differs from `want` (the model).
    fn diff(&self, want: &Model) -> String {
        let mut out = Vec::new();
        for (k, v) in &want.rows {
            match self.rows.get(k) {
                None => out.push(format!("missing {k:?} = {v}")),
                Some(got) if got != v => out.push(format!("{k:?}: file has {got}, model {v}")),
                _ => {}
            }
        }
        for (k, v) in &self.rows {
            if !want.rows.contains_key(k) {
                out.push(format!("unexpected {k:?} = {v}"));
            }
        }
        let n = out.len();
        out.truncate(8);
        format!("{n} difference(s): {}", out.join("; "))
    }
}

/// One logged change, comparable: kind, op, id and the image for upserts.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ChangeKey(String, String, String, String);

impl ChangeKey {
    fn new(kind: Kind, op: Op, id: &str, img: Option<&Value>) -> ChangeKey {
        ChangeKey(
            kind.as_str().into(),
            op.as_str().into(),
            id.into(),
            img.map(Value::to_string).unwrap_or_default(),
        )
    }
    fn of(c: &Change) -> ChangeKey {
        let img = c
            .data
            .as_deref()
            .map(|d| image(c.kind, &serde_json::from_str(d).unwrap()));
        ChangeKey::new(c.kind, c.op, &c.id, img.as_ref())
    }
}

/// A write about to be sent: its ops and the model before and after it.
#[derive(Clone, Debug)]
struct Pending {
    req: String,
    marker: String,
    ops: Vec<WriteOp>,
    before: Model,
    after: Model,
    expected: Vec<ChangeKey>,
}

/// An acknowledged write, to find in the log.
#[derive(Clone, Debug)]
struct Acked {
    source: String,
    req: String,
    seq: i64,
    ops: usize,
    expected: Vec<ChangeKey>,
}

/// Generate a write of `n` ops in `ns` over `model`: entity upserts and deletes, edges between
/// entities that exist at that point of the write, note upserts and deletes. Every upsert row
/// carries `marker`.
fn gen_write(rng: &mut Rng, ns: &str, model: &Model, req: String, n: usize) -> Pending {
    let marker = format!("{ns}/{req}");
    let mut after = model.clone();
    let mut ops = Vec::with_capacity(n);
    let mut expected = Vec::new();
    for i in 0..n {
        let props = json!({"m": marker, "i": i, "r": rng.below(1000)});
        let entities = after.ids(Kind::Entity);
        let edges = after.ids(Kind::Edge);
        let notes = after.ids(Kind::Note);
        let roll = rng.below(100);
        let op = if (40..50).contains(&roll) && !entities.is_empty() {
            WriteOp::delete(Kind::Entity, ns, rng.pick(&entities).clone())
        } else if (50..75).contains(&roll) && !entities.is_empty() {
            let s = rng.pick(&entities).clone();
            let t = rng.pick(&entities).clone();
            let rel = *rng.pick(&["knows", "near", "part_of"]);
            WriteOp::upsert(
                Kind::Edge,
                ns,
                json!({"id": format!("x-{s}-{rel}-{t}"), "source": s, "target": t, "relation": rel,
                       "weight": rng.range(1, 16) as f64 * 0.25, "properties": props}),
            )
        } else if (75..80).contains(&roll) && !edges.is_empty() {
            WriteOp::delete(Kind::Edge, ns, rng.pick(&edges).clone())
        } else if (80..95).contains(&roll) {
            WriteOp::upsert(
                Kind::Note,
                ns,
                json!({"id": format!("n{}", rng.below(25)), "kind": *rng.pick(&["note", "observation"]),
                       "name": words(rng, 2), "content": words(rng, 8),
                       "salience": rng.range(0, 8) as f64 * 0.125, "properties": props}),
            )
        } else if roll >= 95 && !notes.is_empty() {
            WriteOp::delete(Kind::Note, ns, rng.pick(&notes).clone())
        } else {
            WriteOp::upsert(
                Kind::Entity,
                ns,
                json!({"id": format!("e{}", rng.below(40)), "kind": *rng.pick(&["person", "place", "thing"]),
                       "name": format!("{} {i}", words(rng, 2)), "description": words(rng, 6),
                       "tags": [*rng.pick(WORDS)], "properties": props}),
            )
        };
        expected.extend(after.apply(&op));
        ops.push(op);
    }
    expected.sort();
    Pending {
        req,
        marker,
        ops,
        before: model.clone(),
        after,
        expected,
    }
}

// ------------------------------------------------------------------------ reading the file

/// Open the file read-only (no writer, no checkpointer) for a look.
fn open_ro(db: &Path) -> Store {
    Store::open(
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
    .unwrap()
}

/// The rows of `ns` as the file holds them.
fn read_ns(c: &Connection, ns: &str) -> Model {
    let mut m = Model::default();
    for kind in [Kind::Entity, Kind::Edge, Kind::Note] {
        let sql = format!(
            "SELECT id, {} FROM {} WHERE ns = ?1",
            hivesync::schema::row_image_sql(kind, ""),
            kind.table()
        );
        let mut stmt = c.prepare(&sql).unwrap();
        let rows = stmt
            .query_map([ns], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .unwrap();
        for r in rows {
            let (id, img) = r.unwrap();
            m.rows.insert(
                (kind, id),
                image(kind, &serde_json::from_str(&img).unwrap()),
            );
        }
    }
    m
}

/// Rows of `ns` carrying `marker`, counted in the file itself.
fn count_marked(c: &Connection, ns: &str, marker: &str) -> usize {
    let mut n = 0;
    for t in ["entities", "edges", "notes"] {
        let k: i64 = c
            .query_row(
                &format!("SELECT count(*) FROM {t} WHERE ns = ?1 AND json_extract(properties, '$.m') = ?2"),
                params![ns, marker],
                |r| r.get(0),
            )
            .unwrap();
        n += k as usize;
    }
    n
}

/// Rows per marker in `ns`, counted in the file itself.
fn file_markers(c: &Connection, ns: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for t in ["entities", "edges", "notes"] {
        let mut stmt = c
            .prepare(&format!(
                "SELECT json_extract(properties, '$.m'), count(*) FROM {t} WHERE ns = ?1 GROUP BY 1"
            ))
            .unwrap();
        let rows = stmt
            .query_map([ns], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .unwrap();
        for r in rows {
            let (m, n) = r.unwrap();
            *out.entry(m).or_default() += n as usize;
        }
    }
    out
}

/// An acknowledged write is in the log: the changes of the transaction ending at its seq are
/// exactly the rows it wrote.
fn check_logged(c: &Connection, w: &Acked) -> Result<(), String> {
    let tx: Option<i64> = c
        .query_row("SELECT tx FROM changes WHERE seq = ?1", [w.seq], |r| {
            r.get(0)
        })
        .optional()
        .unwrap();
    let tx =
        tx.ok_or_else(|| format!("{} {}: seq {} is not in the log", w.source, w.req, w.seq))?;
    let rows = hivesync::query::changes_since(
        c,
        tx - 1,
        &ChangeFilter::default(),
        (w.seq - tx + 2) as usize,
    )
    .unwrap();
    let (mine, rest): (Vec<&Change>, Vec<&Change>) = rows.iter().partition(|ch| ch.seq <= w.seq);
    if mine.len() as i64 != w.seq - tx + 1 || mine.iter().any(|ch| ch.tx != tx) {
        return Err(format!(
            "{} {}: seqs {tx}..={} are not one transaction: {mine:?}",
            w.source, w.req, w.seq
        ));
    }
    if rest.first().is_some_and(|ch| ch.tx == tx) {
        return Err(format!(
            "{} {}: acknowledged at seq {} but its transaction goes on at {}",
            w.source, w.req, w.seq, rest[0].seq
        ));
    }
    let mut got: Vec<ChangeKey> = mine.iter().map(|ch| ChangeKey::of(ch)).collect();
    got.sort();
    if got != w.expected {
        return Err(format!(
            "{} {} at seq {}: the log holds {got:?}, the write made {:?}",
            w.source, w.req, w.seq, w.expected
        ));
    }
    Ok(())
}

// -------------------------------------------------------------------- non-panicking client

async fn try_connect(url: &str) -> Option<Client> {
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url),
    )
    .await;
    match r {
        Ok(Ok((ws, _))) => Some(Client {
            ws,
            enc: Encoding::Json,
        }),
        _ => None,
    }
}

async fn try_send(c: &mut Client, m: &ClientMsg) -> bool {
    let frame = Message::Text(encode_client_json(m).into());
    matches!(
        tokio::time::timeout(Duration::from_secs(10), c.ws.send(frame)).await,
        Ok(Ok(()))
    )
}

/// The next message, or why none came.
async fn try_recv(c: &mut Client, within: Duration) -> Result<ServerMsg, String> {
    match c.next_event_within(within).await {
        Some(Event::Msg(m)) => Ok(m),
        Some(Event::Closed(f)) => Err(format!("closed ({f:?})")),
        Some(Event::Failed(e)) => Err(format!("failed: {e}")),
        None => Err(format!("nothing within {within:?}")),
    }
}

async fn try_hello(c: &mut Client, name: &str) -> Result<(), String> {
    let hello = ClientMsg::Hello {
        token: None,
        client: Some(name.into()),
    };
    if !try_send(c, &hello).await {
        return Err("hello not sent".into());
    }
    match try_recv(c, Duration::from_secs(10)).await? {
        ServerMsg::Welcome { .. } => Ok(()),
        other => Err(format!("expected welcome, got {other:?}")),
    }
}

// ------------------------------------------------------------------------- socket writers

/// Shared between the harness and the writers.
struct Shared {
    /// The epoch whose node the harness has killed (set before the kill).
    killed_epoch: AtomicU64,
    /// Writers finish their current write and park.
    stop: AtomicBool,
    acked: Mutex<Vec<Acked>>,
    /// Writes the node refused and connections it dropped while alive: both are failures.
    errors: Mutex<Vec<String>>,
}

/// A writer's answer to the harness after each `Go`: parked, with the write in flight when
/// its connection was lost (unacknowledged: it may or may not have committed).
struct Parked {
    writer: usize,
    in_doubt: Option<Pending>,
}

async fn socket_writer(
    idx: usize,
    model: Arc<Mutex<Model>>,
    shared: Arc<Shared>,
    mut go: mpsc::Receiver<(u64, String)>,
    report: mpsc::Sender<Parked>,
    seed: u64,
) {
    let ns = format!("w{idx}");
    let mut rng = Rng::new(seed);
    let mut n = 0u64;
    while let Some((epoch, url)) = go.recv().await {
        let mut in_doubt = None;
        let mut lost = None;
        match try_connect(&url).await {
            None => lost = Some("connect failed".to_string()),
            Some(mut c) => match try_hello(&mut c, &ns).await {
                Err(e) => lost = Some(e),
                Ok(()) => {
                    while !shared.stop.load(SeqCst) {
                        n += 1;
                        let req = format!("r{n}");
                        let p = {
                            let m = model.lock().unwrap();
                            let k = rng.range(1, 20) as usize;
                            gen_write(&mut rng, &ns, &m, req.clone(), k)
                        };
                        let msg = ClientMsg::Write {
                            req: req.clone(),
                            ops: p.ops.clone(),
                            client: None,
                            n: None,
                            entries: None,
                        };
                        if !try_send(&mut c, &msg).await {
                            lost = Some("write not sent".into());
                            in_doubt = Some(p);
                            break;
                        }
                        match try_recv(&mut c, Duration::from_secs(30)).await {
                            Ok(ServerMsg::Written { req: r, seq }) if r == req => {
                                *model.lock().unwrap() = p.after.clone();
                                shared.acked.lock().unwrap().push(Acked {
                                    source: ns.clone(),
                                    req,
                                    seq,
                                    ops: p.ops.len(),
                                    expected: p.expected,
                                });
                            }
                            Ok(other) => {
                                shared
                                    .errors
                                    .lock()
                                    .unwrap()
                                    .push(format!("{ns} {req}: the node answered {other:?}"));
                                in_doubt = Some(p);
                                break;
                            }
                            Err(e) => {
                                lost = Some(e);
                                in_doubt = Some(p);
                                break;
                            }
                        }
                    }
                }
            },
        }
        if let Some(why) = lost {
            // The harness marks the epoch killed before it sends the signal: a connection lost
            // in an epoch not killed was dropped by a live node.
            if shared.killed_epoch.load(SeqCst) < epoch {
                shared.errors.lock().unwrap().push(format!(
                    "{ns}: connection to the live node (epoch {epoch}) lost: {why}"
                ));
            }
        }
        if report
            .send(Parked {
                writer: idx,
                in_doubt,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

// ----------------------------------------------------------------------------- CLI writer

struct CliCtl {
    pause: AtomicBool,
    parked: AtomicBool,
    stop: AtomicBool,
    acked: AtomicU64,
    failed: AtomicU64,
}

/// `hivesync put|delete` in a loop, one op each, in namespace `cli`. A failed run (non-zero
/// exit) is resolved at once from the file (the CLI is the only writer of `cli`).
fn cli_writer(
    db: PathBuf,
    model: Arc<Mutex<Model>>,
    shared: Arc<Shared>,
    ctl: Arc<CliCtl>,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let mut n = 0u64;
    loop {
        if ctl.pause.load(SeqCst) || ctl.stop.load(SeqCst) {
            ctl.parked.store(true, SeqCst);
            while ctl.pause.load(SeqCst) && !ctl.stop.load(SeqCst) {
                std::thread::sleep(Duration::from_millis(2));
            }
            if ctl.stop.load(SeqCst) {
                return;
            }
            ctl.parked.store(false, SeqCst);
            // Look again: the harness may have asked for a pause while this thread woke.
            continue;
        }
        n += 1;
        let req = format!("c{n}");
        let p = gen_write(&mut rng, "cli", &model.lock().unwrap(), req.clone(), 1);
        let op = &p.ops[0];
        let out = match op.op {
            Op::Patch => panic!("the generator makes no patches"),
            Op::Upsert => common::cli(
                &db,
                &[
                    "--json",
                    "put",
                    op.kind.as_str(),
                    &op.data.as_ref().unwrap().to_string(),
                    "--ns",
                    "cli",
                ],
            ),
            Op::Delete => common::cli(
                &db,
                &[
                    "--json",
                    "delete",
                    op.kind.as_str(),
                    op.id.as_deref().unwrap(),
                    "--ns",
                    "cli",
                ],
            ),
        };
        if out.status.success() {
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            *model.lock().unwrap() = p.after.clone();
            shared.acked.lock().unwrap().push(Acked {
                source: "cli".into(),
                req,
                seq: v["seq"].as_i64().unwrap(),
                ops: 1,
                expected: p.expected,
            });
            ctl.acked.fetch_add(1, SeqCst);
        } else {
            ctl.failed.fetch_add(1, SeqCst);
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            let store = open_ro(&db);
            let now = store.read(|c| Ok(read_ns(c, "cli"))).unwrap();
            if now == p.after {
                *model.lock().unwrap() = p.after;
            } else if now != p.before {
                shared.errors.lock().unwrap().push(format!(
                    "cli {req} failed ({stderr}) and left namespace cli half-written: {}",
                    now.diff(&p.before)
                ));
            }
            eprintln!("cli {req} failed (resolved from the file): {stderr}");
        }
    }
}

// --------------------------------------------------------------------------------- replica

/// The replica's state visible to the harness.
struct ReplicaState {
    applied: AtomicI64,
    connections: AtomicU64,
    snapshots: AtomicU64,
    changes: AtomicU64,
}

/// Follow the node through its restarts: subscribe (a snapshot the first time, then `from` =
/// the last applied seq), apply into an in-memory store, reconnect to each new node.
async fn replica(
    mut url_rx: watch::Receiver<(u64, Option<String>)>,
    state: Arc<ReplicaState>,
    mut stop: watch::Receiver<bool>,
) -> Arc<Store> {
    let store = Arc::new(Store::open_in_memory(StoreOptions::default()).unwrap());
    let mut first = true;
    let mut tried_epoch = 0;
    loop {
        // The next node to follow (an epoch not tried yet).
        let url = loop {
            if *stop.borrow() {
                return store;
            }
            let (epoch, url) = url_rx.borrow_and_update().clone();
            if let (Some(u), true) = (url, epoch > tried_epoch) {
                tried_epoch = epoch;
                break u;
            }
            tokio::select! {
                _ = url_rx.changed() => {}
                _ = stop.changed() => {}
            }
        };
        let Some(mut c) = try_connect(&url).await else {
            continue;
        };
        if try_hello(&mut c, "replica").await.is_err() {
            continue;
        }
        let applied = state.applied.load(SeqCst);
        let from = if first { None } else { Some(applied) };
        let sub = ClientMsg::Subscribe(Subscribe {
            sub: "r".into(),
            from,
            namespaces: None,
            kinds: None,
        });
        if !try_send(&mut c, &sub).await {
            continue;
        }
        state.connections.fetch_add(1, SeqCst);
        let mut feed = if first {
            Feed::default()
        } else {
            Feed::from(applied)
        };
        let mut snapshot_rows: Vec<Change> = Vec::new();
        loop {
            let ev = tokio::select! {
                ev = c.next_event_within(Duration::from_secs(3600)) => ev,
                _ = stop.changed() => return store,
            };
            let m = match ev {
                Some(Event::Msg(m)) => m,
                // The node died: wait for the next one.
                _ => break,
            };
            // The feed contract: `prev` continuity, ascending seqs, whole transactions.
            assert!(
                feed.take("r", &m),
                "unexpected message on the replica: {m:?}"
            );
            match m {
                ServerMsg::Snapshot { at, rows, done, .. } => {
                    snapshot_rows.extend(rows);
                    if done {
                        let rows = std::mem::take(&mut snapshot_rows);
                        let s = store.clone();
                        let out = tokio::task::spawn_blocking(move || {
                            let conn = s.pool().writer().unwrap();
                            hivesync::apply::apply_snapshot(
                                &conn,
                                &ChangeFilter::default(),
                                at,
                                &rows,
                            )
                        })
                        .await
                        .unwrap()
                        .unwrap();
                        state.applied.store(out.seq, SeqCst);
                        state.snapshots.fetch_add(1, SeqCst);
                        first = false;
                    }
                }
                ServerMsg::Changes { prev, changes, .. } => {
                    let n = changes.len() as u64;
                    let s = store.clone();
                    let out = tokio::task::spawn_blocking(move || s.apply_changes(prev, &changes))
                        .await
                        .unwrap()
                        .unwrap_or_else(|e| {
                            panic!("the replica could not apply a batch after {prev}: {e}")
                        });
                    state.applied.store(out.seq, SeqCst);
                    state.changes.fetch_add(n, SeqCst);
                }
                _ => {}
            }
        }
    }
}

// --------------------------------------------------------------------------------- harness

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, got {v:?}"))
    })
}

struct Harness {
    db: PathBuf,
    shared: Arc<Shared>,
    /// Models of w0, w1 and cli.
    models: Vec<Arc<Mutex<Model>>>,
    /// Acknowledged writes checked against the log so far.
    checked: usize,
    checked_socket: u64,
    checked_socket_ops: u64,
    checked_cli: u64,
    /// The highest head seen (never to move back).
    max_head: i64,
    in_doubt_committed: u64,
    in_doubt_rolled_back: u64,
    checks: u64,
}

const NAMESPACES: [&str; 3] = ["w0", "w1", "cli"];

impl Harness {
    /// Everything checked after a restart (and at the end), with the writers parked and the CLI
    /// paused: `hivesync check`, the head, in-flight writes all or nothing, every namespace
    /// equal to its model, acknowledged writes in the log.
    fn verify(&mut self, in_doubt: Vec<(usize, Pending)>, node_head: i64, replica_applied: i64) {
        let errors = self.shared.errors.lock().unwrap().clone();
        assert!(errors.is_empty(), "failures during the load: {errors:#?}");
        let out = common::cli(&self.db, &["--json", "check"]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        assert!(
            out.status.success() && report["ok"] == true,
            "hivesync check failed: {report}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let head = report["head"].as_i64().unwrap();
        let horizon = report["horizon"].as_i64().unwrap();
        let count = report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r[0] == "changes")
            .unwrap()[1]
            .as_i64()
            .unwrap();
        assert_eq!(
            count,
            head - horizon + 1,
            "the change log is gap-free: {count} changes in {horizon}..={head}"
        );
        assert_eq!(head, node_head, "the node's head (/healthz) is the file's");
        let acked_max = self
            .shared
            .acked
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.seq)
            .max()
            .unwrap_or(0);
        assert!(
            head >= self.max_head && head >= acked_max && head >= replica_applied,
            "the head moved back: {head}, after {} (acknowledged up to {acked_max}, replica at {replica_applied})",
            self.max_head
        );
        self.max_head = head;

        let store = open_ro(&self.db);
        store
            .read(|c| {
                c.execute_batch("BEGIN")?;
                // In-flight writes: all or nothing.
                for (w, p) in &in_doubt {
                    let ns = NAMESPACES[*w];
                    let marked = count_marked(c, ns, &p.marker);
                    let want = p.after.marked(&p.marker);
                    assert!(
                        marked == 0 || marked == want,
                        "write {ns} {} is half there: {marked} of its {want} marked rows",
                        p.req
                    );
                    let now = read_ns(c, ns);
                    let mut model = self.models[*w].lock().unwrap();
                    assert_eq!(*model, p.before, "{ns}: the model is the in-flight write's base");
                    if now == p.after && (marked == want) {
                        *model = p.after.clone();
                        self.in_doubt_committed += 1;
                    } else if now == p.before && marked == 0 {
                        self.in_doubt_rolled_back += 1;
                    } else {
                        panic!(
                            "write {ns} {} ({} ops) is neither wholly there nor wholly absent: against the state before it {}; against the state after it {}",
                            p.req,
                            p.ops.len(),
                            now.diff(&p.before),
                            now.diff(&p.after)
                        );
                    }
                }
                // Every namespace is its model: acknowledged writes present (or superseded by
                // later acknowledged ones), nothing else. First per marker: each write's rows
                // that no later write replaced are all there, and no write has a row too many.
                for (i, ns) in NAMESPACES.iter().enumerate() {
                    let now = read_ns(c, ns);
                    let model = self.models[i].lock().unwrap();
                    let (got, want) = (file_markers(c, ns), model.markers());
                    if got != want {
                        let bad: Vec<String> = got
                            .keys()
                            .chain(want.keys())
                            .filter(|m| got.get(*m) != want.get(*m))
                            .take(8)
                            .map(|m| format!("{m}: {:?} rows in the file, {:?} in the model", got.get(m), want.get(m)))
                            .collect();
                        panic!("namespace {ns}: writes not all-or-nothing: {bad:?}");
                    }
                    assert!(
                        now == *model,
                        "namespace {ns} differs from the acknowledged writes: {}",
                        now.diff(&model)
                    );
                }
                // Acknowledged writes in the log, at their seq.
                let acked = self.shared.acked.lock().unwrap();
                for a in &acked[self.checked..] {
                    if let Err(e) = check_logged(c, a) {
                        panic!("{e}");
                    }
                    if a.source == "cli" {
                        self.checked_cli += 1;
                    } else {
                        self.checked_socket += 1;
                        self.checked_socket_ops += a.ops as u64;
                    }
                }
                self.checked = acked.len();
                c.execute_batch("COMMIT")?;
                Ok(())
            })
            .unwrap();
        self.checks += 1;
    }
}

fn kill9(node: &mut Node) {
    let pid = node.pid();
    let st = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "kill -KILL {pid} failed");
    let st = node
        .wait_exit(Duration::from_secs(10))
        .expect("the node did not die of SIGKILL");
    assert_eq!(st.signal(), Some(9), "the node ended by SIGKILL: {st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_under_write_load() {
    let t0 = Instant::now();
    let manual = env_u64("HIVESYNC_CRASH_KILLS");
    let kills_wanted = manual.unwrap_or(25);
    let seed = env_u64("HIVESYNC_CRASH_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    });
    println!("crash harness: seed {seed}, {kills_wanted} kills wanted");
    let mut rng = Rng::new(seed);

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let shared = Arc::new(Shared {
        killed_epoch: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        acked: Mutex::new(Vec::new()),
        errors: Mutex::new(Vec::new()),
    });
    let models: Vec<Arc<Mutex<Model>>> = (0..3).map(|_| Arc::default()).collect();

    // The CLI writer starts first, so the replica's first subscription has a snapshot to take.
    let ctl = Arc::new(CliCtl {
        pause: AtomicBool::new(false),
        parked: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    let cli_thread = {
        let (db, model, shared, ctl, s) = (
            db.clone(),
            models[2].clone(),
            shared.clone(),
            ctl.clone(),
            rng.next(),
        );
        std::thread::spawn(move || cli_writer(db, model, shared, ctl, s))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while ctl.acked.load(SeqCst) < 3 {
        assert!(Instant::now() < deadline, "the CLI wrote nothing in 30 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut epoch = 1u64;
    let mut node = Node::start_in(dir, db.clone(), NodeOpts::default()).await;

    let (url_tx, url_rx) = watch::channel((epoch, Some(node.url())));
    let (stop_tx, stop_rx) = watch::channel(false);
    let rstate = Arc::new(ReplicaState {
        applied: AtomicI64::new(0),
        connections: AtomicU64::new(0),
        snapshots: AtomicU64::new(0),
        changes: AtomicU64::new(0),
    });
    let replica_task = tokio::spawn(replica(url_rx, rstate.clone(), stop_rx));

    let (report_tx, mut report_rx) = mpsc::channel::<Parked>(4);
    let mut gos = Vec::new();
    for (i, model) in models.iter().take(2).enumerate() {
        let (go_tx, go_rx) = mpsc::channel(1);
        tokio::spawn(socket_writer(
            i,
            model.clone(),
            shared.clone(),
            go_rx,
            report_tx.clone(),
            rng.next(),
        ));
        go_tx.send((epoch, node.url())).await.unwrap();
        gos.push(go_tx);
    }
    drop(report_tx);

    let mut h = Harness {
        db: db.clone(),
        shared: shared.clone(),
        models: models.clone(),
        checked: 0,
        checked_socket: 0,
        checked_socket_ops: 0,
        checked_cli: 0,
        max_head: 0,
        in_doubt_committed: 0,
        in_doubt_rolled_back: 0,
        checks: 0,
    };

    async fn collect(report_rx: &mut mpsc::Receiver<Parked>) -> Vec<(usize, Pending)> {
        let mut in_doubt = Vec::new();
        for _ in 0..2 {
            let p = tokio::time::timeout(Duration::from_secs(60), report_rx.recv())
                .await
                .expect("a socket writer did not park within 60 s")
                .expect("a socket writer ended");
            if let Some(w) = p.in_doubt {
                in_doubt.push((p.writer, w));
            }
        }
        in_doubt
    }

    let pause_cli = |ctl: &CliCtl| {
        ctl.pause.store(true, SeqCst);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ctl.parked.load(SeqCst) {
            assert!(Instant::now() < deadline, "the CLI writer did not pause");
            std::thread::sleep(Duration::from_millis(2));
        }
    };

    let mut kills = 0u64;
    let mut restart_times = Vec::new();
    while kills < kills_wanted {
        if manual.is_none() && kills >= 20 && t0.elapsed() > Duration::from_secs(50) {
            break;
        }
        if replica_task.is_finished() {
            break; // its panic is reported below
        }
        // Load, then a kill at a random moment.
        tokio::time::sleep(Duration::from_millis(rng.range(50, 400))).await;
        shared.killed_epoch.store(epoch, SeqCst);
        url_tx.send_replace((epoch, None));
        kill9(&mut node);
        kills += 1;
        let in_doubt = collect(&mut report_rx).await;
        // Sometimes let the CLI write to the file while no node runs.
        if rng.below(3) == 0 {
            tokio::time::sleep(Duration::from_millis(rng.range(10, 100))).await;
        }
        // Restart on the same file.
        let t = Instant::now();
        let dir = std::mem::replace(&mut node.dir, tempfile::tempdir().unwrap());
        drop(node);
        node = Node::start_in(dir, db.clone(), NodeOpts::default()).await;
        restart_times.push(t.elapsed());
        epoch += 1;
        tokio::task::block_in_place(|| pause_cli(&ctl));
        let node_head = node.head().await;
        let applied = rstate.applied.load(SeqCst);
        tokio::task::block_in_place(|| h.verify(in_doubt, node_head, applied));
        ctl.pause.store(false, SeqCst);
        url_tx.send_replace((epoch, Some(node.url())));
        for g in &gos {
            g.send((epoch, node.url())).await.unwrap();
        }
    }

    // A last stretch of load, then everything stops with the node alive.
    tokio::time::sleep(Duration::from_millis(rng.range(50, 400))).await;
    shared.stop.store(true, SeqCst);
    let in_doubt = collect(&mut report_rx).await;
    assert!(
        in_doubt.is_empty(),
        "writes in flight at the end went unanswered by the live node"
    );
    ctl.stop.store(true, SeqCst);
    tokio::task::block_in_place(|| cli_thread.join().unwrap());
    drop(gos);
    let node_head = node.head().await;

    // The replica catches up with the head.
    let deadline = Instant::now() + Duration::from_secs(30);
    while rstate.applied.load(SeqCst) < node_head && !replica_task.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the replica did not reach the head {node_head} in 30 s (at {})",
            rstate.applied.load(SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send_replace(true);
    let replica_store = replica_task.await.expect("the replica task failed");
    let applied = rstate.applied.load(SeqCst);
    assert_eq!(applied, node_head, "the replica applied up to the head");
    tokio::task::block_in_place(|| h.verify(Vec::new(), node_head, applied));

    let out = node.cli(&["--json", "digest"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file_digest: Value = serde_json::from_slice(&out.stdout).unwrap();
    let replica_digest = replica_store.digest(None).unwrap();
    let digest_match = file_digest["sha256"] == replica_digest.sha256.as_str();
    assert!(
        digest_match,
        "replica digest {replica_digest:?} differs from the file's {file_digest}"
    );
    assert_eq!(
        h.checked,
        shared.acked.lock().unwrap().len(),
        "every acknowledged write checked"
    );

    let restarts = restart_times.len().max(1) as u32;
    let mean_restart = restart_times.iter().sum::<Duration>() / restarts;
    println!(
        "crash summary: kills survived {kills}; acknowledged socket writes checked {} ({} ops); \
         CLI writes checked {} ({} CLI failures); in-flight writes at a kill: {} committed whole, \
         {} absent whole; checks {}; head {node_head}; replica: {} connections, {} snapshot(s), \
         {} changes applied, digest match {digest_match} ({}); mean restart {:?}; {:.1} s",
        h.checked_socket,
        h.checked_socket_ops,
        h.checked_cli,
        ctl.failed.load(SeqCst),
        h.in_doubt_committed,
        h.in_doubt_rolled_back,
        h.checks,
        rstate.connections.load(SeqCst),
        rstate.snapshots.load(SeqCst),
        rstate.changes.load(SeqCst),
        &replica_digest.sha256[..16],
        mean_restart,
        t0.elapsed().as_secs_f64()
    );
    assert!(
        kills >= kills_wanted.min(20),
        "only {kills} kills in the time budget"
    );
    assert!(
        h.checked_socket > 0 && h.checked_cli > 0,
        "both sources wrote"
    );
}
