//! Every built-in conformance case passes against HAPI direct (HAPI's departures from FHIR R4
//! are recorded in the cases), and the departures the cases know of are seen.

use fhirseal_conformance::{run, Endpoint, Mode, RunMode, Suite};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_suite_passes_against_hapi() {
    let cases = Suite::builtin()
        .unwrap()
        .select(Mode::Conformance, &[], &[]);
    let count = cases.len();
    let report = run(
        &client(),
        cases,
        &Endpoint::new(&hapi()),
        &RunMode::Conformance,
        4,
    )
    .await;
    assert_eq!(report.results.len(), count);
    assert!(report.passed(), "{}", report.table());
    // The departures the cases record are real: HAPI shows them.
    let stale = result(&report, "if-match-stale");
    assert!(
        stale
            .departures
            .iter()
            .any(|d| d.starts_with("409 where FHIR R4 says 412")),
        "{stale:?}"
    );
}
