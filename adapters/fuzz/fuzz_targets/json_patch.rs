//! JSON Patch applied in the sidecar: any patch document against any resource applies or is
//! refused, never panics.
#![no_main]

use fhirseal_adapters::patch;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // `resource \0 patch`
    let Some(split) = data.iter().position(|b| *b == 0) else {
        return;
    };
    let (resource, patch_bytes) = (&data[..split], &data[split + 1..]);
    let Ok(mut value) = serde_json::from_slice::<serde_json::Value>(resource) else {
        return;
    };
    let _ = patch::apply_json_patch(&mut value, patch_bytes);
});
