//! The reverse proxy as a tower `Service`, its life told in named phases (after pingora's
//! proxy phases), each a function of the shared [`deps::Deps`] and the per-request
//! [`ctx::RequestCtx`]:
//!
//! 1. `request_filter` ([`filter`]) — base path, FHIR routing, media type, body size; then the
//!    principal is authenticated and a permit of the concurrent-request limit taken;
//! 2. `plan` and `authorize` ([`plan`]) — the body read and parsed where the sidecar needs it,
//!    what the request needs worked out, and the one permission check; for an access token's
//!    bearer, `authorize_token` ([`confine`]): the SMART policy, and where the token reaches;
//! 3. `record_access` ([`access`]) — a read's access event queued;
//! 4. `consent_request` ([`consent`]) — a `Consent` written read as grants, checked, and the
//!    revocation it asks for finalized; then `seal_request` ([`seal`]) — writes split and
//!    sealed, identity criteria answered from the blind index;
//! 5. `upstream_request` ([`filter`]) — the request as the upstream sees it;
//! 6. `send` (`crate::upstream::UpstreamClient`) — under the upstream timeout, with the client's
//!    credentials dropped and the sidecar's own added;
//! 7. `commit_seal` ([`commit`]) — what the upstream accepted sealed and anchored; then
//!    `consent_response` ([`consent`]) — the grants of a `Consent` the upstream stored, final;
//! 8. `response_filter` ([`filter`]) — hop-by-hop headers stripped, links rewritten; for a
//!    page of an identity search the sidecar pages itself, `page_response` ([`page`]) — the
//!    page's total and links;
//! 9. `confine_response` ([`confine`]) — for an access token's bearer, an answer showing what
//!    its scopes do not let it read is withheld;
//! 10. `unseal_response` ([`unseal`]) — identity merged back for principals who may see it, each
//!     resource shown an access event of its own;
//! 11. `fail_to_proxy` — any error becomes an `OperationOutcome` (see [`crate::error`]);
//! 12. `logging` — one structured line per request, under its request id.
//!
//! `$verify` and the `/ledger/…` API are answered by the sidecar itself ([`ledger_api`]), as are
//! `Patient/[id]/$locate` ([`locate`]: which members hold records of the person),
//! `Patient/[id]/$shared` ([`shared`]: the records another member shares of the person, asked
//! of its node, whose answer is [`grantor`]), `Patient/[id]/$erase` ([`erase`]: the person's
//! key destroyed), and the ledger explorer's page at `/ledger/ui`
//! ([`explorer`]).
//! Dependencies run one way: this file calls the phases; the phases use `deps`, `ctx`, the
//! sealing, the upstream client and the HTTP utilities, and never this file.

mod access;
mod commit;
mod confine;
mod consent;
mod ctx;
mod deps;
mod erase;
mod explorer;
mod filter;
mod grantor;
mod ledger_api;
mod locate;
mod page;
mod person;
mod plan;
mod recover;
mod seal;
mod share_wire;
mod shared;
mod unseal;
mod verify_request;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::auth::Authenticator;
use bytes::Bytes;
use fhirseal_adapters::{Format, Interaction, IssueType, OperationOutcome};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Instrument;

use crate::audit;
use crate::body::{empty, BoxError, ProxyBody};
use crate::config::Config;
use crate::crash::{self, CrashPoint};
use crate::error::{outcome_response, ProxyError, Side};
use crate::http_util::json_response;
use crate::ledger::NodeLedger;
use crate::sealing::Sealing;
use ctx::{RequestCtx, UpstreamQuery};
use deps::Deps;
use seal::Sealed;

pub use filter::{ClientAddr, REQUEST_ID};
pub use recover::Resolved;

/// How long `/readyz` waits for the upstream's `/metadata`.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

/// The reverse proxy. Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub struct Proxy {
    deps: Arc<Deps>,
}

impl Proxy {
    /// A proxy for `config`; the connection pool is created here, connections lazily.
    pub fn new(
        config: &Config,
        listener_tls: bool,
        sealing: Arc<Sealing>,
        ledger: Arc<NodeLedger>,
        auth: Authenticator,
    ) -> Result<Proxy, ProxyError> {
        Ok(Proxy {
            deps: Arc::new(Deps::new(config, listener_tls, sealing, ledger, auth)?),
        })
    }

    /// The same proxy forwarding to the service `slot` holds, in process, instead of over HTTP
    /// (see [`crate::layer`]); it shares this one's limits.
    pub fn in_process(&self, slot: crate::upstream::ServiceSlot) -> Proxy {
        let mut deps = (*self.deps).clone();
        deps.upstream = deps.upstream.in_process(slot);
        Proxy {
            deps: Arc::new(deps),
        }
    }

    /// `/readyz`'s answer: ready when the upstream answers `/metadata` with a success.
    pub async fn readyz(&self) -> Response<ProxyBody> {
        readyz(&self.deps).await
    }

    /// The same proxy asking other members' nodes over `network` for the records they share.
    pub fn with_network(&self, network: crate::consortium::transport::HttpNetwork) -> Proxy {
        let mut deps = (*self.deps).clone();
        deps.network = Some(network);
        Proxy {
            deps: Arc::new(deps),
        }
    }

    /// What answers other members' nodes asking for records this node shares (the
    /// consortium listener's `POST /sharing/records`, with the asking member).
    pub fn sharing(&self) -> crate::consortium::node::PeerHandler {
        let deps = self.deps.clone();
        Arc::new(move |member: String, body: Bytes| {
            let deps = deps.clone();
            Box::pin(async move { grantor::answer(&deps, &member, &body).await })
        })
    }

    /// The node's sealing (for tools and tests that look inside).
    pub fn sealing(&self) -> Arc<Sealing> {
        self.deps.sealing.clone()
    }

    /// The node's ledger (for tools and tests that look inside).
    pub fn ledger(&self) -> Arc<NodeLedger> {
        self.deps.ledger.clone()
    }

    /// The clock the proxy reads the time of day from.
    pub fn clock(&self) -> Arc<dyn crate::clock::Clock> {
        Arc::clone(&self.deps.clock)
    }

    /// Resolves the writes that a crash or a failed exchange left unsettled, whose intents were
    /// kept before `cutoff_ms` (milliseconds since the Unix epoch; see the `recover` phase): the
    /// start time, or later a time no exchange still in flight here can be older than. One the
    /// upstream does not hold is forgotten only when kept before `forget_before_ms`, a time no
    /// exchange still going on at the upstream can be older than.
    pub async fn resolve_intents(
        &self,
        cutoff_ms: u64,
        forget_before_ms: u64,
    ) -> Result<recover::Resolved, ProxyError> {
        recover::resolve(&self.deps, cutoff_ms, forget_before_ms).await
    }

    /// Refiles the blind index when an earlier build filed it in another layout (see the
    /// `recover` phase); how many resources were refiled.
    pub async fn refile_index(&self) -> Result<usize, ProxyError> {
        recover::refile_index(&self.deps).await
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
        let request_id = filter::request_id(req.headers());
        let format = Format::negotiate(req.uri().query(), req.headers());
        let span = tracing::info_span!(
            "request",
            id = %request_id,
            method = %req.method(),
            path = %req.uri().path()
        );
        let req = req.map(|body| body.map_err(Into::into).boxed());
        let deps = self.deps.clone();
        async move {
            let (interaction, result) = proxy(&deps, req, request_id.clone()).await;
            let mut response = match result {
                Ok(response) => response,
                Err(error) => {
                    deps.metrics
                        .refusal(error.reason(), error.status().as_u16());
                    fail_to_proxy(error, format)
                }
            };
            if let Ok(value) = HeaderValue::from_str(&request_id) {
                response.headers_mut().insert(REQUEST_ID, value);
            }
            let elapsed = started.elapsed();
            deps.metrics.request(
                interaction.unwrap_or("unrouted"),
                response.status().as_u16(),
                elapsed,
            );
            logging(interaction, response.status(), elapsed);
            response
        }
        .instrument(span)
    }
}

/// The request's life, from the health endpoints to the answer.
async fn proxy(
    deps: &Arc<Deps>,
    req: Request<ProxyBody>,
    request_id: String,
) -> (
    Option<&'static str>,
    Result<Response<ProxyBody>, ProxyError>,
) {
    match req.uri().path() {
        "/healthz" => return (Some("healthz"), Ok(healthz())),
        path if deps.smart_configuration.is_some()
            && path.strip_prefix(deps.base_path.as_str())
                == Some("/.well-known/smart-configuration") =>
        {
            let body = deps.smart_configuration.clone().unwrap_or_default();
            return (
                Some("smart-configuration"),
                Ok(json_response(StatusCode::OK, body)),
            );
        }
        "/readyz" => return (Some("readyz"), Ok(readyz(deps).await)),
        path if explorer::is_explorer(path) => {
            return (Some("ledger-ui"), explorer::explorer(deps, &req));
        }
        path if path == "/ledger" || path.starts_with("/ledger/") => {
            let result = async {
                let principal = deps
                    .auth
                    .authenticate(req.headers(), deps.clock.now_ms())
                    .await?;
                plan::authorize(deps, &principal, &ledger_api::ledger_needs(path))?;
                ledger_api::ledger_api(deps, &req, &principal).await
            }
            .await;
            return (Some("ledger"), result);
        }
        _ => {}
    }
    let routed = match filter::request_filter(deps, &req) {
        Ok(routed) => routed,
        Err(error) => return (None, Err(error)),
    };
    let name = routed.interaction.name();
    (
        Some(name),
        proxy_routed(deps, req, routed, request_id).await,
    )
}

/// The phases after `request_filter`: authenticate, plan, authorize, record the access, seal,
/// forward, commit, filter and unseal the answer.
async fn proxy_routed(
    deps: &Arc<Deps>,
    req: Request<ProxyBody>,
    routed: filter::Routed,
    request_id: String,
) -> Result<Response<ProxyBody>, ProxyError> {
    let principal = deps
        .auth
        .authenticate(req.headers(), deps.clock.now_ms())
        .await?;
    tracing::debug!(principal = %principal.name, institution = %principal.institution, "authenticated");
    let _permit = take_permit(deps)?;
    let mut ctx = RequestCtx {
        accessor: audit::accessor(&principal, req.headers(), deps.clock.now_ms())?,
        public_base: filter::public_base(deps, &req),
        elements: filter::elements_param(req.uri().query()),
        head: req.method() == Method::HEAD,
        format: Format::negotiate(req.uri().query(), req.headers()),
        write_id: uuid::Uuid::new_v4().to_string(),
        request_id,
        interaction: routed.interaction,
        rel_path: routed.rel_path,
        query: UpstreamQuery::Client,
        principal,
        reach: fhirseal_adapters::smart::Reach::Unconfined,
    };
    let (req, planned) = plan::plan(deps, req, &ctx).await?;
    ctx.reach = confine::authorize_token(deps, &ctx.principal, &ctx, req.uri().query(), &planned)?;
    plan::authorize(deps, &ctx.principal, &planned.needs)?;
    // A read is recorded before it is forwarded; the record's flush runs beside the upstream
    // exchange and is awaited before the answer leaves.
    let body = match &planned.body {
        plan::RequestBody::Verify(body) => Some(body),
        _ => None,
    };
    let written_by = ledger_api::verify_writer(deps, &ctx.interaction, req.uri().query(), body);
    let access = access::record_access(deps, &ctx.interaction, &ctx.accessor, written_by)?;
    let result = async {
        if let Some(target) = ledger_api::verify_target(&ctx.interaction) {
            let body = match planned.body {
                plan::RequestBody::Verify(body) => Some(body),
                _ => None,
            };
            let audits = ctx.principal.audits;
            return ledger_api::verify_operation(deps, &req, target, body, audits).await;
        }
        if let Some(whom) = locate::locate_target(&ctx.interaction) {
            return locate::locate(deps, &req, whom, ctx.format).await;
        }
        if let Some(whom) = shared::shared_target(&ctx.interaction) {
            return shared::shared(deps, &ctx, &req, whom).await;
        }
        if let Some(patient) = erase::erase_target(&ctx.interaction) {
            return erase::erase(deps, &ctx, &req, patient).await;
        }
        let consent_plan = consent::consent_request(deps, &ctx, &planned).await?;
        let (req, pending) = match seal::seal_request(deps, req, planned.body, &mut ctx).await? {
            Sealed::Forward(req, pending) => (req, pending),
            Sealed::Respond(response) => return Ok(response),
        };
        // What the writes prepared is durable before the upstream sees them; forgotten once
        // their outcome is kept. An exchange that fails leaves it for `recover`.
        let intended = commit::intend(deps, &ctx, &pending).await?;
        if intended {
            crash::reached(CrashPoint::BeforeForward);
        }
        let upstream_req = filter::upstream_request(deps, &ctx, req)?;
        let response = deps.upstream.send(upstream_req).await?;
        if intended {
            crash::reached(CrashPoint::AfterUpstream);
        }
        if let Interaction::Delete { resource_type, id } = &ctx.interaction {
            if response.status().is_success() {
                deps.sealing.unfile_deleted(resource_type, id)?;
            }
        }
        let unseal = ctx.principal.sees_identity && !ctx.head;
        let echo = (unseal && ctx.elements.is_none()).then_some(&ctx.accessor);
        let (response, shown) = commit::commit_seal(deps, response, *pending, echo).await?;
        if intended {
            crash::reached(CrashPoint::AfterVault);
            deps.sealing.settle(&ctx.write_id)?;
        }
        let response = consent::consent_response(deps, consent_plan, response).await?;
        let response = filter::response_filter(deps, &ctx, response).await?;
        let response = page::page_response(deps, &ctx, response).await?;
        let response = confine::confine_response(deps, &ctx, response).await?;
        if unseal && !shown {
            unseal::unseal_response(deps, response, ctx.elements.clone(), &ctx.accessor).await
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
            if deps.audit_upstream {
                let status = match &result {
                    Ok(response) => response.status(),
                    Err(error) => error.status(),
                };
                access::send_audit_event(deps.clone(), event, ctx.interaction.clone(), status);
            }
            result
        }
        None => result,
    }
}

/// One permit of the concurrent-request limit, or 503 at once.
fn take_permit(deps: &Deps) -> Result<OwnedSemaphorePermit, ProxyError> {
    deps.requests
        .clone()
        .try_acquire_owned()
        .map_err(|_| ProxyError::Overloaded(deps.limits.max_concurrent))
}

/// Phase `fail_to_proxy`: an error as the client sees it, and as the log says it (without
/// anything the client quoted).
fn fail_to_proxy(error: ProxyError, format: Format) -> Response<ProxyBody> {
    match error.side() {
        Side::Internal => tracing::error!(error = %error.log_text(), "request failed"),
        Side::Upstream => tracing::warn!(error = %error.log_text(), "upstream failed"),
        Side::Downstream => tracing::info!(error = %error.log_text(), "request refused"),
    }
    error.into_response(format)
}

/// `/readyz`: ready when the upstream answers `/metadata` with a success.
async fn readyz(deps: &Deps) -> Response<ProxyBody> {
    let uri = format!("{}/metadata", deps.upstream.base);
    let req = match Request::get(uri)
        .header(header::ACCEPT, Format::Json.mime())
        .body(empty())
    {
        Ok(req) => req,
        Err(e) => return ProxyError::Internal(e.to_string()).into_response(Format::Json),
    };
    match tokio::time::timeout(READY_TIMEOUT, deps.upstream.send(req)).await {
        Ok(Ok(response)) if response.status().is_success() => {
            json_response(StatusCode::OK, r#"{"status":"ready"}"#)
        }
        Ok(Ok(response)) => {
            let outcome = OperationOutcome::error(
                IssueType::Transient,
                format!("upstream /metadata answered {}", response.status()),
            );
            outcome_response(StatusCode::SERVICE_UNAVAILABLE, &outcome, Format::Json)
        }
        Ok(Err(error)) => outcome_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &error.outcome(),
            Format::Json,
        ),
        Err(_) => ProxyError::UpstreamTimeout(READY_TIMEOUT.as_millis() as u64)
            .into_response(Format::Json),
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

/// Phase `logging`: one line per request.
fn logging(interaction: Option<&'static str>, status: StatusCode, elapsed: Duration) {
    tracing::info!(
        interaction = interaction.unwrap_or("-"),
        status = status.as_u16(),
        micros = elapsed.as_micros() as u64,
        "done"
    );
}

fn healthz() -> Response<ProxyBody> {
    json_response(StatusCode::OK, r#"{"status":"up"}"#)
}
