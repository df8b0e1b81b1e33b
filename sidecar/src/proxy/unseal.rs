//! The `unseal_response` phase: for principals who may see identity, identity is merged back
//! into every resource of the answer, and each resource shown so is an access event of its own,
//! durable before the answer leaves.

use std::collections::BTreeSet;

use bytes::Bytes;
use fhirseal_adapters::fhir;
use http::header;
use http::Response;

use super::deps::Deps;
use crate::audit::{self, Accessor};
use crate::body::{full, ProxyBody};
use crate::error::ProxyError;
use crate::http_util::{collect_limited, contains, response_format};

/// Phase `unseal_response`: identity merged back into every resource of the response, and
/// each resource shown with identity recorded as an access event of its own, durable before
/// the answer leaves.
pub(super) async fn unseal_response(
    deps: &Deps,
    response: Response<ProxyBody>,
    elements: Option<BTreeSet<String>>,
    accessor: &Accessor,
) -> Result<Response<ProxyBody>, ProxyError> {
    let Some(format) = response_format(response.headers()) else {
        return Ok(response);
    };
    if !response.status().is_success() {
        return Ok(response);
    }
    let (mut parts, body) = response.into_parts();
    let limit = deps.limits.max_reidentify;
    let bytes = collect_limited(body, limit).await.map_err(|e| match e {
        ProxyError::UpstreamTooLarge { limit } => ProxyError::TooLargeToReidentify { limit },
        other => other,
    })?;
    if bytes.is_empty() || !contains(&bytes, b"versionId") {
        return Ok(Response::from_parts(parts, full(bytes)));
    }
    let sealing = deps.sealing.clone();
    let accessor = accessor.clone();
    let (out, recorded) = tokio::task::spawn_blocking(move || -> Result<_, ProxyError> {
        let mut value = fhir::parse_lenient(&bytes, format)
            .map_err(|e| ProxyError::UpstreamBody(e.to_string()))?;
        let shown = sealing.reidentify(&mut value, elements.as_ref())?;
        if shown.is_empty() {
            // Nothing of this response is in the vault: the upstream's bytes stand.
            return Ok((bytes, false));
        }
        for event in audit::reidentified_events(&accessor, &shown) {
            sealing.record_access(&event)?;
        }
        let out = fhir::serialize(&value, format)
            .map(Bytes::from)
            .map_err(|e| ProxyError::Internal(e.to_string()))?;
        Ok((out, true))
    })
    .await
    .map_err(|e| ProxyError::Internal(e.to_string()))??;
    if recorded {
        deps.sealing.durable().await?;
    }
    parts
        .headers
        .insert(header::CONTENT_LENGTH, out.len().into());
    Ok(Response::from_parts(parts, full(out)))
}
