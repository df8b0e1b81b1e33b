//! The election's cryptography against Ed25519 measured in the same run: ring signing and
//! verification for rings of 8, 16, 64 and 256 keys (against one Ed25519 signature and one
//! verification), and the tally of one epoch's ballots by 64 members (64 ring verifications
//! over the ring of 64, and the count) against 64 Ed25519 verifications; and the epoch change of
//! 64 members (the close: seed, tally, standing, the election of K = 4 and their proposer order)
//! against applying an ordinary block of the same epoch; and finality across the election's epoch
//! changes beside the heights of steady epochs, measured in the same run.
//!
//! Finality: 8 members on `support/cluster.rs`'s nodes (the sidecar's ledger task on sled, a
//! write-ahead log made durable with `fdatasync`, an in-process network) on a tokio runtime of 2
//! workers elect K = 4 delegates every ledger epoch of 10 blocks, a delegate sitting out after one
//! epoch (M = 1), so that every epoch from the third on is certified by a new set. Each member
//! submits its commit, reveal and ballot once per height, as the sidecar's runtime does; blocks
//! come at the runtime's intervals (no sooner than 200 ms apart). One institution sends one
//! batch of 64 entries at a time to member 0's node and waits until every member stores it. A
//! probe whose block is the last of an epoch (its fold closes the epoch: seed, tally, election)
//! or one of the first two of the next (new delegates handed to the engine, the last commit
//! checked against the set before) is *across* an epoch change — so is a probe sent while such
//! a block was being decided, which waited for it; one whose heights, from the one being
//! decided when it was sent to the one that holds it, all lie further inside an elected epoch
//! is *steady*, the baseline. Latencies: from the submission until
//! member 0's chain holds the batch, and until every member's does.
//!
//! Prints the figures and ratios and writes them to `target/bench/election.json`.
//!
//! Run: `cargo bench -p fhirseal-consensus --bench election`. `FHIRSEAL_BENCH_ELECTION_EPOCHS`
//! sets how many ledger epochs the finality run lasts (default 16, about a minute).

#[allow(dead_code)] // the load's parts serve ledger.rs
#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/figures.rs"]
mod figures;
#[allow(dead_code)] // the cluster takes its entries from it; its fixture serves the others
#[path = "support/single_node.rs"]
mod single_node;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer as _, SigningKey, Verifier as _};
use fhirseal_consensus::election::elect::tally;
use fhirseal_consensus::election::lsag::{self, Scope, VoteSecret};
use serde_json::{json, Value};

use cluster::{by_height, Consortium, Elected, Probe, Seen};
use figures::percentiles;

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
    let epochs: u64 = std::env::var("FHIRSEAL_BENCH_ELECTION_EPOCHS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16_u64)
        .max(4);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (probes, seen) = runtime.block_on(finality_run(epochs));
    drop(runtime);
    measures.extend(report_finality(&probes, &seen));
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

// ---- finality across epoch changes ----

/// Members of the finality run, K, blocks per ledger epoch, M.
const MEMBERS: usize = 8;
const DELEGATES: usize = 4;
const EPOCH_BLOCKS: u64 = 10;
const MAX_TERMS: u32 = 1;
/// Entries per probe batch.
const PROBE_BATCH: u64 = 64;
/// The first ledger epoch whose delegates an election chose (the founders serve epochs 0 and 1).
const FIRST_ELECTED: u64 = 2;

/// The consortium of 8 electing 4, probed one batch at a time until member 0 has stored
/// `epochs` ledger epochs (or for at most 30 s an epoch).
async fn finality_run(epochs: u64) -> (Vec<Probe>, Vec<Seen>) {
    let elected = Elected {
        delegates: DELEGATES,
        epoch_blocks: EPOCH_BLOCKS,
        max_consecutive: MAX_TERMS,
    };
    let consortium = Consortium::elected(MEMBERS, 1, elected);
    let mut submitter = consortium.submitter(0, 0);
    let mut tips = consortium.tips.clone();
    let deadline = Instant::now() + Duration::from_secs(30 * epochs);
    let mut probes = Vec::new();
    let mut sent = 0_u64;
    while *tips[0].borrow() < epochs * EPOCH_BLOCKS && Instant::now() < deadline {
        let probe = consortium
            .probe(&mut submitter, &mut tips, sent, PROBE_BATCH)
            .await;
        sent += 1;
        probes.push(probe);
    }
    (probes, consortium.stop().await)
}

/// The finality figures: across an epoch change beside steady, at member 0 and everywhere.
#[allow(clippy::print_stdout)] // a benchmark reports to its terminal
fn report_finality(probes: &[Probe], seen: &[Seen]) -> Vec<Value> {
    let heights = by_height(seen);
    // The delegates of each ledger epoch, as member 0's election recorded them.
    let history = seen[0].history.clone().unwrap_or_default();
    let delegates_of = |epoch: u64| -> Option<BTreeSet<String>> {
        history
            .iter()
            .find(|((e, _), _)| *e == epoch)
            .map(|(_, d)| d.iter().map(|(m, _)| m.clone()).collect())
    };
    let last_epoch = probes.last().map_or(0, |p| p.height / EPOCH_BLOCKS);
    let changes: BTreeSet<u64> = (FIRST_ELECTED..=last_epoch)
        .filter(|e| match (delegates_of(*e), delegates_of(*e - 1)) {
            (Some(now), Some(before)) => now != before,
            (Some(_), None) => *e == FIRST_ELECTED,
            (None, _) => false,
        })
        .collect();
    let sets: BTreeSet<BTreeSet<String>> = (0..=last_epoch).filter_map(delegates_of).collect();
    let across_height = |h: u64| {
        let (epoch, at) = (h / EPOCH_BLOCKS, h % EPOCH_BLOCKS);
        (at == EPOCH_BLOCKS - 1 && changes.contains(&(epoch + 1)))
            || (at <= 1 && changes.contains(&epoch))
    };
    let steady_height = |h: u64| {
        let (epoch, at) = (h / EPOCH_BLOCKS, h % EPOCH_BLOCKS);
        epoch >= FIRST_ELECTED && (2..EPOCH_BLOCKS - 1).contains(&at)
    };
    // A probe waits for every height from the one being decided when it was sent to the one
    // that holds it: across when any of them is, steady when all of them are.
    let across = |p: &Probe| (p.first..=p.height).any(across_height);
    let steady = |p: &Probe| (p.first..=p.height).all(steady_height);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let of = |pick: &dyn Fn(&Probe) -> bool, everywhere: bool| {
        percentiles(
            probes
                .iter()
                .filter(|p| pick(p))
                .filter_map(|p| {
                    if everywhere {
                        let at = heights.get(&p.height)?.final_everywhere()?;
                        Some(ms(at.saturating_duration_since(p.submitted)))
                    } else {
                        Some(ms(p.here - p.submitted))
                    }
                })
                .collect(),
        )
    };
    println!(
        "finality run: {} probes over {} ledger epochs; {} delegate sets, {} epoch changes to a \
         new set",
        probes.len(),
        last_epoch + 1,
        sets.len(),
        changes.len()
    );
    let mut out = Vec::new();
    for (everywhere, place) in [(false, "member-0"), (true, "every-member")] {
        let (a, s) = (of(&across, everywhere), of(&steady, everywhere));
        println!(
            "finality at {place}: across an epoch change p50 {:.0} ms p99 {:.0} ms ({} probes); \
             steady p50 {:.0} ms p99 {:.0} ms ({} probes); ratio p50 {:.2}, p99 {:.2}",
            a.p50,
            a.p99,
            a.n,
            s.p50,
            s.p99,
            s.n,
            a.p50 / s.p50,
            a.p99 / s.p99
        );
        for (q, across, steady) in [("p50", a.p50, s.p50), ("p99", a.p99, s.p99)] {
            out.push(json!({"name": format!("finality-across-epoch-change-{q}-{place}"),
                "value": across, "unit": "ms", "probes": a.n,
                "baseline": steady, "baseline_name": format!("steady epoch {q}"), "baseline_probes": s.n,
                "ratio": across / steady, "members": MEMBERS, "delegates": DELEGATES,
                "epoch_blocks": EPOCH_BLOCKS, "max_terms": MAX_TERMS,
                "delegate_sets": sets.len(), "epoch_changes": changes.len()}));
        }
    }
    out
}
