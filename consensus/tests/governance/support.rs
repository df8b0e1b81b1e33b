//! Members, signed commands, nodes on temporary sled directories, and an in-process network.
//!
//! The network calls the target node's openraft handle directly, after a round trip of every
//! message through serde_json: the real transport (HTTP/2 over mTLS) will serialize them too,
//! and this checks that our request type crosses a serde boundary intact. It is for these tests
//! only.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fhirseal_consensus::governance::{
    limits, Admission, Command, ElectionParams, MemberKeys, MemberKind, RaftRole, SignedCommand,
    Validity,
};
use fhirseal_consensus::raft::{BasicNode, Config, GovernanceNode, NodeId, Raft, TypeConfig};
use fhirseal_consensus::{PublicKey, SigningKey};
use fhirseal_storage::raft_store::RaftStore;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub(crate) const CONSORTIUM: &str = "test-consortium";
pub(crate) const REGULATOR: &str = "regulator";

/// A member's secret signing key and admission, made from a one-byte seed (its node id too).
pub(crate) struct Party {
    pub(crate) key: SigningKey,
    pub(crate) admission: Admission,
    next_sequence: u64,
}

impl Party {
    pub(crate) fn new(id: &str, seed: u8, kind: MemberKind, role: RaftRole) -> Self {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let admission = Admission {
            id: id.to_owned(),
            name: format!("{id} (name)"),
            kind,
            node_id: u64::from(seed),
            address: format!("node-{seed}"),
            raft_role: role,
            keys: MemberKeys {
                tls_certificate: [seed; 32],
                signing_key: PublicKey::of(&key),
                wrapping_key: vec![seed; 294],
                vote_key: [seed.wrapping_add(100); 32],
                beacon_key: [seed.wrapping_add(150); 32],
            },
            stake: 100,
            reputation: 50,
        };
        Self {
            key,
            admission,
            next_sequence: 1,
        }
    }

    pub(crate) fn regulator(seed: u8) -> Self {
        Self::new(REGULATOR, seed, MemberKind::Regulator, RaftRole::Voter)
    }

    pub(crate) fn id(&self) -> &str {
        &self.admission.id
    }

    /// Signs `command` with the next sequence number.
    pub(crate) fn sign(&mut self, command: Command) -> SignedCommand {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        // A window as long as a command may carry, from time 0: these tests submit at times
        // of a few seconds.
        let window = Validity {
            not_before: fhirseal_consensus::Timestamp(0),
            not_after: fhirseal_consensus::Timestamp(limits::MAX_VALIDITY_MS),
        };
        SignedCommand::sign(CONSORTIUM, self.id(), sequence, window, command, &self.key)
    }

    pub(crate) fn genesis(&mut self) -> SignedCommand {
        let regulator = self.admission.clone();
        self.sign(Command::Genesis {
            regulator,
            election: ElectionParams::NONE,
        })
    }

    /// The command admitting `self`, with its proof of possession (for the regulator to sign).
    pub(crate) fn admission_command(&self) -> Command {
        Command::Admit {
            member: self.admission.clone(),
            possession: self
                .admission
                .keys
                .prove_possession(CONSORTIUM, self.id(), &self.key),
        }
    }
}

/// Timeouts short enough for tests, and snapshots every `snapshot_every` entries with nothing
/// kept behind them, so that purging is exercised.
pub(crate) fn config(snapshot_every: u64) -> Config {
    Config {
        cluster_name: "fhirseal-test".into(),
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Config::default()
    }
}

/// Opens the sled store in `dir`.
///
/// sled locks its directory until the last handle on the database is dropped. After a node's
/// shutdown a task openraft spawned (a snapshot build holds a clone of the state machine) may
/// still be letting go of its handle, so reopening in the same process retries for a while; a
/// restarted process does not meet this.
pub(crate) fn open_store(dir: &Path) -> (sled::Db, RaftStore) {
    let mut attempts = 0;
    let db = loop {
        match sled::open(dir) {
            Ok(db) => break db,
            Err(sled::Error::Io(e)) if e.kind() == std::io::ErrorKind::Other && attempts < 100 => {
                attempts += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("cannot open {}: {e}", dir.display()),
        }
    };
    let store = RaftStore::open(&db).unwrap();
    (db, store)
}

/// Waits until `node` has applied the log up to `index`.
pub(crate) async fn applied(node: &GovernanceNode, index: u64) {
    node.raft()
        .wait(Some(Duration::from_secs(10)))
        .applied_index_at_least(Some(index), "applied")
        .await
        .unwrap_or_else(|e| panic!("node {} did not apply {index}: {e}", node.id()));
}

/// The nodes of an in-process cluster, by id.
#[derive(Clone, Default)]
pub(crate) struct Router {
    nodes: Arc<Mutex<BTreeMap<NodeId, Raft>>>,
}

impl Router {
    pub(crate) fn add(&self, id: NodeId, raft: Raft) {
        self.nodes.lock().unwrap().insert(id, raft);
    }

    fn get(&self, id: NodeId) -> Option<Raft> {
        self.nodes.lock().unwrap().get(&id).cloned()
    }
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Connection {
        Connection {
            target,
            router: self.clone(),
        }
    }
}

/// One node's line to another.
pub(crate) struct Connection {
    target: NodeId,
    router: Router,
}

#[derive(Debug, thiserror::Error)]
#[error("node {0} is not running")]
struct NotRunning(NodeId);

fn across<T: Serialize + DeserializeOwned>(value: T) -> T {
    serde_json::from_slice(&serde_json::to_vec(&value).unwrap()).unwrap()
}

impl Connection {
    // The error type is openraft's, fixed by `RaftNetwork`.
    #[allow(clippy::result_large_err)]
    fn target<E: std::error::Error>(
        &self,
    ) -> Result<Raft, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>> {
        self.router
            .get(self.target)
            .ok_or_else(|| RPCError::Unreachable(Unreachable::new(&NotRunning(self.target))))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let raft = self.target()?;
        raft.append_entries(across(rpc))
            .await
            .map(across)
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let raft = self.target()?;
        raft.install_snapshot(across(rpc))
            .await
            .map(across)
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        let raft = self.target()?;
        raft.vote(across(rpc))
            .await
            .map(across)
            .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}
