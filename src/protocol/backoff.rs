//! The one backoff policy for reconnecting (the client session's, its external feed's, and the
//! NATS publisher's).

use std::time::Duration;

/// The first retry waits up to this long ...
pub const BACKOFF_FIRST: Duration = Duration::from_millis(250);
/// ... doubling per failed attempt up to this ...
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// ... each delay drawn uniformly from its upper half (so clients that lost one node do not all
/// come back in the same millisecond). A connection subscribed for this long was healthy: the
/// next outage starts again from the first delay.
pub const HEALTHY_AFTER: Duration = Duration::from_secs(10);

/// The one backoff policy for reconnecting (the client session's, and the NATS publisher's):
/// the delay doubles from [`BACKOFF_FIRST`] up to [`BACKOFF_MAX`], each jittered into the upper
/// half of its ceiling; [`Backoff::reset`] once a connection has been healthy.
#[derive(Clone, Debug)]
pub struct Backoff {
    /// Failed attempts since the last reset.
    attempts: u32,
    rng: u64,
}

impl Backoff {
    /// A policy whose jitter starts from `seed` (any value; differing between clients).
    pub fn new(seed: u64) -> Self {
        Backoff {
            attempts: 0,
            rng: seed | 1,
        }
    }

    /// Start again from the first delay.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }

    /// The delay before the next attempt: the attempt's ceiling, jittered into its upper half.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = BACKOFF_FIRST
            .saturating_mul(1u32 << self.attempts.min(16))
            .min(BACKOFF_MAX);
        self.attempts = self.attempts.saturating_add(1);
        let ms = ceiling.as_millis() as u64;
        // xorshift64: jitter needs no cryptographic quality, and must run in wasm32 too.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        Duration::from_millis(ms / 2 + self.rng % (ms / 2 + 1))
    }
}
