//! Differential mode: the same case against two endpoints, answers compared once what may
//! rightly differ between them is set aside (ids, `meta`, timestamps, base URLs, run tokens).

use serde_json::{Map, Value};

use crate::case::{Case, Compare, Step};
use crate::http::Response;
use crate::run::{json_eq, CaseRun};

/// Headers whose presence is compared (their values carry ids, versions and times).
const KEY_HEADERS: &[&str] = &["location", "etag", "last-modified", "content-location"];
/// Object members removed everywhere before comparing: server-assigned ids and times.
const VOLATILE: &[&str] = &["id", "meta", "lastUpdated", "date", "fullUrl"];
/// Members of `Bundle.entry.response` that carry ids, versions and times.
const VOLATILE_IN_RESPONSE: &[&str] = &["location", "etag", "lastModified"];
/// The at most this many differences reported per step.
const MAX_DIFFERENCES: usize = 5;

/// A body made comparable.
#[derive(Debug, Clone, PartialEq)]
pub enum Normalized {
    Empty,
    Json(Value),
    Text(String),
}

/// What is replaced before comparing: the bases both answers may mention (each endpoint's own,
/// and any other a cache might have kept) and the run's own tokens (`{unique}`, UUIDs).
#[derive(Debug, Clone, Default)]
pub struct Masks {
    pub bases: Vec<String>,
    pub tokens: Vec<String>,
}

/// Normalizes a body: masks as text first (bases, tokens, UUIDs, instants, XML `meta`), then,
/// for JSON, removes volatile members, masks the ids inside references, keeps only what is
/// not wording of each `OperationOutcome` issue, puts the included entries of a search in a
/// fixed order, and removes the JSON pointers of `ignore`.
pub fn normalize(body: &[u8], masks: &Masks, ignore: &[String]) -> Normalized {
    let text = String::from_utf8_lossy(body);
    if text.trim().is_empty() {
        return Normalized::Empty;
    }
    let text = mask_text(&text, masks);
    match serde_json::from_str::<Value>(&text) {
        Ok(mut json) => {
            scrub(&mut json);
            for pointer in ignore {
                remove(&mut json, pointer);
            }
            Normalized::Json(json)
        }
        Err(_) => Normalized::Text(text),
    }
}

fn mask_text(text: &str, masks: &Masks) -> String {
    let mut text = text.to_owned();
    let mut bases: Vec<&String> = masks.bases.iter().filter(|b| !b.is_empty()).collect();
    // Longest first, so that a base that extends another is replaced whole.
    bases.sort_by_key(|b| std::cmp::Reverse(b.len()));
    for base in bases {
        text = text.replace(base.trim_end_matches('/'), "{base}");
    }
    for token in masks.tokens.iter().filter(|t| t.len() >= 6) {
        text = text.replace(token.as_str(), "{token}");
    }
    strip_xml_meta(&mask_instants(&mask_uuids(&text)))
}

/// Removes every `<meta>…</meta>` element of an XML body (versions, times and the request id
/// a server may record as `meta.source`); JSON `meta` goes with the other volatile members.
fn strip_xml_meta(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<meta>") {
        let Some(len) = rest[start..].find("</meta>") else {
            break;
        };
        out.push_str(&rest[..start]);
        rest = &rest[start + len + "</meta>".len()..];
    }
    out.push_str(rest);
    out
}

/// Replaces every `8-4-4-4-12` hex UUID with `{uuid}`.
pub fn mask_uuids(text: &str) -> String {
    const SHAPE: [usize; 5] = [8, 4, 4, 4, 12];
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while i + 36 <= bytes.len() {
        let mut at = i;
        let mut ok = i == 0 || !bytes[i - 1].is_ascii_hexdigit();
        for (n, len) in SHAPE.iter().enumerate() {
            if !ok {
                break;
            }
            ok = bytes[at..at + len].iter().all(u8::is_ascii_hexdigit);
            at += len;
            if n < 4 {
                ok = ok && bytes[at] == b'-';
                at += 1;
            }
        }
        ok = ok && bytes.get(at).is_none_or(|b| !b.is_ascii_hexdigit());
        if ok {
            out.push_str(&text[copied..i]);
            out.push_str("{uuid}");
            i = at;
            copied = at;
        } else {
            i += 1;
        }
    }
    out.push_str(&text[copied..]);
    out
}

/// Replaces every ISO 8601 date-time (`2026-01-02T03:04:05.678+00:00`) with `{instant}`.
pub fn mask_instants(text: &str) -> String {
    let bytes = text.as_bytes();
    let digits = |from: usize, n: usize| {
        bytes
            .get(from..from + n)
            .is_some_and(|s| s.iter().all(u8::is_ascii_digit))
    };
    let byte = |at: usize, b: u8| bytes.get(at) == Some(&b);
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        let date = digits(i, 4)
            && byte(i + 4, b'-')
            && digits(i + 5, 2)
            && byte(i + 7, b'-')
            && digits(i + 8, 2)
            && byte(i + 10, b'T')
            && digits(i + 11, 2)
            && byte(i + 13, b':')
            && digits(i + 14, 2);
        if !date {
            i += 1;
            continue;
        }
        // The rest of the instant: seconds, fraction, zone.
        let mut end = i + 16;
        while end < bytes.len() && (bytes[end].is_ascii_digit() || b":.+-Z".contains(&bytes[end])) {
            end += 1;
        }
        out.push_str(&text[copied..i]);
        out.push_str("{instant}");
        i = end;
        copied = end;
    }
    out.push_str(&text[copied..]);
    out
}

fn scrub(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for key in VOLATILE {
                map.remove(*key);
            }
            match map.get("resourceType").and_then(Value::as_str) {
                // Search and history links carry server-chosen page ids.
                Some("Bundle") => {
                    map.remove("link");
                    if let Some(Value::Array(entries)) = map.get_mut("entry") {
                        order_included(entries);
                    }
                }
                // An issue's wording, code and location are the server's to choose: two servers
                // (or one server twice) word the same refusal differently. Severity and coded
                // details are compared.
                Some("OperationOutcome") => {
                    if let Some(Value::Array(issues)) = map.get_mut("issue") {
                        for issue in issues.iter_mut().filter_map(Value::as_object_mut) {
                            issue.retain(|k, _| k == "severity" || k == "details");
                            if let Some(Value::Object(details)) = issue.get_mut("details") {
                                details.remove("text");
                            }
                        }
                    }
                }
                _ => {}
            }
            if let Some(Value::Object(response)) = map.get_mut("response") {
                for key in VOLATILE_IN_RESPONSE {
                    response.remove(*key);
                }
            }
            if let Some(Value::String(reference)) = map.get_mut("reference") {
                *reference = mask_reference(reference);
            }
            map.values_mut().for_each(scrub);
        }
        Value::Array(items) => items.iter_mut().for_each(scrub),
        _ => {}
    }
}

/// Sorts the entries a search included (`search.mode` = `include`) after the matches, in a
/// fixed order: FHIR gives their order no meaning, and servers do not keep it stable.
fn order_included(entries: &mut [Value]) {
    let is_include =
        |e: &Value| e.pointer("/search/mode").and_then(Value::as_str) == Some("include");
    let matches = entries.iter().filter(|e| !is_include(e)).count();
    if !entries.iter().skip(matches).all(is_include) {
        // Matches and includes interleaved: put includes last without reordering the matches.
        entries.sort_by_key(|e| is_include(e));
    }
    entries[matches..].sort_by_key(Value::to_string);
}

/// `Patient/123/_history/2` → `Patient/{id}/_history/2`: server-assigned ids need not agree.
fn mask_reference(reference: &str) -> String {
    let mut segments: Vec<String> = reference.split('/').map(str::to_owned).collect();
    for i in 0..segments.len().saturating_sub(1) {
        let is_type = segments[i].starts_with(|c: char| c.is_ascii_uppercase())
            && segments[i].chars().all(|c| c.is_ascii_alphabetic());
        if is_type && !segments[i + 1].starts_with('_') && !segments[i + 1].starts_with('{') {
            segments[i + 1] = "{id}".to_owned();
        }
    }
    segments.join("/")
}

/// Removes what `pointer` (with `*`) selects.
fn remove(value: &mut Value, pointer: &str) {
    let segments: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    remove_at(value, &segments);
}

fn remove_at(value: &mut Value, segments: &[&str]) {
    let Some((first, rest)) = segments.split_first() else {
        return;
    };
    if rest.is_empty() {
        match value {
            Value::Object(map) if *first == "*" => map.clear(),
            Value::Object(map) => {
                map.remove(*first);
            }
            Value::Array(items) if *first == "*" => items.clear(),
            Value::Array(items) => {
                if let Ok(i) = first.parse::<usize>() {
                    if i < items.len() {
                        items.remove(i);
                    }
                }
            }
            _ => {}
        }
        return;
    }
    match value {
        Value::Object(map) if *first == "*" => map.values_mut().for_each(|v| remove_at(v, rest)),
        Value::Object(map) => {
            if let Some(v) = map.get_mut(*first) {
                remove_at(v, rest);
            }
        }
        Value::Array(items) if *first == "*" => items.iter_mut().for_each(|v| remove_at(v, rest)),
        Value::Array(items) => {
            if let Some(v) = first.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                remove_at(v, rest);
            }
        }
        _ => {}
    }
}

/// The media type without parameters, in lower case.
fn essence(content_type: Option<&str>) -> Option<String> {
    content_type.map(|c| {
        c.split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase()
    })
}

/// How two answers to the same step differ, as readable lines (empty when they agree).
pub fn compare_responses(
    step: &Step,
    reference: &Response,
    reference_masks: &Masks,
    endpoint: &Response,
    endpoint_masks: &Masks,
) -> Vec<String> {
    let mut out = Vec::new();
    if reference.status != endpoint.status {
        out.push(format!(
            "status {} (reference {})",
            endpoint.status, reference.status
        ));
    }
    if step.compare == Compare::Status {
        return out;
    }
    for name in KEY_HEADERS {
        let (r, e) = (reference.header(name), endpoint.header(name));
        if r.is_some() != e.is_some() {
            out.push(format!(
                "header {name} {} (reference: {})",
                if e.is_some() { "present" } else { "absent" },
                r.unwrap_or("absent")
            ));
        }
    }
    let (r, e) = (
        essence(reference.header("content-type")),
        essence(endpoint.header("content-type")),
    );
    if r != e {
        out.push(format!("content-type {e:?} (reference {r:?})"));
    }
    if step.compare == Compare::Headers {
        return out;
    }
    let r = normalize(&reference.body, reference_masks, &step.ignore);
    let e = normalize(&endpoint.body, endpoint_masks, &step.ignore);
    match (&r, &e) {
        (Normalized::Json(r), Normalized::Json(e)) => {
            let mut found = Vec::new();
            json_differences("", r, e, &mut found);
            out.extend(found.into_iter().map(|d| format!("body {d}")));
        }
        _ if r == e => {}
        _ => out.push(format!(
            "body differs: {} (reference: {})",
            shown(&e),
            shown(&r)
        )),
    }
    out
}

fn shown(n: &Normalized) -> String {
    match n {
        Normalized::Empty => "empty".to_owned(),
        Normalized::Json(v) => crate::run::excerpt(&v.to_string()),
        Normalized::Text(t) => crate::run::excerpt(t),
    }
}

/// Where two JSON values differ, as `pointer: endpoint (reference …)` lines, at most a few.
pub fn json_differences(path: &str, reference: &Value, endpoint: &Value, out: &mut Vec<String>) {
    if out.len() >= MAX_DIFFERENCES || json_eq(reference, endpoint) {
        return;
    }
    let short =
        |v: Option<&Value>| v.map_or("absent".to_owned(), |v| crate::run::excerpt(&v.to_string()));
    match (reference, endpoint) {
        (Value::Object(r), Value::Object(e)) => {
            let keys = keys(r, e);
            for key in keys {
                let p = format!("{path}/{key}");
                match (r.get(&key), e.get(&key)) {
                    (Some(rv), Some(ev)) => json_differences(&p, rv, ev, out),
                    (rv, ev) => out.push(format!("{p}: {} (reference {})", short(ev), short(rv))),
                }
                if out.len() >= MAX_DIFFERENCES {
                    return;
                }
            }
        }
        (Value::Array(r), Value::Array(e)) if r.len() == e.len() => {
            for (i, (rv, ev)) in r.iter().zip(e).enumerate() {
                json_differences(&format!("{path}/{i}"), rv, ev, out);
            }
        }
        _ => out.push(format!(
            "{}: {} (reference {})",
            if path.is_empty() { "/" } else { path },
            short(Some(endpoint)),
            short(Some(reference))
        )),
    }
}

fn keys(a: &Map<String, Value>, b: &Map<String, Value>) -> Vec<String> {
    let mut keys: Vec<String> = a.keys().chain(b.keys()).cloned().collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Compares two runs of one case, step by step: the differences, each prefixed with its step.
pub fn compare_runs(
    case: &Case,
    reference: &CaseRun,
    endpoint: &CaseRun,
    bases: &[String],
) -> Vec<String> {
    let masks = |run: &CaseRun| Masks {
        bases: bases.to_vec(),
        tokens: run.vars.run_tokens(),
    };
    let (reference_masks, endpoint_masks) = (masks(reference), masks(endpoint));
    let mut out = Vec::new();
    for (i, step) in case.steps.iter().enumerate() {
        let label = step.label();
        match (reference.steps.get(i), endpoint.steps.get(i)) {
            (None, None) => break,
            (Some(_), None) => out.push(format!("{label}: not reached (the reference reached it)")),
            (None, Some(_)) => out.push(format!(
                "{label}: reached (the reference stopped before it)"
            )),
            (Some(r), Some(e)) => match (&r.response, &e.response) {
                (Some(r), Some(e)) => out.extend(
                    compare_responses(step, r, &reference_masks, e, &endpoint_masks)
                        .into_iter()
                        .map(|d| format!("{label}: {d}")),
                ),
                (None, None) => {}
                (Some(_), None) => out.push(format!("{label}: no answer (the reference answered)")),
                (None, Some(_)) => out.push(format!("{label}: answered (the reference did not)")),
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use serde_json::json;

    fn masks(base: &str, token: &str) -> Masks {
        Masks {
            bases: vec![
                "http://a/fhir".to_owned(),
                "http://b:8/fhir".to_owned(),
                base.to_owned(),
            ],
            tokens: vec![token.to_owned()],
        }
    }

    fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        Response {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            body: Bytes::from(body.to_owned()),
        }
    }

    fn step(compare: Compare) -> Step {
        let mut step: Step = toml::from_str("method = \"GET\"\npath = \"x\"").unwrap();
        step.compare = compare;
        step
    }

    #[test]
    fn masks_uuids_and_instants() {
        assert_eq!(
            mask_uuids("Patient/0b3a9c9e-1d2f-4a5b-8c7d-112233445566/_history/1 x"),
            "Patient/{uuid}/_history/1 x"
        );
        assert_eq!(
            mask_uuids("0b3a9c9e-1d2f-4a5b-8c7d-1122334455667"),
            "0b3a9c9e-1d2f-4a5b-8c7d-1122334455667"
        );
        assert_eq!(
            mask_instants(
                r#"{"lastUpdated":"2026-01-02T03:04:05.678+00:00","birthDate":"1970-01-02"}"#
            ),
            r#"{"lastUpdated":"{instant}","birthDate":"1970-01-02"}"#
        );
    }

    #[test]
    fn two_equal_answers_from_different_servers_normalize_alike() {
        let a = r#"{"resourceType":"Bundle","id":"s1","meta":{"lastUpdated":"2026-01-01T00:00:00Z"},
          "type":"searchset","total":1,"link":[{"relation":"self","url":"http://a/fhir/Patient?x=utok1234"}],
          "entry":[{"fullUrl":"http://a/fhir/Patient/7","resource":{"resourceType":"Patient","id":"7",
          "identifier":[{"value":"utok1234"}],"managingOrganization":{"reference":"Organization/9"}},
          "response":{"status":"201 Created","location":"Patient/7/_history/1","etag":"W/\"1\""}}]}"#;
        let b = r#"{"resourceType":"Bundle","id":"s2","meta":{"lastUpdated":"2026-02-02T00:00:00Z"},
          "type":"searchset","total":1,"link":[{"relation":"self","url":"http://b:8/fhir/Patient?x=utok9999"}],
          "entry":[{"fullUrl":"http://b:8/fhir/Patient/8","resource":{"resourceType":"Patient","id":"8",
          "identifier":[{"value":"utok9999"}],"managingOrganization":{"reference":"Organization/10"}},
          "response":{"status":"201 Created","location":"Patient/8/_history/1","etag":"W/\"1\""}}]}"#;
        let na = normalize(a.as_bytes(), &masks("http://a/fhir", "utok1234"), &[]);
        let nb = normalize(b.as_bytes(), &masks("http://b:8/fhir", "utok9999"), &[]);
        assert_eq!(na, nb);
        let Normalized::Json(json) = na else {
            panic!("not JSON")
        };
        assert_eq!(
            json["entry"][0]["resource"]["managingOrganization"]["reference"],
            "Organization/{id}"
        );
        assert_eq!(
            json["entry"][0]["resource"]["identifier"][0]["value"],
            "{token}"
        );
    }

    #[test]
    fn a_real_difference_is_found_and_located() {
        let r = response(
            200,
            &[("content-type", "application/fhir+json")],
            r#"{"resourceType":"Patient","gender":"male","name":[{"family":"A"}]}"#,
        );
        let e = response(
            200,
            &[("content-type", "application/fhir+json;charset=utf-8")],
            r#"{"resourceType":"Patient","gender":"female","name":[{"family":"A"}]}"#,
        );
        let m = Masks::default();
        let d = compare_responses(&step(Compare::Body), &r, &m, &e, &m);
        assert_eq!(d, [r#"body /gender: "female" (reference "male")"#]);
        // Headers-only and status-only comparisons do not look at the body.
        assert!(compare_responses(&step(Compare::Headers), &r, &m, &e, &m).is_empty());
    }

    #[test]
    fn status_headers_and_content_types_are_compared() {
        let r = response(
            201,
            &[("location", "x"), ("content-type", "application/fhir+json")],
            "",
        );
        let e = response(200, &[("content-type", "application/fhir+xml")], "");
        let m = Masks::default();
        let d = compare_responses(&step(Compare::Headers), &r, &m, &e, &m);
        assert_eq!(d.len(), 3, "{d:#?}");
        assert_eq!(
            compare_responses(&step(Compare::Status), &r, &m, &e, &m).len(),
            1
        );
    }

    #[test]
    fn ignore_removes_pointers_before_comparing() {
        let r = br#"{"total":3,"entry":[{"resource":{"x":1,"y":1}}]}"#;
        let e = br#"{"total":4,"entry":[{"resource":{"x":2,"y":1}}]}"#;
        let ignore = vec!["/total".to_owned(), "/entry/*/resource/x".to_owned()];
        let m = Masks::default();
        assert_eq!(normalize(r, &m, &ignore), normalize(e, &m, &ignore));
        assert_ne!(normalize(r, &m, &[]), normalize(e, &m, &[]));
    }

    #[test]
    fn outcome_wording_is_not_compared_but_severity_is() {
        let m = masks("http://a/fhir", "utok1234");
        let a = normalize(
            br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"processing","diagnostics":"Took 5ms"}]}"#,
            &m,
            &[],
        );
        let b = normalize(
            br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-supported","diagnostics":"Took 12ms"}]}"#,
            &m,
            &[],
        );
        assert_eq!(a, b);
        let c = normalize(
            br#"{"resourceType":"OperationOutcome","issue":[{"severity":"information","diagnostics":"Took 5ms"}]}"#,
            &m,
            &[],
        );
        assert_ne!(a, c);
    }

    #[test]
    fn included_entries_are_ordered_matches_are_not() {
        let entry = |n: u8, mode: &str| json!({"resource": {"n": n}, "search": {"mode": mode}});
        let bundle = |entries: Vec<Value>| {
            json!({"resourceType": "Bundle", "entry": entries})
                .to_string()
                .into_bytes()
        };
        let m = Masks::default();
        let a = bundle(vec![
            entry(1, "match"),
            entry(2, "match"),
            entry(3, "include"),
            entry(4, "include"),
        ]);
        let b = bundle(vec![
            entry(1, "match"),
            entry(2, "match"),
            entry(4, "include"),
            entry(3, "include"),
        ]);
        let swapped = bundle(vec![
            entry(2, "match"),
            entry(1, "match"),
            entry(3, "include"),
            entry(4, "include"),
        ]);
        assert_eq!(normalize(&a, &m, &[]), normalize(&b, &m, &[]));
        assert_ne!(normalize(&a, &m, &[]), normalize(&swapped, &m, &[]));
    }

    #[test]
    fn xml_meta_and_bases_are_masked() {
        let m = masks("http://a/fhir", "utok1234");
        let a = normalize(
            br##"<Patient><id value="p"/><meta><source value="#abc"/></meta><gender value="male"/></Patient>"##,
            &m,
            &[],
        );
        let b = normalize(
            br##"<Patient><id value="p"/><meta><source value="#xyz"/></meta><gender value="male"/></Patient>"##,
            &m,
            &[],
        );
        assert_eq!(a, b);
        assert_eq!(
            a,
            Normalized::Text(
                r#"<Patient><id value="p"/><gender value="male"/></Patient>"#.to_owned()
            )
        );
        let x = normalize(
            br#"<Bundle><link><url value="http://a/fhir/Patient"/></link></Bundle>"#,
            &m,
            &[],
        );
        let y = normalize(
            br#"<Bundle><link><url value="http://b:8/fhir/Patient"/></link></Bundle>"#,
            &m,
            &[],
        );
        assert_eq!(x, y);
        assert_eq!(normalize(b"  ", &m, &[]), Normalized::Empty);
        assert_eq!(
            json!(mask_reference("http://x/fhir/Patient/1/_history/2")),
            json!("http://x/fhir/Patient/{id}/_history/2")
        );
    }
}
