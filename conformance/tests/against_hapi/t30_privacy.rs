//! Privacy mode against plain HAPI, which seals nothing: every privacy case must report the
//! identity it reads back, and only as leaks (the reads themselves succeed).

use fhirseal_conformance::{run, Endpoint, Mode, RunMode, Suite};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_mode_catches_identity_that_plain_hapi_shows() {
    let cases = Suite::builtin().unwrap().select(Mode::Privacy, &[], &[]);
    assert!(cases.len() >= 3);
    let report = run(
        &client(),
        cases,
        &Endpoint::new(&hapi()),
        &RunMode::Privacy,
        2,
    )
    .await;
    assert!(!report.passed());
    for r in &report.results {
        assert!(
            !r.passed,
            "{} should report leaks:\n{}",
            r.name,
            report.table()
        );
        assert!(
            r.failures
                .iter()
                .all(|f| f.starts_with("identity leaked: ")),
            "{}: the reads must succeed and only leaks fail:\n{}",
            r.name,
            report.table()
        );
    }
    let read = result(&report, "privacy-read-vread-history");
    for needle in [
        "\"Vandermolen",
        "\"MRN-",
        "\"1961-07-23\"",
        "@example.org\"",
    ] {
        assert!(
            read.failures
                .iter()
                .any(|f| f.starts_with("identity leaked: GET Patient/{id}: ") && f.contains(needle)),
            "{needle} not reported:\n{read:#?}"
        );
    }
    // The XML read leaks too, and so does the observation's display.
    assert!(read.failures.iter().any(|f| f.contains("?_format=xml")));
    assert!(read
        .failures
        .iter()
        .any(|f| f.contains("GET Observation/{observation}")));
}
