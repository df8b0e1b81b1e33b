//! The canonical encoding: exact bytes, round trips, and refusal of everything else.

use fhirseal_consensus::codec::{limits, FORMAT_VERSION};
use fhirseal_consensus::{
    AccessBatch, AccessEvent, BlockHeader, DecodeError, FinalizedBlock, Hash256, PublicKey,
    Timestamp, Transaction,
};
use sha2::{Digest, Sha256};

use fhirseal_consensus::validate_transaction;

use crate::support::*;

#[test]
fn a_header_encodes_to_the_documented_bytes_and_hashes_under_its_tag() {
    let header = BlockHeader {
        height: 0x0102,
        previous: Hash256([0xaa; 32]),
        epoch: 3,
        next_epoch: 4,
        producer: PublicKey([0xbb; 32]),
        tx_root: Hash256([0xcc; 32]),
        tx_count: 5,
        time: Timestamp(6),
    };
    // Laid out by hand from the format: version, then fixed-width big-endian fields in order.
    let mut expected = vec![FORMAT_VERSION];
    expected.extend([0, 0, 0, 0, 0, 0, 1, 2]);
    expected.extend([0xaa; 32]);
    expected.extend([0, 0, 0, 0, 0, 0, 0, 3]);
    expected.extend([0, 0, 0, 0, 0, 0, 0, 4]);
    expected.extend([0xbb; 32]);
    expected.extend([0xcc; 32]);
    expected.extend([0, 0, 0, 5]);
    expected.extend([0, 0, 0, 0, 0, 0, 0, 6]);
    assert_eq!(header.to_bytes(), expected);

    let mut tagged = vec![0x10];
    tagged.extend(&expected);
    assert_eq!(header.hash().0, <[u8; 32]>::from(Sha256::digest(&tagged)));
    assert_eq!(BlockHeader::from_bytes(&expected).unwrap(), header);
}

#[test]
fn an_entry_encodes_to_the_documented_bytes() {
    let mut e = entry("o1", "2");
    e.institution = "h".into();
    e.resource_type = "Obs".into();
    let mut expected = vec![FORMAT_VERSION];
    expected.extend([0, 0, 0, 1, b'h']);
    expected.extend([0, 0, 0, 3, b'O', b'b', b's']);
    expected.extend([0, 0, 0, 2, b'o', b'1']);
    expected.extend([0, 0, 0, 1, b'2']);
    expected.extend([0xf1; 32]);
    expected.extend([0x5e; 32]);
    expected.extend([0xc1; 32]);
    assert_eq!(e.to_bytes(), expected);

    // Its Merkle leaf is SHA-256(0x00 ‖ those bytes).
    let mut leaf = vec![0x00];
    leaf.extend(&expected);
    assert_eq!(e.leaf_hash().0, <[u8; 32]>::from(Sha256::digest(&leaf)));
}

fn sample_block() -> FinalizedBlock {
    let access = AccessBatch::sign(
        batch_id(9),
        INSTITUTION,
        vec![
            AccessEvent {
                principal: "Practitioner/7".into(),
                institution: INSTITUTION.into(),
                resource_type: "Observation".into(),
                logical_id: "o1".into(),
                version_id: String::new(),
                purpose_of_use: "TREAT".into(),
                time: Timestamp(1_700_000_000_000),
                reidentified: true,
                exchange: None,
            },
            AccessEvent {
                principal: "dr-bob".into(),
                institution: INSTITUTION.into(),
                resource_type: "Observation".into(),
                logical_id: "o2".into(),
                version_id: "3".into(),
                purpose_of_use: "TREAT".into(),
                time: Timestamp(1_700_000_000_001),
                reidentified: true,
                exchange: Some(fhirseal_consensus::Exchange {
                    kind: fhirseal_consensus::ExchangeKind::SentTo,
                    peer: "h2".into(),
                }),
            },
        ],
        &institution_key(),
    )
    .unwrap();
    let txs = vec![
        fresh_batch(1, "a", 3),
        Transaction::Access(access),
        fresh_batch(2, "b", 1),
    ];
    certified(None, txs, 42)
}

#[test]
fn blocks_and_transactions_round_trip() {
    let block = sample_block();
    let bytes = block.to_bytes();
    assert_eq!(FinalizedBlock::from_bytes(&bytes).unwrap(), block);
    for tx in &block.block.transactions {
        assert_eq!(&Transaction::from_bytes(&tx.to_bytes()).unwrap(), tx);
    }
    // Encoding is a function of the value: encode(decode(bytes)) == bytes.
    assert_eq!(
        FinalizedBlock::from_bytes(&bytes).unwrap().to_bytes(),
        bytes
    );
}

#[test]
fn every_truncation_and_any_trailing_byte_is_refused() {
    let bytes = sample_block().to_bytes();
    for len in 0..bytes.len() {
        assert!(
            FinalizedBlock::from_bytes(&bytes[..len]).is_err(),
            "a prefix of {len} bytes decoded"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert_eq!(
        FinalizedBlock::from_bytes(&longer),
        Err(DecodeError::TrailingBytes(1))
    );
}

#[test]
fn another_version_is_refused() {
    let mut bytes = sample_block().to_bytes();
    bytes[0] = 2;
    assert_eq!(
        FinalizedBlock::from_bytes(&bytes),
        Err(DecodeError::Version(2))
    );
}

#[test]
fn unknown_transaction_kinds_are_refused() {
    let mut bytes = fresh_batch(1, "a", 1).to_bytes();
    // Byte 1, after the version, is the kind: 0 and 10 name none.
    for tag in [0, 10] {
        bytes[1] = tag;
        assert_eq!(
            Transaction::from_bytes(&bytes),
            Err(DecodeError::UnknownTag {
                field: "transaction kind",
                tag
            })
        );
    }
}

#[test]
fn grant_and_revocation_batches_round_trip_and_refuse_every_truncation() {
    let grant = Transaction::Grant(
        fhirseal_consensus::GrantBatch::sign(
            batch_id(7),
            INSTITUTION,
            vec![fhirseal_consensus::Grant {
                consent: "c1".into(),
                version: "2".into(),
                fingerprint: [9; 32],
                grantee: "hospital-b".into(),
                grantee_role: String::new(),
                purposes: vec!["TREAT".into(), "ETREAT".into()],
                resource_types: vec!["Observation".into()],
                not_before: Timestamp(10),
                expiry: Timestamp(20),
            }],
            &institution_key(),
        )
        .unwrap(),
    );
    let revocation = Transaction::Revocation(
        fhirseal_consensus::RevocationBatch::sign(
            batch_id(8),
            INSTITUTION,
            vec![fhirseal_consensus::Revocation {
                consent: "c1".into(),
                request: "3".into(),
            }],
            &institution_key(),
        )
        .unwrap(),
    );
    let erasure = Transaction::Erasure(
        fhirseal_consensus::ErasureBatch::sign(
            batch_id(10),
            INSTITUTION,
            vec![fhirseal_consensus::Erasure {
                fingerprint: [6; 32],
                request: "r-1".into(),
            }],
            &institution_key(),
        )
        .unwrap(),
    );
    for tx in [grant, revocation, erasure] {
        let bytes = tx.to_bytes();
        assert_eq!(Transaction::from_bytes(&bytes).unwrap(), tx);
        tx.verify().unwrap();
        for cut in 0..bytes.len() {
            assert!(
                Transaction::from_bytes(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }
}

#[test]
fn forged_counts_are_refused_before_allocating() {
    let block = sample_block();
    let mut bytes = block.to_bytes();
    // The transaction count follows the version byte and the 132-byte header.
    let at = 1 + 132;
    assert_eq!(&bytes[at..at + 4], &[0, 0, 0, 3]);
    bytes[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        FinalizedBlock::from_bytes(&bytes),
        Err(DecodeError::TooLong { .. })
    ));

    // An entry count in a batch header far over what the bytes hold.
    let mut tx = fresh_batch(1, "a", 2).to_bytes();
    let count_at = 1 + 1 + 16 + 4 + INSTITUTION.len() + 32;
    assert_eq!(&tx[count_at..count_at + 4], &[0, 0, 0, 2]);
    tx[count_at..count_at + 4].copy_from_slice(&1_000_000u32.to_be_bytes());
    assert!(matches!(
        Transaction::from_bytes(&tx),
        Err(DecodeError::TooLong { .. })
    ));
}

#[test]
fn over_long_names_are_refused_when_signing() {
    let mut e = entry("x", "1");
    e.logical_id = "x".repeat(limits::MAX_NAME_LEN + 1);
    assert!(fhirseal_consensus::AnchorBatch::sign(
        batch_id(1),
        INSTITUTION,
        vec![e],
        &institution_key()
    )
    .is_err());
}

/// A ballot and a member's election batch, as the election puts them on the chain.
fn election_transactions() -> (Transaction, Transaction) {
    use fhirseal_consensus::election::beacon::Reveal;
    use fhirseal_consensus::election::lsag::{self, Scope, VoteSecret};
    let voters: Vec<VoteSecret> = (1..=3u8)
        .map(|i| {
            let mut b = [0u8; 32];
            b[0] = i;
            VoteSecret::from_bytes(b).unwrap()
        })
        .collect();
    let ring: Vec<[u8; 32]> = voters.iter().map(VoteSecret::public).collect();
    let scope = Scope {
        chain: b"test",
        epoch: 4,
    };
    let signature = lsag::sign(&scope, &ring, &voters[1], b"ballot").unwrap();
    let ballot = Transaction::Ballot(fhirseal_consensus::Ballot {
        epoch: 4,
        candidate: "hospital-b".into(),
        signature,
    });
    let items = vec![
        fhirseal_consensus::ElectionItem::Commit {
            epoch: 4,
            commitment: [7; 32],
        },
        fhirseal_consensus::ElectionItem::Reveal {
            epoch: 4,
            reveal: Reveal {
                output: [8; 32],
                proof: [9; 64],
            },
        },
    ];
    let batch = Transaction::Election(
        fhirseal_consensus::ElectionBatch::sign(
            batch_id(9),
            INSTITUTION,
            items,
            &institution_key(),
        )
        .unwrap(),
    );
    (ballot, batch)
}

#[test]
fn ballots_and_election_batches_round_trip_and_refuse_every_truncation() {
    let (ballot, batch) = election_transactions();
    for tx in [&ballot, &batch] {
        let bytes = tx.to_bytes();
        assert_eq!(&Transaction::from_bytes(&bytes).unwrap(), tx);
        assert_eq!(Transaction::from_bytes(&bytes).unwrap().to_bytes(), bytes);
        for len in 0..bytes.len() {
            assert!(
                Transaction::from_bytes(&bytes[..len]).is_err(),
                "{len} bytes"
            );
        }
        tx.verify().unwrap();
    }
    validate_transaction(&batch, &roster()).unwrap();
    // A ballot names no institution and is keyed by its key image: a second ballot of the same
    // voter in the same epoch has the same key, whatever it votes for.
    let Transaction::Ballot(b) = &ballot else {
        unreachable!()
    };
    assert!(ballot.header().is_none());
    assert!(ballot.id().institution.is_empty());
    assert_eq!(ballot.id().batch.0, b.signature.key_image[..16]);
    assert_ne!(ballot.hash(), batch.hash());
}

#[test]
fn a_ballot_with_a_forged_ring_size_is_refused_before_allocating() {
    let (ballot, _) = election_transactions();
    let mut bytes = ballot.to_bytes();
    // version, kind, epoch (8), candidate (4 + 10), challenge, key image: then the count.
    let at = 1 + 1 + 8 + 4 + "hospital-b".len() + 32 + 32;
    bytes[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        Transaction::from_bytes(&bytes),
        Err(DecodeError::TooLong { .. })
    ));
}
