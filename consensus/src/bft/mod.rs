//! The BFT engine that finalizes the shared chain among the delegates, behind our own trait.
//!
//! [`BftEngine`] is Tendermint as a pure state machine: the runtime feeds it [`EngineInput`]s
//! (peer votes and proposals, our verdict on a block body, fired timers, the start of a height)
//! together with the time, and gets back the [`EngineEffect`]s to perform, in order (append to
//! the write-ahead log, broadcast, schedule a timer, build a block, a height decided and
//! finalized with its [`CommitCertificate`] and the [`Evidence`] of double signing seen). The
//! engine reads no clock, does no I/O and keeps no secret but the delegate's signing key, with
//! which it signs and verifies inline: signing is not an effect the runtime could get wrong.
//!
//! [`MalachiteEngine`] implements it over Malachite's consensus core; `malachite.rs` is the only
//! file that names Malachite, so an upgrade or a switch of engine touches that file alone. The
//! rest (the trait, votes, proposals, certificates, write-ahead log entries, evidence, their
//! signed bytes and canonical encodings) is ours. `consensus/BFT.md` says how a runtime drives
//! it.
//!
//! A block is decided by its hash: the body travels beside consensus (the runtime sends it and
//! answers [`EngineInput::BlockReceived`] with its verdict), and the header's hash binds the
//! height and the previous block.
//!
//! - `messages.rs`: what delegates sign, send and log ([`Vote`], [`Proposal`], the certificates,
//!   [`ConsensusMessage`], [`Timer`], [`WalEntry`], [`Evidence`]), their signed bytes and
//!   canonical encodings, and `tally`, the one vote count behind every certificate check.
//! - `engine.rs`: the [`BftEngine`] trait, its inputs, effects, errors and configuration.
//! - `malachite.rs`: [`MalachiteEngine`], the trait over Malachite's core.

mod engine;
mod malachite;
mod messages;

pub use engine::{
    BftEngine, EngineConfig, EngineEffect, EngineError, EngineInput, Millis, TimeoutConfig,
    MAX_ROUND,
};
pub use malachite::MalachiteEngine;
pub use messages::{
    proposal_bytes, vote_bytes, CertSignature, CommitCertificate, ConsensusMessage, Evidence,
    PolkaCert, Proposal, ProposedBlock, Round, RoundCert, RoundCertKind, RoundSignature, Timer,
    Vote, VoteKind, WalEntry,
};

#[cfg(test)]
mod tests;
