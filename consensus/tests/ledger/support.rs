//! Keys, entries and ledgers for the tests.

use fhirseal_consensus::BlockProducer;
use fhirseal_consensus::{
    AnchorBatch, AnchorEntry, BatchId, Chain, ChainStore, PublicKey, Roster, SigningKey,
    SoloLedger, Transaction,
};

pub(crate) const INSTITUTION: &str = "hospital-a";

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

/// A sled database on disk in its own directory (kept alive by the returned guard).
pub(crate) fn db() -> (tempfile::TempDir, sled::Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    (dir, db)
}

pub(crate) fn chain(db: &sled::Db) -> Chain {
    Chain::open(ChainStore::open(db).unwrap()).unwrap()
}

pub(crate) fn ledger(db: &sled::Db) -> SoloLedger {
    SoloLedger::new(chain(db), BlockProducer::new(delegate_key()), roster()).unwrap()
}
