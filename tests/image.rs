//! `GET /v1/image`: a database image cut to the token's rights, consistent at `Hivesync-At`,
//! in a replica's layout (the node's log, ledger and secrets left out), streamed gzipped or
//! not, revalidated by `ETag`, built once for many, and a replica started from it catches up
//! over the feed from its `at`.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use common::*;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use serde_json::json;

const ALL: &str = "hs_image_all_0123456789abcdef0123456789abcdef0123456789abcdef01234567";
const ALICE: &str = "hs_image_alice_0123456789abcdef0123456789abcdef0123456789abcdef0123";

fn config(alice_read: &str) -> String {
    let h = hivesync::node::config::hash_token;
    format!(
        "name = \"img\"\n[[token]]\nname = \"all\"\nsha256 = \"{}\"\nread = [\"*\"]\nwrite = [\"*\"]\n[[token]]\nname = \"alice\"\nsha256 = \"{}\"\nread = {alice_read}\nwrite = [\"user:alice\"]\n",
        h(ALL),
        h(ALICE)
    )
}

/// GET `path` with headers; (status, headers, body).
async fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, hyper::HeaderMap, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::get(path).header("host", format!("127.0.0.1:{port}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let h = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, h, body)
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn digest(db: &Path, ns: &[&str]) -> String {
    let mut args = vec!["--json", "digest"];
    for n in ns {
        args.extend(["--ns", n]);
    }
    let out = cli(db, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["sha256"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn seed(node: &Node) {
    let mut c = Client::connect(&node.url()).await;
    c.hello(Some(ALL)).await;
    for ns in ["user:alice", "user:bob", "public"] {
        for i in 0..30 {
            c.write(
                &format!("{ns}{i}"),
                vec![entity(
                    ns,
                    &format!("e{i}"),
                    &format!("{ns} entity {i} about sailing"),
                )],
            )
            .await;
        }
        c.write(
            &format!("{ns}-n"),
            vec![hivesync::model::WriteOp::upsert(
                hivesync::model::Kind::Note,
                ns,
                json!({"id": "n1", "content": "a note on knots"}),
            )],
        )
        .await;
        c.write(
            &format!("{ns}-v"),
            vec![hivesync::model::WriteOp::upsert(
                hivesync::model::Kind::Vector,
                ns,
                json!({"subject": "e1", "model": "m", "embedding": [0.1, 0.2, 0.3]}),
            )],
        )
        .await;
        c.write(
            &format!("{ns}-x"),
            vec![hivesync::model::WriteOp::upsert(
                hivesync::model::Kind::Edge,
                ns,
                json!({"id": "x1", "source": "e1", "target": "e2", "relation": "knows"}),
            )],
        )
        .await;
    }
}

#[tokio::test]
async fn an_image_holds_exactly_the_readable_namespaces_at_one_seq() {
    let node = Node::start_with(NodeOpts {
        config: Some(config("[\"user:alice\", \"public\"]")),
        ..Default::default()
    })
    .await;
    seed(&node).await;
    let head = node.head().await;
    let bearer = format!("Bearer {ALICE}");
    let (status, h, body) = get(node.port, "/v1/image", &[("authorization", &bearer)]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let at: i64 = h["hivesync-at"].to_str().unwrap().parse().unwrap();
    assert_eq!(at, head);
    assert_eq!(
        h["content-length"].to_str().unwrap(),
        body.len().to_string()
    );
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("image.db");
    std::fs::write(&img, &body).unwrap();
    // The node's digest of those namespaces, at `at`.
    assert_eq!(
        digest(&img, &["public", "user:alice"]),
        digest(&node.db, &["public", "user:alice"])
    );
    assert_eq!(
        digest(&img, &[]),
        digest(&node.db, &["public", "user:alice"]),
        "nothing else in it"
    );
    let c = rusqlite::Connection::open(&img).unwrap();
    let n = |sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(n("SELECT count(*) FROM entities WHERE ns = 'user:bob'"), 0);
    assert_eq!(
        n("SELECT count(*) FROM changes"),
        0,
        "the node's log left out"
    );
    assert_eq!(n("SELECT count(*) FROM client_writes"), 0);
    assert_eq!(
        n("SELECT count(*) FROM meta WHERE key NOT IN ('fts_tokenizer', 'applied_seq')"),
        0,
        "no private state"
    );
    assert_eq!(
        n("SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'applied_seq'"),
        at
    );
    drop(c);
    // Full-text search and KNN answer from it as built.
    let s = cli(&img, &["--json", "search", "sailing"]);
    assert!(String::from_utf8_lossy(&s.stdout).lines().count() >= 10);
    let k = cli(
        &img,
        &["--json", "knn", "--model", "m", "--vector", "[0.1,0.2,0.3]"],
    );
    let hits = String::from_utf8_lossy(&k.stdout).to_string();
    assert_eq!(
        hits.lines().count(),
        2,
        "one vector of each namespace kept: {hits}"
    );
    assert!(!hits.contains("user:bob"));
    let check = cli(&img, &["check"]);
    assert!(
        check.status.success(),
        "the image passes the integrity check: {}",
        String::from_utf8_lossy(&check.stdout)
    );
    // Gzipped on the wire where accepted, the same bytes unpacked; smaller.
    let (status, h, gz) = get(
        node.port,
        "/v1/image",
        &[("authorization", &bearer), ("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(h["content-encoding"], "gzip");
    assert_eq!(
        h["hivesync-image-bytes"].to_str().unwrap(),
        body.len().to_string(),
        "the unpacked size, up front"
    );
    assert!(gz.len() < body.len());
    assert_eq!(gunzip(&gz), body, "the same image, served from the cache");
    // Revalidation: 304 while the image stands.
    let etag = h["etag"].to_str().unwrap().to_string();
    let (status, _, b) = get(
        node.port,
        "/v1/image",
        &[
            ("authorization", &bearer),
            ("accept-encoding", "gzip"),
            ("if-none-match", &etag),
        ],
    )
    .await;
    assert_eq!((status, b.len()), (304, 0));
    // Another token's rights: refused a namespace it cannot read, and no token at all.
    let (status, _, _) = get(
        node.port,
        "/v1/image?ns=user:bob",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(status, 403);
    let (status, _, _) = get(node.port, "/v1/image", &[]).await;
    assert_eq!(status, 401);
    let m = node.try_get("/metrics").await.unwrap().1;
    assert!(m.contains("hivesync_image_builds_total 1"), "{m}");
    assert!(m
        .lines()
        .any(|l| l.starts_with("hivesync_image_cache_hits_total ") && !l.ends_with(" 0")));
}

#[tokio::test]
async fn many_ask_one_build_runs_and_a_narrowed_token_gets_a_narrower_image() {
    let node = Node::start_with(NodeOpts {
        config: Some(config("[\"user:alice\", \"public\"]")),
        ..Default::default()
    })
    .await;
    seed(&node).await;
    let bearer = format!("Bearer {ALICE}");
    let asks: Vec<_> = (0..20)
        .map(|_| {
            let (port, b) = (node.port, bearer.clone());
            tokio::spawn(async move { get(port, "/v1/image", &[("authorization", &b)]).await })
        })
        .collect();
    let mut bodies = Vec::new();
    for a in asks {
        let (status, _, body) = a.await.unwrap();
        assert_eq!(status, 200);
        bodies.push(body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "one image for all");
    let m = node.try_get("/metrics").await.unwrap().1;
    assert!(m.contains("hivesync_image_builds_total 1"), "{m}");
    // Narrowed while the wider image is cached: the next image holds only what it may read now.
    node.rewrite_config(&config("[\"public\"]"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, _, body) = get(node.port, "/v1/image", &[("authorization", &bearer)]).await;
    assert_eq!(status, 200);
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("narrow.db");
    std::fs::write(&img, &body).unwrap();
    assert_eq!(digest(&img, &[]), digest(&node.db, &["public"]));
}

#[tokio::test]
async fn an_edge_started_from_an_image_catches_up_over_the_feed() {
    let node = Node::start_with(NodeOpts {
        config: Some(config("[\"public\"]")),
        ..Default::default()
    })
    .await;
    seed(&node).await;
    let (status, h, body) = get(
        node.port,
        "/v1/image",
        &[("authorization", &format!("Bearer {ALL}"))],
    )
    .await;
    assert_eq!(status, 200);
    let at: i64 = h["hivesync-at"].to_str().unwrap().parse().unwrap();
    // The node moves on past the image.
    let mut c = Client::connect(&node.url()).await;
    c.hello(Some(ALL)).await;
    for i in 0..20 {
        c.write(
            &format!("late{i}"),
            vec![entity(
                "public",
                &format!("late{i}"),
                "written after the image",
            )],
        )
        .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("edge.db");
    std::fs::write(&db, &body).unwrap();
    let edge = Node::start_in(
        dir,
        db.clone(),
        NodeOpts {
            args: vec![
                "--upstream".into(),
                node.url(),
                "--upstream-token".into(),
                ALL.into(),
            ],
            ..Default::default()
        },
    )
    .await;
    eventually(
        Duration::from_secs(15),
        || async { edge.head().await >= at + 20 },
        || "the edge did not catch up".into(),
    )
    .await;
    let h = edge.health().await;
    assert_eq!(h["upstream"]["live"], true, "{h}");
    assert_eq!(digest(&edge.db, &[]), digest(&node.db, &[]));
    assert!(
        !edge.log_text().contains("snapshot"),
        "it resumed from the image's seq, no snapshot"
    );
}

#[tokio::test]
async fn an_edge_on_an_empty_database_starts_from_its_upstreams_image() {
    let node = Node::start_with(NodeOpts {
        config: Some(config("[\"public\"]")),
        ..Default::default()
    })
    .await;
    seed(&node).await;
    let edge = Node::start_with(NodeOpts {
        args: vec![
            "--upstream".into(),
            node.url(),
            "--upstream-token".into(),
            ALL.into(),
        ],
        ..Default::default()
    })
    .await;
    let head = node.head().await;
    eventually(
        Duration::from_secs(15),
        || async { edge.health().await["upstream"]["live"] == true },
        || "the edge never went live".into(),
    )
    .await;
    assert!(edge.head().await >= head);
    assert!(
        edge.log_text()
            .contains("started from the upstream's database image"),
        "{}",
        edge.log_text()
    );
    let mut c = Client::connect(&node.url()).await;
    c.hello(Some(ALL)).await;
    let seq = c
        .write("after", vec![entity("public", "after", "after the image")])
        .await;
    eventually(
        Duration::from_secs(10),
        || async { edge.head().await >= seq },
        || "the edge stopped following".into(),
    )
    .await;
    assert_eq!(digest(&edge.db, &[]), digest(&node.db, &[]));
}
