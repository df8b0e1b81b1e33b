//! `GET [base]/Patient/[id]/$locate`: record location. Which members of the consortium hold
//! records of the person `Patient/[id]` of this node is, for the person's fingerprint, what the
//! shared chain's anchors say: the answer names those members, and nothing else of what they
//! hold. A clinician finds the person by an identity search here first, or names them by an
//! identifier of an identity system (`Patient/$locate?identifier=system|value`, a first
//! encounter); the operation needs the `identity-search` permission, since it links the person
//! across members.

use fhirseal_adapters::{fhir, Format, Interaction};
use http::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::deps::{blocking, Deps};
use super::person::{self, Whom};
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::verify::fhir_response;

/// The operation's name.
pub(super) const LOCATE: &str = "locate";

/// Whom a `$locate` names; `None` for every other interaction.
pub(super) fn locate_target(interaction: &Interaction) -> Option<Whom<'_>> {
    person::target(interaction, LOCATE)
}

/// A `$locate` query's `identifier` (`_format` aside, it takes nothing else).
fn query_identifier(query: Option<&str>) -> Result<Option<(String, String)>, ProxyError> {
    let mut identifier = None;
    for (name, value) in person::operation_params(query, LOCATE)? {
        match name {
            "identifier" if identifier.is_none() => {
                identifier = Some(person::identifier_param(&value)?);
            }
            other => {
                return Err(ProxyError::Invalid(format!(
                    "$locate takes one identifier (at the type level), not '{other}'"
                )))
            }
        }
    }
    Ok(identifier)
}

/// Answers a `$locate` of `whom` with a `Parameters`: a `holder` per member that anchored
/// records of the person (`institution`, and `this` for this node's own), in the client's `format`.
pub(super) async fn locate(
    deps: &Deps,
    req: &Request<ProxyBody>,
    whom: Whom<'_>,
    format: Format,
) -> Result<Response<ProxyBody>, ProxyError> {
    ProxyError::unless_method(req.method(), Method::GET, "$locate")?;
    let identifier = query_identifier(req.uri().query())?;
    let fingerprint = person::fingerprint(deps, LOCATE, whom, identifier).await?;
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
