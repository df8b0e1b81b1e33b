//! The consortium node's and CLI's errors.

use fhirseal_consensus::governance::Refusal;
use fhirseal_consensus::raft::NodeError;
use fhirseal_storage::raft_store::RaftStoreError;
use http::StatusCode;

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
    /// The governance store cannot be opened (damaged, or held by another process).
    #[error("the governance store: {0}")]
    Open(fhirseal_storage::open::OpenError),
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
    Desk(#[from] DeskError),
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

/// Why a join request's invite does not let it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InviteRefusal {
    /// The request carries no invite.
    #[error("a join request needs an invite from the regulator (fhirseal consortium invite)")]
    Missing,
    /// No invite has this token: never issued, or already used.
    #[error("the invite is unknown or already used")]
    Unknown,
    /// The invite was issued for another member id.
    #[error("the invite is for another member id")]
    OtherMember,
    /// The invite expired.
    #[error("the invite has expired")]
    Expired,
}

/// Why the desk refuses a join request or an invite.
#[derive(Debug, thiserror::Error)]
pub enum DeskError {
    /// The body is not a join request the desk can read.
    #[error("{0}")]
    BadRequest(String),
    /// The consortium has no genesis yet.
    #[error("the consortium has no genesis yet; retry")]
    NoGenesis,
    /// The state would not admit it now.
    #[error("the consortium would refuse this admission: {0}")]
    Inadmissible(Refusal),
    /// The request's invite does not let it in.
    #[error(transparent)]
    Invite(#[from] InviteRefusal),
    /// Another request for this member id is pending.
    #[error("another join request with this member id is pending")]
    Pending,
    /// The member id is already a member's.
    #[error("{0} is already a member")]
    AlreadyMember(String),
    /// Too many requests or invites kept.
    #[error("too many pending {0}")]
    Full(&'static str),
    /// The database failed.
    #[error("the desk's store failed: {0}")]
    Store(#[from] sled::Error),
}

impl DeskError {
    /// The HTTP status it is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NoGenesis | Self::Full(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Invite(_) => StatusCode::FORBIDDEN,
            Self::Inadmissible(
                Refusal::MemberExists
                | Refusal::NodeIdTaken
                | Refusal::CertificateRevoked
                | Refusal::CertificateInUse
                | Refusal::SigningKeyInUse
                | Refusal::VoteKeyInUse,
            )
            | Self::Pending
            | Self::AlreadyMember(_) => StatusCode::CONFLICT,
            Self::Inadmissible(Refusal::Full) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Inadmissible(_) => StatusCode::BAD_REQUEST,
            Self::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}
