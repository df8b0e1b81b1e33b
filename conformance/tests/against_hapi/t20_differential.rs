//! Differential mode: HAPI compared with itself agrees on every case; HAPI compared with itself
//! while the reference is asked for something else (a different `Prefer: return=`) is caught.

use fhirseal_conformance::{run, Endpoint, Mode, RunMode, Suite};

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hapi_against_itself_shows_no_difference() {
    let cases = Suite::builtin()
        .unwrap()
        .select(Mode::Conformance, &[], &[]);
    let mode = RunMode::Differential {
        reference: Endpoint::new(&hapi()),
    };
    let report = run(&client(), cases, &Endpoint::new(&hapi()), &mode, 4).await;
    assert!(report.passed(), "{}", report.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reference_that_answers_differently_is_reported() {
    let filters = [
        "create-default",
        "update",
        "read-unknown",
        "capabilities-json",
    ]
    .map(str::to_owned);
    let cases = Suite::builtin()
        .unwrap()
        .select(Mode::Conformance, &filters, &[]);
    // The same server, but every request to the reference asks for an OperationOutcome instead
    // of the resource: writes answer with another body, reads are unaffected.
    let mut reference = Endpoint::new(&hapi());
    reference.headers = vec![("Prefer".to_owned(), "return=OperationOutcome".to_owned())];
    let report = run(
        &client(),
        cases,
        &Endpoint::new(&hapi()),
        &RunMode::Differential { reference },
        2,
    )
    .await;
    assert!(!report.passed(), "{}", report.table());
    let create = result(&report, "create-default");
    assert!(!create.passed);
    assert!(
        create.failures.iter().any(|f| f.starts_with(
            "POST Patient: body /resourceType: \"Patient\" (reference \"OperationOutcome\")"
        )),
        "{create:#?}"
    );
    // The endpoint itself still meets every expectation: the failure is the difference alone.
    assert!(
        create.failures.iter().all(|f| f.contains("reference")),
        "{create:#?}"
    );
    assert!(!result(&report, "update").passed);
    assert!(result(&report, "read-unknown").passed, "{}", report.table());
    assert!(
        result(&report, "capabilities-json").passed,
        "{}",
        report.table()
    );
}
