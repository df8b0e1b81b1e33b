//! What identifies a person resource: its canonical identity key (what the fingerprint is
//! computed over), and the normalization its identity searches compare strings in (which
//! [`crate::blind`] files values by). Pure functions over the original resource, before it is
//! split.

use serde_json::Value;

/// The identity key of a person an identifier names (`system`, one of the configured
/// identity systems, and its value): what [`identity_key`] makes of a resource carrying it.
pub fn identifier_key(system: &str, value: &str) -> Vec<u8> {
    format!("id\0{system}\0{}", value.trim()).into_bytes()
}

/// The canonical identity key of a person resource: an identifier in one of `systems` (the
/// first system that the resource has, in the order given), else the normalized official name
/// and the birth date. `None` when the resource has neither.
pub fn identity_key(resource: &Value, systems: &[String]) -> Option<Vec<u8>> {
    let identifiers = resource.get("identifier").and_then(Value::as_array);
    for system in systems {
        let found = identifiers.into_iter().flatten().find_map(|id| {
            (id.get("system").and_then(Value::as_str) == Some(system.as_str()))
                .then(|| id.get("value").and_then(Value::as_str))
                .flatten()
        });
        if let Some(value) = found {
            return Some(identifier_key(system, value));
        }
    }
    let names = resource.get("name").and_then(Value::as_array)?;
    let name = names
        .iter()
        .find(|n| n.get("use").and_then(Value::as_str) == Some("official"))
        .or_else(|| names.first())?;
    let family = name
        .get("family")
        .and_then(Value::as_str)
        .map(normalize)
        .unwrap_or_default();
    let given: Vec<String> = name
        .get("given")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(normalize)
        .collect();
    let birth = resource
        .get("birthDate")
        .and_then(Value::as_str)
        .unwrap_or("");
    if family.is_empty() && given.is_empty() {
        return None;
    }
    Some(format!("nb\0{family}\0{}\0{birth}", given.join(" ")).into_bytes())
}

/// Lower case, accents folded for the common Latin letters, spaces collapsed: the form HAPI
/// compares strings in for `:missing`-free string search.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    for c in text.trim().chars().flat_map(char::to_lowercase) {
        let c = fold(c);
        if c.is_whitespace() {
            if !space {
                out.push(' ');
            }
            space = true;
        } else {
            out.push(c);
            space = false;
        }
    }
    out
}

pub(crate) fn fold(c: char) -> char {
    match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' => 'a',
        'ç' | 'ć' | 'č' => 'c',
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ę' => 'e',
        'ì' | 'í' | 'î' | 'ï' | 'ī' => 'i',
        'ñ' | 'ń' => 'n',
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' => 'o',
        'ù' | 'ú' | 'û' | 'ü' | 'ū' => 'u',
        'ý' | 'ÿ' => 'y',
        'ś' | 'š' => 's',
        'ź' | 'ż' | 'ž' => 'z',
        'ł' => 'l',
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn identity_key_prefers_configured_identifiers() {
        let patient = json!({
            "identifier": [{"system": "urn:mrn", "value": "7"}, {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-1"}],
            "name": [{"family": "Rëinger", "given": ["Bill"]}],
            "birthDate": "1992-12-25"
        });
        let ssn = vec!["http://hl7.org/fhir/sid/us-ssn".to_owned()];
        assert_eq!(
            identity_key(&patient, &ssn).unwrap(),
            b"id\0http://hl7.org/fhir/sid/us-ssn\0999-1".to_vec()
        );
        assert_eq!(
            identity_key(&patient, &[]).unwrap(),
            b"nb\0reinger\0bill\x001992-12-25".to_vec()
        );
        assert_eq!(identity_key(&json!({"gender": "male"}), &ssn), None);
    }
}
