//! Anchor proofs: produced by the chain, checked with nothing but the roster.

use fhirseal_consensus::{AnchorProof, Error, PublicKey, Roster, SigningKey, Timestamp};

use crate::support::*;

async fn anchored() -> (tempfile::TempDir, sled::Db, TestLedger) {
    let (dir, db) = db();
    let mut ledger = ledger(&db);
    // Three blocks of batches of 1, 3 and 5 entries so that paths have promoted levels.
    let mut n = 0;
    for block in 0..3u64 {
        for size in [1, 3, 5] {
            n += 1;
            ledger
                .submit(fresh_batch(n, &format!("b{block}-s{size}"), size))
                .unwrap();
        }
        ledger.produce(Timestamp(10 * block)).await.unwrap();
    }
    (dir, db, ledger)
}

#[tokio::test]
async fn every_anchored_entry_has_a_proof_that_verifies() {
    let (_dir, _db, ledger) = anchored().await;
    let chain = ledger.chain();
    for block in 0..3 {
        for size in [1, 3, 5] {
            for i in 0..size {
                let id = format!("b{block}-s{size}-{i}");
                let proof = chain
                    .proof(INSTITUTION, "Observation", &id, "1")
                    .unwrap()
                    .expect("anchored");
                assert_eq!(proof.entry, entry(&id, "1"));
                let hash = proof.verify(&chain_key(), &roster()).unwrap();
                assert_eq!(hash, chain.block(block).unwrap().unwrap().header().hash());
                assert_eq!(proof.header.height, block);
                // The proof travels as bytes.
                let decoded = AnchorProof::from_bytes(&proof.to_bytes()).unwrap();
                assert_eq!(decoded, proof);
                decoded.verify(&chain_key(), &roster()).unwrap();
            }
        }
    }
    assert!(chain
        .proof(INSTITUTION, "Observation", "b0-s1-0", "2")
        .unwrap()
        .is_none());
    assert!(chain
        .proof("hospital-b", "Observation", "b0-s1-0", "1")
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_proof_fails_when_anything_in_it_changes() {
    let (_dir, _db, ledger) = anchored().await;
    let proof = ledger
        .chain()
        .proof(INSTITUTION, "Observation", "b1-s5-3", "1")
        .unwrap()
        .unwrap();
    let roster = roster();
    proof.verify(&chain_key(), &roster).unwrap();

    // The upstream's content changed: another clinical hash is not what was anchored.
    let mut p = proof.clone();
    p.entry.clinical_hash[0] ^= 1;
    assert!(matches!(
        p.verify(&chain_key(), &roster),
        Err(Error::RootMismatch("batch"))
    ));

    let mut p = proof.clone();
    p.entry.version_id = "2".into();
    assert!(p.verify(&chain_key(), &roster).is_err());

    let mut p = proof.clone();
    p.entry_path.index ^= 1;
    assert!(p.verify(&chain_key(), &roster).is_err());

    let mut p = proof.clone();
    p.entry_path.count += 1;
    assert!(p.verify(&chain_key(), &roster).is_err());

    let mut p = proof.clone();
    p.batch.root.0[0] ^= 1;
    assert!(matches!(
        p.verify(&chain_key(), &roster),
        Err(Error::BadSignature(_))
    ));

    let mut p = proof.clone();
    p.transaction_path.siblings[0].0[0] ^= 1;
    assert!(matches!(
        p.verify(&chain_key(), &roster),
        Err(Error::RootMismatch("block transaction"))
    ));

    let mut p = proof.clone();
    p.header.time = Timestamp(p.header.time.0 + 1);
    assert!(matches!(
        p.verify(&chain_key(), &roster),
        Err(Error::InvalidCertificate(_))
    ));

    // Checked against another consortium's chain, the precommits do not verify.
    let other = fhirseal_consensus::chain_id("another consortium");
    assert!(matches!(
        proof.verify(&other, &roster),
        Err(Error::BadSignature(_))
    ));

    let mut p = proof.clone();
    p.certificate = fhirseal_consensus::CommitCertificate::new(
        p.header.height,
        p.certificate.round,
        p.header.hash(),
        vec![],
    );
    assert!(matches!(
        p.verify(&chain_key(), &roster),
        Err(Error::NotEnoughSignatures { .. })
    ));
}

#[tokio::test]
async fn a_proof_is_only_as_good_as_the_roster_it_is_checked_against() {
    let (_dir, _db, ledger) = anchored().await;
    let proof = ledger
        .chain()
        .proof(INSTITUTION, "Observation", "b2-s3-0", "1")
        .unwrap()
        .unwrap();
    let other_delegate = Roster::single_node(
        INSTITUTION,
        PublicKey::of(&institution_key()),
        PublicKey::of(&SigningKey::from_bytes(&[8; 32])),
    );
    assert!(proof.verify(&chain_key(), &other_delegate).is_err());
    let other_institution_key = Roster::single_node(
        INSTITUTION,
        PublicKey::of(&SigningKey::from_bytes(&[8; 32])),
        PublicKey::of(&delegate_key()),
    );
    assert!(matches!(
        proof.verify(&chain_key(), &other_institution_key),
        Err(Error::WrongSigner(_))
    ));
}

#[test]
fn a_proof_can_be_built_without_a_store() {
    // The pure path, as the DPoS and light clients will use it: batch → block → proof parts.
    let tx = fresh_batch(1, "x", 3);
    let block = certified(None, vec![fresh_batch(2, "y", 2), tx.clone()], 1);
    let fhirseal_consensus::Transaction::Anchor(batch) = &tx else {
        unreachable!()
    };
    let proof = AnchorProof {
        entry: batch.entries[2].clone(),
        entry_path: batch.prove(2).unwrap(),
        batch: batch.header.clone(),
        transaction_path: fhirseal_consensus::merkle::prove(&block.block.leaves(), 1).unwrap(),
        header: block.block.header.clone(),
        certificate: block.certificate.clone(),
    };
    proof.verify(&chain_key(), &roster()).unwrap();
}
