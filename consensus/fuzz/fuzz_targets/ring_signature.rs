//! Ring signatures from the network: any bytes decode or are refused; what decodes verifies or
//! is refused against a fixed ring, never panics; a decoded signature re-encodes to its bytes.
#![no_main]

use std::sync::OnceLock;

use fhirseal_consensus::election::lsag::{self, RingSignature, Scope, VoteSecret};
use libfuzzer_sys::fuzz_target;

fn ring() -> &'static Vec<[u8; 32]> {
    static RING: OnceLock<Vec<[u8; 32]>> = OnceLock::new();
    RING.get_or_init(|| {
        (1..=4u8)
            .filter_map(|i| VoteSecret::from_bytes([i; 32]))
            .map(|s| s.public())
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(signature) = RingSignature::from_bytes(data) {
        assert_eq!(signature.to_bytes(), data);
        let scope = Scope {
            chain: b"fuzz",
            epoch: 1,
        };
        let _ = lsag::verify(&scope, ring(), b"ballot", &signature);
        // A ring the fuzzer chose (keys taken from the responses) never panics either.
        let theirs: Vec<[u8; 32]> = signature.responses.clone();
        let _ = lsag::verify(&scope, &theirs, b"ballot", &signature);
    }
});
