//! The engine's side: the [`BftEngine`] trait, what the runtime feeds it ([`EngineInput`]), what
//! it asks back ([`EngineEffect`]), why it refuses ([`EngineError`]), how it is configured
//! ([`EngineConfig`], [`TimeoutConfig`]), and the runtime's time ([`Millis`]).

use crate::bft::messages::{
    CommitCertificate, ConsensusMessage, Evidence, PolkaCert, Proposal, Round, RoundCert, Timer,
    Vote, WalEntry,
};
use crate::hash::Hash256;
use crate::keys::{DelegateSet, PublicKey};

/// Milliseconds on the runtime's clock (monotonic; its origin is the runtime's choice). The
/// engine only adds timeout durations to the `now` it is given.
pub type Millis = u64;

/// The highest round an input may name. Rounds grow by one per failed round, each at least a
/// propose timeout long, so no honest delegate gets near this; a message past it is refused before
/// it reaches the core, whose round arithmetic overflows at `u32::MAX` (found by
/// `no_input_stops_the_engine`).
pub const MAX_ROUND: u32 = 1 << 30;

impl ConsensusMessage {
    /// The input that delivers it to an engine.
    pub fn into_input(self) -> EngineInput {
        match self {
            Self::Vote(v) => EngineInput::Vote(v),
            Self::Proposal(p) => EngineInput::Proposal(p),
            Self::Polka(c) => EngineInput::Polka(c),
            Self::RoundCert(c) => EngineInput::RoundCert(c),
        }
    }
}

/// What the runtime tells the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineInput {
    /// Start `height` with its delegates: first start, then only once the previous height's
    /// [`EngineEffect::Finalized`] has been performed (the block stored).
    StartHeight {
        /// The height.
        height: u64,
        /// Its delegates, in schedule order: the proposer of round `r` is
        /// `delegates[(height + r) mod K]`.
        delegates: DelegateSet,
    },
    /// A vote from a peer.
    Vote(Vote),
    /// A proposal from a peer.
    Proposal(Proposal),
    /// A polka certificate from a peer.
    Polka(PolkaCert),
    /// A round certificate from a peer.
    RoundCert(RoundCert),
    /// The block the runtime built for [`EngineEffect::BuildBlock`] (stored, and sent to peers).
    Propose {
        /// The height asked for.
        height: u64,
        /// The round asked for.
        round: Round,
        /// The block's hash.
        block: Hash256,
    },
    /// A block body arrived (stored by hash) and was validated against its predecessor: this
    /// verdict is the only place where the engine learns whether a block is valid.
    BlockReceived {
        /// The block's height.
        height: u64,
        /// The round it was proposed in.
        round: Round,
        /// Its producer.
        proposer: PublicKey,
        /// Its hash.
        block: Hash256,
        /// Whether it passed validation.
        valid: bool,
    },
    /// A timer scheduled by [`EngineEffect::Schedule`] fired.
    TimerFired(Timer),
}

/// What the engine asks the runtime to do, in the order given.
///
/// **The write-ahead log rule:** append every [`EngineEffect::Persist`] as it comes, and make the
/// log durable (fdatasync) before performing any effect for which
/// [`EngineEffect::needs_durable_log`] holds. The engine emits our own vote's `Persist` before
/// its `Broadcast`, so nothing we signed leaves before it is on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEffect {
    /// Append to the write-ahead log of the current height.
    Persist(WalEntry),
    /// Send to every other delegate.
    Broadcast(ConsensusMessage),
    /// Fire `timer` at `at` (replacing a pending one with the same key).
    Schedule {
        /// Which timer.
        timer: Timer,
        /// When.
        at: Millis,
    },
    /// Forget a pending timer.
    Cancel(Timer),
    /// Forget every pending timer.
    CancelAll,
    /// We propose this round: build a block on the chain's tip, store it, send its body to the
    /// delegates, and answer [`EngineInput::Propose`] before `deadline`.
    BuildBlock {
        /// The height.
        height: u64,
        /// The round.
        round: Round,
        /// When the other delegates stop waiting for a proposal.
        deadline: Millis,
    },
    /// Send the body of `block` to the delegates again (we re-propose it, or hold its lock).
    Restream {
        /// The height.
        height: u64,
        /// The round it is needed in.
        round: Round,
        /// The block's hash.
        block: Hash256,
    },
    /// The height is decided: its certificate holds 2f + 1 precommits.
    Decided {
        /// The height.
        height: u64,
        /// The block decided.
        block: Hash256,
        /// Its certificate.
        certificate: CommitCertificate,
    },
    /// The height is final: store the block with its certificate, turn the evidence into
    /// evidence transactions, start a new log, then feed [`EngineInput::StartHeight`] for the
    /// next height.
    Finalized {
        /// The height.
        height: u64,
        /// The block.
        block: Hash256,
        /// Its certificate.
        certificate: CommitCertificate,
        /// Double signing seen during the height (same round and kind only; bounded).
        evidence: Vec<Evidence>,
    },
    /// A round started (status and metrics only).
    RoundStarted {
        /// The height.
        height: u64,
        /// The round.
        round: Round,
        /// Its proposer.
        proposer: PublicKey,
    },
}

impl EngineEffect {
    /// Whether the write-ahead log must be durable before this effect is performed: anything
    /// that leaves the node (a broadcast) or records an outcome (decided, finalized), and a new
    /// round (as upstream's own runtime does).
    pub fn needs_durable_log(&self) -> bool {
        matches!(
            self,
            Self::Broadcast(_)
                | Self::Decided { .. }
                | Self::Finalized { .. }
                | Self::RoundStarted { .. }
        )
    }
}

/// Why the engine refused an input, or stopped. After a fatal error ([`EngineError::is_fatal`])
/// the engine refuses everything: the runtime drops it and restarts from the write-ahead log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// An input came before the first height was started.
    #[error("no height has been started")]
    NotStarted,
    /// A height was started out of order: only the height after the last finalized one may
    /// follow (a delegate that fell behind starts a new engine at its chain's tip + 1).
    #[error("cannot start height {requested}: at height {current}, last finalized {finalized:?}")]
    StartOutOfOrder {
        /// The height asked for.
        requested: u64,
        /// The engine's height.
        current: u64,
        /// The last height it finalized.
        finalized: Option<u64>,
    },
    /// Replay was asked of an engine that already runs.
    #[error("replay needs an engine that has not started")]
    ReplayAfterStart,
    /// The log holds an entry of another height than the one replayed.
    #[error("write-ahead log entry of height {found} while replaying height {expected}")]
    WalHeight {
        /// The height replayed.
        expected: u64,
        /// The entry's.
        found: u64,
    },
    /// A delegate's key is not a valid Ed25519 point.
    #[error("delegate key {0} is not a valid Ed25519 public key")]
    BadDelegateKey(PublicKey),
    /// Replay re-derived a message of ours that differs from the logged one: signing it would be
    /// double signing, so the node must stop.
    #[error("replay re-derived a {kind} at height {height}, round {round} unlike the logged one")]
    ReplayDivergence {
        /// `prevote`, `precommit` or `proposal`.
        kind: String,
        /// The height.
        height: u64,
        /// The round.
        round: i64,
    },
    /// The consensus core failed (its message).
    #[error("consensus core: {0}")]
    Core(String),
    /// The consensus core panicked: a bug in it or in what we answered.
    #[error("consensus core panicked: {0}")]
    Panicked(String),
    /// The core asked for something this engine does not provide.
    #[error("consensus core asked for {0}, which this engine does not support")]
    Unsupported(&'static str),
    /// A message names a round beyond [`MAX_ROUND`]: no honest delegate ever gets there.
    #[error("round {0} is beyond the highest round the engine takes")]
    RoundOutOfRange(u32),
    /// A fatal error happened before; the engine takes no more input.
    #[error("the engine stopped after a fatal error")]
    Stopped,
}

impl EngineError {
    /// Whether the engine is unusable from now on (its state may be half-updated). The effects
    /// of the failed call are not returned, so nothing of it was logged or sent; the runtime
    /// drops the engine and restarts from the write-ahead log. The other errors refuse one input
    /// and change nothing.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Self::ReplayDivergence { .. }
                | Self::Core(_)
                | Self::Panicked(_)
                | Self::Unsupported(_)
                | Self::Stopped
        )
    }
}

/// Timeouts, in milliseconds; each grows by its delta per round, up to `max`.
///
/// The defaults aim at a 600 ms p99 finality on a LAN: with a silent proposer a height costs the
/// propose timeout plus a round (≈ 440 ms in the probe), where Malachite's default of 3 s would
/// cost seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeoutConfig {
    /// How long to wait for a proposal before prevoting nil.
    pub propose: Millis,
    /// Added per round.
    pub propose_delta: Millis,
    /// How long to wait after a quorum of mixed prevotes before precommitting nil.
    pub prevote: Millis,
    /// Added per round.
    pub prevote_delta: Millis,
    /// How long to wait after a quorum of mixed precommits before the next round.
    pub precommit: Millis,
    /// Added per round.
    pub precommit_delta: Millis,
    /// How long after entering a round to re-send our votes (deltas of the three above added).
    pub rebroadcast: Millis,
    /// No timeout grows over this.
    pub max: Millis,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        Self {
            propose: 300,
            propose_delta: 100,
            prevote: 100,
            prevote_delta: 50,
            precommit: 100,
            precommit_delta: 50,
            rebroadcast: 500,
            max: 5_000,
        }
    }
}

/// What an engine is configured with (the same at every delegate of a chain, but the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// The chain's identity, signed in every vote and proposal (the genesis hash or the
    /// consortium's id).
    pub chain_id: Hash256,
    /// Timeouts.
    pub timeouts: TimeoutConfig,
    /// How many future heights' messages are buffered while this one runs.
    pub buffered_heights: usize,
    /// How many messages per buffered height.
    pub buffered_per_height: usize,
}

impl EngineConfig {
    /// The defaults for `chain_id`.
    pub fn new(chain_id: Hash256) -> Self {
        Self {
            chain_id,
            timeouts: TimeoutConfig::default(),
            buffered_heights: 10,
            buffered_per_height: 500,
        }
    }
}

/// A BFT engine: a pure state machine over one delegate's view of the current height.
pub trait BftEngine {
    /// Handles one input at time `now` and returns the effects to perform, in order. `now` only
    /// turns timeout durations into deadlines: the engine reads no clock.
    fn handle(
        &mut self,
        input: EngineInput,
        now: Millis,
    ) -> std::result::Result<Vec<EngineEffect>, EngineError>;

    /// Starts `height` on an engine that has not started, replaying the write-ahead log `wal` of
    /// that height (after a crash): our logged votes and proposals are re-sent with their logged
    /// signatures and never signed anew. The effects include no `Persist` of an entry already
    /// in `wal`, so the runtime performs them as any others.
    fn replay(
        &mut self,
        height: u64,
        delegates: DelegateSet,
        wal: Vec<WalEntry>,
        now: Millis,
    ) -> std::result::Result<Vec<EngineEffect>, EngineError>;

    /// The current height (`None` before the first start).
    fn height(&self) -> Option<u64>;
}
