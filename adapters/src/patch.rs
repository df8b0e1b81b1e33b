//! JSON Patch (RFC 6902) applied by the sidecar itself: the upstream holds only the clinical
//! part, so a patch that names identity elements must meet the whole resource.

use serde_json::Value;

/// Why a patch cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("the body is not a JSON Patch document: {0}")]
    Malformed(String),
    #[error("the JSON Patch does not apply: {0}")]
    Failed(String),
}

/// Applies the JSON Patch document `patch` to `resource`; on failure `resource` is unchanged.
pub fn apply_json_patch(resource: &mut Value, patch: &[u8]) -> Result<(), PatchError> {
    let patch: json_patch::Patch =
        serde_json::from_slice(patch).map_err(|e| PatchError::Malformed(e.to_string()))?;
    json_patch::patch(resource, &patch).map_err(|e| PatchError::Failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn patches_apply_or_leave_the_resource_alone() {
        let mut patient = json!({"resourceType": "Patient", "name": [{"family": "A"}]});
        apply_json_patch(
            &mut patient,
            br#"[{"op":"replace","path":"/name/0/family","value":"B"}]"#,
        )
        .unwrap();
        assert_eq!(patient["name"][0]["family"], "B");
        let before = patient.clone();
        let err = apply_json_patch(
            &mut patient,
            br#"[{"op":"add","path":"/gender","value":"x"},{"op":"test","path":"/name/0/family","value":"Z"}]"#,
        )
        .unwrap_err();
        assert!(matches!(err, PatchError::Failed(_)));
        assert_eq!(patient, before);
        assert!(matches!(
            apply_json_patch(&mut patient, b"{}"),
            Err(PatchError::Malformed(_))
        ));
    }
}
