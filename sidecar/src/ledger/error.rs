//! Why the ledger cannot be opened, read or driven.

/// Why the ledger cannot be opened or read, or a round did not anchor.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger: {0}")]
    Chain(#[from] fhirseal_consensus::Error),
    #[error("outbox: {0}")]
    Storage(#[from] fhirseal_storage::StorageError),
    #[error("write-ahead log {path}: {source}")]
    Wal {
        path: String,
        source: std::io::Error,
    },
    #[error("a lock on {0} is poisoned")]
    Poisoned(&'static str),
    /// The node does not take part in its consortium now: nothing is anchored, the outbox
    /// keeps what waits.
    #[error("not anchoring: {0}")]
    NotTakingPart(&'static str),
    /// The ledger's driver failed (it starts again from the chain and the log).
    #[error("ledger driver: {0}")]
    Driver(String),
    /// The election could not be folded over the stored chain (the governance state may not
    /// know a stored block's epoch yet): the driver starts again.
    #[error("election: {0}")]
    Election(String),
    /// The ledger's task has stopped (the node is shutting down).
    #[error("the ledger is not running")]
    Stopped,
    /// The transactions were submitted but no block holding them is final here yet: the next
    /// round submits them again.
    #[error("submitted, not final yet: {0}")]
    NotFinal(String),
    /// The delegates refused the transaction for good (the roster does not take it).
    #[error("the transaction was refused: {0}")]
    Refused(String),
}

impl From<fhirseal_storage::chain_store::ChainStoreError> for LedgerError {
    fn from(e: fhirseal_storage::chain_store::ChainStoreError) -> Self {
        LedgerError::Chain(e.into())
    }
}

impl LedgerError {
    /// Whether a later attempt may succeed (I/O, a block not final yet), as opposed to a
    /// refusal or corruption.
    pub fn is_retryable(&self) -> bool {
        match self {
            LedgerError::Chain(e) => e.is_retryable(),
            LedgerError::Storage(e) => e.is_retryable(),
            LedgerError::Wal { .. }
            | LedgerError::NotFinal(_)
            | LedgerError::Stopped
            | LedgerError::Driver(_)
            | LedgerError::Election(_) => true,
            LedgerError::Poisoned(_) | LedgerError::NotTakingPart(_) | LedgerError::Refused(_) => {
                false
            }
        }
    }
}

impl From<fhirseal_consensus::ledger::DriverError> for LedgerError {
    fn from(e: fhirseal_consensus::ledger::DriverError) -> Self {
        match e {
            fhirseal_consensus::ledger::DriverError::Ledger(e) => LedgerError::Chain(e),
            other => LedgerError::Driver(other.to_string()),
        }
    }
}
