//! The shared ledger with K delegates on this machine: anchored entries per second and the
//! latency from a submitted batch (and from an acknowledged write) to its final block, for
//! K = 1, 4 and 7, next to the single-node anchoring loop of `anchoring.rs` measured in the same
//! run; and the terms of the paper's formula 1, `L_total = T_prop + f/(N−f)·T_vote + T_verify`,
//! measured for N = 4, 7, 10 with f = 0 … ⌊(N−1)/3⌋ silent delegates, beside the model. Prints
//! the figures and ratios and writes them to `target/bench/ledger.json`.
//!
//! The delegates are `support/cluster.rs`'s nodes (the sidecar's ledger task on sled, a
//! write-ahead log made durable with `fdatasync`, an in-process network), on a multi-threaded
//! tokio runtime of 2 workers, next to the institutions that load them.
//!
//! Load: 4 institutions, each an anchorer as the sidecar runs it (one batch in flight: sign up
//! to 4096 waiting entries, submit them to its own node, which sends them on to the other
//! delegates, wait until its own chain holds them, then the next round at once if the batch was
//! full, else after 100 ms), spread over the delegates' nodes. Saturated (every round full), for
//! entries per second; paced (writes acknowledged at a steady rate, the aim's 50,000/s or 80 % of
//! the saturated figure if that is lower), for the latency from an acknowledged write to its
//! final block. Entries per second count the entries of blocks stored at every delegate within
//! the measured window, after a warm-up.
//!
//! Formula 1: one institution sends one batch of 64 entries at a time to delegate 0 and waits
//! until every honest delegate stores it. `f` delegates never start (silent), spread over the
//! schedule (`N−1`, `N−1−⌊N/f⌋`, …) so that no two follow each other as proposers. Per height:
//! `T_prop`, from the submission until the last honest delegate holds the decided round's body
//! (its proposer: sent it); `T_vote`, at each honest delegate from holding the body judged to
//! starting to store the block (prevotes, precommits, the decision's log sync), averaged;
//! `T_verify`, the judging of the body
//! (`Input::Body`: the chain's rules, the engine's prevote) plus storing the block
//! (`Chain::append`: validation, certificate, sled, flush), averaged; `L_total`, from the
//! submission until the last honest delegate has stored the block. The terms are the medians
//! over the heights decided in round 0; `L_total` is over all heights.
//!
//! Run: `cargo bench -p fhirseal-consensus --bench ledger`. `FHIRSEAL_BENCH_LEDGER_SECS` sets the
//! seconds of each formula run (default 8; each load run lasts 1.5 times that): about 3 minutes in
//! all by default.

#[allow(dead_code)] // the election's parts serve election.rs
#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/figures.rs"]
mod figures;
#[path = "support/single_node.rs"]
mod single_node;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fhirseal_consensus::bft::TimeoutConfig;
use fhirseal_consensus::{AnchorBatch, Transaction};
use serde_json::{json, Value};

use cluster::{by_height, Consortium, Height, Spent, Submitter};
use figures::{percentiles, Percentiles};
use single_node::{batch_id, entry, Fixture};

/// The anchorer's defaults: `ledger.max_batch`, `ledger.batch_interval_ms`.
const MAX_BATCH: usize = 4096;
const ANCHOR_INTERVAL: Duration = Duration::from_millis(100);
/// Institutions loading the delegates.
const INSTITUTIONS: usize = 4;
/// Delegate counts of the load runs.
const DELEGATES: [usize; 3] = [1, 4, 7];
/// Entries per batch of the formula's probe, and how many heights it measures.
const PROBE_BATCH: u64 = 64;
const MIN_PROBES: usize = 24;
const MAX_PROBES: usize = 400;
/// Probe heights left out at the start (the engine's and sled's first use).
const PROBE_WARM_UP: u64 = 2;
/// The aim for 4 delegates on one 2-core box.
const AIM_RATE: f64 = 50_000.0;
const AIM_P50_MS: f64 = 250.0;
const AIM_P99_MS: f64 = 600.0;

// ---- load ----

/// One anchoring round of an institution.
#[derive(Debug)]
struct BatchRecord {
    submitted: Instant,
    /// When its node's chain held it (the outbox is cleared then).
    final_here: Instant,
    height: u64,
    entries: u64,
    /// Paced: when its first entry was acknowledged, and the time between acknowledgements.
    acks: Option<(Instant, Duration)>,
    attempts: usize,
}

/// Runs `submitter`'s anchorer until `until`: writes acknowledged at `rate` a second (`None`:
/// always a full batch waiting).
async fn anchorer(mut submitter: Submitter, rate: Option<f64>, until: Instant) -> Vec<BatchRecord> {
    let start = Instant::now();
    let mut taken = 0_u64;
    let mut rounds = 0_u64;
    let mut records = Vec::new();
    while Instant::now() < until {
        let waiting = match rate {
            Some(rate) => ((start.elapsed().as_secs_f64() * rate) as u64).saturating_sub(taken),
            None => MAX_BATCH as u64,
        };
        let take = waiting.min(MAX_BATCH as u64);
        if take > 0 {
            let entries = (taken..taken + take)
                .map(|n| entry(&submitter.name, n))
                .collect();
            let acks = rate.map(|rate| {
                let step = Duration::from_secs_f64(1.0 / rate);
                (start + Duration::from_secs_f64(taken as f64 / rate), step)
            });
            taken += take;
            rounds += 1;
            let batch =
                AnchorBatch::sign(batch_id(rounds), &*submitter.name, entries, &submitter.key)
                    .expect("sign");
            let tx = Transaction::Anchor(batch);
            let submitted = Instant::now();
            let (height, attempts) = submitter.anchor(&tx).await;
            records.push(BatchRecord {
                submitted,
                final_here: Instant::now(),
                height,
                entries: take,
                acks,
                attempts,
            });
        }
        if take < MAX_BATCH as u64 {
            tokio::time::sleep(ANCHOR_INTERVAL).await;
        }
    }
    records
}

/// A load run's figures.
#[derive(Debug)]
struct LoadRun {
    k: usize,
    /// Entries a second acknowledged (`None`: saturated).
    offered: Option<f64>,
    entries_per_s: f64,
    blocks: usize,
    /// Of those, decided after round 0.
    later_round: usize,
    /// Submission → final at the submitting institution's node, and at every delegate (ms).
    batch_here: Percentiles,
    batch_everywhere: Percentiles,
    /// Acknowledged write → final at its institution's node (ms; paced runs).
    ack: Option<Percentiles>,
    resubmitted: usize,
    /// Of the whole process over the window, in cores busy.
    cpu: Option<f64>,
    /// A delegate's ledger task on average.
    spent: Spent,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().sum::<f64>() / values.len() as f64
}

fn median(values: &[f64]) -> f64 {
    percentiles(values.to_vec()).p50
}

/// The process's CPU time so far (user and system), from `/proc/self/stat` at 100 ticks a second.
fn cpu_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// K delegates loaded by the institutions for `secs`.
async fn load_run(k: usize, offered: Option<f64>, secs: f64) -> LoadRun {
    let consortium = Consortium::start(k, &[], INSTITUTIONS);
    let begin = Instant::now();
    let warm = begin + Duration::from_secs_f64((secs / 5.0).min(1.5));
    let until = begin + Duration::from_secs_f64(secs);
    let per_institution = offered.map(|r| r / INSTITUTIONS as f64);
    let anchorers: Vec<_> = (0..INSTITUTIONS)
        .map(|j| {
            let submitter = consortium.submitter(j, j % k);
            tokio::spawn(anchorer(submitter, per_institution, until))
        })
        .collect();
    tokio::time::sleep_until(warm.into()).await;
    let cpu_start = cpu_time();
    tokio::time::sleep_until(until.into()).await;
    let cpu = cpu_time()
        .zip(cpu_start)
        .map(|(b, a)| (b - a) / (until - warm).as_secs_f64());
    let mut records = Vec::new();
    for task in anchorers {
        records.extend(task.await.expect("an institution"));
    }
    let seen = consortium.stop().await;
    let heights = by_height(&seen);
    let window = until - warm;
    let finals: BTreeMap<u64, Instant> = heights
        .iter()
        .filter_map(|(h, v)| v.final_everywhere().map(|t| (*h, t)))
        .collect();
    let in_window: Vec<&Height> = heights
        .iter()
        .filter(|(h, _)| finals.get(h).is_some_and(|t| *t >= warm && *t <= until))
        .map(|(_, v)| v)
        .collect();
    let anchored: usize = in_window.iter().map(|h| h.entries).sum();
    let measured: Vec<&BatchRecord> = records.iter().filter(|r| r.submitted >= warm).collect();
    let batch_here = percentiles(
        measured
            .iter()
            .map(|r| ms(r.final_here - r.submitted))
            .collect(),
    );
    let batch_everywhere = percentiles(
        measured
            .iter()
            .filter_map(|r| finals.get(&r.height).map(|t| ms(*t - r.submitted)))
            .collect(),
    );
    let ack = offered.map(|_| {
        let mut latencies = Vec::new();
        for r in &records {
            let Some((first, step)) = r.acks else {
                continue;
            };
            if first < warm {
                continue;
            }
            for j in 0..r.entries {
                let acked = first + step.mul_f64(j as f64);
                latencies.push(ms(r.final_here.saturating_duration_since(acked)));
            }
        }
        percentiles(latencies)
    });
    let mut spent = Spent::default();
    for s in seen.iter().map(|n| &n.spent) {
        spent.driver += s.driver / k as u32;
        spent.wal += s.wal / k as u32;
        spent.append += s.append / k as u32;
        spent.append_wait += s.append_wait / k as u32;
        spent.send += s.send / k as u32;
        spent.life += s.life / k as u32;
        spent.syncs += s.syncs / k as u64;
    }
    LoadRun {
        k,
        offered,
        entries_per_s: anchored as f64 / window.as_secs_f64(),
        blocks: in_window.len(),
        later_round: in_window.iter().filter(|h| h.round > 0).count(),
        batch_here,
        batch_everywhere,
        ack,
        resubmitted: records.iter().map(|r| r.attempts - 1).sum(),
        cpu,
        spent,
    }
}

// ---- formula 1 ----

/// The terms of one probe height (ms).
#[derive(Debug, Clone, Copy)]
struct Terms {
    round: u32,
    prop: f64,
    vote: f64,
    judge: f64,
    append: f64,
    total: f64,
}

fn terms(height: &Height, submitted: Instant) -> Option<Terms> {
    let round = height.round;
    let (mut holding, mut votes, mut judging, mut appends, mut finals) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for node in &height.nodes {
        let (storing, stored) = node.appended?;
        appends.push(ms(stored - storing));
        finals.push(stored);
        let (had, ready) = if let Some(&sent) = node.sent.get(&round) {
            (sent, sent)
        } else if let Some(&(delivered, start, end)) = node.judged.get(&round) {
            judging.push(ms(end - start));
            (delivered, end)
        } else {
            // Stored from a peer's blocks before it judged the body.
            continue;
        };
        holding.push(had);
        // Prevotes, precommits, the decision made durable.
        votes.push(ms(storing.saturating_duration_since(ready)));
    }
    Some(Terms {
        round,
        prop: ms(holding
            .into_iter()
            .max()?
            .saturating_duration_since(submitted)),
        vote: mean(&votes),
        judge: mean(&judging),
        append: mean(&appends),
        total: ms(finals
            .into_iter()
            .max()?
            .saturating_duration_since(submitted)),
    })
}

/// One (N, f) row of formula 1.
#[derive(Debug)]
struct FormulaRow {
    n: usize,
    f: usize,
    heights: usize,
    /// Heights decided after round 0.
    late: usize,
    t_prop: f64,
    t_vote: f64,
    t_judge: f64,
    t_append: f64,
    model: f64,
    total: Percentiles,
    total_mean: f64,
    /// Mean `L_total` of the round-0 heights and of the others.
    round0_mean: f64,
    late_mean: f64,
}

impl FormulaRow {
    fn t_verify(&self) -> f64 {
        self.t_judge + self.t_append
    }

    /// Where the model misses the measurement, in a sentence.
    fn failure(&self) -> String {
        if self.f == 0 {
            return format!(
                "the model has no vote term without silent delegates, yet every height pays a \
                 vote round ({:.1} ms): it is {:.0} % under the median",
                self.t_vote,
                100.0 * (1.0 - self.model / self.total.p50)
            );
        }
        let weight = self.f as f64 / (self.n - self.f) as f64;
        format!(
            "{} of {} heights had a silent proposer and were decided in a later round, {:.0} ms \
             after the others (the {} ms propose timeout and a nil round): the model's \
             f/(N−f)·T_vote adds {:.1} ms to every height and none of that step; mean {:.0} ms \
             against the model's {:.0} ms, p99 {:.0} ms",
            self.late,
            self.heights,
            self.late_mean - self.round0_mean,
            TimeoutConfig::default().propose,
            weight * self.t_vote,
            self.total_mean,
            self.model,
            self.total.p99
        )
    }
}

/// Silent delegates spread over the schedule: `N−1`, `N−1−⌊N/f⌋`, …
fn silent_set(n: usize, f: usize) -> Vec<usize> {
    (0..f).map(|i| n - 1 - i * (n / f.max(1))).collect()
}

async fn formula_run(n: usize, f: usize, secs: f64) -> FormulaRow {
    let consortium = Consortium::start(n, &silent_set(n, f), 1);
    let mut submitter = consortium.submitter(0, 0);
    let mut tips = consortium.tips.clone();
    let begin = Instant::now();
    let mut probes: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut sent = 0_u64;
    while (begin.elapsed().as_secs_f64() < secs || probes.len() < MIN_PROBES)
        && probes.len() < MAX_PROBES
    {
        let probe = consortium
            .probe(&mut submitter, &mut tips, sent, PROBE_BATCH)
            .await;
        sent += 1;
        probes.insert(probe.height, probe.submitted);
    }
    let seen = consortium.stop().await;
    let heights = by_height(&seen);
    let measured: Vec<Terms> = probes
        .iter()
        .filter(|(h, _)| **h >= PROBE_WARM_UP)
        .filter_map(|(h, submitted)| terms(heights.get(h)?, *submitted))
        .collect();
    let round0: Vec<&Terms> = measured.iter().filter(|t| t.round == 0).collect();
    let late: Vec<f64> = measured
        .iter()
        .filter(|t| t.round > 0)
        .map(|t| t.total)
        .collect();
    let of = |f: fn(&Terms) -> f64| median(&round0.iter().map(|t| f(t)).collect::<Vec<_>>());
    let (t_prop, t_vote, t_judge, t_append) = (
        of(|t| t.prop),
        of(|t| t.vote),
        of(|t| t.judge),
        of(|t| t.append),
    );
    let totals: Vec<f64> = measured.iter().map(|t| t.total).collect();
    let weight = f as f64 / (n - f) as f64;
    FormulaRow {
        n,
        f,
        heights: measured.len(),
        late: late.len(),
        t_prop,
        t_vote,
        t_judge,
        t_append,
        model: t_prop + weight * t_vote + t_judge + t_append,
        total: percentiles(totals.clone()),
        total_mean: mean(&totals),
        round0_mean: mean(&round0.iter().map(|t| t.total).collect::<Vec<_>>()),
        late_mean: mean(&late),
    }
}

// ---- the run ----

/// The single-node anchoring loop of `anchoring.rs` (one block per batch of 4096, no runtime,
/// no write-ahead log) for `secs`: entries a second; then the chain opened again, as a restarted
/// node does.
fn single_node_loop(secs: f64) -> (f64, Reopen) {
    let mut fixture = Fixture::new();
    fixture.anchor_round(MAX_BATCH, 1);
    let (mut time, mut entries) = (Duration::ZERO, 0_usize);
    let begin = Instant::now();
    while begin.elapsed().as_secs_f64() < secs {
        time += fixture.anchor_round(MAX_BATCH, 1).0;
        entries += MAX_BATCH;
    }
    let (took, grown) = fixture.reopen();
    let reopen = Reopen {
        entries: fixture.anchored(),
        took,
        grown,
    };
    (entries as f64 / time.as_secs_f64(), reopen)
}

/// Opening a chain again: its blocks' entries filed in memory.
#[derive(Debug)]
struct Reopen {
    entries: u64,
    took: Duration,
    /// Resident memory grown meanwhile (bytes).
    grown: Option<u64>,
}

impl Reopen {
    fn seconds_per_million(&self) -> f64 {
        self.took.as_secs_f64() * 1e6 / self.entries as f64
    }

    fn bytes_per_entry(&self) -> Option<f64> {
        self.grown.map(|g| g as f64 / self.entries as f64)
    }
}

/// The machine's load average over the last minute (other builds share it).
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[allow(clippy::print_stdout)] // a benchmark reports to its terminal
fn main() {
    let secs: f64 = std::env::var("FHIRSEAL_BENCH_LEDGER_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8.0_f64)
        .max(1.0);
    let load_secs = 1.5 * secs;
    println!(
        "ledger bench: load runs of {load_secs} s, formula runs of {secs} s; 2 tokio workers, \
         in-process network, sled and write-ahead log on disk; load average {:.1}",
        load_average().unwrap_or(f64::NAN)
    );
    let (single, reopen) = single_node_loop(secs.min(4.0));
    println!("single-node anchoring loop (anchoring.rs, 4096 a block): {single:.0} entries/s");
    println!(
        "opening that chain again: {} entries filed in memory in {:.0} ms ({:.2} s a million), \
         resident memory {:.0} bytes an entry",
        reopen.entries,
        ms(reopen.took),
        reopen.seconds_per_million(),
        reopen.bytes_per_entry().unwrap_or(f64::NAN)
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut loads: Vec<(LoadRun, LoadRun)> = Vec::new();
    for k in DELEGATES {
        let saturated = runtime.block_on(load_run(k, None, load_secs));
        print_load(&saturated);
        let rate = AIM_RATE.min(0.8 * saturated.entries_per_s).max(100.0);
        let paced = runtime.block_on(load_run(k, Some(rate), load_secs));
        print_load(&paced);
        loads.push((saturated, paced));
    }
    let mut rows = Vec::new();
    for n in [4_usize, 7, 10] {
        for f in 0..=(n - 1) / 3 {
            let row = runtime.block_on(formula_run(n, f, secs));
            println!(
                "formula N={n} f={f}: {} heights, {} after round 0, L p50 {:.1} ms",
                row.heights, row.late, row.total.p50
            );
            rows.push(row);
        }
    }
    drop(runtime);
    let mut figures = vec![
        json!({"name": "single-node-loop-entries-per-s", "value": single,
        "unit": "entries/s", "what": "anchoring.rs's loop: one delegate, no runtime, no write-ahead log"}),
    ];
    figures.push(
        json!({"name": "reopen-filing", "unit": "s per million entries",
        "value": reopen.seconds_per_million(), "entries": reopen.entries,
        "ms": ms(reopen.took), "resident_bytes_per_entry": reopen.bytes_per_entry(),
        "what": "Chain::open of the single-node loop's chain: every stored block's entries filed \
        in memory again"}),
    );
    figures.extend(report_loads(single, &loads));
    figures.extend(report_formula(&rows));
    figures.push(
        json!({"name": "load-average", "value": load_average(), "unit": "runnable tasks (1 min)",
        "cores": std::thread::available_parallelism().map(usize::from).ok()}),
    );
    figures::write("ledger", Value::Array(figures));
}

#[allow(clippy::print_stdout)]
fn print_load(run: &LoadRun) {
    let offered = run
        .offered
        .map_or("saturated".to_owned(), |r| format!("paced at {r:.0}/s"));
    let share = |d: Duration| 100.0 * d.as_secs_f64() / run.spent.life.as_secs_f64();
    println!(
        "K={} {offered}: {:.0} entries/s in {} blocks ({} after round 0); batch → final p50 {:.0} \
         ms p99 {:.0} ms; CPU {:.2} cores; a delegate's task: driver {:.0} %, WAL {:.0} % ({} \
         syncs), append {:.0} % (and {:.0} % waiting for another's), send {:.0} %; {} batches \
         resubmitted",
        run.k,
        run.entries_per_s,
        run.blocks,
        run.later_round,
        run.batch_here.p50,
        run.batch_here.p99,
        run.cpu.unwrap_or(f64::NAN),
        share(run.spent.driver),
        share(run.spent.wal),
        run.spent.syncs,
        share(run.spent.append),
        share(run.spent.append_wait),
        share(run.spent.send),
        run.resubmitted,
    );
}

/// Prints the load table and the aim; the figures for the JSON file.
#[allow(clippy::print_stdout)]
fn report_loads(single: f64, loads: &[(LoadRun, LoadRun)]) -> Vec<Value> {
    let mut measures = Vec::new();
    let k1 = loads.first().map_or(f64::NAN, |(s, _)| s.entries_per_s);
    println!();
    println!(
        "| K | entries/s | × K=1 | × loop | blocks (later round) | batch → final p50 / p99 | \
         paced at | batch → final p50 / p99 | ack → final p50 / p99 | CPU (cores) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (saturated, paced) in loads {
        let ack = paced.ack.unwrap_or_default();
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {} ({}) | {:.0} / {:.0} ms | {:.0}/s | {:.0} / {:.0} ms \
             | {:.0} / {:.0} ms | {:.2} |",
            saturated.k,
            saturated.entries_per_s,
            saturated.entries_per_s / k1,
            saturated.entries_per_s / single,
            saturated.blocks,
            saturated.later_round,
            saturated.batch_here.p50,
            saturated.batch_here.p99,
            paced.offered.unwrap_or(0.0),
            paced.batch_here.p50,
            paced.batch_here.p99,
            ack.p50,
            ack.p99,
            saturated.cpu.unwrap_or(f64::NAN),
        );
        let k = saturated.k;
        measures.push(json!({"name": format!("k{k}-entries-per-s"), "value": saturated.entries_per_s,
            "unit": "entries/s", "baseline": k1, "baseline_name": "k1-entries-per-s",
            "ratio": saturated.entries_per_s / k1, "single_node_loop_ratio": saturated.entries_per_s / single,
            "blocks": saturated.blocks, "blocks_after_round_0": saturated.later_round,
            "aim": (k == 4).then_some(AIM_RATE), "cpu_cores": saturated.cpu}));
        for (run, name) in [(saturated, "saturated"), (paced, "paced")] {
            measures.push(
                json!({"name": format!("k{k}-{name}-batch-final-ms"), "unit": "ms",
                "offered_entries_per_s": run.offered, "entries_per_s": run.entries_per_s,
                "p50": run.batch_here.p50, "p99": run.batch_here.p99, "batches": run.batch_here.n,
                "every_delegate_p50": run.batch_everywhere.p50,
                "every_delegate_p99": run.batch_everywhere.p99, "resubmitted": run.resubmitted,
                "blocks": run.blocks, "blocks_after_round_0": run.later_round}),
            );
        }
        measures.push(json!({"name": format!("k{k}-ack-final-ms"), "unit": "ms",
            "offered_entries_per_s": paced.offered, "p50": ack.p50, "p99": ack.p99, "entries": ack.n,
            "aim_p50": (k == 4).then_some(AIM_P50_MS), "aim_p99": (k == 4).then_some(AIM_P99_MS)}));
    }
    if let Some((saturated, paced)) = loads.iter().find(|(s, _)| s.k == 4) {
        let ack = paced.ack.unwrap_or_default();
        let verdict = |met: bool| if met { "met" } else { "missed" };
        println!(
            "aim for K=4: ≥ {AIM_RATE:.0} entries/s {} ({:.0}); ack → final p50 ≤ {AIM_P50_MS:.0} \
             ms {} ({:.0}), p99 ≤ {AIM_P99_MS:.0} ms {} ({:.0}) at {:.0}/s",
            verdict(saturated.entries_per_s >= AIM_RATE),
            saturated.entries_per_s,
            verdict(ack.p50 <= AIM_P50_MS),
            ack.p50,
            verdict(ack.p99 <= AIM_P99_MS),
            ack.p99,
            paced.offered.unwrap_or(0.0),
        );
    }
    measures
}

/// Prints formula 1's table and where the model fails; the figures for the JSON file.
#[allow(clippy::print_stdout)]
fn report_formula(rows: &[FormulaRow]) -> Vec<Value> {
    let mut measures = Vec::new();
    println!();
    println!(
        "| N | f | heights | later round | T_prop | T_vote | T_verify | model L | L p50 | L mean \
         | L p99 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            row.n,
            row.f,
            row.heights,
            row.late,
            row.t_prop,
            row.t_vote,
            row.t_verify(),
            row.model,
            row.total.p50,
            row.total_mean,
            row.total.p99
        );
        measures.push(
            json!({"name": format!("formula-n{}-f{}", row.n, row.f), "unit": "ms",
            "heights": row.heights, "later_round": row.late, "t_prop": row.t_prop,
            "t_vote": row.t_vote, "t_verify": row.t_verify(), "t_verify_judge": row.t_judge,
            "t_verify_append": row.t_append, "model": row.model, "measured_p50": row.total.p50,
            "measured_mean": row.total_mean, "measured_p99": row.total.p99,
            "round0_mean": row.round0_mean, "later_round_mean": row.late_mean,
            "model_fails": row.failure()}),
        );
    }
    println!();
    for row in rows {
        println!("N={} f={}: {}.", row.n, row.f, row.failure());
    }
    measures
}
