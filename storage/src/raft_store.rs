//! Typed sled stores for a replicated log and the state machine it feeds.
//!
//! `consensus` runs the governance layer on openraft and keeps its log and state here. This
//! module knows nothing of Raft: it stores opaque entries under a `u64` position, opaque values
//! in named slots, and gives the few atomic operations a log needs (append a batch, cut the tail,
//! cut the head together with a marker). What the bytes mean, which slots exist and when a write
//! must be on disk are `consensus`'s business; it calls [`RaftStore::flush`] when it must.
//!
//! | tree | key | value |
//! |---|---|---|
//! | `raft.log` | position, u64 big-endian | an entry, as given |
//! | `raft.log_meta` | slot name (UTF-8) | a value, as given |
//! | `raft.machine` | slot name (UTF-8) | a value, as given |
//!
//! Positions are big-endian so that sled's byte order is log order: the last key is the last
//! entry and a range scan walks the log forwards. The log and its slots live in two trees so a
//! scan of the log never meets a slot; the one operation that must change both at once (cutting
//! the head and recording how far it was cut) is a sled transaction over the two.

use std::ops::{Bound, RangeBounds};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::{Batch, Tree};

/// Name of the tree of log entries by position.
pub const LOG_TREE: &str = "raft.log";
/// Name of the tree of the log's named values.
pub const LOG_META_TREE: &str = "raft.log_meta";
/// Name of the tree of the state machine's named values.
pub const MACHINE_TREE: &str = "raft.machine";

/// What can go wrong in the replicated-log stores.
#[derive(Debug, thiserror::Error)]
pub enum RaftStoreError {
    /// sled failed (I/O, or a corruption sled itself detected).
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// Writes were made but the flush that makes them durable failed: they are visible, and lost
    /// if the process stops before a later flush succeeds.
    #[error("written but not flushed: {0}")]
    NotFlushed(sled::Error),
    /// A stored key does not have the shape this module writes: the database was changed by
    /// something else.
    #[error("corrupt entry in {tree}: {what}")]
    Corrupt {
        /// The tree holding it.
        tree: &'static str,
        /// What is wrong.
        what: &'static str,
    },
}

/// Result of the replicated-log stores.
pub type Result<T, E = RaftStoreError> = std::result::Result<T, E>;

/// The replicated log's sled trees, typed. Cloning is cheap and shares the trees.
#[derive(Debug, Clone)]
pub struct RaftStore {
    db: sled::Db,
    log: Tree,
    log_meta: Tree,
    machine: Tree,
}

impl RaftStore {
    /// Opens (or creates) the trees in `db`, which may hold other trees too.
    pub fn open(db: &sled::Db) -> Result<Self> {
        Ok(Self {
            db: db.clone(),
            log: db.open_tree(LOG_TREE)?,
            log_meta: db.open_tree(LOG_META_TREE)?,
            machine: db.open_tree(MACHINE_TREE)?,
        })
    }

    /// Writes `entries` (position, bytes) in one atomic batch, replacing any entry already at
    /// one of those positions. Not flushed: see [`RaftStore::flush`].
    pub fn append(&self, entries: impl IntoIterator<Item = (u64, Vec<u8>)>) -> Result<()> {
        let _writing = crate::pause::writing();
        let mut batch = Batch::default();
        for (position, bytes) in entries {
            batch.insert(&position.to_be_bytes(), bytes);
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }

    /// The entry at `position`.
    pub fn entry(&self, position: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.log.get(position.to_be_bytes())?.map(|v| v.to_vec()))
    }

    /// The entries whose positions are in `range`, in order, as stored (a missing position is a
    /// jump, for the caller to judge).
    pub fn entries(&self, range: impl RangeBounds<u64>) -> Result<Vec<(u64, Vec<u8>)>> {
        let start = bound_key(range.start_bound());
        let end = bound_key(range.end_bound());
        self.log
            .range::<[u8; 8], _>((start, end))
            .map(|item| {
                let (key, value) = item?;
                Ok((position_from_key(&key)?, value.to_vec()))
            })
            .collect()
    }

    /// The entry with the highest position.
    pub fn last_entry(&self) -> Result<Option<(u64, Vec<u8>)>> {
        match self.log.last()? {
            Some((key, value)) => Ok(Some((position_from_key(&key)?, value.to_vec()))),
            None => Ok(None),
        }
    }

    /// Removes every entry at `position` and after, in one atomic batch. Not flushed.
    pub fn remove_from(&self, position: u64) -> Result<()> {
        self.remove_keys(self.log.range(position.to_be_bytes()..))
    }

    /// Removes every entry up to and including `position` and sets the log slot `slot` to
    /// `value`, atomically: a crash leaves both changes or neither. Not flushed.
    pub fn remove_through(&self, position: u64, slot: &str, value: &[u8]) -> Result<()> {
        // Read the keys first: a sled transaction cannot scan. Only the caller writes the log, so
        // nothing can slip in between the scan and the transaction.
        let keys = self
            .log
            .range(..=position.to_be_bytes())
            .keys()
            .collect::<Result<Vec<_>, sled::Error>>()?;
        let _writing = crate::pause::writing();
        let outcome =
            sled::Transactional::transaction(&(&self.log, &self.log_meta), |(log, meta)| {
                // sled may run this more than once on conflict: it only touches the view.
                meta.insert(slot.as_bytes(), value)?;
                for key in &keys {
                    log.remove(key)?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            });
        match outcome {
            Ok(()) => Ok(()),
            // Nothing above aborts.
            Err(TransactionError::Abort(())) => Ok(()),
            Err(TransactionError::Storage(error)) => Err(error.into()),
        }
    }

    /// The log slot `slot`.
    pub fn log_value(&self, slot: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.log_meta.get(slot.as_bytes())?.map(|v| v.to_vec()))
    }

    /// Sets the log slot `slot`. Not flushed.
    pub fn set_log_value(&self, slot: &str, value: &[u8]) -> Result<()> {
        let _writing = crate::pause::writing();
        self.log_meta.insert(slot.as_bytes(), value)?;
        Ok(())
    }

    /// The state-machine slot `slot`.
    pub fn machine_value(&self, slot: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.machine.get(slot.as_bytes())?.map(|v| v.to_vec()))
    }

    /// Sets several state-machine slots in one atomic batch. Not flushed.
    pub fn set_machine_values(&self, values: &[(&str, &[u8])]) -> Result<()> {
        let _writing = crate::pause::writing();
        let mut batch = Batch::default();
        for (slot, value) in values {
            batch.insert(slot.as_bytes(), *value);
        }
        self.machine.apply_batch(batch)?;
        Ok(())
    }

    /// Makes every write so far durable, and returns only then. sled keeps writes in memory until
    /// a flush (or its own background flush, every 500 ms by default); `flush_async` runs it on
    /// sled's thread pool so an async caller's thread is not blocked meanwhile.
    pub async fn flush(&self) -> Result<()> {
        self.db
            .flush_async()
            .await
            .map_err(RaftStoreError::NotFlushed)?;
        Ok(())
    }

    /// The sled database the store lives in (other trees of it too), for
    /// [`crate::dump::dump`]: a running node holds [`crate::pause::pause`] meanwhile.
    pub fn database(&self) -> &sled::Db {
        &self.db
    }

    fn remove_keys(
        &self,
        keys: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
    ) -> Result<()> {
        let mut batch = Batch::default();
        for item in keys {
            let (key, _) = item?;
            batch.remove(key);
        }
        let _writing = crate::pause::writing();
        self.log.apply_batch(batch)?;
        Ok(())
    }
}

fn bound_key(bound: Bound<&u64>) -> Bound<[u8; 8]> {
    match bound {
        Bound::Included(p) => Bound::Included(p.to_be_bytes()),
        Bound::Excluded(p) => Bound::Excluded(p.to_be_bytes()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn position_from_key(key: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| RaftStoreError::Corrupt {
        tree: LOG_TREE,
        what: "position key is not 8 bytes",
    })?;
    Ok(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> RaftStore {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .expect("temporary sled");
        RaftStore::open(&db).expect("open")
    }

    fn fill(store: &RaftStore, positions: std::ops::Range<u64>) {
        store
            .append(positions.map(|p| (p, p.to_le_bytes().to_vec())))
            .unwrap();
    }

    fn positions(entries: Vec<(u64, Vec<u8>)>) -> Vec<u64> {
        entries.into_iter().map(|(p, _)| p).collect()
    }

    #[test]
    fn ranges_follow_numeric_order() {
        let store = store();
        // 255 → 256 flips the low byte: only big-endian keys keep sled's order numeric.
        fill(&store, 250..260);
        assert_eq!(
            positions(store.entries(254..258).unwrap()),
            [254, 255, 256, 257]
        );
        assert_eq!(positions(store.entries(258..).unwrap()), [258, 259]);
        assert_eq!(positions(store.entries(..=251).unwrap()), [250, 251]);
        assert_eq!(store.last_entry().unwrap().unwrap().0, 259);
        assert_eq!(
            store.entry(256).unwrap(),
            Some(256u64.to_le_bytes().to_vec())
        );
        assert_eq!(store.entry(7).unwrap(), None);
    }

    #[test]
    fn cuts_the_tail_and_the_head() {
        let store = store();
        fill(&store, 1..11);
        store.remove_from(8).unwrap();
        assert_eq!(store.last_entry().unwrap().unwrap().0, 7);
        store.remove_through(3, "purged", b"3").unwrap();
        assert_eq!(positions(store.entries(..).unwrap()), [4, 5, 6, 7]);
        assert_eq!(store.log_value("purged").unwrap(), Some(b"3".to_vec()));
        // Cutting everything leaves the marker and no entry.
        store.remove_through(100, "purged", b"100").unwrap();
        assert_eq!(store.last_entry().unwrap(), None);
        assert_eq!(store.log_value("purged").unwrap(), Some(b"100".to_vec()));
    }

    #[test]
    fn machine_slots_are_written_together() {
        let store = store();
        assert_eq!(store.machine_value("state").unwrap(), None);
        store
            .set_machine_values(&[("state", b"s"), ("snapshot", b"p")])
            .unwrap();
        assert_eq!(store.machine_value("state").unwrap(), Some(b"s".to_vec()));
        assert_eq!(
            store.machine_value("snapshot").unwrap(),
            Some(b"p".to_vec())
        );
    }

    #[tokio::test]
    async fn survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let store = RaftStore::open(&db).unwrap();
            fill(&store, 0..3);
            store.set_log_value("vote", b"v").unwrap();
            store.set_machine_values(&[("state", b"s")]).unwrap();
            store.flush().await.unwrap();
        }
        let db = crate::open::reopen(dir.path());
        let store = RaftStore::open(&db).unwrap();
        assert_eq!(positions(store.entries(..).unwrap()), [0, 1, 2]);
        assert_eq!(store.log_value("vote").unwrap(), Some(b"v".to_vec()));
        assert_eq!(store.machine_value("state").unwrap(), Some(b"s".to_vec()));
    }

    #[test]
    fn a_foreign_key_in_the_log_is_reported() {
        let store = store();
        store.log.insert(b"odd", b"x".as_slice()).unwrap();
        assert!(matches!(
            store.last_entry(),
            Err(RaftStoreError::Corrupt { .. })
        ));
    }
}
