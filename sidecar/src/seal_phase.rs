//! The proxy's sealing phases, between `request_filter` and `upstream_request` and after the
//! upstream answers:
//!
//! - `seal_request` — writes are parsed strictly, split, and the clinical part forwarded as
//!   JSON; identity searches (and conditional writes' criteria) are rewritten from the blind
//!   index; JSON Patch is applied here, against the whole resource, and sent on as an update;
//! - `commit_seal` — once the upstream has accepted a write and named its id and version, the
//!   identity is sealed under them and made durable before the client hears back; a refused
//!   write leaves nothing behind;
//! - `unseal_response` — for principals who may see identity, every resource of a response is
//!   merged with its identity again.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use fhirseal_adapters::auth::Principal;
use fhirseal_adapters::search::NO_MATCH;
use fhirseal_adapters::{canonical, fhir, patch, Format, Interaction};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use serde_json::Value;

use crate::body::{empty, full, ProxyBody};
use crate::error::ProxyError;
use crate::proxy::{collect_body, collect_limited, Admitted, BodyFrom, Proxy};
use crate::sealing::{Prepared, SearchQueryError};

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

/// A version the upstream accepted, on its way into the vault and the outbox.
struct Written {
    prepared: Prepared,
    id: String,
    version: String,
    /// The stored resource, when the upstream returned it.
    returned: Option<Value>,
}

/// Whether `value` is a resource (of `resource_type`, when given) with this id and version;
/// with an empty id, whether it is a resource with an id and a version at all.
fn is_version(value: &Value, resource_type: Option<&str>, id: &str, version: &str) -> bool {
    let field = |pointer: &str| value.pointer(pointer).and_then(Value::as_str);
    let (Some(ty), Some(found_id), Some(found_version)) = (
        field("/resourceType"),
        field("/id"),
        field("/meta/versionId"),
    ) else {
        return false;
    };
    resource_type.is_none_or(|t| t == ty)
        && ty != "OperationOutcome"
        && (id.is_empty() || (found_id == id && found_version == version))
}

/// The outcome of `seal_request`.
pub(crate) enum Sealed {
    Forward(Request<ProxyBody>, Box<Pending>),
    /// The sidecar answers itself (e.g. the upstream refused the read a patch needs).
    Respond(Response<ProxyBody>),
}

/// Largest upstream body read back for unsealing.
const MAX_UNSEAL_RESPONSE: u64 = 256 * 1024 * 1024;

impl Proxy {
    pub(crate) async fn seal_request(
        &self,
        req: Request<ProxyBody>,
        admitted: &mut Admitted,
        principal: &Principal,
    ) -> Result<Sealed, ProxyError> {
        let interaction = admitted.interaction.clone();
        match interaction {
            Interaction::SearchType { resource_type }
            | Interaction::SearchCompartment { resource_type, .. } => {
                self.seal_search(req, admitted, Some(&resource_type)).await
            }
            Interaction::SearchSystem => self.seal_search(req, admitted, None).await,
            Interaction::ConditionalDelete { resource_type } => {
                if let Some(query) = req.uri().query() {
                    admitted.query = self.rewrite(Some(&resource_type), query)?;
                }
                Ok(Sealed::Forward(req, Box::new(Pending::Nothing)))
            }
            Interaction::Create { resource_type } => {
                self.seal_one(req, admitted, &resource_type, true).await
            }
            Interaction::Update { resource_type, .. } => {
                self.seal_one(req, admitted, &resource_type, false).await
            }
            Interaction::ConditionalUpdate { resource_type } => {
                if let Some(query) = req.uri().query() {
                    admitted.query = self.rewrite(Some(&resource_type), query)?;
                }
                self.seal_one(req, admitted, &resource_type, false).await
            }
            Interaction::Patch { resource_type, id } => {
                self.seal_patch(req, admitted, principal, &resource_type, &id)
                    .await
            }
            Interaction::ConditionalPatch { .. } => Err(ProxyError::NotSupported(
                "conditional PATCH is not supported through fhirseal: read the resource, then PATCH it by id".to_owned(),
            )),
            Interaction::Bundle => self.seal_bundle(req).await,
            _ => Ok(Sealed::Forward(req, Box::new(Pending::Nothing))),
        }
    }

    fn rewrite(
        &self,
        resource_type: Option<&str>,
        query: &str,
    ) -> Result<Option<String>, ProxyError> {
        match self.shared.sealing.rewrite_search(resource_type, query) {
            Ok(rewritten) => Ok(rewritten),
            Err(SearchQueryError::Unsupported(e)) => Err(ProxyError::Search(e)),
            Err(SearchQueryError::Seal(e)) => Err(ProxyError::Seal(e)),
        }
    }

    async fn seal_search(
        &self,
        req: Request<ProxyBody>,
        admitted: &mut Admitted,
        resource_type: Option<&str>,
    ) -> Result<Sealed, ProxyError> {
        if let Some(query) = req.uri().query() {
            admitted.query = self.rewrite(resource_type, query)?;
        }
        let form = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if req.method() != Method::POST || !form {
            return Ok(Sealed::Forward(req, Box::new(Pending::Nothing)));
        }
        let (mut parts, body) = req.into_parts();
        let bytes = self.collect_request(body).await?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| ProxyError::Invalid("the _search form is not UTF-8".to_owned()))?;
        let body = match self.rewrite(resource_type, text)? {
            Some(rewritten) => Bytes::from(rewritten),
            None => bytes,
        };
        parts
            .headers
            .insert(header::CONTENT_LENGTH, body.len().into());
        Ok(Sealed::Forward(
            Request::from_parts(parts, full(body)),
            Box::new(Pending::Nothing),
        ))
    }

    /// Create, update, conditional update: one resource in the body.
    async fn seal_one(
        &self,
        req: Request<ProxyBody>,
        admitted: &mut Admitted,
        resource_type: &str,
        create: bool,
    ) -> Result<Sealed, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let bytes = self.collect_request(body).await?;
        let mut value = parse_body(&parts.headers, &bytes)?;
        let found = value
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("");
        if found != resource_type {
            return Err(ProxyError::Invalid(format!(
                "the body is a {found} but the URL names {resource_type}"
            )));
        }
        let prepared = self.shared.sealing.prepare(&mut value, &|_| None)?;
        let surrogate = prepared.surrogate.clone();
        if create {
            if let Some(condition) = parts.headers.get("if-none-exist") {
                let condition = condition
                    .to_str()
                    .map_err(|_| ProxyError::BadHeader("If-None-Exist is not ASCII".to_owned()))?
                    .to_owned();
                let condition = condition.strip_prefix('?').unwrap_or(&condition);
                if let Some(rewritten) = self.rewrite(Some(resource_type), condition)? {
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
        if let Some(query) = admitted.query.clone() {
            match no_match_condition(&query, surrogate.as_deref()) {
                Some(condition) => admitted.query = Some(condition),
                None => {
                    // A conditional update whose identity criteria match no one creates the
                    // resource; HAPI would refuse criteria the new resource does not satisfy.
                    match value.get("id").and_then(Value::as_str) {
                        Some(id) => admitted.rel_path = format!("/{resource_type}/{id}"),
                        None => {
                            parts.method = Method::POST;
                            admitted.rel_path = format!("/{resource_type}");
                        }
                    }
                    admitted.query = Some(String::new());
                }
            }
        }
        let request = json_request(parts, &value)?;
        Ok(Sealed::Forward(
            request,
            Box::new(Pending::One {
                prepared,
                create,
                patch: false,
            }),
        ))
    }

    /// JSON Patch meets the whole resource here, then goes upstream as an update pinned to the
    /// version it was applied to. FHIRPath Patch passes only where no identity can be touched.
    async fn seal_patch(
        &self,
        req: Request<ProxyBody>,
        admitted: &mut Admitted,
        principal: &Principal,
        resource_type: &str,
        id: &str,
    ) -> Result<Sealed, ProxyError> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if content_type != "application/json-patch+json" {
            let sealing = &self.shared.sealing;
            if content_type == "application/xml-patch+xml"
                || sealing.profile().is_person(resource_type)
            {
                return Err(ProxyError::NotSupported(format!(
                    "only JSON Patch (application/json-patch+json) can change a {resource_type} through fhirseal"
                )));
            }
            // FHIRPath Patch of a resource that is no person: the upstream applies it, and the
            // version it makes is anchored.
            return Ok(Sealed::Forward(
                req,
                Box::new(Pending::One {
                    prepared: Prepared::clinical_only(resource_type),
                    create: false,
                    patch: false,
                }),
            ));
        }
        if !principal.sees_identity {
            return Err(ProxyError::Forbidden(
                "JSON Patch is applied to the whole resource, identity included: this principal may not see identity".to_owned(),
            ));
        }
        let (mut parts, body) = req.into_parts();
        let patch_bytes = self.collect_request(body).await?;
        // The current version, as the upstream holds it.
        let url = format!("{}/{resource_type}/{id}", self.shared.upstream.base);
        let current = Request::get(url)
            .header(header::ACCEPT, Format::Json.mime())
            .body(empty())
            .map_err(|e| ProxyError::Internal(e.to_string()))?;
        let response = self.send(current).await?;
        if response.status() != StatusCode::OK {
            return Ok(Sealed::Respond(response));
        }
        let bytes = collect_limited(response.into_body(), MAX_UNSEAL_RESPONSE).await?;
        let mut value: Value =
            serde_json::from_slice(&bytes).map_err(|e| ProxyError::UpstreamBody(e.to_string()))?;
        let version = value
            .get("meta")
            .and_then(|m| m.get("versionId"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let sealing = self.shared.sealing.clone();
        let mut value = tokio::task::spawn_blocking(move || {
            sealing.reidentify(&mut value, None).map(|_| value)
        })
        .await
        .map_err(|e| ProxyError::Internal(e.to_string()))??;
        patch::apply_json_patch(&mut value, &patch_bytes).map_err(|e| match e {
            patch::PatchError::Malformed(_) => ProxyError::Invalid(e.to_string()),
            // HAPI answers a patch whose test fails with 400; so does the sidecar.
            patch::PatchError::Failed(_) => ProxyError::Invalid(e.to_string()),
        })?;
        fhir::validate(&value).map_err(|e| {
            ProxyError::Unprocessable(format!("the patched resource is not valid: {e}"))
        })?;
        let prepared = self.shared.sealing.prepare(&mut value, &|_| None)?;
        parts.method = Method::PUT;
        if !parts.headers.contains_key(header::IF_MATCH) {
            if let Some(version) = version {
                let value = HeaderValue::from_str(&format!("W/\"{version}\""))
                    .map_err(|e| ProxyError::Internal(e.to_string()))?;
                parts.headers.insert(header::IF_MATCH, value);
            }
        }
        admitted.interaction = Interaction::Update {
            resource_type: resource_type.to_owned(),
            id: id.to_owned(),
        };
        let request = json_request(parts, &value)?;
        Ok(Sealed::Forward(
            request,
            Box::new(Pending::One {
                prepared,
                create: false,
                patch: true,
            }),
        ))
    }

    /// A transaction or batch: every entry's resource is split; criteria are rewritten.
    async fn seal_bundle(&self, req: Request<ProxyBody>) -> Result<Sealed, ProxyError> {
        let (parts, body) = req.into_parts();
        let bytes = self.collect_request(body).await?;
        let mut value = parse_body(&parts.headers, &bytes)?;
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
        let mut urn_types = HashMap::new();
        for entry in value["entry"].as_array().into_iter().flatten() {
            if let (Some(url), Some(ty)) = (
                entry.get("fullUrl").and_then(Value::as_str),
                entry
                    .pointer("/resource/resourceType")
                    .and_then(Value::as_str),
            ) {
                urn_types.insert(url.to_owned(), ty.to_owned());
            }
        }
        let context = |reference: &str| urn_types.get(reference).cloned();
        let mut prepared: Vec<Option<Prepared>> = Vec::new();
        let result = self.seal_entries(&mut value, &context, &mut prepared);
        if let Err(error) = result {
            for p in prepared.iter().flatten() {
                self.shared.sealing.rollback(p);
            }
            return Err(error);
        }
        let request = json_request(parts, &value)?;
        Ok(Sealed::Forward(
            request,
            Box::new(Pending::Bundle(prepared)),
        ))
    }

    fn seal_entries(
        &self,
        bundle: &mut Value,
        context: &dyn Fn(&str) -> Option<String>,
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
            let this = match method.as_str() {
                "POST" | "PUT" => match entry.get_mut("resource") {
                    Some(resource) => Some(self.shared.sealing.prepare(resource, context)?),
                    None => None,
                },
                "PATCH" => {
                    return Err(ProxyError::NotSupported(format!(
                        "Bundle entry {index}: PATCH entries are not supported through fhirseal; send the resource with PUT"
                    )))
                }
                _ => None,
            };
            let surrogate = this.as_ref().and_then(|p| p.surrogate.clone());
            prepared.push(this);
            if let Some(query) = query {
                if let Some(rewritten) = self.rewrite(Some(&url_type), &query)? {
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
                        None => {
                            entry["request"]["url"] = Value::String(format!("{path}?{rewritten}"))
                        }
                    }
                }
            }
            if let Some(condition) = entry
                .pointer("/request/ifNoneExist")
                .and_then(Value::as_str)
                .map(str::to_owned)
            {
                let condition = condition.strip_prefix('?').unwrap_or(&condition).to_owned();
                if let Some(rewritten) = self.rewrite(Some(&url_type), &condition)? {
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

    /// Seals and anchors what the upstream accepted; rolls back what it refused.
    pub(crate) async fn commit_seal(
        &self,
        response: Response<ProxyBody>,
        pending: Pending,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let sealing = &self.shared.sealing;
        match pending {
            Pending::Nothing => Ok(response),
            Pending::One {
                prepared,
                create,
                patch,
            } => {
                let status = response.status();
                let accepted = if create {
                    status == StatusCode::CREATED
                } else {
                    status.is_success()
                };
                if !accepted {
                    sealing.rollback(&prepared);
                    return Ok(response);
                }
                // The body is read whole: it is usually the stored resource, which is hashed
                // for the anchor.
                let (parts, body) = response.into_parts();
                let bytes = collect_limited(body, MAX_UNSEAL_RESPONSE).await?;
                let returned = response_format(&parts.headers)
                    .filter(|f| *f == Format::Json)
                    .and_then(|_| serde_json::from_slice::<Value>(&bytes).ok());
                let named = version_from_headers(&parts.headers).or_else(|| {
                    let value = returned.as_ref()?;
                    let id = value.get("id").and_then(Value::as_str)?;
                    let version = value.pointer("/meta/versionId").and_then(Value::as_str)?;
                    Some((id.to_owned(), version.to_owned()))
                });
                let Some((id, version)) = named else {
                    sealing.rollback(&prepared);
                    return Err(ProxyError::UpstreamBody(
                        "the upstream accepted a write without naming its id and version"
                            .to_owned(),
                    ));
                };
                let written = Written {
                    prepared,
                    id,
                    version,
                    returned: returned.filter(|v| is_version(v, None, "", "")),
                };
                self.commit_written(vec![written]).await?;
                let mut response = Response::from_parts(parts, full(bytes));
                if patch {
                    response.headers_mut().remove(header::ETAG);
                }
                Ok(response)
            }
            Pending::Bundle(prepared) => {
                if !response.status().is_success() {
                    prepared.iter().flatten().for_each(|p| sealing.rollback(p));
                    return Ok(response);
                }
                let (parts, body) = response.into_parts();
                let bytes = collect_limited(body, MAX_UNSEAL_RESPONSE).await?;
                let format = response_format(&parts.headers).unwrap_or(Format::Json);
                let value = fhir::parse_lenient(&bytes, format)
                    .map_err(|e| ProxyError::UpstreamBody(e.to_string()))?;
                let results = value["entry"].as_array().cloned().unwrap_or_default();
                let mut written = Vec::new();
                for (index, p) in prepared.into_iter().enumerate() {
                    let Some(p) = p else { continue };
                    let result = results.get(index);
                    let status = result
                        .and_then(|r| r.pointer("/response/status"))
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    let location = result
                        .and_then(|r| r.pointer("/response/location"))
                        .and_then(Value::as_str)
                        .and_then(version_location);
                    match location {
                        Some((_, id, version)) if status.starts_with('2') => {
                            written.push(Written {
                                prepared: p,
                                id,
                                version,
                                returned: None,
                            })
                        }
                        _ => sealing.rollback(&p),
                    }
                }
                self.commit_written(written).await?;
                Ok(Response::from_parts(parts, full(bytes)))
            }
        }
    }

    /// Hashes each written version as the upstream stores it, seals its identity and queues its
    /// anchor (one vault transaction each), makes all of it durable, and with `anchor = "sync"`
    /// waits for the block. When the upstream's copies cannot be read back, the identity is
    /// still kept (so nothing written is lost) and the client hears that anchoring failed.
    async fn commit_written(&self, mut written: Vec<Written>) -> Result<(), ProxyError> {
        if written.is_empty() {
            return Ok(());
        }
        let hashed: Result<Vec<[u8; 32]>, ProxyError> =
            self.stored_versions(&mut written).await.and_then(|values| {
                values
                    .iter()
                    .map(|v| {
                        canonical::clinical_hash(v).map_err(|e| {
                            ProxyError::UpstreamBody(format!("a stored resource: {e}"))
                        })
                    })
                    .collect()
            });
        let hashes: Vec<Option<[u8; 32]>> = match &hashed {
            Ok(hashes) => hashes.iter().copied().map(Some).collect(),
            Err(_) => vec![None; written.len()],
        };
        // What `anchor = "sync"` waits for; nothing to keep otherwise.
        let versions: Vec<(String, String, String)> = if self.shared.anchor_sync {
            written
                .iter()
                .map(|w| {
                    (
                        w.prepared.resource_type.clone(),
                        w.id.clone(),
                        w.version.clone(),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        // A vault commit is a sled transaction over many keys: keep it off the async workers,
        // which other requests are waiting for.
        let sealing = self.shared.sealing.clone();
        tokio::task::spawn_blocking(move || {
            for (w, hash) in written.iter().zip(hashes) {
                sealing.commit(&w.prepared, &w.id, &w.version, hash)?;
            }
            Ok::<(), ProxyError>(())
        })
        .await
        .map_err(|e| ProxyError::Internal(e.to_string()))??;
        self.shared.sealing.durable().await?;
        hashed.map_err(|e| ProxyError::NotAnchored(e.to_string()))?;
        if self.shared.anchor_sync {
            let timeout = self.shared.sync_timeout;
            if !self.shared.ledger.wait_anchored(&versions, timeout).await? {
                return Err(ProxyError::AnchorTimeout(timeout.as_millis() as u64));
            }
        }
        Ok(())
    }

    /// The written versions as the upstream stores them, in JSON: what it returned when that is
    /// the version itself, else read back (one vread, or one batch of them).
    async fn stored_versions(&self, written: &mut [Written]) -> Result<Vec<Value>, ProxyError> {
        let missing: Vec<usize> = written
            .iter()
            .enumerate()
            .filter(|(_, w)| {
                !w.returned.as_ref().is_some_and(|v| {
                    is_version(v, Some(&w.prepared.resource_type), &w.id, &w.version)
                })
            })
            .map(|(i, _)| i)
            .collect();
        let urls: Vec<String> = missing
            .iter()
            .map(|&i| {
                let w = &written[i];
                format!(
                    "{}/{}/_history/{}",
                    w.prepared.resource_type, w.id, w.version
                )
            })
            .collect();
        let fetched = self.read_versions(&urls).await?;
        for ((i, url), (status, value)) in missing.into_iter().zip(&urls).zip(fetched) {
            let w = &mut written[i];
            match value {
                Some(value)
                    if is_version(&value, Some(&w.prepared.resource_type), &w.id, &w.version) =>
                {
                    w.returned = Some(value);
                }
                _ => {
                    return Err(ProxyError::UpstreamBody(format!(
                        "reading back {url} answered {status}"
                    )))
                }
            }
        }
        Ok(written
            .iter_mut()
            .filter_map(|w| w.returned.take())
            .collect())
    }

    /// Reads `urls` (relative to the upstream base) from the upstream as JSON: one GET for
    /// one, a batch Bundle of GETs for several. Each answer comes with its status; the resource
    /// only with a 200.
    pub(crate) async fn read_versions(
        &self,
        urls: &[String],
    ) -> Result<Vec<(StatusCode, Option<Value>)>, ProxyError> {
        let base = &self.shared.upstream.base;
        match urls {
            [] => Ok(Vec::new()),
            [url] => {
                let (status, value) = self
                    .upstream_json(Method::GET, &format!("{base}/{url}"), None)
                    .await?;
                Ok(vec![(status, (status == StatusCode::OK).then_some(value))])
            }
            _ => {
                let entries: Vec<Value> = urls
                    .iter()
                    .map(|url| serde_json::json!({"request": {"method": "GET", "url": url}}))
                    .collect();
                let bundle = serde_json::json!({
                    "resourceType": "Bundle",
                    "type": "batch",
                    "entry": entries,
                });
                let (status, value) = self
                    .upstream_json(Method::POST, base, Some(&bundle))
                    .await?;
                if status != StatusCode::OK {
                    return Err(ProxyError::UpstreamBody(format!(
                        "a batch reading {} versions answered {status}",
                        urls.len()
                    )));
                }
                let entries = value
                    .get("entry")
                    .and_then(Value::as_array)
                    .filter(|e| e.len() == urls.len())
                    .ok_or_else(|| {
                        ProxyError::UpstreamBody(
                            "a batch reading versions answered with the wrong number of entries"
                                .to_owned(),
                        )
                    })?;
                Ok(entries
                    .iter()
                    .map(|entry| {
                        let status = entry
                            .pointer("/response/status")
                            .and_then(Value::as_str)
                            .and_then(|s| s.get(..3))
                            .and_then(|s| s.parse::<u16>().ok())
                            .and_then(|s| StatusCode::from_u16(s).ok())
                            .unwrap_or(StatusCode::BAD_GATEWAY);
                        let resource = entry
                            .get("resource")
                            .filter(|_| status == StatusCode::OK)
                            .cloned();
                        (status, resource)
                    })
                    .collect())
            }
        }
    }

    /// One JSON exchange with the upstream, outside any client's request.
    pub(crate) async fn upstream_json(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), ProxyError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(url)
            .header(header::ACCEPT, Format::Json.mime());
        let body = match body {
            Some(value) => {
                builder = builder.header(header::CONTENT_TYPE, Format::Json.mime());
                full(serde_json::to_vec(value).map_err(|e| ProxyError::Internal(e.to_string()))?)
            }
            None => empty(),
        };
        let request = builder
            .body(body)
            .map_err(|e| ProxyError::Internal(e.to_string()))?;
        let response = self.send(request).await?;
        let status = response.status();
        let bytes = collect_limited(response.into_body(), MAX_UNSEAL_RESPONSE).await?;
        if bytes.is_empty() {
            return Ok((status, Value::Null));
        }
        let value = serde_json::from_slice(&bytes)
            .map_err(|e| ProxyError::UpstreamBody(format!("not JSON: {e}")))?;
        Ok((status, value))
    }

    /// Phase `unseal_response`: identity merged back into every resource of the response.
    pub(crate) async fn unseal_response(
        &self,
        response: Response<ProxyBody>,
        elements: Option<BTreeSet<String>>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Some(format) = response_format(response.headers()) else {
            return Ok(response);
        };
        if !response.status().is_success() {
            return Ok(response);
        }
        let (mut parts, body) = response.into_parts();
        let bytes = collect_limited(body, MAX_UNSEAL_RESPONSE).await?;
        if bytes.is_empty() || !contains(&bytes, b"versionId") {
            return Ok(Response::from_parts(parts, full(bytes)));
        }
        let sealing = self.shared.sealing.clone();
        let out = tokio::task::spawn_blocking(move || -> Result<Bytes, ProxyError> {
            let mut value = fhir::parse_lenient(&bytes, format)
                .map_err(|e| ProxyError::UpstreamBody(e.to_string()))?;
            if !sealing.reidentify(&mut value, elements.as_ref())? {
                // Nothing of this response is in the vault: the upstream's bytes stand.
                return Ok(bytes);
            }
            fhir::serialize(&value, format)
                .map(Bytes::from)
                .map_err(|e| ProxyError::Internal(e.to_string()))
        })
        .await
        .map_err(|e| ProxyError::Internal(e.to_string()))??;
        parts
            .headers
            .insert(header::CONTENT_LENGTH, out.len().into());
        Ok(Response::from_parts(parts, full(out)))
    }

    /// Reads a client's body whole, under the body limit.
    async fn collect_request(&self, body: ProxyBody) -> Result<Bytes, ProxyError> {
        collect_body(body, self.shared.max_body, BodyFrom::Client).await
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

/// A client's FHIR body, parsed strictly (unknown elements refused).
fn parse_body(headers: &http::HeaderMap, bytes: &[u8]) -> Result<Value, ProxyError> {
    let format = Format::of_body(headers).ok_or_else(|| {
        ProxyError::UnsupportedMediaType(
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("(none)")
                .to_owned(),
        )
    })?;
    fhir::parse_strict(bytes, format).map_err(|e| match e {
        fhir::ParseError::XmlTooLarge { limit } => ProxyError::BodyTooLarge {
            limit: limit as u64,
        },
        other => ProxyError::Invalid(other.to_string()),
    })
}

/// The clinical part as the request the upstream receives (always JSON).
fn json_request(
    mut parts: http::request::Parts,
    value: &Value,
) -> Result<Request<ProxyBody>, ProxyError> {
    let body = serde_json::to_vec(value).map_err(|e| ProxyError::Internal(e.to_string()))?;
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/fhir+json;charset=utf-8"),
    );
    parts
        .headers
        .insert(header::CONTENT_LENGTH, body.len().into());
    parts.headers.remove(header::TRANSFER_ENCODING);
    Ok(Request::from_parts(parts, full(body)))
}

fn response_format(headers: &http::HeaderMap) -> Option<Format> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(Format::from_mime)
}

/// Id and version from `Location` or `Content-Location` (`…/Type/id/_history/v`).
fn version_from_headers(headers: &http::HeaderMap) -> Option<(String, String)> {
    [header::LOCATION, header::CONTENT_LOCATION]
        .iter()
        .filter_map(|name| headers.get(name).and_then(|v| v.to_str().ok()))
        .find_map(version_location)
        .map(|(_, id, version)| (id, version))
}

/// `(type, id, version)` of a `…Type/id/_history/version` URL.
fn version_location(url: &str) -> Option<(String, String, String)> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let n = segments.len();
    (n >= 4 && segments[n - 2] == "_history").then(|| {
        (
            segments[n - 4].to_owned(),
            segments[n - 3].to_owned(),
            segments[n - 1].to_owned(),
        )
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_come_from_history_urls() {
        assert_eq!(
            version_location("http://x/fhir/Patient/abc/_history/3"),
            Some(("Patient".into(), "abc".into(), "3".into()))
        );
        assert_eq!(
            version_location("Observation/1/_history/1"),
            Some(("Observation".into(), "1".into(), "1".into()))
        );
        assert_eq!(version_location("Patient/abc"), None);
    }
}
