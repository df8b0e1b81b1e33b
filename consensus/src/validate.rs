//! Validity rules, as plain functions over data: what a delegate checks before signing a block,
//! what a node checks before storing one, what chain verification re-checks from genesis.

use std::collections::HashSet;

use crate::block::{transaction_leaves, Block, BlockHeader, FinalizedBlock};
use crate::codec::limits;
use crate::error::{Error, Result};
use crate::hash::Hash256;
use crate::keys::Roster;
use crate::merkle;
use crate::tx::Transaction;

/// Checks a transaction on its own: its signer is one of its institution's keys in `roster`,
/// and the batch is well formed, its root matches its items and its signature verifies
/// (strictly).
pub fn validate_transaction(tx: &Transaction, roster: &Roster) -> Result<()> {
    let header = tx.header();
    roster.check_signer(&header.institution, &header.signer)?;
    tx.verify()
}

/// Checks a proposed block against its predecessor (`None` for genesis) and `roster`: height,
/// link to the previous hash, (epoch, slot) and time order, producer among the delegates,
/// transaction count and Merkle root, every transaction (see [`validate_transaction`]), and no
/// transaction or resource version twice in the block. Returns the block hash.
///
/// Whether a transaction or a resource version is already in the chain is the chain's state, not
/// the block's: [`crate::Chain::append`] checks that.
pub fn validate_block(
    previous: Option<&BlockHeader>,
    block: &Block,
    roster: &Roster,
) -> Result<Hash256> {
    let header = &block.header;
    let expected = previous.map_or(0, |p| p.height + 1);
    if header.height != expected {
        return Err(Error::Height {
            expected,
            found: header.height,
        });
    }
    match previous {
        None => {
            if header.previous != Hash256::ZERO {
                return Err(Error::InvalidBlock(
                    "genesis must have a zero previous hash",
                ));
            }
        }
        Some(p) => {
            if header.previous != p.hash() {
                return Err(Error::InvalidBlock(
                    "previous hash is not the previous block's",
                ));
            }
            if (header.epoch, header.slot) <= (p.epoch, p.slot) {
                return Err(Error::InvalidBlock(
                    "(epoch, slot) does not come after the previous block's",
                ));
            }
            if header.time < p.time {
                return Err(Error::InvalidBlock(
                    "time is earlier than the previous block's",
                ));
            }
        }
    }
    if !roster.delegates().contains(&header.producer) {
        return Err(Error::UnknownProducer);
    }
    if block.transactions.len() > limits::MAX_BLOCK_TRANSACTIONS
        || usize::try_from(header.tx_count).ok() != Some(block.transactions.len())
    {
        return Err(Error::InvalidBlock(
            "transaction count does not match, or is over the limit",
        ));
    }
    if merkle::root(&transaction_leaves(&block.transactions)) != header.tx_root {
        return Err(Error::RootMismatch("block transaction"));
    }
    let mut tx_keys = HashSet::with_capacity(block.transactions.len());
    let mut anchor_keys = HashSet::new();
    for tx in &block.transactions {
        validate_transaction(tx, roster)?;
        if !tx_keys.insert(tx.key()) {
            return Err(Error::InvalidBlock("a transaction appears twice"));
        }
        if let Transaction::Anchor(batch) = tx {
            for entry in &batch.entries {
                if !anchor_keys.insert(entry.key()) {
                    return Err(Error::AlreadyAnchored {
                        resource: entry.resource(),
                        location: None,
                    });
                }
            }
        }
    }
    Ok(header.hash())
}

/// [`validate_block`], then the certificate: a quorum of the roster's delegates signed the hash.
pub fn validate_finalized_block(
    previous: Option<&BlockHeader>,
    block: &FinalizedBlock,
    roster: &Roster,
) -> Result<Hash256> {
    let hash = validate_block(previous, &block.block, roster)?;
    let delegates = roster.delegates();
    block
        .certificate
        .verify(&hash, delegates, delegates.quorum())?;
    Ok(hash)
}
