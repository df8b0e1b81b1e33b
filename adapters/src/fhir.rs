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
    #[error("the resource could not be written as {0}")]
    Serialize(String),
}

/// XML goes through quick-xml 0.25, which has open denial-of-service advisories: XML bodies
/// are held to this size whatever the general body limit is.
pub const MAX_XML_BYTES: usize = 4 * 1024 * 1024;

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
        Format::Json => serde_json::from_slice(body).map_err(|e| ParseError::Json(e.to_string())),
        Format::Xml => parse(body, format, lax()),
    }
}

fn parse(
    body: &[u8],
    format: Format,
    config: Option<DeserializationConfig>,
) -> Result<Value, ParseError> {
    let resource: Resource = match format {
        Format::Json => {
            fhirbolt::json::from_slice(body, config).map_err(|e| ParseError::Json(e.to_string()))?
        }
        Format::Xml => {
            if body.len() > MAX_XML_BYTES {
                return Err(ParseError::XmlTooLarge {
                    limit: MAX_XML_BYTES,
                });
            }
            fhirbolt::xml::from_slice(body, config).map_err(|e| ParseError::Xml(e.to_string()))?
        }
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
            fhirbolt::xml::to_vec(&resource, None).map_err(|e| ParseError::Serialize(e.to_string()))
        }
    }
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
    fn decimals_keep_their_precision() {
        let body = br#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1.50}}"#;
        let value = parse_strict(body, Format::Json).unwrap();
        let text = String::from_utf8(serialize(&value, Format::Json).unwrap()).unwrap();
        assert!(text.contains("1.50"), "{text}");
    }
}
