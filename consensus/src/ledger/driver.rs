//! One node's part of the shared chain, as a pure state machine: see [`Driver`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ed25519_dalek::SigningKey;

use crate::bft::{
    BftEngine, CertSignature, CommitCertificate, ConsensusMessage, EngineConfig, EngineEffect,
    EngineError, EngineInput, Evidence, Millis, Round, Timer, VoteKind, WalEntry,
};
use crate::block::{Block, BlockHeader, FinalizedBlock};
use crate::error::{Error, Result};
use crate::hash::Hash256;
use crate::keys::Roster;
use crate::keys::{DelegateSet, PublicKey};
use crate::ledger::context::{LedgerContext, RosterUse, Submitted};
use crate::ledger::election::{ElectionTracker, TrackError};
use crate::ledger::wal::{Log, LogRecord};
use crate::producer::{BlockLimits, BlockProducer, Mempool};
use crate::tx::{ElectionItem, Timestamp, Transaction};
use crate::validate::{validate_block_with, validate_finalized_block, validate_transaction};

/// Each submitted transaction's answer.
pub type Answers = Vec<Result<Submitted>>;

/// How far ahead of the receiver's clock a proposed block's time may be.
const MAX_CLOCK_DRIFT_MS: u64 = 30_000;
/// Most consensus messages kept for the current height before it starts here.
const MAX_EARLY_MESSAGES: usize = 4096;

/// How many (height, offender) pairs already reported a driver remembers, the lowest heights
/// forgotten first.
const MAX_REPORTED: usize = 1024;
/// Most block bodies kept for heights that have not started here.
const MAX_LATER_BODIES: usize = 32;

/// How a driver runs.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// The engine's configuration (the chain's id, the timeouts).
    pub engine: EngineConfig,
    /// How much goes into one block.
    pub limits: BlockLimits,
    /// A node that runs no engine asks a peer for the blocks it lacks this often.
    pub poll_interval: Millis,
    /// A delegate whose height has not been final for this long asks a peer too (it may have
    /// missed the decision).
    pub stall_interval: Millis,
    /// With an election, a delegate starts a height after this long without a block even when
    /// nothing waits, so that ledger epochs advance on an idle consortium.
    pub idle_block_interval: Millis,
    /// With an election, a delegate starts its next height no sooner than this after the last
    /// block, whatever waits: the election's phases are counted in blocks, and blocks made as
    /// fast as transactions arrive (a lone delegate makes one per arrival) would end a phase
    /// before the members who follow the chain a moment behind could take part in it.
    pub min_block_interval: Millis,
}

impl DriverConfig {
    /// The defaults for the chain `engine` names.
    pub fn new(engine: EngineConfig) -> Self {
        Self {
            engine,
            limits: BlockLimits::default(),
            poll_interval: 1_000,
            stall_interval: 2_000,
            idle_block_interval: 1_000,
            min_block_interval: 200,
        }
    }
}

/// What the runtime tells the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The runtime's clock moved (every few tens of milliseconds): start a height that is due,
    /// ask a peer for blocks when behind or stalled.
    Tick,
    /// A consensus message from member `from`'s node (the transport checked its certificate).
    Message {
        /// The sending member.
        from: String,
        /// What it sent.
        message: ConsensusMessage,
    },
    /// A proposed block's body, from member `from`'s node.
    Body {
        /// The sending member.
        from: String,
        /// The body.
        block: Block,
        /// The round it is proposed in.
        round: Round,
    },
    /// Finalized blocks, in height order: a peer's answer to [`Effect::Sync`], or a block a
    /// delegate announced.
    Blocks {
        /// The member whose node sent them, if known.
        from: Option<String>,
        /// The blocks.
        blocks: Vec<FinalizedBlock>,
    },
    /// A timer scheduled by [`Effect::Schedule`] fired.
    Timer(Timer),
}

/// What crosses to other members' nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// A vote, proposal or certificate, for the height's delegates.
    Message(ConsensusMessage),
    /// A proposed block's body, for the height's delegates.
    Body(Block, Round),
    /// A finalized block, announced to members that were not its delegates.
    Block(FinalizedBlock),
}

/// Who a message is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipients {
    /// These members' nodes.
    Members(Vec<String>),
    /// Every active member's node but these (and this node's own).
    AllExcept(Vec<String>),
}

/// What the driver asks the runtime to do, in order. The write-ahead log rule: records appended
/// with [`Effect::Log`] are durable once an [`Effect::Flush`] is performed, and every effect after
/// a `Flush` waits for it; `Append` is durable before what follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Start a new log for `height`, dropping the one before (its height is final and stored).
    NewLog {
        /// The height the log is for.
        height: u64,
    },
    /// Append a record to the log.
    Log(LogRecord),
    /// Make the log durable before performing what follows.
    Flush,
    /// Send to other members' nodes (fire and forget: votes are re-sent on a timer).
    Send {
        /// To whom.
        to: Recipients,
        /// What.
        message: Outbound,
    },
    /// Fire `timer` at `at` (replacing a pending one).
    Schedule {
        /// Which timer.
        timer: Timer,
        /// When, on the runtime's clock.
        at: Millis,
    },
    /// Forget a pending timer.
    Cancel(Timer),
    /// Forget every pending timer.
    CancelAll,
    /// Store a finalized block durably before performing what follows. A failure leaves the
    /// driver ahead of the chain: the runtime drops it and starts again from the disk.
    Append(FinalizedBlock),
    /// Ask a member's node (`None`: any) for finalized blocks from `height`.
    Sync {
        /// Whom to ask.
        from: Option<String>,
        /// The first height wanted.
        height: u64,
    },
    /// Double signing the engine saw during a height: to report on the chain.
    Evidence(Vec<Evidence>),
}

/// Why the driver stopped. The runtime drops it and starts a new one from the chain and the log.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The engine failed for good.
    #[error("BFT engine: {0}")]
    Engine(#[from] EngineError),
    /// The engine finalized a block whose body this node does not hold.
    #[error("height {height} was finalized without its body here")]
    MissingBody {
        /// The height.
        height: u64,
    },
    /// Reading the chain or the governance state failed.
    #[error(transparent)]
    Ledger(#[from] Error),
    /// A block this node stored, or was about to store, does not fold into the election: the
    /// runtime starts again from the chain.
    #[error("election: {0}")]
    Election(#[from] TrackError),
}

/// What part the node plays at the current height.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The delegates of the height are not known here yet (the governance state is behind).
    Waiting,
    /// Not a delegate: follows the chain.
    Follower,
    /// A delegate whose height has not started (nothing to propose yet).
    Idle,
    /// A delegate running the height.
    Running,
}

impl Role {
    /// Its name in the status.
    pub fn name(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Follower => "follower",
            Self::Idle => "delegate (idle)",
            Self::Running => "delegate",
        }
    }
}

/// Where the driver stands, for the status page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverStatus {
    /// The height being decided (the tip's + 1).
    pub height: u64,
    /// Its epoch.
    pub epoch: u64,
    /// The round, when running.
    pub round: Option<u32>,
    /// The node's part.
    pub role: Role,
    /// The height's delegates, by member.
    pub delegates: Vec<String>,
    /// Transactions waiting.
    pub pending: usize,
}

/// One node's part of the shared chain.
///
/// Every member runs one: it follows the chain (blocks its delegates announce, blocks it asks
/// peers for, each checked against its epoch's delegates before it is stored) and, at each
/// height whose delegates name a key the node holds, runs the BFT engine `E` (made by
/// `new_engine` with that key): it builds blocks from the transactions submitted to it when it
/// proposes, judges the blocks others propose with the chain's rules, and stores the block the
/// engine finalizes. A height starts at a delegate when there is something to decide: waiting
/// transactions, a message or body of that height from another delegate, or a new governance
/// epoch for a block to name. Nothing is read from a clock: `now` (the runtime's monotonic ms)
/// and `wall` (ms since the Unix epoch, for block times) are passed in.
pub struct Driver<E, F> {
    config: DriverConfig,
    member: String,
    new_engine: F,
    tip: Option<BlockHeader>,
    engine: Option<Running<E>>,
    /// Whether the engine runs `height()`.
    running: bool,
    mempool: Mempool,
    /// Bodies of the current height, judged valid and logged (ours included).
    bodies: BTreeMap<Hash256, Block>,
    /// Bodies fed to the engine at this height, valid or not.
    judged: BTreeSet<Hash256>,
    /// Bodies of later heights, or of this one before it starts here.
    later: VecDeque<(String, Block, Round)>,
    /// Messages of this height from before it started here.
    early: VecDeque<ConsensusMessage>,
    /// Transactions taken into our own proposals at this height, put back if another block is
    /// finalized.
    built: Vec<Vec<Transaction>>,
    round: Option<u32>,
    last_progress: Millis,
    last_poll: Option<Millis>,
    /// The election folded over the chain up to the tip, when the chain has one.
    election: Option<ElectionTracker>,
    /// Election transactions for a later ledger epoch: they join the pool when it begins (in
    /// the pool they would make every height due at once).
    deferred: Vec<Transaction>,
    /// The tip's commit certificate, which late precommits are held against; with an election,
    /// with the precommits for it that arrive after the decision, and the next block this node
    /// proposes carries it.
    last_commit: Option<CommitCertificate>,
    /// Offences already reported, as (height, offender): one report convicts.
    reported: BTreeSet<(u64, PublicKey)>,
    /// The senders asked for the block at the tip's height (the height given) because their
    /// next block did not extend this node's tip, to hold its certificate against the tip's:
    /// each once per tip.
    fork_asked: (u64, BTreeSet<Option<String>>),
}

struct Running<E> {
    engine: E,
    key: PublicKey,
    /// The last height it finalized (it starts the next one only).
    finalized: Option<u64>,
}

impl<E, F> std::fmt::Debug for Driver<E, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("member", &self.member)
            .field("tip", &self.tip.as_ref().map(|t| t.height))
            .field("running", &self.running)
            .field("pending", &self.mempool.len())
            .finish_non_exhaustive()
    }
}

/// Effects collected during one call, with the engine inputs still to feed.
struct Work {
    effects: Vec<Effect>,
    inputs: VecDeque<EngineInput>,
}

impl<E, F> Driver<E, F>
where
    E: BftEngine,
    F: Fn(EngineConfig, SigningKey) -> E,
{
    /// The driver of member `member`'s node on a chain whose last stored block is `tip`.
    pub fn new(
        config: DriverConfig,
        member: String,
        new_engine: F,
        tip: Option<BlockHeader>,
    ) -> Self {
        Self {
            config,
            member,
            new_engine,
            tip,
            engine: None,
            running: false,
            mempool: Mempool::new(),
            bodies: BTreeMap::new(),
            judged: BTreeSet::new(),
            later: VecDeque::new(),
            early: VecDeque::new(),
            built: Vec::new(),
            round: None,
            last_progress: 0,
            last_poll: None,
            election: None,
            deferred: Vec::new(),
            last_commit: None,
            reported: BTreeSet::new(),
            fork_asked: (0, BTreeSet::new()),
        }
    }

    /// The driver of a chain with an election, folded up to the tip by `tracker` (the runtime
    /// replays the stored chain into it before starting).
    pub fn with_election(mut self, tracker: ElectionTracker) -> Self {
        self.election = Some(tracker);
        self
    }

    /// The tip's commit certificate (the runtime gives the stored tip's; the driver keeps it
    /// after that): late precommits are held against it, and, with an election, the next block
    /// this node proposes carries it.
    pub fn with_last_commit(mut self, certificate: Option<CommitCertificate>) -> Self {
        self.last_commit = certificate;
        self
    }

    /// The election, when the chain has one.
    pub fn election(&self) -> Option<&ElectionTracker> {
        self.election.as_ref()
    }

    /// The delegates of the current height, with their keys, in proposer order.
    pub fn delegates(&self, ctx: &impl LedgerContext) -> Option<Vec<(String, PublicKey)>> {
        match &self.election {
            None => ctx.delegates(self.epoch()),
            Some(tracker) => tracker.delegates(self.height(), self.epoch(), ctx),
        }
    }

    /// The roster of the current height for `purpose`: its governance epoch's institutions
    /// with the height's delegates.
    fn roster(
        &self,
        purpose: RosterUse,
        ctx: &impl LedgerContext,
    ) -> Option<std::sync::Arc<Roster>> {
        let base = ctx.roster(self.epoch(), purpose)?;
        if self.election.is_none() {
            return Some(base);
        }
        let set = delegate_set(&self.delegates(ctx)?).ok()?;
        Some(std::sync::Arc::new(base.with_delegates(set)))
    }

    /// The height being decided: the stored tip's + 1.
    pub fn height(&self) -> u64 {
        self.tip.as_ref().map_or(0, |t| t.height + 1)
    }

    /// The epoch of [`Driver::height`]: the one the tip named next.
    pub fn epoch(&self) -> u64 {
        self.tip.as_ref().map_or(0, |t| t.next_epoch)
    }

    /// The last stored block's header.
    pub fn tip(&self) -> Option<&BlockHeader> {
        self.tip.as_ref()
    }

    /// The chain's id.
    pub fn chain_id(&self) -> &Hash256 {
        &self.config.engine.chain_id
    }

    /// Where the driver stands.
    pub fn status(&self, ctx: &impl LedgerContext) -> DriverStatus {
        let delegates = self.delegates(ctx);
        let role = match &delegates {
            None => Role::Waiting,
            Some(_) if self.running => Role::Running,
            Some(d) if self.my_key(d, ctx).is_some() => Role::Idle,
            Some(_) => Role::Follower,
        };
        DriverStatus {
            height: self.height(),
            epoch: self.epoch(),
            round: self.round.filter(|_| self.running),
            role,
            delegates: delegates
                .unwrap_or_default()
                .into_iter()
                .map(|(m, _)| m)
                .collect(),
            pending: self.mempool.len(),
        }
    }

    /// Starts the driver after a restart: if `log` is the write-ahead log of the current height
    /// and the node is one of its delegates, the engine replays it (re-sending what it signed
    /// before, signing nothing anew); any other log is stale (its height is final) and the next
    /// start replaces it.
    pub fn restore(
        &mut self,
        log: Option<Log>,
        now: Millis,
        wall: Timestamp,
        ctx: &impl LedgerContext,
    ) -> std::result::Result<Vec<Effect>, DriverError> {
        self.last_progress = now;
        let mut work = Work::new();
        let Some((height, records)) = log else {
            return Ok(work.effects);
        };
        if height != self.height() || records.is_empty() {
            return Ok(work.effects);
        }
        let Some(delegates) = self.delegates(ctx) else {
            return Ok(work.effects);
        };
        let Some((key, signing)) = self.my_key(&delegates, ctx) else {
            return Ok(work.effects);
        };
        let mut entries = Vec::new();
        for record in records {
            match record {
                LogRecord::Engine(entry) => entries.push(entry),
                LogRecord::Body(block, _) => {
                    let hash = block.header.hash();
                    self.judged.insert(hash);
                    self.bodies.insert(hash, block);
                }
            }
        }
        for entry in &entries {
            if let WalEntry::ProposedBlock(b) = entry {
                self.judged.insert(b.block);
            }
        }
        let set = delegate_set(&delegates)?;
        let mut engine = (self.new_engine)(self.config.engine.clone(), signing);
        let effects = engine.replay(height, set, entries, now)?;
        self.engine = Some(Running {
            engine,
            key,
            finalized: None,
        });
        self.running = true;
        self.perform(effects, &mut work, now, wall, ctx)?;
        self.settle(&mut work, now, wall, ctx)?;
        Ok(work.effects)
    }

    /// Takes transactions for coming blocks, each answered on its own: idempotent on its key
    /// (kind, institution, batch id); refused, an invalid transaction (its signer is not its
    /// institution's key, its evidence does not convict) or a resource version already anchored
    /// or waiting in another transaction. Then starts the height at once if this node is an idle
    /// delegate (all of them go into one block, limits permitting).
    pub fn submit(
        &mut self,
        transactions: Vec<Transaction>,
        now: Millis,
        wall: Timestamp,
        ctx: &impl LedgerContext,
    ) -> std::result::Result<(Answers, Vec<Effect>), DriverError> {
        let answers = transactions
            .into_iter()
            .map(|tx| self.take(tx, ctx))
            .collect();
        let mut work = Work::new();
        self.settle(&mut work, now, wall, ctx)?;
        Ok((answers, work.effects))
    }

    fn take(&mut self, tx: Transaction, ctx: &impl LedgerContext) -> Result<Submitted> {
        if let Transaction::LastCommit(_) = tx {
            return Err(Error::InvalidBatch(
                "a last commit is the proposer's to include, not submitted",
            ));
        }
        let key = tx.key();
        if let Some(location) = ctx.transaction(&key)? {
            return Ok(Submitted::AlreadyAnchored(location));
        }
        if self.mempool.contains(&key) {
            return Ok(Submitted::AlreadyPending);
        }
        let epoch = ctx.latest_epoch().unwrap_or(self.epoch());
        let roster = ctx
            .roster(epoch, RosterUse::Propose)
            .ok_or(Error::UnknownEpoch(epoch))?;
        validate_transaction(&tx, &roster)?;
        ctx.check_evidence(self.height(), std::slice::from_ref(&tx))?;
        if let Some(named) = election_epoch(&tx) {
            let Some(tracker) = &self.election else {
                return Err(Error::InvalidBatch("this chain holds no election"));
            };
            let height = self.height();
            let epoch = tracker.ledger_epoch(height);
            if named < epoch || named > epoch + 1 {
                return Err(Error::InvalidBatch(
                    "an election transaction for a past or distant epoch",
                ));
            }
            if named > epoch {
                if self.deferred.iter().any(|d| d.key() == key) {
                    return Ok(Submitted::AlreadyPending);
                }
                self.deferred.push(tx);
                return Ok(Submitted::Queued);
            }
            if tracker.admit(height, self.epoch(), std::slice::from_ref(&tx), ctx) != [true] {
                return Err(Error::InvalidBatch(
                    "the election refuses it (phase, seat, commitment or ring signature)",
                ));
            }
        }
        if let Transaction::Anchor(batch) = &tx {
            for entry in &batch.entries {
                let key = entry.key();
                let location = ctx.anchor(&key)?;
                if location.is_some() || self.mempool.contains_anchor(&key) {
                    return Err(Error::AlreadyAnchored {
                        resource: entry.resource(),
                        location,
                    });
                }
            }
        }
        self.mempool.push(tx);
        Ok(Submitted::Queued)
    }

    /// Handles one input at `now` (the runtime's clock) and `wall` (for block times).
    pub fn handle(
        &mut self,
        input: Input,
        now: Millis,
        wall: Timestamp,
        ctx: &impl LedgerContext,
    ) -> std::result::Result<Vec<Effect>, DriverError> {
        let mut work = Work::new();
        match input {
            Input::Tick => {
                self.start_if_due(&mut work, now, wall, ctx)?;
                self.poll(&mut work, now);
            }
            Input::Message { from, message } => self.on_message(from, message, &mut work, now, ctx),
            Input::Body { from, block, round } => {
                self.on_body(from, block, round, &mut work, now, wall, ctx)?;
            }
            Input::Blocks { from, blocks } => self.on_blocks(from, blocks, &mut work, now, ctx)?,
            Input::Timer(timer) => {
                if self.running {
                    work.inputs.push_back(EngineInput::TimerFired(timer));
                }
            }
        }
        self.settle(&mut work, now, wall, ctx)?;
        Ok(work.effects)
    }

    /// Feeds what is queued, then starts the next height while one is due (a lone delegate
    /// finalizes a height within the call that starts it, and more may wait).
    fn settle(
        &mut self,
        work: &mut Work,
        now: Millis,
        wall: Timestamp,
        ctx: &impl LedgerContext,
    ) -> std::result::Result<(), DriverError> {
        loop {
            self.drain(work, now, wall, ctx)?;
            if self.running {
                return Ok(());
            }
            let before = self.height();
            self.start_if_due(work, now, wall, ctx)?;
            self.drain(work, now, wall, ctx)?;
            // Not started, or started and still running: done. Started and already final
            // (alone): the next may be due.
            if self.running || self.height() == before {
                return Ok(());
            }
        }
    }

    // ---- inputs ----

    fn on_message(
        &mut self,
        from: String,
        message: ConsensusMessage,
        work: &mut Work,
        now: Millis,
        ctx: &impl LedgerContext,
    ) {
        let height = message.height();
        let here = self.height();
        if height + 1 == here {
            self.convict_late_vote(&message, work);
            self.late_precommit(&from, &message);
            return;
        }
        if height < here {
            return;
        }
        // Only a delegate sends consensus messages, and a vote or proposal only under its own
        // key. The delegates of a later height are not known yet: the newest epoch's stand in
        // (with an election, those of the later height's ledger epoch when already elected).
        let delegates = if height == here {
            self.delegates(ctx)
        } else {
            let epoch = ctx.latest_epoch();
            match &self.election {
                Some(tracker) => epoch.and_then(|e| tracker.delegates(height, e, ctx)),
                None => epoch.and_then(|e| ctx.delegates(e)),
            }
        };
        let Some(delegates) = delegates else {
            return;
        };
        let sender_delegates = delegates.iter().any(|(m, _)| *m == from);
        let signer_is_sender = message
            .signer()
            .is_none_or(|s| delegates.iter().any(|(m, k)| k == s && *m == from));
        if !sender_delegates || !signer_is_sender {
            return;
        }
        if height > here {
            // A delegate is past a height this node has not stored: it was finalized there.
            self.ask(work, Some(from), now);
            return;
        }
        if self.running {
            work.inputs.push_back(message.into_input());
        } else if self.early.len() < MAX_EARLY_MESSAGES {
            self.early.push_back(message);
        }
    }

    /// A vote of the tip's height that contradicts the tip's certificate (a precommit of its
    /// round for another value, by one of its signers), which the engine, done with the height,
    /// no longer sees: reported.
    fn convict_late_vote(&mut self, message: &ConsensusMessage, work: &mut Work) {
        let (Some(commit), ConsensusMessage::Vote(vote)) = (&self.last_commit, message) else {
            return;
        };
        let Some(evidence) = commit.conflicting_vote(vote) else {
            return;
        };
        let seen = self.reported.contains(&(vote.height, vote.delegate));
        if !seen && vote.verify(self.chain_id()).is_ok() {
            self.report(vec![evidence], work);
        }
    }

    /// A finalized block of the tip's height. Another block there, certified, is a fork, which
    /// only more than f double-signing delegates can make: every delegate that precommitted
    /// both blocks in one round is reported (see [`CommitCertificate::conflicts`]). Held against
    /// the tip's certificate only, which is in memory: a fork further down shows at the tip too
    /// (its next block does not extend the tip, and the sender is asked for its block at the
    /// tip's height), and reading older blocks from disk for what any member may send would be
    /// work without bound.
    fn hold_against_tip(&mut self, block: &FinalizedBlock, work: &mut Work) {
        let theirs = &block.certificate;
        let height = block.header().height;
        let Some(ours) = self.last_commit.as_ref().filter(|c| c.height == height) else {
            return;
        };
        if theirs.height != height
            || ours.block == theirs.block
            || theirs.block != block.header().hash()
        {
            return;
        }
        let chain = *self.chain_id();
        let proven: Vec<Evidence> = ours
            .conflicts(theirs)
            .into_iter()
            .filter(|e| match e {
                // Ours was checked when stored; theirs, only now.
                Evidence::DoubleVote(_, other) => {
                    !self.reported.contains(&(height, other.delegate))
                        && other.verify(&chain).is_ok()
                }
                Evidence::DoubleProposal(..) => false,
            })
            .collect();
        self.report(proven, work);
    }

    /// Double signing seen here, for the runtime to report on the chain: once per offender
    /// and height.
    fn report(&mut self, evidence: Vec<Evidence>, work: &mut Work) {
        let fresh: Vec<Evidence> = evidence
            .into_iter()
            .filter(|e| self.reported.insert((e.height(), *e.offender())))
            .collect();
        while self.reported.len() > MAX_REPORTED {
            self.reported.pop_first();
        }
        if !fresh.is_empty() {
            work.effects.push(Effect::Evidence(fresh));
        }
    }

    /// A precommit for the tip from one of its delegates that the tip's certificate lacks (it
    /// arrived after the decision): added, so that the next block's last commit counts it.
    fn late_precommit(&mut self, from: &str, message: &ConsensusMessage) {
        let (Some(tracker), Some(commit), ConsensusMessage::Vote(vote)) =
            (&self.election, &self.last_commit, message)
        else {
            return;
        };
        let from_delegate = tracker
            .last_delegates()
            .iter()
            .any(|(m, k)| m == from && *k == vote.delegate);
        let fits = vote.kind == VoteKind::Precommit
            && vote.height == commit.height
            && vote.round == commit.round
            && vote.block == Some(commit.block)
            && !commit
                .signatures()
                .iter()
                .any(|s| s.delegate == vote.delegate);
        if !from_delegate || !fits || vote.verify(tracker.chain()).is_err() {
            return;
        }
        let mut signatures = commit.signatures().to_vec();
        signatures.push(CertSignature {
            delegate: vote.delegate,
            signature: vote.signature,
        });
        self.last_commit = Some(CommitCertificate::new(
            commit.height,
            commit.round,
            commit.block,
            signatures,
        ));
    }

    #[allow(clippy::too_many_arguments)]
    fn on_body(
        &mut self,
        from: String,
        block: Block,
        round: Round,
        work: &mut Work,
        now: Millis,
        wall: Timestamp,
        ctx: &impl LedgerContext,
    ) -> std::result::Result<(), DriverError> {
        let height = block.header.height;
        let here = self.height();
        if height < here {
            return Ok(());
        }
        if height > here || !self.running {
            if self.later.len() >= MAX_LATER_BODIES {
                self.later.pop_front();
            }
            self.later.push_back((from, block, round));
            if height > here + 1 {
                self.ask(work, None, now);
            }
            return Ok(());
        }
        self.judge(&from, block, round, work, wall, ctx)
    }

    /// A body of the running height: checked, logged if valid, and the verdict fed.
    fn judge(
        &mut self,
        from: &str,
        block: Block,
        round: Round,
        work: &mut Work,
        wall: Timestamp,
        ctx: &impl LedgerContext,
    ) -> std::result::Result<(), DriverError> {
        let Some(delegates) = self.delegates(ctx) else {
            return Ok(());
        };
        // Bodies come from the height's delegates (the proposer, or one restreaming it).
        if !delegates.iter().any(|(m, _)| m == from) {
            return Ok(());
        }
        let hash = block.header.hash();
        if !self.judged.insert(hash) {
            return Ok(());
        }
        let valid = self.check_proposal(&block, wall, ctx)?;
        let proposer = block.header.producer;
        if valid {
            work.effects
                .push(Effect::Log(LogRecord::Body(block.clone(), round)));
            self.bodies.insert(hash, block);
        }
        work.inputs.push_back(EngineInput::BlockReceived {
            height: self.height(),
            round,
            proposer,
            block: hash,
            valid,
        });
        Ok(())
    }

    /// Whether a proposed block may be finalized on this node's chain: the chain's rules against
    /// the tip and the epoch's roster, a next epoch this node's governance state knows, a time
    /// not far ahead of this node's clock, nothing already in the chain, evidence that convicts.
    /// Reading failures are errors; everything else is a verdict.
    fn check_proposal(
        &self,
        block: &Block,
        wall: Timestamp,
        ctx: &impl LedgerContext,
    ) -> std::result::Result<bool, DriverError> {
        let Some(roster) = self.roster(RosterUse::Propose, ctx) else {
            return Ok(false);
        };
        match &self.election {
            Some(tracker) => {
                let delegates = self.delegates(ctx).unwrap_or_default();
                if tracker.check(block, &delegates, ctx).is_err() {
                    return Ok(false);
                }
            }
            None => {
                if block
                    .transactions
                    .iter()
                    .any(|tx| matches!(tx, Transaction::LastCommit(_)))
                {
                    return Ok(false);
                }
            }
        }
        // What this node took into its pool or its own proposals was verified when it was
        // taken (`take`).
        let taken = |tx: &Transaction| {
            self.mempool.holds(tx) || self.built.iter().flatten().any(|built| built == tx)
        };
        if validate_block_with(self.tip.as_ref(), block, &roster, taken).is_err()
            || ctx.delegates(block.header.next_epoch).is_none()
            || block.header.time.0 > wall.0.saturating_add(MAX_CLOCK_DRIFT_MS)
        {
            return Ok(false);
        }
        for tx in &block.transactions {
            if ctx.transaction(&tx.key())?.is_some() {
                return Ok(false);
            }
            if let Transaction::Anchor(batch) = tx {
                for entry in &batch.entries {
                    if ctx.anchor(&entry.key())?.is_some() {
                        return Ok(false);
                    }
                }
            }
        }
        match ctx.check_evidence(block.header.height, &block.transactions) {
            Ok(()) => Ok(true),
            Err(e) if e.is_retryable() => Err(e.into()),
            Err(_) => Ok(false),
        }
    }

    fn on_blocks(
        &mut self,
        from: Option<String>,
        mut blocks: Vec<FinalizedBlock>,
        work: &mut Work,
        now: Millis,
        ctx: &impl LedgerContext,
    ) -> std::result::Result<(), DriverError> {
        blocks.sort_by_key(|b| b.header().height);
        let mut appended = false;
        for block in blocks {
            let height = block.header().height;
            let here = self.height();
            if height < here {
                self.hold_against_tip(&block, work);
                continue;
            }
            if height > here {
                // A gap: ask the sender for what comes before.
                self.ask(work, from.clone(), now);
                break;
            }
            let (Some(roster), Some(delegates)) =
                (self.roster(RosterUse::Verify, ctx), self.delegates(ctx))
            else {
                break;
            };
            let checked =
                validate_finalized_block(self.chain_id(), self.tip.as_ref(), &block, &roster)
                    .and_then(|_| ctx.check_evidence(height, &block.block.transactions));
            match checked {
                Ok(()) => {}
                Err(e) if e.is_retryable() => return Err(e.into()),
                // Not this chain's next block (a forger, or a sender on another chain). One
                // that does not extend the tip may stand on another block at the tip's height:
                // that block is asked for, once, to be held against the tip's.
                Err(_) => {
                    self.ask_below_fork(&block, from.clone(), work);
                    break;
                }
            }
            // Certified by a quorum of its delegates, yet refused by the election: the chain's
            // delegates broke its rules; it is not taken here.
            if self.fold(&block, &delegates, ctx).is_err() {
                break;
            }
            work.effects.push(Effect::Append(block.clone()));
            self.advance(&block.block, now);
            appended = true;
        }
        if appended {
            // The height the engine ran is final without it: a new engine starts the next one
            // (the old one never signs at a height again).
            if self.running {
                work.effects.push(Effect::CancelAll);
            }
            self.engine = None;
            self.running = false;
            self.last_poll = None;
        }
        Ok(())
    }

    // ---- heights ----

    /// Our key among `delegates`, if we hold it.
    fn my_key(
        &self,
        delegates: &[(String, PublicKey)],
        ctx: &impl LedgerContext,
    ) -> Option<(PublicKey, SigningKey)> {
        delegates
            .iter()
            .filter(|(m, _)| *m == self.member)
            .find_map(|(_, k)| ctx.signing_key(k).map(|s| (*k, s)))
    }

    /// Starts the current height when this node is one of its delegates and there is something
    /// to decide.
    fn start_if_due(
        &mut self,
        work: &mut Work,
        now: Millis,
        wall: Timestamp,
        ctx: &impl LedgerContext,
    ) -> std::result::Result<(), DriverError> {
        if self.running {
            return Ok(());
        }
        let height = self.height();
        let epoch = self.epoch();
        let since = now.saturating_sub(self.last_progress);
        let idle = self.election.is_some() && since >= self.config.idle_block_interval;
        let paced = self.election.is_none() || since >= self.config.min_block_interval;
        // Another delegate started the height: join it at once.
        let joined =
            !self.early.is_empty() || self.later.iter().any(|(_, b, _)| b.header.height == height);
        let due =
            joined || paced && (!self.mempool.is_empty() || self.next_epoch(ctx) > epoch || idle);
        if !due {
            return Ok(());
        }
        let Some(delegates) = self.delegates(ctx) else {
            return Ok(());
        };
        let Some((key, signing)) = self.my_key(&delegates, ctx) else {
            self.engine = None;
            return Ok(());
        };
        let reuse = self.engine.as_ref().is_some_and(|r| {
            r.key == key
                && r.finalized
                    .is_some_and(|f| f.checked_add(1) == Some(height))
        });
        if !reuse {
            self.engine = Some(Running {
                engine: (self.new_engine)(self.config.engine.clone(), signing),
                key,
                finalized: None,
            });
        }
        self.running = true;
        self.round = None;
        self.last_progress = now;
        work.effects.push(Effect::NewLog { height });
        work.inputs.push_back(EngineInput::StartHeight {
            height,
            delegates: delegate_set(&delegates)?,
        });
        // What came before the start: fed after it, bodies first.
        self.drain(work, now, wall, ctx)?;
        let (now_bodies, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.later)
            .into_iter()
            .partition(|(_, b, _)| b.header.height == height);
        self.later = keep.into();
        for (from, block, round) in now_bodies {
            self.judge(&from, block, round, work, wall, ctx)?;
        }
        for message in std::mem::take(&mut self.early) {
            work.inputs.push_back(message.into_input());
        }
        Ok(())
    }

    /// Folds the finalized block at the current height, certified by `delegates`, into the
    /// election, and keeps its certificate as the tip's; a block the election refuses changes
    /// nothing.
    fn fold(
        &mut self,
        block: &FinalizedBlock,
        delegates: &[(String, PublicKey)],
        ctx: &impl LedgerContext,
    ) -> std::result::Result<(), TrackError> {
        if let Some(tracker) = &self.election {
            let mut next = tracker.clone();
            next.apply(block, delegates, ctx)?;
            self.election = Some(next);
        }
        self.last_commit = Some(block.certificate.clone());
        Ok(())
    }

    /// The block at the current height is stored: move to the next.
    fn advance(&mut self, block: &Block, now: Millis) {
        let committed: BTreeSet<Vec<u8>> =
            block.transactions.iter().map(Transaction::key).collect();
        let anchors: BTreeSet<Vec<u8>> = block
            .transactions
            .iter()
            .filter_map(|tx| match tx {
                Transaction::Anchor(b) => Some(b.entries.iter().map(|e| e.key())),
                _ => None,
            })
            .flatten()
            .collect();
        // What we proposed and was not finalized waits again.
        for txs in std::mem::take(&mut self.built) {
            let left: Vec<Transaction> = txs
                .into_iter()
                .filter(|tx| !committed.contains(&tx.key()))
                .collect();
            self.mempool.restore(left);
        }
        self.mempool.retain(|tx| {
            !committed.contains(&tx.key())
                && match tx {
                    Transaction::Anchor(b) => b.entries.iter().all(|e| !anchors.contains(&e.key())),
                    _ => true,
                }
        });
        self.tip = Some(block.header.clone());
        if let Some(tracker) = &self.election {
            let epoch = tracker.ledger_epoch(block.header.height + 1);
            let (due, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred)
                .into_iter()
                .filter(|tx| !committed.contains(&tx.key()))
                .partition(|tx| election_epoch(tx).is_some_and(|e| e <= epoch));
            self.deferred = wait;
            self.mempool.restore(
                due.into_iter()
                    .filter(|tx| election_epoch(tx) == Some(epoch))
                    .collect(),
            );
        }
        self.bodies.clear();
        self.judged.clear();
        self.early.clear();
        let height = self.height();
        self.later.retain(|(_, b, _)| b.header.height >= height);
        self.running = false;
        self.round = None;
        self.last_progress = now;
    }

    fn poll(&mut self, work: &mut Work, now: Millis) {
        let stalled = now.saturating_sub(self.last_progress) >= self.config.stall_interval;
        if self.running && !stalled {
            return;
        }
        if self
            .last_poll
            .is_some_and(|t| now.saturating_sub(t) < self.config.poll_interval)
        {
            return;
        }
        self.ask(work, None, now);
    }

    /// Asks `from` for the block at the tip's height when its `block`, of the next height, does
    /// not extend the tip: each sender once per tip.
    fn ask_below_fork(&mut self, block: &FinalizedBlock, from: Option<String>, work: &mut Work) {
        let Some(tip) = &self.tip else {
            return;
        };
        if block.header().previous == tip.hash() {
            return;
        }
        if self.fork_asked.0 != tip.height {
            self.fork_asked = (tip.height, BTreeSet::new());
        }
        if !self.fork_asked.1.insert(from.clone()) {
            return;
        }
        work.effects.push(Effect::Sync {
            from,
            height: tip.height,
        });
    }

    /// Asks a peer for the blocks from the current height, at most once per poll interval.
    fn ask(&mut self, work: &mut Work, from: Option<String>, now: Millis) {
        if self
            .last_poll
            .is_some_and(|t| now.saturating_sub(t) < self.config.poll_interval / 4)
        {
            return;
        }
        self.last_poll = Some(now);
        work.effects.push(Effect::Sync {
            from,
            height: self.height(),
        });
    }

    // ---- the engine ----

    /// Feeds the queued inputs to the engine and performs what comes back, until none is left.
    fn drain(
        &mut self,
        work: &mut Work,
        now: Millis,
        wall: Timestamp,
        ctx: &impl LedgerContext,
    ) -> std::result::Result<(), DriverError> {
        while let Some(input) = work.inputs.pop_front() {
            let Some(running) = self.engine.as_mut() else {
                work.inputs.clear();
                break;
            };
            if !self.running && !matches!(input, EngineInput::StartHeight { .. }) {
                continue;
            }
            let effects = match running.engine.handle(input, now) {
                Ok(effects) => effects,
                Err(e) if e.is_fatal() => return Err(e.into()),
                // One input refused (out of order, a round out of range): nothing changed.
                Err(_) => continue,
            };
            self.perform(effects, work, now, wall, ctx)?;
        }
        Ok(())
    }

    /// Turns the engine's effects into the runtime's, in order.
    fn perform(
        &mut self,
        effects: Vec<EngineEffect>,
        work: &mut Work,
        now: Millis,
        wall: Timestamp,
        ctx: &impl LedgerContext,
    ) -> std::result::Result<(), DriverError> {
        for effect in effects {
            if effect.needs_durable_log() {
                work.effects.push(Effect::Flush);
            }
            match effect {
                EngineEffect::Persist(entry) => {
                    work.effects.push(Effect::Log(LogRecord::Engine(entry)))
                }
                EngineEffect::Broadcast(message) => {
                    if let ConsensusMessage::Proposal(p) = &message {
                        if let Some(body) = self.bodies.get(&p.block) {
                            let body = Outbound::Body(body.clone(), p.round);
                            work.effects.push(self.to_delegates(body, ctx));
                        }
                    }
                    work.effects
                        .push(self.to_delegates(Outbound::Message(message), ctx));
                }
                EngineEffect::Schedule { timer, at } => {
                    work.effects.push(Effect::Schedule { timer, at });
                }
                EngineEffect::Cancel(timer) => work.effects.push(Effect::Cancel(timer)),
                EngineEffect::CancelAll => work.effects.push(Effect::CancelAll),
                EngineEffect::BuildBlock { height, round, .. } => {
                    self.build(height, round, work, wall, ctx)?;
                }
                EngineEffect::Restream { block, round, .. } => {
                    if let Some(body) = self.bodies.get(&block) {
                        let body = Outbound::Body(body.clone(), round);
                        work.effects.push(self.to_delegates(body, ctx));
                    }
                }
                EngineEffect::Decided { .. } => {}
                EngineEffect::RoundStarted { round, .. } => self.round = Some(round.0),
                EngineEffect::Finalized {
                    height,
                    block,
                    certificate,
                    evidence,
                } => {
                    let body = self
                        .bodies
                        .remove(&block)
                        .ok_or(DriverError::MissingBody { height })?;
                    let finalized = FinalizedBlock {
                        block: body,
                        certificate,
                    };
                    let delegates = self.delegates(ctx).unwrap_or_default();
                    let names = delegates.iter().map(|(m, _)| m.clone()).collect();
                    self.fold(&finalized, &delegates, ctx)?;
                    work.effects.push(Effect::Append(finalized.clone()));
                    work.effects.push(Effect::Send {
                        to: Recipients::AllExcept(names),
                        message: Outbound::Block(finalized.clone()),
                    });
                    self.report(evidence, work);
                    if let Some(running) = self.engine.as_mut() {
                        running.finalized = Some(height);
                    }
                    // Nothing more of this height reaches the engine.
                    work.inputs.clear();
                    self.advance(&finalized.block, now);
                    self.last_poll = None;
                }
            }
        }
        Ok(())
    }

    /// Our proposal: the waiting transactions that are not in the chain yet, on the tip, naming
    /// the newest epoch the governance state has begun; logged before the engine hears of it.
    fn build(
        &mut self,
        height: u64,
        round: Round,
        work: &mut Work,
        wall: Timestamp,
        ctx: &impl LedgerContext,
    ) -> std::result::Result<(), DriverError> {
        let Some(running) = self.engine.as_ref() else {
            return Ok(());
        };
        let producer = BlockProducer::new(running.key);
        let mut taken = Vec::new();
        for tx in self.mempool.take(self.config.limits) {
            let in_chain = ctx.transaction(&tx.key())?.is_some()
                || match &tx {
                    Transaction::Anchor(b) => {
                        let mut any = false;
                        for e in &b.entries {
                            any |= ctx.anchor(&e.key())?.is_some();
                        }
                        any
                    }
                    _ => false,
                };
            if !in_chain {
                taken.push(tx);
            }
        }
        let taken = self.admit_election(height, taken, ctx);
        let mut carried = taken.clone();
        if self.election.is_some() && height >= 2 {
            match self.last_commit.as_ref().filter(|c| c.height + 1 == height) {
                Some(commit) => carried.insert(0, Transaction::LastCommit(commit.clone())),
                // Without the previous commit no valid proposal can be made here: the round
                // passes to the next proposer.
                None => return Ok(()),
            }
        }
        let next_epoch = self.next_epoch(ctx);
        let block = producer.propose(self.tip.as_ref(), carried, next_epoch, wall);
        let hash = block.header.hash();
        self.built.push(taken);
        self.judged.insert(hash);
        work.effects
            .push(Effect::Log(LogRecord::Body(block.clone(), round)));
        self.bodies.insert(hash, block);
        work.inputs.push_back(EngineInput::Propose {
            height,
            round,
            block: hash,
        });
        Ok(())
    }

    /// Of `taken`, what the election accepts at `height`, in order; election transactions for a
    /// later ledger epoch wait in the pool again, the others it refuses are dropped.
    fn admit_election(
        &mut self,
        height: u64,
        taken: Vec<Transaction>,
        ctx: &impl LedgerContext,
    ) -> Vec<Transaction> {
        let Some(tracker) = &self.election else {
            return taken;
        };
        let epoch = tracker.ledger_epoch(height);
        let admitted = tracker.admit(height, self.epoch(), &taken, ctx);
        let mut keep = Vec::with_capacity(taken.len());
        let mut later = Vec::new();
        for (tx, ok) in taken.into_iter().zip(admitted) {
            if ok {
                keep.push(tx);
            } else if election_epoch(&tx).is_some_and(|e| e > epoch) {
                later.push(tx);
            }
        }
        self.deferred.extend(later);
        keep
    }

    /// The epoch a block proposed now names next: the newest one the governance state has begun
    /// (and whose delegates it knows), never earlier than the current height's.
    fn next_epoch(&self, ctx: &impl LedgerContext) -> u64 {
        let epoch = self.epoch();
        ctx.latest_epoch()
            .filter(|e| ctx.delegates(*e).is_some())
            .unwrap_or(epoch)
            .max(epoch)
    }

    fn to_delegates(&self, message: Outbound, ctx: &impl LedgerContext) -> Effect {
        let members = self
            .delegates(ctx)
            .unwrap_or_default()
            .into_iter()
            .map(|(m, _)| m)
            .filter(|m| *m != self.member)
            .collect();
        Effect::Send {
            to: Recipients::Members(members),
            message,
        }
    }
}

impl Work {
    fn new() -> Self {
        Self {
            effects: Vec::new(),
            inputs: VecDeque::new(),
        }
    }
}

/// The ledger epoch an election transaction names (the first item's, for a batch).
fn election_epoch(tx: &Transaction) -> Option<u64> {
    match tx {
        Transaction::Election(batch) => batch.items.first().map(ElectionItem::epoch),
        Transaction::Ballot(ballot) => Some(ballot.epoch),
        _ => None,
    }
}

fn delegate_set(delegates: &[(String, PublicKey)]) -> Result<DelegateSet> {
    DelegateSet::new(delegates.iter().map(|(_, k)| *k).collect())
}
