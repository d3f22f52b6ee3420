//! A bootstrap storm: `n` fresh replicas ask the node for its image at the same moment (each
//! downloads it gzipped, unpacks it into a file, then subscribes from its seq until live),
//! beside a writer committing one entity every 10 ms and a live subscriber timing each change
//! from its commit (the change's `ts`) to its receipt. The same writer and subscriber run first
//! without the storm: the baseline. Reported: commit-to-receipt p50/p99 with and without, how
//! many images the node built (the goal: one), and when the replicas were live.

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hivesync::model::{Kind, WriteOp};
use hivesync::protocol::{decode_server_bin, encode_client_bin, ClientMsg, ServerMsg, Subscribe};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use parking_lot::Mutex;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

async fn connect(port: u16) -> Ws {
    connect_head(port).await.0
}

/// A connection past its `welcome`, and the head the welcome gave.
async fn connect_head(port: u16) -> (Ws, i64) {
    let mut req = format!("ws://127.0.0.1:{port}/v1/sync")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "hivesync.v1.bin".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(
        req,
        Some(hivesync::node::client_ws_config()),
        true,
    )
    .await
    .unwrap();
    send(
        &mut ws,
        &ClientMsg::Hello {
            token: None,
            client: Some("storm".into()),
        },
    )
    .await;
    match recv(&mut ws).await {
        Some(ServerMsg::Welcome { head, .. }) => (ws, head),
        other => panic!("no welcome: {other:?}"),
    }
}

async fn send(ws: &mut Ws, m: &ClientMsg) {
    ws.send(Message::Binary(encode_client_bin(m).into()))
        .await
        .unwrap();
}

async fn recv(ws: &mut Ws) -> Option<ServerMsg> {
    loop {
        match ws.next().await? {
            Ok(Message::Binary(b)) => return decode_server_bin(&b).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

fn subscribe(from: i64) -> ClientMsg {
    ClientMsg::Subscribe(Subscribe {
        sub: "s".into(),
        from: Some(from),
        namespaces: None,
        kinds: None,
    })
}

/// Commit one entity every 10 ms until `stop`.
async fn writer(port: u16, stop: Arc<AtomicBool>) {
    let ws = connect(port).await;
    let (mut tx, mut rx) = ws.split();
    tokio::spawn(async move { while rx.next().await.is_some() {} });
    let mut i = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !stop.load(Relaxed) {
        tick.tick().await;
        i += 1;
        let op = WriteOp::upsert(
            Kind::Entity,
            "storm",
            json!({"id": format!("w{i}"), "name": format!("written during the storm {i}")}),
        );
        let m = ClientMsg::Write {
            req: i.to_string(),
            ops: vec![op],
            client: None,
            n: None,
            entries: None,
        };
        if tx
            .send(Message::Binary(encode_client_bin(&m).into()))
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Follow the feed live; record commit-to-receipt (µs) of every change while `on`.
async fn subscriber(port: u16, head: i64, on: Arc<AtomicBool>, lat: Arc<Mutex<Vec<u32>>>) {
    let mut ws = connect(port).await;
    send(&mut ws, &subscribe(head)).await;
    while let Some(m) = recv(&mut ws).await {
        if let ServerMsg::Changes { changes, .. } = m {
            let now = now_us();
            if on.load(Relaxed) {
                let mut l = lat.lock();
                l.extend(changes.iter().map(|c| (now - c.ts).max(0) as u32));
            }
        }
    }
}

/// One fresh replica: the image (gzipped on the wire, unpacked to a file), then the feed from
/// its seq until live. Returns ms from its start to live.
async fn replica(port: u16, dir: &Path, k: usize) -> f64 {
    let t0 = Instant::now();
    let resp = http_get(port, "/v1/image", &[("accept-encoding", "gzip")]).await;
    assert_eq!(resp.status(), 200);
    let at: i64 = resp.headers()["hivesync-at"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let size: u64 = resp.headers()["hivesync-image-bytes"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // Each replica stores what it receives; the first also unpacks it, to check it whole (the
    // others' unpacking is their machines' work, not the node's, and would only add this
    // machine's two cores to the node's load).
    let path = dir.join(format!("replica{k}.db"));
    let file = std::fs::File::create(&path).unwrap();
    let mut out: Box<dyn std::io::Write + Send> = if k == 0 {
        Box::new(flate2::write::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut body = resp.into_body();
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            out.write_all(&d).unwrap();
        }
    }
    out.flush().unwrap();
    drop(out);
    if k == 0 {
        assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
    }
    let mut ws = connect(port).await;
    send(&mut ws, &subscribe(at)).await;
    while let Some(m) = recv(&mut ws).await {
        if matches!(m, ServerMsg::Live { .. }) {
            break;
        }
    }
    let _ = std::fs::remove_file(&path);
    t0.elapsed().as_secs_f64() * 1e3
}

fn pct(v: &mut [u32], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p).round() as usize] as f64 / 1e3
}

async fn metric(port: u16, name: &str) -> i64 {
    let text = get_text(port, "/metrics").await;
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(-1, |v| v as i64)
}

/// GET `path` from the node, with `headers`.
async fn http_get(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> hyper::Response<hyper::body::Incoming> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut h, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::get(path).header("host", format!("127.0.0.1:{port}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    h.send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap()
}

async fn get_text(port: u16, path: &str) -> String {
    let body = http_get(port, path, &[])
        .await
        .into_body()
        .collect()
        .await
        .unwrap();
    String::from_utf8_lossy(&body.to_bytes()).into_owned()
}

/// Run the storm against the node binary `bin` serving `db`.
pub(crate) fn run(bin: &str, db: &Path, n: usize, secs: u64) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut node = std::process::Command::new(bin)
        .args([
            "--db",
            db.to_str().unwrap(),
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let head = connect_head(port).await.1;
        let stop = Arc::new(AtomicBool::new(false));
        let on = Arc::new(AtomicBool::new(false));
        let lat = Arc::new(Mutex::new(Vec::new()));
        // The writer and the timed subscriber on a thread of their own: the replicas' tasks
        // never delay their reads.
        let (s2, o2, l2) = (stop.clone(), on.clone(), lat.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                tokio::spawn(subscriber(port, head, o2, l2));
                writer(port, s2).await;
            });
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The baseline: writer and subscriber alone.
        on.store(true, Relaxed);
        tokio::time::sleep(Duration::from_secs(secs)).await;
        on.store(false, Relaxed);
        let mut base = std::mem::take(&mut *lat.lock());
        let builds0 = metric(port, "hivesync_image_builds_total").await;
        // The storm: every replica at once, the writer and the subscriber going on.
        let dir = tempfile::tempdir().unwrap();
        let live = Arc::new(AtomicUsize::new(0));
        on.store(true, Relaxed);
        let t0 = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|k| {
                let (d, live) = (dir.path().to_path_buf(), live.clone());
                tokio::spawn(async move {
                    let ms = replica(port, &d, k).await;
                    live.fetch_add(1, Relaxed);
                    ms
                })
            })
            .collect();
        let mut times = Vec::new();
        for t in tasks {
            times.push(t.await.unwrap());
        }
        let storm_secs = t0.elapsed().as_secs_f64();
        // At least as long a window as the baseline's.
        if storm_secs < secs as f64 {
            tokio::time::sleep(Duration::from_secs_f64(secs as f64 - storm_secs)).await;
        }
        on.store(false, Relaxed);
        stop.store(true, Relaxed);
        let mut storm = std::mem::take(&mut *lat.lock());
        let builds = metric(port, "hivesync_image_builds_total").await - builds0;
        times.sort_by(f64::total_cmp);
        println!("\nbootstrap storm: {n} fresh replicas at once (image gzipped, unpacked, then the feed from its seq until live), beside a writer (1 entity / 10 ms) and a live subscriber");
        println!(
            "  images built: {builds} (goal 1); live: {} of {n}; to live: median {:.0} ms, slowest {:.0} ms (all within {storm_secs:.1} s)",
            live.load(Relaxed),
            times[times.len() / 2],
            times[times.len() - 1]
        );
        println!(
            "  commit-to-receipt of the live subscriber: without the storm p50 {:.2} ms p99 {:.2} ms ({} changes); during it p50 {:.2} ms p99 {:.2} ms ({} changes): p99 {:.2}x",
            pct(&mut base, 0.5),
            pct(&mut base, 0.99),
            base.len(),
            pct(&mut storm, 0.5),
            pct(&mut storm, 0.99),
            storm.len(),
            pct(&mut storm, 0.99) / pct(&mut base, 0.99)
        );
    });
    let _ = node.kill();
    let _ = node.wait();
}
