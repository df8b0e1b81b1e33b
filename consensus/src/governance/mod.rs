//! The consortium's governance state machine, as pure code.
//!
//! The state ([`GovernanceState`]) holds the members (id, name, kind, status, TLS certificate
//! fingerprint, Ed25519 key, RSA wrapping key, ring-vote key, stake, reputation, Raft node), the
//! certificate revocation list, the consortium link key wrapped for each member, epochs, the
//! election records the DPoS fills, and a log of refused commands.
//!
//! It changes only through [`GovernanceState::apply`] of a [`SignedCommand`], and the
//! authorization is inside: admission, suspension, reinstatement, revocation, stake changes,
//! link-key wrapping and epochs need the regulator's signature; a key rotation needs the member's
//! own (with its current key, and a proof of possession of the new one); anything else is refused
//! and the refusal recorded. Each command carries a per-signer sequence number that must grow,
//! so a signed command is applied at most once, and a validity window (inside the signed
//! bytes) outside which it is refused, so a signed command is applied only around the time it
//! was signed for.
//!
//! It knows nothing of Raft, sockets, disks or clocks: [`crate::raft`] replicates the commands
//! and calls `apply` with the log entry's time, identical on every node, so every node reaches
//! the same state and the same refusals.

mod command;
mod key_history;
mod member;
mod state;

#[cfg(test)]
pub(crate) mod tests;

pub use command::{Command, CommandKind, SignedCommand, Validity};
pub use key_history::KeyHistory;
pub use member::{Admission, Member, MemberId, MemberKeys, MemberKind, MemberStatus, RaftRole};
pub use state::{
    ElectionRecord, Epoch, GovernanceState, Outcome, Refusal, RefusalRecord, RevokedCertificate,
    WrappedLinkKey,
};

/// Bounds on what the state holds, enforced by the decoder and checked before a command is
/// accepted (so that nothing accepted is undecodable).
pub mod limits {
    /// Longest id, name or node address, in bytes (as for ledger names).
    pub const MAX_NAME_LEN: usize = crate::codec::limits::MAX_NAME_LEN;
    /// Longest suspension or revocation reason, in bytes.
    pub const MAX_REASON_LEN: usize = 1024;
    /// Longest RSA public key (SubjectPublicKeyInfo DER): 8192-bit keys take about 1.1 KiB.
    pub const MAX_WRAPPING_KEY_LEN: usize = 2048;
    /// Longest wrapped link key: an RSA-OAEP ciphertext is as long as the modulus.
    pub const MAX_WRAPPED_KEY_LEN: usize = 1024;
    /// Most members, and most entries in one link-key command.
    pub const MAX_MEMBERS: usize = 4096;
    /// Most delegates of an epoch (K); a quorum certificate's signatures are bounded above it.
    pub const MAX_DELEGATES: usize = 256;
    /// K from genesis until the regulator sets another: every member, up to 4 (one fault
    /// tolerated once there are four).
    pub const DEFAULT_DELEGATES: u32 = 4;
    /// Most certificates on the revocation list.
    pub const MAX_REVOKED_CERTIFICATES: usize = 1 << 20;
    /// Refusals kept in the state (the count of all of them is kept too).
    pub const MAX_REFUSALS_KEPT: usize = 256;
    /// Longest validity window a signed command may carry: 31 days, room for the regulator's
    /// genesis commands, which `init` signs and the node submits when it first leads.
    pub const MAX_VALIDITY_MS: u64 = 31 * 24 * 60 * 60 * 1000;
}
