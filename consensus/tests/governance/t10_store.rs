//! The sled log and state machine against openraft's storage suite, and across a reopen.

use std::time::Instant;

use fhirseal_consensus::raft::{GovernanceResponse, LogStore, NodeId, StateMachine, TypeConfig};
use fhirseal_storage::raft_store::RaftStore;
use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader, StorageError, Vote};

/// A fresh sled database in its own temporary directory for every test of the suite; the
/// directory is the guard the suite keeps alive while the test runs.
struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let store = RaftStore::open(&db).unwrap();
        Ok((
            dir,
            LogStore::new(store.clone()),
            StateMachine::open(store)?,
        ))
    }
}

#[test]
fn passes_openraft_storage_suite() {
    let started = Instant::now();
    Suite::test_all(SledBuilder).unwrap();
    eprintln!("openraft storage suite: {:?}", started.elapsed());
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

#[tokio::test]
async fn log_vote_and_applied_state_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        let store = RaftStore::open(&db).unwrap();
        let mut log = LogStore::new(store.clone());
        let mut machine = StateMachine::open(store).unwrap();
        log.save_vote(&Vote::new_committed(3, 1)).await.unwrap();
        let entries: Vec<Entry<TypeConfig>> = (1..=5)
            .map(|i| Entry {
                log_id: log_id(3, i),
                payload: EntryPayload::Blank,
            })
            .collect();
        openraft::storage::RaftLogStorageExt::blocking_append(&mut log, entries.clone())
            .await
            .unwrap();
        log.save_committed(Some(log_id(3, 4))).await.unwrap();
        let responses = machine.apply(entries[..4].to_vec()).await.unwrap();
        assert_eq!(responses, vec![GovernanceResponse::Raft; 4]);
        log.purge(log_id(3, 2)).await.unwrap();
        log.truncate(log_id(3, 5)).await.unwrap();
    }
    let db = sled::open(dir.path()).unwrap();
    let store = RaftStore::open(&db).unwrap();
    let mut log = LogStore::new(store.clone());
    let mut machine = StateMachine::open(store).unwrap();
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(Vote::new_committed(3, 1))
    );
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(3, 4)));
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(3, 2)));
    assert_eq!(state.last_log_id, Some(log_id(3, 4)));
    let indexes: Vec<u64> = log
        .try_get_log_entries(0..10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.log_id.index)
        .collect();
    assert_eq!(indexes, [3, 4]);
    assert_eq!(machine.applied_state().await.unwrap().0, Some(log_id(3, 4)));
}
