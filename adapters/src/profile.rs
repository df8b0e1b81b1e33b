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

use crate::scrub::{self, Terms};

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
            year: ["birthDate".to_owned(), "deceasedDateTime".to_owned()].into(),
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

    /// The identity terms of a resource as written (a person's names, identifiers, telecom,
    /// address parts, full dates), for scrubbing the free text of other resources that refer
    /// to it.
    pub fn terms_of(&self, resource: &Value) -> Terms {
        let mut copy = resource.clone();
        self.split(&mut copy, None, &|_| None).terms()
    }

    /// The persons `resource` refers to by literal reference (`Patient/123`), as (type, id),
    /// each once, in order.
    pub fn referenced_persons(&self, resource: &Value) -> Vec<(String, String)> {
        let mut found = Vec::new();
        collect_person_references(resource, self, &mut found);
        found
    }

    /// Splits `resource` in place into its clinical part, returning the identity part. `person`
    /// tells the type of a reference target that is not `Type/id` (a bundle's `urn:uuid:`).
    /// A person type gets `surrogate` as its only identifier. Free text is scrubbed of the
    /// identity this split takes out; [`Profile::split_with`] adds the identity of other persons.
    pub fn split(
        &self,
        resource: &mut Value,
        surrogate: Option<&str>,
        person: &dyn Fn(&str) -> Option<String>,
    ) -> IdentityPart {
        let terms = Terms::new();
        self.split_with(
            resource,
            surrogate,
            &SplitContext {
                reference_type: person,
                terms: &terms,
            },
        )
    }

    /// Splits `resource` in place into its clinical part, returning the identity part:
    ///
    /// 1. the profile's rules of its type, and of the type of each contained resource and, in
    ///    a Bundle stored as a resource, of each entry's resource (recursively);
    /// 2. the `display` and `identifier` of every reference whose target is a person or cannot
    ///    be told (a logical reference, a target outside the request);
    /// 3. a person type gets `surrogate` as its only identifier;
    /// 4. every string left is scrubbed of the terms of the persons it may name: those of
    ///    `context` and those of every identity element taken in 1 and 2.
    pub fn split_with(
        &self,
        resource: &mut Value,
        surrogate: Option<&str>,
        context: &SplitContext<'_>,
    ) -> IdentityPart {
        let mut part = IdentityPart::default();
        let Some(resource_type) = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return part;
        };
        let mut local = BTreeMap::new();
        local_targets(resource, &mut local);
        let target_type = |reference: &str| {
            local
                .get(reference)
                .cloned()
                .or_else(|| (context.reference_type)(reference))
        };
        self.split_rules(resource, "", &mut part);
        take_reference_identity(resource, String::new(), self, &target_type, &mut part);
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
        let mut terms = context.terms.clone();
        terms.extend(&part.terms());
        for (pointer, original) in scrub::scrub_value(resource, "", &terms) {
            part.entries
                .push((format!("{SCRUBBED}{pointer}"), original));
        }
        part
    }

    /// The profile's rules for one resource at `prefix`, then for what it holds: contained
    /// resources, and a stored Bundle's entries.
    fn split_rules(&self, resource: &mut Value, prefix: &str, part: &mut IdentityPart) {
        let Some(resource_type) = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return;
        };
        let rule_sets: Vec<&TypeRules> = [self.types.get("*"), self.types.get(&resource_type)]
            .into_iter()
            .flatten()
            .collect();
        // Extensions first (their indices are recorded before anything else moves).
        for rules in &rule_sets {
            if !rules.extensions.is_empty() {
                take_extensions(resource, prefix, &rules.extensions, part);
            }
        }
        for rules in &rule_sets {
            for path in &rules.remove {
                let steps: Vec<&str> = path.split('.').collect();
                take_path(resource, &steps, prefix.to_owned(), part, Take::Remove);
            }
            for path in &rules.year {
                let steps: Vec<&str> = path.split('.').collect();
                take_path(resource, &steps, prefix.to_owned(), part, Take::Year);
            }
        }
        if let Some(Value::Array(contained)) = resource.get_mut("contained") {
            for (i, inner) in contained.iter_mut().enumerate() {
                self.split_rules(inner, &format!("{prefix}/contained/{i}"), part);
            }
        }
        if resource_type == "Bundle" {
            if let Some(Value::Array(entries)) = resource.get_mut("entry") {
                for (i, entry) in entries.iter_mut().enumerate() {
                    if let Some(inner) = entry.get_mut("resource") {
                        self.split_rules(inner, &format!("{prefix}/entry/{i}/resource"), part);
                    }
                }
            }
        }
    }
}

/// What a split needs to know beyond the resource itself.
pub struct SplitContext<'a> {
    /// The type of a reference target that is not `Type/id` (a bundle's `urn:uuid:`).
    pub reference_type: &'a dyn Fn(&str) -> Option<String>,
    /// The identity terms of the persons the resource refers to, known from the same request
    /// or from the vault.
    pub terms: &'a Terms,
}

impl std::fmt::Debug for SplitContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitContext")
            .field("terms", &self.terms.len())
            .finish_non_exhaustive()
    }
}

/// Marks an identity entry holding a scrubbed string's original: merged before the others,
/// because its pointer names a place in the clinical part as it was sent.
const SCRUBBED: char = '!';

/// The unescaped last step of a JSON pointer (`+/extension/1` → `1`, `/address/0/line` →
/// `line`).
fn last_step(pointer: &str) -> String {
    pointer
        .rsplit('/')
        .next()
        .unwrap_or("")
        .replace("~1", "/")
        .replace("~0", "~")
}

/// The targets a resource holds itself: contained resources (`#id`) and, in a Bundle, its
/// entries (`fullUrl`), recursively.
fn local_targets(resource: &Value, out: &mut BTreeMap<String, String>) {
    for inner in resource
        .get("contained")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let (Some(id), Some(ty)) = (
            inner.get("id").and_then(Value::as_str),
            inner.get("resourceType").and_then(Value::as_str),
        ) {
            out.insert(format!("#{id}"), ty.to_owned());
        }
        local_targets(inner, out);
    }
    for entry in resource
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(inner) = entry.get("resource") else {
            continue;
        };
        if let (Some(url), Some(ty)) = (
            entry.get("fullUrl").and_then(Value::as_str),
            inner.get("resourceType").and_then(Value::as_str),
        ) {
            out.insert(url.to_owned(), ty.to_owned());
        }
        local_targets(inner, out);
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

    /// Puts the identity back into `resource` (the clinical part as the upstream returns it):
    /// first the originals of scrubbed strings, whose pointers name places in the clinical part
    /// as it was sent, then every element taken out, in the order it was taken.
    pub fn merge_into(&self, resource: &mut Value) {
        for (pointer, value) in &self.entries {
            if let Some(pointer) = pointer.strip_prefix(SCRUBBED) {
                set_pointer(resource, pointer, value.clone());
            }
        }
        for (pointer, value) in &self.entries {
            if !pointer.starts_with(SCRUBBED) {
                set_pointer(resource, pointer, value.clone());
            }
        }
    }

    /// The identity terms this part holds (the originals of scrubbed strings aside: they are
    /// free text, not identity elements).
    pub fn terms(&self) -> Terms {
        let mut terms = Terms::new();
        for (pointer, value) in &self.entries {
            if !pointer.starts_with(SCRUBBED) {
                terms.add_element(&last_step(pointer), value);
            }
        }
        terms
    }

    /// The top-level element an entry belongs to (`name` for `/name/0/family`), for `_elements`.
    pub fn top_element(pointer: &str) -> &str {
        pointer
            .trim_start_matches(['+', SCRUBBED])
            .split('/')
            .nth(1)
            .unwrap_or("")
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
                            if date.len() > 4 && date.is_char_boundary(4) {
                                let full = std::mem::replace(date, date[..4].to_owned());
                                part.entries.push((here, Value::String(full)));
                            }
                        }
                        // Its extensions (a birth time, for one) are identity too.
                        let shadow = format!("_{first}");
                        if let Some(v) = map.shift_remove(&shadow) {
                            part.entries
                                .push((format!("{pointer}/{}", escape(&shadow)), v));
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

fn take_extensions(
    resource: &mut Value,
    prefix: &str,
    urls: &BTreeSet<String>,
    part: &mut IdentityPart,
) {
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
            taken.push((format!("{prefix}/extension/{i}"), ext));
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

/// The elements a Reference may have.
const REFERENCE_KEYS: &[&str] = &[
    "id",
    "extension",
    "reference",
    "_reference",
    "type",
    "_type",
    "identifier",
    "display",
    "_display",
];

/// Whether `map` is a Reference: a literal one (`reference`), or a logical one (nothing but
/// Reference elements, with an `identifier` or a `display`).
fn is_reference(map: &Map<String, Value>) -> bool {
    if map.contains_key("resourceType") {
        return false;
    }
    if map.get("reference").is_some_and(Value::is_string) {
        return true;
    }
    map.keys().all(|k| REFERENCE_KEYS.contains(&k.as_str()))
        && (map.get("identifier").is_some_and(Value::is_object)
            || map.get("display").is_some_and(Value::is_string))
}

/// Whether the identity labels of reference `map` are taken: its target is a person, or
/// cannot be told.
fn labels_are_identity(
    map: &Map<String, Value>,
    profile: &Profile,
    target_type: &dyn Fn(&str) -> Option<String>,
) -> bool {
    let target = map
        .get("reference")
        .and_then(Value::as_str)
        .and_then(|r| reference_type(r).or_else(|| target_type(r)))
        .or_else(|| map.get("type").and_then(Value::as_str).map(str::to_owned));
    target.is_none_or(|t| profile.is_person(&t))
}

/// The identity labels of a reference.
const LABELS: [&str; 3] = ["display", "_display", "identifier"];

/// Whether `value` is a reference that holds nothing but identity labels: taking them would
/// leave an empty element, which FHIR does not allow, so it is taken whole.
fn only_identity_labels(
    value: &Value,
    profile: &Profile,
    target_type: &dyn Fn(&str) -> Option<String>,
) -> bool {
    value.as_object().is_some_and(|map| {
        is_reference(map)
            && map.keys().all(|k| LABELS.contains(&k.as_str()))
            && labels_are_identity(map, profile, target_type)
    })
}

/// Takes `display` and `identifier` from every reference whose target is a person or cannot be
/// told: a person's name and MRN stay out of the clinical part even when they only label the
/// reference. A reference that holds nothing else is taken whole (from an array, by its index,
/// so that merging inserts it back there).
fn take_reference_identity(
    value: &mut Value,
    pointer: String,
    profile: &Profile,
    target_type: &dyn Fn(&str) -> Option<String>,
    part: &mut IdentityPart,
) {
    match value {
        Value::Object(map) => {
            if is_reference(map) && labels_are_identity(map, profile, target_type) {
                for key in LABELS {
                    if let Some(taken) = map.shift_remove(key) {
                        part.entries.push((format!("{pointer}/{key}"), taken));
                    }
                }
            }
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let here = format!("{pointer}/{}", escape(&key));
                let whole = map
                    .get(&key)
                    .is_some_and(|child| only_identity_labels(child, profile, target_type));
                if whole {
                    if let Some(taken) = map.shift_remove(&key) {
                        part.entries.push((here, taken));
                    }
                    continue;
                }
                // Contained resources and nested elements alike.
                if let Some(child) = map.get_mut(&key) {
                    take_reference_identity(child, here, profile, target_type, part);
                    // An array all of whose items were taken goes too; merging makes it again.
                    if child.as_array().is_some_and(Vec::is_empty) {
                        map.shift_remove(&key);
                    }
                }
            }
        }
        Value::Array(items) => {
            let mut kept = Vec::with_capacity(items.len());
            for (i, item) in std::mem::take(items).into_iter().enumerate() {
                if only_identity_labels(&item, profile, target_type) {
                    // Taken at ascending original indices: merging inserts them back in order.
                    part.entries.push((format!("+{pointer}/{i}"), item));
                } else {
                    kept.push((i, item));
                }
            }
            for (i, mut item) in kept {
                // Entries inside a kept item name its original index: they are merged after
                // the insertions above have put the array back as it was.
                take_reference_identity(
                    &mut item,
                    format!("{pointer}/{i}"),
                    profile,
                    target_type,
                    part,
                );
                items.push(item);
            }
        }
        _ => {}
    }
}

fn collect_person_references(value: &Value, profile: &Profile, found: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            if let Some(target) = map
                .get("reference")
                .and_then(Value::as_str)
                .and_then(reference_target)
                .filter(|(ty, _)| profile.is_person(ty))
            {
                if !found.contains(&target) {
                    found.push(target);
                }
            }
            map.values()
                .for_each(|v| collect_person_references(v, profile, found));
        }
        Value::Array(items) => items
            .iter()
            .for_each(|v| collect_person_references(v, profile, found)),
        _ => {}
    }
}

/// The (type, id) of a literal reference `Type/id`, `…/Type/id` or `…/Type/id/_history/v`.
pub fn reference_target(reference: &str) -> Option<(String, String)> {
    let ty = reference_type(reference)?;
    let path = reference.split(['?', '#']).next().unwrap_or(reference);
    let segments: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let n = segments.len();
    let id = if n >= 4 && segments[n - 2] == "_history" {
        segments[n - 3]
    } else {
        segments[n - 1]
    };
    Some((ty, id.to_owned()))
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
    fn every_route_identity_takes_is_split_and_merges_back() {
        let profile = Profile::default();
        let original = json!({
            "resourceType": "Observation",
            "status": "final",
            "contained": [{
                "resourceType": "Patient", "id": "p",
                "name": [{"family": "Quill", "given": ["Orla"]}],
                "birthDate": "1961-07-23",
                "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1961-07-23T04:05:06Z"}]}
            }],
            "code": {"text": "pulse"},
            "subject": {"reference": "#p", "display": "Orla Quill"},
            "performer": [{"identifier": {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-11-2222"}, "display": "Orla Q."}],
            "note": [{"text": "Orla Quill (999-11-2222) was calm"}],
            "valueString": "quill"
        });
        let mut clinical = original.clone();
        let part = profile.split(&mut clinical, None, &no_context);
        let text = clinical.to_string();
        for secret in ["Quill", "Orla", "07-23", "999-11-2222", "04:05"] {
            assert!(
                !text.to_lowercase().contains(&secret.to_lowercase()),
                "{secret} in {text}"
            );
        }
        assert_eq!(clinical["contained"][0]["birthDate"], "1961");
        assert_eq!(clinical["subject"]["reference"], "#p");
        assert_eq!(
            clinical["note"][0]["text"],
            "[redacted] ([redacted]) was calm"
        );
        assert_eq!(clinical["code"]["text"], "pulse");
        let restored = IdentityPart::from_bytes(&part.to_bytes()).unwrap();
        let mut merged = clinical.clone();
        restored.merge_into(&mut merged);
        assert_eq!(merged, original);
    }

    #[test]
    fn a_stored_bundle_is_split_entry_by_entry() {
        let profile = Profile::default();
        let original = json!({
            "resourceType": "Bundle", "type": "collection",
            "entry": [
                {"fullUrl": "urn:uuid:a", "resource": {"resourceType": "Patient", "name": [{"family": "Vane"}], "deceasedDateTime": "2001-02-03T04:05:06Z",
                 "telecom": [{"system": "phone", "value": "555-0100"}]}},
                {"fullUrl": "urn:uuid:b", "resource": {"resourceType": "Bundle", "type": "collection", "entry": [
                    {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                     "subject": {"reference": "urn:uuid:a", "display": "Mr Vane"}, "valueString": "call 555-0100"}}]}}
            ]
        });
        let mut clinical = original.clone();
        let part = profile.split(&mut clinical, None, &no_context);
        let text = clinical.to_string();
        assert!(
            !text.contains("Vane") && !text.contains("555-0100"),
            "{text}"
        );
        assert_eq!(clinical["entry"][0]["resource"]["deceasedDateTime"], "2001");
        let mut merged = clinical.clone();
        part.merge_into(&mut merged);
        assert_eq!(merged, original);
    }

    #[test]
    fn references_to_other_types_keep_their_labels() {
        let profile = Profile::default();
        let mut obs = json!({
            "resourceType": "Observation",
            "performer": [{"reference": "Practitioner/1", "display": "Dr X"}, {"type": "Organization", "identifier": {"value": "org-1"}, "display": "General"}],
            "code": {"coding": [{"system": "urn:x", "code": "1", "display": "Pulse"}]}
        });
        let original = obs.clone();
        let part = profile.split(&mut obs, None, &no_context);
        assert!(part.is_empty(), "{part:?}");
        assert_eq!(obs, original);
    }

    #[test]
    fn references_holding_only_identity_leave_no_empty_element() {
        let profile = Profile::default();
        let original = json!({
            "resourceType": "Observation",
            "subject": {"display": "Ann Lee"},
            "performer": [
                {"display": "Ann Lee"},
                {"reference": "Practitioner/1", "display": "Dr X"},
                {"identifier": {"value": "mrn-9"}, "extension": [{"url": "urn:x", "valueString": "kept"}]},
                {"identifier": {"value": "mrn-8"}}
            ],
            "focus": [{"display": "Ann Lee"}]
        });
        let mut clinical = original.clone();
        let part = profile.split(&mut clinical, None, &no_context);
        assert_eq!(
            clinical,
            json!({"resourceType": "Observation", "performer": [
                {"reference": "Practitioner/1", "display": "Dr X"},
                {"extension": [{"url": "urn:x", "valueString": "kept"}]}]})
        );
        part.merge_into(&mut clinical);
        assert_eq!(clinical, original);
    }

    #[test]
    fn terms_of_other_persons_scrub_free_text() {
        let profile = Profile::default();
        let mut terms = Terms::new();
        terms.add("Reinger");
        let context = SplitContext {
            reference_type: &no_context,
            terms: &terms,
        };
        let mut obs = json!({"resourceType": "Observation", "subject": {"reference": "Patient/1"}, "valueString": "Mrs. Reinger"});
        let part = profile.split_with(&mut obs, None, &context);
        assert_eq!(obs["valueString"], "Mrs. [redacted]");
        assert_eq!(
            part.entries,
            vec![("!/valueString".to_owned(), json!("Mrs. Reinger"))]
        );
    }

    #[test]
    fn persons_referred_to_are_found_once() {
        let profile = Profile::default();
        let obs = json!({"subject": {"reference": "Patient/1"}, "performer": [
            {"reference": "Patient/1/_history/2"}, {"reference": "Practitioner/2"}, {"reference": "RelatedPerson/3"}]});
        assert_eq!(
            profile.referenced_persons(&obs),
            vec![
                ("Patient".to_owned(), "1".to_owned()),
                ("RelatedPerson".to_owned(), "3".to_owned())
            ]
        );
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
