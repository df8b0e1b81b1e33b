//! Validity rules, as plain functions over data: what a delegate checks before signing a block,
//! what a node checks before storing one, what chain verification re-checks from genesis.

use std::collections::HashSet;

use crate::bft::CommitCertificate;
use crate::block::{transaction_leaves, Block, BlockHeader, FinalizedBlock};
use crate::codec::limits;
use crate::error::{Error, Result};
use crate::hash::Hash256;
use crate::keys::Roster;
use crate::merkle;
use crate::tx::Transaction;

/// Checks a transaction on its own: its signer is one of its institution's keys in `roster`,
/// and the batch is well formed, its root matches its items and its signature verifies
/// (strictly). A ballot names no institution: its ring signature is checked by the election,
/// against the voters of its epoch.
pub fn validate_transaction(tx: &Transaction, roster: &Roster) -> Result<()> {
    check_signer(tx, roster)?;
    tx.verify()
}

/// The part of [`validate_transaction`] that depends on `roster`: the signer is one of the
/// institution's keys.
fn check_signer(tx: &Transaction, roster: &Roster) -> Result<()> {
    match tx.header() {
        Some(header) => roster.check_signer(&header.institution, &header.signer),
        None => Ok(()),
    }
}

/// Checks a proposed block against its predecessor (`None` for genesis) and `roster` (its epoch's
/// delegates, the institutions' keys): its header (see [`validate_header`]), every transaction
/// (see [`validate_transaction`]), and no transaction or resource version twice in the block.
/// Returns the block hash.
///
/// Whether a transaction or a resource version is already in the chain is the chain's state, not
/// the block's: [`crate::Chain::append`] checks that.
pub fn validate_block(
    previous: Option<&BlockHeader>,
    block: &Block,
    roster: &Roster,
) -> Result<Hash256> {
    validate_block_with(previous, block, roster, |_| false)
}

/// [`validate_block`], taking the transactions `verified` names as verifying on their own (the
/// caller checked each one's root and signature with [`Transaction::verify`]: a delegate's pool
/// holds what it took that way): a batch of thousands of entries costs a Merkle root over them
/// and a signature to check again, and a delegate judging a proposal holds most of its batches
/// already. Their signers are still checked against `roster`, and every transaction's place in
/// the block.
pub fn validate_block_with(
    previous: Option<&BlockHeader>,
    block: &Block,
    roster: &Roster,
    verified: impl Fn(&Transaction) -> bool,
) -> Result<Hash256> {
    let hash = validate_header(previous, block, roster)?;
    let mut tx_keys = HashSet::with_capacity(block.transactions.len());
    let mut anchor_keys = HashSet::new();
    for tx in &block.transactions {
        if verified(tx) {
            check_signer(tx, roster)?;
        } else {
            validate_transaction(tx, roster)?;
        }
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
    Ok(hash)
}

/// The part of [`validate_block`] that does not look into the transactions: height, link to the
/// previous hash, epochs (the block's is its predecessor's `next_epoch`, 0 for genesis; its own
/// `next_epoch` is not earlier), time order, producer among the delegates, transaction count and
/// Merkle root. Returns the block hash.
pub fn validate_header(
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
    if header.next_epoch < header.epoch {
        return Err(Error::InvalidBlock(
            "the next epoch is earlier than the block's",
        ));
    }
    match previous {
        None => {
            if header.previous != Hash256::ZERO {
                return Err(Error::InvalidBlock(
                    "genesis must have a zero previous hash",
                ));
            }
            if header.epoch != 0 {
                return Err(Error::InvalidBlock("genesis is certified by epoch 0"));
            }
        }
        Some(p) => {
            if header.previous != p.hash() {
                return Err(Error::InvalidBlock(
                    "previous hash is not the previous block's",
                ));
            }
            if header.epoch != p.next_epoch {
                return Err(Error::InvalidBlock(
                    "the epoch is not the one the previous block named next",
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
    Ok(header.hash())
}

/// [`validate_block`], then the certificate: see [`check_certificate`].
pub fn validate_finalized_block(
    chain: &Hash256,
    previous: Option<&BlockHeader>,
    block: &FinalizedBlock,
    roster: &Roster,
) -> Result<Hash256> {
    let hash = validate_block(previous, &block.block, roster)?;
    check_certificate(chain, &block.certificate, block.header(), roster)?;
    Ok(hash)
}

/// Checks that `certificate` finalizes the block of `header` on chain `chain`: it names the
/// block's height and hash, and a quorum of `roster`'s delegates precommitted it (see
/// [`CommitCertificate::verify`]). Returns the block hash.
pub fn check_certificate(
    chain: &Hash256,
    certificate: &CommitCertificate,
    header: &BlockHeader,
    roster: &Roster,
) -> Result<Hash256> {
    let hash = header.hash();
    if certificate.height != header.height || certificate.block != hash {
        return Err(Error::InvalidCertificate("it certifies another block"));
    }
    certificate.verify(chain, roster.delegates())?;
    Ok(hash)
}
