//! The sidecar in process: [`FhirSealLayer`] wraps a tower `Service` that speaks FHIR over HTTP
//! (an axum or hyper FHIR server written in Rust) with what the proxy does in front of HAPI —
//! the same phases, the same code: requests authenticated and authorized, identity split off
//! and sealed before the wrapped service sees a write, sealed identity merged back into answers
//! for those who may see it, every access recorded, every write anchored on the ledger.
//!
//! The layer comes from [`crate::Sidecar::embed`], which opens the node (keys, vault, ledger,
//! governance) without a FHIR listener; `Sidecar::serve` then runs its background work
//! (anchoring, the ledger, recovery of unsettled writes) until shutdown. The wrapped service is
//! the node's upstream: it is called with the requests the proxy would send over HTTP, built
//! against `upstream.url` (whose path is the service's FHIR base; scheme and host only name it),
//! under `upstream.timeout_ms`. One node wraps one service: layering it again makes every
//! layered service, and the node's own exchanges, go to the latest one.
//!
//! It knows nothing of what it wraps beyond the FHIR REST API, and owns no phase of its own.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt as _;
use tower::util::BoxCloneSyncService;
use tower::ServiceExt as _;

use crate::body::{BoxError, ProxyBody};
use crate::gate::Gate;
use crate::proxy::Proxy;
use crate::upstream::ServiceSlot;

/// Wraps a FHIR service with the sidecar (see the module's documentation).
#[derive(Debug, Clone)]
pub struct FhirSealLayer {
    proxy: Proxy,
    gate: Gate,
    slot: ServiceSlot,
}

impl FhirSealLayer {
    pub(crate) fn new(proxy: Proxy, gate: Gate, slot: ServiceSlot) -> Self {
        Self { proxy, gate, slot }
    }
}

impl<S, B> tower::Layer<S> for FhirSealLayer
where
    S: tower::Service<Request<ProxyBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    type Service = FhirSeal;

    fn layer(&self, inner: S) -> FhirSeal {
        let inner = BoxCloneSyncService::new(
            inner
                .map_response(|response: Response<B>| {
                    response.map(|body| body.map_err(Into::into).boxed())
                })
                .map_err(Into::into),
        );
        let previous = self
            .slot
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(inner);
        if previous.is_some() {
            tracing::warn!(
                "the layer wraps another service: every exchange goes to it from now on"
            );
        }
        FhirSeal {
            proxy: self.proxy.clone(),
            gate: self.gate.clone(),
        }
    }
}

/// A FHIR service wrapped by [`FhirSealLayer`]. Never fails: every error is an
/// `OperationOutcome` answer.
#[derive(Debug, Clone)]
pub struct FhirSeal {
    proxy: Proxy,
    gate: Gate,
}

impl<B> tower::Service<Request<B>> for FhirSeal
where
    B: Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let answer = self.gate.answer(&self.proxy, req);
        Box::pin(async move { Ok(answer.await) })
    }
}
