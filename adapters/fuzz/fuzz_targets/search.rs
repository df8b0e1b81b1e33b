//! Identity-search planning and rendering: any query plans or is refused with a named
//! parameter, never panics; a plan renders for any matches; `names_identity` agrees with `plan`.
#![no_main]

use std::collections::BTreeSet;

use fhirseal_adapters::policy::bundle_needs;
use fhirseal_adapters::profile::Profile;
use fhirseal_adapters::search;
use libfuzzer_sys::fuzz_target;

const TYPES: [Option<&str>; 5] = [
    Some("Patient"),
    Some("Observation"),
    Some("RelatedPerson"),
    Some("Encounter"),
    None,
];

fuzz_target!(|data: &[u8]| {
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let Ok(query) = std::str::from_utf8(rest) else {
        return;
    };
    let profile = Profile::default();
    let ty = TYPES[usize::from(first % 5)];
    let planned = search::plan(ty, query, &profile);
    assert_eq!(
        planned.as_ref().map(Option::is_some).ok(),
        search::names_identity(ty, query, &profile).ok()
    );
    if let Ok(Some(plan)) = planned {
        let matches: Vec<BTreeSet<String>> = plan
            .lookups
            .iter()
            .enumerate()
            .map(|(i, _)| (0..(i % 3)).map(|j| format!("id-{j}")).collect())
            .collect();
        let _ = search::render(&plan, &matches);
    }
    let _ = search::identity_named_param(query);
    // The same text as a batch entry's URL.
    let bundle = serde_json::json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": query}}]});
    let _ = bundle_needs(&bundle, &profile);
});
