//! The sidecar's added latency against HAPI direct, measured in one run.
//!
//! `FHIRSEAL_TEST_HAPI=http://127.0.0.1:18080/fhir cargo bench -p fhirseal-sidecar --bench latency`
//! (HAPI started with `deploy/hapi/hapi.sh start 18080`). The sidecar runs in this process on its
//! own runtime and threads; the client alternates direct and sidecar requests so that drift in
//! HAPI's speed touches both alike. Reads fetch one Patient (re-identified for a clinician
//! through the sidecar); writes create one (sealed through the sidecar). Prints median,
//! p99 and their ratios. Bounded: `FHIRSEAL_BENCH_N` requests of each kind per path (default
//! 400) and at most 120 s.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::{Duration, Instant};

use http::Method;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::{env_usize, fmt, percentiles, request, start_sidecar, HttpClient};

#[path = "../../consensus/benches/support/figures.rs"]
mod figures;
mod support;

fn main() {
    let Ok(hapi) = std::env::var("FHIRSEAL_TEST_HAPI") else {
        eprintln!(
            "latency: set FHIRSEAL_TEST_HAPI to a running HAPI FHIR base (see the doc comment)"
        );
        std::process::exit(2);
    };
    let hapi = hapi.trim_end_matches('/').to_owned();
    let n = env_usize("FHIRSEAL_BENCH_N", 400);

    // A data directory of its own, kept for the process's life: reads are re-identified and
    // writes sealed, as in production.
    let data = std::env::temp_dir().join(format!("fhirseal-latency-{}", std::process::id()));
    let (sidecar_base, _) = start_sidecar(&hapi, &data, "clinician");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
        let body = serde_json::json!({
            "resourceType": "Patient",
            "name": [{"family": "Latency", "given": ["Bench"]}],
            "gender": "female",
            "birthDate": "1980-05-06"
        })
        .to_string();
        // One patient to read, and warm-up of both paths and HAPI's caches.
        let created = request(&client, Method::POST, &format!("{hapi}/Patient"), &body).await;
        let id = serde_json::from_slice::<serde_json::Value>(&created.1).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        for base in [&hapi, &sidecar_base] {
            for _ in 0..50 {
                request(&client, Method::GET, &format!("{base}/Patient/{id}"), "").await;
                request(&client, Method::POST, &format!("{base}/Patient"), &body).await;
            }
        }

        let deadline = Instant::now() + Duration::from_secs(120);
        let mut results = Vec::new();
        for (kind, method, path, payload) in [
            ("read", Method::GET, format!("/Patient/{id}"), ""),
            ("write", Method::POST, "/Patient".to_owned(), body.as_str()),
        ] {
            let (mut direct, mut through) = (Vec::with_capacity(n), Vec::with_capacity(n));
            for i in 0..n {
                if Instant::now() > deadline {
                    break;
                }
                let order = if i % 2 == 0 {
                    [(&hapi, 0), (&sidecar_base, 1)]
                } else {
                    [(&sidecar_base, 1), (&hapi, 0)]
                };
                for (base, which) in order {
                    let started = Instant::now();
                    let (status, _) =
                        request(&client, method.clone(), &format!("{base}{path}"), payload).await;
                    let elapsed = started.elapsed();
                    assert!(status.is_success(), "{kind} via {base}: {status}");
                    if which == 0 {
                        direct.push(elapsed);
                    } else {
                        through.push(elapsed);
                    }
                }
            }
            results.push((kind, direct, through));
        }

        println!(
            "{:<6} {:>6} {:>12} {:>12} {:>12} {:>12} {:>9} {:>9} {:>12}",
            "op",
            "n",
            "direct p50",
            "sidecar p50",
            "direct p99",
            "sidecar p99",
            "p50 ×",
            "p99 ×",
            "added p50"
        );
        let mut measures = serde_json::Map::new();
        for (kind, mut direct, mut through) in results {
            let (d50, d99) = percentiles(&mut direct);
            let (s50, s99) = percentiles(&mut through);
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            for (what, sidecar, hapi) in [("p50", s50, d50), ("p99", s99, d99)] {
                measures.insert(
                    format!("{kind}_{what}_ms"),
                    figures::measure(ms(sidecar), "ms", Some(ms(hapi))),
                );
            }
            println!(
                "{:<6} {:>6} {:>12} {:>12} {:>12} {:>12} {:>9.3} {:>9.3} {:>12}",
                kind,
                direct.len(),
                fmt(d50),
                fmt(s50),
                fmt(d99),
                fmt(s99),
                s50.as_secs_f64() / d50.as_secs_f64(),
                s99.as_secs_f64() / d99.as_secs_f64(),
                fmt(s50.saturating_sub(d50)),
            );
        }
        figures::write("latency", serde_json::Value::Object(measures));
    });
}
