//! [`FixedContext`]: the context of a consortium whose governance never changes — one epoch, one
//! roster — with the election's seats and record when the chain runs one. What tests, benchmarks
//! and a consortium of one need; the sidecar's context follows the governance state instead.

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use fhirseal_storage::chain_store::{EntryLocation, TxLocation};

use crate::chain::ChainReader;
use crate::election::schedule::Seat;
use crate::error::Result;
use crate::keys::{PublicKey, Roster};
use crate::ledger::context::{LedgerContext, RosterUse};
use crate::ledger::election::{ElectedRosters, History};
use crate::tx::Transaction;

/// A context with one epoch that never changes: epoch 0, `roster`'s delegates (named by
/// `members`, in order), the institutions' keys `roster` names for every use, the indexes of the
/// chain `reader` reads, and the signing keys in `keys` while [`FixedContext::holding`] is set;
/// with an election, the seats it snapshots and the delegates it chose so far.
#[derive(Debug, Clone)]
pub struct FixedContext {
    /// The chain's reads.
    pub reader: ChainReader,
    /// The roster of epoch 0.
    pub roster: Arc<Roster>,
    /// The delegates' member names, in the roster's delegate order.
    pub members: Vec<String>,
    /// The keys the node holds.
    pub keys: Vec<SigningKey>,
    /// Whether the node may use them now (a test lets its delegate propose when it chooses).
    pub holding: bool,
    /// The election, when the chain runs one.
    pub election: Option<FixedElection>,
}

/// The election's part of a [`FixedContext`].
#[derive(Debug, Clone)]
pub struct FixedElection {
    /// Epoch 0's seats, in member order.
    pub seats: Vec<(Seat, PublicKey)>,
    /// The delegates the election chose so far: the tracker's record, which the node takes
    /// before each block it stores (as the sidecar's runtime does).
    pub history: Arc<History>,
    /// Blocks per ledger epoch.
    pub epoch_blocks: u64,
}

impl FixedContext {
    /// The rosters blocks are verified against: epoch 0's, with the delegates the election chose
    /// for each height it has recorded.
    pub fn rosters(&self) -> ElectedRosters<&Roster> {
        let (history, epoch_blocks) = self
            .election
            .as_ref()
            .map_or((Arc::default(), u64::MAX), |e| {
                (e.history.clone(), e.epoch_blocks)
            });
        ElectedRosters {
            base: &*self.roster,
            history,
            epoch_blocks,
        }
    }
}

impl LedgerContext for FixedContext {
    fn roster(&self, epoch: u64, _: RosterUse) -> Option<Arc<Roster>> {
        (epoch == 0).then(|| self.roster.clone())
    }

    fn delegates(&self, epoch: u64) -> Option<Vec<(String, PublicKey)>> {
        (epoch == 0).then(|| {
            self.members
                .iter()
                .cloned()
                .zip(self.roster.delegates().keys().iter().copied())
                .collect()
        })
    }

    fn seats(&self, epoch: u64) -> Option<Vec<(Seat, PublicKey)>> {
        let election = self.election.as_ref()?;
        (epoch == 0).then(|| election.seats.clone())
    }

    fn latest_epoch(&self) -> Option<u64> {
        Some(0)
    }

    fn transaction(&self, key: &[u8]) -> Result<Option<TxLocation>> {
        self.reader.locate_transaction(key)
    }

    fn anchor(&self, key: &[u8]) -> Result<Option<EntryLocation>> {
        self.reader.anchor(key)
    }

    fn check_evidence(&self, height: u64, transactions: &[Transaction]) -> Result<()> {
        self.reader
            .check_evidence(height, transactions, &self.rosters())
    }

    fn signing_key(&self, public: &PublicKey) -> Option<SigningKey> {
        if !self.holding {
            return None;
        }
        self.keys
            .iter()
            .find(|k| PublicKey::of(k) == *public)
            .cloned()
    }
}
