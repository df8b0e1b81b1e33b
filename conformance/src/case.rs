//! The case format: what an integration engineer writes, in TOML, to add a case without Rust.
//!
//! A file holds one or more `[[case]]` tables; a case is an ordered list of `[[case.step]]`s; a
//! step is one HTTP request and what its answer must look like. `conformance/README.md` documents
//! every field; this module only parses and checks them, it sends nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use crate::{Error, Result};

/// The cases compiled into the binary, so that it works from any directory.
const BUILTIN: &[(&str, &str)] = &[
    (
        "10_capabilities.toml",
        include_str!("../cases/10_capabilities.toml"),
    ),
    ("20_create.toml", include_str!("../cases/20_create.toml")),
    ("30_read.toml", include_str!("../cases/30_read.toml")),
    ("40_update.toml", include_str!("../cases/40_update.toml")),
    ("50_delete.toml", include_str!("../cases/50_delete.toml")),
    ("60_history.toml", include_str!("../cases/60_history.toml")),
    ("70_search.toml", include_str!("../cases/70_search.toml")),
    (
        "80_conditional.toml",
        include_str!("../cases/80_conditional.toml"),
    ),
    ("90_bundles.toml", include_str!("../cases/90_bundles.toml")),
    ("a0_patch.toml", include_str!("../cases/a0_patch.toml")),
    (
        "b0_versioning.toml",
        include_str!("../cases/b0_versioning.toml"),
    ),
    ("c0_formats.toml", include_str!("../cases/c0_formats.toml")),
    ("d0_errors.toml", include_str!("../cases/d0_errors.toml")),
    ("p0_privacy.toml", include_str!("../cases/p0_privacy.toml")),
];

/// The names of the built-in case files, for the test that keeps the list and the folder equal.
pub fn builtin_files() -> impl Iterator<Item = &'static str> {
    BUILTIN.iter().map(|(name, _)| *name)
}

/// One file of cases.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    /// Steps shared by several cases of the file (`setup = "name"`), e.g. the data a group of
    /// search cases looks for; each case runs them anew, with its own `{unique}`.
    #[serde(default)]
    fixture: BTreeMap<String, Fixture>,
    #[serde(rename = "case", default)]
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    #[serde(rename = "step")]
    steps: Vec<Step>,
}

/// The mode a case belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// FHIR R4 behaviour; also what differential mode compares.
    #[default]
    Conformance,
    /// Posts identity as a writer and reads it back as a restricted reader (`--privacy` only).
    Privacy,
}

/// Whose credentials a step uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The suite's client (`--header`).
    #[default]
    Client,
    /// A principal who may see identity (`--writer-header`, else `--header`).
    Writer,
}

/// How much of a step differential mode compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compare {
    /// Status, key headers and the normalized body.
    #[default]
    Body,
    /// Status and key headers: for answers that depend on what else is on the server.
    Headers,
    /// The status only.
    Status,
}

/// One case: a named, ordered list of requests.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Unique across the suite, e.g. `create-return-minimal`.
    pub name: String,
    /// The area of the specification, used to group cases in the report (`create`, `search`, …).
    pub area: String,
    /// What the case shows, in a sentence.
    #[serde(default)]
    pub about: String,
    /// Where the server under test is allowed to or known to depart from FHIR R4, and how.
    #[serde(default)]
    pub departure: Option<String>,
    #[serde(default)]
    pub mode: Mode,
    /// Privacy cases: strings that a restricted reader must never see (after substitution).
    #[serde(default)]
    pub identity: Vec<String>,
    /// The name of a fixture of the same file whose steps run before the case's own.
    #[serde(default)]
    pub setup: Option<String>,
    /// Where the case came from (a file name), for messages.
    #[serde(skip)]
    pub source: String,
    #[serde(rename = "step")]
    pub steps: Vec<Step>,
}

/// One request and what its answer must look like.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Shown in the report; defaults to `METHOD path`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub role: Role,
    pub method: String,
    /// Relative to the endpoint's base (`Patient/{id}`), or an absolute URL (`{next}`).
    pub path: String,
    /// Request headers, with `{var}` substitution in the values.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The request body, with `{var}` substitution.
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub expect: Expect,
    /// Variables taken from the answer for later steps.
    #[serde(default)]
    pub capture: BTreeMap<String, Capture>,
    /// What differential mode compares for this step.
    #[serde(default)]
    pub compare: Compare,
    /// JSON pointers (with `*`) removed from both bodies before a differential comparison.
    #[serde(default)]
    pub ignore: Vec<String>,
}

impl Step {
    /// The step's name in the report.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{} {}", self.method, self.path))
    }
}

/// What the answer to a step must look like. Every field is optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The statuses accepted: one number or a list.
    #[serde(default, deserialize_with = "one_or_many")]
    pub status: Vec<u16>,
    /// The status FHIR R4 asks for, when `status` also accepts a known departure from it.
    #[serde(default)]
    pub spec_status: Option<u16>,
    /// Why `status` accepts more than `spec_status` (shown when the departure is seen).
    #[serde(default)]
    pub note: Option<String>,
    /// Response headers by name (case-insensitive).
    #[serde(default)]
    pub headers: BTreeMap<String, TextMatch>,
    /// The raw body as text.
    #[serde(default)]
    pub text: Option<TextMatch>,
    /// Checks on the body parsed as JSON.
    #[serde(default)]
    pub body: Vec<BodyCheck>,
}

/// Checks on one string (a header value or the body text). All given fields must hold.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TextMatch {
    /// The header is (or is not) there; `false` forbids it.
    pub present: Option<bool>,
    pub equals: Option<String>,
    pub starts_with: Option<String>,
    pub contains: Option<String>,
    pub not_contains: Option<String>,
    /// The text is empty (or only whitespace).
    pub empty: Option<bool>,
}

/// A check on the JSON body at a pointer. `at` is an RFC 6901 JSON pointer extended with `*`
/// (every element) and `[key=value]` (the elements whose `key` is the string `value`); it
/// selects zero or more values.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyCheck {
    pub at: String,
    /// Something is (or nothing is) selected.
    pub exists: Option<bool>,
    /// At least one value is selected and every selected value equals this.
    pub equals: Option<toml::Value>,
    /// Some selected value equals this.
    pub any_equals: Option<toml::Value>,
    /// No selected value equals this.
    pub none_equals: Option<toml::Value>,
    /// The selected values, in order, are exactly these.
    pub values: Option<Vec<toml::Value>>,
    /// Exactly this many values are selected.
    pub count: Option<usize>,
    /// At least this many values are selected.
    pub min_count: Option<usize>,
    /// At least one value is selected and every one is a string starting with this.
    pub starts_with: Option<String>,
    /// Some selected value is a string containing this.
    pub contains: Option<String>,
}

/// Where a captured variable comes from: `at` (a body pointer, first value selected) or
/// `header`; optionally cut to what lies after `after` and before `before`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Capture {
    pub at: Option<String>,
    pub header: Option<String>,
    pub after: Option<String>,
    pub before: Option<String>,
}

/// A status as `201` or `[200, 204]`.
fn one_or_many<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> std::result::Result<Vec<u16>, D::Error> {
    struct OneOrMany;
    impl<'de> Visitor<'de> for OneOrMany {
        type Value = Vec<u16>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a status code or a list of status codes")
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Self::Value, E> {
            u16::try_from(v)
                .map(|s| vec![s])
                .map_err(|_| E::custom(format!("{v} is not a status code")))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Self::Value, E> {
            u16::try_from(v)
                .map(|s| vec![s])
                .map_err(|_| E::custom(format!("{v} is not a status code")))
        }
        fn visit_seq<A: SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(status) = seq.next_element::<u16>()? {
                out.push(status);
            }
            Ok(out)
        }
    }
    deserializer.deserialize_any(OneOrMany)
}

/// Parses one file of cases and checks them.
pub fn parse(source: &str, text: &str) -> Result<Vec<Case>> {
    let file: CaseFile = toml::from_str(text).map_err(|e| Error::Case {
        source_name: source.to_owned(),
        message: e.to_string(),
    })?;
    let mut cases = file.cases;
    for case in &mut cases {
        case.source = source.to_owned();
        if let Some(name) = &case.setup {
            let fixture = file
                .fixture
                .get(name)
                .ok_or_else(|| case.invalid(format!("no [fixture.{name}] in this file")))?;
            let own = std::mem::take(&mut case.steps);
            case.steps = fixture.steps.iter().cloned().chain(own).collect();
        }
        case.validate()?;
    }
    Ok(cases)
}

impl Case {
    fn invalid(&self, message: impl Into<String>) -> Error {
        Error::Case {
            source_name: format!("{} ({})", self.source, self.name),
            message: message.into(),
        }
    }

    /// What the type system cannot say: known methods, one source per capture, sane checks.
    fn validate(&self) -> Result<()> {
        if self.name.trim().is_empty() {
            return Err(self.invalid("a case needs a name"));
        }
        if self.steps.is_empty() {
            return Err(self.invalid("a case needs at least one step"));
        }
        if self.mode == Mode::Privacy && self.identity.is_empty() {
            return Err(self.invalid("a privacy case lists the identity strings it posts"));
        }
        for step in &self.steps {
            if http::Method::from_bytes(step.method.as_bytes()).is_err() {
                return Err(self.invalid(format!("bad method {:?}", step.method)));
            }
            for status in step.expect.status.iter().chain(&step.expect.spec_status) {
                if !(100..=599).contains(status) {
                    return Err(self.invalid(format!("{status} is not an HTTP status")));
                }
            }
            if let Some(spec) = step.expect.spec_status {
                if !step.expect.status.contains(&spec) {
                    return Err(self.invalid(format!(
                        "spec_status {spec} must be one of the accepted statuses"
                    )));
                }
            }
            for (name, capture) in &step.capture {
                if capture.at.is_some() == capture.header.is_some() {
                    return Err(self.invalid(format!(
                        "capture {name}: give exactly one of `at` and `header`"
                    )));
                }
            }
            for check in &step.expect.body {
                if !check.at.is_empty() && !check.at.starts_with('/') {
                    return Err(self.invalid(format!(
                        "body check at {:?}: a JSON pointer starts with '/'",
                        check.at
                    )));
                }
            }
        }
        Ok(())
    }
}

/// A set of cases: the built-in ones and any loaded from folders.
#[derive(Debug, Clone, Default)]
pub struct Suite {
    pub cases: Vec<Case>,
}

impl Suite {
    /// The cases compiled into the crate.
    pub fn builtin() -> Result<Self> {
        let mut suite = Self::default();
        for (name, text) in BUILTIN {
            suite.add(parse(name, text)?)?;
        }
        Ok(suite)
    }

    /// Adds every `*.toml` file of `dir` (not recursive), in name order.
    pub fn load_dir(&mut self, dir: &Path) -> Result<()> {
        let io = |e: std::io::Error| Error::Io {
            path: dir.display().to_string(),
            source: e,
        };
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|x| x == "toml") {
                files.push(path);
            }
        }
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::Io {
                path: path.display().to_string(),
                source: e,
            })?;
            self.add(parse(&path.display().to_string(), &text)?)?;
        }
        Ok(())
    }

    /// Adds cases, refusing a name already taken (names are how reports and filters find them).
    pub fn add(&mut self, cases: Vec<Case>) -> Result<()> {
        for case in cases {
            if self.cases.iter().any(|c| c.name == case.name) {
                return Err(Error::Case {
                    source_name: case.source.clone(),
                    message: format!("case name {:?} is used twice", case.name),
                });
            }
            self.cases.push(case);
        }
        Ok(())
    }

    /// Keeps the cases of `mode` whose name or area contains one of `filters` (all if empty).
    /// The cases of `mode` that match one of `filters` (all when empty) and are not named in
    /// `skip` (exact case names).
    pub fn select(&self, mode: Mode, filters: &[String], skip: &[String]) -> Vec<Case> {
        self.cases
            .iter()
            .filter(|c| c.mode == mode)
            .filter(|c| !skip.contains(&c.name))
            .filter(|c| {
                filters.is_empty()
                    || filters
                        .iter()
                        .any(|f| c.name.contains(f.as_str()) || c.area == *f)
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = r#"
[[case]]
name = "create"
area = "create"
[[case.step]]
method = "POST"
path = "Patient"
headers = { Content-Type = "application/fhir+json" }
body = '{"resourceType":"Patient"}'
expect.status = 201
expect.headers.Location = { starts_with = "{base}/Patient/", contains = "/_history/" }
expect.body = [ { at = "/resourceType", equals = "Patient" } ]
capture.id = { at = "/id" }

[[case.step]]
method = "PUT"
path = "Patient/{id}"
expect.status = [409, 412]
expect.spec_status = 412
expect.note = "HAPI says 409"
compare = "status"
"#;

    #[test]
    fn parses_a_small_case() {
        let cases = parse("small.toml", SMALL).unwrap();
        assert_eq!(cases.len(), 1);
        let case = &cases[0];
        assert_eq!(case.source, "small.toml");
        assert_eq!(case.mode, Mode::Conformance);
        assert_eq!(case.steps[0].expect.status, vec![201]);
        assert_eq!(
            case.steps[0].expect.headers["Location"].contains.as_deref(),
            Some("/_history/")
        );
        assert_eq!(case.steps[0].capture["id"].at.as_deref(), Some("/id"));
        assert_eq!(case.steps[1].expect.status, vec![409, 412]);
        assert_eq!(case.steps[1].compare, Compare::Status);
        assert_eq!(case.steps[1].label(), "PUT Patient/{id}");
    }

    #[test]
    fn refuses_unknown_fields_and_bad_values() {
        let typo = SMALL.replace("expect.status = 201", "expect.stauts = 201");
        assert!(matches!(parse("t", &typo), Err(Error::Case { .. })));
        let bad_status = SMALL.replace("expect.status = 201", "expect.status = 2010");
        assert!(parse("t", &bad_status).is_err());
        let spec_not_accepted =
            SMALL.replace("expect.spec_status = 412", "expect.spec_status = 400");
        assert!(parse("t", &spec_not_accepted).is_err());
        let two_sources = SMALL.replace(
            "capture.id = { at = \"/id\" }",
            "capture.id = { at = \"/id\", header = \"ETag\" }",
        );
        assert!(parse("t", &two_sources).is_err());
        let bad_pointer = SMALL.replace("at = \"/resourceType\"", "at = \"resourceType\"");
        assert!(parse("t", &bad_pointer).is_err());
        let bad_method = SMALL.replace("method = \"PUT\"", "method = \"P T\"");
        assert!(parse("t", &bad_method).is_err());
    }

    #[test]
    fn privacy_cases_must_name_their_identity() {
        let privacy = SMALL.replace("area = \"create\"", "area = \"create\"\nmode = \"privacy\"");
        assert!(parse("t", &privacy).is_err());
        let named = privacy.replace(
            "mode = \"privacy\"",
            "mode = \"privacy\"\nidentity = [\"Ada\"]",
        );
        assert_eq!(parse("t", &named).unwrap()[0].mode, Mode::Privacy);
    }

    #[test]
    fn setup_prepends_the_fixture_steps() {
        let text = r#"
[fixture.data]
[[fixture.data.step]]
method = "PUT"
path = "Patient/p-{unique}"

[[case]]
name = "uses-data"
area = "search"
setup = "data"
[[case.step]]
method = "GET"
path = "Patient?_id=p-{unique}"
"#;
        let cases = parse("f", text).unwrap();
        let methods: Vec<_> = cases[0].steps.iter().map(|s| s.method.as_str()).collect();
        assert_eq!(methods, ["PUT", "GET"]);
        assert!(parse("f", &text.replace("setup = \"data\"", "setup = \"nope\"")).is_err());
    }

    #[test]
    fn names_are_unique() {
        let mut suite = Suite::default();
        suite.add(parse("a", SMALL).unwrap()).unwrap();
        assert!(suite.add(parse("b", SMALL).unwrap()).is_err());
    }

    #[test]
    fn the_builtin_suite_parses() {
        let suite = Suite::builtin().unwrap();
        assert!(suite.cases.len() > 40, "{}", suite.cases.len());
        assert!(!suite.select(Mode::Privacy, &[], &[]).is_empty());
        assert!(suite
            .select(Mode::Conformance, &["search".to_owned()], &[])
            .iter()
            .all(|c| c.area == "search" || c.name.contains("search")));
        let all = suite.select(Mode::Conformance, &[], &[]);
        let skipped = suite.select(Mode::Conformance, &[], &["read".to_owned()]);
        assert_eq!(skipped.len() + 1, all.len());
        assert!(skipped.iter().all(|c| c.name != "read"));
    }

    #[test]
    fn every_case_file_is_built_in() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("cases");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".toml"))
            .collect();
        on_disk.sort();
        let mut builtin: Vec<String> = builtin_files().map(str::to_owned).collect();
        builtin.sort();
        assert_eq!(on_disk, builtin);
    }

    #[test]
    fn load_dir_adds_files_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("b.toml"),
            SMALL.replace("\"create\"\narea", "\"b\"\narea"),
        )
        .unwrap();
        std::fs::write(dir.path().join("a.toml"), SMALL).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a case").unwrap();
        let mut suite = Suite::default();
        suite.load_dir(dir.path()).unwrap();
        let names: Vec<_> = suite.cases.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["create", "b"]);
    }
}
