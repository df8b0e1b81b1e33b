//! The vault: sealed identity records and their indexes in sled.
//!
//! Trees (keys big-endian or `\0`-separated, so prefix scans work):
//! - `records`: content address → encoded [`SealedRecord`];
//! - `resources`: `type \0 id \0 version` → content address;
//! - `by_fingerprint`: fingerprint ‖ `type \0 id` → (empty), the resources of one person;
//! - `surrogates`: fingerprint → surrogate; `surrogate_fp`: surrogate → fingerprint;
//! - `blind`: bucket token ‖ `type \0 id` → the entry's tags ([`TAG_LEN`] bytes each), one key
//!   per bucket a resource's current version is filed under; `blind_of`: `type \0 id` → its
//!   bucket tokens, so that an update replaces the entries of the version it supersedes;
//! - `epoch_keys`: epoch key id → RSA-wrapped epoch key;
//! - `intents`: request id ‖ `\0` ‖ position (u32) → an intent (opaque here): what a write
//!   sealed before it was forwarded, kept until its outcome is known, so that a crash between
//!   the upstream's commit and the vault's loses nothing;
//! - the [`Outbox`]'s trees: anchors and access events waiting for a final block.
//!
//! One write, or a group of concurrent writes ([`Vault::commit_all`]), is one sled transaction
//! over all of them, outbox entries included. sled writes reach the disk only on flush:
//! callers flush ([`Vault::flush_async`]) before they acknowledge a write.

use crate::error::{random, Result, StorageError};
use crate::keys::hex;
use crate::outbox::{Outbox, PendingAnchor};
use crate::pause::writing;
use crate::seal::{Fingerprint, NewEpochKey, SealedRecord, Sealer, TAG_LEN};
use sled::transaction::TransactionError;
use sled::Transactional;

/// What [`Vault::erase`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Erased {
    /// Resources the person had identity in.
    pub resources: usize,
    /// Sealed records (one per version).
    pub records: usize,
}

/// When writes are flushed to disk before the client is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Each write flushes before it is acknowledged.
    EveryWrite,
    /// Concurrent writes share one flush; each is still acknowledged only after it.
    GroupCommit,
}

/// Everything one sealed resource version writes.
#[derive(Debug, Clone)]
pub struct VaultWrite {
    pub record: SealedRecord,
    /// The epoch key that sealed the record, when it is new.
    pub new_epoch_key: Option<NewEpochKey>,
    /// Blind-index entries of this version; they replace those of the resource's earlier
    /// version.
    pub index: Vec<BlindEntry>,
    /// Hash of the clinical resource as the upstream stores it: when given, the version is
    /// queued for anchoring in the same transaction (see [`Vault::commit`]).
    pub clinical_hash: Option<[u8; 32]>,
}

/// What one resource files under one blind-index bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlindEntry {
    pub token: [u8; 32],
    pub tags: Vec<[u8; TAG_LEN]>,
}

/// The sled-backed vault.
#[derive(Debug, Clone)]
pub struct Vault {
    db: sled::Db,
    records: sled::Tree,
    resources: sled::Tree,
    by_fingerprint: sled::Tree,
    surrogates: sled::Tree,
    surrogate_fp: sled::Tree,
    blind: sled::Tree,
    blind_of: sled::Tree,
    epoch_keys: sled::Tree,
    intents: sled::Tree,
    outbox: Outbox,
}

fn resource_key(resource_type: &str, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(resource_type.len() + id.len() + 1);
    key.extend_from_slice(resource_type.as_bytes());
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}

/// The prefix of every [`version_key`] of one resource.
fn versions_prefix(resource_type: &str, id: &str) -> Vec<u8> {
    let mut key = resource_key(resource_type, id);
    key.push(0);
    key
}

fn version_key(resource_type: &str, id: &str, version: &str) -> Vec<u8> {
    let mut key = versions_prefix(resource_type, id);
    key.extend_from_slice(version.as_bytes());
    key
}

fn intent_key(request: &str, position: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(request.len() + 5);
    key.extend_from_slice(request.as_bytes());
    key.push(0);
    key.extend_from_slice(&position.to_be_bytes());
    key
}

fn concat(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(a.len() + b.len());
    key.extend_from_slice(a);
    key.extend_from_slice(b);
    key
}

fn split_resource(key: &[u8]) -> Result<(String, String)> {
    let pos = key
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| StorageError::Corrupt("resource key without separator".to_owned()))?;
    let text = |b: &[u8]| {
        String::from_utf8(b.to_vec())
            .map_err(|_| StorageError::Corrupt("resource key is not UTF-8".to_owned()))
    };
    Ok((text(&key[..pos])?, text(&key[pos + 1..])?))
}

fn fingerprint(bytes: &[u8]) -> Result<Fingerprint> {
    bytes
        .try_into()
        .map(Fingerprint)
        .map_err(|_| StorageError::Corrupt("fingerprint is not 32 bytes".to_owned()))
}

impl Vault {
    /// Opens (or creates) the vault in the directory `path`.
    pub fn open(path: &std::path::Path) -> Result<Vault> {
        let db = crate::open::open_db(path)?;
        Ok(Vault {
            records: db.open_tree("records")?,
            resources: db.open_tree("resources")?,
            by_fingerprint: db.open_tree("by_fingerprint")?,
            surrogates: db.open_tree("surrogates")?,
            surrogate_fp: db.open_tree("surrogate_fp")?,
            blind: db.open_tree("blind")?,
            blind_of: db.open_tree("blind_of")?,
            epoch_keys: db.open_tree("epoch_keys")?,
            intents: db.open_tree("intents")?,
            outbox: Outbox::open(&db)?,
            db,
        })
    }

    /// The person's surrogate, made now if they have none; `true` when it was made now.
    /// Two writers racing for one person get the same surrogate.
    pub fn surrogate(&self, fp: &Fingerprint) -> Result<(String, bool)> {
        if let Some(existing) = self.surrogates.get(fp.0)? {
            return Ok((text(&existing)?, false));
        }
        let mut raw = [0u8; 16];
        random(&mut raw)?;
        let candidate = hex(&raw);
        let _writing = writing();
        let result: std::result::Result<std::result::Result<(), String>, TransactionError<()>> =
            (&self.surrogates, &self.surrogate_fp).transaction(|(surrogates, reverse)| {
                if let Some(existing) = surrogates.get(fp.0)? {
                    return Ok(Err(String::from_utf8_lossy(&existing).into_owned()));
                }
                surrogates.insert(&fp.0, candidate.as_bytes())?;
                reverse.insert(candidate.as_bytes(), &fp.0)?;
                Ok(Ok(()))
            });
        match result.map_err(tx_error)? {
            Ok(()) => Ok((candidate, true)),
            Err(existing) => Ok((existing, false)),
        }
    }

    /// Undoes [`Vault::surrogate`] for a person who got no resource after all (the upstream
    /// refused the write), unless a resource of theirs was stored meanwhile.
    pub fn forget_surrogate(&self, fp: &Fingerprint, surrogate: &str) -> Result<()> {
        if self.by_fingerprint.scan_prefix(fp.0).next().is_some() {
            return Ok(());
        }
        let _writing = writing();
        (&self.surrogates, &self.surrogate_fp)
            .transaction(|(surrogates, reverse)| {
                if surrogates.get(fp.0)?.as_deref() == Some(surrogate.as_bytes()) {
                    surrogates.remove(&fp.0)?;
                    reverse.remove(surrogate.as_bytes())?;
                }
                Ok(())
            })
            .map_err(tx_error::<()>)
    }

    /// The fingerprint behind a surrogate.
    pub fn fingerprint_of(&self, surrogate: &str) -> Result<Option<Fingerprint>> {
        self.surrogate_fp
            .get(surrogate.as_bytes())?
            .map(|v| fingerprint(&v))
            .transpose()
    }

    /// The tree of wrapped epoch keys, for [`crate::Sealer::with_key_store`].
    pub fn epoch_key_store(&self) -> sled::Tree {
        self.epoch_keys.clone()
    }

    /// The outbox kept in this vault's database.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Stores one sealed resource version and its indexes in one transaction, with its outbox
    /// entry when the write carries a clinical hash; returns the record's content address. Not
    /// yet durable: flush before acknowledging.
    ///
    /// The same version stored again (an upstream that keeps the version of an update that
    /// changed nothing it stores, such as one that changed identity only) replaces the record,
    /// so that readers get the identity last written, but queues no second anchor: the version
    /// is anchored once, with the record it had first.
    pub fn commit(&self, write: &VaultWrite) -> Result<[u8; 32]> {
        let addresses = self.commit_all(std::slice::from_ref(write), &[])?;
        Ok(addresses[0])
    }

    /// Stores many writes ([`Vault::commit`] each, in order) and queues `anchors` (versions
    /// with no identity to seal), all in one transaction: the group commit of concurrent
    /// requests. Returns the records' content addresses in order. Not yet durable.
    pub fn commit_all(
        &self,
        writes: &[VaultWrite],
        anchors: &[PendingAnchor],
    ) -> Result<Vec<[u8; 32]>> {
        let staged = writes
            .iter()
            .map(|write| self.stage(write))
            .collect::<Result<Vec<_>>>()?;
        let bare = anchors
            .iter()
            .map(|anchor| Ok((self.outbox.next_seq()?.to_be_bytes(), anchor.encode())))
            .collect::<Result<Vec<_>>>()?;
        let _writing = writing();
        (
            &self.records,
            &self.resources,
            &self.by_fingerprint,
            &self.blind,
            &self.blind_of,
            &self.epoch_keys,
            &self.outbox.anchors,
        )
            .transaction(
                |(records, resources, by_fp, blind, blind_of, epoch_keys, outbox)| {
                    for (write, s) in writes.iter().zip(&staged) {
                        if let Some(key) = &write.new_epoch_key {
                            epoch_keys.insert(&key.id, key.wrapped.as_slice())?;
                        }
                        records.insert(&s.address, s.encoded.as_slice())?;
                        let earlier = resources.insert(s.version_key.as_slice(), &s.address)?;
                        if let (None, Some((seq, entry))) = (&earlier, &s.anchor) {
                            outbox.insert(seq, entry.as_slice())?;
                        }
                        by_fp.insert(s.by_fingerprint.as_slice(), &[])?;
                        refile(blind, blind_of, &s.resource_key, &s.rows, &s.tokens)?;
                    }
                    for (seq, entry) in &bare {
                        outbox.insert(seq, entry.as_slice())?;
                    }
                    Ok(())
                },
            )
            .map_err(tx_error::<()>)?;
        Ok(staged.into_iter().map(|s| s.address).collect())
    }

    /// What one write puts in each tree, worked out before the transaction.
    fn stage(&self, write: &VaultWrite) -> Result<Staged> {
        let encoded = write.record.encode();
        let address = SealedRecord::address(&encoded);
        let meta = &write.record.meta;
        let resource_key = resource_key(&meta.resource_type, &meta.id);
        let fp = meta.fingerprint.0;
        let anchor = match write.clinical_hash {
            Some(clinical_hash) => Some((
                self.outbox.next_seq()?.to_be_bytes(),
                PendingAnchor {
                    resource_type: meta.resource_type.clone(),
                    id: meta.id.clone(),
                    version: meta.version.clone(),
                    fingerprint: fp,
                    sealed_address: address,
                    clinical_hash,
                }
                .encode(),
            )),
            None => None,
        };
        let (rows, tokens) = blind_rows(&write.index, &resource_key);
        Ok(Staged {
            version_key: version_key(&meta.resource_type, &meta.id, &meta.version),
            by_fingerprint: concat(&fp, &resource_key),
            encoded,
            address,
            anchor,
            rows,
            tokens,
            resource_key,
        })
    }

    /// The layout the blind index was filed in ([`BLIND_LAYOUT`] for what this build files);
    /// `None` for a vault from before layouts were recorded, or a new one.
    pub fn blind_layout(&self) -> Result<Option<u32>> {
        let Some(bytes) = self.db.get(BLIND_LAYOUT_KEY)? else {
            return Ok(None);
        };
        let bytes: [u8; 4] = bytes.as_ref().try_into().map_err(|_| {
            StorageError::Corrupt("the blind index's layout is not 4 bytes".to_owned())
        })?;
        Ok(Some(u32::from_be_bytes(bytes)))
    }

    /// Records that the blind index is filed in [`BLIND_LAYOUT`].
    pub fn set_blind_layout(&self) -> Result<()> {
        let _writing = writing();
        self.db
            .insert(BLIND_LAYOUT_KEY, &BLIND_LAYOUT.to_be_bytes())?;
        Ok(())
    }

    /// The resources (type, id) that have blind-index entries.
    pub fn indexed_resources(&self) -> Result<Vec<(String, String)>> {
        self.blind_of
            .iter()
            .map(|entry| split_resource(&entry?.0))
            .collect()
    }

    /// Removes a resource's blind-index entries (it was deleted: searches find it no more,
    /// and a refile leaves it out). Its sealed records stay. Not yet durable.
    pub fn unfile(&self, resource_type: &str, id: &str) -> Result<()> {
        let res_key = resource_key(resource_type, id);
        let _writing = writing();
        (&self.blind, &self.blind_of)
            .transaction(|(blind, blind_of)| {
                unfile(blind, blind_of, &res_key)?;
                Ok(())
            })
            .map_err(tx_error::<()>)
    }

    /// Replaces a resource's blind-index entries (refiling it in another layout).
    pub fn refile(&self, resource_type: &str, id: &str, index: &[BlindEntry]) -> Result<()> {
        let res_key = resource_key(resource_type, id);
        let (entries, token_bytes) = blind_rows(index, &res_key);
        let _writing = writing();
        (&self.blind, &self.blind_of)
            .transaction(|(blind, blind_of)| {
                refile(blind, blind_of, &res_key, &entries, &token_bytes)?;
                Ok(())
            })
            .map_err(tx_error::<()>)
    }

    /// Keeps the intents of one request (`bytes` by position, opaque here), with the epoch keys
    /// that sealed what they hold, in one transaction. Not yet durable: flush before
    /// forwarding the request.
    pub fn put_intents(
        &self,
        request: &str,
        intents: &[Vec<u8>],
        new_epoch_keys: &[NewEpochKey],
    ) -> Result<()> {
        let _writing = writing();
        (&self.intents, &self.epoch_keys)
            .transaction(|(kept, epoch_keys)| {
                for key in new_epoch_keys {
                    epoch_keys.insert(&key.id, key.wrapped.as_slice())?;
                }
                for (position, bytes) in intents.iter().enumerate() {
                    kept.insert(intent_key(request, position as u32), bytes.as_slice())?;
                }
                Ok(())
            })
            .map_err(tx_error::<()>)?;
        Ok(())
    }

    /// Every intent kept, as (request id, position, bytes), in key order.
    pub fn intents(&self) -> Result<Vec<(String, u32, Vec<u8>)>> {
        self.intents
            .iter()
            .map(|entry| {
                let (key, value) = entry?;
                let split = key
                    .len()
                    .checked_sub(5)
                    .filter(|at| key[*at] == 0)
                    .ok_or_else(|| {
                        StorageError::Corrupt("an intent key without its separator".to_owned())
                    })?;
                let request = String::from_utf8(key[..split].to_vec())
                    .map_err(|_| StorageError::Corrupt("an intent key is not UTF-8".to_owned()))?;
                let mut position = [0u8; 4];
                position.copy_from_slice(&key[split + 1..]);
                Ok((request, u32::from_be_bytes(position), value.to_vec()))
            })
            .collect()
    }

    /// Forgets the intents of one request (its outcome is known and kept).
    pub fn remove_intents(&self, request: &str) -> Result<()> {
        let mut prefix = request.as_bytes().to_vec();
        prefix.push(0);
        let _writing = writing();
        let mut batch = sled::Batch::default();
        for entry in self.intents.scan_prefix(&prefix) {
            let (key, _) = entry?;
            if key.len() == prefix.len() + 4 {
                batch.remove(key);
            }
        }
        self.intents.apply_batch(batch)?;
        Ok(())
    }

    /// The sealed record of one resource version, if that version has identity in the vault.
    pub fn record(
        &self,
        resource_type: &str,
        id: &str,
        version: &str,
    ) -> Result<Option<SealedRecord>> {
        let Some(address) = self
            .resources
            .get(version_key(resource_type, id, version))?
        else {
            return Ok(None);
        };
        self.indexed_record(&address, resource_type, id, Some(version))
            .map(Some)
    }

    /// The record at `address`, which the index of `resource_type`/`id` (`version`) points at:
    /// refused unless its bytes hash to its address and it was sealed for that resource, so that
    /// neither an altered record nor one of another resource is ever taken for this one's.
    fn indexed_record(
        &self,
        address: &[u8],
        resource_type: &str,
        id: &str,
        version: Option<&str>,
    ) -> Result<SealedRecord> {
        let shown = || format!("{resource_type}/{id}/_history/{}", version.unwrap_or("*"));
        let bytes = self.records.get(address)?.ok_or_else(|| {
            StorageError::Damaged(format!(
                "the sealed record of {} is indexed but absent",
                shown()
            ))
        })?;
        if SealedRecord::address(&bytes).as_slice() != address {
            return Err(StorageError::Damaged(format!(
                "the sealed record of {} does not match its address: it was altered",
                shown()
            )));
        }
        let record = SealedRecord::decode(&bytes)?;
        let meta = &record.meta;
        if meta.resource_type != resource_type
            || meta.id != id
            || version.is_some_and(|v| v != meta.version)
        {
            return Err(StorageError::Damaged(format!(
                "the index of {} points at the sealed record of another resource",
                shown()
            )));
        }
        Ok(record)
    }

    /// The sealed record of a resource's latest version that has one (versions compared as
    /// numbers when they are, as FHIR servers number them).
    pub fn latest_record(&self, resource_type: &str, id: &str) -> Result<Option<SealedRecord>> {
        let prefix = versions_prefix(resource_type, id);
        let mut latest: Option<(Vec<u8>, sled::IVec)> = None;
        for entry in self.resources.scan_prefix(&prefix) {
            let (key, address) = entry?;
            let version = key[prefix.len()..].to_vec();
            let newer = latest
                .as_ref()
                .is_none_or(|(best, _)| (version.len(), &version) > (best.len(), best));
            if newer {
                latest = Some((version, address));
            }
        }
        let Some((version, address)) = latest else {
            return Ok(None);
        };
        let version = String::from_utf8_lossy(&version).into_owned();
        self.indexed_record(&address, resource_type, id, Some(&version))
            .map(Some)
    }

    /// The fingerprint of the person a stored resource belongs to (from any of its versions).
    pub fn fingerprint_of_resource(
        &self,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<Fingerprint>> {
        let prefix = versions_prefix(resource_type, id);
        let Some(entry) = self.resources.scan_prefix(&prefix).next() else {
            return Ok(None);
        };
        let (_, address) = entry?;
        let record = self.indexed_record(&address, resource_type, id, None)?;
        Ok(Some(record.meta.fingerprint))
    }

    /// The resources (type, id) whose current version is filed under the bucket `token`, and
    /// carries `tag` there when one is given.
    pub fn search(
        &self,
        token: &[u8; 32],
        tag: Option<&[u8; TAG_LEN]>,
    ) -> Result<Vec<(String, String)>> {
        let mut found = Vec::new();
        for entry in self.blind.scan_prefix(token) {
            let (key, tags) = entry?;
            if tag.is_none_or(|tag| tags.chunks_exact(TAG_LEN).any(|t| t == tag)) {
                found.push(split_resource(&key[32..])?);
            }
        }
        Ok(found)
    }

    /// The resources (type, id) stored for one person.
    pub fn resources_of(&self, fp: &Fingerprint) -> Result<Vec<(String, String)>> {
        self.by_fingerprint
            .scan_prefix(fp.0)
            .map(|entry| {
                let (key, _) = entry?;
                split_resource(&key[32..])
            })
            .collect()
    }

    /// Removes everything the vault holds of one person (an erasure, once the person's key is
    /// destroyed): each resource's sealed records of every version, its blind-index entries,
    /// the person's resource list and surrogate. One transaction; what is removed is counted.
    pub fn erase(&self, fp: &Fingerprint) -> Result<Erased> {
        let resources = self.resources_of(fp)?;
        let mut versions: Vec<(sled::IVec, sled::IVec)> = Vec::new();
        for (resource_type, id) in &resources {
            for entry in self
                .resources
                .scan_prefix(versions_prefix(resource_type, id))
            {
                versions.push(entry?);
            }
        }
        let _writing = writing();
        (
            &self.records,
            &self.resources,
            &self.by_fingerprint,
            &self.blind,
            &self.blind_of,
            &self.surrogates,
            &self.surrogate_fp,
        )
            .transaction(
                |(records, resources_tree, by_fp, blind, blind_of, surrogates, reverse)| {
                    for (key, address) in &versions {
                        resources_tree.remove(key)?;
                        records.remove(address)?;
                    }
                    for (resource_type, id) in &resources {
                        let res_key = resource_key(resource_type, id);
                        unfile(blind, blind_of, &res_key)?;
                        by_fp.remove(concat(&fp.0, &res_key))?;
                    }
                    if let Some(surrogate) = surrogates.remove(&fp.0)? {
                        reverse.remove(surrogate)?;
                    }
                    Ok(())
                },
            )
            .map_err(tx_error::<()>)?;
        Ok(Erased {
            resources: resources.len(),
            records: versions.len(),
        })
    }

    /// A wrapped epoch key by id.
    pub fn wrapped_key(&self, id: &[u8; 32]) -> Result<Option<Vec<u8>>> {
        Ok(self.epoch_keys.get(id)?.map(|v| v.to_vec()))
    }

    /// How many sealed records the vault holds.
    pub fn record_count(&self) -> usize {
        self.records.len()
    }

    /// The vault's sled database (its outbox included), for [`crate::dump::dump`]: a running
    /// node holds [`crate::pause::pause`] meanwhile.
    pub fn database(&self) -> &sled::Db {
        &self.db
    }

    /// Checks the whole vault: every record hashes to its address, decodes and decrypts with
    /// `sealer`'s keys (calling `progress` with how many records are done); every index entry
    /// points at a record of its resource; surrogates and their reverse agree; what the outbox
    /// waits to anchor is there. Problems are listed, not returned as errors; an error is a
    /// store that cannot be read at all.
    pub fn check(&self, sealer: &Sealer, mut progress: impl FnMut(u64)) -> Result<VaultCheck> {
        let mut check = VaultCheck::default();
        let mut done = 0u64;
        for item in self.records.iter() {
            let (address, bytes) = item?;
            check.records += 1;
            let short = &hex(&address)[..16];
            if SealedRecord::address(&bytes).as_slice() != address.as_ref() {
                check.problem(format!(
                    "record {short}… does not match its address: it was altered"
                ));
            } else {
                match SealedRecord::decode(&bytes) {
                    Err(e) => check.problem(format!("record {short}… does not decode: {e}")),
                    Ok(record) => {
                        if let Err(e) = sealer.unseal(&record, |id| self.wrapped_key(id)) {
                            check.problem(format!(
                                "record {short}… of {}/{}/_history/{} does not decrypt: {e}",
                                record.meta.resource_type, record.meta.id, record.meta.version
                            ));
                        }
                    }
                }
            }
            done += 1;
            progress(done);
        }
        for item in self.resources.iter() {
            let (key, address) = item?;
            check.versions += 1;
            let mut parts = key.splitn(3, |b| *b == 0);
            let (Some(t), Some(i), Some(v)) = (parts.next(), parts.next(), parts.next()) else {
                check.problem("an index entry of resources without its separators".to_owned());
                continue;
            };
            let (t, i, v) = (
                String::from_utf8_lossy(t),
                String::from_utf8_lossy(i),
                String::from_utf8_lossy(v),
            );
            if let Err(e) = self.indexed_record(&address, &t, &i, Some(&v)) {
                check.problem(e.to_string());
            }
        }
        for (tree, name) in [
            (&self.by_fingerprint, "by_fingerprint"),
            (&self.blind, "blind"),
        ] {
            for item in tree.iter() {
                let (key, _) = item?;
                let Some(resource) = key.get(32..) else {
                    check.problem(format!("an index entry of {name} is too short"));
                    continue;
                };
                let mut prefix = resource.to_vec();
                prefix.push(0);
                if self.resources.scan_prefix(&prefix).next().is_none() {
                    check.problem(format!(
                        "an index entry of {name} points at {} which has no record",
                        String::from_utf8_lossy(resource).replace('\0', "/")
                    ));
                }
            }
        }
        for item in self.surrogates.iter() {
            let (fp, surrogate) = item?;
            if self.surrogate_fp.get(&surrogate)?.as_deref() != Some(fp.as_ref()) {
                check.problem(format!(
                    "surrogate {} does not lead back to its person",
                    String::from_utf8_lossy(&surrogate)
                ));
            }
        }
        for item in self.surrogate_fp.iter() {
            let (surrogate, fp) = item?;
            if self.surrogates.get(&fp)?.as_deref() != Some(surrogate.as_ref()) {
                check.problem(format!(
                    "surrogate {} names a person who has another",
                    String::from_utf8_lossy(&surrogate)
                ));
            }
        }
        match self.outbox.anchors(usize::MAX) {
            Err(e) => check.problem(format!("the outbox's anchors: {e}")),
            Ok(anchors) => {
                for (_, anchor) in anchors {
                    if anchor.sealed_address != [0; 32]
                        && !self.records.contains_key(anchor.sealed_address)?
                    {
                        check.problem(format!(
                            "{}/{}/_history/{} waits to be anchored but its record is absent",
                            anchor.resource_type, anchor.id, anchor.version
                        ));
                    }
                }
            }
        }
        if let Err(e) = self.outbox.access_events(usize::MAX) {
            check.problem(format!("the outbox's access events: {e}"));
        }
        Ok(check)
    }

    /// Whether a version has a sealed record (its index entry, not the record's soundness).
    pub fn has_version(&self, resource_type: &str, id: &str, version: &str) -> Result<bool> {
        Ok(self
            .resources
            .contains_key(version_key(resource_type, id, version))?)
    }

    /// Writes everything so far to disk.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    /// Writes everything so far to disk, without blocking the async thread.
    pub async fn flush_async(&self) -> Result<()> {
        self.db.flush_async().await?;
        Ok(())
    }
}

/// What [`Vault::check`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct VaultCheck {
    /// Sealed records read.
    pub records: u64,
    /// Resource versions indexed.
    pub versions: u64,
    /// The first problems found (at most [`VaultCheck::SHOWN`]), each a sentence.
    pub problems: Vec<String>,
    /// How many problems were found in all.
    pub problem_count: u64,
}

impl VaultCheck {
    /// How many problems are kept to be shown.
    pub const SHOWN: usize = 50;

    fn problem(&mut self, what: String) {
        self.problem_count += 1;
        if self.problems.len() < Self::SHOWN {
            self.problems.push(what);
        }
    }

    /// Whether nothing is wrong.
    pub fn is_sound(&self) -> bool {
        self.problem_count == 0
    }
}

/// The blind index's layout this build files: buckets with tags (`fhirseal_adapters::blind`).
pub const BLIND_LAYOUT: u32 = 2;
const BLIND_LAYOUT_KEY: &[u8] = b"blind-layout";

/// One write's rows, worked out before its transaction.
struct Staged {
    encoded: Vec<u8>,
    address: [u8; 32],
    version_key: Vec<u8>,
    resource_key: Vec<u8>,
    by_fingerprint: Vec<u8>,
    /// Outbox sequence and entry, when the write is to be anchored.
    anchor: Option<([u8; 8], Vec<u8>)>,
    rows: BlindRows,
    tokens: Vec<u8>,
}

/// `blind` rows: (bucket token ‖ resource, tags).
type BlindRows = Vec<(Vec<u8>, Vec<u8>)>;

/// The `blind` rows of a resource's entries and the `blind_of` value (its tokens).
fn blind_rows(index: &[BlindEntry], res_key: &[u8]) -> (BlindRows, Vec<u8>) {
    let rows = index
        .iter()
        .map(|e| (concat(&e.token, res_key), e.tags.concat()))
        .collect();
    (rows, index.iter().flat_map(|e| e.token).collect())
}

/// Inside a transaction: removes the rows of the resource's earlier entries, files its new ones.
fn refile(
    blind: &sled::transaction::TransactionalTree,
    blind_of: &sled::transaction::TransactionalTree,
    res_key: &[u8],
    rows: &[(Vec<u8>, Vec<u8>)],
    tokens: &[u8],
) -> std::result::Result<(), sled::transaction::ConflictableTransactionError<()>> {
    unfile(blind, blind_of, res_key)?;
    for (key, tags) in rows {
        blind.insert(key.as_slice(), tags.as_slice())?;
    }
    blind_of.insert(res_key, tokens)?;
    Ok(())
}

/// Inside a transaction: removes the resource's blind-index rows and its list of them.
fn unfile(
    blind: &sled::transaction::TransactionalTree,
    blind_of: &sled::transaction::TransactionalTree,
    res_key: &[u8],
) -> std::result::Result<(), sled::transaction::ConflictableTransactionError<()>> {
    if let Some(old) = blind_of.remove(res_key)? {
        for token in old.chunks_exact(32) {
            blind.remove(concat(token, res_key))?;
        }
    }
    Ok(())
}

fn text(bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec())
        .map_err(|_| StorageError::Corrupt("stored text is not UTF-8".to_owned()))
}

pub(crate) fn tx_error<E: std::fmt::Debug>(e: TransactionError<E>) -> StorageError {
    match e {
        TransactionError::Storage(e) => StorageError::Sled(e),
        TransactionError::Abort(e) => StorageError::Corrupt(format!("transaction aborted: {e:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::NodeKeys;
    use crate::seal::{blind_token, RecordMeta, Sealer};
    use std::sync::Arc;

    /// [`Vault::open`] of a database this test just dropped (see `open::once_unlocked`).
    fn reopen(path: &std::path::Path) -> Vault {
        crate::open::once_unlocked(
            path,
            || Vault::open(path),
            |e| {
                matches!(
                    e,
                    crate::StorageError::Open(crate::open::OpenError::Locked { .. })
                )
            },
        )
    }

    #[test]
    fn intents_are_kept_by_request_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open(dir.path()).unwrap();
        vault
            .put_intents("req-1", &[b"a".to_vec(), b"b".to_vec()], &[])
            .unwrap();
        vault.put_intents("req-10", &[b"c".to_vec()], &[]).unwrap();
        let kept = vault.intents().unwrap();
        assert_eq!(
            kept,
            vec![
                ("req-1".to_owned(), 0, b"a".to_vec()),
                ("req-1".to_owned(), 1, b"b".to_vec()),
                ("req-10".to_owned(), 0, b"c".to_vec()),
            ]
        );
        // Forgetting one request leaves the one whose id it prefixes.
        vault.remove_intents("req-1").unwrap();
        assert_eq!(
            vault.intents().unwrap(),
            vec![("req-10".to_owned(), 0, b"c".to_vec())]
        );
    }

    #[test]
    fn commit_index_search_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (keys, _) = NodeKeys::load_or_create(&dir.path().join("keys"), 2048).unwrap();
        let keys = Arc::new(keys);
        let sealer = Sealer::new(keys.clone(), 100, 8);
        let vault = Vault::open(&dir.path().join("vault")).unwrap();
        let link_key = crate::keys::SecretKey::random().unwrap();
        let fp = Fingerprint::of(&link_key, b"ada|1970-01-02");
        let (surrogate, made) = vault.surrogate(&fp).unwrap();
        assert!(made);
        assert_eq!(vault.surrogate(&fp).unwrap(), (surrogate.clone(), false));
        assert_eq!(vault.fingerprint_of(&surrogate).unwrap(), Some(fp));

        let token_old = blind_token(&keys.index_key, "family", "lovelace");
        let token_new = blind_token(&keys.index_key, "family", "byron");
        let mut version = 0u8;
        for token in [token_old, token_new] {
            version += 1;
            let meta = RecordMeta {
                fingerprint: fp,
                resource_type: "Patient".into(),
                id: "p1".into(),
                version: version.to_string(),
            };
            let (record, new_key) = sealer.seal(meta, b"{\"family\":\"x\"}").unwrap();
            vault
                .commit(&VaultWrite {
                    record,
                    new_epoch_key: new_key,
                    index: vec![BlindEntry {
                        token,
                        tags: vec![[version; TAG_LEN]],
                    }],
                    clinical_hash: Some([version; 32]),
                })
                .unwrap();
        }
        // The same version stored again replaces its record but is not queued twice.
        let meta = RecordMeta {
            fingerprint: fp,
            resource_type: "Patient".into(),
            id: "p1".into(),
            version: "2".into(),
        };
        let (record, new_epoch_key) = sealer.seal(meta, b"{\"family\":\"y\"}").unwrap();
        let replaced = vault
            .commit(&VaultWrite {
                record,
                new_epoch_key,
                index: vec![BlindEntry {
                    token: token_new,
                    tags: vec![[2; TAG_LEN]],
                }],
                clinical_hash: Some([2; 32]),
            })
            .unwrap();
        vault.flush().unwrap();
        let queued = vault.outbox().anchors(10).unwrap();
        assert_eq!(queued.len(), 2);
        assert_eq!(queued[0].1.version, "1");
        assert_eq!(queued[1].1.version, "2");
        assert_eq!(queued[1].1.clinical_hash, [2; 32]);
        assert_ne!(queued[1].1.sealed_address, replaced);
        // The update replaced the old version's tokens.
        assert!(vault.search(&token_old, None).unwrap().is_empty());
        let p1 = vec![("Patient".to_owned(), "p1".to_owned())];
        assert_eq!(vault.search(&token_new, None).unwrap(), p1);
        // Within a bucket, only the entries carrying the tag asked for.
        assert_eq!(vault.search(&token_new, Some(&[2; TAG_LEN])).unwrap(), p1);
        assert!(vault
            .search(&token_new, Some(&[1; TAG_LEN]))
            .unwrap()
            .is_empty());
        assert_eq!(vault.resources_of(&fp).unwrap().len(), 1);
        drop(vault);

        let vault = reopen(&dir.path().join("vault"));
        let record = vault.record("Patient", "p1", "1").unwrap().unwrap();
        let fresh = Sealer::new(keys, 100, 8);
        let plain = fresh.unseal(&record, |id| vault.wrapped_key(id)).unwrap();
        assert_eq!(plain.as_slice(), b"{\"family\":\"x\"}");
        assert!(vault.record("Patient", "p1", "3").unwrap().is_none());
        // A surrogate with a stored resource is not forgotten.
        vault.forget_surrogate(&fp, &surrogate).unwrap();
        assert_eq!(vault.fingerprint_of(&surrogate).unwrap(), Some(fp));

        // Erased: every version's record, the index, the person's list and surrogate go;
        // another person's stay.
        let other = Fingerprint::of(&link_key, b"bea|1971-01-02");
        let meta = RecordMeta {
            fingerprint: other,
            resource_type: "Patient".into(),
            id: "p2".into(),
            version: "1".into(),
        };
        let (record, new_epoch_key) = fresh.seal(meta, b"{}").unwrap();
        vault
            .commit(&VaultWrite {
                record,
                new_epoch_key,
                index: vec![BlindEntry {
                    token: token_old,
                    tags: vec![[9; TAG_LEN]],
                }],
                clinical_hash: None,
            })
            .unwrap();
        let erased = vault.erase(&fp).unwrap();
        assert_eq!(
            erased,
            Erased {
                resources: 1,
                records: 2
            }
        );
        assert!(vault.record("Patient", "p1", "1").unwrap().is_none());
        assert!(vault.latest_record("Patient", "p1").unwrap().is_none());
        assert!(vault.search(&token_new, None).unwrap().is_empty());
        assert!(vault.resources_of(&fp).unwrap().is_empty());
        assert_eq!(vault.fingerprint_of(&surrogate).unwrap(), None);
        assert_eq!(
            vault.search(&token_old, None).unwrap(),
            vec![("Patient".to_owned(), "p2".to_owned())]
        );
        assert!(vault.record("Patient", "p2", "1").unwrap().is_some());
        assert_eq!(vault.erase(&fp).unwrap(), Erased::default(), "once");
        // Unfiled (deleted upstream): no search finds it, no refile lists it, its record stays.
        vault.unfile("Patient", "p2").unwrap();
        assert!(vault.search(&token_old, None).unwrap().is_empty());
        assert!(vault.indexed_resources().unwrap().is_empty());
        assert!(vault.record("Patient", "p2", "1").unwrap().is_some());
        vault.unfile("Patient", "p2").unwrap();
    }

    #[test]
    fn a_group_commit_applies_its_writes_in_order_in_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let (keys, _) = NodeKeys::load_or_create(&dir.path().join("keys"), 2048).unwrap();
        let sealer = Sealer::new(Arc::new(keys), 100, 8);
        let vault = Vault::open(&dir.path().join("vault")).unwrap();
        let write = |id: &str, version: u8, token: u8| {
            let meta = RecordMeta {
                fingerprint: Fingerprint([7; 32]),
                resource_type: "Patient".into(),
                id: id.into(),
                version: version.to_string(),
            };
            let (record, new_epoch_key) = sealer.seal(meta, b"{}").unwrap();
            VaultWrite {
                record,
                new_epoch_key,
                index: vec![BlindEntry {
                    token: [token; 32],
                    tags: Vec::new(),
                }],
                clinical_hash: Some([version; 32]),
            }
        };
        let bare = PendingAnchor {
            resource_type: "Observation".into(),
            id: "o1".into(),
            version: "1".into(),
            fingerprint: [7; 32],
            sealed_address: [0; 32],
            clinical_hash: [9; 32],
        };
        // Two versions of one resource and another resource in one group: the later version's
        // entries replace the earlier's, as two commits one after the other would.
        let writes = [write("p1", 1, 1), write("p1", 2, 2), write("p2", 1, 3)];
        let addresses = vault.commit_all(&writes, &[bare]).unwrap();
        assert_eq!(addresses.len(), 3);
        assert!(vault.search(&[1; 32], None).unwrap().is_empty());
        assert_eq!(vault.search(&[2; 32], None).unwrap().len(), 1);
        assert_eq!(vault.search(&[3; 32], None).unwrap().len(), 1);
        assert!(vault.has_version("Patient", "p1", "1").unwrap());
        let queued: Vec<(String, String)> = vault
            .outbox()
            .anchors(10)
            .unwrap()
            .into_iter()
            .map(|(_, a)| (a.id, a.version))
            .collect();
        let pair = |id: &str, v: &str| (id.to_owned(), v.to_owned());
        assert_eq!(
            queued,
            vec![
                pair("p1", "1"),
                pair("p1", "2"),
                pair("p2", "1"),
                pair("o1", "1")
            ]
        );
    }

    #[test]
    fn unused_surrogates_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let vault = Vault::open(dir.path()).unwrap();
        let fp = Fingerprint([9; 32]);
        let (surrogate, _) = vault.surrogate(&fp).unwrap();
        vault.forget_surrogate(&fp, &surrogate).unwrap();
        assert_eq!(vault.fingerprint_of(&surrogate).unwrap(), None);
        let (again, made) = vault.surrogate(&fp).unwrap();
        assert!(made);
        assert_ne!(again, surrogate);
    }

    /// A vault with two sealed Patients, its sealer, and the address of the first's record.
    fn two_patients(dir: &std::path::Path) -> (Vault, Sealer, [u8; 32]) {
        let (keys, _) = NodeKeys::load_or_create(&dir.join("keys"), 2048).unwrap();
        let sealer = Sealer::new(Arc::new(keys), 100, 8);
        let vault = Vault::open(&dir.join("vault")).unwrap();
        let mut first = [0; 32];
        for (n, id) in ["p1", "p2"].iter().enumerate() {
            let meta = RecordMeta {
                fingerprint: Fingerprint([n as u8; 32]),
                resource_type: "Patient".into(),
                id: (*id).into(),
                version: "1".into(),
            };
            let (record, new_epoch_key) = sealer.seal(meta, b"{\"family\":\"x\"}").unwrap();
            let address = vault
                .commit(&VaultWrite {
                    record,
                    new_epoch_key,
                    index: vec![BlindEntry {
                        token: [n as u8; 32],
                        tags: Vec::new(),
                    }],
                    clinical_hash: Some([1; 32]),
                })
                .unwrap();
            if n == 0 {
                first = address;
            }
        }
        (vault, sealer, first)
    }

    #[test]
    fn an_altered_or_misplaced_record_is_refused_and_the_check_finds_it() {
        let dir = tempfile::tempdir().unwrap();
        let (vault, sealer, first) = two_patients(dir.path());
        let check = vault.check(&sealer, |_| {}).unwrap();
        assert!(check.is_sound(), "{check:?}");
        assert_eq!((check.records, check.versions), (2, 2));

        // One ciphertext byte altered in place: the record no longer hashes to its address.
        let mut bytes = vault.records.get(first).unwrap().unwrap().to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        vault.records.insert(first, bytes).unwrap();
        let refused = vault.record("Patient", "p1", "1").unwrap_err();
        assert!(matches!(refused, StorageError::Damaged(_)), "{refused}");
        assert!(refused.to_string().contains("altered"), "{refused}");
        let check = vault.check(&sealer, |_| {}).unwrap();
        assert!(!check.is_sound());
        assert!(
            check.problems.iter().any(|p| p.contains("altered")),
            "{check:?}"
        );

        // p2's index pointed at p1's record: refused, though that record is sound.
        let dir = tempfile::tempdir().unwrap();
        let (vault, sealer, first) = two_patients(dir.path());
        vault
            .resources
            .insert(version_key("Patient", "p2", "1"), &first)
            .unwrap();
        let refused = vault.record("Patient", "p2", "1").unwrap_err();
        assert!(
            refused.to_string().contains("another resource"),
            "{refused}"
        );
        assert!(vault.latest_record("Patient", "p2").is_err());
        let check = vault.check(&sealer, |_| {}).unwrap();
        assert_eq!(check.problem_count, 1, "{check:?}");
    }

    #[test]
    fn a_vault_loaded_from_a_dump_queues_above_what_waits() {
        let dir = tempfile::tempdir().unwrap();
        let (vault, _, _) = two_patients(dir.path());
        let waiting = vault.outbox().anchors(10).unwrap();
        assert_eq!(waiting.len(), 2);
        let mut bytes = Vec::new();
        crate::dump::dump(vault.database(), "vault", &mut bytes).unwrap();
        let copy = dir.path().join("copy");
        crate::dump::load(bytes.as_slice(), "vault", &copy).unwrap();
        let restored = reopen(&copy);
        // The new database's id generator starts again at 0: the next entry must not take the
        // place of one that waits.
        restored
            .outbox()
            .push_anchor(&PendingAnchor {
                resource_type: "Observation".into(),
                id: "o1".into(),
                version: "1".into(),
                fingerprint: [0; 32],
                sealed_address: [0; 32],
                clinical_hash: [2; 32],
            })
            .unwrap();
        let after = restored.outbox().anchors(10).unwrap();
        assert_eq!(after.len(), 3);
        assert_eq!(&after[..2], waiting.as_slice());
    }
}
