//! Content negotiation between FHIR's two wire formats.

use http::header::{HeaderMap, ACCEPT, CONTENT_TYPE};

/// A FHIR wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Xml,
}

impl Format {
    /// The MIME type FHIR R4 registers for this format.
    pub fn mime(self) -> &'static str {
        match self {
            Format::Json => "application/fhir+json;charset=utf-8",
            Format::Xml => "application/fhir+xml;charset=utf-8",
        }
    }

    /// Reads one MIME type or `_format` value (`json`, `xml`, `application/fhir+json`, …).
    /// Parameters after `;` are ignored; anything not a FHIR format gives `None`.
    pub fn from_mime(value: &str) -> Option<Format> {
        let essence = value
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "json" | "application/json" | "application/fhir+json" | "application/json+fhir" => {
                Some(Format::Json)
            }
            "xml"
            | "text/xml"
            | "application/xml"
            | "application/fhir+xml"
            | "application/xml+fhir" => Some(Format::Xml),
            _ => None,
        }
    }

    /// The format a response should have: `_format` in the query wins over `Accept`, as FHIR
    /// R4 §3.1.0.1.8 says; JSON when neither names a FHIR format.
    pub fn negotiate(query: Option<&str>, headers: &HeaderMap) -> Format {
        if let Some(format) = query
            .and_then(format_param)
            .and_then(|v| Format::from_mime(&v))
        {
            return format;
        }
        headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(Format::from_mime)
            .unwrap_or(Format::Json)
    }

    /// The format of a request body, from its `Content-Type`.
    pub fn of_body(headers: &HeaderMap) -> Option<Format> {
        headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(Format::from_mime)
    }
}

/// The decoded value of the first `_format` parameter of a query string.
fn format_param(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name == "_format").then(|| {
            let value = value.replace('+', " ");
            let decoded = percent_encoding::percent_decode_str(&value).decode_utf8_lossy();
            // A raw `+` in `application/fhir+json` arrives as a space once decoded as a form.
            decoded.replace(' ', "+")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn format_parameter_wins_over_accept() {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/fhir+json"));
        assert_eq!(
            Format::negotiate(Some("_format=xml"), &headers),
            Format::Xml
        );
        assert_eq!(
            Format::negotiate(Some("a=b&_format=application/fhir%2Bxml"), &headers),
            Format::Xml
        );
        assert_eq!(
            Format::negotiate(Some("_format=application/fhir+xml"), &headers),
            Format::Xml
        );
        assert_eq!(Format::negotiate(None, &headers), Format::Json);
    }

    #[test]
    fn accept_lists_and_parameters() {
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_static("text/html;q=0.9, application/fhir+xml;q=0.8"),
        );
        assert_eq!(Format::negotiate(None, &headers), Format::Xml);
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        assert_eq!(Format::negotiate(None, &headers), Format::Json);
    }

    #[test]
    fn body_format_from_content_type() {
        let mut headers = HeaderMap::new();
        assert_eq!(Format::of_body(&headers), None);
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/fhir+xml; charset=UTF-8"),
        );
        assert_eq!(Format::of_body(&headers), Some(Format::Xml));
    }
}
