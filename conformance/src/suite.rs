//! The three modes: run the selected cases (a few at a time) and gather one result per case.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::case::{Case, Role};
use crate::diff::compare_runs;
use crate::http::Client;
use crate::privacy;
use crate::run::{expected_statuses, run_case, CaseRun, Endpoint};

/// Which question a run answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunMode {
    /// Does the endpoint behave as FHIR R4 says?
    Conformance,
    /// Does the endpoint answer as the reference does (status, key headers, normalized bodies)?
    Differential { reference: Endpoint },
    /// Does a restricted reader never see the identity a writer posted?
    Privacy,
}

impl RunMode {
    pub fn name(&self) -> &'static str {
        match self {
            RunMode::Conformance => "conformance",
            RunMode::Differential { .. } => "differential",
            RunMode::Privacy => "privacy",
        }
    }
}

/// The verdict on one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    pub area: String,
    pub about: String,
    /// The statuses the case expects, step by step.
    pub expected: String,
    /// The statuses received, step by step (`a / b` in differential mode: endpoint / reference).
    pub got: String,
    pub passed: bool,
    pub failures: Vec<String>,
    /// Where the answers depart from FHIR R4 in a way the case accepts (and says why).
    pub departures: Vec<String>,
    /// Anything else worth reading (e.g. the reference failing its own expectations).
    pub notes: Vec<String>,
    pub duration: Duration,
}

/// Everything one run found.
#[derive(Debug, Clone)]
pub struct Report {
    pub mode: String,
    pub endpoint: String,
    pub reference: Option<String>,
    pub results: Vec<CaseResult>,
    pub duration: Duration,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.results.iter().all(|r| r.passed)
    }

    pub fn failed(&self) -> usize {
        self.results.iter().filter(|r| !r.passed).count()
    }
}

/// Runs `cases` in `mode` against `endpoint`, at most `jobs` cases at a time. Every case makes
/// its own data (through `{unique}`), so cases may overlap; the steps of one case never do.
pub async fn run(
    client: &Client,
    cases: Vec<Case>,
    endpoint: &Endpoint,
    mode: &RunMode,
    jobs: usize,
) -> Report {
    let started = Instant::now();
    let limit = Arc::new(Semaphore::new(jobs.max(1)));
    let mut tasks = JoinSet::new();
    let count = cases.len();
    for (index, case) in cases.into_iter().enumerate() {
        let (client, endpoint, mode, limit) = (
            client.clone(),
            endpoint.clone(),
            mode.clone(),
            limit.clone(),
        );
        tasks.spawn(async move {
            // The semaphore is never closed, so acquiring only fails if that changes.
            let _permit = limit.acquire_owned().await;
            (index, judge(&client, &case, &endpoint, &mode).await)
        });
    }
    let mut results: Vec<Option<CaseResult>> = vec![None; count];
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, result)) => results[index] = Some(result),
            // A panic in a case is a bug of the suite: say so in the report rather than hide it.
            Err(e) => results.push(Some(CaseResult {
                name: "(suite)".to_owned(),
                area: "suite".to_owned(),
                about: String::new(),
                expected: String::new(),
                got: String::new(),
                passed: false,
                failures: vec![format!("a case task failed: {e}")],
                departures: Vec::new(),
                notes: Vec::new(),
                duration: Duration::ZERO,
            })),
        }
    }
    Report {
        mode: mode.name().to_owned(),
        endpoint: endpoint.base.clone(),
        reference: match mode {
            RunMode::Differential { reference } => Some(reference.base.clone()),
            _ => None,
        },
        results: results.into_iter().flatten().collect(),
        duration: started.elapsed(),
    }
}

/// Runs one case in `mode` and gives the verdict.
pub async fn judge(
    client: &Client,
    case: &Case,
    endpoint: &Endpoint,
    mode: &RunMode,
) -> CaseResult {
    let started = Instant::now();
    let mut result = CaseResult {
        name: case.name.clone(),
        area: case.area.clone(),
        about: case.about.clone(),
        expected: expected_statuses(case),
        got: String::new(),
        passed: true,
        failures: Vec::new(),
        departures: Vec::new(),
        notes: Vec::new(),
        duration: Duration::ZERO,
    };
    let run = run_case(client, case, endpoint).await;
    result.got = run.statuses();
    result.failures = run.failures();
    result.departures = run.departures();
    match mode {
        RunMode::Conformance => {}
        RunMode::Differential { reference } => {
            let reference_run = run_case(client, case, reference).await;
            result.got = format!("{} / {}", run.statuses(), reference_run.statuses());
            let bases = known_bases(&run, &reference_run);
            result
                .failures
                .extend(compare_runs(case, &reference_run, &run, &bases));
            result.notes.extend(
                reference_run
                    .failures()
                    .into_iter()
                    .map(|f| format!("the reference fails too: {f}")),
            );
        }
        RunMode::Privacy => {
            let mut vars = run.vars.clone();
            let mut identity = Vec::new();
            for template in &case.identity {
                match vars.substitute(template) {
                    Ok(value) => identity.push(value),
                    Err(e) => result.failures.push(format!("identity {template:?}: {e}")),
                }
            }
            let readers: Vec<bool> = case.steps.iter().map(|s| s.role == Role::Client).collect();
            result.failures.extend(
                privacy::scan(&run, &readers, &identity)
                    .into_iter()
                    .map(|l| format!("identity leaked: {l}")),
            );
        }
    }
    if case.departure.is_some() && result.departures.is_empty() {
        // The case documents a departure even when this run did not show it (e.g. a check the
        // case leaves out because the server under test cannot pass it).
        result.notes.extend(case.departure.clone());
    } else if let Some(departure) = &case.departure {
        result.departures.push(departure.clone());
    }
    result.passed = result.failures.is_empty();
    result.duration = started.elapsed();
    result
}

/// Both endpoints' bases: either may appear in either answer (HAPI caches its
/// CapabilityStatement with the base of whoever asked first).
fn known_bases(a: &CaseRun, b: &CaseRun) -> Vec<String> {
    [a, b]
        .iter()
        .filter_map(|r| r.vars.get("base").map(str::to_owned))
        .collect()
}
