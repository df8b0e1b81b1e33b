//! `OperationOutcome`, the one shape in which the sidecar reports its own errors.

use crate::format::Format;

/// `OperationOutcome.issue.severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    fn code(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

/// The subset of FHIR R4's `IssueType` value set that the sidecar reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueType {
    Invalid,
    Structure,
    Required,
    Value,
    Security,
    Login,
    Forbidden,
    Processing,
    NotSupported,
    NotFound,
    TooCostly,
    Transient,
    Throttled,
    Timeout,
    Incomplete,
    Deleted,
    Exception,
}

impl IssueType {
    /// The FHIR issue-type code (`invalid`, `forbidden`, …).
    pub fn code(self) -> &'static str {
        match self {
            IssueType::Invalid => "invalid",
            IssueType::Structure => "structure",
            IssueType::Required => "required",
            IssueType::Value => "value",
            IssueType::Security => "security",
            IssueType::Login => "login",
            IssueType::Forbidden => "forbidden",
            IssueType::Processing => "processing",
            IssueType::NotSupported => "not-supported",
            IssueType::NotFound => "not-found",
            IssueType::TooCostly => "too-costly",
            IssueType::Transient => "transient",
            IssueType::Throttled => "throttled",
            IssueType::Timeout => "timeout",
            IssueType::Incomplete => "incomplete",
            IssueType::Deleted => "deleted",
            IssueType::Exception => "exception",
        }
    }
}

/// An `OperationOutcome` with one issue: the sidecar reports one cause at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationOutcome {
    pub severity: Severity,
    pub code: IssueType,
    pub diagnostics: String,
}

impl OperationOutcome {
    pub fn error(code: IssueType, diagnostics: impl Into<String>) -> Self {
        OperationOutcome {
            severity: Severity::Error,
            code,
            diagnostics: diagnostics.into(),
        }
    }

    /// The resource serialized in `format`.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Json => self.to_json(),
            Format::Xml => self.to_xml(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::json!({
            "resourceType": "OperationOutcome",
            "issue": [{
                "severity": self.severity.code(),
                "code": self.code.code(),
                "diagnostics": self.diagnostics,
            }]
        })
        .to_string()
    }

    pub fn to_xml(&self) -> String {
        format!(
            concat!(
                r#"<OperationOutcome xmlns="http://hl7.org/fhir">"#,
                r#"<issue><severity value="{}"/><code value="{}"/><diagnostics value="{}"/></issue>"#,
                "</OperationOutcome>"
            ),
            self.severity.code(),
            self.code.code(),
            xml_escape(&self.diagnostics)
        )
    }
}

/// Escapes text for an XML attribute value.
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // XML 1.0 forbids most control characters even escaped; drop them.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_outcome_is_a_fhir_resource() {
        let oo = OperationOutcome::error(IssueType::TooCostly, "body over 10 bytes");
        let value: serde_json::Value = serde_json::from_str(&oo.to_json()).unwrap();
        assert_eq!(value["resourceType"], "OperationOutcome");
        assert_eq!(value["issue"][0]["severity"], "error");
        assert_eq!(value["issue"][0]["code"], "too-costly");
        assert_eq!(value["issue"][0]["diagnostics"], "body over 10 bytes");
    }

    #[test]
    fn xml_outcome_escapes_diagnostics() {
        let oo = OperationOutcome::error(IssueType::Invalid, "bad <id> \"a&b\"\u{1}");
        assert_eq!(
            oo.to_xml(),
            concat!(
                r#"<OperationOutcome xmlns="http://hl7.org/fhir"><issue><severity value="error"/>"#,
                r#"<code value="invalid"/><diagnostics value="bad &lt;id&gt; &quot;a&amp;b&quot;"/>"#,
                r#"</issue></OperationOutcome>"#
            )
        );
    }
}
