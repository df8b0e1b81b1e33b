//! Validity rules: batches, blocks, certificates.

use ed25519_dalek::Signer as _;
use fhirseal_consensus::{
    validate_block, validate_finalized_block, validate_transaction, AnchorBatch, BlockProducer,
    DelegateSet, Error, FinalityCertificate, Hash256, PublicKey, Roster, SigningKey, Timestamp,
    Transaction,
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
    BlockProducer::new(delegate_key())
}

fn genesis() -> fhirseal_consensus::FinalizedBlock {
    producer().produce_alone(None, vec![fresh_batch(1, "g", 2)], 0, 0, Timestamp(100))
}

#[test]
fn a_produced_chain_validates() {
    let g = genesis();
    let hash = validate_finalized_block(None, &g, &roster()).unwrap();
    assert_eq!(hash, g.header().hash());
    let next = producer().produce_alone(
        Some(g.header()),
        vec![fresh_batch(2, "n", 3), fresh_batch(3, "m", 1)],
        0,
        1,
        Timestamp(200),
    );
    assert_eq!(next.header().height, 1);
    assert_eq!(next.header().previous, hash);
    validate_finalized_block(Some(g.header()), &next, &roster()).unwrap();
}

#[test]
fn a_block_must_follow_its_predecessor() {
    let g = genesis();
    let p = producer();
    let next = |slot, time| {
        p.propose(
            Some(g.header()),
            vec![fresh_batch(2, "n", 1)],
            0,
            slot,
            Timestamp(time),
        )
    };
    let roster = roster();

    let mut b = next(1, 200);
    b.header.height = 2;
    assert!(matches!(
        validate_block(Some(g.header()), &b, &roster),
        Err(Error::Height {
            expected: 1,
            found: 2
        })
    ));

    let mut b = next(1, 200);
    b.header.previous = Hash256([7; 32]);
    assert!(matches!(
        validate_block(Some(g.header()), &b, &roster),
        Err(Error::InvalidBlock(_))
    ));

    // Same slot as genesis.
    assert!(matches!(
        validate_block(Some(g.header()), &next(0, 200), &roster),
        Err(Error::InvalidBlock(_))
    ));

    // The producer raises a clock that went back; a header that goes back anyway is refused.
    assert_eq!(next(1, 50).header.time, Timestamp(100));
    let mut b = next(1, 200);
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
fn a_block_commits_to_its_transactions() {
    let p = producer();
    let roster = roster();
    let block = p.propose(
        None,
        vec![fresh_batch(1, "a", 2), fresh_batch(2, "b", 2)],
        0,
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
    let stranger = BlockProducer::new(SigningKey::from_bytes(&[9; 32]));
    let block = stranger.produce_alone(None, vec![fresh_batch(1, "a", 1)], 0, 0, Timestamp(1));
    assert!(matches!(
        validate_finalized_block(None, &block, &roster()),
        Err(Error::UnknownProducer)
    ));
}

fn delegates(n: u8) -> (Vec<BlockProducer>, DelegateSet) {
    let producers: Vec<_> = (0..n)
        .map(|i| BlockProducer::new(SigningKey::from_bytes(&[100 + i; 32])))
        .collect();
    let set = DelegateSet::new(producers.iter().map(BlockProducer::public_key).collect()).unwrap();
    (producers, set)
}

#[test]
fn one_delegate_finalizes_with_one_signature() {
    let (ps, set) = delegates(1);
    let hash = Hash256([3; 32]);
    let cert = FinalityCertificate::from_votes(vec![ps[0].vote(&hash)]);
    cert.verify(&hash, &set, set.quorum()).unwrap();
    assert!(FinalityCertificate::default()
        .verify(&hash, &set, set.quorum())
        .is_err());
}

#[test]
fn four_delegates_need_three_signatures() {
    let (ps, set) = delegates(4);
    assert_eq!(set.quorum(), 3);
    let hash = Hash256([3; 32]);
    let votes =
        |n: usize| FinalityCertificate::from_votes(ps[..n].iter().map(|p| p.vote(&hash)).collect());
    assert!(matches!(
        votes(2).verify(&hash, &set, set.quorum()),
        Err(Error::NotEnoughSignatures { have: 2, need: 3 })
    ));
    votes(3).verify(&hash, &set, set.quorum()).unwrap();
    votes(4).verify(&hash, &set, set.quorum()).unwrap();

    // A repeated vote does not count twice.
    let repeated = FinalityCertificate::from_votes(vec![
        ps[0].vote(&hash),
        ps[0].vote(&hash),
        ps[1].vote(&hash),
    ]);
    assert_eq!(repeated.signatures().len(), 2);
    assert!(repeated.verify(&hash, &set, set.quorum()).is_err());

    // Votes for another block, or by a non-delegate, spoil the certificate.
    let other = Hash256([4; 32]);
    let mut mixed: Vec<_> = ps[..2].iter().map(|p| p.vote(&hash)).collect();
    mixed.push(ps[2].vote(&other));
    assert!(matches!(
        FinalityCertificate::from_votes(mixed).verify(&hash, &set, set.quorum()),
        Err(Error::BadSignature(_))
    ));
    let stranger = BlockProducer::new(SigningKey::from_bytes(&[9; 32]));
    let mut foreign: Vec<_> = ps[..3].iter().map(|p| p.vote(&hash)).collect();
    foreign.push(stranger.vote(&hash));
    assert!(matches!(
        FinalityCertificate::from_votes(foreign).verify(&hash, &set, set.quorum()),
        Err(Error::InvalidCertificate(_))
    ));
}

#[test]
fn a_vote_is_not_a_signature_of_the_bare_hash() {
    // Domain separation: a delegate's signature over the raw 32 bytes (as some other protocol
    // might ask for) is not a finality vote.
    let key = delegate_key();
    let hash = Hash256([5; 32]);
    let bare = fhirseal_consensus::DelegateSignature {
        delegate: PublicKey::of(&key),
        signature: key.sign(&hash.0),
    };
    let set = DelegateSet::new(vec![PublicKey::of(&key)]).unwrap();
    assert!(FinalityCertificate::from_votes(vec![bare])
        .verify(&hash, &set, 1)
        .is_err());
}

#[test]
fn a_roster_for_another_consortium_refuses_the_block() {
    let g = genesis();
    let other = Roster::single_node(
        INSTITUTION,
        PublicKey::of(&institution_key()),
        PublicKey([0x42; 32]),
    );
    assert!(validate_finalized_block(None, &g, &other).is_err());
}
