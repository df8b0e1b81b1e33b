//! The phases at the HTTP edge: `request_filter` (the request routed and within bounds),
//! `upstream_request` (the request as the upstream sees it) and `response_filter` (the answer
//! as the client sees it: hop-by-hop headers dropped, links pointing at the sidecar).

use std::collections::BTreeSet;
use std::net::SocketAddr;

use bytes::Bytes;
use fhirseal_adapters::smart::Reach;
use fhirseal_adapters::{route, Format, Interaction, IssueType, OperationOutcome, Rebase};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::{BodyExt, Limited};

use super::ctx::{PublicBase, RequestCtx, UpstreamQuery};
use super::deps::Deps;
use crate::body::{full, ProxyBody};
use crate::error::{outcome_response, ProxyError};
use crate::http_util::collect_limited;

/// What `request_filter` routed.
#[derive(Debug)]
pub(crate) struct Routed {
    pub(crate) interaction: Interaction,
    /// The path below our base, as the client encoded it (`/Patient/1`).
    pub(crate) rel_path: String,
}

/// The request id header, taken from the client when it sends a sane one and passed upstream.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The peer address of a client connection, put in request extensions by the server.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// Largest upstream response body buffered for link rewriting (generic upstreams only).
const MAX_REWRITTEN_RESPONSE: u64 = 256 * 1024 * 1024;

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

/// Phase `request_filter`: refuse what is not a well-formed FHIR request within our limits.
pub(super) fn request_filter<B>(deps: &Deps, req: &Request<B>) -> Result<Routed, ProxyError> {
    let path = req.uri().path();
    let base = &deps.base_path;
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
        if length > deps.max_body {
            return Err(ProxyError::BodyTooLarge {
                limit: deps.max_body,
            });
        }
    }
    Ok(Routed {
        interaction,
        rel_path,
    })
}

/// Phase `upstream_request`: the request the upstream receives.
pub(super) fn upstream_request(
    deps: &Deps,
    ctx: &RequestCtx,
    req: Request<ProxyBody>,
) -> Result<Request<ProxyBody>, ProxyError> {
    let up = &deps.upstream;
    let (mut parts, body) = req.into_parts();
    let client = parts.extensions.get::<ClientAddr>().copied();
    let query = match &ctx.query {
        UpstreamQuery::Client => parts.uri.query(),
        UpstreamQuery::Rewritten(rewritten) => Some(rewritten.as_str()),
        UpstreamQuery::Paged(paged) => Some(paged.upstream.as_str()),
        UpstreamQuery::Dropped => None,
    }
    .map(str::to_owned);
    // A search of a patient-context token is confined to its patient's compartment.
    let query = match (&ctx.reach, query) {
        (
            Reach::Patient {
                search: Some((param, value)),
                ..
            },
            query,
        ) => {
            let added = format!(
                "{param}={}",
                percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC)
            );
            Some(match query {
                Some(query) if !query.is_empty() => format!("{query}&{added}"),
                _ => added,
            })
        }
        (_, query) => query,
    };
    // A search whose query outgrows what the upstream's URL may hold (an identity search
    // rewritten to thousands of ids) goes as `POST _search` with the query in a form body,
    // which FHIR servers read the same; its pages come back by the server's own paging links.
    let as_form = query.as_ref().filter(|q| {
        q.len() > deps.limits.max_query_bytes
            && parts.method == http::Method::GET
            && matches!(
                ctx.interaction,
                Interaction::SearchType { .. } | Interaction::SearchSystem
            )
    });
    let (path_and_query, body) = match (as_form, &query) {
        (Some(form), _) => {
            let path = ctx.rel_path.trim_end_matches('/');
            let path = if path.ends_with("/_search") {
                path.to_owned()
            } else {
                format!("{path}/_search")
            };
            parts.method = http::Method::POST;
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            );
            parts
                .headers
                .insert(header::CONTENT_LENGTH, form.len().into());
            (
                format!("{}{}", up.path, path),
                full(Bytes::from(form.clone())),
            )
        }
        (None, Some(query)) => (format!("{}{}?{}", up.path, ctx.rel_path, query), body),
        (None, None) => (format!("{}{}", up.path, ctx.rel_path), body),
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
    add_forwarded(headers, client, &ctx.public_base);
    if let Ok(value) = HeaderValue::from_str(&ctx.request_id) {
        headers.insert(REQUEST_ID, value);
    }
    let body = Limited::new(body, deps.max_body as usize).boxed();
    Ok(Request::from_parts(parts, body))
}

/// Phase `response_filter`: the response the client receives.
pub(super) async fn response_filter(
    deps: &Deps,
    ctx: &RequestCtx,
    response: Response<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (interaction, public_base) = (&ctx.interaction, &ctx.public_base);
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let rebase = Rebase::new(&deps.upstream.base, &public_base.url);
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
    if parts.status.is_client_error() || parts.status.is_server_error() {
        // An error page that is no FHIR (Tomcat's HTML for a URL too long, a gateway's text)
        // reaches the client as an OperationOutcome with the upstream's status. Its text stays
        // out of the answer and of the log: it may quote the request.
        let has_body = parts.headers.contains_key(header::CONTENT_TYPE);
        if has_body && !is_fhir {
            let kind = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_owned();
            let outcome = OperationOutcome::error(
                IssueType::Exception,
                format!(
                    "the upstream FHIR server answered {} with a {kind} page instead of FHIR; its log says why",
                    parts.status
                ),
            );
            tracing::warn!(status = parts.status.as_u16(), content_type = %kind, "the upstream answered an error that is no FHIR");
            return Ok(outcome_response(parts.status, &outcome, ctx.format));
        }
    }
    // HAPI caches its CapabilityStatement with the base of whoever asked first, whatever
    // the forwarded headers of later requests say, so that one is always rewritten.
    let rewrite = !deps.forwarded || matches!(interaction, Interaction::Capabilities);
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

/// The base URL clients reach us at, for this request.
pub(super) fn public_base<B>(deps: &Deps, req: &Request<B>) -> PublicBase {
    if let Some(url) = &deps.public_base {
        if let Ok(uri) = url.parse::<Uri>() {
            return PublicBase {
                url: url.clone(),
                scheme: uri.scheme_str().unwrap_or("http").to_owned(),
                host: uri.authority().map(|a| a.to_string()).unwrap_or_default(),
                prefix: uri.path().trim_end_matches('/').to_owned(),
            };
        }
    }
    let scheme = if deps.tls { "https" } else { "http" };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_else(|| deps.upstream.authority.to_string());
    let prefix = deps.base_path.clone();
    PublicBase {
        url: format!("{scheme}://{host}{prefix}"),
        scheme: scheme.to_owned(),
        host,
        prefix,
    }
}

/// The element names of a `_elements` parameter, when the client limited the elements.
pub(super) fn elements_param(query: Option<&str>) -> Option<BTreeSet<String>> {
    let query = query?;
    let mut found = None;
    for pair in query.split('&') {
        if let Some(value) = pair.strip_prefix("_elements=") {
            let decoded = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
            let set = found.get_or_insert_with(BTreeSet::new);
            set.extend(decoded.split(',').map(|e| e.trim().to_owned()));
        }
    }
    found
}

/// The client's request id when it is short printable ASCII, else a fresh UUID.
pub(super) fn request_id(headers: &HeaderMap) -> String {
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
