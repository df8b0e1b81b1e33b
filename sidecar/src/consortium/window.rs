//! The validity windows the CLI and founding sign commands for, and the time of day they read.

use std::time::Duration;

use fhirseal_consensus::governance::Validity;
use fhirseal_consensus::Timestamp;

/// How long before its signing a command may be applied: room for a leader whose clock is
/// behind the signer's.
pub const WINDOW_BEFORE: Duration = Duration::from_secs(60);
/// How long after its signing a command may still be applied: room for the CLI's wait, a
/// forwarding and a change of leader, and no more, so that a command held back is refused.
pub const WINDOW_AFTER: Duration = Duration::from_secs(10 * 60);
/// How long the genesis commands of a founding stay valid: the node submits them when it first
/// leads, which may be a while after `init`.
pub const GENESIS_VALIDITY: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// The operating system's time of day, in the ledger's milliseconds: what the CLI signs
/// commands at and the governance node applies them at ([`crate::clock`]).
pub fn wall_clock() -> Timestamp {
    use crate::clock::Clock as _;
    crate::clock::SystemClock.timestamp()
}

/// The window of a command signed at `now` and submitted at once: [`WINDOW_BEFORE`] before it
/// to [`WINDOW_AFTER`] after.
pub fn command_window(now: Timestamp) -> Validity {
    window(now, WINDOW_BEFORE, WINDOW_AFTER)
}

/// `before` `now` to `after` it.
pub fn window(now: Timestamp, before: Duration, after: Duration) -> Validity {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    Validity::around(now, ms(before), ms(after))
}
