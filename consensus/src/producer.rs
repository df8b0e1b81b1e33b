//! Block production as pure code: the pending pool and proposing a block. Blocks are finalized
//! by the delegates' BFT engine ([`crate::bft`]), driven by [`crate::ledger::Driver`].

use std::collections::{HashSet, VecDeque};

use crate::block::{transaction_leaves, Block, BlockHeader};
use crate::codec::limits;
use crate::hash::Hash256;
use crate::keys::PublicKey;
use crate::merkle;
use crate::tx::{Timestamp, Transaction};

/// How much goes into one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLimits {
    /// Most transactions per block.
    pub max_transactions: usize,
    /// Most anchor entries and access events per block, all batches together. A single batch
    /// larger than this still goes into a block of its own.
    pub max_items: usize,
}

impl BlockLimits {
    /// These limits, lowered to what a block may hold at all.
    pub fn clamped(self) -> Self {
        Self {
            max_transactions: self
                .max_transactions
                .clamp(1, limits::MAX_BLOCK_TRANSACTIONS),
            max_items: self.max_items.max(1),
        }
    }
}

impl Default for BlockLimits {
    /// 1024 batches and 8192 items: a block of a few megabytes at most, stored as one sled value.
    fn default() -> Self {
        Self {
            max_transactions: 1024,
            max_items: 8192,
        }
    }
}

/// Transactions waiting for a block, in arrival order, at most once each (by transaction key),
/// with the anchor keys they hold so that a resource version cannot be queued twice.
#[derive(Debug, Default)]
pub struct Mempool {
    queue: VecDeque<Transaction>,
    tx_keys: HashSet<Vec<u8>>,
    anchor_keys: HashSet<Vec<u8>>,
}

impl Mempool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many transactions wait.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether a transaction with this key waits.
    pub fn contains(&self, tx_key: &[u8]) -> bool {
        self.tx_keys.contains(tx_key)
    }

    /// Whether `tx` itself waits: one with its key and the same content.
    pub fn holds(&self, tx: &Transaction) -> bool {
        self.contains(&tx.key()) && self.queue.iter().any(|waiting| waiting == tx)
    }

    /// Whether a waiting transaction anchors this key.
    pub fn contains_anchor(&self, anchor_key: &[u8]) -> bool {
        self.anchor_keys.contains(anchor_key)
    }

    /// Queues `tx` at the back; false (and nothing queued) if its key already waits.
    /// The caller has validated it.
    pub fn push(&mut self, tx: Transaction) -> bool {
        if !self.tx_keys.insert(tx.key()) {
            return false;
        }
        if let Transaction::Anchor(batch) = &tx {
            self.anchor_keys
                .extend(batch.entries.iter().map(|e| e.key()));
        }
        self.queue.push_back(tx);
        true
    }

    /// Takes transactions from the front, in order, within `limits` (always at least one if any
    /// waits, so that an over-sized batch is not stuck).
    pub fn take(&mut self, limits: BlockLimits) -> Vec<Transaction> {
        let mut taken = Vec::new();
        let mut items = 0;
        while let Some(next) = self.queue.front() {
            let fits = taken.len() < limits.max_transactions
                && items + next.item_count() <= limits.max_items;
            if !taken.is_empty() && !fits {
                break;
            }
            let Some(tx) = self.queue.pop_front() else {
                break;
            };
            items += tx.item_count();
            self.forget(&tx);
            taken.push(tx);
        }
        taken
    }

    /// Drops every waiting transaction `keep` refuses (one a finalized block now holds, or
    /// whose anchors it holds); returns how many went.
    pub fn retain(&mut self, mut keep: impl FnMut(&Transaction) -> bool) -> usize {
        let before = self.queue.len();
        let mut dropped = Vec::new();
        self.queue.retain(|tx| {
            let kept = keep(tx);
            if !kept {
                dropped.push(tx.clone());
            }
            kept
        });
        for tx in &dropped {
            self.forget(tx);
        }
        before - self.queue.len()
    }

    /// Puts transactions taken by [`Mempool::take`] back at the front, in their order, after a
    /// block holding them was not finalized.
    pub fn restore(&mut self, transactions: Vec<Transaction>) {
        for tx in transactions.into_iter().rev() {
            if self.tx_keys.insert(tx.key()) {
                if let Transaction::Anchor(batch) = &tx {
                    self.anchor_keys
                        .extend(batch.entries.iter().map(|e| e.key()));
                }
                self.queue.push_front(tx);
            }
        }
    }

    fn forget(&mut self, tx: &Transaction) {
        self.tx_keys.remove(&tx.key());
        if let Transaction::Anchor(batch) = tx {
            for entry in &batch.entries {
                self.anchor_keys.remove(&entry.key());
            }
        }
    }
}

/// A delegate's block-making side: proposes blocks on the chain's tip.
#[derive(Debug, Clone, Copy)]
pub struct BlockProducer {
    public: PublicKey,
}

impl BlockProducer {
    /// A producer whose blocks name `public` (the proposing delegate's key).
    pub fn new(public: PublicKey) -> Self {
        Self { public }
    }

    /// The delegate's public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The block that follows `previous` (`None` for genesis) with `transactions`, certified by
    /// the epoch `previous` named next (0 for genesis) and naming `next_epoch` (raised to the
    /// block's own epoch if lower) for its successor, at `time`. The time is raised to the
    /// previous block's if the clock went back, so that block times never decrease.
    pub fn propose(
        &self,
        previous: Option<&BlockHeader>,
        transactions: Vec<Transaction>,
        next_epoch: u64,
        time: Timestamp,
    ) -> Block {
        let epoch = previous.map_or(0, |p| p.next_epoch);
        let header = BlockHeader {
            height: previous.map_or(0, |p| p.height + 1),
            previous: previous.map_or(Hash256::ZERO, BlockHeader::hash),
            epoch,
            next_epoch: next_epoch.max(epoch),
            producer: self.public,
            tx_root: merkle::root(&transaction_leaves(&transactions)),
            // Over the limits, the count saturates and the block fails validation: the caller
            // keeps within `BlockLimits`.
            tx_count: u32::try_from(transactions.len()).unwrap_or(u32::MAX),
            time: previous.map_or(time, |p| time.max(p.time)),
        };
        Block {
            header,
            transactions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tx::{AnchorBatch, AnchorEntry, BatchId};

    fn batch(n: u8, entries: usize) -> Transaction {
        let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        let entries = (0..entries)
            .map(|i| AnchorEntry {
                institution: "h".into(),
                resource_type: "Observation".into(),
                logical_id: format!("{n}-{i}"),
                version_id: "1".into(),
                fingerprint: [0; 32],
                sealed_address: [0; 32],
                clinical_hash: [0; 32],
            })
            .collect();
        Transaction::Anchor(AnchorBatch::sign(BatchId([n; 16]), "h", entries, &key).unwrap())
    }

    fn ids(txs: &[Transaction]) -> Vec<u8> {
        txs.iter().map(|t| t.id().batch.0[0]).collect()
    }

    #[test]
    fn the_pool_keeps_order_and_refuses_repeats() {
        let mut pool = Mempool::new();
        assert!(pool.push(batch(1, 2)));
        assert!(pool.push(batch(2, 2)));
        assert!(!pool.push(batch(1, 2)));
        assert_eq!(pool.len(), 2);
        assert!(pool.contains(&batch(1, 2).key()));
        let taken = pool.take(BlockLimits::default());
        assert_eq!(ids(&taken), [1, 2]);
        assert!(pool.is_empty());
        assert!(!pool.contains(&batch(1, 2).key()));
    }

    #[test]
    fn the_pool_holds_a_transaction_only_with_its_content() {
        let mut pool = Mempool::new();
        pool.push(batch(1, 2));
        assert!(pool.holds(&batch(1, 2)));
        // Same batch id and signer (same key), other entries: not what was verified.
        assert!(pool.contains(&batch(1, 3).key()));
        assert!(!pool.holds(&batch(1, 3)));
        assert!(!pool.holds(&batch(2, 2)));
        pool.take(BlockLimits::default());
        assert!(!pool.holds(&batch(1, 2)));
    }

    #[test]
    fn take_respects_the_limits_but_always_takes_one() {
        let mut pool = Mempool::new();
        for n in 1..=4 {
            pool.push(batch(n, 3));
        }
        let limits = BlockLimits {
            max_transactions: 10,
            max_items: 7,
        };
        assert_eq!(ids(&pool.take(limits)), [1, 2]);
        let tiny = BlockLimits {
            max_transactions: 10,
            max_items: 1,
        };
        assert_eq!(ids(&pool.take(tiny)), [3]);
        let one = BlockLimits {
            max_transactions: 1,
            max_items: 100,
        };
        assert_eq!(ids(&pool.take(one)), [4]);
    }

    #[test]
    fn restore_puts_transactions_back_in_front_in_order() {
        let mut pool = Mempool::new();
        for n in 1..=3 {
            pool.push(batch(n, 1));
        }
        let taken = pool.take(BlockLimits {
            max_transactions: 2,
            max_items: 100,
        });
        let anchor = match &taken[0] {
            Transaction::Anchor(b) => b.entries[0].key(),
            _ => unreachable!(),
        };
        assert!(!pool.contains_anchor(&anchor));
        pool.restore(taken);
        assert!(pool.contains_anchor(&anchor));
        assert_eq!(ids(&pool.take(BlockLimits::default())), [1, 2, 3]);
    }

    #[test]
    fn the_producer_links_blocks_and_never_goes_back_in_time() {
        let producer = BlockProducer::new(PublicKey([2; 32]));
        let genesis = producer.propose(None, vec![batch(1, 1)], 3, Timestamp(50));
        assert_eq!(genesis.header.height, 0);
        assert_eq!(genesis.header.previous, Hash256::ZERO);
        assert_eq!(genesis.header.tx_count, 1);
        assert_eq!((genesis.header.epoch, genesis.header.next_epoch), (0, 3));
        let next = producer.propose(Some(&genesis.header), vec![], 1, Timestamp(10));
        assert_eq!(next.header.height, 1);
        assert_eq!(next.header.previous, genesis.header.hash());
        assert_eq!(next.header.time, Timestamp(50));
        assert_eq!(next.header.tx_root, merkle::empty_root());
        // The epoch named next never goes back either.
        assert_eq!((next.header.epoch, next.header.next_epoch), (3, 3));
    }

    #[test]
    fn retain_drops_what_a_block_made_final() {
        let mut pool = Mempool::new();
        for n in 1..=3 {
            pool.push(batch(n, 1));
        }
        let gone = batch(2, 1).key();
        assert_eq!(pool.retain(|tx| tx.key() != gone), 1);
        assert!(!pool.contains(&gone));
        assert_eq!(ids(&pool.take(BlockLimits::default())), [1, 3]);
    }
}
