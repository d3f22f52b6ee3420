//! Publish throughput into NATS JetStream (`serve --publish`), against its baseline in the
//! same run: the node's own write throughput. N entities (default 50,000) are written through
//! `Store::write` in batches of 64 while the node publishes; the baseline is the write rate
//! (changes/s from the first write to the last commit). Two figures for the publisher: its
//! lag behind the last commit in that run, and its rate draining the same N changes as a
//! backlog (a second database written first, then a node started on it, publishing to a
//! second stream). Goal: the drain rate >= the write rate (the feed never falls behind a busy
//! writer).
//!
//! A real `nats-server -js` (Debian's) on a loopback port, the node in-process, one machine.
//! Run: `cargo bench --bench nats` (`HIVESYNC_BENCH_NATS=10000` for a quick run). A
//! measurement, not a test: nothing is asserted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/mod.rs"]
mod common;
use common::{load_average, machine_info};

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hivesync::model::{Kind, WriteOp};
use hivesync::node::config::Config;
use hivesync::node::NodeOptions;
use hivesync::store::{Store, StoreOptions};
use serde_json::json;

/// `n` entities (rounded down to batches of 64) through `Store::write`, 64 per call.
fn write_entities(store: &Store, n: usize) {
    for b in 0..n / 64 {
        let ops: Vec<WriteOp> = (0..64)
            .map(|i| {
                WriteOp::upsert(
                    Kind::Entity,
                    "default",
                    json!({"id": format!("e{}", b * 64 + i), "kind": "thing", "name": "published"}),
                )
            })
            .collect();
        store.write(&ops).unwrap();
    }
}

fn main() {
    let n: usize = std::env::var("HIVESYNC_BENCH_NATS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    println!("nats publish bench: {}", machine_info());
    println!("load average: {}", load_average());
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("nats-server");
    let mut nats = Command::new(bin)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.path().join("nats"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server (apt-get install nats-server)");
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "nats-server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("nats://127.0.0.1:{port}");
    let store = Arc::new(Store::open(dir.path().join("node.db"), StoreOptions::default()).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let opts = NodeOptions {
        publish: Some(url.clone()),
        ..Default::default()
    };
    let node = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        hivesync::node::start(store.clone(), l, Config::default(), None, &opts)
            .await
            .expect("node start")
    });
    // Let the publisher connect and create the stream.
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    write_entities(&store, n);
    let written = start.elapsed().as_secs_f64();
    let head = store.head().unwrap();
    let published = rt.block_on(async {
        let client = async_nats::connect(url.as_str()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        loop {
            if let Ok(mut s) = js.get_stream("HIVESYNC").await {
                if hivesync::node::publish::stream_last_seq(&mut s)
                    .await
                    .unwrap()
                    >= head
                {
                    return start.elapsed().as_secs_f64();
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "the stream did not catch up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let total = (n / 64 * 64) as f64;
    let write_rate = total / written;
    println!(
        "written: {total} entities in batches of 64 in {written:.2} s = {write_rate:.0} changes/s (baseline)"
    );
    println!(
        "published alongside: the stream acknowledged the last change {:.2} s after its commit ({published:.2} s from the first write)",
        published - written
    );
    drop(node);

    // The backlog: the same changes already in a log, then a node publishing them.
    let store2 =
        Arc::new(Store::open(dir.path().join("backlog.db"), StoreOptions::default()).unwrap());
    write_entities(&store2, n);
    let cfg = Config {
        publish: Some(hivesync::node::publish::PublishConfig {
            url: Some(url.clone()),
            stream: Some("BACKLOG".into()),
            subject_prefix: Some("backlog.changes".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let start = Instant::now();
    let node2 = rt.block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        hivesync::node::start(store2.clone(), l, cfg, None, &NodeOptions::default())
            .await
            .expect("node start")
    });
    let drained = rt.block_on(async {
        let client = async_nats::connect(url.as_str()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        loop {
            if let Ok(mut s) = js.get_stream("BACKLOG").await {
                if s.info().await.unwrap().state.messages as i64 >= head {
                    return start.elapsed().as_secs_f64();
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(600),
                "the backlog did not drain"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let drain_rate = total / drained;
    println!(
        "backlog: {total} changes published and acknowledged in {drained:.2} s from the node's start = {drain_rate:.0} changes/s"
    );
    println!(
        "ratio: drain {:.2}x the write rate (goal >= 1: the publisher keeps up)",
        drain_rate / write_rate
    );
    drop(node2);
    let _ = nats.kill();
    let _ = nats.wait();
}
