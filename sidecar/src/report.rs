//! `fhirseal report`: the evaluation metrics of the paper's section 4.2, measured on a running
//! node. It writes a corpus (Synthea transaction Bundles) through the node as a clinician,
//! reads every person back as a clinician and as a researcher, waits until everything is
//! anchored, reads the whole chain as an auditor, and, when told how, kills and restarts the
//! node. Then:
//!
//! - **privacy leakage probability**: the identity strings of the corpus (what the node's split
//!   profile takes out of each person) found upstream (every version of every resource
//!   written, read from the FHIR server directly), on the ledger (every block), on disk (every
//!   file of the node's data directory, when given) or in a researcher's read, over all of them;
//! - **least-visibility achievement rate**: reads in which the principal saw exactly what the
//!   policy allows (the clinician every identity string of the person, the researcher none);
//! - **audit traceability**: reads with an access event on the chain naming what was read;
//! - **recovery time**: from SIGKILL (the `--kill-command`) to the node's `/readyz`, and to a
//!   new write's block being final;
//! - **governance compliance**: the signed transactions on the chain, each naming its
//!   institution, over a chain whose every signature the node verified against the key the
//!   governance state records for that member, and every certificate against the delegates of
//!   its height (`/ledger/verify`): 1 when both hold, 0 when the chain does not verify;
//! - **latency and throughput** of the writes.
//!
//! The figures are printed as a table and written to `report.json`, with `report.html`
//! (the latency distribution and the throughput over time as SVG charts).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fhirseal_adapters::profile::Profile;
use http::Method;
use serde_json::{json, Value};

use crate::fhir_client::{diagnostics, ExchangeError, FhirClient};
use crate::migrate::identity_strings;

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}")]
    Setup(String),
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("{0}")]
    Server(String),
}

impl From<ExchangeError> for ReportError {
    fn from(error: ExchangeError) -> Self {
        ReportError::Server(error.to_string())
    }
}

/// What to measure, on which node.
#[derive(Clone)]
pub struct ReportOptions {
    /// The node's FHIR base.
    pub url: String,
    /// The node's upstream FHIR base, read directly.
    pub upstream: String,
    pub clinician_key: String,
    pub researcher_key: String,
    pub auditor_key: String,
    /// The corpus's Synthea Bundles, and how many of them to write.
    pub corpus: Vec<PathBuf>,
    /// The node's data directory, scanned for identity strings when given.
    pub data_dir: Option<PathBuf>,
    /// Shell commands that SIGKILL the node and start it again, for the recovery time.
    pub kill_command: Option<String>,
    pub start_command: Option<String>,
}

impl std::fmt::Debug for ReportOptions {
    /// Without the API keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportOptions")
            .field("url", &self.url)
            .field("upstream", &self.upstream)
            .field("corpus", &self.corpus)
            .finish_non_exhaustive()
    }
}

/// One write: when it was sent (since the first), how long it took, its status.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Write {
    pub at: Duration,
    pub took: Duration,
    pub ok: bool,
}

/// The metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    pub identity_strings: usize,
    pub leaked_upstream: usize,
    pub leaked_ledger: usize,
    pub leaked_disk: Option<usize>,
    pub leaked_to_researcher: usize,
    pub leaked_anywhere: usize,
    pub reads: usize,
    pub reads_as_allowed: usize,
    pub reads_with_event: usize,
    pub signed_transactions: usize,
    pub attributable_transactions: usize,
    pub chain_verified: bool,
    pub recovery_ready: Option<Duration>,
    pub recovery_final: Option<Duration>,
    pub writes: Vec<Write>,
}

fn ratio(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The value at quantile `q` of `values` (nearest rank), 0 when empty.
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted
        .get(((sorted.len().max(1) - 1) as f64 * q).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

impl Metrics {
    pub fn leakage_probability(&self) -> f64 {
        ratio(self.leaked_anywhere, self.identity_strings)
    }

    pub fn least_visibility_rate(&self) -> f64 {
        ratio(self.reads_as_allowed, self.reads)
    }

    pub fn audit_traceability(&self) -> f64 {
        ratio(self.reads_with_event, self.reads)
    }

    pub fn governance_compliance(&self) -> f64 {
        if self.chain_verified {
            ratio(self.attributable_transactions, self.signed_transactions)
        } else {
            0.0
        }
    }

    fn latencies(&self) -> Vec<f64> {
        self.writes
            .iter()
            .filter(|w| w.ok)
            .map(|w| ms(w.took))
            .collect()
    }

    /// Writes a second over the write phase.
    pub fn throughput(&self) -> f64 {
        let span = self
            .writes
            .iter()
            .map(|w| w.at + w.took)
            .max()
            .unwrap_or_default();
        let ok = self.writes.iter().filter(|w| w.ok).count();
        if span.is_zero() {
            0.0
        } else {
            ok as f64 / span.as_secs_f64()
        }
    }

    /// The figures as JSON.
    pub fn to_json(&self) -> Value {
        let latencies = self.latencies();
        json!({
            "privacyLeakageProbability": self.leakage_probability(),
            "identityStrings": self.identity_strings,
            "leaked": {
                "upstream": self.leaked_upstream,
                "ledger": self.leaked_ledger,
                "disk": self.leaked_disk,
                "researcherReads": self.leaked_to_researcher,
                "anywhere": self.leaked_anywhere,
            },
            "leastVisibilityAchievementRate": self.least_visibility_rate(),
            "reads": self.reads,
            "auditTraceability": self.audit_traceability(),
            "governanceCompliance": self.governance_compliance(),
            "signedTransactions": self.signed_transactions,
            "chainVerified": self.chain_verified,
            "recoveryToReadyMs": self.recovery_ready.map(ms),
            "recoveryToFinalityMs": self.recovery_final.map(ms),
            "writes": self.writes.len(),
            "writeLatencyMs": {"p50": quantile(&latencies, 0.5), "p99": quantile(&latencies, 0.99)},
            "writesPerSecond": self.throughput(),
        })
    }

    /// The figures as a table.
    pub fn table(&self) -> String {
        let latencies = self.latencies();
        let recovery = |d: Option<Duration>| {
            d.map_or("not measured".to_owned(), |d| format!("{:.0} ms", ms(d)))
        };
        let disk = self
            .leaked_disk
            .map_or("not scanned".to_owned(), |n| n.to_string());
        let rows = [
            ("privacy leakage probability", format!(
                "{:.4} ({} of {} identity strings; upstream {}, ledger {}, disk {disk}, researcher reads {})",
                self.leakage_probability(), self.leaked_anywhere, self.identity_strings,
                self.leaked_upstream, self.leaked_ledger, self.leaked_to_researcher)),
            ("least-visibility achievement rate", format!("{:.4} ({} of {} reads)",
                self.least_visibility_rate(), self.reads_as_allowed, self.reads)),
            ("audit traceability", format!("{:.4} ({} of {} reads with an access event on the chain)",
                self.audit_traceability(), self.reads_with_event, self.reads)),
            ("recovery: SIGKILL to ready", recovery(self.recovery_ready)),
            ("recovery: SIGKILL to a final block", recovery(self.recovery_final)),
            ("governance compliance", format!("{:.4} ({} of {} signed transactions name a member; chain verified: {})",
                self.governance_compliance(), self.attributable_transactions, self.signed_transactions, self.chain_verified)),
            ("write latency", format!("p50 {:.0} ms, p99 {:.0} ms ({} transactions)",
                quantile(&latencies, 0.5), quantile(&latencies, 0.99), latencies.len())),
            ("throughput", format!("{:.2} transactions/s", self.throughput())),
        ];
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("{k:<width$}  {v}\n"))
            .collect()
    }

    /// An HTML page with the table and two SVG charts: the write latencies' distribution and
    /// the writes completed per second.
    pub fn html(&self) -> String {
        let latencies = self.latencies();
        let histogram = bars(&bucket_latencies(&latencies), "ms");
        let mut per_second: BTreeMap<u64, f64> = BTreeMap::new();
        for w in self.writes.iter().filter(|w| w.ok) {
            *per_second.entry((w.at + w.took).as_secs()).or_default() += 1.0;
        }
        let last = per_second.keys().next_back().copied().unwrap_or(0);
        let series: Vec<(String, f64)> = (0..=last)
            .map(|s| (format!("{s}"), per_second.get(&s).copied().unwrap_or(0.0)))
            .collect();
        let throughput = bars(&series, "s");
        let escape = |t: &str| {
            t.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>fhirseal report</title>\
             <style>body{{font-family:system-ui,sans-serif;margin:1.5rem}}pre{{background:#f6f8fa;padding:1rem}}\
             svg{{border:1px solid #ddd;margin:.5rem 0}}</style></head><body>\
             <h1>fhirseal report</h1><pre>{}</pre>\
             <h2>Write latency (transactions per bucket)</h2>{histogram}\
             <h2>Throughput (transactions completed per second)</h2>{throughput}</body></html>\n",
            escape(&self.table())
        )
    }
}

/// Latencies in buckets of doubling width, labelled by their upper bound.
fn bucket_latencies(latencies: &[f64]) -> Vec<(String, f64)> {
    let mut bounds = vec![10.0_f64];
    while bounds
        .last()
        .is_some_and(|b| *b < latencies.iter().copied().fold(0.0, f64::max))
    {
        let next = bounds.last().copied().unwrap_or(10.0) * 2.0;
        bounds.push(next);
    }
    bounds
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let low = if i == 0 { 0.0 } else { bounds[i - 1] };
            let count = latencies.iter().filter(|l| **l > low && **l <= *b).count();
            (format!("≤{b:.0}"), count as f64)
        })
        .collect()
}

/// A bar chart of `series` as SVG.
fn bars(series: &[(String, f64)], unit: &str) -> String {
    let (width, height, pad) = (640.0, 220.0, 30.0);
    let max = series.iter().map(|(_, v)| *v).fold(0.0, f64::max).max(1.0);
    let step = (width - 2.0 * pad) / series.len().max(1) as f64;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" role=\"img\">"
    );
    for (i, (label, value)) in series.iter().enumerate() {
        let h = (height - 2.0 * pad) * value / max;
        let x = pad + i as f64 * step;
        out.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"#4a78c2\"><title>{label} {unit}: {value}</title></rect>",
            height - pad - h,
            (step - 2.0).max(1.0)
        ));
        if series.len() <= 24 || i % (series.len() / 12).max(1) == 0 {
            out.push_str(&format!(
                "<text x=\"{x:.1}\" y=\"{:.1}\" font-size=\"10\">{label}</text>",
                height - pad / 3.0
            ));
        }
    }
    out.push_str(&format!(
        "<text x=\"4\" y=\"14\" font-size=\"10\">max {max}</text></svg>"
    ));
    out
}

/// A person written: where it is, and its identity strings.
#[derive(Debug, Clone)]
struct Person {
    location: String,
    strings: Vec<String>,
}

/// Measures a running node (see the module's documentation).
#[derive(Debug)]
pub struct Reporter {
    options: ReportOptions,
    clinician: FhirClient,
    researcher: FhirClient,
    auditor: FhirClient,
    upstream: FhirClient,
    profile: Profile,
}

impl Reporter {
    pub fn new(options: ReportOptions, profile: Profile) -> Result<Reporter, ReportError> {
        let client = |key: &str| {
            FhirClient::new(Some(key.to_owned()), None)
                .map_err(|e| ReportError::Setup(e.to_string()))
        };
        Ok(Reporter {
            clinician: client(&options.clinician_key)?,
            researcher: client(&options.researcher_key)?,
            auditor: client(&options.auditor_key)?,
            upstream: FhirClient::new(None, None).map_err(|e| ReportError::Setup(e.to_string()))?,
            options,
            profile,
        })
    }

    /// The node's base URL without its FHIR path: where `/ledger` and `/readyz` are.
    fn root(&self) -> String {
        let url = self.options.url.trim_end_matches('/');
        match url.find("://").map(|i| i + 3) {
            Some(start) => match url[start..].find('/') {
                Some(path) => url[..start + path].to_owned(),
                None => url.to_owned(),
            },
            None => url.to_owned(),
        }
    }

    pub async fn run(&self, progress: &mut dyn FnMut(&str)) -> Result<Metrics, ReportError> {
        let mut metrics = Metrics::default();
        let mut persons = Vec::new();
        let mut written = Vec::new();
        let started = Instant::now();
        for path in &self.options.corpus {
            progress(&format!("writing {}", path.display()));
            let bundle: Value =
                serde_json::from_slice(&std::fs::read(path).map_err(|e| ReportError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?)
                .map_err(|e| ReportError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            let at = started.elapsed();
            let sent = Instant::now();
            let (status, answer) = self
                .clinician
                .exchange(Method::POST, &self.options.url, Some(&bundle), &[])
                .await?;
            metrics.writes.push(Write {
                at,
                took: sent.elapsed(),
                ok: status.is_success(),
            });
            if !status.is_success() {
                continue;
            }
            let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
            let results = answer["entry"].as_array().cloned().unwrap_or_default();
            for (entry, result) in entries.iter().zip(&results) {
                let Some(location) = result["response"]["location"].as_str() else {
                    continue;
                };
                written.push(location.to_owned());
                let resource = &entry["resource"];
                if self
                    .profile
                    .is_person(resource["resourceType"].as_str().unwrap_or(""))
                {
                    let strings = identity_strings(&self.profile, resource);
                    if !strings.is_empty() {
                        persons.push(Person {
                            location: location.to_owned(),
                            strings,
                        });
                    }
                }
            }
        }
        let all: BTreeSet<&String> = persons.iter().flat_map(|p| &p.strings).collect();
        metrics.identity_strings = all.len();
        let mut leaked: BTreeSet<String> = BTreeSet::new();

        // Reads: the clinician sees every identity string, the researcher none.
        let mut researcher_leaks: BTreeSet<String> = BTreeSet::new();
        let mut reads_of: BTreeMap<String, usize> = BTreeMap::new();
        for person in &persons {
            progress(&format!("reading {}", person.location));
            let current = current(&person.location);
            for (client, sees) in [(&self.clinician, true), (&self.researcher, false)] {
                let url = format!("{}/{current}", self.options.url);
                let (status, read) = client.exchange(Method::GET, &url, None, &[]).await?;
                metrics.reads += 1;
                *reads_of.entry(current.clone()).or_default() += 1;
                let text = read.to_string();
                let found: Vec<&String> = person
                    .strings
                    .iter()
                    .filter(|s| contains(&text, s))
                    .collect();
                if !sees {
                    researcher_leaks.extend(found.iter().map(|s| (*s).clone()));
                }
                let as_allowed = status.is_success()
                    && if sees {
                        found.len() == person.strings.len()
                    } else {
                        found.is_empty()
                    };
                if as_allowed {
                    metrics.reads_as_allowed += 1;
                }
            }
        }

        metrics.leaked_to_researcher = researcher_leaks.len();
        leaked.extend(researcher_leaks);

        // Upstream: every version of every resource written, read directly.
        progress("reading the upstream");
        let mut upstream_leaks: BTreeSet<String> = BTreeSet::new();
        for location in &written {
            let url = format!("{}/{}/_history", self.options.upstream, current(location));
            let (status, history) = self.upstream.exchange(Method::GET, &url, None, &[]).await?;
            if !status.is_success() {
                continue;
            }
            let text = history.to_string();
            for s in &all {
                if contains(&text, s) {
                    upstream_leaks.insert((*s).clone());
                }
            }
        }
        metrics.leaked_upstream = upstream_leaks.len();
        leaked.extend(upstream_leaks);

        // The ledger, once everything written and read is anchored.
        progress("waiting for the outbox");
        let status = self.anchored().await?;
        let blocks = self.blocks(status["blocks"].as_u64().unwrap_or(0)).await?;
        let chain_text = Value::Array(blocks.clone()).to_string();
        for s in &all {
            if contains(&chain_text, s) {
                metrics.leaked_ledger += 1;
                leaked.insert((*s).clone());
            }
        }
        let mut events_of: BTreeMap<String, usize> = BTreeMap::new();
        for block in &blocks {
            for tx in block["transactions"].as_array().into_iter().flatten() {
                if tx.get("signer").is_some() {
                    metrics.signed_transactions += 1;
                    if tx["institution"].as_str().is_some_and(|i| !i.is_empty()) {
                        metrics.attributable_transactions += 1;
                    }
                }
                for event in tx["events"].as_array().into_iter().flatten() {
                    let key = format!(
                        "{}/{}",
                        event["resourceType"].as_str().unwrap_or(""),
                        event["id"].as_str().unwrap_or("")
                    );
                    *events_of.entry(key).or_default() += 1;
                }
            }
        }
        metrics.reads_with_event = reads_of
            .iter()
            .map(|(resource, reads)| (*reads).min(events_of.get(resource).copied().unwrap_or(0)))
            .sum();
        let url = format!("{}/ledger/verify", self.root());
        let (status, verified) = self.auditor.exchange(Method::GET, &url, None, &[]).await?;
        metrics.chain_verified = status.is_success() && verified["valid"] == true;

        if let Some(dir) = &self.options.data_dir {
            progress("scanning the data directory");
            let mut files = Vec::new();
            files_under(dir, &mut files);
            let mut found = 0;
            for s in &all {
                let anywhere = files
                    .iter()
                    .any(|f| std::fs::read(f).is_ok_and(|b| holds(&b, s.as_bytes())));
                if anywhere {
                    found += 1;
                    leaked.insert((*s).clone());
                }
            }
            metrics.leaked_disk = Some(found);
        }
        metrics.leaked_anywhere = leaked.len();

        if let (Some(kill), Some(start)) = (&self.options.kill_command, &self.options.start_command)
        {
            progress("killing and restarting the node");
            let (ready, final_) = self.recovery(kill, start).await?;
            metrics.recovery_ready = Some(ready);
            metrics.recovery_final = Some(final_);
        }
        Ok(metrics)
    }

    /// Waits until the node's outbox is empty (at most 2 minutes); the ledger's status then.
    async fn anchored(&self) -> Result<Value, ReportError> {
        let url = format!("{}/ledger/status", self.root());
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, answer) = self.auditor.exchange(Method::GET, &url, None, &[]).await?;
            if status.is_success()
                && answer["pendingAnchors"] == 0
                && answer["pendingAccessEvents"] == 0
            {
                return Ok(answer);
            }
            if Instant::now() > deadline {
                return Err(ReportError::Server(format!(
                    "the node's outbox did not drain in 2 minutes: {answer}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The first `count` blocks of the chain, as the auditor reads them.
    async fn blocks(&self, count: u64) -> Result<Vec<Value>, ReportError> {
        let root = self.root();
        let mut out = Vec::new();
        for height in 0..count {
            let url = format!("{root}/ledger/blocks/{height}");
            let (status, block) = self.auditor.exchange(Method::GET, &url, None, &[]).await?;
            if status.is_success() {
                out.push(block);
            }
        }
        Ok(out)
    }

    /// Kills the node, starts it again, and measures the time to `/readyz` and to a new
    /// write's block being final.
    async fn recovery(&self, kill: &str, start: &str) -> Result<(Duration, Duration), ReportError> {
        shell(kill)?;
        let killed = Instant::now();
        shell(start)?;
        let ready_url = format!("{}/readyz", self.root());
        let deadline = killed + Duration::from_secs(300);
        loop {
            if let Ok((status, _)) = self
                .upstream
                .exchange(Method::GET, &ready_url, None, &[])
                .await
            {
                if status.is_success() {
                    break;
                }
            }
            if Instant::now() > deadline {
                return Err(ReportError::Server(
                    "the node was not ready 5 minutes after its restart".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ready = killed.elapsed();
        let probe = json!({"resourceType": "Observation", "status": "final", "code": {"text": "fhirseal report recovery probe"}});
        let url = format!("{}/Observation", self.options.url);
        let (status, answer) = self
            .clinician
            .exchange(Method::POST, &url, Some(&probe), &[])
            .await?;
        if !status.is_success() {
            return Err(ReportError::Server(format!(
                "the write after the restart was refused: {status} {}",
                diagnostics(&answer)
            )));
        }
        self.anchored().await?;
        Ok((ready, killed.elapsed()))
    }
}

/// `Type/id` of a location (`Type/id/_history/v`).
fn current(location: &str) -> String {
    location.split('/').take(2).collect::<Vec<_>>().join("/")
}

/// Whether `text` (JSON) holds `s` as a string or within one.
/// Whether `text` (JSON) holds `s` as a string or as words within one: not inside a longer
/// run of letters and digits (a postal code inside a hash or an id is chance, not a leak).
fn contains(text: &str, s: &str) -> bool {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    holds(text.as_bytes(), quoted.trim_matches('"').as_bytes())
}

/// Whether `needle` occurs in `haystack` with no letter or digit right before or after it.
fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() || needle.len() > haystack.len() {
        return false;
    }
    let word = |b: Option<&u8>| b.is_some_and(u8::is_ascii_alphanumeric);
    (0..=haystack.len() - needle.len()).any(|i| {
        &haystack[i..i + needle.len()] == needle
            && !(word(needle.first()) && i > 0 && word(haystack.get(i - 1)))
            && !(word(needle.last()) && word(haystack.get(i + needle.len())))
    })
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else if path.is_file() {
            out.push(path);
        }
    }
}

/// Runs `command` with `sh -c`; an error when it fails.
fn shell(command: &str) -> Result<(), ReportError> {
    let status = std::process::Command::new("sh")
        .args(["-c", command])
        .status()
        .map_err(|e| ReportError::Setup(format!("{command}: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(ReportError::Setup(format!("{command}: {status}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rates_are_counted_over_what_was_measured() {
        let metrics = Metrics {
            identity_strings: 40,
            leaked_anywhere: 1,
            reads: 10,
            reads_as_allowed: 9,
            reads_with_event: 10,
            signed_transactions: 8,
            attributable_transactions: 8,
            chain_verified: true,
            writes: vec![
                Write {
                    at: Duration::ZERO,
                    took: Duration::from_millis(100),
                    ok: true,
                },
                Write {
                    at: Duration::from_millis(100),
                    took: Duration::from_millis(300),
                    ok: true,
                },
                Write {
                    at: Duration::from_millis(400),
                    took: Duration::from_millis(600),
                    ok: true,
                },
            ],
            ..Metrics::default()
        };
        assert_eq!(metrics.leakage_probability(), 0.025);
        assert_eq!(metrics.least_visibility_rate(), 0.9);
        assert_eq!(metrics.audit_traceability(), 1.0);
        assert_eq!(metrics.governance_compliance(), 1.0);
        assert_eq!(metrics.throughput(), 3.0);
        let json = metrics.to_json();
        assert_eq!(json["writeLatencyMs"]["p50"], 300.0);
        assert_eq!(json["writeLatencyMs"]["p99"], 600.0);
        assert_eq!(json["recoveryToReadyMs"], Value::Null);
        let unverified = Metrics {
            chain_verified: false,
            ..metrics.clone()
        };
        assert_eq!(unverified.governance_compliance(), 0.0);
        let html = metrics.html();
        assert!(html.contains("<svg") && html.contains("privacy leakage probability"));
        assert!(metrics.table().contains("0.9000 (9 of 10 reads)"));
    }

    #[test]
    fn a_location_names_its_resource() {
        assert_eq!(current("Patient/1/_history/2"), "Patient/1");
        assert!(contains("{\"family\":\"O'Brien\"}", "O'Brien"));
        assert!(contains(
            "{\"div\":\"Ada Lovelace, 02138 Boston\"}",
            "02138"
        ));
        assert!(
            !contains("{\"hash\":\"a902138f\"}", "02138"),
            "chance inside a hash"
        );
        assert!(holds(b"02138", b"02138") && !holds(b"", b"0"));
        assert!(!contains("{\"family\":\"Smith\"}", "Smit h"));
    }
}
