//! The election's cryptography against Ed25519 measured in the same run: ring signing and
//! verification for rings of 8, 16, 64 and 256 keys (against one Ed25519 signature and one
//! verification), and the tally of one epoch's ballots by 64 members (64 ring verifications
//! over the ring of 64, and the count) against 64 Ed25519 verifications; and the epoch change of
//! 64 members (the close: seed, tally, standing, the election of K = 4 and their proposer order)
//! against applying an ordinary block of the same epoch. Prints the figures and ratios and writes
//! them to `target/bench/election.json`.
//!
//! Run: `cargo bench -p fhirseal-consensus --bench election`.

#[path = "support/figures.rs"]
mod figures;

use std::time::{Duration, Instant};

use ed25519_dalek::{Signer as _, SigningKey, Verifier as _};
use fhirseal_consensus::election::elect::tally;
use fhirseal_consensus::election::lsag::{self, Scope, VoteSecret};
use serde_json::{json, Value};

const SCOPE: Scope<'static> = Scope {
    chain: b"bench-consortium",
    epoch: 42,
};

/// The median time of one call of `f`, over runs of `per_run` calls lasting about `budget`.
fn median(budget: Duration, per_run: u32, mut f: impl FnMut()) -> Duration {
    let mut runs = Vec::new();
    let started = Instant::now();
    while runs.len() < 5 || (started.elapsed() < budget && runs.len() < 200) {
        let t = Instant::now();
        for _ in 0..per_run {
            f();
        }
        runs.push(t.elapsed() / per_run);
    }
    runs.sort();
    runs[runs.len() / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[allow(clippy::print_stdout)] // a benchmark reports to its terminal
fn main() {
    let budget = Duration::from_secs(2);
    let ed = SigningKey::from_bytes(&[7; 32]);
    let message = b"ballot: h2";
    let ed_sig = ed.sign(message);
    let ed_sign = median(budget, 200, || {
        std::hint::black_box(ed.sign(std::hint::black_box(message)));
    });
    let ed_verify = median(budget, 200, || {
        ed.verifying_key()
            .verify(std::hint::black_box(message), &ed_sig)
            .expect("verifies");
    });
    println!(
        "baseline Ed25519: sign {:.1} µs, verify {:.1} µs",
        micros(ed_sign),
        micros(ed_verify)
    );
    let mut measures = Vec::new();
    for n in [8usize, 16, 64, 256] {
        let secrets: Vec<VoteSecret> = (0..n)
            .map(|_| VoteSecret::generate().expect("key"))
            .collect();
        let ring: Vec<[u8; 32]> = secrets.iter().map(VoteSecret::public).collect();
        let per_run = (256 / n as u32).max(1);
        let sign = median(budget, per_run, || {
            std::hint::black_box(
                lsag::sign(&SCOPE, &ring, &secrets[n / 2], message).expect("signs"),
            );
        });
        let signature = lsag::sign(&SCOPE, &ring, &secrets[n / 2], message).expect("signs");
        let verify = median(budget, per_run, || {
            lsag::verify(&SCOPE, &ring, message, &signature).expect("verifies");
        });
        println!(
            "ring of {n:>3}: sign {:>9.1} µs ({:>6.1}× Ed25519), verify {:>9.1} µs ({:>6.1}× Ed25519)",
            micros(sign),
            sign.as_secs_f64() / ed_sign.as_secs_f64(),
            micros(verify),
            verify.as_secs_f64() / ed_verify.as_secs_f64()
        );
        measures.push(json!({"name": format!("ring-sign-{n}"), "value": micros(sign), "unit": "µs",
            "baseline": micros(ed_sign), "baseline_name": "ed25519-sign", "ratio": sign.as_secs_f64() / ed_sign.as_secs_f64()}));
        measures.push(json!({"name": format!("ring-verify-{n}"), "value": micros(verify), "unit": "µs",
            "baseline": micros(ed_verify), "baseline_name": "ed25519-verify", "ratio": verify.as_secs_f64() / ed_verify.as_secs_f64()}));
    }
    // One epoch's tally: 64 members each cast one ballot over the ring of 64.
    let secrets: Vec<VoteSecret> = (0..64)
        .map(|_| VoteSecret::generate().expect("key"))
        .collect();
    let ring: Vec<[u8; 32]> = secrets.iter().map(VoteSecret::public).collect();
    let candidates = ["h1", "h2", "h3", "h4"];
    let ballots: Vec<(String, lsag::RingSignature)> = secrets
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let candidate = candidates[i % 4].to_owned();
            let sig = lsag::sign(&SCOPE, &ring, s, candidate.as_bytes()).expect("signs");
            (candidate, sig)
        })
        .collect();
    let tally_time = median(budget, 1, || {
        let verified: Vec<([u8; 32], &str)> = ballots
            .iter()
            .map(|(c, sig)| {
                (
                    lsag::verify(&SCOPE, &ring, c.as_bytes(), sig).expect("verifies"),
                    c.as_str(),
                )
            })
            .collect();
        std::hint::black_box(tally(&verified));
    });
    let baseline = ed_verify * 64;
    println!(
        "tally of 64 ballots over a ring of 64: {:.3} s ({:.0}× 64 Ed25519 verifications; aim ≤ 0.5 s)",
        tally_time.as_secs_f64(),
        tally_time.as_secs_f64() / baseline.as_secs_f64()
    );
    measures.push(
        json!({"name": "tally-64", "value": tally_time.as_secs_f64(), "unit": "s",
        "baseline": baseline.as_secs_f64(), "baseline_name": "64 ed25519 verifications",
        "ratio": tally_time.as_secs_f64() / baseline.as_secs_f64(), "aim": 0.5}),
    );
    measures.extend(epoch_change(budget));
    figures::write("election", Value::Array(measures));
}

/// The close of an epoch of 64 seated members who all committed, revealed and voted, against an
/// ordinary block of the same epoch: both applied to a copy of the state, copy included.
#[allow(clippy::print_stdout)] // a benchmark reports to its terminal
fn epoch_change(budget: Duration) -> Vec<Value> {
    use fhirseal_consensus::election::beacon::{BeaconInput, BeaconKey};
    use fhirseal_consensus::election::schedule::{
        ballot_message, ring, Action, BlockFacts, Config, ElectionState, Seat,
    };
    use fhirseal_consensus::election::{elect, standing};
    let n = 64;
    let config = Config {
        chain: b"bench-consortium".to_vec(),
        epoch_blocks: 6,
        election: elect::Params {
            delegates: 4,
            max_consecutive: 2,
        },
        standing: standing::Params::default(),
    };
    let names: Vec<String> = (0..n).map(|i| format!("m{i:02}")).collect();
    let votes: Vec<VoteSecret> = (0..n)
        .map(|_| VoteSecret::generate().expect("key"))
        .collect();
    let beacons: Vec<BeaconKey> = (0..n)
        .map(|_| BeaconKey::generate().expect("key"))
        .collect();
    let seats: Vec<Seat> = (0..n)
        .map(|i| Seat {
            member: names[i].clone(),
            stake: 100 + i as u64,
            vote_key: votes[i].public(),
            beacon_key: beacons[i].public(),
        })
        .collect();
    let mut state =
        ElectionState::genesis(config.clone(), names[..4].to_vec()).expect("a valid config");
    let seed = state.previous_seed(0).expect("the genesis seed");
    let input = BeaconInput {
        chain: &config.chain,
        epoch: 0,
        previous_seed: seed,
    };
    let reveals: Vec<_> = beacons.iter().map(|b| b.contribute(&input)).collect();
    let block = |height: u64, actions: Vec<Action>| BlockFacts {
        height,
        proposer: names[0].clone(),
        signers: names[..4].to_vec(),
        actions,
        seats: (height == 1).then(|| seats.clone()),
        ..BlockFacts::default()
    };
    let commits = (0..n)
        .map(|i| Action::Commit {
            member: names[i].clone(),
            commitment: reveals[i].commitment(&names[i], &input),
        })
        .collect();
    let opened = (0..n)
        .map(|i| Action::Reveal {
            member: names[i].clone(),
            reveal: reveals[i],
        })
        .collect();
    let voters = ring(&seats);
    let scope = Scope {
        chain: &config.chain,
        epoch: 0,
    };
    let ballots = (0..n)
        .map(|i| {
            let candidate = names[i % 8].clone();
            let signature = lsag::sign(&scope, &voters, &votes[i], &ballot_message(&candidate, 0))
                .expect("signs");
            Action::Ballot {
                candidate,
                signature,
            }
        })
        .collect();
    for facts in [
        block(1, commits),
        block(2, Vec::new()),
        block(3, opened),
        block(4, ballots),
    ] {
        state.apply(&facts).expect("a valid block");
    }
    let ordinary = median(budget, 20, || {
        let mut copy = state.clone();
        std::hint::black_box(copy.apply(&block(5, Vec::new())).expect("applies"));
    });
    state.apply(&block(5, Vec::new())).expect("applies");
    let close = median(budget, 5, || {
        let mut copy = state.clone();
        let closed = copy.apply(&block(6, Vec::new())).expect("applies");
        std::hint::black_box(closed.expect("the epoch closes"));
    });
    println!(
        "epoch change of 64 members (seed, tally, standing, K = 4 elected and ordered): {:.1} µs ({:.1}× an ordinary block's {:.1} µs)",
        micros(close),
        close.as_secs_f64() / ordinary.as_secs_f64(),
        micros(ordinary)
    );
    vec![
        json!({"name": "epoch-change-64", "value": micros(close), "unit": "µs",
        "baseline": micros(ordinary), "baseline_name": "ordinary block of the epoch",
        "ratio": close.as_secs_f64() / ordinary.as_secs_f64()}),
    ]
}
