//! The governance layer on openraft 0.9 (`storage-v2`): the type configuration, the sled-backed
//! log ([`LogStore`]) and state machine ([`StateMachine`]), and a node that starts them
//! ([`GovernanceNode`]).
//!
//! The log carries [`GovernanceRequest`]s: a signed [`crate::governance::SignedCommand`] and the
//! time the proposing node gave it. The state machine applies each with
//! [`crate::governance::GovernanceState::apply`] and answers a [`GovernanceResponse`]; its
//! snapshot is the state with the requests that built it ([`SnapshotData`]), which a receiver
//! replays before taking it. Storage is `fhirseal-storage`'s
//! [`fhirseal_storage::raft_store::RaftStore`] (typed sled trees that know nothing of Raft); what
//! is flushed when, and why, is written in [`log_store`] and [`state_machine`].
//!
//! The transport between nodes is not here: [`GovernanceNode::start`] takes any openraft
//! [`openraft::RaftNetworkFactory`], and the transport hands peers' RPCs to
//! [`GovernanceNode::raft`]. The sidecar's consortium node provides it (HTTP/2 over mutual TLS,
//! peers checked against [`GovernanceView`]; ARCHITECTURE.md, "Governance nodes", says why it
//! lives there), and applies the pure rules of [`rpc_rules`] (who may send which RPC) and
//! [`SnapshotData::verify`] before an RPC reaches openraft.
//! A consortium of one needs none: [`SoloNetwork`].
//!
//! - `types.rs`: openraft's type configuration ([`TypeConfig`]), [`NodeId`] and [`Raft`].
//! - `request.rs`: what the log carries ([`GovernanceRequest`]) and what applying it answers
//!   ([`GovernanceResponse`]).
//! - `codec.rs`: openraft's records (log ids, votes, memberships, entries, snapshot metadata) in
//!   the ledger's encoding, as kept on disk.
//! - [`log_store`]: the Raft log on sled ([`LogStore`]).
//! - `snapshot.rs`: what a snapshot carries ([`SnapshotData`]) and how a receiver checks it.
//! - [`state_machine`]: the state machine on sled ([`StateMachine`]) and its read view
//!   ([`GovernanceView`]).
//! - `node.rs`: one governance node ([`GovernanceNode`]) and the calls the sidecar makes on it.
//! - [`rpc_rules`]: who may send a node which Raft RPC.
//! - `solo.rs`: the network of a consortium of one ([`SoloNetwork`]).

// openraft's traits fix the error type to its `StorageError` (over 200 bytes); boxing it in our
// helpers would only add a conversion at every trait method. Errors here are rare and fatal.
#![allow(clippy::result_large_err)]

pub(crate) mod codec;
pub mod log_store;
mod node;
mod request;
pub mod rpc_rules;
mod snapshot;
mod solo;
pub mod state_machine;
mod types;

pub use log_store::LogStore;
pub use node::{GovernanceNode, NodeError};
pub use openraft::{BasicNode, Config};
pub use request::{GovernanceRequest, GovernanceResponse, Unencodable};
pub use rpc_rules::{authorize, RaftRpc, Receiver, RpcRefusal};
pub use snapshot::{History, SnapshotData, SnapshotRefusal, Verified};
pub use solo::{NoPeer, NoTransport, SoloNetwork};
pub use state_machine::{GovernanceView, StateMachine};
pub use types::{NodeId, Raft, TypeConfig};
