//! The write path's sealing steps per resource size, next to the floor: what encrypting and
//! hashing the same bytes costs at the least.
//!
//! `cargo bench -p fhirseal-sidecar --bench seal` (criterion options after `--`, e.g.
//! `-- --measurement-time 5`). No HAPI needed.
//!
//! Inputs are Synthea Patients (`shared/data/synthea`, or `FHIRSEAL_SYNTHEA_DIR`): the
//! smallest, the median one, and the largest with its narrative padded to 32 KiB (a Patient
//! with a real narrative). Per input:
//!
//! - `split` — `Profile::split` with the default profile and a surrogate (the clone of the
//!   resource it works on is made outside the timing);
//! - `fingerprint` — `identity::identity_key` then `Fingerprint::of`;
//! - `blind_index` — `sealing::blind_entries`: the blind index's buckets and tags, each keyed
//!   (the sidecar does this for every person write);
//! - `to_bytes` — `IdentityPart::to_bytes`, the bytes that are sealed;
//! - `seal` — `Sealer::seal` of those bytes (steady state: the epoch key is made once per
//!   4096 records, the default, and that RSA-OAEP wrap is amortized in the measurement);
//! - `unseal` — `Sealer::unseal` with the epoch key cached, as a running node has it;
//! - `floor` — AES-256-GCM encryption (key schedule, fresh 96-bit nonce, no AAD) plus SHA-256 of
//!   the same bytes, with `aes-gcm` and `sha2` as `storage` uses them; `floor_prebuilt` the same
//!   with the cipher's key schedule made once, outside the timing (the stricter floor).
//!
//! After criterion, a table of ratios to the floor is printed from a timing loop of its own in
//! the same process (median of 7 rounds of about 40 ms each per step), since criterion's
//! estimates are not handy to read back. The institution's RSA key is 3072 bits, the
//! production default (it only enters through the amortized epoch-key wrap).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use criterion::{BatchSize, Criterion, Throughput};
use fhirseal_adapters::identity;
use fhirseal_adapters::profile::Profile;
use fhirseal_sidecar::sealing::blind_entries;
use fhirseal_storage::{BlindEntry, Fingerprint, NodeKeys, RecordMeta, SealedRecord, Sealer};
use serde_json::Value;
use sha2::{Digest, Sha256};

#[path = "../../consensus/benches/support/figures.rs"]
mod figures;

const RSA_BITS: usize = 3072;
const SURROGATE: &str = "0123456789abcdef0123456789abcdef";
const SSN: &str = "http://hl7.org/fhir/sid/us-ssn";
/// Size the large input's narrative is padded to.
const LARGE_NARRATIVE: usize = 32 * 1024;

struct Input {
    label: &'static str,
    resource: Value,
    /// The identity part's bytes, as `Sealing::commit` seals them.
    identity: Vec<u8>,
}

struct Fixture {
    _dir: tempfile::TempDir,
    keys: Arc<NodeKeys>,
    /// The consortium's link key (the governance state hands it to a node).
    link_key: fhirseal_storage::SecretKey,
    profile: Profile,
    systems: Vec<String>,
    sealer: Sealer,
    floor_key: [u8; 32],
}

fn main() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let (keys, _) = NodeKeys::load_or_create(&dir.path().join("keys"), RSA_BITS).unwrap();
    println!(
        "seal: RSA-{RSA_BITS} institution key made in {} ms",
        started.elapsed().as_millis()
    );
    let keys = Arc::new(keys);
    let fixture = Fixture {
        sealer: Sealer::new(
            keys.clone(),
            fhirseal_storage::seal::DEFAULT_EPOCH_USES,
            fhirseal_storage::seal::DEFAULT_CACHE_KEYS,
        ),
        keys,
        link_key: fhirseal_storage::SecretKey::random().unwrap(),
        profile: Profile::default(),
        systems: vec![SSN.to_owned()],
        floor_key: [7; 32],
        _dir: dir,
    };
    let inputs = inputs(&fixture);
    for input in &inputs {
        println!(
            "seal: input {:<6} resource {:>6} B, identity part {:>6} B",
            input.label,
            serde_json::to_vec(&input.resource).unwrap().len(),
            input.identity.len()
        );
    }

    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    for input in &inputs {
        bench_input(&mut criterion, &fixture, input);
    }
    criterion.final_summary();

    ratio_table(&fixture, &inputs);
}

/// The smallest and the median Synthea Patient, and the largest with a padded narrative.
fn inputs(fixture: &Fixture) -> Vec<Input> {
    let dir = synthea_dir();
    let mut patients: Vec<(usize, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .flat_map(|path| {
            let bundle: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            bundle["entry"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["resource"].clone())
                .filter(|r| r["resourceType"] == "Patient")
                .collect::<Vec<_>>()
        })
        .map(|p| (serde_json::to_vec(&p).unwrap().len(), p))
        .collect();
    assert!(
        !patients.is_empty(),
        "no Synthea Patient in {}",
        dir.display()
    );
    patients.sort_by_key(|(len, _)| *len);
    let small = patients[0].1.clone();
    let medium = patients[patients.len() / 2].1.clone();
    let mut large = patients[patients.len() - 1].1.clone();
    let mut div = String::from("<div xmlns=\"http://www.w3.org/1999/xhtml\">");
    let mut line = 0;
    while div.len() < LARGE_NARRATIVE {
        line += 1;
        div.push_str(&format!(
            "<p>Visit {line}: seen in clinic, history reviewed with the patient, vitals \
             recorded, plan discussed and agreed; follow-up booked.</p>"
        ));
    }
    div.push_str("</div>");
    large["text"] = serde_json::json!({"status": "generated", "div": div});
    [("small", small), ("medium", medium), ("large", large)]
        .into_iter()
        .map(|(label, resource)| {
            let mut clinical = resource.clone();
            let part = fixture
                .profile
                .split(&mut clinical, Some(SURROGATE), &|_| None);
            assert!(!part.is_empty());
            Input {
                label,
                identity: part.to_bytes(),
                resource,
            }
        })
        .collect()
}

fn meta() -> RecordMeta {
    RecordMeta {
        fingerprint: Fingerprint([3; 32]),
        resource_type: "Patient".to_owned(),
        id: "bench-1".to_owned(),
        version: "1".to_owned(),
    }
}

fn fingerprint(fixture: &Fixture, resource: &Value) -> Fingerprint {
    let key = identity::identity_key(resource, &fixture.systems).unwrap();
    Fingerprint::of(&fixture.link_key, &key)
}

fn blind_index(fixture: &Fixture, resource: &Value) -> Vec<BlindEntry> {
    blind_entries(&fixture.keys.index_key, resource)
}

fn seal(fixture: &Fixture, bytes: &[u8]) -> SealedRecord {
    fixture.sealer.seal(meta(), bytes).unwrap().0
}

/// AES-256-GCM encryption and SHA-256 of `bytes`, `cipher` made here unless given.
fn floor(key: &[u8; 32], cipher: Option<&Aes256Gcm>, bytes: &[u8]) -> (Vec<u8>, [u8; 32]) {
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).unwrap();
    let ciphertext = match cipher {
        Some(cipher) => cipher.encrypt(&Nonce::from(nonce), bytes),
        None => Aes256Gcm::new(&Key::<Aes256Gcm>::from(*key)).encrypt(&Nonce::from(nonce), bytes),
    }
    .unwrap();
    (ciphertext, Sha256::digest(bytes).into())
}

fn bench_input(c: &mut Criterion, fixture: &Fixture, input: &Input) {
    let mut group = c.benchmark_group(format!("seal/{}", input.label));
    group.throughput(Throughput::Bytes(input.identity.len() as u64));
    group.bench_function("split", |b| {
        b.iter_batched(
            || input.resource.clone(),
            |mut r| fixture.profile.split(&mut r, Some(SURROGATE), &|_| None),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("fingerprint", |b| {
        b.iter(|| fingerprint(fixture, black_box(&input.resource)))
    });
    group.bench_function("blind_index", |b| {
        b.iter(|| blind_index(fixture, black_box(&input.resource)))
    });
    let mut clinical = input.resource.clone();
    let part = fixture
        .profile
        .split(&mut clinical, Some(SURROGATE), &|_| None);
    group.bench_function("to_bytes", |b| b.iter(|| black_box(&part).to_bytes()));
    group.bench_function("seal", |b| {
        b.iter(|| seal(fixture, black_box(&input.identity)))
    });
    let record = seal(fixture, &input.identity);
    group.bench_function("unseal", |b| {
        b.iter(|| {
            fixture
                .sealer
                .unseal(black_box(&record), |_| Ok(None))
                .unwrap()
        })
    });
    group.bench_function("floor", |b| {
        b.iter(|| floor(&fixture.floor_key, None, black_box(&input.identity)))
    });
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(fixture.floor_key));
    group.bench_function("floor_prebuilt", |b| {
        b.iter(|| {
            floor(
                &fixture.floor_key,
                Some(&cipher),
                black_box(&input.identity),
            )
        })
    });
    group.finish();
}

/// Median time per call over 7 rounds of about 40 ms. `make` prepares one call's input
/// outside the timing (a batch of them is made before each round); `run` is timed.
fn time_per_call<I, O>(mut make: impl FnMut() -> I, mut run: impl FnMut(I) -> O) -> Duration {
    // Calibrate: how many calls fill about 40 ms.
    let mut n = 16usize;
    loop {
        let inputs: Vec<I> = (0..n).map(|_| make()).collect();
        let started = Instant::now();
        let outputs: Vec<O> = inputs.into_iter().map(&mut run).collect();
        let elapsed = started.elapsed();
        drop(black_box(outputs));
        if elapsed >= Duration::from_millis(40) || n >= 1 << 22 {
            break;
        }
        n *= 2;
    }
    let mut rounds: Vec<Duration> = (0..7)
        .map(|_| {
            let inputs: Vec<I> = (0..n).map(|_| make()).collect();
            let started = Instant::now();
            let outputs: Vec<O> = inputs.into_iter().map(&mut run).collect();
            let elapsed = started.elapsed();
            drop(black_box(outputs));
            elapsed / n as u32
        })
        .collect();
    rounds.sort();
    rounds[3]
}

fn ratio_table(fixture: &Fixture, inputs: &[Input]) {
    println!();
    println!(
        "Ratios to the floor (own timing loop, median of 7 rounds; times per call in µs; \
         floor = AES-256-GCM with key schedule + SHA-256 over the identity bytes, \
         floor₀ = the same with the key schedule made once):"
    );
    println!(
        "{:<7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} | {:>7} {:>9} {:>9} {:>7} {:>7}",
        "input",
        "id B",
        "split",
        "fp",
        "index",
        "bytes",
        "seal",
        "unseal",
        "floor",
        "floor₀",
        "seal/fl",
        "s+fp+s/fl",
        "write/fl",
        "seal/f₀",
        "uns/fl",
    );
    let cipher = Aes256Gcm::new(&Key::<Aes256Gcm>::from(fixture.floor_key));
    let mut measures = serde_json::Map::new();
    for input in inputs {
        let mut clinical = input.resource.clone();
        let part = fixture
            .profile
            .split(&mut clinical, Some(SURROGATE), &|_| None);
        let record = seal(fixture, &input.identity);
        let split = time_per_call(
            || input.resource.clone(),
            |mut r| fixture.profile.split(&mut r, Some(SURROGATE), &|_| None),
        );
        let fp = time_per_call(|| (), |()| fingerprint(fixture, black_box(&input.resource)));
        let index = time_per_call(|| (), |()| blind_index(fixture, black_box(&input.resource)));
        let bytes = time_per_call(|| (), |()| black_box(&part).to_bytes());
        let sealed = time_per_call(|| (), |()| seal(fixture, black_box(&input.identity)));
        let unsealed = time_per_call(
            || (),
            |()| {
                fixture
                    .sealer
                    .unseal(black_box(&record), |_| Ok(None))
                    .unwrap()
            },
        );
        let fl = time_per_call(
            || (),
            |()| floor(&fixture.floor_key, None, black_box(&input.identity)),
        );
        let fl0 = time_per_call(
            || (),
            |()| {
                floor(
                    &fixture.floor_key,
                    Some(&cipher),
                    black_box(&input.identity),
                )
            },
        );
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let ratio = |d: Duration, f: Duration| d.as_secs_f64() / f.as_secs_f64();
        let work = split + fp + index + bytes + sealed;
        for (what, value) in [
            ("seal_work_us", work),
            ("seal_us", sealed),
            ("blind_index_us", index),
        ] {
            measures.insert(
                format!("{}_{what}", input.label),
                figures::measure(us(value), "µs", Some(us(fl))),
            );
        }
        measures.insert(
            format!("{}_blind_index_keys", input.label),
            figures::measure(
                blind_index(fixture, &input.resource).len() as f64,
                "keys",
                None,
            ),
        );
        measures.insert(
            format!("{}_unseal_us", input.label),
            figures::measure(us(unsealed), "µs", Some(us(fl))),
        );
        println!(
            "{:<7} {:>7} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {:>7.2} | {:>7.2} {:>9.2} {:>9.2} {:>7.2} {:>7.2}",
            input.label,
            input.identity.len(),
            us(split),
            us(fp),
            us(index),
            us(bytes),
            us(sealed),
            us(unsealed),
            us(fl),
            us(fl0),
            ratio(sealed, fl),
            ratio(split + fp + sealed, fl),
            ratio(split + fp + index + bytes + sealed, fl),
            ratio(sealed, fl0),
            ratio(unsealed, fl),
        );
    }
    println!(
        "seal/fl = seal ÷ floor; s+fp+s/fl = (split + fingerprint + seal) ÷ floor; write/fl = \
         (split + fingerprint + blind index + to_bytes + seal) ÷ floor, the sealing work of one \
         Patient write before the vault; seal/f₀ = seal ÷ floor₀; uns/fl = unseal ÷ floor."
    );
    figures::write("seal", Value::Object(measures));
}

/// The Synthea bundles: `shared/data/synthea` beside the repository, or `FHIRSEAL_SYNTHEA_DIR`.
fn synthea_dir() -> PathBuf {
    std::env::var_os("FHIRSEAL_SYNTHEA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/synthea"))
}
