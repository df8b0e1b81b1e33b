//! Double signing a member sees after the engine is done with a height: another certified block
//! at its tip's height (a fork, which only more than f double-signing delegates can make; a
//! next block on another tip makes it ask for that block), or a late precommit against its
//! tip's certificate. Each becomes evidence once, and the
//! chain takes it. The consortium of one of [`TestLedger`], whose delegate signs the conflicts.

use fhirseal_consensus::bft::{ConsensusMessage, Evidence, Round, Vote, VoteKind};
use fhirseal_consensus::ledger::{Effect, Input};
use fhirseal_consensus::{EvidenceBatch, FinalizedBlock, Timestamp, Transaction};

use crate::support::{
    batch_id, certified, chain_key, db, delegate_key, fresh_batch, institution_key, ledger, roster,
    TestLedger, INSTITUTION,
};

fn evidence_in(effects: &[Effect]) -> Vec<Evidence> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Evidence(found) => Some(found.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

/// A ledger of two blocks, both decided in round 0.
async fn two_blocks() -> (tempfile::TempDir, TestLedger) {
    let (dir, db) = db();
    let mut ledger = ledger(&db);
    for (n, time) in [(1, 1_000), (2, 2_000)] {
        ledger
            .submit(fresh_batch(n, &format!("held-{n}"), 2))
            .unwrap();
        ledger.produce(Timestamp(time)).await.unwrap();
    }
    for height in 0..2 {
        let stored = ledger.chain().block(height).unwrap().unwrap();
        assert_eq!(
            stored.certificate.round,
            Round(0),
            "the tests' conflicts are of round 0"
        );
    }
    (dir, ledger)
}

fn blocks_from_peer(blocks: Vec<FinalizedBlock>) -> Input {
    Input::Blocks {
        from: Some("peer".to_owned()),
        blocks,
    }
}

/// The chain takes `evidence` in its next block, reported by the member.
async fn reported_on_the_chain(ledger: &mut TestLedger, evidence: Vec<Evidence>, time: u64) {
    let batch = EvidenceBatch::sign(
        batch_id(90),
        INSTITUTION,
        evidence.clone(),
        &institution_key(),
    )
    .unwrap();
    ledger.submit(Transaction::Evidence(batch)).unwrap();
    let receipt = ledger.produce(Timestamp(time)).await.expect("a block");
    let block = ledger.chain().block(receipt.height).unwrap().unwrap();
    let Some(Transaction::Evidence(held)) = block.block.transactions.first() else {
        panic!("no evidence in {block:?}");
    };
    assert_eq!(held.items, evidence);
}

#[tokio::test]
async fn another_certified_block_at_the_tips_height_convicts_who_signed_both() {
    let (_dir, mut ledger) = two_blocks().await;
    let delegate = fhirseal_consensus::PublicKey::of(&delegate_key());
    let genesis = ledger.chain().block(0).unwrap().unwrap();
    let tip = ledger.chain().block(1).unwrap().unwrap();
    let other = |n: u64| {
        certified(
            Some(genesis.header()),
            vec![fresh_batch(n, "forked", 1)],
            2_000,
        )
    };

    // Nothing: the tip itself; a block whose (valid) certificate is another block's; a block
    // below the tip (held against nothing: older blocks are not read from disk for it).
    let mut mismatched = other(7);
    mismatched.certificate = other(8).certificate;
    let below = certified(None, vec![fresh_batch(9, "forked", 1)], 1_000);
    for block in [tip, mismatched, below] {
        let effects = ledger.handle(blocks_from_peer(vec![block]));
        assert!(evidence_in(&effects).is_empty(), "{effects:?}");
    }

    // Another block at the tip's height, certified by the tip's delegate: a double vote.
    let effects = ledger.handle(blocks_from_peer(vec![other(10)]));
    let evidence = evidence_in(&effects);
    assert_eq!(evidence.len(), 1, "{effects:?}");
    assert_eq!(evidence[0].height(), 1);
    assert_eq!(evidence[0].offender(), &delegate);
    evidence[0]
        .verify(&chain_key(), roster().delegates())
        .unwrap();
    // Seen again, or by another block: reported once.
    for again in [other(10), other(11)] {
        let effects = ledger.handle(blocks_from_peer(vec![again]));
        assert!(evidence_in(&effects).is_empty(), "{effects:?}");
    }
    reported_on_the_chain(&mut ledger, evidence, 3_000).await;
}

#[tokio::test]
async fn a_next_block_on_another_tip_makes_the_member_ask_for_that_tip_once() {
    let (_dir, mut ledger) = two_blocks().await;
    let genesis = ledger.chain().block(0).unwrap().unwrap();
    let other_1 = certified(
        Some(genesis.header()),
        vec![fresh_batch(8, "forked", 1)],
        2_000,
    );
    let after = certified(
        Some(other_1.header()),
        vec![fresh_batch(9, "forked", 1)],
        3_000,
    );

    let effects = ledger.handle(blocks_from_peer(vec![after.clone()]));
    let asked: Vec<u64> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Sync {
                from: Some(peer),
                height,
            } if peer == "peer" => Some(*height),
            _ => None,
        })
        .collect();
    assert_eq!(asked, [1], "{effects:?}");
    let again = ledger.handle(blocks_from_peer(vec![after.clone()]));
    assert!(
        !again
            .iter()
            .any(|e| matches!(e, Effect::Sync { height: 1, .. })),
        "{again:?}"
    );
    // Another sender of the same block is asked too, once.
    let other_sender = || Input::Blocks {
        from: Some("peer-2".to_owned()),
        blocks: vec![after.clone()],
    };
    let asked = ledger.handle(other_sender());
    assert!(
        asked.contains(&Effect::Sync {
            from: Some("peer-2".to_owned()),
            height: 1
        }),
        "{asked:?}"
    );
    let again = ledger.handle(other_sender());
    assert!(
        !again
            .iter()
            .any(|e| matches!(e, Effect::Sync { height: 1, .. })),
        "{again:?}"
    );

    // The answer: the peer's block at the tip's height, which convicts.
    let evidence = evidence_in(&ledger.handle(blocks_from_peer(vec![other_1])));
    assert_eq!(evidence.len(), 1);
    assert_eq!(evidence[0].height(), 1);
}

#[tokio::test]
async fn a_late_precommit_against_the_tips_certificate_convicts_its_signer() {
    let (_dir, mut ledger) = two_blocks().await;
    let late = |block| Input::Message {
        from: "delegate".to_owned(),
        message: ConsensusMessage::Vote(Vote::sign(
            VoteKind::Precommit,
            1,
            Round(0),
            block,
            &chain_key(),
            &delegate_key(),
        )),
    };
    // Agreeing with the certificate: nothing.
    let tip = ledger.chain().block(1).unwrap().unwrap();
    assert!(evidence_in(&ledger.handle(late(Some(tip.certificate.block)))).is_empty());

    // Nil, by a signer of the certificate: a double vote, reported once.
    let evidence = evidence_in(&ledger.handle(late(None)));
    assert_eq!(evidence.len(), 1);
    evidence[0]
        .verify(&chain_key(), roster().delegates())
        .unwrap();
    assert!(evidence_in(&ledger.handle(late(None))).is_empty());
    reported_on_the_chain(&mut ledger, evidence, 3_000).await;
}
