//! The node's part of the consortium's shared chain.
//!
//! Every member holds the whole chain (`data_dir/ledger`, a sled database of its own) and
//! verifies every block against the delegates of its epoch; the delegates finalize it with the
//! BFT engine of `fhirseal-consensus`, driven by a pure driver whose effects this module performs.
//! The embedded consortium of one is the same path with one delegate.
//!
//! - [`node`] — [`NodeLedger`]: proofs (of this institution's writes and of any member's),
//!   blocks, the status, waiting for a version's block; `open`, which makes the rest.
//! - [`runtime`] — the ledger's task: the driver, the chain's appending handle, the
//!   write-ahead log, timers, the effects performed in order.
//! - [`anchorer`] — the outbox drained into signed batches, submitted to the delegates, cleared
//!   once the node's chain holds them.
//! - [`context`] — what the driver asks of the node, answered from the governance state, the
//!   chain and the member's keys.
//! - [`view`] — what the governance state tells the ledger ([`LedgerView`]).
//! - [`wal`] — the write-ahead log file.
//! - [`net`] — outbound traffic to other members' nodes, one queue per peer.
//! - [`routes`] — inbound traffic on the consortium's listener; [`wire`] — its encodings.
//! - [`error`]; `misbehave` — a delegate that double signs on purpose, for the election's
//!   process tests (`FHIRSEAL_TEST_DOUBLE_SIGN`).

pub mod anchorer;
pub(crate) mod context;
pub mod error;
pub(crate) mod misbehave;
pub(crate) mod net;
pub mod node;
pub mod routes;
pub mod runtime;
pub mod view;
pub(crate) mod wal;
pub(crate) mod wire;

pub use anchorer::{AnchorPolicy, Anchorer, Round};
pub use error::LedgerError;
pub use node::{ledger_dir, wal_path, LedgerStatus, NodeLedger, Opened};
pub use routes::LedgerPort;
pub use runtime::{Runtime, RuntimeStatus};
pub use view::{LedgerView, MemberNode};

#[cfg(test)]
mod tests;
