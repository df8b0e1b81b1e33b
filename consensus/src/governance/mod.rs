//! The consortium's governance state machine, as pure code.
//!
//! The state ([`GovernanceState`]) holds the members (id, name, kind, status, TLS certificate
//! fingerprint, Ed25519 key, RSA wrapping key, ring-vote key, beacon key, stake, reputation,
//! Raft node), the certificate revocation list, the consortium link key wrapped for each
//! member, epochs (their delegates, and the seats the DPoS election snapshots), the election's
//! parameters, and a log of refused commands. The election's own record lives on the chain.
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
//!
//! - `member.rs`: who the members are ([`Member`], [`MemberId`]), the keys they hold
//!   ([`MemberKeys`]), their kind, status and Raft role, and where their node listens.
//! - `command.rs`: the commands ([`Command`]), their signatures ([`SignedCommand`]) and
//!   validity windows ([`Validity`]).
//! - `state.rs`: the state ([`GovernanceState`]) and the rules that change it, with what it keeps
//!   (epochs, wrapped link keys, the revocation list, refusals).
//! - `epoch.rs`: an epoch ([`Epoch`]) with its delegates and seats ([`EpochSeat`]), and the
//!   election's parameters ([`ElectionParams`]).
//! - `key_history.rs`: every signing key each member has held ([`KeyHistory`]), read back from
//!   the history of applied commands.
//! - [`limits`]: the bounds on what the state holds.

mod command;
mod epoch;
mod key_history;
pub mod limits;
mod member;
mod state;

#[cfg(test)]
pub(crate) mod tests;

pub use command::{Command, CommandKind, SignedCommand, Validity};
pub use epoch::{ElectionParams, Epoch, EpochSeat};
pub use key_history::KeyHistory;
pub use member::{Admission, Member, MemberId, MemberKeys, MemberKind, MemberStatus, RaftRole};
pub use state::{
    GovernanceState, Outcome, Refusal, RefusalRecord, RevokedCertificate, WrappedLinkKey,
};
