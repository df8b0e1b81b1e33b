//! Identity search: the parts of a FHIR search that name identity (which the upstream no
//! longer holds) are answered from the blind index and rewritten to ids.
//!
//! `Patient?family=smi&gender=female` becomes `Patient?gender=female&_id=a,b` where `a` and
//! `b` are the patients whose family name starts with "smi"; a chain such as
//! `Observation?subject:Patient.name=smi` becomes `Observation?subject=Patient/a,Patient/b`.
//! Comma-separated values are alternatives (their matches are joined); a parameter repeated is
//! a conjunction (their matches are intersected). What cannot be answered exactly is refused
//! with the parameter's name, never answered approximately.

use std::collections::{BTreeMap, BTreeSet};

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};

use crate::identity::normalize;
use crate::profile::Profile;

/// The identity search parameters of person resources: strings (matched by prefix) …
const STRING_PARAMS: &[&str] = &[
    "name",
    "family",
    "given",
    "address",
    "address-city",
    "address-postalcode",
];
/// … and the others (tokens, the birth date, phonetic names).
const OTHER_IDENTITY_PARAMS: &[&str] = &[
    "identifier",
    "telecom",
    "phone",
    "email",
    "birthdate",
    "phonetic",
];

fn is_identity_param(name: &str) -> bool {
    STRING_PARAMS.contains(&name) || OTHER_IDENTITY_PARAMS.contains(&name)
}

/// A search parameter the sidecar cannot answer correctly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("search parameter '{param}' cannot be answered through fhirseal: {reason}")]
pub struct SearchError {
    pub param: String,
    pub reason: String,
}

fn unsupported(param: &str, reason: impl Into<String>) -> SearchError {
    SearchError {
        param: param.to_owned(),
        reason: reason.into(),
    }
}

/// One identity parameter occurrence: any of `alternatives` (blind-index key, value) matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// The parameter as the client wrote it, for messages.
    pub param: String,
    /// The person type searched in the blind index.
    pub resource_type: String,
    /// `_id`, or the reference parameter the chain hangs off (`subject`).
    pub target: String,
    pub alternatives: Vec<(String, String)>,
}

/// A search split into what passes through and what the blind index answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `name=value` pairs passed on as they came (still percent-encoded).
    pub passthrough: Vec<String>,
    pub lookups: Vec<Lookup>,
}

/// Plans the search of `resource_type` (None for a system search) given its query string (or
/// form body). `Ok(None)`: no identity parameter, pass the query unchanged.
pub fn plan(
    resource_type: Option<&str>,
    query: &str,
    profile: &Profile,
) -> Result<Option<Plan>, SearchError> {
    let mut passthrough = Vec::new();
    let mut lookups = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(raw_name);
        let value = decode(raw_value);
        match classify(resource_type, &name, profile)? {
            None => passthrough.push(pair.to_owned()),
            Some(param) => match lookup(&param, &name, &value)? {
                Some(lookup) => lookups.push(lookup),
                None => passthrough.push(pair.to_owned()),
            },
        }
    }
    if lookups.is_empty() {
        return Ok(None);
    }
    Ok(Some(Plan {
        passthrough,
        lookups,
    }))
}

/// An identity parameter, parsed.
struct Param {
    base: String,
    modifier: Option<String>,
    resource_type: String,
    target: String,
}

/// Parameters that search free text or take expressions: the blind index cannot answer them,
/// and their values (which may be a name) would reach the upstream's logs.
const FREE_TEXT_PARAMS: &[&str] = &["_filter", "_content", "_text", "_typeFilter", "_query"];

fn classify(
    resource_type: Option<&str>,
    name: &str,
    profile: &Profile,
) -> Result<Option<Param>, SearchError> {
    if FREE_TEXT_PARAMS.contains(&name) {
        return Err(unsupported(
            name,
            "free-text and filter searches would send identity to the upstream, which does not hold it",
        ));
    }
    if let Some(rest) = name.strip_prefix("_has:") {
        // `_has:Type:reference:param`: a person's identity through a reverse chain.
        let steps: Vec<&str> = rest.split(':').collect();
        if let [ty, _, param, ..] = steps.as_slice() {
            if profile.is_person(ty) && is_identity_param(split_modifier(param).0) {
                return Err(unsupported(
                    name,
                    "reverse chains onto a person's identity are not supported",
                ));
            }
        }
        return Ok(None);
    }
    let parts: Vec<&str> = name.split('.').collect();
    for part in &parts {
        match split_modifier(part).1 {
            Some("text") => {
                return Err(unsupported(
                    name,
                    "the :text modifier searches display text, which may name a person",
                ))
            }
            Some("identifier") => {
                return Err(unsupported(
                    name,
                    "the :identifier modifier searches references by a logical identifier, which fhirseal seals; chain instead, e.g. subject:Patient.identifier",
                ))
            }
            _ => {}
        }
    }
    match parts.as_slice() {
        [single] => {
            let (base, modifier) = split_modifier(single);
            if !is_identity_param(base) {
                return Ok(None);
            }
            let Some(ty) = resource_type else {
                return Err(unsupported(
                    name,
                    "identity searches across all types are not supported: name the type, e.g. Patient?name=",
                ));
            };
            if !profile.is_person(ty) {
                return Ok(None);
            }
            Ok(Some(Param {
                base: base.to_owned(),
                modifier: modifier.map(str::to_owned),
                resource_type: ty.to_owned(),
                target: "_id".to_owned(),
            }))
        }
        [reference, last] => {
            let (base, modifier) = split_modifier(last);
            if !is_identity_param(base) {
                return Ok(None);
            }
            let (ref_name, ref_type) = split_modifier(reference);
            let target_type = match ref_type {
                Some(t) => t.to_owned(),
                None if ref_name == "patient" || ref_name == "subject" => "Patient".to_owned(),
                None => {
                    return Err(unsupported(
                        name,
                        format!("name the target type, e.g. {ref_name}:Patient.{last}"),
                    ))
                }
            };
            if !profile.is_person(&target_type) {
                return Ok(None);
            }
            if resource_type.is_none() {
                return Err(unsupported(
                    name,
                    "identity searches across all types are not supported: name the type",
                ));
            }
            Ok(Some(Param {
                base: base.to_owned(),
                modifier: modifier.map(str::to_owned),
                resource_type: target_type,
                target: ref_name.to_owned(),
            }))
        }
        longer => {
            let (base, _) = split_modifier(longer.last().copied().unwrap_or(""));
            if is_identity_param(base) {
                return Err(unsupported(
                    name,
                    "chains longer than one reference are not supported on identity",
                ));
            }
            Ok(None)
        }
    }
}

/// The first parameter of `query` named like an identity search parameter (`name`,
/// `subject.family`, `birthdate:missing`, …), whatever the type: for queries that are no search
/// (an operation's parameters), where the blind index cannot answer and the value would go
/// upstream as it is.
pub fn identity_named_param(query: &str) -> Option<String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| decode(pair.split_once('=').map_or(pair, |(name, _)| name)))
        .find(|name| {
            let last = name.rsplit('.').next().unwrap_or(name);
            is_identity_param(split_modifier(last).0) || FREE_TEXT_PARAMS.contains(&name.as_str())
        })
}

/// The names of a query's parameters, decoded.
pub fn param_names(query: &str) -> Vec<String> {
    params(query).into_iter().map(|(name, _)| name).collect()
}

/// A query's `name=value` pairs in order, decoded (a pair without `=` has an empty value).
pub fn params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect()
}

/// Whether a query (or form body) names identity, which only principals allowed to search by
/// identity may do. Queries the blind index cannot answer are the caller's error.
pub fn names_identity(
    resource_type: Option<&str>,
    query: &str,
    profile: &Profile,
) -> Result<bool, SearchError> {
    Ok(plan(resource_type, query, profile)?.is_some())
}

fn split_modifier(name: &str) -> (&str, Option<&str>) {
    match name.split_once(':') {
        Some((base, modifier)) => (base, Some(modifier)),
        None => (name, None),
    }
}

/// The blind-index alternatives of one occurrence; `None` when the upstream can answer it
/// itself (a birth year, which the clinical part keeps).
fn lookup(param: &Param, name: &str, value: &str) -> Result<Option<Lookup>, SearchError> {
    let values = split_values(value);
    if values.iter().all(String::is_empty) {
        return Err(unsupported(name, "an empty value"));
    }
    let base = param.base.as_str();
    let modifier = param.modifier.as_deref();
    let mut alternatives = Vec::new();
    if base == "phonetic" {
        return Err(unsupported(
            name,
            "phonetic matching needs the names, which only the vault holds",
        ));
    }
    if base == "birthdate" {
        if modifier == Some("missing") {
            // The clinical part keeps the birth year: whether there is a birth date is known
            // upstream.
            return Ok(None);
        }
        if modifier.is_some() {
            return Err(unsupported(name, "modifiers on birthdate"));
        }
        let parsed: Vec<(Option<&str>, &str)> = values.iter().map(|v| date_prefix(v)).collect();
        let years = parsed
            .iter()
            .filter(|(_, d)| d.len() == 4 && d.bytes().all(|b| b.is_ascii_digit()))
            .count();
        if years == parsed.len() {
            // The clinical part keeps the year: the upstream answers this itself.
            return Ok(None);
        }
        if years > 0 {
            return Err(unsupported(
                name,
                "years mixed with full dates in one parameter",
            ));
        }
        for (prefix, date) in parsed {
            if prefix.is_some_and(|p| p != "eq") {
                return Err(unsupported(name, "only equality (or a year) on birthdate"));
            }
            match date.len() {
                7 => alternatives.push(("birthdate".to_owned(), format!("m:{date}"))),
                10 => alternatives.push(("birthdate".to_owned(), format!("d:{date}"))),
                _ => {
                    return Err(unsupported(
                        name,
                        format!("'{date}' is not YYYY, YYYY-MM or YYYY-MM-DD"),
                    ))
                }
            }
        }
    } else if STRING_PARAMS.contains(&base) {
        for v in &values {
            match modifier {
                None => alternatives.push((base.to_owned(), normalize(v))),
                Some("exact") => alternatives.push((format!("{base}:exact"), v.clone())),
                Some(other) => {
                    return Err(unsupported(
                        name,
                        format!("the :{other} modifier on an identity string"),
                    ))
                }
            }
        }
    } else {
        if modifier.is_some() {
            return Err(unsupported(name, "modifiers on identity tokens"));
        }
        for v in &values {
            let key = match base {
                "phone" => v.clone(),
                "email" => v.to_lowercase(),
                _ => match split_token(v) {
                    (Some(system), value) if !system.is_empty() && value.is_empty() => {
                        if base == "telecom" {
                            return Err(unsupported(name, "a telecom system without a value"));
                        }
                        format!("s:{system}")
                    }
                    (Some(system), value) => format!("sv:{system}|{value}"),
                    (None, value) => format!("v:{value}"),
                },
            };
            alternatives.push((base.to_owned(), key));
        }
    }
    Ok(Some(Lookup {
        param: name.to_owned(),
        resource_type: param.resource_type.clone(),
        target: param.target.clone(),
        alternatives,
    }))
}

fn date_prefix(value: &str) -> (Option<&str>, &str) {
    let bytes = value.as_bytes();
    if bytes.len() > 2 && bytes[0].is_ascii_lowercase() && bytes[1].is_ascii_lowercase() {
        (Some(&value[..2]), &value[2..])
    } else {
        (None, value)
    }
}

/// `system|value` with FHIR's `\|` escape.
fn split_token(value: &str) -> (Option<String>, String) {
    let mut escaped = false;
    for (i, c) in value.char_indices() {
        match c {
            '\\' if !escaped => escaped = true,
            '|' if !escaped => return (Some(unescape(&value[..i])), unescape(&value[i + 1..])),
            _ => escaped = false,
        }
    }
    (None, unescape(value))
}

/// Splits on unescaped commas (FHIR's `\,`), keeping other escapes for the token splitter.
fn split_values(value: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut escaped = false;
    for c in value.chars() {
        match c {
            ',' if !escaped => out.push(String::new()),
            _ => {
                if let Some(last) = out.last_mut() {
                    if escaped && c == ',' {
                        last.pop();
                    }
                    last.push(c);
                }
            }
        }
        escaped = c == '\\' && !escaped;
    }
    out
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut escaped = false;
    for c in value.chars() {
        if c == '\\' && !escaped {
            escaped = true;
            continue;
        }
        escaped = false;
        out.push(c);
    }
    out
}

fn decode(raw: &str) -> String {
    percent_decode_str(&raw.replace('+', " "))
        .decode_utf8_lossy()
        .into_owned()
}

/// Characters escaped in the rewritten values (ids and `Type/id` need none of these).
const QUERY_VALUE: &AsciiSet = &CONTROLS.add(b' ').add(b'&').add(b'#').add(b'+').add(b'=');

/// An id no resource has: what a search with no identity match is rewritten to.
pub const NO_MATCH: &str = "fhirseal-no-match";

/// Per target (`_id`, `subject`, …) and person type, the ids matching every lookup of that
/// target. `matches[i]` holds the ids of the person resources matching `lookups[i]`.
fn by_target<'p>(
    plan: &'p Plan,
    matches: &[BTreeSet<String>],
) -> BTreeMap<(&'p str, &'p str), BTreeSet<String>> {
    let mut by_target: BTreeMap<(&str, &str), BTreeSet<String>> = BTreeMap::new();
    for (lookup, ids) in plan.lookups.iter().zip(matches) {
        let key = (lookup.target.as_str(), lookup.resource_type.as_str());
        by_target
            .entry(key)
            .and_modify(|acc| acc.retain(|id| ids.contains(id)))
            .or_insert_with(|| ids.clone());
    }
    by_target
}

/// The rewritten query: the passthrough pairs, then per target the intersection of its
/// lookups' matches. `matches[i]` holds the ids of the person resources matching `lookups[i]`.
pub fn render(plan: &Plan, matches: &[BTreeSet<String>]) -> String {
    let mut parts = plan.passthrough.clone();
    for ((target, resource_type), ids) in by_target(plan, matches) {
        let values: Vec<String> = if ids.is_empty() {
            vec![NO_MATCH.to_owned()]
        } else {
            ids.into_iter().collect()
        };
        let list: Vec<String> = values
            .iter()
            .map(|id| {
                if target == "_id" {
                    id.clone()
                } else {
                    format!("{resource_type}/{id}")
                }
            })
            .map(|v| utf8_percent_encode(&v, QUERY_VALUE).to_string())
            .collect();
        parts.push(format!("{target}={}", list.join(",")));
    }
    parts.join("&")
}

/// Parameters that shape a search's pages and entries but choose no resource. An identity
/// search made of these alone can be paged by the sidecar over its own ordered matches.
const PAGE_SHAPING_PARAMS: &[&str] = &[
    "_count",
    "_offset",
    "_elements",
    "_include",
    "_revinclude",
    "_format",
    "_pretty",
    "_total",
];

/// The page size of a search that names none, as HAPI FHIR's paging provider has it
/// (`deploy/hapi`).
pub const DEFAULT_PAGE: usize = 20;
/// The largest page a search paged by the sidecar serves: HAPI FHIR's largest (`deploy/hapi`),
/// so that the upstream answers each page in one.
pub const MAX_PAGE: usize = 500;

/// One page of an identity search the sidecar pages itself: the ordered ids of the matches
/// are cut into pages, and the upstream is asked for one page's ids at a time. The upstream's
/// work then follows the page, not the number of matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paging {
    /// The first match of this page (`_offset`).
    pub offset: usize,
    /// Matches per page (`_count`, at most [`MAX_PAGE`]).
    pub count: usize,
    /// The passthrough pairs but `_count` and `_offset` (still percent-encoded).
    shaping: Vec<String>,
}

impl Plan {
    /// How the sidecar pages this search, when it can: every identity criterion selects the
    /// searched resources themselves (`_id`), and nothing else narrows them, so a page of the
    /// ordered matches is a page of the answer. `None` otherwise (the upstream pages it), and
    /// for `_count=0` (a count alone) or a `_count` or `_offset` that is no number.
    pub fn paging(&self, resource_type: Option<&str>) -> Option<Paging> {
        let resource_type = resource_type?;
        if self
            .lookups
            .iter()
            .any(|l| l.target != "_id" || l.resource_type != resource_type)
        {
            return None;
        }
        let (mut count, mut offset) = (None, None);
        let mut shaping = Vec::new();
        for pair in &self.passthrough {
            let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(raw_name);
            match (name.as_str(), split_modifier(&name).0) {
                ("_count", _) => count = count.or(Some(decode(raw_value).trim().parse().ok()?)),
                ("_offset", _) => offset = offset.or(Some(decode(raw_value).trim().parse().ok()?)),
                (_, "_count" | "_offset") => return None,
                (_, base) if PAGE_SHAPING_PARAMS.contains(&base) => shaping.push(pair.clone()),
                _ => return None,
            }
        }
        let count: usize = count.unwrap_or(DEFAULT_PAGE);
        if count == 0 {
            return None;
        }
        Some(Paging {
            offset: offset.unwrap_or(0),
            count: count.min(MAX_PAGE),
            shaping,
        })
    }

    /// The ids matching the whole search, for a search [`Plan::paging`] pages (one target).
    pub fn matched(&self, matches: &[BTreeSet<String>]) -> BTreeSet<String> {
        by_target(self, matches)
            .into_values()
            .next()
            .unwrap_or_default()
    }
}

/// Ids in the order a page cuts them: ids that are numbers (HAPI FHIR's server-assigned ids,
/// in the order of their creation) as numbers, then the others in text order.
pub fn ordered(ids: BTreeSet<String>) -> Vec<String> {
    let mut ids: Vec<String> = ids.into_iter().collect();
    ids.sort_by(|a, b| {
        let numeric = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
        match (numeric(a), numeric(b)) {
            (true, true) => (a.len(), a).cmp(&(b.len(), b)),
            (true, false) => std::cmp::Ordering::Less,
            (false, true) => std::cmp::Ordering::Greater,
            (false, false) => a.cmp(b),
        }
    });
    ids
}

impl Paging {
    /// How many matches this page holds, among `total`.
    pub fn held(&self, total: usize) -> usize {
        total.saturating_sub(self.offset).min(self.count)
    }

    /// Whether a query naming every one of `ids` would be longer than `limit` bytes (then
    /// the search is better paged), without writing it.
    pub fn outgrows(&self, ids: &BTreeSet<String>, limit: usize) -> bool {
        let shaping: usize = self.shaping.iter().map(|p| p.len() + 1).sum();
        let listed: usize = ids.iter().map(|id| id.len() + 1).sum();
        shaping + "_id=".len() + listed > limit
    }

    /// The upstream's query for this page of `ids` (every match, [`ordered`]): the shaping
    /// pairs, this page's ids and its size.
    pub fn upstream_query(&self, ids: &[String]) -> String {
        let page: Vec<String> = ids
            .iter()
            .skip(self.offset)
            .take(self.count)
            .map(|id| utf8_percent_encode(id, QUERY_VALUE).to_string())
            .collect();
        let list = if page.is_empty() {
            NO_MATCH.to_owned()
        } else {
            page.join(",")
        };
        let mut parts = self.shaping.clone();
        parts.push(format!("_id={list}"));
        parts.push(format!("_count={}", self.count));
        parts.join("&")
    }

    /// The offsets of the previous and the next page, among `total` matches (from past the
    /// end, the previous page is the last).
    pub fn neighbours(&self, total: usize) -> (Option<usize>, Option<usize>) {
        let last = total.saturating_sub(1) / self.count * self.count;
        let previous = (self.offset > 0).then(|| self.offset.saturating_sub(self.count).min(last));
        let after = self.offset.saturating_add(self.count);
        let next = (after < total).then_some(after);
        (previous, next)
    }
}

/// The client's query (as it came) asking for the page at `offset`: its `_offset` pairs
/// replaced by one.
pub fn with_offset(query: &str, offset: usize) -> String {
    let mut parts: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter(|p| decode(p.split_once('=').map_or(p, |(name, _)| name)) != "_offset")
        .map(str::to_owned)
        .collect();
    parts.push(format!("_offset={offset}"));
    parts.join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(ty: &str, query: &str) -> Result<Option<Plan>, SearchError> {
        plan(Some(ty), query, &Profile::default())
    }

    #[test]
    fn non_identity_searches_pass() {
        assert_eq!(p("Patient", "gender=female&_count=2").unwrap(), None);
        assert_eq!(p("Observation", "code=1234-5&identifier=x").unwrap(), None);
        assert_eq!(p("Patient", "birthdate=1970").unwrap(), None);
        assert_eq!(p("Patient", "birthdate=ge1970,1980").unwrap(), None);
    }

    #[test]
    fn identity_params_are_planned_and_rendered() {
        let plan = p(
            "Patient",
            "family=Sm%C3%AFth,jones&gender=female&identifier=urn:mrn%7C7",
        )
        .unwrap()
        .unwrap();
        assert_eq!(plan.passthrough, vec!["gender=female"]);
        assert_eq!(
            plan.lookups[0].alternatives,
            vec![
                ("family".to_owned(), "smith".to_owned()),
                ("family".to_owned(), "jones".to_owned())
            ]
        );
        assert_eq!(
            plan.lookups[1].alternatives,
            vec![("identifier".to_owned(), "sv:urn:mrn|7".to_owned())]
        );
        let a: BTreeSet<String> = ["1", "2"].iter().map(|s| s.to_string()).collect();
        let b: BTreeSet<String> = ["2", "3"].iter().map(|s| s.to_string()).collect();
        assert_eq!(render(&plan, &[a.clone(), b]), "gender=female&_id=2");
        assert_eq!(
            render(&plan, &[a, BTreeSet::new()]),
            format!("gender=female&_id={NO_MATCH}")
        );
    }

    #[test]
    fn chains_target_the_reference() {
        let plan = p("Observation", "subject:Patient.name=ann&code=x")
            .unwrap()
            .unwrap();
        assert_eq!(plan.lookups[0].target, "subject");
        let ids: BTreeSet<String> = ["9".to_owned()].into();
        assert_eq!(render(&plan, &[ids]), "code=x&subject=Patient/9");
        let plan = p("Observation", "patient.birthdate=1970-01-02")
            .unwrap()
            .unwrap();
        assert_eq!(
            plan.lookups[0].alternatives,
            vec![("birthdate".to_owned(), "d:1970-01-02".to_owned())]
        );
        assert!(p("Observation", "performer.name=x").is_err());
        assert_eq!(
            p("Observation", "performer:Practitioner.name=x").unwrap(),
            None
        );
    }

    #[test]
    fn what_cannot_be_answered_is_refused_by_name() {
        for (query, param) in [
            ("name:contains=mit", "name:contains"),
            ("birthdate=gt1970-01-01", "birthdate"),
            ("identifier:of-type=x", "identifier:of-type"),
            ("phonetic=smith", "phonetic"),
            ("birthdate=1970,1971-02-03", "birthdate"),
            ("_filter=name eq x", "_filter"),
        ] {
            let err = p("Patient", query).unwrap_err();
            assert_eq!(err.param, param, "{query}");
        }
        let err = p("Observation", "subject.organization.name=x").unwrap_err();
        assert_eq!(err.param, "subject.organization.name");
    }

    #[test]
    fn free_text_and_unanswerable_modifiers_are_refused_everywhere() {
        let profile = Profile::default();
        for (ty, query, param) in [
            (Some("Observation"), "_content=smith", "_content"),
            (Some("Observation"), "_text=smith", "_text"),
            (Some("Observation"), "_filter=x eq y", "_filter"),
            (None, "_typeFilter=Patient?name=x", "_typeFilter"),
            (Some("Observation"), "code:text=smith", "code:text"),
            (
                Some("Observation"),
                "subject:identifier=urn:x|1",
                "subject:identifier",
            ),
            (None, "name=smith", "name"),
            (None, "subject:Patient.name=smith", "subject:Patient.name"),
            (
                Some("Patient"),
                "_has:RelatedPerson:patient:name=x",
                "_has:RelatedPerson:patient:name",
            ),
        ] {
            let err = plan(ty, query, &profile).unwrap_err();
            assert_eq!(err.param, param, "{query}");
        }
        assert!(
            !names_identity(Some("Patient"), "_has:Observation:patient:code=1", &profile).unwrap()
        );
        assert!(names_identity(Some("Patient"), "family=x", &profile).unwrap());
        assert!(!names_identity(None, "_id=1", &profile).unwrap());
    }

    #[test]
    fn escapes_in_values() {
        assert_eq!(
            split_values(r"a\,b,c"),
            vec!["a,b".to_owned(), "c".to_owned()]
        );
        assert_eq!(
            split_token(r"sys|va\|l"),
            (Some("sys".to_owned()), "va|l".to_owned())
        );
        assert_eq!(split_token("v"), (None, "v".to_owned()));
    }
    #[test]
    fn searches_of_identity_alone_are_paged_by_the_sidecar() {
        let paged = |query: &str| {
            p("Patient", query)
                .unwrap()
                .unwrap()
                .paging(Some("Patient"))
        };
        let paging = paged("family=smith&_count=2&_offset=4&_elements=name").unwrap();
        assert_eq!((paging.offset, paging.count), (4, 2));
        assert_eq!(paged("family=smith").unwrap().count, DEFAULT_PAGE);
        assert_eq!(paged("family=smith&_count=9999").unwrap().count, MAX_PAGE);
        assert!(paged("family=smith&_include:iterate=Patient:link").is_some());
        // Another criterion, an order or a count alone: the upstream pages.
        for query in [
            "family=smith&gender=female",
            "family=smith&_sort=birthdate",
            "family=smith&_summary=count",
            "family=smith&_count=0",
            "family=smith&_count=x",
            "family=smith&_offset=-1",
            "family=smith&_id=1",
            "family=smith&_offset:x=3",
            "family=smith&_count:x=3",
        ] {
            assert_eq!(paged(query), None, "{query}");
        }
        // A chain selects other resources than those matched.
        let chained = p("Observation", "subject:Patient.name=smith&_count=2")
            .unwrap()
            .unwrap();
        assert_eq!(chained.paging(Some("Observation")), None);
    }

    #[test]
    fn a_paged_search_asks_the_upstream_for_one_page_of_ids_in_order() {
        let plan = p(
            "Patient",
            "family=smith&given=jo&_count=2&_elements=name&_offset=1",
        )
        .unwrap()
        .unwrap();
        let set = |ids: &[&str]| ids.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let matched = plan.matched(&[
            set(&["10", "9", "x", "100", "b"]),
            set(&["9", "10", "100", "b"]),
        ]);
        let ids = ordered(matched);
        assert_eq!(ids, vec!["9", "10", "100", "b"]);
        let paging = plan.paging(Some("Patient")).unwrap();
        assert_eq!(
            paging.upstream_query(&ids),
            "_elements=name&_id=10,100&_count=2"
        );
        assert_eq!(paging.neighbours(ids.len()), (Some(0), Some(3)));
        let last = Paging {
            offset: 3,
            ..paging.clone()
        };
        assert_eq!(last.neighbours(4), (Some(1), None));
        let far = Paging {
            offset: usize::MAX,
            ..paging.clone()
        };
        assert_eq!(far.neighbours(4), (Some(2), None));
        assert_eq!((far.held(4), paging.held(4), last.held(4)), (0, 2, 1));
        let beyond = Paging {
            offset: 9,
            ..paging
        };
        assert_eq!(
            beyond.upstream_query(&ids),
            format!("_elements=name&_id={NO_MATCH}&_count=2")
        );
        assert_eq!(
            with_offset("family=smith&_offset=1&_count=2&_offset=5", 4),
            "family=smith&_count=2&_offset=4"
        );
    }
}
