//! The head probe of an edge fed from NATS: while it reads the stream, the edge asks the
//! primary for its head now and then over its link (a subscription to no namespace from the
//! edge's cursor, whose `live` names the head, then ended), and follows the primary's feed
//! once it has stayed behind a reported head too long. No I/O, no clock of its own: the
//! client session ([`super::client::ClientSession`], with an external feed) asks on its
//! schedule and hands it what the node sends for the probe, with the shell's time in ms.

use std::time::Duration;

use crate::protocol::{ClientMsg, ServerMsg, Subscribe};

/// How often an edge reading the NATS stream asks the primary for its head.
pub(crate) const PROBE_EVERY: Duration = Duration::from_secs(2);
/// How long an edge reading the stream may stay behind a head the primary reported before it
/// follows the primary's feed instead: a stream that stopped taking the primary's messages
/// (its byte limit with discard-new, a full disk) left edges at seq 145 while the primary
/// reached 1,200, with `/healthz` ok (issue 23).
pub(crate) const STALL_AFTER: Duration = Duration::from_secs(5);
/// The subscription ids of probes start with this.
const PREFIX: &str = "hivesync-head-";

/// The probe's state across one connection.
#[derive(Debug, Default)]
pub(crate) struct HeadProbe {
    /// The probe in flight (its subscription id), and how many were sent.
    in_flight: Option<String>,
    sent: u64,
    /// A head the primary reported that the edge had not reached, and when it reported it
    /// (the shell's clock, ms).
    behind: Option<(i64, u64)>,
}

/// What a message for the probe means.
#[derive(Debug, Default)]
pub(crate) struct Answer {
    /// What to send (the probe's end).
    pub(crate) send: Vec<ClientMsg>,
    /// The primary's head, when the message gave it.
    pub(crate) head: Option<i64>,
    /// The edge stayed behind this head for [`STALL_AFTER`]: follow the primary's feed.
    pub(crate) stalled: Option<i64>,
}

impl HeadProbe {
    /// The probe to send (from the edge's cursor `from`), unless one is in flight.
    pub(crate) fn ask(&mut self, from: Option<i64>) -> Option<ClientMsg> {
        if self.in_flight.is_some() {
            return None;
        }
        let from = from?;
        self.sent += 1;
        let sub = format!("{PREFIX}{}", self.sent);
        self.in_flight = Some(sub.clone());
        Some(ClientMsg::Subscribe(Subscribe {
            sub,
            from: Some(from),
            namespaces: Some(Vec::new()),
            kinds: None,
        }))
    }

    /// `m` as an answer to a probe (None: not one), with the edge at `applied` at `now_ms`;
    /// `external` says whether the edge reads the stream now (only then can it stall).
    pub(crate) fn answer(
        &mut self,
        m: &ServerMsg,
        applied: i64,
        external: bool,
        now_ms: u64,
    ) -> Option<Answer> {
        let (sub, head) = match m {
            ServerMsg::Live { sub, seq } => (sub, Some(*seq)),
            ServerMsg::Snapshot { sub, .. } | ServerMsg::Changes { sub, .. } => (sub, None),
            ServerMsg::Error(e) => (e.sub.as_ref()?, None),
            _ => return None,
        };
        if !sub.starts_with(PREFIX) {
            return None;
        }
        let mut out = Answer::default();
        let error = matches!(m, ServerMsg::Error(_));
        if self.in_flight.as_ref() == Some(sub) && (head.is_some() || error) {
            self.in_flight = None;
            if !error {
                out.send.push(ClientMsg::Unsubscribe { sub: sub.clone() });
            }
        }
        let Some(head) = head else { return Some(out) };
        out.head = Some(head);
        self.behind = match self.behind {
            _ if applied >= head => None,
            Some((h, since)) if applied < h => Some((h, since)),
            _ => Some((head, now_ms)),
        };
        if let Some((h, since)) = self.behind {
            if external && now_ms.saturating_sub(since) >= STALL_AFTER.as_millis() as u64 {
                self.behind = None;
                out.stalled = Some(h);
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shell's clock in these tests: a stall's length after the head was first reported.
    const NOW: u64 = 1_000 + STALL_AFTER.as_millis() as u64;

    fn live(sub: &str, seq: i64) -> ServerMsg {
        ServerMsg::Live {
            sub: sub.into(),
            seq,
        }
    }

    #[test]
    fn one_probe_at_a_time_ended_by_its_live() {
        let mut p = HeadProbe::default();
        assert!(p.ask(None).is_none(), "no cursor, no probe");
        let Some(ClientMsg::Subscribe(s)) = p.ask(Some(7)) else {
            panic!("no probe")
        };
        assert_eq!((s.from, s.namespaces.as_deref()), (Some(7), Some(&[][..])));
        assert!(p.ask(Some(7)).is_none(), "one in flight");
        let a = p.answer(&live(&s.sub, 9), 7, true, NOW).unwrap();
        assert_eq!(a.head, Some(9));
        assert!(matches!(&a.send[..], [ClientMsg::Unsubscribe { sub }] if *sub == s.sub));
        assert!(a.stalled.is_none(), "just behind");
        assert!(p.ask(Some(7)).is_some(), "the next one");
        assert!(
            p.answer(&live("edge", 9), 7, true, NOW).is_none(),
            "not a probe's"
        );
    }

    #[test]
    fn behind_a_reported_head_too_long_is_a_stall() {
        let mut p = HeadProbe {
            behind: Some((9, 1_000)),
            ..Default::default()
        };
        // Reading the primary's feed: not a stall of the stream.
        assert!(p
            .answer(&live("hivesync-head-1", 12), 7, false, NOW)
            .unwrap()
            .stalled
            .is_none());
        let a = p
            .answer(&live("hivesync-head-2", 12), 7, true, NOW)
            .unwrap();
        assert_eq!(a.stalled, Some(9));
        // Caught up: nothing pending.
        assert!(p
            .answer(&live("hivesync-head-3", 12), 12, true, NOW)
            .unwrap()
            .stalled
            .is_none());
        assert!(p.behind.is_none());
    }
}
