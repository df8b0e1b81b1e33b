//! Typed sled stores for the ledger: blocks by height and the indexes that point into them.
//!
//! This module knows nothing of what a block, a transaction or an anchor *means*: `consensus`
//! encodes them and hands over bytes, keys and positions. What it does own is the shape of the
//! stores and the rules that make them a chain on disk:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `chain.blocks` | height, u64 big-endian | the encoded block, as given |
//! | `chain.block_hashes` | the block's 32-byte hash | height, u64 big-endian |
//! | `chain.transactions` | the transaction's key, as given | [`TxLocation`] (12 bytes) |
//!
//! Heights are big-endian so that sled's byte order is height order: the last key is the tip and
//! a range scan walks the chain from genesis. A block and its transaction index are written in
//! one sled transaction (so a crash leaves either all of them or none), the transaction refuses a
//! height that is not the next one and a key that is already recorded (which is what makes
//! anchoring idempotent), and [`ChainStore::append`] returns only after `flush_async`, because
//! sled writes reach the disk only on a flush.
//!
//! The indexes of the blocks' entries (each anchored entry by its key; the latest item filed
//! under a `chain.latest` key) are held in memory, not in sled: a block carries thousands of
//! entries, and sled 0.34 takes about 12 µs for each key it inserts (measured on 8,192-entry
//! blocks), so indexing them on disk bounded each member to about 40,000 entries a second of
//! CPU, shared on one machine by every member it hosts. They are derived from the blocks alone,
//! so nothing is lost with them: whoever opens the store files the stored blocks in height order
//! ([`ChainStore::file`], as `consensus`'s `Chain::open` does) and [`ChainStore::append`] files
//! each new one. Memory grows with the chain: about 270 bytes an anchored entry with its
//! `chain.latest` entry (resident growth while a chain of 670,000 entries was filed, in the
//! ledger bench), and opening files about a million entries in 1.8 s.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, PoisonError, RwLock};

use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Tree;

/// Name of the tree of encoded blocks by height; public so that tests can reach the raw bytes.
pub const BLOCKS_TREE: &str = "chain.blocks";
/// Name of the tree mapping a block hash to its height.
pub const BLOCK_HASHES_TREE: &str = "chain.block_hashes";
/// Name of the tree mapping a transaction key to its [`TxLocation`].
pub const TRANSACTIONS_TREE: &str = "chain.transactions";
/// Trees of earlier builds, which indexed the blocks' entries on disk: dropped at open.
const FORMER_TREES: [&str; 2] = ["chain.anchors", "chain.latest"];
/// The meta key by which an earlier build recorded that `chain.latest` was indexed.
const FORMER_LATEST_INDEXED: &str = "latest-indexed";

/// What can go wrong in the chain stores.
#[derive(Debug, thiserror::Error)]
pub enum ChainStoreError {
    /// sled failed (I/O, or a corruption sled itself detected). The write did not happen; it may
    /// be retried once the cause is gone.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// The block and its indexes were written, but the flush that makes them durable failed.
    /// They are visible, and the next successful flush will persist them; a crash before then
    /// loses them. Not retryable: writing the block again would be refused as a duplicate.
    #[error("block written but not flushed: {0}")]
    NotFlushed(sled::Error),
    /// The block's height is already stored.
    #[error("a block is already stored at height {height}")]
    HeightTaken {
        /// The height asked for.
        height: u64,
    },
    /// The block does not follow the stored tip (its predecessor is missing).
    #[error("block at height {height} has no stored predecessor")]
    NotNext {
        /// The height asked for.
        height: u64,
    },
    /// A block with this hash is already stored.
    #[error("a block with this hash is already stored at height {existing}")]
    DuplicateHash {
        /// Where it is.
        existing: u64,
    },
    /// A transaction key of the block is already recorded (or appears twice in the block).
    #[error("transaction at position {position} is already recorded at {existing}")]
    DuplicateTransaction {
        /// Its position in the refused block.
        position: u32,
        /// Where the key is already recorded.
        existing: TxLocation,
    },
    /// An anchor key of the block is already recorded (or appears twice in the block).
    #[error("anchor at {transaction}/{entry} is already recorded at {existing}")]
    DuplicateAnchor {
        /// Position of its transaction in the refused block.
        transaction: u32,
        /// Its position in that transaction.
        entry: u32,
        /// Where the key is already recorded.
        existing: EntryLocation,
    },
    /// A block was offered for filing or appending out of height order: the entries of the
    /// blocks below `filed` are filed, and only the block at that height can be next (a store
    /// opened without filing its stored blocks, or a chain with a gap or a damaged block).
    #[error("the block at height {height} cannot be filed: blocks are filed up to height {filed}")]
    NotFiled {
        /// The block's height.
        height: u64,
        /// The height of the next block to file.
        filed: u64,
    },
    /// The database cannot be opened: sled found it damaged, or the system refused.
    #[error(transparent)]
    Open(crate::open::OpenError),
    /// The database directory is held by another process (sled locks it).
    #[error("the ledger database {0} is in use by another process (is fhirseal running?)")]
    Locked(String),
    /// The database belongs to another owner than the one opening it.
    #[error("the ledger database belongs to '{found}', not to '{expected}'")]
    Owner {
        /// The owner recorded at creation.
        found: String,
        /// The owner asked for.
        expected: String,
    },
    /// The database holds blocks of another format than the one its opener reads (made by an
    /// earlier or a later version).
    #[error(
        "the ledger database holds blocks of format {found}, this version reads format {expected}: \
         move it aside to start a new chain"
    )]
    Format {
        /// The format recorded (1 for databases made before formats were recorded).
        found: u8,
        /// The format asked for.
        expected: u8,
    },
    /// A stored key or value does not have the shape this module writes: the database was
    /// changed by something else.
    #[error("corrupt entry in {tree}: {what}")]
    Corrupt {
        /// The tree holding it.
        tree: &'static str,
        /// What is wrong.
        what: &'static str,
    },
}

impl ChainStoreError {
    /// Whether the same write may succeed later (an I/O failure), as opposed to one that will be
    /// refused again whatever happens.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Sled(sled::Error::Io(_)))
    }
}

/// Result of the chain stores.
pub type Result<T, E = ChainStoreError> = std::result::Result<T, E>;

/// Where a transaction is: the block height and its position in the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TxLocation {
    /// Height of the block.
    pub height: u64,
    /// Position of the transaction in the block.
    pub position: u32,
}

impl TxLocation {
    const LEN: usize = 12;

    fn to_bytes(self) -> [u8; Self::LEN] {
        let mut out = [0; Self::LEN];
        out[..8].copy_from_slice(&self.height.to_be_bytes());
        out[8..].copy_from_slice(&self.position.to_be_bytes());
        out
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() != Self::LEN {
            return Err(ChainStoreError::Corrupt {
                tree: TRANSACTIONS_TREE,
                what: "location is not 12 bytes",
            });
        }
        let mut height = [0; 8];
        let mut position = [0; 4];
        height.copy_from_slice(&bytes[..8]);
        position.copy_from_slice(&bytes[8..]);
        Ok(Self {
            height: u64::from_be_bytes(height),
            position: u32::from_be_bytes(position),
        })
    }
}

impl std::fmt::Display for TxLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "height {} position {}", self.height, self.position)
    }
}

/// Where an anchored entry is: block height, transaction position, entry position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EntryLocation {
    /// Height of the block.
    pub height: u64,
    /// Position of the transaction (the batch) in the block.
    pub transaction: u32,
    /// Position of the entry in the batch.
    pub entry: u32,
}

impl std::fmt::Display for EntryLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "height {} transaction {} entry {}",
            self.height, self.transaction, self.entry
        )
    }
}

/// Builds a key from several parts so that no two different lists of parts give the same key:
/// each part is preceded by its length (u32 big-endian). Keys of lists that share their first
/// parts share a prefix, so a prefix scan finds e.g. every version of one resource.
pub fn composite_key(parts: &[&[u8]]) -> Vec<u8> {
    let len = parts.iter().map(|p| 4 + p.len()).sum();
    let mut key = Vec::with_capacity(len);
    for part in parts {
        // Parts longer than 4 GiB cannot be keys: sled would refuse them long before.
        let n = u32::try_from(part.len()).unwrap_or(u32::MAX);
        key.extend_from_slice(&n.to_be_bytes());
        key.extend_from_slice(part);
    }
    key
}

/// One item of a block to index with it: an anchored entry, or an entry of `chain.latest`
/// (which replaces what an earlier block filed under its key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexWrite {
    /// The index key, built by the caller (see [`composite_key`]).
    pub key: Vec<u8>,
    /// Position of its transaction in the block.
    pub transaction: u32,
    /// Its position in that transaction.
    pub entry: u32,
}

impl IndexWrite {
    /// Where it is, in the block at `height`.
    fn location(&self, height: u64) -> EntryLocation {
        EntryLocation {
            height,
            transaction: self.transaction,
            entry: self.entry,
        }
    }
}

/// Everything written for one block, in one transaction.
#[derive(Debug, Clone, Copy)]
pub struct BlockWrite<'a> {
    /// The block's height: 0 for genesis, then the stored tip's height + 1.
    pub height: u64,
    /// The block's hash, as the caller computes it.
    pub hash: [u8; 32],
    /// The encoded block, stored as given.
    pub bytes: &'a [u8],
    /// The key of each transaction in block order: the position of a key is its index here.
    pub transactions: &'a [Vec<u8>],
    /// The anchored entries of the block.
    pub anchors: &'a [IndexWrite],
    /// The `chain.latest` entries of the block, in block order: a later one under the same
    /// key replaces an earlier one.
    pub latest: &'a [IndexWrite],
}

/// The ledger's sled trees, typed, and the entry indexes filed from them. Clones share both.
#[derive(Debug, Clone)]
pub struct ChainStore {
    db: sled::Db,
    blocks: Tree,
    block_hashes: Tree,
    transactions: Tree,
    entries: Arc<RwLock<EntryIndexes>>,
}

/// The blocks' entries, by key: see the module's documentation.
#[derive(Debug, Default)]
struct EntryIndexes {
    /// Each anchored entry, under its key.
    anchors: BTreeMap<Box<[u8]>, EntryLocation>,
    /// The latest item filed under each key.
    latest: BTreeMap<Box<[u8]>, EntryLocation>,
    /// The blocks below this height are filed.
    filed: u64,
}

impl EntryIndexes {
    /// Whether the block at `height` with these `anchors` may be filed next: refused when
    /// another height is next, or when an anchor is filed already or repeated among them.
    fn admits(&self, height: u64, anchors: &[IndexWrite]) -> Result<()> {
        if height != self.filed {
            return Err(ChainStoreError::NotFiled {
                height,
                filed: self.filed,
            });
        }
        let mut seen: HashMap<&[u8], &IndexWrite> = HashMap::with_capacity(anchors.len());
        for anchor in anchors {
            let existing = match self.anchors.get(anchor.key.as_slice()) {
                Some(existing) => Some(*existing),
                None => seen
                    .insert(&anchor.key, anchor)
                    .map(|first| first.location(height)),
            };
            if let Some(existing) = existing {
                return Err(ChainStoreError::DuplicateAnchor {
                    transaction: anchor.transaction,
                    entry: anchor.entry,
                    existing,
                });
            }
        }
        Ok(())
    }

    /// Files the entries of the block at `height`, the next one.
    fn file(&mut self, height: u64, anchors: &[IndexWrite], latest: &[IndexWrite]) {
        for anchor in anchors {
            self.anchors
                .insert(anchor.key.as_slice().into(), anchor.location(height));
        }
        for entry in latest {
            self.latest
                .insert(entry.key.as_slice().into(), entry.location(height));
        }
        self.filed = height + 1;
    }
}

/// Every key of `index` starting with `prefix`, with its location, in key order.
fn under(
    index: &BTreeMap<Box<[u8]>, EntryLocation>,
    prefix: &[u8],
) -> Vec<(Vec<u8>, EntryLocation)> {
    index
        .range::<[u8], _>((
            std::ops::Bound::Included(prefix),
            std::ops::Bound::Unbounded,
        ))
        .take_while(|(key, _)| key.starts_with(prefix))
        .map(|(key, location)| (key.to_vec(), *location))
        .collect()
}

/// Name of the tree holding the database's owner.
pub const META_TREE: &str = "chain.meta";

impl ChainStore {
    /// Opens (or creates) a database of its own in the directory `path` for the chain of
    /// `owner` (an opaque name, recorded at creation) whose blocks are encoded in `format` (an
    /// opaque number, recorded when the first database of that format is made): refused when
    /// another process holds the directory, when it was created for another owner, or when it
    /// holds blocks of another format (a database with blocks and no format recorded is of
    /// format 1).
    pub fn open_dir(path: &std::path::Path, owner: &str, format: u8) -> Result<Self> {
        let db = crate::open::open_db(path).map_err(|e| match e {
            crate::open::OpenError::Locked { path } => ChainStoreError::Locked(path),
            other => ChainStoreError::Open(other),
        })?;
        let meta = db.open_tree(META_TREE)?;
        match meta.get("owner")? {
            Some(found) if found.as_ref() != owner.as_bytes() => {
                return Err(ChainStoreError::Owner {
                    found: String::from_utf8_lossy(&found).into_owned(),
                    expected: owner.to_owned(),
                });
            }
            Some(_) => {}
            None => {
                meta.insert("owner", owner.as_bytes())?;
                db.flush()?;
            }
        }
        let store = Self::open(&db)?;
        match meta.get("format")? {
            Some(found) if found.as_ref() != [format] => {
                return Err(ChainStoreError::Format {
                    found: found.first().copied().unwrap_or(0),
                    expected: format,
                });
            }
            Some(_) => {}
            None if !store.blocks.is_empty() => {
                return Err(ChainStoreError::Format {
                    found: 1,
                    expected: format,
                });
            }
            None => {
                meta.insert("format", &[format])?;
                db.flush()?;
            }
        }
        // An earlier build's on-disk entry indexes: derived from the blocks, so dropping them
        // loses nothing, and an index left to go stale would only mislead. Only in a database
        // this opener may read, and only once it is known to be.
        for tree in FORMER_TREES {
            db.drop_tree(tree)?;
        }
        if meta.remove(FORMER_LATEST_INDEXED)?.is_some() {
            db.flush()?;
        }
        Ok(store)
    }

    /// Opens (or creates) the chain trees in `db`, which may hold other trees too. No block is
    /// filed yet: file the stored ones with [`ChainStore::file`] before appending.
    pub fn open(db: &sled::Db) -> Result<Self> {
        Ok(Self {
            db: db.clone(),
            blocks: db.open_tree(BLOCKS_TREE)?,
            block_hashes: db.open_tree(BLOCK_HASHES_TREE)?,
            transactions: db.open_tree(TRANSACTIONS_TREE)?,
            entries: Arc::default(),
        })
    }

    /// The height of the next block to file: those below are.
    pub fn filed(&self) -> u64 {
        self.read_entries().filed
    }

    /// Files the entries of the stored block at `height`, the next one to file (see
    /// [`ChainStore::filed`]): its anchored entries, refused if one is filed already or
    /// repeated, and its `latest` entries, each replacing what an earlier block filed under its
    /// key. Refused with nothing filed: a block out of order, or one that is not stored.
    pub fn file(&self, height: u64, anchors: &[IndexWrite], latest: &[IndexWrite]) -> Result<()> {
        let mut entries = self.write_entries();
        if height == entries.filed && !self.blocks.contains_key(height.to_be_bytes())? {
            return Err(ChainStoreError::NotNext { height });
        }
        entries.admits(height, anchors)?;
        entries.file(height, anchors, latest);
        Ok(())
    }

    // A panic while the lock was held left the indexes whole: each change is made whole under
    // the lock before anything can fail.
    fn read_entries(&self) -> std::sync::RwLockReadGuard<'_, EntryIndexes> {
        self.entries.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_entries(&self) -> std::sync::RwLockWriteGuard<'_, EntryIndexes> {
        self.entries.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The highest stored block, with its height.
    pub fn last_block(&self) -> Result<Option<(u64, Vec<u8>)>> {
        match self.blocks.last()? {
            Some((key, value)) => Ok(Some((height_from_key(&key)?, value.to_vec()))),
            None => Ok(None),
        }
    }

    /// The encoded block at `height`.
    pub fn block(&self, height: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.blocks.get(height.to_be_bytes())?.map(|v| v.to_vec()))
    }

    /// Every stored block from `height` on, in height order. Heights are returned as stored, so a
    /// caller walking the chain sees a missing height as a jump.
    pub fn blocks_from(&self, height: u64) -> impl Iterator<Item = Result<(u64, Vec<u8>)>> + '_ {
        self.blocks.range(height.to_be_bytes()..).map(|item| {
            let (key, value) = item?;
            Ok((height_from_key(&key)?, value.to_vec()))
        })
    }

    /// The height of the block with this hash.
    pub fn height_of(&self, hash: &[u8; 32]) -> Result<Option<u64>> {
        match self.block_hashes.get(hash)? {
            Some(value) => {
                let bytes: [u8; 8] =
                    value
                        .as_ref()
                        .try_into()
                        .map_err(|_| ChainStoreError::Corrupt {
                            tree: BLOCK_HASHES_TREE,
                            what: "height is not 8 bytes",
                        })?;
                Ok(Some(u64::from_be_bytes(bytes)))
            }
            None => Ok(None),
        }
    }

    /// Where the transaction with this key was recorded.
    pub fn transaction(&self, key: &[u8]) -> Result<Option<TxLocation>> {
        self.transactions
            .get(key)?
            .map(|v| TxLocation::from_bytes(&v))
            .transpose()
    }

    /// Where the anchor with this key was recorded, among the filed blocks.
    pub fn anchor(&self, key: &[u8]) -> Result<Option<EntryLocation>> {
        Ok(self.read_entries().anchors.get(key).copied())
    }

    /// Every anchor whose key starts with `prefix`, in key order. Keys are
    /// [`composite_key`]s, so the key of a resource's leading parts (institution, type, id)
    /// is the prefix of its versions' keys and of no other resource's.
    pub fn anchors_under(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, EntryLocation)>> {
        Ok(under(&self.read_entries().anchors, prefix))
    }

    /// Where the latest item filed under this `chain.latest` key is.
    pub fn latest(&self, key: &[u8]) -> Result<Option<EntryLocation>> {
        Ok(self.read_entries().latest.get(key).copied())
    }

    /// Every `chain.latest` key starting with `prefix`, with where its latest item is, in key
    /// order.
    pub fn latest_under(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, EntryLocation)>> {
        Ok(under(&self.read_entries().latest, prefix))
    }

    /// Writes a block and its transaction index in one transaction and files its entries, then
    /// flushes, and only then returns.
    ///
    /// Refused, with nothing written: a height already stored or whose predecessor is missing,
    /// one that is not the next to file, a hash already stored, a transaction or anchor key
    /// already recorded or repeated in `write`.
    pub async fn append(&self, write: &BlockWrite<'_>) -> Result<()> {
        self.write(write)?;
        // sled keeps writes in memory until a flush; the caller reports success after this
        // returns, so the block must be on disk by then. `flush_async` runs the flush on sled's
        // own thread pool, so an async caller's thread is not blocked meanwhile.
        self.db
            .flush_async()
            .await
            .map_err(ChainStoreError::NotFlushed)?;
        Ok(())
    }

    /// The sled database the store lives in, for [`crate::dump::dump`]: a running node holds
    /// [`crate::pause::pause`] meanwhile.
    pub fn database(&self) -> &sled::Db {
        &self.db
    }

    fn write(&self, write: &BlockWrite<'_>) -> Result<()> {
        let height_key = write.height.to_be_bytes();
        let _writing = crate::pause::writing();
        // Held through the sled transaction, so that readers never see a filed entry whose
        // block is not stored, and no other append can file between the check and the filing.
        let mut entries = self.write_entries();
        let filed = &*entries;
        let trees = (&self.blocks, &self.block_hashes, &self.transactions);
        // sled may run this closure more than once on conflict: it only reads and writes the
        // transaction's own view, nothing else.
        let outcome = sled::Transactional::transaction(&trees, |(blocks, hashes, transactions)| {
            if blocks.get(height_key)?.is_some() {
                return abort(ChainStoreError::HeightTaken {
                    height: write.height,
                });
            }
            if let Some(previous) = write.height.checked_sub(1) {
                if blocks.get(previous.to_be_bytes())?.is_none() {
                    return abort(ChainStoreError::NotNext {
                        height: write.height,
                    });
                }
            }
            if let Some(existing) = hashes.get(write.hash)? {
                let existing = <[u8; 8]>::try_from(existing.as_ref())
                    .map(u64::from_be_bytes)
                    .unwrap_or(u64::MAX);
                return abort(ChainStoreError::DuplicateHash { existing });
            }
            blocks.insert(&height_key, write.bytes)?;
            hashes.insert(&write.hash, &height_key)?;
            for (position, key) in write.transactions.iter().enumerate() {
                let position = u32::try_from(position).unwrap_or(u32::MAX);
                if let Some(existing) = transactions.get(key)? {
                    let existing = tx_location_in(&existing)?;
                    return abort(ChainStoreError::DuplicateTransaction { position, existing });
                }
                let location = TxLocation {
                    height: write.height,
                    position,
                };
                transactions.insert(key.as_slice(), &location.to_bytes())?;
            }
            filed
                .admits(write.height, write.anchors)
                .map_err(ConflictableTransactionError::Abort)
        });
        match outcome {
            Ok(()) => {
                entries.file(write.height, write.anchors, write.latest);
                Ok(())
            }
            Err(TransactionError::Abort(error)) => Err(error),
            Err(TransactionError::Storage(error)) => Err(error.into()),
        }
    }
}

fn abort<T>(error: ChainStoreError) -> Result<T, ConflictableTransactionError<ChainStoreError>> {
    Err(ConflictableTransactionError::Abort(error))
}

// Inside a transaction a corrupt index entry aborts it with the same error a read would give.
fn tx_location_in(
    bytes: &[u8],
) -> Result<TxLocation, ConflictableTransactionError<ChainStoreError>> {
    TxLocation::from_bytes(bytes).map_err(ConflictableTransactionError::Abort)
}

fn height_from_key(key: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| ChainStoreError::Corrupt {
        tree: BLOCKS_TREE,
        what: "height key is not 8 bytes",
    })?;
    Ok(u64::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (sled::Db, ChainStore) {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .expect("temporary sled");
        let store = ChainStore::open(&db).expect("open");
        (db, store)
    }

    fn hash(n: u8) -> [u8; 32] {
        [n; 32]
    }

    fn key(s: &str) -> Vec<u8> {
        composite_key(&[s.as_bytes()])
    }

    #[tokio::test]
    async fn appends_in_order_and_reads_back() {
        let (_db, store) = store();
        assert_eq!(store.last_block().unwrap(), None);
        let txs0 = vec![key("a"), key("b")];
        let anchors0 = vec![IndexWrite {
            key: key("x"),
            transaction: 1,
            entry: 7,
        }];
        store
            .append(&BlockWrite {
                height: 0,
                hash: hash(0),
                bytes: b"block zero",
                transactions: &txs0,
                anchors: &anchors0,
                latest: &[],
            })
            .await
            .unwrap();
        store
            .append(&BlockWrite {
                height: 1,
                hash: hash(1),
                bytes: b"block one",
                transactions: &[],
                anchors: &[],
                latest: &[],
            })
            .await
            .unwrap();

        assert_eq!(
            store.last_block().unwrap(),
            Some((1, b"block one".to_vec()))
        );
        assert_eq!(store.block(0).unwrap(), Some(b"block zero".to_vec()));
        assert_eq!(store.block(2).unwrap(), None);
        assert_eq!(store.height_of(&hash(1)).unwrap(), Some(1));
        assert_eq!(
            store.transaction(&key("b")).unwrap(),
            Some(TxLocation {
                height: 0,
                position: 1
            })
        );
        assert_eq!(
            store.anchor(&key("x")).unwrap(),
            Some(EntryLocation {
                height: 0,
                transaction: 1,
                entry: 7
            })
        );
        assert_eq!(store.anchor(&key("y")).unwrap(), None);
    }

    #[tokio::test]
    async fn a_later_latest_entry_replaces_an_earlier_one() {
        let (_db, store) = store();
        let write = |key: &str, transaction, entry| IndexWrite {
            key: key.as_bytes().to_vec(),
            transaction,
            entry,
        };
        let first = [write("k1", 0, 0), write("k2", 0, 1)];
        store
            .append(&BlockWrite {
                height: 0,
                hash: hash(0),
                bytes: b"zero",
                transactions: &[],
                anchors: &[],
                latest: &first,
            })
            .await
            .unwrap();
        // In one block the later of two entries under a key wins too.
        let second = [write("k1", 2, 0), write("k1", 3, 4)];
        store
            .append(&BlockWrite {
                height: 1,
                hash: hash(1),
                bytes: b"one",
                transactions: &[],
                anchors: &[],
                latest: &second,
            })
            .await
            .unwrap();
        let at = |height, transaction, entry| EntryLocation {
            height,
            transaction,
            entry,
        };
        assert_eq!(store.latest(b"k1").unwrap(), Some(at(1, 3, 4)));
        assert_eq!(store.latest(b"k2").unwrap(), Some(at(0, 0, 1)));
        assert_eq!(store.latest(b"k3").unwrap(), None);
        assert_eq!(
            store.latest_under(b"k").unwrap(),
            vec![(b"k1".to_vec(), at(1, 3, 4)), (b"k2".to_vec(), at(0, 0, 1))]
        );
    }

    #[tokio::test]
    async fn refuses_gaps_and_taken_heights() {
        let (_db, store) = store();
        let block = |height, n| BlockWrite {
            height,
            hash: hash(n),
            bytes: b"b",
            transactions: &[],
            anchors: &[],
            latest: &[],
        };
        assert!(matches!(
            store.append(&block(1, 1)).await,
            Err(ChainStoreError::NotNext { height: 1 })
        ));
        store.append(&block(0, 0)).await.unwrap();
        assert!(matches!(
            store.append(&block(0, 9)).await,
            Err(ChainStoreError::HeightTaken { height: 0 })
        ));
        assert!(matches!(
            store.append(&block(1, 0)).await,
            Err(ChainStoreError::DuplicateHash { existing: 0 })
        ));
        assert_eq!(store.block(1).unwrap(), None);
    }

    #[tokio::test]
    async fn a_refused_block_writes_nothing() {
        let (_db, store) = store();
        let txs = vec![key("t")];
        store
            .append(&BlockWrite {
                height: 0,
                hash: hash(0),
                bytes: b"0",
                transactions: &txs,
                anchors: &[],
                latest: &[],
            })
            .await
            .unwrap();
        // The second block repeats transaction "t" after a new one and a new anchor: all of it
        // must be refused, including what came before the duplicate.
        let txs = vec![key("new"), key("t")];
        let anchors = vec![IndexWrite {
            key: key("fresh"),
            transaction: 0,
            entry: 0,
        }];
        let refused = store
            .append(&BlockWrite {
                height: 1,
                hash: hash(1),
                bytes: b"1",
                transactions: &txs,
                anchors: &anchors,
                latest: &[],
            })
            .await;
        match refused {
            Err(ChainStoreError::DuplicateTransaction { position, existing }) => {
                assert_eq!(position, 1);
                assert_eq!(existing.height, 0);
            }
            other => panic!("expected a duplicate transaction, got {other:?}"),
        }
        assert_eq!(store.block(1).unwrap(), None);
        assert_eq!(store.height_of(&hash(1)).unwrap(), None);
        assert_eq!(store.transaction(&key("new")).unwrap(), None);
        assert_eq!(store.anchor(&key("fresh")).unwrap(), None);
    }

    #[tokio::test]
    async fn refuses_an_anchor_key_twice_even_in_one_block() {
        let (_db, store) = store();
        let anchors = vec![
            IndexWrite {
                key: key("k"),
                transaction: 0,
                entry: 0,
            },
            IndexWrite {
                key: key("k"),
                transaction: 0,
                entry: 1,
            },
        ];
        let refused = store
            .append(&BlockWrite {
                height: 0,
                hash: hash(0),
                bytes: b"0",
                transactions: &[],
                anchors: &anchors,
                latest: &[],
            })
            .await;
        assert!(matches!(
            refused,
            Err(ChainStoreError::DuplicateAnchor {
                transaction: 0,
                entry: 1,
                existing: EntryLocation {
                    height: 0,
                    transaction: 0,
                    entry: 0
                },
            })
        ));
        assert_eq!(store.last_block().unwrap(), None);
        assert_eq!(store.filed(), 0);
    }

    #[tokio::test]
    async fn heights_iterate_in_numeric_order() {
        let (_db, store) = store();
        // 255 → 256 changes the low byte from 0xff to 0x00: little-endian keys would sort 256
        // before 255; big-endian keys keep sled's order equal to height order.
        for height in 0..300u64 {
            let mut h = [0; 32];
            h[..8].copy_from_slice(&height.to_be_bytes());
            store
                .append(&BlockWrite {
                    height,
                    hash: h,
                    bytes: &height.to_le_bytes(),
                    transactions: &[],
                    anchors: &[],
                    latest: &[],
                })
                .await
                .unwrap();
        }
        let heights: Vec<u64> = store.blocks_from(250).map(|item| item.unwrap().0).collect();
        assert_eq!(heights, (250..300).collect::<Vec<_>>());
        assert_eq!(store.last_block().unwrap().unwrap().0, 299);
    }

    /// [`ChainStore::open_dir`] of a directory this test just let go of (see
    /// `open::once_unlocked`).
    fn reopen_dir(path: &std::path::Path) -> ChainStore {
        crate::open::once_unlocked(
            path,
            || ChainStore::open_dir(path, "owner", 2),
            |e| matches!(e, ChainStoreError::Locked(_)),
        )
    }

    #[tokio::test]
    async fn survives_a_reopen_and_files_what_it_holds_again() {
        let dir = tempfile::tempdir().unwrap();
        let txs = vec![key("t")];
        let anchors = vec![IndexWrite {
            key: key("a"),
            transaction: 0,
            entry: 2,
        }];
        let latest = vec![IndexWrite {
            key: key("l"),
            transaction: 0,
            entry: 1,
        }];
        {
            let db = sled::open(dir.path()).unwrap();
            // An earlier build's on-disk entry index: dropped when the directory is opened.
            db.open_tree("chain.anchors")
                .unwrap()
                .insert(key("a"), &[0; 16])
                .unwrap();
            db.flush().unwrap();
        }
        {
            let store = reopen_dir(dir.path());
            assert!(!store
                .database()
                .tree_names()
                .iter()
                .any(|n| n == b"chain.anchors"));
            store
                .append(&BlockWrite {
                    height: 0,
                    hash: hash(3),
                    bytes: b"kept",
                    transactions: &txs,
                    anchors: &anchors,
                    latest: &latest,
                })
                .await
                .unwrap();
        }
        let store = reopen_dir(dir.path());
        assert_eq!(store.last_block().unwrap(), Some((0, b"kept".to_vec())));
        assert!(store.transaction(&key("t")).unwrap().is_some());
        // Entries are known once their block is filed again, and nothing is appended before.
        assert_eq!(store.filed(), 0);
        assert_eq!(store.anchor(&key("a")).unwrap(), None);
        let next = BlockWrite {
            height: 1,
            hash: hash(4),
            bytes: b"next",
            transactions: &[],
            anchors: &[],
            latest: &[],
        };
        assert!(matches!(
            store.append(&next).await,
            Err(ChainStoreError::NotFiled {
                height: 1,
                filed: 0
            })
        ));
        assert!(matches!(
            store.file(1, &[], &[]),
            Err(ChainStoreError::NotFiled {
                height: 1,
                filed: 0
            })
        ));
        store.file(0, &anchors, &latest).unwrap();
        let at = |entry| EntryLocation {
            height: 0,
            transaction: 0,
            entry,
        };
        assert_eq!(store.anchor(&key("a")).unwrap(), Some(at(2)));
        assert_eq!(store.latest(&key("l")).unwrap(), Some(at(1)));
        // A clone shares what is filed; a block not stored cannot be filed.
        assert_eq!(store.clone().filed(), 1);
        assert!(matches!(
            store.file(1, &[], &[]),
            Err(ChainStoreError::NotNext { height: 1 })
        ));
        store.append(&next).await.unwrap();
        assert_eq!(store.filed(), 2);
    }

    #[test]
    fn composite_keys_are_unambiguous() {
        assert_ne!(composite_key(&[b"ab", b"c"]), composite_key(&[b"a", b"bc"]));
        assert_eq!(composite_key(&[b"ab"]), vec![0, 0, 0, 2, b'a', b'b']);
        let prefix = composite_key(&[b"Patient", b"1"]);
        assert!(composite_key(&[b"Patient", b"1", b"2"]).starts_with(&prefix));
        assert!(!composite_key(&[b"Patient", b"12", b"2"]).starts_with(&prefix));
    }

    #[test]
    fn corrupt_locations_are_reported() {
        assert!(matches!(
            TxLocation::from_bytes(&[1, 2, 3]),
            Err(ChainStoreError::Corrupt { .. })
        ));
    }
}
