//! The ledger core, by area: encoding, validity rules, the chain on sled, proofs, the
//! election, forks seen by a member.

// clippy.toml allows `unwrap` in `#[test]` functions only; the helpers here are test code too.
#![allow(clippy::unwrap_used)]

mod support;
mod t10_encoding;
mod t20_validation;
mod t30_chain;
mod t40_proofs;
mod t50_election;
mod t60_forks;
