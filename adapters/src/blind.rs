//! The blind index's layout: under which keys a person's searchable values are filed, and which
//! keys (and checks) an identity search probes. Pure functions over the original resource and
//! over a planned search's alternatives; the vault turns each [`Term`] into a keyed hash.
//!
//! HAPI's string search matches the start of the normalized value, so a value must be found by
//! every prefix of it. Filing it under every prefix costs a key per character (a Synthea
//! Patient had about 130). Here each value is filed under at most two *buckets*: its first
//! character, and its first three characters (when it has three). Each filed entry carries
//! short *tags* for what its bucket does not decide: the first-character entry the two-character
//! prefix, the three-character entry every longer prefix, and the entry of the longest bucket
//! the exact (`:exact`) spelling. A search probes one bucket and, where the bucket is coarser
//! than the query, keeps the entries that carry the query's tag. The answers are those of
//! indexing every prefix (the tests below compare them over random values).
//!
//! Components are filed once: `name` is answered from `family`, `given` and the other name
//! parts, `address` from each address part, instead of filing each value under both. Token
//! parameters are filed by value with the `system|value` form as a tag, and by system; birth
//! dates by month with the day as a tag. Entries of one resource with the same bucket are one
//! entry (their tags joined), so that one resource is one key per bucket.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::identity::normalize;

/// One (parameter, form) pair, the input of the keyed hash the vault files or probes. Forms
/// say what they are (`p1:`, `p3:` buckets, `p:` prefixes, `x:` exact spellings, `v:`, `s:`,
/// `sv:` tokens, `m:`, `d:` dates), so that no bucket and no tag of another kind share one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Term {
    pub param: String,
    pub form: String,
}

impl Term {
    fn new(param: &str, form: String) -> Term {
        Term {
            param: param.to_owned(),
            form,
        }
    }
}

/// What one resource files under one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub bucket: Term,
    /// Sorted, without repeats.
    pub tags: Vec<Term>,
}

/// One key a search reads: the entries under `bucket`, those carrying `tag` when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub bucket: Term,
    pub tag: Option<Term>,
}

/// Names are filed by part: `family`, `given`, and this for prefixes, suffixes and the text.
const NAME_OTHER: &str = "name-other";
const NAME_PARTS: &[&str] = &["family", "given", NAME_OTHER];
/// Address parts, each filed once; `address` searches all of them.
const ADDRESS_PARTS: &[&str] = &[
    "address-line",
    "address-city",
    "address-district",
    "address-state",
    "address-postalcode",
    "address-country",
    "address-text",
];
/// Characters of the finer bucket.
const FINE: usize = 3;

/// The first `n` characters of `text` (all of it when it is shorter).
fn chars(text: &str, n: usize) -> &str {
    text.char_indices()
        .nth(n)
        .map_or(text, |(at, _)| &text[..at])
}

/// Gathers entries by bucket.
#[derive(Default)]
struct Filing(BTreeMap<Term, Vec<Term>>);

impl Filing {
    fn file(&mut self, bucket: Term, tags: impl IntoIterator<Item = Term>) {
        self.0.entry(bucket).or_default().extend(tags);
    }

    /// A string value of `param`: its buckets, its prefix tags and its exact spelling.
    fn string(&mut self, param: &str, text: &str) {
        let norm = normalize(text);
        let length = norm.chars().count();
        if length == 0 {
            return;
        }
        let exact = Term::new(param, format!("x:{text}"));
        let prefix = |n: usize| Term::new(param, format!("p:{}", chars(&norm, n)));
        let coarse = Term::new(param, format!("p1:{}", chars(&norm, 1)));
        let mut coarse_tags: Vec<Term> = (length >= 2).then(|| prefix(2)).into_iter().collect();
        if length < FINE {
            coarse_tags.push(exact);
            self.file(coarse, coarse_tags);
            return;
        }
        self.file(coarse, coarse_tags);
        let fine = Term::new(param, format!("p{FINE}:{}", chars(&norm, FINE)));
        let tags = (FINE + 1..=length)
            .map(prefix)
            .chain(std::iter::once(exact));
        self.file(fine, tags.collect::<Vec<_>>());
    }

    /// A token (`identifier`, `telecom`): by value, with `system|value` as a tag, and by system.
    fn token(&mut self, param: &str, system: &str, value: &str) {
        self.file(
            Term::new(param, format!("v:{value}")),
            [Term::new(param, format!("sv:{system}|{value}"))],
        );
        self.file(Term::new(param, format!("s:{system}")), []);
    }

    fn into_entries(self) -> Vec<Entry> {
        self.0
            .into_iter()
            .map(|(bucket, mut tags)| {
                tags.sort();
                tags.dedup();
                Entry { bucket, tags }
            })
            .collect()
    }
}

/// The blind-index entries of a person resource, one per bucket.
pub fn entries(resource: &Value) -> Vec<Entry> {
    let mut filing = Filing::default();
    for name in array(resource, "name") {
        if let Some(family) = name.get("family").and_then(Value::as_str) {
            filing.string("family", family);
        }
        for given in strings(name, "given") {
            filing.string("given", given);
        }
        let others = strings(name, "prefix")
            .into_iter()
            .chain(strings(name, "suffix"))
            .chain(name.get("text").and_then(Value::as_str));
        for other in others {
            filing.string(NAME_OTHER, other);
        }
    }
    for address in array(resource, "address") {
        for line in strings(address, "line") {
            filing.string("address-line", line);
        }
        for (part, key) in [
            ("address-city", "city"),
            ("address-district", "district"),
            ("address-state", "state"),
            ("address-postalcode", "postalCode"),
            ("address-country", "country"),
            ("address-text", "text"),
        ] {
            if let Some(text) = address.get(key).and_then(Value::as_str) {
                filing.string(part, text);
            }
        }
    }
    for id in array(resource, "identifier") {
        let system = id.get("system").and_then(Value::as_str).unwrap_or("");
        if let Some(value) = id.get("value").and_then(Value::as_str) {
            filing.token("identifier", system, value);
        }
    }
    for telecom in array(resource, "telecom") {
        let system = telecom.get("system").and_then(Value::as_str).unwrap_or("");
        let Some(value) = telecom.get("value").and_then(Value::as_str) else {
            continue;
        };
        filing.token("telecom", system, value);
        match system {
            "phone" => filing.file(Term::new("phone", value.to_owned()), []),
            "email" => filing.file(Term::new("email", value.to_lowercase()), []),
            _ => {}
        }
    }
    if let Some(birth) = resource.get("birthDate").and_then(Value::as_str) {
        if let Some(month) = birth.get(..7) {
            let day = birth
                .get(..10)
                .map(|day| Term::new("birthdate", format!("d:{day}")));
            filing.file(Term::new("birthdate", format!("m:{month}")), day);
        }
    }
    filing.into_entries()
}

/// The probes answering one search alternative as [`crate::search`] plans it: `(param,
/// normalized prefix)`, `(param:exact, spelling)`, or a token or date form (`v:`, `s:`, `sv:`,
/// `m:`, `d:`). The resources matching the alternative are those any probe finds.
pub fn probes(key: &str, value: &str) -> Vec<Probe> {
    let (param, exact) = match key.strip_suffix(":exact") {
        Some(param) => (param, true),
        None => (key, false),
    };
    let parts: &[&str] = match param {
        "name" => NAME_PARTS,
        "address" => ADDRESS_PARTS,
        "family" => &["family"],
        "given" => &["given"],
        "address-city" => &["address-city"],
        "address-postalcode" => &["address-postalcode"],
        _ => return token_probe(param, value).into_iter().collect(),
    };
    parts
        .iter()
        .filter_map(|part| string_probe(part, value, exact))
        .collect()
}

fn string_probe(param: &str, value: &str, exact: bool) -> Option<Probe> {
    let norm = normalize(value);
    let length = norm.chars().count();
    if length == 0 {
        return None;
    }
    let coarse = Term::new(param, format!("p1:{}", chars(&norm, 1)));
    let fine = || Term::new(param, format!("p{FINE}:{}", chars(&norm, FINE)));
    let bucket = if length >= FINE { fine() } else { coarse };
    let tag = if exact {
        Some(Term::new(param, format!("x:{value}")))
    } else if length == 1 || length == FINE {
        None
    } else {
        Some(Term::new(param, format!("p:{norm}")))
    };
    Some(Probe { bucket, tag })
}

fn token_probe(param: &str, value: &str) -> Option<Probe> {
    let plain = |form: String| Probe {
        bucket: Term::new(param, form),
        tag: None,
    };
    match param {
        "birthdate" => {
            if value.starts_with("d:") {
                let month = value.get(2..9)?;
                Some(Probe {
                    bucket: Term::new(param, format!("m:{month}")),
                    tag: Some(Term::new(param, value.to_owned())),
                })
            } else {
                Some(plain(value.to_owned()))
            }
        }
        "identifier" | "telecom" => match value.strip_prefix("sv:") {
            Some(system_value) => {
                let (_, plain_value) = system_value.split_once('|')?;
                Some(Probe {
                    bucket: Term::new(param, format!("v:{plain_value}")),
                    tag: Some(Term::new(param, value.to_owned())),
                })
            }
            None => Some(plain(value.to_owned())),
        },
        _ => Some(plain(value.to_owned())),
    }
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
    use proptest::prelude::*;
    use serde_json::json;

    /// Whether the resource's entries answer `probe`.
    fn found(entries: &[Entry], probe: &Probe) -> bool {
        entries.iter().any(|e| {
            e.bucket == probe.bucket && probe.tag.as_ref().is_none_or(|t| e.tags.contains(t))
        })
    }

    fn matches(resource: &Value, key: &str, value: &str) -> bool {
        let entries = entries(resource);
        probes(key, value).iter().any(|p| found(&entries, p))
    }

    fn patient() -> Value {
        json!({
            "identifier": [{"system": "urn:mrn", "value": "7"}],
            "name": [{"family": "Smith", "given": ["Ann", "Jo"], "prefix": ["Mrs."]}],
            "telecom": [{"system": "phone", "value": "555-1"}, {"system": "email", "value": "A@X.org"}],
            "address": [{"line": ["1 Elm"], "city": "Boston", "postalCode": "02101", "state": "MA"}],
            "birthDate": "1970-01-02"
        })
    }

    #[test]
    fn the_identity_searches_find_the_person() {
        let p = patient();
        for (key, value) in [
            ("family", "s"),
            ("family", "sm"),
            ("family", "smi"),
            ("family", "smith"),
            ("family:exact", "Smith"),
            ("name", "an"),
            ("name", "jo"),
            ("name", "mrs."),
            ("given", "a"),
            ("address", "ma"),
            ("address", "1 el"),
            ("address", "bost"),
            ("address-city", "bos"),
            ("address-postalcode", "021"),
            ("identifier", "sv:urn:mrn|7"),
            ("identifier", "v:7"),
            ("identifier", "s:urn:mrn"),
            ("telecom", "sv:phone|555-1"),
            ("phone", "555-1"),
            ("email", "a@x.org"),
            ("birthdate", "m:1970-01"),
            ("birthdate", "d:1970-01-02"),
        ] {
            assert!(matches(&p, key, value), "{key}={value}");
        }
        for (key, value) in [
            ("family", "smithx"),
            ("family", "smt"),
            ("family", "sx"),
            ("family:exact", "smith"),
            ("given", "smith"),
            ("address-city", "ma"),
            ("identifier", "sv:urn:other|7"),
            ("identifier", "v:8"),
            ("birthdate", "d:1970-01-03"),
            ("birthdate", "m:1970-02"),
        ] {
            assert!(!matches(&p, key, value), "{key}={value}");
        }
    }

    #[test]
    fn a_person_is_a_few_dozen_keys() {
        let entries = entries(&patient());
        // family, 2 given, prefix, 5 address parts: at most two buckets each; 1 identifier and
        // 2 telecoms: two each; phone, email, birth month.
        assert!(entries.len() <= 9 * 2 + 3 * 2 + 3, "{}", entries.len());
        let mut buckets: Vec<&Term> = entries.iter().map(|e| &e.bucket).collect();
        buckets.dedup();
        assert_eq!(buckets.len(), entries.len());
    }

    /// The prefix semantics the layout must reproduce: every prefix of the normalized value,
    /// and the exact spelling.
    fn by_every_prefix(text: &str, query: &str, exact: bool) -> bool {
        if exact {
            return !normalize(text).is_empty() && text == query;
        }
        let (norm, q) = (normalize(text), normalize(query));
        !q.is_empty() && norm.starts_with(&q)
    }

    proptest! {
        #[test]
        fn string_search_answers_as_every_prefix_would(
            values in proptest::collection::vec("[abcé ]{0,7}", 1..4),
            query in "[abcé ]{0,6}",
            exact in any::<bool>(),
        ) {
            let resource = json!({"name": [{"given": values}]});
            let key = if exact { "given:exact" } else { "given" };
            let want = values.iter().any(|v| by_every_prefix(v, &query, exact));
            prop_assert_eq!(matches(&resource, key, &if exact { query.clone() } else { normalize(&query) }), want);
        }
    }
}
