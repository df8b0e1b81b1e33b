//! Parsing and serializing FHIR R4 resources through fhirbolt, behind plain non-generic
//! functions: fhirbolt's R4 model is expensive to compile, and only this file instantiates it.
//!
//! Resources travel through the sidecar as `serde_json::Value` (built with `preserve_order` and
//! `arbitrary_precision`, so a JSON round trip keeps field order and decimals as written).

use fhirbolt::model::r4::Resource;
use fhirbolt::serde::{DeserializationConfig, DeserializationMode};
use serde_json::Value;

use crate::format::Format;

/// Why a body is not a FHIR R4 resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the body is not a valid FHIR R4 JSON resource: {0}")]
    Json(String),
    #[error("the body is not a valid FHIR R4 XML resource: {0}")]
    Xml(String),
    #[error("an XML body is over the limit of {limit} bytes")]
    XmlTooLarge { limit: usize },
    #[error("the body nests elements more than {limit} deep")]
    TooDeep { limit: usize },
    #[error("the resource could not be written as {0}")]
    Serialize(String),
}

/// XML goes through quick-xml 0.25, which has open denial-of-service advisories: XML bodies
/// are held to this size whatever the general body limit is.
pub const MAX_XML_BYTES: usize = 4 * 1024 * 1024;

/// Deepest nesting of objects and arrays (JSON) or elements (XML) a body may have. Parsers and
/// the walks over a parsed resource recurse once per level: without a bound, a few megabytes
/// of nested brackets overflow a thread's stack and abort the process. FHIR R4 resources,
/// narrative and stored Bundles included, stay far below it.
pub const MAX_DEPTH: usize = 128;

/// Refuses a body nested deeper than [`MAX_DEPTH`], before any parser sees it. A linear scan
/// that keeps no stack of its own.
pub fn check_depth(body: &[u8], format: Format) -> Result<(), ParseError> {
    let deepest = match format {
        Format::Json => json_depth(body, MAX_DEPTH),
        Format::Xml => xml_depth(body, MAX_DEPTH),
    };
    if deepest > MAX_DEPTH {
        return Err(ParseError::TooDeep { limit: MAX_DEPTH });
    }
    Ok(())
}

/// The nesting depth of JSON text, counting brackets outside strings; stops above `limit`.
fn json_depth(body: &[u8], limit: usize) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in body {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > limit {
                    return deepest;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The element depth of XML text: start tags open, end tags and `/>` close; comments,
/// declarations, processing instructions and quoted attribute values are skipped.
fn xml_depth(body: &[u8], limit: usize) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut i = 0;
    while i < body.len() {
        if body[i] != b'<' {
            i += 1;
            continue;
        }
        let rest = &body[i..];
        if rest.starts_with(b"<!--") {
            i += find(rest, b"-->").map_or(rest.len(), |end| end + 3);
            continue;
        }
        if rest.starts_with(b"<![CDATA[") {
            i += find(rest, b"]]>").map_or(rest.len(), |end| end + 3);
            continue;
        }
        if rest.starts_with(b"<?") || rest.starts_with(b"<!") {
            i += find(rest, b">").map_or(rest.len(), |end| end + 1);
            continue;
        }
        let closing = rest.get(1) == Some(&b'/');
        // To the end of the tag, past quoted attribute values.
        let mut j = 1;
        let mut quote = None;
        while j < rest.len() {
            let c = rest[j];
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => {}
                None if c == b'"' || c == b'\'' => quote = Some(c),
                None if c == b'>' => break,
                None => {}
            }
            j += 1;
        }
        let self_closing = j > 1 && rest.get(j - 1) == Some(&b'/');
        if closing {
            depth = depth.saturating_sub(1);
        } else if !self_closing {
            depth += 1;
            deepest = deepest.max(depth);
            if deepest > limit {
                return deepest;
            }
        }
        i += j + 1;
    }
    deepest
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn strict() -> Option<DeserializationConfig> {
    Some(DeserializationConfig {
        mode: DeserializationMode::Strict,
    })
}

fn lax() -> Option<DeserializationConfig> {
    Some(DeserializationConfig {
        mode: DeserializationMode::Compatibility,
    })
}

/// Parses a client's body strictly (unknown elements refused) and returns it as JSON.
pub fn parse_strict(body: &[u8], format: Format) -> Result<Value, ParseError> {
    parse(body, format, strict())
}

/// Parses what an upstream returned, tolerating elements this model does not know.
pub fn parse_lenient(body: &[u8], format: Format) -> Result<Value, ParseError> {
    match format {
        // JSON from the upstream needs no model: keep it exactly as it came.
        Format::Json => {
            check_depth(body, format)?;
            serde_json::from_slice(body).map_err(|e| ParseError::Json(e.to_string()))
        }
        Format::Xml => parse(body, format, lax()),
    }
}

fn parse(
    body: &[u8],
    format: Format,
    config: Option<DeserializationConfig>,
) -> Result<Value, ParseError> {
    if format == Format::Xml && body.len() > MAX_XML_BYTES {
        return Err(ParseError::XmlTooLarge {
            limit: MAX_XML_BYTES,
        });
    }
    check_depth(body, format)?;
    let resource: Resource =
        match format {
            Format::Json => fhirbolt::json::from_slice(body, config)
                .map_err(|e| ParseError::Json(e.to_string()))?,
            Format::Xml => fhirbolt::xml::from_slice(body, config)
                .map_err(|e| ParseError::Xml(e.to_string()))?,
        };
    fhirbolt::json::to_json_value(resource, None).map_err(|e| ParseError::Json(e.to_string()))
}

/// Checks that `value` is a valid resource in the strict model (after it was edited).
pub fn validate(value: &Value) -> Result<(), ParseError> {
    fhirbolt::json::from_json_value::<Resource>(value.clone(), strict())
        .map(|_| ())
        .map_err(|e| ParseError::Json(e.to_string()))
}

/// Writes `value` in `format`; XML goes through the model, JSON is written as it stands.
pub fn serialize(value: &Value, format: Format) -> Result<Vec<u8>, ParseError> {
    match format {
        Format::Json => serde_json::to_vec(value).map_err(|e| ParseError::Serialize(e.to_string())),
        Format::Xml => {
            let resource: Resource = fhirbolt::json::from_json_value(value.clone(), lax())
                .map_err(|e| ParseError::Serialize(e.to_string()))?;
            fhirbolt::xml::to_vec(&resource, None)
                .map(|xml| compact_xml(&xml))
                .map_err(|e| ParseError::Serialize(e.to_string()))
        }
    }
}

/// fhirbolt writes an XML declaration and indents; FHIR servers (HAPI among them) answer
/// without either. Drops the declaration and whitespace-only text between tags, except inside
/// XHTML narrative, where whitespace is content.
fn compact_xml(xml: &[u8]) -> Vec<u8> {
    let mut rest = xml;
    if rest.starts_with(b"<?xml") {
        if let Some(end) = rest.windows(2).position(|w| w == b"?>") {
            rest = &rest[end + 2..];
        }
    }
    while rest.first().is_some_and(u8::is_ascii_whitespace) {
        rest = &rest[1..];
    }
    let mut out = Vec::with_capacity(rest.len());
    let mut in_div = 0usize;
    let mut i = 0;
    while i < rest.len() {
        let b = rest[i];
        if b == b'<' {
            if rest[i..].starts_with(b"<div") {
                in_div += 1;
            } else if rest[i..].starts_with(b"</div") {
                in_div = in_div.saturating_sub(1);
            }
            out.push(b);
            i += 1;
            continue;
        }
        if in_div == 0 && b.is_ascii_whitespace() && out.last() == Some(&b'>') {
            // Whitespace right after a tag: drop it if only whitespace precedes the next tag.
            let run = rest[i..]
                .iter()
                .take_while(|c| c.is_ascii_whitespace())
                .count();
            if rest.get(i + run) == Some(&b'<') || i + run == rest.len() {
                i += run;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    namespaced_resources(&named_entities(&out))
}

/// fhirbolt leaves resources nested in `<resource>` and `<contained>` to inherit the FHIR
/// namespace; FHIR servers declare it on each, as the specification's examples do.
fn namespaced_resources(xml: &[u8]) -> Vec<u8> {
    const NS: &[u8] = b" xmlns=\"http://hl7.org/fhir\"";
    let mut out = Vec::with_capacity(xml.len() + 64);
    let mut i = 0;
    while i < xml.len() {
        out.push(xml[i]);
        i += 1;
        let opened = out.ends_with(b"<resource>") || out.ends_with(b"<contained>");
        if opened && xml.get(i) == Some(&b'<') {
            let name_len = xml[i + 1..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric())
                .count();
            let after = i + 1 + name_len;
            let declares = xml[after..].starts_with(b" xmlns=");
            out.extend_from_slice(&xml[i..after]);
            i = after;
            if name_len > 0 && !declares {
                out.extend_from_slice(NS);
            }
        }
    }
    out
}

/// fhirbolt escapes with numeric references (`&#38;`); FHIR servers write the named ones.
fn named_entities(xml: &[u8]) -> Vec<u8> {
    const NAMES: [(&[u8], &[u8]); 5] = [
        (b"&#38;", b"&amp;"),
        (b"&#60;", b"&lt;"),
        (b"&#62;", b"&gt;"),
        (b"&#34;", b"&quot;"),
        (b"&#39;", b"&apos;"),
    ];
    let mut out = Vec::with_capacity(xml.len());
    let mut i = 0;
    'scan: while i < xml.len() {
        if xml[i] == b'&' {
            for (numeric, named) in NAMES {
                if xml[i..].starts_with(numeric) {
                    out.extend_from_slice(named);
                    i += numeric.len();
                    continue 'scan;
                }
            }
        }
        out.push(xml[i]);
        i += 1;
    }
    out
}

/// Puts the elements of `value` back in the order FHIR defines (after edits appended some).
pub fn canonical_order(value: Value) -> Result<Value, ParseError> {
    let resource: Resource = fhirbolt::json::from_json_value(value, lax())
        .map_err(|e| ParseError::Serialize(e.to_string()))?;
    fhirbolt::json::to_json_value(resource, None).map_err(|e| ParseError::Serialize(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_xml_parse_to_the_same_value() {
        let json = br#"{"resourceType":"Patient","id":"1","gender":"female","birthDate":"1970-01-02","multipleBirthInteger":2}"#;
        let xml = br#"<Patient xmlns="http://hl7.org/fhir"><id value="1"/><gender value="female"/><birthDate value="1970-01-02"/><multipleBirthInteger value="2"/></Patient>"#;
        let a = parse_strict(json, Format::Json).unwrap();
        let b = parse_strict(xml, Format::Xml).unwrap();
        assert_eq!(a, b);
        let back = serialize(&a, Format::Xml).unwrap();
        assert_eq!(parse_strict(&back, Format::Xml).unwrap(), a);
    }

    #[test]
    fn strict_refuses_unknown_elements_lenient_keeps_going() {
        let body = br#"{"resourceType":"Patient","favouriteColour":"blue"}"#;
        assert!(matches!(
            parse_strict(body, Format::Json),
            Err(ParseError::Json(_))
        ));
        assert!(parse_lenient(body, Format::Json).is_ok());
        assert!(parse_strict(b"{not json", Format::Json).is_err());
        assert!(parse_strict(b"<Patient", Format::Xml).is_err());
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep_json = format!(
            "{{\"resourceType\":\"Basic\",\"x\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(
            parse_strict(deep_json.as_bytes(), Format::Json),
            Err(ParseError::TooDeep { limit: MAX_DEPTH })
        );
        assert!(parse_lenient(deep_json.as_bytes(), Format::Json).is_err());
        let deep_xml = format!(
            "<Patient xmlns=\"http://hl7.org/fhir\">{}{}</Patient>",
            "<a>".repeat(300_000),
            "</a>".repeat(300_000)
        );
        assert_eq!(
            parse_strict(deep_xml.as_bytes(), Format::Xml),
            Err(ParseError::TooDeep { limit: MAX_DEPTH })
        );
        // Brackets in strings, comments and attribute values do not count.
        let text = format!("{{\"a\":\"{}\"}}", "[".repeat(1000));
        assert_eq!(json_depth(text.as_bytes(), MAX_DEPTH), 1);
        let xml = format!("<a><!-- {} --><b c=\"<<<>\"/></a>", "<x>".repeat(1000));
        assert_eq!(xml_depth(xml.as_bytes(), MAX_DEPTH), 1);
    }

    #[test]
    fn decimals_keep_their_precision() {
        let body = br#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1.50}}"#;
        let value = parse_strict(body, Format::Json).unwrap();
        let text = String::from_utf8(serialize(&value, Format::Json).unwrap()).unwrap();
        assert!(text.contains("1.50"), "{text}");
    }
}
#[cfg(test)]
mod xml_shape {
    #[test]
    fn xml_output_is_compact_without_declaration() {
        let value = super::parse_strict(
            br#"{"resourceType":"Patient","id":"a","text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\">A <b>b</b>\n c</div>"},"gender":"female"}"#,
            crate::Format::Json,
        )
        .unwrap();
        let xml = String::from_utf8(super::serialize(&value, crate::Format::Xml).unwrap()).unwrap();
        assert!(
            xml.starts_with(r#"<Patient xmlns="http://hl7.org/fhir"><id value="a"/><text>"#),
            "{xml}"
        );
        // (fhirbolt itself trims text inside the narrative when it writes XML.)
        assert!(xml.contains("<b>b</b>"), "{xml}");
        assert!(
            xml.ends_with(r#"<gender value="female"/></Patient>"#),
            "{xml}"
        );
    }
}
