//! Validity rules: batches, blocks, epochs, certificates.

use fhirseal_consensus::{
    validate_block, validate_finalized_block, validate_transaction, AnchorBatch, BlockProducer,
    DelegateSet, Error, Hash256, PublicKey, Roster, SigningKey, Timestamp, Transaction,
};

use crate::support::*;

fn anchor(tx: &mut Transaction) -> &mut AnchorBatch {
    match tx {
        Transaction::Anchor(batch) => batch,
        other => panic!("not an anchor batch: {other:?}"),
    }
}

#[test]
fn a_signed_batch_validates() {
    let tx = fresh_batch(1, "a", 5);
    validate_transaction(&tx, &roster()).unwrap();
}

#[test]
fn a_changed_entry_breaks_the_batch_root() {
    let mut tx = fresh_batch(1, "a", 5);
    anchor(&mut tx).entries[3].clinical_hash[0] ^= 1;
    assert!(matches!(
        validate_transaction(&tx, &roster()),
        Err(Error::RootMismatch("batch"))
    ));
}

#[test]
fn a_changed_header_breaks_the_signature() {
    let mut tx = fresh_batch(1, "a", 5);
    anchor(&mut tx).header.id.0[0] ^= 1;
    assert!(matches!(
        validate_transaction(&tx, &roster()),
        Err(Error::BadSignature("batch"))
    ));
}

#[test]
fn only_the_institutions_key_may_sign_its_batches() {
    let stranger = SigningKey::from_bytes(&[9; 32]);
    let tx = Transaction::Anchor(
        AnchorBatch::sign(batch_id(1), INSTITUTION, vec![entry("a", "1")], &stranger).unwrap(),
    );
    assert!(matches!(
        validate_transaction(&tx, &roster()),
        Err(Error::WrongSigner(_))
    ));

    let mut other = entry("a", "1");
    other.institution = "hospital-b".into();
    let tx = Transaction::Anchor(
        AnchorBatch::sign(batch_id(1), "hospital-b", vec![other], &stranger).unwrap(),
    );
    assert!(matches!(
        validate_transaction(&tx, &roster()),
        Err(Error::UnknownInstitution(_))
    ));
}

#[test]
fn malformed_batches_cannot_be_signed() {
    let key = institution_key();
    assert!(AnchorBatch::sign(batch_id(1), INSTITUTION, vec![], &key).is_err());
    let mut foreign = entry("a", "1");
    foreign.institution = "hospital-b".into();
    assert!(AnchorBatch::sign(batch_id(1), INSTITUTION, vec![foreign], &key).is_err());
    let twice = vec![entry("a", "1"), entry("a", "1")];
    assert!(matches!(
        AnchorBatch::sign(batch_id(1), INSTITUTION, twice, &key),
        Err(Error::AlreadyAnchored { .. })
    ));
    let mut unversioned = entry("a", "1");
    unversioned.version_id.clear();
    assert!(AnchorBatch::sign(batch_id(1), INSTITUTION, vec![unversioned], &key).is_err());
}

fn producer() -> BlockProducer {
    BlockProducer::new(PublicKey::of(&delegate_key()))
}

fn genesis() -> fhirseal_consensus::FinalizedBlock {
    certified(None, vec![fresh_batch(1, "g", 2)], 100)
}

#[test]
fn a_produced_chain_validates() {
    let g = genesis();
    let hash = validate_finalized_block(&chain_key(), None, &g, &roster()).unwrap();
    assert_eq!(hash, g.header().hash());
    let next = certified(
        Some(g.header()),
        vec![fresh_batch(2, "n", 3), fresh_batch(3, "m", 1)],
        200,
    );
    assert_eq!(next.header().height, 1);
    assert_eq!(next.header().previous, hash);
    validate_finalized_block(&chain_key(), Some(g.header()), &next, &roster()).unwrap();
}

#[test]
fn a_block_must_follow_its_predecessor() {
    let g = genesis();
    let p = producer();
    let next = |time| {
        p.propose(
            Some(g.header()),
            vec![fresh_batch(2, "n", 1)],
            0,
            Timestamp(time),
        )
    };
    let roster = roster();

    let mut b = next(200);
    b.header.height = 2;
    assert!(matches!(
        validate_block(Some(g.header()), &b, &roster),
        Err(Error::Height {
            expected: 1,
            found: 2
        })
    ));

    let mut b = next(200);
    b.header.previous = Hash256([7; 32]);
    assert!(matches!(
        validate_block(Some(g.header()), &b, &roster),
        Err(Error::InvalidBlock(_))
    ));

    // The producer raises a clock that went back; a header that goes back anyway is refused.
    assert_eq!(next(50).header.time, Timestamp(100));
    let mut b = next(200);
    b.header.time = Timestamp(99);
    assert!(matches!(
        validate_block(Some(g.header()), &b, &roster),
        Err(Error::InvalidBlock(_))
    ));

    let mut genesis_like = g.block.clone();
    genesis_like.header.previous = Hash256([1; 32]);
    assert!(validate_block(None, &genesis_like, &roster).is_err());
}

#[test]
fn each_block_is_certified_by_the_epoch_its_predecessor_named() {
    let p = producer();
    let roster = roster();
    // Genesis is epoch 0's, and names epoch 2 for its successor.
    let g = p.propose(None, vec![fresh_batch(1, "g", 1)], 2, Timestamp(1));
    assert_eq!((g.header.epoch, g.header.next_epoch), (0, 2));
    validate_block(None, &g, &roster).unwrap();
    let mut not_zero = g.clone();
    not_zero.header.epoch = 1;
    assert!(matches!(
        validate_block(None, &not_zero, &roster),
        Err(Error::InvalidBlock(_))
    ));

    let next = p.propose(Some(&g.header), vec![], 2, Timestamp(2));
    assert_eq!(next.header.epoch, 2);
    validate_block(Some(&g.header), &next, &roster).unwrap();
    // Not the epoch the predecessor named, or a next epoch going back: refused.
    let mut other_epoch = next.clone();
    other_epoch.header.epoch = 1;
    assert!(validate_block(Some(&g.header), &other_epoch, &roster).is_err());
    let mut back = next.clone();
    back.header.next_epoch = 1;
    assert!(validate_block(Some(&g.header), &back, &roster).is_err());
    // The producer never names an earlier epoch than its block's.
    assert_eq!(
        p.propose(Some(&g.header), vec![], 0, Timestamp(2))
            .header
            .next_epoch,
        2
    );
}

#[test]
fn a_block_commits_to_its_transactions() {
    let p = producer();
    let roster = roster();
    let block = p.propose(
        None,
        vec![fresh_batch(1, "a", 2), fresh_batch(2, "b", 2)],
        0,
        Timestamp(1),
    );
    validate_block(None, &block, &roster).unwrap();

    let mut dropped = block.clone();
    dropped.transactions.pop();
    assert!(validate_block(None, &dropped, &roster).is_err());

    let mut swapped = block.clone();
    swapped.transactions.swap(0, 1);
    assert!(matches!(
        validate_block(None, &swapped, &roster),
        Err(Error::RootMismatch("block transaction"))
    ));

    let mut recounted = block.clone();
    recounted.header.tx_count = 3;
    assert!(matches!(
        validate_block(None, &recounted, &roster),
        Err(Error::InvalidBlock(_))
    ));
}

#[test]
fn a_block_holds_a_transaction_and_a_resource_version_once() {
    let p = producer();
    let roster = roster();
    let twice = p.propose(
        None,
        vec![fresh_batch(1, "a", 1), fresh_batch(1, "a", 1)],
        0,
        Timestamp(1),
    );
    assert!(matches!(
        validate_block(None, &twice, &roster),
        Err(Error::InvalidBlock(_))
    ));
    let same_entry = p.propose(
        None,
        vec![fresh_batch(1, "a", 1), fresh_batch(2, "a", 1)],
        0,
        Timestamp(1),
    );
    assert!(matches!(
        validate_block(None, &same_entry, &roster),
        Err(Error::AlreadyAnchored { .. })
    ));
}

#[test]
fn only_a_delegate_may_produce() {
    let stranger = SigningKey::from_bytes(&[9; 32]);
    let block = certified_by(&stranger, None, vec![fresh_batch(1, "a", 1)], 1);
    assert!(matches!(
        validate_finalized_block(&chain_key(), None, &block, &roster()),
        Err(Error::UnknownProducer)
    ));
}

fn delegates(n: u8) -> (Vec<SigningKey>, Roster) {
    let keys: Vec<_> = (0..n)
        .map(|i| SigningKey::from_bytes(&[100 + i; 32]))
        .collect();
    let set = DelegateSet::new(keys.iter().map(PublicKey::of).collect()).unwrap();
    (keys, roster().with_delegates(set))
}

#[test]
fn one_delegate_finalizes_with_one_precommit() {
    let (keys, roster) = delegates(1);
    let block = certified_by(&keys[0], None, vec![fresh_batch(1, "a", 1)], 1);
    validate_finalized_block(&chain_key(), None, &block, &roster).unwrap();
    let mut unsigned = block.clone();
    unsigned.certificate = fhirseal_consensus::CommitCertificate::new(
        0,
        fhirseal_consensus::bft::Round(0),
        block.header().hash(),
        vec![],
    );
    assert!(matches!(
        validate_finalized_block(&chain_key(), None, &unsigned, &roster),
        Err(Error::NotEnoughSignatures { have: 0, need: 1 })
    ));
}

#[test]
fn four_delegates_need_three_precommits_for_this_block_on_this_chain() {
    let (keys, roster) = delegates(4);
    assert_eq!(roster.delegates().quorum(), 3);
    let block = BlockProducer::new(PublicKey::of(&keys[0])).propose(
        None,
        vec![fresh_batch(1, "a", 1)],
        0,
        Timestamp(1),
    );
    let by = |n: usize| certify(block.clone(), &keys[..n]);
    assert!(matches!(
        validate_finalized_block(&chain_key(), None, &by(2), &roster),
        Err(Error::NotEnoughSignatures { have: 2, need: 3 })
    ));
    validate_finalized_block(&chain_key(), None, &by(3), &roster).unwrap();
    validate_finalized_block(&chain_key(), None, &by(4), &roster).unwrap();

    // Precommits for another chain, or a certificate of another block, do not finalize it.
    let other_chain = fhirseal_consensus::chain_id("another consortium");
    assert!(validate_finalized_block(&other_chain, None, &by(4), &roster).is_err());
    let mut other_block = by(4);
    other_block.block.header.time = Timestamp(2);
    assert!(matches!(
        validate_finalized_block(&chain_key(), None, &other_block, &roster),
        Err(Error::InvalidCertificate(_))
    ));
    // A non-delegate's precommit spoils the certificate.
    let mut with_stranger = keys[..3].to_vec();
    with_stranger.push(SigningKey::from_bytes(&[9; 32]));
    assert!(matches!(
        validate_finalized_block(&chain_key(), None, &certify(block, &with_stranger), &roster),
        Err(Error::InvalidCertificate(_))
    ));
}

#[test]
fn a_roster_for_another_consortium_refuses_the_block() {
    let g = genesis();
    let other = Roster::single_node(
        INSTITUTION,
        PublicKey::of(&institution_key()),
        PublicKey([0x42; 32]),
    );
    assert!(validate_finalized_block(&chain_key(), None, &g, &other).is_err());
}
