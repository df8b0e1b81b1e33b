//! The BFT engine in a deterministic simulation, by area: honest delegates (K = 1, 4, 7), faults
//! (a silent delegate, a killed and restarted one, an equivocator, a proposer of invalid blocks),
//! and agreement under a seeded hostile network, with replay of a seed and the f + 1 case.
//!
//! Why an integration test binary rather than a `#[cfg(test)]` module: the simulation drives the
//! engine through the crate's public surface only, exactly as the sidecar's runtime will, so
//! anything the runtime would need and the API lacks shows up here first.
//!
//! Run with `--nocapture` to see the `FIGURE` lines (virtual time, messages, engine CPU per
//! height); no assertion depends on wall time.

// clippy.toml allows `unwrap` in `#[test]` functions only; the harness is test code too.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod sim;
mod t10_honest;
mod t20_faults;
mod t30_agreement;
