//! The admin listener (`admin.listen`): `/metrics` in the Prometheus text format, `/healthz`
//! (the process answers) and `/readyz` (the upstream answers `/metadata`, and anchoring keeps
//! up: what waits in the outbox has not waited longer than `admin.max_anchor_lag_secs`), on a port of
//! their own, apart from FHIR traffic, without API keys. It reads the node's state at each
//! request and changes nothing.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use fhirseal_adapters::outcome::{IssueType, OperationOutcome};
use fhirseal_adapters::Format;
use fhirseal_consensus::governance::MemberStatus;
use fhirseal_consensus::raft::GovernanceNode;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;

use crate::body::{full, ProxyBody};
use crate::error::outcome_response;
use crate::http_util::json_response;
use crate::ledger::NodeLedger;
use crate::listener::{self, Connection, ListenerConfig};
use crate::metrics::{Metrics, NodeState};
use crate::proxy::Proxy;

/// What the admin listener answers from.
#[derive(Debug, Clone)]
pub(crate) struct Admin {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) proxy: Proxy,
    pub(crate) ledger: Arc<NodeLedger>,
    pub(crate) governance: GovernanceNode,
    pub(crate) max_anchor_lag: Duration,
}

impl Admin {
    /// Serves the admin routes on `listener` until `shutdown` resolves.
    pub(crate) async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        let config = ListenerConfig {
            tls: None,
            handshake_timeout: Duration::from_secs(10),
            http1: true,
            max_connections: 64,
            header_read_timeout: Duration::from_secs(10),
            max_http2_streams: 16,
            max_header_bytes: 16 * 1024,
            drain_timeout: Duration::from_secs(2),
        };
        let make = move |_: &Connection| {
            let admin = self.clone();
            service_fn(move |req: Request<Incoming>| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(admin.answer(&req).await) }
            })
        };
        listener::serve(listener, config, make, shutdown).await
    }

    /// The answer to one admin request.
    pub(crate) async fn answer<B>(&self, req: &Request<B>) -> Response<ProxyBody> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let outcome = OperationOutcome::error(
                IssueType::NotSupported,
                "the admin listener answers GET only",
            );
            return outcome_response(StatusCode::METHOD_NOT_ALLOWED, &outcome, Format::Json);
        }
        match req.uri().path() {
            "/metrics" => {
                let text = self.metrics.render(&self.state());
                let mut response = Response::new(full(text));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    ),
                );
                response
            }
            "/healthz" => json_response(StatusCode::OK, r#"{"status":"up"}"#),
            "/readyz" => self.readyz().await,
            other => {
                let outcome = OperationOutcome::error(
                    IssueType::NotFound,
                    format!("no admin route {other}: /metrics, /healthz, /readyz"),
                );
                outcome_response(StatusCode::NOT_FOUND, &outcome, Format::Json)
            }
        }
    }

    /// Ready when the upstream answers and anchoring keeps up.
    async fn readyz(&self) -> Response<ProxyBody> {
        let upstream = self.proxy.readyz().await;
        if !upstream.status().is_success() {
            return upstream;
        }
        let lag = self.ledger.anchor_lag();
        if lag > self.max_anchor_lag {
            let outcome = OperationOutcome::error(
                IssueType::Transient,
                format!(
                    "anchoring lags: entries have waited in the outbox for {} s (admin.max_anchor_lag_secs = {})",
                    lag.as_secs(),
                    self.max_anchor_lag.as_secs()
                ),
            );
            return outcome_response(StatusCode::SERVICE_UNAVAILABLE, &outcome, Format::Json);
        }
        upstream
    }

    /// The node's state for the gauges.
    fn state(&self) -> NodeState {
        let ledger = self.ledger.status().ok();
        let raft = self.governance.raft().metrics().borrow().clone();
        let members = self.governance.state().read(|state| {
            let count = |status: MemberStatus| {
                state.members().filter(|m| m.status == status).count() as u64
            };
            vec![
                ("active".to_owned(), count(MemberStatus::Active)),
                ("suspended".to_owned(), count(MemberStatus::Suspended)),
                ("revoked".to_owned(), count(MemberStatus::Revoked)),
            ]
        });
        NodeState {
            pending_anchors: ledger.as_ref().map_or(0, |l| l.pending_anchors as u64),
            pending_access_events: ledger
                .as_ref()
                .map_or(0, |l| l.pending_access_events as u64),
            anchor_lag: self.ledger.anchor_lag(),
            ledger_blocks: ledger.as_ref().map_or(0, |l| l.blocks),
            ledger_waiting: ledger.as_ref().map_or(0, |l| l.waiting_transactions as u64),
            governance_term: raft.current_term,
            governance_leader: raft.current_leader == Some(raft.id),
            members,
        }
    }
}
