//! The single-node anchoring round that `anchoring.rs` measures, shared with `ledger.rs`, which
//! prints it as its baseline (each includes it with `#[path = "support/single_node.rs"]`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use fhirseal_consensus::bft::{EngineConfig, MalachiteEngine};
use fhirseal_consensus::ledger::{Effect, FixedContext};
use fhirseal_consensus::{
    chain_id, AnchorBatch, AnchorEntry, BatchId, BlockLimits, Chain, ChainStore, Driver,
    DriverConfig, PublicKey, Roster, SigningKey, Timestamp, Transaction,
};

/// The institution of the consortium of one.
pub(crate) const INSTITUTION: &str = "hospital-a";

/// Entry `n` of `institution`: a version never anchored before, as the write path hands it over.
pub(crate) fn entry(institution: &str, n: u64) -> AnchorEntry {
    let mut hash = [0; 32];
    hash[..8].copy_from_slice(&n.to_be_bytes());
    AnchorEntry {
        institution: institution.into(),
        resource_type: "Observation".into(),
        logical_id: format!("obs-{n}"),
        version_id: "1".into(),
        fingerprint: hash,
        sealed_address: hash,
        clinical_hash: hash,
    }
}

/// Batch id `n`.
pub(crate) fn batch_id(n: u64) -> BatchId {
    let mut id = [0; 16];
    id[8..].copy_from_slice(&n.to_be_bytes());
    BatchId(id)
}

/// The driver as the sidecar runs it: Malachite's engine made by `MalachiteEngine::new`.
pub(crate) type OneDriver =
    Driver<MalachiteEngine, fn(EngineConfig, SigningKey) -> MalachiteEngine>;

/// The embedded consortium of one (one institution, one delegate) on a sled chain in a temporary
/// directory, driven by hand: no runtime, no write-ahead log.
pub(crate) struct Fixture {
    // Kept so the database directory lives as long as the ledger.
    _dir: tempfile::TempDir,
    db: sled::Db,
    runtime: tokio::runtime::Runtime,
    chain: Chain,
    driver: OneDriver,
    context: FixedContext,
    roster: Roster,
    institution: SigningKey,
    next_entry: u64,
    next_batch: u64,
    time: u64,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::open(dir.path()).expect("sled");
        let institution = SigningKey::from_bytes(&[1; 32]);
        let delegate = SigningKey::from_bytes(&[2; 32]);
        let roster = Roster::single_node(
            INSTITUTION,
            PublicKey::of(&institution),
            PublicKey::of(&delegate),
        );
        let chain_key = chain_id("bench");
        let chain = Chain::open(ChainStore::open(&db).expect("store"), chain_key).expect("chain");
        let mut config = DriverConfig::new(EngineConfig::new(chain_key));
        config.limits = BlockLimits {
            max_transactions: 1024,
            max_items: 1 << 16,
        };
        let driver: OneDriver = Driver::new(
            config,
            "delegate".into(),
            MalachiteEngine::new,
            chain.tip().cloned(),
        );
        let context = FixedContext {
            reader: chain.reader(),
            roster: Arc::new(roster.clone()),
            members: vec!["delegate".into()],
            keys: vec![delegate],
            holding: true,
            election: None,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        Self {
            _dir: dir,
            db,
            runtime,
            chain,
            driver,
            context,
            roster,
            institution,
            next_entry: 0,
            next_batch: 0,
            time: 0,
        }
    }

    /// Opens the chain again beside the one in use, as a restarted node does, which files every
    /// stored block's entries in memory again: how long that took, and how much the process's
    /// resident memory grew meanwhile (bytes; `None` without `/proc`).
    #[allow(dead_code)] // the ledger bench's
    pub(crate) fn reopen(&self) -> (Duration, Option<u64>) {
        let before = resident();
        let start = Instant::now();
        let store = ChainStore::open(&self.db).expect("store");
        let chain = Chain::open(store, *self.chain.chain_id()).expect("chain");
        let took = start.elapsed();
        assert_eq!(chain.next_height(), self.chain.next_height());
        let grown = resident().zip(before).map(|(a, b)| a.saturating_sub(b));
        drop(chain);
        (took, grown)
    }

    /// Entries anchored so far.
    #[allow(dead_code)] // the ledger bench's
    pub(crate) fn anchored(&self) -> u64 {
        self.next_entry
    }

    /// `n` entries never anchored before, as the write path would hand them over.
    pub(crate) fn entries(&mut self, n: usize) -> Vec<AnchorEntry> {
        (0..n)
            .map(|_| {
                self.next_entry += 1;
                entry(INSTITUTION, self.next_entry)
            })
            .collect()
    }

    /// One block of `batches` batches of `per_batch` entries; returns the time it took, and the
    /// part of it spent producing the block (validating, storing, flushing).
    pub(crate) fn anchor_round(
        &mut self,
        per_batch: usize,
        batches: usize,
    ) -> (Duration, Duration) {
        let prepared: Vec<Vec<AnchorEntry>> =
            (0..batches).map(|_| self.entries(per_batch)).collect();
        let start = Instant::now();
        let mut transactions = Vec::with_capacity(batches);
        for entries in prepared {
            self.next_batch += 1;
            let batch = AnchorBatch::sign(
                batch_id(self.next_batch),
                INSTITUTION,
                entries,
                &self.institution,
            )
            .expect("sign");
            transactions.push(Transaction::Anchor(batch));
        }
        self.time += 1;
        let time = Timestamp(self.time);
        let produce = Instant::now();
        let (answers, effects) = self
            .driver
            .submit(transactions, self.time, time, &self.context)
            .expect("submit");
        assert!(answers.iter().all(Result::is_ok));
        let mut stored = 0;
        for effect in effects {
            if let Effect::Append(block) = effect {
                let receipt = self
                    .runtime
                    .block_on(self.chain.append_validated(&block, &self.roster))
                    .expect("append");
                stored += receipt.transactions.len();
            }
        }
        let (elapsed, producing) = (start.elapsed(), produce.elapsed());
        assert_eq!(stored, batches);
        (elapsed, producing)
    }
}

/// The process's resident memory (bytes), from `/proc/self/statm`.
fn resident() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
