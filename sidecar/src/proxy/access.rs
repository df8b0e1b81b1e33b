//! The `record_access` phase: a read is an access event queued before it is forwarded, made
//! durable beside the upstream exchange; and, when configured, a FHIR `AuditEvent` sent upstream
//! once the answer is known.

use std::sync::Arc;

use fhirseal_adapters::Interaction;
use fhirseal_storage::outbox::{Exchange, ExchangeKind};
use fhirseal_storage::PendingAccess;
use http::{Method, StatusCode};
use tokio::task::JoinHandle;

use super::deps::Deps;
use crate::audit::{self, Accessor};
use crate::error::ProxyError;
use crate::sealing::SealError;

/// A read's access event, and the task making it durable.
pub(super) type RecordedAccess = (PendingAccess, JoinHandle<Result<(), SealError>>);

/// Queues the access event of a read and starts making it durable. `written_by`: the member
/// whose write the read looks at, when another than this node's (a `$verify` of its version),
/// which the event names.
pub(super) fn record_access(
    deps: &Deps,
    interaction: &Interaction,
    accessor: &Accessor,
    written_by: Option<String>,
) -> Result<Option<RecordedAccess>, ProxyError> {
    let Some(mut event) = audit::access_event(interaction, accessor) else {
        return Ok(None);
    };
    if let Some(peer) = written_by {
        event.exchange = Some(Exchange {
            kind: ExchangeKind::WrittenBy,
            peer,
        });
    }
    deps.sealing.record_access(&event)?;
    let sealing = deps.sealing.clone();
    let flushed = tokio::spawn(async move { sealing.durable().await });
    Ok(Some((event, flushed)))
}

/// Keeps access events a request made besides its own (records shared between members),
/// durable before the answer leaves.
pub(super) async fn record_events(
    deps: &Deps,
    events: Vec<PendingAccess>,
) -> Result<(), ProxyError> {
    if events.is_empty() {
        return Ok(());
    }
    let sealing = deps.sealing.clone();
    super::deps::blocking(move || {
        events
            .iter()
            .try_for_each(|event| sealing.record_access(event))
    })
    .await?;
    deps.sealing.durable().await?;
    Ok(())
}

/// Sends the FHIR `AuditEvent` of a read upstream, in the background; a failure is logged.
pub(super) fn send_audit_event(
    deps: Arc<Deps>,
    event: PendingAccess,
    interaction: Interaction,
    status: StatusCode,
) {
    tokio::spawn(async move {
        let body = audit::audit_event(&event, &interaction, deps.ledger.institution(), status);
        let url = format!("{}/AuditEvent", deps.upstream.base);
        match deps.upstream.json(Method::POST, &url, Some(&body)).await {
            Ok((status, _)) if status.is_success() => {}
            Ok((status, _)) => {
                tracing::warn!(%status, "the upstream refused an AuditEvent");
            }
            Err(error) => {
                tracing::warn!(error = %error.log_text(), "an AuditEvent could not be sent upstream")
            }
        }
    });
}
