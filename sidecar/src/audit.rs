//! The audit trail of reads: every read through the sidecar becomes an access event (principal,
//! institution, resource, purpose of use, time) that the anchorer batches onto the ledger, and,
//! when `audit.upstream_audit_events` is set, a FHIR `AuditEvent` sent to the upstream too.
//!
//! An event names what the request names (a resource, a version, or a type for a search),
//! never the query: identity searches carry names and birth dates, which must not reach the
//! ledger or the upstream.

use fhirseal_adapters::auth::Principal;
use fhirseal_adapters::Interaction;
use fhirseal_storage::{Exchange, ExchangeKind, PendingAccess};
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use crate::error::ProxyError;

/// The header a caller states its purpose of use in (an HL7 v3 PurposeOfUse code such as
/// `TREAT`, `ETREAT`, `HPAYMT`).
pub const PURPOSE_OF_USE: &str = "x-purpose-of-use";

/// What system-level interactions name as their resource type.
const SYSTEM: &str = "*";

/// Who accesses, why and when: what every access event of one request shares.
#[derive(Debug, Clone)]
pub(crate) struct Accessor {
    principal: String,
    purpose_of_use: String,
    time_ms: u64,
}

/// The accessor of a request. A purpose-of-use header that is no code is refused; an access
/// token's purpose of use stands, and a header stating another is refused.
pub(crate) fn accessor(
    principal: &Principal,
    headers: &HeaderMap,
    time_ms: u64,
) -> Result<Accessor, ProxyError> {
    let stated = purpose_of_use(headers)?;
    let claimed = principal.token.as_ref().and_then(|t| t.purpose.clone());
    let purpose_of_use = match claimed {
        Some(claimed) if !stated.is_empty() && stated != claimed => {
            return Err(ProxyError::Forbidden(
                "X-Purpose-Of-Use states another purpose than the access token's".to_owned(),
            ))
        }
        Some(claimed) => claimed,
        None => stated,
    };
    Ok(Accessor {
        principal: principal.name.clone(),
        purpose_of_use,
        time_ms,
    })
}

impl Accessor {
    fn event(
        &self,
        resource_type: &str,
        id: &str,
        version: &str,
        reidentified: bool,
    ) -> PendingAccess {
        PendingAccess {
            principal: self.principal.clone(),
            resource_type: resource_type.to_owned(),
            id: id.to_owned(),
            version: version.to_owned(),
            purpose_of_use: self.purpose_of_use.clone(),
            time_ms: self.time_ms,
            reidentified,
            exchange: None,
        }
    }

    /// An access event of records shared with another member: `reidentified` when an identity
    /// record went with (or came with) the resource.
    pub(crate) fn exchanged(
        &self,
        (resource_type, id, version): (&str, &str, &str),
        reidentified: bool,
        kind: ExchangeKind,
        peer: &str,
    ) -> PendingAccess {
        PendingAccess {
            exchange: Some(Exchange {
                kind,
                peer: peer.to_owned(),
            }),
            ..self.event(resource_type, id, version, reidentified)
        }
    }

    /// The accessor a member's node names for a request it makes under a grant: its principal
    /// as that member names it, with its purpose of use.
    pub(crate) fn remote(principal: &str, purpose_of_use: &str, time_ms: u64) -> Accessor {
        Accessor {
            principal: principal.to_owned(),
            purpose_of_use: purpose_of_use.to_owned(),
            time_ms,
        }
    }

    /// The purpose of use it states (empty: none).
    pub(crate) fn purpose_of_use(&self) -> &str {
        &self.purpose_of_use
    }
}

/// The access event of a request, or `None` for what is no read (writes, deletes,
/// capabilities).
pub(crate) fn access_event(
    interaction: &Interaction,
    accessor: &Accessor,
) -> Option<PendingAccess> {
    let (resource_type, id, version) = accessed(interaction)?;
    Some(accessor.event(resource_type, id, version, false))
}

/// The access events of the resources an answer showed with identity merged back: one per
/// resource version, naming it (never the query that found it).
pub(crate) fn reidentified_events(
    accessor: &Accessor,
    shown: &[(String, String, String)],
) -> Vec<PendingAccess> {
    shown
        .iter()
        .map(|(resource_type, id, version)| accessor.event(resource_type, id, version, true))
        .collect()
}

/// (type, id, version) that a read names; empty id or version where it names none.
fn accessed(interaction: &Interaction) -> Option<(&str, &str, &str)> {
    use Interaction as I;
    Some(match interaction {
        I::Read { resource_type, id }
        | I::HistoryInstance { resource_type, id }
        | I::OperationInstance {
            resource_type, id, ..
        } => (resource_type, id, ""),
        I::VRead {
            resource_type,
            id,
            version,
        }
        | I::OperationVersion {
            resource_type,
            id,
            version,
            ..
        } => (resource_type, id, version),
        I::SearchType { resource_type }
        | I::HistoryType { resource_type }
        | I::OperationType { resource_type, .. } => (resource_type, "", ""),
        // `Patient/123/Observation` reads Patient 123's record.
        I::SearchCompartment {
            compartment, id, ..
        } => (compartment, id, ""),
        I::SearchSystem | I::HistorySystem | I::OperationSystem { .. } => (SYSTEM, "", ""),
        I::Capabilities
        | I::Bundle
        | I::Create { .. }
        | I::ConditionalUpdate { .. }
        | I::ConditionalPatch { .. }
        | I::ConditionalDelete { .. }
        | I::Update { .. }
        | I::Patch { .. }
        | I::Delete { .. } => return None,
    })
}

/// The stated purpose of use: empty when not stated; a code of 1 to 64 letters, digits, `-`,
/// `.` or `_` otherwise.
fn purpose_of_use(headers: &HeaderMap) -> Result<String, ProxyError> {
    let Some(value) = headers.get(PURPOSE_OF_USE) else {
        return Ok(String::new());
    };
    let code = value.to_str().unwrap_or("").trim();
    let valid = (1..=64).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !valid {
        return Err(ProxyError::BadHeader(
            "X-Purpose-Of-Use must be a purpose-of-use code such as TREAT (1 to 64 letters, digits, '-', '.', '_')".to_owned(),
        ));
    }
    Ok(code.to_owned())
}

/// The FHIR R4 `AuditEvent` of one read, as sent upstream.
pub(crate) fn audit_event(
    event: &PendingAccess,
    interaction: &Interaction,
    institution: &str,
    status: StatusCode,
) -> Value {
    let outcome = if status.is_success() {
        "0"
    } else if status.is_client_error() {
        "4"
    } else {
        "8"
    };
    let subtype = match interaction {
        Interaction::Read { .. } => "read",
        Interaction::VRead { .. } => "vread",
        Interaction::HistoryInstance { .. }
        | Interaction::HistoryType { .. }
        | Interaction::HistorySystem => "history",
        Interaction::OperationInstance { .. }
        | Interaction::OperationVersion { .. }
        | Interaction::OperationType { .. }
        | Interaction::OperationSystem { .. } => "operation",
        _ => "search",
    };
    let mut agent = json!({
        "who": {"display": event.principal},
        "requestor": true,
    });
    if !event.purpose_of_use.is_empty() {
        agent["purposeOfUse"] = json!([{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                "code": event.purpose_of_use,
            }]
        }]);
    }
    let what = match (event.id.as_str(), event.version.as_str()) {
        ("", _) => json!({"display": event.resource_type}),
        (id, "") => json!({"reference": format!("{}/{id}", event.resource_type)}),
        (id, version) => {
            json!({"reference": format!("{}/{id}/_history/{version}", event.resource_type)})
        }
    };
    json!({
        "resourceType": "AuditEvent",
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "RESTful Operation",
        },
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": subtype}],
        "action": if subtype == "operation" { "E" } else { "R" },
        "recorded": instant(event.time_ms),
        "outcome": outcome,
        "agent": [agent],
        "source": {"observer": {"display": format!("fhirseal at {institution}")}},
        "entity": [{"what": what}],
    })
}

/// `time_ms` as a FHIR instant (UTC, milliseconds).
pub fn instant(time_ms: u64) -> String {
    // Milliseconds since 1970 fit an i64 until the year 292 million; chrono's range ends sooner
    // (year 262143), and nothing this node writes comes near either.
    i64::try_from(time_ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accessor_of(headers: &HeaderMap, time_ms: u64) -> Result<Accessor, ProxyError> {
        let principal = Principal {
            institution: "local".into(),
            role: "clinician".into(),
            name: "dr-grey".into(),
            rights: Default::default(),
            sees_identity: true,
            audits: false,
            token: None,
        };
        accessor(&principal, headers, time_ms)
    }

    #[test]
    fn reads_are_events_and_writes_are_not() {
        let headers = HeaderMap::new();
        let read = Interaction::VRead {
            resource_type: "Patient".into(),
            id: "p1".into(),
            version: "2".into(),
        };
        let who = accessor_of(&headers, 5).unwrap();
        let event = access_event(&read, &who).unwrap();
        assert_eq!(
            (
                event.resource_type.as_str(),
                event.id.as_str(),
                event.version.as_str()
            ),
            ("Patient", "p1", "2")
        );
        assert_eq!(event.principal, "dr-grey");
        let search = Interaction::SearchSystem;
        let event = access_event(&search, &who).unwrap();
        assert_eq!(event.resource_type, "*");
        let create = Interaction::Create {
            resource_type: "Patient".into(),
        };
        assert!(access_event(&create, &who).is_none());
        let shown = [("Patient".to_owned(), "p1".to_owned(), "3".to_owned())];
        let events = reidentified_events(&who, &shown);
        assert_eq!(events.len(), 1);
        assert!(events[0].reidentified && !event.reidentified);
        assert_eq!(
            (events[0].id.as_str(), events[0].version.as_str()),
            ("p1", "3")
        );
    }

    #[test]
    fn purpose_of_use_is_a_code_or_refused() {
        let read = Interaction::Read {
            resource_type: "Patient".into(),
            id: "p1".into(),
        };
        let mut headers = HeaderMap::new();
        headers.insert(PURPOSE_OF_USE, "ETREAT".parse().unwrap());
        let event = access_event(&read, &accessor_of(&headers, 0).unwrap()).unwrap();
        assert_eq!(event.purpose_of_use, "ETREAT");
        headers.insert(PURPOSE_OF_USE, "treat; drop table".parse().unwrap());
        let err = accessor_of(&headers, 0).unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn instants_are_utc_with_milliseconds() {
        assert_eq!(instant(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(instant(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(instant(1_796_083_199_999), "2026-11-30T23:59:59.999Z");
    }

    #[test]
    fn the_audit_event_names_the_resource_not_the_query() {
        let event = PendingAccess {
            principal: "dr-grey".into(),
            resource_type: "Patient".into(),
            id: String::new(),
            version: String::new(),
            purpose_of_use: "TREAT".into(),
            time_ms: 0,
            reidentified: false,
            exchange: None,
        };
        let search = Interaction::SearchType {
            resource_type: "Patient".into(),
        };
        let value = audit_event(&event, &search, "local", StatusCode::OK);
        assert_eq!(value["entity"][0]["what"]["display"], "Patient");
        assert_eq!(value["subtype"][0]["code"], "search");
        assert_eq!(value["outcome"], "0");
        assert_eq!(
            value["agent"][0]["purposeOfUse"][0]["coding"][0]["code"],
            "TREAT"
        );
    }
}
