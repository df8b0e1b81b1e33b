//! The shared ledger as a pure state machine: the [`Driver`] runs one node's part of the chain —
//! the pool of transactions submitted to it, the BFT engine while the node is a delegate of the
//! height, the proposals it builds and judges, the blocks it finalizes or takes from peers — and
//! returns [`Effect`]s for its runtime to perform (write-ahead log, network, timers, the chain on
//! disk). The sidecar's runtime performs them over sled, a file and the consortium's mutual-TLS
//! transport; a simulation performs them in memory.
//!
//! What the driver does not own, it asks its [`LedgerContext`]: the delegates of each epoch and
//! the institutions' keys (the governance state), the stored chain's indexes, and the signing
//! keys the node holds.
//!
//! - `context.rs`: [`LedgerContext`], what a driver asks of the node around it;
//!   [`RosterUse`], which keys a roster names; [`Submitted`], what submitting a transaction did.
//! - `driver.rs`: the [`Driver`], its configuration, inputs, effects, errors and status.
//! - `election.rs`: the [`ElectionTracker`], the election folded over the chain beside the
//!   driver, who the delegates of each height are, and [`ElectedRosters`] for verification.
//! - `fixed.rs`: [`FixedContext`], the context of a single unchanging epoch, with the election's
//!   seats and record when the chain runs one.
//! - [`wal`]: the write-ahead log's records and their framing, as pure encode and decode.

mod context;
mod driver;
mod election;
mod fixed;
pub mod wal;

pub use context::{LedgerContext, RosterUse, Submitted};
pub use driver::{
    Answers, Driver, DriverConfig, DriverError, DriverStatus, Effect, Input, Outbound, Recipients,
    Role,
};
pub use election::{ElectedRosters, ElectionKeys, ElectionTracker, History, TrackError};
pub use fixed::{FixedContext, FixedElection};
