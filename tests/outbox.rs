//! Exactly-once uploads at the node: a `write` that carries its origin (`client`, `n`) is
//! applied at most once, whatever is re-sent, across a node crash, and through an edge relay.
//! Real binaries, real sockets, real SQLite files.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{assert_code, entity, Client, Node, NodeOpts};
use hivesync::protocol::{ClientMsg, ErrorCode, ErrorMsg, ServerMsg};
use serde_json::json;

fn write_from(req: &str, client: &str, n: i64, id: &str) -> ClientMsg {
    ClientMsg::Write {
        req: req.into(),
        ops: vec![entity("default", id, id)],
        client: Some(client.into()),
        n: Some(n),
    }
}

/// Send `m` and wait for the answer to its `req`.
async fn answer(c: &mut Client, m: &ClientMsg) -> Result<i64, ErrorMsg> {
    let ClientMsg::Write { req, .. } = m else {
        unreachable!()
    };
    c.send(m).await;
    loop {
        match c.recv().await {
            ServerMsg::Written { req: r, seq } if &r == req => return Ok(seq),
            ServerMsg::Error(e) if e.req.as_deref() == Some(req) => return Err(e),
            _ => {}
        }
    }
}

/// Rows in `entities` and entries in the log, read from the node's file.
fn counts(node: &Node) -> (i64, i64) {
    let c =
        rusqlite::Connection::open_with_flags(&node.db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    c.query_row(
        "SELECT (SELECT count(*) FROM entities), (SELECT count(*) FROM changes)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

#[tokio::test]
async fn a_write_with_an_origin_is_applied_once() {
    let mut node = Node::start().await;
    let mut c = Client::connect(&node.url()).await;
    c.hello(None).await;

    let s1 = answer(&mut c, &write_from("a", "tab-a", 1, "e1"))
        .await
        .unwrap();
    // The ack was lost: the client sends the same write again, under a new request id.
    let again = answer(&mut c, &write_from("b", "tab-a", 1, "e1"))
        .await
        .unwrap();
    assert_eq!(again, s1, "a re-sent write is answered from the ledger");
    assert_eq!(counts(&node), (1, 1), "and not applied twice");

    let s2 = answer(&mut c, &write_from("c", "tab-a", 2, "e2"))
        .await
        .unwrap();
    assert!(s2 > s1);
    // An older number, re-sent after a newer one landed: answered, not applied.
    let old = answer(&mut c, &write_from("d", "tab-a", 1, "e1"))
        .await
        .unwrap();
    assert_eq!(
        old, s2,
        "answered with the head after the client's last write"
    );
    // Numbers are per client.
    answer(&mut c, &write_from("e", "tab-b", 1, "e3"))
        .await
        .unwrap();
    assert_eq!(counts(&node), (3, 3));

    // The ledger is written in the write's own transaction: a crash keeps it.
    node.restart().await;
    let mut c = Client::connect(&node.url()).await;
    c.hello(None).await;
    let after = answer(&mut c, &write_from("f", "tab-a", 2, "e2"))
        .await
        .unwrap();
    assert_eq!(after, s2);
    assert_eq!(counts(&node), (3, 3), "nothing applied twice after a crash");

    // Half an origin is refused, with what to do.
    let mut half = write_from("g", "tab-a", 3, "e4");
    if let ClientMsg::Write { n, .. } = &mut half {
        *n = None;
    }
    let e = answer(&mut c, &half).await.unwrap_err();
    assert_code(&e, ErrorCode::BadRequest);
    assert!(e.message.contains("`client` and `n` go together"), "{e:?}");
    let e = answer(&mut c, &write_from("h", "tab-a", 0, "e4"))
        .await
        .unwrap_err();
    assert_code(&e, ErrorCode::BadRequest);
    // A refused write records nothing: the same number is free for the next try.
    let bad = ClientMsg::Write {
        req: "i".into(),
        ops: vec![hivesync::model::WriteOp::upsert(
            hivesync::model::Kind::Edge,
            "default",
            json!({"source": "nobody", "target": "e1", "relation": "knows"}),
        )],
        client: Some("tab-a".into()),
        n: Some(3),
    };
    answer(&mut c, &bad).await.unwrap_err();
    answer(&mut c, &write_from("j", "tab-a", 3, "e4"))
        .await
        .unwrap();
    assert_eq!(counts(&node), (4, 4));
}

#[tokio::test]
async fn an_edge_relay_passes_the_origin_to_the_primary() {
    let primary = Node::start().await;
    let edge = Node::start_with(NodeOpts {
        args: vec!["--upstream".into(), primary.url()],
        ..Default::default()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while edge.health().await["upstream"]["live"] != json!(true) {
        assert!(Instant::now() < deadline, "the edge never went live");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut at_edge = Client::connect(&edge.url()).await;
    at_edge.hello(None).await;
    let mut at_primary = Client::connect(&primary.url()).await;
    at_primary.hello(None).await;
    let s1 = answer(&mut at_edge, &write_from("a", "tab-a", 1, "e1"))
        .await
        .unwrap();
    // The same write reaches the primary directly (the client moved): the ledger is the
    // primary's, so it is not applied again.
    let again = answer(&mut at_primary, &write_from("b", "tab-a", 1, "e1"))
        .await
        .unwrap();
    assert_eq!(again, s1);
    let again = answer(&mut at_edge, &write_from("c", "tab-a", 1, "e1"))
        .await
        .unwrap();
    assert_eq!(again, s1);
    assert_eq!(counts(&primary), (1, 1));
}
