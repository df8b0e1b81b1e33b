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

use crate::block::{Block, FinalizedBlock};
use crate::election::schedule::{self, Action, BlockFacts, Closed, ElectionError, ElectionState};
use crate::keys::{DelegateSet, PublicKey, Roster, Rosters};
use crate::ledger::context::LedgerContext;
use crate::tx::{ElectionItem, Transaction};

/// The delegates that certified each (ledger epoch, governance epoch) pair, in proposer order.
pub type History = BTreeMap<(u64, u64), Vec<(String, PublicKey)>>;

/// Why a block's election transactions are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
}

/// The election as the chain has made it, beside the driver.
#[derive(Debug, Clone)]
pub struct ElectionTracker {
    state: ElectionState,
    history: Arc<History>,
}

impl ElectionTracker {
    /// The tracker of a chain with election parameters `config` at genesis; `founders` serve the
    /// first two ledger epochs (their record feeds the rotation rule).
    pub fn new(config: schedule::Config, founders: Vec<String>) -> Result<Self, ElectionError> {
        Ok(Self {
            state: ElectionState::genesis(config, founders)?,
            history: Arc::new(History::new()),
        })
    }

    /// The election's state after the last block applied.
    pub fn state(&self) -> &ElectionState {
        &self.state
    }

    /// The delegates each (ledger epoch, governance epoch) pair was certified by.
    pub fn history(&self) -> &Arc<History> {
        &self.history
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

    /// What the election reads from `block` at its height, certified by `delegates`
    /// (`certificate` signers when final).
    fn facts(
        &self,
        block: &Block,
        signers: &[PublicKey],
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
        let mut facts = BlockFacts {
            height: header.height,
            proposer: name_of(&header.producer).unwrap_or_default(),
            signers: signers.iter().filter_map(name_of).collect(),
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
                Transaction::Election(batch) => {
                    let member = &batch.header.institution;
                    for item in &batch.items {
                        if item.epoch() != epoch {
                            return Err(TrackError::OtherEpoch {
                                named: item.epoch(),
                                block: epoch,
                            });
                        }
                        facts.actions.push(match item {
                            ElectionItem::Commit { commitment, .. } => Action::Commit {
                                member: member.clone(),
                                commitment: *commitment,
                            },
                            ElectionItem::Reveal { reveal, .. } => Action::Reveal {
                                member: member.clone(),
                                reveal: *reveal,
                            },
                        });
                    }
                }
                Transaction::Ballot(ballot) => {
                    if ballot.epoch != epoch {
                        return Err(TrackError::OtherEpoch {
                            named: ballot.epoch,
                            block: epoch,
                        });
                    }
                    facts.actions.push(Action::Ballot {
                        candidate: ballot.candidate.clone(),
                        signature: ballot.signature.clone(),
                    });
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
        let facts = self.facts(block, &[], delegates, ctx)?;
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
                let Some(actions) = actions_of(tx, epoch).filter(|_| opened) else {
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
            return Ok(None);
        }
        let signers: Vec<PublicKey> = block
            .certificate
            .signatures()
            .iter()
            .map(|s| s.delegate)
            .collect();
        let facts = self.facts(&block.block, &signers, delegates, ctx)?;
        Ok(self.state.apply(&facts)?)
    }
}

fn is_election(tx: &Transaction) -> bool {
    matches!(tx, Transaction::Election(_) | Transaction::Ballot(_))
}

/// The actions an election transaction carries, if all are for `epoch`.
fn actions_of(tx: &Transaction, epoch: u64) -> Option<Vec<Action>> {
    match tx {
        Transaction::Election(batch) => batch
            .items
            .iter()
            .map(|item| {
                (item.epoch() == epoch).then(|| match item {
                    ElectionItem::Commit { commitment, .. } => Action::Commit {
                        member: batch.header.institution.clone(),
                        commitment: *commitment,
                    },
                    ElectionItem::Reveal { reveal, .. } => Action::Reveal {
                        member: batch.header.institution.clone(),
                        reveal: *reveal,
                    },
                })
            })
            .collect(),
        Transaction::Ballot(ballot) => (ballot.epoch == epoch).then(|| {
            vec![Action::Ballot {
                candidate: ballot.candidate.clone(),
                signature: ballot.signature.clone(),
            }]
        }),
        _ => Some(Vec::new()),
    }
}

/// The rosters chain verification checks blocks against: `base`'s (one per governance epoch),
/// with the delegates an election chose for each height where `history` records them.
#[derive(Debug, Clone, Copy)]
pub struct ElectedRosters<'a, R> {
    /// One roster per governance epoch.
    pub base: &'a R,
    /// The delegates of each (ledger epoch, governance epoch) pair.
    pub history: &'a History,
    /// Blocks per ledger epoch.
    pub epoch_blocks: u64,
}

impl<R: Rosters> Rosters for ElectedRosters<'_, R> {
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
