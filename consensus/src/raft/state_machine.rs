//! The governance state machine on sled: openraft's [`RaftStateMachine`] around the pure
//! [`GovernanceState`].
//!
//! Applying a batch of entries works on a copy of the state: each governance command goes
//! through [`GovernanceState::apply`] with the time its proposer gave it, the copy is written
//! whole to the `applied` slot (last applied log id, membership, state, length of the history),
//! and only then does it replace the state readers see. So readers never see a state that is
//! not on its way to disk, and a failed write leaves the old state in place.
//!
//! Beside the state it keeps the history, every governance request applied, in log order (see
//! [`super::snapshot`]: a snapshot carries it so that its receiver can check it). Each request
//! is kept in a slot of its own, `history/{position}`, written in the same batch as the
//! `applied` slot that counts it.
//!
//! The `applied` slot is not flushed on every apply: the log is (see [`super::log_store`]), and
//! on restart openraft re-applies committed entries after the last applied one, which are
//! deterministic. What must never be lost is a state the log can no longer rebuild: a snapshot,
//! after which openraft may purge the log. So a built or installed snapshot is flushed before
//! openraft hears of it, and opening the store takes the snapshot when it is newer than the
//! `applied` slot.

use std::io::Cursor;
use std::sync::{Arc, PoisonError, RwLock};

use fhirseal_storage::raft_store::RaftStore;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};

use crate::governance::GovernanceState;
use crate::raft::codec;
use crate::raft::request::{GovernanceRequest, GovernanceResponse};
use crate::raft::snapshot::{History, SnapshotData, SnapshotRefusal, Verified};
use crate::raft::types::{NodeId, TypeConfig};

const APPLIED: &str = "applied";
const SNAPSHOT: &str = "snapshot";

/// The slot of the history's request at `position`.
fn history_slot(position: usize) -> String {
    format!("history/{position:016x}")
}

/// What the state machine holds: the governance state, the requests that built it, and where
/// in the log it stands.
#[derive(Debug, Clone, Default)]
struct Applied {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    state: GovernanceState,
    history: History,
}

impl Applied {
    fn to_bytes(&self) -> Vec<u8> {
        codec::applied_to_bytes(
            &self.last_applied,
            &self.membership,
            &self.state.to_bytes(),
            self.history.len() as u64,
        )
    }
}

/// A read-only view of the applied governance state, shared with the state machine: what the
/// sidecar asks (is this certificate allowed, who is the regulator) while Raft runs.
#[derive(Debug, Clone)]
pub struct GovernanceView {
    shared: Arc<RwLock<Applied>>,
}

impl GovernanceView {
    /// Runs `f` on the current state. Keep it short: applying waits for it.
    pub fn read<T>(&self, f: impl FnOnce(&GovernanceState) -> T) -> T {
        // The lock is only ever held to read or to swap in a finished state, never across code
        // that can panic halfway through a change, so a poisoned lock still guards a whole state.
        let applied = self.shared.read().unwrap_or_else(PoisonError::into_inner);
        f(&applied.state)
    }

    /// A copy of the current state.
    pub fn state(&self) -> GovernanceState {
        self.read(GovernanceState::clone)
    }

    /// The index of the last applied log entry.
    pub fn last_applied_index(&self) -> Option<u64> {
        let applied = self.shared.read().unwrap_or_else(PoisonError::into_inner);
        applied.last_applied.map(|id| id.index)
    }

    /// The governance requests applied so far, in log order.
    pub fn history(&self) -> History {
        let applied = self.shared.read().unwrap_or_else(PoisonError::into_inner);
        applied.history.clone()
    }

    /// Whether this node may install the snapshot whose data is `bytes`: it decodes, and
    /// [`SnapshotData::verify`] accepts it against what this node has applied. The replay runs
    /// outside the lock, on a copy of the history.
    pub fn check_snapshot(&self, bytes: &[u8]) -> Result<Verified, SnapshotRefusal> {
        let snapshot = SnapshotData::from_bytes(bytes)?;
        snapshot.verify(&self.history())
    }
}

/// The sled-backed governance state machine. Cloning shares it (the snapshot builder is a
/// clone).
#[derive(Debug, Clone)]
pub struct StateMachine {
    store: RaftStore,
    shared: Arc<RwLock<Applied>>,
}

impl StateMachine {
    /// Opens the state machine kept in `store`: the `applied` slot, or the current snapshot if
    /// that is newer (see the module's documentation).
    pub fn open(store: RaftStore) -> Result<Self, StorageError<NodeId>> {
        let mut applied = match store
            .machine_value(APPLIED)
            .map_err(|e| StorageIOError::read_state_machine(AnyError::new(&e)))?
        {
            Some(bytes) => decode_applied(&store, &bytes)?,
            None => Applied::default(),
        };
        if let Some((meta, data)) = read_snapshot(&store)? {
            if meta.last_log_id > applied.last_applied {
                let (state, history) = decode_snapshot_data(&data)?.into_parts();
                applied = Applied {
                    last_applied: meta.last_log_id,
                    membership: meta.last_membership,
                    state,
                    history,
                };
            }
        }
        Ok(Self {
            store,
            shared: Arc::new(RwLock::new(applied)),
        })
    }

    /// A read-only view of the state, for the sidecar.
    pub fn view(&self) -> GovernanceView {
        GovernanceView {
            shared: Arc::clone(&self.shared),
        }
    }

    fn current(&self) -> Applied {
        self.shared
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn replace(&self, next: Applied) {
        *self.shared.write().unwrap_or_else(PoisonError::into_inner) = next;
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let applied = self.current();
        let data = SnapshotData::new(applied.state, applied.history).to_bytes();
        // Two snapshots at one log id hold the same state (applying is deterministic), so the
        // log id names a snapshot well enough.
        let snapshot_id = match &applied.last_applied {
            Some(id) => format!(
                "{}-{}-{}",
                id.leader_id.term, id.leader_id.node_id, id.index
            ),
            None => "empty".to_owned(),
        };
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership,
            snapshot_id,
        };
        let signature = Some(meta.signature());
        self.store
            .set_machine_values(&[(SNAPSHOT, &codec::snapshot_to_bytes(&meta, &data))])
            .map_err(|e| StorageIOError::write_snapshot(signature.clone(), AnyError::new(&e)))?;
        // openraft may purge the log up to this snapshot as soon as we return.
        self.store
            .flush()
            .await
            .map_err(|e| StorageIOError::write_snapshot(signature, AnyError::new(&e)))?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let applied = self.shared.read().unwrap_or_else(PoisonError::into_inner);
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(
        &mut self,
        entries: I,
    ) -> Result<Vec<GovernanceResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut next = self.current();
        let first_new = next.history.len();
        let mut responses = Vec::new();
        for entry in entries {
            next.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => GovernanceResponse::Raft,
                EntryPayload::Normal(request) => {
                    let outcome = next.state.apply(request.command(), request.proposed_at());
                    next.history.push(Arc::new(request));
                    GovernanceResponse::Command(outcome)
                }
                EntryPayload::Membership(membership) => {
                    next.membership = StoredMembership::new(Some(entry.log_id), membership);
                    GovernanceResponse::Raft
                }
            };
            responses.push(response);
        }
        let mut slots = vec![(APPLIED.to_owned(), next.to_bytes())];
        slots.extend(history_slots(&next.history, first_new));
        self.store
            .set_machine_values(&borrowed(&slots))
            .map_err(|e| StorageIOError::write_state_machine(AnyError::new(&e)))?;
        self.replace(next);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        // A snapshot that does not decode is refused before anything is replaced. Whether it
        // may be installed at all (its history builds its state and continues ours) is the
        // transport's to check before it reaches openraft, which stops the node on any error
        // returned here.
        let (state, history) = SnapshotData::from_bytes(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(&e)))?
            .into_parts();
        let next = Applied {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
            state,
            history,
        };
        let signature = Some(meta.signature());
        let mut slots = vec![
            (APPLIED.to_owned(), next.to_bytes()),
            (SNAPSHOT.to_owned(), codec::snapshot_to_bytes(meta, &data)),
        ];
        slots.extend(history_slots(&next.history, 0));
        self.store
            .set_machine_values(&borrowed(&slots))
            .map_err(|e| StorageIOError::write_snapshot(signature.clone(), AnyError::new(&e)))?;
        self.store
            .flush()
            .await
            .map_err(|e| StorageIOError::write_snapshot(signature, AnyError::new(&e)))?;
        self.replace(next);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(read_snapshot(&self.store)?.map(|(meta, data)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

/// A stored snapshot: its metadata and its data.
type StoredSnapshot = (SnapshotMeta<NodeId, BasicNode>, Vec<u8>);

fn read_snapshot(store: &RaftStore) -> Result<Option<StoredSnapshot>, StorageError<NodeId>> {
    let bytes = store
        .machine_value(SNAPSHOT)
        .map_err(|e| StorageIOError::read_snapshot(None, AnyError::new(&e)))?;
    bytes
        .map(|b| codec::snapshot_from_bytes(&b))
        .transpose()
        .map_err(|e| StorageIOError::read_snapshot(None, AnyError::new(&e)).into())
}

/// The slots of the history's requests from `from` on.
fn history_slots(history: &History, from: usize) -> impl Iterator<Item = (String, Vec<u8>)> + '_ {
    history
        .iter()
        .enumerate()
        .skip(from)
        .map(|(position, request)| (history_slot(position), request.to_bytes()))
}

fn borrowed(slots: &[(String, Vec<u8>)]) -> Vec<(&str, &[u8])> {
    slots
        .iter()
        .map(|(slot, value)| (slot.as_str(), value.as_slice()))
        .collect()
}

fn decode_applied(store: &RaftStore, bytes: &[u8]) -> Result<Applied, StorageError<NodeId>> {
    let read_error = |e: &dyn std::fmt::Display| {
        StorageError::from(StorageIOError::read_state_machine(AnyError::error(
            e.to_string(),
        )))
    };
    let (last_applied, membership, state, history_len) =
        codec::applied_from_bytes(bytes).map_err(|e| read_error(&e))?;
    let state = GovernanceState::from_bytes(&state).map_err(|e| read_error(&e))?;
    let history_len = usize::try_from(history_len).map_err(|e| read_error(&e))?;
    let mut history = Vec::with_capacity(history_len.min(1 << 16));
    for position in 0..history_len {
        let slot = history_slot(position);
        let bytes = store
            .machine_value(&slot)
            .map_err(|e| read_error(&e))?
            .ok_or_else(|| read_error(&format!("{slot} is missing")))?;
        history.push(Arc::new(
            GovernanceRequest::from_bytes(&bytes).map_err(|e| read_error(&e))?,
        ));
    }
    Ok(Applied {
        last_applied,
        membership,
        state,
        history,
    })
}

fn decode_snapshot_data(bytes: &[u8]) -> Result<SnapshotData, StorageError<NodeId>> {
    SnapshotData::from_bytes(bytes)
        .map_err(|e| StorageIOError::read_state_machine(AnyError::new(&e)).into())
}
