//! End-to-end tests of the sync node: the real `hivesync` binary as a subprocess over a real
//! database file, real WebSocket clients speaking the crate's own codecs, the real CLI.
//!
//! Every network wait is bounded (`common::NET_TIMEOUT`); every node process is killed when its
//! guard drops (and its log is printed when a test fails).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::io::BufRead;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{assert_code, data, entity, Client, Event, Feed, Node, NodeOpts, NET_TIMEOUT};
use hivesync::model::{Kind, Op, WriteOp};
use hivesync::protocol::{ClientMsg, Encoding, ErrorCode, ServerMsg, MAX_FRAME_BYTES};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

// ------------------------------------------------------------------------------------ 1

/// Rows written by the CLI before a subscription without `from` arrive as a snapshot (chunks
/// ending with `done`), then `live`; a write over the socket is answered `written` and its
/// change arrives in a `changes` batch continuing from the snapshot's seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_then_live() {
    let node = Node::start().await;
    let mut seq = 0;
    for i in 0..3 {
        seq = node.cli_put(
            "entity",
            "default",
            &json!({"id": format!("s{i}"), "kind": "person", "name": format!("Snap {i}")}),
        );
    }
    assert_eq!(seq, 3, "three CLI writes on a fresh database end at seq 3");
    // 2,000 more through `hivesync import`, so the snapshot takes several chunks.
    let lines: String = (0..2000)
        .map(|i| {
            let op = entity("bulk", &format!("b{i}"), &format!("Bulk {i}"));
            format!("{}\n", serde_json::to_string(&op).unwrap())
        })
        .collect();
    let file = node.dir.path().join("bulk.jsonl");
    std::fs::write(&file, lines).unwrap();
    let out = node.cli(&["import", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = 2003;

    let mut c = Client::connect(&node.url()).await;
    let (h, horizon) = c.hello(None).await;
    assert_eq!(h, head, "welcome head sees the CLI's commits");
    assert!(horizon <= 1, "nothing trimmed yet: horizon {horizon}");
    c.subscribe("s1", None, None).await;

    let mut feed = Feed::default();
    feed.read_until(&mut c, "s1", |f| !f.live.is_empty()).await;
    assert!(
        feed.snapshot_done,
        "`live` came before the snapshot's last chunk"
    );
    assert!(
        feed.snapshot_chunks >= 3,
        "2,003 rows in chunks: {} chunk(s)",
        feed.snapshot_chunks
    );
    assert_eq!(feed.last, Some(head), "snapshot taken at the head");
    assert!(
        feed.changes.is_empty(),
        "no changes after a snapshot at the head: {:?}",
        feed.changes
    );
    assert_eq!(feed.live, vec![head]);
    assert_eq!(feed.snapshot.len(), 2003);
    let mut got: Vec<(String, String, String)> = feed
        .snapshot
        .iter()
        .filter(|r| r.ns == "default")
        .map(|r| {
            (
                r.ns.clone(),
                r.id.clone(),
                data(r)["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        (0..3)
            .map(|i| ("default".to_string(), format!("s{i}"), format!("Snap {i}")))
            .collect::<Vec<_>>(),
        "snapshot rows"
    );
    let bulk: HashSet<&str> = feed
        .snapshot
        .iter()
        .filter(|r| r.ns == "bulk")
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(bulk.len(), 2000, "every imported row once");
    assert!(feed
        .snapshot
        .iter()
        .all(|r| r.kind == Kind::Entity && r.op == Op::Upsert));

    // Live: a write over the socket.
    c.send_write("w1", vec![entity("default", "live1", "Live One")])
        .await;
    let mut written = None;
    while written.is_none() || feed.changes.is_empty() {
        let m = c.recv().await;
        if let ServerMsg::Written { req, seq } = &m {
            assert_eq!(req, "w1");
            written = Some(*seq);
        } else {
            assert!(feed.take("s1", &m), "unexpected {m:?}");
        }
    }
    assert_eq!(written, Some(head + 1));
    assert_eq!(
        feed.changes.len(),
        1,
        "exactly the one new change: {:?}",
        feed.changes
    );
    let ch = &feed.changes[0];
    assert_eq!(
        (ch.seq, ch.id.as_str(), ch.ns.as_str(), ch.kind, ch.op),
        (head + 1, "live1", "default", Kind::Entity, Op::Upsert)
    );
    assert_eq!(data(ch)["name"], "Live One");
}

// ------------------------------------------------------------------------------------ 2

/// A subscription with `from = N` gets exactly the changes after N, in order, then `live`;
/// `from = head` is live at once; `from = 0` replays the whole log. Older changes come from
/// the log on disk, newer ones from the node's in-memory window, seamlessly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_cursor() {
    // Changes 1..=8 are written before the node starts, so they are served from the log on
    // disk (the node's in-memory window starts at its startup head); 9..=12 from the window.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.db");
    let mut expected: Vec<(String, Op)> = Vec::new();
    for i in 0..8 {
        let data = json!({"id": format!("r{i}"), "kind": "thing", "name": format!("R {i}")});
        let out = common::cli(&db, &["--json", "put", "entity", &data.to_string()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        expected.push((format!("r{i}"), Op::Upsert));
    }
    let node = Node::start_in(dir, db, NodeOpts::default()).await;
    assert_eq!(node.head().await, 8);
    let mut w = Client::connect(&node.url()).await;
    w.hello(None).await;
    // A multi-op write (one transaction) and a delete: 12 changes in all.
    let seq = w
        .write(
            "multi",
            vec![
                entity("default", "m1", "M1"),
                entity("other", "m2", "M2"),
                entity("default", "r0", "R 0 again"),
            ],
        )
        .await;
    assert_eq!(seq, 11);
    expected.extend([
        ("m1".into(), Op::Upsert),
        ("m2".into(), Op::Upsert),
        ("r0".into(), Op::Upsert),
    ]);
    let head = w
        .write("del", vec![WriteOp::delete(Kind::Entity, "default", "r3")])
        .await;
    assert_eq!(head, 12);
    expected.push(("r3".into(), Op::Delete));

    for from in [4, 0, 7, 8, 11, head] {
        let mut c = Client::connect(&node.url()).await;
        let (h, _) = c.hello(None).await;
        assert_eq!(h, head);
        c.subscribe("r", Some(from), None).await;
        let mut feed = Feed::from(from);
        feed.read_until(&mut c, "r", |f| !f.live.is_empty()).await;
        assert_eq!(feed.live, vec![head], "live at the head (from {from})");
        assert_eq!(
            feed.seqs(),
            ((from + 1)..=head).collect::<Vec<_>>(),
            "exactly the changes after {from}"
        );
        let ids: Vec<(String, Op)> = feed.changes.iter().map(|c| (c.id.clone(), c.op)).collect();
        assert_eq!(
            ids,
            expected[from as usize..].to_vec(),
            "content and order (from {from})"
        );
        for ch in &feed.changes {
            match ch.op {
                Op::Upsert => assert_eq!(data(ch)["id"].as_str(), Some(ch.id.as_str())),
                Op::Delete => assert!(ch.data.is_none(), "a delete carries no row"),
                Op::Patch => panic!("a change is never a patch: {ch:?}"),
            }
        }
        // The multi-op write is one transaction: one tx for its three changes.
        if from <= 8 {
            let txs: HashSet<i64> = feed
                .changes
                .iter()
                .filter(|c| (9..=11).contains(&c.seq))
                .map(|c| c.tx)
                .collect();
            assert_eq!(txs.len(), 1, "one tx for one write: {txs:?}");
        }
        // Nothing more arrives once live.
        assert!(
            c.next_event_within(Duration::from_millis(100))
                .await
                .is_none(),
            "unexpected frame after live"
        );
    }
}

// ------------------------------------------------------------------------------------ 3

/// 10,000 changes written in writes of 100 ops while a subscriber follows; midway the
/// subscriber drops its connection and resumes from the last seq it saw. The seqs received
/// are exactly 1..=head, no gap, no duplicate, and every batch's `prev` matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_changes_across_a_reconnect() {
    const WRITES: i64 = 100;
    const OPS: i64 = 100;
    let node = Node::start().await;
    let url = node.url();
    let t0 = Instant::now();

    let mut c = Client::connect(&url).await;
    c.hello(None).await;
    c.subscribe("s", Some(0), None).await;

    let wurl = url.clone();
    let writer = tokio::spawn(async move {
        let mut w = Client::connect(&wurl).await;
        w.hello(None).await;
        let mut last = 0;
        for b in 0..WRITES {
            let ops = (0..OPS)
                .map(|i| entity("default", &format!("e{}", b * OPS + i), &format!("n{i}")))
                .collect();
            let seq = w.write(&format!("w{b}"), ops).await;
            assert_eq!(seq, last + OPS, "written seq");
            last = seq;
        }
        last
    });

    let mut feed = Feed::from(0);
    feed.read_until(&mut c, "s", |f| {
        f.changes.len() >= (WRITES * OPS / 2) as usize
    })
    .await;
    let cut = feed.last.unwrap();
    // Drop the connection abruptly (no close handshake) and resume from the last seq seen.
    drop(c);
    let mut c = Client::connect(&url).await;
    c.hello(None).await;
    c.subscribe("s", Some(cut), None).await;
    feed.read_until(&mut c, "s", |f| f.last == Some(WRITES * OPS))
        .await;
    let head = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("writer timed out")
        .unwrap();
    assert_eq!(head, WRITES * OPS);
    assert_eq!(node.head().await, head);

    let seqs = feed.seqs();
    assert_eq!(seqs.len(), head as usize, "no duplicate, no gap");
    assert_eq!(seqs, (1..=head).collect::<Vec<_>>());
    let ids: HashSet<&str> = feed.changes.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids.len(), head as usize, "every entity once");
    // The changes of one write share a tx, and each write's ops are in order.
    for (i, ch) in feed.changes.iter().enumerate() {
        let i = i as i64;
        assert_eq!(ch.tx, (i / OPS) * OPS + 1, "tx of seq {}", ch.seq);
        assert_eq!(ch.id, format!("e{i}"));
    }
    // Nothing more after the head.
    while let Some(ev) = c.next_event_within(Duration::from_millis(100)).await {
        match ev {
            Event::Msg(m @ ServerMsg::Live { .. }) => assert!(feed.take("s", &m)),
            other => panic!("unexpected after the head: {other:?}"),
        }
    }
    println!(
        "10,000 changes: cut at seq {cut}, {} batches, {:?} in all",
        feed.batches,
        t0.elapsed()
    );
}

// ------------------------------------------------------------------------------------ 4

/// A write whose third op fails (an edge to a missing entity) is refused with `bad_request`
/// naming op 2 and the `req`; none of its rows exist afterwards, the log head did not move, no
/// subscriber sees anything of it, and the connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_is_atomic() {
    let node = Node::start().await;
    let mut c = Client::connect(&node.url()).await;
    c.hello(None).await;
    let before = c
        .write("pre", vec![entity("default", "pre", "Before")])
        .await;
    assert_eq!(node.head().await, before);

    let mut s = Client::connect(&node.url()).await;
    s.hello(None).await;
    s.subscribe("s", Some(before), None).await;
    let mut feed = Feed::from(before);
    feed.read_until(&mut s, "s", |f| !f.live.is_empty()).await;

    let edge = WriteOp::upsert(
        Kind::Edge,
        "default",
        json!({"id": "x1", "source": "a1", "target": "nobody", "relation": "knows"}),
    );
    c.send_write(
        "w-bad",
        vec![
            entity("default", "a1", "A1"),
            entity("default", "a2", "A2"),
            edge,
        ],
    )
    .await;
    let e = c.recv_error().await;
    assert_code(&e, ErrorCode::BadRequest);
    assert_eq!(e.req.as_deref(), Some("w-bad"));
    assert!(
        e.message.contains("op 2"),
        "the error names op 2: {}",
        e.message
    );
    assert!(
        e.message.contains("nobody"),
        "the error names the missing endpoint: {}",
        e.message
    );

    assert_eq!(node.head().await, before, "the log head did not move");
    for (kind, id) in [("entity", "a1"), ("entity", "a2"), ("edge", "x1")] {
        let out = node.cli(&["get", kind, id]);
        assert!(
            !out.status.success(),
            "{kind} {id} exists after a failed write: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("no "),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = node.cli(&["get", "entity", "pre"]);
    assert!(out.status.success(), "the earlier write is intact");
    {
        let db = rusqlite::Connection::open(&node.db).unwrap();
        db.busy_timeout(Duration::from_secs(5)).unwrap();
        let n: i64 = db
            .query_row(
                "SELECT count(*) FROM entities WHERE id IN ('a1','a2')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 0);
        let n: i64 = db
            .query_row("SELECT count(*) FROM edges", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        let max: i64 = db
            .query_row("SELECT coalesce(max(seq), 0) FROM changes", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(max, before);
    }

    // The connection still works, and the subscriber's next change is the next good write.
    let next = c.write("w-good", vec![entity("default", "a3", "A3")]).await;
    assert_eq!(next, before + 1);
    feed.read_until(&mut s, "s", |f| !f.changes.is_empty())
        .await;
    assert_eq!(
        feed.changes
            .iter()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>(),
        vec!["a3"]
    );
}

/// Group commit over sockets: 16 clients pipeline 100 one-op writes each, every tenth refused
/// (an edge to a missing entity). Each good write is answered `written` with a seq of its own,
/// each refused one with an error naming it; the log holds exactly the good writes, gap-free,
/// each its own `tx`; and the writer committed them in fewer transactions than writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_writes_from_many_clients_commit_together_and_fail_alone() {
    const CLIENTS: usize = 16;
    const WRITES: usize = 100;
    let node = Node::start().await;
    let url = node.url();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut cl = Client::connect(&url).await;
            cl.hello(None).await;
            for w in 0..WRITES {
                let op = if w % 10 == 9 {
                    WriteOp::upsert(
                        Kind::Edge,
                        "default",
                        json!({"source": format!("c{c}w{}", w - 1), "target": "nobody", "relation": "r"}),
                    )
                } else {
                    entity("default", &format!("c{c}w{w}"), "x")
                };
                cl.send_write(&format!("{c}:{w}"), vec![op]).await;
            }
            let (mut ok, mut refused) = (Vec::new(), Vec::new());
            while ok.len() + refused.len() < WRITES {
                match cl.recv().await {
                    ServerMsg::Written { req, seq } => ok.push((req, seq)),
                    ServerMsg::Error(e) => {
                        assert_code(&e, ErrorCode::BadRequest);
                        assert!(e.message.contains("nobody"), "{}", e.message);
                        refused.push(e.req.unwrap());
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            (ok, refused)
        }));
    }
    let mut seqs = Vec::new();
    for (c, t) in tasks.into_iter().enumerate() {
        let (ok, refused) = t.await.unwrap();
        // Answers come in each client's order, good and refused where they were sent.
        assert_eq!(
            refused,
            (0..WRITES)
                .filter(|w| w % 10 == 9)
                .map(|w| format!("{c}:{w}"))
                .collect::<Vec<_>>()
        );
        let order: Vec<i64> = ok.iter().map(|(_, s)| *s).collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "client {c}: seqs in order {order:?}"
        );
        seqs.extend(order);
    }
    let good = CLIENTS * WRITES * 9 / 10;
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=good as i64).collect::<Vec<_>>(),
        "one seq per good write, no gaps, none shared"
    );
    let db = rusqlite::Connection::open(&node.db).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    let (n, max, txs): (i64, i64, i64) = db
        .query_row(
            "SELECT count(*), max(seq), count(DISTINCT tx) FROM changes",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (n, max, txs),
        (good as i64, good as i64, good as i64),
        "each write its own tx"
    );
    let edges: i64 = db
        .query_row("SELECT count(*) FROM edges", [], |r| r.get(0))
        .unwrap();
    assert_eq!(edges, 0, "nothing of a refused write is left");
    let (_, metrics) = common::http_get(node.port, "/metrics").await.unwrap();
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (writes, groups) = (
        counter("hivesync_write_commit_seconds_count "),
        counter("hivesync_write_groups_total "),
    );
    assert_eq!(writes, good as u64);
    assert!(
        groups < writes,
        "{writes} pipelined writes committed in {groups} transactions"
    );
}

// ------------------------------------------------------------------------------------ 5

/// Tokens and namespace scopes: a bad or missing token is refused and the connection closes;
/// a namespace outside the token's scope is `forbidden` for reads and writes; a subscription
/// without `namespaces` only ever sees namespaces the token may read, even for changes the
/// CLI writes straight into the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_namespace_scopes() {
    let secret = "alice-secret-123";
    let config = format!(
        "name = \"auth-test\"\n[[token]]\nname = \"alice\"\nsha256 = \"{}\"\nread = [\"a\"]\nwrite = [\"a\"]\n",
        hivesync::node::config::hash_token(secret)
    );
    let node = Node::start_with(NodeOpts {
        config: Some(config),
        ..Default::default()
    })
    .await;
    // Rows in both namespaces before anyone subscribes.
    node.cli_put(
        "entity",
        "b",
        &json!({"id": "b0", "kind": "t", "name": "B0"}),
    );
    node.cli_put(
        "entity",
        "a",
        &json!({"id": "a0", "kind": "t", "name": "A0"}),
    );

    for token in [Some("wrong-token"), None, Some("")] {
        let mut c = Client::connect(&node.url()).await;
        c.send(&ClientMsg::Hello {
            token: token.map(str::to_string),
            client: None,
        })
        .await;
        let e = c.recv_error().await;
        assert_code(&e, ErrorCode::Unauthorized);
        let f = c.expect_closed().await;
        println!("token {token:?}: {} / close {f:?}", e.message);
        assert_eq!(
            f.map(|f| u16::from(f.code)),
            Some(1008),
            "closed with a policy-violation frame"
        );
    }

    let mut c = Client::connect(&node.url()).await;
    let (head, _) = c.hello(Some(secret)).await;
    assert_eq!(head, 2);
    c.subscribe("sb", None, Some(vec!["b".into()])).await;
    let e = c.recv_error().await;
    assert_code(&e, ErrorCode::Forbidden);
    assert_eq!(e.sub.as_deref(), Some("sb"));
    c.subscribe("sab", Some(0), Some(vec!["a".into(), "b".into()]))
        .await;
    assert_code(&c.recv_error().await, ErrorCode::Forbidden);

    c.send_write(
        "wb",
        vec![entity("a", "a-mixed", "no"), entity("b", "bw", "nope")],
    )
    .await;
    let e = c.recv_error().await;
    assert_code(&e, ErrorCode::Forbidden);
    assert_eq!(e.req.as_deref(), Some("wb"));
    assert_eq!(node.head().await, head, "a forbidden write writes nothing");
    assert!(!node
        .cli(&["get", "entity", "bw", "--ns", "b"])
        .status
        .success());
    assert!(!node
        .cli(&["get", "entity", "a-mixed", "--ns", "a"])
        .status
        .success());

    // Allowed write.
    let seq = c.write("wa", vec![entity("a", "a-sock", "A sock")]).await;
    assert_eq!(seq, head + 1);

    // Snapshot + live without `namespaces`: only "a".
    c.subscribe("s", None, None).await;
    let mut feed = Feed::default();
    feed.read_until(&mut c, "s", |f| !f.live.is_empty()).await;
    let mut snap: Vec<(&str, &str)> = feed
        .snapshot
        .iter()
        .map(|r| (r.ns.as_str(), r.id.as_str()))
        .collect();
    snap.sort();
    assert_eq!(
        snap,
        vec![("a", "a-sock"), ("a", "a0")],
        "snapshot holds readable namespaces only"
    );

    // Replay from 0 on another connection: only "a" too.
    let mut r = Client::connect(&node.url()).await;
    r.hello(Some(secret)).await;
    r.subscribe("r", Some(0), None).await;
    let mut replay = Feed::from(0);
    replay.read_until(&mut r, "r", |f| !f.live.is_empty()).await;
    let ids: Vec<&str> = replay.changes.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, vec!["a0", "a-sock"]);

    // The CLI writes straight into the file (no auth): b, a, b, a.
    let mut a_seqs = Vec::new();
    for (ns, id) in [("b", "b1"), ("a", "a1"), ("b", "b2"), ("a", "a2")] {
        let s = node.cli_put("entity", ns, &json!({"id": id, "kind": "t", "name": id}));
        if ns == "a" {
            a_seqs.push(s);
        }
    }
    let last_a = *a_seqs.last().unwrap();
    feed.read_until(&mut c, "s", |f| f.last == Some(last_a))
        .await;
    replay
        .read_until(&mut r, "r", |f| f.last == Some(last_a))
        .await;
    for (name, f) in [("snapshot sub", &feed), ("replay sub", &replay)] {
        let live: Vec<(&str, &str)> = f
            .changes
            .iter()
            .filter(|c| c.seq > seq)
            .map(|c| (c.ns.as_str(), c.id.as_str()))
            .collect();
        assert_eq!(live, vec![("a", "a1"), ("a", "a2")], "{name}");
        assert_eq!(
            f.changes
                .iter()
                .filter(|c| c.seq > seq)
                .map(|c| c.seq)
                .collect::<Vec<_>>(),
            a_seqs,
            "{name}"
        );
    }
    // And nothing from "b" trails behind.
    let b3 = node.cli_put(
        "entity",
        "b",
        &json!({"id": "b3", "kind": "t", "name": "b3"}),
    );
    assert_eq!(node.head().await, b3);
    for cl in [&mut c, &mut r] {
        if let Some(ev) = cl.next_event_within(Duration::from_millis(1500)).await {
            panic!("a change of namespace b reached a reader of a only: {ev:?}");
        }
    }
}

// ------------------------------------------------------------------------------------ 6

/// Bad input, each on a fresh connection: answered with the right error code, and the node
/// keeps serving (healthz answers, new connections work).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames() {
    let node = Node::start().await;
    let url = node.url();
    node.cli_put(
        "entity",
        "default",
        &json!({"id": "pre", "kind": "t", "name": "Pre"}),
    );

    // Malformed JSON: bad_request, and the connection stays usable.
    let mut c = Client::connect(&url).await;
    c.send_raw(Message::Text("{\"type\":\"hello\",".into()))
        .await;
    let e = c.recv_error().await;
    assert_code(&e, ErrorCode::BadRequest);
    assert!(e.message.contains("JSON"), "{}", e.message);
    c.hello(None).await;

    // A binary frame on the JSON subprotocol.
    let mut c = Client::connect_enc(&url, Some(Encoding::Json)).await;
    c.send_raw(Message::Binary(vec![0u8, 1, 2, 3].into())).await;
    assert_code(&c.recv_error().await, ErrorCode::BadRequest);
    c.hello(None).await;

    // An unknown type.
    let mut c = Client::connect(&url).await;
    c.send_raw(Message::Text("{\"type\":\"frobnicate\",\"x\":1}".into()))
        .await;
    let e = c.recv_error().await;
    assert_code(&e, ErrorCode::BadRequest);
    assert!(e.message.contains("unknown"), "{}", e.message);
    c.hello(None).await;

    // Subscribe before hello.
    let mut c = Client::connect(&url).await;
    c.subscribe("early", Some(0), None).await;
    let e = c.recv_error().await;
    assert_code(&e, ErrorCode::BadRequest);
    assert!(e.message.contains("hello"), "{}", e.message);
    c.hello(None).await;

    // Hello twice.
    c.send(&ClientMsg::Hello {
        token: None,
        client: None,
    })
    .await;
    assert_code(&c.recv_error().await, ErrorCode::BadRequest);

    // A cursor from the future.
    let mut c = Client::connect(&url).await;
    let (head, _) = c.hello(None).await;
    c.subscribe("future", Some(head + 100), None).await;
    let e = c.recv_error().await;
    assert_code(&e, ErrorCode::BadRequest);
    assert_eq!(e.sub.as_deref(), Some("future"));
    // The subscription ended: its id can be used again, correctly this time.
    c.subscribe("future", Some(head), None).await;
    let mut feed = Feed::from(head);
    feed.read_until(&mut c, "future", |f| !f.live.is_empty())
        .await;

    // An oversized frame: too_large and/or a closed connection; the node survives.
    let mut c = Client::connect(&url).await;
    c.hello(None).await;
    let big = format!(
        "{{\"type\":\"write\",\"req\":\"big\",\"ops\":[],\"pad\":\"{}\"}}",
        "x".repeat(MAX_FRAME_BYTES + 1024)
    );
    // The node may close while the frame is still being sent: a failed send is fine.
    let sent = tokio::time::timeout(
        NET_TIMEOUT,
        futures_util::SinkExt::send(&mut c.ws, Message::Text(big.into())),
    )
    .await;
    let mut too_large = false;
    let closed = loop {
        match c.next_event().await {
            Event::Msg(ServerMsg::Error(e)) => {
                assert_code(&e, ErrorCode::TooLarge);
                too_large = true;
            }
            Event::Msg(other) => panic!("unexpected answer to an oversized frame: {other:?}"),
            Event::Closed(f) => break format!("close frame {f:?}"),
            Event::Failed(e) => break format!("connection failed: {e}"),
        }
    };
    println!("oversized frame: send {sent:?}; too_large error: {too_large}; then {closed}");
    assert_eq!(
        node.health().await["status"],
        "ok",
        "the node survived the oversized frame"
    );

    // The binary subprotocol end to end.
    let mut b = Client::connect_enc(&url, Some(Encoding::Bin)).await;
    let (head, _) = b.hello(None).await;
    assert_eq!(head, 1);
    b.subscribe("bin", Some(0), None).await;
    let mut feed = Feed::from(0);
    feed.read_until(&mut b, "bin", |f| !f.live.is_empty()).await;
    assert_eq!(feed.changes.len(), 1);
    assert_eq!(data(&feed.changes[0])["name"], "Pre");
    let emb = WriteOp::upsert(
        Kind::Vector,
        "default",
        json!({"subject": "pre", "model": "m3", "embedding": [0.5, -1.0, 2.0]}),
    );
    b.send_write("bw", vec![entity("default", "bin1", "Binary One"), emb])
        .await;
    feed.read_until(&mut b, "bin", |f| f.last == Some(3)).await;
    let names: Vec<String> = feed.changes.iter().map(|c| c.id.clone()).collect();
    assert_eq!(names, vec!["pre", "bin1", "pre"]);
    assert_eq!(data(&feed.changes[1])["name"], "Binary One");
    let v = &feed.changes[2];
    assert_eq!((v.kind, v.model.as_deref()), (Kind::Vector, Some("m3")));
    assert_eq!(
        v.embedding.as_deref(),
        Some(&[0.5f32, -1.0, 2.0][..]),
        "raw f32 embedding over postcard"
    );
    // A text frame on the binary subprotocol.
    b.send_raw(Message::Text(
        "{\"type\":\"ack\",\"sub\":\"bin\",\"seq\":3}".into(),
    ))
    .await;
    loop {
        match b.recv().await {
            ServerMsg::Written { req, seq } => assert_eq!((req.as_str(), seq), ("bw", 3)),
            ServerMsg::Error(e) => {
                assert_code(&e, ErrorCode::BadRequest);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(node.health().await["head"], 3);

    // JSON with embeddings as base64 of packed little-endian f32, where a client asks for it:
    // in a snapshot, in a catch-up, and live; the plain JSON subprotocol keeps arrays.
    let expect = "\"embedding\":\"AAAAPwAAgL8AAABA\""; // 0.5, -1.0, 2.0
    let mut j = Client::connect_enc(&url, Some(Encoding::JsonB64)).await;
    j.hello(None).await;
    j.subscribe("snap", None, None).await;
    let snap = raw_text(&mut j).await;
    assert!(
        snap.contains("\"type\":\"snapshot\"") && snap.contains(expect),
        "{snap}"
    );
    j.subscribe("catchup", Some(0), None).await;
    let mut frames = String::new();
    while !frames.contains("\"type\":\"live\",\"sub\":\"catchup\"") {
        frames.push_str(&raw_text(&mut j).await);
    }
    assert!(frames.contains(expect), "{frames}");
    let emb = WriteOp::upsert(
        Kind::Vector,
        "default",
        json!({"subject": "bin1", "model": "m3", "embedding": [0.5, -1.0, 2.0]}),
    );
    j.send_write("jw", vec![emb]).await;
    let mut live = String::new();
    while !live.contains("\"type\":\"changes\",\"sub\":\"catchup\"") {
        live = raw_text(&mut j).await;
    }
    assert!(live.contains(expect), "{live}");
    let ServerMsg::Changes { changes, .. } = hivesync::protocol::decode_server_json(&live).unwrap()
    else {
        unreachable!()
    };
    assert_eq!(
        changes[0].embedding.as_deref(),
        Some(&[0.5f32, -1.0, 2.0][..])
    );
    let mut plain = Client::connect_enc(&url, Some(Encoding::Json)).await;
    plain.hello(None).await;
    plain.subscribe("p", Some(3), None).await;
    let text = raw_text(&mut plain).await;
    assert!(text.contains("\"embedding\":[0.5,-1.0,2.0]"), "{text}");
}

/// The next frame's text (it must be a text frame).
async fn raw_text(c: &mut Client) -> String {
    match tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::StreamExt::next(&mut c.ws),
    )
    .await
    {
        Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

// ------------------------------------------------------------------------------------ 7

/// A row inserted with plain SQL by another process reaches a live subscriber promptly
/// (file notification, not the slow poll).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_writer_is_streamed() {
    let node = Node::start().await;
    let mut c = Client::connect(&node.url()).await;
    c.hello(None).await;
    c.subscribe("s", Some(0), None).await;
    let mut feed = Feed::from(0);
    feed.read_until(&mut c, "s", |f| !f.live.is_empty()).await;

    let db = rusqlite::Connection::open(&node.db).unwrap();
    db.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut latencies = Vec::new();
    for i in 1..=3i64 {
        db.execute(
            "INSERT INTO entities(ns, id, kind, name) VALUES ('default', ?1, 'external', ?2)",
            rusqlite::params![format!("x{i}"), format!("External {i}")],
        )
        .unwrap();
        let committed = Instant::now();
        feed.read_until(&mut c, "s", |f| f.last == Some(i)).await;
        latencies.push(committed.elapsed());
        let ch = feed.changes.last().unwrap();
        assert_eq!((ch.id.clone(), ch.op), (format!("x{i}"), Op::Upsert));
        assert_eq!(data(ch)["name"], format!("External {i}"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("external commit to subscriber latency: {latencies:?}");
    for l in &latencies {
        assert!(
            *l < Duration::from_millis(500),
            "an external commit took {l:?} to reach the subscriber"
        );
    }
}

// ------------------------------------------------------------------------------------ 8

/// Writes `writes` writes of 100 entities with `pad` bytes of description each, ids from
/// `first`; returns (last seq, total time, slowest write).
async fn write_padded(
    url: String,
    first: i64,
    writes: i64,
    pad: usize,
) -> (i64, Duration, Duration) {
    let mut w = Client::connect(&url).await;
    w.hello(None).await;
    let pad = "p".repeat(pad);
    let t0 = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut last = 0;
    for b in 0..writes {
        let ops = (0..100)
            .map(|i| {
                let id = format!("e{}", first + b * 100 + i);
                WriteOp::upsert(
                    Kind::Entity,
                    "default",
                    json!({"id": id, "kind": "t", "name": "n", "description": pad}),
                )
            })
            .collect();
        let t = Instant::now();
        last = w.write(&format!("w{b}"), ops).await;
        slowest = slowest.max(t.elapsed());
    }
    (last, t0.elapsed(), slowest)
}

/// A subscriber that never reads does not slow the writer or the other subscribers: 5,000
/// changes of 8 KiB rows (~40 MB of feed, more than socket buffers and the connection's queue
/// hold). The writer is timed without, then with, the silent subscriber; a reading subscriber
/// gets everything; the silent one is eventually dropped (bounded memory) and, resuming from
/// its last seq, loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_subscriber_does_not_block() {
    const PAD: usize = 8000;
    let node = Node::start_with(NodeOpts {
        config: Some("stall_timeout_secs = 2\n".into()),
        ..Default::default()
    })
    .await;
    let url = node.url();
    let mut reader = Client::connect(&url).await;
    reader.hello(None).await;
    reader.subscribe("r", Some(0), None).await;
    let mut feed = Feed::from(0);

    // Baseline: 2,500 changes, nobody silent.
    let writer = tokio::spawn(write_padded(url.clone(), 0, 25, PAD));
    feed.read_until(&mut reader, "r", |f| f.last == Some(2500))
        .await;
    let (head1, base, base_slowest) = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("writer timed out")
        .unwrap();
    assert_eq!(head1, 2500);

    // The silent one subscribes from 0 and never reads again; 2,500 more changes.
    let mut silent = Client::connect(&url).await;
    silent.hello(None).await;
    silent.subscribe("quiet", Some(0), None).await;
    // The silent subscriber is dropped once its queue stays full for the stall timeout; it
    // reads again as soon as `/metrics` says so (within the stall timeout after the drop, as
    // a client that came back would), while the writer may still be going.
    let port = node.port;
    let dropped = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, metrics) = common::http_get(port, "/metrics")
                .await
                .expect("/metrics answers");
            let stalled = metrics
                .lines()
                .find_map(|l| l.strip_prefix("hivesync_stalled_drops_total "))
                .map(|v| v.trim().to_string());
            if stalled.as_deref() == Some("1") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the silent subscriber was never dropped: {stalled:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // What it had been sent is consistent; then the connection ends.
        let mut quiet = Feed::from(0);
        let mut told = false;
        let end = loop {
            match silent.next_event().await {
                Event::Msg(ServerMsg::Error(e)) => {
                    assert_code(&e, ErrorCode::Overloaded);
                    assert_eq!(e.sub.as_deref(), Some("quiet"));
                    told = true;
                }
                Event::Msg(m) => assert!(quiet.take("quiet", &m), "unexpected {m:?}"),
                other => break other,
            }
        };
        (quiet, told, end)
    });
    let writer = tokio::spawn(write_padded(url.clone(), 2500, 25, PAD));
    feed.read_until(&mut reader, "r", |f| f.last == Some(5000))
        .await;
    let (head, total, slowest) = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("writer timed out")
        .unwrap();
    assert_eq!(head, 5000);
    assert_eq!(
        feed.seqs(),
        (1..=head).collect::<Vec<_>>(),
        "the reading subscriber got every change once, in order"
    );
    println!(
        "2,500 changes: writer {base:?} (slowest write {base_slowest:?}) alone, \
         {total:?} (slowest {slowest:?}) with a silent subscriber"
    );
    assert!(
        total < base * 3 + Duration::from_secs(2),
        "the writer slowed down with a silent subscriber: {total:?} against {base:?}"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "one write took {slowest:?}: the writer waited on someone"
    );
    assert_eq!(node.health().await["status"], "ok");
    let (mut quiet, told, end) = tokio::time::timeout(Duration::from_secs(60), dropped)
        .await
        .expect("the silent subscriber's drop was not seen")
        .unwrap();
    // It read again within the stall timeout after the drop, so the error reached it.
    assert!(told, "the dropped subscriber was not told why: {end:?}");
    let cut = quiet.last.unwrap();
    println!("silent subscriber dropped after receiving up to seq {cut}: {end:?}");
    assert!(
        cut < head,
        "the silent subscriber cannot have received everything"
    );
    let mut silent = Client::connect(&url).await;
    silent.hello(None).await;
    silent.subscribe("quiet", Some(cut), None).await;
    quiet
        .read_until(&mut silent, "quiet", |f| f.last == Some(head))
        .await;
    assert_eq!(
        quiet.seqs(),
        (1..=head).collect::<Vec<_>>(),
        "resumed without loss or repeat"
    );
}

// ------------------------------------------------------------------------------------ 9

/// SIGTERM: connected clients get a close frame with code 1001 and the process exits 0
/// within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_on_sigterm() {
    let mut node = Node::start().await;
    let mut sub = Client::connect(&node.url()).await;
    sub.hello(None).await;
    sub.subscribe("s", Some(0), None).await;
    let mut feed = Feed::from(0);
    feed.read_until(&mut sub, "s", |f| !f.live.is_empty()).await;
    let mut idle = Client::connect_enc(&node.url(), Some(Encoding::Bin)).await;
    idle.hello(None).await;

    let t0 = Instant::now();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &node.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    for (name, c) in [("subscriber", &mut sub), ("idle", &mut idle)] {
        let f = c
            .expect_closed()
            .await
            .unwrap_or_else(|| panic!("{name}: no close frame"));
        assert_eq!(u16::from(f.code), 1001, "{name}: close code ({f:?})");
    }
    let status = tokio::task::block_in_place(|| node.wait_exit(Duration::from_secs(5)));
    let status = status.expect("the node did not exit within 5 s of SIGTERM");
    println!("SIGTERM to exit: {:?}", t0.elapsed());
    assert!(status.success(), "exit status {status}");
}

// ------------------------------------------------------------------------------------ 10

/// Kills its child on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `hivesync watch` and stream its stdout lines into a channel.
fn spawn_watch(node: &Node, extra: &[&str]) -> (KillOnDrop, mpsc::Receiver<String>) {
    let mut child = common::command()
        .args(["watch", &node.url(), "--json"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (KillOnDrop(child), rx)
}

/// Next printed change (seq, id), within the network timeout.
fn next_line(rx: &mpsc::Receiver<String>) -> (i64, String) {
    let line = rx
        .recv_timeout(NET_TIMEOUT)
        .expect("the watcher printed nothing within the timeout");
    let v: Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line: {line:?}: {e}"));
    (
        v["seq"].as_i64().unwrap(),
        v["id"].as_str().unwrap().to_string(),
    )
}

/// `hivesync watch` prints changes as JSON lines; restarted with `--from <last printed>` it
/// prints exactly the changes made while it was away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_cli_resumes() {
    let node = Node::start().await;
    for i in 0..3 {
        node.cli_put(
            "entity",
            "default",
            &json!({"id": format!("w{i}"), "kind": "t", "name": "w"}),
        );
    }
    let (watch, rx) = spawn_watch(&node, &["--from", "0"]);
    let first: Vec<(i64, String)> =
        tokio::task::block_in_place(|| (0..3).map(|_| next_line(&rx)).collect());
    assert_eq!(
        first,
        (0..3).map(|i| (i + 1, format!("w{i}"))).collect::<Vec<_>>()
    );
    // Live while it runs.
    let mut c = Client::connect(&node.url()).await;
    c.hello(None).await;
    c.write(
        "w",
        vec![entity("default", "w3", "w"), entity("default", "w4", "w")],
    )
    .await;
    let more: Vec<(i64, String)> =
        tokio::task::block_in_place(|| (0..2).map(|_| next_line(&rx)).collect());
    assert_eq!(more, vec![(4, "w3".to_string()), (5, "w4".to_string())]);
    let last_printed = more.last().unwrap().0;
    drop(watch);
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "nothing more was printed"
    );

    // Written while no watcher runs.
    for i in 5..8 {
        node.cli_put(
            "entity",
            "default",
            &json!({"id": format!("w{i}"), "kind": "t", "name": "w"}),
        );
    }
    c.write("w2", vec![WriteOp::delete(Kind::Entity, "default", "w0")])
        .await;
    let (mut watch, rx) = spawn_watch(
        &node,
        &["--from", &last_printed.to_string(), "--until-live"],
    );
    let status = tokio::task::block_in_place(|| {
        let deadline = Instant::now() + NET_TIMEOUT;
        loop {
            if let Some(st) = watch.0.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "watch --until-live did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    assert!(status.success(), "watch exit status {status}");
    let lines: Vec<(i64, String)> =
        std::iter::from_fn(|| rx.recv_timeout(Duration::from_secs(2)).ok())
            .map(|l| {
                let v: Value = serde_json::from_str(&l).unwrap();
                (
                    v["seq"].as_i64().unwrap(),
                    v["id"].as_str().unwrap().to_string(),
                )
            })
            .collect();
    assert_eq!(
        lines,
        vec![
            (6, "w5".to_string()),
            (7, "w6".to_string()),
            (8, "w7".to_string()),
            (9, "w0".to_string())
        ],
        "exactly the new changes, no repeat, no skip"
    );
}

/// `hivesync watch` stops at once, non-zero, on what no retry can cure (a URL that is no feed,
/// a refused token), and rides out a node restart: it reconnects after a jittered delay from
/// the first step of the backoff and resumes after the last seq it printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_stops_on_fatal_errors_and_rides_out_a_restart() {
    let mut node = Node::start().await;
    let http = format!("http://127.0.0.1:{}/v1/sync", node.port);
    let wrong_path = format!("ws://127.0.0.1:{}/nope", node.port);
    let url = node.url();
    for (args, says) in [
        (vec!["watch", http.as_str()], "not a WebSocket URL"),
        (vec!["watch", wrong_path.as_str()], "HTTP 404"),
        (
            vec!["watch", url.as_str(), "--token", "wrong"],
            "unauthorized",
        ),
    ] {
        let t0 = Instant::now();
        let out = tokio::task::block_in_place(|| common::cli(&node.db, &args));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} exited 0: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("reconnecting"), "{args:?} retried: {err}");
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{args:?} took {:?}",
            t0.elapsed()
        );
    }

    node.cli_put(
        "entity",
        "default",
        &json!({"id": "r0", "kind": "t", "name": "r"}),
    );
    let mut child = common::command()
        .args(["watch", &url, "--json", "--from", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let _guard = KillOnDrop(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (etx, erx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let _ = etx.send(line);
        }
    });
    assert_eq!(
        tokio::task::block_in_place(|| next_line(&rx)),
        (1, "r0".into())
    );
    node.restart().await;
    node.cli_put(
        "entity",
        "default",
        &json!({"id": "r1", "kind": "t", "name": "r"}),
    );
    assert_eq!(
        tokio::task::block_in_place(|| next_line(&rx)),
        (2, "r1".into())
    );
    let log: Vec<String> = erx.try_iter().collect();
    let first = log
        .iter()
        .find(|l| l.contains("reconnecting in"))
        .unwrap_or_else(|| panic!("no reconnect line: {log:?}"));
    assert!(first.contains("from seq 1"), "{first}");
    // The first delay is drawn from [125, 250] ms.
    let ms: f64 = first
        .split("reconnecting in ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .map(|d| {
            if let Some(ms) = d.strip_suffix("ms") {
                ms.parse().unwrap()
            } else {
                d.trim_end_matches('s').parse::<f64>().unwrap() * 1000.0
            }
        })
        .unwrap();
    assert!(
        (125.0..=250.0).contains(&ms),
        "first retry after {ms} ms: {first}"
    );
    assert!(rx.try_recv().is_err(), "a change printed twice");
}

// ------------------------------------------------------------------ the first command

/// With no `--web`, `/` is the browser replica compiled into the binary (its module and wasm
/// served beside it), `/status` the node's own status page; `--web DIR` without a built package
/// is refused with what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_is_served_from_the_binary() {
    let node = Node::start().await;
    let (status, page) = common::http_get(node.port, "/").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        page.contains("app.js"),
        "/ is not the replica's page: {page}"
    );
    for path in [
        "/app.js",
        "/hivesync.js",
        "/worker.js",
        "/sync.js",
        "/pkg/hivesync_wasm.js",
    ] {
        let (status, body) = common::http_get(node.port, path).await.unwrap();
        assert_eq!(status, 200, "{path}");
        assert!(!body.is_empty(), "{path}");
    }
    let (status, wasm) = common::http_get(node.port, "/pkg/hivesync_wasm_bg.wasm")
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert!(wasm.starts_with("\0asm"), "not a wasm module");
    let (status, page) = common::http_get(node.port, "/status").await.unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("/v1/sync"), "/status: {page}");
    assert_eq!(
        common::http_get(node.port, "/nope.js").await.unwrap().0,
        404
    );

    // `--web` must name a directory (issue 24: a directory's files go over the built-in
    // package's, so it need not hold a whole package).
    let not_a_dir = node.dir.path().join("nothing-here");
    let out = common::cli(
        &node.dir.path().join("other.db"),
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--web",
            not_a_dir.to_str().unwrap(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a directory"), "{err}");
}

/// Issue 24, item 6: `--web DIR` adds files over the built-in package: an app's own page and
/// script from DIR, the package's files (which DIR lacks) built in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_directory_goes_over_the_built_in_package() {
    let web = tempfile::tempdir().unwrap();
    std::fs::write(
        web.path().join("index.html"),
        "<!doctype html><title>my app</title>",
    )
    .unwrap();
    std::fs::write(web.path().join("my.js"), "export const mine = 1;").unwrap();
    let node = Node::start_with(common::NodeOpts {
        args: vec!["--web".into(), web.path().to_str().unwrap().into()],
        ..Default::default()
    })
    .await;
    let (status, page) = common::http_get(node.port, "/").await.unwrap();
    assert_eq!((status, page.contains("my app")), (200, true), "{page}");
    assert_eq!(common::http_get(node.port, "/my.js").await.unwrap().0, 200);
    for path in ["/hivesync.js", "/worker.js", "/pkg/hivesync_wasm_bg.wasm"] {
        assert_eq!(
            common::http_get(node.port, path).await.unwrap().0,
            200,
            "{path}"
        );
    }
    assert_eq!(
        common::http_get(node.port, "/nope.js").await.unwrap().0,
        404
    );
}

/// `hivesync token NAME --ns A --read-only` prints a secret once and config lines holding only
/// its hash; a node given those lines lets the secret in, reading namespace A only and writing
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_the_cli_opens_a_scoped_session() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::cli(
        &dir.path().join("unused.db"),
        &["token", "reader", "--ns", "a", "--read-only"],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(
        !dir.path().join("unused.db").exists(),
        "token made a database"
    );
    let lines = String::from_utf8(out.stdout).unwrap();
    let secret = String::from_utf8(out.stderr)
        .unwrap()
        .split_whitespace()
        .find(|w| w.starts_with("hs_"))
        .expect("the secret, on stderr")
        .to_string();
    assert!(!lines.contains(&secret), "the config lines hold the secret");
    let node = Node::start_with(NodeOpts {
        config: Some(format!("name = \"t\"\n{lines}")),
        ..Default::default()
    })
    .await;
    node.cli_put(
        "entity",
        "a",
        &json!({"id": "a0", "kind": "t", "name": "A"}),
    );
    node.cli_put(
        "entity",
        "b",
        &json!({"id": "b0", "kind": "t", "name": "B"}),
    );

    let mut c = Client::connect(&node.url()).await;
    c.hello(Some(&secret)).await;
    c.subscribe("sa", Some(0), Some(vec!["a".into()])).await;
    let mut feed = Feed::from(0);
    feed.read_until(&mut c, "sa", |f| !f.live.is_empty()).await;
    assert_eq!(
        feed.changes
            .iter()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>(),
        vec!["a0"]
    );
    c.subscribe("sb", Some(0), Some(vec!["b".into()])).await;
    assert_code(&c.recv_error().await, ErrorCode::Forbidden);
    c.send_write("w", vec![entity("a", "a1", "no")]).await;
    assert_code(&c.recv_error().await, ErrorCode::Forbidden);

    let mut stranger = Client::connect(&node.url()).await;
    stranger
        .send(&ClientMsg::Hello {
            token: Some(format!("{secret}x")),
            client: None,
        })
        .await;
    assert_code(&stranger.recv_error().await, ErrorCode::Unauthorized);
}
