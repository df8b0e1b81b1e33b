//! What two members' nodes say to each other when one fetches records another holds under a
//! grant: `POST /sharing/records` on the grantor's consortium listener (mutual TLS: the peer
//! is the grantee, by its certificate), a JSON [`ShareRequest`] in, a JSON [`ShareAnswer`] or a
//! refusal out. Pure: the grantor answers in [`super::grantor`], the grantee asks in
//! [`super::shared`].
//!
//! Neither carries identity in plaintext, by their types: the request names the person by
//! fingerprint, the answer holds each resource as the grantor's FHIR server stores it (which
//! never holds identity) and each identity part sealed, its data key wrapped for the grantee's
//! RSA key.

use base64::Engine as _;
use fhirseal_storage::SharedRecord;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Most resources one answer holds; a person with more is asked for by resource type.
pub(crate) const MAX_SHARED_RESOURCES: usize = 2_000;

/// The fingerprint of anchors about no person: resources that name none, and resources a
/// transaction wrote beside their patient (their reference to it was a `urn:uuid:` then).
/// What the patient's compartment (`$everything`) holds with it is shared with the person's.
pub(crate) const NO_PERSON: [u8; 32] = [0; 32];

/// Whether a version anchored with `anchored` may go with the records of `person`: anchored
/// for that person, or for no person (see [`NO_PERSON`]), never for another one.
pub(crate) fn of_person(anchored: &[u8; 32], person: &[u8; 32]) -> bool {
    anchored == person || *anchored == NO_PERSON
}

/// Longest principal name, role or purpose a request names.
const MAX_NAME: usize = 256;

/// A grantee's request for one person's records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShareRequest {
    /// The person's fingerprint, 64 hex digits.
    pub(crate) fingerprint: String,
    /// Who asks, as the grantee names them (for the access events at both ends).
    pub(crate) principal: String,
    /// Their role at the grantee (a grant may be limited to one).
    pub(crate) role: String,
    /// The purpose of use they state.
    pub(crate) purpose: String,
    /// The resource types asked for; empty: every type the grant covers.
    #[serde(default)]
    pub(crate) types: Vec<String>,
}

/// Why a share request is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ShareRequestError {
    #[error("not a share request: {0}")]
    Json(String),
    #[error("the fingerprint is not 64 hex digits")]
    Fingerprint,
    #[error("the {0} is empty or longer than 256 bytes")]
    Name(&'static str),
    #[error("'{0}' is not a resource type")]
    ResourceType(String),
}

impl ShareRequest {
    /// Reads and checks a request's body.
    pub(crate) fn parse(body: &[u8]) -> Result<(Self, [u8; 32]), ShareRequestError> {
        let request: ShareRequest =
            serde_json::from_slice(body).map_err(|e| ShareRequestError::Json(e.to_string()))?;
        let fingerprint = fhirseal_storage::keys::unhex(&request.fingerprint)
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or(ShareRequestError::Fingerprint)?;
        for (what, value) in [
            ("principal", &request.principal),
            ("role", &request.role),
            ("purpose of use", &request.purpose),
        ] {
            if value.is_empty() || value.len() > MAX_NAME {
                return Err(ShareRequestError::Name(what));
            }
        }
        if let Some(bad) = request
            .types
            .iter()
            .find(|t| !fhirseal_adapters::route::is_resource_type(t))
        {
            return Err(ShareRequestError::ResourceType(bad.clone()));
        }
        Ok((request, fingerprint))
    }
}

/// The grantor's answer to a request it grants.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShareAnswer {
    pub(crate) resources: Vec<SharedResource>,
}

/// One resource of the person's, as the grantor holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SharedResource {
    /// The resource as the grantor's FHIR server stores it (pseudonymized).
    pub(crate) resource: Value,
    /// Its identity part, sealed, with its data key wrapped for the grantee (base64 of
    /// [`SharedRecord::encode`]); absent when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) sealed: Option<String>,
}

impl SharedResource {
    pub(crate) fn new(resource: Value, sealed: Option<&SharedRecord>) -> Self {
        let engine = base64::engine::general_purpose::STANDARD;
        Self {
            resource,
            sealed: sealed.map(|s| engine.encode(s.encode())),
        }
    }

    /// The sealed identity part, if it came with one; an error when it cannot be read.
    pub(crate) fn shared_record(&self) -> Result<Option<SharedRecord>, String> {
        let Some(text) = &self.sealed else {
            return Ok(None);
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| format!("the sealed identity is not base64: {e}"))?;
        SharedRecord::decode(&bytes)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// (type, id, version) of the resource, when it names all three.
    pub(crate) fn version(&self) -> Option<(&str, &str, &str)> {
        let r = &self.resource;
        Some((
            r.get("resourceType").and_then(Value::as_str)?,
            r.get("id").and_then(Value::as_str)?,
            r.pointer("/meta/versionId").and_then(Value::as_str)?,
        ))
    }
}

/// The body of a grantor's refusal (403, or 400 for a malformed request): why, in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ShareRefusal {
    pub(crate) error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(value: Value) -> Vec<u8> {
        serde_json::to_vec(&value).unwrap()
    }

    #[test]
    fn a_request_is_checked_whole() {
        let good = json!({
            "fingerprint": "ab".repeat(32),
            "principal": "dr-bob",
            "role": "clinician",
            "purpose": "TREAT",
            "types": ["Observation"],
        });
        let (request, fingerprint) = ShareRequest::parse(&body(good.clone())).unwrap();
        assert_eq!(fingerprint, [0xab; 32]);
        assert_eq!(request.types, ["Observation"]);
        let cases = [
            ("fingerprint", json!("ab"), ShareRequestError::Fingerprint),
            (
                "fingerprint",
                json!("zz".repeat(32)),
                ShareRequestError::Fingerprint,
            ),
            ("principal", json!(""), ShareRequestError::Name("principal")),
            (
                "role",
                json!("r".repeat(257)),
                ShareRequestError::Name("role"),
            ),
            (
                "purpose",
                json!(""),
                ShareRequestError::Name("purpose of use"),
            ),
            (
                "types",
                json!(["../Patient"]),
                ShareRequestError::ResourceType("../Patient".into()),
            ),
        ];
        for (field, value, expected) in cases {
            let mut bad = good.clone();
            bad[field] = value;
            assert_eq!(
                ShareRequest::parse(&body(bad)).unwrap_err(),
                expected,
                "{field}"
            );
        }
        let mut extra = good;
        extra["name"] = json!("Alice");
        assert!(matches!(
            ShareRequest::parse(&body(extra)),
            Err(ShareRequestError::Json(_))
        ));
    }

    #[test]
    fn a_version_goes_with_its_persons_records_or_no_ones() {
        assert!(of_person(&[7; 32], &[7; 32]));
        assert!(of_person(&NO_PERSON, &[7; 32]));
        assert!(!of_person(&[8; 32], &[7; 32]));
    }

    #[test]
    fn a_shared_resource_names_its_version_and_reads_its_record_back() {
        let resource =
            json!({"resourceType": "Observation", "id": "o1", "meta": {"versionId": "2"}});
        let plain = SharedResource::new(resource.clone(), None);
        assert_eq!(plain.version(), Some(("Observation", "o1", "2")));
        assert_eq!(plain.shared_record(), Ok(None));
        let broken = SharedResource {
            resource,
            sealed: Some("not base64!".into()),
        };
        assert!(broken.shared_record().is_err());
    }
}
