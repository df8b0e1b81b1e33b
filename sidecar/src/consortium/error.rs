//! The consortium node's and CLI's errors.

use fhirseal_consensus::raft::NodeError;
use fhirseal_storage::raft_store::RaftStoreError;

/// What can go wrong running a consortium node or one of its commands. No variant ever carries
/// key material: paths and reasons only.
#[derive(Debug, thiserror::Error)]
pub enum ConsortiumError {
    /// A file of the node's directory cannot be read or written.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The command line or the node's configuration asks for something that cannot be done.
    #[error("{0}")]
    Usage(String),
    /// Keys or certificates cannot be made or read.
    #[error("keys: {0}")]
    Keys(String),
    /// TLS cannot be set up.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The peer could not be reached, or refused the connection (an unknown or revoked
    /// certificate is refused during the handshake).
    #[error("cannot reach {addr}: {reason}")]
    Unreachable {
        /// Where.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The peer answered with an error status.
    #[error("{addr} answered {status}: {message}")]
    Refused {
        /// Who.
        addr: String,
        /// The HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// An answer could not be understood.
    #[error("unexpected answer from {addr}: {reason}")]
    Protocol {
        /// Who.
        addr: String,
        /// What was wrong with it.
        reason: String,
    },
    /// The Raft store failed.
    #[error("raft store: {0}")]
    Store(#[from] RaftStoreError),
    /// sled failed.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// The governance node failed (boxed: openraft's errors are large).
    #[error(transparent)]
    Node(Box<NodeError>),
    /// A socket could not be bound or accepted on.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The ledger's keys or rosters are refused.
    #[error("ledger: {0}")]
    Ledger(#[from] fhirseal_consensus::Error),
    /// The node's configuration cannot be used.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The join desk's store failed.
    #[error(transparent)]
    Desk(#[from] crate::consortium::desk::DeskError),
}

impl From<NodeError> for ConsortiumError {
    fn from(e: NodeError) -> Self {
        Self::Node(Box::new(e))
    }
}

impl From<fhirseal_storage::StorageError> for ConsortiumError {
    fn from(e: fhirseal_storage::StorageError) -> Self {
        match e {
            fhirseal_storage::StorageError::KeyFile { path, reason } => Self::File { path, reason },
            other => Self::Keys(other.to_string()),
        }
    }
}

impl ConsortiumError {
    pub(crate) fn file(path: &std::path::Path, reason: impl std::fmt::Display) -> Self {
        Self::File {
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Result of the consortium node and CLI.
pub type Result<T, E = ConsortiumError> = std::result::Result<T, E>;
