//! What a `$verify` asks: the resource it names (by its path, and for `POST` by the copy it
//! carries) and the member whose write it is. Pure: `plan` reads the body and parses it here,
//! `ledger_api` answers.
//!
//! - `GET [type]/[id][/_history/[vid]]/$verify[?institution=M]`: the version as this node's
//!   ledger holds it; without `institution` (or with this node's own) the upstream's copy is
//!   compared too.
//! - `POST [type]/[id][/_history/[vid]]/$verify`, `POST [type]/$verify`, `POST $verify`, with a
//!   `Parameters` body: `institution` (`valueString`, optional: this node's by default) and
//!   `resource` (the copy as the writer's FHIR server holds it). The path may leave out what
//!   the copy names (its `id`, its `meta.versionId`); what both name must agree.

use fhirseal_adapters::search;
use serde_json::{Map, Value};

use crate::error::ProxyError;

/// The name of the operation.
pub(crate) const VERIFY: &str = "verify";

/// The names a `$verify` body's parameters may have.
const INSTITUTION: &str = "institution";
const RESOURCE: &str = "resource";

/// What the path of a `$verify` names: a resource (its current version, or one version), a
/// type, or nothing (the system-level operation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct VerifyPath<'a> {
    pub(crate) resource_type: Option<&'a str>,
    pub(crate) id: Option<&'a str>,
    pub(crate) version: Option<&'a str>,
}

/// A `POST $verify`'s body: whose write, and the copy to compare with what was anchored.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct VerifyRequest {
    /// The member that wrote it; `None`: this node's institution.
    pub(crate) institution: Option<String>,
    /// The resource as the writer's FHIR server holds it (pseudonymized).
    pub(crate) resource: Value,
}

/// The version a `POST $verify` compares: the path and the copy agreed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) resource_type: String,
    pub(crate) id: String,
    /// `None`: the latest version the member anchored.
    pub(crate) version: Option<String>,
}

/// Why a `$verify` request cannot be answered as it stands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum VerifyRequestError {
    #[error("a POST $verify carries a Parameters resource, not {0}")]
    NotParameters(String),
    #[error("Parameters.parameter is not a list")]
    NotAList,
    #[error("a parameter of the $verify body has no name")]
    Unnamed,
    #[error("$verify takes no parameter '{0}': it takes institution and resource")]
    Unknown(String),
    #[error("the parameter '{0}' is given more than once")]
    Repeated(String),
    #[error("the parameter 'institution' names the member that wrote the resource (in a body, as a valueString)")]
    Institution,
    #[error("the parameter 'resource' takes a resource (with its resourceType)")]
    Resource,
    #[error("the $verify body has no 'resource': send the copy to compare with what was anchored")]
    NoResource,
    #[error("the institution is '{query}' in the query and '{body}' in the body")]
    Institutions { query: String, body: String },
    #[error("the path names {what} '{path}' and the resource sent '{sent}'")]
    Mismatch {
        what: &'static str,
        path: String,
        sent: String,
    },
    #[error("{0}")]
    NoTarget(&'static str),
    #[error("$verify takes no parameter '{0}'")]
    QueryParam(String),
}

impl From<VerifyRequestError> for ProxyError {
    fn from(error: VerifyRequestError) -> Self {
        ProxyError::Invalid(error.to_string())
    }
}

impl VerifyRequest {
    /// The request a `Parameters` resource makes: an `institution` at most once, a `resource`
    /// once, nothing else.
    pub(crate) fn from_parameters(value: Value) -> Result<Self, VerifyRequestError> {
        let Value::Object(mut parameters) = value else {
            return Err(VerifyRequestError::NotParameters(
                "a JSON object".to_owned(),
            ));
        };
        match parameters.get("resourceType").and_then(Value::as_str) {
            Some("Parameters") => {}
            Some(other) => return Err(VerifyRequestError::NotParameters(format!("a {other}"))),
            None => {
                return Err(VerifyRequestError::NotParameters(
                    "an object without resourceType".to_owned(),
                ))
            }
        }
        let list = match parameters.remove("parameter") {
            Some(Value::Array(list)) => list,
            None => Vec::new(),
            Some(_) => return Err(VerifyRequestError::NotAList),
        };
        let (mut institution, mut resource) = (None, None);
        for parameter in list {
            let Value::Object(mut parameter) = parameter else {
                return Err(VerifyRequestError::NotAList);
            };
            let name = parameter
                .get("name")
                .and_then(Value::as_str)
                .ok_or(VerifyRequestError::Unnamed)?
                .to_owned();
            let (slot, value) = match name.as_str() {
                INSTITUTION => (&mut institution, institution_of(&parameter)?),
                RESOURCE => (&mut resource, resource_of(&mut parameter)?),
                _ => return Err(VerifyRequestError::Unknown(name)),
            };
            if slot.replace(value).is_some() {
                return Err(VerifyRequestError::Repeated(name));
            }
        }
        Ok(VerifyRequest {
            institution: institution.and_then(|v| v.as_str().map(str::to_owned)),
            resource: resource.ok_or(VerifyRequestError::NoResource)?,
        })
    }

    /// The version to compare: the path's type, id and version where it names them, else the
    /// copy's (`resourceType`, `id`, `meta.versionId`); where both name one, they must agree.
    pub(crate) fn target(&self, path: VerifyPath<'_>) -> Result<Target, VerifyRequestError> {
        let sent = |pointer: &str| self.resource.pointer(pointer).and_then(Value::as_str);
        let pick = |what: &'static str,
                    path: Option<&str>,
                    sent: Option<&str>|
         -> Result<Option<String>, VerifyRequestError> {
            match (path, sent) {
                (Some(p), Some(s)) if p != s => Err(VerifyRequestError::Mismatch {
                    what,
                    path: p.to_owned(),
                    sent: s.to_owned(),
                }),
                (p, s) => Ok(p.or(s).map(str::to_owned)),
            }
        };
        let resource_type = pick("the type", path.resource_type, sent("/resourceType"))?
            .ok_or(VerifyRequestError::Resource)?;
        let id = pick("the id", path.id, sent("/id"))?.ok_or(VerifyRequestError::NoTarget(
            "the resource sent has no id and the path names none: POST [type]/[id]/$verify",
        ))?;
        let version = pick("the version", path.version, sent("/meta/versionId"))?;
        Ok(Target {
            resource_type,
            id,
            version,
        })
    }
}

fn institution_of(parameter: &Map<String, Value>) -> Result<Value, VerifyRequestError> {
    match parameter.get("valueString") {
        Some(Value::String(s)) if !s.is_empty() && only_value(parameter, "valueString") => {
            Ok(Value::String(s.clone()))
        }
        _ => Err(VerifyRequestError::Institution),
    }
}

fn resource_of(parameter: &mut Map<String, Value>) -> Result<Value, VerifyRequestError> {
    if !only_value(parameter, "resource") {
        return Err(VerifyRequestError::Resource);
    }
    match parameter.remove("resource") {
        Some(resource @ Value::Object(_))
            if resource
                .get("resourceType")
                .and_then(Value::as_str)
                .is_some() =>
        {
            Ok(resource)
        }
        _ => Err(VerifyRequestError::Resource),
    }
}

/// Whether `value` is the one value the parameter carries (no other `value[x]`, no parts).
fn only_value(parameter: &Map<String, Value>, value: &str) -> bool {
    parameter
        .keys()
        .all(|k| k == value || !(k.starts_with("value") || k == "resource" || k == "part"))
}

/// The member a `$verify`'s query names (`institution=`), with FHIR's general `_format` and
/// `_pretty`; anything else is refused.
pub(crate) fn query_institution(query: Option<&str>) -> Result<Option<String>, VerifyRequestError> {
    let mut institution = None;
    for (name, value) in search::params(query.unwrap_or("")) {
        match name.as_str() {
            "_format" | "_pretty" => {}
            INSTITUTION if value.is_empty() => return Err(VerifyRequestError::Institution),
            INSTITUTION => {
                if institution.replace(value).is_some() {
                    return Err(VerifyRequestError::Repeated(name));
                }
            }
            _ => return Err(VerifyRequestError::QueryParam(name)),
        }
    }
    Ok(institution)
}

/// The member the query and the body name together; they must agree where both do.
pub(crate) fn one_institution(
    query: Option<String>,
    body: Option<String>,
) -> Result<Option<String>, VerifyRequestError> {
    match (query, body) {
        (Some(query), Some(body)) if query != body => {
            Err(VerifyRequestError::Institutions { query, body })
        }
        (query, body) => Ok(query.or(body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patient() -> Value {
        json!({"resourceType": "Patient", "id": "p1", "meta": {"versionId": "2"},
            "gender": "female"})
    }

    fn body(parameters: Value) -> Result<VerifyRequest, VerifyRequestError> {
        VerifyRequest::from_parameters(
            json!({"resourceType": "Parameters", "parameter": parameters}),
        )
    }

    #[test]
    fn a_body_names_the_member_and_carries_the_copy() {
        let request = body(json!([
            {"name": "institution", "valueString": "h1"},
            {"name": "resource", "resource": patient()}
        ]))
        .unwrap();
        assert_eq!(request.institution.as_deref(), Some("h1"));
        assert_eq!(request.resource, patient());
        // Without institution: this node's own.
        let own = body(json!([{"name": "resource", "resource": patient()}])).unwrap();
        assert_eq!(own.institution, None);
    }

    #[test]
    fn malformed_bodies_are_refused_with_the_reason() {
        use VerifyRequestError as E;
        let refused = |v: Value| VerifyRequest::from_parameters(v).unwrap_err();
        assert!(matches!(refused(json!([])), E::NotParameters(_)));
        assert!(matches!(refused(patient()), E::NotParameters(t) if t == "a Patient"));
        assert!(matches!(
            refused(json!({"resourceType": "Parameters", "parameter": {}})),
            E::NotAList
        ));
        let refused = |v: Value| body(v).unwrap_err();
        assert_eq!(refused(json!([])), E::NoResource);
        assert_eq!(refused(json!(["resource"])), E::NotAList);
        assert_eq!(refused(json!([{"valueString": "h1"}])), E::Unnamed);
        assert_eq!(
            refused(json!([{"name": "depth", "valueInteger": 3}])),
            E::Unknown("depth".to_owned())
        );
        let twice = json!({"name": "resource", "resource": patient()});
        assert_eq!(
            refused(json!([twice, twice])),
            E::Repeated("resource".to_owned())
        );
        for bad in [
            json!({"name": "institution", "valueInteger": 1}),
            json!({"name": "institution", "valueString": ""}),
            json!({"name": "institution", "valueString": "h1", "valueCode": "h2"}),
        ] {
            assert_eq!(refused(json!([bad])), E::Institution, "{bad}");
        }
        for bad in [
            json!({"name": "resource", "valueString": "Patient/p1"}),
            json!({"name": "resource", "resource": {"id": "p1"}}),
            json!({"name": "resource", "resource": "Patient"}),
            json!({"name": "resource", "resource": patient(), "valueString": "x"}),
        ] {
            assert_eq!(refused(json!([bad])), E::Resource, "{bad}");
        }
    }

    #[test]
    fn the_path_and_the_copy_agree_on_what_is_compared() {
        let request = body(json!([{"name": "resource", "resource": patient()}])).unwrap();
        let target = |resource_type, id, version| {
            request.target(VerifyPath {
                resource_type,
                id,
                version,
            })
        };
        let expected = |version: Option<&str>| Target {
            resource_type: "Patient".to_owned(),
            id: "p1".to_owned(),
            version: version.map(str::to_owned),
        };
        // The copy fills in what the path leaves out.
        assert_eq!(target(None, None, None).unwrap(), expected(Some("2")));
        assert_eq!(
            target(Some("Patient"), Some("p1"), None).unwrap(),
            expected(Some("2"))
        );
        assert_eq!(
            target(Some("Patient"), Some("p1"), Some("2")).unwrap(),
            expected(Some("2"))
        );
        for (path, what) in [
            ((Some("Observation"), Some("p1"), None), "the type"),
            ((Some("Patient"), Some("p2"), None), "the id"),
            ((Some("Patient"), Some("p1"), Some("1")), "the version"),
        ] {
            match target(path.0, path.1, path.2) {
                Err(VerifyRequestError::Mismatch { what: found, .. }) => assert_eq!(found, what),
                other => panic!("{path:?}: {other:?}"),
            }
        }
        // A copy without id or version: the path names them, or the latest anchored version.
        let bare =
            body(json!([{"name": "resource", "resource": {"resourceType": "Patient"}}])).unwrap();
        assert!(matches!(
            bare.target(VerifyPath::default()),
            Err(VerifyRequestError::NoTarget(_))
        ));
        let path = VerifyPath {
            resource_type: Some("Patient"),
            id: Some("p1"),
            version: None,
        };
        assert_eq!(bare.target(path).unwrap(), expected(None));
    }

    #[test]
    fn the_query_names_the_member_and_nothing_else() {
        assert_eq!(query_institution(None).unwrap(), None);
        assert_eq!(
            query_institution(Some("_format=json&institution=h%31")).unwrap(),
            Some("h1".to_owned())
        );
        assert_eq!(
            query_institution(Some("depth=3")).unwrap_err(),
            VerifyRequestError::QueryParam("depth".to_owned())
        );
        assert!(query_institution(Some("institution=h1&institution=h2")).is_err());
        assert_eq!(
            query_institution(Some("institution=")).unwrap_err(),
            VerifyRequestError::Institution
        );
        assert_eq!(
            one_institution(Some("h1".into()), None).unwrap(),
            Some("h1".into())
        );
        assert_eq!(
            one_institution(None, Some("h1".into())).unwrap(),
            Some("h1".into())
        );
        assert!(one_institution(Some("h1".into()), Some("h2".into())).is_err());
    }
}
