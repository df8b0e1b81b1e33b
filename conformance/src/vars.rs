//! `{var}` substitution and the extended JSON pointers that cases use to look into bodies.

use std::collections::BTreeMap;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::Value;

use crate::{Error, Result};

/// What `{name|url}` leaves as it is: RFC 3986 unreserved characters.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The variables of one run of one case against one endpoint.
///
/// `{base}` is the endpoint's base URL, `{unique}` a token no other run shares (so that runs do
/// not find each other's data), `{uuid:NAME}` a UUID made on first use and kept for the run
/// (for `urn:uuid:` references in bundles), `{digits:NAME}` nine random digits kept likewise
/// (phone numbers, SSNs), and every captured name its captured value.
#[derive(Debug, Clone)]
pub struct Vars {
    values: BTreeMap<String, String>,
}

impl Vars {
    /// Fresh variables for a run against `base`.
    pub fn new(base: &str) -> Self {
        let mut values = BTreeMap::new();
        values.insert("base".to_owned(), base.trim_end_matches('/').to_owned());
        // Starts with a letter and has no dash: safe in ids, tokens and string searches alike.
        let unique = format!("u{}", &uuid::Uuid::new_v4().simple().to_string()[..15]);
        values.insert("unique".to_owned(), unique);
        Self { values }
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn set(&mut self, name: &str, value: String) {
        self.values.insert(name.to_owned(), value);
    }

    /// The values that identify this run rather than the server's behaviour (`{unique}`, the
    /// UUIDs and the digits), which differential mode masks.
    pub fn run_tokens(&self) -> Vec<String> {
        self.values
            .iter()
            .filter(|(k, _)| {
                k.as_str() == "unique" || k.starts_with("uuid:") || k.starts_with("digits:")
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Replaces every `{name}` and `{name|url}` in `template`.
    ///
    /// A `{` opens a placeholder only when a name (letters, digits, `_`, `:`, `.`, `-`) and `}`
    /// follow, so JSON and XML bodies need no escaping; an unknown name is an error, because it
    /// is nearly always a typo or a capture that did not happen.
    pub fn substitute(&mut self, template: &str) -> Result<String> {
        let mut out = String::with_capacity(template.len());
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            match placeholder(after) {
                Some((name, filter, len)) => {
                    let value = self.value_of(name)?;
                    match filter {
                        None => out.push_str(&value),
                        Some("url") => out.extend(utf8_percent_encode(&value, QUERY_VALUE)),
                        Some(other) => {
                            return Err(Error::Substitution(format!(
                                "unknown filter |{other} in {{{name}|{other}}}"
                            )))
                        }
                    }
                    rest = &after[len + 1..];
                }
                None => {
                    out.push('{');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    fn value_of(&mut self, name: &str) -> Result<String> {
        if let Some(value) = self.values.get(name) {
            return Ok(value.clone());
        }
        if name.starts_with("uuid:") && name.len() > 5 {
            let value = uuid::Uuid::new_v4().to_string();
            self.values.insert(name.to_owned(), value.clone());
            return Ok(value);
        }
        if name.starts_with("digits:") && name.len() > 7 {
            // A random UUID's bits, as decimal: nine digits, never starting with 0.
            let n = uuid::Uuid::new_v4().as_u128() % 900_000_000 + 100_000_000;
            let value = n.to_string();
            self.values.insert(name.to_owned(), value.clone());
            return Ok(value);
        }
        Err(Error::Substitution(format!(
            "no variable {{{name}}} (known: {})",
            self.values.keys().cloned().collect::<Vec<_>>().join(", ")
        )))
    }
}

/// `name}` or `name|filter}` at the start of `s`: the name, the filter, and the length up to `}`.
fn placeholder(s: &str) -> Option<(&str, Option<&str>, usize)> {
    let end = s.find('}')?;
    let inner = &s[..end];
    let (name, filter) = match inner.split_once('|') {
        Some((n, f)) => (n, Some(f)),
        None => (inner, None),
    };
    let is_name = |t: &str| {
        t.starts_with(|c: char| c.is_ascii_alphabetic())
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '.' | '-'))
    };
    (is_name(name) && filter.is_none_or(is_name)).then_some((name, filter, end))
}

/// The values `pointer` selects in `value`: an RFC 6901 JSON pointer whose segments may also be
/// `*` (every element of an array or member of an object) or `[key=value]` (the array elements
/// whose member `key` is the string `value`). The empty pointer selects the whole document.
pub fn select<'a>(value: &'a Value, pointer: &str) -> Vec<&'a Value> {
    let mut current = vec![value];
    if pointer.is_empty() {
        return current;
    }
    for raw in pointer.trim_start_matches('/').split('/') {
        let segment = raw.replace("~1", "/").replace("~0", "~");
        let mut next = Vec::new();
        for v in current {
            if segment == "*" {
                match v {
                    Value::Array(items) => next.extend(items.iter()),
                    Value::Object(map) => next.extend(map.values()),
                    _ => {}
                }
            } else if let Some((key, want)) = segment
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.split_once('='))
            {
                if let Value::Array(items) = v {
                    next.extend(
                        items
                            .iter()
                            .filter(|item| item.get(key).and_then(Value::as_str) == Some(want)),
                    );
                }
            } else {
                let child = match v {
                    Value::Object(map) => map.get(&segment),
                    Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
                    _ => None,
                };
                next.extend(child);
            }
        }
        current = next;
    }
    current
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn substitutes_names_and_leaves_json_alone() {
        let mut vars = Vars::new("http://h/fhir/");
        vars.set("id", "abc".to_owned());
        let body = r#"{"resourceType":"Patient","id":"{id}","x":{"y":1}}"#;
        assert_eq!(
            vars.substitute(body).unwrap(),
            r#"{"resourceType":"Patient","id":"abc","x":{"y":1}}"#
        );
        assert_eq!(
            vars.substitute("{base}/Patient/{id}").unwrap(),
            "http://h/fhir/Patient/abc"
        );
        // Not a name: kept as written.
        assert_eq!(vars.substitute("{ a }{}{").unwrap(), "{ a }{}{");
    }

    #[test]
    fn unknown_names_and_filters_are_errors() {
        let mut vars = Vars::new("http://h/fhir");
        assert!(matches!(
            vars.substitute("Patient/{idd}"),
            Err(Error::Substitution(_))
        ));
        assert!(vars.substitute("{base|nope}").is_err());
    }

    #[test]
    fn url_filter_encodes_a_query_value() {
        let mut vars = Vars::new("http://h/fhir");
        vars.set("t", "2026-01-02T03:04:05.678+00:00".to_owned());
        assert_eq!(
            vars.substitute("_since={t|url}").unwrap(),
            "_since=2026-01-02T03%3A04%3A05.678%2B00%3A00"
        );
    }

    #[test]
    fn unique_and_uuids_are_stable_within_a_run_and_differ_between_runs() {
        let mut a = Vars::new("b");
        let mut b = Vars::new("b");
        let first = a.substitute("{unique} {uuid:p}").unwrap();
        assert_eq!(first, a.substitute("{unique} {uuid:p}").unwrap());
        assert_ne!(first, b.substitute("{unique} {uuid:p}").unwrap());
        assert_ne!(
            a.substitute("{uuid:p}").unwrap(),
            a.substitute("{uuid:q}").unwrap()
        );
        let digits = a.substitute("{digits:ssn}").unwrap();
        assert_eq!(digits.len(), 9);
        assert!(digits.chars().all(|c| c.is_ascii_digit()));
        assert_eq!(digits, a.substitute("{digits:ssn}").unwrap());
        let tokens = a.run_tokens();
        assert_eq!(tokens.len(), 4, "{tokens:?}");
        assert!(a
            .get("unique")
            .unwrap()
            .chars()
            .all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn select_follows_pointers_wildcards_and_filters() {
        let doc = json!({
            "entry": [
                {"resource": {"id": "a"}, "search": {"mode": "match"}},
                {"resource": {"id": "b"}, "search": {"mode": "include"}}
            ],
            "link": [{"relation": "self", "url": "s"}, {"relation": "next", "url": "n"}],
            "a/b": {"m~n": 1}
        });
        assert_eq!(select(&doc, "/entry/1/resource/id"), [&json!("b")]);
        assert_eq!(
            select(&doc, "/entry/*/resource/id"),
            [&json!("a"), &json!("b")]
        );
        assert_eq!(select(&doc, "/link/[relation=next]/url"), [&json!("n")]);
        assert!(select(&doc, "/link/[relation=previous]/url").is_empty());
        assert_eq!(select(&doc, "/a~1b/m~0n"), [&json!(1)]);
        assert!(select(&doc, "/entry/9").is_empty());
        assert_eq!(select(&doc, "").len(), 1);
    }
}
