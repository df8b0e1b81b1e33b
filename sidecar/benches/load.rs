//! Write load on loopback: Synthea resources into HAPI direct and through the sidecar in one run
//! (part A), and the sidecar alone in front of a minimal fast upstream, for its own ceiling in
//! sealed writes per second (part B). Bounded in count and time.
//!
//! `FHIRSEAL_TEST_HAPI=http://127.0.0.1:18095/fhir cargo bench -p fhirseal-sidecar --bench load`
//! with a HAPI of its own (`deploy/hapi/hapi.sh start 18095`), not the one the tests use: part A
//! writes Synthea identity into HAPI directly, which the sealing tests check HAPI never holds.
//! Without `FHIRSEAL_TEST_HAPI` only part B runs.
//!
//! The sidecar runs in this process on a runtime of its own with two worker threads, group
//! commit (the default durability), an RSA-2048 key made in a temporary data directory, and
//! one API key of role `FHIRSEAL_BENCH_ROLE` (default `clinician`, who sees identity: a
//! create's answer gets the writer's identity back; a role must write, so `researcher` cannot
//! stand in). The client runs on another
//! runtime (one thread), the fast upstream on a third.
//!
//! - Part A: the Patients of the Synthea bundles (each copy a new person: its identifier values
//!   get a suffix) alternating with their Observations, references dropped (they point at
//!   `urn:uuid:` entries of the bundle), posted as standalone creates with `FHIRSEAL_BENCH_A_C`
//!   in flight (default 4; `FHIRSEAL_BENCH_A_TYPES=Patient` or `Observation` for one type
//!   only), `FHIRSEAL_BENCH_N` writes per path (default 2000) in blocks of 100
//!   that alternate between HAPI direct and the sidecar, so that drift in HAPI's speed (its
//!   database grows) touches both alike; at most 180 s. Prints writes/s and p50/p99 per path,
//!   overall and per resource type, and the sidecar's ratios.
//! - Part B: an in-process hyper server answering every POST with 201, the resource back with
//!   a new id and version 1 (as HAPI does by default), and `Location: …/<type>/<n>/_history/1`. Sealed Patient creates (every one a new person)
//!   with `FHIRSEAL_BENCH_B_C` in flight (default 32), `FHIRSEAL_BENCH_B_N` requests (default
//!   20,000) or 20 s, against the fast upstream directly (the baseline) and through the sidecar;
//!   then, for reference, Observation creates through the sidecar (nothing in them to seal);
//!   then reads (`GET Patient/<id>`) of the Patients the sidecar sealed in its warm-up, against
//!   the fast upstream directly (the baseline) and through the sidecar, which re-identifies
//!   each for the clinician and records its access event.
//!   Prints writes/s, p50/p99, ratios, and the CPU time each part of this process used (from
//!   `/proc/self/task`), with the machine's total CPU use over the run, since everything shares
//!   the same cores.
//!
//! Synthea bundles come from `shared/data/synthea` beside the repository, or
//! `FHIRSEAL_SYNTHEA_DIR`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fast_upstream::start_fast_upstream;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use support::{env_usize, fmt, percentiles, start_sidecar, API_KEY};

#[path = "support/fast_upstream.rs"]
mod fast_upstream;
#[path = "../../consensus/benches/support/figures.rs"]
mod figures;
mod support;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

const BLOCK: usize = 100;
const PART_A_LIMIT: Duration = Duration::from_secs(180);
const PART_B_LIMIT: Duration = Duration::from_secs(20);

/// One request of a run: a create (the resource type, the URL's last segment, and its JSON
/// body), or with `read`, a read of that resource of the type (`GET type/id`).
#[derive(Clone)]
struct Write {
    resource_type: &'static str,
    body: Bytes,
    read: Option<String>,
}

/// The latencies of one run, by write index, and its wall time.
struct Run {
    samples: Vec<(usize, Duration)>,
    elapsed: Duration,
    failures: usize,
    first_failure: Option<String>,
}

fn main() {
    let role = std::env::var("FHIRSEAL_BENCH_ROLE").unwrap_or_else(|_| "clinician".to_owned());
    let (patients, observations) = synthea();
    println!(
        "load: {} Synthea Patients, {} Observations; API key role {role}; sidecar: 2 worker \
         threads, group commit, RSA-2048",
        patients.len(),
        observations.len()
    );
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let mut measures = serde_json::Map::new();
    match std::env::var("FHIRSEAL_TEST_HAPI") {
        Ok(hapi) => {
            let hapi = hapi.trim_end_matches('/').to_owned();
            part_a(
                &client_rt,
                &hapi,
                &role,
                &patients,
                &observations,
                &mut measures,
            );
        }
        Err(_) => println!(
            "\nPart A skipped: FHIRSEAL_TEST_HAPI is not set (a running HAPI FHIR base of its \
             own, e.g. http://127.0.0.1:18095/fhir after `deploy/hapi/hapi.sh start 18095`)."
        ),
    }
    part_b(&client_rt, &role, &patients, &observations, &mut measures);
    measures.insert(
        "peak_resident_memory_mb".to_owned(),
        figures::measure(peak_resident_mb(), "MiB", None),
    );
    figures::write("load", Value::Object(measures));
}

/// Bytes of the files under `dir`.
fn directory_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => directory_bytes(&entry.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The process's peak resident memory (`VmHWM`): the sidecar, the fast upstream and the client
/// together, an upper bound on the sidecar's own.
fn peak_resident_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// The Patients and the Observations of every Synthea bundle, ids and references dropped.
fn synthea() -> (Vec<Value>, Vec<Value>) {
    let dir = synthea_dir();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let (mut patients, mut observations) = (Vec::new(), Vec::new());
    for path in files {
        let bundle: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for entry in bundle["entry"].as_array().into_iter().flatten() {
            let mut resource = entry["resource"].clone();
            let Some(map) = resource.as_object_mut() else {
                continue;
            };
            map.shift_remove("id");
            // References point at other entries of the bundle (`urn:uuid:`): drop them.
            let is_reference = |v: &Value| v.get("reference").is_some();
            map.retain(|_, v| match v {
                Value::Array(items) => !items.iter().any(is_reference),
                other => !is_reference(other),
            });
            match map.get("resourceType").and_then(Value::as_str) {
                Some("Patient") => patients.push(resource),
                Some("Observation") => observations.push(resource),
                _ => {}
            }
        }
    }
    assert!(!patients.is_empty() && !observations.is_empty());
    (patients, observations)
}

/// Copy `copy` of a Patient: a new person (every identifier value, the SSN included, gets a
/// suffix), so that each write makes a new surrogate as a first load would.
fn patient_copy(patient: &Value, copy: usize) -> Bytes {
    let mut p = patient.clone();
    for id in p["identifier"].as_array_mut().into_iter().flatten() {
        if let Some(value) = id.get("value").and_then(Value::as_str) {
            id["value"] = Value::String(format!("{value}-{copy}"));
        }
    }
    Bytes::from(serde_json::to_vec(&p).unwrap())
}

/// `n` Patient creates, each a new person.
fn patient_writes(patients: &[Value], n: usize) -> Vec<Write> {
    (0..n)
        .map(|i| Write {
            resource_type: "Patient",
            body: patient_copy(&patients[i % patients.len()], i / patients.len()),
            read: None,
        })
        .collect()
}

/// `n` creates of `types`: `mixed` alternates a Patient (a new person each) and an
/// Observation; `Patient` or `Observation` writes only that type.
fn part_a_writes(patients: &[Value], observations: &[Value], types: &str, n: usize) -> Vec<Write> {
    let obs: Vec<Bytes> = observations
        .iter()
        .map(|o| Bytes::from(serde_json::to_vec(o).unwrap()))
        .collect();
    (0..n)
        .map(|i| {
            let (patient, k) = match types {
                "Patient" => (true, i),
                "Observation" => (false, i),
                _ => (i % 2 == 0, i / 2),
            };
            if patient {
                Write {
                    resource_type: "Patient",
                    body: patient_copy(&patients[k % patients.len()], k / patients.len()),
                    read: None,
                }
            } else {
                Write {
                    resource_type: "Observation",
                    body: obs[k % obs.len()].clone(),
                    read: None,
                }
            }
        })
        .collect()
}

/// Posts `writes[range]` to `base` with `concurrency` requests in flight, until the range is
/// done or `deadline` passes.
async fn drive(
    client: &HttpClient,
    base: &str,
    writes: &Arc<Vec<Write>>,
    range: std::ops::Range<usize>,
    concurrency: usize,
    deadline: Instant,
) -> Run {
    let next = Arc::new(AtomicUsize::new(range.start));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, base, writes, next) = (
                client.clone(),
                base.to_owned(),
                writes.clone(),
                next.clone(),
            );
            let end = range.end;
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut failures = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= end || Instant::now() > deadline {
                        break;
                    }
                    let write = &writes[i];
                    let (request, expected) = match &write.read {
                        None => (
                            Request::post(format!("{base}/{}", write.resource_type))
                                .header("content-type", "application/fhir+json"),
                            StatusCode::CREATED,
                        ),
                        Some(id) => (
                            Request::get(format!("{base}/{}/{id}", write.resource_type)),
                            StatusCode::OK,
                        ),
                    };
                    let request = request
                        .header("accept", "application/fhir+json")
                        .header("x-api-key", API_KEY)
                        .body(Full::new(write.body.clone()))
                        .unwrap();
                    let t0 = Instant::now();
                    let outcome = match client.request(request).await {
                        Ok(response) => {
                            let status = response.status();
                            let body = response.into_body().collect().await.map(|b| b.to_bytes());
                            match body {
                                Ok(_) if status == expected => Ok(()),
                                Ok(body) => Err(format!(
                                    "{status}: {}",
                                    String::from_utf8_lossy(&body[..body.len().min(300)])
                                )),
                                Err(e) => Err(format!("{status}: body: {e}")),
                            }
                        }
                        Err(e) => Err(format!("request: {e}")),
                    };
                    let elapsed = t0.elapsed();
                    match outcome {
                        Ok(()) => samples.push((i, elapsed)),
                        Err(e) => failures.push(e),
                    }
                }
                (samples, failures)
            })
        })
        .collect();
    let mut run = Run {
        samples: Vec::new(),
        elapsed: Duration::ZERO,
        failures: 0,
        first_failure: None,
    };
    for task in tasks {
        let (samples, failures) = task.await.unwrap();
        run.samples.extend(samples);
        run.failures += failures.len();
        if run.first_failure.is_none() {
            run.first_failure = failures.into_iter().next();
        }
    }
    run.elapsed = started.elapsed();
    run
}

fn part_a(
    rt: &tokio::runtime::Runtime,
    hapi: &str,
    role: &str,
    patients: &[Value],
    observations: &[Value],
    measures: &mut serde_json::Map<String, Value>,
) {
    let n = env_usize("FHIRSEAL_BENCH_N", 2000);
    let concurrency = env_usize("FHIRSEAL_BENCH_A_C", 4);
    let warmup = 200;
    let data = tempfile::tempdir().unwrap();
    let (sidecar, _) = start_sidecar(hapi, data.path(), role);
    let types = std::env::var("FHIRSEAL_BENCH_A_TYPES").unwrap_or_else(|_| "mixed".to_owned());
    let described = if types == "mixed" {
        "Patient / Observation alternating".to_owned()
    } else {
        format!("{types} only")
    };
    assert!(
        ["mixed", "Patient", "Observation"].contains(&types.as_str()),
        "FHIRSEAL_BENCH_A_TYPES is mixed, Patient or Observation"
    );
    let writes = Arc::new(part_a_writes(patients, observations, &types, warmup + n));
    println!(
        "\nPart A: HAPI {hapi} direct vs through the sidecar {sidecar}: {n} creates per path \
         ({described}), {concurrency} in flight, blocks of {BLOCK} \
         alternating paths, after {warmup} warm-up creates per path"
    );
    rt.block_on(async {
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let far = Instant::now() + PART_A_LIMIT;
        for base in [hapi, sidecar.as_str()] {
            let run = drive(&client, base, &writes, 0..warmup, concurrency, far).await;
            check(&run, base);
        }
        let deadline = Instant::now() + PART_A_LIMIT;
        let cpu_before = cpu_snapshot();
        let wall = Instant::now();
        let (mut direct, mut through) = (Vec::new(), Vec::new());
        let mut block = 0;
        let mut start = warmup;
        while start < warmup + n && Instant::now() < deadline {
            let range = start..(start + BLOCK).min(warmup + n);
            let order = if block % 2 == 0 {
                [(hapi, 0), (sidecar.as_str(), 1)]
            } else {
                [(sidecar.as_str(), 1), (hapi, 0)]
            };
            for (base, which) in order {
                let run = drive(&client, base, &writes, range.clone(), concurrency, deadline).await;
                check(&run, base);
                if which == 0 {
                    direct.push(run);
                } else {
                    through.push(run);
                }
            }
            start = range.end;
            block += 1;
        }
        let cpu = cpu_snapshot().since(&cpu_before);
        let wall = wall.elapsed();
        let direct = merge(direct);
        let through = merge(through);
        let kind = |i: usize| writes[i].resource_type;
        println!(
            "{:<12} {:>6} {:>10} {:>10} {:>11} {:>11} {:>11} {:>11} {:>7} {:>7} {:>7}",
            "writes",
            "n",
            "direct w/s",
            "sidecar w/s",
            "direct p50",
            "sidecar p50",
            "direct p99",
            "sidecar p99",
            "p50 ×",
            "p99 ×",
            "w/s ×"
        );
        for filter in ["all", "Patient", "Observation"] {
            let pick = |run: &Run| -> Vec<Duration> {
                run.samples
                    .iter()
                    .filter(|(i, _)| filter == "all" || kind(*i) == filter)
                    .map(|(_, d)| *d)
                    .collect()
            };
            let (mut d, mut s) = (pick(&direct), pick(&through));
            if d.is_empty() || s.is_empty() {
                continue;
            }
            let (d50, d99) = percentiles(&mut d);
            let (s50, s99) = percentiles(&mut s);
            let (dw, sw) = if filter == "all" {
                (rate(&direct), rate(&through))
            } else {
                (f64::NAN, f64::NAN)
            };
            let key = |what: &str| format!("hapi_{}_{what}", filter.to_lowercase());
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            measures.insert(
                key("p50_ms"),
                figures::measure(ms(s50), "ms", Some(ms(d50))),
            );
            measures.insert(
                key("p99_ms"),
                figures::measure(ms(s99), "ms", Some(ms(d99))),
            );
            if filter == "all" {
                measures.insert(
                    key("writes_per_s"),
                    figures::measure(sw, "writes/s", Some(dw)),
                );
            }
            println!(
                "{:<12} {:>6} {:>10} {:>10} {:>11} {:>11} {:>11} {:>11} {:>7.3} {:>7.3} {:>7}",
                filter,
                d.len().min(s.len()),
                fmt_rate(dw),
                fmt_rate(sw),
                fmt(d50),
                fmt(s50),
                fmt(d99),
                fmt(s99),
                s50.as_secs_f64() / d50.as_secs_f64(),
                s99.as_secs_f64() / d99.as_secs_f64(),
                if dw.is_nan() {
                    "—".to_owned()
                } else {
                    format!("{:.3}", sw / dw)
                },
            );
        }
        println!(
            "(writes/s over the blocks' wall time; p50 × and p99 × are sidecar ÷ direct; the \
             aim is a write p50 through the sidecar ≤ 1.05 × direct)"
        );
        let sidecar_ms: f64 = cpu
            .threads
            .iter()
            .filter(|(name, _)| name.starts_with("fs-sidecar") || name.starts_with("sled"))
            .map(|(_, ms)| ms)
            .sum();
        println!(
            "CPU over part A ({:.1} s wall, both paths): sidecar and vault threads {:.0} ms = \
             {:.0} µs per write through the sidecar; machine busy {:.2} of {} cores (HAPI, \
             sidecar, client and anything else running)",
            wall.as_secs_f64(),
            sidecar_ms,
            sidecar_ms * 1e3 / through.samples.len().max(1) as f64,
            cpu.machine_busy_cores,
            cpu.cores
        );
    });
    drop(data);
}

fn part_b(
    rt: &tokio::runtime::Runtime,
    role: &str,
    patients: &[Value],
    observations: &[Value],
    measures: &mut serde_json::Map<String, Value>,
) {
    let n = env_usize("FHIRSEAL_BENCH_B_N", 20_000);
    let concurrency = env_usize("FHIRSEAL_BENCH_B_C", 32);
    let warmup = 1_000;
    let (upstream, connections) = start_fast_upstream();
    let data = tempfile::tempdir().unwrap();
    let (sidecar, _) = start_sidecar(&upstream, data.path(), role);
    // Distinct persons for the warm-ups and for both runs, so that every sealed write is new.
    let patients = Arc::new(patient_writes(patients, 2 * warmup + 2 * n));
    let observations = Arc::new(
        observations
            .iter()
            .cycle()
            .take(n)
            .map(|o| Write {
                resource_type: "Observation",
                body: Bytes::from(serde_json::to_vec(o).unwrap()),
                read: None,
            })
            .collect::<Vec<_>>(),
    );
    // Reads of the Patients the sidecar sealed in its warm-up: the fast upstream numbers its
    // creates from 1, and the direct warm-up takes the first `warmup`.
    let reads = Arc::new(
        (0..n)
            .map(|i| Write {
                resource_type: "Patient",
                body: Bytes::new(),
                read: Some((warmup + 1 + i % warmup).to_string()),
            })
            .collect::<Vec<_>>(),
    );
    println!(
        "\nPart B: sealed Patient creates (each a new person), {concurrency} in flight, {n} per \
         run or {} s: the fast upstream {upstream} direct, then the sidecar {sidecar} in front \
         of it, after {warmup} warm-up creates each; then, for reference, Observation creates \
         through the sidecar (no identity in them: parsed, split and forwarded, nothing sealed); \
         then reads of the Patients sealed in the warm-up, direct and re-identified through the \
         sidecar",
        PART_B_LIMIT.as_secs()
    );
    rt.block_on(async {
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        for (base, range) in [(&upstream, 0..warmup), (&sidecar, warmup..2 * warmup)] {
            let far = Instant::now() + PART_B_LIMIT;
            let run = drive(&client, base, &patients, range, concurrency, far).await;
            check(&run, base);
        }

        let first = 2 * warmup;
        let mut results = Vec::new();
        for (label, base, writes, range) in [
            (
                "Patient, direct",
                upstream.as_str(),
                &patients,
                first..first + n,
            ),
            (
                "Patient, sidecar",
                sidecar.as_str(),
                &patients,
                first + n..first + 2 * n,
            ),
            (
                "Observation, sidecar",
                sidecar.as_str(),
                &observations,
                0..n,
            ),
            ("Patient reads, direct", upstream.as_str(), &reads, 0..n),
            ("Patient reads, sidecar", sidecar.as_str(), &reads, 0..n),
        ] {
            let connections_before = connections.load(Ordering::Relaxed);
            let cpu_before = cpu_snapshot();
            let deadline = Instant::now() + PART_B_LIMIT;
            let run = drive(&client, base, writes, range, concurrency, deadline).await;
            let cpu = cpu_snapshot().since(&cpu_before);
            check(&run, base);
            results.push((
                label,
                run,
                cpu,
                connections.load(Ordering::Relaxed) - connections_before,
            ));
        }

        println!(
            "{:<22} {:>6} {:>10} {:>11} {:>11} {:>10}",
            "→ fast upstream", "n", "requests/s", "p50", "p99", "new conns"
        );
        let mut figures = Vec::new();
        for (label, run, _, new_connections) in &results {
            let mut all: Vec<Duration> = run.samples.iter().map(|(_, d)| *d).collect();
            let (p50, p99) = percentiles(&mut all);
            println!(
                "{:<22} {:>6} {:>10} {:>11} {:>11} {:>10}",
                label,
                all.len(),
                fmt_rate(rate(run)),
                fmt(p50),
                fmt(p99),
                new_connections
            );
            figures.push((rate(run), p50, p99));
        }
        let (dw, d50, d99) = figures[0];
        let (sw, s50, s99) = figures[1];
        println!(
            "sealed Patient creates, sidecar ÷ direct: writes/s × {:.4}, p50 × {:.1}, p99 × {:.1}; \
             added p50 {} (aim: ≥ 10,000 sealed writes/s for the sidecar alone on 2 cores)",
            sw / dw,
            s50.as_secs_f64() / d50.as_secs_f64(),
            s99.as_secs_f64() / d99.as_secs_f64(),
            fmt(s50.saturating_sub(d50)),
        );
        let (ow, _, _) = figures[2];
        let (rd, _, _) = figures[3];
        let (rs, r50, r99) = figures[4];
        println!(
            "re-identifying Patient reads, sidecar ÷ direct: reads/s × {:.4} (aim: ≥ 10,000 \
             reads/s for the sidecar alone on 2 cores)",
            rs / rd
        );
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let cpu_us = |i: usize| {
            let (_, run, cpu, _) = &results[i];
            cpu.process_ms * 1e3 / run.samples.len().max(1) as f64
        };
        for (name, value) in [
            (
                "fast_patient_writes_per_s",
                figures::measure(sw, "writes/s", Some(dw)),
            ),
            (
                "fast_patient_p50_ms",
                figures::measure(ms(s50), "ms", Some(ms(d50))),
            ),
            (
                "fast_patient_p99_ms",
                figures::measure(ms(s99), "ms", Some(ms(d99))),
            ),
            (
                "fast_observation_writes_per_s",
                figures::measure(ow, "writes/s", Some(dw)),
            ),
            (
                "fast_patient_cpu_us_per_write",
                figures::measure(cpu_us(1), "µs", Some(cpu_us(0))),
            ),
            (
                "fast_patient_reads_per_s",
                figures::measure(rs, "reads/s", Some(rd)),
            ),
            (
                "fast_patient_read_p50_ms",
                figures::measure(ms(r50), "ms", Some(ms(figures[3].1))),
            ),
            (
                "fast_patient_read_p99_ms",
                figures::measure(ms(r99), "ms", Some(ms(figures[3].2))),
            ),
        ] {
            measures.insert(name.to_owned(), value);
        }
        for (label, run, cpu, _) in &results {
            print_cpu(label, run, cpu);
        }
        // Every Patient through the sidecar was a new sealed person: warm-up and run.
        let sealed = (warmup + results[1].1.samples.len()) as f64;
        let vault_kb = directory_bytes(&data.path().join("vault")) as f64 / 1024.0;
        println!(
            "vault on disk: {:.0} KiB for {sealed} sealed Patients = {:.2} KiB each (sled's \
             files as they stand after the run, its log not compacted)",
            vault_kb,
            vault_kb / sealed
        );
        measures.insert(
            "vault_kib_per_sealed_patient".to_owned(),
            figures::measure(vault_kb / sealed, "KiB", None),
        );
    });
    drop(data);
}

/// CPU used during a run, by this process's threads, and by the whole machine.
fn print_cpu(label: &str, run: &Run, cpu: &CpuSnapshot) {
    let writes = run.samples.len().max(1) as f64;
    let parts: Vec<String> = cpu
        .threads
        .iter()
        .filter(|(_, ms)| **ms > 0.0)
        .map(|(name, ms)| format!("{name} {ms:.0} ms ({:.0} µs/write)", ms * 1e3 / writes))
        .collect();
    println!(
        "CPU during '{label}' ({:.2} s wall): this process {:.0} ms = {:.2} cores, machine busy \
         {:.2} of {} cores; by thread: {}",
        run.elapsed.as_secs_f64(),
        cpu.process_ms,
        cpu.process_ms / 1e3 / run.elapsed.as_secs_f64(),
        cpu.machine_busy_cores,
        cpu.cores,
        parts.join(", ")
    );
}

fn check(run: &Run, base: &str) {
    if run.failures > 0 {
        panic!(
            "{} writes to {base} failed; the first: {}",
            run.failures,
            run.first_failure.as_deref().unwrap_or("?")
        );
    }
}

fn merge(runs: Vec<Run>) -> Run {
    let mut out = Run {
        samples: Vec::new(),
        elapsed: Duration::ZERO,
        failures: 0,
        first_failure: None,
    };
    for run in runs {
        out.samples.extend(run.samples);
        out.elapsed += run.elapsed;
        out.failures += run.failures;
    }
    out
}

fn rate(run: &Run) -> f64 {
    run.samples.len() as f64 / run.elapsed.as_secs_f64()
}

fn fmt_rate(rate: f64) -> String {
    if rate.is_nan() {
        "—".to_owned()
    } else {
        format!("{rate:.0}")
    }
}

/// CPU time of this process's threads (by name, digits dropped) and of the whole machine.
struct CpuSnapshot {
    threads: BTreeMap<String, f64>,
    process_ms: f64,
    machine_busy_cores: f64,
    cores: usize,
    /// Machine jiffies (busy, total) for the snapshot taken; differences in `since`.
    machine: (u64, u64),
}

/// Clock ticks per second of `/proc` times (`USER_HZ`, 100 on Linux).
const TICKS_PER_SEC: f64 = 100.0;

fn cpu_snapshot() -> CpuSnapshot {
    let mut threads = BTreeMap::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let path = task.path();
            let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            let name: String = name
                .trim()
                .chars()
                .filter(|c| !c.is_ascii_digit())
                .collect();
            let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
            // Fields after the `(comm)`: state is field 3, utime 14, stime 15.
            let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks: u64 = [11, 12]
                .iter()
                .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
                .sum();
            *threads.entry(name).or_insert(0.0) += ticks as f64 * 1e3 / TICKS_PER_SEC;
        }
    }
    let process_ms = threads.values().sum();
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = cpu.iter().take(8).sum();
    let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
    CpuSnapshot {
        threads,
        process_ms,
        machine_busy_cores: 0.0,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        machine: (total - idle, total),
    }
}

impl CpuSnapshot {
    fn since(&self, before: &CpuSnapshot) -> CpuSnapshot {
        let threads = self
            .threads
            .iter()
            .map(|(name, ms)| {
                (
                    name.clone(),
                    ms - before.threads.get(name).copied().unwrap_or(0.0),
                )
            })
            .collect();
        let busy = self.machine.0.saturating_sub(before.machine.0) as f64;
        let total = self.machine.1.saturating_sub(before.machine.1) as f64;
        CpuSnapshot {
            threads,
            process_ms: self.process_ms - before.process_ms,
            machine_busy_cores: if total > 0.0 {
                busy / total * self.cores as f64
            } else {
                0.0
            },
            cores: self.cores,
            machine: self.machine,
        }
    }
}

/// The Synthea bundles: `shared/data/synthea` beside the repository, or `FHIRSEAL_SYNTHEA_DIR`.
fn synthea_dir() -> PathBuf {
    std::env::var_os("FHIRSEAL_SYNTHEA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/synthea"))
}
