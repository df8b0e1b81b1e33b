//! FHIR REST routing: which interaction of FHIR R4 §3.1.0 a request asks for.
//!
//! The path given here is relative to the FHIR base (`Patient/123/_history/2`, not
//! `/fhir/Patient/123/_history/2`). Syntax that FHIR forbids — a resource type or id of the wrong
//! shape, a method no interaction uses — is refused here, before anything reaches the upstream.
//! A well-formed path naming a resource type the upstream does not know is left for the upstream
//! to answer: this crate does not keep a list of types that would drift from the server's.

use http::Method;
use percent_encoding::percent_decode_str;

/// One FHIR REST interaction, with the parts of the URL it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interaction {
    /// `GET [base]/metadata`
    Capabilities,
    /// `POST [base]` with a transaction or batch Bundle
    Bundle,
    /// `GET [base]?…`, `POST [base]/_search`
    SearchSystem,
    /// `GET [base]/_history`
    HistorySystem,
    /// `[base]/$op`
    OperationSystem { name: String },
    /// `POST [type]` (conditional when `If-None-Exist` is set)
    Create { resource_type: String },
    /// `GET [type]?…`, `POST [type]/_search`
    SearchType { resource_type: String },
    /// `PUT [type]?…`
    ConditionalUpdate { resource_type: String },
    /// `PATCH [type]?…`
    ConditionalPatch { resource_type: String },
    /// `DELETE [type]?…`
    ConditionalDelete { resource_type: String },
    /// `GET [type]/_history`
    HistoryType { resource_type: String },
    /// `[type]/$op`
    OperationType { resource_type: String, name: String },
    /// `GET [type]/[id]`
    Read { resource_type: String, id: String },
    /// `PUT [type]/[id]`
    Update { resource_type: String, id: String },
    /// `PATCH [type]/[id]`
    Patch { resource_type: String, id: String },
    /// `DELETE [type]/[id]`
    Delete { resource_type: String, id: String },
    /// `GET [type]/[id]/_history`
    HistoryInstance { resource_type: String, id: String },
    /// `GET [type]/[id]/_history/[vid]`
    VRead {
        resource_type: String,
        id: String,
        version: String,
    },
    /// `[type]/[id]/$op`
    OperationInstance {
        resource_type: String,
        id: String,
        name: String,
    },
    /// `[type]/[id]/_history/[vid]/$op`
    OperationVersion {
        resource_type: String,
        id: String,
        version: String,
        name: String,
    },
    /// `GET [compartment]/[id]/[type]` (and `/*`)
    SearchCompartment {
        compartment: String,
        id: String,
        resource_type: String,
    },
}

impl Interaction {
    /// A short name for logs and metrics, e.g. `read`, `search-type`.
    pub fn name(&self) -> &'static str {
        match self {
            Interaction::Capabilities => "capabilities",
            Interaction::Bundle => "bundle",
            Interaction::SearchSystem => "search-system",
            Interaction::HistorySystem => "history-system",
            Interaction::OperationSystem { .. } => "operation-system",
            Interaction::Create { .. } => "create",
            Interaction::SearchType { .. } => "search-type",
            Interaction::ConditionalUpdate { .. } => "conditional-update",
            Interaction::ConditionalPatch { .. } => "conditional-patch",
            Interaction::ConditionalDelete { .. } => "conditional-delete",
            Interaction::HistoryType { .. } => "history-type",
            Interaction::OperationType { .. } => "operation-type",
            Interaction::Read { .. } => "read",
            Interaction::Update { .. } => "update",
            Interaction::Patch { .. } => "patch",
            Interaction::Delete { .. } => "delete",
            Interaction::HistoryInstance { .. } => "history-instance",
            Interaction::VRead { .. } => "vread",
            Interaction::OperationInstance { .. } => "operation-instance",
            Interaction::OperationVersion { .. } => "operation-version",
            Interaction::SearchCompartment { .. } => "search-compartment",
        }
    }

    /// Whether the interaction sends a resource (or Bundle, or patch) for the server to store.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Interaction::Bundle
                | Interaction::Create { .. }
                | Interaction::ConditionalUpdate { .. }
                | Interaction::ConditionalPatch { .. }
                | Interaction::Update { .. }
                | Interaction::Patch { .. }
        )
    }
}

/// Why a request is not a FHIR REST interaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("the path is not valid percent-encoded UTF-8")]
    Encoding,
    #[error("'{0}' is not a valid FHIR resource type name")]
    ResourceType(String),
    #[error("'{0}' is not a valid FHIR id (1 to 64 of A-Z a-z 0-9 - .)")]
    Id(String),
    #[error("'{0}' is not a valid operation name")]
    Operation(String),
    #[error("no FHIR interaction matches this path: '{0}'")]
    Path(String),
    #[error("method {method} is not allowed on {path}")]
    Method { method: Method, path: String },
}

impl RouteError {
    /// Whether the error is about the method rather than the path (405 rather than 400).
    pub fn is_method(&self) -> bool {
        matches!(self, RouteError::Method { .. })
    }
}

/// Parses `path` (relative to the FHIR base, leading `/` optional) and `method`; `has_query`
/// says whether the URL carries a query string, which makes `PUT`/`PATCH`/`DELETE [type]`
/// conditional.
pub fn route(method: &Method, path: &str, has_query: bool) -> Result<Interaction, RouteError> {
    let trimmed = path.trim_matches('/');
    let segments: Vec<String> = if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed
            .split('/')
            .map(|s| {
                percent_decode_str(s)
                    .decode_utf8()
                    .map(|c| c.into_owned())
                    .map_err(|_| RouteError::Encoding)
            })
            .collect::<Result<_, _>>()?
    };
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let not_allowed = || RouteError::Method {
        method: method.clone(),
        path: format!("/{trimmed}"),
    };
    let m = method;

    let interaction = match seg.as_slice() {
        [] => match *m {
            Method::GET => Interaction::SearchSystem,
            Method::POST => Interaction::Bundle,
            _ => return Err(not_allowed()),
        },
        ["metadata"] => match *m {
            Method::GET => Interaction::Capabilities,
            _ => return Err(not_allowed()),
        },
        ["_history"] => match *m {
            Method::GET => Interaction::HistorySystem,
            _ => return Err(not_allowed()),
        },
        ["_search"] => match *m {
            Method::POST | Method::GET => Interaction::SearchSystem,
            _ => return Err(not_allowed()),
        },
        [op] if op.starts_with('$') => match *m {
            Method::GET | Method::POST => Interaction::OperationSystem {
                name: operation(op)?,
            },
            _ => return Err(not_allowed()),
        },
        [ty] => {
            let resource_type = resource_type(ty)?;
            match *m {
                Method::GET | Method::HEAD => Interaction::SearchType { resource_type },
                Method::POST => Interaction::Create { resource_type },
                Method::PUT if has_query => Interaction::ConditionalUpdate { resource_type },
                Method::PATCH if has_query => Interaction::ConditionalPatch { resource_type },
                Method::DELETE if has_query => Interaction::ConditionalDelete { resource_type },
                _ => return Err(not_allowed()),
            }
        }
        [ty, "_search"] => match *m {
            Method::POST | Method::GET => Interaction::SearchType {
                resource_type: resource_type(ty)?,
            },
            _ => return Err(not_allowed()),
        },
        [ty, "_history"] => match *m {
            Method::GET => Interaction::HistoryType {
                resource_type: resource_type(ty)?,
            },
            _ => return Err(not_allowed()),
        },
        [ty, op] if op.starts_with('$') => match *m {
            Method::GET | Method::POST => Interaction::OperationType {
                resource_type: resource_type(ty)?,
                name: operation(op)?,
            },
            _ => return Err(not_allowed()),
        },
        [ty, id] => {
            let (resource_type, id) = (resource_type(ty)?, logical_id(id)?);
            match *m {
                Method::GET | Method::HEAD => Interaction::Read { resource_type, id },
                Method::PUT => Interaction::Update { resource_type, id },
                Method::PATCH => Interaction::Patch { resource_type, id },
                Method::DELETE => Interaction::Delete { resource_type, id },
                _ => return Err(not_allowed()),
            }
        }
        [ty, id, "_history"] => match *m {
            Method::GET => Interaction::HistoryInstance {
                resource_type: resource_type(ty)?,
                id: logical_id(id)?,
            },
            _ => return Err(not_allowed()),
        },
        [ty, id, op] if op.starts_with('$') => match *m {
            Method::GET | Method::POST => Interaction::OperationInstance {
                resource_type: resource_type(ty)?,
                id: logical_id(id)?,
                name: operation(op)?,
            },
            _ => return Err(not_allowed()),
        },
        [compartment, id, ty] => match *m {
            Method::GET => Interaction::SearchCompartment {
                compartment: resource_type(compartment)?,
                id: logical_id(id)?,
                resource_type: if *ty == "*" {
                    "*".to_owned()
                } else {
                    resource_type(ty)?
                },
            },
            _ => return Err(not_allowed()),
        },
        [ty, id, "_history", vid] => match *m {
            Method::GET | Method::HEAD => Interaction::VRead {
                resource_type: resource_type(ty)?,
                id: logical_id(id)?,
                version: logical_id(vid)?,
            },
            _ => return Err(not_allowed()),
        },
        [ty, id, "_history", vid, op] if op.starts_with('$') => match *m {
            Method::GET | Method::POST => Interaction::OperationVersion {
                resource_type: resource_type(ty)?,
                id: logical_id(id)?,
                version: logical_id(vid)?,
                name: operation(op)?,
            },
            _ => return Err(not_allowed()),
        },
        _ => return Err(RouteError::Path(format!("/{trimmed}"))),
    };
    Ok(interaction)
}

/// Whether `name` has the shape of a FHIR resource type: an upper-case letter followed by
/// letters (R4 has none longer than 64 characters).
pub fn is_resource_type(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && chars.all(|c| c.is_ascii_alphabetic())
}

/// Whether `id` is a FHIR R4 `id`: `[A-Za-z0-9\-\.]{1,64}`.
pub fn is_logical_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn resource_type(segment: &str) -> Result<String, RouteError> {
    if is_resource_type(segment) {
        Ok(segment.to_owned())
    } else {
        Err(RouteError::ResourceType(segment.to_owned()))
    }
}

fn logical_id(segment: &str) -> Result<String, RouteError> {
    if is_logical_id(segment) {
        Ok(segment.to_owned())
    } else {
        Err(RouteError::Id(segment.to_owned()))
    }
}

/// `$name`, where the name is a FHIR `code`-like token.
fn operation(segment: &str) -> Result<String, RouteError> {
    let name = &segment[1..];
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if valid {
        Ok(name.to_owned())
    } else {
        Err(RouteError::Operation(segment.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(method: Method, path: &str, query: bool) -> Interaction {
        route(&method, path, query).unwrap()
    }

    #[test]
    fn every_interaction_routes() {
        let s = |v: &str| v.to_owned();
        assert_eq!(
            ok(Method::GET, "metadata", false),
            Interaction::Capabilities
        );
        assert_eq!(ok(Method::POST, "/", false), Interaction::Bundle);
        assert_eq!(ok(Method::GET, "", true), Interaction::SearchSystem);
        assert_eq!(
            ok(Method::GET, "_history", false),
            Interaction::HistorySystem
        );
        assert_eq!(
            ok(Method::POST, "Patient", false),
            Interaction::Create {
                resource_type: s("Patient")
            }
        );
        assert_eq!(
            ok(Method::POST, "Patient/_search", false),
            Interaction::SearchType {
                resource_type: s("Patient")
            }
        );
        assert_eq!(
            ok(Method::PUT, "Patient", true),
            Interaction::ConditionalUpdate {
                resource_type: s("Patient")
            }
        );
        assert_eq!(
            ok(Method::DELETE, "Patient", true),
            Interaction::ConditionalDelete {
                resource_type: s("Patient")
            }
        );
        assert_eq!(
            ok(Method::GET, "Patient/a-1.2", false),
            Interaction::Read {
                resource_type: s("Patient"),
                id: s("a-1.2")
            }
        );
        assert_eq!(
            ok(Method::GET, "Patient/1/_history/3", false),
            Interaction::VRead {
                resource_type: s("Patient"),
                id: s("1"),
                version: s("3")
            }
        );
        assert_eq!(
            ok(Method::POST, "Patient/1/$everything", false),
            Interaction::OperationInstance {
                resource_type: s("Patient"),
                id: s("1"),
                name: s("everything")
            }
        );
        assert_eq!(
            ok(Method::GET, "Patient/1/Observation", false),
            Interaction::SearchCompartment {
                compartment: s("Patient"),
                id: s("1"),
                resource_type: s("Observation")
            }
        );
        assert!(ok(Method::PATCH, "Patient/1", false).is_write());
        assert!(!ok(Method::DELETE, "Patient/1", false).is_write());
    }

    #[test]
    fn malformed_paths_are_refused() {
        assert_eq!(
            route(&Method::GET, "patient/1", false),
            Err(RouteError::ResourceType("patient".into()))
        );
        assert_eq!(
            route(&Method::GET, "Patient/a_b", false),
            Err(RouteError::Id("a_b".into()))
        );
        assert_eq!(
            route(&Method::GET, &format!("Patient/{}", "1".repeat(65)), false),
            Err(RouteError::Id("1".repeat(65)))
        );
        assert_eq!(
            route(&Method::GET, "Patient/%FF", false),
            Err(RouteError::Encoding)
        );
        assert!(matches!(
            route(&Method::GET, "Patient/1/_history/2/x/y", false),
            Err(RouteError::Path(_))
        ));
        assert_eq!(
            route(&Method::GET, "$", false),
            Err(RouteError::Operation("$".into()))
        );
    }

    #[test]
    fn wrong_methods_are_refused() {
        let err = route(&Method::PUT, "Patient", false).unwrap_err();
        assert!(err.is_method());
        assert!(route(&Method::DELETE, "metadata", false)
            .unwrap_err()
            .is_method());
        assert!(route(&Method::TRACE, "Patient/1", false)
            .unwrap_err()
            .is_method());
    }
}
