//! The browser reads no external feed: the session's policy for one is an empty type here, so
//! every branch on it is compiled out of the package (see `external.rs` for the native one).

use crate::protocol::{ClientMsg, ServerMsg};

/// No value of this type exists: `Option<ExternalFeed>` is always `None`.
#[derive(Debug)]
pub(crate) enum ExternalFeed {}

/// What a probe's answer means (never made here).
pub(crate) struct ProbeAnswer {
    pub(crate) send: Vec<ClientMsg>,
    pub(crate) head: Option<i64>,
    pub(crate) stalled: Option<String>,
}

impl ExternalFeed {
    pub(crate) fn may_open(&self, _now_ms: u64, _waited: bool) -> bool {
        match *self {}
    }
    pub(crate) fn opening(&self) -> bool {
        match *self {}
    }
    pub(crate) fn start(&mut self) {
        match *self {}
    }
    pub(crate) fn unused(&mut self) {
        match *self {}
    }
    pub(crate) fn opened(&mut self, _now_ms: u64) {
        match *self {}
    }
    pub(crate) fn failed(&mut self, _now_ms: u64) -> std::time::Duration {
        match *self {}
    }
    pub(crate) fn connection_ended(&mut self) {
        match *self {}
    }
    pub(crate) fn retry_at(&self) -> Option<u64> {
        match *self {}
    }
    pub(crate) fn next_probe(&self) -> Option<u64> {
        match *self {}
    }
    pub(crate) fn probe_due(&mut self, _now_ms: u64) -> bool {
        match *self {}
    }
    pub(crate) fn ask_probe(&mut self, _cursor: Option<i64>) -> Option<ClientMsg> {
        match *self {}
    }
    pub(crate) fn answer_probe(
        &mut self,
        _m: &ServerMsg,
        _applied: i64,
        _external: bool,
        _now_ms: u64,
    ) -> Option<ProbeAnswer> {
        match *self {}
    }
}
