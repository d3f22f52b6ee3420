//! Group commit: 64 clients over the node's WebSocket, each pipelining one-op `write`s (up to
//! 32 in flight per client): committed writes/s and the p50/p99 ack latency (send to
//! `written`), against the baseline measured in the same run: the store's one-op-per-transaction
//! rate (`Store::write` of one entity, one transaction each, in a loop on one thread, same kind
//! of file). Goal: the clients' committed writes/s >= 3x the baseline.
//!
//! The node runs in-process on its own 2-thread runtime, the clients on another, on this
//! machine: both compete for the same cores. Run: `cargo bench --bench group_commit`
//! (`HIVESYNC_BENCH_GROUP_WRITES=500` per client, `HIVESYNC_BENCH_GROUP_CLIENTS=64`). A
//! measurement, not a test: nothing is asserted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/mod.rs"]
mod common;
use common::{load_average, machine_info};

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hivesync::model::{Kind, WriteOp};
use hivesync::node::config::Config;
use hivesync::node::NodeOptions;
use hivesync::protocol::{decode_server_json, encode_client_json, ClientMsg, ServerMsg};
use hivesync::store::{Store, StoreOptions};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runtime(name: &'static str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap()
}

fn entity(id: String) -> WriteOp {
    WriteOp::upsert(
        Kind::Entity,
        "default",
        json!({"id": id, "kind": "thing", "name": "group commit bench"}),
    )
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

fn main() {
    let clients = env_num("HIVESYNC_BENCH_GROUP_CLIENTS", 64);
    let per_client = env_num("HIVESYNC_BENCH_GROUP_WRITES", 500);
    const IN_FLIGHT: usize = 32;
    println!("group commit bench: {}", machine_info());
    println!("load average: {}", load_average());
    let dir = tempfile::tempdir().unwrap();

    // Baseline: one op per transaction through the store, on one thread.
    let base = Store::open(dir.path().join("base.db"), StoreOptions::default()).unwrap();
    let n_base = 3000;
    let t0 = Instant::now();
    for i in 0..n_base {
        base.write(&[entity(format!("b{i}"))]).unwrap();
    }
    let base_rate = n_base as f64 / t0.elapsed().as_secs_f64();
    println!(
        "baseline: Store::write, one op per transaction: {n_base} writes, {base_rate:.0} writes/s"
    );

    // The node, with 64 pipelining clients.
    let store = Arc::new(Store::open(dir.path().join("node.db"), StoreOptions::default()).unwrap());
    let srv = runtime("srv");
    let cli = runtime("cli");
    let node = srv.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        hivesync::node::start(
            store.clone(),
            l,
            Config::default(),
            None,
            &NodeOptions::default(),
        )
        .await
        .expect("node start")
    });
    let addr = node.addr;
    let (total, secs, mut lat) = cli.block_on(async move {
        let mut socks = Vec::new();
        for _ in 0..clients {
            let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/sync"))
                .await
                .unwrap();
            let hello = ClientMsg::Hello {
                token: None,
                client: Some("bench".into()),
            };
            ws.send(Message::Text(encode_client_json(&hello).into()))
                .await
                .unwrap();
            let _welcome = ws.next().await.unwrap().unwrap();
            socks.push(ws);
        }
        let start = Instant::now();
        let mut tasks = Vec::new();
        for (c, ws) in socks.into_iter().enumerate() {
            tasks.push(tokio::spawn(async move {
                let (mut tx, mut rx) = ws.split();
                let mut sent_at = Vec::with_capacity(per_client);
                let mut lat = Vec::with_capacity(per_client);
                let (mut sent, mut done) = (0usize, 0usize);
                while done < per_client {
                    while sent < per_client && sent - done < IN_FLIGHT {
                        let m = ClientMsg::Write {
                            req: sent.to_string(),
                            ops: vec![entity(format!("c{c}w{sent}"))],
                            client: None,
                            n: None,
                            entries: None,
                        };
                        sent_at.push(Instant::now());
                        tx.send(Message::Text(encode_client_json(&m).into()))
                            .await
                            .unwrap();
                        sent += 1;
                    }
                    let Some(Ok(Message::Text(t))) = rx.next().await else {
                        panic!("the connection ended")
                    };
                    match decode_server_json(&t).unwrap() {
                        ServerMsg::Written { req, .. } => {
                            let i: usize = req.parse().unwrap();
                            lat.push(sent_at[i].elapsed());
                            done += 1;
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        (clients * per_client, start.elapsed().as_secs_f64(), lat)
    });
    lat.sort();
    let rate = total as f64 / secs;
    // The node's own count of write transactions, from /metrics.
    let metrics = cli.block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    });
    let groups: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("hivesync_write_groups_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    println!(
        "node: {clients} clients x {per_client} one-op writes ({IN_FLIGHT} in flight each): {total} writes in {secs:.2} s = {rate:.0} writes/s; ack p50 {:.2} ms, p99 {:.2} ms; committed in {groups} transactions ({:.1} writes each)",
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        total as f64 / groups.max(1) as f64,
    );
    println!(
        "ratio: {:.2}x the store's one-op-per-transaction rate (goal >= 3x)",
        rate / base_rate
    );
    drop(node);
}
