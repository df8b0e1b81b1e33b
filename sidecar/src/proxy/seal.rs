//! The `seal_request` phase: writes are split (identity off to the vault's care, the clinical
//! part to the upstream), identity criteria of searches and conditional writes are answered from
//! the blind index, and a JSON Patch is applied here to the whole resource and sent on as an
//! update. What a write leaves to do once the upstream answers is its [`Pending`]; a surrogate
//! made for it is held by a [`Rollback`] guard until the write goes ahead.

use std::collections::HashMap;

use bytes::Bytes;
use fhirseal_adapters::scrub::Terms;
use fhirseal_adapters::search::NO_MATCH;
use fhirseal_adapters::smart::Reach;
use fhirseal_adapters::{fhir, patch, Format, Interaction};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use serde_json::Value;

use super::ctx::{PagedQuery, RequestCtx, UpstreamQuery};
use super::deps::Deps;
use super::plan::RequestBody;
use crate::body::{empty, full, ProxyBody};
use crate::error::ProxyError;
use crate::http_util::{collect_limited, json_request};
use crate::sealing::{Prepared, SealError, Sealing, SearchQueryError, SearchRewrite};
use crate::upstream::MAX_READ_BACK;

/// What a write left to do once the upstream answers.
pub(crate) enum Pending {
    Nothing,
    /// One resource; `create` commits only on 201 (a 200 to a conditional create means an
    /// existing resource matched and nothing was written).
    One {
        prepared: Prepared,
        create: bool,
        /// A PATCH the sidecar sent as an update: HAPI answers a PATCH without an ETag, so the
        /// update's ETag is dropped to answer as HAPI would have.
        patch: bool,
    },
    /// A transaction or batch: the prepared entries, by position.
    Bundle(Vec<Option<Prepared>>),
}

/// The outcome of `seal_request`.
pub(crate) enum Sealed {
    Forward(Request<ProxyBody>, Box<Pending>),
    /// The sidecar answers itself (e.g. the upstream refused the read a patch needs).
    Respond(Response<ProxyBody>),
}

/// Phase `seal_request`: the request as the upstream will see it, and what is left to do
/// once it answers. `body` is what `plan` read of the request.
pub(super) async fn seal_request(
    deps: &Deps,
    req: Request<ProxyBody>,
    body: RequestBody,
    ctx: &mut RequestCtx,
) -> Result<Sealed, ProxyError> {
    let interaction = ctx.interaction.clone();
    let forward = |req| Ok(Sealed::Forward(req, Box::new(Pending::Nothing)));
    match (interaction, body) {
        (
            Interaction::SearchType { resource_type }
            | Interaction::SearchCompartment { resource_type, .. },
            body,
        ) => {
            let resource_type = (resource_type != "*").then_some(resource_type);
            seal_search(deps, req, body, ctx, resource_type.as_deref())
        }
        (Interaction::SearchSystem, body) => seal_search(deps, req, body, ctx, None),
        (Interaction::ConditionalDelete { resource_type }, _) => {
            if let Some(query) = req.uri().query() {
                ctx.query = rewrite(deps, Some(&resource_type), query)?;
            }
            forward(req)
        }
        (Interaction::Create { resource_type }, RequestBody::Resource(value)) => {
            seal_one(deps, req, value, ctx, &resource_type, true).await
        }
        (Interaction::Update { resource_type, .. }, RequestBody::Resource(value)) => {
            seal_one(deps, req, value, ctx, &resource_type, false).await
        }
        (Interaction::ConditionalUpdate { resource_type }, RequestBody::Resource(value)) => {
            if let Some(query) = req.uri().query() {
                ctx.query = rewrite(deps, Some(&resource_type), query)?;
            }
            seal_one(deps, req, value, ctx, &resource_type, false).await
        }
        (Interaction::Patch { resource_type, id }, RequestBody::JsonPatch(patch)) => {
            seal_patch(deps, req, patch, ctx, &resource_type, &id).await
        }
        (Interaction::Bundle, RequestBody::Resource(value)) => {
            seal_bundle(deps, req, value, ctx.write_id.clone()).await
        }
        (interaction, RequestBody::Streamed) if !interaction.is_write() => forward(req),
        (interaction, _) => Err(ProxyError::Internal(format!(
            "the plan read no body a {} can be sealed from",
            interaction.name()
        ))),
    }
}

/// The query the upstream receives: identity criteria answered from the blind index.
fn rewrite(
    deps: &Deps,
    resource_type: Option<&str>,
    query: &str,
) -> Result<UpstreamQuery, ProxyError> {
    Ok(match rewritten(deps, resource_type, query)? {
        Some(rewritten) => UpstreamQuery::Rewritten(rewritten),
        None => UpstreamQuery::Client,
    })
}

/// `query` with its identity criteria answered from the blind index; `None` when it has
/// none.
fn rewritten(
    deps: &Deps,
    resource_type: Option<&str>,
    query: &str,
) -> Result<Option<String>, ProxyError> {
    deps.sealing
        .rewrite_search(resource_type, query)
        .map_err(search_error)
}

fn search_error(error: SearchQueryError) -> ProxyError {
    match error {
        SearchQueryError::Unsupported(e) => ProxyError::Search(e),
        SearchQueryError::Seal(e) => ProxyError::Seal(e),
        SearchQueryError::Refiling => ProxyError::Refiling,
    }
}

/// A search's query for the upstream: as [`rewrite`] has it, or one page of a search that
/// matches more than a query may carry, which the sidecar pages itself.
fn page(
    deps: &Deps,
    resource_type: Option<&str>,
    query: &str,
) -> Result<UpstreamQuery, ProxyError> {
    let rewritten = deps.sealing.page_search(
        resource_type,
        query,
        deps.limits.max_query_bytes,
        deps.clock.now_ms(),
    );
    Ok(match rewritten.map_err(search_error)? {
        None => UpstreamQuery::Client,
        Some(SearchRewrite::Query(rewritten)) => UpstreamQuery::Rewritten(rewritten),
        Some(SearchRewrite::Page {
            query: upstream,
            paging,
            total,
        }) => UpstreamQuery::Paged(Box::new(PagedQuery {
            upstream,
            client: query.to_owned(),
            paging,
            total,
        })),
    })
}

fn seal_search(
    deps: &Deps,
    req: Request<ProxyBody>,
    body: RequestBody,
    ctx: &mut RequestCtx,
    resource_type: Option<&str>,
) -> Result<Sealed, ProxyError> {
    if let Some(query) = req.uri().query() {
        // The sidecar pages only what the query alone chooses: not a compartment, a form's
        // criteria, or the patient an access token confines the search to, which narrow the
        // answer beyond the matches it would count.
        let alone = matches!(ctx.interaction, Interaction::SearchType { .. })
            && matches!(*req.method(), Method::GET | Method::HEAD)
            && !matches!(body, RequestBody::Form(_))
            && !matches!(
                ctx.reach,
                Reach::Patient {
                    search: Some(_),
                    ..
                }
            );
        ctx.query = if alone {
            page(deps, resource_type, query)?
        } else {
            rewrite(deps, resource_type, query)?
        };
    }
    let RequestBody::Form(form) = body else {
        return Ok(Sealed::Forward(req, Box::new(Pending::Nothing)));
    };
    let (mut parts, _) = req.into_parts();
    let body = Bytes::from(rewritten(deps, resource_type, &form)?.unwrap_or(form));
    parts
        .headers
        .insert(header::CONTENT_LENGTH, body.len().into());
    Ok(Sealed::Forward(
        Request::from_parts(parts, full(body)),
        Box::new(Pending::Nothing),
    ))
}

/// Splits one resource off the async workers (its split may unseal the identity of the
/// persons it refers to).
async fn prepare(
    deps: &Deps,
    mut value: Value,
    context: HashMap<String, String>,
    terms: Terms,
) -> Result<(Value, Prepared), ProxyError> {
    let sealing = deps.sealing.clone();
    tokio::task::spawn_blocking(move || {
        let prepared = sealing.prepare(&mut value, &|r| context.get(r).cloned(), &terms)?;
        Ok::<_, SealError>((value, prepared))
    })
    .await
    .map_err(|e| ProxyError::Internal(e.to_string()))?
    .map_err(prepare_error)
}

/// Create, update, conditional update: one resource in the body.
async fn seal_one(
    deps: &Deps,
    req: Request<ProxyBody>,
    value: Value,
    ctx: &mut RequestCtx,
    resource_type: &str,
    create: bool,
) -> Result<Sealed, ProxyError> {
    let (mut parts, _) = req.into_parts();
    let found = value
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("");
    if found != resource_type {
        return Err(ProxyError::Invalid(format!(
            "the body is a {found} but the URL names {resource_type}"
        )));
    }
    let (mut value, prepared) = prepare(deps, value, HashMap::new(), Terms::new()).await?;
    mark_source(&mut value, &ctx.write_id, 0);
    // From here a surrogate made for this write is forgotten if any step fails.
    let guard = Rollback::new(&deps.sealing, prepared);
    let surrogate = guard.prepared().surrogate.clone();
    if create {
        if let Some(condition) = parts.headers.get("if-none-exist") {
            let condition = condition
                .to_str()
                .map_err(|_| ProxyError::BadHeader("If-None-Exist is not ASCII".to_owned()))?
                .to_owned();
            let condition = condition.strip_prefix('?').unwrap_or(&condition);
            if let Some(rewritten) = rewritten(deps, Some(resource_type), condition)? {
                match no_match_condition(&rewritten, surrogate.as_deref()) {
                    // No person matches the identity criteria and the resource is no
                    // person: nothing can match, and HAPI checks that what it creates
                    // satisfies the criteria, so the create is unconditional.
                    None => {
                        parts.headers.remove("if-none-exist");
                    }
                    Some(condition) => {
                        let value = HeaderValue::from_str(&condition)
                            .map_err(|e| ProxyError::Internal(e.to_string()))?;
                        parts.headers.insert("if-none-exist", value);
                    }
                }
            }
        }
    }
    if let UpstreamQuery::Rewritten(query) = ctx.query.clone() {
        match no_match_condition(&query, surrogate.as_deref()) {
            Some(condition) => ctx.query = UpstreamQuery::Rewritten(condition),
            None => {
                // A conditional update whose identity criteria match no one creates the
                // resource; HAPI would refuse criteria the new resource does not satisfy.
                match value.get("id").and_then(Value::as_str) {
                    Some(id) => ctx.rel_path = format!("/{resource_type}/{id}"),
                    None => {
                        parts.method = Method::POST;
                        ctx.rel_path = format!("/{resource_type}");
                    }
                }
                ctx.query = UpstreamQuery::Dropped;
            }
        }
    }
    let request = json_request(parts, &value)?;
    Ok(Sealed::Forward(
        request,
        Box::new(Pending::One {
            prepared: guard.keep(),
            create,
            patch: false,
        }),
    ))
}

/// JSON Patch meets the whole resource here, then goes upstream as an update pinned to the
/// version it was applied to. (Other patch formats are refused by `plan`.)
async fn seal_patch(
    deps: &Deps,
    req: Request<ProxyBody>,
    patch_bytes: Bytes,
    ctx: &mut RequestCtx,
    resource_type: &str,
    id: &str,
) -> Result<Sealed, ProxyError> {
    let (mut parts, _) = req.into_parts();
    // The current version, as the upstream holds it.
    let url = format!("{}/{resource_type}/{id}", deps.upstream.base);
    let current = Request::get(url)
        .header(header::ACCEPT, Format::Json.mime())
        .body(empty())
        .map_err(|e| ProxyError::Internal(e.to_string()))?;
    let response = deps.upstream.send(current).await?;
    if response.status() != StatusCode::OK {
        return Ok(Sealed::Respond(response));
    }
    let bytes = collect_limited(response.into_body(), MAX_READ_BACK).await?;
    let mut value: Value =
        serde_json::from_slice(&bytes).map_err(|e| ProxyError::UpstreamBody(e.to_string()))?;
    let version = value
        .get("meta")
        .and_then(|m| m.get("versionId"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let sealing = deps.sealing.clone();
    let mut value =
        tokio::task::spawn_blocking(move || sealing.reidentify(&mut value, None).map(|_| value))
            .await
            .map_err(|e| ProxyError::Internal(e.to_string()))??;
    patch::apply_json_patch(&mut value, &patch_bytes).map_err(|e| match e {
        patch::PatchError::Malformed(_) => ProxyError::Invalid(e.to_string()),
        // HAPI answers a patch whose test fails with 400; so does the sidecar.
        patch::PatchError::Failed(_) => ProxyError::Invalid(e.to_string()),
    })?;
    fhir::check_depth(
        &serde_json::to_vec(&value).unwrap_or_default(),
        Format::Json,
    )
    .map_err(|e| ProxyError::Invalid(format!("the patched resource: {e}")))?;
    fhir::validate(&value).map_err(|e| {
        ProxyError::Unprocessable(format!("the patched resource is not valid: {e}"))
    })?;
    let (mut value, prepared) = prepare(deps, value, HashMap::new(), Terms::new()).await?;
    mark_source(&mut value, &ctx.write_id, 0);
    let guard = Rollback::new(&deps.sealing, prepared);
    parts.method = Method::PUT;
    if !parts.headers.contains_key(header::IF_MATCH) {
        if let Some(version) = version {
            let value = HeaderValue::from_str(&format!("W/\"{version}\""))
                .map_err(|e| ProxyError::Internal(e.to_string()))?;
            parts.headers.insert(header::IF_MATCH, value);
        }
    }
    ctx.interaction = Interaction::Update {
        resource_type: resource_type.to_owned(),
        id: id.to_owned(),
    };
    let request = json_request(parts, &value)?;
    Ok(Sealed::Forward(
        request,
        Box::new(Pending::One {
            prepared: guard.keep(),
            create: false,
            patch: true,
        }),
    ))
}

/// A transaction or batch: every entry's resource is split; criteria are rewritten.
async fn seal_bundle(
    deps: &Deps,
    req: Request<ProxyBody>,
    value: Value,
    write_id: String,
) -> Result<Sealed, ProxyError> {
    let (parts, _) = req.into_parts();
    if value.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(ProxyError::Invalid(
            "a POST to the base must carry a transaction or batch Bundle".to_owned(),
        ));
    }
    let kind = value.get("type").and_then(Value::as_str).unwrap_or("");
    if kind != "transaction" && kind != "batch" {
        return Err(ProxyError::Invalid(format!(
            "a Bundle of type '{kind}' cannot be processed: expected transaction or batch"
        )));
    }
    let sealing = deps.sealing.clone();
    let (value, prepared) = tokio::task::spawn_blocking(move || {
        let mut value = value;
        let mut urn_types = HashMap::new();
        // The persons the bundle writes: free text anywhere in it must not name them.
        let mut terms = Terms::new();
        for entry in value["entry"].as_array().into_iter().flatten() {
            let Some(ty) = entry
                .pointer("/resource/resourceType")
                .and_then(Value::as_str)
            else {
                continue;
            };
            if let Some(url) = entry.get("fullUrl").and_then(Value::as_str) {
                urn_types.insert(url.to_owned(), ty.to_owned());
            }
            if sealing.profile().is_person(ty) {
                terms.extend(&sealing.profile().terms_of(&entry["resource"]));
            }
        }
        let context = |reference: &str| urn_types.get(reference).cloned();
        let mut prepared = Vec::new();
        let result = prepare_entries(
            &sealing,
            &write_id,
            &mut value,
            &context,
            &terms,
            &mut prepared,
        );
        if let Err(error) = result {
            for p in prepared.iter().flatten() {
                sealing.rollback(p);
            }
            return Err(error);
        }
        Ok((value, prepared))
    })
    .await
    .map_err(|e| ProxyError::Internal(e.to_string()))??;
    let guards: Vec<Option<Rollback<'_>>> = prepared
        .into_iter()
        .map(|p| p.map(|p| Rollback::new(&deps.sealing, p)))
        .collect();
    let mut value = value;
    let surrogates: Vec<Option<String>> = guards
        .iter()
        .map(|g| g.as_ref().and_then(|g| g.prepared().surrogate.clone()))
        .collect();
    rewrite_entries(deps, &mut value, &surrogates)?;
    let request = json_request(parts, &value)?;
    Ok(Sealed::Forward(
        request,
        Box::new(Pending::Bundle(
            guards.into_iter().map(|g| g.map(Rollback::keep)).collect(),
        )),
    ))
}

/// The criteria of a batch's or transaction's entries (their URLs' queries and
/// `ifNoneExist`) answered from the blind index. `surrogates[i]` is the surrogate of entry
/// `i`'s person, when it writes one.
fn rewrite_entries(
    deps: &Deps,
    bundle: &mut Value,
    surrogates: &[Option<String>],
) -> Result<(), ProxyError> {
    let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    for (entry, surrogate) in entries.iter_mut().zip(surrogates) {
        let method = entry
            .pointer("/request/method")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let url = entry
            .pointer("/request/url")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let (path, query) = match url.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (url.clone(), None),
        };
        let url_type = path.split('/').next().unwrap_or("").to_owned();
        let resource_id = entry
            .pointer("/resource/id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if let Some(query) = query {
            if let Some(rewritten) = rewritten(deps, Some(&url_type), &query)? {
                match no_match_condition(&rewritten, surrogate.as_deref()) {
                    Some(condition) => {
                        entry["request"]["url"] = Value::String(format!("{path}?{condition}"))
                    }
                    // As for a single conditional update matching no one: a create.
                    None if method == "PUT" => match &resource_id {
                        Some(id) => {
                            entry["request"]["url"] = Value::String(format!("{url_type}/{id}"))
                        }
                        None => {
                            entry["request"]["method"] = Value::String("POST".to_owned());
                            entry["request"]["url"] = Value::String(url_type.clone());
                        }
                    },
                    None => entry["request"]["url"] = Value::String(format!("{path}?{rewritten}")),
                }
            }
        }
        if let Some(condition) = entry
            .pointer("/request/ifNoneExist")
            .and_then(Value::as_str)
            .map(str::to_owned)
        {
            let condition = condition.strip_prefix('?').unwrap_or(&condition).to_owned();
            if let Some(rewritten) = rewritten(deps, Some(&url_type), &condition)? {
                match no_match_condition(&rewritten, surrogate.as_deref()) {
                    Some(condition) => {
                        entry["request"]["ifNoneExist"] = Value::String(condition);
                    }
                    None => {
                        if let Some(request) = entry["request"].as_object_mut() {
                            request.shift_remove("ifNoneExist");
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Splits every entry's resource of a batch or transaction (PATCH entries are refused: the
/// sidecar cannot see the whole resource they change). Blocking: splits may unseal.
fn prepare_entries(
    sealing: &Sealing,
    write_id: &str,
    bundle: &mut Value,
    context: &dyn Fn(&str) -> Option<String>,
    terms: &Terms,
    prepared: &mut Vec<Option<Prepared>>,
) -> Result<(), ProxyError> {
    let Some(entries) = bundle.get_mut("entry").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    for (index, entry) in entries.iter_mut().enumerate() {
        let method = entry
            .pointer("/request/method")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let this = match method.as_str() {
            "POST" | "PUT" => match entry.get_mut("resource") {
                Some(resource) => {
                    let prepared = sealing
                        .prepare(resource, context, terms)
                        .map_err(prepare_error)?;
                    mark_source(resource, write_id, index as u32);
                    Some(prepared)
                }
                None => None,
            },
            "PATCH" => {
                return Err(ProxyError::NotSupported(format!(
                    "Bundle entry {index}: PATCH entries are not supported through fhirseal; send the resource with PUT"
                )))
            }
            _ => None,
        };
        prepared.push(this);
    }
    Ok(())
}

/// The source a written resource carries to the upstream: `urn:fhirseal:write:<write id>:<position>`
/// (HAPI appends `#<request id>`), so that after a crash the version this write made is found
/// again by `_source` (see `recover`). It replaces a source the client set: the upstream keeps
/// one source per version, and this one is what makes the write recoverable.
pub(super) const WRITE_SOURCE: &str = "urn:fhirseal:write:";

/// The source of position `position` of write `write_id`.
pub(super) fn write_source(write_id: &str, position: u32) -> String {
    format!("{WRITE_SOURCE}{write_id}:{position}")
}

fn mark_source(resource: &mut Value, write_id: &str, position: u32) {
    let Some(map) = resource.as_object_mut() else {
        return;
    };
    let meta = map
        .entry("meta")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if let Some(meta) = meta.as_object_mut() {
        meta.insert(
            "source".to_owned(),
            Value::String(write_source(write_id, position)),
        );
    }
}

/// A split that failed: the client's fault when its resource refers to too many persons.
fn prepare_error(error: SealError) -> ProxyError {
    match error {
        SealError::TooManyPersons(_) => ProxyError::Unprocessable(error.to_string()),
        other => ProxyError::Seal(other),
    }
}

/// Undo by guard: what `prepare` stored for a write (a surrogate made for its person) is
/// forgotten when the guard drops, unless the write goes ahead ([`Rollback::keep`]), so that
/// every early exit between the split and the upstream's answer is covered.
struct Rollback<'a> {
    sealing: &'a Sealing,
    prepared: Option<Prepared>,
}

impl<'a> Rollback<'a> {
    fn new(sealing: &'a Sealing, prepared: Prepared) -> Rollback<'a> {
        Rollback {
            sealing,
            prepared: Some(prepared),
        }
    }

    fn prepared(&self) -> &Prepared {
        // Set in `new`, taken only by `keep` and `drop`, which consume the guard.
        self.prepared
            .as_ref()
            .unwrap_or_else(|| unreachable!("a rollback guard holds its write until kept"))
    }

    /// The write goes ahead: its pending part is the caller's to commit or roll back.
    fn keep(mut self) -> Prepared {
        self.prepared
            .take()
            .unwrap_or_else(|| unreachable!("a rollback guard holds its write until kept"))
    }
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if let Some(prepared) = self.prepared.take() {
            self.sealing.rollback(&prepared);
        }
    }
}

/// A rewritten condition whose identity criteria matched no one: for a person resource the
/// criteria become its surrogate (no one else has it, and the new resource satisfies it);
/// `None` when there is no surrogate to use. Conditions that matched pass as they are.
fn no_match_condition(rewritten: &str, surrogate: Option<&str>) -> Option<String> {
    let missing = format!("_id={NO_MATCH}");
    if !rewritten.split('&').any(|p| p == missing) {
        return Some(rewritten.to_owned());
    }
    let surrogate = surrogate?;
    let by_surrogate = format!("identifier=urn%3Afhirseal%3Apseudonym%7C{surrogate}");
    Some(
        rewritten
            .split('&')
            .map(|p| {
                if p == missing {
                    by_surrogate.as_str()
                } else {
                    p
                }
            })
            .collect::<Vec<_>>()
            .join("&"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhirseal_storage::{NodeKeys, SecretKey};
    use serde_json::json;

    /// A node's sealing in a fresh directory, with a link key.
    fn sealing(dir: &std::path::Path) -> Sealing {
        open_sealing(dir).unwrap()
    }

    fn open_sealing(dir: &std::path::Path) -> Result<Sealing, crate::sealing::SealError> {
        let config = crate::config::Config {
            data_dir: dir.to_owned(),
            ..crate::config::Config::default()
        };
        let (keys, _) = NodeKeys::load_or_create(&dir.join("keys"), 2048).unwrap();
        let (_link, link_key) = tokio::sync::watch::channel(Some(SecretKey::random().unwrap()));
        Sealing::open(&config, keys, link_key, Default::default())
    }

    fn patient(family: &str) -> Value {
        json!({"resourceType": "Patient", "name": [{"family": family}],
            "identifier": [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": family}]})
    }

    #[tokio::test]
    async fn a_surrogate_made_for_a_write_is_forgotten_unless_the_write_goes_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let sealing = sealing(dir.path());
        let no_context = |_: &str| None;
        // Every early exit drops the guard: the surrogate made for the write goes.
        let mut dropped = patient("Dropped");
        let prepared = sealing
            .prepare(&mut dropped, &no_context, &Terms::new())
            .unwrap();
        let surrogate = prepared.surrogate.clone().unwrap();
        assert!(sealing
            .vault()
            .fingerprint_of(&surrogate)
            .unwrap()
            .is_some());
        drop(Rollback::new(&sealing, prepared));
        assert!(sealing
            .vault()
            .fingerprint_of(&surrogate)
            .unwrap()
            .is_none());
        // Kept, it stays for the commit (or the commit phase's own rollback).
        let mut kept = patient("Kept");
        let prepared = sealing
            .prepare(&mut kept, &no_context, &Terms::new())
            .unwrap();
        let surrogate = prepared.surrogate.clone().unwrap();
        let pending = Rollback::new(&sealing, prepared).keep();
        assert!(sealing
            .vault()
            .fingerprint_of(&surrogate)
            .unwrap()
            .is_some());
        // A person seen before keeps the surrogate it has: dropping a later write's guard
        // forgets nothing of it.
        let mut again = patient("Kept");
        let prepared = sealing
            .prepare(&mut again, &no_context, &Terms::new())
            .unwrap();
        assert_eq!(prepared.surrogate.as_deref(), Some(surrogate.as_str()));
        drop(Rollback::new(&sealing, prepared));
        assert!(sealing
            .vault()
            .fingerprint_of(&surrogate)
            .unwrap()
            .is_some());
        sealing.rollback(&pending);
    }

    /// A Synthea Patient of the shared data, as written.
    fn synthea_patient() -> Value {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data");
        let file = std::fs::read_dir(dir.join("synthea"))
            .or_else(|_| std::fs::read_dir(&dir))
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "json"))
            .unwrap();
        let bundle: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"].clone())
            .find(|r| r["resourceType"] == "Patient")
            .unwrap()
    }

    #[tokio::test]
    async fn a_vault_filed_in_another_layout_waits_for_searches_until_refiled() {
        let dir = tempfile::tempdir().unwrap();
        let original = synthea_patient();
        let family = original["name"][0]["family"].as_str().unwrap().to_owned();
        let search = format!("family={}", &family[..4]);
        let mut clinical = original.clone();
        {
            let sealing = sealing(dir.path());
            let prepared = sealing
                .prepare(&mut clinical, &|_: &str| None, &Terms::new())
                .unwrap();
            sealing.commit(&prepared, "p1", "1", None).unwrap();
            let found = sealing.rewrite_search(Some("Patient"), &search).unwrap();
            assert_eq!(found.as_deref(), Some("_id=p1"));
            assert!(sealing.to_refile().unwrap().is_none());
            // As an earlier build would have left it: other entries, no layout recorded.
            sealing.vault().refile("Patient", "p1", &[]).unwrap();
            sealing.vault().database().remove("blind-layout").unwrap();
            sealing.vault().flush().unwrap();
        }
        // The flusher task and the committer thread let go of the vault once they see their
        // channels closed.
        let mut attempts = 0;
        let sealing = loop {
            match open_sealing(dir.path()) {
                Ok(sealing) => break sealing,
                Err(e) if attempts < 50 && e.to_string().contains("lock") => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert!(matches!(
            sealing.rewrite_search(Some("Patient"), &search),
            Err(SearchQueryError::Refiling)
        ));
        let to_refile = sealing.to_refile().unwrap().unwrap();
        assert_eq!(
            to_refile,
            vec![("Patient".to_owned(), "p1".to_owned(), "1".to_owned())]
        );
        // The clinical part as the upstream holds it keeps what identity alone does not (the
        // address's state).
        sealing
            .refile("Patient", "p1", "1", Some(clinical))
            .unwrap();
        sealing.refiled().unwrap();
        assert!(sealing.to_refile().unwrap().is_none());
        // Refiled from the sealed identity: every identity search finds the person again.
        let text = |pointer: &str| original.pointer(pointer).unwrap().as_str().unwrap();
        for query in [
            format!("given={}", text("/name/0/given/0")),
            format!("family:exact={}", text("/name/0/family")),
            format!("address-city={}", text("/address/0/city")),
            format!("address={}", text("/address/0/line/0")),
            format!("address={}", text("/address/0/state")),
            format!("birthdate={}", text("/birthDate")),
            format!(
                "identifier={}|{}",
                text("/identifier/1/system"),
                text("/identifier/1/value")
            ),
            format!("phone={}", text("/telecom/0/value")),
        ] {
            let query: String = query.replace(' ', "%20");
            let found = sealing.rewrite_search(Some("Patient"), &query).unwrap();
            assert_eq!(found.as_deref(), Some("_id=p1"), "{query}");
        }
    }

    #[test]
    fn conditions_that_matched_no_one_become_the_new_persons_surrogate() {
        let missing = format!("gender=female&_id={NO_MATCH}");
        assert_eq!(
            no_match_condition(&missing, Some("s-1")).as_deref(),
            Some("gender=female&identifier=urn%3Afhirseal%3Apseudonym%7Cs-1")
        );
        // Not a person: nothing can match, the condition is dropped.
        assert_eq!(no_match_condition(&missing, None), None);
        // A condition that matched someone passes as it is.
        assert_eq!(
            no_match_condition("_id=a,b", Some("s-1")).as_deref(),
            Some("_id=a,b")
        );
    }
}
