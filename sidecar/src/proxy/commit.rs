//! The `commit_seal` phase: once the upstream has accepted a write and named its id and
//! version, the identity is sealed under them and queued for anchoring (the vault's committer
//! writes the requests waiting in one transaction and one flush), and made durable before the
//! client hears back; what it refused is rolled back.

use bytes::Bytes;
use fhirseal_adapters::{canonical, fhir, Format};
use http::header;
use http::{Response, StatusCode};
use serde_json::Value;

use fhirseal_adapters::Interaction;

use super::ctx::RequestCtx;
use super::deps::{blocking, Deps};
use super::seal::Pending;
use crate::audit::{self, Accessor};
use crate::body::{full, ProxyBody};
use crate::error::ProxyError;
use crate::http_util::{collect_limited, response_format};
use crate::sealing::Prepared;
use crate::upstream::MAX_READ_BACK;

/// A version the upstream accepted, on its way into the vault and the outbox.
struct Written {
    prepared: Prepared,
    id: String,
    version: String,
    /// The stored resource, when the upstream returned it.
    returned: Option<Value>,
}

/// Whether `value` is a resource (of `resource_type`, when given) with this id and version;
/// with an empty id, whether it is a resource with an id and a version at all.
fn is_version(value: &Value, resource_type: Option<&str>, id: &str, version: &str) -> bool {
    let field = |pointer: &str| value.pointer(pointer).and_then(Value::as_str);
    let (Some(ty), Some(found_id), Some(found_version)) = (
        field("/resourceType"),
        field("/id"),
        field("/meta/versionId"),
    ) else {
        return false;
    };
    resource_type.is_none_or(|t| t == ty)
        && ty != "OperationOutcome"
        && (id.is_empty() || (found_id == id && found_version == version))
}

/// Seals and anchors what the upstream accepted; rolls back what it refused.
///
/// With `echo` (a principal who sees identity, and who it is), a create's answer that is the
/// stored version gets the writer's own identity back here, from what the write sealed, with
/// no unsealing; its access event is queued before the vault's group commit, so that the one
/// flush the write waits for makes both durable. Returns the answer and whether identity was
/// shown so (then `unseal_response` has nothing left to do).
pub(super) async fn commit_seal(
    deps: &Deps,
    response: Response<ProxyBody>,
    pending: Pending,
    echo: Option<&Accessor>,
) -> Result<(Response<ProxyBody>, bool), ProxyError> {
    let sealing = &deps.sealing;
    match pending {
        Pending::Nothing => Ok((response, false)),
        Pending::One {
            prepared,
            create,
            patch,
        } => {
            let status = response.status();
            let accepted = if create {
                status == StatusCode::CREATED
            } else {
                status.is_success()
            };
            if !accepted {
                sealing.rollback(&prepared);
                return Ok((response, false));
            }
            // The body is read whole: it is usually the stored resource, which is hashed
            // for the anchor.
            let (parts, body) = response.into_parts();
            let bytes = collect_limited(body, MAX_READ_BACK).await?;
            let returned = response_format(&parts.headers)
                .filter(|f| *f == Format::Json)
                .and_then(|_| serde_json::from_slice::<Value>(&bytes).ok());
            let named = version_from_headers(&parts.headers).or_else(|| {
                let value = returned.as_ref()?;
                let id = value.get("id").and_then(Value::as_str)?;
                let version = value.pointer("/meta/versionId").and_then(Value::as_str)?;
                Some((id.to_owned(), version.to_owned()))
            });
            let Some((id, version)) = named else {
                sealing.rollback(&prepared);
                return Err(ProxyError::UpstreamBody(
                    "the upstream accepted a write without naming its id and version".to_owned(),
                ));
            };
            // What the upstream answers a create with is the version it stores. An update's or
            // a patch's answer need not be: HAPI keeps the earlier version's tags and answers
            // with them in another order than it stores them. Those versions are read back.
            let returned = returned.filter(|v| create && is_version(v, None, "", ""));
            let echoed = match (echo, &returned) {
                (Some(accessor), Some(stored))
                    if prepared.has_identity()
                        && is_version(stored, Some(&prepared.resource_type), &id, &version) =>
                {
                    // The event is queued before the write is committed: should the commit
                    // then fail, the ledger records identity shown in an answer that became
                    // an error (over-recorded, never under). Should queuing it fail, the write
                    // goes on without the echo, and `unseal_response` shows and records it.
                    let version = (prepared.resource_type.clone(), id.clone(), version.clone());
                    let queued = audit::reidentified_events(accessor, &[version])
                        .iter()
                        .try_for_each(|event| sealing.record_access(event));
                    match queued {
                        Ok(()) => {
                            let mut shown = stored.clone();
                            prepared.identity.merge_into(&mut shown);
                            serde_json::to_vec(&shown).ok().map(Bytes::from)
                        }
                        Err(error) => {
                            tracing::warn!(%error, "a create's access event was not queued");
                            None
                        }
                    }
                }
                _ => None,
            };
            let written = Written {
                prepared,
                id,
                version,
                returned,
            };
            commit_written(deps, vec![written]).await?;
            let shown = echoed.is_some();
            let body = echoed.unwrap_or(bytes);
            let length = body.len();
            let mut response = Response::from_parts(parts, full(body));
            if shown {
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, length.into());
            }
            if patch {
                response.headers_mut().remove(header::ETAG);
            }
            Ok((response, shown))
        }
        Pending::Bundle(prepared) => {
            if !response.status().is_success() {
                prepared.iter().flatten().for_each(|p| sealing.rollback(p));
                return Ok((response, false));
            }
            let (parts, body) = response.into_parts();
            let bytes = collect_limited(body, MAX_READ_BACK).await?;
            let format = response_format(&parts.headers).unwrap_or(Format::Json);
            let parsed = bytes.clone();
            let value = tokio::task::spawn_blocking(move || fhir::parse_lenient(&parsed, format))
                .await
                .map_err(|e| ProxyError::Internal(e.to_string()))?
                .map_err(|e| ProxyError::UpstreamBody(e.to_string()))?;
            let results = value["entry"].as_array().cloned().unwrap_or_default();
            let mut written = Vec::new();
            for (index, p) in prepared.into_iter().enumerate() {
                let Some(p) = p else { continue };
                let result = results.get(index);
                let status = result
                    .and_then(|r| r.pointer("/response/status"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let location = result
                    .and_then(|r| r.pointer("/response/location"))
                    .and_then(Value::as_str)
                    .and_then(version_location);
                match location {
                    Some((_, id, version)) if status.starts_with('2') => written.push(Written {
                        prepared: p,
                        id,
                        version,
                        returned: None,
                    }),
                    _ => sealing.rollback(&p),
                }
            }
            commit_written(deps, written).await?;
            Ok((Response::from_parts(parts, full(bytes)), false))
        }
    }
}

/// Hashes each written version as the upstream stores it, seals its identity and queues its
/// anchor (in the vault's group commit), makes all of it durable, and with `anchor = "sync"`
/// waits for the block. When the upstream's copies cannot be read back, the identity is
/// still kept (so nothing written is lost) and the client hears that anchoring failed.
async fn commit_written(deps: &Deps, mut written: Vec<Written>) -> Result<(), ProxyError> {
    if written.is_empty() {
        return Ok(());
    }
    let hashed: Result<Vec<[u8; 32]>, ProxyError> = stored_versions(deps, &mut written)
        .await
        .and_then(|values| {
            values
                .iter()
                .map(|v| {
                    canonical::clinical_hash(v)
                        .map_err(|e| ProxyError::UpstreamBody(format!("a stored resource: {e}")))
                })
                .collect()
        });
    let hashes: Vec<Option<[u8; 32]>> = match &hashed {
        Ok(hashes) => hashes.iter().copied().map(Some).collect(),
        Err(_) => vec![None; written.len()],
    };
    // What `anchor = "sync"` waits for; nothing to keep otherwise.
    let versions: Vec<(String, String, String)> = if deps.anchor_sync {
        written
            .iter()
            .map(|w| {
                (
                    w.prepared.resource_type.clone(),
                    w.id.clone(),
                    w.version.clone(),
                )
            })
            .collect()
    } else {
        Vec::new()
    };
    // Sealing is CPU work: off the async workers, which other requests are waiting for. The
    // vault's committer then writes it with the other requests waiting, in one transaction
    // and one flush.
    let sealing = deps.sealing.clone();
    let staged = blocking(move || {
        written
            .iter()
            .zip(hashes)
            .map(|(w, hash)| sealing.stage(&w.prepared, &w.id, &w.version, hash))
            .collect::<Result<Vec<_>, _>>()
    })
    .await?;
    deps.sealing.commit_durably(staged).await?;
    hashed.map_err(|e| ProxyError::NotAnchored(e.to_string()))?;
    if deps.anchor_sync {
        let timeout = deps.sync_timeout;
        if !deps.ledger.wait_anchored(&versions, timeout).await? {
            return Err(ProxyError::AnchorTimeout(timeout.as_millis() as u64));
        }
    }
    Ok(())
}

/// The written versions as the upstream stores them, in JSON: what it returned when that is
/// the version itself, else read back (one vread, or one batch of them).
async fn stored_versions(deps: &Deps, written: &mut [Written]) -> Result<Vec<Value>, ProxyError> {
    let missing: Vec<usize> = written
        .iter()
        .enumerate()
        .filter(|(_, w)| {
            !w.returned
                .as_ref()
                .is_some_and(|v| is_version(v, Some(&w.prepared.resource_type), &w.id, &w.version))
        })
        .map(|(i, _)| i)
        .collect();
    let urls: Vec<String> = missing
        .iter()
        .map(|&i| {
            let w = &written[i];
            format!(
                "{}/{}/_history/{}",
                w.prepared.resource_type, w.id, w.version
            )
        })
        .collect();
    let fetched = deps.upstream.read_versions(&urls).await?;
    for ((i, url), (status, value)) in missing.into_iter().zip(&urls).zip(fetched) {
        let w = &mut written[i];
        match value {
            Some(value)
                if is_version(&value, Some(&w.prepared.resource_type), &w.id, &w.version) =>
            {
                w.returned = Some(value);
            }
            _ => {
                return Err(ProxyError::UpstreamBody(format!(
                    "reading back {url} answered {status}"
                )))
            }
        }
    }
    Ok(written
        .iter_mut()
        .filter_map(|w| w.returned.take())
        .collect())
}

/// Id and version from `Location` or `Content-Location` (`…/Type/id/_history/v`).
fn version_from_headers(headers: &http::HeaderMap) -> Option<(String, String)> {
    location_from_headers(headers).map(|(_, id, version)| (id, version))
}

/// Type, id and version from `Location` or `Content-Location` (`…/Type/id/_history/v`).
pub(super) fn location_from_headers(headers: &http::HeaderMap) -> Option<(String, String, String)> {
    [header::LOCATION, header::CONTENT_LOCATION]
        .iter()
        .filter_map(|name| headers.get(name).and_then(|v| v.to_str().ok()))
        .find_map(version_location)
}

/// `(type, id, version)` of a `…Type/id/_history/version` URL.
fn version_location(url: &str) -> Option<(String, String, String)> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let n = segments.len();
    (n >= 4 && segments[n - 2] == "_history").then(|| {
        (
            segments[n - 4].to_owned(),
            segments[n - 3].to_owned(),
            segments[n - 1].to_owned(),
        )
    })
}

/// Before the request is forwarded: what its writes prepared is kept as intents, durable, so
/// that a crash after the upstream's commit and before the vault's loses nothing (`recover`
/// resolves them). Returns whether anything was kept.
pub(super) async fn intend(
    deps: &Deps,
    ctx: &RequestCtx,
    pending: &Pending,
) -> Result<bool, ProxyError> {
    let updated = match &ctx.interaction {
        Interaction::Update { id, .. } => Some(id.as_str()),
        _ => None,
    };
    let writes: Vec<(u32, &Prepared, Option<&str>)> = match pending {
        Pending::Nothing => Vec::new(),
        Pending::One { prepared, .. } => vec![(0, prepared, updated)],
        Pending::Bundle(entries) => entries
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_ref().map(|p| (i as u32, p, None)))
            .collect(),
    };
    if writes.is_empty() {
        return Ok(false);
    }
    deps.sealing
        .intend(&ctx.write_id, &writes, deps.clock.now_ms())?;
    deps.sealing.durable().await?;
    Ok(true)
}
