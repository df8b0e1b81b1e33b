//! The identity split and merge: for any resource that parses strictly, splitting it (with free
//! text scrubbed of some names) and merging the identity part back gives the original, and the
//! identity part survives its own encoding.
#![no_main]

use fhirseal_adapters::profile::{IdentityPart, Profile, SplitContext};
use fhirseal_adapters::scrub::Terms;
use fhirseal_adapters::{fhir, Format};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(original) = fhir::parse_strict(data, Format::Json) else {
        return;
    };
    let profile = Profile::default();
    let mut terms = Terms::new();
    for term in ["Smith", "John", "999-43-7348", "Boston", "1970-01-02"] {
        terms.add(term);
    }
    let context = SplitContext {
        reference_type: &|_| None,
        terms: &terms,
    };
    let mut clinical = original.clone();
    let part = profile.split_with(&mut clinical, Some("surrogate-1"), &context);
    let part = IdentityPart::from_bytes(&part.to_bytes()).expect("an identity part decodes");
    let mut merged = clinical;
    part.merge_into(&mut merged);
    assert_eq!(merged, original);
});
