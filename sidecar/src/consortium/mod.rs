//! The consortium node: the governance layer of `fhirseal-consensus` run as its own process,
//! talking HTTP/2 over mutual TLS to the other members' nodes, and the `fhirseal consortium`
//! commands that found, join and govern a consortium.
//!
//! - [`files`] — a node's directory: `node.toml`, the member's keys (0600), the Raft store.
//! - [`trust`] — who may connect: the replicated whitelist, checked in the TLS handshake (both
//!   ways) and again on every request; the certificate a node presents.
//! - [`transport`] — HTTP/2 channels over mutual TLS, and openraft's network over them.
//! - [`node`] — a running node: openraft, the API and Raft listener, the regulator's join desk,
//!   the leader's duties (membership follows the governance state).
//! - [`desk`] — the regulator's join desk: one-time invites (kept hashed) and the join requests
//!   they let in.
//! - [`api`] — what the API answers (status, submission outcomes, join answers), in JSON.
//! - [`cli`] — `init`, `invite`, `join`, `node`, `admit`, `suspend`, `reinstate`, `revoke`,
//!   `stake`, `rotate`, `joins`, `status`.
//!
//! ARCHITECTURE.md, "Governance nodes", says why the transport lives here rather than in
//! `fhirseal-consensus`.

pub mod api;
pub mod cli;
pub mod desk;
mod error;
pub mod files;
pub mod node;
pub mod transport;
pub mod trust;

pub use cli::{execute, Client, ConsortiumCommand};
pub use error::{ConsortiumError, Result};
