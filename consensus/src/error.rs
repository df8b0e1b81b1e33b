//! The ledger's errors.

use fhirseal_storage::chain_store::{ChainStoreError, EntryLocation};

use crate::codec::DecodeError;

/// What can go wrong in the ledger. [`Error::is_retryable`] tells an I/O failure, after which
/// the same call may succeed, from a refusal that will be repeated.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bytes given to decode are malformed.
    #[error("malformed encoding: {0}")]
    Decode(#[from] DecodeError),
    /// The chain stores failed or refused a write.
    #[error("chain store: {0}")]
    Store(#[from] ChainStoreError),
    /// A stored block cannot be decoded.
    #[error("stored block at height {height} cannot be decoded: {source}")]
    CorruptBlock {
        /// Its height.
        height: u64,
        /// Why.
        source: DecodeError,
    },
    /// A height is missing from the stored chain.
    #[error("no block is stored at height {0}")]
    MissingBlock(u64),
    /// An index entry does not point where the block says it should.
    #[error("the {0} index does not match the block")]
    IndexMismatch(&'static str),
    /// An Ed25519 signature does not verify (strictly).
    #[error("invalid signature on {0}")]
    BadSignature(&'static str),
    /// Bytes that should be an Ed25519 public key are not one.
    #[error("{0} is not a valid Ed25519 public key")]
    BadKey(&'static str),
    /// A Merkle root does not match the items it commits to.
    #[error("{0} Merkle root does not match")]
    RootMismatch(&'static str),
    /// A Merkle proof does not fit its tree.
    #[error("Merkle proof does not fit its tree")]
    BadProof,
    /// A batch is malformed.
    #[error("invalid batch: {0}")]
    InvalidBatch(&'static str),
    /// A batch names an institution the roster does not know.
    #[error("institution {0:?} is not in the roster")]
    UnknownInstitution(String),
    /// A batch is signed by a key that is not its institution's.
    #[error("batch of {0:?} is not signed with that institution's key")]
    WrongSigner(String),
    /// A block is malformed or does not follow its predecessor.
    #[error("invalid block: {0}")]
    InvalidBlock(&'static str),
    /// A block's height is not its predecessor's plus one.
    #[error("block height is {found}, expected {expected}")]
    Height {
        /// The height that follows the predecessor.
        expected: u64,
        /// The block's.
        found: u64,
    },
    /// The block's producer is not a delegate.
    #[error("block producer is not a delegate")]
    UnknownProducer,
    /// No roster is known for a block's epoch.
    #[error("no roster is known for epoch {0}")]
    UnknownEpoch(u64),
    /// A finality certificate is malformed.
    #[error("invalid finality certificate: {0}")]
    InvalidCertificate(&'static str),
    /// A finality certificate has too few signatures.
    #[error("finality certificate has {have} signatures, {need} needed")]
    NotEnoughSignatures {
        /// Valid delegate signatures.
        have: usize,
        /// The threshold.
        need: usize,
    },
    /// A delegate set is malformed.
    #[error("invalid delegate set: {0}")]
    InvalidDelegates(&'static str),
    /// Evidence of double signing does not prove it.
    #[error("invalid evidence: {0}")]
    InvalidEvidence(&'static str),
    /// A resource version is already anchored, by another batch or earlier in the same one.
    #[error("{resource} is already anchored")]
    AlreadyAnchored {
        /// `type/id/_history/version` (FHIR ids, never identity).
        resource: String,
        /// Where it is anchored, if in a finalized block (else it is pending).
        location: Option<EntryLocation>,
    },
}

impl Error {
    /// Whether the same call may succeed later: only I/O failures are.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_retryable())
    }
}

/// Result of the ledger.
pub type Result<T, E = Error> = std::result::Result<T, E>;
