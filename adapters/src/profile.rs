//! Split profiles: which elements of a resource are a person's identity, and the split of a
//! resource into its clinical part (sent upstream) and its identity part (sealed in the vault).
//!
//! A profile names element paths per resource type, dot-separated and relative to the resource
//! (`address.line`: the `line` of every `address`); arrays on the way are walked. Three kinds:
//! - `remove`: the element goes to the identity part;
//! - `year`: a date keeps its year in the clinical part, the full value goes to identity;
//! - `extensions`: extensions of the resource with these URLs go to identity.
//!
//! Everywhere, `display` strings of references to a person are identity too.
//!
//! The identity part is a list of `(JSON pointer, original value)`; merging puts each back where
//! it was, in order, so that split then merge gives the original resource (element order aside).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::{Map, Value};

/// The identifier system of the surrogate the upstream receives instead of identity.
pub const PSEUDONYM_SYSTEM: &str = "urn:fhirseal:pseudonym";

/// Why a profile file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("profile file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("profile path '{0}' is empty or malformed")]
    Path(String),
}

/// Element rules for one resource type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TypeRules {
    pub remove: BTreeSet<String>,
    pub year: BTreeSet<String>,
    pub extensions: BTreeSet<String>,
}

/// A split profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// Rules per resource type; `*` applies to every type.
    pub types: BTreeMap<String, TypeRules>,
    /// Types that describe a person (they get a surrogate identifier and are fingerprinted).
    pub person_types: BTreeSet<String>,
}

/// A profile file: additions to and removals from the default profile.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ProfileFile {
    add: BTreeMap<String, TypeRules>,
    remove: BTreeMap<String, TypeRules>,
    /// Extra person types, e.g. `Practitioner`.
    person_types: BTreeSet<String>,
}

const PERSON_ELEMENTS: &[&str] = &[
    "name",
    "identifier",
    "telecom",
    "photo",
    "contact",
    "address.line",
    "address.city",
    "address.district",
    "address.postalCode",
    "address.text",
    "address.extension",
];

impl Default for Profile {
    /// The HIPAA Safe Harbor identifiers that FHIR R4 persons carry: names, identifiers,
    /// telecom, address below state level, birth date beyond the year, photo, contacts, the
    /// mother's maiden name and birth place; and the narrative of every resource.
    fn default() -> Self {
        let person = TypeRules {
            remove: PERSON_ELEMENTS.iter().map(|s| s.to_string()).collect(),
            year: ["birthDate".to_owned()].into(),
            extensions: [
                "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
                "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        };
        let mut types = BTreeMap::new();
        for t in ["Patient", "RelatedPerson", "Person"] {
            types.insert(t.to_owned(), person.clone());
        }
        types.insert(
            "*".to_owned(),
            TypeRules {
                remove: ["text".to_owned()].into(),
                ..TypeRules::default()
            },
        );
        Profile {
            types,
            person_types: ["Patient", "RelatedPerson", "Person"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    }
}

impl Profile {
    /// The default profile changed by the TOML profile file at `path`.
    pub fn from_file(path: &std::path::Path) -> Result<Profile, ProfileError> {
        let err = |reason: String| ProfileError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let file: ProfileFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let mut profile = Profile::default();
        for (ty, rules) in file.add {
            let entry = profile.types.entry(ty).or_default();
            entry.remove.extend(rules.remove);
            entry.year.extend(rules.year);
            entry.extensions.extend(rules.extensions);
        }
        for (ty, rules) in file.remove {
            if let Some(entry) = profile.types.get_mut(&ty) {
                entry.remove.retain(|p| !rules.remove.contains(p));
                entry.year.retain(|p| !rules.year.contains(p));
                entry.extensions.retain(|p| !rules.extensions.contains(p));
            }
        }
        profile.person_types.extend(file.person_types);
        for rules in profile.types.values() {
            for path in rules.remove.iter().chain(&rules.year) {
                if path.is_empty() || path.split('.').any(str::is_empty) {
                    return Err(ProfileError::Path(path.clone()));
                }
            }
        }
        Ok(profile)
    }

    pub fn is_person(&self, resource_type: &str) -> bool {
        self.person_types.contains(resource_type)
    }

    /// Splits `resource` in place into its clinical part, returning the identity part. `person`
    /// tells the type of a reference target that is not `Type/id` (a bundle's `urn:uuid:`).
    /// A person type gets `surrogate` as its only identifier.
    pub fn split(
        &self,
        resource: &mut Value,
        surrogate: Option<&str>,
        person: &dyn Fn(&str) -> Option<String>,
    ) -> IdentityPart {
        let mut part = IdentityPart::default();
        let Some(resource_type) = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return part;
        };
        let rule_sets: Vec<&TypeRules> = [self.types.get("*"), self.types.get(&resource_type)]
            .into_iter()
            .flatten()
            .collect();
        // Extensions first (their indices are recorded before anything else moves).
        for rules in &rule_sets {
            if !rules.extensions.is_empty() {
                take_extensions(resource, &rules.extensions, &mut part);
            }
        }
        for rules in &rule_sets {
            for path in &rules.remove {
                let steps: Vec<&str> = path.split('.').collect();
                take_path(resource, &steps, String::new(), &mut part, Take::Remove);
            }
            for path in &rules.year {
                let steps: Vec<&str> = path.split('.').collect();
                take_path(resource, &steps, String::new(), &mut part, Take::Year);
            }
        }
        take_person_displays(resource, String::new(), self, person, &mut part);
        if self.is_person(&resource_type) {
            if let (Some(surrogate), Value::Object(map)) = (surrogate, &mut *resource) {
                if !part.entries.iter().any(|(p, _)| p == "/identifier") {
                    // No identifier was there: merging must take the surrogate away again.
                    part.entries.push(("/identifier".to_owned(), Value::Null));
                }
                map.insert(
                    "identifier".to_owned(),
                    serde_json::json!([{ "system": PSEUDONYM_SYSTEM, "value": surrogate }]),
                );
            }
        }
        part
    }
}

/// The identity elements taken out of one resource, with where they were.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IdentityPart {
    /// `(JSON pointer, value)`; `Null` means "absent in the original: remove on merge".
    pub entries: Vec<(String, Value)>,
}

impl IdentityPart {
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Canonical JSON bytes: `[[pointer, value], …]` in split order.
    pub fn to_bytes(&self) -> Vec<u8> {
        let array: Vec<Value> = self
            .entries
            .iter()
            .map(|(p, v)| Value::Array(vec![Value::String(p.clone()), v.clone()]))
            .collect();
        serde_json::to_vec(&Value::Array(array)).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<IdentityPart, String> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let entries = value
            .as_array()
            .ok_or("identity part is not an array")?
            .iter()
            .map(|pair| match pair.as_array().map(Vec::as_slice) {
                Some([Value::String(p), v]) => Ok((p.clone(), v.clone())),
                _ => Err("identity entry is not [pointer, value]".to_owned()),
            })
            .collect::<Result<_, String>>()?;
        Ok(IdentityPart { entries })
    }

    /// Puts the identity back into `resource` (the clinical part as the upstream returns it).
    pub fn merge_into(&self, resource: &mut Value) {
        for (pointer, value) in &self.entries {
            set_pointer(resource, pointer, value.clone());
        }
    }
}

#[derive(Clone, Copy)]
enum Take {
    Remove,
    Year,
}

fn escape(step: &str) -> String {
    step.replace('~', "~0").replace('/', "~1")
}

fn take_path(
    value: &mut Value,
    steps: &[&str],
    pointer: String,
    part: &mut IdentityPart,
    how: Take,
) {
    let Some((first, rest)) = steps.split_first() else {
        return;
    };
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                take_path(item, steps, format!("{pointer}/{i}"), part, how);
            }
        }
        Value::Object(map) => {
            let here = format!("{pointer}/{}", escape(first));
            if rest.is_empty() {
                match how {
                    Take::Remove => {
                        if let Some(v) = map.shift_remove(*first) {
                            part.entries.push((here, v));
                        }
                        // A primitive's extension sibling (`_line`) goes with it.
                        let shadow = format!("_{first}");
                        if let Some(v) = map.shift_remove(&shadow) {
                            part.entries
                                .push((format!("{pointer}/{}", escape(&shadow)), v));
                        }
                    }
                    Take::Year => {
                        if let Some(Value::String(date)) = map.get_mut(*first) {
                            if date.len() > 4 {
                                let full = std::mem::replace(date, date[..4].to_owned());
                                part.entries.push((here, Value::String(full)));
                            }
                        }
                    }
                }
            } else if let Some(child) = map.get_mut(*first) {
                take_path(child, rest, here, part, how);
            }
        }
        _ => {}
    }
}

fn take_extensions(resource: &mut Value, urls: &BTreeSet<String>, part: &mut IdentityPart) {
    let Some(Value::Array(extensions)) = resource.get_mut("extension") else {
        return;
    };
    let mut taken = Vec::new();
    let mut kept = Vec::new();
    for (i, ext) in std::mem::take(extensions).into_iter().enumerate() {
        let identity = ext
            .get("url")
            .and_then(Value::as_str)
            .is_some_and(|u| urls.contains(u));
        if identity {
            taken.push((format!("/extension/{i}"), ext));
        } else {
            kept.push(ext);
        }
    }
    if taken.is_empty() {
        *extensions = kept;
        return;
    }
    if kept.is_empty() {
        if let Value::Object(map) = resource {
            map.shift_remove("extension");
        }
    } else {
        *extensions = kept;
    }
    // Insertion at ascending original indices restores the original order on merge.
    part.entries
        .extend(taken.into_iter().map(|(p, v)| (format!("+{p}"), v)));
}

/// Removes `display` from references whose target is a person.
fn take_person_displays(
    value: &mut Value,
    pointer: String,
    profile: &Profile,
    person: &dyn Fn(&str) -> Option<String>,
    part: &mut IdentityPart,
) {
    match value {
        Value::Object(map) => {
            let target = map
                .get("reference")
                .and_then(Value::as_str)
                .and_then(|r| reference_type(r).or_else(|| person(r)));
            let typed = map.get("type").and_then(Value::as_str).map(str::to_owned);
            let is_person = target.or(typed).is_some_and(|t| profile.is_person(&t));
            if is_person {
                if let Some(display) = map.shift_remove("display") {
                    part.entries.push((format!("{pointer}/display"), display));
                }
            }
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                // Contained resources and nested elements alike.
                if let Some(child) = map.get_mut(&key) {
                    take_person_displays(
                        child,
                        format!("{pointer}/{}", escape(&key)),
                        profile,
                        person,
                        part,
                    );
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                take_person_displays(item, format!("{pointer}/{i}"), profile, person, part);
            }
        }
        _ => {}
    }
}

/// The type of a literal reference `Type/id`, `…/Type/id` or `…/Type/id/_history/v`.
pub fn reference_type(reference: &str) -> Option<String> {
    if reference.starts_with('#') || reference.starts_with("urn:") {
        return None;
    }
    let path = reference.split(['?', '#']).next().unwrap_or(reference);
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let n = segments.len();
    let ty = if n >= 4 && segments[n - 2] == "_history" {
        segments[n - 4]
    } else if n >= 2 {
        segments[n - 2]
    } else {
        return None;
    };
    let mut chars = ty.chars();
    (chars.next().is_some_and(|c| c.is_ascii_uppercase()) && chars.all(|c| c.is_ascii_alphabetic()))
        .then(|| ty.to_owned())
}

/// Sets the value at a JSON pointer. A pointer starting with `+` inserts into an array at that
/// index (making the array when absent); `Null` removes the element.
fn set_pointer(root: &mut Value, pointer: &str, value: Value) {
    let (insert, pointer) = match pointer.strip_prefix('+') {
        Some(p) => (true, p),
        None => (false, pointer),
    };
    let steps: Vec<String> = pointer
        .split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect();
    let Some((last, parents)) = steps.split_last() else {
        return;
    };
    let mut node = root;
    for (i, step) in parents.iter().enumerate() {
        // The array an insertion goes into may have been removed whole (it held only identity).
        let make_array = insert && i + 1 == parents.len();
        node = match node {
            Value::Object(map) => map.entry(step.clone()).or_insert_with(|| {
                if make_array {
                    Value::Array(Vec::new())
                } else {
                    Value::Object(Map::new())
                }
            }),
            Value::Array(items) => {
                match step.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                    Some(item) => item,
                    None => return,
                }
            }
            _ => return,
        };
    }
    if insert {
        // `last` is the index in the parent array named by the step before it.
        let Ok(index) = last.parse::<usize>() else {
            return;
        };
        if let Value::Array(items) = node {
            let at = index.min(items.len());
            items.insert(at, value);
        }
        return;
    }
    match node {
        Value::Object(map) => {
            if value.is_null() {
                map.shift_remove(last);
            } else {
                map.insert(last.clone(), value);
            }
        }
        Value::Array(items) => {
            if let Some(slot) = last.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                *slot = value;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn no_context(_: &str) -> Option<String> {
        None
    }

    fn synthea_like_patient() -> Value {
        json!({
            "resourceType": "Patient",
            "id": "p1",
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Bill Reinger</div>"},
            "extension": [
                {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race", "valueString": "x"},
                {"url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName", "valueString": "Lilli Johnston"},
                {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex", "valueCode": "M"},
                {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace", "valueAddress": {"city": "Peabody"}}
            ],
            "identifier": [{"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-43-7348"}],
            "name": [{"family": "Reinger", "given": ["Bill"], "prefix": ["Mr."]}],
            "telecom": [{"system": "phone", "value": "555-274-1339"}],
            "gender": "male",
            "birthDate": "1992-12-25",
            "address": [{"line": ["123 Main St"], "_line": [{"id": "l1"}], "city": "Boston", "state": "Massachusetts", "postalCode": "02101", "country": "US"}],
            "generalPractitioner": [{"reference": "Practitioner/9", "display": "Dr. Who"}]
        })
    }

    #[test]
    fn split_keeps_clinical_data_and_merge_restores_the_original() {
        let profile = Profile::default();
        let original = synthea_like_patient();
        let mut resource = original.clone();
        let part = profile.split(&mut resource, Some("abc"), &no_context);
        let clinical = resource.to_string();
        for secret in [
            "Reinger",
            "Bill",
            "999-43-7348",
            "555-274",
            "Main St",
            "Boston",
            "02101",
            "1992-12-25",
            "Lilli",
            "Peabody",
        ] {
            assert!(!clinical.contains(secret), "{secret} in {clinical}");
        }
        assert_eq!(resource["birthDate"], "1992");
        assert_eq!(resource["address"][0]["state"], "Massachusetts");
        assert_eq!(resource["address"][0]["country"], "US");
        assert_eq!(
            resource["identifier"],
            json!([{"system": PSEUDONYM_SYSTEM, "value": "abc"}])
        );
        assert_eq!(resource["extension"].as_array().unwrap().len(), 2);
        assert_eq!(resource["generalPractitioner"][0]["display"], "Dr. Who");
        assert!(resource.get("text").is_none());

        let restored_part = IdentityPart::from_bytes(&part.to_bytes()).unwrap();
        assert_eq!(restored_part, part);
        let mut merged = resource.clone();
        restored_part.merge_into(&mut merged);
        assert_eq!(merged, original);
    }

    #[test]
    fn references_to_persons_lose_their_display() {
        let profile = Profile::default();
        let mut obs = json!({
            "resourceType": "Observation",
            "subject": {"reference": "urn:uuid:1234", "display": "Bill Reinger"},
            "performer": [{"reference": "Patient/7", "display": "Bill"}, {"reference": "Practitioner/1", "display": "Dr X"}],
            "contained": [{"resourceType": "Organization", "id": "o", "text": {"status": "generated", "div": "<div>x</div>"}}]
        });
        let original = obs.clone();
        let context = |r: &str| (r == "urn:uuid:1234").then(|| "Patient".to_owned());
        let part = profile.split(&mut obs, None, &context);
        assert!(obs["subject"].get("display").is_none());
        assert!(obs["performer"][0].get("display").is_none());
        assert_eq!(obs["performer"][1]["display"], "Dr X");
        part.merge_into(&mut obs);
        assert_eq!(obs, original);
    }

    #[test]
    fn a_person_without_identifiers_loses_the_surrogate_on_merge() {
        let profile = Profile::default();
        let original = json!({"resourceType": "Patient", "gender": "female"});
        let mut resource = original.clone();
        let part = profile.split(&mut resource, Some("s1"), &no_context);
        assert_eq!(resource["identifier"][0]["value"], "s1");
        part.merge_into(&mut resource);
        assert_eq!(resource, original);
    }

    #[test]
    fn all_identity_extensions_removes_the_array() {
        let profile = Profile::default();
        let original = json!({"resourceType": "Patient", "extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName", "valueString": "A"}
        ]});
        let mut resource = original.clone();
        let part = profile.split(&mut resource, None, &no_context);
        assert!(resource.get("extension").is_none());
        part.merge_into(&mut resource);
        assert_eq!(resource, original);
    }

    #[test]
    fn reference_types() {
        assert_eq!(reference_type("Patient/1").as_deref(), Some("Patient"));
        assert_eq!(
            reference_type("http://x/fhir/Patient/1/_history/2").as_deref(),
            Some("Patient")
        );
        assert_eq!(reference_type("urn:uuid:1"), None);
        assert_eq!(reference_type("#c1"), None);
    }

    #[test]
    fn profile_files_add_and_remove() {
        let dir = std::env::temp_dir().join(format!("fhirseal-profile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("profile.toml");
        std::fs::write(
            &path,
            "person_types = [\"Practitioner\"]\n[add.Practitioner]\nremove = [\"name\"]\n[remove.Patient]\nremove = [\"photo\"]\n",
        )
        .unwrap();
        let profile = Profile::from_file(&path).unwrap();
        assert!(profile.is_person("Practitioner"));
        assert!(profile.types["Practitioner"].remove.contains("name"));
        assert!(!profile.types["Patient"].remove.contains("photo"));
        std::fs::write(&path, "[add.Patient]\nremove = [\"a..b\"]\n").unwrap();
        assert!(Profile::from_file(&path).is_err());
    }
}
