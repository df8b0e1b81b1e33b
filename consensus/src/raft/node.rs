//! One governance node: openraft started over the sled log and state machine, and the calls the
//! sidecar makes on it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use fhirseal_storage::raft_store::RaftStore;
use openraft::error::{
    ChangeMembershipError, ClientWriteError, Fatal, ForwardToLeader, InitializeError, RaftError,
};
use openraft::{BasicNode, ChangeMembers, Config, RaftNetworkFactory, StorageError};

use crate::governance::{Outcome, SignedCommand};
use crate::raft::log_store::LogStore;
use crate::raft::request::{GovernanceRequest, GovernanceResponse, Unencodable};
use crate::raft::rpc_rules::Receiver;
use crate::raft::state_machine::{GovernanceView, StateMachine};
use crate::raft::types::{NodeId, Raft, TypeConfig};
use crate::tx::Timestamp;

/// What can go wrong running a governance node.
///
/// [`NodeError::ForwardToLeader`] is the one a caller acts on (send the command to the leader);
/// [`NodeError::Fatal`] means the node stopped, as openraft does on any storage error, and must
/// be restarted from disk.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The store could not be opened.
    #[error("raft storage: {0}")]
    Storage(#[from] StorageError<NodeId>),
    /// The Raft configuration is invalid.
    #[error("raft configuration: {0}")]
    Config(#[from] openraft::ConfigError),
    /// The command has a field over its bound.
    #[error(transparent)]
    Unencodable(#[from] Unencodable),
    /// This node is not the leader.
    #[error("not the leader; the leader is {leader_id:?} at {leader_address:?}")]
    ForwardToLeader {
        /// The leader's node id, if known.
        leader_id: Option<NodeId>,
        /// The leader's address, if known.
        leader_address: Option<String>,
    },
    /// A membership change was refused (e.g. another one is in progress).
    #[error("membership change: {0}")]
    Membership(#[from] ChangeMembershipError<NodeId>),
    /// The cluster could not be initialized (e.g. it already is).
    #[error("initialize: {0}")]
    Initialize(#[from] InitializeError<NodeId, BasicNode>),
    /// The node stopped: a storage error, a panic, or a shutdown.
    #[error("raft node stopped: {0}")]
    Fatal(#[from] Fatal<NodeId>),
    /// A Raft entry answered where a command's outcome was expected (a bug if ever seen).
    #[error("the log entry was not a governance command")]
    NotACommand,
}

impl NodeError {
    /// Whether the same call may succeed later, here or at the leader.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::ForwardToLeader { .. } | Self::Membership(ChangeMembershipError::InProgress(_))
        )
    }
}

impl From<ForwardToLeader<NodeId, BasicNode>> for NodeError {
    fn from(e: ForwardToLeader<NodeId, BasicNode>) -> Self {
        Self::ForwardToLeader {
            leader_id: e.leader_id,
            leader_address: e.leader_node.map(|n| n.addr),
        }
    }
}

impl From<ClientWriteError<NodeId, BasicNode>> for NodeError {
    fn from(e: ClientWriteError<NodeId, BasicNode>) -> Self {
        match e {
            ClientWriteError::ForwardToLeader(f) => f.into(),
            ClientWriteError::ChangeMembershipError(m) => m.into(),
        }
    }
}

fn flatten<E: Into<NodeError>>(e: RaftError<NodeId, E>) -> NodeError {
    match e {
        RaftError::APIError(e) => e.into(),
        RaftError::Fatal(f) => f.into(),
    }
}

/// A running governance node.
#[derive(Clone)]
pub struct GovernanceNode {
    id: NodeId,
    raft: Raft,
    view: GovernanceView,
}

impl std::fmt::Debug for GovernanceNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GovernanceNode")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl GovernanceNode {
    /// Starts node `id` over the log and state kept in `store` (a fresh store starts an empty
    /// node; an existing one resumes where it stopped), talking to its peers through `network`.
    pub async fn start<N>(
        id: NodeId,
        config: Config,
        store: RaftStore,
        network: N,
    ) -> Result<Self, NodeError>
    where
        N: RaftNetworkFactory<TypeConfig>,
    {
        let config = Arc::new(config.validate()?);
        let log = LogStore::new(store.clone());
        let machine = StateMachine::open(store)?;
        let view = machine.view();
        let raft = Raft::new(id, config, network, log, machine).await?;
        Ok(Self { id, raft, view })
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Makes this node a cluster of one voter listening at `address`, unless it already belongs
    /// to a cluster. Call it on one node only (the regulator's, at genesis); the others join as
    /// the state admits them (see [`GovernanceNode::sync_membership`]). Returns whether it did.
    pub async fn initialize(&self, address: impl Into<String>) -> Result<bool, NodeError> {
        if self.raft.is_initialized().await? {
            return Ok(false);
        }
        let members = BTreeMap::from([(self.id, BasicNode::new(address.into()))]);
        self.raft.initialize(members).await.map_err(flatten)?;
        Ok(true)
    }

    /// Proposes `command` at time `now` and waits until it is committed and applied here; returns
    /// whether the state machine accepted or refused it. On a follower this is
    /// [`NodeError::ForwardToLeader`].
    pub async fn submit(
        &self,
        command: SignedCommand,
        now: Timestamp,
    ) -> Result<Outcome, NodeError> {
        let request = GovernanceRequest::new(command, now)?;
        let response = self.raft.client_write(request).await.map_err(flatten)?;
        match response.data {
            GovernanceResponse::Command(outcome) => Ok(outcome),
            GovernanceResponse::Raft => Err(NodeError::NotACommand),
        }
    }

    /// Brings the Raft membership in line with the governance state: every active member's node
    /// is added (as a learner first, to catch up), voters are the active members whose role is
    /// voter, and the nodes of members no longer active are removed. Leader only; one change at
    /// a time. Returns whether anything changed.
    pub async fn sync_membership(&self) -> Result<bool, NodeError> {
        let (voters, learners) = self.view.read(|s| (s.voters(), s.learners()));
        if voters.is_empty() {
            // Before genesis is applied the state names no one; removing every voter would be
            // refused anyway.
            return Ok(false);
        }
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let current_nodes: BTreeMap<NodeId, BasicNode> = membership
            .nodes()
            .map(|(id, node)| (*id, node.clone()))
            .collect();
        let current_voters: BTreeSet<NodeId> = membership.voter_ids().collect();

        let wanted: BTreeMap<NodeId, String> = voters
            .iter()
            .chain(learners.iter())
            .map(|(id, a)| (*id, a.clone()))
            .collect();
        let mut changed = false;
        for (id, address) in &wanted {
            let known = current_nodes.get(id).map(|n| n.addr.as_str());
            if known != Some(address.as_str()) && !current_voters.contains(id) {
                // Blocks until the learner has caught up, so promoting it next cannot stall
                // the quorum.
                self.raft
                    .add_learner(*id, BasicNode::new(address.clone()), true)
                    .await
                    .map_err(flatten)?;
                changed = true;
            }
        }
        let wanted_voters: BTreeSet<NodeId> = voters.keys().copied().collect();
        if wanted_voters != current_voters {
            self.raft
                .change_membership(wanted_voters, false)
                .await
                .map_err(flatten)?;
            changed = true;
        }
        let stale: BTreeSet<NodeId> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .learner_ids()
            .filter(|id| !wanted.contains_key(id))
            .collect();
        if !stale.is_empty() {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(stale), false)
                .await
                .map_err(flatten)?;
            changed = true;
        }
        Ok(changed)
    }

    /// The applied governance state.
    pub fn state(&self) -> &GovernanceView {
        &self.view
    }

    /// What this node knows for [`crate::raft::authorize`]: `voters` (as the transport's trust
    /// knows them) and its vote as openraft last reported it.
    pub fn receiver(&self, voters: BTreeSet<NodeId>) -> Receiver {
        Receiver {
            voters,
            vote: self.vote(),
        }
    }

    /// Its vote, as openraft last reported it.
    pub fn vote(&self) -> openraft::Vote<NodeId> {
        self.raft.metrics().borrow().vote
    }

    /// The openraft handle: the transport delivers peers' RPCs to it, after the checks of
    /// [`crate::raft::rpc_rules`]; tests watch its metrics.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Stops the node. The store stays as it is, to be started again.
    pub async fn shutdown(&self) -> Result<(), NodeError> {
        // The only error is the core task's join error: it panicked.
        self.raft
            .shutdown()
            .await
            .map_err(|_| NodeError::Fatal(Fatal::Panicked))
    }
}
