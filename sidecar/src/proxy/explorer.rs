//! The ledger explorer: a page, its script and its style, served by the node at `/ledger/ui`
//! without an API key (they hold no data). The script reads the ledger API and `$verify` with
//! the key the user gives it, in the browser; nothing is built at run time (plain HTML and
//! JavaScript in `sidecar/assets/`).

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use crate::body::{full, ProxyBody};
use crate::error::ProxyError;
use fhirseal_adapters::route::RouteError;

use super::deps::Deps;

const PAGE: &str = include_str!("../../assets/explorer.html");
const SCRIPT: &str = include_str!("../../assets/explorer.js");
const STYLE: &str = include_str!("../../assets/explorer.css");

/// Whether `path` is the explorer's.
pub(super) fn is_explorer(path: &str) -> bool {
    path == "/ledger/ui" || path.starts_with("/ledger/ui/")
}

/// The explorer's page, script or style.
pub(super) fn explorer<B>(
    deps: &Deps,
    req: &Request<B>,
) -> Result<Response<ProxyBody>, ProxyError> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(ProxyError::Route(RouteError::Method {
            method: req.method().clone(),
            path: format!("{} (the explorer is read-only: use GET)", req.uri().path()),
        }));
    }
    let (body, kind) = match req.uri().path() {
        "/ledger/ui" => (
            PAGE.replace("__FHIR_BASE__", &escape(&deps.base_path)),
            "text/html; charset=utf-8",
        ),
        "/ledger/ui/explorer.js" => (SCRIPT.to_owned(), "text/javascript; charset=utf-8"),
        "/ledger/ui/explorer.css" => (STYLE.to_owned(), "text/css; charset=utf-8"),
        other => {
            return Err(ProxyError::NotFound(format!(
                "no explorer file {other}: the explorer is /ledger/ui"
            )))
        }
    };
    let mut response = Response::new(full(Bytes::from(body)));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    // Its own script and style only, talking to this node only, framed by nobody.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// `text` for an HTML attribute.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
