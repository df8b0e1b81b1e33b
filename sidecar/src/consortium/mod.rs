//! The node as a consortium member: the governance layer of `fhirseal-consensus`, run inside
//! every `fhirseal run` process beside the proxy, talking HTTP/2 over mutual TLS to the other
//! members' nodes; what the rest of the node follows of its state; and the
//! `fhirseal consortium` commands that found, join and govern a consortium.
//!
//! - [`files`] — a node's consortium files: its membership, its bootstrap trust, the Raft
//!   store, the member's keys in the node's keystore (0600).
//! - [`founding`] — what founding a consortium writes (`init`, the embedded default's first
//!   start).
//! - [`standing`] — whether the node takes part: the rule, over data.
//! - [`participation`] — what the node's parts follow of the state: the link key, the
//!   standing, the ledger's rosters and signing key.
//! - [`window`] — the validity windows commands are signed for.
//! - [`trust`] — who may connect: the replicated whitelist, checked in the TLS handshake (both
//!   ways) and again on every request; the certificate a node presents.
//! - [`transport`] — HTTP/2 channels over mutual TLS, and openraft's network over them.
//! - [`node`] — the running governance node: openraft, the API and Raft listener, the
//!   regulator's join desk, the leader's duties (membership follows the governance state),
//!   asking the other voters whether they still take this node's certificate.
//! - [`desk`] — the regulator's join desk: one-time invites (kept hashed) and the join requests
//!   they let in.
//! - [`api`] — what the API answers (status, submission outcomes, join answers), in JSON.
//! - [`cli`] — `init`, `invite`, `join`, `admit`, `suspend`, `reinstate`, `revoke`,
//!   `stake`, `rotate`, `joins`, `status`, on the node of a configuration and data directory.
//!
//! ARCHITECTURE.md, "Governance nodes", says why the transport lives here rather than in
//! `fhirseal-consensus`.

pub mod api;
pub mod cli;
pub mod desk;
pub(crate) mod error;
pub mod files;
pub mod founding;
pub mod node;
pub mod participation;
pub mod standing;
pub mod transport;
pub mod trust;
pub mod window;

pub use cli::{execute, Client, ConsortiumCommand, NodeArgs};
pub use error::{ConsortiumError, Result};
pub use node::{NodeStart, RunningNode};
