//! fhirseal's consortium ledger: the ledger core that anchors every sealed write once and
//! proves it, the governance layer that keeps the consortium on openraft, and the improved
//! DPoS's pure rules (beacon, ring-signature ballots, election); the node transport is the
//! sidecar's.
//!
//! - Types: institution-signed batches of anchor entries and access events ([`tx`]), blocks
//!   with finality certificates ([`block`]), in a hand-written canonical encoding ([`codec`]),
//!   hashed with SHA-256 under domain-separation tags ([`hash`]), committed by Merkle trees with
//!   inclusion proofs ([`merkle`]).
//! - Rules, as plain functions over data with time passed in: transaction and block validity
//!   ([`validate`]), who may sign ([`keys`]: delegates, quorum `2f + 1` of `3f + 1`, the roster),
//!   block production and finality votes ([`producer`]).
//! - The chain on disk ([`chain`]): finalized blocks appended through `fhirseal-storage`'s typed
//!   sled stores, idempotent per batch, anchor proofs ([`proof`]), re-verification from genesis.
//! - The seam the sidecar drives ([`ledger`]): submit a transaction, produce a block; the
//!   single-node consortium implements it now, the DPoS will.
//! - The BFT engine that finalizes the shared chain among the delegates ([`bft`]): our
//!   `BftEngine` trait with its votes, proposals, commit certificates, write-ahead log entries
//!   and evidence, implemented over Malachite's pure consensus core (`bft/malachite.rs` is the
//!   only file that names it); it emits effects, the runtime performs them.
//! - Governance ([`governance`]): members, the certificate revocation list, wrapped link keys,
//!   epochs and election records, changed only by signed commands that the state machine itself
//!   authorizes (regulator-signed admissions, suspensions, revocations, stake; self-signed key
//!   rotations), as pure code with time passed in.
//! - The election's rules ([`election`]): the VRF beacon, linkable ring signatures over the
//!   epoch's voters, weighted election with rotation and the proposer order.
//! - Its replication ([`raft`]): openraft 0.9 over a sled log and state machine kept in
//!   `fhirseal-storage`'s typed trees, snapshots, and a node the sidecar starts and submits to.
//!
//! It knows nothing of FHIR beyond opaque strings (resource type, logical id, version id) and
//! hashes computed by others; it reads no clock and opens no socket (the Raft transport is handed
//! in). Of our crates it depends only on `fhirseal-storage`, to which it hands encoded bytes and
//! keys.

pub mod bft;
pub mod block;
pub mod chain;
pub mod codec;
pub mod election;
mod error;
pub mod governance;
pub mod hash;
pub mod keys;
pub mod ledger;
pub mod merkle;
pub mod producer;
pub mod proof;
pub mod raft;
pub mod tx;
pub mod validate;

pub use block::{Block, BlockHeader, DelegateSignature, FinalityCertificate, FinalizedBlock};
pub use chain::{BlockReceipt, Chain, ChainCheck, ChainReader};
pub use codec::DecodeError;
pub use ed25519_dalek::{Signature, SigningKey};
pub use error::{Error, Result};
pub use fhirseal_storage::chain_store::{ChainStore, EntryLocation, TxLocation};
pub use hash::Hash256;
pub use keys::{quorum, DelegateSet, PublicKey, Roster, Rosters};
pub use ledger::{Ledger, SoloLedger, Submitted};
pub use merkle::MerkleProof;
pub use producer::{BlockLimits, BlockProducer, Mempool};
pub use proof::AnchorProof;
pub use tx::{
    anchor_key, AccessBatch, AccessEvent, AnchorBatch, AnchorEntry, BatchHeader, BatchId,
    Timestamp, Transaction, TxId, TxKind,
};
pub use validate::{validate_block, validate_finalized_block, validate_transaction};
