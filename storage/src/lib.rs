//! fhirseal's storage: sealing (fingerprint, hybrid encryption, key wrapping), the sled vault, the
//! blind index, the outbox, and the typed sled stores that `consensus` uses (blocks, raft log).
//!
//! It knows nothing of FHIR: it seals and stores bytes under keys that callers give it
//! (resource type, id and version are opaque strings here).
//!
//! - [`keys`] — the node's secret keys, made on first start with owner-only permissions;
//! - [`seal`] — fingerprints, blind tokens, AES-256-GCM records with RSA-OAEP-wrapped keys, a
//!   record's own key re-wrapped for a grantee;
//! - [`person_keys`] — one key per person in the keystore, under which that person's records are
//!   sealed too, destroyed to erase them (from the vault and from every copy of it);
//! - [`vault`] — the sled vault: records, indexes and blind index, one transaction per write;
//! - [`outbox`] — anchors and access events (with the member an exchange was with) waiting for
//!   a final block, in the vault's database (an anchor is queued in the same transaction as its
//!   vault write);
//! - [`chain_store`] — the ledger's typed sled stores: blocks by height, hash, transaction and
//!   anchor indexes, one transaction and a flush per block (bytes given by `consensus`).
//! - [`raft_store`] — the replicated log's typed sled stores: opaque entries by position, named
//!   slots for the log and the state machine, flushed when `consensus` asks.
//! - [`open`] — opening a sled database, damage found by sled said plainly;
//! - [`pause`] — every store write held while a consistent copy is made;
//! - [`dump`] — a database copied whole into one self-checking file, and loaded back.

pub mod chain_store;
pub mod dump;
pub mod error;
pub mod keys;
pub mod open;
pub mod outbox;
pub mod pause;
pub mod person_keys;
pub mod raft_store;
pub mod seal;
pub mod vault;

pub use error::{Result, StorageError};
pub use keys::{NodeKeys, SecretKey};
pub use outbox::{Exchange, ExchangeKind, KeptRound, Outbox, PendingAccess, PendingAnchor};
pub use seal::{
    blind_tag, blind_token, Fingerprint, NewEpochKey, RecordMeta, SealedRecord, Sealer,
    SharedRecord,
};
pub use vault::{BlindEntry, Durability, Erased, Vault, VaultCheck, VaultWrite, BLIND_LAYOUT};
