//! `serve --publish nats://`: the change feed in a real NATS JetStream stream (Debian's
//! `nats-server`, started here with `-js` on a loopback port; `.ci/run` installs it).
//! Every seq exactly once, in order, with no gap: across a primary killed with SIGKILL while
//! publishing, and across nats-server stopped and restarted under write load. And edges fed
//! from the stream (`serve --upstream nats://`): resumed from their cursor after a kill, past a
//! purged stream, with their own tokens.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{entity, Client, Node, NodeOpts};

/// A nats-server with JetStream, storing in `dir`, on `port`; killed on drop.
struct Nats {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// User and password the server requires, if any.
    auth: Option<(String, String)>,
}

impl Nats {
    async fn start() -> Nats {
        Self::start_with(None).await
    }

    async fn start_with(auth: Option<(String, String)>) -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let mut n = Nats {
            child: None,
            port: common::free_port(),
            dir,
            auth,
        };
        n.run().await;
        n
    }

    async fn run(&mut self) {
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .map(String::from)
            .unwrap_or_else(|| "nats-server".into());
        let child = Command::new(&bin)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.path())
            .args(
                self.auth.iter().flat_map(|(u, p)| {
                    ["--user".to_string(), u.clone(), "--pass".into(), p.clone()]
                }),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {bin} ({e}): install it (Debian: apt-get install nats-server)")
            });
        self.child = Some(child);
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "nats-server did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The server's URL, with its credentials when it requires some.
    fn url(&self) -> String {
        match &self.auth {
            Some((u, p)) => format!("nats://{u}:{p}@127.0.0.1:{}", self.port),
            None => format!("nats://127.0.0.1:{}", self.port),
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every message of the stream: (stream sequence, Hivesync-Seq header, the payload's seq).
async fn stream_seqs(nats: &Nats) -> Vec<(u64, i64, i64)> {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("HIVESYNC").await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut out = Vec::new();
    for s in 1..=last {
        let m = stream.get_raw_message(s).await.unwrap();
        let h: i64 = m
            .headers
            .get("Hivesync-Seq")
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        let c: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        out.push((s, h, c["seq"].as_i64().unwrap()));
        assert!(
            m.subject.starts_with("hivesync.changes.default."),
            "{}",
            m.subject
        );
    }
    out
}

/// Wait until the stream's last message carries `head`.
async fn until_published(nats: &Nats, head: i64) {
    let t0 = Instant::now();
    loop {
        if let Ok(client) = async_nats::connect(nats.url()).await {
            let js = async_nats::jetstream::new(client);
            if let Ok(mut stream) = js.get_stream("HIVESYNC").await {
                if hivesync::node::publish::stream_last_seq(&mut stream)
                    .await
                    .unwrap()
                    >= head
                {
                    return;
                }
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the stream did not reach seq {head}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_exactly_once(seqs: &[(u64, i64, i64)], head: i64) {
    let got: Vec<i64> = seqs.iter().map(|s| s.1).collect();
    assert_eq!(
        got,
        (1..=head).collect::<Vec<_>>(),
        "every seq once, in order, no gap"
    );
    assert!(
        seqs.iter().all(|s| s.1 == s.2),
        "the header and the payload agree"
    );
}

async fn write_many(node: &Node, from: usize, n: usize) {
    let mut c = Client::connect(&node.url()).await;
    c.hello(None).await;
    for b in 0..n / 50 {
        let ops = (0..50)
            .map(|i| entity("default", &format!("e{}", from + b * 50 + i), "x"))
            .collect();
        c.write(&format!("w{b}"), ops).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_killed_while_publishing_leaves_every_seq_once_in_the_stream() {
    let nats = Nats::start().await;
    let opts = NodeOpts {
        args: vec!["--publish".into(), nats.url()],
        ..Default::default()
    };
    let mut node = Node::start_with(opts).await;
    // An edge reading the stream, caught up (empty) before the writes begin.
    let edge = edge_of(&nats, &node, None).await;
    until_edge_at(&edge, 0).await;
    write_many(&node, 0, 500).await;
    until_published(&nats, 500).await;
    // More writes, and the node killed while it publishes them.
    write_many(&node, 500, 3000).await;
    let (_, metrics) = common::http_get(node.port, "/metrics").await.unwrap();
    node.kill();
    eprintln!(
        "killed at {}",
        metrics
            .lines()
            .find(|l| l.starts_with("hivesync_nats_published_seq"))
            .unwrap()
    );
    node.start_again().await;
    let head = node.head().await;
    assert_eq!(head, 3500);
    until_published(&nats, head).await;
    assert_exactly_once(&stream_seqs(&nats).await, head);
    // Writes after the restart go on from there.
    write_many(&node, 3500, 100).await;
    until_published(&nats, 3600).await;
    assert_exactly_once(&stream_seqs(&nats).await, 3600);
    // The edge's subscribers see the same: every seq once, in order.
    until_edge_at(&edge, 3600).await;
    let mut feed = common::Feed::from(0);
    read_to(&edge, &mut feed, None, 3600).await;
    assert_eq!(feed.seqs(), (1..=3600).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_and_restarted_under_write_load_loses_nothing() {
    let mut nats = Nats::start().await;
    let opts = NodeOpts {
        args: vec!["--publish".into(), nats.url()],
        ..Default::default()
    };
    let node = Node::start_with(opts).await;
    let edge = edge_of(&nats, &node, None).await;
    until_edge_at(&edge, 0).await;
    write_many(&node, 0, 500).await;
    until_published(&nats, 500).await;
    nats.stop();
    // Writes go on while NATS is down: publishing never holds them up.
    let t0 = Instant::now();
    write_many(&node, 500, 1000).await;
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "writes were held up: {:?}",
        t0.elapsed()
    );
    let (_, metrics) = common::http_get(node.port, "/metrics").await.unwrap();
    assert!(
        metrics.contains("hivesync_nats_published_seq 500"),
        "{metrics}"
    );
    // The edge follows the primary's feed while the stream is away.
    let t0 = Instant::now();
    common::eventually(
        Duration::from_secs(30),
        || async { edge.health().await["upstream"]["applied"] == 1500 },
        || edge.log_text(),
    )
    .await;
    eprintln!("edge at 1500 without NATS after {:?}", t0.elapsed());
    nats.run().await;
    until_published(&nats, 1500).await;
    assert_exactly_once(&stream_seqs(&nats).await, 1500);
    // And reads the stream again once it is back.
    write_many(&node, 1500, 100).await;
    until_edge_at(&edge, 1600).await;
    let mut feed = common::Feed::from(0);
    read_to(&edge, &mut feed, None, 1600).await;
    assert_eq!(feed.seqs(), (1..=1600).collect::<Vec<_>>());
}

/// A primary publishing to `nats`.
async fn primary_of(nats: &Nats) -> Node {
    Node::start_with(NodeOpts {
        args: vec!["--publish".into(), nats.url()],
        ..Default::default()
    })
    .await
}

/// An edge fed from the stream (`--upstream nats://... --primary ws://...`).
async fn edge_of(nats: &Nats, primary: &Node, config: Option<String>) -> Node {
    Node::start_with(NodeOpts {
        config,
        args: vec![
            "--upstream".into(),
            nats.url(),
            "--primary".into(),
            primary.url(),
        ],
        ..Default::default()
    })
    .await
}

async fn metric(node: &Node, name: &str) -> i64 {
    let (_, text) = common::http_get(node.port, "/metrics").await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Wait until the edge has applied `head` and reads the stream.
async fn until_edge_at(edge: &Node, head: i64) {
    common::eventually(
        Duration::from_secs(60),
        || async {
            let h = edge.health().await;
            h["upstream"]["applied"].as_i64() == Some(head) && h["upstream"]["nats"] == true
        },
        || {
            format!(
                "the edge did not reach seq {head} on the stream\n{}",
                edge.log_text()
            )
        },
    )
    .await;
}

/// A subscriber of `node` resuming after `feed.last`, read up to `head`.
async fn read_to(node: &Node, feed: &mut common::Feed, token: Option<&str>, head: i64) {
    let mut c = Client::connect(&node.url()).await;
    c.hello(token).await;
    c.subscribe("s", feed.last, None).await;
    tokio::time::timeout(
        Duration::from_secs(60),
        feed.read_until(&mut c, "s", |f| f.last >= Some(head)),
    )
    .await
    .unwrap_or_else(|_| panic!("the subscriber did not reach {head}: {:?}", feed.last));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_fed_from_nats_resumes_from_its_cursor_after_a_kill_and_its_subscribers_see_no_gap()
{
    let nats = Nats::start().await;
    let primary = primary_of(&nats).await;
    // A new edge: a snapshot from the primary's feed (empty here, so that the edge's log holds
    // every change for a subscriber from 0), then the stream.
    let mut edge = edge_of(&nats, &primary, None).await;
    until_edge_at(&edge, 0).await;
    write_many(&primary, 0, 200).await;
    until_edge_at(&edge, 200).await;
    let mut feed = common::Feed::from(0);
    read_to(&edge, &mut feed, None, 200).await;
    // Live changes come through the stream.
    write_many(&primary, 200, 300).await;
    until_edge_at(&edge, 500).await;
    read_to(&edge, &mut feed, None, 500).await;
    assert_eq!(
        metric(&edge, "hivesync_upstream_nats_changes_total").await,
        500
    );
    // Killed; the primary goes on; restarted, the edge reads the stream from its cursor: every
    // change it lacks comes from the stream, none from the primary.
    edge.kill();
    write_many(&primary, 500, 500).await;
    until_published(&nats, 1000).await;
    edge.start_again().await;
    until_edge_at(&edge, 1000).await;
    assert_eq!(
        metric(&edge, "hivesync_upstream_nats_changes_total").await,
        500,
        "{}",
        edge.log_text()
    );
    read_to(&edge, &mut feed, None, 1000).await;
    assert_eq!(
        feed.seqs(),
        (1..=1000).collect::<Vec<_>>(),
        "no gap, nothing twice"
    );
    // Writes sent to the edge reach the primary and come back through the stream.
    let mut c = Client::connect(&edge.url()).await;
    c.hello(None).await;
    let seq = c.write("w", vec![entity("default", "via-edge", "x")]).await;
    assert_eq!(seq, 1001);
    until_edge_at(&edge, 1001).await;
    // A change too large for a NATS message (1 MiB by default) goes into the stream as a
    // stand-in; the edge reads it from the primary, and the stream takes over again after it.
    let big = hivesync::model::WriteOp::upsert(
        hivesync::model::Kind::Note,
        "default",
        serde_json::json!({"id": "big", "content": "\"".repeat(600_000)}),
    );
    let mut w = Client::connect(&primary.url()).await;
    w.hello(None).await;
    assert_eq!(w.write("big", vec![big]).await, 1002);
    w.write("after", vec![entity("default", "after-big", "x")])
        .await;
    until_edge_at(&edge, 1003).await;
    let stand_in = {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream("HIVESYNC").await.unwrap();
        stream.get_raw_message(1002).await.unwrap()
    };
    assert_eq!(
        stand_in.headers.get("Hivesync-Omitted").map(|v| v.as_str()),
        Some("too-large")
    );
    assert!(stand_in.payload.is_empty());
    read_to(&edge, &mut feed, None, 1003).await;
    assert_eq!(feed.seqs(), (1..=1003).collect::<Vec<_>>());
    assert_eq!(
        common::data(&feed.changes[1001])["content"]
            .as_str()
            .map(str::len),
        Some(600_000)
    );
    // The edge reads the stream again after the stand-in.
    common::eventually(
        Duration::from_secs(30),
        || async { metric(&edge, "hivesync_upstream_nats").await == 1 },
        || edge.log_text(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_fed_from_nats_enforces_its_own_tokens_and_recovers_from_a_purged_stream() {
    let nats = Nats::start().await;
    let primary = primary_of(&nats).await;
    let mut w = Client::connect(&primary.url()).await;
    w.hello(None).await;
    let mut n = 0;
    let mut write_ab = async |w: &mut Client, k: usize| {
        for _ in 0..k {
            n += 1;
            w.write(
                &format!("w{n}"),
                vec![
                    entity("a", &format!("a{n}"), "x"),
                    entity("b", &format!("b{n}"), "x"),
                ],
            )
            .await;
        }
    };
    write_ab(&mut w, 20).await;
    let config = format!(
        "anonymous = \"never\"\n[[token]]\nname = \"a-reader\"\nsha256 = \"{}\"\nread = [\"a\"]\nwrite = []\n",
        hivesync::node::config::hash_token("ta")
    );
    let mut edge = edge_of(&nats, &primary, Some(config)).await;
    until_edge_at(&edge, 40).await;
    // The scoped token sees namespace a only, from the snapshot on and live from the stream.
    let mut feed = common::Feed::default();
    let mut c = Client::connect(&edge.url()).await;
    c.hello(Some("ta")).await;
    c.subscribe("s", None, None).await;
    feed.read_until(&mut c, "s", |f| f.snapshot_done).await;
    write_ab(&mut w, 10).await;
    until_edge_at(&edge, 60).await;
    feed.read_until(&mut c, "s", |f| f.changes.len() >= 10)
        .await;
    assert_eq!(feed.snapshot.len(), 20);
    assert!(feed
        .snapshot
        .iter()
        .chain(&feed.changes)
        .all(|ch| ch.ns == "a"));
    c.subscribe("b", Some(0), Some(vec!["b".into()])).await;
    loop {
        match c.recv().await {
            hivesync::protocol::ServerMsg::Error(e) => {
                common::assert_code(&e, hivesync::protocol::ErrorCode::Forbidden);
                break;
            }
            m => assert!(feed.take("s", &m), "{m:?}"),
        }
    }
    // No token, no feed.
    let mut anon = Client::connect(&edge.url()).await;
    anon.send(&hivesync::protocol::ClientMsg::Hello {
        token: None,
        client: None,
    })
    .await;
    common::assert_code(
        &anon.recv_error().await,
        hivesync::protocol::ErrorCode::Unauthorized,
    );
    // The edge is down while the stream is purged: what follows its cursor is gone from the
    // stream, so it catches up from the primary, then reads the stream again.
    edge.kill();
    write_ab(&mut w, 10).await;
    until_published(&nats, 80).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    js.get_stream("HIVESYNC")
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    write_ab(&mut w, 5).await;
    until_published(&nats, 90).await;
    edge.start_again().await;
    until_edge_at(&edge, 90).await;
    write_ab(&mut w, 5).await;
    until_edge_at(&edge, 100).await;
    assert!(metric(&edge, "hivesync_upstream_nats_changes_total").await >= 10);
    let mut feed2 = common::Feed::from(feed.last.unwrap());
    let mut c = Client::connect(&edge.url()).await;
    c.hello(Some("ta")).await;
    c.subscribe("s", feed2.last, None).await;
    feed2
        .read_until(&mut c, "s", |f| f.changes.len() >= 20)
        .await;
    assert!(feed2.changes.iter().all(|ch| ch.ns == "a"));
    let ids: Vec<String> = feed2.changes.iter().map(|c| c.id.clone()).collect();
    assert_eq!(ids, (31..=50).map(|i| format!("a{i}")).collect::<Vec<_>>());
}

/// A third party that can publish to the stream's subjects (no NATS auth: the default) tries
/// everything issue 23 found: the next seq forged, the next message ids squatted (the old
/// scheme's ids were the seqs), a seq of 10^12, a message with a made-up signature, and a
/// forged message left as the stream's last when the primary restarts. The edge applies none
/// of it, counts it and says so in `/healthz`, and ends with the primary's digest; every
/// genuine change is in the stream once; the primary resumes after its own last message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_party_publishing_to_the_stream_cannot_write_into_an_edge() {
    use async_nats::HeaderMap;
    let nats = Nats::start().await;
    let mut primary = primary_of(&nats).await;
    let edge = edge_of(&nats, &primary, None).await;
    until_edge_at(&edge, 0).await;
    write_many(&primary, 0, 100).await;
    until_edge_at(&edge, 100).await;

    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let genuine = js
        .get_stream("HIVESYNC")
        .await
        .unwrap()
        .get_raw_message(100)
        .await
        .unwrap();
    // A change as the primary would write it, with another row.
    let forged_payload = |seq: i64| {
        let mut c: serde_json::Value = serde_json::from_slice(&genuine.payload).unwrap();
        c["seq"] = seq.into();
        c["data"]["id"] = "forged".into();
        c["data"]["name"] = "written by a third party".into();
        c.to_string()
    };
    let forge = |seq: i64, prev: i64, id: Option<String>, sig: Option<&str>| {
        let mut h = HeaderMap::new();
        h.insert("Hivesync-Seq", seq.to_string().as_str());
        h.insert("Hivesync-Prev", prev.to_string().as_str());
        if let Some(id) = id {
            h.insert("Nats-Msg-Id", id.as_str());
        }
        if let Some(sig) = sig {
            h.insert("Hivesync-Sig", sig);
        }
        h
    };
    let publish = async |h: HeaderMap, payload: String| {
        js.publish_with_headers("hivesync.changes.default.entity", h, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    };
    // Squat the ids the next 50 changes had under the old scheme, and the seqs' strings.
    for seq in 101..=150 {
        publish(
            forge(seq, seq - 1, Some(seq.to_string()), None),
            forged_payload(seq),
        )
        .await;
    }
    // The next seq, unsigned and with a signature made up; and a seq of 10^12.
    publish(forge(101, 100, None, None), forged_payload(101)).await;
    let fake_sig = "A".repeat(86) + "==";
    publish(forge(101, 100, None, Some(&fake_sig)), forged_payload(101)).await;
    publish(
        forge(1_000_000_000_000, 100, None, None),
        forged_payload(1_000_000_000_000),
    )
    .await;

    // The primary's changes go on; the edge drops the forged messages, follows the primary's
    // feed, and comes back to the stream.
    write_many(&primary, 100, 100).await;
    until_edge_at(&edge, 200).await;
    assert!(
        metric(&edge, "hivesync_upstream_nats_rejected_total").await >= 1,
        "{}",
        edge.log_text()
    );
    assert!(edge.health().await["upstream"]["nats_rejected"].as_i64() >= Some(1));
    assert_eq!(edge.health().await["status"], "degraded");
    let mut feed = common::Feed::from(0);
    read_to(&edge, &mut feed, None, 200).await;
    assert_eq!(feed.seqs(), (1..=200).collect::<Vec<_>>());
    assert!(
        feed.changes.iter().all(|c| c.id != "forged"),
        "a forged change reached a subscriber"
    );
    // Every genuine change is in the stream, once: no id was squatted.
    let mut stream = js.get_stream("HIVESYNC").await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut signed = Vec::new();
    for s in 1..=last {
        let m = stream.get_raw_message(s).await.unwrap();
        if m.headers
            .get("Hivesync-Sig")
            .is_some_and(|v| v.as_str() != fake_sig)
        {
            signed.push(
                m.headers
                    .get("Hivesync-Seq")
                    .unwrap()
                    .as_str()
                    .parse::<i64>()
                    .unwrap(),
            );
        }
    }
    assert_eq!(signed, (1..=200).collect::<Vec<_>>());
    assert_eq!(
        metric(&primary, "hivesync_nats_duplicates_total").await,
        0,
        "the stream took a genuine change for a duplicate"
    );

    // A forged 10^12 as the stream's last message while the primary restarts: it resumes
    // after its own last message, says what it found, and publishes on.
    primary.kill();
    publish(
        forge(1_000_000_000_000, 200, None, None),
        forged_payload(1_000_000_000_000),
    )
    .await;
    primary.start_again().await;
    write_many(&primary, 200, 50).await;
    until_edge_at(&edge, 250).await;
    common::eventually(
        Duration::from_secs(30),
        || async { primary.health().await["publish"]["published"] == 250 },
        || primary.log_text(),
    )
    .await;
    assert!(primary.health().await["publish"]["foreign"].as_i64() >= Some(1));
    assert!(metric(&primary, "hivesync_nats_foreign_messages_total").await >= 1);
    let digest = |n: &Node| {
        let out = n.cli(&["digest"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        digest(&edge),
        digest(&primary),
        "the edge holds what the primary holds"
    );
}

/// NATS with authentication, as `deploy/compose.nats.yml` runs it: the primary and the edge
/// pass the credentials in their `nats://user:password@host` URLs (never logged), and a client
/// without them can neither publish nor read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_authentication_only_the_nodes_reach_the_stream() {
    let nats = Nats::start_with(Some(("hivesync".into(), "s3cret-pass".into()))).await;
    let anonymous = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .max_reconnects(0)
        .connect(format!("nats://127.0.0.1:{}", nats.port));
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        match anonymous.await {
            Err(e) => e.to_string(),
            Ok(c) => {
                let js = async_nats::jetstream::new(c);
                match js
                    .publish("hivesync.changes.default.entity", "x".into())
                    .await
                {
                    Err(e) => e.to_string(),
                    Ok(ack) => format!("{:?}", ack.await.map(|_| "stored")),
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| "timed out".into());
    assert!(!refused.contains("stored"), "{refused}");
    let primary = primary_of(&nats).await;
    let edge = edge_of(&nats, &primary, None).await;
    until_edge_at(&edge, 0).await;
    write_many(&primary, 0, 100).await;
    until_edge_at(&edge, 100).await;
    assert_eq!(
        metric(&edge, "hivesync_upstream_nats_changes_total").await,
        100
    );
    for log in [primary.log_text(), edge.log_text()] {
        assert!(
            !log.contains("s3cret-pass"),
            "a NATS password in a log:\n{log}"
        );
    }
}

/// Issue 23, item 6: when JetStream refused the primary's publishes (a stream byte limit with
/// discard-new), edges sat at seq 145 while the primary reached 1,200, `/healthz` ok. An edge
/// reading the stream now asks the primary for its head over its link and follows the
/// primary's feed once it has stayed behind it for a few seconds; both sides say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_follows_the_primary_when_the_stream_stops_taking_its_changes() {
    use async_nats::jetstream::stream::{Config, DiscardPolicy};
    let nats = Nats::start().await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.create_stream(Config {
        name: "HIVESYNC".into(),
        subjects: vec!["hivesync.changes.>".into()],
        max_bytes: 64 * 1024,
        discard: DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .unwrap();
    let primary = primary_of(&nats).await;
    let edge = edge_of(&nats, &primary, None).await;
    until_edge_at(&edge, 0).await;
    write_many(&primary, 0, 1200).await;
    let t0 = Instant::now();
    common::eventually(
        Duration::from_secs(60),
        || async { edge.health().await["upstream"]["applied"] == 1200 },
        || edge.log_text(),
    )
    .await;
    eprintln!("edge at 1200 beside a full stream after {:?}", t0.elapsed());
    let h = edge.health().await;
    assert!(h["upstream"]["nats_stalls"].as_i64() >= Some(1), "{h}");
    assert_eq!(h["upstream"]["primary_head"], 1200, "{h}");
    let p = primary.health().await;
    assert!(p["publish"]["errors"].as_i64() >= Some(1), "{p}");
    assert!(p["publish"]["behind"].as_i64() > Some(0), "{p}");
    assert_eq!(p["status"], "degraded", "{p}");
    let mut feed = common::Feed::from(0);
    read_to(&edge, &mut feed, None, 1200).await;
    assert_eq!(feed.seqs(), (1..=1200).collect::<Vec<_>>());
}

/// Issue 24, item 8: `hivesync_nats_connected` stayed 1 for about 8 s after nats-server died
/// (while the publisher had nothing to send), and the primary's `/healthz` said nothing of its
/// publisher. Both follow the connection within a second or two now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publishers_connection_shows_within_seconds() {
    let mut nats = Nats::start().await;
    let primary = primary_of(&nats).await;
    common::eventually(
        Duration::from_secs(20),
        || async { metric(&primary, "hivesync_nats_connected").await == 1 },
        || primary.log_text(),
    )
    .await;
    assert_eq!(primary.health().await["publish"]["connected"], true);
    nats.stop();
    let t0 = Instant::now();
    common::eventually(
        Duration::from_secs(5),
        || async { metric(&primary, "hivesync_nats_connected").await == 0 },
        || primary.log_text(),
    )
    .await;
    eprintln!(
        "publisher seen disconnected {:?} after nats-server stopped",
        t0.elapsed()
    );
    assert_eq!(primary.health().await["publish"]["connected"], false);
}
