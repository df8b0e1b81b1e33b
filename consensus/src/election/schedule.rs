//! The election over the chain: what every member computes, block by block, from the finalized
//! chain, so that every member agrees on each epoch's delegates without asking anyone.
//!
//! **Epochs and phases.** Ledger epoch `e` holds the heights `e·E + 1 ..= (e + 1)·E` (E, the
//! epoch length in blocks, at least 3; genesis, height 0, opens epoch 0). Its first third is
//! the *commit* phase (members post the commitment to their beacon contribution), its second
//! third the *reveal* phase (they reveal it); ballots are taken during the whole epoch.
//!
//! **Snapshot.** The epoch's [`Seat`]s (the active members with their stake and keys, from the
//! governance state named by its first block) are fixed when its first block is applied: the
//! voters' ring, the beacon's contributors and the candidates are those, so the weights are
//! known before any commitment can be made and the last revealer cannot change them.
//!
//! **Closing.** At the epoch's last block: the seed of `e` is computed from the seed of `e − 1`
//! and the valid reveals ([`beacon::next_seed`]); the ballots are tallied (one per key image);
//! the epoch's record (blocks proposed and signed, commitments without reveals, anchors served,
//! double signing) becomes penalties and rewards ([`standing::assess`]); and the delegates of
//! `e + 2` are elected from the seats by [`elect::elect`] with that seed and put in proposer
//! order ([`elect::proposer_order`]). Epochs 0 and 1 are served by the founding delegates.
//! Electing two epochs ahead means the set of the next epoch is always known before it starts,
//! and the seed that chose it was fixed before anyone could see its effect on weights.
//!
//! Pure: blocks are passed in, in height order, with what the caller read from them; no clock,
//! no I/O. The signatures of commits and reveals by their members are the transaction layer's
//! to check; this module checks phases, membership, commitments, VRF proofs and ring
//! signatures.

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use super::beacon::{self, BeaconInput, Reveal};
use super::elect::{self, Candidate};
use super::lsag::{self, RingSignature, Scope};
use super::standing::{self, BlockRecord, EpochRecord, Standing};

/// Domain of the message a ballot signs.
const BALLOT_DOMAIN: &[u8] = b"fhirseal/ballot/v1";
/// Domain of the seed before epoch 0.
const GENESIS_SEED_DOMAIN: &[u8] = b"fhirseal/beacon/genesis/v1";

/// One active member as an epoch sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seat {
    pub member: String,
    pub stake: u64,
    /// Its ring-vote key (compressed Ristretto).
    pub vote_key: [u8; 32],
    /// Its beacon key (schnorrkel public key).
    pub beacon_key: [u8; 32],
}

/// The election's parameters (governance parameters, fixed for a chain here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The chain's id: the beacon's input and the ballots' scope.
    pub chain: Vec<u8>,
    /// E: blocks per epoch, at least 3.
    pub epoch_blocks: u64,
    pub election: elect::Params,
    pub standing: standing::Params,
}

/// What one finalized election transaction says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A member's commitment to its beacon contribution (signed by the member).
    Commit {
        member: String,
        commitment: [u8; 32],
    },
    /// The contribution itself (signed by the member).
    Reveal { member: String, reveal: Reveal },
    /// An anonymous ballot for a candidate, ring-signed over the epoch's voters.
    Ballot {
        candidate: String,
        signature: RingSignature,
    },
}

/// One finalized block, as the election reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockFacts {
    pub height: u64,
    /// The member that proposed it.
    pub proposer: String,
    /// The delegates whose precommits its certificate holds.
    pub signers: Vec<String>,
    /// Its election transactions, in block order.
    pub actions: Vec<Action>,
    /// Anchors per institution that it finalized.
    pub anchors: BTreeMap<String, u64>,
    /// Members convicted of double signing by the evidence it carries.
    pub double_signed: Vec<String>,
    /// The epoch's seats: required with an epoch's first block, ignored otherwise.
    pub seats: Option<Vec<Seat>>,
}

/// The phase of an epoch a height is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Commit,
    Reveal,
    /// Neither: ballots only.
    Closed,
}

/// Why an election transaction or a block is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ElectionError {
    #[error("the epoch length must be at least 3 blocks")]
    EpochTooShort,
    #[error("block {got} applied after block {after}: blocks are applied in height order")]
    OutOfOrder { after: u64, got: u64 },
    #[error("the first block of epoch {0} names no seats")]
    NoSeats(u64),
    #[error("{0} is not a member of this epoch")]
    NotSeated(String),
    #[error("{member} may not {what} during the {phase:?} phase")]
    WrongPhase {
        member: String,
        what: &'static str,
        phase: Phase,
    },
    #[error("{0} has committed already in this epoch")]
    CommittedTwice(String),
    #[error("{0} has revealed already in this epoch")]
    RevealedTwice(String),
    #[error("{member}'s reveal does not count: {reason}")]
    BadReveal { member: String, reason: String },
    #[error("a ballot for {candidate} does not verify against the epoch's voters: {reason}")]
    BadBallot { candidate: String, reason: String },
    #[error("a second ballot from one voter in epoch {0}")]
    DoubleBallot(u64),
}

/// The epoch `height` belongs to (genesis belongs to epoch 0).
pub fn epoch_of(height: u64, epoch_blocks: u64) -> u64 {
    height.saturating_sub(1) / epoch_blocks.max(1)
}

/// The first and last height of `epoch`.
pub fn bounds(epoch: u64, epoch_blocks: u64) -> (u64, u64) {
    let first = epoch.saturating_mul(epoch_blocks).saturating_add(1);
    (first, first.saturating_add(epoch_blocks.saturating_sub(1)))
}

/// The phase `height` is in.
pub fn phase(height: u64, epoch_blocks: u64) -> Phase {
    if height == 0 {
        return Phase::Closed;
    }
    let (first, _) = bounds(epoch_of(height, epoch_blocks), epoch_blocks);
    let offset = height - first;
    let third = (epoch_blocks / 3).max(1);
    if offset < third {
        Phase::Commit
    } else if offset < 2 * third {
        Phase::Reveal
    } else {
        Phase::Closed
    }
}

/// The message a ballot for `candidate` in `epoch` signs.
pub fn ballot_message(candidate: &str, epoch: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(BALLOT_DOMAIN.len() + 16 + candidate.len());
    m.extend_from_slice(BALLOT_DOMAIN);
    m.extend_from_slice(&epoch.to_be_bytes());
    m.extend_from_slice(&(candidate.len() as u64).to_be_bytes());
    m.extend_from_slice(candidate.as_bytes());
    m
}

/// The voters' ring of `seats`: their vote keys in member order.
pub fn ring(seats: &[Seat]) -> Vec<[u8; 32]> {
    let mut sorted: Vec<&Seat> = seats.iter().collect();
    sorted.sort_by(|a, b| a.member.cmp(&b.member));
    sorted.iter().map(|s| s.vote_key).collect()
}

/// What one epoch has gathered so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Progress {
    epoch: u64,
    seats: Vec<Seat>,
    ring: Vec<[u8; 32]>,
    commits: BTreeMap<String, [u8; 32]>,
    /// Valid reveals' VRF outputs.
    outputs: BTreeMap<String, [u8; 32]>,
    key_images: BTreeSet<[u8; 32]>,
    votes: BTreeMap<String, u32>,
    blocks: Vec<(String, Vec<String>)>,
    anchors: BTreeMap<String, u64>,
    double_signed: Vec<String>,
}

impl Progress {
    fn seat(&self, member: &str) -> Option<&Seat> {
        self.seats.iter().find(|s| s.member == member)
    }
}

/// What an epoch's close decided, for status pages and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub epoch: u64,
    pub seed: [u8; 32],
    /// Votes per candidate.
    pub votes: BTreeMap<String, u32>,
    /// Penalties and rewards applied.
    pub changes: Vec<standing::Change>,
    /// The delegates of `epoch + 2`, in proposer order.
    pub elected: Vec<String>,
}

/// How many of the latest epochs' seeds, delegates and closes a state keeps (more when M needs
/// them to count terms in a row): the state is copied at every block a node folds or judges, so
/// its size must not grow with the chain's age. The chain keeps every epoch's record; the
/// tracker's history keeps every epoch's delegates for verification.
pub const KEPT_EPOCHS: u64 = 64;

/// The election as the chain has made it up to the last block applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElectionState {
    config: Config,
    height: u64,
    /// The seed made at the close of each epoch.
    seeds: BTreeMap<u64, [u8; 32]>,
    /// Each epoch's delegates, in proposer order.
    delegates: BTreeMap<u64, Vec<String>>,
    standings: BTreeMap<String, Standing>,
    /// Stake slashed so far, by member: governance sets stake, the chain takes from it.
    slashed: BTreeMap<String, u64>,
    progress: Progress,
    closed: Vec<Closed>,
}

impl ElectionState {
    /// The state at genesis (height 0): epochs 0 and 1 are served by `founders`, in order.
    pub fn genesis(config: Config, founders: Vec<String>) -> Result<Self, ElectionError> {
        if config.epoch_blocks < 3 {
            return Err(ElectionError::EpochTooShort);
        }
        let delegates = BTreeMap::from([(0, founders.clone()), (1, founders)]);
        Ok(ElectionState {
            config,
            height: 0,
            seeds: BTreeMap::new(),
            delegates,
            standings: BTreeMap::new(),
            slashed: BTreeMap::new(),
            progress: Progress::default(),
            closed: Vec::new(),
        })
    }

    /// The seed before epoch 0: from the chain's id alone.
    fn genesis_seed(&self) -> [u8; 32] {
        use sha2::{Digest as _, Sha256};
        let mut h = Sha256::new();
        h.update(GENESIS_SEED_DOMAIN);
        h.update(&self.config.chain);
        h.finalize().into()
    }

    /// The seed that epoch `epoch`'s contributions are computed over (the one made at the
    /// close of `epoch − 1`), once known.
    pub fn previous_seed(&self, epoch: u64) -> Option<[u8; 32]> {
        match epoch.checked_sub(1) {
            None => Some(self.genesis_seed()),
            Some(before) => self.seeds.get(&before).copied(),
        }
    }

    /// What a member's beacon contribution for `epoch` is computed over, once known.
    pub fn beacon_input(&self, epoch: u64) -> Option<([u8; 32], u64)> {
        self.previous_seed(epoch).map(|seed| (seed, epoch))
    }

    /// The delegates of `epoch` in proposer order, once elected (two epochs ahead), while the
    /// state keeps it (the latest [`KEPT_EPOCHS`]).
    pub fn delegates(&self, epoch: u64) -> Option<&[String]> {
        self.delegates.get(&epoch).map(Vec::as_slice)
    }

    /// The height of the last block applied.
    pub fn height(&self) -> u64 {
        self.height
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Every member's standing (stake after slashing, reputation, jail, tombstone).
    pub fn standings(&self) -> &BTreeMap<String, Standing> {
        &self.standings
    }

    /// What each of the latest [`KEPT_EPOCHS`] closed epochs decided, oldest first.
    pub fn closed(&self) -> &[Closed] {
        &self.closed
    }

    /// The seats of the epoch in progress.
    pub fn seats(&self) -> &[Seat] {
        &self.progress.seats
    }

    /// Whether `member` has committed, and revealed, in the epoch in progress.
    pub fn contributed(&self, member: &str) -> (bool, bool) {
        (
            self.progress.commits.contains_key(member),
            self.progress.outputs.contains_key(member),
        )
    }

    /// Whether a ballot with `key_image` was counted in the epoch in progress.
    pub fn counted(&self, key_image: &[u8; 32]) -> bool {
        self.progress.key_images.contains(key_image)
    }

    /// Checks that `block` could be the next block, without applying it.
    pub fn check(&self, block: &BlockFacts) -> Result<(), ElectionError> {
        self.clone().apply(block).map(|_| ())
    }

    /// Applies the next block; returns what its epoch's close decided when it is the epoch's
    /// last block.
    pub fn apply(&mut self, block: &BlockFacts) -> Result<Option<Closed>, ElectionError> {
        if block.height != self.height + 1 {
            return Err(ElectionError::OutOfOrder {
                after: self.height,
                got: block.height,
            });
        }
        let e = self.config.epoch_blocks;
        let epoch = epoch_of(block.height, e);
        let (first, last) = bounds(epoch, e);
        if block.height == first {
            let seats = block.seats.clone().ok_or(ElectionError::NoSeats(epoch))?;
            self.open(epoch, seats);
        }
        let phase = phase(block.height, e);
        for action in &block.actions {
            self.act(epoch, phase, action)?;
        }
        self.progress
            .blocks
            .push((block.proposer.clone(), block.signers.clone()));
        for (institution, n) in &block.anchors {
            *self
                .progress
                .anchors
                .entry(institution.clone())
                .or_default() += n;
        }
        self.progress
            .double_signed
            .extend(block.double_signed.iter().cloned());
        self.height = block.height;
        Ok((block.height == last).then(|| self.close()))
    }

    /// Opens the epoch of `height` with `seats` when `height` is its first block, as applying
    /// that block would (what checking transactions one by one for a coming block starts from).
    pub fn begin(&mut self, height: u64, seats: Option<Vec<Seat>>) -> Result<(), ElectionError> {
        let e = self.config.epoch_blocks;
        let epoch = epoch_of(height, e);
        if height == bounds(epoch, e).0 {
            let seats = seats.ok_or(ElectionError::NoSeats(epoch))?;
            self.open(epoch, seats);
        }
        Ok(())
    }

    /// Applies one election transaction as if carried by the block at `height` (after
    /// [`ElectionState::begin`]); nothing changes when it is refused.
    pub fn act_at(&mut self, height: u64, action: &Action) -> Result<(), ElectionError> {
        let e = self.config.epoch_blocks;
        self.act(epoch_of(height, e), phase(height, e), action)
    }

    /// Opens `epoch` with its seats: standings follow governance's stake, less what was slashed.
    fn open(&mut self, epoch: u64, mut seats: Vec<Seat>) {
        seats.sort_by(|a, b| a.member.cmp(&b.member));
        seats.dedup_by(|a, b| a.member == b.member);
        for seat in &seats {
            let slashed = self.slashed.get(&seat.member).copied().unwrap_or(0);
            let standing = self
                .standings
                .entry(seat.member.clone())
                .or_insert(Standing {
                    reputation: elect::MAX_REPUTATION / 2,
                    ..Standing::default()
                });
            standing.stake = seat.stake.saturating_sub(slashed);
        }
        self.progress = Progress {
            epoch,
            ring: ring(&seats),
            seats,
            ..Progress::default()
        };
    }

    fn act(&mut self, epoch: u64, phase: Phase, action: &Action) -> Result<(), ElectionError> {
        let wrong = |member: &str, what| ElectionError::WrongPhase {
            member: member.to_owned(),
            what,
            phase,
        };
        match action {
            Action::Commit { member, commitment } => {
                self.seated(member)?;
                if phase != Phase::Commit {
                    return Err(wrong(member, "commit"));
                }
                if self.progress.commits.contains_key(member) {
                    return Err(ElectionError::CommittedTwice(member.clone()));
                }
                self.progress.commits.insert(member.clone(), *commitment);
            }
            Action::Reveal { member, reveal } => {
                let key = self.seated(member)?.beacon_key;
                if phase != Phase::Reveal {
                    return Err(wrong(member, "reveal"));
                }
                if self.progress.outputs.contains_key(member) {
                    return Err(ElectionError::RevealedTwice(member.clone()));
                }
                let bad = |reason: String| ElectionError::BadReveal {
                    member: member.clone(),
                    reason,
                };
                let commitment = self
                    .progress
                    .commits
                    .get(member)
                    .ok_or_else(|| bad("it committed to nothing".to_owned()))?;
                let previous_seed = self
                    .previous_seed(epoch)
                    .ok_or_else(|| bad("the previous seed is unknown".to_owned()))?;
                let input = BeaconInput {
                    chain: &self.config.chain,
                    epoch,
                    previous_seed,
                };
                let output = beacon::check_reveal(member, &key, &input, commitment, reveal)
                    .map_err(|e| bad(e.to_string()))?;
                self.progress.outputs.insert(member.clone(), output);
            }
            Action::Ballot {
                candidate,
                signature,
            } => {
                let bad = |reason: String| ElectionError::BadBallot {
                    candidate: candidate.clone(),
                    reason,
                };
                if self.progress.seat(candidate).is_none() {
                    return Err(bad("no such candidate in this epoch".to_owned()));
                }
                let scope = Scope {
                    chain: &self.config.chain,
                    epoch,
                };
                let message = ballot_message(candidate, epoch);
                let image = lsag::verify(&scope, &self.progress.ring, &message, signature)
                    .map_err(|e| bad(e.to_string()))?;
                if !self.progress.key_images.insert(image) {
                    return Err(ElectionError::DoubleBallot(epoch));
                }
                *self.progress.votes.entry(candidate.clone()).or_default() += 1;
            }
        }
        Ok(())
    }

    fn seated(&self, member: &str) -> Result<&Seat, ElectionError> {
        self.progress
            .seat(member)
            .ok_or_else(|| ElectionError::NotSeated(member.to_owned()))
    }

    /// Closes the epoch in progress: seed, tally, standing, and the delegates of two epochs on.
    fn close(&mut self) -> Closed {
        let progress = std::mem::take(&mut self.progress);
        let epoch = progress.epoch;
        let previous = self
            .previous_seed(epoch)
            .unwrap_or_else(|| self.genesis_seed());
        let outputs: Vec<(&str, [u8; 32])> = progress
            .outputs
            .iter()
            .map(|(m, o)| (m.as_str(), *o))
            .collect();
        let seed = beacon::next_seed(&previous, epoch, &outputs);
        self.seeds.insert(epoch, seed);

        let serving = self.delegates.get(&epoch).cloned().unwrap_or_default();
        let record = EpochRecord {
            epoch,
            delegates: serving.iter().map(String::as_str).collect(),
            blocks: progress
                .blocks
                .iter()
                .map(|(proposer, signers)| BlockRecord {
                    proposer,
                    signers: signers.iter().map(String::as_str).collect(),
                })
                .collect(),
            committed: progress.commits.keys().map(String::as_str).collect(),
            revealed: progress.outputs.keys().map(String::as_str).collect(),
            anchors: progress
                .anchors
                .iter()
                .map(|(m, n)| (m.as_str(), *n))
                .collect(),
            double_signed: progress.double_signed.iter().map(String::as_str).collect(),
        };
        let borrowed: BTreeMap<&str, Standing> = self
            .standings
            .iter()
            .map(|(m, s)| (m.as_str(), *s))
            .collect();
        let changes = standing::assess(&record, &borrowed, &self.config.standing);
        for change in &changes {
            if let standing::Change::Slash { member, amount } = change {
                *self.slashed.entry(member.clone()).or_default() += amount;
            }
        }
        standing::apply(&mut self.standings, &changes);

        let target = epoch + 2;
        let candidates: Vec<Candidate<'_>> = progress
            .seats
            .iter()
            .filter_map(|seat| {
                let standing = self.standings.get(&seat.member)?;
                standing.eligible(target).then(|| Candidate {
                    member: &seat.member,
                    stake: standing.stake,
                    reputation: standing.reputation,
                    votes: progress.votes.get(&seat.member).copied().unwrap_or(0),
                    served_in_a_row: self.served_in_a_row(&seat.member, epoch + 1),
                })
            })
            .collect();
        let chosen = elect::elect(&candidates, &self.config.election, &seed, target);
        let elected: Vec<String> = if chosen.is_empty() {
            // Nobody may stand: the delegates of the epoch before serve on rather than none.
            self.delegates
                .get(&(epoch + 1))
                .cloned()
                .unwrap_or_default()
        } else {
            elect::proposer_order(&chosen, &seed, target)
                .into_iter()
                .map(str::to_owned)
                .collect()
        };
        self.delegates.insert(target, elected.clone());
        let closed = Closed {
            epoch,
            seed,
            votes: progress.votes,
            changes,
            elected,
        };
        self.closed.push(closed.clone());
        self.forget_before(epoch);
        closed
    }

    /// Forgets the seeds, delegates and closes older than the window the rules still read,
    /// ending at `closing` (the epoch just closed).
    fn forget_before(&mut self, closing: u64) {
        let kept = KEPT_EPOCHS.max(u64::from(self.config.election.max_consecutive) + 2);
        let Some(oldest) = closing.checked_sub(kept) else {
            return;
        };
        self.seeds.retain(|epoch, _| *epoch > oldest);
        self.delegates.retain(|epoch, _| *epoch > oldest);
        let gone = self.closed.iter().take_while(|c| c.epoch <= oldest).count();
        self.closed.drain(..gone);
    }

    /// Epochs in a row up to and including `through` in which `member` was a delegate,
    /// counted at most to `KEPT_EPOCHS + 1` (the window the state keeps): a rule of the
    /// election, the same at every member however old its chain.
    fn served_in_a_row(&self, member: &str, through: u64) -> u32 {
        let cap = u32::try_from(KEPT_EPOCHS)
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let mut count = 0;
        let mut epoch = through;
        while let Some(set) = self.delegates.get(&epoch).filter(|_| count < cap) {
            if !set.iter().any(|m| m == member) {
                break;
            }
            count += 1;
            match epoch.checked_sub(1) {
                Some(e) => epoch = e,
                None => break,
            }
        }
        count
    }
}

#[cfg(test)]
mod tests;
