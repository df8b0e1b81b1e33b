//! Identity search at scale: one family name shared by `FHIRSEAL_BENCH_SEARCH_N` people (default
//! 10,000), searched through the sidecar and, as the baseline in the same run, on the same HAPI
//! directly for another family name shared by as many people written there unsealed.
//!
//! `FHIRSEAL_TEST_HAPI=http://127.0.0.1:18095/fhir cargo bench -p fhirseal-sidecar --bench search`
//! with a HAPI of its own (`deploy/hapi/hapi.sh start 18095`): the direct half writes identity
//! into it. The people are loaded in transaction Bundles of 100 (through the sidecar: sealed, a
//! surrogate each), then `Patient?family=<name>&_count=50` is timed (median of
//! `FHIRSEAL_BENCH_SEARCH_ROUNDS`, default 9) for the first page and for the page its `next`
//! link names, on both paths. Through the sidecar the 10,000 matches are paged by the sidecar:
//! the upstream is asked for one page's ids (`_id=` fifty of them), and the matches are kept
//! for the later pages; the ratio is what the blind index and that paging cost. Prints the
//! figures and writes `target/bench/search.json`. Bounded: loading stops after 600 s.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use support::{env_usize, fmt, percentiles, request, start_sidecar, HttpClient};

#[path = "../../consensus/benches/support/figures.rs"]
mod figures;
mod support;

const BUNDLE: usize = 100;
const PAGE: usize = 50;
const LOAD_LIMIT: Duration = Duration::from_secs(600);

fn main() {
    let Ok(hapi) = std::env::var("FHIRSEAL_TEST_HAPI") else {
        eprintln!(
            "search: set FHIRSEAL_TEST_HAPI to a HAPI FHIR base of its own (see the doc comment)"
        );
        std::process::exit(2);
    };
    let hapi = hapi.trim_end_matches('/').to_owned();
    let n = env_usize("FHIRSEAL_BENCH_SEARCH_N", 10_000);
    let rounds = env_usize("FHIRSEAL_BENCH_SEARCH_ROUNDS", 9);
    let data = tempfile::tempdir().unwrap();
    let (sidecar, _) = start_sidecar(&hapi, data.path(), "clinician");
    let run = std::process::id();
    let sealed_family = format!("Searchsealed{run}");
    let direct_family = format!("Searchdirect{run}");
    println!(
        "search: {n} people named {sealed_family} through the sidecar {sidecar}, {n} named \
         {direct_family} into HAPI {hapi} directly; Patient?family=…&_count={PAGE}, median of \
         {rounds}"
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let deadline = Instant::now() + LOAD_LIMIT;
        let mut loaded = Vec::new();
        for (base, family) in [(&sidecar, &sealed_family), (&hapi, &direct_family)] {
            let started = Instant::now();
            let mut written = 0;
            while written < n && Instant::now() < deadline {
                let count = BUNDLE.min(n - written);
                let bundle = people(family, written, count);
                let (status, body) =
                    request(&client, Method::POST, base, &bundle.to_string()).await;
                assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
                written += count;
            }
            let rate = written as f64 / started.elapsed().as_secs_f64();
            println!("loaded {written} into {base}: {rate:.0} people/s");
            loaded.push((written, rate));
        }
        let mut timings = Vec::new();
        for (base, family) in [(&sidecar, &sealed_family), (&hapi, &direct_family)] {
            let url = format!("{base}/Patient?family={family}&_count={PAGE}");
            let (mut first, mut second) = (Vec::new(), Vec::new());
            let mut total = Value::Null;
            for _ in 0..rounds {
                let t0 = Instant::now();
                let (status, body) = request(&client, Method::GET, &url, "").await;
                first.push(t0.elapsed());
                assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
                let page: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(page["entry"].as_array().map(Vec::len), Some(PAGE));
                total = page["total"].clone();
                let next = fhirseal_adapters::resource::next_link(&page)
                    .unwrap()
                    .to_owned();
                let t0 = Instant::now();
                let (status, body) = request(&client, Method::GET, &next, "").await;
                second.push(t0.elapsed());
                assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
            }
            let (first, _) = percentiles(&mut first);
            let (second, _) = percentiles(&mut second);
            println!(
                "{base}: first page {}, next page {}, total {total}",
                fmt(first),
                fmt(second)
            );
            timings.push((first, second));
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let ((s1, s2), (d1, d2)) = (timings[0], timings[1]);
        println!(
            "sidecar ÷ direct: first page × {:.2}, next page × {:.2} (aim ≤ 2)",
            s1.as_secs_f64() / d1.as_secs_f64(),
            s2.as_secs_f64() / d2.as_secs_f64()
        );
        let mut measures = serde_json::Map::new();
        for (name, value) in [
            (
                "first_page_ms",
                figures::measure(ms(s1), "ms", Some(ms(d1))),
            ),
            ("next_page_ms", figures::measure(ms(s2), "ms", Some(ms(d2)))),
            (
                "load_people_per_s",
                figures::measure(loaded[0].1, "people/s", Some(loaded[1].1)),
            ),
            (
                "matches",
                figures::measure(loaded[0].0 as f64, "people", None),
            ),
        ] {
            measures.insert(name.to_owned(), value);
        }
        figures::write("search", Value::Object(measures));
    });
}

/// A transaction of `count` Patients named `family`, the `from`-th onwards, each a person of
/// their own (given name, identifier and birth date differ).
fn people(family: &str, from: usize, count: usize) -> Value {
    let entry: Vec<Value> = (from..from + count)
        .map(|i| {
            json!({
                "request": {"method": "POST", "url": "Patient"},
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": "urn:fhirseal:bench", "value": format!("{family}-{i}")}],
                    "name": [{"family": family, "given": [format!("Given{i}")]}],
                    "gender": if i % 2 == 0 { "female" } else { "male" },
                    "birthDate": format!("{}-{:02}-{:02}", 1940 + i % 60, 1 + i % 12, 1 + i % 28),
                }
            })
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entry})
}
