//! `GET [base]/Patient/[id]/$locate`: record location. Which members of the consortium hold
//! records of the person `Patient/[id]` of this node is, for the person's fingerprint, what the
//! shared chain's anchors say: the answer names those members, and nothing else of what they
//! hold. A clinician finds the person by an identity search here first; the operation needs
//! the `identity-search` permission, since it links the person across members.

use fhirseal_adapters::{fhir, Format, Interaction};
use http::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::deps::{blocking, Deps};
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::verify::fhir_response;

/// The operation's name.
pub(super) const LOCATE: &str = "locate";

/// The patient a `$locate` names; `None` for every other interaction.
pub(super) fn locate_target(interaction: &Interaction) -> Option<&str> {
    match interaction {
        Interaction::OperationInstance {
            resource_type,
            id,
            name,
        } if name == LOCATE && resource_type == "Patient" => Some(id),
        _ => None,
    }
}

/// The fingerprint of `Patient/id`, a patient whose identity this node holds; 404 otherwise.
pub(super) async fn sealed_patient(
    deps: &Deps,
    id: &str,
) -> Result<fhirseal_storage::Fingerprint, ProxyError> {
    let (sealing, patient) = (deps.sealing.clone(), id.to_owned());
    blocking(move || {
        sealing.patient_fingerprint(&patient)?.ok_or_else(|| {
            ProxyError::NotFound(format!(
                "Patient/{patient} is not a patient whose identity this node holds (never sealed here, or erased)"
            ))
        })
    })
    .await
}

/// Answers a `$locate` of `Patient/id` with a `Parameters`: a `holder` per member that
/// anchored records of the person (`institution`, and `this` for this node's own).
pub(super) async fn locate(
    deps: &Deps,
    req: &Request<ProxyBody>,
    id: &str,
) -> Result<Response<ProxyBody>, ProxyError> {
    ProxyError::unless_method(req.method(), Method::GET, "$locate")?;
    let format = Format::negotiate(req.uri().query(), req.headers());
    let fingerprint = sealed_patient(deps, id).await?;
    let ledger = deps.ledger.clone();
    let holders = blocking(move || {
        ledger
            .reader()
            .holders(&fingerprint.0)
            .map_err(crate::ledger::LedgerError::from)
    })
    .await?;
    let own = deps.ledger.institution();
    let parameter: Vec<_> = holders
        .iter()
        .map(|institution| {
            json!({"name": "holder", "part": [
                {"name": "institution", "valueString": institution},
                {"name": "this", "valueBoolean": institution == own},
            ]})
        })
        .collect();
    let parameters = json!({"resourceType": "Parameters", "parameter": parameter});
    let body =
        fhir::serialize(&parameters, format).map_err(|e| ProxyError::Internal(e.to_string()))?;
    Ok(fhir_response(StatusCode::OK, body, format))
}
