//! Verification against the ledger: `GET [type]/[id]/$verify` and
//! `GET [type]/[id]/_history/[vid]/$verify` answer FHIR `Parameters`, and `/ledger/…` answers
//! JSON for other tools.
//!
//! A version is *verified* when it is anchored, its proof checks against the roster (entry →
//! batch root → signed batch → block transaction root → finality certificate), and the
//! upstream's copy of it, canonicalized, still hashes to the anchored clinical hash. Anything
//! else is reported with the reason, so that a database changed behind the sidecar's back shows.

use base64::Engine as _;
use bytes::Bytes;
use fhirseal_adapters::auth::{ApiKeyTable, Principal};
use fhirseal_adapters::{canonical, fhir, Format, RouteError};
use fhirseal_consensus::{
    AnchorProof, Chain, ChainCheck, ChainStore, FinalizedBlock, Hash256, MerkleProof, Transaction,
};
use fhirseal_storage::chain_store::ChainStoreError;
use fhirseal_storage::keys::hex;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use crate::body::{full, ProxyBody};
use crate::config::Config;
use crate::error::ProxyError;
use crate::ledger::{ledger_dir, LedgerError, NodeLedger};
use crate::proxy::Proxy;
use crate::server::{open_node, ServerError};

/// The name of the operation.
pub(crate) const VERIFY: &str = "verify";

/// What verifying one version found.
#[derive(Debug, Clone)]
pub struct VersionCheck {
    pub resource_type: String,
    pub id: String,
    pub version: String,
    /// The proof, when the version is anchored.
    pub proof: Option<AnchorProof>,
    /// Why the proof does not check, when it does not.
    pub proof_fault: Option<String>,
    /// Whether the version waits in the outbox (written, its block not final yet).
    pub pending: bool,
    /// The hash of the upstream's copy; `None` when the upstream does not return it.
    pub upstream_hash: Option<[u8; 32]>,
    /// How the upstream answered the read of this version.
    pub upstream_status: StatusCode,
}

impl VersionCheck {
    /// Whether the upstream's copy matches what was anchored.
    pub fn upstream_matches(&self) -> Option<bool> {
        let proof = self.proof.as_ref()?;
        Some(self.upstream_hash == Some(proof.entry.clinical_hash))
    }

    /// Anchored, proven, and unchanged upstream.
    pub fn verified(&self) -> bool {
        self.proof.is_some() && self.proof_fault.is_none() && self.upstream_matches() == Some(true)
    }

    /// Why it is not verified, in words; `None` when it is.
    pub fn problem(&self) -> Option<String> {
        let resource = self.resource();
        if self.proof.is_none() {
            return Some(if self.pending {
                format!("{resource} is written and waits for its block")
            } else {
                format!(
                    "{resource} is not anchored on the ledger: it was not written through fhirseal"
                )
            });
        }
        if let Some(fault) = &self.proof_fault {
            return Some(format!(
                "the ledger's proof for {resource} does not check: {fault}"
            ));
        }
        match self.upstream_hash {
            None => Some(format!(
                "the upstream does not return {resource} (it answered {})",
                self.upstream_status
            )),
            Some(_) if self.upstream_matches() == Some(false) => Some(format!(
                "the upstream's {resource} differs from what was anchored: it was changed behind fhirseal"
            )),
            Some(_) => None,
        }
    }

    /// `Type/id/_history/version`.
    pub fn resource(&self) -> String {
        format!(
            "{}/{}/_history/{}",
            self.resource_type, self.id, self.version
        )
    }
}

/// What the upstream holds now for a resource that has anchored versions.
#[derive(Debug, Clone)]
pub struct CurrentCheck {
    pub resource_type: String,
    pub id: String,
    /// How the upstream answered the read of the resource.
    pub upstream_status: StatusCode,
    /// The upstream's current version id, when it returns the resource.
    pub current_version: Option<String>,
    /// Whether that version is anchored (or waits for its block).
    pub anchored: bool,
}

impl CurrentCheck {
    /// What is wrong with the upstream's current state; `None` when its current version is
    /// anchored. A deletion is not reported here: deletions are not anchored.
    pub fn problem(&self) -> Option<String> {
        let resource = format!("{}/{}", self.resource_type, self.id);
        match &self.current_version {
            Some(_) if self.anchored => None,
            Some(v) => Some(format!(
                "{resource} has a current version {v} that was not written through fhirseal"
            )),
            None if self.upstream_status == StatusCode::GONE => None,
            None => Some(format!(
                "{resource} is anchored but the upstream does not return it (it answered {})",
                self.upstream_status
            )),
        }
    }
}

/// The ledger's side of a check: proof (checked) and whether the version is pending.
pub fn ledger_check(
    ledger: &NodeLedger,
    resource_type: &str,
    id: &str,
    version: &str,
    upstream: Option<&Value>,
    upstream_status: StatusCode,
) -> Result<VersionCheck, ProxyError> {
    let proof = ledger.proof(resource_type, id, version)?;
    let proof_fault = proof
        .as_ref()
        .and_then(|p| p.verify(&ledger.roster()).err().map(|e| e.to_string()));
    let pending = proof.is_none() && ledger.is_pending(resource_type, id, version)?;
    let upstream_hash = match upstream {
        Some(value) => Some(
            canonical::clinical_hash(value)
                .map_err(|e| ProxyError::UpstreamBody(format!("the stored resource: {e}")))?,
        ),
        None => None,
    };
    Ok(VersionCheck {
        resource_type: resource_type.to_owned(),
        id: id.to_owned(),
        version: version.to_owned(),
        proof,
        proof_fault,
        pending,
        upstream_hash,
        upstream_status,
    })
}

impl Proxy {
    /// `$verify` on a resource (its current version) or on one version.
    pub(crate) async fn verify_operation(
        &self,
        req: &Request<ProxyBody>,
        (resource_type, id, version): (&str, &str, Option<&str>),
        audit: bool,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (method, query) = (req.method(), req.uri().query());
        let format = Format::negotiate(query, req.headers());
        if method != Method::GET {
            return Err(ProxyError::Route(RouteError::Method {
                method: method.clone(),
                path: format!("{resource_type}/{id}/$verify (read-only: use GET)"),
            }));
        }
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let name = pair.split('=').next().unwrap_or("");
            if !matches!(name, "_format" | "_pretty") {
                return Err(ProxyError::Invalid(format!(
                    "$verify takes no parameter '{name}'"
                )));
            }
        }
        let base = &self.shared.upstream.base;
        let url = match version {
            Some(v) => format!("{base}/{resource_type}/{id}/_history/{v}"),
            None => format!("{base}/{resource_type}/{id}"),
        };
        let (status, current) = self.upstream_json(Method::GET, &url, None).await?;
        let stored = (status == StatusCode::OK).then_some(&current);
        let version = match (version, stored) {
            (Some(v), _) => v.to_owned(),
            (None, Some(value)) => value
                .pointer("/meta/versionId")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ProxyError::UpstreamBody(format!(
                        "{resource_type}/{id} has no meta.versionId upstream"
                    ))
                })?
                .to_owned(),
            (None, None) => return Err(absent(resource_type, id, None, status)),
        };
        let ledger = self.shared.ledger.clone();
        let (ty, id_owned, v) = (resource_type.to_owned(), id.to_owned(), version.clone());
        let stored = stored.cloned();
        let check = tokio::task::spawn_blocking(move || {
            ledger_check(&ledger, &ty, &id_owned, &v, stored.as_ref(), status)
        })
        .await
        .map_err(|e| ProxyError::Internal(e.to_string()))??;
        if check.proof.is_none() && !check.pending && check.upstream_hash.is_none() {
            return Err(absent(resource_type, id, Some(&version), status));
        }
        let parameters = parameters(&check, self.shared.ledger.institution(), audit);
        let body = fhir::serialize(&parameters, format)
            .map_err(|e| ProxyError::Internal(e.to_string()))?;
        Ok(fhir_response(StatusCode::OK, body, format))
    }

    /// `/ledger/…`: `status`, `blocks/{height}`, `proofs/{type}/{id}/{version}`, `verify`.
    /// Access events and fingerprints are shown to principals who audit only; `verify` is theirs
    /// alone.
    pub(crate) async fn ledger_api(
        &self,
        req: &Request<ProxyBody>,
        principal: &Principal,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let auditor = principal.audits;
        if req.method() != Method::GET {
            return Err(ProxyError::Route(RouteError::Method {
                method: req.method().clone(),
                path: format!(
                    "{} (the ledger API is read-only: use GET)",
                    req.uri().path()
                ),
            }));
        }
        let path = req.uri().path().trim_end_matches('/');
        let segments: Vec<&str> = path.split('/').skip(2).collect();
        let ledger = self.shared.ledger.clone();
        let answer = match segments.as_slice() {
            ["status"] => {
                let status = blocking(move || ledger.status()).await?;
                serde_json::to_value(status).map_err(|e| ProxyError::Internal(e.to_string()))?
            }
            ["blocks", height] => {
                let height: u64 = height.parse().map_err(|_| {
                    ProxyError::Invalid(format!("'{height}' is not a block height"))
                })?;
                match blocking(move || ledger.block(height)).await? {
                    Some(block) => block_json(&block, auditor),
                    None => return Err(ProxyError::NotFound(format!("no block at height {height}"))),
                }
            }
            ["proofs", ty, id, version] => {
                let (t, i, v) = (ty.to_string(), id.to_string(), version.to_string());
                let found = blocking(move || {
                    let proof = ledger.proof(&t, &i, &v)?;
                    Ok::<_, ProxyError>(proof.map(|p| {
                        let fault = p.verify(&ledger.roster()).err().map(|e| e.to_string());
                        (p, fault)
                    }))
                })
                .await?;
                match found {
                    Some((proof, fault)) => proof_json(&proof, fault.as_deref(), auditor),
                    None => {
                        return Err(ProxyError::NotFound(format!(
                            "{ty}/{id}/_history/{version} is not anchored"
                        )))
                    }
                }
            }
            ["verify"] => {
                // `Proxy::authorize` let only those who audit this far.
                let check = blocking(move || ledger.verify_chain()).await?;
                match check {
                    ChainCheck::Valid { blocks } => json!({"valid": true, "blocks": blocks}),
                    ChainCheck::Broken { height, fault } => {
                        json!({"valid": false, "height": height, "fault": fault.to_string()})
                    }
                }
            }
            _ => {
                return Err(ProxyError::NotFound(format!(
                    "no ledger endpoint {path}: try /ledger/status, /ledger/blocks/{{height}}, /ledger/proofs/{{type}}/{{id}}/{{version}}, /ledger/verify"
                )))
            }
        };
        let body =
            serde_json::to_vec_pretty(&answer).map_err(|e| ProxyError::Internal(e.to_string()))?;
        let mut response = Response::new(full(Bytes::from(body)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(response)
    }
}

async fn blocking<T: Send + 'static, E: Into<ProxyError> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ProxyError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProxyError::Internal(e.to_string()))?
        .map_err(Into::into)
}

/// The error for a resource or version that neither the upstream nor the ledger knows.
fn absent(resource_type: &str, id: &str, version: Option<&str>, status: StatusCode) -> ProxyError {
    let resource = match version {
        Some(v) => format!("{resource_type}/{id}/_history/{v}"),
        None => format!("{resource_type}/{id}"),
    };
    if status == StatusCode::GONE {
        ProxyError::Gone(format!(
            "{resource} is deleted upstream and was never anchored"
        ))
    } else if status == StatusCode::NOT_FOUND || status.is_client_error() {
        ProxyError::NotFound(format!(
            "{resource} is not known upstream nor on the ledger"
        ))
    } else {
        ProxyError::UpstreamUnavailable(format!("reading {resource} answered {status}"))
    }
}

fn fhir_response(status: StatusCode, body: Vec<u8>, format: Format) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.mime()),
    );
    response
}

fn string(name: &str, value: impl Into<String>) -> Value {
    json!({"name": name, "valueString": value.into()})
}

fn boolean(name: &str, value: bool) -> Value {
    json!({"name": name, "valueBoolean": value})
}

fn unsigned(name: &str, value: u64) -> Value {
    // FHIR's unsignedInt stops at 2^31 - 1; larger values (never seen in practice) as text.
    if value <= i32::MAX as u64 {
        json!({"name": name, "valueUnsignedInt": value})
    } else {
        string(name, value.to_string())
    }
}

fn path_part(name: &str, path: &MerkleProof) -> Value {
    let mut parts = vec![
        unsigned("index", path.index.into()),
        unsigned("count", path.count.into()),
    ];
    parts.extend(path.siblings.iter().map(|s| string("sibling", s.to_hex())));
    json!({"name": name, "part": parts})
}

/// The `Parameters` answer of `$verify`. The fingerprint (and the encoded proof, which holds
/// it) only for those who audit: it links a person's records.
pub fn parameters(check: &VersionCheck, institution: &str, audit: bool) -> Value {
    let mut out = vec![
        string("resource", check.resource()),
        string("institution", institution),
        boolean("verified", check.verified()),
        boolean("anchored", check.proof.is_some()),
    ];
    if check.pending {
        out.push(boolean("pending", true));
    }
    if let Some(matches) = check.upstream_matches() {
        out.push(boolean("upstreamMatches", matches));
    }
    if let Some(hash) = check.upstream_hash {
        out.push(string("upstreamHash", hex(&hash)));
    }
    if let Some(proof) = &check.proof {
        let header = &proof.header;
        out.push(string("anchoredHash", hex(&proof.entry.clinical_hash)));
        if audit {
            out.push(string("fingerprint", hex(&proof.entry.fingerprint)));
        }
        out.push(string("sealedAddress", hex(&proof.entry.sealed_address)));
        out.push(boolean("proofValid", check.proof_fault.is_none()));
        out.push(unsigned("blockHeight", header.height));
        out.push(string("blockHash", header.hash().to_hex()));
        out.push(
            json!({"name": "blockTime", "valueInstant": crate::audit::instant(header.time.0)}),
        );
        out.push(json!({"name": "batch", "part": [
            string("id", hex(&proof.batch.id.0)),
            string("signer", proof.batch.signer.to_string()),
            string("root", proof.batch.root.to_hex()),
            string("signature", hex(&proof.batch.signature.to_bytes())),
        ]}));
        out.push(path_part("entryPath", &proof.entry_path));
        out.push(path_part("transactionPath", &proof.transaction_path));
        let signatures: Vec<Value> = proof
            .certificate
            .signatures()
            .iter()
            .map(|s| {
                json!({"name": "signature", "part": [
                    string("delegate", s.delegate.to_string()),
                    string("value", hex(&s.signature.to_bytes())),
                ]})
            })
            .collect();
        out.push(json!({"name": "finalityCertificate", "part": signatures}));
        if audit {
            out.push(json!({
                "name": "proof",
                "valueBase64Binary": base64::engine::general_purpose::STANDARD.encode(proof.to_bytes()),
            }));
        }
    }
    if let Some(problem) = check.problem() {
        out.push(string("issue", problem));
    }
    json!({"resourceType": "Parameters", "parameter": out})
}

/// A block as JSON: header, certificate, and every transaction with its items; access events
/// and fingerprints only `with_events` (for those who audit; else an access batch says
/// `eventsWithheld` and anchors show no fingerprint).
pub fn block_json(block: &FinalizedBlock, with_events: bool) -> Value {
    let header = block.header();
    let transactions: Vec<Value> = block
        .block
        .transactions
        .iter()
        .map(|tx| {
            let h = tx.header();
            let mut out = json!({
                "kind": match tx { Transaction::Anchor(_) => "anchor", _ => "access" },
                "hash": tx.hash().to_hex(),
                "batch": hex(&h.id.0),
                "institution": h.institution,
                "signer": h.signer.to_string(),
                "count": h.count,
                "root": h.root.to_hex(),
            });
            match tx {
                Transaction::Anchor(batch) => {
                    out["entries"] = batch
                        .entries
                        .iter()
                        .map(|e| {
                            let mut entry = json!({
                                "resource": e.resource(),
                                "sealedAddress": hex(&e.sealed_address),
                                "clinicalHash": hex(&e.clinical_hash),
                            });
                            if with_events {
                                entry["fingerprint"] = json!(hex(&e.fingerprint));
                            }
                            entry
                        })
                        .collect();
                }
                Transaction::Access(_) if !with_events => {
                    out["eventsWithheld"] = json!(true);
                }
                Transaction::Access(batch) => {
                    out["events"] = batch
                        .events
                        .iter()
                        .map(|e| {
                            json!({
                                "principal": e.principal,
                                "resourceType": e.resource_type,
                                "id": e.logical_id,
                                "version": e.version_id,
                                "purposeOfUse": e.purpose_of_use,
                                "time": crate::audit::instant(e.time.0),
                                "reidentified": e.reidentified,
                            })
                        })
                        .collect();
                }
                _ => {}
            }
            out
        })
        .collect();
    json!({
        "height": header.height,
        "hash": header.hash().to_hex(),
        "previous": header.previous.to_hex(),
        "epoch": header.epoch,
        "slot": header.slot,
        "producer": header.producer.to_string(),
        "time": crate::audit::instant(header.time.0),
        "transactionRoot": header.tx_root.to_hex(),
        "transactionCount": header.tx_count,
        "certificate": block.certificate.signatures().iter().map(|s| json!({
            "delegate": s.delegate.to_string(),
            "signature": hex(&s.signature.to_bytes()),
        })).collect::<Vec<_>>(),
        "transactions": transactions,
    })
}

/// An anchor proof as JSON, with its encoding for offline checks; the fingerprint and the
/// encoding (which holds it) only for those who `audit`.
pub fn proof_json(proof: &AnchorProof, fault: Option<&str>, audit: bool) -> Value {
    let path = |p: &MerkleProof| {
        json!({
            "index": p.index,
            "count": p.count,
            "siblings": p.siblings.iter().map(Hash256::to_hex).collect::<Vec<_>>(),
        })
    };
    let mut out = json!({
        "resource": proof.entry.resource(),
        "institution": proof.entry.institution,
        "clinicalHash": hex(&proof.entry.clinical_hash),
        "sealedAddress": hex(&proof.entry.sealed_address),
        "batch": hex(&proof.batch.id.0),
        "entryPath": path(&proof.entry_path),
        "transactionPath": path(&proof.transaction_path),
        "blockHeight": proof.header.height,
        "blockHash": proof.header.hash().to_hex(),
        "valid": fault.is_none(),
        "fault": fault,
    });
    if audit {
        out["fingerprint"] = json!(hex(&proof.entry.fingerprint));
        out["encoded"] = json!(base64::engine::general_purpose::STANDARD.encode(proof.to_bytes()));
    }
    out
}

/// What the `fhirseal ledger` commands work on: a stopped node's ledger and vault (sled lets one
/// process hold a database), and the upstream to check the anchors against.
#[derive(Debug)]
pub struct LedgerTool {
    proxy: Proxy,
}

/// How many versions one batch read asks the upstream for.
const CHECK_BATCH: usize = 64;

impl LedgerTool {
    /// Opens the node's data directory; refused when it holds no ledger or when the node runs.
    pub async fn open(config: &Config) -> Result<LedgerTool, ServerError> {
        let dir = ledger_dir(config);
        if !dir.exists() {
            return Err(ServerError::Start(format!(
                "there is no ledger in {}: has fhirseal run with this data directory?",
                dir.display()
            )));
        }
        // A running node holds its databases: say so, and what to use while it runs.
        if let Err(e) = ChainStore::open_dir(&dir, &config.seal.institution) {
            return Err(match e {
                ChainStoreError::Locked(_) => ServerError::Start(format!(
                    "{} is in use by a running fhirseal: stop it first (while it runs, GET \
                     /ledger/status, /ledger/verify and [type]/[id]/$verify answer)",
                    config.data_dir.display()
                )),
                other => LedgerError::from(other).into(),
            });
        }
        let (sealing, opened) = open_node(config).await?;
        // The anchorer is not run: these commands read, they do not anchor.
        drop(opened.anchorer);
        let proxy = Proxy::new(
            config,
            false,
            sealing,
            opened.ledger,
            ApiKeyTable::default(),
        )?;
        Ok(LedgerTool { proxy })
    }

    /// The ledger.
    pub fn ledger(&self) -> &NodeLedger {
        &self.proxy.shared.ledger
    }

    /// Re-verifies the chain from genesis, calling `progress` with each verified height.
    pub fn verify_chain(&self, progress: impl FnMut(u64)) -> Result<ChainCheck, LedgerError> {
        let ledger = self.ledger();
        Ok(Chain::verify_store_with(
            ledger.reader().store(),
            &*ledger.roster(),
            progress,
        )?)
    }

    /// Every version this institution anchored, in chain order.
    pub fn anchored_versions(&self) -> Result<Vec<(String, String, String)>, LedgerError> {
        let ledger = self.ledger();
        let blocks = ledger.reader().tip_height()?.map_or(0, |h| h + 1);
        let mut out = Vec::new();
        for height in 0..blocks {
            let Some(block) = ledger.block(height)? else {
                continue;
            };
            for tx in block.block.transactions {
                if let Transaction::Anchor(batch) = tx {
                    out.extend(
                        batch
                            .entries
                            .into_iter()
                            .filter(|e| e.institution == ledger.institution())
                            .map(|e| (e.resource_type, e.logical_id, e.version_id)),
                    );
                }
            }
        }
        Ok(out)
    }

    /// Checks that the upstream's current version of each resource is anchored (a version
    /// written behind fhirseal's back is not), calling `progress` with how many are done.
    pub async fn check_current(
        &self,
        resources: &[(String, String)],
        mut progress: impl FnMut(usize),
    ) -> Result<Vec<CurrentCheck>, ProxyError> {
        let ledger = self.ledger();
        let mut out = Vec::with_capacity(resources.len());
        for chunk in resources.chunks(CHECK_BATCH) {
            let urls: Vec<String> = chunk.iter().map(|(t, i)| format!("{t}/{i}")).collect();
            let stored = self.proxy.read_versions(&urls).await?;
            for ((t, i), (status, value)) in chunk.iter().zip(stored) {
                let current_version = value
                    .as_ref()
                    .and_then(|v| v.pointer("/meta/versionId"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let anchored = match &current_version {
                    Some(v) => ledger.proof(t, i, v)?.is_some() || ledger.is_pending(t, i, v)?,
                    None => false,
                };
                out.push(CurrentCheck {
                    resource_type: t.clone(),
                    id: i.clone(),
                    upstream_status: status,
                    current_version,
                    anchored,
                });
            }
            progress(out.len());
        }
        Ok(out)
    }

    /// Checks each version against the upstream's copy (batches of reads), calling `progress`
    /// with how many are done.
    pub async fn check_upstream(
        &self,
        versions: &[(String, String, String)],
        mut progress: impl FnMut(usize),
    ) -> Result<Vec<VersionCheck>, ProxyError> {
        let mut out = Vec::with_capacity(versions.len());
        for chunk in versions.chunks(CHECK_BATCH) {
            let urls: Vec<String> = chunk
                .iter()
                .map(|(t, i, v)| format!("{t}/{i}/_history/{v}"))
                .collect();
            let stored = self.proxy.read_versions(&urls).await?;
            for ((t, i, v), (status, value)) in chunk.iter().zip(stored) {
                out.push(ledger_check(
                    self.ledger(),
                    t,
                    i,
                    v,
                    value.as_ref(),
                    status,
                )?);
            }
            progress(out.len());
        }
        Ok(out)
    }
}
