//! openraft's type configuration for the governance layer ([`TypeConfig`]), the node id
//! ([`NodeId`]) and the openraft handle ([`Raft`]).

use std::io::Cursor;

use openraft::BasicNode;

use crate::raft::request::{GovernanceRequest, GovernanceResponse};

/// A Raft node's id: the `node_id` of the member that runs it.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// openraft's types for the governance layer.
    pub TypeConfig:
        D = GovernanceRequest,
        R = GovernanceResponse,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The openraft handle of a governance node.
pub type Raft = openraft::Raft<TypeConfig>;
