//! The sidecar's use of sealing: the write side (split a resource, fingerprint its person,
//! give the upstream a surrogate, seal the identity once the upstream has named the version),
//! the read side (merge identity back for those who may see it) and identity search.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use fhirseal_adapters::profile::{IdentityPart, Profile, SplitContext};
use fhirseal_adapters::scrub::Terms;
use fhirseal_adapters::search::{self, SearchError};
use fhirseal_adapters::{blind, identity, profile};
use fhirseal_storage::person_keys::PersonKeys;
use fhirseal_storage::{
    blind_tag, blind_token, BlindEntry, Erased, Fingerprint, NodeKeys, PendingAccess,
    PendingAnchor, RecordMeta, Sealer, SecretKey, SharedRecord, Vault, VaultWrite, BLIND_LAYOUT,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{Config, DurabilityMode};
use crate::metrics::Metrics;
use crate::search_pages::MatchCache;

/// Why sealing failed: always the sidecar's fault (500), never the client's.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("storage: {0}")]
    Storage(#[from] fhirseal_storage::StorageError),
    #[error("profile: {0}")]
    Profile(#[from] profile::ProfileError),
    #[error("a sealed identity part is unreadable: {0}")]
    Identity(String),
    #[error("the vault's flusher has stopped")]
    Flusher,
    #[error("the vault could not be flushed to disk: {0}")]
    Flush(String),
    #[error("the resource refers to more than {0} persons: fhirseal cannot check its free text for all of their identities")]
    TooManyPersons(usize),
    #[error("the consortium's link key has not reached this node yet")]
    NoLinkKey,
}

impl SealError {
    /// Whether what the vault holds failed its integrity check (altered or damaged on disk): a
    /// record that does not match its address, does not decrypt, or is not the resource's.
    pub fn is_damage(&self) -> bool {
        use fhirseal_storage::StorageError as S;
        matches!(
            self,
            SealError::Storage(
                S::Damaged(_) | S::Authentication | S::UnknownDataKey(_) | S::Corrupt(_)
            ) | SealError::Identity(_)
        )
    }
}

/// The consortium's link key as the node holds it now: `None` until the governance state hands
/// it over (a joining node), replaced if the consortium wraps a new one.
pub type LinkKey = watch::Receiver<Option<SecretKey>>;

/// Most persons one written resource may refer to: each is a vault read and an unseal, to learn
/// the identity its free text must not hold.
pub const MAX_REFERENCED_PERSONS: usize = 1024;

/// A resource the upstream showed, with identity merged back: (type, id, version).
pub type Shown = (String, String, String);

/// A resource split for the upstream, waiting to learn its id and version.
#[derive(Debug)]
pub struct Prepared {
    pub resource_type: String,
    pub fingerprint: Fingerprint,
    pub identity: IdentityPart,
    index: Vec<BlindEntry>,
    /// A surrogate made for this write, forgotten again if the upstream refuses it.
    new_surrogate: Option<String>,
    /// The person's surrogate, for person resources.
    pub surrogate: Option<String>,
}

impl Prepared {
    /// Whether anything was taken out (nothing to seal otherwise).
    pub fn has_identity(&self) -> bool {
        !self.identity.is_empty()
    }
}

type FlushRequest = oneshot::Sender<Result<(), String>>;
type CommitRequest = (Vec<Staged>, oneshot::Sender<Result<(), String>>);

/// A written version ready for the vault ([`Sealing::stage`]).
#[derive(Debug)]
pub enum Staged {
    /// Its sealed identity and indexes (and anchor).
    Sealed(VaultWrite),
    /// Nothing to seal: its anchor only.
    Anchor(PendingAnchor),
    /// Nothing to keep.
    Nothing,
}

impl Staged {
    /// The vault writes and the bare anchors of `staged`, each in order.
    fn split(staged: impl IntoIterator<Item = Staged>) -> (Vec<VaultWrite>, Vec<PendingAnchor>) {
        let (mut writes, mut anchors) = (Vec::new(), Vec::new());
        for item in staged {
            match item {
                Staged::Sealed(write) => writes.push(write),
                Staged::Anchor(anchor) => anchors.push(anchor),
                Staged::Nothing => {}
            }
        }
        (writes, anchors)
    }
}

/// Most requests one group commit gathers.
const MAX_GROUP: usize = 256;

/// The vault's committer: takes the first request waiting and, under group commit, every other
/// waiting (up to [`MAX_GROUP`]); writes them in one transaction and hands their answers to the
/// flusher, which answers each after a flush that began after their transaction. The next group
/// is written while the flusher flushes the last (a pipeline: one flush serves every group
/// written while the previous flush ran). With every-write durability, each request is its own
/// group and flushed here before the next. Runs on a thread of its own: sled's transaction
/// blocks. Ends when the sealing that feeds it is dropped.
fn committer(
    vault: Vault,
    group: bool,
    mut requests: mpsc::UnboundedReceiver<CommitRequest>,
    flusher: mpsc::UnboundedSender<FlushRequest>,
    metrics: Arc<Metrics>,
) {
    while let Some(first) = requests.blocking_recv() {
        let mut waiting = vec![first];
        while group && waiting.len() < MAX_GROUP {
            match requests.try_recv() {
                Ok(more) => waiting.push(more),
                Err(_) => break,
            }
        }
        let mut answers = Vec::with_capacity(waiting.len());
        let mut staged = Vec::new();
        for (items, answer) in waiting {
            staged.extend(items);
            answers.push(answer);
        }
        let (writes, anchors) = Staged::split(staged);
        let started = Instant::now();
        let committed = vault.commit_all(&writes, &anchors);
        metrics.vault_commit(started.elapsed());
        let result = match committed {
            Ok(_) if group => {
                for answer in answers {
                    if let Err(unsent) = flusher.send(answer) {
                        let _ = unsent
                            .0
                            .send(Err("the vault's flusher has stopped".to_owned()));
                    }
                }
                continue;
            }
            Ok(_) => {
                let started = Instant::now();
                let flushed = vault.flush();
                metrics.vault_flush(started.elapsed());
                flushed
            }
            Err(e) => Err(e),
        }
        .map_err(|e| e.to_string());
        if let Err(error) = &result {
            tracing::error!(%error, "vault group commit failed");
        }
        for answer in answers {
            // A waiter that gave up (its client went away) needs no answer.
            let _ = answer.send(result.clone());
        }
    }
}

/// Sealing, the vault and the blind index, for one node.
pub struct Sealing {
    profile: Profile,
    sealer: Sealer,
    vault: Vault,
    keys: Arc<NodeKeys>,
    /// The consortium's link key, which fingerprints are keyed with.
    link_key: LinkKey,
    identity_systems: Vec<String>,
    durability: DurabilityMode,
    flusher: mpsc::UnboundedSender<FlushRequest>,
    committer: mpsc::UnboundedSender<CommitRequest>,
    /// The committer's and the flusher's threads, joined when the sealing is dropped.
    threads: Vec<std::thread::JoinHandle<()>>,
    /// Whether the blind index is filed in this build's layout (else identity searches wait
    /// for the `recover` phase to refile it).
    filed: AtomicBool,
    /// The node's metrics: seals, unseals, vault commits and flushes, access events.
    metrics: Arc<Metrics>,
    /// The matches of the identity searches paged last.
    pages: MatchCache,
}

impl std::fmt::Debug for Sealing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealing")
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

impl Drop for Sealing {
    /// Closes the committer's queue, then the flusher's (the committer feeds it), and waits for
    /// both threads, which finish what they hold and let go of the vault.
    fn drop(&mut self) {
        let (closed, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.committer, closed));
        let (closed, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.flusher, closed));
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Sealing {
    /// Opens the vault with the node's `keys`, fingerprinting with the consortium's `link_key`,
    /// and starts the group-commit flusher; what it does is counted in `metrics`. sled's
    /// recovery blocks: call from a blocking context or at start-up.
    pub fn open(
        config: &Config,
        keys: NodeKeys,
        link_key: LinkKey,
        metrics: Arc<Metrics>,
    ) -> Result<Sealing, SealError> {
        let keys = Arc::new(keys);
        let profile = match &config.seal.profile {
            Some(path) => Profile::from_file(path)?,
            None => Profile::default(),
        };
        let vault = Vault::open(&config.data_dir.join("vault"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let flushing = vault.clone();
        let flusher_metrics = metrics.clone();
        let flusher_thread = std::thread::Builder::new()
            .name("vault-flusher".to_owned())
            .spawn(move || flusher(flushing, rx, flusher_metrics))
            .map_err(|e| SealError::Flush(format!("the vault's flusher did not start: {e}")))?;
        let (commits, committed) = mpsc::unbounded_channel();
        let group = config.seal.durability == DurabilityMode::Group;
        let committing = vault.clone();
        let flushes = tx.clone();
        let committer_metrics = metrics.clone();
        let committer_thread = std::thread::Builder::new()
            .name("vault-committer".to_owned())
            .spawn(move || committer(committing, group, committed, flushes, committer_metrics))
            .map_err(|e| SealError::Flush(format!("the vault's committer did not start: {e}")))?;
        let sealing = Sealing {
            sealer: Sealer::new(keys.clone(), config.seal.epoch_uses, config.seal.key_cache)
                .with_key_store(vault.epoch_key_store())
                .with_person_keys(Arc::new(PersonKeys::open(
                    &config.keys_dir(),
                    &keys,
                    config.seal.key_cache,
                )?)),
            profile,
            vault,
            keys,
            link_key,
            identity_systems: config.seal.identity_systems.clone(),
            durability: config.seal.durability,
            flusher: tx,
            committer: commits,
            threads: vec![committer_thread, flusher_thread],
            filed: AtomicBool::new(false),
            metrics,
            pages: MatchCache::default(),
        };
        sealing.filed.store(
            sealing.vault.blind_layout()? == Some(BLIND_LAYOUT)
                || sealing.vault.indexed_resources()?.is_empty(),
            Ordering::SeqCst,
        );
        if sealing.filed.load(Ordering::SeqCst) {
            sealing.vault.set_blind_layout()?;
        }
        Ok(sealing)
    }

    /// The resources to refile, as (type, id, latest sealed version: empty when none), when the blind index was
    /// filed by an earlier build in another layout; `None` when it is filed in this one.
    pub fn to_refile(&self) -> Result<Option<Vec<Shown>>, SealError> {
        if self.filed.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let mut out = Vec::new();
        for (resource_type, id) in self.vault.indexed_resources()? {
            let version = self
                .vault
                .latest_record(&resource_type, &id)?
                .map(|r| r.meta.version)
                .unwrap_or_default();
            out.push((resource_type, id, version));
        }
        Ok(Some(out))
    }

    /// Refiles one resource's blind-index entries in this build's layout: its sealed identity
    /// (of `version`, none when empty) merged into `clinical`, the version as the upstream
    /// holds it (or only its type, when the upstream no longer has it).
    pub fn refile(
        &self,
        resource_type: &str,
        id: &str,
        version: &str,
        clinical: Option<Value>,
    ) -> Result<(), SealError> {
        let part = match version {
            "" => None,
            version => self.identity(resource_type, id, version)?,
        };
        let index = match part {
            None => Vec::new(),
            Some(part) => {
                let mut resource = clinical
                    .unwrap_or_else(|| serde_json::json!({ "resourceType": resource_type }));
                part.merge_into(&mut resource);
                blind_entries(&self.keys.index_key, &resource)
            }
        };
        Ok(self.vault.refile(resource_type, id, &index)?)
    }

    /// Records that every resource was refiled: identity searches are answered again.
    pub fn refiled(&self) -> Result<(), SealError> {
        self.vault.set_blind_layout()?;
        self.vault.flush()?;
        self.filed.store(true, Ordering::SeqCst);
        Ok(())
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// The fingerprint of `Patient/id`, when this node sealed its identity.
    pub fn patient_fingerprint(&self, id: &str) -> Result<Option<Fingerprint>, SealError> {
        Ok(self.vault.fingerprint_of_resource("Patient", id)?)
    }

    /// The fingerprint of the person an identifier names, whether or not this node holds
    /// them: `None` unless `system` is one of the identity systems fingerprints are keyed by.
    pub fn identifier_fingerprint(
        &self,
        system: &str,
        value: &str,
    ) -> Result<Option<Fingerprint>, SealError> {
        if !self.identity_systems.iter().any(|s| s == system) {
            return Ok(None);
        }
        self.fingerprint(&identity::identifier_key(system, value))
            .map(Some)
    }

    /// The fingerprint of an identity key, under the consortium's link key.
    fn fingerprint(&self, identity_key: &[u8]) -> Result<Fingerprint, SealError> {
        let link_key = self.link_key.borrow().clone().ok_or(SealError::NoLinkKey)?;
        Ok(Fingerprint::of(&link_key, identity_key))
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Splits `resource` in place into its clinical part. `context` names the resource type
    /// behind a `urn:uuid:` reference of the same bundle; `terms` are the identities of persons
    /// written in the same request, which free text must not name. The identities of the
    /// persons it refers to by literal reference come from the vault. Unsealing those may need
    /// an RSA private-key operation: call from a blocking thread.
    pub fn prepare(
        &self,
        resource: &mut Value,
        context: &dyn Fn(&str) -> Option<String>,
        terms: &Terms,
    ) -> Result<Prepared, SealError> {
        let resource_type = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let terms = self.terms_of_referenced(resource, terms)?;
        let context = SplitContext {
            reference_type: context,
            terms: &terms,
        };
        if self.profile.is_person(&resource_type) {
            let fingerprint = match identity::identity_key(resource, &self.identity_systems) {
                Some(key) => self.fingerprint(&key)?,
                // Nothing identifies this person: a fingerprint of its own, linking nothing.
                None => Fingerprint(fhirseal_storage::SecretKey::random()?.expose().to_owned()),
            };
            let index = blind_entries(&self.keys.index_key, resource);
            let (surrogate, made) = self.vault.surrogate(&fingerprint)?;
            let identity = self
                .profile
                .split_with(resource, Some(&surrogate), &context);
            return Ok(Prepared {
                resource_type,
                fingerprint,
                identity,
                index,
                new_surrogate: made.then(|| surrogate.clone()),
                surrogate: Some(surrogate),
            });
        }
        let identity = self.profile.split_with(resource, None, &context);
        // The person it is about, for the anchor (and the sealed record, if any).
        let fingerprint = self.person_of(resource)?.unwrap_or(Fingerprint([0; 32]));
        Ok(Prepared {
            resource_type,
            fingerprint,
            identity,
            index: Vec::new(),
            new_surrogate: None,
            surrogate: None,
        })
    }

    /// `terms` and the identity terms of every person `resource` refers to by literal
    /// reference, from the identity of their latest sealed version.
    fn terms_of_referenced(&self, resource: &Value, terms: &Terms) -> Result<Terms, SealError> {
        let persons = self.profile.referenced_persons(resource);
        if persons.len() > MAX_REFERENCED_PERSONS {
            return Err(SealError::TooManyPersons(MAX_REFERENCED_PERSONS));
        }
        let mut all = terms.clone();
        for (resource_type, id) in persons {
            let Some(record) = self.vault.latest_record(&resource_type, &id)? else {
                continue;
            };
            let plain = self
                .sealer
                .unseal(&record, |key_id| self.vault.wrapped_key(key_id))?;
            let part = IdentityPart::from_bytes(&plain).map_err(SealError::Identity)?;
            all.extend(&part.terms());
        }
        Ok(all)
    }

    /// The fingerprint of the person a clinical resource is about (its `subject` or `patient`).
    fn person_of(&self, resource: &Value) -> Result<Option<Fingerprint>, SealError> {
        for field in ["subject", "patient", "beneficiary"] {
            let reference = resource
                .get(field)
                .and_then(|r| r.get("reference"))
                .and_then(Value::as_str);
            if let Some((ty, id)) = reference.and_then(|r| r.split_once('/')) {
                if self.profile.is_person(ty) {
                    if let Some(fp) = self.vault.fingerprint_of_resource(ty, id)? {
                        return Ok(Some(fp));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Seals the identity of a version the upstream accepted, ready for the vault with its
    /// indexes and, with `clinical_hash` (the hash of the resource as the upstream stores it),
    /// its anchor; `None` keeps the identity alone (the upstream's copy could not be read back
    /// to hash). CPU only: the vault is written by [`Sealing::commit_durably`] or
    /// [`Sealing::commit`].
    pub fn stage(
        &self,
        prepared: &Prepared,
        id: &str,
        version: &str,
        clinical_hash: Option<[u8; 32]>,
    ) -> Result<Staged, SealError> {
        if !prepared.has_identity() {
            return Ok(match clinical_hash {
                Some(clinical_hash) => Staged::Anchor(PendingAnchor {
                    resource_type: prepared.resource_type.clone(),
                    id: id.to_owned(),
                    version: version.to_owned(),
                    fingerprint: prepared.fingerprint.0,
                    sealed_address: [0; 32],
                    clinical_hash,
                }),
                None => Staged::Nothing,
            });
        }
        let meta = RecordMeta {
            fingerprint: prepared.fingerprint,
            resource_type: prepared.resource_type.clone(),
            id: id.to_owned(),
            version: version.to_owned(),
        };
        let started = Instant::now();
        let (record, new_epoch_key) = self.sealer.seal(meta, &prepared.identity.to_bytes())?;
        self.metrics.sealed(1, started.elapsed());
        Ok(Staged::Sealed(VaultWrite {
            record,
            new_epoch_key,
            index: prepared.index.clone(),
            clinical_hash,
        }))
    }

    /// [`Sealing::stage`] and the vault's transaction, on this thread. Not yet durable: await
    /// [`Sealing::durable`] before acknowledging.
    pub fn commit(
        &self,
        prepared: &Prepared,
        id: &str,
        version: &str,
        clinical_hash: Option<[u8; 32]>,
    ) -> Result<(), SealError> {
        let staged = self.stage(prepared, id, version, clinical_hash)?;
        let (writes, anchors) = Staged::split(vec![staged]);
        self.vault.commit_all(&writes, &anchors)?;
        Ok(())
    }

    /// Writes what one request staged to the vault and returns once it is on disk: the vault's
    /// committer gathers the requests waiting into one transaction and one flush (group
    /// commit; with `durability = "every-write"`, one request each).
    pub async fn commit_durably(&self, staged: Vec<Staged>) -> Result<(), SealError> {
        let (tx, rx) = oneshot::channel();
        self.committer
            .send((staged, tx))
            .map_err(|_| SealError::Flusher)?;
        rx.await
            .map_err(|_| SealError::Flusher)?
            .map_err(SealError::Flush)
    }

    /// Keeps, before a write is forwarded, what it sealed: each prepared resource's identity
    /// sealed under a provisional name (the request id and its position), its fingerprint, its
    /// blind-index tokens and surrogate, and the id the write names when it names one. Not yet
    /// durable: await [`Sealing::durable`] before forwarding. A crash between the upstream's
    /// commit and the vault's then loses nothing: on restart the intents are resolved against
    /// the upstream (the proxy's `recover` phase).
    pub fn intend(
        &self,
        write_id: &str,
        writes: &[(u32, &Prepared, Option<&str>)],
        now_ms: u64,
    ) -> Result<(), SealError> {
        let mut encoded = Vec::with_capacity(writes.len());
        let mut new_keys = Vec::new();
        for (position, prepared, id) in writes {
            let record = if prepared.has_identity() {
                let meta = intent_meta(prepared, write_id, *position);
                let (record, new_key) = self.sealer.seal(meta, &prepared.identity.to_bytes())?;
                new_keys.extend(new_key);
                Some(record.encode())
            } else {
                None
            };
            let file = IntentFile {
                position: *position,
                resource_type: prepared.resource_type.clone(),
                id: id.map(str::to_owned),
                fingerprint: storage_hex(&prepared.fingerprint.0),
                index: prepared.index.iter().map(encode_entry).collect(),
                surrogate: prepared.surrogate.clone(),
                new_surrogate: prepared.new_surrogate.is_some(),
                created_ms: now_ms,
            };
            encoded.push(encode_intent(&file, record.as_deref())?);
        }
        self.vault.put_intents(write_id, &encoded, &new_keys)?;
        Ok(())
    }

    /// Forgets a write's intents: its outcome is known and kept (or nothing was written).
    pub fn settle(&self, write_id: &str) -> Result<(), SealError> {
        Ok(self.vault.remove_intents(write_id)?)
    }

    /// How many writes have intents kept: writes in flight, and those a crash or a failed
    /// exchange left for the `recover` phase.
    pub fn unsettled_writes(&self) -> Result<usize, SealError> {
        let mut writes: Vec<String> = self
            .vault
            .intents()?
            .into_iter()
            .map(|(write_id, _, _)| write_id)
            .collect();
        writes.dedup();
        Ok(writes.len())
    }

    /// The intents kept, in request order.
    pub fn intents(&self) -> Result<Vec<Intent>, SealError> {
        self.vault
            .intents()?
            .into_iter()
            .map(|(write_id, _, bytes)| {
                let (file, record) = decode_intent(&bytes)?;
                Ok(Intent {
                    write_id,
                    file,
                    record,
                })
            })
            .collect()
    }

    /// The prepared write an intent kept, its identity unsealed again (this may need an RSA
    /// private-key operation: call from a blocking thread).
    pub fn resume(&self, intent: &Intent) -> Result<Prepared, SealError> {
        let file = &intent.file;
        let fingerprint = Fingerprint(parse_hex32(&file.fingerprint)?);
        let index = file
            .index
            .iter()
            .map(|e| decode_entry(e))
            .collect::<Result<Vec<_>, _>>()?;
        let mut prepared = Prepared {
            resource_type: file.resource_type.clone(),
            fingerprint,
            identity: IdentityPart::default(),
            index,
            new_surrogate: file.new_surrogate.then(|| file.surrogate.clone()).flatten(),
            surrogate: file.surrogate.clone(),
        };
        if let Some(bytes) = &intent.record {
            let record = fhirseal_storage::SealedRecord::decode(bytes)?;
            let expected = intent_meta(&prepared, &intent.write_id, intent.file.position);
            if record.meta != expected {
                return Err(SealError::Identity(
                    "an intent's record names another write".to_owned(),
                ));
            }
            let plain = self
                .sealer
                .unseal(&record, |key_id| self.vault.wrapped_key(key_id))?;
            prepared.identity = IdentityPart::from_bytes(&plain).map_err(SealError::Identity)?;
        }
        Ok(prepared)
    }

    /// Queues for anchoring a version whose identity the vault holds already but whose anchor
    /// was never queued (its stored copy could not be read back to hash when it was written).
    pub fn anchor_existing(
        &self,
        record: &fhirseal_storage::SealedRecord,
        clinical_hash: [u8; 32],
    ) -> Result<(), SealError> {
        let meta = &record.meta;
        self.vault.outbox().push_anchor(&PendingAnchor {
            resource_type: meta.resource_type.clone(),
            id: meta.id.clone(),
            version: meta.version.clone(),
            fingerprint: meta.fingerprint.0,
            sealed_address: fhirseal_storage::SealedRecord::address(&record.encode()),
            clinical_hash,
        })?;
        Ok(())
    }

    /// Queues an access event for the ledger's audit trail. Not yet durable: await
    /// [`Sealing::durable`] before answering.
    pub fn record_access(&self, event: &PendingAccess) -> Result<(), SealError> {
        self.vault.outbox().push_access(event)?;
        self.metrics.access_event();
        Ok(())
    }

    /// Checks the whole vault with this node's keys: see [`Vault::check`].
    pub fn check_vault(
        &self,
        progress: impl FnMut(u64),
    ) -> Result<fhirseal_storage::VaultCheck, SealError> {
        Ok(self.vault.check(&self.sealer, progress)?)
    }

    /// The node's keys.
    pub fn keys(&self) -> &NodeKeys {
        &self.keys
    }

    /// Undoes what [`Sealing::prepare`] stored, for a write the upstream refused.
    pub fn rollback(&self, prepared: &Prepared) {
        if let Some(surrogate) = &prepared.new_surrogate {
            if let Err(error) = self
                .vault
                .forget_surrogate(&prepared.fingerprint, surrogate)
            {
                tracing::warn!(%error, "an unused surrogate could not be forgotten");
            }
        }
    }

    /// Returns once everything committed so far is on disk.
    pub async fn durable(&self) -> Result<(), SealError> {
        match self.durability {
            DurabilityMode::EveryWrite => Ok(self.vault.flush_async().await?),
            DurabilityMode::Group => {
                let (tx, rx) = oneshot::channel();
                self.flusher.send(tx).map_err(|_| SealError::Flusher)?;
                rx.await
                    .map_err(|_| SealError::Flusher)?
                    .map_err(SealError::Flush)
            }
        }
    }

    /// Merges identity back into a resource, or into every resource of a Bundle (and of the
    /// Bundles a batch answer holds); returns the resources it merged identity into. Unsealing
    /// may need an RSA private-key operation: call from a blocking thread.
    pub fn reidentify(
        &self,
        value: &mut Value,
        elements: Option<&BTreeSet<String>>,
    ) -> Result<Vec<Shown>, SealError> {
        let started = Instant::now();
        let mut shown = Vec::new();
        self.reidentify_into(value, elements, &mut shown)?;
        self.metrics.unsealed(shown.len() as u64, started.elapsed());
        Ok(shown)
    }

    fn reidentify_into(
        &self,
        value: &mut Value,
        elements: Option<&BTreeSet<String>>,
        shown: &mut Vec<Shown>,
    ) -> Result<(), SealError> {
        if value.get("resourceType").and_then(Value::as_str) == Some("Bundle") {
            // A Bundle stored as a resource has a sealed record of its own.
            if let Some(one) = self.reidentify_one(value, elements)? {
                shown.push(one);
                return Ok(());
            }
            if let Some(entries) = value.get_mut("entry").and_then(Value::as_array_mut) {
                for entry in entries {
                    if let Some(resource) = entry.get_mut("resource") {
                        self.reidentify_into(resource, elements, shown)?;
                    }
                }
            }
            return Ok(());
        }
        shown.extend(self.reidentify_one(value, elements)?);
        Ok(())
    }

    fn reidentify_one(
        &self,
        resource: &mut Value,
        elements: Option<&BTreeSet<String>>,
    ) -> Result<Option<Shown>, SealError> {
        let text = |key: &str| resource.get(key).and_then(Value::as_str).map(str::to_owned);
        let (Some(resource_type), Some(id)) = (text("resourceType"), text("id")) else {
            return Ok(None);
        };
        let Some(version) = resource
            .get("meta")
            .and_then(|m| m.get("versionId"))
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return Ok(None);
        };
        let Some(part) = self.identity(&resource_type, &id, &version)? else {
            return Ok(None);
        };
        match elements {
            None => part.merge_into(resource),
            Some(wanted) => {
                let kept = IdentityPart {
                    entries: part
                        .entries
                        .into_iter()
                        .filter(|(pointer, _)| wanted.contains(IdentityPart::top_element(pointer)))
                        .collect(),
                };
                kept.merge_into(resource);
            }
        }
        Ok(Some((resource_type, id, version)))
    }

    /// The identity part of one stored version, if it has one.
    pub fn identity(
        &self,
        resource_type: &str,
        id: &str,
        version: &str,
    ) -> Result<Option<IdentityPart>, SealError> {
        let Some(record) = self.vault.record(resource_type, id, version)? else {
            return Ok(None);
        };
        let plain = match self
            .sealer
            .unseal(&record, |key_id| self.vault.wrapped_key(key_id))
        {
            Ok(plain) => plain,
            // Erased, the vault not cleared yet (an `$erase` to finish): no identity to show.
            Err(fhirseal_storage::StorageError::Erased) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        IdentityPart::from_bytes(&plain)
            .map(Some)
            .map_err(SealError::Identity)
    }

    /// The sealed record of one stored version with its data key wrapped for a grantee whose
    /// RSA key is `grantee` (SubjectPublicKeyInfo DER); `None` when the version has no
    /// identity in the vault. Nothing is decrypted but the epoch key: call from a blocking
    /// thread.
    pub fn share(
        &self,
        (resource_type, id, version): (&str, &str, &str),
        grantee: &[u8],
    ) -> Result<Option<SharedRecord>, SealError> {
        let Some(record) = self.vault.record(resource_type, id, version)? else {
            return Ok(None);
        };
        let shared =
            self.sealer
                .share(&record, |key_id| self.vault.wrapped_key(key_id), grantee)?;
        Ok(Some(shared))
    }

    /// Destroys a person's key: from then on no record of theirs opens, in the vault or in
    /// any copy of it. Whether there was one (`false`: destroyed already, or never made).
    pub fn destroy_person_key(&self, fingerprint: &Fingerprint) -> Result<bool, SealError> {
        // Paged searches kept may name the person's resources: found by the identity erased.
        self.pages.clear();
        match self.sealer.person_keys() {
            Some(keys) => Ok(keys.destroy(fingerprint)?),
            None => Ok(false),
        }
    }

    /// Takes a person resource the upstream deleted out of the blind index: identity
    /// searches find it no more, as the upstream's searches do not. Its sealed versions stay
    /// for history reads. Anything else is left alone.
    pub fn unfile_deleted(&self, resource_type: &str, id: &str) -> Result<(), SealError> {
        if self.profile.is_person(resource_type) {
            self.vault.unfile(resource_type, id)?;
        }
        Ok(())
    }

    /// Removes what the vault holds of a person (after [`Sealing::destroy_person_key`]), on
    /// disk before it returns; what was removed. Safe to run again.
    pub fn forget_person(&self, fingerprint: &Fingerprint) -> Result<Erased, SealError> {
        let erased = self.vault.erase(fingerprint)?;
        self.vault.flush()?;
        self.pages.clear();
        Ok(erased)
    }

    /// The identity part of a record another member shared with this node (an RSA
    /// private-key operation: call from a blocking thread).
    pub fn open_shared(&self, shared: &SharedRecord) -> Result<IdentityPart, SealError> {
        let plain = self.sealer.open_shared(shared)?;
        IdentityPart::from_bytes(&plain).map_err(SealError::Identity)
    }

    /// The query with its identity parameters answered from the blind index; `None` when it
    /// has none.
    pub fn rewrite_search(
        &self,
        resource_type: Option<&str>,
        query: &str,
    ) -> Result<Option<String>, SearchQueryError> {
        let Some(plan) = self.search_plan(resource_type, query)? else {
            return Ok(None);
        };
        Ok(Some(search::render(&plan, &self.search_matches(&plan)?)))
    }

    /// A search's query as the upstream is to receive it, as [`Sealing::rewrite_search`] has
    /// it, or one page of it: when the ids it matches would make a query longer than
    /// `page_above` bytes and the sidecar can page it ([`search::Plan::paging`]), the upstream
    /// is asked for one page's ids. The matches are kept for the later pages a while (time
    /// `now_ms`). `None` when the query names no identity.
    pub fn page_search(
        &self,
        resource_type: Option<&str>,
        query: &str,
        page_above: usize,
        now_ms: u64,
    ) -> Result<Option<SearchRewrite>, SearchQueryError> {
        let Some(plan) = self.search_plan(resource_type, query)? else {
            return Ok(None);
        };
        let Some(paging) = plan.paging(resource_type) else {
            let matches = self.search_matches(&plan)?;
            return Ok(Some(SearchRewrite::Query(search::render(&plan, &matches))));
        };
        let key = blind_token(
            &self.keys.index_key,
            "paged-search",
            &format!("{:?}", plan.lookups),
        );
        let kept = (paging.offset > 0)
            .then(|| self.pages.get(&key, now_ms))
            .flatten();
        let ids = match kept {
            Some(ids) => ids,
            None => {
                let matches = self.search_matches(&plan)?;
                let matched = plan.matched(&matches);
                if !paging.outgrows(&matched, page_above) {
                    return Ok(Some(SearchRewrite::Query(search::render(&plan, &matches))));
                }
                let ids = Arc::new(search::ordered(matched));
                self.pages.put(key, now_ms, ids.clone());
                ids
            }
        };
        Ok(Some(SearchRewrite::Page {
            query: paging.upstream_query(&ids),
            total: ids.len(),
            paging,
        }))
    }

    fn search_plan(
        &self,
        resource_type: Option<&str>,
        query: &str,
    ) -> Result<Option<search::Plan>, SearchQueryError> {
        let plan = search::plan(resource_type, query, &self.profile)?;
        if plan.is_some() && !self.filed.load(Ordering::SeqCst) {
            return Err(SearchQueryError::Refiling);
        }
        Ok(plan)
    }

    /// For each lookup of `plan`, the ids of the person resources the blind index matches.
    fn search_matches(&self, plan: &search::Plan) -> Result<Vec<BTreeSet<String>>, SealError> {
        let key = &self.keys.index_key;
        let mut matches = Vec::with_capacity(plan.lookups.len());
        for lookup in &plan.lookups {
            let mut ids = BTreeSet::new();
            for (name, value) in &lookup.alternatives {
                for probe in blind::probes(name, value) {
                    let token = blind_token(key, &probe.bucket.param, &probe.bucket.form);
                    let tag = probe.tag.map(|t| blind_tag(key, &t.param, &t.form));
                    let found = self.vault.search(&token, tag.as_ref());
                    for (ty, id) in found.map_err(SealError::from)? {
                        if ty == lookup.resource_type {
                            ids.insert(id);
                        }
                    }
                }
            }
            matches.push(ids);
        }
        Ok(matches)
    }
}

/// The blind-index entries of a person resource (before it is split), keyed with the node's
/// index key: [`blind::entries`] hashed.
pub fn blind_entries(index_key: &SecretKey, resource: &Value) -> Vec<BlindEntry> {
    blind::entries(resource)
        .into_iter()
        .map(|entry| BlindEntry {
            token: blind_token(index_key, &entry.bucket.param, &entry.bucket.form),
            tags: entry
                .tags
                .iter()
                .map(|t| blind_tag(index_key, &t.param, &t.form))
                .collect(),
        })
        .collect()
}

/// What a write kept before it was forwarded ([`Sealing::intend`]).
#[derive(Debug, Clone)]
pub struct Intent {
    /// The write it belongs to (`RequestCtx::write_id`).
    pub write_id: String,
    file: IntentFile,
    /// The identity sealed under the provisional name; none when nothing was taken.
    record: Option<Vec<u8>>,
}

impl Intent {
    /// Its position in the write (0, or the entry of a batch or transaction).
    pub fn position(&self) -> u32 {
        self.file.position
    }

    pub fn resource_type(&self) -> &str {
        &self.file.resource_type
    }

    /// The id the write named (an update), when it named one.
    pub fn id(&self) -> Option<&str> {
        self.file.id.as_deref()
    }

    /// The person's surrogate, for a person resource.
    pub fn surrogate(&self) -> Option<&str> {
        self.file.surrogate.as_deref()
    }

    /// When it was kept, in milliseconds since the Unix epoch.
    pub fn created_ms(&self) -> u64 {
        self.file.created_ms
    }
}

/// An intent's description as the vault keeps it: JSON, followed by the sealed record's bytes
/// as they are (no text encoding of ciphertext, which could spell anything).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct IntentFile {
    position: u32,
    resource_type: String,
    id: Option<String>,
    fingerprint: String,
    /// Blind-index entries, each the hex of its token and its tags.
    index: Vec<String>,
    surrogate: Option<String>,
    new_surrogate: bool,
    created_ms: u64,
}

/// `u32` length of the JSON description (big-endian), the description, the sealed record.
fn encode_intent(file: &IntentFile, record: Option<&[u8]>) -> Result<Vec<u8>, SealError> {
    let json = serde_json::to_vec(file).map_err(|e| SealError::Identity(e.to_string()))?;
    let length = u32::try_from(json.len())
        .map_err(|_| SealError::Identity("an intent's description is too long".to_owned()))?;
    let mut bytes = Vec::with_capacity(4 + json.len() + record.map_or(0, <[u8]>::len));
    bytes.extend_from_slice(&length.to_be_bytes());
    bytes.extend_from_slice(&json);
    bytes.extend_from_slice(record.unwrap_or_default());
    Ok(bytes)
}

fn decode_intent(bytes: &[u8]) -> Result<(IntentFile, Option<Vec<u8>>), SealError> {
    let corrupt = |what: &str| SealError::Identity(format!("an intent: {what}"));
    let (length, rest) = bytes
        .split_first_chunk::<4>()
        .ok_or_else(|| corrupt("shorter than its length"))?;
    let length = u32::from_be_bytes(*length) as usize;
    if rest.len() < length {
        return Err(corrupt("shorter than its description"));
    }
    let (json, record) = rest.split_at(length);
    let file = serde_json::from_slice(json).map_err(|e| corrupt(&e.to_string()))?;
    Ok((file, (!record.is_empty()).then(|| record.to_vec())))
}

/// The provisional name an intent's identity is sealed under: the record's associated data
/// binds it to this write and position, so it cannot pass for a stored version.
fn intent_meta(prepared: &Prepared, write_id: &str, position: u32) -> RecordMeta {
    RecordMeta {
        fingerprint: prepared.fingerprint,
        resource_type: prepared.resource_type.clone(),
        id: String::new(),
        version: format!("intent:{write_id}:{position}"),
    }
}

fn storage_hex(bytes: &[u8]) -> String {
    fhirseal_storage::keys::hex(bytes)
}

fn parse_hex(text: &str) -> Result<Vec<u8>, SealError> {
    fhirseal_storage::keys::unhex(text)
        .ok_or_else(|| SealError::Identity("an intent's hex field is malformed".to_owned()))
}

fn parse_hex32(text: &str) -> Result<[u8; 32], SealError> {
    parse_hex(text)?
        .try_into()
        .map_err(|_| SealError::Identity("an intent's hex field is not 32 bytes".to_owned()))
}

fn encode_entry(entry: &BlindEntry) -> String {
    let mut bytes = entry.token.to_vec();
    bytes.extend(entry.tags.iter().flatten());
    storage_hex(&bytes)
}

fn decode_entry(text: &str) -> Result<BlindEntry, SealError> {
    let bytes = parse_hex(text)?;
    let malformed = || SealError::Identity("an intent's blind-index entry is malformed".to_owned());
    let (token, tags) = bytes.split_first_chunk::<32>().ok_or_else(malformed)?;
    let tags = tags.chunks_exact(fhirseal_storage::seal::TAG_LEN);
    if !tags.remainder().is_empty() {
        return Err(malformed());
    }
    Ok(BlindEntry {
        token: *token,
        tags: tags
            .map(|t| {
                t.try_into()
                    .unwrap_or_else(|_| unreachable!("chunks_exact"))
            })
            .collect(),
    })
}

/// A search's query as the upstream is to receive it ([`Sealing::page_search`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchRewrite {
    /// The whole search, its identity criteria rewritten to ids.
    Query(String),
    /// One page of a search the sidecar pages: `query` asks for its ids, among `total`.
    Page {
        query: String,
        paging: search::Paging,
        total: usize,
    },
}

/// A search that could not be rewritten: the client's (400) or ours (500).
#[derive(Debug, thiserror::Error)]
pub enum SearchQueryError {
    #[error(transparent)]
    Unsupported(#[from] SearchError),
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("the blind index is being refiled")]
    Refiling,
}

/// Group commit: one flush serves every write that asked for one while the previous ran. Runs
/// on a thread of its own (sled's flush blocks); ends when the sealing and the committer that
/// feed it are gone.
fn flusher(
    vault: Vault,
    mut requests: mpsc::UnboundedReceiver<FlushRequest>,
    metrics: Arc<Metrics>,
) {
    while let Some(first) = requests.blocking_recv() {
        let mut waiting = vec![first];
        while let Ok(more) = requests.try_recv() {
            waiting.push(more);
        }
        let started = Instant::now();
        let result = vault.flush().map_err(|e| e.to_string());
        metrics.vault_flush(started.elapsed());
        if let Err(error) = &result {
            tracing::error!(%error, "vault flush failed");
        }
        for waiter in waiting {
            // A waiter that gave up (its client went away) needs no answer.
            let _ = waiter.send(result.clone());
        }
    }
}
