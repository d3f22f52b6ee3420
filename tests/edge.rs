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
    let edge = Node::start_with(NodeOpts {
        config: None,
        args: vec!["--upstream".into(), primary.url()],
    })
    .await;
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
    let edge = Node::start_with(NodeOpts {
        config: None,
        args: vec!["--upstream".into(), primary.url()],
    })
    .await;
    wait_live_upstream(&edge).await;
    // Stop the primary, write to its file meanwhile, start it again on the same port.
    let port = primary.port;
    let (db, dir) = (
        primary.db.clone(),
        std::mem::replace(&mut primary.dir, tempfile::tempdir().unwrap()),
    );
    drop(primary);
    common::cli(&db, &["put", "entity", r#"{"id":"b","name":"while down"}"#]);
    let mut restarted = None;
    for _ in 0..50 {
        // The edge keeps dialing the old port; the new node must take that same port.
        let mut cmd = common::command();
        cmd.arg("--db")
            .arg(&db)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")]);
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        if child.try_wait().unwrap().is_none() {
            restarted = Some(child);
            break;
        }
    }
    let mut child = restarted.expect("could not restart the primary on its port");
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
    assert_eq!(digest(&edge.db), digest(&db));
    let _ = child.kill();
    let _ = child.wait();
    drop(dir);
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
    let primary = Node::start().await;
    let region = Node::start_with(NodeOpts {
        config: None,
        args: vec!["--upstream".into(), primary.url()],
    })
    .await;
    let city = Node::start_with(NodeOpts {
        config: None,
        args: vec!["--upstream".into(), region.url()],
    })
    .await;
    wait_live_upstream(&region).await;
    wait_live_upstream(&city).await;
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
    let o = common::cli(
        &primary.db,
        &["changes", "--from", "0", "--limit", "100000"],
    );
    let log = String::from_utf8(o.stdout).unwrap();
    assert_eq!(
        log.lines().filter(|l| l.contains("\"from-city\"")).count(),
        1
    );
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
