//! FHIR REST routing: any method and path route or are refused, never panic; the policy's needs
//! of what routes are computed without panicking too.
#![no_main]

use fhirseal_adapters::policy::Needs;
use fhirseal_adapters::route;
use libfuzzer_sys::fuzz_target;

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

fuzz_target!(|data: &[u8]| {
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let Ok(path) = std::str::from_utf8(rest) else {
        return;
    };
    let method = http::Method::from_bytes(METHODS[usize::from(first % 7)].as_bytes())
        .unwrap_or(http::Method::GET);
    if let Ok(interaction) = route::route(&method, path, first & 0x80 != 0) {
        let _ = Needs::of(&interaction, first & 0x40 != 0);
        let _ = interaction.name();
    }
});
