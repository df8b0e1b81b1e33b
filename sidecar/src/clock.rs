//! The wall clock, behind a seam: the ledger's runtime (block times) and the proxy (access
//! events, intents, the identity-search rate, the resolver's cutoff) read the time of day only
//! through the [`Clock`] they were given, so that a test can set it. The governance node and the
//! CLI read [`SystemClock`] through `consortium::window::wall_clock` (commands' validity
//! windows, invites): not yet behind the seam. The pure rules (`fhirseal-consensus`, the proxy's planning) take time as
//! an argument and read no clock at all. Timeouts and timers use tokio's monotonic clock, which
//! is not the time of day.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use fhirseal_consensus::Timestamp;

/// A source of the time of day.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// The same, as the ledger's timestamp.
    fn timestamp(&self) -> Timestamp {
        Timestamp(self.now_ms())
    }
}

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// The operating system's clock, shared.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// A clock that says what it was last set to (tests and simulations).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(now_ms: u64) -> Self {
        ManualClock(AtomicU64::new(now_ms))
    }

    pub fn set(&self, now_ms: u64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }

    pub fn advance(&self, ms: u64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_says_what_it_was_set_to() {
        let clock = ManualClock::new(1_000);
        clock.advance(500);
        assert_eq!(clock.timestamp(), Timestamp(1_500));
        clock.set(7);
        assert_eq!(clock.now_ms(), 7);
        assert!(SystemClock.now_ms() > 1_700_000_000_000);
    }
}
