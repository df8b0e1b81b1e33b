//! What the sidecar answers itself from the ledger: `$verify` (FHIR `Parameters`) and the
//! `/ledger/…` JSON API. The checks and their rendering are `crate::verify`'s.

use bytes::Bytes;
use fhirseal_adapters::auth::Principal;
use fhirseal_adapters::policy::{Needs, Permission};
use fhirseal_adapters::{fhir, Format, Interaction, RouteError};
use fhirseal_consensus::ChainCheck;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::deps::Deps;
use crate::body::{full, ProxyBody};
use crate::error::ProxyError;
use crate::verify::{absent, block_json, fhir_response, ledger_check, parameters, proof_json};

/// The name of the operation.
pub(crate) const VERIFY: &str = "verify";

/// `$verify` on a resource (its current version) or on one version.
pub(super) async fn verify_operation(
    deps: &Deps,
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
    let base = &deps.upstream.base;
    let url = match version {
        Some(v) => format!("{base}/{resource_type}/{id}/_history/{v}"),
        None => format!("{base}/{resource_type}/{id}"),
    };
    let (status, current) = deps.upstream.json(Method::GET, &url, None).await?;
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
    let ledger = deps.ledger.clone();
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
    let parameters = parameters(&check, deps.ledger.institution(), audit);
    let body =
        fhir::serialize(&parameters, format).map_err(|e| ProxyError::Internal(e.to_string()))?;
    Ok(fhir_response(StatusCode::OK, body, format))
}

/// `/ledger/…`: `status`, `blocks/{height}`, `proofs/{type}/{id}/{version}`, `verify`.
/// Access events and fingerprints are shown to principals who audit only; `verify` is theirs
/// alone.
pub(super) async fn ledger_api(
    deps: &Deps,
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
    let ledger = deps.ledger.clone();
    let answer = match segments.as_slice() {
        ["status"] => {
            let status = blocking(move || ledger.status()).await?;
            serde_json::to_value(status).map_err(|e| ProxyError::Internal(e.to_string()))?
        }
        ["blocks", height] => {
            let height: u64 = height.parse().map_err(|_| {
                ProxyError::Invalid(format!("'{height}' is not a block height"))
            })?;
            let reader = ledger.clone();
            match blocking(move || reader.block(height)).await? {
                Some(block) => block_json(&block, auditor.then_some(ledger.institution())),
                None => return Err(ProxyError::NotFound(format!("no block at height {height}"))),
            }
        }
        ["proofs", ty, id, version] => {
            let (t, i, v) = (ty.to_string(), id.to_string(), version.to_string());
            let found = blocking(move || {
                let proof = ledger.proof(&t, &i, &v)?;
                Ok::<_, ProxyError>(proof.map(|p| {
                    let fault = ledger.check_proof(&p).err().map(|e| e.to_string());
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

async fn blocking<T: Send + 'static, E: Into<ProxyError> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ProxyError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProxyError::Internal(e.to_string()))?
        .map_err(Into::into)
}

/// What a `/ledger/…` request needs: re-verifying the chain is for those who audit; the rest
/// is open to every principal (what they see of it depends on `audit`).
pub(super) fn ledger_needs(path: &str) -> Needs {
    let mut needs = Needs::default();
    if path.trim_end_matches('/') == "/ledger/verify" {
        needs.permissions.insert(Permission::Audit);
    }
    needs
}

/// The (type, id, version) a `$verify` names.
pub(super) fn verify_target(interaction: &Interaction) -> Option<(&str, &str, Option<&str>)> {
    match interaction {
        Interaction::OperationInstance {
            resource_type,
            id,
            name,
        } if name == VERIFY => Some((resource_type, id, None)),
        Interaction::OperationVersion {
            resource_type,
            id,
            version,
            name,
        } if name == VERIFY => Some((resource_type, id, Some(version))),
        _ => None,
    }
}
