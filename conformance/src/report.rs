//! What a run says: a table for people, JUnit XML for CI.

use std::fmt;

use crate::suite::{CaseResult, Report};

impl Report {
    /// A plain-text table (case, area, expected, got, result), then the failures, departures
    /// and notes case by case, then a summary line.
    pub fn table(&self) -> String {
        Table(self).to_string()
    }

    /// JUnit XML: one `testsuite` for the run, one `testcase` per case (`classname` is the mode
    /// and area), failures as `failure`, departures and notes in `system-out`.
    pub fn junit(&self) -> String {
        Junit(self).to_string()
    }
}

fn verdict(r: &CaseResult) -> &'static str {
    match (r.passed, r.departures.is_empty()) {
        (false, _) => "FAIL",
        (true, true) => "pass",
        (true, false) => "pass (departs)",
    }
}

struct Table<'a>(&'a Report);

impl fmt::Display for Table<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let report = self.0;
        let target = match &report.reference {
            Some(reference) => format!("{} against reference {reference}", report.endpoint),
            None => report.endpoint.clone(),
        };
        writeln!(f, "fhirseal-conformance, {} mode: {target}\n", report.mode)?;
        let header = ["case", "area", "expected", "got", "result"].map(str::to_owned);
        let rows: Vec<[String; 5]> = report
            .results
            .iter()
            .map(|r| {
                [
                    r.name.clone(),
                    r.area.clone(),
                    r.expected.clone(),
                    r.got.clone(),
                    verdict(r).to_owned(),
                ]
            })
            .collect();
        let mut widths = header.clone().map(|h| h.len());
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |f: &mut fmt::Formatter<'_>, cells: &[String; 5]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            writeln!(f, "{}", padded.join("  ").trim_end())
        };
        line(f, &header)?;
        line(f, &widths.map(|w| "-".repeat(w)))?;
        for row in &rows {
            line(f, row)?;
        }
        for r in &report.results {
            if r.failures.is_empty() && r.departures.is_empty() && r.notes.is_empty() {
                continue;
            }
            writeln!(f, "\n{} ({}):", r.name, verdict(r))?;
            for failure in &r.failures {
                writeln!(f, "  failure: {failure}")?;
            }
            for departure in &r.departures {
                writeln!(f, "  departure: {departure}")?;
            }
            for note in &r.notes {
                writeln!(f, "  note: {note}")?;
            }
        }
        let departing = report
            .results
            .iter()
            .filter(|r| !r.departures.is_empty())
            .count();
        writeln!(
            f,
            "\n{} cases: {} passed ({departing} with a recorded departure from FHIR R4), {} failed, in {:.1} s",
            report.results.len(),
            report.results.len() - report.failed(),
            report.failed(),
            report.duration.as_secs_f64()
        )
    }
}

struct Junit<'a>(&'a Report);

impl fmt::Display for Junit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let report = self.0;
        let name = match &report.reference {
            Some(reference) => format!("{} {} vs {reference}", report.mode, report.endpoint),
            None => format!("{} {}", report.mode, report.endpoint),
        };
        let seconds = report.duration.as_secs_f64();
        writeln!(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>")?;
        writeln!(
            f,
            "<testsuites name=\"fhirseal-conformance\" tests=\"{}\" failures=\"{}\" time=\"{seconds:.3}\">",
            report.results.len(),
            report.failed(),
        )?;
        writeln!(
            f,
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"0\" time=\"{seconds:.3}\">",
            escape(&name),
            report.results.len(),
            report.failed(),
        )?;
        for r in &report.results {
            write!(
                f,
                "    <testcase classname=\"{}.{}\" name=\"{}\" time=\"{:.3}\"",
                escape(&report.mode),
                escape(&r.area),
                escape(&r.name),
                r.duration.as_secs_f64()
            )?;
            let mut said: Vec<String> = Vec::new();
            said.extend(r.departures.iter().map(|d| format!("departure: {d}")));
            said.extend(r.notes.iter().map(|n| format!("note: {n}")));
            if r.failures.is_empty() && said.is_empty() {
                writeln!(f, "/>")?;
                continue;
            }
            writeln!(f, ">")?;
            if let Some(first) = r.failures.first() {
                let detail = format!(
                    "expected {}\ngot {}\n{}",
                    r.expected,
                    r.got,
                    r.failures.join("\n")
                );
                writeln!(
                    f,
                    "      <failure message=\"{}\" type=\"{}\">{}</failure>",
                    escape(first),
                    escape(&report.mode),
                    escape(&detail)
                )?;
            }
            if !said.is_empty() {
                writeln!(
                    f,
                    "      <system-out>{}</system-out>",
                    escape(&said.join("\n"))
                )?;
            }
            writeln!(f, "    </testcase>")?;
        }
        writeln!(f, "  </testsuite>\n</testsuites>")
    }
}

/// XML text and attribute escaping; characters XML 1.0 cannot hold become U+FFFD.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn result(name: &str, passed: bool) -> CaseResult {
        CaseResult {
            name: name.to_owned(),
            area: "create".to_owned(),
            about: String::new(),
            expected: "201".to_owned(),
            got: if passed { "201" } else { "400" }.to_owned(),
            passed,
            failures: if passed {
                vec![]
            } else {
                vec!["POST Patient: status 400 <where> 201 & \"x\"".to_owned()]
            },
            departures: if passed {
                vec!["409 where FHIR R4 says 412".to_owned()]
            } else {
                vec![]
            },
            notes: vec![],
            duration: Duration::from_millis(12),
        }
    }

    fn report() -> Report {
        Report {
            mode: "conformance".to_owned(),
            endpoint: "http://h/fhir".to_owned(),
            reference: None,
            results: vec![
                result("create-default", true),
                result("create-minimal", false),
            ],
            duration: Duration::from_millis(50),
        }
    }

    #[test]
    fn the_table_has_a_row_per_case_and_the_reasons() {
        let table = report().table();
        assert!(
            table.contains("create-default  create  201       201  pass (departs)"),
            "{table}"
        );
        assert!(
            table.contains("create-minimal  create  201       400  FAIL"),
            "{table}"
        );
        assert!(
            table.contains("failure: POST Patient: status 400"),
            "{table}"
        );
        assert!(
            table
                .contains("2 cases: 1 passed (1 with a recorded departure from FHIR R4), 1 failed"),
            "{table}"
        );
    }

    #[test]
    fn junit_is_escaped_and_counts_failures() {
        let xml = report().junit();
        assert!(
            xml.contains("<testsuites name=\"fhirseal-conformance\" tests=\"2\" failures=\"1\""),
            "{xml}"
        );
        assert!(
            xml.contains("<testcase classname=\"conformance.create\" name=\"create-minimal\""),
            "{xml}"
        );
        assert!(
            xml.contains("status 400 &lt;where&gt; 201 &amp; &quot;x&quot;"),
            "{xml}"
        );
        assert!(
            xml.contains("<system-out>departure: 409 where FHIR R4 says 412</system-out>"),
            "{xml}"
        );
        assert_eq!(xml.matches("<testcase ").count(), 2);
        assert_eq!(xml.matches("</testcase>").count(), 2);
        assert_eq!(escape("a\u{1}b"), "a\u{FFFD}b");
    }
}
