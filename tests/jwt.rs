//! Sign-in with an identity provider: real signed tokens (RS256 from an RSA key `openssl`
//! makes, EdDSA from `hivesync jwt keygen`), a local JWKS server that rotates keys, a node
//! that maps claims to namespaces, expiry and renewal on open connections, and every kind of
//! bad token refused with a reason.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::*;
use hivesync::protocol::{ClientMsg, ErrorCode, ServerMsg};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADMIN: &str = "hs_admin_secret_for_the_jwt_tests_0123456789abcdef0123456789abcdef";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// What the JWKS server answers.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Keys,
    Garbage,
    Huge,
    Hang,
}

/// A local identity provider's key endpoint: `GET /jwks` answers the current key set.
struct Idp {
    port: u16,
    jwks: Arc<parking_lot::Mutex<Value>>,
    mode: Arc<parking_lot::Mutex<Mode>>,
    hits: Arc<AtomicU64>,
}

impl Idp {
    async fn start(keys: Vec<Value>) -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let jwks = Arc::new(parking_lot::Mutex::new(json!({ "keys": keys })));
        let mode = Arc::new(parking_lot::Mutex::new(Mode::Keys));
        let hits = Arc::new(AtomicU64::new(0));
        let (j, m, h) = (jwks.clone(), mode.clone(), hits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let (j, m, h) = (j.clone(), m.clone(), h.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    h.fetch_add(1, Relaxed);
                    let mode = *m.lock();
                    let body: Vec<u8> = match mode {
                        Mode::Keys => j.lock().to_string().into_bytes(),
                        Mode::Garbage => b"<html>not a key set</html>".to_vec(),
                        Mode::Huge => vec![b' '; 50 * 1024 * 1024],
                        Mode::Hang => {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            return;
                        }
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&body).await;
                });
            }
        });
        Idp {
            port,
            jwks,
            mode,
            hits,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/jwks", self.port)
    }

    fn set_keys(&self, keys: Vec<Value>) {
        *self.jwks.lock() = json!({ "keys": keys });
    }
}

/// An RSA key (PKCS#8 PEM, from openssl) and its public JWK.
fn rsa_key(dir: &Path, kid: &str) -> (PathBuf, Value) {
    let pem = dir.join(format!("{kid}.pem"));
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&pem)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    let out = std::process::Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(&pem)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let hex = text.trim().trim_start_matches("Modulus=");
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let jwk =
        json!({"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig", "n": b64(&n), "e": "AQAB"});
    (pem, jwk)
}

/// The public key PEM of an RSA key (for the algorithm-confusion token).
fn rsa_public_pem(pem: &Path) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(pem)
        .output()
        .unwrap();
    out.stdout
}

/// `hivesync jwt sign` with `args`.
fn sign(key: &Path, sub: &str, args: &[&str]) -> String {
    let mut cmd = command();
    cmd.args(["jwt", "sign", "--key"])
        .arg(key)
        .args(["--sub", sub])
        .args(args);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A token with any header and claims, and the signature given.
fn forge(header: Value, claims: Value, sig: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(sig)
    )
}

fn config(jwt: &str) -> String {
    format!(
        "name = \"jwt-node\"\n[[token]]\nname = \"admin\"\nsha256 = \"{}\"\nread = [\"*\"]\nwrite = [\"*\"]\n[jwt]\n{jwt}\n",
        hivesync::node::config::hash_token(ADMIN)
    )
}

async fn put(node: &Node, ns: &str, id: &str) -> i64 {
    let mut c = Client::connect(&node.url()).await;
    c.hello(Some(ADMIN)).await;
    c.write(id, vec![entity(ns, id, id)]).await
}

/// Every change the client receives until `quiet` passes without one (or it closes), and
/// the error that closed it, if any.
async fn drain(
    c: &mut Client,
    quiet: Duration,
) -> (
    Vec<hivesync::model::Change>,
    Option<hivesync::protocol::ErrorMsg>,
) {
    let mut seen = Vec::new();
    loop {
        match c.next_event_within(quiet).await {
            Some(Event::Msg(ServerMsg::Changes { changes, .. })) => seen.extend(changes),
            Some(Event::Msg(ServerMsg::Snapshot { rows, .. })) => seen.extend(rows),
            Some(Event::Msg(ServerMsg::Error(e))) => return (seen, Some(e)),
            Some(Event::Msg(_)) => {}
            Some(Event::Closed(_) | Event::Failed(_)) | None => return (seen, None),
        }
    }
}

#[tokio::test]
async fn a_user_reads_only_their_namespaces_in_snapshot_catch_up_and_live_frames() {
    let keys = tempfile::tempdir().unwrap();
    let (rsa, jwk) = rsa_key(keys.path(), "r1");
    let idp = Idp::start(vec![jwk]).await;
    let node = Node::start_with(NodeOpts {
        config: Some(config(&format!(
            "jwks_url = \"{}\"\nalgorithms = [\"RS256\"]\nread = [\"user:{{sub}}\", \"public\"]\nwrite = [\"user:{{sub}}\"]",
            idp.url()
        ))),
        ..Default::default()
    })
    .await;
    put(&node, "user:alice", "a1").await;
    put(&node, "user:bob", "b1").await;
    put(&node, "public", "p1").await;
    let alice = sign(&rsa, "alice", &["--ttl", "10m"]);
    // Snapshot: alice's and the public namespace, never bob's.
    let mut c = Client::connect(&node.url()).await;
    c.hello(Some(&alice)).await;
    c.subscribe("s", None, None).await;
    let (rows, err) = drain(&mut c, Duration::from_millis(500)).await;
    assert!(err.is_none(), "{err:?}");
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&"a1") && ids.contains(&"p1"), "{ids:?}");
    // Live: the same rule.
    put(&node, "user:bob", "b2").await;
    put(&node, "user:alice", "a2").await;
    let (live, _) = drain(&mut c, Duration::from_millis(500)).await;
    assert_eq!(
        live.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["a2"]
    );
    // She writes her own namespace, not bob's.
    c.write("w1", vec![entity("user:alice", "a3", "mine")])
        .await;
    c.send_write("w2", vec![entity("user:bob", "b3", "his")])
        .await;
    let e = loop {
        if let ServerMsg::Error(e) = c.recv().await {
            break e;
        }
    };
    assert_code(&e, ErrorCode::Forbidden);
    // Catch-up from the start of the log: still only hers and the public namespace.
    let mut c2 = Client::connect(&node.url()).await;
    c2.hello(Some(&alice)).await;
    c2.subscribe("s", Some(0), None).await;
    let (caught, _) = drain(&mut c2, Duration::from_millis(500)).await;
    let ns: std::collections::BTreeSet<&str> = caught.iter().map(|r| r.ns.as_str()).collect();
    assert_eq!(ns.into_iter().collect::<Vec<_>>(), ["public", "user:alice"]);
    // The static token works beside the JWTs.
    put(&node, "user:bob", "b4").await;
    assert!(idp.hits.load(Relaxed) >= 1);
}

#[tokio::test]
async fn expiry_stops_delivery_at_exp_and_a_renewed_token_keeps_the_subscription() {
    let keys = tempfile::tempdir().unwrap();
    let out = command()
        .args(["jwt", "keygen", "--dir"])
        .arg(keys.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let jwt_lines = String::from_utf8(out.stdout).unwrap();
    let ed = keys.path().join("private.pem");
    let node = Node::start_with(NodeOpts {
        config: Some(
            config(&format!(
                "{}\nleeway_secs = 0",
                jwt_lines.trim().trim_start_matches("[jwt]").trim()
            ))
            .replace("[jwt]\n\n", "[jwt]\n"),
        ),
        ..Default::default()
    })
    .await;
    // A writer commits a change every 50 ms throughout.
    let url = node.url();
    let writing = tokio::spawn(async move {
        let mut w = Client::connect(&url).await;
        w.hello(Some(ADMIN)).await;
        for i in 0..120 {
            w.write(
                &format!("r{i}"),
                vec![entity("feed", &format!("e{i}"), "x")],
            )
            .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // Expiring: a token valid for 3 s; nothing committed after its exp arrives.
    let short = sign(&ed, "carol", &["--ttl", "3s", "--read", "feed"]);
    let exp = now() + 3;
    let mut c = Client::connect(&node.url()).await;
    c.hello(Some(&short)).await;
    c.subscribe("s", Some(0), None).await;
    let (seen, err) = drain(&mut c, Duration::from_secs(6)).await;
    let err = err.expect("the node ends the connection at exp");
    assert_code(&err, ErrorCode::Unauthorized);
    assert!(err.message.contains("expired"), "{}", err.message);
    assert!(!seen.is_empty(), "changes came before exp");
    let late: Vec<_> = seen.iter().filter(|c| c.ts >= exp * 1_000_000).collect();
    assert!(
        late.is_empty(),
        "committed after exp yet delivered: {late:?}"
    );
    // Renewed: a fresh token on the open connection before exp, and the feed goes on past it
    // without a gap.
    let first = sign(&ed, "carol", &["--ttl", "3s", "--read", "feed"]);
    let mut c = Client::connect(&node.url()).await;
    c.hello(Some(&first)).await;
    c.subscribe("s", Some(0), None).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let fresh = sign(&ed, "carol", &["--ttl", "1h", "--read", "feed"]);
    c.send(&ClientMsg::Auth { token: fresh }).await;
    let mut feed = Feed::from(0);
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut past_exp = 0;
    while tokio::time::Instant::now() < until {
        match c.next_event_within(Duration::from_secs(2)).await {
            Some(Event::Msg(m @ ServerMsg::Changes { .. })) => {
                if let ServerMsg::Changes { changes, .. } = &m {
                    past_exp += changes
                        .iter()
                        .filter(|c| c.ts > (now() - 1) * 1_000_000)
                        .count();
                }
                feed.take("s", &m);
            }
            Some(Event::Msg(ServerMsg::Error(e))) => panic!("renewed connection refused: {e:?}"),
            Some(Event::Msg(_)) => {}
            Some(Event::Closed(c)) => panic!("renewed connection closed: {c:?}"),
            Some(Event::Failed(e)) => panic!("renewed connection failed: {e}"),
            None => break,
        }
    }
    assert!(past_exp > 0, "no change after the first token's exp");
    writing.abort();
}

#[tokio::test]
async fn a_new_key_is_fetched_for_its_kid_and_a_removed_key_ends_its_connections() {
    let keys = tempfile::tempdir().unwrap();
    let (k1, j1) = rsa_key(keys.path(), "k1");
    let (k2, j2) = rsa_key(keys.path(), "k2");
    let idp = Idp::start(vec![j1.clone()]).await;
    let node = Node::start_with(NodeOpts {
        config: Some(config(&format!(
            "jwks_url = \"{}\"\nrefresh_secs = 2\nrefresh_floor_secs = 0\nread = [\"user:{{sub}}\"]",
            idp.url()
        ))),
        ..Default::default()
    })
    .await;
    let mut old = Client::connect(&node.url()).await;
    old.hello(Some(&sign(&k1, "dana", &["--kid", "k1"]))).await;
    old.subscribe("s", Some(0), None).await;
    // The provider rotates: k2 published (and k1 still there); a token with k2 is accepted at
    // once, its key fetched for its kid.
    idp.set_keys(vec![j1, j2.clone()]);
    let mut new = Client::connect(&node.url()).await;
    new.hello(Some(&sign(&k2, "dana", &["--kid", "k2"]))).await;
    // k1 withdrawn: its connection ends at the next refresh; k2's stays.
    idp.set_keys(vec![j2]);
    let (_, err) = drain(&mut old, Duration::from_secs(5)).await;
    let err = err.expect("the withdrawn key's connection ends");
    assert_code(&err, ErrorCode::Unauthorized);
    new.subscribe("s", Some(0), None).await;
    let (_, err) = drain(&mut new, Duration::from_millis(1500)).await;
    assert!(err.is_none(), "{err:?}");
    // A kid nobody published: refused after one refresh.
    let (k3, _) = rsa_key(keys.path(), "k3");
    let before = idp.hits.load(Relaxed);
    let mut c = Client::connect(&node.url()).await;
    c.send(&ClientMsg::Hello {
        token: Some(sign(&k3, "dana", &["--kid", "k3"])),
        client: None,
    })
    .await;
    let e = c.recv_error().await;
    assert_code(&e, ErrorCode::Unauthorized);
    assert!(e.message.contains("k3"), "{}", e.message);
    assert!(idp.hits.load(Relaxed) > before, "a refresh was tried");
}

#[tokio::test]
async fn bad_tokens_are_refused_with_a_reason_and_counted_never_echoed() {
    let keys = tempfile::tempdir().unwrap();
    let (rsa, jwk) = rsa_key(keys.path(), "r1");
    let idp = Idp::start(vec![jwk]).await;
    let node = Node::start_with(NodeOpts {
        config: Some(config(&format!(
            "jwks_url = \"{}\"\nalgorithms = [\"RS256\"]\nissuer = \"https://idp.test/\"\naudience = \"hivesync\"\nleeway_secs = 0\nread = [\"user:{{sub}}\", \"team:{{org}}\"]",
            idp.url()
        ))),
        ..Default::default()
    })
    .await;
    let signed = |iss: &str, aud: &str, extra: &[&str]| {
        let mut a = vec!["--iss", iss, "--aud", aud, "--claim", "org=acme"];
        a.extend_from_slice(extra);
        sign(&rsa, "erin", &a)
    };
    let good = |_sub: &str, extra: &[&str]| signed("https://idp.test/", "hivesync", extra);
    // The good one passes.
    let mut c = Client::connect(&node.url()).await;
    c.hello(Some(&good("erin", &[]))).await;
    let t = now();
    let tampered = {
        let g = good("erin", &[]);
        let parts: Vec<&str> = g.split('.').collect();
        let other = b64(json!({"sub": "mallory", "exp": t + 600, "iss": "https://idp.test/", "aud": "hivesync", "org": "acme"}).to_string().as_bytes());
        format!("{}.{other}.{}", parts[0], parts[2])
    };
    let confusion = {
        let header = json!({"alg": "HS256", "typ": "JWT", "kid": "r1"});
        let claims = json!({"sub": "mallory", "exp": t + 600, "iss": "https://idp.test/", "aud": "hivesync", "org": "acme"});
        let signing = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &rsa_public_pem(&rsa));
        let sig = ring::hmac::sign(&key, signing.as_bytes());
        format!("{signing}.{}", b64(sig.as_ref()))
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            forge(
                json!({"alg": "none", "typ": "JWT"}),
                json!({"sub": "m", "exp": t + 600}),
                b"",
            ),
            "malformed",
        ),
        (
            "HS256 signed with the RSA public key",
            confusion,
            "algorithm",
        ),
        (
            "an algorithm not in the list",
            forge(
                json!({"alg": "RS512", "kid": "r1"}),
                json!({"sub": "m", "exp": t + 600}),
                b"x",
            ),
            "algorithm",
        ),
        (
            "expired",
            good("erin", &["--claim", &format!("exp={}", t - 5)]),
            "expired",
        ),
        (
            "not yet valid",
            good("erin", &["--claim", &format!("nbf={}", t + 600)]),
            "not_yet_valid",
        ),
        (
            "wrong audience",
            signed("https://idp.test/", "someone-else", &[]),
            "wrong_audience",
        ),
        (
            "wrong issuer",
            signed("https://evil.test/", "hivesync", &[]),
            "wrong_issuer",
        ),
        ("a signature over other claims", tampered, "bad_signature"),
        (
            "a claim of the wrong type",
            good("erin", &["--claim", "org={\"id\": 1}"]),
            "bad_claims",
        ),
        (
            "a template claim with /",
            good("erin", &["--claim", "org=a/b"]),
            "bad_claims",
        ),
        (
            "a template claim with *",
            good("erin", &["--claim", "org=*"]),
            "bad_claims",
        ),
        (
            "a template claim with ..",
            good("erin", &["--claim", "org=.."]),
            "bad_claims",
        ),
        (
            "a template claim with NUL",
            good("erin", &["--claim", "org=\"a\\u0000b\""]),
            "bad_claims",
        ),
        (
            "a missing template claim",
            sign(
                &rsa,
                "erin",
                &["--iss", "https://idp.test/", "--aud", "hivesync"],
            ),
            "bad_claims",
        ),
    ];
    for (what, token, reason) in &cases {
        let mut c = Client::connect(&node.url()).await;
        c.send(&ClientMsg::Hello {
            token: Some(token.clone()),
            client: None,
        })
        .await;
        let e = c.recv_error().await;
        assert_code(&e, ErrorCode::Unauthorized);
        assert!(
            !e.message.contains(token.as_str()),
            "{what}: the token echoed back"
        );
        assert!(c.expect_closed().await.is_some(), "{what}: not closed");
        let m = node.try_get("/metrics").await.unwrap().1;
        let line = m
            .lines()
            .find(|l| l.starts_with(&format!("hivesync_jwt_refused_{reason}_total ")))
            .unwrap_or_else(|| panic!("{what}: no counter for {reason}"));
        assert!(!line.ends_with(" 0"), "{what}: {line}");
        eprintln!("{what}: {}", e.message);
    }
    // A 1 MB token: before hello it is more than a stranger may send; as a renewal, refused.
    let huge = "a".repeat(1024 * 1024);
    let mut c = Client::connect(&node.url()).await;
    c.send(&ClientMsg::Hello {
        token: Some(huge.clone()),
        client: None,
    })
    .await;
    assert!(c.expect_closed().await.is_some());
    let mut c = Client::connect(&node.url()).await;
    c.hello(Some(&good("erin", &[]))).await;
    c.send(&ClientMsg::Auth {
        token: format!("x.{huge}.y"),
    })
    .await;
    let e = c.recv_error().await;
    assert_code(&e, ErrorCode::Unauthorized);
    assert!(e.message.len() < 400, "{}", e.message);
    let log = node.log_text();
    assert!(
        !log.contains(&good("erin", &[])[..40]),
        "a token in the log"
    );
}

#[tokio::test]
async fn a_key_url_that_hangs_garbles_or_floods_leaves_the_node_up_and_says_so() {
    for mode in [Mode::Hang, Mode::Garbage, Mode::Huge] {
        let idp = Idp::start(vec![]).await;
        *idp.mode.lock() = mode;
        let started = std::time::Instant::now();
        let node = Node::start_with(NodeOpts {
            config: Some(config(&format!(
                "jwks_url = \"{}\"\nread = [\"user:{{sub}}\"]",
                idp.url()
            ))),
            ..Default::default()
        })
        .await;
        // The node serves at once; the failed fetch shows in /healthz and /metrics.
        let mut c = Client::connect(&node.url()).await;
        c.hello(Some(ADMIN)).await;
        eventually(
            Duration::from_secs(12),
            || async {
                let h = node.health().await;
                h["jwt"]["error"].is_string() && h["status"] == "degraded"
            },
            || format!("{mode:?}: no key error in /healthz"),
        )
        .await;
        let m = node.try_get("/metrics").await.unwrap().1;
        assert!(m.contains("hivesync_jwks_ok 0"), "{mode:?}");
        assert!(started.elapsed() < Duration::from_secs(20), "{mode:?}");
        // A token is refused (no key), quickly, not hung.
        let keys = tempfile::tempdir().unwrap();
        let (rsa, _) = rsa_key(keys.path(), "r9");
        let mut c = Client::connect(&node.url()).await;
        let t0 = std::time::Instant::now();
        c.send(&ClientMsg::Hello {
            token: Some(sign(&rsa, "x", &["--kid", "r9"])),
            client: None,
        })
        .await;
        let e = c.recv_error().await;
        assert_code(&e, ErrorCode::Unauthorized);
        assert!(
            t0.elapsed() < Duration::from_secs(8),
            "{mode:?}: {:?}",
            t0.elapsed()
        );
    }
}

#[tokio::test]
async fn an_edge_renews_its_upstream_jwt_from_its_token_file_without_dropping_the_link() {
    let keys = tempfile::tempdir().unwrap();
    let out = command()
        .args(["jwt", "keygen", "--dir"])
        .arg(keys.path())
        .output()
        .unwrap();
    let jwt_lines = String::from_utf8(out.stdout).unwrap();
    let ed = keys.path().join("private.pem");
    let primary = Node::start_with(NodeOpts {
        config: Some(config(&format!(
            "{}\nleeway_secs = 0",
            jwt_lines.trim().trim_start_matches("[jwt]").trim()
        ))),
        ..Default::default()
    })
    .await;
    let token_file = keys.path().join("edge.token");
    let edge_token = |ttl: &str| {
        sign(
            &ed,
            "edge-1",
            &["--ttl", ttl, "--read", "*", "--write", "*"],
        )
    };
    std::fs::write(&token_file, edge_token("4s")).unwrap();
    let edge = Node::start_with(NodeOpts {
        args: vec![
            "--upstream".into(),
            primary.url(),
            "--upstream-token-file".into(),
            token_file.display().to_string(),
        ],
        ..Default::default()
    })
    .await;
    eventually(
        Duration::from_secs(10),
        || async { edge.health().await["upstream"]["live"] == true },
        || "the edge never caught up".into(),
    )
    .await;
    // A rotation tool writes a fresh token before the first one expires.
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::write(&token_file, edge_token("1h")).unwrap();
    // Well past the first token's expiry, the link is the same one and still follows.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let seq = put(&primary, "default", "after-exp").await;
    eventually(
        Duration::from_secs(10),
        || async { edge.head().await >= seq },
        || "the edge stopped following after its first token expired".into(),
    )
    .await;
    let h = edge.health().await;
    assert_eq!(h["upstream"]["connected"], true, "{h}");
    assert!(h["upstream"]["error"].is_null(), "{h}");
    assert!(
        edge.log_text().contains("renewing the token"),
        "the edge did not read the new token"
    );
}

#[tokio::test]
async fn with_hs256_allowed_a_token_signed_with_the_rsa_public_key_is_still_refused() {
    let keys = tempfile::tempdir().unwrap();
    let (rsa, jwk) = rsa_key(keys.path(), "r1");
    let idp = Idp::start(vec![jwk]).await;
    let secret = b"a shared secret of at least thirty-two bytes, from a file";
    let secret_file = keys.path().join("hs.secret");
    std::fs::write(&secret_file, secret).unwrap();
    let node = Node::start_with(NodeOpts {
        config: Some(config(&format!(
            "jwks_url = \"{}\"\nalgorithms = [\"RS256\", \"HS256\"]\nhs256_secret_file = \"{}\"\nread = [\"user:{{sub}}\"]",
            idp.url(),
            secret_file.display()
        ))),
        ..Default::default()
    })
    .await;
    let hs = |key: &[u8], kid: Option<&str>| {
        let mut header = json!({"alg": "HS256", "typ": "JWT"});
        if let Some(k) = kid {
            header["kid"] = json!(k);
        }
        let claims = json!({"sub": "frank", "exp": now() + 600});
        let signing = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key),
            signing.as_bytes(),
        );
        format!("{signing}.{}", b64(sig.as_ref()))
    };
    // The shared secret's token is good; so is the RSA key's.
    let mut c = Client::connect(&node.url()).await;
    c.hello(Some(&hs(secret, None))).await;
    let mut c = Client::connect(&node.url()).await;
    c.hello(Some(&sign(&rsa, "frank", &["--kid", "r1"]))).await;
    // HS256 with the RSA public key as the secret (naming the RSA key's kid or not): refused.
    for kid in [Some("r1"), None] {
        let mut c = Client::connect(&node.url()).await;
        c.send(&ClientMsg::Hello {
            token: Some(hs(&rsa_public_pem(&rsa), kid)),
            client: None,
        })
        .await;
        let e = c.recv_error().await;
        assert_code(&e, ErrorCode::Unauthorized);
        assert!(e.message.contains("bad signature"), "{}", e.message);
    }
}

#[tokio::test]
async fn an_edge_whose_token_expired_resumes_when_its_token_file_is_renewed() {
    let keys = tempfile::tempdir().unwrap();
    let out = command()
        .args(["jwt", "keygen", "--dir"])
        .arg(keys.path())
        .output()
        .unwrap();
    let jwt_lines = String::from_utf8(out.stdout).unwrap();
    let ed = keys.path().join("private.pem");
    let primary = Node::start_with(NodeOpts {
        config: Some(config(&format!(
            "{}\nleeway_secs = 0",
            jwt_lines.trim().trim_start_matches("[jwt]").trim()
        ))),
        ..Default::default()
    })
    .await;
    let token_file = keys.path().join("edge.token");
    let edge_token = |ttl: &str| {
        sign(
            &ed,
            "edge-1",
            &["--ttl", ttl, "--read", "*", "--write", "*"],
        )
    };
    std::fs::write(&token_file, edge_token("2s")).unwrap();
    let edge = Node::start_with(NodeOpts {
        args: vec![
            "--upstream".into(),
            primary.url(),
            "--upstream-token-file".into(),
            token_file.display().to_string(),
        ],
        ..Default::default()
    })
    .await;
    // The token runs out before anyone renews it: the edge waits, it does not stop for good.
    eventually(
        Duration::from_secs(15),
        || async {
            edge.health().await["upstream"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("waiting for a fresh token"))
        },
        || "the edge did not say it waits for a token".into(),
    )
    .await;
    std::fs::write(&token_file, edge_token("1h")).unwrap();
    let seq = put(&primary, "default", "after-renewal").await;
    eventually(
        Duration::from_secs(15),
        || async { edge.head().await >= seq },
        || "the edge did not resume with the renewed token".into(),
    )
    .await;
    assert_eq!(edge.health().await["upstream"]["connected"], true);
}
