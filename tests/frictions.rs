//! Issue 24, item 8: a new user's small frictions, each as the user met it. Real binaries,
//! real sockets, real files.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::Node;

/// Run `hivesync ARGS` to its end (at most `within`): (exit success, stderr).
fn run_for(args: &[&str], within: Duration) -> (Option<bool>, String) {
    let mut child = common::command()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s.success());
        }
        if t0.elapsed() > within {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    (status, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `watch ws://HOST:PORT/` (the node's page, not its feed: HTTP 200) retried forever; it now
/// stops at once and names the feed's URL.
#[tokio::test]
async fn watch_on_a_page_instead_of_the_feed_stops_and_says_where_the_feed_is() {
    let node = Node::start().await;
    let url = format!("ws://127.0.0.1:{}/", node.port);
    let (ok, err) = run_for(&["watch", &url], Duration::from_secs(10));
    assert_eq!(ok, Some(false), "watch did not stop: {err}");
    assert!(
        err.contains(&format!(
            "did you mean ws://127.0.0.1:{}/v1/sync",
            node.port
        )),
        "{err}"
    );
}

/// Wait for `/healthz` on 127.0.0.1:`port`.
async fn healthy(port: u16) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(20) {
        if let Some((200, _)) = common::http_get(port, "/healthz").await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// `--listen localhost:7070` and `--listen :7070` were refused with no hint; a node that could
/// not bind its port had already created its database file.
#[tokio::test]
async fn listen_takes_host_names_and_bare_ports_and_a_taken_port_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    for (i, form) in ["localhost:{}", ":{}", "{}"].iter().enumerate() {
        let port = common::free_port();
        let listen = form.replace("{}", &port.to_string());
        let db = dir.path().join(format!("l{i}.db"));
        let mut child = common::command()
            .arg("--db")
            .arg(&db)
            .args(["serve", "--listen", &listen])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let up = healthy(port).await;
        let _ = child.kill();
        let _ = child.wait();
        assert!(up, "--listen {listen} did not serve on 127.0.0.1:{port}");
    }
    let (ok, err) = run_for(
        &[
            "--db",
            dir.path().join("n.db").to_str().unwrap(),
            "serve",
            "--listen",
            "nonsense",
        ],
        Duration::from_secs(10),
    );
    assert_eq!(ok, Some(false));
    assert!(err.contains("expected HOST:PORT"), "{err}");

    // A port another process holds: the node exits saying so, and creates no database.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let db = dir.path().join("never.db");
    let (ok, err) = run_for(
        &[
            "--db",
            db.to_str().unwrap(),
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ],
        Duration::from_secs(10),
    );
    assert_eq!(ok, Some(false));
    assert!(err.contains("cannot listen"), "{err}");
    assert!(
        !db.exists(),
        "the node created its database before it failed to listen"
    );
}

/// `GET path` with `headers`: status, response headers (lower-cased names) and body bytes.
async fn get(port: u16, path: &str, headers: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let hs: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    if hs
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v == "chunked")
    {
        // De-chunk.
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let nl = rest.windows(2).position(|w| w == b"\r\n").unwrap();
            let n = usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap().trim(), 16)
                .unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + n]);
            rest = &rest[nl + 2 + n + 2..];
        }
        body = out;
    }
    (status, hs, body)
}

fn h<'a>(hs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    hs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Issue 24, item 7: the package was served uncompressed (`hivesync_wasm_bg.wasm`: 1,564,211
/// bytes; 703 KB gzipped) with `cache-control: no-cache` and no validator. It is gzipped where
/// the client takes it (once per file), tagged, and a client holding this version gets a 304.
#[tokio::test]
async fn the_package_is_served_gzipped_with_validators() {
    use std::io::Read as _;
    let node = Node::start().await;
    let wasm = "/pkg/hivesync_wasm_bg.wasm";
    let (status, plain_h, plain) = get(node.port, wasm, "").await;
    assert_eq!(status, 200);
    assert_eq!(h(&plain_h, "content-encoding"), None);
    let (status, gz_h, gz) = get(node.port, wasm, "Accept-Encoding: gzip, deflate, br\r\n").await;
    assert_eq!(status, 200);
    assert_eq!(h(&gz_h, "content-encoding"), Some("gzip"));
    assert_eq!(h(&gz_h, "vary"), Some("Accept-Encoding"));
    let mut unzipped = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut unzipped)
        .unwrap();
    assert_eq!(unzipped, plain, "the gzip holds the same bytes");
    eprintln!("{wasm}: {} bytes, {} gzipped", plain.len(), gz.len());
    assert!(
        gz.len() * 10 < plain.len() * 6,
        "{} -> {}",
        plain.len(),
        gz.len()
    );
    // Validators: each form its own tag; a client that holds it gets 304 and no body.
    let (tag, gz_tag) = (h(&plain_h, "etag").unwrap(), h(&gz_h, "etag").unwrap());
    assert_ne!(tag, gz_tag);
    let (status, _, body) = get(node.port, wasm, &format!("If-None-Match: {tag}\r\n")).await;
    assert_eq!((status, body.len()), (304, 0));
    let (status, _, _) = get(
        node.port,
        wasm,
        &format!("Accept-Encoding: gzip\r\nIf-None-Match: {gz_tag}\r\n"),
    )
    .await;
    assert_eq!(status, 304);
    let (status, _, _) = get(node.port, wasm, "If-None-Match: \"other\"\r\n").await;
    assert_eq!(status, 200);
    // `gzip;q=0` refuses it; the page and scripts are compressed too.
    let (_, hs, _) = get(node.port, wasm, "Accept-Encoding: gzip;q=0\r\n").await;
    assert_eq!(h(&hs, "content-encoding"), None);
    for path in ["/", "/hivesync.js", "/pkg/hivesync_wasm.js"] {
        let (status, hs, _) = get(node.port, path, "Accept-Encoding: gzip\r\n").await;
        assert_eq!(
            (status, h(&hs, "content-encoding")),
            (200, Some("gzip")),
            "{path}"
        );
    }
}
