//! The network of a consortium of one: there is no peer to reach.
//!
//! The embedded default (`fhirseal run` without configuration) runs the governance layer on one
//! node that is regulator and only voter; openraft still asks for a network. A node alone never
//! sends an RPC, and if its membership ever named another node, every call would answer
//! "unreachable" until a real transport is configured.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};

use crate::raft::types::{NodeId, TypeConfig};

/// A network with no peers, for a single-node consortium.
#[derive(Debug, Clone, Copy, Default)]
pub struct SoloNetwork;

/// The connection [`SoloNetwork`] hands out: every call fails as unreachable.
#[derive(Debug, Clone, Copy)]
pub struct NoPeer {
    target: NodeId,
}

/// Why a [`NoPeer`] call failed.
#[derive(Debug, thiserror::Error)]
#[error("node {0} is not reachable: this node has no transport to other nodes")]
pub struct NoTransport(NodeId);

impl RaftNetworkFactory<TypeConfig> for SoloNetwork {
    type Network = NoPeer;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> NoPeer {
        NoPeer { target }
    }
}

impl NoPeer {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<NodeId, BasicNode, E> {
        RPCError::Unreachable(Unreachable::new(&NoTransport(self.target)))
    }
}

impl RaftNetwork<TypeConfig> for NoPeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        Err(self.unreachable())
    }
}
