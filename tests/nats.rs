//! `serve --publish nats://`: the change feed in a real NATS JetStream stream (Debian's
//! `nats-server`, started here with `-js` on a loopback port; `.ci/run` installs it).
//! Every seq exactly once, in order, with no gap: across a primary killed with SIGKILL while
//! publishing, and across nats-server stopped and restarted under write load.
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
}

impl Nats {
    async fn start() -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let mut n = Nats {
            child: None,
            port: common::free_port(),
            dir,
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

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_stopped_and_restarted_under_write_load_loses_nothing() {
    let mut nats = Nats::start().await;
    let opts = NodeOpts {
        args: vec!["--publish".into(), nats.url()],
        ..Default::default()
    };
    let node = Node::start_with(opts).await;
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
    nats.run().await;
    until_published(&nats, 1500).await;
    assert_exactly_once(&stream_seqs(&nats).await, 1500);
}
