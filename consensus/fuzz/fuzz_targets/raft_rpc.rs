//! openraft's RPCs as the consortium transport receives them (JSON): any bytes parse or are
//! refused, never panic, and an accepted append's governance requests re-encode canonically.
#![no_main]

use fhirseal_consensus::raft::{NodeId, TypeConfig};
use libfuzzer_sys::fuzz_target;
use openraft::raft::{AppendEntriesRequest, VoteRequest};

fuzz_target!(|data: &[u8]| {
    if let Ok(append) = serde_json::from_slice::<AppendEntriesRequest<TypeConfig>>(data) {
        let again = serde_json::to_vec(&append).expect("an accepted request serializes");
        let back: AppendEntriesRequest<TypeConfig> =
            serde_json::from_slice(&again).expect("what was serialized parses");
        assert_eq!(back.entries.len(), append.entries.len());
    }
    let _ = serde_json::from_slice::<VoteRequest<NodeId>>(data);
});
