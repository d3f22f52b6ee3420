//! Clients written from the documentation alone: `docs/examples/consumer.py`, the Python
//! consumer `docs/protocol.md` shows, run against a real node (Python's `websockets`, which
//! `tests/run.sh` installs): a snapshot, then a resume from its cursor file with no gap and
//! nothing twice.
#![allow(clippy::unwrap_used)]

mod common;

use common::Node;

/// Run the consumer until it is live: the changes it printed.
fn consume(node: &Node, cursor: &std::path::Path) -> Vec<serde_json::Value> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/consumer.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg(node.url())
        .arg(cursor)
        .arg("--until-live")
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}): tests/run.sh installs it"));
    assert!(
        out.status.success(),
        "consumer.py failed (needs `pip install websockets`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn the_documented_python_consumer_resumes_from_its_cursor() {
    let node = Node::start().await;
    for id in ["a", "b", "c"] {
        node.cli_put(
            "entity",
            "default",
            &serde_json::json!({"id": id, "name": id}),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let cursor = dir.path().join("cursor.txt");
    let first = consume(&node, &cursor);
    let ids: Vec<&str> = first.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b", "c"], "the snapshot");
    assert_eq!(std::fs::read_to_string(&cursor).unwrap(), "3");
    node.cli_put(
        "entity",
        "default",
        &serde_json::json!({"id": "d", "name": "d"}),
    );
    node.cli_put(
        "note",
        "default",
        &serde_json::json!({"id": "n", "content": "hello"}),
    );
    let second = consume(&node, &cursor);
    let seqs: Vec<i64> = second.iter().map(|c| c["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [4, 5], "only what follows the cursor, once");
    assert_eq!(second[1]["data"]["content"], "hello");
    assert_eq!(std::fs::read_to_string(&cursor).unwrap(), "5");
}
