//! The write gate in front of the proxy: a node that does not take part in its consortium
//! (joining and without the link key yet, suspended, revoked) answers every write 503 with an
//! `OperationOutcome` saying why, since it could not anchor it; reads are served (the data is
//! the institution's own). Shared by the FHIR listener ([`crate::server`]) and the tower layer
//! ([`crate::layer`]).

use std::future::Future;

use bytes::Bytes;
use fhirseal_adapters::outcome::{IssueType, OperationOutcome};
use fhirseal_adapters::{route, Format};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body::Body;
use tokio::sync::watch;

use crate::body::{BoxError, ProxyBody};
use crate::consortium::standing::Standing;
use crate::error::outcome_response;
use crate::proxy::{Proxy, REQUEST_ID};

/// The write gate: a node that does not take part in its consortium refuses writes, which it
/// could not anchor, with a 503 `OperationOutcome` saying why. Everything else goes on to the
/// proxy.
#[derive(Debug, Clone)]
pub(crate) struct Gate {
    pub(crate) standing: watch::Receiver<Standing>,
    /// The FHIR base path, without a trailing slash.
    pub(crate) base_path: String,
}

impl Gate {
    /// The answer to `req`: the gate's refusal, else the proxy's. The future owns what it
    /// needs, so it can be spawned.
    pub(crate) fn answer<B>(
        &self,
        proxy: &Proxy,
        req: Request<B>,
    ) -> impl Future<Output = Response<ProxyBody>> + Send + 'static
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let refused = self.refuse(&req);
        let response = proxy.handle(req);
        async move {
            match refused {
                Some(refused) => refused,
                None => response.await,
            }
        }
    }

    /// The answer to `req` when the node refuses it.
    fn refuse<B>(&self, req: &Request<B>) -> Option<Response<ProxyBody>> {
        let standing = *self.standing.borrow();
        let why = standing.refusal()?;
        let rel = req.uri().path().strip_prefix(self.base_path.as_str())?;
        if !(rel.is_empty() || rel.starts_with('/')) {
            return None;
        }
        let interaction = route::route(req.method(), rel, req.uri().query().is_some()).ok()?;
        if !interaction.is_write() {
            return None;
        }
        tracing::info!(
            standing = standing.name(),
            method = %req.method(),
            path = %req.uri().path(),
            "write refused: the node does not take part in its consortium"
        );
        let format = Format::negotiate(req.uri().query(), req.headers());
        let outcome = OperationOutcome::error(IssueType::Transient, why);
        let mut response = outcome_response(StatusCode::SERVICE_UNAVAILABLE, &outcome, format);
        let headers = response.headers_mut();
        if matches!(standing, Standing::Joining | Standing::Checking) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(5));
        }
        let id = req
            .headers()
            .get(REQUEST_ID)
            .filter(|v| {
                (1..=128).contains(&v.len()) && v.as_bytes().iter().all(u8::is_ascii_graphic)
            })
            .cloned()
            .or_else(|| HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).ok());
        if let Some(id) = id {
            headers.insert(REQUEST_ID, id);
        }
        Some(response)
    }
}
