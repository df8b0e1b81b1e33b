//! The `plan` and `authorize` phases, between `request_filter` and `seal_request`: what the
//! request carries is read and parsed (under the body limit and the body read time, refused
//! when nested too deep, parsed off the async workers), and what it needs is worked out from
//! the interaction, its query and conditions, and for a batch or transaction from every entry;
//! then `authorize`, the one permission check. Nothing is stored, forwarded or recorded before
//! it.

use bytes::Bytes;
use fhirseal_adapters::auth::Principal;
use fhirseal_adapters::policy::{self, EntryError, Needs, Permission};
use fhirseal_adapters::search;
use fhirseal_adapters::{fhir, Format, Interaction};
use http::header::{self, HeaderMap};
use http::{Method, Request};
use http_body::Body as _;
use serde_json::Value;

use super::ctx::RequestCtx;
use super::deps::Deps;
use super::verify_request::{VerifyRequest, VERIFY};
use crate::body::{empty, ProxyBody};
use crate::error::ProxyError;
use crate::http_util::{collect_body, BodyFrom};

/// What the sidecar read of a request's body.
#[derive(Debug)]
pub(crate) enum RequestBody {
    /// Nothing: there is none, or it streams through unread (a server-administration
    /// operation's parameters).
    Streamed,
    /// A FHIR resource or Bundle, parsed strictly, as JSON.
    Resource(Value),
    /// A JSON Patch document, as sent.
    JsonPatch(Bytes),
    /// A `_search` form (`application/x-www-form-urlencoded`).
    Form(String),
    /// A `POST $verify`'s `Parameters`: the member and the copy to compare.
    Verify(VerifyRequest),
}

/// A request read and understood: its body, and what it needs.
#[derive(Debug)]
pub(crate) struct Planned {
    pub(crate) body: RequestBody,
    pub(crate) needs: Needs,
}

/// The parameters an interaction that is no search or operation may carry (FHIR's general
/// parameters, history's and its paging, and HAPI's delete options); anything else would be
/// forwarded to the upstream unread.
const GENERAL_PARAMS: &[&str] = &[
    "_format",
    "_pretty",
    "_summary",
    "_elements",
    "_count",
    "_since",
    "_at",
    "_offset",
    "_getpages",
    "_getpagesoffset",
    "_bundletype",
    "_cascade",
    "_expunge",
];

/// What kind of body an interaction carries.
enum Carries {
    Nothing,
    Resource,
    JsonPatch,
    Form,
    /// Passed through unread: only server-administration operations may send one.
    Parameters,
    /// `$verify`'s `Parameters`, read whole (the sidecar answers it, nothing is forwarded).
    Verify,
}

/// Reads and parses the request's body where the sidecar needs it, and works out what the
/// request needs. The request comes back without the body it read.
pub(super) async fn plan(
    deps: &Deps,
    req: Request<ProxyBody>,
    ctx: &RequestCtx,
) -> Result<(Request<ProxyBody>, Planned), ProxyError> {
    let interaction = &ctx.interaction;
    let has_body = !req.body().is_end_stream() && req.body().size_hint().exact() != Some(0);
    let carries = carries(interaction, req.method(), req.headers(), has_body)?;
    let (parts, body) = req.into_parts();
    let (body, read) = match carries {
        Carries::Nothing | Carries::Parameters => {
            if has_body && matches!(carries, Carries::Nothing) {
                return Err(ProxyError::Invalid(format!(
                    "a {} request carries no body: fhirseal does not forward one",
                    interaction.name()
                )));
            }
            if has_body {
                if let Some(name) = operation_name(interaction) {
                    if !policy::is_admin_operation(&format!("${name}")) {
                        return Err(ProxyError::NotSupported(format!(
                            "${name} is forwarded only without a body (use GET): parameters sent in a body would reach the upstream unsealed"
                        )));
                    }
                }
            }
            (body, RequestBody::Streamed)
        }
        Carries::Resource => {
            let value = read_parsed(deps, body, &parts.headers, parse_body).await?;
            (empty(), RequestBody::Resource(value))
        }
        Carries::Verify => {
            let request = read_parsed(deps, body, &parts.headers, parse_verify).await?;
            (empty(), RequestBody::Verify(request))
        }
        Carries::JsonPatch => {
            let bytes = read_body(deps, body).await?;
            fhir::check_depth(&bytes, Format::Json).map_err(parse_error)?;
            (empty(), RequestBody::JsonPatch(bytes))
        }
        Carries::Form => {
            let bytes = read_body(deps, body).await?;
            let text = String::from_utf8(bytes.to_vec())
                .map_err(|_| ProxyError::Invalid("the _search form is not UTF-8".to_owned()))?;
            (empty(), RequestBody::Form(text))
        }
    };
    let needs = needs(deps, ctx, &parts.headers, parts.uri.query(), &read)?;
    Ok((
        Request::from_parts(parts, body),
        Planned { body: read, needs },
    ))
}

/// What the request needs: its interaction's permission, identity search when its criteria
/// name identity, the entries' needs for a batch or transaction.
fn needs(
    deps: &Deps,
    ctx: &RequestCtx,
    headers: &HeaderMap,
    query: Option<&str>,
    body: &RequestBody,
) -> Result<Needs, ProxyError> {
    let interaction = &ctx.interaction;
    let profile = deps.sealing.profile();
    let resource_type = policy::interaction_type(interaction);
    let names_identity = |criteria: &str| -> Result<bool, ProxyError> {
        Ok(search::names_identity(resource_type, criteria, profile)?)
    };
    let mut identity = false;
    let criteria = matches!(
        interaction,
        Interaction::SearchType { .. }
            | Interaction::SearchSystem
            | Interaction::SearchCompartment { .. }
            | Interaction::ConditionalUpdate { .. }
            | Interaction::ConditionalDelete { .. }
    );
    let mut administer = false;
    if let Some(query) = query {
        if criteria {
            identity |= names_identity(query)?;
        } else if super::shared::shared_target(interaction).is_some()
            || super::locate::locate_target(interaction).is_some()
        {
            // `$shared` and `$locate` are answered here and never forwarded: an identifier
            // reaches no upstream (it is fingerprinted), and asking by it is an identity search
            // (their needs say so).
        } else {
            if let Some(param) = search::identity_named_param(query) {
                return Err(ProxyError::NotSupported(format!(
                    "a {} takes no parameter '{param}': its value would reach the upstream, which holds no identity",
                    interaction.name()
                )));
            }
            if operation_name(interaction).is_none() {
                for name in search::param_names(query) {
                    if !GENERAL_PARAMS.contains(&name.as_str()) {
                        return Err(ProxyError::Invalid(format!(
                            "a {} takes no parameter '{name}'",
                            interaction.name()
                        )));
                    }
                    // HAPI's delete-and-expunge removes history for good.
                    administer |= name == "_expunge";
                }
            }
        }
    }
    if let RequestBody::Form(form) = body {
        identity |= names_identity(form)?;
    }
    if matches!(interaction, Interaction::Create { .. }) {
        if let Some(condition) = headers.get("if-none-exist") {
            let condition = condition
                .to_str()
                .map_err(|_| ProxyError::BadHeader("If-None-Exist is not ASCII".to_owned()))?;
            identity |= names_identity(condition.strip_prefix('?').unwrap_or(condition))?;
        }
    }
    let mut needs = Needs::of(interaction, identity);
    if administer {
        needs.permissions.insert(Permission::Administer);
    }
    if matches!(interaction, Interaction::Patch { .. }) {
        // A JSON Patch is applied here to the whole resource, identity included.
        needs.permissions.insert(Permission::SeeIdentity);
    }
    if let RequestBody::Resource(resource) = body {
        // A conditional reference (`Patient?identifier=…`) is a search the upstream would
        // run with what it names: by identity, the blind index cannot answer it there.
        if let Some(reference) = identity_conditional_reference(resource, profile)? {
            return Err(ProxyError::NotSupported(format!(
                "the conditional reference '{reference}' names identity: refer to the resource by its id (search for it through fhirseal first)"
            )));
        }
    }
    if let (Interaction::Bundle, RequestBody::Resource(bundle)) = (interaction, body) {
        needs.add(policy::bundle_needs(bundle, profile).map_err(|e| match e {
            EntryError::Route { .. } => ProxyError::Invalid(e.to_string()),
            EntryError::Search { source, .. } => ProxyError::Search(source),
        })?);
    }
    Ok(needs)
}

/// Reads a client's body whole, under the body limit and the body read time.
pub(super) async fn read_body(deps: &Deps, body: ProxyBody) -> Result<Bytes, ProxyError> {
    let limits = &deps.limits;
    tokio::time::timeout(
        limits.body_read_timeout,
        collect_body(body, deps.max_body, BodyFrom::Client),
    )
    .await
    .map_err(|_| ProxyError::BodyTimeout(limits.body_read_timeout.as_secs()))?
}

/// Reads a FHIR body whole (see [`read_body`]) and parses it with `parse` off the async
/// workers, in the format its `Content-Type` names.
async fn read_parsed<T: Send + 'static>(
    deps: &Deps,
    body: ProxyBody,
    headers: &HeaderMap,
    parse: fn(&[u8], Format) -> Result<T, ProxyError>,
) -> Result<T, ProxyError> {
    let bytes = read_body(deps, body).await?;
    let format = write_format(headers)?;
    tokio::task::spawn_blocking(move || parse(&bytes, format))
        .await
        .map_err(|e| ProxyError::Internal(e.to_string()))?
}

/// The one permission check of a request, after authentication and before anything is
/// stored, forwarded or recorded: the principal's role must cover what the request needs.
/// Identity searches are also held to the principal's rate.
pub(super) fn authorize(
    deps: &Deps,
    principal: &Principal,
    needs: &Needs,
) -> Result<(), ProxyError> {
    policy::authorize(&principal.role, &principal.rights, needs)?;
    if needs.permissions.contains(&Permission::IdentitySearch) {
        let key = format!("{}\0{}", principal.institution, principal.name);
        let mut limiter = deps
            .identity_searches
            .lock()
            .map_err(|_| ProxyError::Internal("the rate limiter's lock is poisoned".to_owned()))?;
        limiter
            .take(&key, deps.clock.now_ms())
            .map_err(|retry_after| ProxyError::Throttled { retry_after })?;
    }
    Ok(())
}

/// The first conditional reference (`Type?criteria`) in `value` whose criteria name identity.
fn identity_conditional_reference(
    value: &Value,
    profile: &fhirseal_adapters::profile::Profile,
) -> Result<Option<String>, ProxyError> {
    match value {
        Value::Object(map) => {
            if let Some((ty, criteria)) = map
                .get("reference")
                .and_then(Value::as_str)
                .and_then(|r| r.split_once('?'))
            {
                let ty = ty.rsplit('/').next().unwrap_or(ty);
                if search::names_identity(Some(ty), criteria, profile)? {
                    return Ok(Some(format!("{ty}?…")));
                }
            }
            for child in map.values() {
                if let Some(found) = identity_conditional_reference(child, profile)? {
                    return Ok(Some(found));
                }
            }
            Ok(None)
        }
        Value::Array(items) => {
            for item in items {
                if let Some(found) = identity_conditional_reference(item, profile)? {
                    return Ok(Some(found));
                }
            }
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// What kind of body `interaction` carries; FHIRPath and XML patches are refused here.
fn carries(
    interaction: &Interaction,
    method: &Method,
    headers: &HeaderMap,
    has_body: bool,
) -> Result<Carries, ProxyError> {
    Ok(match interaction {
        Interaction::Create { .. }
        | Interaction::Update { .. }
        | Interaction::ConditionalUpdate { .. }
        | Interaction::Bundle => Carries::Resource,
        Interaction::Patch { .. } => {
            if content_type(headers) != "application/json-patch+json" {
                return Err(ProxyError::NotSupported(
                    "only JSON Patch (application/json-patch+json) is applied through fhirseal: a FHIRPath or XML Patch would change the resource where fhirseal cannot seal what it adds".to_owned(),
                ));
            }
            Carries::JsonPatch
        }
        Interaction::ConditionalPatch { .. } => {
            return Err(ProxyError::NotSupported(
                "conditional PATCH is not supported through fhirseal: read the resource, then PATCH it by id".to_owned(),
            ))
        }
        Interaction::SearchType { .. } | Interaction::SearchSystem
            if method == Method::POST && has_body =>
        {
            if content_type(headers) != "application/x-www-form-urlencoded" {
                return Err(ProxyError::UnsupportedMediaType(format!(
                    "{} (a POST _search carries application/x-www-form-urlencoded)",
                    content_type(headers)
                )));
            }
            Carries::Form
        }
        Interaction::OperationSystem { .. }
        | Interaction::OperationType { .. }
        | Interaction::OperationInstance { .. }
        | Interaction::OperationVersion { .. }
            if method == Method::POST =>
        {
            // `$verify` is the sidecar's own: what it carries is read here, never forwarded.
            match operation_name(interaction) {
                Some(VERIFY) if has_body => Carries::Verify,
                Some(VERIFY) => Carries::Nothing,
                _ => Carries::Parameters,
            }
        }
        _ => Carries::Nothing,
    })
}

fn operation_name(interaction: &Interaction) -> Option<&str> {
    match interaction {
        Interaction::OperationSystem { name }
        | Interaction::OperationType { name, .. }
        | Interaction::OperationInstance { name, .. }
        | Interaction::OperationVersion { name, .. } => Some(name),
        _ => None,
    }
}

/// The media type of the body, lower case, without parameters.
fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The FHIR format of a write's body.
fn write_format(headers: &HeaderMap) -> Result<Format, ProxyError> {
    Format::of_body(headers).ok_or_else(|| {
        ProxyError::UnsupportedMediaType(
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("(none)")
                .to_owned(),
        )
    })
}

/// A client's FHIR body, parsed strictly (unknown elements refused). Blocking: call off the
/// async workers.
fn parse_body(bytes: &[u8], format: Format) -> Result<Value, ProxyError> {
    fhir::parse_strict(bytes, format).map_err(parse_error)
}

/// A `POST $verify`'s body. The copy in a JSON body is kept exactly as sent (it is hashed as
/// its writer's FHIR server returned it, not rewritten through the model); an XML body goes
/// through the model to JSON. Blocking: call off the async workers.
fn parse_verify(bytes: &[u8], format: Format) -> Result<VerifyRequest, ProxyError> {
    let value = match format {
        Format::Json => fhir::parse_lenient(bytes, format),
        Format::Xml => fhir::parse_strict(bytes, format),
    }
    .map_err(parse_error)?;
    Ok(VerifyRequest::from_parameters(value)?)
}

fn parse_error(error: fhir::ParseError) -> ProxyError {
    match error {
        fhir::ParseError::XmlTooLarge { limit } => ProxyError::BodyTooLarge {
            limit: limit as u64,
        },
        other => ProxyError::Invalid(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhirseal_adapters::profile::Profile;
    use http::HeaderValue;
    use serde_json::json;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).unwrap(),
        );
        h
    }

    #[test]
    fn what_each_interaction_carries() {
        let create = Interaction::Create {
            resource_type: "Patient".into(),
        };
        let patch = Interaction::Patch {
            resource_type: "Observation".into(),
            id: "1".into(),
        };
        let search = Interaction::SearchType {
            resource_type: "Patient".into(),
        };
        let json = headers("application/fhir+json");
        assert!(matches!(
            carries(&create, &Method::POST, &json, true),
            Ok(Carries::Resource)
        ));
        assert!(matches!(
            carries(
                &patch,
                &Method::PATCH,
                &headers("application/json-patch+json"),
                true
            ),
            Ok(Carries::JsonPatch)
        ));
        // FHIRPath and XML patches, on any type.
        for kind in ["application/fhir+json", "application/xml-patch+xml"] {
            assert!(matches!(
                carries(&patch, &Method::PATCH, &headers(kind), true),
                Err(ProxyError::NotSupported(_))
            ));
        }
        let form = headers("application/x-www-form-urlencoded");
        assert!(matches!(
            carries(&search, &Method::POST, &form, true),
            Ok(Carries::Form)
        ));
        // A POST _search without a body carries nothing; with another body, 415.
        assert!(matches!(
            carries(&search, &Method::POST, &HeaderMap::new(), false),
            Ok(Carries::Nothing)
        ));
        assert!(matches!(
            carries(&search, &Method::POST, &json, true),
            Err(ProxyError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn conditional_references_by_identity_are_found() {
        let profile = Profile::default();
        let by_name = json!({"resourceType": "Bundle", "entry": [{"resource": {
            "resourceType": "Observation",
            "subject": {"reference": "Patient?family=smith"}}}]});
        assert_eq!(
            identity_conditional_reference(&by_name, &profile)
                .unwrap()
                .as_deref(),
            Some("Patient?…")
        );
        let by_npi = json!({"resourceType": "Encounter",
            "participant": [{"individual": {"reference": "Practitioner?identifier=npi|1"}}]});
        assert_eq!(
            identity_conditional_reference(&by_npi, &profile).unwrap(),
            None
        );
        let refused = json!({"subject": {"reference": "Patient?_content=x"}});
        assert!(identity_conditional_reference(&refused, &profile).is_err());
    }
}
