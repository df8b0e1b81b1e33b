//! What the sidecar answers itself from the ledger: `$verify` (FHIR `Parameters`) and the
//! `/ledger/…` JSON API. The checks and their rendering are `crate::verify`'s.

use bytes::Bytes;
use fhirseal_adapters::auth::Principal;
use fhirseal_adapters::policy::{Needs, Permission};
use fhirseal_adapters::{fhir, Format, Interaction, RouteError};
use fhirseal_consensus::ChainCheck;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::deps::{blocking, Deps};
use super::verify_request::{
    one_institution, query_institution, VerifyPath, VerifyRequest, VERIFY,
};
use crate::body::{full, ProxyBody};
use crate::error::ProxyError;
use crate::verify::{
    absent, block_json, fhir_response, ledger_check, parameters, proof_json, Compared, VersionCheck,
};

/// `$verify`: whether a member anchored a version, the proof of it from this node's copy of the
/// shared chain, and whether a copy of it still hashes to what was anchored.
///
/// - `GET [type]/[id][/_history/[vid]]/$verify`: this institution's write (no version: the
///   upstream's current one), compared with the upstream's copy.
/// - the same with `?institution=M`, M another member: M's write (no version: the latest M
///   anchored), proven from the chain alone; the content is not compared (M's FHIR server is
///   not this node's to read) and the answer says so.
/// - `POST` (on a resource, a version, a type or the system) with a `Parameters` body of
///   `institution` (default: this one) and `resource`: that copy, canonicalized as its writer
///   canonicalized it, compared with what the member anchored.
///
/// A member the consortium never had is 400; a version the member did not anchor is answered
/// `anchored: false`, except this institution's own that its upstream does not hold either
/// (404, as before).
pub(super) async fn verify_operation(
    deps: &Deps,
    req: &Request<ProxyBody>,
    path: VerifyPath<'_>,
    body: Option<VerifyRequest>,
    audit: bool,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (method, query) = (req.method(), req.uri().query());
    let format = Format::negotiate(query, req.headers());
    let asked = query_institution(query)?;
    let supplied = match (method, body) {
        (&Method::GET, _) => None,
        (&Method::POST, Some(body)) => Some(body),
        (&Method::POST, None) => {
            return Err(ProxyError::Invalid(
                "a POST $verify carries a Parameters body: 'resource' (the copy to compare) and 'institution' (the member that wrote it)".to_owned(),
            ))
        }
        _ => {
            return Err(ProxyError::Route(RouteError::Method {
                method: method.clone(),
                path: "$verify (GET to prove a version, POST to compare a copy)".to_owned(),
            }))
        }
    };
    let own = deps.ledger.institution();
    let named = one_institution(asked, supplied.as_ref().and_then(|s| s.institution.clone()))?;
    let institution = writer(deps, named)?;
    let check = match supplied {
        Some(request) => {
            let target = request.target(path)?;
            let compared = blocking(move || Compared::supplied(&request.resource)).await?;
            let named = (target.resource_type, target.id, target.version);
            member_write(deps, institution, named, compared).await?
        }
        None if institution == own => own_write(deps, resource_of(path)?).await?,
        None => {
            let (ty, id, version) = resource_of(path)?;
            let named = (ty.to_owned(), id.to_owned(), version.map(str::to_owned));
            member_write(deps, institution, named, Compared::Nothing).await?
        }
    };
    let parameters = parameters(&check, audit.then_some(own));
    let body =
        fhir::serialize(&parameters, format).map_err(|e| ProxyError::Internal(e.to_string()))?;
    Ok(fhir_response(StatusCode::OK, body, format))
}

/// `institution`'s version (none named: the latest it anchored) checked from this node's copy
/// of the chain, its anchored hash against `compared`.
async fn member_write(
    deps: &Deps,
    institution: String,
    (resource_type, id, version): (String, String, Option<String>),
    compared: Compared,
) -> Result<VersionCheck, ProxyError> {
    let ledger = deps.ledger.clone();
    blocking(move || {
        let version = match version {
            Some(v) => Some(v),
            None => ledger.latest_anchored(&institution, &resource_type, &id)?,
        };
        let named = (resource_type.as_str(), id.as_str(), version.as_deref());
        ledger_check(&ledger, &institution, named, compared)
    })
    .await
}

/// This institution's version (no version: the upstream's current one) checked against the
/// upstream's copy.
async fn own_write(
    deps: &Deps,
    (resource_type, id, version): (&str, &str, Option<&str>),
) -> Result<VersionCheck, ProxyError> {
    let base = &deps.upstream.base;
    let url = match version {
        Some(v) => format!("{base}/{resource_type}/{id}/_history/{v}"),
        None => format!("{base}/{resource_type}/{id}"),
    };
    let (status, current) = deps.upstream.json(Method::GET, &url, None).await?;
    let stored = (status == StatusCode::OK).then_some(current);
    let version = match (version, &stored) {
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
    let check = blocking(move || {
        let compared = Compared::upstream(stored.as_ref(), status)?;
        ledger_check(
            &ledger,
            ledger.institution(),
            (&ty, &id_owned, Some(&v)),
            compared,
        )
    })
    .await?;
    if check.proof.is_none()
        && !check.pending
        && matches!(check.compared, Compared::Upstream { hash: None, .. })
    {
        return Err(absent(resource_type, id, Some(&version), status));
    }
    Ok(check)
}

/// The resource a `GET $verify` names: one on a type or the system names none.
fn resource_of(path: VerifyPath<'_>) -> Result<(&str, &str, Option<&str>), ProxyError> {
    match path {
        VerifyPath {
            resource_type: Some(resource_type),
            id: Some(id),
            version,
        } => Ok((resource_type, id, version)),
        _ => Err(ProxyError::Invalid(
            "a GET $verify names a resource: [type]/[id]/$verify or [type]/[id]/_history/[vid]/$verify (POST a copy to [type]/$verify or $verify)".to_owned(),
        )),
    }
}

/// `/ledger/…`: `status`, `blocks/{height}`, `proofs/{type}/{id}/{version}[?institution=M]`
/// (this institution's write, or member M's), `verify`. Access events and fingerprints are
/// shown to principals who audit this institution only; `verify` is theirs alone.
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
            let sealing = deps.sealing.clone();
            let (status, unsettled) = blocking(move || {
                let status = ledger.status()?;
                Ok::<_, ProxyError>((status, sealing.unsettled_writes()?))
            })
            .await?;
            let mut status =
                serde_json::to_value(status).map_err(|e| ProxyError::Internal(e.to_string()))?;
            // Writes whose outcome the vault does not know yet (in flight, or left by a crash
            // for the `recover` phase).
            status["unsettledWrites"] = json!(unsettled);
            status
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
            // `?institution=M`: member M's write, from this node's copy of the chain.
            let institution = writer(deps, proof_institution(req.uri().query())?)?;
            // Fingerprints only of this institution's writes, to those who audit it.
            let auditor = auditor && institution == ledger.institution();
            let writer = institution.clone();
            let (t, i, v) = (ty.to_string(), id.to_string(), version.to_string());
            let found = blocking(move || {
                let proof = ledger.proof_of(&institution, &t, &i, &v)?;
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
                        "{ty}/{id}/_history/{version} is not anchored by {writer}"
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
                "no ledger endpoint {path}: try /ledger/status, /ledger/blocks/{{height}}, /ledger/proofs/{{type}}/{{id}}/{{version}}[?institution=member], /ledger/verify"
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

/// What a `/ledger/…` request needs: re-verifying the chain is for those who audit; the rest
/// is open to every principal (what they see of it depends on `audit`).
pub(super) fn ledger_needs(path: &str) -> Needs {
    let mut needs = Needs::default();
    if path.trim_end_matches('/') == "/ledger/verify" {
        needs.permissions.insert(Permission::Audit);
    }
    needs
}

/// The member a `/ledger/proofs` query names (`institution=`, once); other parameters are
/// ignored, as every ledger endpoint ignores its query.
fn proof_institution(query: Option<&str>) -> Result<Option<String>, ProxyError> {
    let mut named = None;
    for (name, value) in fhirseal_adapters::search::params(query.unwrap_or("")) {
        if name != "institution" {
            continue;
        }
        if value.is_empty() || named.replace(value).is_some() {
            return Err(ProxyError::Invalid(
                "institution names the member that wrote the resource, once".to_owned(),
            ));
        }
    }
    Ok(named)
}

/// The member whose write a `$verify` looks at, when another than this node's (named in its
/// query or its body): the request's access event names it, so that the resource the event
/// names is not taken for one of this node's. `None` for any other request, and for a
/// `$verify` whose naming is refused or names no member (it is answered 400).
pub(super) fn verify_writer(
    deps: &Deps,
    interaction: &Interaction,
    query: Option<&str>,
    body: Option<&VerifyRequest>,
) -> Option<String> {
    verify_target(interaction)?;
    let asked = query_institution(query).ok()?;
    let named = one_institution(asked, body.and_then(|b| b.institution.clone())).ok()?;
    writer(deps, named)
        .ok()
        .filter(|writer| writer != deps.ledger.institution())
}

/// The member whose write a request asks about: the one it `named`, or this institution when
/// it named none. A name the consortium never had is refused.
fn writer(deps: &Deps, named: Option<String>) -> Result<String, ProxyError> {
    let own = deps.ledger.institution();
    match named {
        Some(named) if named != own && !deps.ledger.knows_member(&named) => {
            Err(ProxyError::Invalid(format!(
                "'{named}' is not a member of this consortium: institution names the member that wrote the resource"
            )))
        }
        Some(named) => Ok(named),
        None => Ok(own.to_owned()),
    }
}

/// What a `$verify` names, at any level; `None` for every other interaction.
pub(super) fn verify_target(interaction: &Interaction) -> Option<VerifyPath<'_>> {
    use Interaction as I;
    let (path, name) = match interaction {
        I::OperationSystem { name } => (VerifyPath::default(), name),
        I::OperationType {
            resource_type,
            name,
        } => (
            VerifyPath {
                resource_type: Some(resource_type),
                ..VerifyPath::default()
            },
            name,
        ),
        I::OperationInstance {
            resource_type,
            id,
            name,
        } => (
            VerifyPath {
                resource_type: Some(resource_type),
                id: Some(id),
                version: None,
            },
            name,
        ),
        I::OperationVersion {
            resource_type,
            id,
            version,
            name,
        } => (
            VerifyPath {
                resource_type: Some(resource_type),
                id: Some(id),
                version: Some(version),
            },
            name,
        ),
        _ => return None,
    };
    (name == VERIFY).then_some(path)
}
