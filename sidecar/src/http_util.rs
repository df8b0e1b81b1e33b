//! HTTP utilities the phases share: reading a body whole under a limit, the JSON request and
//! response the sidecar builds itself, the format of an answer.

use bytes::Bytes;
use fhirseal_adapters::Format;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;

use crate::body::{full, ProxyBody};
use crate::error::ProxyError;

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

/// The clinical part as the request the upstream receives (always JSON).
pub(crate) fn json_request(
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

pub(crate) fn response_format(headers: &http::HeaderMap) -> Option<Format> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(Format::from_mime)
}

pub(crate) fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut response = Response::new(full(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The innermost cause of an error, which is the one a person can act on.
pub(crate) fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = error;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

pub(crate) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
