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

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use std::sync::Arc;

use fhirseal_consensus::bft::{EngineConfig, MalachiteEngine};
use fhirseal_consensus::ledger::{Effect, FixedContext};
use fhirseal_consensus::{
    chain_id, AnchorBatch, AnchorEntry, BatchId, BlockLimits, Chain, ChainStore, Driver,
    DriverConfig, PublicKey, Roster, SigningKey, Timestamp, Transaction,
};
use sha2::{Digest as _, Sha256};

const INSTITUTION: &str = "hospital-a";

/// Block shapes measured: (entries per batch, batches per block).
const SHAPES: [(usize, usize); 2] = [(512, 8), (64, 4)];

type OneDriver = Driver<MalachiteEngine, fn(EngineConfig, SigningKey) -> MalachiteEngine>;

struct Fixture {
    // Kept so the database directory lives as long as the ledger.
    _dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    chain: Chain,
    driver: OneDriver,
    context: FixedContext,
    roster: Roster,
    institution: SigningKey,
    next_entry: u64,
    next_batch: u64,
    time: u64,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sled::open(dir.path()).expect("sled");
        let institution = SigningKey::from_bytes(&[1; 32]);
        let delegate = SigningKey::from_bytes(&[2; 32]);
        let roster = Roster::single_node(
            INSTITUTION,
            PublicKey::of(&institution),
            PublicKey::of(&delegate),
        );
        let chain_key = chain_id("bench");
        let chain = Chain::open(ChainStore::open(&db).expect("store"), chain_key).expect("chain");
        let mut config = DriverConfig::new(EngineConfig::new(chain_key));
        config.limits = BlockLimits {
            max_transactions: 1024,
            max_items: 1 << 16,
        };
        let driver: OneDriver = Driver::new(
            config,
            "delegate".into(),
            MalachiteEngine::new,
            chain.tip().cloned(),
        );
        let context = FixedContext {
            reader: chain.reader(),
            roster: Arc::new(roster.clone()),
            members: vec!["delegate".into()],
            keys: vec![delegate],
            holding: true,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        Self {
            _dir: dir,
            runtime,
            chain,
            driver,
            context,
            roster,
            institution,
            next_entry: 0,
            next_batch: 0,
            time: 0,
        }
    }

    /// `n` entries never anchored before, as the write path would hand them over.
    fn entries(&mut self, n: usize) -> Vec<AnchorEntry> {
        (0..n)
            .map(|_| {
                self.next_entry += 1;
                let seed = self.next_entry.to_be_bytes();
                let mut hash = [0; 32];
                hash[..8].copy_from_slice(&seed);
                AnchorEntry {
                    institution: INSTITUTION.into(),
                    resource_type: "Observation".into(),
                    logical_id: format!("obs-{}", self.next_entry),
                    version_id: "1".into(),
                    fingerprint: hash,
                    sealed_address: hash,
                    clinical_hash: hash,
                }
            })
            .collect()
    }

    /// One block of `batches` batches of `per_batch` entries; returns the time it took, and the
    /// part of it spent producing the block (validating, storing, flushing).
    fn anchor_round(&mut self, per_batch: usize, batches: usize) -> (Duration, Duration) {
        let prepared: Vec<Vec<AnchorEntry>> =
            (0..batches).map(|_| self.entries(per_batch)).collect();
        let start = Instant::now();
        let mut transactions = Vec::with_capacity(batches);
        for entries in prepared {
            self.next_batch += 1;
            let mut id = [0; 16];
            id[8..].copy_from_slice(&self.next_batch.to_be_bytes());
            let batch = AnchorBatch::sign(BatchId(id), INSTITUTION, entries, &self.institution)
                .expect("sign");
            transactions.push(Transaction::Anchor(batch));
        }
        self.time += 1;
        let time = Timestamp(self.time);
        let produce = Instant::now();
        let (answers, effects) = self
            .driver
            .submit(transactions, self.time, time, &self.context)
            .expect("submit");
        assert!(answers.iter().all(Result::is_ok));
        let mut stored = 0;
        for effect in effects {
            if let Effect::Append(block) = effect {
                let receipt = self
                    .runtime
                    .block_on(self.chain.append(&block, &self.roster))
                    .expect("append");
                stored += receipt.transactions.len();
            }
        }
        let (elapsed, producing) = (start.elapsed(), produce.elapsed());
        assert_eq!(stored, batches);
        (elapsed, producing)
    }
}

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
