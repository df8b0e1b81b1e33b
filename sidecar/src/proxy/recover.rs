//! The `recover` phase, outside any request: the intents that writes kept before they were
//! forwarded, and that no outcome settled (the process died between the upstream's commit and
//! the vault's, or the exchange failed without an answer), resolved against the upstream. Each
//! written resource carries `meta.source = urn:fhirseal:write:<write id>:<position>`: found
//! upstream, its identity is sealed under the id and version the upstream gave it and anchored
//! (unless the vault and the ledger have it already); not found, it may still be on its way (an
//! exchange a crash cut off goes on at the upstream, which may commit it after the restart), so
//! it is looked up again at later rounds, and only once its intents are older than the forget
//! cutoff (twice the upstream's timeout) is it taken as never written and a surrogate made for
//! it forgotten.
//!
//! Also outside any request: a blind index filed by an earlier build in another layout is
//! refiled from each resource's sealed identity merged into its clinical part as the upstream
//! holds it (the clinical part keeps what the index files too, such as the state of an
//! address); identity searches wait (503) until that is done.

use fhirseal_adapters::canonical;
use http::{Method, StatusCode};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::Value;

use super::deps::{blocking, Deps};
use super::seal::write_source;
use crate::error::ProxyError;
use crate::sealing::Intent;

/// What one round of resolution did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    /// Writes whose versions the upstream holds, now sealed and anchored.
    pub kept: usize,
    /// Writes the upstream never stored, forgotten.
    pub forgotten: usize,
    /// Writes left for a later round: kept after the cutoff (maybe still in flight here).
    pub left: usize,
    /// Writes the upstream does not hold yet, kept after the forget cutoff: it may still commit
    /// them; looked up again at the next round.
    pub awaited: usize,
    /// Writes whose lookup failed (the upstream did not answer): looked up again later.
    pub failed: usize,
}

/// What a lookup of one intent found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// The upstream holds the version: sealed and anchored.
    Stored,
    /// The upstream does not hold it, and the write is older than the forget cutoff: forgotten.
    Forgotten,
    /// The upstream does not hold it yet.
    NotYet,
}

/// Resolves every write whose intents were all kept before `cutoff_ms` (a write still in
/// flight here is never touched: its intents are newer). A write the upstream does not hold is
/// forgotten only when its intents were all kept before `forget_before_ms`, after which no
/// exchange of it can still be going on at the upstream; until then it is awaited.
pub(super) async fn resolve(
    deps: &Deps,
    cutoff_ms: u64,
    forget_before_ms: u64,
) -> Result<Resolved, ProxyError> {
    let sealing = deps.sealing.clone();
    let intents = blocking(move || sealing.intents()).await?;
    let mut resolved = Resolved::default();
    let mut groups: Vec<Vec<Intent>> = Vec::new();
    for intent in intents {
        match groups.last_mut() {
            Some(group) if group[0].write_id == intent.write_id => group.push(intent),
            _ => groups.push(vec![intent]),
        }
    }
    for group in groups {
        let newest = group.iter().map(Intent::created_ms).max().unwrap_or(0);
        if newest >= cutoff_ms {
            resolved.left += 1;
            continue;
        }
        let may_forget = newest < forget_before_ms;
        let mut settled = true;
        let mut stored = false;
        let mut awaited = false;
        for intent in &group {
            match resolve_one(deps, intent, may_forget).await {
                Ok(Lookup::Stored) => stored = true,
                Ok(Lookup::Forgotten) => {}
                Ok(Lookup::NotYet) => awaited = true,
                Err(error) => {
                    tracing::warn!(write = %intent.write_id, error = %error.log_text(), "an intent could not be resolved yet");
                    settled = false;
                }
            }
        }
        if !settled {
            resolved.failed += 1;
        } else if awaited {
            resolved.awaited += 1;
        } else {
            deps.sealing.durable().await?;
            deps.sealing.settle(&group[0].write_id)?;
            if stored {
                resolved.kept += 1;
            } else {
                resolved.forgotten += 1;
            }
        }
    }
    if resolved.kept + resolved.forgotten > 0 {
        deps.sealing.durable().await?;
        tracing::info!(
            kept = resolved.kept,
            forgotten = resolved.forgotten,
            left = resolved.left,
            awaited = resolved.awaited,
            failed = resolved.failed,
            "writes left unsettled by a crash or a failed exchange resolved"
        );
    }
    Ok(resolved)
}

/// Resolves one intent: seals and anchors what the upstream holds; forgets what it does not
/// when `may_forget`.
async fn resolve_one(deps: &Deps, intent: &Intent, may_forget: bool) -> Result<Lookup, ProxyError> {
    let source = write_source(&intent.write_id, intent.position());
    let url = format!(
        "{}/{}?_source={}&_count=2",
        deps.upstream.base,
        intent.resource_type(),
        utf8_percent_encode(&source, NON_ALPHANUMERIC)
    );
    let (status, bundle) = deps.upstream.json(Method::GET, &url, None).await?;
    if status != StatusCode::OK {
        return Err(ProxyError::UpstreamBody(format!(
            "searching the upstream by _source answered {status}"
        )));
    }
    let found: Vec<&Value> = fhirseal_adapters::resource::entry_resources(&bundle).collect();
    let sealing = deps.sealing.clone();
    let intent = intent.clone();
    let ledger = deps.ledger.clone();
    match found.as_slice() {
        [] if !may_forget => Ok(Lookup::NotYet),
        [] => {
            blocking(move || {
                let prepared = sealing.resume(&intent)?;
                sealing.rollback(&prepared);
                Ok::<_, ProxyError>(Lookup::Forgotten)
            })
            .await
        }
        [resource] => {
            let text = |pointer: &str| {
                resource
                    .pointer(pointer)
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            };
            let (Some(id), Some(version)) = (text("/id"), text("/meta/versionId")) else {
                return Err(ProxyError::UpstreamBody(
                    "a resource found by _source has no id or version".to_owned(),
                ));
            };
            let hash = canonical::clinical_hash(resource)
                .map_err(|e| ProxyError::UpstreamBody(format!("a stored resource: {e}")))?;
            blocking(move || {
                let ty = intent.resource_type().to_owned();
                let prepared = sealing.resume(&intent)?;
                let record = sealing
                    .vault()
                    .record(&ty, &id, &version)
                    .map_err(crate::sealing::SealError::from)?;
                let anchored = ledger.proof(&ty, &id, &version)?.is_some()
                    || ledger.is_pending(&ty, &id, &version)?;
                match record {
                    // The crash came after the vault's commit: kept already, and anchored
                    // unless the stored copy could not be read back then.
                    Some(record) if !anchored => {
                        sealing.anchor_existing(&record, hash)?;
                    }
                    Some(_) => {}
                    None if !prepared.has_identity() && anchored => {}
                    None => sealing.commit(&prepared, &id, &version, Some(hash))?,
                }
                Ok::<_, ProxyError>(Lookup::Stored)
            })
            .await
        }
        _ => Err(ProxyError::UpstreamBody(format!(
            "{} resources carry the source {source}",
            found.len()
        ))),
    }
}

/// Resources refiled per round trip to the upstream.
const REFILE_BATCH: usize = 64;

/// Refiles the blind index when it was filed in another layout; returns how many resources
/// were refiled (0 when it is filed in this build's). An upstream that does not answer leaves
/// the rest for the next call: resources done are refiled again then, which changes nothing.
pub(super) async fn refile_index(deps: &Deps) -> Result<usize, ProxyError> {
    let sealing = deps.sealing.clone();
    let Some(resources) = blocking(move || sealing.to_refile()).await? else {
        return Ok(0);
    };
    for batch in resources.chunks(REFILE_BATCH) {
        let urls: Vec<String> = batch
            .iter()
            .filter(|(_, _, version)| !version.is_empty())
            .map(|(t, id, version)| format!("{t}/{id}/_history/{version}"))
            .collect();
        let mut fetched = deps.upstream.read_versions(&urls).await?.into_iter();
        let mut clinical = Vec::with_capacity(batch.len());
        for (_, _, version) in batch {
            let value = match version.as_str() {
                "" => None,
                _ => fetched.next().and_then(|(_, value)| value),
            };
            clinical.push(value);
        }
        let (sealing, batch) = (deps.sealing.clone(), batch.to_vec());
        blocking(move || {
            for ((t, id, version), value) in batch.iter().zip(clinical) {
                sealing.refile(t, id, version, value)?;
            }
            Ok::<(), ProxyError>(())
        })
        .await?;
    }
    let sealing = deps.sealing.clone();
    blocking(move || sealing.refiled()).await?;
    tracing::info!(
        resources = resources.len(),
        "the blind index was refiled in this build's layout"
    );
    Ok(resources.len())
}
