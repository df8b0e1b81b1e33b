//! The reverse proxy as a tower `Service`, its life told in named phases (after pingora's
//! proxy phases):
//!
//! 1. `request_filter` — health endpoints, base path, FHIR routing, media type, body size;
//!    then the principal is authenticated and a permit of the concurrent-request limit taken;
//! 2. `plan` (`crate::plan`) — the body read and parsed where the sidecar needs it, and what
//!    the request needs worked out; `authorize` — the one permission check;
//! 3. `record_access` — a read's access event queued;
//! 4. `seal_request` (`crate::seal_phase`) — writes split and sealed, identity criteria
//!    answered from the blind index;
//! 5. `upstream_request` — the request as the upstream sees it: its URI, hop-by-hop headers
//!    stripped, `X-Forwarded-*` and `X-Request-Id` added, the body streamed under a limit;
//! 6. `send` — through the pooled client, under the upstream timeout, with the client's
//!    credentials dropped and the sidecar's own added ([`crate::upstream`]);
//! 7. `commit_seal`, `response_filter` — what the upstream accepted sealed and anchored;
//!    hop-by-hop headers stripped, links rewritten to the sidecar's base;
//! 8. `unseal_response` — identity merged back for principals who may see it, each resource
//!    shown so an access event of its own;
//! 9. `fail_to_proxy` — any error becomes an `OperationOutcome` (see [`crate::error`]);
//! 10. `logging` — one structured line per request, under its request id.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fhirseal_adapters::auth::{ApiKeyTable, Principal};
use fhirseal_adapters::policy::{self, Needs, Permission};
use fhirseal_adapters::{route, Format, Interaction, Rebase};
use fhirseal_storage::PendingAccess;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::audit::{self, Accessor};
use crate::body::{empty, full, BoxError, ProxyBody};
use crate::config::{AnchorMode, Config};
use crate::error::ProxyError;
use crate::ledger::{now_ms, NodeLedger};
use crate::limits::RateLimiter;
use crate::seal_phase::Sealed;
use crate::sealing::SealError;
use crate::sealing::Sealing;
use crate::upstream::Upstream;
use crate::verify::VERIFY;

/// The request id header, taken from the client when it sends a sane one and passed upstream.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The peer address of a client connection, put in request extensions by the server.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// Largest upstream response body buffered for link rewriting (generic upstreams only).
const MAX_REWRITTEN_RESPONSE: u64 = 256 * 1024 * 1024;

/// How long `/readyz` waits for the upstream's `/metadata`.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded in either direction.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// The reverse proxy. Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub struct Proxy {
    pub(crate) shared: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) upstream: Upstream,
    pub(crate) sealing: Arc<Sealing>,
    pub(crate) ledger: Arc<NodeLedger>,
    pub(crate) auth: ApiKeyTable,
    /// `anchor = "sync"`: writes are acknowledged once their block is final.
    pub(crate) anchor_sync: bool,
    pub(crate) sync_timeout: Duration,
    /// Whether reads also send a FHIR `AuditEvent` upstream.
    pub(crate) audit_upstream: bool,
    pub(crate) limits: Limits,
    /// Identity searches per principal.
    identity_searches: std::sync::Mutex<RateLimiter>,
    /// One permit per request being handled.
    requests: Arc<Semaphore>,
    /// Our own FHIR base path, without a trailing slash (empty for `/`).
    base_path: String,
    /// The configured public base, if the sidecar sits behind another proxy.
    public_base: Option<String>,
    /// Whether the listener speaks TLS, for building the public base from `Host`.
    tls: bool,
    pub(crate) max_body: u64,
    timeout: Duration,
    forwarded: bool,
}

/// Bounds on what one request may take.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// A client's body must arrive within this.
    pub(crate) body_read_timeout: Duration,
    /// Largest answer read whole to merge identity back into.
    pub(crate) max_reidentify: u64,
    /// Requests handled at once.
    pub(crate) max_concurrent: usize,
}

/// A request that passed `request_filter`.
pub(crate) struct Admitted {
    pub(crate) interaction: Interaction,
    /// The path below our base, as the client encoded it (`/Patient/1`).
    pub(crate) rel_path: String,
    /// The query the upstream receives.
    pub(crate) query: UpstreamQuery,
}

/// The query string the upstream receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UpstreamQuery {
    /// The client's, as it came.
    Client,
    /// Rewritten (identity criteria answered from the blind index).
    Rewritten(String),
    /// None at all (a conditional update that became a plain create or update).
    Dropped,
}

impl Proxy {
    /// A proxy for `config`; the connection pool is created here, connections lazily.
    pub fn new(
        config: &Config,
        listener_tls: bool,
        sealing: Arc<Sealing>,
        ledger: Arc<NodeLedger>,
        auth: ApiKeyTable,
    ) -> Result<Proxy, ProxyError> {
        let upstream =
            Upstream::new(&config.upstream).map_err(|e| ProxyError::Internal(e.to_string()))?;
        let server = &config.server;
        Ok(Proxy {
            shared: Arc::new(Shared {
                upstream,
                sealing,
                ledger,
                auth,
                anchor_sync: config.ledger.anchor == AnchorMode::Sync,
                sync_timeout: Duration::from_millis(config.ledger.sync_timeout_ms),
                audit_upstream: config.audit.upstream_audit_events,
                limits: Limits {
                    body_read_timeout: server.body_read_timeout(),
                    max_reidentify: server.max_reidentify_bytes,
                    max_concurrent: server.max_concurrent_requests,
                },
                identity_searches: std::sync::Mutex::new(RateLimiter::new(
                    config.auth.identity_searches_per_minute,
                    config.auth.identity_search_burst,
                )),
                requests: Arc::new(Semaphore::new(server.max_concurrent_requests)),
                base_path: server.base_path.trim_end_matches('/').to_owned(),
                public_base: server
                    .public_base
                    .as_ref()
                    .map(|b| b.trim_end_matches('/').to_owned()),
                tls: listener_tls,
                max_body: server.max_body_bytes,
                timeout: config.upstream.timeout(),
                forwarded: config.upstream.honours_forwarded_headers,
            }),
        })
    }

    /// Handles one request; never fails: every error is an `OperationOutcome` response.
    /// The future owns what it needs, so it can be spawned.
    pub fn handle<B>(
        &self,
        req: Request<B>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'static
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let started = Instant::now();
        let request_id = request_id(req.headers());
        let format = Format::negotiate(req.uri().query(), req.headers());
        let span = tracing::info_span!(
            "request",
            id = %request_id,
            method = %req.method(),
            path = %req.uri().path()
        );
        let req = req.map(|body| body.map_err(Into::into).boxed());
        let proxy = self.clone();
        async move {
            let (interaction, result) = proxy.proxy(req, &request_id).await;
            let mut response = match result {
                Ok(response) => response,
                Err(error) => proxy.fail_to_proxy(error, format),
            };
            if let Ok(value) = HeaderValue::from_str(&request_id) {
                response.headers_mut().insert(REQUEST_ID, value);
            }
            logging(interaction, response.status(), started.elapsed());
            response
        }
        .instrument(span)
    }

    async fn proxy(
        &self,
        req: Request<ProxyBody>,
        request_id: &str,
    ) -> (
        Option<&'static str>,
        Result<Response<ProxyBody>, ProxyError>,
    ) {
        match req.uri().path() {
            "/healthz" => return (Some("healthz"), Ok(healthz())),
            "/readyz" => return (Some("readyz"), Ok(self.readyz().await)),
            path if path == "/ledger" || path.starts_with("/ledger/") => {
                let result = async {
                    let principal = self.shared.auth.authenticate(req.headers())?;
                    self.authorize(&principal, &ledger_needs(path))?;
                    self.ledger_api(&req, &principal).await
                }
                .await;
                return (Some("ledger"), result);
            }
            _ => {}
        }
        let admitted = match self.request_filter(&req) {
            Ok(admitted) => admitted,
            Err(error) => return (None, Err(error)),
        };
        let name = admitted.interaction.name();
        (
            Some(name),
            self.proxy_admitted(req, admitted, request_id).await,
        )
    }

    /// The phases after `request_filter`: authenticate, plan, authorize, record the access,
    /// seal, forward, commit, filter and unseal the answer.
    async fn proxy_admitted(
        &self,
        req: Request<ProxyBody>,
        mut admitted: Admitted,
        request_id: &str,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let principal = self.shared.auth.authenticate(req.headers())?;
        tracing::debug!(principal = %principal.name, institution = %principal.institution, "authenticated");
        let _permit = self.take_permit()?;
        let accessor = audit::accessor(&principal, req.headers(), now_ms())?;
        let (req, planned) = self.plan(req, &admitted).await?;
        self.authorize(&principal, &planned.needs)?;
        // A read is recorded before it is forwarded; the record's flush runs beside the
        // upstream exchange and is awaited before the answer leaves.
        let access = self.record_access(&admitted.interaction, &accessor)?;
        let public_base = self.public_base(&req);
        let elements = elements_param(req.uri().query());
        let head = req.method() == Method::HEAD;
        let result = async {
            if let Some(target) = verify_target(&admitted.interaction) {
                return self.verify_operation(&req, target, principal.audits).await;
            }
            let (req, pending) = match self.seal_request(req, planned.body, &mut admitted).await? {
                Sealed::Forward(req, pending) => (req, pending),
                Sealed::Respond(response) => return Ok(response),
            };
            let upstream_req = self.upstream_request(req, &admitted, &public_base, request_id)?;
            let response = self.send(upstream_req).await?;
            let response = self.commit_seal(response, *pending).await?;
            let response = self
                .response_filter(response, &admitted.interaction, &public_base)
                .await?;
            if principal.sees_identity && !head {
                self.unseal_response(response, elements, &accessor).await
            } else {
                Ok(response)
            }
        }
        .await;
        match access {
            Some((event, flushed)) => {
                let result = match flushed.await {
                    Ok(Ok(())) => result,
                    Ok(Err(error)) => Err(ProxyError::Seal(error)),
                    Err(error) => Err(ProxyError::Internal(error.to_string())),
                };
                if self.shared.audit_upstream {
                    let status = match &result {
                        Ok(response) => response.status(),
                        Err(error) => error.status(),
                    };
                    self.send_audit_event(event, admitted.interaction.clone(), status);
                }
                result
            }
            None => result,
        }
    }

    /// One permit of the concurrent-request limit, or 503 at once.
    fn take_permit(&self) -> Result<OwnedSemaphorePermit, ProxyError> {
        self.shared
            .requests
            .clone()
            .try_acquire_owned()
            .map_err(|_| ProxyError::Overloaded(self.shared.limits.max_concurrent))
    }

    /// The one permission check of a request, after authentication and before anything is
    /// stored, forwarded or recorded: the principal's role must cover what the request needs.
    /// Identity searches are also held to the principal's rate.
    fn authorize(&self, principal: &Principal, needs: &Needs) -> Result<(), ProxyError> {
        policy::authorize(&principal.role, &principal.rights, needs)?;
        if needs.permissions.contains(&Permission::IdentitySearch) {
            let key = format!("{}\0{}", principal.institution, principal.name);
            let mut limiter = self.shared.identity_searches.lock().map_err(|_| {
                ProxyError::Internal("the rate limiter's lock is poisoned".to_owned())
            })?;
            limiter
                .take(&key, now_ms())
                .map_err(|retry_after| ProxyError::Throttled { retry_after })?;
        }
        Ok(())
    }

    /// Queues the access event of a read and starts making it durable.
    fn record_access(
        &self,
        interaction: &Interaction,
        accessor: &Accessor,
    ) -> Result<Option<RecordedAccess>, ProxyError> {
        let Some(event) = audit::access_event(interaction, accessor) else {
            return Ok(None);
        };
        self.shared.sealing.record_access(&event)?;
        let sealing = self.shared.sealing.clone();
        let flushed = tokio::spawn(async move { sealing.durable().await });
        Ok(Some((event, flushed)))
    }

    /// Sends the FHIR `AuditEvent` of a read upstream, in the background; a failure is logged.
    fn send_audit_event(&self, event: PendingAccess, interaction: Interaction, status: StatusCode) {
        let proxy = self.clone();
        tokio::spawn(async move {
            let body = audit::audit_event(
                &event,
                &interaction,
                proxy.shared.ledger.institution(),
                status,
            );
            let url = format!("{}/AuditEvent", proxy.shared.upstream.base);
            match proxy.upstream_json(Method::POST, &url, Some(&body)).await {
                Ok((status, _)) if status.is_success() => {}
                Ok((status, _)) => {
                    tracing::warn!(%status, "the upstream refused an AuditEvent");
                }
                Err(error) => tracing::warn!(%error, "an AuditEvent could not be sent upstream"),
            }
        });
    }

    /// Phase 1: refuse what is not a well-formed FHIR request within our limits.
    fn request_filter<B>(&self, req: &Request<B>) -> Result<Admitted, ProxyError> {
        let path = req.uri().path();
        let base = &self.shared.base_path;
        let rel_path = match path.strip_prefix(base.as_str()) {
            Some(rest) if rest.is_empty() || rest.starts_with('/') => rest.to_owned(),
            _ => {
                let shown = if base.is_empty() { "/" } else { base };
                return Err(ProxyError::OutsideBase(path.to_owned(), shown.to_owned()));
            }
        };
        let interaction = route::route(req.method(), &rel_path, req.uri().query().is_some())?;
        if interaction.is_write() {
            check_write_media_type(req.headers())?;
        }
        if let Some(length) = content_length(req.headers())? {
            if length > self.shared.max_body {
                return Err(ProxyError::BodyTooLarge {
                    limit: self.shared.max_body,
                });
            }
        }
        Ok(Admitted {
            interaction,
            rel_path,
            query: UpstreamQuery::Client,
        })
    }

    /// Phase 2: the request the upstream receives.
    fn upstream_request(
        &self,
        req: Request<ProxyBody>,
        admitted: &Admitted,
        public_base: &PublicBase,
        request_id: &str,
    ) -> Result<Request<ProxyBody>, ProxyError> {
        let up = &self.shared.upstream;
        let (mut parts, body) = req.into_parts();
        let client = parts.extensions.get::<ClientAddr>().copied();
        let query = match &admitted.query {
            UpstreamQuery::Client => parts.uri.query(),
            UpstreamQuery::Rewritten(rewritten) => Some(rewritten.as_str()),
            UpstreamQuery::Dropped => None,
        };
        let path_and_query = match query {
            Some(query) => format!("{}{}?{}", up.path, admitted.rel_path, query),
            None => format!("{}{}", up.path, admitted.rel_path),
        };
        parts.uri = Uri::builder()
            .scheme(up.scheme.clone())
            .authority(up.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| ProxyError::BadHeader(format!("request target: {e}")))?;
        // The pool speaks HTTP/1.1 to the upstream whatever the client spoke to us.
        parts.version = Version::HTTP_11;
        let headers = &mut parts.headers;
        strip_hop_by_hop(headers);
        // The client pool sets `Host` from the upstream URI.
        headers.remove(header::HOST);
        // HAPI builds links from RFC 7239 `Forwarded` too: only our own description counts.
        headers.remove(header::FORWARDED);
        add_forwarded(headers, client, public_base);
        if let Ok(value) = HeaderValue::from_str(request_id) {
            headers.insert(REQUEST_ID, value);
        }
        let body = Limited::new(body, self.shared.max_body as usize).boxed();
        Ok(Request::from_parts(parts, body))
    }

    /// Phase 3: the exchange with the upstream, under its timeout.
    pub(crate) async fn send(
        &self,
        mut req: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        self.shared.upstream.outgoing(req.headers_mut());
        let timeout = self.shared.timeout;
        let response = tokio::time::timeout(timeout, self.shared.upstream.client.request(req))
            .await
            .map_err(|_| ProxyError::UpstreamTimeout(timeout.as_millis() as u64))?
            .map_err(|e| self.classify_client_error(e))?;
        Ok(response.map(|b| b.map_err(BoxError::from).boxed()))
    }

    /// Which side failed when the pooled client returns an error.
    fn classify_client_error(&self, error: hyper_util::client::legacy::Error) -> ProxyError {
        let chain = || {
            std::iter::successors(Some(&error as &(dyn std::error::Error + 'static)), |e| {
                e.source()
            })
        };
        if chain().any(|e| e.is::<LengthLimitError>()) {
            return ProxyError::BodyTooLarge {
                limit: self.shared.max_body,
            };
        }
        // A body error from our side of the exchange is the client's body failing to arrive.
        if let Some(user) = chain()
            .filter_map(|e| e.downcast_ref::<hyper::Error>())
            .find(|e| e.is_user())
        {
            return ProxyError::BodyRead(format!("{user}: {}", root_cause(&error)));
        }
        if error.is_connect() {
            return ProxyError::UpstreamUnavailable(format!(
                "{} ({})",
                self.shared.upstream.base,
                root_cause(&error)
            ));
        }
        ProxyError::UpstreamUnavailable(root_cause(&error))
    }

    /// Phase 4: the response the client receives.
    async fn response_filter(
        &self,
        response: Response<ProxyBody>,
        interaction: &Interaction,
        public_base: &PublicBase,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let rebase = Rebase::new(&self.shared.upstream.base, &public_base.url);
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(rewritten) = parts
                .headers
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| rebase.url(v))
            {
                if let Ok(value) = HeaderValue::from_str(&rewritten) {
                    parts.headers.insert(name, value);
                }
            }
        }
        let links: Vec<HeaderValue> = parts
            .headers
            .get_all(header::LINK)
            .iter()
            .map(|v| match v.to_str() {
                Ok(text) => {
                    HeaderValue::from_str(&rebase.link_header(text)).unwrap_or_else(|_| v.clone())
                }
                Err(_) => v.clone(),
            })
            .collect();
        if !links.is_empty() {
            parts.headers.remove(header::LINK);
            for link in links {
                parts.headers.append(header::LINK, link);
            }
        }
        let is_fhir = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(Format::from_mime)
            .is_some();
        // HAPI caches its CapabilityStatement with the base of whoever asked first, whatever
        // the forwarded headers of later requests say, so that one is always rewritten.
        let rewrite = !self.shared.forwarded || matches!(interaction, Interaction::Capabilities);
        if !rewrite || !is_fhir {
            return Ok(Response::from_parts(parts, body));
        }
        // The upstream may have written its own base into the body: buffer it and rewrite.
        let bytes = collect_limited(body, MAX_REWRITTEN_RESPONSE).await?;
        let bytes = rebase.body(&bytes).map(Bytes::from).unwrap_or(bytes);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, bytes.len().into());
        Ok(Response::from_parts(parts, full(bytes)))
    }

    /// Phase 5: an error as the client sees it.
    fn fail_to_proxy(&self, error: ProxyError, format: Format) -> Response<ProxyBody> {
        match error.side() {
            crate::error::Side::Internal => {
                tracing::error!(error = %error.log_text(), "request failed")
            }
            crate::error::Side::Upstream => {
                tracing::warn!(error = %error.log_text(), "upstream failed")
            }
            crate::error::Side::Downstream => {
                tracing::info!(error = %error.log_text(), "request refused")
            }
        }
        error.into_response(format)
    }

    /// `/readyz`: ready when the upstream answers `/metadata` with a success.
    async fn readyz(&self) -> Response<ProxyBody> {
        let up = &self.shared.upstream;
        let uri = format!("{}/metadata", up.base);
        let req = Request::get(uri)
            .header(header::ACCEPT, Format::Json.mime())
            .body(empty());
        let result = match req {
            Ok(mut req) => {
                up.outgoing(req.headers_mut());
                tokio::time::timeout(READY_TIMEOUT, up.client.request(req)).await
            }
            Err(e) => {
                return ProxyError::Internal(e.to_string()).into_response(Format::Json);
            }
        };
        match result {
            Ok(Ok(response)) if response.status().is_success() => {
                json_response(StatusCode::OK, r#"{"status":"ready"}"#)
            }
            Ok(Ok(response)) => {
                let outcome = fhirseal_adapters::OperationOutcome::error(
                    fhirseal_adapters::IssueType::Transient,
                    format!("upstream /metadata answered {}", response.status()),
                );
                crate::error::outcome_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &outcome,
                    Format::Json,
                )
            }
            Ok(Err(e)) => {
                let error = self.classify_client_error(e);
                let outcome = error.outcome();
                crate::error::outcome_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &outcome,
                    Format::Json,
                )
            }
            Err(_) => ProxyError::UpstreamTimeout(READY_TIMEOUT.as_millis() as u64)
                .into_response(Format::Json),
        }
    }

    /// The base URL clients reach us at, for this request.
    fn public_base<B>(&self, req: &Request<B>) -> PublicBase {
        if let Some(url) = &self.shared.public_base {
            if let Ok(uri) = url.parse::<Uri>() {
                return PublicBase {
                    url: url.clone(),
                    scheme: uri.scheme_str().unwrap_or("http").to_owned(),
                    host: uri.authority().map(|a| a.to_string()).unwrap_or_default(),
                    prefix: uri.path().trim_end_matches('/').to_owned(),
                };
            }
        }
        let scheme = if self.shared.tls { "https" } else { "http" };
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .or_else(|| req.uri().authority().map(|a| a.to_string()))
            .unwrap_or_else(|| self.shared.upstream.authority.to_string());
        let prefix = self.shared.base_path.clone();
        PublicBase {
            url: format!("{scheme}://{host}{prefix}"),
            scheme: scheme.to_owned(),
            host,
            prefix,
        }
    }
}

impl<B> tower::Service<Request<B>> for Proxy
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let response = self.handle(req);
        Box::pin(async move { Ok(response.await) })
    }
}

/// What a `/ledger/…` request needs: re-verifying the chain is for those who audit; the rest
/// is open to every principal (what they see of it depends on `audit`).
fn ledger_needs(path: &str) -> Needs {
    let mut needs = Needs::default();
    if path.trim_end_matches('/') == "/ledger/verify" {
        needs.permissions.insert(Permission::Audit);
    }
    needs
}

/// A read's access event, and the task making it durable.
type RecordedAccess = (PendingAccess, JoinHandle<Result<(), SealError>>);

/// The (type, id, version) a `$verify` names.
fn verify_target(interaction: &Interaction) -> Option<(&str, &str, Option<&str>)> {
    match interaction {
        Interaction::OperationInstance {
            resource_type,
            id,
            name,
        } if name == VERIFY => Some((resource_type, id, None)),
        Interaction::OperationVersion {
            resource_type,
            id,
            version,
            name,
        } if name == VERIFY => Some((resource_type, id, Some(version))),
        _ => None,
    }
}

/// How clients reach the sidecar, for one request.
#[derive(Debug, Clone)]
struct PublicBase {
    /// `https://seal.example:8443/fhir`
    url: String,
    scheme: String,
    /// `seal.example:8443`
    host: String,
    /// `/fhir`
    prefix: String,
}

/// The element names of a `_elements` parameter, when the client limited the elements.
fn elements_param(query: Option<&str>) -> Option<std::collections::BTreeSet<String>> {
    let query = query?;
    let mut found = None;
    for pair in query.split('&') {
        if let Some(value) = pair.strip_prefix("_elements=") {
            let decoded = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
            let set = found.get_or_insert_with(std::collections::BTreeSet::new);
            set.extend(decoded.split(',').map(|e| e.trim().to_owned()));
        }
    }
    found
}

/// Which side a body being read whole comes from: it decides who is blamed when it fails.
#[derive(Debug, Clone, Copy)]
pub(crate) enum BodyFrom {
    Client,
    Upstream,
}

/// Reads a whole upstream body, refusing one over `limit` bytes.
pub(crate) async fn collect_limited(body: ProxyBody, limit: u64) -> Result<Bytes, ProxyError> {
    collect_body(body, limit, BodyFrom::Upstream).await
}

/// Reads a whole body, refusing one over `limit` bytes (413 for a client's, 502 for the
/// upstream's).
pub(crate) async fn collect_body(
    mut body: ProxyBody,
    limit: u64,
    from: BodyFrom,
) -> Result<Bytes, ProxyError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| match from {
            BodyFrom::Client => ProxyError::BodyRead(e.to_string()),
            BodyFrom::Upstream => ProxyError::UpstreamBody(e.to_string()),
        })?;
        if let Ok(data) = frame.into_data() {
            if (buf.len() + data.len()) as u64 > limit {
                return Err(match from {
                    BodyFrom::Client => ProxyError::BodyTooLarge { limit },
                    BodyFrom::Upstream => ProxyError::UpstreamTooLarge { limit },
                });
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Phase 6: one line per request.
fn logging(interaction: Option<&'static str>, status: StatusCode, elapsed: Duration) {
    tracing::info!(
        interaction = interaction.unwrap_or("-"),
        status = status.as_u16(),
        micros = elapsed.as_micros() as u64,
        "done"
    );
}

/// The client's request id when it is short printable ASCII, else a fresh UUID.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// Writes carry a FHIR resource, or a patch document, and say so.
fn check_write_media_type(headers: &HeaderMap) -> Result<(), ProxyError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ProxyError::UnsupportedMediaType("(none)".to_owned()));
    };
    let text = value
        .to_str()
        .map_err(|_| ProxyError::BadHeader("Content-Type is not ASCII".to_owned()))?;
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let patch = matches!(
        essence.as_str(),
        "application/json-patch+json" | "application/xml-patch+xml"
    );
    if patch || Format::from_mime(&essence).is_some() {
        Ok(())
    } else {
        Err(ProxyError::UnsupportedMediaType(text.to_owned()))
    }
}

fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ProxyError> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ProxyError::BadHeader("Content-Length is not a number".to_owned()))
        })
        .transpose()
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// `X-Forwarded-*`, so that the upstream writes links to the sidecar.
fn add_forwarded(headers: &mut HeaderMap, client: Option<ClientAddr>, public: &PublicBase) {
    if let Some(ClientAddr(addr)) = client {
        let ip = addr.ip().to_string();
        let value = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(previous) => format!("{previous}, {ip}"),
            None => ip,
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert("x-forwarded-for", value);
        }
    }
    let port = public
        .host
        .rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty())
        .map(|(_, p)| p.to_owned())
        .unwrap_or_else(|| {
            if public.scheme == "https" {
                "443"
            } else {
                "80"
            }
            .to_owned()
        });
    for (name, value) in [
        ("x-forwarded-host", public.host.as_str()),
        ("x-forwarded-proto", public.scheme.as_str()),
        ("x-forwarded-port", port.as_str()),
        ("x-forwarded-prefix", public.prefix.as_str()),
    ] {
        match HeaderValue::from_str(value) {
            Ok(value) if !value.is_empty() => {
                headers.insert(name, value);
            }
            _ => {
                headers.remove(name);
            }
        }
    }
}

fn healthz() -> Response<ProxyBody> {
    json_response(StatusCode::OK, r#"{"status":"up"}"#)
}

fn json_response(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The innermost cause of an error, which is the one a person can act on.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_go() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/fhir+json"),
        );
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key(header::ACCEPT));
    }

    #[test]
    fn request_ids_are_kept_only_when_sane() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(request_id(&headers), "has space");
        assert_eq!(request_id(&HeaderMap::new()).len(), 36);
    }

    #[test]
    fn writes_need_a_fhir_or_patch_media_type() {
        let mut headers = HeaderMap::new();
        assert!(check_write_media_type(&headers).is_err());
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(check_write_media_type(&headers).is_err());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json-patch+json"),
        );
        assert!(check_write_media_type(&headers).is_ok());
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/fhir+xml;charset=utf-8"),
        );
        assert!(check_write_media_type(&headers).is_ok());
    }

    #[test]
    fn forwarded_headers_describe_the_public_base() {
        let mut headers = HeaderMap::new();
        let public = PublicBase {
            url: "https://seal.example:8443/fhir".into(),
            scheme: "https".into(),
            host: "seal.example:8443".into(),
            prefix: "/fhir".into(),
        };
        let client = ClientAddr(SocketAddr::from(([10, 1, 2, 3], 5555)));
        headers.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.1"));
        add_forwarded(&mut headers, Some(client), &public);
        assert_eq!(headers["x-forwarded-for"], "192.0.2.1, 10.1.2.3");
        assert_eq!(headers["x-forwarded-host"], "seal.example:8443");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-port"], "8443");
        assert_eq!(headers["x-forwarded-prefix"], "/fhir");
    }
}
