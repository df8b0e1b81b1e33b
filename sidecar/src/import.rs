//! `fhirseal import`: loads FHIR files — Bundles (Synthea's transactions), single resources and
//! NDJSON (bulk-data export files) — through a running node's FHIR API, so that every resource
//! takes the sealing path a client's write takes (split, sealed, anchored, audited), in
//! transactions of at most `batch` resources; resumable after a kill.
//!
//! Resumption: a journal file records, for each file (by path and content hash), how many of
//! its batches are done, and the batch in flight. Every resource a batch writes carries a tag
//! (`urn:fhirseal:import`, the batch's id: the file's hash and the batch's position), so that
//! a batch cut short between the server's answer and the journal's update is looked up by its
//! tag at the next run and not written twice. Resources with an id in NDJSON and collection
//! Bundles are written with `PUT` (sending them again changes nothing); a transaction Bundle is
//! sent as it is, in one piece (its `urn:uuid:` references hold it together).
//!
//! Planning a file's batches is a pure function ([`batches`]); the HTTP exchanges and the
//! journal's file are [`Importer`]'s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fhirseal_storage::keys::hex;
use http::Method;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::crash::{self, CrashPoint};
use crate::fhir_client::{diagnostics, ExchangeError, FhirClient};
use crate::tls;

/// The tag system of the batch a resource was imported in.
pub const IMPORT_TAG: &str = "urn:fhirseal:import";

/// Why an import stopped.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("the journal {path}: {reason}")]
    Journal { path: PathBuf, reason: String },
    #[error("--url: {0}")]
    Url(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The server could not be reached or failed (5xx): run the import again to resume.
    #[error("{0} (run the import again to resume)")]
    Server(String),
}

impl From<ExchangeError> for ImportError {
    fn from(error: ExchangeError) -> Self {
        ImportError::Server(error.to_string())
    }
}

/// One transaction of an import.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The file's hash and the batch's position: the tag its resources carry.
    pub id: String,
    /// The transaction Bundle sent.
    pub bundle: Value,
    /// Resources it writes.
    pub resources: u64,
    /// The type of its first resource, where its tag is looked up.
    pub probe_type: String,
}

/// The batches of a file of `bytes`, named `name` (its extension decides how it is read):
/// `.ndjson` lines, or a `.json` Bundle or resource.
pub fn batches(name: &Path, bytes: &[u8], batch: usize) -> Result<Vec<Batch>, String> {
    let batch = batch.max(1);
    // The batches of other sizes are other batches: the size is in their ids.
    let hash = hex(&Sha256::new()
        .chain_update(bytes)
        .chain_update((batch as u64).to_be_bytes())
        .finalize()[..12]);
    let ndjson = name.extension().is_some_and(|e| e == "ndjson");
    let groups: Vec<(Vec<Value>, Option<Value>)> = if ndjson {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
        let mut resources = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let value: Value =
                serde_json::from_str(line).map_err(|e| format!("line {}: {e}", n + 1))?;
            resources.push(resource(value).map_err(|e| format!("line {}: {e}", n + 1))?);
        }
        resources
            .chunks(batch)
            .map(|c| (c.to_vec(), None))
            .collect()
    } else {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        let value = resource(value)?;
        let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
        if value["resourceType"] == "Bundle" && matches!(kind, "transaction" | "batch") {
            // Sent whole, as a transaction: its entries refer to each other.
            vec![(Vec::new(), Some(value))]
        } else if value["resourceType"] == "Bundle" {
            let entries = value
                .get("entry")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let resources: Vec<Value> = entries
                .into_iter()
                .filter_map(|e| e.get("resource").cloned())
                .map(resource)
                .collect::<Result<_, _>>()?;
            resources
                .chunks(batch)
                .map(|c| (c.to_vec(), None))
                .collect()
        } else {
            vec![(vec![value], None)]
        }
    };
    Ok(groups
        .into_iter()
        .enumerate()
        .map(|(n, (resources, whole))| {
            let id = format!("{hash}-{n}");
            let mut bundle = match whole {
                Some(bundle) => transaction(bundle),
                None => json!({
                    "resourceType": "Bundle",
                    "type": "transaction",
                    "entry": resources.into_iter().map(entry).collect::<Vec<_>>(),
                }),
            };
            let entries = bundle
                .get_mut("entry")
                .and_then(Value::as_array_mut)
                .map(std::mem::take)
                .unwrap_or_default();
            let mut count = 0;
            let mut probe_type = String::new();
            let tagged: Vec<Value> = entries
                .into_iter()
                .map(|mut e| {
                    if let Some(r) = e.get_mut("resource") {
                        tag(r, &id);
                        count += 1;
                        if probe_type.is_empty() {
                            probe_type = r["resourceType"].as_str().unwrap_or("").to_owned();
                        }
                    }
                    e
                })
                .collect();
            bundle["entry"] = Value::Array(tagged);
            Batch {
                id,
                bundle,
                resources: count,
                probe_type,
            }
        })
        .filter(|b| b.resources > 0)
        .collect())
}

/// `value` if it is a resource (an object with a `resourceType`).
fn resource(value: Value) -> Result<Value, String> {
    match value.get("resourceType").and_then(Value::as_str) {
        Some(t) if !t.is_empty() => Ok(value),
        _ => Err("not a FHIR resource (no resourceType)".to_owned()),
    }
}

/// A batch Bundle sent as a transaction (all or nothing, as a resumable import needs).
fn transaction(mut bundle: Value) -> Value {
    bundle["type"] = Value::from("transaction");
    bundle
}

/// The entry that writes `resource`: `PUT` when it has an id (idempotent), else `POST`.
fn entry(resource: Value) -> Value {
    let kind = resource["resourceType"].as_str().unwrap_or("").to_owned();
    match resource
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_owned)
    {
        Some(id) => json!({
            "resource": resource,
            "request": {"method": "PUT", "url": format!("{kind}/{id}")}
        }),
        None => json!({
            "resource": resource,
            "request": {"method": "POST", "url": kind}
        }),
    }
}

/// Adds the import batch's tag to `resource`'s `meta.tag`.
fn tag(resource: &mut Value, batch: &str) {
    fhirseal_adapters::resource::add_tag(resource, IMPORT_TAG, batch);
}

/// The files under `paths`: each file named, and the `.json` and `.ndjson` files of each
/// directory (recursively), in path order.
pub fn files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ImportError> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ImportError> {
        let error = |e: std::io::Error| ImportError::File {
            path: dir.to_owned(),
            reason: e.to_string(),
        };
        for entry in std::fs::read_dir(dir).map_err(error)? {
            let path = entry.map_err(error)?.path();
            if path.is_dir() {
                walk(&path, out)?;
            } else if path
                .extension()
                .is_some_and(|e| e == "json" || e == "ndjson")
            {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            walk(path, &mut out)?;
        } else {
            out.push(path.clone());
        }
    }
    out.sort();
    Ok(out)
}

/// What the journal keeps.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct JournalData {
    /// By file path: its content's hash and the batches done.
    files: BTreeMap<String, FileProgress>,
    /// The batch sent last whose answer the journal has not recorded.
    in_flight: Option<InFlight>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
struct FileProgress {
    content: String,
    /// The `--batch` its batches were made with.
    #[serde(default)]
    batch: usize,
    done: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct InFlight {
    file: String,
    batch: String,
    probe_type: String,
}

/// How far an import got, kept in a file (written whole, then renamed into place).
#[derive(Debug)]
struct Journal {
    path: PathBuf,
    data: JournalData,
}

impl Journal {
    fn load(path: &Path) -> Result<Journal, ImportError> {
        let data = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ImportError::Journal {
                path: path.to_owned(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => JournalData::default(),
            Err(e) => {
                return Err(ImportError::Journal {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })
            }
        };
        Ok(Journal {
            path: path.to_owned(),
            data,
        })
    }

    fn save(&self) -> Result<(), ImportError> {
        let error = |e: std::io::Error| ImportError::Journal {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let bytes = serde_json::to_vec_pretty(&self.data).unwrap_or_default();
        let mut temporary = self.path.clone().into_os_string();
        temporary.push(".new");
        let temporary = PathBuf::from(temporary);
        std::fs::write(&temporary, bytes).map_err(error)?;
        std::fs::File::open(&temporary)
            .and_then(|f| f.sync_all())
            .map_err(error)?;
        std::fs::rename(&temporary, &self.path).map_err(error)
    }
}

/// Where and how to import.
#[derive(Clone)]
pub struct ImportOptions {
    /// The node's FHIR base, e.g. `http://127.0.0.1:8088/fhir`.
    pub url: String,
    /// An API key whose role may write (a clinician's).
    pub api_key: String,
    /// Most resources per transaction (a transaction Bundle of a file is sent whole).
    pub batch: usize,
    /// The journal's file.
    pub journal: PathBuf,
    /// A CA certificate (PEM) for a node whose TLS certificate the system does not trust.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for ImportOptions {
    /// Without the API key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImportOptions")
            .field("url", &self.url)
            .field("batch", &self.batch)
            .field("journal", &self.journal)
            .finish_non_exhaustive()
    }
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub files: usize,
    /// Batches written by this run, and their resources.
    pub batches: u64,
    pub resources: u64,
    /// Batches a previous run wrote (from the journal, or found by their tag).
    pub already: u64,
    /// Batches the node refused (4xx), with the file, the batch's id, the status and why.
    pub refused: Vec<(PathBuf, String, u16, String)>,
}

/// Progress: resources done of the total.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

/// Imports files through a node (see the module's documentation).
#[derive(Debug)]
pub struct Importer {
    options: ImportOptions,
    client: FhirClient,
}

impl Importer {
    pub fn new(options: ImportOptions) -> Result<Importer, ImportError> {
        crate::config::absolute_http_url(&options.url).map_err(ImportError::Url)?;
        let client = FhirClient::new(Some(options.api_key.clone()), options.ca_file.as_deref())?;
        Ok(Importer { options, client })
    }

    /// Imports `files` (see [`files`]), reporting progress through `progress`.
    pub async fn run(
        &self,
        files: &[PathBuf],
        progress: Progress<'_>,
    ) -> Result<Report, ImportError> {
        let mut journal = Journal::load(&self.options.journal)?;
        // A first pass counts the resources (and finds what is not FHIR before anything is
        // sent); each file is planned again when its turn comes, so that one file at a time
        // is held.
        let mut total = 0;
        for path in files {
            total += self.plan(path)?.1.iter().map(|b| b.resources).sum::<u64>();
        }
        let mut report = Report {
            files: files.len(),
            ..Report::default()
        };
        let mut done_resources = 0;
        for path in files {
            let (content, batches) = self.plan(path)?;
            let key = path.display().to_string();
            let progress_of = journal.data.files.entry(key.clone()).or_default();
            if progress_of.content != content {
                // A new file, or one that changed since: its batches are other batches.
                *progress_of = FileProgress {
                    content: content.clone(),
                    batch: self.options.batch,
                    done: 0,
                };
            } else if progress_of.batch != self.options.batch && progress_of.done > 0 {
                return Err(ImportError::Journal {
                    path: self.options.journal.clone(),
                    reason: format!(
                        "{key} was imported in part with --batch {}: pass the same --batch to go on (another would write its resources again)",
                        progress_of.batch
                    ),
                });
            }
            let done = progress_of.done;
            for (n, batch) in batches.iter().enumerate() {
                if (n as u64) < done {
                    report.already += 1;
                    done_resources += batch.resources;
                    progress(done_resources, total);
                    continue;
                }
                let was_in_flight = journal
                    .data
                    .in_flight
                    .as_ref()
                    .is_some_and(|f| f.batch == batch.id);
                if was_in_flight && self.landed(batch).await? {
                    report.already += 1;
                } else {
                    journal.data.in_flight = Some(InFlight {
                        file: key.clone(),
                        batch: batch.id.clone(),
                        probe_type: batch.probe_type.clone(),
                    });
                    journal.save()?;
                    match self.send(batch).await? {
                        None => {
                            report.batches += 1;
                            report.resources += batch.resources;
                        }
                        Some((status, why)) => {
                            report
                                .refused
                                .push((path.clone(), batch.id.clone(), status, why));
                        }
                    }
                    crash::reached(CrashPoint::ImportSent);
                }
                journal.data.in_flight = None;
                if let Some(p) = journal.data.files.get_mut(&key) {
                    p.done = n as u64 + 1;
                }
                journal.save()?;
                done_resources += batch.resources;
                progress(done_resources, total);
            }
        }
        Ok(report)
    }

    /// A file's content hash and its batches.
    fn plan(&self, path: &Path) -> Result<(String, Vec<Batch>), ImportError> {
        let bytes = std::fs::read(path).map_err(|e| ImportError::File {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let content = hex(&Sha256::digest(&bytes));
        let batches =
            batches(path, &bytes, self.options.batch).map_err(|reason| ImportError::File {
                path: path.to_owned(),
                reason,
            })?;
        Ok((content, batches))
    }

    /// Sends one batch: `None` when the node took it, else the status and why it refused it.
    async fn send(&self, batch: &Batch) -> Result<Option<(u16, String)>, ImportError> {
        let (status, answer) = self
            .client
            .exchange(Method::POST, &self.options.url, Some(&batch.bundle), &[])
            .await?;
        if status.is_success() {
            return Ok(None);
        }
        let why = diagnostics(&answer);
        if status.is_client_error() {
            Ok(Some((status.as_u16(), why)))
        } else {
            Err(ImportError::Server(format!(
                "the node answered {status}: {why}"
            )))
        }
    }

    /// Whether the resources of `batch` are on the server (looked up by the batch's tag).
    async fn landed(&self, batch: &Batch) -> Result<bool, ImportError> {
        let tag = format!("{IMPORT_TAG}|{}", batch.id);
        let url = format!(
            "{}/{}?_tag={}&_summary=count",
            self.options.url.trim_end_matches('/'),
            batch.probe_type,
            utf8_percent_encode(&tag, NON_ALPHANUMERIC)
        );
        let (status, answer) = self.client.exchange(Method::GET, &url, None, &[]).await?;
        if !status.is_success() {
            return Err(ImportError::Server(format!(
                "looking up the batch cut short ({}): the node answered {status}: {}",
                batch.id,
                diagnostics(&answer)
            )));
        }
        Ok(answer.get("total").and_then(Value::as_u64).unwrap_or(0) > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(batch: &Batch) -> Vec<String> {
        batch.bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let tags = e["resource"]["meta"]["tag"].as_array().unwrap();
                let tag = tags.iter().find(|t| t["system"] == IMPORT_TAG).unwrap();
                tag["code"].as_str().unwrap().to_owned()
            })
            .collect()
    }

    #[test]
    fn ndjson_lines_go_in_batches_with_put_for_known_ids() {
        let text = "{\"resourceType\":\"Observation\",\"id\":\"o1\",\"status\":\"final\"}\n\n\
                    {\"resourceType\":\"Observation\",\"status\":\"final\"}\n\
                    {\"resourceType\":\"Patient\",\"id\":\"p1\"}\n";
        let all = batches(Path::new("x.ndjson"), text.as_bytes(), 2).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].resources, all[1].resources), (2, 1));
        let first = &all[0].bundle["entry"];
        assert_eq!(
            first[0]["request"],
            json!({"method": "PUT", "url": "Observation/o1"})
        );
        assert_eq!(
            first[1]["request"],
            json!({"method": "POST", "url": "Observation"})
        );
        assert_eq!(all[1].probe_type, "Patient");
        assert!(codes(&all[0]).iter().all(|c| *c == all[0].id));
        assert_ne!(all[0].id, all[1].id);
        // The same bytes give the same batches; other bytes other ids.
        assert_eq!(
            all,
            batches(Path::new("y.ndjson"), text.as_bytes(), 2).unwrap()
        );
        let other = batches(Path::new("x.ndjson"), b"{\"resourceType\":\"Patient\"}", 2).unwrap();
        assert_ne!(other[0].id, all[0].id);
    }

    #[test]
    fn a_transaction_is_sent_whole_and_a_collection_in_batches() {
        let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:a", "resource": {"resourceType": "Patient"},
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "urn:uuid:b", "resource": {"resourceType": "Observation",
             "subject": {"reference": "urn:uuid:a"}}, "request": {"method": "POST", "url": "Observation"}}
        ]});
        let bytes = serde_json::to_vec(&transaction).unwrap();
        let all = batches(Path::new("t.json"), &bytes, 1).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].resources, 2);
        assert_eq!(all[0].bundle["entry"][1]["fullUrl"], "urn:uuid:b");
        assert_eq!(codes(&all[0]).len(), 2);
        let collection = json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"resource": {"resourceType": "Patient", "id": "p"}},
            {"resource": {"resourceType": "Patient", "id": "q"}},
            {"resource": {"resourceType": "Patient", "id": "r"}}
        ]});
        let bytes = serde_json::to_vec(&collection).unwrap();
        let all = batches(Path::new("c.json"), &bytes, 2).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].bundle["type"], "transaction");
        let single = batches(Path::new("p.json"), b"{\"resourceType\":\"Patient\"}", 5).unwrap();
        assert_eq!(single.len(), 1);
    }

    #[test]
    fn what_is_not_fhir_is_refused_with_where() {
        assert!(batches(Path::new("x.json"), b"{", 5)
            .unwrap_err()
            .starts_with("not JSON"));
        assert!(batches(Path::new("x.json"), b"{\"a\":1}", 5)
            .unwrap_err()
            .contains("resourceType"));
        let error = batches(
            Path::new("x.ndjson"),
            b"{\"resourceType\":\"Patient\"}\n[1]\n",
            5,
        )
        .unwrap_err();
        assert!(error.starts_with("line 2"), "{error}");
    }
}
