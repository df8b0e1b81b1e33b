//! The canonical form of a clinical resource, and the hash that anchors it.
//!
//! The ledger anchors `SHA-256(JCS(resource without the server's bookkeeping))`:
//!
//! - JCS is the JSON Canonicalization Scheme of RFC 8785: no whitespace, object members sorted
//!   by the UTF-16 code units of their names, strings escaped as ECMAScript's `JSON.stringify`
//!   escapes them, numbers written as ECMAScript writes an IEEE-754 double;
//! - the bookkeeping left out is what the FHIR server assigns on every write and may change
//!   without the resource changing: `meta.versionId` (the anchor names the version anyway),
//!   `meta.lastUpdated` and `meta.source` (HAPI writes a request id there); a `meta` left empty
//!   is dropped with them. Everything else counts, `meta.profile`, `meta.security` and
//!   `meta.tag` included.
//!
//! Anyone can recompute the hash with an RFC 8785 implementation and `sha256sum`.
//!
//! Written here rather than taken from a crate: serde_json is built with `arbitrary_precision`
//! (fhirbolt turns it on for the whole build), and serde-based JCS serializers do not understand
//! the private number representation that feature gives `Value`. The number formatting itself is
//! `ryu-js`, which writes doubles as ECMAScript does.

use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

/// Why a value has no canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// RFC 8785 has no form for a number that is not a finite double.
    #[error("the number {0} is not a finite IEEE-754 double, which RFC 8785 requires")]
    Number(String),
}

/// The `meta` elements the server assigns on every write, left out of the hash.
pub const SERVER_META: [&str; 3] = ["versionId", "lastUpdated", "source"];

/// `SHA-256(JCS(resource))`, with [`SERVER_META`] left out.
pub fn clinical_hash(resource: &Value) -> Result<[u8; 32], CanonicalError> {
    let bytes = canonical_resource(resource)?;
    Ok(Sha256::digest(&bytes).into())
}

/// The canonical bytes that [`clinical_hash`] hashes.
pub fn canonical_resource(resource: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::with_capacity(1024);
    match resource {
        Value::Object(members) if members.contains_key("meta") => {
            let mut members = members.clone();
            let drop_meta = match members.get_mut("meta") {
                Some(Value::Object(meta)) => {
                    for name in SERVER_META {
                        meta.shift_remove(name);
                    }
                    meta.is_empty()
                }
                _ => false,
            };
            if drop_meta {
                members.shift_remove("meta");
            }
            write_object(&members, &mut out)?;
        }
        other => write_value(other, &mut out)?,
    }
    Ok(out)
}

/// RFC 8785 canonical JSON of any value.
pub fn jcs(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::new();
    write_value(value, &mut out)?;
    Ok(out)
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(n, out)?,
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(members) => write_object(members, out)?,
    }
    Ok(())
}

fn write_object(members: &Map<String, Value>, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
    // RFC 8785 §3.2.3: by UTF-16 code units, which differs from byte order above U+FFFF.
    sorted.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
    out.push(b'{');
    for (i, (name, value)) in sorted.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(name, out);
        out.push(b':');
        write_value(value, out)?;
    }
    out.push(b'}');
    Ok(())
}

fn write_number(n: &Number, out: &mut Vec<u8>) -> Result<(), CanonicalError> {
    let double = n
        .as_f64()
        .filter(|d| d.is_finite())
        .ok_or_else(|| CanonicalError::Number(n.to_string()))?;
    // ECMAScript writes -0 as "0"; ryu-js does too.
    let mut buffer = ryu_js::Buffer::new();
    out.extend_from_slice(buffer.format_finite(double).as_bytes());
    Ok(())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{08}' => out.extend_from_slice(b"\\b"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\u{0C}' => out.extend_from_slice(b"\\f"),
            '\r' => out.extend_from_slice(b"\\r"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(text: &str) -> String {
        let value: Value = serde_json::from_str(text).unwrap();
        String::from_utf8(jcs(&value).unwrap()).unwrap()
    }

    #[test]
    fn rfc8785_numbers() {
        // RFC 8785 Appendix B, as JSON literals (each parses to the double named there).
        let cases = [
            ("0", "0"),
            ("-0", "0"),
            ("5e-324", "5e-324"),
            ("1.7976931348623157e308", "1.7976931348623157e+308"),
            ("9007199254740992", "9007199254740992"),
            ("9007199254740994", "9007199254740994"),
            ("1e21", "1e+21"),
            ("999999999999999900000", "999999999999999900000"),
            ("0.000001", "0.000001"),
            ("1e-7", "1e-7"),
            ("4.5", "4.5"),
            ("2e-3", "0.002"),
            ("0.000001234", "0.000001234"),
            ("295147905179352830000", "295147905179352830000"),
            ("1.50", "1.5"),
            ("100", "100"),
        ];
        for (input, expected) in cases {
            assert_eq!(canonical(input), expected, "{input}");
        }
        let huge: Value = serde_json::from_str("1e400").unwrap();
        assert!(matches!(jcs(&huge), Err(CanonicalError::Number(_))));
    }

    #[test]
    fn rfc8785_strings_and_member_order() {
        // RFC 8785 §3.2.3's sorting example: keys ordered by UTF-16 code units.
        let sorted = canonical(
            r#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#,
        );
        let keys: Vec<String> = {
            let v: Value = serde_json::from_str(&sorted).unwrap();
            v.as_object().unwrap().keys().cloned().collect()
        };
        assert_eq!(
            keys,
            [
                "\r",
                "1",
                "\u{80}",
                "\u{f6}",
                "\u{20ac}",
                "\u{1f600}",
                "\u{fb33}"
            ]
        );
        // Escapes as JSON.stringify writes them: short forms, lowercase \u00xx, the rest literal.
        assert_eq!(
            canonical(r#""\u0008\u0009\u000a\u000c\u000d\u0001\u001f\"\\/\u2028é""#),
            "\"\\b\\t\\n\\f\\r\\u0001\\u001f\\\"\\\\/\u{2028}é\""
        );
        assert_eq!(
            canonical(r#"{ "b" : [1, true, null, {"z":0,"a":"x"}], "a" : {} }"#),
            r#"{"a":{},"b":[1,true,null,{"a":"x","z":0}]}"#
        );
    }

    #[test]
    fn the_clinical_hash_ignores_server_bookkeeping_only() {
        let stored: Value = serde_json::from_str(
            r##"{"resourceType":"Observation","id":"o1","meta":{"versionId":"3","lastUpdated":"2026-01-01T00:00:00Z","source":"#abc"},"status":"final","valueQuantity":{"value":1.50}}"##,
        )
        .unwrap();
        let resent: Value = serde_json::from_str(
            r#"{"status":"final","id":"o1","valueQuantity":{"value":1.5},"resourceType":"Observation"}"#,
        )
        .unwrap();
        assert_eq!(
            clinical_hash(&stored).unwrap(),
            clinical_hash(&resent).unwrap()
        );
        assert_eq!(
            String::from_utf8(canonical_resource(&stored).unwrap()).unwrap(),
            r#"{"id":"o1","resourceType":"Observation","status":"final","valueQuantity":{"value":1.5}}"#
        );
        let tagged: Value = serde_json::from_str(
            r#"{"resourceType":"Observation","id":"o1","meta":{"versionId":"3","tag":[{"code":"x"}]},"status":"final","valueQuantity":{"value":1.5}}"#,
        )
        .unwrap();
        assert_ne!(
            clinical_hash(&tagged).unwrap(),
            clinical_hash(&resent).unwrap()
        );
        let changed: Value = serde_json::from_str(
            r#"{"resourceType":"Observation","id":"o1","status":"final","valueQuantity":{"value":1.6}}"#,
        )
        .unwrap();
        assert_ne!(
            clinical_hash(&changed).unwrap(),
            clinical_hash(&resent).unwrap()
        );
    }
}
