//! `fhirseal migrate`: seals what an existing FHIR server already holds. Type by type (persons
//! first, so that references to them are known when the rest is split), it reads every
//! resource straight from the upstream, writes it back through the node (`PUT`, pinned to the
//! version read with `If-Match`) so that the node splits and seals its identity and anchors the
//! pseudonymized version as for any client's write, then removes the identified versions the
//! server still keeps (`$expunge` of the previous versions, when the server allows it; when it
//! does not, the report says how many resources keep them). At the end it reads back the
//! history of every resource it sealed and counts the identity strings still upstream.
//!
//! Resumable by construction: each resource written back carries a tag
//! (`urn:fhirseal:migrated|1`), and the next page is always asked for with `_tag:not=` that
//! tag (and without the server's search cache), so a run killed anywhere picks up what is
//! left. The expunging and the read-back cover every resource carrying the tag, those of an
//! earlier run cut short included: each is read through the node (re-identified, as a
//! clinician reads it) for the identity strings to look for upstream. A dry run only reads and
//! reports what would be sealed.
//!
//! What holds identity is decided by a split profile ([`Profile`]: the node's, given the same
//! file) here too, for the report only: the node decides what it seals.

use std::collections::{BTreeMap, BTreeSet};

use fhirseal_adapters::profile::Profile;
use fhirseal_adapters::resource;
use http::header::{self, HeaderValue};
use http::{Method, StatusCode};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use crate::fhir_client::{diagnostics, ExchangeError, FhirClient};
use crate::tls;

/// The tag a migrated resource carries.
pub const MIGRATED_SYSTEM: &str = "urn:fhirseal:migrated";
pub const MIGRATED_CODE: &str = "1";
/// The person types, migrated first, in this order.
const PERSONS_FIRST: [&str; 4] = ["Patient", "RelatedPerson", "Person", "Practitioner"];
/// An identity string shorter than this is not looked for upstream (a gender, an initial).
const MIN_IDENTITY_STRING: usize = 4;

/// Why a migration stopped.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("--{0}: {1}")]
    Url(&'static str, String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A server could not be reached or failed: run the migration again to resume.
    #[error("{0} (run the migration again to resume)")]
    Server(String),
}

impl From<ExchangeError> for MigrateError {
    fn from(error: ExchangeError) -> Self {
        MigrateError::Server(error.to_string())
    }
}

/// What to migrate, from where, through which node.
#[derive(Clone)]
pub struct MigrateOptions {
    /// The upstream FHIR server's base, read directly.
    pub from: String,
    /// The node's FHIR base, which writes back.
    pub url: String,
    /// An API key of the node whose role may write (a clinician's).
    pub api_key: String,
    /// The types to migrate; empty: every type the upstream's CapabilityStatement names.
    pub types: Vec<String>,
    /// Only resources with this tag (`system|code`).
    pub tag: Option<String>,
    /// Read and report only.
    pub dry_run: bool,
    /// Keep the identified versions upstream instead of expunging them.
    pub keep_history: bool,
    /// Resources per page.
    pub page: usize,
    pub ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for MigrateOptions {
    /// Without the API key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrateOptions")
            .field("from", &self.from)
            .field("url", &self.url)
            .field("types", &self.types)
            .field("dry_run", &self.dry_run)
            .finish_non_exhaustive()
    }
}

/// What happened to one type.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TypeReport {
    pub seen: u64,
    /// Written back with identity sealed (dry run: that would be).
    pub sealed: u64,
    /// Written back with nothing to seal (dry run: that would be).
    pub without_identity: u64,
    /// Not written back, with why (id, reason).
    pub skipped: Vec<(String, String)>,
    /// Resources whose earlier, identified versions were expunged, and those that keep them.
    pub expunged: u64,
    pub history_kept: u64,
}

/// What a migration did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MigrationReport {
    pub types: BTreeMap<String, TypeReport>,
    /// Why the history was kept, when the server refused to expunge it.
    pub expunge_refused: Option<String>,
    /// Identity strings of the sealed resources still found upstream, by resource, after the
    /// migration (any version).
    pub identity_left: Vec<(String, usize)>,
}

/// The leaf strings the profile takes out of `resource` and keeps nowhere in its clinical
/// part (an address's state, kept for statistics, is not one of them).
pub fn identity_strings(profile: &Profile, resource: &Value) -> Vec<String> {
    let mut copy = resource.clone();
    let part = profile.split(&mut copy, None, &|_| None);
    let mut taken = BTreeSet::new();
    for (_, value) in &part.entries {
        collect_strings(value, &mut taken);
    }
    let mut kept = BTreeSet::new();
    collect_strings(&copy, &mut kept);
    taken.difference(&kept).cloned().collect()
}

/// Elements that say what kind a value is (a code system, a use, a coded type), not who.
const NOT_VALUES: [&str; 8] = [
    "system",
    "use",
    "url",
    "code",
    "coding",
    "type",
    "unit",
    "resourceType",
];

fn collect_strings(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::String(s) if s.chars().count() >= MIN_IDENTITY_STRING => {
            out.insert(s.clone());
        }
        Value::Array(items) => items.iter().for_each(|v| collect_strings(v, out)),
        Value::Object(map) => map
            .iter()
            .filter(|(k, _)| !NOT_VALUES.contains(&k.as_str()))
            .for_each(|(_, v)| collect_strings(v, out)),
        _ => {}
    }
}

/// `types` in migration order: the person types first, then the rest as given.
pub fn order(types: &[String]) -> Vec<String> {
    let mut out: Vec<String> = PERSONS_FIRST
        .iter()
        .filter(|p| types.iter().any(|t| t == *p))
        .map(|p| (*p).to_owned())
        .collect();
    out.extend(
        types
            .iter()
            .filter(|t| !PERSONS_FIRST.contains(&t.as_str()))
            .cloned(),
    );
    out
}

/// Whether `resource` carries the migrated tag.
fn is_migrated(resource: &Value) -> bool {
    resource["meta"]["tag"]
        .as_array()
        .is_some_and(|tags| tags.iter().any(|t| t["system"] == MIGRATED_SYSTEM))
}

/// `resource` with the migrated tag added.
fn tagged(mut resource: Value) -> Value {
    resource::add_tag(&mut resource, MIGRATED_SYSTEM, MIGRATED_CODE);
    resource
}

/// Migrates an upstream through a node (see the module's documentation).
#[derive(Debug)]
pub struct Migrator {
    options: MigrateOptions,
    upstream: FhirClient,
    node: FhirClient,
    profile: Profile,
}

impl Migrator {
    pub fn new(options: MigrateOptions, profile: Profile) -> Result<Migrator, MigrateError> {
        crate::config::absolute_http_url(&options.from)
            .map_err(|r| MigrateError::Url("from", r))?;
        crate::config::absolute_http_url(&options.url).map_err(|r| MigrateError::Url("url", r))?;
        Ok(Migrator {
            upstream: FhirClient::new(None, options.ca_file.as_deref())?,
            node: FhirClient::new(Some(options.api_key.clone()), options.ca_file.as_deref())?,
            options,
            profile,
        })
    }

    /// Runs the migration; `progress` hears of each type's resources as they are done.
    pub async fn run(
        &self,
        progress: &mut dyn FnMut(&str, u64),
    ) -> Result<MigrationReport, MigrateError> {
        let types = match self.options.types.is_empty() {
            false => order(&self.options.types),
            true => order(&self.capability_types().await?),
        };
        let mut report = MigrationReport::default();
        for kind in types {
            let mut of_type = TypeReport::default();
            self.migrate_type(&kind, &mut of_type, progress).await?;
            if !self.options.dry_run {
                self.settle_type(&kind, &mut of_type, &mut report, progress)
                    .await?;
            }
            report.types.insert(kind, of_type);
        }
        Ok(report)
    }

    /// The types the upstream's CapabilityStatement names.
    async fn capability_types(&self) -> Result<Vec<String>, MigrateError> {
        let url = format!("{}/metadata", self.options.from);
        let (status, capability) = self.upstream.exchange(Method::GET, &url, None, &[]).await?;
        if !status.is_success() {
            return Err(MigrateError::Server(format!(
                "{url}: {status}: {}",
                diagnostics(&capability)
            )));
        }
        Ok(capability["rest"][0]["resource"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|r| r["type"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The first page of `kind`'s resources not migrated yet (`Some(false)`; for a dry run,
    /// `None`: every page in turn through the `next` links), or of those migrated
    /// (`Some(true)`).
    fn first_page(&self, kind: &str, migrated: Option<bool>) -> String {
        let mut url = format!(
            "{}/{kind}?_count={}",
            self.options.from,
            self.options.page.max(1)
        );
        let tag = format!("{MIGRATED_SYSTEM}|{MIGRATED_CODE}");
        let tag = utf8_percent_encode(&tag, NON_ALPHANUMERIC);
        match migrated {
            Some(false) => url.push_str(&format!("&_tag:not={tag}")),
            Some(true) => url.push_str(&format!("&_tag={tag}")),
            None => {}
        }
        if let Some(tag) = &self.options.tag {
            url.push_str(&format!(
                "&_tag={}",
                utf8_percent_encode(tag, NON_ALPHANUMERIC)
            ));
        }
        url
    }

    /// One page of a search upstream, asked for without the server's search cache.
    async fn page(&self, url: &str) -> Result<Value, MigrateError> {
        let fresh = [(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"))];
        let (status, page) = self
            .upstream
            .exchange(Method::GET, url, None, &fresh)
            .await?;
        if !status.is_success() {
            return Err(MigrateError::Server(format!(
                "{url}: {status}: {}",
                diagnostics(&page)
            )));
        }
        Ok(page)
    }

    /// Expunges the earlier versions of every migrated resource of `kind` (unless told to keep
    /// them), then reads each through the node and counts the identity strings any version
    /// upstream still holds.
    async fn settle_type(
        &self,
        kind: &str,
        of_type: &mut TypeReport,
        report: &mut MigrationReport,
        progress: &mut dyn FnMut(&str, u64),
    ) -> Result<(), MigrateError> {
        let mut url = self.first_page(kind, Some(true));
        let mut settled = 0;
        loop {
            let page = self.page(&url).await?;
            for entry in page["entry"].as_array().into_iter().flatten() {
                let Some(id) = entry["resource"]["id"].as_str() else {
                    continue;
                };
                self.expunge(kind, id, of_type, report).await?;
                let read = format!("{}/{kind}/{id}", self.options.url);
                let (status, seen) = self.node.exchange(Method::GET, &read, None, &[]).await?;
                if status.is_success() {
                    let strings = identity_strings(&self.profile, &seen);
                    let left = self.left_upstream(kind, id, &strings).await?;
                    if left > 0 {
                        report.identity_left.push((format!("{kind}/{id}"), left));
                    }
                }
                settled += 1;
                progress(&format!("{kind} (settling)"), settled);
            }
            match resource::next_link(&page) {
                Some(next) => url = next.to_owned(),
                None => return Ok(()),
            }
        }
    }

    async fn migrate_type(
        &self,
        kind: &str,
        of_type: &mut TypeReport,
        progress: &mut dyn FnMut(&str, u64),
    ) -> Result<(), MigrateError> {
        let unmigrated = (!self.options.dry_run).then_some(false);
        let mut url = self.first_page(kind, unmigrated);
        let mut skipped: BTreeSet<String> = BTreeSet::new();
        loop {
            let page = self.page(&url).await?;
            let entries = page["entry"].as_array().cloned().unwrap_or_default();
            let mut changed = false;
            for entry in entries {
                let resource = entry["resource"].clone();
                let Some(id) = resource["id"].as_str().map(str::to_owned) else {
                    continue;
                };
                // A server that answers a search from its cache may show one migrated already.
                if resource["resourceType"] != kind
                    || skipped.contains(&id)
                    || is_migrated(&resource)
                {
                    continue;
                }
                of_type.seen += 1;
                let strings = identity_strings(&self.profile, &resource);
                if self.options.dry_run {
                    if strings.is_empty() {
                        of_type.without_identity += 1;
                    } else {
                        of_type.sealed += 1;
                    }
                    progress(kind, of_type.seen);
                    continue;
                }
                match self.write_back(kind, &id, &resource).await? {
                    Ok(()) => {
                        changed = true;
                        if strings.is_empty() {
                            of_type.without_identity += 1;
                        } else {
                            of_type.sealed += 1;
                        }
                    }
                    Err(why) => {
                        skipped.insert(id.clone());
                        of_type.skipped.push((id, why));
                    }
                }
                progress(kind, of_type.seen);
            }
            url = match (changed, resource::next_link(&page)) {
                // What was written back drops out of the first page: ask for it again.
                (true, _) => self.first_page(kind, unmigrated),
                (false, Some(next)) => next.to_owned(),
                (false, None) => return Ok(()),
            };
        }
    }

    /// Writes `resource` back through the node, tagged, pinned to the version read: `Ok(Err)`
    /// with why when the node refuses it.
    async fn write_back(
        &self,
        kind: &str,
        id: &str,
        resource: &Value,
    ) -> Result<Result<(), String>, MigrateError> {
        let url = format!("{}/{kind}/{}", self.options.url, id);
        let mut headers = Vec::new();
        if let Some(version) = resource["meta"]["versionId"].as_str() {
            if let Ok(value) = HeaderValue::from_str(&format!("W/\"{version}\"")) {
                headers.push((header::IF_MATCH, value));
            }
        }
        let body = tagged(resource.clone());
        let (status, answer) = self
            .node
            .exchange(Method::PUT, &url, Some(&body), &headers)
            .await?;
        if status.is_success() {
            Ok(Ok(()))
        } else if status.is_client_error() {
            Ok(Err(format!("{status}: {}", diagnostics(&answer))))
        } else {
            Err(MigrateError::Server(format!(
                "{url}: the node answered {status}: {}",
                diagnostics(&answer)
            )))
        }
    }

    /// Expunges `kind/id`'s earlier versions upstream, unless told to keep them; once the
    /// server refuses, the rest keep theirs too.
    async fn expunge(
        &self,
        kind: &str,
        id: &str,
        of_type: &mut TypeReport,
        report: &mut MigrationReport,
    ) -> Result<(), MigrateError> {
        if self.options.keep_history || report.expunge_refused.is_some() {
            of_type.history_kept += 1;
            return Ok(());
        }
        let url = format!("{}/{kind}/{id}/$expunge", self.options.from);
        let body = json!({"resourceType": "Parameters", "parameter": [
            {"name": "expungePreviousVersions", "valueBoolean": true}
        ]});
        let (status, answer) = self
            .upstream
            .exchange(Method::POST, &url, Some(&body), &[])
            .await?;
        if status.is_success() {
            of_type.expunged += 1;
        } else {
            of_type.history_kept += 1;
            report.expunge_refused = Some(format!("{status}: {}", diagnostics(&answer)));
        }
        Ok(())
    }

    /// How many of `strings` any version of `kind/id` upstream still holds.
    async fn left_upstream(
        &self,
        kind: &str,
        id: &str,
        strings: &[String],
    ) -> Result<usize, MigrateError> {
        let url = format!("{}/{kind}/{id}/_history?_count=1000", self.options.from);
        let (status, history) = self.upstream.exchange(Method::GET, &url, None, &[]).await?;
        if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
            return Ok(0);
        }
        if !status.is_success() {
            return Err(MigrateError::Server(format!(
                "{url}: {status}: {}",
                diagnostics(&history)
            )));
        }
        let text = history.to_string();
        Ok(strings
            .iter()
            .filter(|s| text.contains(&serde_json::to_string(s).unwrap_or_default()))
            .count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persons_go_first_and_the_rest_keep_their_order() {
        let given: Vec<String> = ["Observation", "Practitioner", "Encounter", "Patient"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(
            order(&given),
            ["Patient", "Practitioner", "Observation", "Encounter"]
        );
    }

    #[test]
    fn the_identity_strings_are_what_the_profile_splits_off() {
        let patient = json!({"resourceType": "Patient", "id": "p",
            "name": [{"family": "Lovelace", "given": ["Ada"]}],
            "telecom": [{"system": "phone", "value": "555-0100"}],
            "gender": "female"});
        let strings = identity_strings(&Profile::default(), &patient);
        assert!(strings.contains(&"Lovelace".to_owned()), "{strings:?}");
        assert!(strings.contains(&"555-0100".to_owned()), "{strings:?}");
        assert!(!strings.contains(&"female".to_owned()), "{strings:?}");
        let observation = json!({"resourceType": "Observation", "status": "final"});
        assert!(identity_strings(&Profile::default(), &observation).is_empty());
        let with = tagged(json!({"resourceType": "Observation", "meta": {"tag": [{"code": "x"}]}}));
        assert_eq!(with["meta"]["tag"][1]["system"], MIGRATED_SYSTEM);
    }
}
