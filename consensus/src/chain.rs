//! The chain on disk: finalized blocks appended through the typed sled stores, proofs read back,
//! and the whole chain re-verified from genesis. Every member holds the same chain, each in its
//! own database; a block is appended only with a commit certificate of its epoch's delegates.

use fhirseal_storage::chain_store::{
    composite_key, BlockWrite, ChainStore, ChainStoreError, EntryLocation, IndexWrite, TxLocation,
};

use crate::block::{Block, BlockHeader, FinalizedBlock};
use crate::erasure::erasure_key;
use crate::error::{Error, Result};
use crate::grant::{consent_key, grant_key, grants_prefix, GrantRecord};
use crate::hash::Hash256;
use crate::keys::{DelegateSet, Rosters};
use crate::merkle;
use crate::proof::AnchorProof;
use crate::tx::{anchor_key, resource_anchor_prefix, Timestamp, Transaction, TxId};
use crate::validate::{check_certificate, validate_finalized_block, validate_header};

/// What [`Chain::append`] checks of a block before storing it.
#[derive(Debug, Clone, Copy)]
enum Checks {
    /// Everything: [`validate_finalized_block`].
    Whole,
    /// The header and the certificate: the caller validated the transactions.
    Header,
}

/// The format of the blocks a chain database holds, recorded in it ([`ChainStore::open_dir`]):
/// 2 since blocks carry BFT commit certificates and name the epoch of their successor (format
/// 1, the single-node chain's, is not read).
pub const CHAIN_FORMAT: u8 = 2;

/// What appending a block did: where it is, and which transactions it holds (a transaction's
/// position is its index here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockReceipt {
    /// The block's height.
    pub height: u64,
    /// The block's hash.
    pub hash: Hash256,
    /// Its transactions, in block order.
    pub transactions: Vec<TxId>,
}

/// The outcome of [`Chain::verify_chain`].
#[derive(Debug)]
pub enum ChainCheck {
    /// Every stored block verifies from genesis, and the indexes point where the blocks say.
    Valid {
        /// How many blocks (the tip's height + 1).
        blocks: u64,
    },
    /// The first block, from genesis, that does not.
    Broken {
        /// Its height.
        height: u64,
        /// What is wrong with it.
        fault: Error,
    },
}

/// The node's copy of the chain.
#[derive(Debug)]
pub struct Chain {
    reader: ChainReader,
    // The last stored block's header, so that appending does not read it back.
    tip: Option<BlockHeader>,
}

/// Reads of a stored chain that needs no tip: indexes, blocks, proofs. Cheap to clone; what
/// another handle appends is visible at once.
#[derive(Debug, Clone)]
pub struct ChainReader {
    store: ChainStore,
    chain: Hash256,
}

impl ChainReader {
    /// Reads over `store`, the chain with id `chain` (see [`crate::block::chain_id`]).
    pub fn new(store: ChainStore, chain: Hash256) -> Self {
        Self { store, chain }
    }

    /// The chain's id.
    pub fn chain_id(&self) -> &Hash256 {
        &self.chain
    }

    /// The epoch of the stored block at `height` (whose delegates certified it).
    pub fn epoch_of(&self, height: u64) -> Result<Option<u64>> {
        Ok(self.block(height)?.map(|b| b.block.header.epoch))
    }

    /// Up to `limit` stored blocks from `height` on, in height order (catch-up for a peer).
    pub fn blocks_from(&self, height: u64, limit: usize) -> Result<Vec<FinalizedBlock>> {
        let mut out = Vec::new();
        for item in self.store.blocks_from(height).take(limit) {
            let (h, bytes) = item?;
            if h != height + out.len() as u64 {
                break;
            }
            out.push(decode_block(h, &bytes)?);
        }
        Ok(out)
    }

    /// The store, for [`Chain::verify_store`].
    pub fn store(&self) -> &ChainStore {
        &self.store
    }

    /// The height of the last stored block, if any.
    pub fn tip_height(&self) -> Result<Option<u64>> {
        Ok(self.store.last_block()?.map(|(height, _)| height))
    }

    /// The last stored block, decoded.
    pub fn tip(&self) -> Result<Option<FinalizedBlock>> {
        match self.store.last_block()? {
            Some((height, bytes)) => Ok(Some(decode_block(height, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Where the transaction with this key (see [`Transaction::key`], [`TxId::key`]) is, if it
    /// is in the chain.
    pub fn locate_transaction(&self, key: &[u8]) -> Result<Option<TxLocation>> {
        Ok(self.store.transaction(key)?)
    }

    /// Where a resource version of `institution` is anchored, if it is.
    pub fn locate_anchor(
        &self,
        institution: &str,
        resource_type: &str,
        logical_id: &str,
        version_id: &str,
    ) -> Result<Option<EntryLocation>> {
        let key = anchor_key(institution, resource_type, logical_id, version_id);
        Ok(self.store.anchor(&key)?)
    }

    /// The anchored versions of `institution`'s resource, each with where it is anchored, in
    /// the order of their keys (not of their version ids).
    pub fn anchored_versions(
        &self,
        institution: &str,
        resource_type: &str,
        logical_id: &str,
    ) -> Result<Vec<(String, EntryLocation)>> {
        let prefix = resource_anchor_prefix(institution, resource_type, logical_id);
        let mut out = Vec::new();
        for (key, location) in self.store.anchors_under(&prefix)? {
            // What follows the prefix is the version id's part: its length (4 bytes), its bytes.
            let version = key
                .get(prefix.len() + 4..)
                .and_then(|v| std::str::from_utf8(v).ok())
                .ok_or(Error::IndexMismatch("anchor"))?;
            out.push((version.to_owned(), location));
        }
        Ok(out)
    }

    /// The block at `height`.
    pub fn block(&self, height: u64) -> Result<Option<FinalizedBlock>> {
        match self.store.block(height)? {
            Some(bytes) => Ok(Some(decode_block(height, &bytes)?)),
            None => Ok(None),
        }
    }

    /// The proof that a resource version of `institution` was anchored, or `None` if it was not.
    /// Check it with [`AnchorProof::verify`].
    pub fn proof(
        &self,
        institution: &str,
        resource_type: &str,
        logical_id: &str,
        version_id: &str,
    ) -> Result<Option<AnchorProof>> {
        let key = anchor_key(institution, resource_type, logical_id, version_id);
        let Some(location) = self.store.anchor(&key)? else {
            return Ok(None);
        };
        let block = self
            .block(location.height)?
            .ok_or(Error::MissingBlock(location.height))?;
        let tx_index = location.transaction as usize;
        let entry_index = location.entry as usize;
        let Some(Transaction::Anchor(batch)) = block.block.transactions.get(tx_index) else {
            return Err(Error::IndexMismatch("anchor"));
        };
        let entry = batch
            .entries
            .get(entry_index)
            .filter(|e| e.key() == key)
            .ok_or(Error::IndexMismatch("anchor"))?;
        let entry_path = batch
            .prove(entry_index)
            .ok_or(Error::IndexMismatch("anchor"))?;
        let transaction_path =
            merkle::prove(&block.block.leaves(), tx_index).ok_or(Error::IndexMismatch("anchor"))?;
        Ok(Some(AnchorProof {
            entry: entry.clone(),
            entry_path,
            batch: batch.header.clone(),
            transaction_path,
            header: block.block.header,
            certificate: block.certificate,
        }))
    }

    /// Re-verifies every stored block from genesis: see [`Chain::verify_store`].
    pub fn verify<R: Rosters>(&self, rosters: &R) -> Result<ChainCheck> {
        Chain::verify_store(&self.store, &self.chain, rosters)
    }

    /// Verifies the blocks after `since`: see [`Chain::verify_store_since`].
    pub fn verify_since<R: Rosters>(
        &self,
        rosters: &R,
        since: Option<BlockHeader>,
    ) -> Result<(ChainCheck, Option<BlockHeader>)> {
        Chain::verify_store_since(&self.store, &self.chain, rosters, since, |_| {})
    }

    /// Checks each evidence item of `transactions`, in a block at `height`, against the
    /// delegates of its offence's height: that height is stored (an offence is reported after its
    /// height is final) and below `height`, and the pair convicts one of its delegates on this
    /// chain.
    pub fn check_evidence<R: Rosters>(
        &self,
        height: u64,
        transactions: &[Transaction],
        rosters: &R,
    ) -> Result<()> {
        check_evidence(&self.store, &self.chain, height, transactions, rosters)
    }

    /// Where the anchor with this key (see [`crate::anchor_key`]) is, if it is in the chain.
    pub fn anchor(&self, key: &[u8]) -> Result<Option<EntryLocation>> {
        Ok(self.store.anchor(key)?)
    }

    /// The transaction an index entry points at, with its block's time; `what` names the index
    /// in the error when the block or the transaction is not there.
    fn indexed(
        &self,
        location: EntryLocation,
        what: &'static str,
    ) -> Result<(Timestamp, Transaction)> {
        let block = self
            .block(location.height)?
            .ok_or(Error::IndexMismatch(what))?;
        let time = block.header().time;
        let position = location.transaction as usize;
        let mut transactions = block.block.transactions;
        if position >= transactions.len() {
            return Err(Error::IndexMismatch(what));
        }
        Ok((time, transactions.swap_remove(position)))
    }

    /// The members that anchored records of the person `fingerprint`, in name order: what
    /// the chain tells of where a person's records are, and nothing more. Read from the index
    /// keys, which end with the member's name (see [`holder_key`]): no block is read.
    pub fn holders(&self, fingerprint: &[u8; 32]) -> Result<Vec<String>> {
        let prefix = holders_prefix(fingerprint);
        let mut out = Vec::new();
        for (key, _) in self.store.latest_under(&prefix)? {
            // What follows the prefix is the member's part: its length (4 bytes), its bytes.
            let institution = key
                .get(prefix.len() + 4..)
                .and_then(|v| std::str::from_utf8(v).ok())
                .ok_or(Error::IndexMismatch("holder"))?;
            out.push(institution.to_owned());
        }
        out.sort();
        Ok(out)
    }

    /// The time of the block that holds `institution`'s erasure of the person `fingerprint`,
    /// if it erased them.
    pub fn erasure(&self, institution: &str, fingerprint: &[u8; 32]) -> Result<Option<Timestamp>> {
        let Some(location) = self.store.latest(&erasure_key(institution, fingerprint))? else {
            return Ok(None);
        };
        let (time, Transaction::Erasure(_)) = self.indexed(location, "erasure")? else {
            return Err(Error::IndexMismatch("erasure"));
        };
        Ok(Some(time))
    }

    /// Whether `grantor`'s consent `consent` is in force on the chain: its latest item is a
    /// grant (whatever its period says).
    pub fn consent_in_force(&self, grantor: &str, consent: &str) -> Result<bool> {
        let Some(location) = self.store.latest(&consent_key(grantor, consent))? else {
            return Ok(false);
        };
        Ok(matches!(
            self.indexed(location, "consent")?,
            (_, Transaction::Grant(_))
        ))
    }

    /// Every grant `grantor` filed for the person `fingerprint` to `grantee`, one per consent
    /// (its latest), each with its block's time and whether it is still its consent's latest
    /// item (see [`crate::grant::decide`]).
    pub fn grants(
        &self,
        grantor: &str,
        fingerprint: &[u8; 32],
        grantee: &str,
    ) -> Result<Vec<GrantRecord>> {
        let mut out = Vec::new();
        for (_, location) in
            self.store
                .latest_under(&grants_prefix(grantor, fingerprint, grantee))?
        {
            let (granted_at, Transaction::Grant(mut batch)) = self.indexed(location, "grant")?
            else {
                return Err(Error::IndexMismatch("grant"));
            };
            let entry = location.entry as usize;
            if entry >= batch.items.len() {
                return Err(Error::IndexMismatch("grant"));
            }
            let grant = batch.items.swap_remove(entry);
            let latest = self.store.latest(&consent_key(grantor, &grant.consent))?;
            // The consent's latest item is this grant's transaction (one version of a consent
            // is one batch, which holds a grant per grantee).
            let current = latest.is_some_and(|l| {
                (l.height, l.transaction) == (location.height, location.transaction)
            });
            out.push(GrantRecord {
                grantor: grantor.to_owned(),
                grant,
                location,
                granted_at,
                current,
            });
        }
        Ok(out)
    }
}

fn check_evidence<R: Rosters>(
    store: &ChainStore,
    chain: &Hash256,
    in_height: u64,
    transactions: &[Transaction],
    rosters: &R,
) -> Result<()> {
    for tx in transactions {
        let Transaction::Evidence(batch) = tx else {
            continue;
        };
        for evidence in &batch.items {
            let height = evidence.height();
            if height >= in_height {
                return Err(Error::InvalidEvidence(
                    "the offence is not in a final height",
                ));
            }
            let bytes = store
                .block(height)?
                .ok_or(Error::InvalidEvidence("the offence's height is not stored"))?;
            let epoch = decode_block(height, &bytes)?.block.header.epoch;
            let roster = rosters
                .roster_at(height, epoch)
                .ok_or(Error::UnknownEpoch(epoch))?;
            let delegates: &DelegateSet = roster.delegates();
            evidence.verify(chain, delegates)?;
        }
    }
    Ok(())
}

impl Chain {
    /// Opens the chain with id `chain` kept in `store`, reading its tip, and files the entries
    /// of its stored blocks in the store's in-memory indexes (see [`ChainStore::file`]). Filing
    /// stops at a gap or at a block that does not decode or file: such a chain opens, for
    /// [`Chain::verify_chain`] to locate the damage, but takes no further block.
    pub fn open(store: ChainStore, chain: Hash256) -> Result<Self> {
        let tip = match store.last_block()? {
            Some((height, bytes)) => Some(decode_block(height, &bytes)?.block.header),
            None => None,
        };
        for item in store.blocks_from(store.filed()) {
            let Ok((height, bytes)) = item else {
                break;
            };
            let Ok(block) = decode_block(height, &bytes) else {
                break;
            };
            let filed = store.file(
                height,
                &anchor_writes(&block.block),
                &latest_writes(&block.block),
            );
            match filed {
                Ok(()) => {}
                Err(
                    ChainStoreError::NotFiled { .. }
                    | ChainStoreError::NotNext { .. }
                    | ChainStoreError::DuplicateAnchor { .. },
                ) => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Self {
            reader: ChainReader::new(store, chain),
            tip,
        })
    }

    /// The height of the first stored block whose entries could not be filed when the chain
    /// opened (a gap before it, a block that does not decode, an anchor anchored twice), if
    /// any: the chain takes no further block, and [`Chain::verify_chain`] says what is wrong.
    pub fn unfiled(&self) -> Option<u64> {
        let filed = self.reader.store.filed();
        (filed < self.next_height()).then_some(filed)
    }

    /// The chain's id.
    pub fn chain_id(&self) -> &Hash256 {
        self.reader.chain_id()
    }

    /// The last block's header.
    pub fn tip(&self) -> Option<&BlockHeader> {
        self.tip.as_ref()
    }

    /// The height the next block must have.
    pub fn next_height(&self) -> u64 {
        self.tip.as_ref().map_or(0, |t| t.height + 1)
    }

    /// Validates `block` against the tip and the roster of its epoch (see
    /// [`validate_finalized_block`]: its commit certificate among them) and its evidence (see
    /// [`ChainReader::check_evidence`]), then stores it with its indexes (see [`ChainStore`]) and
    /// flushes before returning. Refused, with nothing written: an invalid block, a transaction
    /// already in the chain (submission is idempotent on it: see [`Chain::locate_transaction`]),
    /// a resource version already anchored.
    pub async fn append<R: Rosters + Sync>(
        &mut self,
        block: &FinalizedBlock,
        rosters: &R,
    ) -> Result<BlockReceipt> {
        self.store(block, rosters, Checks::Whole).await
    }

    /// [`Chain::append`] of a block this node has validated whole against the tip, with
    /// [`crate::validate_block`] and the same rosters: the ledger's driver has every block it
    /// asks to store (it judged the body, or checked the finalized block it was sent). Its
    /// header, link, certificate and evidence are checked again, and the store refuses what is
    /// already in the chain; its transactions are not validated again (each batch's Merkle root
    /// and signature: most of the work for a block of thousands of entries).
    pub async fn append_validated<R: Rosters + Sync>(
        &mut self,
        block: &FinalizedBlock,
        rosters: &R,
    ) -> Result<BlockReceipt> {
        self.store(block, rosters, Checks::Header).await
    }

    async fn store<R: Rosters + Sync>(
        &mut self,
        block: &FinalizedBlock,
        rosters: &R,
        checks: Checks,
    ) -> Result<BlockReceipt> {
        let header = block.header();
        let roster = rosters
            .roster_at(header.height, header.epoch)
            .ok_or(Error::UnknownEpoch(header.epoch))?;
        let previous = self.tip.as_ref();
        let hash = match checks {
            Checks::Whole => validate_finalized_block(self.chain_id(), previous, block, &roster)?,
            Checks::Header => {
                validate_header(previous, &block.block, &roster)?;
                check_certificate(self.chain_id(), &block.certificate, header, &roster)?
            }
        };
        self.reader
            .check_evidence(header.height, &block.block.transactions, rosters)?;

        let bytes = block.to_bytes();
        let transactions: Vec<Vec<u8>> = block
            .block
            .transactions
            .iter()
            .map(Transaction::key)
            .collect();
        let anchors = anchor_writes(&block.block);
        let latest = latest_writes(&block.block);
        let write = BlockWrite {
            height: header.height,
            hash: hash.0,
            bytes: &bytes,
            transactions: &transactions,
            anchors: &anchors,
            latest: &latest,
        };
        match self.reader.store.append(&write).await {
            Ok(()) => {}
            Err(e @ ChainStoreError::NotFlushed(_)) => {
                // Written though not yet durable: the tip has moved all the same.
                self.tip = Some(header.clone());
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        }
        self.tip = Some(header.clone());
        Ok(BlockReceipt {
            height: header.height,
            hash,
            transactions: block
                .block
                .transactions
                .iter()
                .map(Transaction::id)
                .collect(),
        })
    }

    /// Read access to this chain for other tasks (proofs, blocks, verification) while this
    /// handle appends.
    pub fn reader(&self) -> ChainReader {
        self.reader.clone()
    }

    /// Where the transaction with this key (see [`Transaction::key`], [`TxId::key`]) is, if it
    /// is in the chain.
    pub fn locate_transaction(&self, key: &[u8]) -> Result<Option<TxLocation>> {
        self.reader.locate_transaction(key)
    }

    /// Where a resource version of `institution` is anchored, if it is.
    pub fn locate_anchor(
        &self,
        institution: &str,
        resource_type: &str,
        logical_id: &str,
        version_id: &str,
    ) -> Result<Option<EntryLocation>> {
        self.reader
            .locate_anchor(institution, resource_type, logical_id, version_id)
    }

    /// The block at `height`.
    pub fn block(&self, height: u64) -> Result<Option<FinalizedBlock>> {
        self.reader.block(height)
    }

    /// The proof that a resource version of `institution` was anchored: see
    /// [`ChainReader::proof`].
    pub fn proof(
        &self,
        institution: &str,
        resource_type: &str,
        logical_id: &str,
        version_id: &str,
    ) -> Result<Option<AnchorProof>> {
        self.reader
            .proof(institution, resource_type, logical_id, version_id)
    }

    /// Re-verifies every stored block from genesis: see [`Chain::verify_store`].
    pub fn verify_chain<R: Rosters>(&self, rosters: &R) -> Result<ChainCheck> {
        Self::verify_store(&self.reader.store, self.chain_id(), rosters)
    }

    /// [`Chain::verify_chain`] over a store that [`Chain::open`] refuses (its last block does not
    /// decode), so that the damage can still be located.
    pub fn verify_store<R: Rosters>(
        store: &ChainStore,
        chain: &Hash256,
        rosters: &R,
    ) -> Result<ChainCheck> {
        Self::verify_store_with(store, chain, rosters, |_| {})
    }

    /// [`Chain::verify_store`], calling `progress` with each height once it verifies.
    pub fn verify_store_with<R: Rosters>(
        store: &ChainStore,
        chain: &Hash256,
        rosters: &R,
        progress: impl FnMut(u64),
    ) -> Result<ChainCheck> {
        Ok(Self::verify_store_since(store, chain, rosters, None, progress)?.0)
    }

    /// Verifies the blocks after `since` (a header verified before: what it was verified
    /// against is trusted), or from genesis; returns the check of the whole chain on that trust
    /// and the last header that verifies, the checkpoint for the next call.
    pub fn verify_store_since<R: Rosters>(
        store: &ChainStore,
        chain: &Hash256,
        rosters: &R,
        since: Option<BlockHeader>,
        mut progress: impl FnMut(u64),
    ) -> Result<(ChainCheck, Option<BlockHeader>)> {
        let mut expected = since.as_ref().map_or(0, |h| h.height + 1);
        let mut previous: Option<BlockHeader> = since;
        for item in store.blocks_from(expected) {
            let (height, bytes) = match item {
                Ok(found) => found,
                Err(e @ ChainStoreError::Corrupt { .. }) => {
                    return Ok((broken(expected, Error::Store(e)), previous));
                }
                Err(e) => return Err(e.into()),
            };
            if height != expected {
                return Ok((broken(expected, Error::MissingBlock(expected)), previous));
            }
            match verify_stored(store, chain, height, &bytes, previous.as_ref(), rosters) {
                Ok(header) => {
                    previous = Some(header);
                    progress(height);
                }
                Err(fault) if fault.is_retryable() => return Err(fault),
                Err(fault) => return Ok((broken(height, fault), previous)),
            }
            expected += 1;
        }
        Ok((ChainCheck::Valid { blocks: expected }, previous))
    }
}

fn verify_stored<R: Rosters>(
    store: &ChainStore,
    chain: &Hash256,
    height: u64,
    bytes: &[u8],
    previous: Option<&BlockHeader>,
    rosters: &R,
) -> Result<BlockHeader> {
    let block = decode_block(height, bytes)?;
    let header = block.header();
    if header.height != height {
        return Err(Error::InvalidBlock("stored under another height"));
    }
    let roster = rosters
        .roster_at(header.height, header.epoch)
        .ok_or(Error::UnknownEpoch(header.epoch))?;
    let hash = validate_finalized_block(chain, previous, &block, &roster)?;
    check_evidence(store, chain, height, &block.block.transactions, rosters)?;

    if store.height_of(&hash.0)? != Some(height) {
        return Err(Error::IndexMismatch("block hash"));
    }
    for (position, tx) in block.block.transactions.iter().enumerate() {
        let expected = TxLocation {
            height,
            position: u32::try_from(position).unwrap_or(u32::MAX),
        };
        if store.transaction(&tx.key())? != Some(expected) {
            return Err(Error::IndexMismatch("transaction"));
        }
    }
    let anchors = anchor_writes(&block.block);
    if height >= store.filed() {
        // Not filed: a store opened without filing its blocks (one `Chain::open` refused), or
        // filing stopped at this block when the chain opened. Filed now that it verifies, and
        // broken if one of its anchors is anchored in an earlier block.
        match store.file(height, &anchors, &latest_writes(&block.block)) {
            Ok(()) => {}
            Err(ChainStoreError::DuplicateAnchor {
                transaction,
                entry,
                existing,
            }) => {
                let resource = match block.block.transactions.get(transaction as usize) {
                    Some(Transaction::Anchor(batch)) => batch.entries.get(entry as usize),
                    _ => None,
                }
                .map(|e| e.resource())
                .unwrap_or_default();
                return Err(Error::AlreadyAnchored {
                    resource,
                    location: Some(existing),
                });
            }
            // An earlier block is not filed here (verification began after it).
            Err(ChainStoreError::NotFiled { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let filed = height < store.filed();
    for anchor in anchors.into_iter().filter(|_| filed) {
        let expected = EntryLocation {
            height,
            transaction: anchor.transaction,
            entry: anchor.entry,
        };
        if store.anchor(&anchor.key)? != Some(expected) {
            return Err(Error::IndexMismatch("anchor"));
        }
    }
    Ok(block.block.header)
}

fn broken(height: u64, fault: Error) -> ChainCheck {
    ChainCheck::Broken { height, fault }
}

fn decode_block(height: u64, bytes: &[u8]) -> Result<FinalizedBlock> {
    FinalizedBlock::from_bytes(bytes).map_err(|source| Error::CorruptBlock { height, source })
}

/// The `chain.latest` entries of a block, in block order: each grant under its grant key and
/// its consent's key, each revocation under its consent's key (see [`crate::grant`]), each
/// anchor under its person and institution ([`holder_key`]), each erasure under its
/// institution and person ([`erasure_key`]).
fn latest_writes(block: &Block) -> Vec<IndexWrite> {
    let mut out = Vec::new();
    let mut holders = std::collections::HashSet::new();
    for (t, tx) in block.transactions.iter().enumerate() {
        match tx {
            Transaction::Anchor(batch) => {
                // One entry per person and member a block: where is what matters, not which.
                for (e, entry) in batch.entries.iter().enumerate() {
                    if holders.insert((&entry.fingerprint, entry.institution.as_str())) {
                        out.push(index_write(
                            holder_key(&entry.fingerprint, &entry.institution),
                            t,
                            e,
                        ));
                    }
                }
            }
            Transaction::Grant(batch) => {
                let grantor = &batch.header.institution;
                for (e, grant) in batch.items.iter().enumerate() {
                    out.push(index_write(
                        grant_key(grantor, &grant.fingerprint, &grant.grantee, &grant.consent),
                        t,
                        e,
                    ));
                    out.push(index_write(consent_key(grantor, &grant.consent), t, e));
                }
            }
            Transaction::Revocation(batch) => {
                let grantor = &batch.header.institution;
                for (e, revocation) in batch.items.iter().enumerate() {
                    out.push(index_write(consent_key(grantor, &revocation.consent), t, e));
                }
            }
            Transaction::Erasure(batch) => {
                let institution = &batch.header.institution;
                for (e, erasure) in batch.items.iter().enumerate() {
                    out.push(index_write(
                        erasure_key(institution, &erasure.fingerprint),
                        t,
                        e,
                    ));
                }
            }
            _ => {}
        }
    }
    out
}

/// The `chain.latest` key of a person's latest anchor at a member.
fn holder_key(fingerprint: &[u8; 32], institution: &str) -> Vec<u8> {
    composite_key(&[b"holder", fingerprint, institution.as_bytes()])
}

/// The prefix of every [`holder_key`] of one person.
fn holders_prefix(fingerprint: &[u8; 32]) -> Vec<u8> {
    composite_key(&[b"holder", fingerprint])
}

/// The index entry `key` of the `e`-th item of the block's `t`-th transaction.
fn index_write(key: Vec<u8>, t: usize, e: usize) -> IndexWrite {
    IndexWrite {
        key,
        // Validation bounds both positions far below u32::MAX.
        transaction: u32::try_from(t).unwrap_or(u32::MAX),
        entry: u32::try_from(e).unwrap_or(u32::MAX),
    }
}

fn anchor_writes(block: &Block) -> Vec<IndexWrite> {
    let mut out = Vec::new();
    for (t, tx) in block.transactions.iter().enumerate() {
        if let Transaction::Anchor(batch) = tx {
            out.extend(
                batch
                    .entries
                    .iter()
                    .enumerate()
                    .map(|(e, entry)| index_write(entry.key(), t, e)),
            );
        }
    }
    out
}
