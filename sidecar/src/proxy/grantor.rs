//! The grantor's side of sharing: another member's node asks, over the consortium's mutual
//! TLS, for the records this node holds of one person (see [`super::share_wire`]). The chain
//! decides: a grant this institution signed for that member, current, in its period, for the
//! requester's role and purpose ([`fhirseal_consensus::grant::decide`]). Refused: nothing is
//! read from the upstream, nothing is sent, and the refusal is an access event here. Granted:
//! the person's resources are read from the upstream (`Patient/[id]/$everything`), each kept
//! only when this institution anchored that very version, for that person or for no person
//! (`share_wire::of_person`: never for another one), and the grant covers its type, and sent with its identity part sealed, the data key re-wrapped for the grantee's
//! RSA key (`Sealer::share`: the identity is never decrypted here). The request answered and
//! each resource sent are access events here, durable before the answer leaves.

use bytes::Bytes;
use fhirseal_consensus::grant::{permitting, GrantRequest};
use fhirseal_consensus::{ExchangeKind, Timestamp};
use fhirseal_storage::Fingerprint;
use http::{Method, StatusCode};
use serde_json::Value;

use super::deps::{blocking, Deps};
use super::share_wire::{
    of_person, ShareAnswer, ShareRefusal, ShareRequest, SharedResource, MAX_SHARED_RESOURCES,
};
use crate::audit::Accessor;
use crate::error::ProxyError;
use crate::ledger::routes::Answer;
use crate::ledger::LedgerError;

/// Resources asked of the upstream per page of `$everything`.
const PAGE: usize = 500;

/// Answers member `grantee`'s request (its body); every failure is an answer too.
pub(crate) async fn answer(deps: &Deps, grantee: &str, body: &[u8]) -> Answer {
    let (request, fingerprint) = match ShareRequest::parse(body) {
        Ok(parsed) => parsed,
        Err(e) => return refusal(StatusCode::BAD_REQUEST, e.to_string()),
    };
    // A member's requests share the node's limit on requests handled at once with its clients.
    let Ok(_permit) = deps.requests.clone().try_acquire_owned() else {
        return refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node is handling as many requests as it may; ask again".to_owned(),
        );
    };
    match share(deps, grantee, &request, fingerprint).await {
        Ok(Shared::Sent(answer)) => match serde_json::to_vec(&answer) {
            Ok(body) => Answer {
                status: StatusCode::OK,
                json: true,
                body: Bytes::from(body),
            },
            Err(e) => refusal(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        Ok(Shared::Refused(why)) => refusal(StatusCode::FORBIDDEN, why),
        Err(error) => {
            tracing::warn!(%grantee, error = %error.log_text(), "a share request failed");
            let status = match error.status() {
                s if s.is_client_error() => s,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            let text = match error.side() {
                crate::error::Side::Downstream => error.to_string(),
                _ => "the grantor failed to answer; see its log".to_owned(),
            };
            refusal(status, text)
        }
    }
}

enum Shared {
    Sent(ShareAnswer),
    Refused(String),
}

fn refusal(status: StatusCode, error: String) -> Answer {
    let body = serde_json::to_vec(&ShareRefusal { error }).unwrap_or_default();
    Answer {
        status,
        json: true,
        body: Bytes::from(body),
    }
}

async fn share(
    deps: &Deps,
    grantee: &str,
    request: &ShareRequest,
    fingerprint: [u8; 32],
) -> Result<Shared, ProxyError> {
    let now = deps.clock.now_ms();
    let accessor = Accessor::remote(&request.principal, &request.purpose, now);
    let own = deps.ledger.institution().to_owned();
    let Some(grantee_key) = deps
        .ledger
        .member_node(grantee)
        .map(|node| node.wrapping_key)
    else {
        return Ok(Shared::Refused(format!(
            "{grantee} is not an active member"
        )));
    };
    let (ledger, sealing) = (deps.ledger.clone(), deps.sealing.clone());
    let (who, owner) = (grantee.to_owned(), own.clone());
    let (grants, patients) = blocking(move || -> Result<_, ProxyError> {
        let grants = ledger
            .reader()
            .grants(&owner, &fingerprint, &who)
            .map_err(LedgerError::from)?;
        let patients: Vec<String> = sealing
            .vault()
            .resources_of(&Fingerprint(fingerprint))
            .map_err(crate::sealing::SealError::from)?
            .into_iter()
            .filter(|(resource_type, _)| resource_type == "Patient")
            .map(|(_, id)| id)
            .collect();
        Ok((grants, patients))
    })
    .await?;
    let asked = GrantRequest {
        grantee,
        role: &request.role,
        purpose: &request.purpose,
        resource_type: None,
        now: Timestamp(now),
    };
    let named = patients.first().map(String::as_str).unwrap_or_default();
    let permitting = match permitting(&grants, &asked) {
        Ok(all) => all,
        Err(why) => {
            let event = accessor.exchanged(
                ("Patient", named, ""),
                false,
                ExchangeKind::RefusedTo,
                grantee,
            );
            super::access::record_events(deps, vec![event]).await?;
            tracing::info!(%grantee, %why, "a share request refused");
            return Ok(Shared::Refused(format!("{own} refuses: {why}")));
        }
    };
    let wanted = |resource_type: &str| {
        (request.types.is_empty() || request.types.iter().any(|t| t == resource_type))
            && permitting.iter().any(|g| g.grant.covers(resource_type))
    };
    let mut found = Vec::new();
    for patient in &patients {
        everything(deps, patient, &request.types, &mut found).await?;
    }
    let (ledger, sealing, peer, owner) = (
        deps.ledger.clone(),
        deps.sealing.clone(),
        grantee.to_owned(),
        own.clone(),
    );
    let candidates: Vec<Value> = found
        .into_iter()
        .filter(|r| {
            r.get("resourceType")
                .and_then(Value::as_str)
                .is_some_and(wanted)
        })
        .collect();
    // The request answered, then each resource sent.
    let answered = accessor.exchanged(("Patient", named, ""), false, ExchangeKind::SentTo, grantee);
    let (resources, events) = blocking(move || -> Result<_, ProxyError> {
        let mut resources = Vec::new();
        let mut events = vec![answered];
        let mut seen = std::collections::BTreeSet::new();
        let mut anchors = AnchorLookup::new(ledger.reader().clone());
        for resource in candidates {
            let shown = SharedResource::new(resource, None);
            let Some(version) = shown.version() else {
                continue;
            };
            let (t, i, _) = version;
            if !seen.insert((t.to_owned(), i.to_owned())) {
                continue;
            }
            // Only the versions this institution anchored, as the person's or no one's.
            let anchored = anchors
                .entry(&owner, version)?
                .is_some_and(|entry| of_person(&entry.fingerprint, &fingerprint));
            if !anchored {
                continue;
            }
            let sealed = sealing.share(version, &grantee_key)?;
            events.push(accessor.exchanged(version, sealed.is_some(), ExchangeKind::SentTo, &peer));
            resources.push(SharedResource::new(shown.resource, sealed.as_ref()));
        }
        Ok((resources, events))
    })
    .await?;
    super::access::record_events(deps, events).await?;
    tracing::info!(%grantee, resources = resources.len(), "records shared");
    Ok(Shared::Sent(ShareAnswer { resources }))
}

/// Blocks read for one request's anchors, kept while it looks up the next: a person's
/// resources are often anchored in a few blocks.
struct AnchorLookup {
    reader: fhirseal_consensus::ChainReader,
    blocks: std::collections::HashMap<u64, fhirseal_consensus::FinalizedBlock>,
}

/// Most blocks one request keeps read.
const KEPT_BLOCKS: usize = 64;

impl AnchorLookup {
    fn new(reader: fhirseal_consensus::ChainReader) -> Self {
        Self {
            reader,
            blocks: std::collections::HashMap::new(),
        }
    }

    /// The anchor of `institution`'s version (type, id, version), if the chain holds one.
    fn entry(
        &mut self,
        institution: &str,
        (resource_type, id, version): (&str, &str, &str),
    ) -> Result<Option<fhirseal_consensus::tx::AnchorEntry>, LedgerError> {
        let Some(at) = self
            .reader
            .locate_anchor(institution, resource_type, id, version)?
        else {
            return Ok(None);
        };
        if !self.blocks.contains_key(&at.height) {
            if self.blocks.len() >= KEPT_BLOCKS {
                self.blocks.clear();
            }
            let Some(block) = self.reader.block(at.height)? else {
                return Ok(None);
            };
            self.blocks.insert(at.height, block);
        }
        let entry = self.blocks.get(&at.height).and_then(|block| {
            match block.block.transactions.get(at.transaction as usize) {
                Some(fhirseal_consensus::Transaction::Anchor(batch)) => {
                    batch.entries.get(at.entry as usize).cloned()
                }
                _ => None,
            }
        });
        Ok(entry)
    }
}

/// Appends what the upstream's `Patient/[id]/$everything` holds (of `types`, when named) to
/// `found`, page by page; refused when the person has more than one answer may hold.
async fn everything(
    deps: &Deps,
    patient: &str,
    types: &[String],
    found: &mut Vec<Value>,
) -> Result<(), ProxyError> {
    let base = &deps.upstream.base;
    let mut url = format!("{base}/Patient/{patient}/$everything?_count={PAGE}");
    if !types.is_empty() {
        url.push_str("&_type=");
        url.push_str(&types.join(","));
    }
    loop {
        let (status, page) = deps.upstream.json(Method::GET, &url, None).await?;
        if status == StatusCode::NOT_FOUND || status == StatusCode::GONE {
            return Ok(());
        }
        if status != StatusCode::OK {
            return Err(ProxyError::UpstreamBody(format!(
                "Patient/{patient}/$everything answered {status}"
            )));
        }
        found.extend(fhirseal_adapters::resource::entry_resources(&page).cloned());
        if found.len() > MAX_SHARED_RESOURCES {
            return Err(ProxyError::Unprocessable(format!(
                "the person has more than {MAX_SHARED_RESOURCES} records here: ask for fewer resource types at a time"
            )));
        }
        // The next page, when the upstream gives one on its own base.
        match fhirseal_adapters::resource::next_link(&page) {
            Some(next) if next.starts_with(base.as_str()) => url = next.to_owned(),
            _ => return Ok(()),
        }
    }
}
