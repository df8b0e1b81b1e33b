//! Keys, entries, certified blocks and a one-delegate ledger for the tests.

use std::sync::Arc;

use fhirseal_consensus::bft::{
    CertSignature, EngineConfig, MalachiteEngine, Round, Vote, VoteKind,
};
use fhirseal_consensus::ledger::{Effect, FixedContext};
use fhirseal_consensus::{
    chain_id, AnchorBatch, AnchorEntry, BatchId, Block, BlockHeader, BlockProducer, BlockReceipt,
    Chain, ChainStore, CommitCertificate, Driver, DriverConfig, FinalizedBlock, Hash256, PublicKey,
    Roster, SigningKey, Submitted, Timestamp, Transaction,
};

pub(crate) const INSTITUTION: &str = "hospital-a";

/// The chain every test block is certified for.
pub(crate) fn chain_key() -> Hash256 {
    chain_id("test consortium")
}

pub(crate) fn institution_key() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

pub(crate) fn delegate_key() -> SigningKey {
    SigningKey::from_bytes(&[2; 32])
}

pub(crate) fn roster() -> Roster {
    Roster::single_node(
        INSTITUTION,
        PublicKey::of(&institution_key()),
        PublicKey::of(&delegate_key()),
    )
}

pub(crate) fn entry(id: &str, version: &str) -> AnchorEntry {
    AnchorEntry {
        institution: INSTITUTION.into(),
        resource_type: "Observation".into(),
        logical_id: id.into(),
        version_id: version.into(),
        fingerprint: [0xf1; 32],
        sealed_address: [0x5e; 32],
        clinical_hash: [0xc1; 32],
    }
}

pub(crate) fn batch_id(n: u64) -> BatchId {
    let mut id = [0; 16];
    id[8..].copy_from_slice(&n.to_be_bytes());
    BatchId(id)
}

/// A signed anchor batch of `entries`, with batch id `n`.
pub(crate) fn anchor_batch(n: u64, entries: Vec<AnchorEntry>) -> Transaction {
    Transaction::Anchor(
        AnchorBatch::sign(batch_id(n), INSTITUTION, entries, &institution_key()).unwrap(),
    )
}

/// A batch of `count` fresh entries `prefix-0 … prefix-(count-1)`, version 1.
pub(crate) fn fresh_batch(n: u64, prefix: &str, count: usize) -> Transaction {
    let entries = (0..count)
        .map(|i| entry(&format!("{prefix}-{i}"), "1"))
        .collect();
    anchor_batch(n, entries)
}

/// `block` with a certificate of round 0 precommits by `keys`.
pub(crate) fn certify(block: Block, keys: &[SigningKey]) -> FinalizedBlock {
    let hash = block.header.hash();
    let height = block.header.height;
    let signatures = keys
        .iter()
        .map(|key| {
            let vote = Vote::sign(
                VoteKind::Precommit,
                height,
                Round(0),
                Some(hash),
                &chain_key(),
                key,
            );
            CertSignature {
                delegate: vote.delegate,
                signature: vote.signature,
            }
        })
        .collect();
    FinalizedBlock {
        block,
        certificate: CommitCertificate::new(height, Round(0), hash, signatures),
    }
}

/// The block after `previous` with `transactions`, proposed and certified by `key` alone.
pub(crate) fn certified_by(
    key: &SigningKey,
    previous: Option<&BlockHeader>,
    transactions: Vec<Transaction>,
    time: u64,
) -> FinalizedBlock {
    let block =
        BlockProducer::new(PublicKey::of(key)).propose(previous, transactions, 0, Timestamp(time));
    certify(block, std::slice::from_ref(key))
}

/// The same, by the test delegate.
pub(crate) fn certified(
    previous: Option<&BlockHeader>,
    transactions: Vec<Transaction>,
    time: u64,
) -> FinalizedBlock {
    certified_by(&delegate_key(), previous, transactions, time)
}

/// A sled database on disk in its own directory (kept alive by the returned guard).
pub(crate) fn db() -> (tempfile::TempDir, sled::Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    (dir, db)
}

pub(crate) fn chain(db: &sled::Db) -> Chain {
    Chain::open(ChainStore::open(db).unwrap(), chain_key()).unwrap()
}

type TestDriver = Driver<MalachiteEngine, fn(EngineConfig, SigningKey) -> MalachiteEngine>;

/// The embedded consortium of one, as the sidecar runs it: the real driver with one delegate
/// and its engine, its effects performed on a sled chain (no log: nothing here crashes).
/// Transactions wait until [`TestLedger::produce`] lets the delegate propose.
pub(crate) struct TestLedger {
    chain: Chain,
    driver: TestDriver,
    context: FixedContext,
}

impl TestLedger {
    pub(crate) fn new(chain: Chain) -> Self {
        let config = DriverConfig::new(EngineConfig::new(chain_key()));
        let driver: TestDriver = Driver::new(
            config,
            "delegate".to_owned(),
            MalachiteEngine::new,
            chain.tip().cloned(),
        );
        let context = FixedContext {
            reader: chain.reader(),
            roster: Arc::new(roster()),
            members: vec!["delegate".to_owned()],
            keys: vec![delegate_key()],
            holding: false,
            election: None,
        };
        Self {
            chain,
            driver,
            context,
        }
    }

    pub(crate) fn submit(&mut self, tx: Transaction) -> fhirseal_consensus::Result<Submitted> {
        let (mut answers, effects) = self
            .driver
            .submit(vec![tx], 0, Timestamp(0), &self.context)
            .unwrap();
        assert!(effects.is_empty(), "nothing happens before produce");
        answers.pop().unwrap()
    }

    /// Lets the delegate propose what waits, at `time`; the block it finalized, if any.
    pub(crate) async fn produce(&mut self, time: Timestamp) -> Option<BlockReceipt> {
        self.context.holding = true;
        let effects = self
            .driver
            .handle(
                fhirseal_consensus::ledger::Input::Tick,
                0,
                time,
                &self.context,
            )
            .unwrap();
        self.context.holding = false;
        let mut receipt = None;
        for effect in effects {
            if let Effect::Append(block) = effect {
                // As the runtime does: the driver validated it whole.
                receipt = Some(
                    self.chain
                        .append_validated(&block, &roster())
                        .await
                        .unwrap(),
                );
            }
        }
        receipt
    }

    pub(crate) fn chain(&self) -> &Chain {
        &self.chain
    }

    /// Hands `input` to the driver; what it asks of the runtime.
    pub(crate) fn handle(&mut self, input: fhirseal_consensus::ledger::Input) -> Vec<Effect> {
        self.driver
            .handle(input, 0, Timestamp(0), &self.context)
            .unwrap()
    }

    pub(crate) fn pending(&self) -> usize {
        self.driver.status(&self.context).pending
    }
}

pub(crate) fn ledger(db: &sled::Db) -> TestLedger {
    TestLedger::new(chain(db))
}
