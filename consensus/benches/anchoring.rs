//! Anchored entries per second on the single node, against a baseline of bare SHA-256 over the
//! same entries' encoded bytes, measured in the same process.
//!
//! One anchoring round is what the outbox does: the institution signs batches of entries,
//! submits them, and the node's driver finalizes a block from them with its one delegate
//! (validation, Merkle roots, the BFT engine's proposal, votes and commit certificate, one sled
//! transaction for the block and its indexes, `flush_async`) in a sled database on disk. The
//! write-ahead log is not written (the sidecar's runtime does that). Making the entries is outside
//! the timing; everything else is inside.
//!
//! Run: `cargo bench -p fhirseal-consensus --bench anchoring`.

#[path = "support/single_node.rs"]
mod single_node;

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use fhirseal_consensus::AnchorEntry;
use sha2::{Digest as _, Sha256};

use single_node::Fixture;

/// Block shapes measured: (entries per batch, batches per block).
const SHAPES: [(usize, usize); 2] = [(512, 8), (64, 4)];

/// Total time and entries of the measured iterations, for the ratio printed at the end.
#[derive(Default)]
struct Tally {
    time: Duration,
    entries: u64,
    // Of `time`, what block production took (the rest is signing and submitting batches).
    producing: Duration,
}

impl Tally {
    fn per_second(&self) -> f64 {
        self.entries as f64 / self.time.as_secs_f64()
    }
}

fn main() {
    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10))
        .configure_from_args();
    let mut results = Vec::new();

    for (per_batch, batches) in SHAPES {
        let entries_per_block = per_batch * batches;
        let mut fixture = Fixture::new();
        let mut anchored = Tally::default();
        let mut hashed = Tally::default();

        let mut group = criterion.benchmark_group(format!(
            "anchoring/{entries_per_block}-per-block-{per_batch}-per-batch"
        ));
        group.throughput(Throughput::Elements(entries_per_block as u64));
        group.bench_function("anchor", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (round, producing) = fixture.anchor_round(per_batch, batches);
                    total += round;
                    anchored.producing += producing;
                }
                anchored.time += total;
                anchored.entries += iters * entries_per_block as u64;
                total
            });
        });

        // The same number of entries, encoded as the ledger encodes them, hashed once each.
        let encoded: Vec<Vec<u8>> = fixture
            .entries(entries_per_block)
            .iter()
            .map(AnchorEntry::to_bytes)
            .collect();
        group.bench_function("sha256-baseline", |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    for bytes in &encoded {
                        std::hint::black_box(Sha256::digest(std::hint::black_box(bytes)));
                    }
                }
                let total = start.elapsed();
                hashed.time += total;
                hashed.entries += iters * entries_per_block as u64;
                total
            });
        });
        group.finish();
        results.push((entries_per_block, per_batch, anchored, hashed));
    }

    criterion.final_summary();
    report(&results);
}

#[allow(clippy::print_stdout)] // a benchmark reports to its terminal
fn report(results: &[(usize, usize, Tally, Tally)]) {
    println!();
    for (per_block, per_batch, anchored, hashed) in results {
        if anchored.entries == 0 || hashed.entries == 0 {
            continue;
        }
        println!(
            "{per_block} entries/block, {per_batch}/batch: anchored {:.0} entries/s \
             ({:.2} µs/entry, {:.0}% of it producing the block); SHA-256 of the same bytes \
             {:.0} entries/s; anchoring costs {:.1}× the bare hash",
            anchored.per_second(),
            1e6 / anchored.per_second(),
            100.0 * anchored.producing.as_secs_f64() / anchored.time.as_secs_f64(),
            hashed.per_second(),
            hashed.per_second() / anchored.per_second(),
        );
    }
}
