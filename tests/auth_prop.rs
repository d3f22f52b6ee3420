//! Property test of authorization end to end: random tokens with random read and write scopes
//! over six namespaces (exact names, `prefix*`, sometimes `*`) in a config file, a real node
//! started with it, and for every token:
//! - a subscription from 0 without `namespaces`, open while the CLI writes straight into the
//!   database file (bypassing auth) and other tokens write over the socket, receives exactly
//!   the changes of the namespaces the token may read: none of the others, all of these;
//! - a subscription with an explicit list is `forbidden` when the list names a namespace the
//!   token may not read, and otherwise receives exactly the changes of the listed namespaces;
//! - after all writes, a fresh subscription from 0 (changes up to `live`) and a snapshot
//!   subscription give the same answer from the log and from current state;
//! - a write outside the write scope (alone, or beside an allowed op) is refused with
//!   `forbidden` and writes nothing (log head unchanged, `hivesync get` finds nothing); a
//!   write inside succeeds (`written`, its changes in the log and in the feeds that may read
//!   them).
//!
//! Each case starts a node, so the case count is small (16, about 2 s each).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{assert_code, entity, Client, Feed, Node, NodeOpts};
use hivesync::model::WriteOp;
use hivesync::protocol::{ClientMsg, Encoding, ErrorCode, ServerMsg};
use proptest::prelude::*;
use serde_json::json;

/// The namespaces: pairs that share prefixes, so `prefix*` and exact names differ.
const NS: [&str; 6] = ["alpha", "alps", "beta", "bet", "gamma", "g"];
/// Scope patterns drawn from: every exact name, prefixes of one or several names, and one
/// prefix that matches nothing.
const PATTERNS: [&str; 13] = [
    "alpha", "alps", "beta", "bet", "gamma", "g", "al*", "alp*", "b*", "bet*", "g*", "gam*", "x*",
];

/// The scope rule, written out here so the test does not trust the code under test.
fn may(scope: &[String], ns: &str) -> bool {
    scope.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => ns.starts_with(prefix),
        None => p == ns,
    })
}

#[derive(Clone, Debug)]
struct TokenSpec {
    read: Vec<String>,
    write: Vec<String>,
    bin: bool,
    /// Namespaces named in the explicit-list subscription.
    list: Vec<usize>,
    /// Socket writes: each a list of target namespaces (one op per namespace).
    writes: Vec<Vec<usize>>,
}

fn scope() -> impl Strategy<Value = Vec<String>> {
    prop_oneof![
        1 => Just(vec!["*".to_string()]),
        6 => prop::collection::vec(prop::sample::select(&PATTERNS[..]), 0..=3)
            .prop_map(|v| v.into_iter().map(str::to_string).collect()),
    ]
}

fn token() -> impl Strategy<Value = TokenSpec> {
    (
        scope(),
        scope(),
        any::<bool>(),
        prop::collection::btree_set(0..NS.len(), 1..=3),
        prop::collection::vec(prop::collection::btree_set(0..NS.len(), 1..=2), 1..=3),
    )
        .prop_map(|(read, write, bin, list, writes)| TokenSpec {
            read,
            write,
            bin,
            list: list.into_iter().collect(),
            writes: writes
                .into_iter()
                .map(|w| w.into_iter().collect())
                .collect(),
        })
}

fn secret(i: usize) -> String {
    format!("secret-{i}-{}", i * 7919 + 13)
}

fn config(tokens: &[TokenSpec]) -> String {
    let mut c = String::from("name = \"auth-prop\"\nanonymous = \"never\"\n");
    for (i, t) in tokens.iter().enumerate() {
        c.push_str(&format!(
            "[[token]]\nname = \"t{i}\"\nsha256 = \"{}\"\nread = {:?}\nwrite = {:?}\n",
            hivesync::node::config::hash_token(&secret(i)),
            t.read,
            t.write
        ));
    }
    c
}

/// Every change in the log: seq -> namespace (each write here upserts one entity).
#[derive(Default)]
struct Log {
    seqs: BTreeMap<i64, String>,
    rows: BTreeSet<(String, String)>,
}

impl Log {
    fn add(&mut self, seq: i64, ns: &str, id: &str) {
        assert!(
            self.seqs.insert(seq, ns.to_string()).is_none(),
            "seq {seq} twice"
        );
        self.rows.insert((ns.to_string(), id.to_string()));
    }

    fn seqs_where(&self, f: impl Fn(&str) -> bool) -> BTreeSet<i64> {
        self.seqs
            .iter()
            .filter(|(_, ns)| f(ns))
            .map(|(s, _)| *s)
            .collect()
    }
}

/// The seqs a feed received, checked against what it should have received.
fn assert_feed(who: &str, feed: &Feed, want: &BTreeSet<i64>, log: &Log) {
    let got: BTreeSet<i64> = feed.seqs().into_iter().collect();
    let leaked: Vec<(i64, &String)> = got
        .difference(want)
        .map(|s| (*s, log.seqs.get(s).unwrap()))
        .collect();
    assert!(
        leaked.is_empty(),
        "{who}: received changes it may not read: {leaked:?}"
    );
    let missing: Vec<(i64, &String)> = want
        .difference(&got)
        .map(|s| (*s, log.seqs.get(s).unwrap()))
        .collect();
    assert!(missing.is_empty(), "{who}: changes missing: {missing:?}");
    for c in &feed.changes {
        assert_eq!(
            Some(&c.ns),
            log.seqs.get(&c.seq),
            "{who}: change {} arrived with the wrong namespace",
            c.seq
        );
    }
}

/// Read `c` until `done`, every message for `sub` going through `feed` (which checks order and
/// `prev` continuity).
async fn read_feed(c: &mut Client, sub: &str, feed: &mut Feed, done: impl Fn(&Feed) -> bool) {
    feed.read_until(c, sub, done).await;
}

/// Read what else arrives within `d` of the last message: nothing may come but changes the
/// feed may have.
async fn drain(c: &mut Client, sub: &str, feed: &mut Feed, d: Duration) {
    while let Some(ev) = c.next_event_within(d).await {
        match ev {
            common::Event::Msg(m) => assert!(feed.take(sub, &m), "unexpected message {m:?}"),
            other => panic!("subscription {sub} ended: {other:?}"),
        }
    }
}

/// Send a write and wait for its answer, handing feed messages for `sub` to `feed`.
async fn write_answer(
    c: &mut Client,
    req: &str,
    ops: Vec<WriteOp>,
    sub: &str,
    feed: &mut Feed,
) -> ServerMsg {
    c.send_write(req, ops).await;
    loop {
        let m = c.recv().await;
        match &m {
            ServerMsg::Written { req: r, .. } if r == req => return m,
            ServerMsg::Error(e) if e.req.as_deref() == Some(req) => return m,
            _ => assert!(feed.take(sub, &m), "unexpected message {m:?}"),
        }
    }
}

async fn run_case(tokens: Vec<TokenSpec>) {
    let node = Node::start_with(NodeOpts {
        config: Some(config(&tokens)),
        ..Default::default()
    })
    .await;
    let mut log = Log::default();

    // Rows in some namespaces before anyone subscribes: reached by catching up from the log.
    for ns in ["alpha", "bet", "g"] {
        let id = format!("pre-{ns}");
        let seq = node.cli_put("entity", ns, &json!({"id": id, "kind": "t", "name": id}));
        log.add(seq, ns, &id);
    }

    // Per token: A holds the subscription without `namespaces`; B the explicit-list one (when
    // allowed) and the writes.
    let mut conns = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let enc = if t.bin { Encoding::Bin } else { Encoding::Json };
        let mut a = Client::connect_enc(&node.url(), Some(enc)).await;
        a.hello(Some(&secret(i))).await;
        a.subscribe("all", Some(0), None).await;
        let mut b = Client::connect_enc(&node.url(), Some(enc)).await;
        b.hello(Some(&secret(i))).await;
        let list: Vec<String> = t.list.iter().map(|&n| NS[n].to_string()).collect();
        b.subscribe("list", Some(0), Some(list.clone())).await;
        let list_ok = list.iter().all(|n| may(&t.read, n));
        if !list_ok {
            let e = b.recv_error().await;
            assert_code(&e, ErrorCode::Forbidden);
            assert_eq!(e.sub.as_deref(), Some("list"), "{e:?}");
        }
        conns.push((a, b, list, list_ok, Feed::from(0), Feed::from(0)));
    }

    // The writer that bypasses auth: the CLI, straight into the file, every namespace.
    for ns in NS {
        let id = format!("cli-{ns}");
        let seq = node.cli_put("entity", ns, &json!({"id": id, "kind": "t", "name": id}));
        log.add(seq, ns, &id);
    }

    // Socket writes, token by token (so the log head tells whether a refused one wrote).
    for (i, t) in tokens.iter().enumerate() {
        let (_, b, _, _, _, list_feed) = &mut conns[i];
        for (w, targets) in t.writes.iter().enumerate() {
            let req = format!("w{w}");
            let ids: Vec<(String, String)> = targets
                .iter()
                .map(|&n| (NS[n].to_string(), format!("t{i}-w{w}-{}", NS[n])))
                .collect();
            let ops = ids.iter().map(|(ns, id)| entity(ns, id, id)).collect();
            let allowed = ids.iter().all(|(ns, _)| may(&t.write, ns));
            let head = node.head().await;
            let answer = write_answer(b, &req, ops, "list", list_feed).await;
            match answer {
                ServerMsg::Written { seq, .. } => {
                    assert!(allowed, "token t{i} ({:?}) wrote {ids:?}", t.write);
                    let first = seq - ids.len() as i64 + 1;
                    // Each op upserts one entity: one change each, in op order (the feeds
                    // and snapshots below show each row where it may be read).
                    for (k, (ns, id)) in ids.iter().enumerate() {
                        log.add(first + k as i64, ns, id);
                    }
                }
                ServerMsg::Error(e) => {
                    assert!(
                        !allowed,
                        "token t{i} ({:?}) refused {ids:?}: {e:?}",
                        t.write
                    );
                    assert_code(&e, ErrorCode::Forbidden);
                    assert_eq!(node.head().await, head, "a refused write moved the log");
                    for (ns, id) in &ids {
                        let out = node.cli(&["get", "entity", id, "--ns", ns]);
                        assert!(!out.status.success(), "refused write left {ns}/{id}");
                    }
                }
                other => panic!("unexpected answer {other:?}"),
            }
        }
    }
    let head = *log.seqs.keys().last().unwrap();
    assert_eq!(
        log.seqs.len() as i64,
        head,
        "the log holds exactly the writes made"
    );
    assert_eq!(node.head().await, head);

    // The live feeds: exactly the readable changes, none other. (The pause lets a change that
    // should not come arrive before the feeds are read; `drain` then reads what is left.)
    tokio::time::sleep(Duration::from_millis(150)).await;
    for (i, t) in tokens.iter().enumerate() {
        let (a, b, list, list_ok, all_feed, list_feed) = &mut conns[i];
        let want = log.seqs_where(|ns| may(&t.read, ns));
        let done = |f: &Feed| {
            !f.live.is_empty() && want.iter().all(|s| f.changes.iter().any(|c| c.seq == *s))
        };
        read_feed(a, "all", all_feed, done).await;
        drain(a, "all", all_feed, Duration::from_millis(20)).await;
        assert_feed(&format!("t{i} all"), all_feed, &want, &log);
        if *list_ok {
            let want = log.seqs_where(|ns| list.iter().any(|n| n == ns));
            let done = |f: &Feed| {
                !f.live.is_empty() && want.iter().all(|s| f.changes.iter().any(|c| c.seq == *s))
            };
            read_feed(b, "list", list_feed, done).await;
            drain(b, "list", list_feed, Duration::from_millis(20)).await;
            assert_feed(&format!("t{i} list {list:?}"), list_feed, &want, &log);
        } else {
            assert!(list_feed.changes.is_empty() && list_feed.live.is_empty());
        }
    }

    // After the writes: from 0 (everything up to `live` comes first), and a snapshot.
    for (i, t) in tokens.iter().enumerate() {
        let mut c = Client::connect(&node.url()).await;
        c.hello(Some(&secret(i))).await;
        c.subscribe("c0", Some(0), None).await;
        c.subscribe("snap", None, None).await;
        let (mut c0, mut snap) = (Feed::from(0), Feed::default());
        while c0.live.is_empty() || snap.live.is_empty() {
            let m = c.recv().await;
            assert!(c0.take("c0", &m) || snap.take("snap", &m), "{m:?}");
        }
        let want = log.seqs_where(|ns| may(&t.read, ns));
        assert_eq!(c0.live, [head], "t{i}: caught up at the head");
        assert_feed(&format!("t{i} from 0 after the writes"), &c0, &want, &log);
        assert!(snap.snapshot_done && snap.changes.is_empty());
        let rows: BTreeSet<(String, String)> = snap
            .snapshot
            .iter()
            .map(|r| (r.ns.clone(), r.id.clone()))
            .collect();
        let want_rows: BTreeSet<(String, String)> = log
            .rows
            .iter()
            .filter(|(ns, _)| may(&t.read, ns))
            .cloned()
            .collect();
        assert_eq!(rows, want_rows, "t{i} ({:?}): snapshot rows", t.read);
    }

    // A token may not pretend to be another: a hello is answered once per connection.
    let mut c = Client::connect(&node.url()).await;
    c.hello(Some(&secret(0))).await;
    c.send(&ClientMsg::Hello {
        token: Some(secret(1)),
        client: None,
    })
    .await;
    assert_code(&c.recv_error().await, ErrorCode::BadRequest);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 16,
        // Each case starts a node: keep shrinking short.
        max_shrink_iters: 16,
        ..ProptestConfig::default()
    })]

    #[test]
    fn scopes_hold_end_to_end(tokens in prop::collection::vec(token(), 2..=4)) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run_case(tokens));
    }
}
