//! Parsing what clients send and what upstreams answer: any bytes parse or are refused (too
//! deep, too large, not FHIR), never panic or overflow the stack; what parses strictly
//! serializes in both formats.
#![no_main]

use fhirseal_adapters::{fhir, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for format in [Format::Json, Format::Xml] {
        let _ = fhir::check_depth(data, format);
        if let Ok(value) = fhir::parse_strict(data, format) {
            let _ = fhir::serialize(&value, Format::Json);
            let _ = fhir::serialize(&value, Format::Xml);
        }
        let _ = fhir::parse_lenient(data, format);
    }
});
