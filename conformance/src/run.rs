//! Running one case against one endpoint: send each step, check the answer, capture variables.

use serde_json::Value;

use crate::case::{BodyCheck, Capture, Case, Expect, Role, Step, TextMatch};
use crate::http::{Client, Response};
use crate::vars::{select, Vars};
use crate::Result;

/// Where and as whom the suite speaks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// The FHIR base, e.g. `http://127.0.0.1:8088/fhir`.
    pub base: String,
    /// Sent with every request (credentials of the suite's client, or of the restricted reader).
    pub headers: Vec<(String, String)>,
    /// Sent instead of `headers` with `role = "writer"` steps, when given.
    pub writer_headers: Option<Vec<(String, String)>>,
}

impl Endpoint {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            ..Self::default()
        }
    }

    fn headers_for(&self, role: Role) -> &[(String, String)] {
        match (role, &self.writer_headers) {
            (Role::Writer, Some(writer)) => writer,
            _ => &self.headers,
        }
    }
}

/// What happened at one step.
#[derive(Debug, Clone)]
pub struct StepRun {
    pub label: String,
    pub method: String,
    pub url: String,
    /// None when no answer came (connection refused, timeout, a bad URL).
    pub response: Option<Response>,
    /// Expectations that did not hold.
    pub failures: Vec<String>,
    /// Accepted answers that FHIR R4 would not give, with the case's note.
    pub departures: Vec<String>,
}

/// What happened when one case ran against one endpoint.
#[derive(Debug, Clone)]
pub struct CaseRun {
    pub steps: Vec<StepRun>,
    /// The run's variables at the end (base, unique, UUIDs, captures).
    pub vars: Vars,
}

impl CaseRun {
    pub fn passed(&self) -> bool {
        self.steps.iter().all(|s| s.failures.is_empty())
    }

    /// Failures, each prefixed with its step.
    pub fn failures(&self) -> Vec<String> {
        self.steps
            .iter()
            .flat_map(|s| s.failures.iter().map(move |f| format!("{}: {f}", s.label)))
            .collect()
    }

    pub fn departures(&self) -> Vec<String> {
        self.steps
            .iter()
            .flat_map(|s| s.departures.iter().cloned())
            .collect()
    }

    /// The statuses received, e.g. `201 200 410`.
    pub fn statuses(&self) -> String {
        self.steps
            .iter()
            .map(|s| {
                s.response
                    .as_ref()
                    .map_or("---".to_owned(), |r| r.status.to_string())
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The statuses a case expects, e.g. `201 200 410|404` (`*` where any status will do).
pub fn expected_statuses(case: &Case) -> String {
    case.steps
        .iter()
        .map(|s| {
            if s.expect.status.is_empty() {
                "*".to_owned()
            } else {
                s.expect
                    .status
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join("|")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs every step of `case` in order against `endpoint`, stopping after the first step whose
/// expectations fail (later steps usually build on it).
pub async fn run_case(client: &Client, case: &Case, endpoint: &Endpoint) -> CaseRun {
    let mut vars = Vars::new(&endpoint.base);
    let mut steps = Vec::new();
    for step in &case.steps {
        let run = run_step(client, step, endpoint, &mut vars).await;
        let failed = !run.failures.is_empty();
        steps.push(run);
        if failed {
            break;
        }
    }
    CaseRun { steps, vars }
}

async fn run_step(client: &Client, step: &Step, endpoint: &Endpoint, vars: &mut Vars) -> StepRun {
    let mut run = StepRun {
        label: step.label(),
        method: step.method.clone(),
        url: String::new(),
        response: None,
        failures: Vec::new(),
        departures: Vec::new(),
    };
    let prepared = prepare(step, endpoint, vars);
    let (url, headers, body) = match prepared {
        Ok(p) => p,
        Err(e) => {
            run.failures.push(e.to_string());
            return run;
        }
    };
    run.url.clone_from(&url);
    match client
        .send(&step.method, &url, &headers, body.as_deref())
        .await
    {
        Ok(response) => {
            let (failures, departures) = check(&step.expect, &response, vars);
            run.failures = failures;
            run.departures = departures;
            if run.failures.is_empty() {
                for (name, capture) in &step.capture {
                    match captured(capture, &response) {
                        Some(value) => vars.set(name, value),
                        None => run
                            .failures
                            .push(format!("capture {name}: nothing found ({capture:?})")),
                    }
                }
            }
            run.response = Some(response);
        }
        Err(e) => run.failures.push(e.to_string()),
    }
    run
}

type Prepared = (String, Vec<(String, String)>, Option<String>);

/// The URL, headers and body of a step with its variables filled in.
fn prepare(step: &Step, endpoint: &Endpoint, vars: &mut Vars) -> Result<Prepared> {
    let path = vars.substitute(&step.path)?;
    let url = if path.starts_with("http://") || path.starts_with("https://") {
        path
    } else if path.is_empty() {
        endpoint.base.clone()
    } else {
        format!("{}/{}", endpoint.base, path.trim_start_matches('/'))
    };
    let mut headers = endpoint.headers_for(step.role).to_vec();
    for (name, value) in &step.headers {
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        headers.push((name.clone(), vars.substitute(value)?));
    }
    let body = step
        .body
        .as_deref()
        .map(|b| vars.substitute(b))
        .transpose()?;
    Ok((url, headers, body))
}

/// Checks an answer against what the step expects: (failures, departures).
pub fn check(expect: &Expect, response: &Response, vars: &mut Vars) -> (Vec<String>, Vec<String>) {
    let mut failures = Vec::new();
    let mut departures = Vec::new();
    if !expect.status.is_empty() && !expect.status.contains(&response.status) {
        failures.push(format!(
            "status {} where {} was expected; body: {}",
            response.status,
            expect
                .status
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join(" or "),
            excerpt(&response.text())
        ));
    }
    if let Some(spec) = expect.spec_status {
        if response.status != spec && expect.status.contains(&response.status) {
            departures.push(format!(
                "{} where FHIR R4 says {spec}{}",
                response.status,
                expect
                    .note
                    .as_deref()
                    .map(|n| format!(": {n}"))
                    .unwrap_or_default()
            ));
        }
    }
    for (name, matcher) in &expect.headers {
        if let Err(e) = check_text(matcher, response.header(name), vars) {
            failures.push(format!("header {name}: {e}"));
        }
    }
    let text = response.text();
    if let Some(matcher) = &expect.text {
        if let Err(e) = check_text(matcher, Some(&text), vars) {
            failures.push(format!("body text: {e}"));
        }
    }
    if !expect.body.is_empty() {
        match serde_json::from_slice::<Value>(&response.body) {
            Ok(json) => {
                for body_check in &expect.body {
                    if let Err(e) = check_body(body_check, &json, vars) {
                        failures.push(format!("body {}: {e}", body_check.at));
                    }
                }
            }
            Err(e) => failures.push(format!("body is not JSON ({e}): {}", excerpt(&text))),
        }
    }
    (failures, departures)
}

/// The start of a long text, for messages.
pub fn excerpt(text: &str) -> String {
    const MAX: usize = 300;
    let text = text.trim();
    if text.len() <= MAX {
        return text.to_owned();
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Checks one string; `None` is an absent header.
fn check_text(
    m: &TextMatch,
    value: Option<&str>,
    vars: &mut Vars,
) -> std::result::Result<(), String> {
    let sub = |vars: &mut Vars, s: &str| vars.substitute(s).map_err(|e| e.to_string());
    match (m.present, value) {
        (Some(false), Some(v)) => return Err(format!("present ({v:?}) but must not be")),
        (Some(false), None) => return Ok(()),
        (_, None) => {
            let wants_something = m.present == Some(true)
                || m.equals.is_some()
                || m.starts_with.is_some()
                || m.contains.is_some()
                || m.empty == Some(false);
            return if wants_something {
                Err("absent".to_owned())
            } else {
                Ok(())
            };
        }
        _ => {}
    }
    let value = value.unwrap_or_default();
    if let Some(want) = &m.equals {
        let want = sub(vars, want)?;
        if value != want {
            return Err(format!("{} is not {want:?}", quote(value)));
        }
    }
    if let Some(want) = &m.starts_with {
        let want = sub(vars, want)?;
        if !value.starts_with(&want) {
            return Err(format!("{} does not start with {want:?}", quote(value)));
        }
    }
    if let Some(want) = &m.contains {
        let want = sub(vars, want)?;
        if !value.contains(&want) {
            return Err(format!("{} does not contain {want:?}", quote(value)));
        }
    }
    if let Some(unwanted) = &m.not_contains {
        let unwanted = sub(vars, unwanted)?;
        if value.contains(&unwanted) {
            return Err(format!("{} contains {unwanted:?}", quote(value)));
        }
    }
    if let Some(empty) = m.empty {
        if value.trim().is_empty() != empty {
            return Err(if empty {
                format!("{} is not empty", quote(value))
            } else {
                "is empty".to_owned()
            });
        }
    }
    Ok(())
}

fn quote(value: &str) -> String {
    format!("{:?}", excerpt(value))
}

/// An expected value from the case, as JSON, with `{var}` filled into its strings.
fn expected_json(value: &toml::Value, vars: &mut Vars) -> std::result::Result<Value, String> {
    let mut json = serde_json::to_value(value).map_err(|e| e.to_string())?;
    fill(&mut json, vars)?;
    Ok(json)
}

fn fill(value: &mut Value, vars: &mut Vars) -> std::result::Result<(), String> {
    match value {
        Value::String(s) => *s = vars.substitute(s).map_err(|e| e.to_string())?,
        Value::Array(items) => {
            for item in items {
                fill(item, vars)?;
            }
        }
        Value::Object(map) => {
            for item in map.values_mut() {
                fill(item, vars)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// JSON equality where numbers compare by value (`5.0` equals `5`), whatever serde_json's
/// number representation in this build.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.to_string() == y.to_string(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

fn check_body(c: &BodyCheck, json: &Value, vars: &mut Vars) -> std::result::Result<(), String> {
    let found = select(json, &c.at);
    let shown = || {
        let list: Vec<String> = found.iter().map(|v| excerpt(&v.to_string())).collect();
        format!("[{}]", list.join(", "))
    };
    if let Some(exists) = c.exists {
        if found.is_empty() == exists {
            return Err(if exists {
                "absent".to_owned()
            } else {
                format!("present: {}", shown())
            });
        }
    }
    if let Some(want) = &c.equals {
        let want = expected_json(want, vars)?;
        if found.is_empty() || !found.iter().all(|v| json_eq(v, &want)) {
            return Err(format!("{} is not {want}", shown()));
        }
    }
    if let Some(want) = &c.any_equals {
        let want = expected_json(want, vars)?;
        if !found.iter().any(|v| json_eq(v, &want)) {
            return Err(format!("no value in {} is {want}", shown()));
        }
    }
    if let Some(unwanted) = &c.none_equals {
        let unwanted = expected_json(unwanted, vars)?;
        if found.iter().any(|v| json_eq(v, &unwanted)) {
            return Err(format!("{} holds {unwanted}", shown()));
        }
    }
    if let Some(want) = &c.values {
        let want = want
            .iter()
            .map(|v| expected_json(v, vars))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if found.len() != want.len() || !found.iter().zip(&want).all(|(v, w)| json_eq(v, w)) {
            return Err(format!("{} is not {}", shown(), Value::Array(want)));
        }
    }
    if let Some(count) = c.count {
        if found.len() != count {
            return Err(format!(
                "{} values where {count} were expected: {}",
                found.len(),
                shown()
            ));
        }
    }
    if let Some(min) = c.min_count {
        if found.len() < min {
            return Err(format!(
                "{} values where at least {min} were expected",
                found.len()
            ));
        }
    }
    if let Some(prefix) = &c.starts_with {
        let prefix = vars.substitute(prefix).map_err(|e| e.to_string())?;
        let all = !found.is_empty()
            && found
                .iter()
                .all(|v| v.as_str().is_some_and(|s| s.starts_with(&prefix)));
        if !all {
            return Err(format!(
                "not every value of {} starts with {prefix:?}",
                shown()
            ));
        }
    }
    if let Some(part) = &c.contains {
        let part = vars.substitute(part).map_err(|e| e.to_string())?;
        if !found
            .iter()
            .any(|v| v.as_str().is_some_and(|s| s.contains(&part)))
        {
            return Err(format!("no value of {} contains {part:?}", shown()));
        }
    }
    Ok(())
}

/// The value a capture takes from an answer, if it finds one.
pub fn captured(capture: &Capture, response: &Response) -> Option<String> {
    let whole = if let Some(pointer) = &capture.at {
        let json: Value = serde_json::from_slice(&response.body).ok()?;
        let first = select(&json, pointer).into_iter().next()?.clone();
        match first {
            Value::String(s) => s,
            Value::Null => return None,
            other => other.to_string(),
        }
    } else {
        response.header(capture.header.as_deref()?)?.to_owned()
    };
    let mut value = whole.as_str();
    if let Some(after) = &capture.after {
        value = &value[value.find(after.as_str())? + after.len()..];
    }
    if let Some(before) = &capture.before {
        if let Some(end) = value.find(before.as_str()) {
            value = &value[..end];
        }
    }
    (!value.is_empty()).then(|| value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Response {
        Response {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), (*v).to_owned()))
                .collect(),
            body: Bytes::from(body.to_owned()),
        }
    }

    fn expect(toml_text: &str) -> Expect {
        toml::from_str(toml_text).unwrap()
    }

    const CREATED: &str = r#"{"resourceType":"Patient","id":"abc","meta":{"versionId":"1"},
        "name":[{"family":"Lovelace","given":["Ada","King"]}],"multipleBirthInteger":2}"#;

    #[test]
    fn status_headers_and_body_checks_pass_on_a_good_answer() {
        let mut vars = Vars::new("http://h/fhir");
        vars.set("id", "abc".to_owned());
        let e = expect(
            r#"
status = [200, 201]
headers.Location = { starts_with = "{base}/Patient/{id}", contains = "/_history/1" }
headers.etag = { equals = 'W/"1"' }
headers.Content-Location = { present = false }
body = [
  { at = "/id", equals = "{id}" },
  { at = "/name/0/given/*", values = ["Ada", "King"] },
  { at = "/name/*/given/*", count = 2, any_equals = "King", none_equals = "Grace" },
  { at = "/multipleBirthInteger", equals = 2.0 },
  { at = "/photo", exists = false },
  { at = "/name/0/family", starts_with = "Love", contains = "lace" },
]
"#,
        );
        let r = response(
            201,
            &[
                ("Location", "http://h/fhir/Patient/abc/_history/1"),
                ("ETag", "W/\"1\""),
            ],
            CREATED,
        );
        let (failures, departures) = check(&e, &r, &mut vars);
        assert!(failures.is_empty(), "{failures:#?}");
        assert!(departures.is_empty());
    }

    #[test]
    fn each_failed_expectation_is_reported() {
        let mut vars = Vars::new("http://h/fhir");
        let e = expect(
            r#"
status = 200
headers.Location = { present = true }
text = { empty = true }
body = [
  { at = "/id", equals = "xyz" },
  { at = "/name/*/given/*", count = 3 },
  { at = "/photo", exists = true },
]
"#,
        );
        let (failures, _) = check(&e, &response(201, &[], CREATED), &mut vars);
        assert_eq!(failures.len(), 6, "{failures:#?}");
        assert!(
            failures[0].starts_with("status 201 where 200"),
            "{}",
            failures[0]
        );
    }

    #[test]
    fn an_accepted_departure_is_recorded_not_failed() {
        let mut vars = Vars::new("b");
        let e = expect("status = [409, 412]\nspec_status = 412\nnote = \"HAPI answers 409\"");
        let (failures, departures) = check(&e, &response(409, &[], "{}"), &mut vars);
        assert!(failures.is_empty());
        assert_eq!(departures, ["409 where FHIR R4 says 412: HAPI answers 409"]);
        let (_, departures) = check(&e, &response(412, &[], "{}"), &mut vars);
        assert!(departures.is_empty());
    }

    #[test]
    fn body_checks_on_a_non_json_body_fail() {
        let mut vars = Vars::new("b");
        let e = expect("body = [ { at = \"/id\", exists = true } ]");
        let (failures, _) = check(&e, &response(200, &[], "<Patient/>"), &mut vars);
        assert_eq!(failures.len(), 1);
    }

    #[test]
    fn captures_from_body_and_headers_with_cuts() {
        let r = response(
            201,
            &[
                ("Location", "http://h/fhir/Patient/abc/_history/1"),
                ("ETag", "W/\"1\""),
            ],
            CREATED,
        );
        let body = Capture {
            at: Some("/name/0/family".to_owned()),
            ..Capture::default()
        };
        assert_eq!(captured(&body, &r).as_deref(), Some("Lovelace"));
        let id = Capture {
            header: Some("location".to_owned()),
            after: Some("/Patient/".to_owned()),
            before: Some("/".to_owned()),
            ..Capture::default()
        };
        assert_eq!(captured(&id, &r).as_deref(), Some("abc"));
        let version = Capture {
            header: Some("ETag".to_owned()),
            after: Some("W/\"".to_owned()),
            before: Some("\"".to_owned()),
            ..Capture::default()
        };
        assert_eq!(captured(&version, &r).as_deref(), Some("1"));
        let missing = Capture {
            at: Some("/photo".to_owned()),
            ..Capture::default()
        };
        assert_eq!(captured(&missing, &r), None);
    }

    #[test]
    fn numbers_compare_by_value() {
        assert!(json_eq(&serde_json::json!(5), &serde_json::json!(5.0)));
        assert!(!json_eq(&serde_json::json!(5), &serde_json::json!("5")));
    }
}
