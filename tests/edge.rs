//! Past one machine: an edge node (`serve --upstream`) replicating another node and serving
//! its own subscribers, and a read-only follower (`serve --read-only`) streaming what another
//! process writes into its file (what LiteFS does on a replica). Real binaries, real sockets.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Client, Node, NodeOpts};
use hivesync::protocol::ServerMsg;
use serde_json::json;

fn digest(db: &std::path::Path) -> String {
    let o = common::cli(db, &["--json", "digest"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["sha256"].as_str().unwrap().to_string()
}

/// Read changes until one with `id` arrives; returns its seq.
async fn until_id(c: &mut Client, id: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "{id} never arrived");
        match c.recv().await {
            ServerMsg::Changes { changes, .. } => {
                if let Some(ch) = changes.iter().find(|ch| ch.id == id) {
                    return ch.seq;
                }
            }
            ServerMsg::Snapshot { rows, .. } => {
                if let Some(ch) = rows.iter().find(|ch| ch.id == id) {
                    return ch.seq;
                }
            }
            _ => {}
        }
    }
}

/// An edge node (`serve --upstream`) following `upstream`.
async fn relay_of(upstream: &Node) -> Node {
    Node::start_with(NodeOpts {
        config: None,
        args: vec!["--upstream".into(), upstream.url()],
        env: Vec::new(),
    })
    .await
}

/// A primary and a chain of two relays (region, then city), both caught up.
async fn chain() -> (Node, Node, Node) {
    let primary = Node::start().await;
    let region = relay_of(&primary).await;
    let city = relay_of(&region).await;
    wait_live_upstream(&region).await;
    wait_live_upstream(&city).await;
    (primary, region, city)
}

/// How many changes in `db`'s log carry the id `id`.
fn times_in_log(db: &std::path::Path, id: &str) -> usize {
    let o = common::cli(db, &["changes", "--from", "0", "--limit", "100000"]);
    let needle = format!("\"{id}\"");
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .filter(|l| l.contains(&needle))
        .count()
}

async fn wait_live_upstream(edge: &Node) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while edge.health().await["upstream"]["live"] != json!(true) {
        assert!(
            Instant::now() < deadline,
            "edge never caught up:\n{}",
            edge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_node_replicates_serves_and_forwards_writes() {
    let primary = Node::start().await;
    for i in 0..50 {
        primary.cli_put(
            "entity",
            "default",
            &json!({"id": format!("p{i}"), "name": format!("primary {i}")}),
        );
    }
    let edge = relay_of(&primary).await;
    wait_live_upstream(&edge).await;
    assert_eq!(
        edge.head().await,
        primary.head().await,
        "the edge reports the upstream's seqs"
    );

    // A subscriber of the edge gets the snapshot, then live changes written on the primary,
    // with the primary's seq numbers.
    let mut sub = Client::connect(&edge.url()).await;
    sub.hello(None).await;
    sub.subscribe("s", None, None).await;
    until_id(&mut sub, "p49").await;
    let seq = primary.cli_put(
        "entity",
        "default",
        &json!({"id": "late", "name": "written on the primary"}),
    );
    assert_eq!(until_id(&mut sub, "late").await, seq);

    // A write sent to the edge commits on the primary and comes back down.
    let mut w = Client::connect(&edge.url()).await;
    w.hello(None).await;
    let wseq = w
        .write(
            "w1",
            vec![common::entity(
                "default",
                "via-edge",
                "written through the edge",
            )],
        )
        .await;
    assert_eq!(until_id(&mut sub, "via-edge").await, wseq);
    assert!(primary.cli(&["get", "entity", "via-edge"]).status.success());
    // A refused write is refused by the primary, with its reason, and nothing lands.
    w.send_write(
        "w2",
        vec![hivesync::model::WriteOp::upsert(
            hivesync::model::Kind::Edge,
            "default",
            json!({"source": "p1", "target": "ghost", "relation": "r"}),
        )],
    )
    .await;
    let e = w.recv_error().await;
    assert_eq!(e.req.as_deref(), Some("w2"));
    assert!(e.message.contains("ghost"), "{e:?}");

    // Both files converge to the same logical state.
    let deadline = Instant::now() + Duration::from_secs(10);
    while edge.head().await != primary.head().await {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(digest(&edge.db), digest(&primary.db));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_resumes_after_its_upstream_restarts() {
    let mut primary = Node::start().await;
    primary.cli_put("entity", "default", &json!({"id": "a", "name": "before"}));
    let edge = relay_of(&primary).await;
    wait_live_upstream(&edge).await;
    // Stop the primary, write to its file meanwhile, start it again on the same port (the
    // edge keeps dialing that port).
    primary.kill();
    primary.cli(&["put", "entity", r#"{"id":"b","name":"while down"}"#]);
    primary.start_again().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let o = common::cli(&edge.db, &["get", "entity", "b"]);
        if o.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the edge did not resume:\n{}",
            edge.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(digest(&edge.db), digest(&primary.db));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_follower_streams_what_another_process_writes() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("replicated.db");
    // Something else owns the file (on a LiteFS replica: the LiteFS daemon).
    common::cli(&db, &["put", "entity", r#"{"id":"first","name":"first"}"#]);
    let follower = Node::start_in(
        dir,
        db.clone(),
        NodeOpts {
            config: None,
            args: vec!["--read-only".into()],
            env: Vec::new(),
        },
    )
    .await;
    assert_eq!(follower.health().await["read_only"], json!(true));
    let mut sub = Client::connect(&follower.url()).await;
    sub.hello(None).await;
    sub.subscribe("s", Some(0), None).await;
    until_id(&mut sub, "first").await;
    let t0 = Instant::now();
    common::cli(
        &db,
        &["put", "entity", r#"{"id":"second","name":"second"}"#],
    );
    until_id(&mut sub, "second").await;
    println!("follower saw an outside commit after {:?}", t0.elapsed());
    // It refuses writes and says where to send them.
    let mut w = Client::connect(&follower.url()).await;
    w.hello(None).await;
    w.send_write("w", vec![common::entity("default", "x", "x")])
        .await;
    let e = w.recv_error().await;
    assert!(e.message.contains("read-only"), "{e:?}");
    assert!(!common::cli(&db, &["get", "entity", "x"]).status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_relays_converges_and_forwards_writes_once() {
    let (primary, region, city) = chain().await;
    let mut sub = Client::connect(&city.url()).await;
    sub.hello(None).await;
    sub.subscribe("s", Some(0), None).await;
    // Load on the primary while a write goes in at the far end of the chain.
    for i in 0..30 {
        primary.cli_put(
            "entity",
            "default",
            &json!({"id": format!("p{i}"), "name": format!("primary {i}")}),
        );
    }
    let mut w = Client::connect(&city.url()).await;
    w.hello(None).await;
    let seq = w
        .write(
            "w1",
            vec![common::entity(
                "default",
                "from-city",
                "written at the city relay",
            )],
        )
        .await;
    assert_eq!(
        until_id(&mut sub, "from-city").await,
        seq,
        "same seq numbers at every hop"
    );
    // Applied once: exactly one change for it in the primary's log.
    assert_eq!(times_in_log(&primary.db, "from-city"), 1);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (p, r, c) = (primary.head().await, region.head().await, city.head().await);
        if p == r && r == c {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "relays did not catch up: {p} {r} {c}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let d = digest(&primary.db);
    assert_eq!(digest(&region.db), d);
    assert_eq!(digest(&city.db), d);
}

/// Copy `src` into `dst` with SQLite's online backup API: one consistent snapshot of the
/// primary committed into the follower's file as one transaction (what LiteFS delivers to a
/// replica, one transaction at a time).
fn backup_into(src: &std::path::Path, dst: &mut rusqlite::Connection) {
    let src = rusqlite::Connection::open_with_flags(
        src,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap();
    let b = rusqlite::backup::Backup::new(&src, dst).unwrap();
    b.run_to_completion(i32::MAX, Duration::from_millis(5), None)
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_streams_a_file_that_the_backup_api_keeps_copying() {
    let primary = Node::start().await;
    primary.cli_put("entity", "default", &json!({"id": "seed", "name": "seed"}));
    let dir = tempfile::tempdir().unwrap();
    let fdb = dir.path().join("follower.db");
    let mut dst = rusqlite::Connection::open(&fdb).unwrap();
    dst.pragma_update(None, "journal_mode", "WAL").unwrap();
    backup_into(&primary.db, &mut dst);
    let follower = Node::start_in(
        dir,
        fdb.clone(),
        NodeOpts {
            config: Some(format!("primary = \"{}\"\n", primary.url())),
            args: vec!["--read-only".into()],
            env: Vec::new(),
        },
    )
    .await;
    let mut sub = Client::connect(&follower.url()).await;
    sub.hello(None).await;
    sub.subscribe("s", Some(0), None).await;
    let mut feed = common::Feed::from(0);

    // The copier: the backup API in a loop, standing in for LiteFS.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (src, stop2) = (primary.db.clone(), stop.clone());
    let copier = std::thread::spawn(move || {
        let mut copies = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            backup_into(&src, &mut dst);
            copies += 1;
            std::thread::sleep(Duration::from_millis(30));
        }
        backup_into(&src, &mut dst);
        copies + 1
    });

    // Write load on the primary over its socket meanwhile: 200 writes of 1-3 ops.
    let mut w = Client::connect(&primary.url()).await;
    w.hello(None).await;
    let mut head = 0;
    for i in 0..200 {
        let ops = (0..1 + i % 3)
            .map(|j| common::entity("default", &format!("e{i}-{j}"), &format!("entity {i} {j}")))
            .collect();
        head = w.write(&format!("w{i}"), ops).await;
        if i % 20 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let copies = tokio::task::spawn_blocking(move || copier.join().unwrap())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while feed.last < Some(head) {
        assert!(
            Instant::now() < deadline,
            "the follower's subscriber stopped at {:?} of {head}",
            feed.last
        );
        let m = sub.recv().await;
        assert!(feed.take("s", &m), "unexpected {m:?}");
    }
    // Every change, in order, exactly once (Feed::take checked each batch's prev).
    let seqs = feed.seqs();
    assert_eq!(seqs, (1..=head).collect::<Vec<_>>());
    assert_eq!(digest(&fdb), digest(&primary.db));
    println!(
        "follower streamed {} changes from {copies} backup-API copies of the primary, in {} batches",
        seqs.len(),
        feed.batches
    );
    // A write sent to the follower is refused and names the primary.
    w = Client::connect(&follower.url()).await;
    w.hello(None).await;
    w.send_write("x", vec![common::entity("default", "x", "x")])
        .await;
    let e = w.recv_error().await;
    assert!(e.message.contains(&primary.url()), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_relays_survives_a_relay_restart_under_load() {
    let (primary, mut region, city) = chain().await;
    let mut subs = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(&city.url()).await;
        c.hello(None).await;
        c.subscribe("s", Some(0), None).await;
        subs.push((c, common::Feed::from(0)));
    }

    // Load on the primary: 400 socket writes of 1-2 ops, about 4 s.
    let url = primary.url();
    let load = tokio::spawn(async move {
        let mut w = Client::connect(&url).await;
        w.hello(None).await;
        let mut head = 0;
        for i in 0..400 {
            let ops = (0..1 + i % 2)
                .map(|j| common::entity("default", &format!("l{i}-{j}"), "load"))
                .collect();
            head = w.write(&format!("l{i}"), ops).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        head
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The middle relay dies mid-stream (SIGKILL) and comes back on its port.
    region.restart().await;
    let head = load.await.unwrap();
    // A write at the far end after the restart is acknowledged once and applied once.
    wait_live_upstream(&region).await;
    wait_live_upstream(&city).await;
    let mut w = Client::connect(&city.url()).await;
    w.hello(None).await;
    let seq = w
        .write(
            "after",
            vec![common::entity("default", "after-restart", "x")],
        )
        .await;
    assert!(seq > head);
    for (c, feed) in &mut subs {
        let deadline = Instant::now() + Duration::from_secs(30);
        while feed.last < Some(seq) {
            assert!(
                Instant::now() < deadline,
                "a city subscriber stopped at {:?} of {seq}",
                feed.last
            );
            let m = c.recv().await;
            assert!(feed.take("s", &m), "unexpected {m:?}");
        }
        assert_eq!(
            feed.seqs(),
            (1..=seq).collect::<Vec<_>>(),
            "gap-free, no repeats"
        );
    }
    let d = digest(&primary.db);
    let deadline = Instant::now() + Duration::from_secs(15);
    while region.head().await < seq || city.head().await < seq {
        assert!(Instant::now() < deadline, "relays did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(digest(&region.db), d);
    assert_eq!(digest(&city.db), d);
    assert_eq!(times_in_log(&primary.db, "after-restart"), 1);
    println!("chain primary -> region -> city: region killed and restarted under load; 3 city subscribers got all {seq} changes in order, digests equal");
}

/// A metric's value from a node's `/metrics`.
async fn metric(node: &Node, name: &str) -> u64 {
    let (_, text) = node.try_get("/metrics").await.expect("/metrics answers");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_frames_that_queue_up_at_an_edge_are_applied_together_in_order() {
    let primary = Node::start().await;
    let edge = relay_of(&primary).await;
    wait_live_upstream(&edge).await;
    let mut sub = Client::connect(&edge.url()).await;
    sub.hello(None).await;
    sub.subscribe("s", None, None).await;
    let mut w = Client::connect(&primary.url()).await;
    w.hello(None).await;
    w.write(
        "w0",
        vec![common::entity("default", "first", "before the hold")],
    )
    .await;
    until_id(&mut sub, "first").await;
    let (frames0, applies0) = (
        metric(&edge, "hivesync_upstream_frames_total").await,
        metric(&edge, "hivesync_upstream_applies_total").await,
    );

    // Another process holds the edge's database write lock, as a long checkpoint or a slow
    // disk would: the edge's apply waits, and the primary's frames (one per write) queue up on
    // the edge's socket.
    let lock = rusqlite::Connection::open(&edge.db).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut seqs = Vec::new();
    for i in 0..40 {
        let op = common::entity("default", &format!("q{i}"), "queued");
        seqs.push(w.write(&format!("w{}", i + 1), vec![op]).await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock.execute_batch("COMMIT").unwrap();
    drop(lock);

    // The edge's subscriber gets every change, in order, with the primary's seqs.
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < seqs.len() {
        assert!(Instant::now() < deadline, "got only {got:?}");
        if let ServerMsg::Changes { changes, .. } = sub.recv().await {
            got.extend(
                changes
                    .iter()
                    .filter(|c| c.id.starts_with('q'))
                    .map(|c| c.seq),
            );
        }
    }
    assert_eq!(got, seqs);
    let frames = metric(&edge, "hivesync_upstream_frames_total").await - frames0;
    let applies = metric(&edge, "hivesync_upstream_applies_total").await - applies0;
    assert!(frames >= 40, "{frames} frames");
    assert!(
        applies < frames,
        "frames that queued up were applied one transaction each ({applies} for {frames})"
    );
    assert_eq!(digest(&edge.db), digest(&primary.db));
}

/// A relay whose token the upstream refuses stops following (one attempt, no retry loop
/// against a node that will refuse it every time) and says why in `/healthz`, while still
/// serving its copy; the same client session decides this for `watch` and the relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_with_a_refused_token_stops_and_says_why() {
    let primary = Node::start_with(NodeOpts {
        config: Some(format!(
            "anonymous = \"never\"\n[[token]]\nname = \"r\"\nsha256 = \"{}\"\nread = [\"*\"]\nwrite = [\"*\"]\n",
            hivesync::node::config::hash_token("right")
        )),
        ..Default::default()
    })
    .await;
    let edge = Node::start_with(NodeOpts {
        args: vec![
            "--upstream".into(),
            primary.url(),
            "--upstream-token".into(),
            "wrong".into(),
        ],
        ..Default::default()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let h = loop {
        let h = edge.health().await;
        if h["upstream"]["error"].is_string() {
            break h;
        }
        assert!(Instant::now() < deadline, "no upstream error: {h}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let why = h["upstream"]["error"].as_str().unwrap();
    assert!(
        why.contains("stopped") && why.contains("unauthorized"),
        "{h}"
    );
    assert_eq!(h["status"], "degraded", "{h}");
    // No retries: the primary counts one refused hello in the next three seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(metric(&primary, "hivesync_failed_hellos_total").await, 1);
    let mut c = Client::connect(&edge.url()).await;
    c.hello(None).await;
}
