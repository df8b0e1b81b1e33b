//! The seam that drives the ledger forward, and its single-node implementation.
//!
//! The sidecar's outbox submits signed batches and calls `produce` on its timer; it does not care
//! whether one node finalizes alone or a DPoS round collects 2f+1 votes. The DPoS will implement
//! [`Ledger`] too: `submit` gossips the transaction, `produce` proposes in the node's own slots
//! and returns a block once a certificate is complete.

use std::future::Future;

use fhirseal_storage::chain_store::TxLocation;

use crate::chain::{BlockReceipt, Chain};
use crate::error::{Error, Result};
use crate::keys::Roster;
use crate::producer::{BlockLimits, BlockProducer, Mempool};
use crate::tx::{Timestamp, Transaction};
use crate::validate::validate_transaction;

/// What [`Ledger::submit`] did with a transaction.
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

/// The ledger as its users drive it.
pub trait Ledger {
    /// Accepts a signed transaction for a coming block. Idempotent on the transaction's key
    /// (kind, institution, batch id). Refused: an invalid transaction, a resource version already
    /// anchored or waiting in another transaction.
    fn submit(&mut self, tx: Transaction) -> Result<Submitted>;

    /// At `time`, turns waiting transactions into the next finalized block and stores it durably;
    /// `None` when nothing waits.
    fn produce(
        &mut self,
        time: Timestamp,
    ) -> impl Future<Output = Result<Option<BlockReceipt>>> + Send;
}

/// The embedded consortium of one: this node is the only delegate and finalizes every block
/// alone, in epoch 0, one slot per block.
#[derive(Debug)]
pub struct SoloLedger {
    chain: Chain,
    producer: BlockProducer,
    roster: Roster,
    mempool: Mempool,
    limits: BlockLimits,
}

impl SoloLedger {
    /// A ledger over `chain`, producing with `producer`, whose key must be `roster`'s only
    /// delegate.
    pub fn new(chain: Chain, producer: BlockProducer, roster: Roster) -> Result<Self> {
        if roster.delegates().keys() != [producer.public_key()] {
            return Err(Error::InvalidDelegates(
                "a single-node ledger's producer must be the only delegate",
            ));
        }
        Ok(Self {
            chain,
            producer,
            roster,
            mempool: Mempool::new(),
            limits: BlockLimits::default(),
        })
    }

    /// Replaces the roster (an institution admitted or revoked, a key rotated), keeping the
    /// producer, which must stay its only delegate. What waits was checked against the old
    /// roster; a transaction the new one refuses is refused when its block is appended.
    pub fn set_roster(&mut self, roster: Roster) -> Result<()> {
        if roster.delegates().keys() != [self.producer.public_key()] {
            return Err(Error::InvalidDelegates(
                "a single-node ledger's producer must be the only delegate",
            ));
        }
        self.roster = roster;
        Ok(())
    }

    /// The same, with other block limits.
    pub fn with_limits(mut self, limits: BlockLimits) -> Self {
        self.limits = limits.clamped();
        self
    }

    /// The chain, for proofs and verification.
    pub fn chain(&self) -> &Chain {
        &self.chain
    }

    /// The roster.
    pub fn roster(&self) -> &Roster {
        &self.roster
    }

    /// How many transactions wait.
    pub fn pending(&self) -> usize {
        self.mempool.len()
    }
}

impl Ledger for SoloLedger {
    fn submit(&mut self, tx: Transaction) -> Result<Submitted> {
        let key = tx.key();
        if let Some(location) = self.chain.locate_transaction(&key)? {
            return Ok(Submitted::AlreadyAnchored(location));
        }
        if self.mempool.contains(&key) {
            return Ok(Submitted::AlreadyPending);
        }
        validate_transaction(&tx, &self.roster)?;
        if let Transaction::Anchor(batch) = &tx {
            for entry in &batch.entries {
                let key = entry.key();
                let location = self.chain.anchor_by_key(&key)?;
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

    async fn produce(&mut self, time: Timestamp) -> Result<Option<BlockReceipt>> {
        if self.mempool.is_empty() {
            return Ok(None);
        }
        let transactions = self.mempool.take(self.limits);
        let previous = self.chain.tip().cloned();
        let slot = previous.as_ref().map_or(0, |p| p.slot + 1);
        let block = self
            .producer
            .produce_alone(previous.as_ref(), transactions, 0, slot, time);
        match self.chain.append(&block, &self.roster).await {
            Ok(receipt) => Ok(Some(receipt)),
            Err(e) => {
                // After an I/O failure nothing was written: the transactions wait again. Any
                // other failure will repeat, so they are dropped and the submitter, which keeps
                // them until it has a receipt, hears of it from this error.
                if e.is_retryable() {
                    self.mempool.restore(block.block.transactions);
                }
                Err(e)
            }
        }
    }
}
