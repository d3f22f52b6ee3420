//! The session's policy for an external feed (an edge reading the primary's NATS stream): when
//! it is opened, when it is left, the head probe, the backoff between attempts.

use super::tests::{cfg, change, sent, welcome};
use super::*;
use crate::protocol::backoff::BACKOFF_FIRST;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

/// What the external-feed actions among `acts` are.
fn external_acts(acts: &[ClientAction]) -> Vec<&ClientAction> {
    acts.iter()
        .filter(|a| {
            matches!(
                a,
                ClientAction::OpenExternal
                    | ClientAction::LeaveExternal { .. }
                    | ClientAction::NodeHead { .. }
            )
        })
        .collect()
}

fn live(sub: &str, seq: i64) -> ServerMsg {
    ServerMsg::Live {
        sub: sub.into(),
        seq,
    }
}

#[test]
fn with_a_cursor_the_external_feed_is_tried_before_the_subscription() {
    let mut s = ClientSession::new(cfg(Some(9))).with_external_feed();
    let acts = s.connected();
    assert!(matches!(
        acts[..],
        [
            ClientAction::Send(ClientMsg::Hello { .. }),
            ClientAction::OpenExternal
        ]
    ));
    // The welcome comes first: the subscription waits for the feed's answer.
    assert!(matches!(
        s.frame(welcome(12), 0)[..],
        [ClientAction::Welcome { .. }]
    ));
    assert!(
        s.external_opened(Ok(()), 10).is_empty(),
        "opened: no subscription at the node"
    );
    assert!(s.external());
    // A second answer to the same attempt changes nothing.
    assert!(s.external_opened(Err("late".into()), 11).is_empty());
    assert!(s.external());

    // Not opened: the held subscription goes out, and the feed waits for a backoff.
    let mut s = ClientSession::new(cfg(Some(9))).with_external_feed();
    s.connected();
    s.frame(welcome(12), 0);
    let acts = s.external_opened(Err("nats down".into()), 100);
    assert!(matches!(
        sent(&acts)[..],
        [ClientMsg::Subscribe(Subscribe { from: Some(9), .. })]
    ));
    assert!(!s.external());
    // Caught up before the backoff ran out: the node's feed goes on.
    let acts = s.frame(live("s", 12), 110);
    assert!(external_acts(&acts).is_empty(), "{acts:?}");
    let at = s.next_tick().expect("a retry is scheduled once live");
    assert!(
        at > 100 && at <= 100 + BACKOFF_FIRST.as_millis() as u64,
        "{at}"
    );
    assert!(s.tick(at - 1).is_empty());
    assert!(matches!(s.tick(at)[..], [ClientAction::OpenExternal]));
    assert_eq!(s.next_tick(), None, "one attempt at a time");
    let acts = s.external_opened(Ok(()), at + 5);
    assert!(
        matches!(sent(&acts)[..], [ClientMsg::Unsubscribe { .. }]),
        "{acts:?}"
    );
}

#[test]
fn without_a_cursor_the_node_feeds_first_and_live_hands_over() {
    let mut s = ClientSession::new(cfg(None)).with_external_feed();
    assert_eq!(
        external_acts(&s.connected()).len(),
        0,
        "nothing to position the feed at"
    );
    assert!(matches!(
        sent(&s.frame(welcome(5), 0))[..],
        [ClientMsg::Subscribe(_)]
    ));
    s.frame(
        ServerMsg::Snapshot {
            sub: "s".into(),
            at: 5,
            rows: vec![change(5)],
            done: true,
        },
        0,
    );
    s.applied(5);
    let acts = s.frame(live("s", 5), 0);
    assert!(
        matches!(
            acts[..],
            [ClientAction::Live { seq: 5 }, ClientAction::OpenExternal]
        ),
        "{acts:?}"
    );
    // The stream no longer holds what follows the cursor: tried again after the backoff.
    let acts = s.external_opened(Err("trimmed".into()), 50);
    assert!(sent(&acts).is_empty(), "still subscribed at the node");
    assert!(s.next_tick().is_some());
    // A lost connection drops the wait's attempt; the next connection tries at once.
    s.disconnected("reset", 60);
    assert_eq!(s.next_tick(), None, "no retry while down");
    assert!(matches!(s.connected()[..], [_, ClientAction::OpenExternal]));
}

#[test]
fn a_stream_that_stays_behind_the_nodes_head_is_left() {
    let mut s = ClientSession::new(cfg(Some(3))).with_external_feed();
    s.connected();
    s.frame(welcome(3), 0);
    s.external_opened(Ok(()), 0);
    assert!(s.external());
    // A probe every PROBE_EVERY while the stream is read.
    let every = crate::protocol::probe::PROBE_EVERY.as_millis() as u64;
    assert_eq!(s.next_tick(), Some(every));
    let acts = s.tick(every);
    let [ClientMsg::Subscribe(probe)] = sent(&acts)[..] else {
        panic!("{acts:?}")
    };
    assert_eq!(
        (probe.from, probe.namespaces.as_deref()),
        (Some(3), Some(&[][..]))
    );
    let probe = probe.sub.clone();
    // The node reports head 9; the edge is at 3.
    let acts = s.frame(live(&probe, 9), every + 1);
    assert!(
        matches!(
            acts[..],
            [
                ClientAction::Send(ClientMsg::Unsubscribe { .. }),
                ClientAction::NodeHead { head: 9 }
            ]
        ),
        "{acts:?}"
    );
    assert!(s.external(), "just behind");
    // Still behind after STALL_AFTER: the stream is left and the node's feed resumes.
    let stall = crate::protocol::probe::STALL_AFTER.as_millis() as u64;
    let t = every + 1 + stall;
    let acts = s.tick(t);
    let [ClientMsg::Subscribe(p2)] = sent(&acts)[..] else {
        panic!("{acts:?}")
    };
    let p2 = p2.sub.clone();
    let acts = s.frame(live(&p2, 9), t);
    assert!(!s.external());
    assert!(
        acts.iter()
            .any(|a| matches!(a, ClientAction::LeaveExternal { stalled: true, .. })),
        "{acts:?}"
    );
    assert!(
        sent(&acts).iter().any(|m| matches!(m, ClientMsg::Subscribe(Subscribe { from: Some(3), sub, .. }) if sub == "s")),
        "{acts:?}"
    );
    // A break the shell reports is a leave too, with a backoff before the next attempt.
    s.frame(live("s", 9), t + 1);
    let at = s.next_tick().expect("retry");
    assert!(matches!(s.tick(at)[..], [ClientAction::OpenExternal]));
    s.external_opened(Ok(()), at);
    let acts = s.external_lost("the consumer ended", at + 1);
    assert!(
        matches!(&acts[0], ClientAction::LeaveExternal { stalled: false, why } if why == "the consumer ended"),
        "{acts:?}"
    );
    assert!(
        s.next_tick().is_none(),
        "not live: no retry before the node's live"
    );
}
