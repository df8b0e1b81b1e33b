//! `GET [base]/Patient/[id]/$shared?institution=M[&_type=T,…]`: the records member `M` holds
//! of the person `Patient/[id]` of this node, under a grant `M` signed for this institution.
//! `GET [base]/Patient/$shared?institution=M&identifier=system|value[&_type=…]` asks for whoever
//! the identifier names (a first encounter: nothing of the person is here yet); the system must
//! be one of the identity systems persons are linked by, and the request is an identity search
//! (the `identity-search` permission and its rate).
//!
//! This node asks `M`'s node over the consortium's mutual TLS (see [`super::share_wire`]),
//! naming the person by fingerprint, the requester, its role and its purpose of use; `M`
//! decides by the grants on the chain. A refusal is a 403 here too, and an access event at
//! both ends. What `M` sends is checked resource by resource against this node's copy of the
//! chain, as `$verify` checks a copy: anchored by `M` for this person (or for no person, as a
//! transaction's entries beside their patient are), proven, the content
//! hashing to the anchored hash, the sealed identity the very record anchored. A resource that
//! does not check is left out, and the answer says which and why. Identity is opened (the data
//! key `M` wrapped for this node's RSA key) and merged back only for readers this node's own
//! policy lets see identity; each resource delivered is an access event here, durable before
//! the answer leaves.
//!
//! The answer is a `collection` Bundle: each resource as `M` holds it, tagged with its holder
//! (`urn:fhirseal:holder`), and an `OperationOutcome` entry when resources were left out.

use std::time::Duration;

use fhirseal_adapters::{fhir, resource, Interaction};
use fhirseal_consensus::ExchangeKind;
use fhirseal_storage::SealedRecord;
use http::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};

use super::ctx::RequestCtx;
use super::deps::{blocking, Deps};
use super::person::{self, Whom};
use super::share_wire::{of_person, ShareAnswer, ShareRefusal, ShareRequest};
use crate::body::ProxyBody;
use crate::consortium::node::SHARING_PATH;
use crate::error::ProxyError;
use crate::verify::{fhir_response, ledger_check, Compared};

/// The operation's name.
pub(super) const SHARED: &str = "shared";

/// The tag system naming the member a shared resource comes from.
pub(crate) const HOLDER_SYSTEM: &str = "urn:fhirseal:holder";

/// How long the holder may take to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(60);

/// Whom a `$shared` names; `None` for every other interaction.
pub(super) fn shared_target(interaction: &Interaction) -> Option<Whom<'_>> {
    person::target(interaction, SHARED)
}

/// What a `$shared` query asks.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SharedQuery {
    /// The holder.
    institution: String,
    /// The resource types; none: all the grant covers.
    types: Vec<String>,
    /// `identifier=system|value`, at the type level.
    identifier: Option<(String, String)>,
}

/// Reads a `$shared` query.
fn query_params(query: Option<&str>) -> Result<SharedQuery, ProxyError> {
    let (mut institution, mut types, mut identifier) = (None, Vec::new(), None);
    for (name, value) in person::operation_params(query, SHARED)? {
        match name {
            "institution" if institution.is_none() && !value.is_empty() => {
                institution = Some(value);
            }
            "institution" => {
                return Err(ProxyError::Invalid(
                    "$shared takes one institution".to_owned(),
                ))
            }
            "_type" => types.extend(
                value
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned),
            ),
            "identifier" if identifier.is_none() => {
                identifier = Some(person::identifier_param(&value)?);
            }
            "identifier" => {
                return Err(ProxyError::Invalid(
                    "$shared takes one identifier".to_owned(),
                ))
            }
            other => {
                return Err(ProxyError::Invalid(format!(
                    "$shared takes institution, identifier and _type, not '{other}'"
                )))
            }
        }
    }
    let institution = institution.ok_or_else(|| {
        ProxyError::Invalid(
            "$shared needs institution=<member>: the member whose records to fetch (Patient/[id]/$locate names them)".to_owned(),
        )
    })?;
    if let Some(bad) = types
        .iter()
        .find(|t| !fhirseal_adapters::route::is_resource_type(t))
    {
        return Err(ProxyError::Invalid(format!(
            "$shared: '{bad}' is not a resource type"
        )));
    }
    Ok(SharedQuery {
        institution,
        types,
        identifier,
    })
}

/// Answers a `$shared` of `whom`.
pub(super) async fn shared(
    deps: &Deps,
    ctx: &RequestCtx,
    req: &Request<ProxyBody>,
    whom: Whom<'_>,
) -> Result<Response<ProxyBody>, ProxyError> {
    ProxyError::unless_method(req.method(), Method::GET, "$shared")?;
    let SharedQuery {
        institution: holder,
        types,
        identifier,
    } = query_params(req.uri().query())?;
    // What the access events name: the patient, or the type for a search by identifier.
    let id = whom.id();
    let own = deps.ledger.institution().to_owned();
    if holder == own {
        return Err(ProxyError::Invalid(format!(
            "{own} is this node's own institution: its records are read directly"
        )));
    }
    if ctx.principal.institution != own {
        return Err(ProxyError::Forbidden(format!(
            "records are shared with {own}'s own staff; this caller belongs to {}",
            ctx.principal.institution
        )));
    }
    let purpose = ctx.accessor.purpose_of_use().to_owned();
    if purpose.is_empty() {
        return Err(ProxyError::BadHeader(
            "$shared needs a purpose of use (X-Purpose-Of-Use, or the access token's): a grant is for named purposes".to_owned(),
        ));
    }
    let Some(node) = deps.ledger.member_node(&holder) else {
        return Err(ProxyError::NotFound(format!(
            "{holder} is not an active member of the consortium"
        )));
    };
    let Some(network) = &deps.network else {
        return Err(ProxyError::NotSupported(
            "this node has no consortium transport to ask other members with".to_owned(),
        ));
    };
    let fingerprint = person::fingerprint(deps, SHARED, whom, identifier).await?;
    let request = ShareRequest {
        fingerprint: fingerprint.hex(),
        principal: ctx.principal.name.clone(),
        role: ctx.principal.role.clone(),
        purpose,
        types,
    };
    let body = serde_json::to_vec(&request).map_err(|e| ProxyError::Internal(e.to_string()))?;
    let unreachable = |reason: String| ProxyError::Member {
        member: holder.clone(),
        reason,
    };
    let mut channel = network
        .channel(&node.address, node.node_id)
        .map_err(|e| unreachable(e.to_string()))?;
    let (status, answer) = channel
        .call(Method::POST, SHARING_PATH, body, ASK_TIMEOUT)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    if status == StatusCode::FORBIDDEN {
        let why = serde_json::from_slice::<ShareRefusal>(&answer)
            .map(|r| r.error)
            .unwrap_or_else(|_| format!("{holder} refused"));
        let event =
            ctx.accessor
                .exchanged(("Patient", id, ""), false, ExchangeKind::RefusedBy, &holder);
        super::access::record_events(deps, vec![event]).await?;
        return Err(ProxyError::Forbidden(why));
    }
    if status != StatusCode::OK {
        let why = serde_json::from_slice::<ShareRefusal>(&answer)
            .map(|r| r.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&answer).into_owned());
        return Err(unreachable(format!("it answered {status}: {why}")));
    }
    let answer: ShareAnswer = serde_json::from_slice(&answer)
        .map_err(|e| unreachable(format!("its answer is not one: {e}")))?;
    let (ledger, sealing) = (deps.ledger.clone(), deps.sealing.clone());
    let (accessor, sees_identity, from) = (
        ctx.accessor.clone(),
        ctx.principal.sees_identity,
        holder.clone(),
    );
    let (mut entries, problems, events) = blocking(move || -> Result<_, ProxyError> {
        let (mut entries, mut problems, mut events) = (Vec::new(), Vec::new(), Vec::new());
        for shared in answer.resources {
            let Some((t, i, v)) = shared.version() else {
                problems.push(format!(
                    "{from} sent a resource without its type, id and version"
                ));
                continue;
            };
            let (t, i, v) = (t.to_owned(), i.to_owned(), v.to_owned());
            let shown = format!("{t}/{i}/_history/{v}");
            let record = match shared.shared_record() {
                Ok(record) => record,
                Err(e) => {
                    problems.push(format!("{shown} from {from}: {e}"));
                    continue;
                }
            };
            let compared = Compared::supplied(&shared.resource)?;
            let check = ledger_check(&ledger, &from, (&t, &i, Some(&v)), compared)?;
            if let Some(problem) = check.problem() {
                problems.push(problem);
                continue;
            }
            let Some(entry) = check.proof.as_ref().map(|p| &p.entry) else {
                continue;
            };
            if !of_person(&entry.fingerprint, &fingerprint.0) {
                problems.push(format!("{shown} is anchored by {from} for another person"));
                continue;
            }
            if let Some(record) = &record {
                let meta = &record.record.meta;
                let same = SealedRecord::address(&record.record.encode()) == entry.sealed_address
                    && (
                        meta.resource_type.as_str(),
                        meta.id.as_str(),
                        meta.version.as_str(),
                    ) == (t.as_str(), i.as_str(), v.as_str());
                if !same {
                    problems.push(format!(
                        "the sealed identity of {shown} is not the record {from} anchored"
                    ));
                    continue;
                }
            }
            let mut resource = shared.resource;
            let reidentified = match &record {
                Some(record) if sees_identity => {
                    sealing.open_shared(record)?.merge_into(&mut resource);
                    true
                }
                _ => false,
            };
            resource::add_tag(&mut resource, HOLDER_SYSTEM, &from);
            events.push(accessor.exchanged(
                (&t, &i, &v),
                reidentified,
                ExchangeKind::ReceivedFrom,
                &from,
            ));
            entries.push(json!({"resource": resource}));
        }
        Ok((entries, problems, events))
    })
    .await?;
    super::access::record_events(deps, events).await?;
    if !problems.is_empty() {
        let issues: Vec<Value> = problems
            .iter()
            .map(|p| json!({"severity": "warning", "code": "processing", "diagnostics": p}))
            .collect();
        entries.push(json!({"resource": {"resourceType": "OperationOutcome", "issue": issues}}));
    }
    let bundle = json!({
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": crate::audit::instant(deps.clock.now_ms()),
        "entry": entries,
    });
    let body =
        fhir::serialize(&bundle, ctx.format).map_err(|e| ProxyError::Internal(e.to_string()))?;
    Ok(fhir_response(StatusCode::OK, body, ctx.format))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_names_one_holder_and_resource_types() {
        assert_eq!(
            query_params(Some(
                "institution=h1&_type=Observation,Condition&_format=json"
            ))
            .unwrap(),
            SharedQuery {
                institution: "h1".to_owned(),
                types: vec!["Observation".to_owned(), "Condition".to_owned()],
                identifier: None,
            }
        );
        let by_identifier = query_params(Some(
            "institution=h1&identifier=http%3A%2F%2Fhl7.org%2Ffhir%2Fsid%2Fus-ssn%7C999-12-3456",
        ))
        .unwrap();
        assert_eq!(
            by_identifier.identifier,
            Some((
                "http://hl7.org/fhir/sid/us-ssn".to_owned(),
                "999-12-3456".to_owned()
            ))
        );
        for bad in [
            None,
            Some("_type=Observation"),
            Some("institution=h1&institution=h2"),
            Some("institution=h1&name=Alice"),
            Some("institution=h1&_type=../x"),
            Some("institution=h1&identifier=999"),
            Some("institution=h1&identifier=s|1&identifier=s|2"),
        ] {
            let error = query_params(bad).unwrap_err();
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        }
    }
}
