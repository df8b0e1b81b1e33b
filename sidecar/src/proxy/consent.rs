//! The `consent` phases: a FHIR `Consent` written through the sidecar becomes a grant on the
//! consortium's chain, signed by this institution, and one made inactive or deleted a
//! revocation (see `fhirseal_consensus::grant`; what a `Consent` must say is
//! `fhirseal_adapters::consent`).
//!
//! Fail closed, both ways. A grant is submitted once the upstream has stored the `Consent`
//! (its id and version name the grant), so a crash in between leaves a stored `Consent` that
//! grants nothing until it is written again. A revocation is final before the upstream sees
//! the update or delete, so a crash in between leaves a `Consent` that still reads active but
//! grants nothing; new terms for a `Consent` in force revoke the old grant first, so that
//! narrower terms hold even when the new grant is never signed. Either way the answer waits
//! for the block: a grant or revocation takes effect at the block that finalizes it, and the
//! client is told only then.
//!
//! Only whole-resource writes by id carry consent: a `Consent` patched, written conditionally
//! or inside a batch or transaction is refused, since its grant follows from the whole
//! resource and the request's outcome.

use fhirseal_adapters::consent::{self, ConsentTerms};
use fhirseal_adapters::policy::Permission;
use fhirseal_adapters::Interaction;
use fhirseal_consensus::{
    BatchId, Grant, GrantBatch, Revocation, RevocationBatch, Timestamp, Transaction,
};
use http::Response;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::commit::location_from_headers;
use super::ctx::RequestCtx;
use super::deps::{blocking, Deps};
use super::plan::{Planned, RequestBody};
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::ledger::LedgerError;

/// What a request's `Consent` asks of the chain once the upstream has stored it.
#[derive(Debug)]
pub(crate) enum ConsentPlan {
    /// Nothing: no `Consent` is written, or one that grants nothing (a revocation it asked
    /// for is final already).
    Nothing,
    /// Grants to sign once the upstream has stored the `Consent` (its id and version).
    Grant {
        terms: consent::Grant,
        fingerprint: [u8; 32],
    },
}

/// Before forwarding: reads a `Consent` the request writes, checks what it grants (the
/// patient is one this node sealed, the grantees are other members), and finalizes the
/// revocation an update to an inactive `Consent` or a delete asks for.
pub(crate) async fn consent_request(
    deps: &Deps,
    ctx: &RequestCtx,
    planned: &Planned,
) -> Result<ConsentPlan, ProxyError> {
    let consent_type = |t: &str| t == "Consent";
    let body = match &planned.body {
        RequestBody::Resource(value) => Some(value),
        _ => None,
    };
    let (id, terms) = match &ctx.interaction {
        Interaction::Create { resource_type } if consent_type(resource_type) => {
            (None, read_terms(deps, body)?)
        }
        Interaction::Update { resource_type, id } if consent_type(resource_type) => {
            (Some(id.as_str()), read_terms(deps, body)?)
        }
        Interaction::Delete { resource_type, id } if consent_type(resource_type) => {
            (Some(id.as_str()), ConsentTerms::Inactive)
        }
        Interaction::Patch { resource_type, .. }
        | Interaction::ConditionalUpdate { resource_type }
        | Interaction::ConditionalPatch { resource_type }
        | Interaction::ConditionalDelete { resource_type }
            if consent_type(resource_type) =>
        {
            return Err(ProxyError::NotSupported(
                "a Consent is written whole, by id (POST Consent, PUT or DELETE Consent/[id]): its grant on the chain follows from the whole resource".to_owned(),
            ));
        }
        Interaction::Bundle
            if planned.needs.permissions.contains(&Permission::Consent)
                || body.is_some_and(bundle_holds_consent) =>
        {
            return Err(ProxyError::NotSupported(
                "a Consent is not written inside a batch or transaction: send it on its own, so that its grant on the chain follows its outcome".to_owned(),
            ));
        }
        _ => return Ok(ConsentPlan::Nothing),
    };
    match terms {
        ConsentTerms::Inactive => {
            if let Some(id) = id {
                revoke(deps, id, &ctx.write_id).await?;
            }
            Ok(ConsentPlan::Nothing)
        }
        ConsentTerms::Grants(terms) => {
            // Refused before the upstream stores a Consent that could grant nothing.
            deps.ledger.signer().map_err(not_signing)?;
            let plan = grant_plan(deps, terms).await?;
            // New terms for a Consent in force: the old grant ends before the upstream stores
            // them, so that narrower terms hold even if the new grant is never signed.
            if let Some(id) = id {
                let (ledger, grantor, consent) = (
                    deps.ledger.clone(),
                    deps.ledger.institution().to_owned(),
                    id.to_owned(),
                );
                let in_force = blocking(move || {
                    ledger
                        .reader()
                        .consent_in_force(&grantor, &consent)
                        .map_err(crate::ledger::LedgerError::from)
                })
                .await?;
                if in_force {
                    revoke(deps, id, &ctx.write_id).await?;
                }
            }
            Ok(plan)
        }
    }
}

/// The grants an active `Consent` asks for, checked: each grantee another member, the
/// patient one whose identity this node sealed.
async fn grant_plan(deps: &Deps, terms: consent::Grant) -> Result<ConsentPlan, ProxyError> {
    let own = deps.ledger.institution();
    for grantee in &terms.grantees {
        if grantee.institution == own {
            return Err(ProxyError::Unprocessable(format!(
                "Consent: provision.actor names this institution ('{own}'): its own staff need no grant"
            )));
        }
        if !deps.ledger.knows_member(&grantee.institution) {
            return Err(ProxyError::Unprocessable(format!(
                "Consent: provision.actor names '{}', which is not a member of the consortium",
                grantee.institution
            )));
        }
    }
    // A patient the Consent names that this node does not hold is the body's fault: 422.
    let fingerprint = super::person::sealed_patient(deps, &terms.patient)
        .await
        .map_err(|error| match error {
            ProxyError::NotFound(why) => ProxyError::Unprocessable(format!("Consent: {why}")),
            other => other,
        })?;
    Ok(ConsentPlan::Grant {
        terms,
        fingerprint: fingerprint.0,
    })
}

/// After the upstream answered: for a `Consent` it stored, the grants signed and final before
/// the answer leaves. Any other answer passes as it is.
pub(crate) async fn consent_response(
    deps: &Deps,
    plan: ConsentPlan,
    response: Response<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let ConsentPlan::Grant { terms, fingerprint } = plan else {
        return Ok(response);
    };
    if !response.status().is_success() {
        return Ok(response);
    }
    let Some((id, version)) = stored_version(&response) else {
        return Err(ProxyError::UpstreamBody(
            "the upstream stored the Consent but named no version of it (Location or Content-Location): it grants nothing until written again".to_owned(),
        ));
    };
    let grants: Vec<Grant> = terms
        .grantees
        .iter()
        .map(|grantee| Grant {
            consent: id.clone(),
            version: version.clone(),
            fingerprint,
            grantee: grantee.institution.clone(),
            grantee_role: grantee.role.clone().unwrap_or_default(),
            purposes: terms.purposes.clone(),
            resource_types: terms.resource_types.clone(),
            not_before: Timestamp(terms.not_before_ms.unwrap_or(0)),
            expiry: Timestamp(terms.expiry_ms.unwrap_or(0)),
        })
        .collect();
    let signer = deps.ledger.signer()?;
    let batch = GrantBatch::sign(
        batch_id("grant", &id, &version),
        deps.ledger.institution(),
        grants,
        &signer,
    )
    .map_err(|e| ProxyError::Unprocessable(format!("Consent: {e}")))?;
    let at = finalize(deps, Transaction::Grant(batch), |why| format!(
        "the upstream stored Consent/{id}/_history/{version}, but its grant is not final ({why}): it takes effect if its block is finalized; write the Consent again to submit a grant again"
    ))
    .await?;
    tracing::info!(consent = %id, version = %version, height = at.height, "grant final");
    Ok(response)
}

/// Finalizes the revocation of every grant of `Consent/id`, before the upstream sees the
/// request that ends it.
async fn revoke(deps: &Deps, id: &str, write_id: &str) -> Result<(), ProxyError> {
    let signer = deps.ledger.signer().map_err(not_signing)?;
    let batch = RevocationBatch::sign(
        batch_id("revocation", id, write_id),
        deps.ledger.institution(),
        vec![Revocation {
            consent: id.to_owned(),
            request: write_id.to_owned(),
        }],
        &signer,
    )
    .map_err(|e| ProxyError::Unprocessable(format!("Consent: {e}")))?;
    let at = finalize(deps, Transaction::Revocation(batch), |why| format!(
        "the revocation of Consent/{id} is not final ({why}); the upstream was not sent the request: it may still take effect if its block is finalized; send the request again"
    ))
    .await?;
    tracing::info!(consent = %id, height = at.height, "revocation final");
    Ok(())
}

/// Submits `tx` and waits for its block (up to the sync timeout); one not final by then is a
/// 503 whose message `not_final` words from why.
pub(super) async fn finalize(
    deps: &Deps,
    tx: Transaction,
    not_final: impl FnOnce(String) -> String,
) -> Result<fhirseal_consensus::TxLocation, ProxyError> {
    match deps.ledger.submit_final(tx, deps.sync_timeout).await {
        Ok(at) => Ok(at),
        Err(LedgerError::NotFinal(why)) => Err(ProxyError::ChainPending(not_final(why))),
        Err(error) => Err(error.into()),
    }
}

/// The node cannot sign consent (or an erasure) now (it does not take part in its consortium).
pub(super) fn not_signing(error: LedgerError) -> ProxyError {
    match error {
        LedgerError::NotTakingPart(why) => ProxyError::ChainPending(format!(
            "this node signs no grant or revocation now ({why}); nothing was sent upstream"
        )),
        other => other.into(),
    }
}

fn read_terms(deps: &Deps, body: Option<&Value>) -> Result<ConsentTerms, ProxyError> {
    let Some(body) = body else {
        return Err(ProxyError::Invalid(
            "a Consent write carries the Consent".to_owned(),
        ));
    };
    consent::consent_terms(body, deps.clock.now_ms())
        .map_err(|e| ProxyError::Unprocessable(e.to_string()))
}

/// Whether a Bundle's entries carry a `Consent` (whatever their request's URL says).
fn bundle_holds_consent(bundle: &Value) -> bool {
    fhirseal_adapters::resource::entry_resources(bundle)
        .any(|resource| resource.get("resourceType").and_then(Value::as_str) == Some("Consent"))
}

/// The id a batch of `kind` for `(id, part)` always gets, so that submitting it again is
/// taken once.
pub(super) fn batch_id(kind: &str, id: &str, part: &str) -> BatchId {
    let digest = Sha256::new()
        .chain_update(b"fhirseal consent batch\0")
        .chain_update(kind.as_bytes())
        .chain_update([0])
        .chain_update(id.as_bytes())
        .chain_update([0])
        .chain_update(part.as_bytes())
        .finalize();
    let mut out = [0; 16];
    out.copy_from_slice(&digest[..16]);
    BatchId(out)
}

/// `Consent/[id]/_history/[version]` from the answer's `Location` or `Content-Location`.
fn stored_version(response: &Response<ProxyBody>) -> Option<(String, String)> {
    match location_from_headers(response.headers())? {
        (resource_type, id, version) if resource_type == "Consent" => Some((id, version)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::empty;
    use http::{header, StatusCode};

    #[test]
    fn the_stored_version_comes_from_the_location() {
        let answer = |name, value: &str| {
            Response::builder()
                .status(StatusCode::CREATED)
                .header(name, value)
                .body(empty())
                .unwrap()
        };
        let found = stored_version(&answer(
            header::LOCATION,
            "http://hapi:8080/fhir/Consent/12/_history/3",
        ));
        assert_eq!(found, Some(("12".to_owned(), "3".to_owned())));
        let found = stored_version(&answer(
            header::CONTENT_LOCATION,
            "Consent/ab-c/_history/1?x",
        ));
        assert_eq!(found, Some(("ab-c".to_owned(), "1".to_owned())));
        assert_eq!(
            stored_version(&answer(
                header::LOCATION,
                "http://h/fhir/Patient/12/_history/3"
            )),
            None
        );
        assert_eq!(
            stored_version(&answer(header::LOCATION, "http://h/fhir/Consent/12")),
            None
        );
    }

    #[test]
    fn batch_ids_differ_by_kind_and_part() {
        assert_eq!(batch_id("grant", "1", "2"), batch_id("grant", "1", "2"));
        assert_ne!(
            batch_id("grant", "1", "2"),
            batch_id("revocation", "1", "2")
        );
        assert_ne!(batch_id("grant", "1", "2"), batch_id("grant", "12", ""));
    }
}
