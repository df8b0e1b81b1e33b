//! fhirseal's consortium ledger: the ledger core that anchors every sealed write once and
//! proves it, the governance layer that keeps the consortium on openraft, and the improved
//! DPoS's pure rules (beacon, ring-signature ballots, election); the node transport is the
//! sidecar's.
//!
//! - Types: institution-signed batches of anchor entries, access events, evidence, consent
//!   (grants and revocations of access to a person's records, [`grant`]) and erasures (a
//!   person's key destroyed, [`erasure`]) ([`tx`]),
//!   blocks with the BFT commit certificates that finalize them ([`block`]), in a hand-written
//!   canonical encoding ([`codec`]),
//!   hashed with SHA-256 under domain-separation tags ([`hash`]), committed by Merkle trees with
//!   inclusion proofs ([`merkle`]).
//! - Rules, as plain functions over data with time passed in: transaction and block validity
//!   ([`validate`]), who may sign ([`keys`]: delegates, quorum `2f + 1` of `3f + 1`, the roster),
//!   the pending pool and block proposals ([`producer`]).
//! - The chain on disk ([`chain`]): finalized blocks appended through `fhirseal-storage`'s typed
//!   sled stores, idempotent per batch, anchor proofs ([`proof`]), re-verification from genesis.
//! - One node's part of the shared chain as a pure state machine ([`ledger`]): the [`Driver`]
//!   takes submitted transactions, runs the BFT engine while the node is a delegate, builds and
//!   judges proposals, follows the blocks others finalize, and returns the effects (write-ahead
//!   log, network, timers, appends) for the sidecar's runtime to perform. The embedded
//!   consortium of one is the same driver with one delegate.
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
pub mod erasure;
mod error;
pub mod governance;
pub mod grant;
pub mod hash;
pub mod keys;
pub mod ledger;
pub mod merkle;
pub mod producer;
pub mod proof;
pub mod raft;
pub mod tx;
pub mod validate;

pub use bft::CommitCertificate;
pub use block::{chain_id, Block, BlockHeader, FinalizedBlock};
pub use chain::{BlockReceipt, Chain, ChainCheck, ChainReader, CHAIN_FORMAT};
pub use codec::DecodeError;
pub use ed25519_dalek::{Signature, SigningKey};
pub use erasure::{Erasure, ErasureBatch};
pub use error::{Error, Result};
pub use fhirseal_storage::chain_store::{ChainStore, EntryLocation, TxLocation};
pub use fhirseal_storage::outbox::{Exchange, ExchangeKind};
pub use grant::{
    decide, Grant, GrantBatch, GrantRecord, GrantRefusal, GrantRequest, Revocation, RevocationBatch,
};
pub use hash::Hash256;
pub use keys::{quorum, DelegateSet, EpochRosters, PublicKey, Roster, Rosters};
pub use ledger::{Driver, DriverConfig, LedgerContext, RosterUse, Submitted};
pub use merkle::MerkleProof;
pub use producer::{BlockLimits, BlockProducer, Mempool};
pub use proof::AnchorProof;
pub use tx::{
    anchor_key, AccessBatch, AccessEvent, AnchorBatch, AnchorEntry, Ballot, Batch, BatchHeader,
    BatchId, ElectionBatch, ElectionItem, EvidenceBatch, Timestamp, Transaction, TxId, TxKind,
};
pub use validate::{
    check_certificate, validate_block, validate_block_with, validate_finalized_block,
    validate_header, validate_transaction,
};
