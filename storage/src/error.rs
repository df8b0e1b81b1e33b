//! The storage crate's errors.

/// Everything that can go wrong in sealing and in the vault.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    #[error("RSA: {0}")]
    Rsa(String),
    #[error("a sealed record failed authentication: it was altered, or sealed for other metadata")]
    Authentication,
    #[error("the data key {0} that sealed this record is not in the vault")]
    UnknownDataKey(String),
    /// The record's person key was destroyed: the person's identity is erased.
    #[error("the person's key was destroyed: their identity is erased")]
    Erased,
    #[error("malformed stored data: {0}")]
    Corrupt(String),
    /// What the vault holds fails its integrity check (it was altered or damaged on disk).
    #[error("the vault is damaged: {0}")]
    Damaged(String),
    #[error(transparent)]
    Open(#[from] crate::open::OpenError),
}

impl StorageError {
    /// Whether the same call may succeed later (an I/O failure), as opposed to a refusal or
    /// corruption that will repeat.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::Sled(sled::Error::Io(_)))
    }
}

/// A `Result` with [`StorageError`].
pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// Fills `buf` from the operating system's random source.
pub(crate) fn random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| StorageError::Random(e.to_string()))
}
