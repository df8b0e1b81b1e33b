//! Unit tests of the BFT types: signed bytes, encodings, certificates, evidence, and the engine
//! driven by hand (the seeded simulation is `consensus/tests/bft/`).

use std::collections::VecDeque;

use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use proptest::prelude::*;

use super::*;
use crate::codec::{self, DecodeError};
use crate::error::{Error, Result};
use crate::hash::{tag, tagged, Hash256};
use crate::keys::{DelegateSet, PublicKey};

const CHAIN: Hash256 = Hash256([7; 32]);

fn key(i: u8) -> SigningKey {
    SigningKey::from_bytes(&[i; 32])
}

fn delegates(keys: &[SigningKey]) -> DelegateSet {
    DelegateSet::new(keys.iter().map(PublicKey::of).collect()).unwrap()
}

fn block(n: u64) -> Hash256 {
    tagged(0xee, &[&n.to_be_bytes()])
}

#[test]
fn a_vote_signs_the_documented_bytes() {
    let delegate = PublicKey([0xdd; 32]);
    let hash = Hash256([0xbb; 32]);
    let mut expected = vec![0x42, codec::FORMAT_VERSION];
    expected.extend([7; 32]);
    expected.extend([0, 0, 0, 0, 0, 0, 1, 2]);
    expected.extend([0, 0, 0, 3]);
    expected.push(1);
    expected.extend([0xbb; 32]);
    expected.extend([0xdd; 32]);
    let bytes = vote_bytes(
        &CHAIN,
        VoteKind::Precommit,
        0x0102,
        Round(3),
        Some(&hash),
        &delegate,
    );
    assert_eq!(bytes, expected);

    // A nil prevote: tag 0x41, and 0x00 then 32 zero bytes where the hash was.
    let nil = vote_bytes(&CHAIN, VoteKind::Prevote, 0x0102, Round(3), None, &delegate);
    assert_eq!(nil[0], 0x41);
    assert_eq!(nil.len(), expected.len());
    assert_eq!(&nil[46..79], &[0; 33][..]);
}

#[test]
fn a_proposal_signs_the_documented_bytes() {
    let mut expected = vec![0x40, codec::FORMAT_VERSION];
    expected.extend([7; 32]);
    expected.extend([0, 0, 0, 0, 0, 0, 0, 9]);
    expected.extend([0, 0, 0, 2]);
    expected.extend([1, 0, 0, 0, 1]);
    expected.extend([0xbb; 32]);
    expected.extend([0xcc; 32]);
    let bytes = proposal_bytes(
        &CHAIN,
        9,
        Round(2),
        Some(Round(1)),
        &Hash256([0xbb; 32]),
        &PublicKey([0xcc; 32]),
    );
    assert_eq!(bytes, expected);
    let fresh = proposal_bytes(
        &CHAIN,
        9,
        Round(2),
        None,
        &Hash256([0xbb; 32]),
        &PublicKey([0xcc; 32]),
    );
    assert_eq!(&fresh[46..51], &[0; 5]);
}

#[test]
fn the_signed_tags_are_apart_from_every_other_purpose() {
    let others = [
        tag::MERKLE_LEAF,
        tag::MERKLE_NODE,
        tag::BLOCK_HEADER,
        tag::TRANSACTION,
        tag::BATCH_SIGNATURE,
        tag::FINALITY_VOTE,
        tag::GOVERNANCE_COMMAND,
        tag::KEY_POSSESSION,
    ];
    for ours in [tag::BFT_PROPOSAL, tag::BFT_PREVOTE, tag::BFT_PRECOMMIT] {
        assert!(!others.contains(&ours), "{ours:#x}");
    }
}

#[test]
fn a_signature_binds_every_field() {
    let k = key(1);
    let vote = Vote::sign(VoteKind::Precommit, 5, Round(1), Some(block(1)), &CHAIN, &k);
    vote.verify(&CHAIN).unwrap();
    assert!(vote.verify(&Hash256([8; 32])).is_err(), "another chain");
    let changed = [
        Vote {
            kind: VoteKind::Prevote,
            ..vote.clone()
        },
        Vote {
            height: 6,
            ..vote.clone()
        },
        Vote {
            round: Round(2),
            ..vote.clone()
        },
        Vote {
            block: None,
            ..vote.clone()
        },
        Vote {
            block: Some(block(2)),
            ..vote.clone()
        },
        Vote {
            delegate: PublicKey::of(&key(2)),
            ..vote.clone()
        },
    ];
    for v in changed {
        assert!(v.verify(&CHAIN).is_err(), "{v:?}");
    }

    let proposal = Proposal::sign(5, Round(1), None, block(1), &CHAIN, &k);
    proposal.verify(&CHAIN).unwrap();
    for p in [
        Proposal {
            pol_round: Some(Round(0)),
            ..proposal.clone()
        },
        Proposal {
            round: Round(0),
            ..proposal.clone()
        },
        Proposal {
            block: block(2),
            ..proposal.clone()
        },
    ] {
        assert!(p.verify(&CHAIN).is_err(), "{p:?}");
    }
}

fn precommits(keys: &[SigningKey], height: u64, round: Round, hash: Hash256) -> Vec<CertSignature> {
    keys.iter()
        .map(|k| {
            let v = Vote::sign(VoteKind::Precommit, height, round, Some(hash), &CHAIN, k);
            CertSignature {
                delegate: v.delegate,
                signature: v.signature,
            }
        })
        .collect()
}

#[test]
fn a_commit_certificate_needs_a_quorum_of_valid_distinct_delegates() {
    let keys: Vec<SigningKey> = (1..=4).map(key).collect();
    let set = delegates(&keys);
    let hash = block(3);
    let cert = |n: usize| {
        CommitCertificate::new(3, Round(1), hash, precommits(&keys[..n], 3, Round(1), hash))
    };
    assert_eq!(cert(3).verify(&CHAIN, &set).unwrap(), 3);
    assert_eq!(cert(4).verify(&CHAIN, &set).unwrap(), 4);
    assert!(matches!(
        cert(2).verify(&CHAIN, &set),
        Err(Error::NotEnoughSignatures { have: 2, need: 3 })
    ));

    // Repeating a signature does not count twice: `new` keeps one per delegate.
    let mut sigs = precommits(&keys[..2], 3, Round(1), hash);
    sigs.push(sigs[0].clone());
    assert_eq!(
        CommitCertificate::new(3, Round(1), hash, sigs)
            .signatures()
            .len(),
        2
    );

    // Signatures of another round, height or chain do not count for this one.
    let other_round =
        CommitCertificate::new(3, Round(0), hash, precommits(&keys[..3], 3, Round(1), hash));
    assert!(other_round.verify(&CHAIN, &set).is_err());
    assert!(cert(3).verify(&Hash256([1; 32]), &set).is_err());

    // An outsider's valid signature spoils the certificate.
    let mut sigs = precommits(&keys[..3], 3, Round(1), hash);
    sigs.extend(precommits(&[key(9)], 3, Round(1), hash));
    assert!(matches!(
        CommitCertificate::new(3, Round(1), hash, sigs).verify(&CHAIN, &set),
        Err(Error::InvalidCertificate(_))
    ));

    // Out of order (only a hand-made certificate can be) is refused, and so is its encoding.
    let mut unordered = cert(3);
    unordered.signatures.reverse();
    assert!(unordered.verify(&CHAIN, &set).is_err());
    assert_eq!(
        CommitCertificate::from_bytes(&unordered.to_bytes()),
        Err(DecodeError::NotCanonical("certificate signatures"))
    );
}

#[test]
fn evidence_convicts_only_a_delegate_that_signed_twice() {
    let keys: Vec<SigningKey> = (1..=4).map(key).collect();
    let set = delegates(&keys);
    let k = &keys[2];
    let a = Vote::sign(VoteKind::Prevote, 4, Round(0), Some(block(1)), &CHAIN, k);
    let b = Vote::sign(VoteKind::Prevote, 4, Round(0), None, &CHAIN, k);
    let evidence = Evidence::DoubleVote(a.clone(), b.clone());
    evidence.verify(&CHAIN, &set).unwrap();
    assert_eq!(evidence.offender(), &PublicKey::of(k));
    assert_eq!(
        Evidence::from_bytes(&evidence.to_bytes()).unwrap(),
        evidence
    );

    let later = Vote::sign(VoteKind::Prevote, 4, Round(1), None, &CHAIN, k);
    let precommit = Vote::sign(VoteKind::Precommit, 4, Round(0), None, &CHAIN, k);
    let other = Vote::sign(VoteKind::Prevote, 4, Round(0), None, &CHAIN, &keys[1]);
    let outsider = key(9);
    let o1 = Vote::sign(VoteKind::Prevote, 4, Round(0), None, &CHAIN, &outsider);
    let o2 = Vote::sign(
        VoteKind::Prevote,
        4,
        Round(0),
        Some(block(1)),
        &CHAIN,
        &outsider,
    );
    let mut forged = b.clone();
    forged.signature = a.signature;
    for bad in [
        Evidence::DoubleVote(a.clone(), a.clone()),
        Evidence::DoubleVote(a.clone(), later),
        Evidence::DoubleVote(a.clone(), precommit),
        Evidence::DoubleVote(a.clone(), other),
        Evidence::DoubleVote(o1, o2),
        Evidence::DoubleVote(a.clone(), forged),
    ] {
        assert!(bad.verify(&CHAIN, &set).is_err(), "{bad:?}");
    }

    let p = Proposal::sign(4, Round(0), None, block(1), &CHAIN, k);
    let q = Proposal::sign(4, Round(0), None, block(2), &CHAIN, k);
    let relocked = Proposal::sign(4, Round(0), Some(Round(0)), block(1), &CHAIN, k);
    Evidence::DoubleProposal(p.clone(), q)
        .verify(&CHAIN, &set)
        .unwrap();
    Evidence::DoubleProposal(p.clone(), relocked)
        .verify(&CHAIN, &set)
        .unwrap();
    assert!(Evidence::DoubleProposal(p.clone(), p)
        .verify(&CHAIN, &set)
        .is_err());
}

/// A certificate for `hash` at height 4, round `round`, precommitted by `keys`.
fn certificate_by(keys: &[SigningKey], round: u32, hash: Hash256) -> CommitCertificate {
    CommitCertificate::new(
        4,
        Round(round),
        hash,
        precommits(keys, 4, Round(round), hash),
    )
}

#[test]
fn two_certificates_of_one_height_and_round_convict_the_delegates_that_signed_both() {
    let keys: Vec<SigningKey> = (1..=4).map(key).collect();
    let set = delegates(&keys);
    // Delegates 2 and 3 precommitted both blocks: a fork only f + 1 double signers can make.
    let ours = certificate_by(&keys[..3], 0, block(1));
    let theirs = certificate_by(&keys[1..], 0, block(2));
    ours.verify(&CHAIN, &set).unwrap();
    theirs.verify(&CHAIN, &set).unwrap();
    let evidence = ours.conflicts(&theirs);
    let mut offenders: Vec<PublicKey> = evidence.iter().map(|e| *e.offender()).collect();
    offenders.sort();
    let mut expected = vec![PublicKey::of(&keys[1]), PublicKey::of(&keys[2])];
    expected.sort();
    assert_eq!(offenders, expected);
    for e in &evidence {
        e.verify(&CHAIN, &set).unwrap();
        assert_eq!(e.height(), 4);
    }

    // The same block, another round, or another height: nothing to convict.
    assert!(ours.conflicts(&ours).is_empty());
    let later = certificate_by(&keys[1..], 1, block(2));
    assert!(ours.conflicts(&later).is_empty());
    let mut elsewhere = theirs.clone();
    elsewhere.height = 5;
    assert!(ours.conflicts(&elsewhere).is_empty());
}

#[test]
fn a_late_precommit_for_another_value_convicts_a_signer_of_the_certificate() {
    let keys: Vec<SigningKey> = (1..=4).map(key).collect();
    let set = delegates(&keys);
    let cert = certificate_by(&keys[..3], 2, block(1));
    let nil = Vote::sign(VoteKind::Precommit, 4, Round(2), None, &CHAIN, &keys[0]);
    let evidence = cert.conflicting_vote(&nil).unwrap();
    evidence.verify(&CHAIN, &set).unwrap();
    assert_eq!(evidence.offender(), &PublicKey::of(&keys[0]));

    let agreeing = Vote::sign(
        VoteKind::Precommit,
        4,
        Round(2),
        Some(block(1)),
        &CHAIN,
        &keys[3],
    );
    let not_a_signer = Vote::sign(VoteKind::Precommit, 4, Round(2), None, &CHAIN, &keys[3]);
    let prevote = Vote::sign(VoteKind::Prevote, 4, Round(2), None, &CHAIN, &keys[0]);
    let other_round = Vote::sign(VoteKind::Precommit, 4, Round(3), None, &CHAIN, &keys[0]);
    for vote in [agreeing, not_a_signer, prevote, other_round] {
        assert_eq!(cert.conflicting_vote(&vote), None, "{vote:?}");
    }
}

fn arb_hash() -> impl Strategy<Value = Hash256> {
    any::<[u8; 32]>().prop_map(Hash256)
}

fn arb_round() -> impl Strategy<Value = Round> {
    any::<u32>().prop_map(Round)
}

fn arb_kind() -> impl Strategy<Value = VoteKind> {
    prop_oneof![Just(VoteKind::Prevote), Just(VoteKind::Precommit)]
}

fn arb_signature() -> impl Strategy<Value = Signature> {
    (any::<[u8; 32]>(), any::<[u8; 32]>()).prop_map(|(a, b)| {
        let mut bytes = [0; 64];
        bytes[..32].copy_from_slice(&a);
        bytes[32..].copy_from_slice(&b);
        Signature::from_bytes(&bytes)
    })
}

fn arb_vote() -> impl Strategy<Value = Vote> {
    (
        arb_kind(),
        any::<u64>(),
        arb_round(),
        proptest::option::of(arb_hash()),
        any::<[u8; 32]>(),
        arb_signature(),
    )
        .prop_map(|(kind, height, round, block, delegate, signature)| Vote {
            kind,
            height,
            round,
            block,
            delegate: PublicKey(delegate),
            signature,
        })
}

fn arb_proposal() -> impl Strategy<Value = Proposal> {
    (
        any::<u64>(),
        arb_round(),
        proptest::option::of(arb_round()),
        arb_hash(),
        any::<[u8; 32]>(),
        arb_signature(),
    )
        .prop_map(
            |(height, round, pol_round, block, proposer, signature)| Proposal {
                height,
                round,
                pol_round,
                block,
                proposer: PublicKey(proposer),
                signature,
            },
        )
}

fn arb_cert_signature() -> impl Strategy<Value = CertSignature> {
    (any::<[u8; 32]>(), arb_signature()).prop_map(|(d, signature)| CertSignature {
        delegate: PublicKey(d),
        signature,
    })
}

fn arb_polka() -> impl Strategy<Value = PolkaCert> {
    (
        any::<u64>(),
        arb_round(),
        arb_hash(),
        proptest::collection::vec(arb_cert_signature(), 0..5),
    )
        .prop_map(|(height, round, block, signatures)| PolkaCert {
            height,
            round,
            block,
            signatures,
        })
}

fn arb_round_cert() -> impl Strategy<Value = RoundCert> {
    let signature = (
        arb_kind(),
        proptest::option::of(arb_hash()),
        any::<[u8; 32]>(),
        arb_signature(),
    )
        .prop_map(|(kind, block, d, signature)| RoundSignature {
            kind,
            block,
            delegate: PublicKey(d),
            signature,
        });
    (
        any::<u64>(),
        arb_round(),
        any::<bool>(),
        proptest::collection::vec(signature, 0..5),
    )
        .prop_map(|(height, round, skip, signatures)| RoundCert {
            height,
            round,
            kind: if skip {
                RoundCertKind::Skip
            } else {
                RoundCertKind::Precommit
            },
            signatures,
        })
}

fn arb_timer() -> impl Strategy<Value = Timer> {
    (0u8..4, arb_round()).prop_map(|(k, r)| match k {
        0 => Timer::Propose(r),
        1 => Timer::Prevote(r),
        2 => Timer::Precommit(r),
        _ => Timer::Rebroadcast(r),
    })
}

fn arb_wal_entry() -> impl Strategy<Value = WalEntry> {
    let proposed = (
        any::<u64>(),
        arb_round(),
        proptest::option::of(arb_round()),
        any::<[u8; 32]>(),
        arb_hash(),
        any::<bool>(),
    )
        .prop_map(
            |(height, round, valid_round, p, block, valid)| ProposedBlock {
                height,
                round,
                valid_round,
                proposer: PublicKey(p),
                block,
                valid,
            },
        );
    prop_oneof![
        arb_vote().prop_map(WalEntry::Vote),
        arb_proposal().prop_map(WalEntry::Proposal),
        proposed.prop_map(WalEntry::ProposedBlock),
        arb_polka().prop_map(WalEntry::Polka),
        arb_timer().prop_map(WalEntry::Timeout),
    ]
}

fn arb_message() -> impl Strategy<Value = ConsensusMessage> {
    prop_oneof![
        arb_vote().prop_map(ConsensusMessage::Vote),
        arb_proposal().prop_map(ConsensusMessage::Proposal),
        arb_polka().prop_map(ConsensusMessage::Polka),
        arb_round_cert().prop_map(ConsensusMessage::RoundCert),
    ]
}

/// Every truncation and every single-byte change of `bytes` decodes to an error or to a value
/// that encodes back to exactly those bytes: never a panic, never a second encoding.
fn check_mutations<T: PartialEq + std::fmt::Debug>(
    bytes: &[u8],
    decode: impl Fn(&[u8]) -> Result<T, DecodeError>,
    encode: impl Fn(&T) -> Vec<u8>,
    flip: (usize, u8),
) {
    for n in 0..bytes.len() {
        assert!(decode(&bytes[..n]).is_err(), "a truncation to {n} decodes");
    }
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert!(decode(&longer).is_err(), "a trailing byte decodes");
    let mut changed = bytes.to_vec();
    let i = flip.0 % changed.len();
    changed[i] ^= flip.1.max(1);
    if let Ok(value) = decode(&changed) {
        assert_eq!(encode(&value), changed);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn log_entries_round_trip_and_refuse_damage(entry in arb_wal_entry(), flip in (any::<usize>(), any::<u8>())) {
        let bytes = entry.to_bytes();
        prop_assert_eq!(WalEntry::from_bytes(&bytes).unwrap(), entry);
        check_mutations(&bytes, WalEntry::from_bytes, WalEntry::to_bytes, flip);
    }

    #[test]
    fn messages_round_trip_and_refuse_damage(message in arb_message(), flip in (any::<usize>(), any::<u8>())) {
        let bytes = message.to_bytes();
        prop_assert_eq!(ConsensusMessage::from_bytes(&bytes).unwrap(), message);
        check_mutations(&bytes, ConsensusMessage::from_bytes, ConsensusMessage::to_bytes, flip);
    }

    #[test]
    fn certificates_and_evidence_round_trip(
        height in any::<u64>(),
        round in arb_round(),
        hash in arb_hash(),
        signatures in proptest::collection::vec(arb_cert_signature(), 0..6),
        a in arb_vote(),
        b in arb_vote(),
        p in arb_proposal(),
        q in arb_proposal(),
        flip in (any::<usize>(), any::<u8>()),
    ) {
        let cert = CommitCertificate::new(height, round, hash, signatures);
        let bytes = cert.to_bytes();
        prop_assert_eq!(CommitCertificate::from_bytes(&bytes).unwrap(), cert);
        check_mutations(&bytes, CommitCertificate::from_bytes, CommitCertificate::to_bytes, flip);
        for evidence in [Evidence::DoubleVote(a, b), Evidence::DoubleProposal(p, q)] {
            let bytes = evidence.to_bytes();
            prop_assert_eq!(Evidence::from_bytes(&bytes).unwrap(), evidence);
            check_mutations(&bytes, Evidence::from_bytes, Evidence::to_bytes, flip);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = WalEntry::from_bytes(&bytes);
        let _ = ConsensusMessage::from_bytes(&bytes);
        let _ = CommitCertificate::from_bytes(&bytes);
        let _ = Evidence::from_bytes(&bytes);
        // With a valid version byte and kind, the body is what gets parsed.
        for kind in 0..5u8 {
            let mut framed = vec![codec::FORMAT_VERSION, kind];
            framed.extend(&bytes);
            let _ = WalEntry::from_bytes(&framed);
            let _ = ConsensusMessage::from_bytes(&framed);
            let _ = Evidence::from_bytes(&framed);
        }
    }
}

#[test]
fn a_huge_signature_count_is_refused_before_allocating() {
    let mut bytes = vec![codec::FORMAT_VERSION];
    bytes.extend([0; 8 + 4 + 32]);
    bytes.extend(u32::MAX.to_be_bytes());
    assert!(matches!(
        CommitCertificate::from_bytes(&bytes),
        Err(DecodeError::TooLong { .. })
    ));
}

// ---- the engine, by hand ----

fn engine(i: u8) -> MalachiteEngine {
    MalachiteEngine::new(EngineConfig::new(CHAIN), key(i))
}

fn finalized(effects: &[EngineEffect]) -> Option<(u64, Hash256, CommitCertificate)> {
    effects.iter().find_map(|e| match e {
        EngineEffect::Finalized {
            height,
            block,
            certificate,
            ..
        } => Some((*height, *block, certificate.clone())),
        _ => None,
    })
}

#[test]
fn one_delegate_finalizes_each_height_within_its_own_proposal_from_genesis() {
    let mut e = engine(1);
    let set = delegates(&[key(1)]);
    assert_eq!(e.height(), None);
    for height in 0..5u64 {
        let now = 1_000 * height;
        let started = e
            .handle(
                EngineInput::StartHeight {
                    height,
                    delegates: set.clone(),
                },
                now,
            )
            .unwrap();
        assert_eq!(e.height(), Some(height));
        let deadline = started
            .iter()
            .find_map(|x| match x {
                EngineEffect::BuildBlock {
                    height: h,
                    round,
                    deadline,
                } => {
                    assert_eq!((*h, *round), (height, Round(0)));
                    Some(*deadline)
                }
                _ => None,
            })
            .expect("the only delegate proposes");
        assert_eq!(deadline, now + 300);
        let effects = e
            .handle(
                EngineInput::Propose {
                    height,
                    round: Round(0),
                    block: block(height),
                },
                now + 1,
            )
            .unwrap();
        let (h, hash, cert) = finalized(&effects).expect("final in the same call");
        assert_eq!((h, hash), (height, block(height)));
        assert_eq!(cert.verify(&CHAIN, &set).unwrap(), 1);
        // Our precommit is logged before it is sent, and the log is durable before the decision.
        let persisted = effects
            .iter()
            .position(|x| matches!(x, EngineEffect::Persist(WalEntry::Vote(v)) if v.kind == VoteKind::Precommit))
            .unwrap();
        let decided = effects
            .iter()
            .position(|x| matches!(x, EngineEffect::Decided { .. }))
            .unwrap();
        assert!(persisted < decided);
        assert!(effects[decided].needs_durable_log());
    }
}

#[test]
fn inputs_out_of_order_are_refused_without_stopping_the_engine() {
    let mut e = engine(1);
    let set = delegates(&[key(1)]);
    assert_eq!(
        e.handle(EngineInput::TimerFired(Timer::Propose(Round(0))), 0),
        Err(EngineError::NotStarted)
    );
    e.handle(
        EngineInput::StartHeight {
            height: 10,
            delegates: set.clone(),
        },
        0,
    )
    .unwrap();
    // Neither the same height again nor the next one before this one is final.
    for height in [10, 11, 9] {
        let refused = e.handle(
            EngineInput::StartHeight {
                height,
                delegates: set.clone(),
            },
            0,
        );
        assert!(
            matches!(refused, Err(EngineError::StartOutOfOrder { .. })),
            "{refused:?}"
        );
        assert!(!refused.unwrap_err().is_fatal());
    }
    assert_eq!(
        e.replay(10, set.clone(), vec![], 0),
        Err(EngineError::ReplayAfterStart)
    );
    // A proposal for another height is no error: the core drops or buffers it.
    e.handle(
        EngineInput::Propose {
            height: 12,
            round: Round(0),
            block: block(1),
        },
        1,
    )
    .unwrap();
    let effects = e
        .handle(
            EngineInput::Propose {
                height: 10,
                round: Round(0),
                block: block(1),
            },
            1,
        )
        .unwrap();
    assert!(finalized(&effects).is_some());
    e.handle(
        EngineInput::StartHeight {
            height: 11,
            delegates: set,
        },
        2,
    )
    .unwrap();
}

#[test]
fn a_delegate_key_that_is_no_curve_point_is_refused() {
    let bad = (0..=255u8)
        .map(|b| PublicKey([b; 32]))
        .find(|k| VerifyingKey::from_bytes(&k.0).is_err())
        .expect("some byte pattern is not a point");
    let set = DelegateSet::new(vec![PublicKey::of(&key(1)), bad]).unwrap();
    let mut e = engine(1);
    assert_eq!(
        e.handle(
            EngineInput::StartHeight {
                height: 0,
                delegates: set
            },
            0
        ),
        Err(EngineError::BadDelegateKey(bad))
    );
    assert_eq!(e.height(), None);
}

#[test]
fn a_log_of_another_height_is_refused() {
    let mut e = engine(1);
    let entry = WalEntry::Vote(Vote::sign(
        VoteKind::Prevote,
        3,
        Round(0),
        None,
        &CHAIN,
        &key(1),
    ));
    assert_eq!(
        e.replay(4, delegates(&[key(1)]), vec![entry], 0),
        Err(EngineError::WalHeight {
            expected: 4,
            found: 3
        })
    );
}

/// Four engines with instant, in-order delivery and no faults: a few heights, in round 0.
#[test]
fn four_delegates_in_lockstep_agree_and_log_before_sending() {
    let keys: Vec<SigningKey> = (1..=4).map(key).collect();
    let set = delegates(&keys);
    let mut engines: Vec<MalachiteEngine> = (1..=4).map(engine).collect();
    let mut chains: Vec<Vec<Hash256>> = vec![Vec::new(); 4];
    let mut queue: VecDeque<(usize, EngineInput)> = (0..4)
        .map(|i| {
            (
                i,
                EngineInput::StartHeight {
                    height: 0,
                    delegates: set.clone(),
                },
            )
        })
        .collect();
    let mut steps = 0;
    while let Some((i, input)) = queue.pop_front() {
        steps += 1;
        assert!(steps < 10_000, "no progress");
        let effects = engines[i].handle(input, steps).unwrap();
        let mut logged = Vec::new();
        for effect in effects {
            match effect {
                EngineEffect::Persist(entry) => logged.push(entry),
                EngineEffect::Broadcast(message) => {
                    // The WAL rule: our own vote or proposal is logged before it leaves.
                    match &message {
                        ConsensusMessage::Vote(v) => {
                            assert!(logged.contains(&WalEntry::Vote(v.clone())))
                        }
                        ConsensusMessage::Proposal(p) => {
                            assert!(logged.contains(&WalEntry::Proposal(p.clone())))
                        }
                        _ => {}
                    }
                    let bytes = message.to_bytes();
                    for j in (0..4).filter(|j| *j != i) {
                        let decoded = ConsensusMessage::from_bytes(&bytes).unwrap();
                        queue.push_back((j, decoded.into_input()));
                    }
                }
                EngineEffect::BuildBlock { height, round, .. } => {
                    let hash = tagged(0xee, &[&height.to_be_bytes(), &[i as u8]]);
                    queue.push_back((
                        i,
                        EngineInput::Propose {
                            height,
                            round,
                            block: hash,
                        },
                    ));
                    for j in (0..4).filter(|j| *j != i) {
                        queue.push_back((
                            j,
                            EngineInput::BlockReceived {
                                height,
                                round,
                                proposer: PublicKey::of(&keys[i]),
                                block: hash,
                                valid: true,
                            },
                        ));
                    }
                }
                EngineEffect::Finalized {
                    height,
                    block,
                    certificate,
                    evidence,
                } => {
                    assert!(evidence.is_empty());
                    assert_eq!(certificate.round, Round(0));
                    assert!(certificate.verify(&CHAIN, &set).unwrap() >= 3);
                    chains[i].push(block);
                    if height < 4 {
                        queue.push_back((
                            i,
                            EngineInput::StartHeight {
                                height: height + 1,
                                delegates: set.clone(),
                            },
                        ));
                    }
                }
                _ => {}
            }
        }
    }
    assert_eq!(chains[0].len(), 5);
    assert!(chains.iter().all(|c| c == &chains[0]));
}

/// One input of the storm below, drawn from small ranges so that inputs meet each other.
#[derive(Debug, Clone)]
enum Stimulus {
    Vote(usize, bool, u64, u32, Option<u8>),
    Proposal(usize, u64, u32, Option<u32>, u8),
    Polka(u64, u32, u8, u8),
    RoundCert(u64, u32, bool, u8),
    Block(u64, u32, u8, bool),
    Propose(u64, u32, u8),
    Timer(u8, u32),
}

fn arb_stimulus() -> impl Strategy<Value = Stimulus> {
    // Rounds near the start, and one far away.
    let round = prop_oneof![4 => 0u32..4, 1 => Just(MAX_ROUND), 1 => Just(u32::MAX)];
    let height = 0u64..3;
    prop_oneof![
        (
            0usize..4,
            any::<bool>(),
            height.clone(),
            round.clone(),
            proptest::option::of(0u8..3)
        )
            .prop_map(|(s, p, h, r, b)| Stimulus::Vote(s, p, h, r, b)),
        (
            0usize..4,
            height.clone(),
            round.clone(),
            proptest::option::of(0u32..3),
            0u8..3
        )
            .prop_map(|(s, h, r, l, b)| Stimulus::Proposal(s, h, r, l, b)),
        (height.clone(), round.clone(), 0u8..3, 0u8..16)
            .prop_map(|(h, r, b, m)| Stimulus::Polka(h, r, b, m)),
        (height.clone(), round.clone(), any::<bool>(), 0u8..16)
            .prop_map(|(h, r, k, m)| Stimulus::RoundCert(h, r, k, m)),
        (height.clone(), round.clone(), 0u8..3, any::<bool>())
            .prop_map(|(h, r, b, v)| Stimulus::Block(h, r, b, v)),
        (height, round.clone(), 0u8..3).prop_map(|(h, r, b)| Stimulus::Propose(h, r, b)),
        (0u8..4, round).prop_map(|(k, r)| Stimulus::Timer(k, r)),
    ]
}

fn stimulus_input(s: &Stimulus, keys: &[SigningKey]) -> EngineInput {
    let signed = |mask: u8| {
        keys.iter()
            .enumerate()
            .filter(move |(i, _)| mask & (1 << i) != 0)
    };
    match *s {
        Stimulus::Vote(signer, prevote, h, r, b) => {
            let kind = if prevote {
                VoteKind::Prevote
            } else {
                VoteKind::Precommit
            };
            let block = b.map(|b| block(u64::from(b)));
            EngineInput::Vote(Vote::sign(kind, h, Round(r), block, &CHAIN, &keys[signer]))
        }
        Stimulus::Proposal(signer, h, r, lock, b) => EngineInput::Proposal(Proposal::sign(
            h,
            Round(r),
            lock.map(Round),
            block(u64::from(b)),
            &CHAIN,
            &keys[signer],
        )),
        Stimulus::Polka(h, r, b, mask) => {
            let hash = block(u64::from(b));
            let signatures = signed(mask)
                .map(|(_, k)| {
                    let v = Vote::sign(VoteKind::Prevote, h, Round(r), Some(hash), &CHAIN, k);
                    CertSignature {
                        delegate: v.delegate,
                        signature: v.signature,
                    }
                })
                .collect();
            EngineInput::Polka(PolkaCert {
                height: h,
                round: Round(r),
                block: hash,
                signatures,
            })
        }
        Stimulus::RoundCert(h, r, skip, mask) => {
            let signatures = signed(mask)
                .map(|(i, k)| {
                    let kind = if i % 2 == 0 {
                        VoteKind::Precommit
                    } else {
                        VoteKind::Prevote
                    };
                    let v = Vote::sign(kind, h, Round(r), None, &CHAIN, k);
                    RoundSignature {
                        kind,
                        block: None,
                        delegate: v.delegate,
                        signature: v.signature,
                    }
                })
                .collect();
            let kind = if skip {
                RoundCertKind::Skip
            } else {
                RoundCertKind::Precommit
            };
            EngineInput::RoundCert(RoundCert {
                height: h,
                round: Round(r),
                kind,
                signatures,
            })
        }
        Stimulus::Block(h, r, b, valid) => EngineInput::BlockReceived {
            height: h,
            round: Round(r),
            proposer: PublicKey::of(&keys[1]),
            block: block(u64::from(b)),
            valid,
        },
        Stimulus::Propose(h, r, b) => EngineInput::Propose {
            height: h,
            round: Round(r),
            block: block(u64::from(b)),
        },
        Stimulus::Timer(kind, r) => EngineInput::TimerFired(match kind {
            0 => Timer::Propose(Round(r)),
            1 => Timer::Prevote(Round(r)),
            2 => Timer::Precommit(Round(r)),
            _ => Timer::Rebroadcast(Round(r)),
        }),
    }
}

/// Feeds `stimuli` to delegate 1 of four from height 0: every input must be answered or refused
/// without stopping the engine (a panic in the core would show as a fatal `Panicked`), and what
/// it finalizes must carry a valid certificate and valid evidence.
fn storm(stimuli: &[Stimulus]) -> Result<(), String> {
    let keys: Vec<SigningKey> = (1..=4).map(key).collect();
    let set = delegates(&keys);
    let mut e = engine(1);
    let start = |height| EngineInput::StartHeight {
        height,
        delegates: set.clone(),
    };
    e.handle(start(0), 0).map_err(|e| e.to_string())?;
    for (t, s) in stimuli.iter().enumerate() {
        let effects = match e.handle(stimulus_input(s, &keys), t as u64) {
            Ok(effects) => effects,
            Err(EngineError::RoundOutOfRange(_)) => continue,
            Err(err) => return Err(format!("{err} after {:?}", &stimuli[..=t])),
        };
        for effect in effects {
            if let EngineEffect::Finalized {
                height,
                certificate,
                evidence,
                ..
            } = effect
            {
                certificate
                    .verify(&CHAIN, &set)
                    .map_err(|e| e.to_string())?;
                for ev in evidence {
                    ev.verify(&CHAIN, &set).map_err(|e| e.to_string())?;
                }
                e.handle(start(height + 1), t as u64)
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever peers send, in whatever order, including conflicting messages signed by every
    /// delegate (ours too), certificates with too few or mixed signatures and rounds far ahead.
    #[test]
    fn no_input_stops_the_engine(stimuli in proptest::collection::vec(arb_stimulus(), 1..60)) {
        if let Err(e) = storm(&stimuli) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// What the storm found (each panicked in the core's round arithmetic before the bound on
/// rounds and the pending-timer set), kept as plain tests.
#[test]
fn the_storms_findings_stay_fixed() {
    use Stimulus::*;
    for stimuli in [
        vec![RoundCert(0, u32::MAX, true, 5), Timer(2, u32::MAX)],
        vec![
            RoundCert(0, u32::MAX, true, 5),
            Vote(1, false, 0, u32::MAX, None),
        ],
        vec![
            RoundCert(0, MAX_ROUND, true, 5),
            Vote(1, false, 0, MAX_ROUND, None),
        ],
        vec![Timer(2, MAX_ROUND), Timer(2, u32::MAX)],
    ] {
        storm(&stimuli).unwrap();
    }
}

#[test]
fn timers_never_scheduled_or_already_cancelled_are_ignored() {
    let keys: Vec<SigningKey> = (1..=4).map(key).collect();
    let set = delegates(&keys);
    // Delegate 2 does not propose height 0: it waits for a proposal under a propose timer.
    let mut e = engine(2);
    let started = e
        .handle(
            EngineInput::StartHeight {
                height: 0,
                delegates: set,
            },
            0,
        )
        .unwrap();
    let propose = Timer::Propose(Round(0));
    assert!(started
        .iter()
        .any(|x| matches!(x, EngineEffect::Schedule { timer, at: 300 } if *timer == propose)));
    // A timer of another round was never scheduled: nothing happens.
    let stray = e.handle(EngineInput::TimerFired(Timer::Precommit(Round(7))), 10);
    assert_eq!(stray, Ok(vec![]));
    // The propose timer fires once: the delegate prevotes nil; a second firing is stale.
    let fired = e.handle(EngineInput::TimerFired(propose), 300).unwrap();
    assert!(fired.iter().any(|x| matches!(
        x,
        EngineEffect::Broadcast(ConsensusMessage::Vote(v)) if v.kind == VoteKind::Prevote && v.block.is_none()
    )));
    assert!(fired.contains(&EngineEffect::Persist(WalEntry::Timeout(propose))));
    assert_eq!(e.handle(EngineInput::TimerFired(propose), 301), Ok(vec![]));
    // A round past the bound is refused, and the engine goes on.
    let far = Vote::sign(
        VoteKind::Prevote,
        0,
        Round(MAX_ROUND + 1),
        None,
        &CHAIN,
        &keys[0],
    );
    let refused = e.handle(EngineInput::Vote(far), 302);
    assert_eq!(refused, Err(EngineError::RoundOutOfRange(MAX_ROUND + 1)));
    assert!(!refused.unwrap_err().is_fatal());
    assert_eq!(e.height(), Some(0));
}
