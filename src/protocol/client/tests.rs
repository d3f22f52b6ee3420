use super::*;
use crate::model::{Kind, Op};
use std::time::Duration;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

pub(super) fn cfg(from: Option<i64>) -> ClientConfig {
    ClientConfig {
        client: "t".into(),
        token: Some("tok".into()),
        sub: "s".into(),
        from,
        namespaces: None,
        kinds: None,
        seed: 7,
    }
}

pub(super) fn change(seq: i64) -> Change {
    Change {
        seq,
        tx: seq,
        ts: 0,
        ns: "default".into(),
        kind: Kind::Entity,
        op: Op::Delete,
        id: format!("e{seq}"),
        model: None,
        data: None,
        embedding: None,
    }
}

pub(super) fn welcome(head: i64) -> ServerMsg {
    ServerMsg::Welcome {
        protocol: 1,
        node: "n".into(),
        head,
        horizon: 0,
        publish_key: None,
    }
}

fn batch(prev: i64, seqs: &[i64]) -> ServerMsg {
    ServerMsg::Changes {
        sub: "s".into(),
        prev,
        changes: seqs.iter().map(|&s| change(s)).collect(),
    }
}

fn error(code: ErrorCode) -> ServerMsg {
    ServerMsg::Error(ErrorMsg::new(code, "no"))
}

/// A session subscribed on a fresh connection.
fn subscribed(from: Option<i64>, head: i64) -> ClientSession {
    let mut s = ClientSession::new(cfg(from));
    s.connected();
    s.frame(welcome(head), 0);
    s
}

fn delay(actions: &[ClientAction]) -> Option<Duration> {
    actions.iter().find_map(|a| match a {
        ClientAction::Reconnect { after, .. } => Some(*after),
        _ => None,
    })
}

fn fatal(actions: &[ClientAction]) -> Option<&ClientError> {
    actions.iter().find_map(|a| match a {
        ClientAction::Fatal(e) => Some(e),
        _ => None,
    })
}

#[test]
fn hello_then_subscribe_from_the_cursor() {
    let mut s = ClientSession::new(cfg(Some(5)));
    assert_eq!(
        s.connected(),
        vec![ClientAction::Send(ClientMsg::Hello {
            token: Some("tok".into()),
            client: Some("t".into())
        })]
    );
    let a = s.frame(welcome(9), 0);
    assert!(
        matches!(&a[..], [ClientAction::Welcome { .. }, ClientAction::Send(ClientMsg::Subscribe(Subscribe { sub, from: Some(5), .. }))] if sub == "s"),
        "{a:?}"
    );
}

#[test]
fn a_cursor_past_the_head_is_fatal() {
    let mut s = ClientSession::new(cfg(Some(10)));
    s.connected();
    let a = s.frame(welcome(3), 0);
    assert_eq!(
        fatal(&a),
        Some(&ClientError::AheadOfHead {
            cursor: 10,
            head: 3
        })
    );
    assert!(s.stopped());
    assert!(s.connected().is_empty(), "a stopped session says nothing");
}

#[test]
fn batches_are_gap_checked_and_acked_once_applied() {
    let mut s = subscribed(Some(5), 9);
    let a = s.frame(batch(5, &[6, 7]), 0);
    assert!(matches!(&a[..], [ClientAction::Apply { prev: 5, changes }] if changes.len() == 2));
    // Handed out but not yet confirmed: the next batch continues from 7 all the same.
    let a = s.frame(batch(7, &[8]), 0);
    assert!(matches!(&a[..], [ClientAction::Apply { prev: 7, .. }]));
    assert_eq!(
        s.applied(7),
        vec![ClientAction::Send(ClientMsg::Ack {
            sub: "s".into(),
            seq: 7
        })]
    );
    assert_eq!(s.cursor(), Some(7));
    // A gap: nothing applied, reconnect, resume from the last confirmed seq.
    let a = s.frame(batch(9, &[10]), 0);
    assert!(delay(&a).is_some(), "{a:?}");
    assert!(!a.iter().any(|x| matches!(x, ClientAction::Apply { .. })));
    s.connected();
    let a = s.frame(welcome(10), 0);
    assert!(matches!(
        &a[..],
        [
            ClientAction::Welcome { .. },
            ClientAction::Send(ClientMsg::Subscribe(Subscribe { from: Some(7), .. }))
        ]
    ));
}

#[test]
fn a_failed_apply_resumes_from_the_last_confirmed_seq() {
    let mut s = subscribed(Some(1), 5);
    s.frame(batch(1, &[2, 3]), 0);
    let a = s.apply_failed("disk", 0);
    assert!(delay(&a).is_some());
    s.connected();
    let a = s.frame(welcome(5), 0);
    assert!(matches!(
        &a[..],
        [
            ClientAction::Welcome { .. },
            ClientAction::Send(ClientMsg::Subscribe(Subscribe { from: Some(1), .. }))
        ]
    ));
}

#[test]
fn a_snapshot_begins_fills_finishes_and_sets_the_cursor() {
    let mut s = subscribed(None, 4);
    let chunk = |done| ServerMsg::Snapshot {
        sub: "s".into(),
        at: 4,
        rows: vec![change(4)],
        done,
    };
    let a = s.frame(chunk(false), 0);
    assert!(matches!(
        &a[..],
        [
            ClientAction::SnapshotBegin { at: 4 },
            ClientAction::SnapshotRows(_)
        ]
    ));
    let a = s.frame(chunk(true), 0);
    assert!(matches!(
        &a[..],
        [
            ClientAction::SnapshotRows(_),
            ClientAction::SnapshotFinish { at: 4 }
        ]
    ));
    s.applied(4);
    let a = s.frame(batch(4, &[5]), 0);
    assert!(matches!(&a[..], [ClientAction::Apply { prev: 4, .. }]));
}

#[test]
fn a_lost_connection_aborts_an_open_snapshot_and_refuses_writes_in_flight() {
    let mut s = subscribed(None, 4);
    s.frame(
        ServerMsg::Snapshot {
            sub: "s".into(),
            at: 4,
            rows: vec![],
            done: false,
        },
        0,
    );
    let sent = s.write(42, vec![], None);
    assert!(matches!(
        &sent[..],
        [ClientAction::Send(ClientMsg::Write { .. })]
    ));
    let a = s.disconnected("reset", 0);
    assert_eq!(a[0], ClientAction::SnapshotAbort);
    assert!(
        matches!(&a[1], ClientAction::Reject { id: 42, error } if error.code == ErrorCode::Overloaded)
    );
    assert!(delay(&a).is_some());
    assert!(
        s.disconnected("closed", 0).is_empty(),
        "the socket's close after the session's own reconnect is no second outage"
    );
    // Changes before the last chunk are a protocol fault, handled the same way.
    let mut s = subscribed(None, 4);
    s.frame(
        ServerMsg::Snapshot {
            sub: "s".into(),
            at: 4,
            rows: vec![],
            done: false,
        },
        0,
    );
    let a = s.frame(batch(4, &[5]), 0);
    assert_eq!(a[0], ClientAction::SnapshotAbort);
    assert!(delay(&a).is_some());
}

#[test]
fn writes_are_answered_by_their_req() {
    let mut s = ClientSession::new(cfg(Some(0)));
    let a = s.write(1, vec![], None);
    assert!(
        matches!(&a[..], [ClientAction::Reject { id: 1, .. }]),
        "not connected: refused at once"
    );
    s.connected();
    s.frame(welcome(0), 0);
    let req = |a: &[ClientAction]| match a {
        [ClientAction::Send(ClientMsg::Write { req, .. })] => req.clone(),
        other => panic!("{other:?}"),
    };
    let r1 = req(&s.write(1, vec![], None));
    let r2 = req(&s.write(2, vec![], None));
    assert_ne!(r1, r2);
    assert_eq!(
        s.frame(ServerMsg::Written { req: r2, seq: 9 }, 0),
        vec![ClientAction::Resolve { id: 2, seq: 9 }]
    );
    let mut refused = ErrorMsg::new(ErrorCode::Forbidden, "not yours");
    refused.req = Some(r1);
    let a = s.frame(ServerMsg::Error(refused), 0);
    assert!(
        matches!(&a[..], [ClientAction::Reject { id: 1, error }] if error.code == ErrorCode::Forbidden),
        "a refused write is not a fatal error for the session: {a:?}"
    );
    assert!(!s.stopped());
}

#[test]
fn errors_split_into_fatal_and_retryable() {
    for code in [
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::BadRequest,
    ] {
        let mut s = subscribed(Some(0), 0);
        let a = s.frame(error(code), 0);
        assert!(matches!(fatal(&a), Some(ClientError::Refused(e)) if e.code == code));
        assert!(s.stopped());
    }
    for code in [
        ErrorCode::Overloaded,
        ErrorCode::Internal,
        ErrorCode::TooLarge,
    ] {
        let mut s = subscribed(Some(0), 0);
        let a = s.frame(error(code), 0);
        assert!(fatal(&a).is_none() && delay(&a).is_some(), "{code:?}");
    }
    let mut s = ClientSession::new(cfg(None));
    assert!(fatal(&s.undecodable("junk")).is_some());
}

#[test]
fn connect_failures_split_into_fatal_and_retryable() {
    let fatal_ones = [
        ConnectFailure::BadUrl("http://x".into()),
        ConnectFailure::Http(404),
        ConnectFailure::Http(400),
    ];
    for f in fatal_ones {
        let mut s = ClientSession::new(cfg(None));
        assert!(fatal(&s.connect_failed(f.clone(), 0)).is_some(), "{f:?}");
    }
    let retried = [
        ConnectFailure::Http(503),
        ConnectFailure::Http(429),
        ConnectFailure::Http(408),
        ConnectFailure::Network("refused".into()),
    ];
    for f in retried {
        let mut s = ClientSession::new(cfg(None));
        assert!(delay(&s.connect_failed(f.clone(), 0)).is_some(), "{f:?}");
    }
}

#[test]
fn backoff_grows_with_jitter_and_resets_after_a_healthy_connection() {
    let mut s = ClientSession::new(cfg(None));
    let mut ceilings = Vec::new();
    for attempt in 0..8u32 {
        let d = delay(&s.connect_failed(ConnectFailure::Network("x".into()), 0)).unwrap();
        let ceiling = BACKOFF_FIRST.saturating_mul(1 << attempt).min(BACKOFF_MAX);
        assert!(
            d <= ceiling && d >= ceiling / 2,
            "attempt {attempt}: {d:?} vs {ceiling:?}"
        );
        ceilings.push(ceiling);
    }
    assert_eq!(*ceilings.last().unwrap(), BACKOFF_MAX);
    // Jitter: two clients with other seeds do not wait the same.
    let waits: std::collections::BTreeSet<_> = (0..8u64)
        .map(|seed| {
            let mut s = ClientSession::new(ClientConfig { seed, ..cfg(None) });
            delay(&s.connect_failed(ConnectFailure::Network("x".into()), 0)).unwrap()
        })
        .collect();
    assert!(waits.len() > 1, "no jitter: {waits:?}");
    // A short-lived connection does not reset the backoff ...
    s.connected();
    s.frame(welcome(0), 1_000);
    let d = delay(&s.disconnected("bye", 2_000)).unwrap();
    assert!(d >= BACKOFF_MAX / 2, "{d:?}");
    // ... one subscribed for HEALTHY_AFTER does: the next outage starts from the first delay.
    s.connected();
    s.frame(welcome(0), 10_000);
    let d = delay(&s.disconnected("bye", 10_000 + HEALTHY_AFTER.as_millis() as u64)).unwrap();
    assert!(d <= BACKOFF_FIRST, "{d:?}");
}

#[test]
fn refusals_of_a_write_are_told_apart_from_failures_to_send_it() {
    use crate::protocol::client::is_refusal_code;
    for code in [
        ErrorCode::BadRequest,
        ErrorCode::Forbidden,
        ErrorCode::TooLarge,
    ] {
        assert!(is_refusal_code(code), "{code:?}");
    }
    for code in [
        ErrorCode::Overloaded,
        ErrorCode::Internal,
        ErrorCode::Unauthorized,
    ] {
        assert!(!is_refusal_code(code), "{code:?}");
    }
}

fn items(chain: &[(i64, i64)]) -> Vec<(i64, Change)> {
    chain
        .iter()
        .map(|&(prev, seq)| (prev, change(seq)))
        .collect()
}

pub(super) fn sent(actions: &[ClientAction]) -> Vec<&ClientMsg> {
    actions
        .iter()
        .filter_map(|a| match a {
            ClientAction::Send(m) => Some(m),
            _ => None,
        })
        .collect()
}

#[test]
fn an_external_feed_takes_over_when_live_and_is_gap_checked_like_the_nodes() {
    let mut s = subscribed(Some(5), 10);
    // Catch-up from the node, then live.
    assert!(matches!(
        s.frame(batch(5, &[6, 7]), 0)[..],
        [ClientAction::Apply { prev: 5, .. }]
    ));
    s.applied(7);
    s.frame(
        ServerMsg::Live {
            sub: "s".into(),
            seq: 7,
        },
        0,
    );
    let acts = s.go_external().unwrap();
    assert_eq!(sent(&acts), [&ClientMsg::Unsubscribe { sub: "s".into() }]);
    assert!(s.external());
    // What the node sent before it saw the unsubscribe is left to the other feed.
    assert!(s.frame(batch(7, &[8]), 0).is_empty());
    // The other feed resumes from before the cursor: what was handed out is dropped.
    let acts = s.external_changes(items(&[(5, 6), (6, 7), (7, 8), (8, 9)]), 0);
    match &acts[..] {
        [ClientAction::Apply { prev: 7, changes }] => {
            assert_eq!(changes.iter().map(|c| c.seq).collect::<Vec<_>>(), [8, 9])
        }
        other => panic!("{other:?}"),
    }
    // No acks for a subscription the node no longer holds.
    assert!(s.applied(9).is_empty());
    // Writes still go out on the connection.
    assert!(matches!(
        s.write(1, vec![], None)[..],
        [ClientAction::Send(ClientMsg::Write { .. })]
    ));
}

#[test]
fn a_break_in_the_external_chain_hands_back_to_the_node_from_the_cursor() {
    let mut s = subscribed(Some(3), 3);
    s.frame(
        ServerMsg::Live {
            sub: "s".into(),
            seq: 3,
        },
        0,
    );
    s.go_external().unwrap();
    assert!(matches!(
        s.external_changes(items(&[(3, 4)]), 0)[..],
        [ClientAction::Apply { prev: 3, .. }]
    ));
    s.applied(4);
    // 5 and 6 are missing from the stream (purged): nothing of the batch is applied, and the
    // node's feed resumes from the cursor on the same connection.
    let acts = s.external_changes(items(&[(4, 5), (6, 7)]), 0);
    assert!(!s.external());
    match sent(&acts)[..] {
        [ClientMsg::Subscribe(sub)] => assert_eq!(sub.from, Some(4)),
        ref other => panic!("{other:?}"),
    }
    assert!(!acts.iter().any(|a| matches!(a, ClientAction::Apply { .. })));
    // The node's frames count again, and are acked again.
    assert!(matches!(
        s.frame(batch(4, &[5, 6, 7]), 0)[..],
        [ClientAction::Apply { prev: 4, .. }]
    ));
    assert!(matches!(
        s.applied(7)[..],
        [ClientAction::Send(ClientMsg::Ack { seq: 7, .. })]
    ));
    // Changes offered while not external are not the session's to take.
    assert!(s.external_changes(items(&[(7, 8)]), 0).is_empty());
}

#[test]
fn an_external_feed_chosen_before_connecting_skips_the_subscription() {
    let mut s = ClientSession::new(cfg(Some(9)));
    assert!(s.go_external().unwrap().is_empty());
    s.connected();
    // Welcome: no subscribe, but writes may go out.
    assert!(matches!(
        &s.frame(welcome(12), 0)[..],
        [ClientAction::Welcome { from: Some(9), .. }]
    ));
    assert!(s.subscribed());
    // The feed breaks: the node's feed takes over from the cursor.
    let acts = s.external_lost("the stream ended", 0);
    match sent(&acts)[..] {
        [ClientMsg::Subscribe(sub)] => assert_eq!(sub.from, Some(9)),
        ref other => panic!("{other:?}"),
    }
    // A lost connection ends the external feed too: the next one subscribes.
    let mut s = ClientSession::new(cfg(Some(9)));
    s.go_external().unwrap();
    s.connected();
    s.frame(welcome(12), 0);
    s.disconnected("reset", 0);
    assert!(!s.external());
    s.connected();
    assert!(matches!(
        sent(&s.frame(welcome(12), 0))[..],
        [ClientMsg::Subscribe(_)]
    ));
    // Without a cursor (a snapshot is due) there is nothing to continue from.
    assert!(ClientSession::new(cfg(None)).go_external().is_none());
}

/// The hand-over between an external feed (the NATS stream an edge reads) and the node's own
/// feed, as a property: whatever the stream skips (trimmed, purged, a stand-in for a change too
/// large for it), repeats (a republish after a crash) or replays from before the cursor, and
/// however its messages are batched, and with node frames that arrive after the session ended
/// its subscription, the changes applied are the log's, each once, in order. (Native only:
/// proptest's runner is not set up for wasm-bindgen-test.)
#[cfg(not(target_arch = "wasm32"))]
mod handover {
    use super::*;
    use proptest::prelude::*;

    /// What the shell does with the session's actions: applies (checking each batch continues
    /// what it applied), and notes what was sent.
    struct Shell {
        applied: Vec<i64>,
        sent: Vec<ClientMsg>,
    }

    impl Shell {
        fn run(&mut self, s: &mut ClientSession, acts: Vec<ClientAction>) {
            let mut queue = std::collections::VecDeque::from(acts);
            while let Some(a) = queue.pop_front() {
                match a {
                    ClientAction::Apply { prev, changes } => {
                        assert_eq!(prev, self.applied.last().copied().unwrap_or(0), "a gap");
                        let last = changes.last().unwrap().seq;
                        self.applied.extend(changes.iter().map(|c| c.seq));
                        queue.extend(s.applied(last));
                    }
                    ClientAction::Send(m) => self.sent.push(m),
                    ClientAction::Welcome { .. } => {}
                    ClientAction::Reconnect { why, .. } => panic!("no reconnect expected: {why}"),
                    ClientAction::Fatal(e) => panic!("fatal: {e}"),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn the_changes_applied_are_the_logs_once_in_order(
            n in 1i64..60,
            // Per seq: 0 = in the stream once, 1 = missing from it, 2 = twice.
            fate in prop::collection::vec(prop_oneof![6 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)], 60),
            chunks in prop::collection::vec(1usize..8, 200),
            catchups in prop::collection::vec(1i64..10, 200),
            stale in prop::collection::vec(any::<bool>(), 200),
        ) {
            // The stream: the log's changes with their true `prev`, some missing, some repeated,
            // in log order.
            let mut stream: Vec<(i64, i64)> = Vec::new();
            for seq in 1..=n {
                match fate[seq as usize - 1] {
                    1 => {}
                    2 => {
                        stream.push((seq - 1, seq));
                        stream.push((seq - 1, seq));
                    }
                    _ => stream.push((seq - 1, seq)),
                }
            }
            let mut s = ClientSession::new(cfg(Some(0)));
            let mut shell = Shell { applied: Vec::new(), sent: Vec::new() };
            // Chosen before connecting: the stream from the cursor, no subscription at the node.
            assert!(s.go_external().unwrap().is_empty());
            let mut acts = s.connected();
            acts.extend(s.frame(ServerMsg::Welcome { protocol: 1, node: "n".into(), head: n, horizon: 0, publish_key: None }, 0));
            shell.run(&mut s, acts);
            // Where the stream is read from: the first message after the cursor.
            let position = |cursor: i64| stream.iter().position(|m| m.1 > cursor).unwrap_or(stream.len());
            let mut at = 0;
            let mut step = 0;
            while shell.applied.len() < n as usize {
                step += 1;
                prop_assert!(step < 400, "no progress: applied {:?}", shell.applied);
                if s.external() {
                    if stale[step % stale.len()] {
                        // A node frame from before the unsubscribe: left to the stream.
                        let c = shell.applied.last().copied().unwrap_or(0);
                        let acts = s.frame(ServerMsg::Changes { sub: "s".into(), prev: c, changes: vec![change(c + 1)] }, 0);
                        prop_assert!(acts.is_empty());
                    }
                    if at >= stream.len() {
                        // The stream has nothing more (its tail is missing): it stalls, and the
                        // shell's watchdog hands back to the node.
                        let acts = s.external_lost("the stream ended", 0);
                        shell.run(&mut s, acts);
                        continue;
                    }
                    let k = chunks[step % chunks.len()].min(stream.len() - at);
                    let items = stream[at..at + k].iter().map(|&(p, q)| (p, change(q))).collect();
                    at += k;
                    let acts = s.external_changes(items, 0);
                    shell.run(&mut s, acts);
                } else {
                    // The node's feed from the cursor: the subscription the session sent, a
                    // catch-up of a few changes (or to the head), then `live`.
                    let Some(ClientMsg::Subscribe(sub)) = shell.sent.last().cloned() else {
                        panic!("the node's feed resumes only on a subscribe: {:?}", shell.sent.last());
                    };
                    let cursor = shell.applied.last().copied().unwrap_or(0);
                    prop_assert_eq!(sub.from, Some(cursor));
                    let upto = (cursor + catchups[step % catchups.len()]).min(n);
                    let acts = s.frame(ServerMsg::Changes { sub: "s".into(), prev: cursor, changes: (cursor + 1..=upto).map(change).collect() }, 0);
                    shell.run(&mut s, acts);
                    let acts = s.frame(ServerMsg::Live { sub: "s".into(), seq: upto }, 0);
                    let live = matches!(acts[..], [ClientAction::Live { .. }]);
                    prop_assert!(live, "{:?}", acts);
                    // Caught up: back to the stream, read from after the cursor.
                    let acts = s.go_external().unwrap();
                    let unsub = matches!(acts[..], [ClientAction::Send(ClientMsg::Unsubscribe { .. })]);
                    prop_assert!(unsub, "{:?}", acts);
                    at = position(upto);
                }
            }
            prop_assert_eq!(&shell.applied, &(1..=n).collect::<Vec<_>>());
        }
    }
}

#[test]
fn the_shell_is_told_of_the_welcome_and_of_a_node_error_it_would_not_see_otherwise() {
    // Shells (the relay, the browser, watch) take these from the session instead of peeking
    // into the frames themselves.
    let mut s = ClientSession::new(cfg(Some(4)));
    s.connected();
    let a = s.frame(welcome(9), 0);
    assert!(
        matches!(&a[0], ClientAction::Welcome { node, head: 9, from: Some(4), snapshot: false, publish_key: None } if node == "n"),
        "{a:?}"
    );
    // An error that answers no write and is not fatal: said, then a reconnect.
    let a = s.frame(error(ErrorCode::Overloaded), 0);
    assert!(matches!(&a[0], ClientAction::NodeError(e) if e.code == ErrorCode::Overloaded));
    assert!(delay(&a).is_some());
    // A fatal one is the Fatal action alone; one that answers a write is its Reject.
    let mut s = subscribed(Some(4), 9);
    let a = s.frame(error(ErrorCode::Unauthorized), 0);
    assert!(fatal(&a).is_some() && !a.iter().any(|x| matches!(x, ClientAction::NodeError(_))));
    // A welcome that ends the session (a cursor past the head) says no welcome.
    let mut s = ClientSession::new(cfg(Some(10)));
    s.connected();
    let a = s.frame(welcome(3), 0);
    assert!(!a.iter().any(|x| matches!(x, ClientAction::Welcome { .. })));
}

#[test]
fn a_renewed_token_goes_out_on_the_open_connection_and_into_the_next_hello() {
    let mut s = ClientSession::new(cfg(Some(3)));
    assert!(
        s.set_token("t2".into()).is_empty(),
        "not connected: kept for the hello"
    );
    assert!(
        matches!(&s.connected()[..], [ClientAction::Send(ClientMsg::Hello { token: Some(t), .. })] if t == "t2")
    );
    s.frame(welcome(3), 0);
    assert!(
        matches!(&s.set_token("t3".into())[..], [ClientAction::Send(ClientMsg::Auth { token })] if token == "t3")
    );
    assert!(
        s.set_token("t3".into()).is_empty(),
        "the same token again: nothing"
    );
    s.disconnected("reset", 1);
    assert!(
        matches!(&s.connected()[..], [ClientAction::Send(ClientMsg::Hello { token: Some(t), .. })] if t == "t3")
    );
}

#[test]
fn a_session_stopped_by_a_refused_token_restarts_with_a_fresh_one_from_its_cursor() {
    let mut s = subscribed(Some(4), 4);
    let acts = s.frame(error(ErrorCode::Unauthorized), 0);
    assert!(acts.iter().any(|a| matches!(a, ClientAction::Fatal(_))));
    assert!(s.connected().is_empty(), "stopped for good");
    s.restart_with_token("fresh".into());
    assert!(
        matches!(&s.connected()[..], [ClientAction::Send(ClientMsg::Hello { token: Some(t), .. })] if t == "fresh")
    );
    match sent(&s.frame(welcome(6), 0))[..] {
        [ClientMsg::Subscribe(sub)] => assert_eq!(sub.from, Some(4), "from the cursor it had"),
        ref other => panic!("{other:?}"),
    }
}
