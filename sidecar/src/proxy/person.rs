//! Which person an operation the sidecar answers itself (`$locate`, `$shared`) names: a patient
//! of this node (`Patient/[id]/$op`), or whoever an identifier of an identity system names
//! (`Patient/$op?identifier=system|value`, a first encounter: nothing of the person is here
//! yet). Either way the person becomes a fingerprint here; an identifier never goes further.

use fhirseal_adapters::Interaction;
use fhirseal_storage::Fingerprint;

use super::deps::{blocking, Deps};
use crate::error::ProxyError;

/// Whom an operation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Whom<'a> {
    /// `Patient/[id]/$op`: a patient of this node.
    Patient(&'a str),
    /// `Patient/$op?identifier=…`: whoever the identifier names.
    Identifier,
}

impl Whom<'_> {
    /// The logical id the operation names (empty at the type level), for access events.
    pub(super) fn id(&self) -> &str {
        match self {
            Whom::Patient(id) => id,
            Whom::Identifier => "",
        }
    }
}

/// Whom `Patient` operation `operation` names; `None` for every other interaction.
pub(super) fn target<'a>(interaction: &'a Interaction, operation: &str) -> Option<Whom<'a>> {
    match interaction {
        Interaction::OperationInstance {
            resource_type,
            id,
            name,
        } if name == operation && resource_type == "Patient" => Some(Whom::Patient(id)),
        Interaction::OperationType {
            resource_type,
            name,
        } if name == operation && resource_type == "Patient" => Some(Whom::Identifier),
        _ => None,
    }
}

/// The parameters of `$operation`'s query, values percent-decoded, `_format` left out (the
/// format's negotiation reads it); 400 for a value that is not UTF-8.
pub(super) fn operation_params<'q>(
    query: Option<&'q str>,
    operation: &str,
) -> Result<Vec<(&'q str, String)>, ProxyError> {
    let mut out = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| ProxyError::Invalid(format!("${operation}: {name} is not UTF-8")))?;
        if name != "_format" {
            out.push((name, value.into_owned()));
        }
    }
    Ok(out)
}

/// An `identifier` parameter's value: `system|value`, both given.
pub(super) fn identifier_param(value: &str) -> Result<(String, String), ProxyError> {
    match value.split_once('|') {
        Some((system, value)) if !system.is_empty() && !value.is_empty() => {
            Ok((system.to_owned(), value.to_owned()))
        }
        _ => Err(ProxyError::Invalid("identifier is system|value".to_owned())),
    }
}

/// The fingerprint of the person `whom` (with the query's `identifier`, at the type level)
/// names in `$operation`: a patient of this node (404 otherwise), or the identifier's person
/// (400 for a system persons are not linked by).
pub(super) async fn fingerprint(
    deps: &Deps,
    operation: &str,
    whom: Whom<'_>,
    identifier: Option<(String, String)>,
) -> Result<Fingerprint, ProxyError> {
    match (whom, identifier) {
        (Whom::Patient(id), None) => sealed_patient(deps, id).await,
        (Whom::Patient(_), Some(_)) => Err(ProxyError::Invalid(format!(
            "Patient/[id]/${operation} names the patient: an identifier is for Patient/${operation}"
        ))),
        (Whom::Identifier, None) => Err(ProxyError::Invalid(format!(
            "Patient/${operation} needs identifier=system|value (or ask Patient/[id]/${operation} for a patient of this node)"
        ))),
        (Whom::Identifier, Some((system, value))) => {
            let sealing = deps.sealing.clone();
            let shown = system.clone();
            blocking(move || sealing.identifier_fingerprint(&system, &value))
                .await?
                .ok_or_else(|| {
                    ProxyError::Invalid(format!(
                        "${operation}: {shown} is not one of the identity systems persons are linked by (seal.identity_systems)"
                    ))
                })
        }
    }
}

/// The fingerprint of `Patient/id`, a patient whose identity this node holds; 404 otherwise.
pub(super) async fn sealed_patient(deps: &Deps, id: &str) -> Result<Fingerprint, ProxyError> {
    let (sealing, patient) = (deps.sealing.clone(), id.to_owned());
    blocking(move || {
        sealing.patient_fingerprint(&patient)?.ok_or_else(|| {
            ProxyError::NotFound(format!(
                "Patient/{patient} is not a patient whose identity this node holds (never sealed here, or erased)"
            ))
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operation_names_a_patient_or_an_identifier() {
        let instance = Interaction::OperationInstance {
            resource_type: "Patient".into(),
            id: "p1".into(),
            name: "locate".into(),
        };
        assert_eq!(target(&instance, "locate"), Some(Whom::Patient("p1")));
        assert_eq!(target(&instance, "shared"), None);
        let by_type = Interaction::OperationType {
            resource_type: "Patient".into(),
            name: "shared".into(),
        };
        assert_eq!(target(&by_type, "shared"), Some(Whom::Identifier));
        assert_eq!(Whom::Identifier.id(), "");
        let other = Interaction::OperationType {
            resource_type: "Observation".into(),
            name: "shared".into(),
        };
        assert_eq!(target(&other, "shared"), None);
        assert_eq!(
            identifier_param("urn:x|42").unwrap(),
            ("urn:x".to_owned(), "42".to_owned())
        );
        for bad in ["42", "|42", "urn:x|"] {
            assert!(identifier_param(bad).is_err(), "{bad}");
        }
    }
}
