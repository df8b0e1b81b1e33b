//! What a driver asks of the node around it ([`LedgerContext`]), which keys a roster names
//! ([`RosterUse`]), and what submitting a transaction did ([`Submitted`]).

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use fhirseal_storage::chain_store::{EntryLocation, TxLocation};

use crate::election::schedule::Seat;
use crate::error::Result;
use crate::keys::{PublicKey, Roster};
use crate::tx::Transaction;

/// What submitting a transaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// Queued for a coming block.
    Queued,
    /// A transaction with the same key already waits; nothing changed.
    AlreadyPending,
    /// A transaction with the same key is already in a finalized block, here; nothing changed.
    /// The submitter treats this as its receipt.
    AlreadyAnchored(TxLocation),
}

/// Which keys a roster's institutions are known by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RosterUse {
    /// Checking what is submitted or proposed now: each active member's current key.
    Propose,
    /// Checking what is final: every key each member has held (a block its delegates judged
    /// under a key since rotated away stays valid).
    Verify,
}

/// What a driver asks of the node around it. Reads only: every change is an
/// [`Effect`](crate::ledger::Effect).
pub trait LedgerContext {
    /// The roster of `epoch` (its delegates, the institutions' keys for `purpose`), if the
    /// governance state has begun it.
    fn roster(&self, epoch: u64, purpose: RosterUse) -> Option<Arc<Roster>>;

    /// The delegates of `epoch` in schedule order, as (member, key), if known.
    fn delegates(&self, epoch: u64) -> Option<Vec<(String, PublicKey)>>;

    /// The seats of governance epoch `epoch` — every active member with its stake, vote and
    /// beacon keys — each with the signing key it votes with, in member order, if known: what a
    /// ledger epoch of the election snapshots at its first block. `None` without an election.
    fn seats(&self, epoch: u64) -> Option<Vec<(Seat, PublicKey)>> {
        let _ = epoch;
        None
    }

    /// The newest epoch the governance state has begun: what a proposer names as its block's
    /// next epoch.
    fn latest_epoch(&self) -> Option<u64>;

    /// Where the transaction with this key is in the stored chain.
    fn transaction(&self, key: &[u8]) -> Result<Option<TxLocation>>;

    /// Where the anchor with this key is in the stored chain.
    fn anchor(&self, key: &[u8]) -> Result<Option<EntryLocation>>;

    /// Checks the evidence `transactions` carry against the stored chain (see
    /// `ChainReader::check_evidence`), as if in a block at `height`.
    fn check_evidence(&self, height: u64, transactions: &[Transaction]) -> Result<()>;

    /// The signing key with public key `public`, if the node holds it.
    fn signing_key(&self, public: &PublicKey) -> Option<SigningKey>;
}
