//! Blocks, their headers, and what the chain stores: a block with the commit certificate that
//! finalized it.

use crate::bft::CommitCertificate;
use crate::codec::{limits, top_level_encoding, DecodeError, Reader, Wire, Writer};
use crate::hash::{tag, tagged, Hash256};
use crate::keys::PublicKey;
use crate::merkle;
use crate::tx::{Timestamp, Transaction};

/// The identity of a consortium's chain, signed in every vote and proposal so that nothing signed
/// for one consortium counts on another's chain: `SHA-256(0x12 ‖ consortium name)`.
pub fn chain_id(consortium: &str) -> Hash256 {
    tagged(tag::CHAIN_ID, &[consortium.as_bytes()])
}

/// A block header; its hash is the block's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockHeader {
    /// 0 for genesis, then the previous block's height + 1.
    pub height: u64,
    /// The previous block's hash; [`Hash256::ZERO`] for genesis.
    pub previous: Hash256,
    /// The governance epoch whose delegates certify this block: the previous block's
    /// `next_epoch` (0 for genesis).
    pub epoch: u64,
    /// The governance epoch whose delegates certify the next block: this block's epoch or a later
    /// one the proposer's governance state has begun. Fixed here so that the delegates of every
    /// height are known before the height starts.
    pub next_epoch: u64,
    /// The delegate that proposed the block.
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
        w.u64(self.next_epoch);
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
            next_epoch: r.u64("next epoch")?,
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

top_level_encoding!(Block);

impl Wire for Block {
    const MIN_LEN: usize = <BlockHeader as Wire>::MIN_LEN + 4;

    fn write(&self, w: &mut Writer) {
        self.header.write(w);
        w.len(self.transactions.len());
        for tx in &self.transactions {
            tx.write(w);
        }
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
        Ok(Self {
            header,
            transactions,
        })
    }
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

/// A block with its commit certificate (2f + 1 of its epoch's delegates precommitted its hash in
/// one round): what the chain stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalizedBlock {
    /// The block.
    pub block: Block,
    /// The delegates' precommits for its hash.
    pub certificate: CommitCertificate,
}

top_level_encoding!(FinalizedBlock);

impl FinalizedBlock {
    /// The header.
    pub fn header(&self) -> &BlockHeader {
        &self.block.header
    }
}

impl Wire for FinalizedBlock {
    const MIN_LEN: usize = <Block as Wire>::MIN_LEN + <CommitCertificate as Wire>::MIN_LEN;

    fn write(&self, w: &mut Writer) {
        self.block.write(w);
        self.certificate.write(w);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            block: Block::read(r)?,
            certificate: CommitCertificate::read(r)?,
        })
    }
}
