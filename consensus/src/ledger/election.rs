//! The election kept beside the chain: [`ElectionTracker`] folds each finalized block into the
//! [`ElectionState`] and answers who the delegates of a height are; [`ElectedRosters`] lets chain
//! verification check each block against the delegates that certified it.
//!
//! **The delegates of a height.** A block at height `h` names in its header the governance epoch
//! `g` whose keys and seats apply (the previous block's `next_epoch`). In ledger epochs 0 and 1,
//! and when the election chose nobody who can serve, the delegates are `g`'s (the K active
//! members with the highest stake, as without an election). From ledger epoch 2 on, they are
//! those the election chose for the ledger epoch of `h`, in proposer order, less any not seated
//! in `g` (suspended or revoked since) and any tombstoned for double signing, each with the
//! signing key `g` records for it. Standings change only when an epoch closes, so every height of
//! one ledger epoch under one governance epoch has the same delegates; the tracker remembers the
//! set each such pair was certified by ([`ElectionTracker::history`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use sha2::{Digest as _, Sha256};

use crate::block::{Block, FinalizedBlock};
use crate::chain::ChainReader;
use crate::election::beacon::{BeaconInput, BeaconKey};
use crate::election::lsag::{self, Scope, VoteSecret};
use crate::election::schedule::{
    self, Action, BlockFacts, Closed, ElectionError, ElectionState, Phase,
};
use crate::hash::Hash256;
use crate::keys::{DelegateSet, PublicKey, Roster, Rosters};
use crate::ledger::context::LedgerContext;
use crate::tx::{Ballot, BatchId, ElectionBatch, ElectionItem, Transaction};

impl std::fmt::Debug for ElectionKeys<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElectionKeys")
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

/// Domain of the batch ids of a member's election batches.
const ELECTION_BATCH_DOMAIN: &[u8] = b"fhirseal/election-batch/v1";

/// What a member takes part in the election with.
pub struct ElectionKeys<'a> {
    /// The member.
    pub member: &'a str,
    /// Signs its commit and reveal batches.
    pub signing: &'a SigningKey,
    /// Signs its ballots, anonymously among the epoch's voters.
    pub vote: &'a VoteSecret,
    /// Makes its beacon contributions.
    pub beacon: &'a BeaconKey,
}

/// The delegates that certified each (ledger epoch, governance epoch) pair, in proposer order.
pub type History = BTreeMap<(u64, u64), Vec<(String, PublicKey)>>;

/// Why a block's election transactions are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrackError {
    /// The election's rules refuse it.
    #[error(transparent)]
    Election(#[from] ElectionError),
    /// A transaction names another ledger epoch than its block's.
    #[error("an election transaction for epoch {named} in a block of epoch {block}")]
    OtherEpoch { named: u64, block: u64 },
    /// The governance epoch the block names is not known here (yet).
    #[error("the seats of governance epoch {0} are not known here")]
    UnknownSeats(u64),
    /// Genesis carries no election transaction.
    #[error("genesis carries no election transaction")]
    InGenesis,
    /// The block's last commit is missing, repeated, of another block, or not a quorum of the
    /// previous height's delegates.
    #[error("the block's last commit: {0}")]
    LastCommit(String),
    /// Replaying the stored chain: the delegates of a stored height are not known here.
    #[error("the delegates of stored height {0} are not known here")]
    UnknownDelegates(u64),
    /// Replaying the stored chain: reading it failed.
    #[error("reading the chain: {0}")]
    Chain(String),
}

/// The election as the chain has made it, beside the driver.
#[derive(Debug, Clone)]
pub struct ElectionTracker {
    state: ElectionState,
    history: Arc<History>,
    /// The chain's id, which votes sign.
    chain: Hash256,
    /// The delegates that certified the last block applied: whose precommits the next block's
    /// last commit holds.
    last_delegates: Vec<(String, PublicKey)>,
}

impl ElectionTracker {
    /// The tracker of a chain with election parameters `config` at genesis; `founders` serve the
    /// first two ledger epochs (their record feeds the rotation rule).
    pub fn new(config: schedule::Config, founders: Vec<String>) -> Result<Self, ElectionError> {
        let mut chain = [0; 32];
        if config.chain.len() == 32 {
            chain.copy_from_slice(&config.chain);
        }
        Ok(Self {
            state: ElectionState::genesis(config, founders)?,
            history: Arc::new(History::new()),
            chain: Hash256(chain),
            last_delegates: Vec::new(),
        })
    }

    /// Folds the stored chain `reader` reads, from the block after the last one applied (from
    /// genesis for a new tracker) to the tip: what the runtime does before it starts the driver.
    /// Returns how many blocks it folded.
    pub fn replay(
        &mut self,
        reader: &ChainReader,
        ctx: &impl LedgerContext,
    ) -> Result<u64, TrackError> {
        let mut next = if self.history.is_empty() {
            0
        } else {
            self.state.height() + 1
        };
        let mut folded = 0;
        loop {
            let blocks = reader
                .blocks_from(next, 256)
                .map_err(|e| TrackError::Chain(e.to_string()))?;
            if blocks.is_empty() {
                return Ok(folded);
            }
            for block in blocks {
                let header = block.header();
                if header.height != next {
                    return Err(TrackError::Chain(format!("height {next} is missing")));
                }
                let delegates = self
                    .delegates(next, header.epoch, ctx)
                    .ok_or(TrackError::UnknownDelegates(next))?;
                self.apply(&block, &delegates, ctx)?;
                next += 1;
                folded += 1;
            }
        }
    }

    /// The election's state after the last block applied.
    pub fn state(&self) -> &ElectionState {
        &self.state
    }

    /// The delegates each (ledger epoch, governance epoch) pair was certified by.
    pub fn history(&self) -> &Arc<History> {
        &self.history
    }

    /// The delegates that certified the last block applied.
    pub fn last_delegates(&self) -> &[(String, PublicKey)] {
        &self.last_delegates
    }

    /// The chain's id.
    pub fn chain(&self) -> &Hash256 {
        &self.chain
    }

    /// Blocks per ledger epoch.
    pub fn epoch_blocks(&self) -> u64 {
        self.state.config().epoch_blocks
    }

    /// The ledger epoch of `height`.
    pub fn ledger_epoch(&self, height: u64) -> u64 {
        schedule::epoch_of(height, self.epoch_blocks())
    }

    /// The delegates of `height` (the next one to decide) under governance epoch `gov`, in
    /// proposer order, with their keys; `None` while the governance state does not know `gov`.
    pub fn delegates(
        &self,
        height: u64,
        gov: u64,
        ctx: &impl LedgerContext,
    ) -> Option<Vec<(String, PublicKey)>> {
        let epoch = self.ledger_epoch(height);
        if let Some(known) = self.history.get(&(epoch, gov)) {
            return Some(known.clone());
        }
        let fallback = || ctx.delegates(gov);
        if epoch < 2 {
            return fallback();
        }
        let Some(names) = self.state.delegates(epoch) else {
            return fallback();
        };
        let seats = ctx.seats(gov)?;
        let standings = self.state.standings();
        let chosen: Vec<(String, PublicKey)> = names
            .iter()
            .filter(|name| !standings.get(*name).is_some_and(|s| s.tombstoned))
            .filter_map(|name| {
                seats
                    .iter()
                    .find(|(seat, _)| seat.member == *name)
                    .map(|(_, key)| (name.clone(), *key))
            })
            .collect();
        if chosen.is_empty() {
            fallback()
        } else {
            Some(chosen)
        }
    }

    /// The signers of the previous block, from the last commit `block` carries: required from
    /// height 2 on (genesis's own commit is nobody's record), checked against the delegates
    /// that certified the previous block; `None` at height 1.
    fn last_signers(&self, block: &Block) -> Result<Option<Vec<String>>, TrackError> {
        let height = block.header.height;
        let commits: Vec<&crate::bft::CommitCertificate> = block
            .transactions
            .iter()
            .filter_map(|tx| match tx {
                Transaction::LastCommit(c) => Some(c),
                _ => None,
            })
            .collect();
        let bad = |why: &str| TrackError::LastCommit(why.to_owned());
        if height < 2 {
            return match commits.is_empty() {
                true => Ok(None),
                false => Err(bad("none is carried before height 2")),
            };
        }
        let [commit] = commits.as_slice() else {
            return Err(bad("one is required"));
        };
        if commit.height + 1 != height || commit.block != block.header.previous {
            return Err(bad("it is not the previous block's"));
        }
        let set = DelegateSet::new(self.last_delegates.iter().map(|(_, k)| *k).collect())
            .map_err(|e| bad(&e.to_string()))?;
        commit
            .verify(&self.chain, &set)
            .map_err(|e| bad(&e.to_string()))?;
        Ok(Some(
            commit
                .signatures()
                .iter()
                .filter_map(|s| {
                    self.last_delegates
                        .iter()
                        .find(|(_, k)| *k == s.delegate)
                        .map(|(m, _)| m.clone())
                })
                .collect(),
        ))
    }

    /// What the election reads from `block` at its height, certified by `delegates`. Its
    /// signers are those of the previous block's commit it carries (every member holds the same
    /// one), all of `delegates` at height 1.
    fn facts(
        &self,
        block: &Block,
        delegates: &[(String, PublicKey)],
        ctx: &impl LedgerContext,
    ) -> Result<BlockFacts, TrackError> {
        let header = &block.header;
        let epoch = self.ledger_epoch(header.height);
        if header.height == 0 {
            if block
                .transactions
                .iter()
                .any(|tx| matches!(tx, Transaction::Election(_) | Transaction::Ballot(_)))
            {
                return Err(TrackError::InGenesis);
            }
            return Ok(BlockFacts::default());
        }
        let name_of = |key: &PublicKey| -> Option<String> {
            delegates
                .iter()
                .find(|(_, k)| k == key)
                .map(|(m, _)| m.clone())
                .or_else(|| self.member_of(key))
        };
        let (first, _) = schedule::bounds(epoch, self.epoch_blocks());
        let seats = if header.height == first {
            let seats = ctx
                .seats(header.epoch)
                .ok_or(TrackError::UnknownSeats(header.epoch))?;
            Some(seats.into_iter().map(|(seat, _)| seat).collect())
        } else {
            None
        };
        let signers = match self.last_signers(block)? {
            Some(names) => names,
            None => delegates.iter().map(|(m, _)| m.clone()).collect(),
        };
        let mut facts = BlockFacts {
            height: header.height,
            proposer: name_of(&header.producer).unwrap_or_default(),
            signers,
            seats,
            ..BlockFacts::default()
        };
        for tx in &block.transactions {
            match tx {
                Transaction::Anchor(batch) => {
                    *facts
                        .anchors
                        .entry(batch.header.institution.clone())
                        .or_default() += batch.entries.len() as u64;
                }
                Transaction::Evidence(batch) => {
                    let convicted: BTreeSet<String> = batch
                        .items
                        .iter()
                        .filter_map(|e| name_of(e.offender()))
                        .collect();
                    facts.double_signed.extend(convicted);
                }
                Transaction::Election(_) | Transaction::Ballot(_) => {
                    facts.actions.extend(actions_of(tx, epoch)?);
                }
                _ => {}
            }
        }
        facts.double_signed.sort();
        facts.double_signed.dedup();
        Ok(facts)
    }

    /// The member a delegate key belonged to, from the delegates of every pair so far.
    fn member_of(&self, key: &PublicKey) -> Option<String> {
        self.history
            .values()
            .flatten()
            .find(|(_, k)| k == key)
            .map(|(m, _)| m.clone())
    }

    /// Whether `block`, proposed at the next height with `delegates`, carries election
    /// transactions the election accepts (in order, all of them).
    pub fn check(
        &self,
        block: &Block,
        delegates: &[(String, PublicKey)],
        ctx: &impl LedgerContext,
    ) -> Result<(), TrackError> {
        let facts = self.facts(block, delegates, ctx)?;
        if block.header.height == 0 {
            return Ok(());
        }
        Ok(self.state.check(&facts)?)
    }

    /// Which of `transactions`, proposed in order at `height` under governance epoch `gov`, the
    /// election accepts: `true` for every transaction that is not an election one, and for an
    /// election one that counts after those accepted before it.
    pub fn admit(
        &self,
        height: u64,
        gov: u64,
        transactions: &[Transaction],
        ctx: &impl LedgerContext,
    ) -> Vec<bool> {
        let epoch = self.ledger_epoch(height);
        let (first, _) = schedule::bounds(epoch, self.epoch_blocks());
        let seats = if height == first {
            match ctx.seats(gov) {
                Some(seats) => Some(seats.into_iter().map(|(s, _)| s).collect()),
                None => return transactions.iter().map(|tx| !is_election(tx)).collect(),
            }
        } else {
            None
        };
        let mut state = self.state.clone();
        let opened = state.begin(height, seats).is_ok();
        transactions
            .iter()
            .map(|tx| {
                if !is_election(tx) {
                    return true;
                }
                let Some(actions) = actions_of(tx, epoch).ok().filter(|_| opened) else {
                    return false;
                };
                let mut trial = state.clone();
                let ok = actions.iter().all(|a| trial.act_at(height, a).is_ok());
                if ok {
                    state = trial;
                }
                ok
            })
            .collect()
    }

    /// Applies the finalized `block`, certified by `delegates` (the set the driver judged it
    /// with); returns what its epoch's close decided.
    pub fn apply(
        &mut self,
        block: &FinalizedBlock,
        delegates: &[(String, PublicKey)],
        ctx: &impl LedgerContext,
    ) -> Result<Option<Closed>, TrackError> {
        let header = block.header();
        let pair = (self.ledger_epoch(header.height), header.epoch);
        if !self.history.contains_key(&pair) {
            Arc::make_mut(&mut self.history).insert(pair, delegates.to_vec());
        }
        if header.height == 0 {
            self.last_delegates = delegates.to_vec();
            return Ok(None);
        }
        // The certificate this node stores is the quorum of precommits it saw, which differs
        // from member to member; the signers counted are those of the last commit the next block
        // carries, which every member holds alike.
        let facts = self.facts(&block.block, delegates, ctx)?;
        let closed = self.state.apply(&facts)?;
        self.last_delegates = delegates.to_vec();
        Ok(closed)
    }
}

impl ElectionTracker {
    /// What `keys`' member should submit now for the coming height (the tip's + 1), by the
    /// election's state at the tip: its commitment in the commit phase, its reveal in the reveal
    /// phase (once committed), and one ballot per ledger epoch for `vote_for` once the epoch's
    /// voters are known. Idempotent: a commit or reveal batch's id is derived from the member,
    /// the epoch and the phase, and a ballot's key is its key image, so asking again while the
    /// last answer waits yields the same transaction keys (the pool answers "already pending").
    pub fn duties(&self, keys: &ElectionKeys<'_>, vote_for: Option<&str>) -> Vec<Transaction> {
        let mut out = Vec::new();
        let next = self.state.height() + 1;
        let e = self.epoch_blocks();
        let epoch = schedule::epoch_of(next, e);
        let (first, _) = schedule::bounds(epoch, e);
        let opened = next > first;
        let seated = !opened || self.state.seats().iter().any(|s| s.member == keys.member);
        if !seated {
            return out;
        }
        let (committed, revealed) = if opened {
            self.state.contributed(keys.member)
        } else {
            (false, false)
        };
        let chain = self.state.config().chain.clone();
        if let Some(previous_seed) = self.state.previous_seed(epoch) {
            let input = BeaconInput {
                chain: &chain,
                epoch,
                previous_seed,
            };
            let item = match schedule::phase(next, e) {
                Phase::Commit if !committed => {
                    let reveal = keys.beacon.contribute(&input);
                    Some(ElectionItem::Commit {
                        epoch,
                        commitment: reveal.commitment(keys.member, &input),
                    })
                }
                Phase::Reveal if committed && !revealed => Some(ElectionItem::Reveal {
                    epoch,
                    reveal: keys.beacon.contribute(&input),
                }),
                _ => None,
            };
            if let Some(item) = item {
                let id = election_batch_id(keys.member, &item);
                if let Ok(batch) = ElectionBatch::sign(id, keys.member, vec![item], keys.signing) {
                    out.push(Transaction::Election(batch));
                }
            }
        }
        if let (true, Some(candidate)) = (opened, vote_for) {
            let scope = Scope {
                chain: &chain,
                epoch,
            };
            let voted = self.state.counted(&keys.vote.key_image(&scope));
            let standing = self.state.seats().iter().any(|s| s.member == candidate);
            if !voted && standing {
                let ring = schedule::ring(self.state.seats());
                let message = schedule::ballot_message(candidate, epoch);
                if let Ok(signature) = lsag::sign(&scope, &ring, keys.vote, &message) {
                    out.push(Transaction::Ballot(Ballot {
                        epoch,
                        candidate: candidate.to_owned(),
                        signature,
                    }));
                }
            }
        }
        out
    }
}

/// The batch id of a member's election item: the same for the same member, epoch and phase.
fn election_batch_id(member: &str, item: &ElectionItem) -> BatchId {
    let mut h = Sha256::new();
    h.update(ELECTION_BATCH_DOMAIN);
    h.update((member.len() as u64).to_be_bytes());
    h.update(member.as_bytes());
    h.update(item.epoch().to_be_bytes());
    h.update([match item {
        ElectionItem::Commit { .. } => 1,
        ElectionItem::Reveal { .. } => 2,
    }]);
    let digest = h.finalize();
    let mut id = [0; 16];
    id.copy_from_slice(&digest[..16]);
    BatchId(id)
}

fn is_election(tx: &Transaction) -> bool {
    matches!(tx, Transaction::Election(_) | Transaction::Ballot(_))
}

/// The actions an election transaction carries (none for any other transaction); refused when
/// one of them names another ledger epoch than `epoch`, the epoch of the block carrying it.
fn actions_of(tx: &Transaction, epoch: u64) -> Result<Vec<Action>, TrackError> {
    let other = |named| TrackError::OtherEpoch {
        named,
        block: epoch,
    };
    match tx {
        Transaction::Election(batch) => batch
            .items
            .iter()
            .map(|item| {
                if item.epoch() != epoch {
                    return Err(other(item.epoch()));
                }
                let member = batch.header.institution.clone();
                Ok(match item {
                    ElectionItem::Commit { commitment, .. } => Action::Commit {
                        member,
                        commitment: *commitment,
                    },
                    ElectionItem::Reveal { reveal, .. } => Action::Reveal {
                        member,
                        reveal: *reveal,
                    },
                })
            })
            .collect(),
        Transaction::Ballot(ballot) if ballot.epoch != epoch => Err(other(ballot.epoch)),
        Transaction::Ballot(ballot) => Ok(vec![Action::Ballot {
            candidate: ballot.candidate.clone(),
            signature: ballot.signature.clone(),
        }]),
        _ => Ok(Vec::new()),
    }
}

/// The rosters chain verification checks blocks against: `base`'s (one per governance epoch),
/// with the delegates an election chose for each height where `history` records them.
#[derive(Debug, Clone)]
pub struct ElectedRosters<R> {
    /// One roster per governance epoch.
    pub base: R,
    /// The delegates of each (ledger epoch, governance epoch) pair.
    pub history: Arc<History>,
    /// Blocks per ledger epoch (`u64::MAX` without an election: every height in epoch 0, and
    /// an empty history).
    pub epoch_blocks: u64,
}

impl<R: Rosters> Rosters for ElectedRosters<R> {
    fn roster(&self, epoch: u64) -> Option<&Roster> {
        self.base.roster(epoch)
    }

    fn roster_at(&self, height: u64, epoch: u64) -> Option<Cow<'_, Roster>> {
        let base = self.base.roster_at(height, epoch)?;
        let pair = (schedule::epoch_of(height, self.epoch_blocks), epoch);
        match self.history.get(&pair) {
            Some(delegates) => {
                let set = DelegateSet::new(delegates.iter().map(|(_, k)| *k).collect()).ok()?;
                Some(Cow::Owned(base.with_delegates(set)))
            }
            None => Some(base),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::schedule::Seat;
    use crate::election::{elect, standing};
    use crate::ledger::context::RosterUse;
    use crate::tx::Transaction;
    use fhirseal_storage::chain_store::{EntryLocation, TxLocation};

    const E: u64 = 3;

    fn key(n: u8) -> PublicKey {
        PublicKey::of(&SigningKey::from_bytes(&[n; 32]))
    }

    fn seat(member: &str, n: u8) -> (Seat, PublicKey) {
        let seat = Seat {
            member: member.to_owned(),
            stake: 100,
            vote_key: [n; 32],
            beacon_key: [n; 32],
        };
        (seat, key(n))
    }

    /// Governance epoch 0 seats a, b, c and d (delegates a, b); epoch 1 no longer seats c.
    struct Context;

    impl LedgerContext for Context {
        fn roster(&self, _: u64, _: RosterUse) -> Option<Arc<Roster>> {
            None
        }
        fn delegates(&self, epoch: u64) -> Option<Vec<(String, PublicKey)>> {
            (epoch <= 1).then(|| vec![("a".into(), key(1)), ("b".into(), key(2))])
        }
        fn seats(&self, epoch: u64) -> Option<Vec<(Seat, PublicKey)>> {
            match epoch {
                0 => Some(vec![seat("a", 1), seat("b", 2), seat("c", 3), seat("d", 4)]),
                1 => Some(vec![seat("a", 1), seat("b", 2), seat("d", 4)]),
                _ => None,
            }
        }
        fn latest_epoch(&self) -> Option<u64> {
            Some(1)
        }
        fn transaction(&self, _: &[u8]) -> crate::error::Result<Option<TxLocation>> {
            Ok(None)
        }
        fn anchor(&self, _: &[u8]) -> crate::error::Result<Option<EntryLocation>> {
            Ok(None)
        }
        fn check_evidence(&self, _: u64, _: &[Transaction]) -> crate::error::Result<()> {
            Ok(())
        }
        fn signing_key(&self, _: &PublicKey) -> Option<SigningKey> {
            None
        }
    }

    /// A tracker whose state has applied epochs 0 and 1 of four seated members, `convicted`
    /// double signing in epoch 1 (no commits, no ballots: the seeds come from the chain alone).
    fn tracker(convicted: &[&str]) -> ElectionTracker {
        let config = schedule::Config {
            chain: vec![9; 32],
            epoch_blocks: E,
            election: elect::Params {
                delegates: 2,
                max_consecutive: 2,
            },
            standing: standing::Params {
                min_signed_permille: 0,
                ..standing::Params::default()
            },
        };
        let mut tracker = ElectionTracker::new(config, vec!["a".into(), "b".into()]).unwrap();
        let seats: Vec<Seat> = Context
            .seats(0)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        for height in 1..=2 * E {
            let facts = BlockFacts {
                height,
                proposer: "a".into(),
                signers: vec!["a".into(), "b".into()],
                seats: (height % E == 1).then(|| seats.clone()),
                double_signed: if height == E + 1 {
                    convicted.iter().map(|m| (*m).to_owned()).collect()
                } else {
                    Vec::new()
                },
                ..BlockFacts::default()
            };
            tracker.state.apply(&facts).unwrap();
        }
        tracker
    }

    #[test]
    fn the_delegates_of_a_height_are_the_elected_ones_still_seated_and_not_tombstoned() {
        let height = 2 * E + 1; // ledger epoch 2, elected at the close of epoch 0
        let plain = tracker(&[]);
        let elected = plain.state().delegates(2).unwrap().to_vec();
        assert_eq!(elected.len(), 2);
        // Under governance epoch 0 every elected member is seated: all of them, in proposer
        // order, with the keys that epoch records.
        let under_0: Vec<String> = plain
            .delegates(height, 0, &Context)
            .unwrap()
            .into_iter()
            .map(|(m, _)| m)
            .collect();
        assert_eq!(under_0, elected);
        // Under governance epoch 1, c is no longer seated: dropped if it was elected.
        let under_1: Vec<String> = plain
            .delegates(height, 1, &Context)
            .unwrap()
            .into_iter()
            .map(|(m, _)| m)
            .collect();
        let expected: Vec<String> = elected.iter().filter(|m| *m != "c").cloned().collect();
        if expected.is_empty() {
            assert_eq!(
                under_1,
                ["a", "b"],
                "nobody left: the governance epoch's delegates"
            );
        } else {
            assert_eq!(under_1, expected);
        }
        // An unknown governance epoch: not known yet.
        assert_eq!(plain.delegates(height, 7, &Context), None);
        // The first two ledger epochs are the governance epoch's.
        let founders: Vec<String> = plain
            .delegates(E + 1, 0, &Context)
            .unwrap()
            .into_iter()
            .map(|(m, _)| m)
            .collect();
        assert_eq!(founders, ["a", "b"]);

        // Convicted in epoch 1, tombstoned at its close: never among a height's delegates after,
        // even in the epoch it was elected for before its conviction.
        for convicted in &elected {
            let tracked = tracker(&[convicted.as_str()]);
            assert!(tracked.state().standings()[convicted].tombstoned);
            let now: Vec<String> = tracked
                .delegates(height, 0, &Context)
                .unwrap()
                .into_iter()
                .map(|(m, _)| m)
                .collect();
            assert!(!now.contains(convicted), "{convicted} serves: {now:?}");
        }
    }
}
