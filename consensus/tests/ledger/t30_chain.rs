//! The chain on sled: anchoring through the one-delegate driver (the embedded default), idempotence,
//! restarts, and verification from genesis that names the first bad height.

use fhirseal_consensus::{Chain, ChainCheck, ChainStore, Error, Submitted, Timestamp, Transaction};
use fhirseal_storage::chain_store::{ChainStoreError, BLOCKS_TREE, TRANSACTIONS_TREE};

use crate::support::*;

/// Anchors `blocks` blocks of two batches of three entries each.
async fn anchor_blocks(ledger: &mut TestLedger, blocks: u64) {
    for b in 0..blocks {
        for t in 0..2 {
            let n = b * 2 + t;
            let tx = fresh_batch(n, &format!("r{n}"), 3);
            assert_eq!(ledger.submit(tx).unwrap(), Submitted::Queued);
        }
        let receipt = ledger.produce(Timestamp(1_000 + b)).await.expect("a block");
        assert_eq!(receipt.height, b);
        assert_eq!(receipt.transactions.len(), 2);
    }
}

#[tokio::test]
async fn the_single_node_anchors_and_the_chain_verifies() {
    let (_dir, db) = db();
    let mut ledger = ledger(&db);
    assert_eq!(ledger.produce(Timestamp(1)).await, None);
    anchor_blocks(&mut ledger, 4).await;
    assert_eq!(ledger.pending(), 0);
    let chain = ledger.chain();
    assert_eq!(chain.tip().unwrap().height, 3);
    match chain.verify_chain(&roster()).unwrap() {
        ChainCheck::Valid { blocks } => assert_eq!(blocks, 4),
        broken => panic!("{broken:?}"),
    }
    let location = chain
        .locate_anchor(INSTITUTION, "Observation", "r5-2", "1")
        .unwrap()
        .unwrap();
    assert_eq!(
        (location.height, location.transaction, location.entry),
        (2, 1, 2)
    );
}

#[tokio::test]
async fn a_batch_is_anchored_once_however_often_it_is_submitted() {
    let (_dir, db) = db();
    let mut ledger = ledger(&db);
    let tx = fresh_batch(1, "a", 2);
    assert_eq!(ledger.submit(tx.clone()).unwrap(), Submitted::Queued);
    assert_eq!(
        ledger.submit(tx.clone()).unwrap(),
        Submitted::AlreadyPending
    );
    let receipt = ledger.produce(Timestamp(5)).await.unwrap();
    assert_eq!(receipt.transactions, vec![tx.id()]);
    match ledger.submit(tx.clone()).unwrap() {
        Submitted::AlreadyAnchored(location) => {
            assert_eq!((location.height, location.position), (0, 0));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(ledger.produce(Timestamp(6)).await, None);

    // Re-batched differently (another signature over other entries) under the same id: still
    // the same transaction key, so still the first receipt.
    let rebatched = anchor_batch(1, vec![entry("z", "9")]);
    assert!(matches!(
        ledger.submit(rebatched).unwrap(),
        Submitted::AlreadyAnchored(_)
    ));
}

#[tokio::test]
async fn a_resource_version_is_anchored_once() {
    let (_dir, db) = db();
    let mut ledger = ledger(&db);
    ledger
        .submit(anchor_batch(1, vec![entry("a", "1")]))
        .unwrap();
    // Waiting in another batch.
    assert!(matches!(
        ledger.submit(anchor_batch(2, vec![entry("b", "1"), entry("a", "1")])),
        Err(Error::AlreadyAnchored { location: None, .. })
    ));
    ledger.produce(Timestamp(1)).await.unwrap();
    // Already in a block.
    assert!(matches!(
        ledger.submit(anchor_batch(3, vec![entry("a", "1")])),
        Err(Error::AlreadyAnchored {
            location: Some(_),
            ..
        })
    ));
    // Another version of it is another anchor.
    assert_eq!(
        ledger
            .submit(anchor_batch(4, vec![entry("a", "2")]))
            .unwrap(),
        Submitted::Queued
    );
}

#[tokio::test]
async fn the_chain_refuses_a_block_with_an_anchored_batch() {
    let (_dir, db) = db();
    let mut chain = chain(&db);
    let tx = fresh_batch(1, "a", 1);
    let first = certified(None, vec![tx.clone()], 1);
    chain.append(&first, &roster()).await.unwrap();
    let again = certified(chain.tip(), vec![tx], 2);
    assert!(matches!(
        chain.append(&again, &roster()).await,
        Err(Error::Store(ChainStoreError::DuplicateTransaction { .. }))
    ));
    assert_eq!(chain.tip().unwrap().height, 0);
    assert!(chain.block(1).unwrap().is_none());
}

#[tokio::test]
async fn the_chain_refuses_an_invalid_block() {
    let (_dir, db) = db();
    let mut chain = chain(&db);
    let mut block = certified(None, vec![fresh_batch(1, "a", 1)], 1);
    block.block.header.time = Timestamp(2);
    assert!(chain.append(&block, &roster()).await.is_err());
    assert!(chain.tip().is_none());
    assert!(chain.block(0).unwrap().is_none());
}

#[tokio::test]
async fn the_chain_survives_a_restart() {
    let (dir, db) = db();
    {
        let mut ledger = ledger(&db);
        anchor_blocks(&mut ledger, 2).await;
    }
    drop(db);
    let db = sled::open(dir.path()).unwrap();
    let mut ledger = ledger(&db);
    assert_eq!(ledger.chain().tip().unwrap().height, 1);
    assert!(matches!(
        ledger.submit(fresh_batch(0, "r0", 3)).unwrap(),
        Submitted::AlreadyAnchored(_)
    ));
    ledger.submit(fresh_batch(100, "later", 1)).unwrap();
    let receipt = ledger.produce(Timestamp(10)).await.unwrap();
    assert_eq!(receipt.height, 2);
    assert!(matches!(
        ledger.chain().verify_chain(&roster()).unwrap(),
        ChainCheck::Valid { blocks: 3 }
    ));
}

#[tokio::test]
async fn access_batches_are_anchored_too() {
    let (_dir, db) = db();
    let mut ledger = ledger(&db);
    let access = fhirseal_consensus::AccessBatch::sign(
        batch_id(50),
        INSTITUTION,
        vec![fhirseal_consensus::AccessEvent {
            principal: "Practitioner/1".into(),
            institution: INSTITUTION.into(),
            resource_type: "Patient".into(),
            logical_id: "p".into(),
            version_id: "3".into(),
            purpose_of_use: "TREAT".into(),
            time: Timestamp(77),
            reidentified: false,
            exchange: None,
        }],
        &institution_key(),
    )
    .unwrap();
    let tx = Transaction::Access(access);
    ledger.submit(tx.clone()).unwrap();
    ledger.produce(Timestamp(78)).await.unwrap();
    assert!(ledger
        .chain()
        .locate_transaction(&tx.key())
        .unwrap()
        .is_some());
    let stored = ledger.chain().block(0).unwrap().unwrap();
    assert_eq!(stored.block.transactions, vec![tx]);
}

fn grant_tx(n: u64, consent: &str, version: &str, expiry: u64) -> Transaction {
    Transaction::Grant(
        fhirseal_consensus::GrantBatch::sign(
            batch_id(n),
            INSTITUTION,
            vec![fhirseal_consensus::Grant {
                consent: consent.into(),
                version: version.into(),
                fingerprint: [4; 32],
                grantee: "hospital-b".into(),
                grantee_role: String::new(),
                purposes: vec!["TREAT".into()],
                resource_types: Vec::new(),
                not_before: Timestamp(0),
                expiry: Timestamp(expiry),
            }],
            &institution_key(),
        )
        .unwrap(),
    )
}

#[tokio::test]
async fn a_consents_latest_item_on_the_chain_decides() {
    use fhirseal_consensus::{decide, GrantRefusal, GrantRequest};
    let (_dir, db) = db();
    let mut ledger = ledger(&db);
    let request = |now| GrantRequest {
        grantee: "hospital-b",
        role: "clinician",
        purpose: "TREAT",
        resource_type: Some("Patient"),
        now: Timestamp(now),
    };
    let decision = |ledger: &TestLedger, now| {
        let grants = ledger
            .chain()
            .reader()
            .grants(INSTITUTION, &[4; 32], "hospital-b")
            .unwrap();
        decide(&grants, &request(now)).map(|g| g.grant.version.clone())
    };
    assert_eq!(decision(&ledger, 150), Err(GrantRefusal::NoGrant));

    ledger.submit(grant_tx(1, "c1", "1", 10_000)).unwrap();
    ledger.produce(Timestamp(100)).await.unwrap();
    let reader = ledger.chain().reader();
    assert!(reader.consent_in_force(INSTITUTION, "c1").unwrap());
    assert!(!reader.consent_in_force(INSTITUTION, "c9").unwrap());
    // In effect from its block, until its expiry.
    assert_eq!(decision(&ledger, 99), Err(GrantRefusal::NotYet));
    assert_eq!(decision(&ledger, 150), Ok("1".to_owned()));
    assert_eq!(decision(&ledger, 10_000), Err(GrantRefusal::Expired));

    let revocation = fhirseal_consensus::RevocationBatch::sign(
        batch_id(2),
        INSTITUTION,
        vec![fhirseal_consensus::Revocation {
            consent: "c1".into(),
            request: "2".into(),
        }],
        &institution_key(),
    )
    .unwrap();
    ledger.submit(Transaction::Revocation(revocation)).unwrap();
    ledger.produce(Timestamp(200)).await.unwrap();
    assert_eq!(decision(&ledger, 250), Err(GrantRefusal::Revoked));
    assert!(!ledger
        .chain()
        .reader()
        .consent_in_force(INSTITUTION, "c1")
        .unwrap());

    // One version of a consent for two grantees: both current.
    let mut two = match grant_tx(5, "c3", "1", 0) {
        Transaction::Grant(batch) => batch.items,
        _ => unreachable!(),
    };
    let mut other = two[0].clone();
    other.grantee = "hospital-c".into();
    two.push(other);
    let both =
        fhirseal_consensus::GrantBatch::sign(batch_id(5), INSTITUTION, two, &institution_key())
            .unwrap();
    ledger.submit(Transaction::Grant(both)).unwrap();
    ledger.produce(Timestamp(250)).await.unwrap();
    for grantee in ["hospital-b", "hospital-c"] {
        let grants = ledger
            .chain()
            .reader()
            .grants(INSTITUTION, &[4; 32], grantee)
            .unwrap();
        let c3: Vec<_> = grants.iter().filter(|g| g.grant.consent == "c3").collect();
        assert_eq!(c3.len(), 1, "{grantee}");
        assert!(c3[0].current, "{grantee}");
    }

    // A grant of a newer version of the consent starts it again; one of another consent for
    // the same person stands beside it.
    ledger.submit(grant_tx(3, "c1", "3", 0)).unwrap();
    ledger.submit(grant_tx(4, "c2", "1", 0)).unwrap();
    ledger.produce(Timestamp(300)).await.unwrap();
    let grants = ledger
        .chain()
        .reader()
        .grants(INSTITUTION, &[4; 32], "hospital-b")
        .unwrap();
    assert_eq!(grants.len(), 3);
    assert!(grants.iter().all(|g| g.current));
    assert_eq!(decision(&ledger, 350).map(|_| ()), Ok(()));
    // Nothing for another person, or from another grantor.
    assert!(ledger
        .chain()
        .reader()
        .grants(INSTITUTION, &[5; 32], "hospital-b")
        .unwrap()
        .is_empty());
    assert!(ledger
        .chain()
        .reader()
        .grants("hospital-c", &[4; 32], "hospital-b")
        .unwrap()
        .is_empty());
    // An erasure is filed under its institution and person, at its block's time.
    let erasure = fhirseal_consensus::ErasureBatch::sign(
        batch_id(6),
        INSTITUTION,
        vec![fhirseal_consensus::Erasure {
            fingerprint: [4; 32],
            request: "e1".into(),
        }],
        &institution_key(),
    )
    .unwrap();
    assert!(ledger
        .chain()
        .reader()
        .erasure(INSTITUTION, &[4; 32])
        .unwrap()
        .is_none());
    ledger.submit(Transaction::Erasure(erasure)).unwrap();
    ledger.produce(Timestamp(400)).await.unwrap();
    let reader = ledger.chain().reader();
    let at = reader.erasure(INSTITUTION, &[4; 32]).unwrap().unwrap();
    assert_eq!(at, Timestamp(400));
    assert!(reader.erasure(INSTITUTION, &[5; 32]).unwrap().is_none());
    assert!(reader.erasure("hospital-c", &[4; 32]).unwrap().is_none());
    match ledger.chain().verify_chain(&roster()).unwrap() {
        ChainCheck::Valid { blocks } => assert_eq!(blocks, 5),
        broken => panic!("{broken:?}"),
    }
}

#[tokio::test]
async fn the_chain_tells_which_members_hold_a_persons_records_after_a_restart() {
    let (_dir, db) = db();
    {
        let mut ledger = ledger(&db);
        anchor_blocks(&mut ledger, 2).await;
        let reader = ledger.chain().reader();
        assert_eq!(reader.holders(&[0xf1; 32]).unwrap(), vec![INSTITUTION]);
        assert!(reader.holders(&[0xf2; 32]).unwrap().is_empty());
    }
    // The entry indexes live in memory: a store opened again knows none until the chain files
    // its blocks again.
    let store = ChainStore::open(&db).unwrap();
    assert_eq!(store.filed(), 0);
    let chain = Chain::open(store.clone(), chain_key()).unwrap();
    assert_eq!(store.filed(), chain.next_height());
    assert_eq!(
        chain.reader().holders(&[0xf1; 32]).unwrap(),
        vec![INSTITUTION]
    );
    assert!(chain
        .locate_anchor(INSTITUTION, "Observation", "r1-1", "1")
        .unwrap()
        .is_some());
}

/// A four-block chain on disk.
async fn four_blocks() -> (tempfile::TempDir, sled::Db) {
    let (dir, db) = db();
    let mut ledger = ledger(&db);
    anchor_blocks(&mut ledger, 4).await;
    (dir, db)
}

fn verify(db: &sled::Db) -> ChainCheck {
    chain(db).verify_chain(&roster()).unwrap()
}

fn broken_height(check: ChainCheck) -> u64 {
    match check {
        ChainCheck::Broken { height, fault } => {
            eprintln!("broken at {height}: {fault}");
            height
        }
        valid => panic!("corruption not found: {valid:?}"),
    }
}

#[tokio::test]
async fn a_corrupted_block_is_found_and_its_height_named() {
    let (_dir, db) = four_blocks().await;
    let blocks = db.open_tree(BLOCKS_TREE).unwrap();
    let key = 2u64.to_be_bytes();
    let original = blocks.get(key).unwrap().unwrap().to_vec();
    // One byte at a time, at places that hit the header, an entry's clinical hash (the last 32
    // bytes of the last entry sit before the certificate), and the certificate (height, round,
    // block hash, one signature).
    let len = original.len();
    let cert_len = 8 + 4 + 32 + 4 + 96;
    for at in [10, 140, len - cert_len - 1, len - 5] {
        let mut corrupted = original.clone();
        corrupted[at] ^= 0x01;
        blocks.insert(key, corrupted).unwrap();
        assert_eq!(broken_height(verify(&db)), 2, "byte {at} flipped");
    }
    blocks.insert(key, original).unwrap();
    assert!(matches!(verify(&db), ChainCheck::Valid { blocks: 4 }));
}

#[tokio::test]
async fn a_stored_block_anchoring_a_version_again_is_found_and_the_chain_takes_no_more() {
    // Block 4 re-anchors `r2-0` version 1 (anchored in block 1) under a new batch id, validly
    // signed and certified, written straight into the trees as a damaged or forged database
    // would hold it.
    let (_dir, db) = four_blocks().await;
    let tip = chain(&db).block(3).unwrap().unwrap();
    let again = anchor_batch(777, vec![entry("r2-0", "1")]);
    let forged = certified(Some(tip.header()), vec![again.clone()], 3_000);
    let height = 4u64.to_be_bytes();
    db.open_tree(BLOCKS_TREE)
        .unwrap()
        .insert(height, forged.to_bytes())
        .unwrap();
    db.open_tree(fhirseal_storage::chain_store::BLOCK_HASHES_TREE)
        .unwrap()
        .insert(forged.header().hash().0, &height)
        .unwrap();
    let mut location = height.to_vec();
    location.extend(0u32.to_be_bytes());
    db.open_tree(TRANSACTIONS_TREE)
        .unwrap()
        .insert(again.key(), location)
        .unwrap();

    let mut chain = chain(&db);
    assert_eq!(chain.unfiled(), Some(4));
    match chain.verify_chain(&roster()).unwrap() {
        ChainCheck::Broken {
            height: 4,
            fault: Error::AlreadyAnchored { resource, location },
        } => {
            assert_eq!(resource, "Observation/r2-0/_history/1");
            assert_eq!(location.map(|l| l.height), Some(1));
        }
        other => panic!("the repeated anchor was not found: {other:?}"),
    }
    let next = certified(
        Some(forged.header()),
        vec![fresh_batch(778, "r9", 1)],
        4_000,
    );
    assert!(matches!(
        chain.append(&next, &roster()).await,
        Err(Error::Store(ChainStoreError::NotFiled {
            height: 5,
            filed: 4
        }))
    ));
}

#[tokio::test]
async fn a_replaced_block_is_found() {
    // Even a well-formed block, validly signed with the delegate's key, swapped in for block 1
    // is found: its indexes (and block 2's link) point at the block that was there.
    let (_dir, db) = four_blocks().await;
    let blocks = db.open_tree(BLOCKS_TREE).unwrap();
    let block0 = chain(&db).block(0).unwrap().unwrap();
    let forged = certified(
        Some(block0.header()),
        vec![fresh_batch(999, "forged", 2)],
        2_000,
    );
    blocks
        .insert(1u64.to_be_bytes(), forged.to_bytes())
        .unwrap();
    assert_eq!(broken_height(verify(&db)), 1);
}

#[tokio::test]
async fn a_missing_block_is_found() {
    let (_dir, db) = four_blocks().await;
    db.open_tree(BLOCKS_TREE)
        .unwrap()
        .remove(1u64.to_be_bytes())
        .unwrap();
    assert_eq!(broken_height(verify(&db)), 1);
}

#[tokio::test]
async fn a_tampered_index_is_found() {
    let (_dir, db) = four_blocks().await;
    let chain = chain(&db);
    let key = chain.block(3).unwrap().unwrap().block.transactions[1].key();
    let transactions = db.open_tree(TRANSACTIONS_TREE).unwrap();
    let mut location = transactions.get(&key).unwrap().unwrap().to_vec();
    location[11] ^= 1;
    transactions.insert(&key, location).unwrap();
    assert_eq!(broken_height(verify(&db)), 3);
}

#[tokio::test]
async fn a_corrupted_tip_stops_the_chain_from_opening_but_is_still_located() {
    let (_dir, db) = four_blocks().await;
    let blocks = db.open_tree(BLOCKS_TREE).unwrap();
    let mut bytes = blocks.get(3u64.to_be_bytes()).unwrap().unwrap().to_vec();
    bytes.truncate(bytes.len() - 1);
    blocks.insert(3u64.to_be_bytes(), bytes).unwrap();
    let store = ChainStore::open(&db).unwrap();
    assert!(matches!(
        Chain::open(store.clone(), chain_key()),
        Err(Error::CorruptBlock { height: 3, .. })
    ));
    assert_eq!(
        broken_height(Chain::verify_store(&store, &chain_key(), &roster()).unwrap()),
        3
    );
}
