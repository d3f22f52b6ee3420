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
