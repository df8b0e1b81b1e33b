//! Every canonical decoder of the ledger, the BFT engine and governance: any bytes decode to a
//! value or to an error, never a panic; what decodes encodes back to the very same bytes (the
//! encoding is canonical: one encoding per value).
#![no_main]

use fhirseal_consensus::bft::{CommitCertificate, ConsensusMessage, Evidence, WalEntry};
use fhirseal_consensus::governance::SignedCommand;
use fhirseal_consensus::raft::{GovernanceRequest, SnapshotData};
use fhirseal_consensus::{AnchorProof, BlockHeader, FinalizedBlock, Transaction};
use libfuzzer_sys::fuzz_target;

macro_rules! round_trip {
    ($ty:ty, $bytes:expr) => {
        if let Ok(value) = <$ty>::from_bytes($bytes) {
            assert_eq!(value.to_bytes(), $bytes, "{} re-encodes differently", stringify!($ty));
        }
    };
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the decoder, so that one corpus feeds them all.
    let Some((which, bytes)) = data.split_first() else {
        return;
    };
    match which % 11 {
        0 => round_trip!(BlockHeader, bytes),
        1 => round_trip!(FinalizedBlock, bytes),
        2 => round_trip!(Transaction, bytes),
        3 => round_trip!(AnchorProof, bytes),
        4 => round_trip!(SignedCommand, bytes),
        5 => round_trip!(GovernanceRequest, bytes),
        6 => round_trip!(SnapshotData, bytes),
        7 => round_trip!(ConsensusMessage, bytes),
        8 => round_trip!(WalEntry, bytes),
        9 => round_trip!(CommitCertificate, bytes),
        _ => round_trip!(Evidence, bytes),
    }
});
