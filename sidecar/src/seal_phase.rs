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
use fhirseal_adapters::scrub::Terms;
use fhirseal_adapters::search::NO_MATCH;
use fhirseal_adapters::{canonical, fhir, patch, Format, Interaction};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use serde_json::Value;

use crate::audit::{self, Accessor};
use crate::body::{empty, full, ProxyBody};
use crate::error::ProxyError;
use crate::plan::RequestBody;
use crate::proxy::{collect_limited, Admitted, Proxy, UpstreamQuery};
use crate::sealing::{Prepared, SealError, Sealing, SearchQueryError};

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
    /// Phase `seal_request`: the request as the upstream will see it, and what is left to do
    /// once it answers. `body` is what `plan` read of the request.
    pub(crate) async fn seal_request(
        &self,
        req: Request<ProxyBody>,
        body: RequestBody,
        admitted: &mut Admitted,
    ) -> Result<Sealed, ProxyError> {
        let interaction = admitted.interaction.clone();
        let forward = |req| Ok(Sealed::Forward(req, Box::new(Pending::Nothing)));
        match (interaction, body) {
            (
                Interaction::SearchType { resource_type }
                | Interaction::SearchCompartment { resource_type, .. },
                body,
            ) => {
                let resource_type = (resource_type != "*").then_some(resource_type);
                self.seal_search(req, body, admitted, resource_type.as_deref())
            }
            (Interaction::SearchSystem, body) => self.seal_search(req, body, admitted, None),
            (Interaction::ConditionalDelete { resource_type }, _) => {
                if let Some(query) = req.uri().query() {
                    admitted.query = self.rewrite(Some(&resource_type), query)?;
                }
                forward(req)
            }
            (Interaction::Create { resource_type }, RequestBody::Resource(value)) => {
                self.seal_one(req, value, admitted, &resource_type, true)
                    .await
            }
            (Interaction::Update { resource_type, .. }, RequestBody::Resource(value)) => {
                self.seal_one(req, value, admitted, &resource_type, false)
                    .await
            }
            (Interaction::ConditionalUpdate { resource_type }, RequestBody::Resource(value)) => {
                if let Some(query) = req.uri().query() {
                    admitted.query = self.rewrite(Some(&resource_type), query)?;
                }
                self.seal_one(req, value, admitted, &resource_type, false)
                    .await
            }
            (Interaction::Patch { resource_type, id }, RequestBody::JsonPatch(patch)) => {
                self.seal_patch(req, patch, admitted, &resource_type, &id)
                    .await
            }
            (Interaction::Bundle, RequestBody::Resource(value)) => {
                self.seal_bundle(req, value).await
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
        &self,
        resource_type: Option<&str>,
        query: &str,
    ) -> Result<UpstreamQuery, ProxyError> {
        Ok(match self.rewritten(resource_type, query)? {
            Some(rewritten) => UpstreamQuery::Rewritten(rewritten),
            None => UpstreamQuery::Client,
        })
    }

    /// `query` with its identity criteria answered from the blind index; `None` when it has
    /// none.
    fn rewritten(
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

    fn seal_search(
        &self,
        req: Request<ProxyBody>,
        body: RequestBody,
        admitted: &mut Admitted,
        resource_type: Option<&str>,
    ) -> Result<Sealed, ProxyError> {
        if let Some(query) = req.uri().query() {
            admitted.query = self.rewrite(resource_type, query)?;
        }
        let RequestBody::Form(form) = body else {
            return Ok(Sealed::Forward(req, Box::new(Pending::Nothing)));
        };
        let (mut parts, _) = req.into_parts();
        let body = Bytes::from(self.rewritten(resource_type, &form)?.unwrap_or(form));
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
        &self,
        mut value: Value,
        context: HashMap<String, String>,
        terms: Terms,
    ) -> Result<(Value, Prepared), ProxyError> {
        let sealing = self.shared.sealing.clone();
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
        &self,
        req: Request<ProxyBody>,
        value: Value,
        admitted: &mut Admitted,
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
        let (value, prepared) = self.prepare(value, HashMap::new(), Terms::new()).await?;
        // From here a surrogate made for this write is forgotten if any step fails.
        let guard = Rollback::new(&self.shared.sealing, prepared);
        let surrogate = guard.prepared().surrogate.clone();
        if create {
            if let Some(condition) = parts.headers.get("if-none-exist") {
                let condition = condition
                    .to_str()
                    .map_err(|_| ProxyError::BadHeader("If-None-Exist is not ASCII".to_owned()))?
                    .to_owned();
                let condition = condition.strip_prefix('?').unwrap_or(&condition);
                if let Some(rewritten) = self.rewritten(Some(resource_type), condition)? {
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
        if let UpstreamQuery::Rewritten(query) = admitted.query.clone() {
            match no_match_condition(&query, surrogate.as_deref()) {
                Some(condition) => admitted.query = UpstreamQuery::Rewritten(condition),
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
                    admitted.query = UpstreamQuery::Dropped;
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
        &self,
        req: Request<ProxyBody>,
        patch_bytes: Bytes,
        admitted: &mut Admitted,
        resource_type: &str,
        id: &str,
    ) -> Result<Sealed, ProxyError> {
        let (mut parts, _) = req.into_parts();
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
        fhir::check_depth(
            &serde_json::to_vec(&value).unwrap_or_default(),
            Format::Json,
        )
        .map_err(|e| ProxyError::Invalid(format!("the patched resource: {e}")))?;
        fhir::validate(&value).map_err(|e| {
            ProxyError::Unprocessable(format!("the patched resource is not valid: {e}"))
        })?;
        let (value, prepared) = self.prepare(value, HashMap::new(), Terms::new()).await?;
        let guard = Rollback::new(&self.shared.sealing, prepared);
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
                prepared: guard.keep(),
                create: false,
                patch: true,
            }),
        ))
    }

    /// A transaction or batch: every entry's resource is split; criteria are rewritten.
    async fn seal_bundle(
        &self,
        req: Request<ProxyBody>,
        value: Value,
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
        let sealing = self.shared.sealing.clone();
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
            let result = prepare_entries(&sealing, &mut value, &context, &terms, &mut prepared);
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
            .map(|p| p.map(|p| Rollback::new(&self.shared.sealing, p)))
            .collect();
        let mut value = value;
        let surrogates: Vec<Option<String>> = guards
            .iter()
            .map(|g| g.as_ref().and_then(|g| g.prepared().surrogate.clone()))
            .collect();
        self.rewrite_entries(&mut value, &surrogates)?;
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
        &self,
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
                if let Some(rewritten) = self.rewritten(Some(&url_type), &query)? {
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
                if let Some(rewritten) = self.rewritten(Some(&url_type), &condition)? {
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
                let parsed = bytes.clone();
                let value =
                    tokio::task::spawn_blocking(move || fhir::parse_lenient(&parsed, format))
                        .await
                        .map_err(|e| ProxyError::Internal(e.to_string()))?
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

    /// Phase `unseal_response`: identity merged back into every resource of the response, and
    /// each resource shown with identity recorded as an access event of its own, durable before
    /// the answer leaves.
    pub(crate) async fn unseal_response(
        &self,
        response: Response<ProxyBody>,
        elements: Option<BTreeSet<String>>,
        accessor: &Accessor,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let Some(format) = response_format(response.headers()) else {
            return Ok(response);
        };
        if !response.status().is_success() {
            return Ok(response);
        }
        let (mut parts, body) = response.into_parts();
        let limit = self.shared.limits.max_reidentify;
        let bytes = collect_limited(body, limit).await.map_err(|e| match e {
            ProxyError::UpstreamTooLarge { limit } => ProxyError::TooLargeToReidentify { limit },
            other => other,
        })?;
        if bytes.is_empty() || !contains(&bytes, b"versionId") {
            return Ok(Response::from_parts(parts, full(bytes)));
        }
        let sealing = self.shared.sealing.clone();
        let accessor = accessor.clone();
        let (out, recorded) = tokio::task::spawn_blocking(move || -> Result<_, ProxyError> {
            let mut value = fhir::parse_lenient(&bytes, format)
                .map_err(|e| ProxyError::UpstreamBody(e.to_string()))?;
            let shown = sealing.reidentify(&mut value, elements.as_ref())?;
            if shown.is_empty() {
                // Nothing of this response is in the vault: the upstream's bytes stand.
                return Ok((bytes, false));
            }
            for event in audit::reidentified_events(&accessor, &shown) {
                sealing.record_access(&event)?;
            }
            let out = fhir::serialize(&value, format)
                .map(Bytes::from)
                .map_err(|e| ProxyError::Internal(e.to_string()))?;
            Ok((out, true))
        })
        .await
        .map_err(|e| ProxyError::Internal(e.to_string()))??;
        if recorded {
            self.shared.sealing.durable().await?;
        }
        parts
            .headers
            .insert(header::CONTENT_LENGTH, out.len().into());
        Ok(Response::from_parts(parts, full(out)))
    }
}

/// Splits every entry's resource of a batch or transaction (PATCH entries are refused: the
/// sidecar cannot see the whole resource they change). Blocking: splits may unseal.
fn prepare_entries(
    sealing: &Sealing,
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
                Some(resource) => Some(
                    sealing
                        .prepare(resource, context, terms)
                        .map_err(prepare_error)?,
                ),
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
