//! Helpers: where HAPI is, a client, and a readable failure message.

use std::time::Duration;

use fhirseal_conformance::{Client, Report};

/// The real HAPI FHIR base the tests run against.
pub fn hapi() -> String {
    std::env::var("FHIRSEAL_TEST_HAPI")
        .map(|v| v.trim_end_matches('/').to_owned())
        .expect(
            "FHIRSEAL_TEST_HAPI is not set: run the tests with deploy/test.sh, which starts HAPI \
             FHIR and sets it (or start HAPI with deploy/hapi/hapi.sh and export its base URL)",
        )
}

pub fn client() -> Client {
    Client::new(Duration::from_secs(120)).unwrap()
}

/// The result of one case of a report.
pub fn result<'a>(report: &'a Report, name: &str) -> &'a fhirseal_conformance::CaseResult {
    report
        .results
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no case {name} in the report"))
}
