//! Blocks, their headers, and finality certificates.

use ed25519_dalek::Signature;

use crate::codec::{self, limits, top_level_encoding, DecodeError, Reader, Wire, Writer};
use crate::error::{Error, Result};
use crate::hash::{tag, tagged, Hash256};
use crate::keys::{ascending_distinct, DelegateSet, PublicKey};
use crate::merkle;
use crate::tx::{Timestamp, Transaction};

/// A block header; its hash is the block's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockHeader {
    /// 0 for genesis, then the previous block's height + 1.
    pub height: u64,
    /// The previous block's hash; [`Hash256::ZERO`] for genesis.
    pub previous: Hash256,
    /// The DPoS epoch (0 for the single-node consortium).
    pub epoch: u64,
    /// The slot in the epoch; (epoch, slot) strictly increases along the chain.
    pub slot: u64,
    /// The delegate that produced the block.
    pub producer: PublicKey,
    /// Merkle root over the leaves `leaf_hash(transaction hash)`, in block order.
    pub tx_root: Hash256,
    /// How many transactions (checked against Merkle proofs' counts).
    pub tx_count: u32,
    /// When it was produced; never earlier than the previous block's time.
    pub time: Timestamp,
}

top_level_encoding!(BlockHeader);

impl BlockHeader {
    /// The block hash: `SHA-256(0x10 ‖ encoded header)`.
    pub fn hash(&self) -> Hash256 {
        tagged(tag::BLOCK_HEADER, &[&self.to_bytes()])
    }
}

impl Wire for BlockHeader {
    const MIN_LEN: usize = 8 + 32 + 8 + 8 + 32 + 32 + 4 + 8;

    fn write(&self, w: &mut Writer) {
        w.u64(self.height);
        w.raw(&self.previous.0);
        w.u64(self.epoch);
        w.u64(self.slot);
        w.raw(&self.producer.0);
        w.raw(&self.tx_root.0);
        w.u32(self.tx_count);
        w.u64(self.time.0);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            height: r.u64("block height")?,
            previous: Hash256(r.array("previous hash")?),
            epoch: r.u64("epoch")?,
            slot: r.u64("slot")?,
            producer: PublicKey(r.array("producer")?),
            tx_root: Hash256(r.array("transaction root")?),
            tx_count: r.u32("transaction count")?,
            time: Timestamp(r.u64("block time")?),
        })
    }
}

/// A block as proposed: header and transactions, not yet certified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The header.
    pub header: BlockHeader,
    /// The transactions, in Merkle leaf order.
    pub transactions: Vec<Transaction>,
}

impl Block {
    /// The Merkle leaves of the transactions.
    pub fn leaves(&self) -> Vec<Hash256> {
        transaction_leaves(&self.transactions)
    }
}

/// The leaves of a block's transaction tree: `leaf_hash(transaction hash)`.
pub(crate) fn transaction_leaves(transactions: &[Transaction]) -> Vec<Hash256> {
    transactions
        .iter()
        .map(|tx| merkle::leaf_hash(&tx.hash().0))
        .collect()
}

/// One delegate's signature over a block hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelegateSignature {
    /// The delegate.
    pub delegate: PublicKey,
    /// Its signature of [`vote_message`] for the block hash.
    pub signature: Signature,
}

/// What a delegate signs to finalize the block with hash `block_hash`: tag 0x21, the format
/// version, then the hash. Two such signatures by one delegate at one height over different
/// hashes are the evidence of double signing.
pub fn vote_message(block_hash: &Hash256) -> [u8; 34] {
    let mut message = [0; 34];
    message[0] = tag::FINALITY_VOTE;
    message[1] = codec::FORMAT_VERSION;
    message[2..].copy_from_slice(&block_hash.0);
    message
}

impl DelegateSignature {
    /// Checks the signature over `block_hash`.
    pub fn verify(&self, block_hash: &Hash256) -> Result<()> {
        self.delegate
            .verify(&vote_message(block_hash), &self.signature, "finality vote")
    }
}

/// Delegate signatures over one block hash. Signatures are kept in ascending order of delegate
/// key, one per delegate, so that a certificate has one encoding.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinalityCertificate {
    signatures: Vec<DelegateSignature>,
}

impl FinalityCertificate {
    /// A certificate from votes in any order; a delegate's later duplicates are dropped.
    pub fn from_votes(mut votes: Vec<DelegateSignature>) -> Self {
        votes.sort_by_key(|v| v.delegate);
        votes.dedup_by_key(|v| v.delegate);
        Self { signatures: votes }
    }

    /// The signatures, in ascending delegate order.
    pub fn signatures(&self) -> &[DelegateSignature] {
        &self.signatures
    }

    /// Checks that at least `threshold` distinct `delegates` signed `block_hash`: every signature
    /// must be a delegate's and valid (one forged or foreign signature spoils the certificate,
    /// which an honest aggregator never produces), in ascending delegate order with no repeat.
    /// Use [`DelegateSet::quorum`] as `threshold`: `2f + 1` of `K = 3f + 1`, 1 of 1.
    pub fn verify(
        &self,
        block_hash: &Hash256,
        delegates: &DelegateSet,
        threshold: usize,
    ) -> Result<()> {
        if threshold == 0 {
            return Err(Error::InvalidCertificate("threshold is zero"));
        }
        if !ascending_distinct(self.signatures.iter().map(|s| &s.delegate)) {
            return Err(Error::InvalidCertificate(
                "signatures not in ascending delegate order, or repeated",
            ));
        }
        for vote in &self.signatures {
            if !delegates.contains(&vote.delegate) {
                return Err(Error::InvalidCertificate("a signer is not a delegate"));
            }
            vote.verify(block_hash)?;
        }
        if self.signatures.len() < threshold {
            return Err(Error::NotEnoughSignatures {
                have: self.signatures.len(),
                need: threshold,
            });
        }
        Ok(())
    }
}

impl Wire for FinalityCertificate {
    const MIN_LEN: usize = 4;

    fn write(&self, w: &mut Writer) {
        w.len(self.signatures.len());
        for vote in &self.signatures {
            w.raw(&vote.delegate.0);
            w.raw(&vote.signature.to_bytes());
        }
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.count("certificate signatures", limits::MAX_SIGNATURES, 96)?;
        let signatures = (0..n)
            .map(|_| {
                Ok(DelegateSignature {
                    delegate: PublicKey(r.array("certificate delegate")?),
                    signature: Signature::from_bytes(&r.array("certificate signature")?),
                })
            })
            .collect::<Result<_, DecodeError>>()?;
        Ok(Self { signatures })
    }
}

/// A block with its finality certificate: what the chain stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalizedBlock {
    /// The block.
    pub block: Block,
    /// The delegates' signatures over its hash.
    pub certificate: FinalityCertificate,
}

top_level_encoding!(FinalizedBlock);

impl FinalizedBlock {
    /// The header.
    pub fn header(&self) -> &BlockHeader {
        &self.block.header
    }
}

impl Wire for FinalizedBlock {
    const MIN_LEN: usize = <BlockHeader as Wire>::MIN_LEN + 4 + 4;

    fn write(&self, w: &mut Writer) {
        self.block.header.write(w);
        w.len(self.block.transactions.len());
        for tx in &self.block.transactions {
            tx.write(w);
        }
        self.certificate.write(w);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let header = BlockHeader::read(r)?;
        let n = r.count(
            "block transactions",
            limits::MAX_BLOCK_TRANSACTIONS,
            <Transaction as Wire>::MIN_LEN,
        )?;
        let transactions = (0..n)
            .map(|_| Transaction::read(r))
            .collect::<Result<_, _>>()?;
        let certificate = FinalityCertificate::read(r)?;
        Ok(Self {
            block: Block {
                header,
                transactions,
            },
            certificate,
        })
    }
}
