//! What a FHIR R4 `Consent` grants, read as the terms the sidecar puts on the consortium's
//! chain: the person it is about, the member institutions it lets read, the purposes of use,
//! the resource types, and the period. Pure: the sidecar reads a `Consent` here, then looks up
//! the person's fingerprint and signs the grant.
//!
//! The shape taken (anything else is refused with the reason, never half understood):
//! - `status`: `active` grants; any other status (`inactive`, `rejected`, `entered-in-error`,
//!   `draft`, `proposed`) grants nothing, and revokes what an earlier version granted;
//! - `patient`: a literal reference `Patient/[id]` to a patient of this node;
//! - `provision.type`: `permit` (or absent); `provision.provision` and `provision.data` are
//!   not supported: a grant covers the person's records by type;
//! - `provision.actor`: one or more, each a logical reference whose identifier names a member
//!   institution (system [`INSTITUTION_SYSTEM`]); a `role` coding with system [`ROLE_SYSTEM`]
//!   limits that grantee to one of its roles;
//! - `provision.purpose`: one or more codings (HL7 v3 PurposeOfUse codes such as `TREAT`);
//! - `provision.class`: codings of system [`RESOURCE_TYPE_SYSTEM`], the resource types covered
//!   (none: every type);
//! - `provision.period`: `start` and `end`, FHIR dates or date-times (a date-time needs its
//!   time zone); a date's end is the end of that day, a month's or a year's the end of it.

use chrono::{DateTime, NaiveDate};
use serde_json::Value;

use crate::route::{is_logical_id, is_resource_type};

/// The identifier system naming a member institution of the consortium in `provision.actor`.
pub const INSTITUTION_SYSTEM: &str = "urn:fhirseal:institution";
/// The coding system of a grantee's role in `provision.actor.role`.
pub const ROLE_SYSTEM: &str = "urn:fhirseal:role";
/// The coding system of resource types in `provision.class`.
pub const RESOURCE_TYPE_SYSTEM: &str = "http://hl7.org/fhir/resource-types";

/// Most grantees, purposes and resource types in one `Consent`.
const MAX_LIST: usize = 16;

/// A member institution a `Consent` lets read, and the role there it is limited to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grantee {
    pub institution: String,
    pub role: Option<String>,
}

/// What a `Consent` says, as far as grants go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsentTerms {
    /// An active consent: what it grants.
    Grants(Grant),
    /// Any other status: it grants nothing, and ends what an earlier version granted.
    Inactive,
}

/// What an active `Consent` grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The logical id of the `Patient` it is about (at this node).
    pub patient: String,
    pub grantees: Vec<Grantee>,
    pub purposes: Vec<String>,
    /// Empty: every type.
    pub resource_types: Vec<String>,
    /// Milliseconds since the Unix epoch.
    pub not_before_ms: Option<u64>,
    /// Milliseconds since the Unix epoch, exclusive.
    pub expiry_ms: Option<u64>,
}

/// Why a `Consent` cannot be turned into a grant; the message says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Consent: {0}")]
pub struct ConsentError(pub String);

fn refuse<T>(why: impl Into<String>) -> Result<T, ConsentError> {
    Err(ConsentError(why.into()))
}

/// Reads the terms of `consent`; `now_ms` only to refuse a period that ended already.
pub fn consent_terms(consent: &Value, now_ms: u64) -> Result<ConsentTerms, ConsentError> {
    if consent.get("resourceType").and_then(Value::as_str) != Some("Consent") {
        return refuse("the resource is not a Consent");
    }
    match consent.get("status").and_then(Value::as_str) {
        Some("active") => {}
        Some(_) => return Ok(ConsentTerms::Inactive),
        None => return refuse("status is missing"),
    }
    let patient = match consent.pointer("/patient/reference").and_then(Value::as_str) {
        Some(reference) => match reference.strip_prefix("Patient/") {
            Some(id) if is_logical_id(id) => id.to_owned(),
            _ => {
                return refuse(format!(
                    "patient.reference '{reference}' is not a reference Patient/[id] to a patient of this server"
                ))
            }
        },
        None => return refuse("an active Consent needs patient.reference (Patient/[id])"),
    };
    let Some(provision) = consent.get("provision") else {
        return refuse("an active Consent needs a provision: the grantees, purposes and period");
    };
    match provision.get("type").and_then(Value::as_str) {
        None | Some("permit") => {}
        Some(other) => {
            return refuse(format!(
                "provision.type '{other}': only permit provisions become grants"
            ))
        }
    }
    for unsupported in ["provision", "data", "securityLabel", "code", "dataPeriod"] {
        if provision.get(unsupported).is_some() {
            return refuse(format!(
                "provision.{unsupported} is not supported: a grant covers the person's records by resource type"
            ));
        }
    }
    let grantees = grantees(provision)?;
    let purposes = codes(provision, "purpose", None)?;
    if purposes.is_empty() {
        return refuse("provision.purpose needs at least one purpose of use (such as TREAT)");
    }
    let resource_types = codes(provision, "class", Some(RESOURCE_TYPE_SYSTEM))?;
    if let Some(bad) = resource_types.iter().find(|t| !is_resource_type(t)) {
        return refuse(format!("provision.class '{bad}' is not a resource type"));
    }
    let period = provision.get("period");
    let bound = |name: &str, end: bool| -> Result<Option<u64>, ConsentError> {
        match period.and_then(|p| p.get(name)) {
            None => Ok(None),
            Some(Value::String(text)) => instant(text, end).map(Some).ok_or_else(|| {
                ConsentError(format!(
                    "provision.period.{name} '{text}' is not a FHIR date or a date-time with a time zone"
                ))
            }),
            Some(_) => refuse(format!("provision.period.{name} is not a string")),
        }
    };
    let not_before_ms = bound("start", false)?;
    let expiry_ms = bound("end", true)?;
    if let (Some(start), Some(end)) = (not_before_ms, expiry_ms) {
        if end <= start {
            return refuse("provision.period ends before it starts");
        }
    }
    if expiry_ms.is_some_and(|end| end <= now_ms) {
        return refuse("provision.period has ended already: such a Consent grants nothing");
    }
    Ok(ConsentTerms::Grants(Grant {
        patient,
        grantees,
        purposes,
        resource_types,
        not_before_ms,
        expiry_ms,
    }))
}

fn grantees(provision: &Value) -> Result<Vec<Grantee>, ConsentError> {
    let actors = match provision.get("actor") {
        None => return refuse("provision.actor needs at least one member institution"),
        Some(Value::Array(actors)) if !actors.is_empty() => actors,
        Some(_) => return refuse("provision.actor needs at least one member institution"),
    };
    if actors.len() > MAX_LIST {
        return refuse(format!("provision.actor: at most {MAX_LIST} grantees"));
    }
    let mut out: Vec<Grantee> = Vec::new();
    for (i, actor) in actors.iter().enumerate() {
        let identifier = actor.pointer("/reference/identifier");
        let system = identifier
            .and_then(|i| i.get("system"))
            .and_then(Value::as_str);
        let value = identifier
            .and_then(|i| i.get("value"))
            .and_then(Value::as_str);
        let institution = match (system, value) {
            (Some(INSTITUTION_SYSTEM), Some(value)) if !value.trim().is_empty() => value,
            _ => {
                return refuse(format!(
                    "provision.actor[{i}].reference needs an identifier of system {INSTITUTION_SYSTEM} naming a member institution"
                ))
            }
        };
        if actor.pointer("/reference/reference").is_some() {
            return refuse(format!(
                "provision.actor[{i}].reference: name the institution by its identifier only"
            ));
        }
        let roles: Vec<&str> = actor
            .pointer("/role/coding")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|c| c.get("system").and_then(Value::as_str) == Some(ROLE_SYSTEM))
            .filter_map(|c| c.get("code").and_then(Value::as_str))
            .collect();
        if roles.len() > 1 {
            return refuse(format!(
                "provision.actor[{i}].role names more than one role of {ROLE_SYSTEM}"
            ));
        }
        let grantee = Grantee {
            institution: institution.to_owned(),
            role: roles.first().map(|r| (*r).to_owned()),
        };
        if out.iter().any(|g| g.institution == grantee.institution) {
            return refuse(format!(
                "provision.actor names institution '{institution}' twice"
            ));
        }
        out.push(grantee);
    }
    Ok(out)
}

/// The codes of `provision.<field>` (codings), of `system` when given.
fn codes(
    provision: &Value,
    field: &str,
    system: Option<&str>,
) -> Result<Vec<String>, ConsentError> {
    let mut out: Vec<String> = Vec::new();
    let Some(items) = provision.get(field) else {
        return Ok(out);
    };
    let Some(items) = items.as_array() else {
        return refuse(format!("provision.{field} is not a list of codings"));
    };
    for (i, coding) in items.iter().enumerate() {
        let code = coding.get("code").and_then(Value::as_str);
        let coding_system = coding.get("system").and_then(Value::as_str);
        match (code, system) {
            (Some(code), Some(system)) if coding_system == Some(system) && !code.is_empty() => {
                out.push(code.to_owned());
            }
            (Some(code), None) if !code.is_empty() => out.push(code.to_owned()),
            _ => {
                return refuse(format!(
                    "provision.{field}[{i}] needs a code{}",
                    system.map_or(String::new(), |s| format!(" of system {s}"))
                ))
            }
        }
    }
    out.sort();
    out.dedup();
    if out.len() > MAX_LIST {
        return refuse(format!("provision.{field}: at most {MAX_LIST} codes"));
    }
    Ok(out)
}

/// A FHIR date (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`) or a date-time with its time zone, in
/// milliseconds since the Unix epoch: where the period it names starts, or with `end` where
/// it ends (a date-time is an instant either way).
fn instant(text: &str, end: bool) -> Option<u64> {
    if text.contains('T') {
        let time = DateTime::parse_from_rfc3339(text).ok()?;
        return u64::try_from(time.timestamp_millis()).ok();
    }
    let parts: Vec<&str> = text.split('-').collect();
    let number = |s: &str, len: usize| {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u32>().ok())
            .flatten()
    };
    let year = i32::try_from(number(parts.first()?, 4)?).ok()?;
    let (start, next) = match parts.len() {
        1 => (
            NaiveDate::from_ymd_opt(year, 1, 1)?,
            NaiveDate::from_ymd_opt(year + 1, 1, 1)?,
        ),
        2 => {
            let month = number(parts[1], 2)?;
            let start = NaiveDate::from_ymd_opt(year, month, 1)?;
            let next = if month == 12 {
                NaiveDate::from_ymd_opt(year + 1, 1, 1)?
            } else {
                NaiveDate::from_ymd_opt(year, month + 1, 1)?
            };
            (start, next)
        }
        3 => {
            let day = NaiveDate::from_ymd_opt(year, number(parts[1], 2)?, number(parts[2], 2)?)?;
            (day, day.succ_opt()?)
        }
        _ => return None,
    };
    let chosen = if end { next } else { start };
    let millis = chosen.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis();
    u64::try_from(millis).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn consent() -> Value {
        json!({
            "resourceType": "Consent",
            "status": "active",
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": "Patient/123"},
            "provision": {
                "type": "permit",
                "period": {"start": "2026-12-01", "end": "2026-12-31T12:00:00+01:00"},
                "actor": [{
                    "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                    "reference": {"identifier": {"system": INSTITUTION_SYSTEM, "value": "h2"}}
                }],
                "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
                "class": [{"system": RESOURCE_TYPE_SYSTEM, "code": "Observation"}, {"system": RESOURCE_TYPE_SYSTEM, "code": "Patient"}]
            }
        })
    }

    const NOW: u64 = 1_764_000_000_000; // 2025-11-24

    #[test]
    fn an_active_consent_grants_what_it_says() {
        let ConsentTerms::Grants(grant) = consent_terms(&consent(), NOW).unwrap() else {
            panic!("not a grant");
        };
        assert_eq!(grant.patient, "123");
        assert_eq!(
            grant.grantees,
            vec![Grantee {
                institution: "h2".into(),
                role: None
            }]
        );
        assert_eq!(grant.purposes, vec!["TREAT"]);
        assert_eq!(grant.resource_types, vec!["Observation", "Patient"]);
        // 2026-12-01T00:00:00Z and 2026-12-31T11:00:00Z.
        assert_eq!(grant.not_before_ms, Some(1_796_083_200_000));
        assert_eq!(grant.expiry_ms, Some(1_798_714_800_000));
    }

    #[test]
    fn a_dates_end_is_the_end_of_it() {
        assert_eq!(instant("2026-12-01", false), Some(1_796_083_200_000));
        assert_eq!(instant("2026-12-01", true), Some(1_796_169_600_000));
        assert_eq!(instant("2026-12", true), Some(1_798_761_600_000));
        assert_eq!(instant("2026", true), Some(1_798_761_600_000));
        assert_eq!(instant("2026-02-30", true), None);
        assert_eq!(instant("2026-12-01T10:00:00", false), None, "no time zone");
        assert_eq!(instant("26-12-01", false), None);
        assert_eq!(instant("", false), None);
    }

    #[test]
    fn any_other_status_grants_nothing() {
        for status in [
            "inactive",
            "rejected",
            "entered-in-error",
            "draft",
            "proposed",
        ] {
            let mut c = consent();
            c["status"] = json!(status);
            // Even without the rest: an inactive Consent only ends what was granted.
            c.as_object_mut().unwrap().remove("provision");
            assert_eq!(
                consent_terms(&c, NOW),
                Ok(ConsentTerms::Inactive),
                "{status}"
            );
        }
    }

    #[test]
    fn roles_limit_a_grantee() {
        let mut c = consent();
        c["provision"]["actor"][0]["role"]["coding"]
            .as_array_mut()
            .unwrap()
            .push(json!({"system": ROLE_SYSTEM, "code": "clinician"}));
        let ConsentTerms::Grants(grant) = consent_terms(&c, NOW).unwrap() else {
            panic!("not a grant");
        };
        assert_eq!(grant.grantees[0].role.as_deref(), Some("clinician"));
    }

    /// A change made to a valid Consent.
    type Change = Box<dyn Fn(&mut Value)>;

    #[test]
    fn what_cannot_be_a_grant_is_refused_with_the_reason() {
        // A table of cases: a change to the valid Consent, and a word the refusal says.
        let cases: Vec<(&str, Change, &str)> = vec![
            (
                "no status",
                Box::new(|c| c["status"] = Value::Null),
                "status",
            ),
            (
                "another resource",
                Box::new(|c| c["resourceType"] = json!("Patient")),
                "not a Consent",
            ),
            (
                "no patient",
                Box::new(|c| {
                    c.as_object_mut().unwrap().remove("patient");
                }),
                "patient.reference",
            ),
            (
                "a patient elsewhere",
                Box::new(|c| c["patient"]["reference"] = json!("http://other/fhir/Patient/1")),
                "patient.reference",
            ),
            (
                "a deny provision",
                Box::new(|c| c["provision"]["type"] = json!("deny")),
                "permit",
            ),
            (
                "nested provisions",
                Box::new(|c| c["provision"]["provision"] = json!([{"type": "deny"}])),
                "provision.provision",
            ),
            (
                "no purpose",
                Box::new(|c| {
                    c["provision"].as_object_mut().unwrap().remove("purpose");
                }),
                "purpose",
            ),
            (
                "no actor",
                Box::new(|c| c["provision"]["actor"] = json!([])),
                "actor",
            ),
            (
                "an actor by literal reference",
                Box::new(|c| {
                    c["provision"]["actor"][0]["reference"] = json!({"reference": "Organization/1"})
                }),
                "identifier",
            ),
            (
                "a grantee twice",
                Box::new(|c| {
                    let actor = c["provision"]["actor"][0].clone();
                    c["provision"]["actor"].as_array_mut().unwrap().push(actor);
                }),
                "twice",
            ),
            (
                "a class that is no resource type",
                Box::new(|c| {
                    c["provision"]["class"] =
                        json!([{"system": RESOURCE_TYPE_SYSTEM, "code": "not a type"}])
                }),
                "not a resource type",
            ),
            (
                "a class of another system",
                Box::new(|c| {
                    c["provision"]["class"] = json!([{"system": "urn:x", "code": "Patient"}])
                }),
                "class[0]",
            ),
            (
                "a period that ends before it starts",
                Box::new(|c| c["provision"]["period"]["end"] = json!("2026-11-01")),
                "ends before",
            ),
            (
                "a period that ended",
                Box::new(|c| c["provision"]["period"] = json!({"end": "2020-01-01"})),
                "ended",
            ),
            (
                "a local time",
                Box::new(|c| c["provision"]["period"]["start"] = json!("2026-12-01T10:00:00")),
                "time zone",
            ),
        ];
        for (name, change, word) in cases {
            let mut c = consent();
            change(&mut c);
            match consent_terms(&c, NOW) {
                Err(ConsentError(why)) => assert!(why.contains(word), "{name}: {why}"),
                Ok(terms) => panic!("{name}: accepted as {terms:?}"),
            }
        }
    }
}
