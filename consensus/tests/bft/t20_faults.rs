//! Faults within what BFT tolerates (f of K = 3f + 1): a silent delegate, one killed and
//! restarted from its write-ahead log, an equivocator, a proposer of invalid blocks.

use fhirseal_consensus::bft::Evidence;
use fhirseal_consensus::PublicKey;

use crate::sim::{key, Config, CrashAt, Sim};

#[test]
fn a_silent_delegate_does_not_stop_finality() {
    let mut cfg = Config::new(4, 12, 7);
    cfg.silent = vec![1];
    let out = Sim::new(cfg).run();
    out.report("K=4, one silent");
    out.assert_safe();
    assert_eq!(out.live, vec![0, 2, 3]);
    assert!(out.common_height() >= 12);
    // The heights whose round-0 proposer is the silent one need another round; no other does.
    for (h, round) in out.rounds().iter().enumerate() {
        assert_eq!(
            *round > 0,
            h % 4 == 1,
            "height {h} decided in round {round}"
        );
    }
}

#[test]
fn a_killed_delegate_restarts_from_its_log_without_signing_twice() {
    // With one delegate silent, killing another stops finality (2 of 4 left) until it is back.
    let mut cfg = Config::new(4, 8, 7);
    cfg.silent = vec![3];
    cfg.crash = Some(CrashAt::AfterPrevote { node: 1, height: 2 });
    let out = Sim::new(cfg).run();
    out.report("K=4, one silent, one killed after its prevote");
    out.assert_safe();
    assert_eq!(out.restarts, 1);
    // Its prevote was in the log: replayed, and re-sent as logged.
    assert!(out.replayed_entries > 0);
    assert_eq!(out.live, vec![0, 1, 2]);
    assert!(out.common_height() >= 8);
    // While it was down, 2 of 4 could finalize nothing; height 2 waited for it.
    let (_, down, back) = out.downtime[0];
    assert!(out.finalized_at.values().all(|t| *t <= down || *t >= back));
    assert!(out.finalized_at[&2] >= back);
}

#[test]
fn delegates_killed_at_random_come_back_and_agree() {
    for seed in [3, 4] {
        let mut cfg = Config::new(4, 30, seed);
        cfg.crash = Some(CrashAt::Random { period: 400 });
        cfg.down_for = 300;
        let out = Sim::new(cfg).run();
        out.report(&format!("K=4, random kills, seed {seed}"));
        out.assert_safe();
        assert!(out.restarts >= 3, "{} restarts", out.restarts);
        assert!(out.common_height() >= 30);
    }
}

#[test]
fn an_equivocating_delegate_is_reported_and_changes_nothing() {
    let mut cfg = Config::new(4, 8, 7);
    cfg.equivocator = Some(2);
    let out = Sim::new(cfg).run();
    out.report("K=4, one equivocator");
    out.assert_safe();
    assert_eq!(out.live, vec![0, 1, 3]);
    assert!(out.common_height() >= 8);
    let offender = PublicKey::of(&key(2));
    assert!(out
        .evidence
        .iter()
        .all(|(_, _, e)| e.offender() == &offender));
    for node in [0, 1, 3] {
        assert!(
            out.evidence
                .iter()
                .any(|(n, _, e)| *n == node && matches!(e, Evidence::DoubleVote(..))),
            "node {node} reported no double vote"
        );
    }
    // It proposes at heights 2 and 6, and sent a twin proposal each time.
    assert!(out
        .evidence
        .iter()
        .any(|(_, h, e)| h % 4 == 2 && matches!(e, Evidence::DoubleProposal(..))));
}

#[test]
fn blocks_that_fail_validation_are_never_finalized() {
    let mut cfg = Config::new(4, 12, 7);
    cfg.bad_proposer = Some(0);
    let out = Sim::new(cfg).run();
    out.report("K=4, one proposer of invalid blocks");
    out.assert_safe();
    assert_eq!(out.live, vec![0, 1, 2, 3]);
    assert!(out.common_height() >= 12);
    for (h, round) in out.rounds().iter().enumerate() {
        assert_eq!(
            *round > 0,
            h % 4 == 0,
            "height {h} decided in round {round}"
        );
    }
}
