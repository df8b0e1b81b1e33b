//! The Raft log on sled: openraft's [`RaftLogStorage`] over `fhirseal-storage`'s
//! [`RaftStore`].
//!
//! Entries are stored by index (big-endian, so sled's order is log order), each in the encoding of
//! `raft/codec.rs`; the vote, the committed log id and the last purged log id sit in named
//! slots. What must be on disk before openraft is told, and why:
//!
//! - appended entries: the [`LogFlushed`] callback is called only after `flush_async` returns,
//!   because openraft counts this node towards the commit quorum from that callback;
//! - the vote: flushed before `save_vote` returns, since a node that forgets its vote may vote
//!   twice in one term;
//! - a truncation: flushed too, so entries a new leader replaced cannot come back after a crash
//!   and be read as if this node had stored them;
//! - the committed log id and a purge: not flushed. The committed id is a hint that lets a
//!   restarted node re-apply its log at once (openraft learns it again from the leader anyway);
//!   a purge that is lost only leaves entries that are already in a snapshot.
//!
//! Every failure is returned as openraft's `StorageError`, on which openraft stops the node: the
//! sidecar treats it as fatal and restarts from disk rather than go on with a log it cannot trust.

use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;

use fhirseal_storage::raft_store::RaftStore;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};

use crate::codec::DecodeError;
use crate::raft::codec;
use crate::raft::types::{NodeId, TypeConfig};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";

/// The sled-backed Raft log. Cloning is cheap; clones share the trees (the clone openraft's
/// replication tasks read through is one).
#[derive(Debug, Clone)]
pub struct LogStore {
    store: RaftStore,
}

impl LogStore {
    /// The log kept in `store`.
    pub fn new(store: RaftStore) -> Self {
        Self { store }
    }

    fn slot<T>(
        &self,
        slot: &str,
        decode: impl FnOnce(&[u8]) -> Result<T, DecodeError>,
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, StorageError<NodeId>> {
        let bytes = self
            .store
            .log_value(slot)
            .map_err(|e| io_error(subject.clone(), ErrorVerb::Read, &e))?;
        bytes
            .map(|b| decode(&b))
            .transpose()
            .map_err(|e| io_error(subject, ErrorVerb::Read, &e))
    }

    fn last_purged(&self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        self.slot(PURGED, codec::log_id_from_bytes, ErrorSubject::Logs)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let stored = self
            .store
            .entries(range)
            .map_err(|e| StorageIOError::read_logs(AnyError::new(&e)))?;
        stored
            .into_iter()
            .map(|(index, bytes)| {
                let entry = codec::entry_from_bytes(&bytes)
                    .map_err(|e| StorageIOError::read_log_at_index(index, AnyError::new(&e)))?;
                if entry.log_id.index != index {
                    let e = DecodeError::NotCanonical("log entry stored under another index");
                    return Err(StorageIOError::read_log_at_index(index, AnyError::new(&e)).into());
                }
                Ok(entry)
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged_log_id = self.last_purged()?;
        let last = self
            .store
            .last_entry()
            .map_err(|e| StorageIOError::read_logs(AnyError::new(&e)))?;
        let last_log_id = match last {
            Some((index, bytes)) => Some(
                codec::entry_from_bytes(&bytes)
                    .map_err(|e| StorageIOError::read_log_at_index(index, AnyError::new(&e)))?
                    .log_id,
            ),
            None => None,
        };
        // With every entry purged, the last log id is the last purged one.
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last_log_id.max(last_purged_log_id),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.store
            .set_log_value(VOTE, &codec::vote_to_bytes(vote))
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)))?;
        self.store
            .flush()
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.slot(VOTE, codec::vote_from_bytes, ErrorSubject::Vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        // openraft never moves the committed id back; `None` is only ever the initial value.
        if let Some(committed) = committed {
            self.store
                .set_log_value(COMMITTED, &codec::log_id_to_bytes(&committed))
                .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, &e))?;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        self.slot(COMMITTED, codec::log_id_from_bytes, ErrorSubject::Store)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let encoded = entries
            .into_iter()
            .map(|entry| (entry.log_id.index, codec::entry_to_bytes(&entry)));
        if let Err(e) = self.store.append(encoded) {
            let error = StorageIOError::write_logs(AnyError::new(&e));
            callback.log_io_completed(Err(io::Error::other(e)));
            return Err(error.into());
        }
        // The entries are readable now, as openraft requires on return; they count as stored
        // only once they are on disk.
        match self.store.flush().await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let error = StorageIOError::write_logs(AnyError::new(&e));
                callback.log_io_completed(Err(io::Error::other(e)));
                Err(error.into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.store
            .remove_from(log_id.index)
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        self.store
            .flush()
            .await
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // The purge marker and the removal happen in one sled transaction: the log never shows
        // a gap between the last purged id and the first entry.
        self.store
            .remove_through(log_id.index, PURGED, &codec::log_id_to_bytes(&log_id))
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        Ok(())
    }
}

fn io_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    error: &(impl std::error::Error + 'static),
) -> StorageError<NodeId> {
    StorageIOError::new(subject, verb, AnyError::new(error)).into()
}
