//! Honest delegates: every height finalized identically everywhere, in round 0, with
//! certificates of at least 2f + 1 distinct delegates.

use crate::sim::{Config, Sim, CHAIN};

fn honest(k: usize, heights: u64, seed: u64, name: &str) {
    let sim = Sim::new(Config::new(k, heights, seed));
    let delegates = sim.delegates().clone();
    let out = sim.run();
    out.report(name);
    out.assert_safe();
    assert_eq!(out.live, (0..k).collect::<Vec<_>>());
    assert!(out.common_height() as u64 >= heights);
    // The same blocks everywhere; each delegate's certificate holds the precommits it received
    // (any 2f + 1 or more), so certificates may differ and all verify.
    let blocks = |i: usize| -> Vec<_> {
        out.chains[i][..heights as usize]
            .iter()
            .map(|(b, _)| *b)
            .collect()
    };
    for i in 1..k {
        assert_eq!(blocks(i), blocks(0));
    }
    for chain in &out.chains {
        for (block, cert) in chain {
            assert_eq!(&cert.block, block);
            assert!(cert.signatures().len() >= delegates.quorum());
            assert_eq!(
                cert.verify(&CHAIN, &delegates).unwrap(),
                cert.signatures().len()
            );
        }
    }
    assert!(out.rounds().iter().all(|r| *r == 0), "{:?}", out.rounds());
    assert!(out.evidence.is_empty());
}

#[test]
fn four_honest_delegates_finalize_every_height_identically() {
    honest(4, 30, 7, "K=4 honest");
}

#[test]
fn seven_honest_delegates_finalize_every_height_identically() {
    honest(7, 15, 8, "K=7 honest");
}

#[test]
fn one_delegate_the_embedded_default_finalizes_each_height_in_its_own_call() {
    let out = Sim::new(Config::new(1, 50, 1)).run();
    out.report("K=1");
    out.assert_safe();
    assert_eq!(out.common_height(), 50);
    // The same engine, a roster of one: its own proposal decides the height at once.
    assert!(out.final_in_propose_call >= 50);
    assert!(out.chains[0]
        .iter()
        .all(|(_, c)| c.signatures().len() == 1 && c.round.0 == 0));
}
