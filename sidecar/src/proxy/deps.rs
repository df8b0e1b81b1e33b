//! What every phase shares: the upstream client, the node's sealing and ledger, the key table,
//! and the limits. Built once per listener; phases take it by reference.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::auth::Authenticator;
use tokio::sync::Semaphore;

use crate::clock::Clock;
use crate::config::{AnchorMode, Config};
use crate::error::ProxyError;
use crate::ledger::NodeLedger;
use crate::limits::RateLimiter;
use crate::metrics::Metrics;
use crate::sealing::Sealing;
use crate::upstream::UpstreamClient;

/// The proxy's dependencies. A clone shares the limits' state (the concurrent-request permits
/// and the identity-search rate).
#[derive(Debug, Clone)]
pub(crate) struct Deps {
    pub(crate) upstream: UpstreamClient,
    pub(crate) sealing: Arc<Sealing>,
    pub(crate) ledger: Arc<NodeLedger>,
    pub(crate) auth: Arc<Authenticator>,
    /// The role table (defaults and `[auth.roles]`), for the policy of access tokens.
    pub(crate) roles: std::collections::BTreeMap<String, fhirseal_adapters::policy::Role>,
    /// `.well-known/smart-configuration`, when token issuers are configured.
    pub(crate) smart_configuration: Option<String>,
    /// `anchor = "sync"`: writes are acknowledged once their block is final.
    pub(crate) anchor_sync: bool,
    pub(crate) sync_timeout: Duration,
    /// Whether reads also send a FHIR `AuditEvent` upstream.
    pub(crate) audit_upstream: bool,
    pub(crate) limits: Limits,
    /// Identity searches per principal.
    pub(crate) identity_searches: Arc<Mutex<RateLimiter>>,
    /// One permit per request being handled.
    pub(crate) requests: Arc<Semaphore>,
    /// Our own FHIR base path, without a trailing slash (empty for `/`).
    pub(crate) base_path: String,
    /// The configured public base, if the sidecar sits behind another proxy.
    pub(crate) public_base: Option<String>,
    /// Whether the listener speaks TLS, for building the public base from `Host`.
    pub(crate) tls: bool,
    /// Largest request body.
    pub(crate) max_body: u64,
    /// Whether the upstream builds its links from `X-Forwarded-*`.
    pub(crate) forwarded: bool,
    /// The time of day (the ledger's clock): access events, intents, the identity-search rate.
    pub(crate) clock: Arc<dyn Clock>,
    /// The node's metrics (the sealing's): requests and refusals are counted here.
    pub(crate) metrics: Arc<Metrics>,
    /// What `$erase` does with the upstream's pseudonymized `Patient`.
    pub(crate) erase_upstream: crate::config::EraseUpstream,
    /// Channels to other members' nodes (asking for records they share); `None` for a node
    /// without the consortium's transport.
    pub(crate) network: Option<crate::consortium::transport::HttpNetwork>,
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
    /// Longest query sent in a URL; a longer search goes as `POST _search`.
    pub(crate) max_query_bytes: usize,
}

impl Deps {
    /// The dependencies of a proxy for `config`; the connection pool is created here,
    /// connections lazily.
    pub(crate) fn new(
        config: &Config,
        listener_tls: bool,
        sealing: Arc<Sealing>,
        ledger: Arc<NodeLedger>,
        auth: Authenticator,
    ) -> Result<Deps, ProxyError> {
        let server = &config.server;
        // A crash point that cannot be read fails the start rather than never firing.
        crate::crash::armed().map_err(|e| ProxyError::Internal(e.to_string()))?;
        let upstream = UpstreamClient::new(&config.upstream, server.max_body_bytes)
            .map_err(|e| ProxyError::Internal(e.to_string()))?;
        Ok(Deps {
            clock: Arc::clone(ledger.clock()),
            metrics: sealing.metrics().clone(),
            upstream,
            sealing,
            ledger,
            roles: config.auth.roles(),
            smart_configuration: auth.smart.as_ref().map(|s| s.configuration().to_string()),
            auth: Arc::new(auth),
            anchor_sync: config.ledger.anchor == AnchorMode::Sync,
            sync_timeout: Duration::from_millis(config.ledger.sync_timeout_ms),
            audit_upstream: config.audit.upstream_audit_events,
            limits: Limits {
                body_read_timeout: server.body_read_timeout(),
                max_reidentify: server.max_reidentify_bytes,
                max_concurrent: server.max_concurrent_requests,
                max_query_bytes: config.upstream.max_query_bytes,
            },
            identity_searches: Arc::new(Mutex::new(RateLimiter::new(
                config.auth.identity_searches_per_minute,
                config.auth.identity_search_burst,
            ))),
            requests: Arc::new(Semaphore::new(server.max_concurrent_requests)),
            base_path: server.base_path.trim_end_matches('/').to_owned(),
            public_base: server
                .public_base
                .as_ref()
                .map(|b| b.trim_end_matches('/').to_owned()),
            tls: listener_tls,
            max_body: server.max_body_bytes,
            forwarded: config.upstream.honours_forwarded_headers,
            network: None,
            erase_upstream: config.seal.erase_upstream,
        })
    }
}

/// Runs `f` on a blocking thread (vault and chain reads and writes, RSA, parsing big bodies),
/// keeping the async workers free for other requests; its error, or the task's, as a
/// `ProxyError`.
pub(crate) async fn blocking<T: Send + 'static, E: Into<ProxyError> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, ProxyError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProxyError::Internal(e.to_string()))?
        .map_err(Into::into)
}
