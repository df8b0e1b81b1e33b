//! `POST [base]/Patient/[id]/$erase`: erasure by key destruction (crypto-shredding), for the
//! `administer` permission with the `$erase` operation (the admin role by default).
//!
//! In this order, each step safe to run again, so that a retry after a crash or a refusal
//! finishes what the first call began:
//! 1. the person's key is destroyed (`Sealing::destroy_person_key`): from then on none of their records
//!    opens, in the vault or in any copy of it (backups without the keystore);
//! 2. the erasure is put on the chain, signed by this institution (an `Erasure` naming the
//!    person's fingerprint), and waited for; the anchors of their writes stay, and `$verify`
//!    says "identity erased";
//! 3. what the vault holds of them goes: sealed records, blind-index entries, the surrogate
//!    mapping. Until then the records, unreadable, still tell a retry whose fingerprint
//!    `Patient/[id]` was;
//! 4. the upstream's pseudonymized `Patient` is kept or deleted (`seal.erase_upstream`).
//!
//! The answer is a `Parameters`: `erased`, `keyDestroyed` (false when a retry found it
//! destroyed already), `records` and `resources` removed from the vault, the erasure's
//! `blockHeight`, and `upstream` (`kept`, `deleted`, or why not).

use fhirseal_adapters::{fhir, Interaction};
use fhirseal_consensus::{Erasure, ErasureBatch, Transaction};
use http::{Method, Request, Response, StatusCode};
use serde_json::json;

use super::consent::{batch_id, finalize};
use super::ctx::RequestCtx;
use super::deps::{blocking, Deps};
use super::person::Whom;
use crate::body::ProxyBody;
use crate::config::EraseUpstream;
use crate::error::ProxyError;
use crate::ledger::LedgerError;
use crate::verify::fhir_response;

/// The operation's name.
pub(super) const ERASE: &str = "erase";

/// The patient an `$erase` names (only ever by id); `None` for every other interaction.
pub(super) fn erase_target(interaction: &Interaction) -> Option<&str> {
    match super::person::target(interaction, ERASE)? {
        Whom::Patient(id) => Some(id),
        Whom::Identifier => None,
    }
}

/// Erases `Patient/id` (see the module's documentation).
pub(super) async fn erase(
    deps: &Deps,
    ctx: &RequestCtx,
    req: &Request<ProxyBody>,
    id: &str,
) -> Result<Response<ProxyBody>, ProxyError> {
    ProxyError::unless_method(req.method(), Method::POST, "$erase")?;
    let fingerprint = super::person::sealed_patient(deps, id).await?;
    // Signing is checked first: a node that cannot put the erasure on the chain destroys
    // nothing.
    let signer = deps.ledger.signer().map_err(|error| match error {
        LedgerError::NotTakingPart(why) => ProxyError::ChainPending(format!(
            "this node signs no erasure now ({why}); nothing was erased"
        )),
        other => other.into(),
    })?;
    let sealing = deps.sealing.clone();
    let destroyed = blocking(move || sealing.destroy_person_key(&fingerprint)).await?;
    tracing::info!(patient = %id, destroyed, "a person's key destroyed");
    let batch = ErasureBatch::sign(
        batch_id("erasure", &fingerprint.hex(), ""),
        deps.ledger.institution(),
        vec![Erasure {
            fingerprint: fingerprint.0,
            request: ctx.request_id.clone(),
        }],
        &signer,
    )
    .map_err(|e| ProxyError::Internal(e.to_string()))?;
    let at = finalize(deps, Transaction::Erasure(batch), |why| format!(
        "the person's key is destroyed and their identity can no longer be read, but the erasure is not on the chain yet ({why}): POST $erase again to finish"
    ))
    .await?;
    let sealing = deps.sealing.clone();
    let erased = blocking(move || sealing.forget_person(&fingerprint)).await?;
    let upstream = match deps.erase_upstream {
        EraseUpstream::Keep => "kept".to_owned(),
        EraseUpstream::Delete => {
            let url = format!("{}/Patient/{id}", deps.upstream.base);
            match deps.upstream.json(Method::DELETE, &url, None).await {
                Ok((status, _)) if status.is_success() => "deleted".to_owned(),
                Ok((status, answer)) => format!(
                    "not deleted: the upstream answered {status}: {}",
                    outcome_text(&answer)
                ),
                Err(error) => format!("not deleted: {}", error.log_text()),
            }
        }
    };
    tracing::info!(patient = %id, height = at.height, records = erased.records, %upstream, "a person erased");
    let parameters = json!({"resourceType": "Parameters", "parameter": [
        {"name": "erased", "valueBoolean": true},
        {"name": "keyDestroyed", "valueBoolean": destroyed},
        {"name": "records", "valueUnsignedInt": erased.records},
        {"name": "resources", "valueUnsignedInt": erased.resources},
        {"name": "blockHeight", "valueUnsignedInt": at.height},
        {"name": "upstream", "valueString": upstream},
    ]});
    let body = fhir::serialize(&parameters, ctx.format)
        .map_err(|e| ProxyError::Internal(e.to_string()))?;
    Ok(fhir_response(StatusCode::OK, body, ctx.format))
}

/// The diagnostics of an `OperationOutcome` the upstream answered, if it is one.
fn outcome_text(answer: &serde_json::Value) -> String {
    answer
        .pointer("/issue/0/diagnostics")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_owned()
}
