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
        entries: None,
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
        entries: None,
    };
    answer(&mut c, &bad).await.unwrap_err();
    answer(&mut c, &write_from("j", "tab-a", 3, "e4"))
        .await
        .unwrap();
    assert_eq!(counts(&node), (4, 4));
}

#[tokio::test]
async fn a_batch_of_client_writes_lands_each_once_however_it_is_cut() {
    let node = Node::start().await;
    let mut c = Client::connect(&node.url()).await;
    c.hello(None).await;
    let batch = |req: &str, ids: &[&str], n: i64| ClientMsg::Write {
        req: req.into(),
        ops: ids.iter().map(|id| entity("default", id, id)).collect(),
        client: Some("tab-c".into()),
        n: Some(n),
        entries: Some(vec![1; ids.len()]),
    };
    let s1 = answer(&mut c, &batch("a", &["b1", "b2"], 2)).await.unwrap();
    assert_eq!(counts(&node), (2, 2));
    // Sent again, cut differently (the answer was lost, more writes were made since): the
    // writes the node has are skipped, the new one lands, all in one transaction.
    let s2 = answer(&mut c, &batch("b", &["b1", "b2", "b3"], 3))
        .await
        .unwrap();
    assert!(s2 > s1);
    assert_eq!(counts(&node), (3, 3), "b1 and b2 were not applied again");
    assert_eq!(
        answer(&mut c, &batch("c", &["b3"], 3)).await.unwrap(),
        s2,
        "then answered from the ledger"
    );
    // Counts that do not add up are refused.
    let mut bad = batch("d", &["b4", "b5"], 5);
    if let ClientMsg::Write { entries, .. } = &mut bad {
        *entries = Some(vec![1, 2]);
    }
    let e = answer(&mut c, &bad).await.unwrap_err();
    assert_code(&e, ErrorCode::BadRequest);
    assert!(e.message.contains("`entries` counts 3 ops"), "{e:?}");
    assert_eq!(counts(&node), (3, 3));
}

/// Wait until the edge has caught up with its upstream.
async fn until_live(edge: &Node) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while edge.health().await["upstream"]["live"] != json!(true) {
        assert!(Instant::now() < deadline, "the edge never went live");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_edge_relay_passes_the_origin_to_the_primary() {
    let primary = Node::start().await;
    let edge = Node::start_with(NodeOpts {
        args: vec!["--upstream".into(), primary.url()],
        ..Default::default()
    })
    .await;
    until_live(&edge).await;
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

/// Tokens `ta` and `tb` (each its namespace... and `default`), and `admin` (every namespace).
fn two_tenants() -> String {
    let tok = |name: &str, secret: &str, ns: &str| {
        format!(
            "[[token]]\nname = \"{name}\"\nsha256 = \"{}\"\nread = [{ns}]\nwrite = [{ns}]\n",
            hivesync::node::config::hash_token(secret)
        )
    };
    format!(
        "anonymous = \"never\"\n{}{}{}",
        tok("a", "ta", "\"default\", \"a\""),
        tok("b", "tb", "\"default\", \"b\""),
        tok("admin", "tadmin", "\"*\"")
    )
}

/// Issue 23, item 4: token A's write with client id `r-victim` and `n = 1000000` made the node
/// answer token B's later writes with that id `written` (A's recorded seq) and store nothing;
/// `n = i64::MAX` blocked an id for good. A client id now belongs to the token that first wrote
/// with it: another token's write with it is refused (`forbidden`, no seq in the answer), on
/// the node and through an edge, whose clients the primary knows only by the edge's token.
#[tokio::test]
async fn a_client_id_belongs_to_the_token_that_first_wrote_with_it() {
    let node = Node::start_with(NodeOpts {
        config: Some(two_tenants()),
        ..Default::default()
    })
    .await;
    let mut a = Client::connect(&node.url()).await;
    a.hello(Some("ta")).await;
    let mut b = Client::connect(&node.url()).await;
    b.hello(Some("tb")).await;
    let seq_a = answer(&mut a, &write_from("1", "r-victim", 1_000_000, "by-a"))
        .await
        .unwrap();
    let e = answer(&mut b, &write_from("2", "r-victim", 1, "by-b"))
        .await
        .unwrap_err();
    assert_code(&e, ErrorCode::Forbidden);
    assert!(e.message.contains("belongs to another token"), "{e:?}");
    assert!(
        !e.message.contains(&seq_a.to_string()),
        "the answer leaks A's seq: {e:?}"
    );
    // B's own ids work, and A's maximal n blocks only A's id.
    assert!(answer(&mut b, &write_from("3", "r-b", 1, "b1"))
        .await
        .is_ok());
    assert!(answer(&mut a, &write_from("4", "r-a2", i64::MAX, "a-max"))
        .await
        .is_ok());
    let e = answer(&mut b, &write_from("5", "r-a2", 1, "b2"))
        .await
        .unwrap_err();
    assert_code(&e, ErrorCode::Forbidden);
    assert!(answer(&mut b, &write_from("6", "r-b", 2, "b3"))
        .await
        .is_ok());
    // A token that writes every namespace is trusted with any id (an operator, an edge).
    let mut admin = Client::connect(&node.url()).await;
    admin.hello(Some("tadmin")).await;
    assert_eq!(
        answer(&mut admin, &write_from("7", "r-victim", 5, "x"))
            .await
            .unwrap(),
        seq_a,
        "replayed from the record"
    );
    assert_eq!(counts(&node).0, 4, "by-a, b1, a-max, b3");

    // Through an edge (its token at the primary writes everything): the edge binds its own
    // clients' ids.
    let edge = Node::start_with(NodeOpts {
        config: Some(two_tenants()),
        args: vec![
            "--upstream".into(),
            node.url(),
            "--upstream-token".into(),
            "tadmin".into(),
        ],
        ..Default::default()
    })
    .await;
    until_live(&edge).await;
    let mut ea = Client::connect(&edge.url()).await;
    ea.hello(Some("ta")).await;
    let mut eb = Client::connect(&edge.url()).await;
    eb.hello(Some("tb")).await;
    assert!(answer(&mut ea, &write_from("8", "r-edge-a", 1, "ea1"))
        .await
        .is_ok());
    let e = answer(&mut eb, &write_from("9", "r-edge-a", 7, "eb1"))
        .await
        .unwrap_err();
    assert_code(&e, ErrorCode::Forbidden);
    assert!(answer(&mut ea, &write_from("10", "r-edge-a", 2, "ea2"))
        .await
        .is_ok());
    assert_eq!(counts(&node).0, 6);
}

// ---- The replica's half: local writes kept on top of the node's feed (real SQLite, no
// network: the node is a `Store`, the feed is its change log, the upload is `write_from`).

mod replica {
    use hivesync::apply;
    use hivesync::model::{Kind, Origin, WriteOp};
    use hivesync::outbox;
    use hivesync::query::{self, ChangeFilter};
    use hivesync::schema::{self, SchemaOptions};
    use hivesync::store::{Store, StoreOptions};
    use proptest::prelude::*;
    use rusqlite::Connection;
    use serde_json::json;

    struct World {
        node: Store,
        replica: Connection,
        client: String,
    }

    impl World {
        fn new() -> World {
            let replica = schema::open_in_memory(&SchemaOptions::default()).unwrap();
            let client = outbox::client_id(&replica).unwrap();
            World {
                node: Store::open_in_memory(StoreOptions::default()).unwrap(),
                replica,
                client,
            }
        }

        /// Apply the node's log to the replica in batches of `batch`, up to `upto` (all: None).
        fn feed(&self, batch: usize, upto: Option<i64>) {
            super::common::feed_replica(&self.node, &self.replica, batch, upto);
        }

        /// Upload every unconfirmed entry; `lose_acks`: the answers are lost (nothing recorded
        /// here), so the next upload sends them again.
        fn upload(&self, lose_acks: bool) -> Vec<i64> {
            self.upload_batched(lose_acks, 1)
        }

        /// [`World::upload`], `batch` consecutive entries per write (a refused batch is sent
        /// again one entry per write, to find the refused one).
        fn upload_batched(&self, lose_acks: bool, batch: usize) -> Vec<i64> {
            let unsent: Vec<_> = outbox::pending(&self.replica)
                .unwrap()
                .into_iter()
                .filter(|p| p.seq.is_none())
                .collect();
            let mut refused = Vec::new();
            for chunk in unsent.chunks(batch.max(1)) {
                if chunk.len() > 1 {
                    let origin = Origin {
                        client: self.client.clone(),
                        n: chunk[chunk.len() - 1].n,
                        entries: chunk.iter().map(|p| p.ops.len() as u32).collect(),
                        principal: None,
                    };
                    let ops: Vec<WriteOp> = chunk.iter().flat_map(|p| p.ops.clone()).collect();
                    if let Ok(r) = self.node.write_from(&ops, Some(&origin)) {
                        if !lose_acks {
                            for p in chunk {
                                outbox::confirm(&self.replica, p.n, r.seq).unwrap();
                            }
                        }
                        continue;
                    }
                }
                for p in chunk {
                    let origin = Origin {
                        client: self.client.clone(),
                        n: p.n,
                        entries: Vec::new(),
                        principal: None,
                    };
                    match self.node.write_from(&p.ops, Some(&origin)) {
                        Ok(r) if !lose_acks => outbox::confirm(&self.replica, p.n, r.seq).unwrap(),
                        Ok(_) => {}
                        Err(_) => {
                            outbox::reject(&self.replica, p.n).unwrap();
                            refused.push(p.n);
                        }
                    }
                }
            }
            refused
        }

        fn replica_digest(&self) -> String {
            query::digest(&self.replica, None).unwrap().sha256
        }

        fn node_digest(&self) -> String {
            self.node.digest(None).unwrap().sha256
        }

        fn name(&self, kind: Kind, id: &str) -> Option<String> {
            query::get_json(&self.replica, kind, "default", id, None)
                .unwrap()
                .map(|v| v["name"].as_str().unwrap_or("").to_string())
        }

        fn search(&self, q: &str) -> usize {
            let q: query::SearchQuery = serde_json::from_value(json!({ "text": q })).unwrap();
            query::search(&self.replica, &q, i64::MAX / 2)
                .unwrap()
                .len()
        }
    }

    fn ent(id: &str, name: &str) -> WriteOp {
        WriteOp::upsert(
            Kind::Entity,
            "default",
            json!({"id": id, "kind": "thing", "name": name}),
        )
    }

    fn edge(id: &str, s: &str, t: &str) -> WriteOp {
        WriteOp::upsert(
            Kind::Edge,
            "default",
            json!({"id": id, "source": s, "target": t, "relation": "knows"}),
        )
    }

    fn vector(subject: &str, e: [f32; 2]) -> WriteOp {
        WriteOp::upsert(
            Kind::Vector,
            "default",
            json!({"subject": subject, "model": "m", "embedding": e}),
        )
    }

    fn embedding(w: &World, subject: &str) -> Option<Vec<f32>> {
        query::get_vector(&w.replica, "default", subject, "m")
            .unwrap()
            .map(|v| v.embedding)
    }

    #[test]
    fn an_offline_write_keeps_the_time_it_was_made() {
        // The replica stamps created_at/updated_at when the write is made (as it fills ids);
        // the node keeps them however late the upload, but not a clock far ahead of its own.
        let w = World::new();
        let before = hivesync::ops::now_us(&w.replica).unwrap();
        let lw = outbox::write_local(
            &w.replica,
            vec![
                ent("a", "made offline"),
                WriteOp::upsert(Kind::Event, "default", json!({"id": "ev", "verb": "noted"})),
            ],
        )
        .unwrap();
        let pending = outbox::pending(&w.replica).unwrap();
        let made = pending[0].ops[0].data.as_ref().unwrap()["created_at"]
            .as_i64()
            .unwrap();
        assert!(made >= before);
        assert_eq!(pending[0].ops[0].data.as_ref().unwrap()["updated_at"], made);
        assert_eq!(pending[0].ops[1].data.as_ref().unwrap()["created_at"], made);
        assert!(pending[0].ops[1]
            .data
            .as_ref()
            .unwrap()
            .get("updated_at")
            .is_none());
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert!(w.upload(false).is_empty());
        let at_node = w
            .node
            .get_json(Kind::Entity, "default", "a", None)
            .unwrap()
            .unwrap();
        assert_eq!(
            at_node["created_at"], made,
            "the node kept the time the write was made"
        );
        assert_eq!(at_node["updated_at"], made);
        let ev = w
            .node
            .get_json(Kind::Event, "default", "ev", None)
            .unwrap()
            .unwrap();
        assert_eq!(ev["created_at"], made);
        assert!(lw.n > 0);

        // A writer whose clock is an hour ahead: the node's time instead; a week behind: kept.
        let now = hivesync::ops::now_us(&w.replica).unwrap();
        let hour = 3_600_000_000_i64;
        let week = 7 * 24 * hour;
        w.node
            .write(&[
                WriteOp::upsert(
                    Kind::Entity,
                    "default",
                    json!({"id": "ahead", "name": "n", "created_at": now + hour, "updated_at": now + hour}),
                ),
                WriteOp::upsert(
                    Kind::Note,
                    "default",
                    json!({"id": "behind", "content": "c", "created_at": now - week, "updated_at": now - week}),
                ),
            ])
            .unwrap();
        let ahead = w
            .node
            .get_json(Kind::Entity, "default", "ahead", None)
            .unwrap()
            .unwrap();
        let t = ahead["created_at"].as_i64().unwrap();
        assert!(
            t < now + hivesync::ops::MAX_CLOCK_AHEAD_US && t >= now,
            "{t} vs {now}"
        );
        assert_eq!(
            ahead["updated_at"].as_i64().unwrap(),
            ahead["created_at"].as_i64().unwrap()
        );
        let behind = w
            .node
            .get_json(Kind::Note, "default", "behind", None)
            .unwrap()
            .unwrap();
        assert_eq!(behind["created_at"], now - week);
        assert_eq!(behind["updated_at"], now - week);
    }

    #[test]
    fn local_vector_writes_are_taken_back_to_the_nodes_embedding() {
        // The replica holds each embedding once, in its index: a local overwrite, a refusal
        // that takes it back, and a local delete the node then confirms.
        let w = World::new();
        w.node
            .write(&[ent("a", "ant"), vector("a", [1.0, 0.0])])
            .unwrap();
        w.feed(100, None);
        assert_eq!(embedding(&w, "a"), Some(vec![1.0, 0.0]));
        let lw = outbox::write_local(&w.replica, vec![vector("a", [0.0, 1.0])]).unwrap();
        assert_eq!(embedding(&w, "a"), Some(vec![0.0, 1.0]), "visible at once");
        let near = query::knn(
            &w.replica,
            &query::KnnQuery {
                model: "m".into(),
                embedding: vec![0.0, 1.0],
                k: 1,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(near[0].subject, "a");
        assert!(
            near[0].distance < 1e-6,
            "the index holds the local embedding"
        );
        outbox::reject(&w.replica, lw.n).unwrap();
        assert_eq!(embedding(&w, "a"), Some(vec![1.0, 0.0]), "taken back");
        outbox::write_local(
            &w.replica,
            vec![WriteOp::delete(Kind::Entity, "default", "a")],
        )
        .unwrap();
        assert_eq!(embedding(&w, "a"), None, "the cascade ran locally");
        assert!(w.upload(false).is_empty());
        w.feed(100, None);
        assert_eq!(outbox::status(&w.replica).unwrap().pending, 0);
        assert_eq!(w.replica_digest(), w.node_digest(), "converged");
        assert!(schema::vec_index_problems(&w.replica).unwrap().is_empty());
    }

    #[test]
    fn local_writes_show_at_once_stay_on_top_and_land_once() {
        let w = World::new();
        w.node.write(&[ent("b", "bee"), ent("c", "sea")]).unwrap();
        w.node
            .write(&[ent("d", "dee"), edge("x", "d", "b")])
            .unwrap();
        w.feed(100, None);

        // Offline: new rows, an update, a delete that cascades to an edge.
        let lw =
            outbox::write_local(&w.replica, vec![ent("a", "quokka"), edge("y", "a", "b")]).unwrap();
        assert_eq!(lw.n, 1);
        outbox::write_local(&w.replica, vec![ent("c", "sea local")]).unwrap();
        outbox::write_local(
            &w.replica,
            vec![WriteOp::delete(Kind::Entity, "default", "d")],
        )
        .unwrap();
        // An upsert without an id gets one here, and the node will write that same id.
        let gen = outbox::write_local(
            &w.replica,
            vec![WriteOp::upsert(
                Kind::Note,
                "default",
                json!({"content": "wombat notes"}),
            )],
        )
        .unwrap();
        assert_eq!(w.name(Kind::Entity, "a").as_deref(), Some("quokka"));
        assert_eq!(w.search("quokka"), 1, "full-text follows local writes");
        assert_eq!(w.search("wombat"), 1);
        assert!(w.name(Kind::Edge, "x").is_none(), "the cascade ran locally");
        let st = outbox::status(&w.replica).unwrap();
        assert_eq!((st.pending, st.unsent), (4, 4));

        // Meanwhile another client writes at the node: one row we changed, one new.
        w.node
            .write(&[ent("c", "sea remote"), ent("e", "emu")])
            .unwrap();
        w.feed(1, None);
        assert_eq!(w.name(Kind::Entity, "e").as_deref(), Some("emu"));
        assert_eq!(
            w.name(Kind::Entity, "c").as_deref(),
            Some("sea local"),
            "a pending write stays on top of newer node changes"
        );
        assert!(w.name(Kind::Entity, "d").is_none());
        assert_eq!(w.search("quokka"), 1);

        // Online: the first upload's answers are lost; the second sends everything again.
        assert!(w.upload(true).is_empty());
        assert!(w.upload(false).is_empty());
        w.feed(3, None);
        assert_eq!(outbox::status(&w.replica).unwrap().pending, 0);
        assert_eq!(w.replica_digest(), w.node_digest(), "converged");
        assert_eq!(
            w.node
                .get_json(Kind::Note, "default", &gen.ids[0], None)
                .unwrap()
                .map(|v| v["content"].clone()),
            Some(json!("wombat notes"))
        );
        // Exactly once: 4 node writes + 4 uploads, one change per row written.
        let n_changes = w
            .node
            .changes_since(0, &ChangeFilter::default(), 1000)
            .unwrap()
            .len();
        assert_eq!(
            n_changes,
            2 + 2 + 2 + 2 + 1 + 1 + 1 + 1,
            "no write applied twice"
        );
        assert_eq!(w.search("quokka"), 1);
    }

    #[test]
    fn an_origin_that_does_not_add_up_is_refused_by_the_store() {
        let w = World::new();
        let first = Origin {
            client: "c".into(),
            n: 2,
            entries: Vec::new(),
            principal: None,
        };
        w.node.write_from(&[ent("a", "ant")], Some(&first)).unwrap();
        // With the ledger at 2, a batch 2..=3 skips its first write: counts that lie would
        // reach past the ops.
        let bad = Origin {
            client: "c".into(),
            n: 3,
            entries: vec![5, 1],
            principal: None,
        };
        let two = [ent("a", "ant"), ent("b", "bee")];
        let e = w.node.write_from(&two, Some(&bad)).unwrap_err();
        assert!(e.to_string().contains("`entries` counts 6 ops"), "{e}");
        let zero = Origin {
            client: "c".into(),
            n: 0,
            entries: Vec::new(),
            principal: None,
        };
        assert!(w.node.write_from(&[ent("a", "ant")], Some(&zero)).is_err());
        assert_eq!(w.node.head().unwrap(), 1, "nothing written after the first");
    }

    #[test]
    fn a_refused_write_is_taken_back_and_its_neighbours_land() {
        let w = World::new();
        w.node.write(&[ent("b", "bee")]).unwrap();
        w.feed(100, None);
        outbox::write_local(&w.replica, vec![ent("a", "ant")]).unwrap();
        outbox::write_local(&w.replica, vec![ent("b", "bee local")]).unwrap();
        outbox::write_local(&w.replica, vec![edge("y", "a", "b")]).unwrap();
        outbox::write_local(&w.replica, vec![ent("c", "cat")]).unwrap();
        // Refused (say, a narrowed token): only that entry is taken back.
        let mut taken = outbox::reject(&w.replica, 2).unwrap().unwrap();
        // As written, with the time it was made stamped on it.
        let data = taken[0].data.as_mut().unwrap().as_object_mut().unwrap();
        assert!(data.remove("created_at").unwrap().as_i64().unwrap() > 0);
        assert!(data.remove("updated_at").is_some());
        assert_eq!(taken, vec![ent("b", "bee local")]);
        assert_eq!(
            w.name(Kind::Entity, "b").as_deref(),
            Some("bee"),
            "back to the node's"
        );
        assert!(
            w.name(Kind::Edge, "y").is_some(),
            "the entries after it stay"
        );
        assert_eq!(w.name(Kind::Entity, "c").as_deref(), Some("cat"));

        // Refused by the node itself: the edge's target was deleted there first.
        w.node
            .write(&[WriteOp::delete(Kind::Entity, "default", "b")])
            .unwrap();
        assert_eq!(
            w.upload(false),
            vec![3],
            "the edge to a deleted entity is refused"
        );
        assert!(w.name(Kind::Edge, "y").is_none(), "and undone here");
        w.feed(100, None);
        assert_eq!(outbox::status(&w.replica).unwrap().pending, 0);
        assert_eq!(w.replica_digest(), w.node_digest());
    }

    #[test]
    fn a_node_delete_that_cascades_keeps_local_rows_on_top() {
        let w = World::new();
        w.node.write(&[ent("b", "bee")]).unwrap();
        w.feed(100, None);
        // Locally: a (new) and an edge a -> b; at the node, b is deleted.
        outbox::write_local(&w.replica, vec![ent("a", "ant"), edge("y", "a", "b")]).unwrap();
        w.node
            .write(&[WriteOp::delete(Kind::Entity, "default", "b")])
            .unwrap();
        w.feed(100, None);
        // The cascade took the edge; the entry that wrote it was redone, and fails now (its
        // target is gone), so it shows nothing until the node judges it.
        assert!(w.name(Kind::Entity, "b").is_none());
        assert_eq!(
            w.name(Kind::Entity, "a"),
            None,
            "the entry is all or nothing"
        );
        assert_eq!(w.upload(false), vec![1]);
        w.feed(100, None);
        assert_eq!(w.replica_digest(), w.node_digest());

        // And when the pending entries re-create the target, the edge stays on top.
        w.node.write(&[ent("b", "bee")]).unwrap();
        w.feed(100, None);
        outbox::write_local(&w.replica, vec![ent("b", "bee local")]).unwrap();
        outbox::write_local(&w.replica, vec![edge("z", "b", "b")]).unwrap();
        w.node
            .write(&[WriteOp::delete(Kind::Entity, "default", "b")])
            .unwrap();
        w.feed(100, None);
        assert_eq!(w.name(Kind::Entity, "b").as_deref(), Some("bee local"));
        assert!(
            w.name(Kind::Edge, "z").is_some(),
            "redone after the cascade"
        );
        assert!(w.upload(false).is_empty());
        w.feed(100, None);
        assert_eq!(w.replica_digest(), w.node_digest());
    }

    #[test]
    fn a_snapshot_keeps_pending_writes_on_top() {
        let w = World::new();
        w.node.write(&[ent("b", "bee")]).unwrap();
        w.feed(100, None);
        outbox::write_local(&w.replica, vec![ent("a", "ant"), ent("b", "bee local")]).unwrap();
        w.node.write(&[ent("c", "cat")]).unwrap();
        let snap = w.node.snapshot(&ChangeFilter::default()).unwrap();
        apply::snapshot_begin(&w.replica, &ChangeFilter::default()).unwrap();
        apply::snapshot_rows(&w.replica, &snap.rows).unwrap();
        apply::snapshot_finish(&w.replica, snap.at).unwrap();
        assert_eq!(w.name(Kind::Entity, "a").as_deref(), Some("ant"));
        assert_eq!(w.name(Kind::Entity, "b").as_deref(), Some("bee local"));
        assert_eq!(w.name(Kind::Entity, "c").as_deref(), Some("cat"));
        w.upload(false);
        w.feed(100, None);
        assert_eq!(w.replica_digest(), w.node_digest());
    }

    #[test]
    /// Found by the property test: undoing an entry gives an edge back a triple that a later
    /// pending edge holds now; entries that held a triple are undone together.
    fn an_undone_edge_gets_its_triple_back() {
        let w = World::new();
        w.node
            .write(&[ent("k0", "seed"), ent("k1", "seed")])
            .unwrap();
        w.feed(1, None);
        outbox::write_local(&w.replica, vec![op(0, 0, 0), op(83, 204, 82)]).unwrap();
        w.upload(false);
        outbox::write_local(&w.replica, vec![op(144, 184, 144)]).unwrap();
        w.feed(1, None);
        outbox::write_local(
            &w.replica,
            vec![op(12, 0, 12), op(44, 188, 45), op(219, 205, 217)],
        )
        .unwrap();
        outbox::write_local(&w.replica, vec![op(83, 138, 83)]).unwrap();
        w.upload(true);
        w.feed(1, None);
        w.upload(false);
        w.feed(7, None);
        assert_eq!(outbox::status(&w.replica).unwrap().pending, 0);
        assert_eq!(w.replica_digest(), w.node_digest());
    }

    /// One step of the randomized schedule.
    #[derive(Clone, Debug)]
    enum Step {
        Local(Vec<(u8, u8)>),
        Node(Vec<(u8, u8)>),
        Feed(usize),
        Upload { lose_acks: bool, batch: usize },
    }

    fn op(kind: u8, i: u8, v: u8) -> WriteOp {
        let id = format!("k{}", i % 6);
        match kind % 4 {
            0 | 1 => ent(&id, &format!("v{v}")),
            2 => WriteOp::delete(Kind::Entity, "default", &id),
            _ => edge(
                &format!("x{}", v % 3),
                &id,
                &format!("k{}", (i % 6 + 1) % 6),
            ),
        }
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        let ops = || prop::collection::vec((any::<u8>(), any::<u8>()), 1..4);
        prop::collection::vec(
            prop_oneof![
                3 => ops().prop_map(Step::Local),
                2 => ops().prop_map(Step::Node),
                2 => (1usize..6).prop_map(Step::Feed),
                2 => (any::<bool>(), 1usize..5).prop_map(|(lose_acks, batch)| Step::Upload { lose_acks, batch }),
            ],
            1..30,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: std::env::var("OUTBOX_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64), ..ProptestConfig::default() })]
        /// Any schedule of local writes, other clients' writes, partial feeds and uploads
        /// (answers lost or not): in the end the replica equals the node, no pending write
        /// is left, and each local write that the node accepted landed exactly once.
        #[test]
        fn replicas_converge_and_nothing_lands_twice(steps in steps()) {
            let w = World::new();
            w.node.write(&[ent("k0", "seed"), ent("k1", "seed")]).unwrap();
            let mut local_ok = 0usize;
            let mut refused = 0usize;
            for s in &steps {
                match s {
                    Step::Local(v) => {
                        let ops: Vec<_> = v.iter().enumerate().map(|(i, (k, x))| op(*k, *x, i as u8 ^ *k)).collect();
                        match outbox::write_local(&w.replica, ops) {
                            Ok(_) => local_ok += 1,
                            // The only refusals these ops can meet here: an edge to an entity
                            // this replica does not have, a second edge with one triple.
                            Err(e) => prop_assert!(
                                e.to_string().contains("is not an entity")
                                    || e.to_string().contains("already exists with id"),
                                "a local write failed: {e}"
                            ),
                        }
                    }
                    Step::Node(v) => {
                        let ops: Vec<_> = v.iter().map(|(k, x)| op(*k, *x, *k)).collect();
                        let _ = w.node.write(&ops);
                    }
                    Step::Feed(b) => w.feed(*b, None),
                    Step::Upload { lose_acks, batch } => {
                        refused += w.upload_batched(*lose_acks, *batch).len()
                    }
                }
            }
            refused += w.upload(false).len();
            w.feed(7, None);
            prop_assert_eq!(outbox::status(&w.replica).unwrap().pending, 0);
            prop_assert_eq!(w.replica_digest(), w.node_digest());
            // Each accepted local write is in the node's ledger once: its number advanced by
            // exactly the accepted ones.
            let ledger: i64 = w.node.read(|c| Ok(c.query_row(
                "SELECT coalesce(max(n), 0) FROM client_writes", [], |r| r.get(0))?)).unwrap();
            prop_assert!(ledger as usize <= local_ok);
            prop_assert!(local_ok == 0 || ledger as usize + refused >= local_ok);
        }
    }
}
