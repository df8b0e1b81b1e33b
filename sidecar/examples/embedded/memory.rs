//! A small FHIR R4 server held in memory, as a `tower::Service`: what the embedded example and
//! the layer's tests put behind fhirseal's in-process layer instead of HAPI FHIR. It answers
//! the requests fhirseal sends upstream the way HAPI FHIR 8 does, in JSON only.
//!
//! Supported, under a base path (`/fhir`, or `""` for the root):
//! - `GET metadata`: a CapabilityStatement;
//! - create (`POST [type]`, a new uuid as id), read, vread, update (`PUT [type]/[id]`, which
//!   creates with the client's id, and keeps the version when nothing but `meta.versionId` and
//!   `meta.lastUpdated` changed), delete (a deleted version is recorded; then 410), instance
//!   history; `If-Match` on update and delete; `Prefer: return=minimal`; `HEAD` as `GET`;
//! - search (`GET [type]?…`, `GET|POST [type]/_search` with a form body) by `_id`, `_source`
//!   (fhirseal's recovery looks writes up by it), `_tag`, `identifier`, `subject`, `patient`,
//!   paged by `_count` and `_offset`, with `_summary=count`; `_total`, `_format` and `_pretty`
//!   are ignored; any other parameter is a 400;
//! - `POST` of a `batch` or a `transaction` Bundle (all or nothing; `urn:uuid:` full URLs are
//!   resolved to the ids given; entries run DELETE, POST, PUT, GET as FHIR orders them);
//! - `X-Forwarded-Host`, `-Proto` and `-Prefix` (the public base path) for the URLs it writes,
//!   as HAPI behind a proxy does.
//!
//! Not supported: XML, validation of resource contents, PATCH, conditional create, update and
//! delete, type- and system-level history and search, compartments, `_include`, `_sort`,
//! modifiers and chains, operations (`$…`). Such requests are answered with an OperationOutcome
//! and a 4xx status, as every error is.

// The module is compiled into an example and a test, each using what it needs.
#![allow(unreachable_pub)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use serde_json::{json, Map, Value};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";
/// What is escaped in the names and values of the query strings of the links it writes.
const QUERY_VALUE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'+')
    .add(b'=')
    .add(b'<')
    .add(b'>')
    .add(b'`');
/// The parameters a search understands (besides paging and the ignored ones).
const FILTERS: &[&str] = &["_id", "_source", "_tag", "identifier", "subject", "patient"];
/// The types the CapabilityStatement names (any type is accepted).
const TYPES: &str = "Patient Practitioner RelatedPerson Observation Encounter Condition \
    Procedure MedicationRequest AllergyIntolerance DiagnosticReport Immunization";

/// The server; clones share one store.
#[derive(Clone, Debug)]
pub struct MemoryFhir {
    base_path: String,
    store: Arc<Mutex<Store>>,
}

/// Every version of every resource, by type and id (versions oldest first: version n at n-1).
#[derive(Clone, Debug, Default)]
struct Store {
    resources: BTreeMap<String, BTreeMap<String, Vec<Version>>>,
}

#[derive(Clone, Debug)]
struct Version {
    /// `None` for a delete.
    resource: Option<Value>,
    last_updated: String,
    method: &'static str,
}

/// What one request is answered in: its base URL and its time.
struct Ctx {
    base: String,
    base_path: String,
    now: String,
}

/// One interaction, from an HTTP request or a Bundle entry; its path is relative to the base.
#[derive(Default)]
struct Call {
    method: String,
    path: String,
    params: Vec<(String, String)>,
    body: Option<Value>,
    if_match: Option<String>,
    full_url: Option<String>,
    /// The id a create gives (a transaction decides them first); a new one when `None`.
    id: Option<String>,
}

/// A successful answer.
struct Reply {
    status: StatusCode,
    body: Option<Value>,
    /// `Type/id/_history/n` of a write.
    location: Option<String>,
    /// The version, with its `lastUpdated`.
    version: Option<(usize, String)>,
}

/// A failed one: an OperationOutcome with this status.
#[derive(Debug)]
struct Fail {
    status: StatusCode,
    message: String,
}

fn fail(status: StatusCode, message: impl Into<String>) -> Fail {
    Fail {
        status,
        message: message.into(),
    }
}

fn bad(message: impl Into<String>) -> Fail {
    fail(StatusCode::BAD_REQUEST, message)
}

fn ok(body: Value) -> Reply {
    Reply {
        status: StatusCode::OK,
        body: Some(body),
        location: None,
        version: None,
    }
}

impl MemoryFhir {
    /// A server whose FHIR base path is `base_path` (e.g. "/fhir"; "" for the root).
    pub fn new(base_path: &str) -> Self {
        let trimmed = base_path.trim_matches('/');
        MemoryFhir {
            base_path: if trimmed.is_empty() {
                String::new()
            } else {
                format!("/{trimmed}")
            },
            store: Arc::default(),
        }
    }

    /// Every version of every resource it holds (deleted ones included), as stored. A delete
    /// itself has no content and is not listed.
    #[allow(dead_code)]
    pub fn versions(&self) -> Vec<Value> {
        let store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        let all = store
            .resources
            .values()
            .flat_map(BTreeMap::values)
            .flatten();
        all.filter_map(|v| v.resource.clone()).collect()
    }

    /// `scheme://host` and the base path, as the client (or the proxy before it) named them.
    fn base_url(&self, parts: &http::request::Parts) -> String {
        let header = |name: &str| {
            let value = parts.headers.get(name)?.to_str().ok()?;
            let first = value.split(',').next().unwrap_or(value).trim();
            (!first.is_empty()).then_some(first)
        };
        if let Some(host) = header("x-forwarded-host") {
            let proto = header("x-forwarded-proto").unwrap_or("http");
            let prefix = header("x-forwarded-prefix").unwrap_or(&self.base_path);
            return format!("{proto}://{host}{}", prefix.trim_end_matches('/'));
        }
        let origin = match (parts.uri.scheme_str(), parts.uri.authority()) {
            (Some(scheme), Some(authority)) => format!("{scheme}://{authority}"),
            _ => match header("host") {
                Some(host) => format!("http://{host}"),
                None => "http://localhost".to_owned(),
            },
        };
        format!("{origin}{}", self.base_path)
    }

    fn answer(&self, parts: &http::request::Parts, bytes: &[u8]) -> Response<Full<Bytes>> {
        let ctx = Ctx {
            base: self.base_url(parts),
            base_path: self.base_path.clone(),
            now: instant(now_ms()),
        };
        let head = parts.method == http::Method::HEAD;
        let header = |name: &str| {
            let value = parts.headers.get(name)?.to_str().ok()?;
            Some(value.trim().to_owned())
        };
        let minimal = header("prefer").is_some_and(|p| {
            p.split([',', ';'])
                .any(|x| x.trim().eq_ignore_ascii_case("return=minimal"))
        });
        let result = self.call_of(parts, bytes).and_then(|mut call| {
            call.if_match = header("if-match");
            if header("if-none-exist").is_some() {
                return Err(bad("conditional create (If-None-Exist) is not supported"));
            }
            let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
            route(&mut store, &ctx, call)
        });
        match result {
            Ok(reply) => {
                let minimal = minimal && reply.location.is_some();
                http_response(&ctx, reply, head || minimal)
            }
            Err(failure) => http_response(&ctx, failed(failure), head),
        }
    }

    /// The interaction an HTTP request asks for, its body read as what the path carries.
    fn call_of(&self, parts: &http::request::Parts, bytes: &[u8]) -> Result<Call, Fail> {
        let path = parts.uri.path();
        let rest = match path.strip_prefix(self.base_path.as_str()) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
            _ => {
                let message = format!("{path} is not under the FHIR base {}", self.base_path);
                return Err(fail(StatusCode::NOT_FOUND, message));
            }
        };
        let method = parts.method.as_str().to_owned();
        let mut params = parse_query(parts.uri.query().unwrap_or(""));
        let mut body = None;
        if method == "POST" && rest.trim_end_matches('/').ends_with("/_search") {
            let form = std::str::from_utf8(bytes).map_err(|_| bad("the form is not UTF-8"))?;
            params.extend(parse_query(form));
        } else if (method == "POST" || method == "PUT") && !bytes.is_empty() {
            body = Some(parse_resource(bytes)?);
        }
        Ok(Call {
            method,
            path: rest.to_owned(),
            params,
            body,
            ..Call::default()
        })
    }
}

impl<B> tower::Service<Request<B>> for MemoryFhir
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Full<Bytes>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let bytes = body.collect().await.map_err(Into::into)?.to_bytes();
            Ok(this.answer(&parts, &bytes))
        })
    }
}

/// Dispatches one interaction on `store`.
fn route(store: &mut Store, ctx: &Ctx, call: Call) -> Result<Reply, Fail> {
    let segments: Vec<&str> = call.path.split('/').filter(|s| !s.is_empty()).collect();
    let method = match call.method.as_str() {
        "HEAD" => "GET",
        other => other,
    };
    let not_allowed = || {
        let message = format!(
            "{} is not supported on /{}",
            call.method,
            segments.join("/")
        );
        Err(fail(StatusCode::METHOD_NOT_ALLOWED, message))
    };
    match (method, segments.as_slice()) {
        ("POST", []) => bundle(store, ctx, call.body),
        ("GET", []) => Err(bad("searches across all types are not supported")),
        (_, []) | (_, ["metadata"]) if method != "GET" => not_allowed(),
        ("GET", ["metadata"]) => Ok(ok(capability(ctx))),
        (_, [ty, ..]) if !is_type(ty) => match ty.starts_with(['$', '_']) {
            true => Err(bad(format!("{ty} is not supported"))),
            false => Err(fail(StatusCode::NOT_FOUND, format!("unknown type {ty}"))),
        },
        ("GET", [ty]) | ("GET" | "POST", [ty, "_search"]) => search(store, ctx, ty, &call.params),
        ("POST", [ty]) => create(store, ctx, ty, call.id, call.body),
        (_, [_]) | (_, [_, "_search"]) => not_allowed(),
        (_, [_, "_history", ..]) => Err(bad("type-level history is not supported")),
        (_, [_, part, ..] | [_, _, part, ..]) if part.starts_with('$') => {
            Err(bad(format!("the operation {part} is not supported")))
        }
        (_, [_, id, ..]) if !is_id(id) => Err(bad(format!("{id} is not a valid id"))),
        ("GET", [ty, id]) => read(store, ty, id),
        ("PUT", [ty, id]) => update(store, ctx, ty, id, call.body, call.if_match.as_deref()),
        ("DELETE", [ty, id]) => delete(store, ctx, ty, id, call.if_match.as_deref()),
        ("GET", [ty, id, "_history"]) => history(store, ctx, ty, id),
        ("GET", [ty, id, "_history", vid]) => vread(store, ty, id, vid),
        (_, [_, _] | [_, _, "_history"] | [_, _, "_history", _]) => not_allowed(),
        _ => Err(fail(
            StatusCode::NOT_FOUND,
            format!("unknown path /{}", call.path),
        )),
    }
}

fn is_type(ty: &str) -> bool {
    ty.starts_with(|c: char| c.is_ascii_uppercase())
        && ty.chars().all(|c| c.is_ascii_alphanumeric())
}

fn is_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

fn versions<'a>(store: &'a Store, ty: &str, id: &str) -> Option<&'a Vec<Version>> {
    store.resources.get(ty)?.get(id)
}

/// The current content of a resource: none when it is deleted.
fn current(versions: &[Version]) -> Option<&Value> {
    versions.last()?.resource.as_ref()
}

/// The body of a create or an update: a resource of type `ty`.
fn typed(body: Option<Value>, ty: &str) -> Result<Value, Fail> {
    let body = body.ok_or_else(|| bad(format!("a {ty} is expected in the body")))?;
    match body.get("resourceType").and_then(Value::as_str) {
        Some(found) if found == ty => Ok(body),
        found => Err(bad(format!(
            "incorrect resource type: expected {ty}, found {}",
            found.unwrap_or("none")
        ))),
    }
}

/// Stores a new version of `ty/id` (`None`: a delete) and answers it: 200, or 201 when the
/// resource did not exist (or was deleted).
fn write(
    store: &mut Store,
    ctx: &Ctx,
    ty: &str,
    id: &str,
    resource: Option<Value>,
    method: &'static str,
) -> Reply {
    let versions = store.resources.entry(ty.to_owned()).or_default();
    let versions = versions.entry(id.to_owned()).or_default();
    let status = match current(versions) {
        Some(_) => StatusCode::OK,
        None => StatusCode::CREATED,
    };
    let n = versions.len() + 1;
    let resource = resource.map(|r| stamp(r, id, n, &ctx.now));
    versions.push(Version {
        resource: resource.clone(),
        last_updated: ctx.now.clone(),
        method,
    });
    Reply {
        status,
        body: resource,
        location: Some(format!("{ty}/{id}/_history/{n}")),
        version: Some((n, ctx.now.clone())),
    }
}

/// The resource with its id and version: `resourceType`, `id`, `meta` first, as HAPI writes
/// them, the client's other `meta` kept.
fn stamp(resource: Value, id: &str, version: usize, now: &str) -> Value {
    let Value::Object(fields) = resource else {
        return resource;
    };
    let (mut resource_type, mut meta, mut rest) = (Value::Null, Map::new(), Map::new());
    for (key, value) in fields {
        if key == "resourceType" {
            resource_type = value;
        } else if key == "meta" {
            if let Value::Object(found) = value {
                meta = found;
            }
        } else if key != "id" {
            rest.insert(key, value);
        }
    }
    meta.insert("versionId".into(), version.to_string().into());
    meta.insert("lastUpdated".into(), now.into());
    let mut out = Map::new();
    out.insert("resourceType".into(), resource_type);
    out.insert("id".into(), id.into());
    out.insert("meta".into(), Value::Object(meta));
    out.extend(rest);
    Value::Object(out)
}

/// What an update compares: the resource without its version and time.
fn content(resource: &Value) -> Value {
    let mut resource = resource.clone();
    if let Some(fields) = resource.as_object_mut() {
        if let Some(Value::Object(meta)) = fields.get_mut("meta") {
            meta.remove("versionId");
            meta.remove("lastUpdated");
            if meta.is_empty() {
                fields.remove("meta");
            }
        }
    }
    resource
}

fn create(
    store: &mut Store,
    ctx: &Ctx,
    ty: &str,
    id: Option<String>,
    body: Option<Value>,
) -> Result<Reply, Fail> {
    let resource = typed(body, ty)?;
    let id = id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    Ok(write(store, ctx, ty, &id, Some(resource), "POST"))
}

/// `If-Match` (`W/"n"`) against the current version `n` (0: none).
fn check_version(if_match: Option<&str>, n: usize) -> Result<(), Fail> {
    let Some(raw) = if_match else { return Ok(()) };
    let wanted = raw.trim().trim_start_matches("W/").trim_matches('"');
    match wanted.parse::<usize>() {
        Ok(v) if v == n && n > 0 => Ok(()),
        _ => Err(fail(
            StatusCode::PRECONDITION_FAILED,
            format!("If-Match {raw} does not match the current version {n}"),
        )),
    }
}

fn update(
    store: &mut Store,
    ctx: &Ctx,
    ty: &str,
    id: &str,
    body: Option<Value>,
    if_match: Option<&str>,
) -> Result<Reply, Fail> {
    let resource = typed(body, ty)?;
    match resource.get("id").and_then(Value::as_str) {
        Some(found) if found == id => {}
        Some(found) => return Err(bad(format!("the body's id {found} is not the URL's {id}"))),
        None => return Err(bad("an update's body carries the resource's id")),
    }
    let existing = versions(store, ty, id);
    let n = existing.map_or(0, Vec::len);
    check_version(if_match, n)?;
    // Nothing changed: HAPI keeps the version and answers with it.
    let unchanged = existing.and_then(|v| v.last()).and_then(|last| {
        let now = last.resource.as_ref()?;
        (content(now) == content(&resource)).then(|| (now.clone(), last.last_updated.clone()))
    });
    if let Some((now, last_updated)) = unchanged {
        let mut reply = ok(now);
        reply.location = Some(format!("{ty}/{id}/_history/{n}"));
        reply.version = Some((n, last_updated));
        return Ok(reply);
    }
    Ok(write(store, ctx, ty, id, Some(resource), "PUT"))
}

fn delete(
    store: &mut Store,
    ctx: &Ctx,
    ty: &str,
    id: &str,
    if_match: Option<&str>,
) -> Result<Reply, Fail> {
    let existing = versions(store, ty, id);
    check_version(if_match, existing.map_or(0, Vec::len))?;
    if existing.and_then(|v| current(v)).is_none() {
        let message = format!("Not deleted, {ty}/{id} does not exist");
        return Ok(ok(outcome("information", "informational", &message)));
    }
    let mut reply = write(store, ctx, ty, id, None, "DELETE");
    reply.body = Some(outcome(
        "information",
        "informational",
        "Successfully deleted 1 resource(s)",
    ));
    reply.location = None;
    Ok(reply)
}

fn read(store: &Store, ty: &str, id: &str) -> Result<Reply, Fail> {
    let versions = versions(store, ty, id).ok_or_else(|| unknown(ty, id))?;
    vread(store, ty, id, &versions.len().to_string())
}

fn vread(store: &Store, ty: &str, id: &str, vid: &str) -> Result<Reply, Fail> {
    let versions = versions(store, ty, id).ok_or_else(|| unknown(ty, id))?;
    let n = vid.parse::<usize>().unwrap_or(0);
    let version = n.checked_sub(1).and_then(|i| versions.get(i));
    let version = version.ok_or_else(|| unknown(ty, &format!("{id}/_history/{vid}")))?;
    let resource = version.resource.clone().ok_or_else(|| {
        fail(
            StatusCode::GONE,
            format!("{ty}/{id} was deleted (version {n})"),
        )
    })?;
    let mut reply = ok(resource);
    reply.version = Some((n, version.last_updated.clone()));
    Ok(reply)
}

fn unknown(ty: &str, id: &str) -> Fail {
    fail(StatusCode::NOT_FOUND, format!("{ty}/{id} is not known"))
}

fn history(store: &Store, ctx: &Ctx, ty: &str, id: &str) -> Result<Reply, Fail> {
    let versions = versions(store, ty, id).ok_or_else(|| unknown(ty, id))?;
    let entries = versions.iter().enumerate().rev().map(|(i, v)| {
        let url = if v.method == "POST" {
            ty.to_owned()
        } else {
            format!("{ty}/{id}")
        };
        let status = match v.method {
            "POST" => "201 Created",
            "DELETE" => "204 No Content",
            _ => "200 OK",
        };
        let mut entry = json!({
            "fullUrl": format!("{}/{ty}/{id}", ctx.base),
            "request": {"method": v.method, "url": url},
            "response": {
                "status": status,
                "etag": format!("W/\"{}\"", i + 1),
                "lastModified": v.last_updated,
            },
        });
        if let (Some(fields), Some(resource)) = (entry.as_object_mut(), &v.resource) {
            fields.insert("resource".into(), resource.clone());
        }
        entry
    });
    let entries = entries.collect();
    Ok(ok(bundle_of(
        ctx,
        "history",
        Some(versions.len()),
        Vec::new(),
        entries,
    )))
}

/// A search's criteria and paging.
struct Search {
    /// Each `(name, alternatives)` must match (one of its comma-separated values).
    filters: Vec<(String, Vec<String>)>,
    count: usize,
    offset: usize,
    summary_count: bool,
}

impl Search {
    fn parse(params: &[(String, String)]) -> Result<Search, Fail> {
        let number = |name: &str, value: &str| {
            value
                .parse::<usize>()
                .map_err(|_| bad(format!("{name}={value} is not a number")))
        };
        let mut search = Search {
            filters: Vec::new(),
            count: 20,
            offset: 0,
            summary_count: false,
        };
        for (name, value) in params {
            match name.as_str() {
                "_count" => search.count = number(name, value)?.min(1000),
                "_offset" => search.offset = number(name, value)?,
                "_total" | "_format" | "_pretty" => {}
                "_summary" if value == "count" => search.summary_count = true,
                "_summary" if value == "false" => {}
                name if FILTERS.contains(&name) => {
                    if !value.is_empty() {
                        let values = value.split(',').map(str::to_owned).collect();
                        search.filters.push((name.to_owned(), values));
                    }
                }
                _ => return Err(bad(format!("unsupported search parameter: {name}={value}"))),
            }
        }
        Ok(search)
    }
}

/// The current resources of `ty` that match every filter, by id.
fn find<'a>(
    store: &'a Store,
    ty: &str,
    filters: &[(String, Vec<String>)],
) -> Vec<(&'a str, &'a Value)> {
    let all = store.resources.get(ty).into_iter().flatten();
    let current = all.filter_map(|(id, versions)| Some((id.as_str(), current(versions)?)));
    current
        .filter(|(_, r)| {
            filters
                .iter()
                .all(|(name, values)| values.iter().any(|v| matches(r, name, v)))
        })
        .collect()
}

fn matches(resource: &Value, name: &str, wanted: &str) -> bool {
    let text = |pointer: &str| resource.pointer(pointer).and_then(Value::as_str);
    match name {
        "_id" => text("/id") == Some(wanted),
        "_source" => text("/meta/source") == Some(wanted),
        "_tag" => token(resource.pointer("/meta/tag"), "code", wanted),
        "identifier" => token(resource.get("identifier"), "value", wanted),
        _ => {
            let (want_type, want_id) = match relative(wanted) {
                Some((t, id)) => (Some(t), id),
                None if name == "patient" => (Some("Patient"), wanted),
                None => (None, wanted),
            };
            ["subject", "patient"].iter().any(|field| {
                let reference = resource.get(field).and_then(|r| r.get("reference"));
                let found = reference.and_then(Value::as_str).and_then(relative);
                found.is_some_and(|(t, id)| id == want_id && want_type.is_none_or(|w| w == t))
            })
        }
    }
}

/// `system|code`, `system|`, `|code` or `code` against a coding or identifier (or a list).
fn token(field: Option<&Value>, key: &str, wanted: &str) -> bool {
    let (system, code) = match wanted.split_once('|') {
        Some((system, code)) => (Some(system), code),
        None => (None, wanted),
    };
    let items = match field {
        Some(Value::Array(items)) => items.iter().collect(),
        Some(item @ Value::Object(_)) => vec![item],
        _ => Vec::new(),
    };
    items.into_iter().any(|item| {
        let found_system = item.get("system").and_then(Value::as_str);
        let found_code = item.get(key).and_then(Value::as_str);
        let system_ok = match system {
            None => true,
            Some("") => found_system.is_none(),
            Some(s) => found_system == Some(s),
        };
        system_ok && ((code.is_empty() && system.is_some()) || found_code == Some(code))
    })
}

/// `(type, id)` of a reference, relative or absolute (`…/Type/id[/_history/n]`).
fn relative(reference: &str) -> Option<(&str, &str)> {
    let path = reference.split(['?', '#']).next().unwrap_or(reference);
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let end = parts
        .iter()
        .position(|p| *p == "_history")
        .unwrap_or(parts.len());
    match parts.get(..end)? {
        [.., ty, id] => Some((*ty, *id)),
        _ => None,
    }
}

fn search(store: &Store, ctx: &Ctx, ty: &str, params: &[(String, String)]) -> Result<Reply, Fail> {
    let search = Search::parse(params)?;
    let found = find(store, ty, &search.filters);
    let total = found.len();
    let link = |relation: &str, query: String| {
        let url = format!(
            "{}/{ty}{}{query}",
            ctx.base,
            if query.is_empty() { "" } else { "?" }
        );
        json!({"relation": relation, "url": url})
    };
    let mut links = vec![link("self", encode_query(params.iter()))];
    let mut entries = Vec::new();
    if !search.summary_count {
        let kept = params
            .iter()
            .filter(|(n, _)| n != "_offset" && n != "_count");
        let page = |offset: usize| {
            let mut query = encode_query(kept.clone());
            query.push_str(if query.is_empty() { "" } else { "&" });
            query + &format!("_offset={offset}&_count={}", search.count)
        };
        let next = search.offset.saturating_add(search.count);
        if search.count > 0 && next < total {
            links.push(link("next", page(next)));
        }
        if search.offset > 0 {
            links.push(link(
                "previous",
                page(search.offset.saturating_sub(search.count)),
            ));
        }
        let shown = found.into_iter().skip(search.offset).take(search.count);
        entries = shown
            .map(|(id, resource)| {
                json!({
                    "fullUrl": format!("{}/{ty}/{id}", ctx.base),
                    "resource": resource,
                    "search": {"mode": "match"},
                })
            })
            .collect();
    }
    Ok(ok(bundle_of(ctx, "searchset", Some(total), links, entries)))
}

fn bundle_of(
    ctx: &Ctx,
    kind: &str,
    total: Option<usize>,
    links: Vec<Value>,
    entries: Vec<Value>,
) -> Value {
    let mut bundle = Map::new();
    bundle.insert("resourceType".into(), "Bundle".into());
    bundle.insert("id".into(), uuid::Uuid::new_v4().to_string().into());
    bundle.insert("meta".into(), json!({"lastUpdated": ctx.now}));
    bundle.insert("type".into(), kind.into());
    if let Some(total) = total {
        bundle.insert("total".into(), total.into());
    }
    if !links.is_empty() {
        bundle.insert("link".into(), links.into());
    }
    if !entries.is_empty() {
        bundle.insert("entry".into(), entries.into());
    }
    Value::Object(bundle)
}

/// `POST [base]` with a batch or a transaction.
fn bundle(store: &mut Store, ctx: &Ctx, body: Option<Value>) -> Result<Reply, Fail> {
    let body = typed(body, "Bundle")?;
    let entries = match body.get("entry") {
        None => Vec::new(),
        Some(Value::Array(entries)) => entries.iter().map(|e| entry_call(ctx, e)).collect(),
        Some(_) => return Err(bad("Bundle.entry is not a list")),
    };
    match body.get("type").and_then(Value::as_str) {
        Some("batch") => {
            let answers = entries.into_iter().map(|call| {
                match call.and_then(|c| route(store, ctx, c)) {
                    Ok(reply) => entry_response(reply),
                    Err(failure) => json!({"response": {
                        "status": status_line(failure.status),
                        "outcome": outcome("error", issue_code(failure.status), &failure.message),
                    }}),
                }
            });
            Ok(ok(bundle_of(
                ctx,
                "batch-response",
                None,
                Vec::new(),
                answers.collect(),
            )))
        }
        Some("transaction") => {
            let calls = entries
                .into_iter()
                .enumerate()
                .map(|(i, c)| c.map_err(|f| within(i, f)));
            transaction(store, ctx, calls.collect::<Result<_, _>>()?)
        }
        _ => Err(bad(
            "a Bundle posted to the base is a batch or a transaction",
        )),
    }
}

fn within(index: usize, failure: Fail) -> Fail {
    fail(
        failure.status,
        format!("entry {index}: {}", failure.message),
    )
}

/// The interaction a Bundle entry asks for.
fn entry_call(ctx: &Ctx, entry: &Value) -> Result<Call, Fail> {
    let text = |pointer: &str| {
        entry
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let (Some(method), Some(url)) = (text("/request/method"), text("/request/url")) else {
        return Err(bad("an entry names its request.method and request.url"));
    };
    if text("/request/ifNoneExist").is_some() {
        return Err(bad("conditional create (ifNoneExist) is not supported"));
    }
    let mut url = url
        .strip_prefix(ctx.base.as_str())
        .unwrap_or(&url)
        .to_owned();
    if url.contains("://") {
        let uri = url
            .parse::<http::Uri>()
            .map_err(|_| bad(format!("{url} is not a URL")))?;
        let path_and_query = uri.path_and_query().map_or("", |p| p.as_str());
        url = path_and_query
            .strip_prefix(ctx.base_path.as_str())
            .unwrap_or(path_and_query)
            .to_owned();
    }
    let (path, query) = url.split_once('?').unwrap_or((url.as_str(), ""));
    if path.trim_matches('/').is_empty() {
        return Err(bad("an entry's request.url names a type"));
    }
    Ok(Call {
        method: method.to_ascii_uppercase(),
        path: path.to_owned(),
        params: parse_query(query),
        body: entry.get("resource").cloned(),
        if_match: text("/request/ifMatch"),
        full_url: text("/fullUrl"),
        id: None,
    })
}

/// Applies every entry or none: on a copy of the store, which replaces it once all succeeded.
fn transaction(store: &mut Store, ctx: &Ctx, mut calls: Vec<Call>) -> Result<Reply, Fail> {
    // The ids of the created resources are decided first, so that other entries can name them.
    let mut references = HashMap::new();
    for call in &mut calls {
        let segments: Vec<&str> = call.path.split('/').filter(|s| !s.is_empty()).collect();
        let named = match (call.method.as_str(), segments.as_slice()) {
            ("POST", [ty]) => {
                let id = uuid::Uuid::new_v4().to_string();
                let named = format!("{ty}/{id}");
                call.id = Some(id);
                named
            }
            ("PUT", [ty, id]) => format!("{ty}/{id}"),
            _ => continue,
        };
        if let Some(full_url) = &call.full_url {
            references.insert(full_url.clone(), named);
        }
    }
    let rank = |call: &Call| match call.method.as_str() {
        "DELETE" => 0,
        "POST" => 1,
        "PUT" => 2,
        _ => 3,
    };
    let mut calls: Vec<(usize, Call)> = calls.into_iter().enumerate().collect();
    calls.sort_by_key(|(_, call)| rank(call));
    let mut draft = store.clone();
    let mut answers = vec![Value::Null; calls.len()];
    for (i, mut call) in calls {
        if let Some(body) = &mut call.body {
            resolve(body, &references);
        }
        let reply = route(&mut draft, ctx, call).map_err(|f| within(i, f))?;
        if let Some(answer) = answers.get_mut(i) {
            *answer = entry_response(reply);
        }
    }
    *store = draft;
    let kind = "transaction-response";
    Ok(ok(bundle_of(ctx, kind, None, Vec::new(), answers)))
}

/// Replaces every string equal to a `fullUrl` of the transaction with the reference it names.
fn resolve(value: &mut Value, references: &HashMap<String, String>) {
    match value {
        Value::String(text) => {
            if let Some(named) = references.get(text.as_str()) {
                *text = named.clone();
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| resolve(v, references)),
        Value::Object(fields) => fields.values_mut().for_each(|v| resolve(v, references)),
        _ => {}
    }
}

fn entry_response(reply: Reply) -> Value {
    let mut response = Map::new();
    response.insert("status".into(), status_line(reply.status).into());
    if let Some(location) = reply.location {
        response.insert("location".into(), location.into());
    }
    if let Some((n, last_updated)) = reply.version {
        response.insert("etag".into(), format!("W/\"{n}\"").into());
        response.insert("lastModified".into(), last_updated.into());
    }
    let mut entry = Map::new();
    match reply.body {
        Some(body) if body.get("resourceType") == Some(&json!("OperationOutcome")) => {
            response.insert("outcome".into(), body);
        }
        Some(body) => {
            entry.insert("resource".into(), body);
        }
        None => {}
    }
    entry.insert("response".into(), Value::Object(response));
    Value::Object(entry)
}

fn status_line(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
}

fn capability(ctx: &Ctx) -> Value {
    let interactions = [
        "read",
        "vread",
        "update",
        "delete",
        "history-instance",
        "create",
        "search-type",
    ];
    let interactions: Vec<Value> = interactions.iter().map(|c| json!({"code": c})).collect();
    let params = [
        ("_id", "token"),
        ("_source", "uri"),
        ("_tag", "token"),
        ("identifier", "token"),
        ("subject", "reference"),
        ("patient", "reference"),
    ];
    let params: Vec<Value> = params
        .iter()
        .map(|(n, t)| json!({"name": n, "type": t}))
        .collect();
    let resources: Vec<Value> = TYPES
        .split_whitespace()
        .map(|ty| json!({"type": ty, "interaction": interactions, "searchParam": params}))
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": ctx.now,
        "kind": "instance",
        "software": {"name": "fhirseal MemoryFhir"},
        "implementation": {"description": "a FHIR server held in memory", "url": ctx.base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
        }],
    })
}

fn outcome(severity: &str, code: &str, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    })
}

fn issue_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        404 => "not-found",
        405 => "not-supported",
        410 => "deleted",
        412 => "conflict",
        422 => "processing",
        _ => "invalid",
    }
}

fn failed(failure: Fail) -> Reply {
    let body = outcome("error", issue_code(failure.status), &failure.message);
    Reply {
        status: failure.status,
        body: Some(body),
        location: None,
        version: None,
    }
}

/// The HTTP answer: `Location` and `ETag` for what has them, the body unless `no_body`.
fn http_response(ctx: &Ctx, reply: Reply, no_body: bool) -> Response<Full<Bytes>> {
    let has_body = reply.body.is_some() && !no_body;
    let bytes = match (&reply.body, no_body) {
        (Some(body), false) => serde_json::to_vec(body).unwrap_or_default(),
        _ => Vec::new(),
    };
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = reply.status;
    let headers = response.headers_mut();
    if let Some(location) = &reply.location {
        if let Ok(value) = HeaderValue::from_str(&format!("{}/{location}", ctx.base)) {
            headers.insert(header::LOCATION, value);
        }
    }
    if let Some((n, _)) = &reply.version {
        if let Ok(value) = HeaderValue::from_str(&format!("W/\"{n}\"")) {
            headers.insert(header::ETAG, value);
        }
    }
    if has_body {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    }
    response
}

/// A JSON resource: an object with a `resourceType`.
fn parse_resource(bytes: &[u8]) -> Result<Value, Fail> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    match value.get("resourceType") {
        Some(Value::String(_)) => Ok(value),
        _ => Err(bad("the body is not a FHIR resource (no resourceType)")),
    }
}

/// The pairs of a query string or an `application/x-www-form-urlencoded` body, decoded.
fn parse_query(query: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    let pairs = query.split('&').filter(|p| !p.is_empty());
    pairs
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect()
}

fn encode_query<'a>(params: impl Iterator<Item = &'a (String, String)>) -> String {
    let pairs = params.map(|(n, v)| {
        format!(
            "{}={}",
            utf8_percent_encode(n, QUERY_VALUE),
            utf8_percent_encode(v, QUERY_VALUE)
        )
    });
    pairs.collect::<Vec<_>>().join("&")
}

fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of milliseconds since the Unix epoch.
fn instant(ms: u64) -> String {
    let secs = ms / 1000;
    let (year, month, day) = civil_from_days(i64::try_from(secs / 86_400).unwrap_or(0));
    let rest = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        ms % 1000
    )
}

/// Year, month, day of a count of days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use tower::ServiceExt;

    fn request(
        method: &str,
        uri: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Request<Full<Bytes>> {
        let mut req = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        req.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
    }

    async fn exchange(
        fhir: &MemoryFhir,
        req: Request<Full<Bytes>>,
    ) -> (StatusCode, HeaderMap, Value) {
        let (parts, body) = fhir.clone().oneshot(req).await.unwrap().into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn send(
        fhir: &MemoryFhir,
        method: &str,
        uri: &str,
        body: Option<&Value>,
    ) -> (StatusCode, HeaderMap, Value) {
        let body = body.map(Value::to_string).unwrap_or_default();
        exchange(fhir, request(method, uri, &body, &[])).await
    }

    #[test]
    fn instants_are_rfc3339() {
        assert_eq!(instant(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(instant(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(instant(1_767_225_599_999), "2025-12-31T23:59:59.999Z");
    }

    #[tokio::test]
    async fn instance_interactions_and_search() {
        let fhir = MemoryFhir::new("/fhir/");
        let base = "http://localhost:8080/fhir";
        let patient = json!({"resourceType": "Patient", "meta": {"tag": [{"system": "s", "code": "t"}]},
            "identifier": [{"system": "urn:mrn", "value": "42"}], "gender": "female"});
        let (status, headers, created) =
            send(&fhir, "POST", &format!("{base}/Patient"), Some(&patient)).await;
        assert_eq!(status, StatusCode::CREATED);
        let id = created["id"].as_str().unwrap().to_owned();
        let url = format!("/fhir/Patient/{id}");
        assert_eq!(
            (
                &created["meta"]["versionId"],
                &created["meta"]["tag"][0]["code"]
            ),
            (&json!("1"), &json!("t"))
        );
        assert_eq!(
            headers["location"],
            format!("{base}/Patient/{id}/_history/1").as_str()
        );
        assert_eq!(headers["etag"], "W/\"1\"");
        assert_eq!(headers["content-type"], FHIR_JSON);

        let (status, _, read) = send(&fhir, "GET", &url, None).await;
        assert_eq!((status, &read), (StatusCode::OK, &created));
        for query in [
            &format!("_id={id},x"),
            "_tag=s|t",
            "_tag=t",
            "identifier=urn:mrn|42",
            "_total=accurate",
        ] {
            let (status, _, found) =
                send(&fhir, "GET", &format!("{base}/Patient?{query}"), None).await;
            assert_eq!(
                (status, &found["total"]),
                (StatusCode::OK, &json!(1)),
                "{query}"
            );
            assert_eq!(found["entry"][0]["fullUrl"], format!("{base}/Patient/{id}"));
        }
        let (_, _, found) = send(&fhir, "GET", "/fhir/Patient?identifier=urn:mrn|43", None).await;
        assert_eq!(found["total"], 0);

        // The same content again keeps the version; another makes version 2.
        let (status, _, same) = send(&fhir, "PUT", &url, Some(&created)).await;
        assert_eq!(
            (status, &same["meta"]["versionId"]),
            (StatusCode::OK, &json!("1"))
        );
        let mut changed = created.clone();
        changed["gender"] = json!("male");
        let (status, _, updated) = send(&fhir, "PUT", &url, Some(&changed)).await;
        assert_eq!(
            (status, &updated["meta"]["versionId"]),
            (StatusCode::OK, &json!("2"))
        );
        let (status, _, old) = send(&fhir, "GET", &format!("{url}/_history/1"), None).await;
        assert_eq!((status, &old), (StatusCode::OK, &created));

        let (status, _, _) = send(&fhir, "DELETE", &url, None).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, _) = send(&fhir, "GET", &url, None).await;
        assert_eq!(status, StatusCode::GONE);
        let (_, _, history) = send(&fhir, "GET", &format!("{url}/_history"), None).await;
        assert_eq!(
            (&history["total"], &history["entry"][0]["request"]["method"]),
            (&json!(3), &json!("DELETE"))
        );
        assert_eq!(fhir.versions().len(), 2);
        let (_, _, found) = send(&fhir, "GET", "/fhir/Patient", None).await;
        assert_eq!(found["total"], 0);
        // An update brings it back.
        let (status, _, back) = send(&fhir, "PUT", &url, Some(&changed)).await;
        assert_eq!(
            (status, &back["meta"]["versionId"]),
            (StatusCode::CREATED, &json!("4"))
        );
    }

    #[tokio::test]
    async fn headers_shape_the_answers() {
        let fhir = MemoryFhir::new("/fhir");
        let body = json!({"resourceType": "Patient", "id": "p"}).to_string();
        let forwarded = [
            ("prefer", "return=minimal"),
            ("x-forwarded-host", "seal.example:8443"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-prefix", "/api"),
        ];
        let (status, headers, answer) =
            exchange(&fhir, request("PUT", "/fhir/Patient/p", &body, &forwarded)).await;
        assert_eq!((status, answer), (StatusCode::CREATED, Value::Null));
        assert_eq!(
            headers["location"],
            "https://seal.example:8443/api/Patient/p/_history/1"
        );
        let stale = request("DELETE", "/fhir/Patient/p", "", &[("if-match", "W/\"2\"")]);
        assert_eq!(
            exchange(&fhir, stale).await.0,
            StatusCode::PRECONDITION_FAILED
        );
        let (status, headers, answer) =
            exchange(&fhir, request("HEAD", "/fhir/Patient/p", "", &[])).await;
        assert_eq!((status, answer), (StatusCode::OK, Value::Null));
        assert_eq!(headers["etag"], "W/\"1\"");
        let current = request("DELETE", "/fhir/Patient/p", "", &[("if-match", "W/\"1\"")]);
        assert_eq!(exchange(&fhir, current).await.0, StatusCode::OK);
        let conditional = request(
            "POST",
            "/fhir/Patient",
            &body,
            &[("if-none-exist", "_id=p")],
        );
        assert_eq!(
            exchange(&fhir, conditional).await.0,
            StatusCode::BAD_REQUEST
        );
    }

    #[tokio::test]
    async fn paging_and_bad_input() {
        let fhir = MemoryFhir::new("/fhir");
        for id in ["a", "b", "c"] {
            let body = json!({"resourceType": "Patient", "id": id});
            let (status, _, _) =
                send(&fhir, "PUT", &format!("/fhir/Patient/{id}"), Some(&body)).await;
            assert_eq!(status, StatusCode::CREATED);
        }
        let (_, _, page) = send(&fhir, "GET", "/fhir/Patient?_count=2", None).await;
        assert_eq!(
            (&page["total"], &page["entry"][1]["resource"]["id"]),
            (&json!(3), &json!("b"))
        );
        let next = page["link"][1]["url"].as_str().unwrap();
        assert_eq!(next, "http://localhost/fhir/Patient?_offset=2&_count=2");
        let (_, _, page) = send(&fhir, "GET", next, None).await;
        assert_eq!(page["entry"].as_array().map(Vec::len), Some(1));
        let form = [("content-type", "application/x-www-form-urlencoded")];
        let search = request(
            "POST",
            "/fhir/Patient/_search?_summary=count",
            "_id=a%2Cc",
            &form,
        );
        let (_, _, counted) = exchange(&fhir, search).await;
        assert_eq!((&counted["total"], counted.get("entry")), (&json!(2), None));

        #[rustfmt::skip]
        let cases = [
            ("GET", "/other/Patient", "", 404),
            ("GET", "/fhir/Patient/zz", "", 404),
            ("GET", "/fhir/Patient/a/_history/9", "", 404),
            ("GET", "/fhir/patient", "", 404),
            ("PATCH", "/fhir/Patient/a", "", 405),
            ("POST", "/fhir/Patient", "{", 400),
            ("POST", "/fhir/Patient", r#"{"a": 1}"#, 400),
            ("POST", "/fhir/Patient", r#"{"resourceType": "Observation"}"#, 400),
            ("PUT", "/fhir/Patient/a", r#"{"resourceType": "Patient", "id": "b"}"#, 400),
            ("PUT", "/fhir/Patient/a", r#"{"resourceType": "Patient"}"#, 400),
            ("GET", "/fhir/Patient?_count=x", "", 400),
            ("GET", "/fhir/Patient?name=x", "", 400),
            ("GET", "/fhir/Patient?_offset=18446744073709551615", "", 200),
            ("GET", "/fhir/Patient/$everything", "", 400),
            ("POST", "/fhir", r#"{"resourceType": "Bundle", "type": "collection"}"#, 400),
            ("GET", "/fhir/metadata", "", 200),
        ];
        for (method, uri, body, expected) in cases {
            let (status, headers, answer) = exchange(&fhir, request(method, uri, body, &[])).await;
            assert_eq!(status.as_u16(), expected, "{method} {uri}");
            assert!(answer["resourceType"].is_string(), "{method} {uri}");
            assert_eq!(headers["content-type"], FHIR_JSON);
        }
    }

    #[tokio::test]
    async fn transactions_resolve_urn_uuids_and_batches_read() {
        let fhir = MemoryFhir::new("");
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:obs", "resource": {"resourceType": "Observation", "status": "final",
                "subject": {"reference": "urn:uuid:pat"}}, "request": {"method": "POST", "url": "Observation"}},
            {"fullUrl": "urn:uuid:pat", "resource": {"resourceType": "Patient"},
                "request": {"method": "POST", "url": "Patient"}},
        ]});
        let (status, _, answer) = send(&fhir, "POST", "http://h:1/", Some(&bundle)).await;
        assert_eq!(
            (status, &answer["type"]),
            (StatusCode::OK, &json!("transaction-response"))
        );
        let patient_id = answer["entry"][1]["resource"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let observation = &answer["entry"][0];
        assert_eq!(observation["response"]["status"], "201 Created");
        assert_eq!(observation["response"]["etag"], "W/\"1\"");
        assert_eq!(
            observation["resource"]["subject"]["reference"],
            format!("Patient/{patient_id}")
        );
        let location = observation["response"]["location"].as_str().unwrap();
        for query in [
            format!("patient={patient_id}"),
            format!("subject=http://x/fhir/Patient/{patient_id}"),
        ] {
            let (_, _, found) = send(&fhir, "GET", &format!("/Observation?{query}"), None).await;
            assert_eq!(found["total"], 1, "{query}");
        }

        // A failing entry leaves nothing behind.
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": "Patient/missing"}},
        ]});
        let (status, _, _) = send(&fhir, "POST", "/", Some(&bundle)).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(fhir.versions().len(), 2);

        let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": location}},
            {"request": {"method": "GET", "url": "Patient/missing/_history/1"}},
            {"request": {"method": "GET", "url": format!("Patient?_id={patient_id}")}},
        ]});
        let (status, _, answer) = send(&fhir, "POST", "/", Some(&bundle)).await;
        assert_eq!(
            (status, &answer["type"]),
            (StatusCode::OK, &json!("batch-response"))
        );
        assert_eq!(
            answer["entry"][0]["resource"]["resourceType"],
            "Observation"
        );
        assert_eq!(answer["entry"][1]["response"]["status"], "404 Not Found");
        assert_eq!(answer["entry"][2]["resource"]["total"], 1);
    }
}
