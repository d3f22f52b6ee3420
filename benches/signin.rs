//! What signing in with a JWT costs: `hello` with a JWT (EdDSA from a JWKS file, RS256 where
//! `openssl` is installed) against `hello` with a static token, on one node, in the same run.
//! 1. one client at a time, connect + hello until `welcome`, the kinds taking turns;
//! 2. 1,000 clients at once (a reconnect storm), until the last `welcome`.
//!
//! Goal: a JWT hello under 2x the static one (the signature check is the floor).
//! Run: `cargo bench --bench signin` (HIVESYNC_SIGNIN_N for part 1's rounds, default 300;
//! HIVESYNC_SIGNIN_BURST for part 2's clients, default 1000).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use hivesync::node::config::{hash_token, Config};
use hivesync::protocol::{self, ClientMsg, ServerMsg};
use hivesync::store::{Store, StoreOptions};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[path = "common/mod.rs"]
mod common;

const STATIC: &str = "hs_bench_static_token_0123456789abcdef0123456789abcdef0123456789abcdef";

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Raise the open-files limit to its hard limit: 1,000 clients and their server ends share
/// this process.
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit with a valid struct; nothing else runs yet.
    #[allow(unsafe_code)]
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// The tokens: (label, token), the static one first.
fn tokens(dir: &std::path::Path) -> (Vec<(&'static str, String)>, String) {
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use ring::signature::KeyPair;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = json!({"sub": "bench", "exp": exp, "hivesync": {"read": ["*"], "write": ["*"]}});
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let mut keys = vec![
        json!({"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64(pair.public_key().as_ref())}),
    ];
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some("ed".into());
    let ed = jsonwebtoken::encode(&h, &claims, &EncodingKey::from_ed_der(pkcs8.as_ref())).unwrap();
    let mut out = vec![("static token", STATIC.to_string()), ("JWT EdDSA", ed)];
    let pem = dir.join("rsa.pem");
    let made = std::process::Command::new("openssl")
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
        .is_ok_and(|o| o.status.success());
    if made {
        let m = std::process::Command::new("openssl")
            .args(["rsa", "-noout", "-modulus", "-in"])
            .arg(&pem)
            .output()
            .unwrap();
        let text = String::from_utf8(m.stdout).unwrap();
        let hex = text.trim().trim_start_matches("Modulus=");
        let n: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        keys.push(json!({"kty": "RSA", "kid": "rsa", "alg": "RS256", "n": b64(&n), "e": "AQAB"}));
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("rsa".into());
        let key = EncodingKey::from_rsa_pem(&std::fs::read(&pem).unwrap()).unwrap();
        out.push((
            "JWT RS256",
            jsonwebtoken::encode(&h, &claims, &key).unwrap(),
        ));
    }
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, json!({ "keys": keys }).to_string()).unwrap();
    let config = format!(
        "name = \"signin\"\n[[token]]\nname = \"static\"\nsha256 = \"{}\"\nread = [\"*\"]\nwrite = [\"*\"]\n[jwt]\njwks_file = \"{}\"\nalgorithms = [\"EdDSA\", \"RS256\"]\n",
        hash_token(STATIC),
        jwks.display()
    );
    (out, config)
}

/// Connect, say hello with `token`, wait for `welcome`; the time it took.
async fn sign_in(url: &str, token: &str) -> Duration {
    let t0 = Instant::now();
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .expect("connect");
    let hello = ClientMsg::Hello {
        token: Some(token.to_string()),
        client: None,
    };
    ws.send(Message::Text(protocol::encode_client_json(&hello).into()))
        .await
        .unwrap();
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => match protocol::decode_server_json(t.as_str()).unwrap() {
                ServerMsg::Welcome { .. } => break,
                other => panic!("hello refused: {other:?}"),
            },
            Some(Ok(_)) => {}
            other => panic!("connection ended: {other:?}"),
        }
    }
    let took = t0.elapsed();
    let _ = ws.close(None).await;
    took
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    raise_nofile();
    let n = env_num("HIVESYNC_SIGNIN_N", 300);
    let burst = env_num("HIVESYNC_SIGNIN_BURST", 1000);
    let dir = tempfile::tempdir().unwrap();
    let (kinds, config) = tokens(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!("# sign-in benchmark on {}", common::machine_info());
    rt.block_on(async {
        let store = Arc::new(Store::open(dir.path().join("signin.db"), StoreOptions::default()).unwrap());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let h = hivesync::node::start(store, l, Config::parse(&config).unwrap(), None, &Default::default())
            .await
            .unwrap();
        let url = format!("ws://{}/v1/sync", h.addr);
        // Warm-up, every kind.
        for (_, t) in &kinds {
            for _ in 0..20 {
                sign_in(&url, t).await;
            }
        }
        // 1. One at a time, the kinds taking turns.
        let mut times: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
        for _ in 0..n {
            for (i, (_, t)) in kinds.iter().enumerate() {
                times[i].push(sign_in(&url, t).await);
            }
        }
        let base = pct(&mut times[0].clone(), 0.5);
        println!("\n1. connect + hello until welcome, one client at a time, {n} rounds (kinds taking turns)");
        println!("{:<14} {:>9} {:>9} {:>9}", "", "p50 ms", "p99 ms", "ratio p50");
        for (i, (label, _)) in kinds.iter().enumerate() {
            let (p50, p99) = (pct(&mut times[i], 0.5), pct(&mut times[i], 0.99));
            let goal = if i == 0 { "" } else if p50 / base < 2.0 { "  (goal < 2x: met)" } else { "  (goal < 2x: NOT met)" };
            println!("{label:<14} {p50:>9.3} {p99:>9.3} {:>8.2}x{goal}", p50 / base);
        }
        // 2. A storm: `burst` clients at once.
        println!("\n2. {burst} clients signing in at once, until the last welcome");
        let mut base_storm = 0.0;
        for (i, (label, t)) in kinds.iter().enumerate() {
            let t0 = Instant::now();
            let tasks: Vec<_> = (0..burst)
                .map(|_| {
                    let (u, t) = (url.clone(), t.clone());
                    tokio::spawn(async move { sign_in(&u, &t).await })
                })
                .collect();
            let mut each = Vec::with_capacity(burst);
            for task in tasks {
                each.push(task.await.unwrap());
            }
            let all = t0.elapsed().as_secs_f64() * 1e3;
            if i == 0 {
                base_storm = all;
            }
            println!(
                "{label:<14} all in {all:>8.1} ms, p50 {:>7.2} ms, p99 {:>7.2} ms, {:.2}x",
                pct(&mut each, 0.5),
                pct(&mut each, 0.99),
                all / base_storm
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        println!("\nload avg: {} (1/5/15 min, at end)", common::load_average());
        drop(h);
    });
}
