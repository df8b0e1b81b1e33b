//! The phases of an access token's bearer, beside `authorize`: `authorize_token` (the policy of
//! [`fhirseal_adapters::smart::decide`]: role × purpose × resource type × own or granted, and
//! the patient compartment), what a patient-context token writes checked to be its patient's
//! (`confine_request`), and `confine_response`: every resource an answer shows must be one the
//! token's scopes let it read — of a type its scopes name, and, when only a `patient/…` scope
//! names it, in the patient's compartment — or the answer is withheld (403).

use fhirseal_adapters::auth::Principal;
use fhirseal_adapters::smart::{self, Reach, Refusal};
use fhirseal_adapters::{fhir, Interaction};
use http::Response;

use super::ctx::RequestCtx;
use super::deps::Deps;
use super::plan::{Planned, RequestBody};
use crate::body::{full, ProxyBody};
use crate::error::ProxyError;
use crate::http_util::{collect_limited, response_format};

/// Phase `authorize_token`: where the request of a token's bearer may reach (unconfined for an
/// API key).
pub(super) fn authorize_token(
    deps: &Deps,
    principal: &Principal,
    ctx: &RequestCtx,
    query: Option<&str>,
    planned: &Planned,
) -> Result<Reach, ProxyError> {
    let Some(grant) = &principal.token else {
        return Ok(Reach::Unconfined);
    };
    let role = deps
        .roles
        .get(&principal.role)
        .ok_or_else(|| ProxyError::Internal(format!("the role '{}' vanished", principal.role)))?;
    let entries = match (&ctx.interaction, &planned.body) {
        (Interaction::Bundle, RequestBody::Resource(bundle)) => smart::entry_accesses(bundle),
        _ => Vec::new(),
    };
    let subject = smart::Subject {
        role_name: &principal.role,
        role,
        own_institution: grant.own_institution,
        purpose: grant.purpose.as_deref(),
        scopes: &grant.scopes,
        patient: grant.patient.as_deref(),
    };
    let reach = smart::decide(
        &subject,
        &smart::Request {
            interaction: &ctx.interaction,
            query,
            needs: &planned.needs,
            entries: &entries,
        },
    )?;
    if let (Reach::Patient { patient, .. }, RequestBody::Resource(resource)) =
        (&reach, &planned.body)
    {
        if !smart::in_compartment(resource, patient) {
            return Err(Refusal::Compartment(
                "the resource sent does not belong to its patient".to_owned(),
            )
            .into());
        }
    }
    // A HEAD answer has no body to check against the compartment: only the patient's own
    // record is answered so.
    if let Reach::Patient { patient, .. } = &reach {
        let own = matches!(&ctx.interaction,
            Interaction::Read { resource_type, id } if resource_type == "Patient" && id == patient);
        if ctx.head && !own && !matches!(ctx.interaction, Interaction::Capabilities) {
            return Err(Refusal::Compartment(
                "a HEAD request cannot be checked against the compartment: use GET".to_owned(),
            )
            .into());
        }
    }
    Ok(reach)
}

/// Whether the answer to `interaction` shows what was read (rather than what was written).
fn reads(interaction: &Interaction) -> bool {
    use Interaction as I;
    !matches!(
        interaction,
        I::Capabilities
            | I::Bundle
            | I::Create { .. }
            | I::Update { .. }
            | I::Patch { .. }
            | I::Delete { .. }
            | I::ConditionalUpdate { .. }
            | I::ConditionalPatch { .. }
            | I::ConditionalDelete { .. }
    )
}

/// Phase `confine_response`: the answer of a token's bearer, withheld when it shows a resource
/// the token may not read.
pub(super) async fn confine_response(
    deps: &Deps,
    ctx: &RequestCtx,
    response: Response<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Some(grant) = &ctx.principal.token else {
        return Ok(response);
    };
    if !reads(&ctx.interaction) || !response.status().is_success() || ctx.head {
        return Ok(response);
    }
    let Some(format) = response_format(response.headers()) else {
        return Ok(response);
    };
    let (parts, body) = response.into_parts();
    let bytes = collect_limited(body, deps.limits.max_reidentify)
        .await
        .map_err(|e| match e {
            ProxyError::UpstreamTooLarge { limit } => ProxyError::TooLargeToReidentify { limit },
            other => other,
        })?;
    if bytes.is_empty() {
        return Ok(Response::from_parts(parts, full(bytes)));
    }
    let grant = grant.clone();
    let checked = bytes.clone();
    let unreadable = tokio::task::spawn_blocking(move || -> Result<_, ProxyError> {
        let value = fhir::parse_lenient(&checked, format)
            .map_err(|e| ProxyError::UpstreamBody(e.to_string()))?;
        Ok(smart::unreadable(
            &value,
            &grant.scopes,
            grant.patient.as_deref(),
        ))
    })
    .await
    .map_err(|e| ProxyError::Internal(e.to_string()))??;
    if let Some(resource_type) = unreadable {
        let why = match &ctx.principal.token.as_ref().and_then(|g| g.patient.clone()) {
            Some(_) => Refusal::Compartment(format!(
                "the answer holds a {resource_type} outside its patient's compartment or scopes"
            )),
            None => Refusal::Scope {
                needed: format!(
                    "a scope such as user/{resource_type}.rs (the answer holds a {resource_type})"
                ),
            },
        };
        return Err(why.into());
    }
    Ok(Response::from_parts(parts, full(bytes)))
}
