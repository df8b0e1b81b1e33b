//! What identifies a person resource: its canonical identity key (what the fingerprint is
//! computed over) and the normalized values its identity searches match (what the blind index
//! holds). Pure functions over the original resource, before it is split.

use serde_json::Value;

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
            return Some(format!("id\0{system}\0{}", value.trim()).into_bytes());
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

/// The blind-index entries of a person resource: `(search key, value)` pairs, where string
/// parameters are indexed by every prefix of each normalized value (HAPI's string search
/// matches the start of a value), and token and date parameters by exact forms.
pub fn index_entries(resource: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut prefixes = |param: &str, text: &str| {
        let norm = normalize(text);
        let ends = norm
            .char_indices()
            .skip(1)
            .map(|(i, _)| i)
            .chain(std::iter::once(norm.len()));
        for end in ends.filter(|e| *e > 0) {
            out.push((param.to_owned(), norm[..end].to_owned()));
        }
        out.push((format!("{param}:exact"), text.to_owned()));
    };
    for name in array(resource, "name") {
        let family = name.get("family").and_then(Value::as_str);
        let given = strings(name, "given");
        let others: Vec<&str> = strings(name, "prefix")
            .into_iter()
            .chain(strings(name, "suffix"))
            .chain(name.get("text").and_then(Value::as_str))
            .collect();
        if let Some(family) = family {
            prefixes("family", family);
            prefixes("name", family);
        }
        for g in given {
            prefixes("given", g);
            prefixes("name", g);
        }
        for o in others {
            prefixes("name", o);
        }
    }
    for address in array(resource, "address") {
        let city = address.get("city").and_then(Value::as_str);
        let postal = address.get("postalCode").and_then(Value::as_str);
        if let Some(city) = city {
            prefixes("address-city", city);
        }
        if let Some(postal) = postal {
            prefixes("address-postalcode", postal);
        }
        let parts: Vec<&str> = strings(address, "line")
            .into_iter()
            .chain(city)
            .chain(address.get("district").and_then(Value::as_str))
            .chain(address.get("state").and_then(Value::as_str))
            .chain(postal)
            .chain(address.get("country").and_then(Value::as_str))
            .chain(address.get("text").and_then(Value::as_str))
            .collect();
        for part in parts {
            prefixes("address", part);
        }
    }
    for id in array(resource, "identifier") {
        let system = id.get("system").and_then(Value::as_str).unwrap_or("");
        if let Some(value) = id.get("value").and_then(Value::as_str) {
            out.push(("identifier".to_owned(), format!("sv:{system}|{value}")));
            out.push(("identifier".to_owned(), format!("v:{value}")));
            out.push(("identifier".to_owned(), format!("s:{system}")));
        }
    }
    for telecom in array(resource, "telecom") {
        let system = telecom.get("system").and_then(Value::as_str).unwrap_or("");
        let Some(value) = telecom.get("value").and_then(Value::as_str) else {
            continue;
        };
        out.push(("telecom".to_owned(), format!("sv:{system}|{value}")));
        out.push(("telecom".to_owned(), format!("v:{value}")));
        match system {
            "phone" => out.push(("phone".to_owned(), value.to_owned())),
            "email" => out.push(("email".to_owned(), value.to_lowercase())),
            _ => {}
        }
    }
    if let Some(birth) = resource.get("birthDate").and_then(Value::as_str) {
        if birth.len() >= 7 {
            out.push(("birthdate".to_owned(), format!("m:{}", &birth[..7])));
        }
        if birth.len() >= 10 {
            out.push(("birthdate".to_owned(), format!("d:{}", &birth[..10])));
        }
    }
    out.sort();
    out.dedup();
    out
}

fn array<'a>(value: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    value
        .get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn strings<'a>(value: &'a Value, key: &str) -> Vec<&'a str> {
    array(value, key).filter_map(Value::as_str).collect()
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

    #[test]
    fn index_entries_cover_the_identity_searches() {
        let patient = json!({
            "identifier": [{"system": "urn:mrn", "value": "7"}],
            "name": [{"family": "Smith", "given": ["Ann"]}],
            "telecom": [{"system": "phone", "value": "555-1"}, {"system": "email", "value": "A@X.org"}],
            "address": [{"line": ["1 Elm"], "city": "Boston", "postalCode": "02101", "state": "MA"}],
            "birthDate": "1970-01-02"
        });
        let entries = index_entries(&patient);
        let has = |k: &str, v: &str| entries.contains(&(k.to_owned(), v.to_owned()));
        assert!(has("family", "s") && has("family", "smith") && has("name", "smi"));
        assert!(has("family:exact", "Smith") && has("given", "an"));
        assert!(has("identifier", "sv:urn:mrn|7") && has("identifier", "v:7"));
        assert!(has("phone", "555-1") && has("email", "a@x.org"));
        assert!(has("address-city", "bos") && has("address", "ma") && has("address", "1 el"));
        assert!(has("birthdate", "d:1970-01-02") && has("birthdate", "m:1970-01"));
        assert!(!has("family", "smithx"));
    }
}
