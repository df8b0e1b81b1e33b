//! Verification against the ledger: what checking one version finds ([`VersionCheck`]), and
//! how `$verify` (FHIR `Parameters`) and the `/ledger/…` API (JSON) render checks, blocks and
//! proofs. The proxy answers those requests (`proxy::ledger_api`); `fhirseal ledger` reads
//! through the ledger tool (`ledger_tool.rs`).
//!
//! A version is *verified* when it is anchored, its proof checks against the roster (entry →
//! batch root → signed batch → block transaction root → finality certificate), and the
//! upstream's copy of it, canonicalized, still hashes to the anchored clinical hash. Anything
//! else is reported with the reason, so that a database changed behind the sidecar's back shows.

use base64::Engine as _;
use bytes::Bytes;
use fhirseal_adapters::{canonical, Format};
use fhirseal_consensus::{AnchorProof, FinalizedBlock, Hash256, MerkleProof, Transaction};
use fhirseal_storage::keys::hex;
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::{json, Value};

use crate::body::{full, ProxyBody};
use crate::error::ProxyError;
use crate::ledger::NodeLedger;

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
        .and_then(|p| ledger.check_proof(p).err().map(|e| e.to_string()));
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

/// The error for a resource or version that neither the upstream nor the ledger knows.
pub(crate) fn absent(
    resource_type: &str,
    id: &str,
    version: Option<&str>,
    status: StatusCode,
) -> ProxyError {
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

pub(crate) fn fhir_response(
    status: StatusCode,
    body: Vec<u8>,
    format: Format,
) -> Response<ProxyBody> {
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
        // The commit certificate: the round the block was decided in, and each delegate's
        // precommit of (chain, height, round, block hash).
        let mut certificate = vec![unsigned("round", proof.certificate.round.0.into())];
        certificate.extend(proof.certificate.signatures().iter().map(|s| {
            json!({"name": "signature", "part": [
                string("delegate", s.delegate.to_string()),
                string("value", hex(&s.signature.to_bytes())),
            ]})
        }));
        out.push(json!({"name": "finalityCertificate", "part": certificate}));
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

/// A block as JSON: header, certificate, and every transaction with its items. Access events
/// and fingerprints only of the institution `audited_by` names (those who audit see their own
/// institution's; else an access batch says `eventsWithheld` and anchors show no fingerprint):
/// the chain is the consortium's, and another member's audit trail is not this one's to show.
pub fn block_json(block: &FinalizedBlock, audited_by: Option<&str>) -> Value {
    let header = block.header();
    let transactions: Vec<Value> = block
        .block
        .transactions
        .iter()
        .map(|tx| {
            let h = tx.header();
            let with_events = audited_by == Some(h.institution.as_str());
            let mut out = json!({
                "kind": match tx {
                    Transaction::Anchor(_) => "anchor",
                    Transaction::Access(_) => "access",
                    _ => "evidence",
                },
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
                Transaction::Evidence(batch) => {
                    out["evidence"] = batch
                        .items
                        .iter()
                        .map(|e| {
                            json!({
                                "offender": e.offender().to_string(),
                                "height": e.height(),
                                "kind": match e {
                                    fhirseal_consensus::bft::Evidence::DoubleVote(..) => "double vote",
                                    fhirseal_consensus::bft::Evidence::DoubleProposal(..) => "double proposal",
                                },
                                "encoded": base64::engine::general_purpose::STANDARD.encode(e.to_bytes()),
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
        "nextEpoch": header.next_epoch,
        "producer": header.producer.to_string(),
        "time": crate::audit::instant(header.time.0),
        "transactionRoot": header.tx_root.to_hex(),
        "transactionCount": header.tx_count,
        "certificate": certificate_json(&block.certificate),
        "transactions": transactions,
    })
}

/// A commit certificate as JSON: the round it was decided in and each delegate's precommit.
fn certificate_json(certificate: &fhirseal_consensus::CommitCertificate) -> Value {
    json!({
        "height": certificate.height,
        "round": certificate.round.0,
        "block": certificate.block.to_hex(),
        "precommits": certificate.signatures().iter().map(|s| json!({
            "delegate": s.delegate.to_string(),
            "signature": hex(&s.signature.to_bytes()),
        })).collect::<Vec<_>>(),
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
