//! The client session's hand-over between an external feed (the NATS stream an edge reads) and
//! the node's own feed, as a property: whatever the stream skips (trimmed, purged, a stand-in
//! for a change too large for it), repeats (a republish after a crash) or replays from before
//! the cursor, and however its messages are batched, and with node frames that arrive after
//! the session ended its subscription, the changes applied are the log's, each once, in order.
#![allow(clippy::unwrap_used)]

use hivesync::model::{Change, Kind, Op};
use hivesync::protocol::{ClientAction, ClientConfig, ClientMsg, ClientSession, ServerMsg};
use proptest::prelude::*;

fn change(seq: i64) -> Change {
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
        let mut s = ClientSession::new(ClientConfig {
            client: "p".into(),
            token: None,
            sub: "s".into(),
            from: Some(0),
            namespaces: None,
            kinds: None,
            seed: 1,
        });
        let mut shell = Shell { applied: Vec::new(), sent: Vec::new() };
        // Chosen before connecting: the stream from the cursor, no subscription at the node.
        assert!(s.go_external().unwrap().is_empty());
        let mut acts = s.connected();
        acts.extend(s.frame(ServerMsg::Welcome { protocol: 1, node: "n".into(), head: n, horizon: 0 }, 0));
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
                    let acts = s.external_lost();
                    shell.run(&mut s, acts);
                    continue;
                }
                let k = chunks[step % chunks.len()].min(stream.len() - at);
                let items = stream[at..at + k].iter().map(|&(p, q)| (p, change(q))).collect();
                at += k;
                let acts = s.external_changes(items);
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
