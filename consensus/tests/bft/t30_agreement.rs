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

/// The Byzantine delegates of a campaign run, by seed: each behaviour in turn (and, at K = 7, a
/// second one at once).
fn byzantine(cfg: &mut Config, seed: u64) {
    let k = cfg.k;
    let first = (seed as usize) % k;
    match seed % 4 {
        0 => cfg.equivocator = Some(first),
        1 => cfg.withholder = Some(first),
        2 => cfg.bad_proposer = Some(first),
        // Withholds its votes and proposes invalid blocks.
        _ => {
            cfg.withholder = Some(first);
            cfg.bad_proposer = Some(first);
        }
    }
    if k == 7 {
        let second = (first + 3) % k;
        if cfg.equivocator.is_none() {
            cfg.equivocator = Some(second);
        } else {
            cfg.withholder = Some(second);
        }
    }
}

/// One seeded run of the campaign: K delegates of which f are Byzantine (see [`byzantine`]), a
/// hostile network, random kills of honest delegates in every other run of each behaviour.
/// Agreement always; progress; an equivocator reported by the honest delegates, and nobody else.
fn campaign_run(k: usize, heights: u64, seed: u64) {
    let mut cfg = Config::new(k, heights, seed);
    cfg.net = hostile();
    byzantine(&mut cfg, seed);
    if (seed + seed / 4) % 2 == 1 {
        cfg.crash = Some(CrashAt::Random { period: 2_500 });
        cfg.down_for = 700;
    }
    let equivocator = cfg.equivocator;
    let name = format!(
        "K={k} seed {seed} (equivocator {:?}, withholder {:?}, bad proposer {:?})",
        cfg.equivocator, cfg.withholder, cfg.bad_proposer
    );
    let replay = format!(
        "replay: FHIRSEAL_SIM_SEED={seed} FHIRSEAL_SIM_SEEDS=1 cargo test -p fhirseal-consensus \
         --test bft campaign -- --nocapture"
    );
    let run = std::panic::catch_unwind(|| {
        let out = Sim::new(cfg).run();
        out.report(&name);
        out.assert_safe();
        assert!(
            out.common_height() as u64 >= heights,
            "{}",
            out.common_height()
        );
        if let Some(e) = equivocator {
            let offender = PublicKey::of(&key(e));
            assert!(!out.evidence.is_empty(), "the equivocator was not reported");
            assert!(
                out.evidence
                    .iter()
                    .all(|(_, _, ev)| ev.offender() == &offender),
                "evidence against another delegate"
            );
        } else {
            assert!(out.evidence.is_empty(), "evidence without an equivocator");
        }
    });
    if let Err(panic) = run {
        // The panic's own message is out already (the panic hook printed it).
        println!("{name} failed\n{replay}");
        std::panic::resume_unwind(panic);
    }
}

/// Seeded runs at K = 4 with f = 1 and K = 7 with f = 2 Byzantine delegates: a few in CI;
/// `deploy/bft-campaign.sh` runs many (`FHIRSEAL_SIM_SEEDS` of them from
/// `FHIRSEAL_SIM_SEED`). A failing seed names the command that replays it.
#[test]
fn campaign_byzantine_delegates_under_a_hostile_network_never_break_agreement() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let first = env("FHIRSEAL_SIM_SEED", 100);
    let seeds = env("FHIRSEAL_SIM_SEEDS", 4);
    for seed in first..first + seeds {
        campaign_run(4, 20, seed);
        campaign_run(7, 12, seed);
    }
}
