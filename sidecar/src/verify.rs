//! Verification against the ledger: what checking one version finds ([`VersionCheck`]), and
//! how `$verify` (FHIR `Parameters`) and the `/ledger/…` API (JSON) render checks, blocks and
//! proofs. The proxy answers those requests (`proxy::ledger_api`); `fhirseal ledger` reads
//! through the ledger tool (`ledger_tool.rs`).
//!
//! A version is *verified* when it is anchored by the member that wrote it, its proof checks
//! against the roster (entry → batch root → signed batch → block transaction root → finality
//! certificate), and the copy it is compared with, canonicalized, still hashes to the anchored
//! clinical hash ([`Compared`]): this institution's upstream for its own writes, or the copy a
//! client sent. Another member's write proven from this node's copy of the shared chain alone
//! is verified without its content compared, and says so. Anything else is reported with the
//! reason, so that a database changed behind the sidecar's back shows.

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

/// What the anchored clinical hash is compared with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compared {
    /// This institution's upstream's copy: its hash (`None` when the upstream does not return
    /// it), and how the upstream answered the read.
    Upstream {
        hash: Option<[u8; 32]>,
        status: StatusCode,
    },
    /// The copy a client sent (`POST $verify`), canonicalized as its writer canonicalized it.
    Supplied { hash: [u8; 32] },
    /// Nothing: another member's write, proven from this node's copy of the chain; that
    /// member's FHIR server is not this node's to read.
    Nothing,
}

impl Compared {
    /// The upstream's copy (`None` when it does not return the version) and its answer.
    pub fn upstream(copy: Option<&Value>, status: StatusCode) -> Result<Self, ProxyError> {
        let hash = copy
            .map(canonical::clinical_hash)
            .transpose()
            .map_err(|e| ProxyError::UpstreamBody(format!("the stored resource: {e}")))?;
        Ok(Compared::Upstream { hash, status })
    }

    /// The copy a client sent.
    pub fn supplied(copy: &Value) -> Result<Self, ProxyError> {
        let hash = canonical::clinical_hash(copy)
            .map_err(|e| ProxyError::Invalid(format!("the resource sent: {e}")))?;
        Ok(Compared::Supplied { hash })
    }
}

/// What verifying one version found.
#[derive(Debug, Clone)]
pub struct VersionCheck {
    /// The member whose write it is.
    pub institution: String,
    pub resource_type: String,
    pub id: String,
    /// `None` when none was named and the member anchored no version of the resource.
    pub version: Option<String>,
    /// The proof, when the version is anchored.
    pub proof: Option<AnchorProof>,
    /// Why the proof does not check, when it does not.
    pub proof_fault: Option<String>,
    /// Whether the version waits in this node's outbox (written here, its block not final yet).
    pub pending: bool,
    /// What the anchored hash is compared with.
    pub compared: Compared,
    /// When the member that anchored it erased the person's identity (milliseconds since the
    /// Unix epoch, the time of the erasure's block), if it did.
    pub erased: Option<u64>,
}

impl VersionCheck {
    /// Whether the copy compared matches what was anchored; `None` when the version is not
    /// anchored or nothing is compared.
    pub fn content_matches(&self) -> Option<bool> {
        let anchored = self.proof.as_ref()?.entry.clinical_hash;
        match &self.compared {
            Compared::Upstream { hash, .. } => Some(*hash == Some(anchored)),
            Compared::Supplied { hash } => Some(*hash == anchored),
            Compared::Nothing => None,
        }
    }

    /// Anchored, proven, and, where a copy is compared, unchanged.
    pub fn verified(&self) -> bool {
        self.proof.is_some() && self.proof_fault.is_none() && self.content_matches() != Some(false)
    }

    /// Why it is not verified, in words; `None` when it is.
    pub fn problem(&self) -> Option<String> {
        let (resource, institution) = (self.resource(), &self.institution);
        if self.proof.is_none() {
            return Some(match &self.compared {
                _ if self.pending => format!("{resource} is written and waits for its block"),
                Compared::Upstream { .. } => format!(
                    "{resource} is not anchored on the ledger: it was not written through fhirseal"
                ),
                _ => format!(
                    "{resource} is not anchored by {institution} on this node's copy of the chain (a write just made waits a moment for its block)"
                ),
            });
        }
        if let Some(fault) = &self.proof_fault {
            return Some(format!(
                "the ledger's proof for {resource} does not check: {fault}"
            ));
        }
        match (&self.compared, self.content_matches()) {
            (_, Some(true)) | (Compared::Nothing, _) => None,
            (Compared::Upstream { hash: None, status }, _) => Some(format!(
                "the upstream does not return {resource} (it answered {status})"
            )),
            (Compared::Upstream { .. }, _) => Some(format!(
                "the upstream's {resource} differs from what was anchored: it was changed behind fhirseal"
            )),
            (Compared::Supplied { .. }, _) => Some(format!(
                "the resource sent differs from {resource} as {institution} anchored it: it is not that version as written through fhirseal"
            )),
        }
    }

    /// `Type/id/_history/version`, or `Type/id` when no version is known.
    pub fn resource(&self) -> String {
        match &self.version {
            Some(v) => format!("{}/{}/_history/{v}", self.resource_type, self.id),
            None => format!("{}/{}", self.resource_type, self.id),
        }
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

/// The ledger's side of a check of `institution`'s version (none: it anchored no version of the
/// resource): proof (checked), whether it waits in this node's outbox (this node's own writes
/// only), and what it is `compared` with.
pub fn ledger_check(
    ledger: &NodeLedger,
    institution: &str,
    (resource_type, id, version): (&str, &str, Option<&str>),
    compared: Compared,
) -> Result<VersionCheck, ProxyError> {
    let proof = match version {
        Some(v) => ledger.proof_of(institution, resource_type, id, v)?,
        None => None,
    };
    let proof_fault = proof
        .as_ref()
        .and_then(|p| ledger.check_proof(p).err().map(|e| e.to_string()));
    let pending = match version {
        Some(v) if proof.is_none() && institution == ledger.institution() => {
            ledger.is_pending(resource_type, id, v)?
        }
        _ => false,
    };
    let erased = match &proof {
        Some(p) if p.entry.fingerprint != [0; 32] => ledger
            .reader()
            .erasure(institution, &p.entry.fingerprint)
            .map_err(crate::ledger::LedgerError::from)?
            .map(|at| at.0),
        _ => None,
    };
    Ok(VersionCheck {
        institution: institution.to_owned(),
        resource_type: resource_type.to_owned(),
        id: id.to_owned(),
        version: version.map(str::to_owned),
        proof,
        proof_fault,
        pending,
        compared,
        erased,
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
            "{resource} is not known upstream nor anchored by this institution: another member's write is verified with $verify?institution=<member>"
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
/// it) only for those who audit the institution that wrote the version, `audited_by` (as
/// [`block_json`] shows anchors): it links a person's records, and another member's
/// fingerprints are not this one's to show.
pub fn parameters(check: &VersionCheck, audited_by: Option<&str>) -> Value {
    let audit = audited_by == Some(check.institution.as_str());
    let mut out = vec![
        string("resource", check.resource()),
        string("institution", check.institution.clone()),
        boolean("verified", check.verified()),
        boolean("anchored", check.proof.is_some()),
    ];
    if check.pending {
        out.push(boolean("pending", true));
    }
    let matches = check.content_matches();
    match &check.compared {
        Compared::Upstream { hash, .. } => {
            out.extend(matches.map(|m| boolean("upstreamMatches", m)));
            out.extend(hash.map(|h| string("upstreamHash", hex(&h))));
        }
        Compared::Supplied { hash } => {
            out.extend(matches.map(|m| boolean("suppliedMatches", m)));
            out.push(string("suppliedHash", hex(hash)));
        }
        Compared::Nothing => {}
    }
    out.push(boolean(
        "contentCompared",
        !matches!(check.compared, Compared::Nothing),
    ));
    if check.compared == Compared::Nothing && check.proof.is_some() {
        out.push(string(
            "note",
            format!(
                "the content was not compared: {} anchored this version, and its FHIR server is not this node's to read; POST the copy it serves to $verify to compare it",
                check.institution
            ),
        ));
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
    if let Some(at) = check.erased {
        out.push(boolean("identityErased", true));
        out.push(json!({"name": "identityErasedAt", "valueInstant": crate::audit::instant(at)}));
        out.push(string(
            "identity",
            format!(
                "identity erased: {} destroyed the person's key; the anchor stands, the identity can no longer be decrypted",
                check.institution
            ),
        ));
    }
    if let Some(problem) = check.problem() {
        out.push(string("issue", problem));
    }
    json!({"resourceType": "Parameters", "parameter": out})
}

/// A grant as JSON (times as instants; a 0 start or expiry left out).
pub fn grant_json(grant: &fhirseal_consensus::Grant) -> Value {
    let mut out = json!({
        "consent": grant.consent,
        "version": grant.version,
        "fingerprint": hex(&grant.fingerprint),
        "grantee": grant.grantee,
        "purposes": grant.purposes,
        "resourceTypes": grant.resource_types,
    });
    if !grant.grantee_role.is_empty() {
        out["granteeRole"] = json!(grant.grantee_role);
    }
    if grant.not_before.0 != 0 {
        out["notBefore"] = json!(crate::audit::instant(grant.not_before.0));
    }
    if grant.expiry.0 != 0 {
        out["expiry"] = json!(crate::audit::instant(grant.expiry.0));
    }
    out
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
            let mut out = json!({
                "kind": match tx {
                    Transaction::Anchor(_) => "anchor",
                    Transaction::Access(_) => "access",
                    Transaction::Grant(_) => "grant",
                    Transaction::Revocation(_) => "revocation",
                    Transaction::Erasure(_) => "erasure",
                    Transaction::Election(_) => "election",
                    Transaction::Ballot(_) => "ballot",
                    Transaction::LastCommit(_) => "lastCommit",
                    _ => "evidence",
                },
                "hash": tx.hash().to_hex(),
            });
            let with_events = match tx.header() {
                Some(h) => {
                    out["batch"] = json!(hex(&h.id.0));
                    out["institution"] = json!(h.institution);
                    out["signer"] = json!(h.signer.to_string());
                    out["count"] = json!(h.count);
                    out["root"] = json!(h.root.to_hex());
                    audited_by == Some(h.institution.as_str())
                }
                None => false,
            };
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
                            let mut event = json!({
                                "principal": e.principal,
                                "resourceType": e.resource_type,
                                "id": e.logical_id,
                                "version": e.version_id,
                                "purposeOfUse": e.purpose_of_use,
                                "time": crate::audit::instant(e.time.0),
                                "reidentified": e.reidentified,
                            });
                            if let Some(exchange) = &e.exchange {
                                event["exchange"] = json!({
                                    "kind": exchange.kind.name(),
                                    "member": exchange.peer,
                                });
                            }
                            event
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
                Transaction::Election(batch) => {
                    out["beacon"] = batch
                        .items
                        .iter()
                        .map(|item| match item {
                            fhirseal_consensus::ElectionItem::Commit { epoch, commitment } => {
                                json!({"epoch": epoch, "commitment": hex(commitment)})
                            }
                            fhirseal_consensus::ElectionItem::Reveal { epoch, reveal } => {
                                json!({"epoch": epoch, "output": hex(&reveal.output)})
                            }
                        })
                        .collect();
                }
                Transaction::LastCommit(commit) => {
                    out["lastCommit"] = certificate_json(commit);
                }
                // Consent is every member's to see; the person appears as a fingerprint only.
                Transaction::Grant(batch) => {
                    out["grants"] = batch.items.iter().map(grant_json).collect();
                }
                Transaction::Revocation(batch) => {
                    out["revocations"] = batch
                        .items
                        .iter()
                        .map(|r| json!({"consent": r.consent, "request": r.request}))
                        .collect();
                }
                // An erasure names its request to all; the person's fingerprint, as an
                // anchor's, only to who audits the institution.
                Transaction::Erasure(batch) => {
                    out["erasures"] = batch
                        .items
                        .iter()
                        .map(|e| {
                            let mut item = json!({"request": e.request});
                            if with_events {
                                item["fingerprint"] = json!(hex(&e.fingerprint));
                            }
                            item
                        })
                        .collect();
                }
                // A ballot names its candidate and epoch; nothing in it names the voter.
                Transaction::Ballot(ballot) => {
                    out["epoch"] = json!(ballot.epoch);
                    out["candidate"] = json!(ballot.candidate);
                    out["keyImage"] = json!(hex(&ballot.signature.key_image));
                    out["ring"] = json!(ballot.signature.responses.len());
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
