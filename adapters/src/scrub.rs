//! Free text that names a person: the identity strings of the persons a resource refers to
//! ([`Terms`]), and their removal from the string elements of the clinical part.
//!
//! A note that says "Bill Reinger reports chest pain", a `valueString` holding an MRN, or an
//! `Annotation` quoting a phone number would carry identity upstream even after every identity
//! element is split off. The split therefore ends by scrubbing: every string of the clinical
//! part in which a term of a known person occurs, as a whole word and ignoring case and common
//! accents, has the occurrence replaced by [`REDACTED`]; the original string goes to the
//! identity part, so that a reader who may see identity gets it back.
//!
//! Terms are only as good as what is known: names, identifiers, telecom, address parts and full
//! dates of the persons the request or the vault knows. Text that names a person in another way
//! (initials, a nickname, a phone number written with other separators) is not found.

use serde_json::Value;

/// What an occurrence of a term becomes in the clinical part.
pub const REDACTED: &str = "[redacted]";

/// Terms shorter than this many characters are not scrubbed: they would match too much.
const MIN_TERM_CHARS: usize = 2;

/// Keys whose strings are never terms: codes, systems and structure, not identity.
const NOT_TERMS: &[&str] = &[
    "system",
    "use",
    "url",
    "code",
    "reference",
    "type",
    "status",
    "id",
    "gender",
    "state",
    "country",
    "prefix",
    "suffix",
    "start",
    "end",
    "div",
    "resourceType",
    "version",
    "userSelected",
];

/// Keys whose strings are never scrubbed: identifiers of the structure, codes and binary data,
/// which a replacement would make invalid, and which are no free text.
const NOT_SCRUBBED: &[&str] = &[
    "resourceType",
    "id",
    "reference",
    "system",
    "code",
    "versionId",
    "lastUpdated",
    "fullUrl",
    "status",
    "use",
    "gender",
    "language",
    "contentType",
    "data",
    "div",
    "url",
];

/// Keys that hold free text even when their value looks like a date.
const TEXT_KEYS: &[&str] = &[
    "valueString",
    "valueMarkdown",
    "text",
    "comment",
    "description",
    "note",
];

/// The identity strings of some persons, normalized (lower case, accents folded), longest
/// first so that "Anna Maria" is replaced before "Anna".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Terms {
    terms: Vec<Vec<char>>,
}

impl Terms {
    pub fn new() -> Terms {
        Terms::default()
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    pub fn len(&self) -> usize {
        self.terms.len()
    }

    /// Adds the strings of an identity element (its value as it was split off; `key` is the
    /// element's name).
    pub fn add_element(&mut self, key: &str, value: &Value) {
        if NOT_TERMS.contains(&key) {
            return;
        }
        match value {
            Value::String(text) => self.add(text),
            Value::Array(items) => items.iter().for_each(|item| self.add_element(key, item)),
            // A narrative is not a term: the words it holds are found through the elements.
            Value::Object(map) if !map.contains_key("div") => {
                for (k, v) in map {
                    self.add_element(k, v);
                }
            }
            _ => {}
        }
    }

    /// Adds one term.
    pub fn add(&mut self, text: &str) {
        let term: Vec<char> = text.trim().chars().map(fold_char).collect();
        if term.len() < MIN_TERM_CHARS || self.terms.contains(&term) {
            return;
        }
        let at = self
            .terms
            .partition_point(|t| t.len() > term.len() || (t.len() == term.len() && *t < term));
        self.terms.insert(at, term);
    }

    /// Adds the terms of `other`.
    pub fn extend(&mut self, other: &Terms) {
        for term in &other.terms {
            if !self.terms.contains(term) {
                let at = self.terms.partition_point(|t| {
                    t.len() > term.len() || (t.len() == term.len() && t < term)
                });
                self.terms.insert(at, term.clone());
            }
        }
    }

    /// `text` with every whole-word occurrence of a term replaced; `None` when none occurs.
    pub fn scrub(&self, text: &str) -> Option<String> {
        if self.terms.is_empty() {
            return None;
        }
        let chars: Vec<char> = text.chars().collect();
        let folded: Vec<char> = chars.iter().copied().map(fold_char).collect();
        let mut out = String::with_capacity(text.len());
        let mut changed = false;
        let mut i = 0;
        while i < chars.len() {
            let at_boundary = i == 0 || !folded[i - 1].is_alphanumeric();
            let found = at_boundary
                .then(|| {
                    self.terms.iter().find(|term| {
                        let end = i + term.len();
                        end <= folded.len()
                            && folded[i..end] == term[..]
                            && (end == folded.len() || !folded[end].is_alphanumeric())
                    })
                })
                .flatten();
            match found {
                Some(term) => {
                    out.push_str(REDACTED);
                    i += term.len();
                    changed = true;
                }
                None => {
                    out.push(chars[i]);
                    i += 1;
                }
            }
        }
        changed.then_some(out)
    }
}

/// Scrubs every string of `value` (a clinical part, or part of one at `pointer`), returning
/// `(pointer, original string)` for each string changed.
pub fn scrub_value(value: &mut Value, pointer: &str, terms: &Terms) -> Vec<(String, Value)> {
    let mut changed = Vec::new();
    if !terms.is_empty() {
        walk(value, pointer, None, terms, &mut changed);
    }
    changed
}

fn walk(
    value: &mut Value,
    pointer: &str,
    key: Option<&str>,
    terms: &Terms,
    changed: &mut Vec<(String, Value)>,
) {
    match value {
        Value::String(text) => {
            let key = key.unwrap_or("");
            if NOT_SCRUBBED.contains(&key) || (looks_like_date(text) && !TEXT_KEYS.contains(&key)) {
                return;
            }
            if let Some(scrubbed) = terms.scrub(text) {
                let original = std::mem::replace(text, scrubbed);
                changed.push((pointer.to_owned(), Value::String(original)));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, &format!("{pointer}/{i}"), key, terms, changed);
            }
        }
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let child = format!("{pointer}/{}", k.replace('~', "~0").replace('/', "~1"));
                walk(v, &child, Some(k), terms, changed);
            }
        }
        _ => {}
    }
}

/// A FHIR date, dateTime, instant or time: strongly typed, so a replacement would make the
/// resource invalid, and dates of care are clinical data.
fn looks_like_date(text: &str) -> bool {
    let bytes = text.as_bytes();
    let date = bytes.len() >= 4
        && bytes[..4].iter().all(u8::is_ascii_digit)
        && bytes[4..]
            .iter()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b':' | b'T' | b'.' | b'+' | b'Z'));
    let time = bytes.len() >= 5
        && bytes[2] == b':'
        && bytes
            .iter()
            .all(|b| b.is_ascii_digit() || matches!(b, b':' | b'.'));
    date || time
}

/// One character as terms compare it: lower case (its first character), common accents folded.
fn fold_char(c: char) -> char {
    let lower = c.to_lowercase().next().unwrap_or(c);
    crate::identity::fold(lower)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn terms(words: &[&str]) -> Terms {
        let mut t = Terms::new();
        words.iter().for_each(|w| t.add(w));
        t
    }

    #[test]
    fn whole_words_are_replaced_ignoring_case_and_accents() {
        let t = terms(&["Reinger", "Bill", "999-43-7348"]);
        assert_eq!(
            t.scrub("BILL Rëinger (SSN 999-43-7348) reports pain")
                .as_deref(),
            Some("[redacted] [redacted] (SSN [redacted]) reports pain")
        );
        assert_eq!(t.scrub("billing of Reingers"), None);
        assert_eq!(t.scrub(""), None);
    }

    #[test]
    fn longer_terms_win() {
        let t = terms(&["Ann", "Ann Marie"]);
        assert_eq!(
            t.scrub("ann marie and ann").as_deref(),
            Some("[redacted] and [redacted]")
        );
    }

    #[test]
    fn elements_give_terms_but_codes_do_not() {
        let mut t = Terms::new();
        t.add_element(
            "name",
            &json!([{"use": "official", "family": "Smith", "given": ["Jo"], "prefix": ["Mr."]}]),
        );
        t.add_element(
            "identifier",
            &json!([{"system": "urn:x", "value": "MRN-1"}]),
        );
        t.add_element("birthDate", &json!("1970-01-02"));
        t.add_element(
            "text",
            &json!({"status": "generated", "div": "<div>Smith</div>"}),
        );
        assert_eq!(t.len(), 4);
        assert!(t.scrub("official").is_none() && t.scrub("Mr.").is_none());
        assert!(t.scrub("born 1970-01-02").is_some());
    }

    #[test]
    fn values_are_scrubbed_except_dates_and_codes() {
        let t = terms(&["Smith", "1970-01-02"]);
        let mut obs = json!({
            "resourceType": "Observation",
            "code": {"coding": [{"system": "urn:x", "code": "Smith"}], "text": "Smith's test"},
            "effectiveDateTime": "1970-01-02",
            "valueString": "1970-01-02",
            "note": [{"text": "seen with Smith"}]
        });
        let changed = scrub_value(&mut obs, "", &t);
        assert_eq!(obs["code"]["coding"][0]["code"], "Smith");
        assert_eq!(obs["code"]["text"], "[redacted]'s test");
        assert_eq!(obs["effectiveDateTime"], "1970-01-02");
        assert_eq!(obs["valueString"], "[redacted]");
        assert_eq!(obs["note"][0]["text"], "seen with [redacted]");
        let pointers: Vec<&str> = changed.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(pointers, ["/code/text", "/valueString", "/note/0/text"]);
    }
}
