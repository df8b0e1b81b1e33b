//! Agreement under a seeded hostile network (delays, reordering, drops, duplicates,
//! partitions, kills), replay of a seed, and what happens beyond f.

use std::collections::BTreeSet;

use fhirseal_consensus::bft::{ConsensusMessage, Proposal, Round, Vote, VoteKind};
use fhirseal_consensus::{BlockProducer, PublicKey, Timestamp};

use crate::sim::{key, Config, CrashAt, NetConfig, Sim, CHAIN};

fn hostile() -> NetConfig {
    NetConfig {
        min_delay: 1,
        max_delay: 80,
        drop_per_mille: 50,
        dup_per_mille: 30,
        partitions: Some((1_500, 600)),
    }
}

#[test]
fn honest_delegates_never_finalize_different_blocks_under_a_hostile_network() {
    // 4 seeds × 75 heights: 300 seeded heights, each checked at every delegate.
    for seed in 1..=4 {
        let mut cfg = Config::new(4, 75, seed);
        cfg.net = hostile();
        if seed.is_multiple_of(2) {
            cfg.crash = Some(CrashAt::Random { period: 2_000 });
            cfg.down_for = 700;
        }
        let out = Sim::new(cfg).run();
        out.report(&format!("K=4 hostile network, seed {seed}"));
        out.assert_safe();
        assert!(
            out.common_height() >= 75,
            "seed {seed}: {}",
            out.common_height()
        );
    }
}

#[test]
fn seven_delegates_with_an_equivocator_agree_under_a_hostile_network() {
    let mut cfg = Config::new(7, 30, 11);
    cfg.net = hostile();
    cfg.equivocator = Some(5);
    cfg.crash = Some(CrashAt::Random { period: 2_500 });
    cfg.down_for = 800;
    let out = Sim::new(cfg).run();
    out.report("K=7 hostile network, an equivocator, kills");
    out.assert_safe();
    assert!(out.common_height() >= 30);
    assert!(!out.evidence.is_empty());
}

#[test]
fn a_seed_replays_exactly() {
    let run = |seed| {
        let mut cfg = Config::new(4, 25, seed);
        cfg.net = hostile();
        cfg.crash = Some(CrashAt::Random { period: 1_000 });
        cfg.down_for = 400;
        Sim::new(cfg).run()
    };
    let a = run(21);
    let b = run(21);
    a.assert_safe();
    assert_eq!(a.fingerprint(), b.fingerprint());
    assert_ne!(a.fingerprint(), run(22).fingerprint());
}

/// f + 1 = 2 Byzantine delegates of K = 4 (0, the proposer of height 0, and 1) show block A to
/// delegate 2 and block B to delegate 3, with proposals, prevotes and precommits signed for each.
/// Beyond f, BFT promises nothing: the two honest delegates finalize different blocks, and the
/// checker must see it. The two certificates name the delegates that signed both in one round.
#[test]
fn beyond_f_the_agreement_checker_fires_and_the_certificates_convict() {
    let mut cfg = Config::new(4, 1, 5);
    cfg.silent = vec![0, 1];
    cfg.time_limit = 5_000;
    let mut sim = Sim::new(cfg);
    let producer = BlockProducer::new(PublicKey::of(&key(0)));
    for (victim, time) in [(2, 1), (3, 2)] {
        let block = producer.propose(None, Vec::new(), 0, Timestamp(time));
        let hash = block.header.hash();
        let proposal = Proposal::sign(0, Round(0), None, hash, &CHAIN, &key(0));
        sim.inject_body(1, victim, block, Round(0));
        sim.inject(1, victim, ConsensusMessage::Proposal(proposal));
        for byzantine in [0, 1] {
            for kind in [VoteKind::Prevote, VoteKind::Precommit] {
                let vote = Vote::sign(kind, 0, Round(0), Some(hash), &CHAIN, &key(byzantine));
                sim.inject(2, victim, ConsensusMessage::Vote(vote));
            }
        }
    }
    let out = sim.run();
    out.report("K=4, f+1 Byzantine split");
    assert!(!out.agree());
    assert!(!out.conflicts.is_empty());
    let (a, ca) = &out.chains[2][0];
    let (b, cb) = &out.chains[3][0];
    assert_ne!(a, b);
    assert_eq!(ca.round, cb.round);
    let signers = |c: &fhirseal_consensus::bft::CommitCertificate| -> BTreeSet<PublicKey> {
        c.signatures().iter().map(|s| s.delegate).collect()
    };
    let both: BTreeSet<PublicKey> = signers(ca).intersection(&signers(cb)).copied().collect();
    assert_eq!(
        both,
        [0, 1].iter().map(|&i| PublicKey::of(&key(i))).collect()
    );
}
