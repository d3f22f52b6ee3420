//! When a client session's live changes come from an external feed (an edge reading the
//! primary's NATS stream) and when they go back to the node's own: the policy the session
//! ([`super::client::ClientSession::with_external_feed`]) keeps for it, sans I/O, on the
//! shell's clock in ms. One backoff between attempts to open the feed (reset once one opens),
//! one head probe while it is read, one attempt open at a time.

use std::time::Duration;

use crate::protocol::backoff::Backoff;
use crate::protocol::probe::{HeadProbe, PROBE_EVERY, STALL_AFTER};

/// What a message for the head probe means to the session.
pub(crate) struct ProbeAnswer {
    /// What to send (the probe's end).
    pub(crate) send: Vec<crate::protocol::ClientMsg>,
    /// The node's head, when the message gave it.
    pub(crate) head: Option<i64>,
    /// Why to leave the external feed: it stayed behind the node's head too long.
    pub(crate) stalled: Option<String>,
}

/// The external feed's state across connections.
#[derive(Debug)]
pub(crate) struct ExternalFeed {
    backoff: Backoff,
    /// Not before this time (ms) is the feed opened again after it failed or was left.
    retry_at: Option<u64>,
    /// An attempt to open it is out with the shell.
    opening: bool,
    /// Asks the node for its head while the feed is read.
    probe: HeadProbe,
    /// When to ask next, while the feed is read.
    next_probe: Option<u64>,
}

impl ExternalFeed {
    pub(crate) fn new(seed: u64) -> Self {
        ExternalFeed {
            backoff: Backoff::new(seed),
            retry_at: None,
            opening: false,
            probe: HeadProbe::default(),
            next_probe: None,
        }
    }

    /// An attempt may start at `now_ms` (none out, no wait pending). `waited` says whether a
    /// pending wait counts (a new connection tries at once).
    pub(crate) fn may_open(&self, now_ms: u64, waited: bool) -> bool {
        !self.opening && (!waited || self.retry_at.is_none_or(|t| now_ms >= t))
    }

    pub(crate) fn opening(&self) -> bool {
        self.opening
    }

    /// The shell is asked to open the feed.
    pub(crate) fn start(&mut self) {
        self.opening = true;
        self.retry_at = None;
    }

    /// The attempt ended without the feed taking over (it is not read).
    pub(crate) fn unused(&mut self) {
        self.opening = false;
    }

    /// The feed took over at `now_ms`.
    pub(crate) fn opened(&mut self, now_ms: u64) {
        self.opening = false;
        self.backoff.reset();
        self.retry_at = None;
        self.probe = HeadProbe::default();
        self.next_probe = Some(now_ms + PROBE_EVERY.as_millis() as u64);
    }

    /// The feed could not be opened, or was left, at `now_ms`: the wait before the next try.
    pub(crate) fn failed(&mut self, now_ms: u64) -> Duration {
        self.opening = false;
        self.next_probe = None;
        let after = self.backoff.next_delay();
        self.retry_at = Some(now_ms + after.as_millis() as u64);
        after
    }

    /// The connection to the node ended: an attempt out is void, the probe starts afresh.
    pub(crate) fn connection_ended(&mut self) {
        self.opening = false;
        self.probe = HeadProbe::default();
        self.next_probe = None;
    }

    /// The head probe to send now (from the edge's cursor), unless one is in flight.
    pub(crate) fn ask_probe(&mut self, cursor: Option<i64>) -> Option<crate::protocol::ClientMsg> {
        self.probe.ask(cursor)
    }

    /// `m` as the probe's answer (None: not one), with the edge at `applied` at `now_ms`.
    pub(crate) fn answer_probe(
        &mut self,
        m: &crate::protocol::ServerMsg,
        applied: i64,
        external: bool,
        now_ms: u64,
    ) -> Option<ProbeAnswer> {
        let a = self.probe.answer(m, applied, external, now_ms)?;
        Some(ProbeAnswer {
            send: a.send,
            head: a.head,
            stalled: a.stalled.map(|h| {
                format!("the stream has not brought the node's changes for {STALL_AFTER:?} (at {applied}, the node at {h}: is the stream full, or refusing the node's messages?)")
            }),
        })
    }

    /// When the next retry may start (while one waits).
    pub(crate) fn retry_at(&self) -> Option<u64> {
        self.retry_at.filter(|_| !self.opening)
    }

    /// When to probe next (while the feed is read).
    pub(crate) fn next_probe(&self) -> Option<u64> {
        self.next_probe
    }

    /// A probe is due at `now_ms`: schedule the next.
    pub(crate) fn probe_due(&mut self, now_ms: u64) -> bool {
        match self.next_probe {
            Some(t) if now_ms >= t => {
                self.next_probe = Some(now_ms + PROBE_EVERY.as_millis() as u64);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_after_failures_and_reset_once_open() {
        let mut e = ExternalFeed::new(7);
        assert!(e.may_open(0, true));
        e.start();
        assert!(!e.may_open(0, false), "one attempt at a time");
        let first = e.failed(1_000).as_millis() as u64;
        assert!(!e.may_open(1_000, true));
        assert!(e.may_open(1_000, false), "a new connection tries at once");
        assert!(e.may_open(1_000 + first, true));
        e.start();
        let second = e.failed(5_000).as_millis() as u64;
        assert!(second >= first, "{second} after {first}");
        e.start();
        e.opened(9_000);
        assert_eq!(e.retry_at(), None);
        assert!(!e.probe_due(9_000));
        assert!(e.probe_due(9_000 + PROBE_EVERY.as_millis() as u64));
        let again = e.failed(20_000).as_millis() as u64;
        assert!(again <= first.max(crate::protocol::backoff::BACKOFF_FIRST.as_millis() as u64));
        assert_eq!(
            e.next_probe(),
            None,
            "no probe while the node's feed is read"
        );
    }
}
