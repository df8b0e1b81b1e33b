//! Privacy mode: a restricted reader must never see the identity the suite posted.
//!
//! A privacy case posts patients as a writer (who may see identity) and reads, searches and
//! pages through them as the reader; every answer the reader gets, headers and body, is scanned
//! for each identity string the case declares, in the forms a server might print it.

use crate::http::Response;
use crate::run::CaseRun;

/// The forms of one identity string to look for: as written, in lower case, and, for strings
/// with digits and separators (phones, SSNs, dates), the digits alone.
pub fn forms(identity: &str) -> Vec<String> {
    let mut forms = vec![identity.to_owned(), identity.to_lowercase()];
    let digits: String = identity.chars().filter(char::is_ascii_digit).collect();
    let only_digits_and_separators = identity
        .chars()
        .all(|c| c.is_ascii_digit() || " -+().".contains(c));
    if only_digits_and_separators && digits.len() >= 7 {
        forms.push(digits);
    }
    // A value of a query string or a link comes back percent-encoded.
    let encoded: String =
        percent_encoding::utf8_percent_encode(identity, percent_encoding::NON_ALPHANUMERIC)
            .to_string();
    forms.push(encoded);
    forms.sort();
    forms.dedup();
    forms.retain(|f| f.len() >= 4);
    forms
}

/// Where an identity string appears in an answer: `header NAME` or `body`.
pub fn leaks(response: &Response, identity: &[String]) -> Vec<String> {
    let body = response.text();
    let body_lower = body.to_lowercase();
    let mut found = Vec::new();
    for value in identity {
        let forms = forms(value);
        let seen = |text: &str, lower: &str| {
            forms
                .iter()
                .any(|f| text.contains(f.as_str()) || lower.contains(&f.to_lowercase()))
        };
        for (name, header) in &response.headers {
            if seen(header, &header.to_lowercase()) {
                found.push(format!("{value:?} in header {name}"));
            }
        }
        if seen(&body, &body_lower) {
            found.push(format!("{value:?} in the body"));
        }
    }
    found
}

/// The leaks of a run: every reader step's answer, scanned for the case's identity strings
/// (substituted with the run's variables). Writer steps are not scanned: the writer may see.
pub fn scan(run: &CaseRun, reader_steps: &[bool], identity: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for (step, is_reader) in run.steps.iter().zip(reader_steps) {
        if !is_reader {
            continue;
        }
        if let Some(response) = &step.response {
            found.extend(
                leaks(response, identity)
                    .into_iter()
                    .map(|l| format!("{}: {l}", step.label)),
            );
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn response(headers: &[(&str, &str)], body: &str) -> Response {
        Response {
            status: 200,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            body: Bytes::from(body.to_owned()),
        }
    }

    #[test]
    fn forms_cover_case_digits_and_encoding() {
        let f = forms("+1 555-0142-77");
        assert!(f.contains(&"1555014277".to_owned()), "{f:?}");
        let f = forms("Quill Street 7");
        assert!(f.contains(&"quill street 7".to_owned()));
        assert!(f.contains(&"Quill%20Street%207".to_owned()));
        // Names have no digits form; short strings are too common to mean anything.
        assert!(forms("Ada").is_empty());
    }

    #[test]
    fn finds_identity_in_bodies_and_headers_and_nothing_else() {
        let identity = vec!["Zelinska".to_owned(), "1961-07-23".to_owned()];
        let clean = response(
            &[("etag", "W/\"1\"")],
            r#"{"resourceType":"Patient","gender":"female"}"#,
        );
        assert!(leaks(&clean, &identity).is_empty());
        let body = response(
            &[],
            r#"{"name":[{"family":"ZELINSKA"}],"birthDate":"19610723"}"#,
        );
        assert_eq!(leaks(&body, &identity).len(), 2);
        let header = response(&[("location", "http://h/fhir/Patient?family=Zelinska")], "");
        assert_eq!(
            leaks(&header, &identity),
            [r#""Zelinska" in header location"#]
        );
    }
}
