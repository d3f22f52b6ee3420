//! Added latency per relay hop: changes written to a primary at a steady rate reach a
//! subscriber of the primary (direct), a subscriber of an edge relay (`--upstream ws://`) and,
//! where `nats-server` is installed, a subscriber of an edge fed from NATS JetStream (the primary
//! publishing with `--publish`, the edge on `--upstream nats:// --primary`), in the same run;
//! the difference of their commit-to-receipt latencies is each path's cost.
//! Run: `cargo bench --bench relay` (HIVESYNC_RELAY_SECS, HIVESYNC_RELAY_RATE to change load,
//! HIVESYNC_RELAY_DIR to put the databases on another filesystem).
//!
//! The first HIVESYNC_RELAY_WARMUP_SECS (default 2) of writes are a warm-up, reported apart:
//! while both databases' WAL files first grow to their working size, each checkpoint's fsync
//! holds up the commits that extend them (ext4 journal), once per node; after that the WAL is
//! reused in place. The table gives the steady state and, below it, the whole run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use hivesync::model::{Kind, WriteOp};
use hivesync::node::{config::Config, NodeOptions};
use hivesync::protocol::{self, ClientMsg, ServerMsg, Subscribe};
use hivesync::store::{Store, StoreOptions};
use tokio_tungstenite::tungstenite::Message;

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

async fn node(
    dir: &std::path::Path,
    name: &str,
    a: NodeOptions,
) -> (hivesync::node::NodeHandle, String) {
    let store = Arc::new(Store::open(dir.join(name), StoreOptions::default()).unwrap());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let h = hivesync::node::start(store, l, Config::default(), None, &a)
        .await
        .unwrap();
    let url = format!("ws://{}/v1/sync", h.addr);
    (h, url)
}

/// Subscribe from `from` and collect receipt latencies (µs) of changes carrying `t_us`, in
/// the order received (the writer's order: change `i` is the `i`-th write).
async fn subscriber(url: String, from: i64, n: usize) -> Vec<i64> {
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), None, true)
        .await
        .unwrap();
    let hello = ClientMsg::Hello {
        token: None,
        client: None,
    };
    ws.send(Message::Text(protocol::encode_client_json(&hello).into()))
        .await
        .unwrap();
    let sub = ClientMsg::Subscribe(Subscribe {
        sub: "s".into(),
        from: Some(from),
        namespaces: None,
        kinds: None,
    });
    ws.send(Message::Text(protocol::encode_client_json(&sub).into()))
        .await
        .unwrap();
    let mut lat = Vec::with_capacity(n);
    while lat.len() < n {
        let Some(Ok(Message::Text(t))) = ws.next().await else {
            break;
        };
        let got = now_us();
        if let ServerMsg::Changes { changes, .. } = protocol::decode_server_json(&t).unwrap() {
            for c in changes {
                let v: serde_json::Value =
                    serde_json::from_str(c.data.as_deref().unwrap_or("{}")).unwrap();
                if let Some(t) = v["properties"]["t_us"].as_i64() {
                    lat.push(got - t);
                }
            }
        }
    }
    lat
}

/// A nats-server with JetStream on a free loopback port, storing under `dir`, if installed.
fn nats_server(dir: &std::path::Path) -> Option<(std::process::Child, String)> {
    let bin = [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = std::process::Command::new(bin)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir.join("nats"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "nats-server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((child, format!("nats://127.0.0.1:{port}")))
}

fn pct(v: &mut [i64], p: f64) -> f64 {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

fn main() {
    let secs: u64 = std::env::var("HIVESYNC_RELAY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let warmup: u64 = std::env::var("HIVESYNC_RELAY_WARMUP_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let rate: u64 = std::env::var("HIVESYNC_RELAY_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "# relay hop latency on {cpu}, {} cores, load {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        load.trim()
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // HIVESYNC_RELAY_DIR puts both databases elsewhere (e.g. /dev/shm, to see the hop
        // without the disk's write-back noise); default: the system temp dir.
        let dir = match std::env::var_os("HIVESYNC_RELAY_DIR") {
            Some(d) => tempfile::tempdir_in(d).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        println!("databases in {}", dir.path().display());
        let nats = nats_server(dir.path());
        let publish = nats.as_ref().map(|(_, url)| url.clone());
        let (p, purl) = node(dir.path(), "primary.db", NodeOptions { publish: publish.clone(), ..Default::default() }).await;
        let (r, rurl) = node(dir.path(), "relay.db", NodeOptions { upstream: Some(purl.clone()), ..Default::default() }).await;
        let edge = match &publish {
            Some(url) => Some(node(dir.path(), "edge.db", NodeOptions { upstream: Some(url.clone()), primary: Some(purl.clone()), ..Default::default() }).await),
            None => {
                println!("no nats-server found: the NATS-fed edge is left out (Debian: apt-get install nats-server)");
                None
            }
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let n = (secs * rate) as usize;
        let nw = (warmup * rate) as usize;
        let direct = tokio::spawn(subscriber(purl.clone(), 0, nw + n));
        let relayed = tokio::spawn(subscriber(rurl.clone(), 0, nw + n));
        let via_nats = edge.as_ref().map(|(_, eurl)| tokio::spawn(subscriber(eurl.clone(), 0, nw + n)));
        tokio::time::sleep(Duration::from_millis(300)).await;
        // TCP_NODELAY on the writer: with Nagle, each small write waits for the delayed ACK of
        // the one before (40 ms on Linux), which was most of the p99 measured here before.
        let (mut w, _) = tokio_tungstenite::connect_async_with_config(purl.as_str(), None, true).await.unwrap();
        let hello = ClientMsg::Hello { token: None, client: None };
        w.send(Message::Text(protocol::encode_client_json(&hello).into())).await.unwrap();
        let (mut wtx, mut wrx) = w.split();
        tokio::spawn(async move { while wrx.next().await.is_some() {} });
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
        for i in 0..nw + n {
            tick.tick().await;
            let op = WriteOp::upsert(Kind::Entity, "default", serde_json::json!({"id": format!("e{i}"), "name": "x", "properties": {"t_us": now_us()}}));
            let m = ClientMsg::Write { req: format!("w{i}"), ops: vec![op], client: None, n: None, entries: None };
            wtx.send(Message::Text(protocol::encode_client_json(&m).into())).await.unwrap();
        }
        let mut d = tokio::time::timeout(Duration::from_secs(60), direct).await.unwrap().unwrap();
        let mut e = tokio::time::timeout(Duration::from_secs(60), relayed).await.unwrap().unwrap();
        let mut f = match via_nats {
            Some(j) => Some(tokio::time::timeout(Duration::from_secs(60), j).await.unwrap().unwrap()),
            None => None,
        };
        println!("{n} changes at {rate}/s over socket writes to the primary, after {nw} changes of warm-up");
        println!("{:<28} {:>9} {:>9} {:>9}", "", "p50 ms", "p99 ms", "max ms");
        let row = |label: &str, v: &mut [i64]| {
            let (a, b, c) = (pct(v, 0.5), pct(v, 0.99), pct(v, 1.0));
            println!("{label:<28} {a:>9.3} {b:>9.3} {c:>9.3}");
            (a, b)
        };
        // Per change: how much later the relay's subscriber got it than the direct one. Both
        // lists are in write order (one writer, one log), so index i is the same change.
        let per_change = |d: &[i64], e: &[i64]| -> Vec<i64> { d.iter().zip(e).map(|(a, b)| b - a).collect() };
        let mut delta = per_change(&d[nw..], &e[nw..]);
        let mut delta_all = per_change(&d, &e);
        let mut fdelta = f.as_ref().map(|f| per_change(&d[nw..], &f[nw..]));
        let mut fdelta_all = f.as_ref().map(|f| per_change(&d, f));
        let (d50, d99) = row("direct (primary)", &mut d[nw..]);
        let (e50, e99) = row("through one relay", &mut e[nw..]);
        println!("{:<28} {:>9.3} {:>9.3}            (goal: p99 added <= 1 ms per hop)", "added by the hop", e50 - d50, e99 - d99);
        row("  per change: relay - direct", &mut delta);
        if let (Some(f), Some(fd)) = (f.as_mut(), fdelta.as_mut()) {
            let (f50, f99) = row("through a NATS-fed edge", &mut f[nw..]);
            println!("{:<28} {:>9.3} {:>9.3}            (goal: p99 added <= 2 ms)", "added by NATS", f50 - d50, f99 - d99);
            row("  per change: edge - direct", fd);
        }
        println!("whole run, warm-up included ({} changes):", nw + n);
        let (d50, d99) = row("direct (primary)", &mut d);
        let (e50, e99) = row("through one relay", &mut e);
        println!("{:<28} {:>9.3} {:>9.3}", "added by the hop", e50 - d50, e99 - d99);
        row("  per change: relay - direct", &mut delta_all);
        if let (Some(f), Some(fd)) = (f.as_mut(), fdelta_all.as_mut()) {
            let (f50, f99) = row("through a NATS-fed edge", f);
            println!("{:<28} {:>9.3} {:>9.3}", "added by NATS", f50 - d50, f99 - d99);
            row("  per change: edge - direct", fd);
        }
        println!("added by the hop = relay percentile - direct percentile; per change = the percentiles of each change's own relay - direct difference");
        if let Some((h, _)) = edge {
            h.stop().await;
        }
        r.stop().await;
        p.stop().await;
        if let Some((mut child, _)) = nats {
            let _ = child.kill();
            let _ = child.wait();
        }
    });
}
