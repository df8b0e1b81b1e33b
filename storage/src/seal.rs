//! Sealing: identity fingerprints, blind-index tokens, and hybrid encryption of identity parts.
//!
//! **Data keys.** Each record is encrypted with AES-256-GCM under its own data key, derived as
//! `HMAC-SHA-256(epoch key, "fhirseal-dek-v1" ‖ salt)` with a fresh random 32-byte salt. The
//! epoch key is random and wrapped with RSA-OAEP-SHA-256 for the institution; a new one is made
//! after `max_uses` records. So a write pays the RSA public-key operation once per epoch rather
//! than once per record, and a read pays the private-key operation once per epoch (unwrapped
//! epoch keys live in a bounded cache), while every record still has a key of its own that can
//! be handed to a grantee without exposing its neighbours.
//!
//! **Person keys.** With [`Sealer::with_person_keys`], a record of a person (any fingerprint
//! but all zeros) is sealed under that person's own key too: its data key is
//! `HMAC-SHA-256(epoch key, "fhirseal-dek-v2" ‖ salt ‖ person key)` (format 2). Destroying the
//! person key ([`crate::person_keys`]) erases every record of the person, in the vault and in
//! any copy of it, while their neighbours under the same epoch key still open.
//!
//! **Sharing.** A record handed to a grantee ([`Sealer::share`]) travels as a
//! [`SharedRecord`]: the record as sealed, and its own data key wrapped with RSA-OAEP-SHA-256 for
//! the grantee's RSA key. The grantee opens that one record ([`Sealer::open_shared`]); the
//! epoch key it was derived from, which opens the records around it, never leaves, and the
//! identity is never decrypted on the way (re-encryption of the key, not of the data).
//!
//! **Binding.** The format, fingerprint, resource type, logical id and version id, the epoch key
//! id and the salt are the associated data: a record moved to another resource fails to open.
//!
//! **Format** (version 1, or 2 for a person-keyed record, all lengths big-endian):
//! `"FSR1"|"FSR2" ‖ fingerprint[32] ‖ u16 len ‖ type ‖ u16 len ‖ id ‖ u16 len ‖ version ‖ key id[32] ‖
//! salt[32] ‖ nonce[12] ‖ u32 len ‖ ciphertext+tag`. Its content address is its SHA-256.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use hmac::{Hmac, Mac};
use rsa::sha2::Sha256 as RsaSha256;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{random, Result, StorageError};
use crate::keys::{hex, NodeKeys, SecretKey};
use crate::person_keys::PersonKeys;

type HmacSha256 = Hmac<Sha256>;

const MAGIC: &[u8; 4] = b"FSR1";
/// A record sealed under its person's key too (see [`crate::person_keys`]).
const MAGIC_PERSON: &[u8; 4] = b"FSR2";
const SHARED_MAGIC: &[u8; 4] = b"FSS1";
const DEK_LABEL: &[u8] = b"fhirseal-dek-v1";
const DEK_LABEL_PERSON: &[u8] = b"fhirseal-dek-v2";
const AAD_LABEL: &[u8] = b"fhirseal-record-v1";
const AAD_LABEL_PERSON: &[u8] = b"fhirseal-record-v2";
/// Records sealed under one epoch key before a new one is made.
pub const DEFAULT_EPOCH_USES: u32 = 4096;
/// Unwrapped epoch keys kept in memory.
pub const DEFAULT_CACHE_KEYS: usize = 1024;

/// A keyed SHA-256 of a person's canonical identity key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({})", &hex(&self.0)[..16])
    }
}

impl Fingerprint {
    /// `HMAC-SHA-256(K_link, identity_key)`.
    pub fn of(link_key: &SecretKey, identity_key: &[u8]) -> Fingerprint {
        Fingerprint(hmac(link_key.expose(), &[b"fhirseal-fp-v1", identity_key]))
    }
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

/// A blind-index token: `HMAC-SHA-256(K_index, name ‖ value)`, for one bucket of the index
/// (the layout is the caller's; `v2` is the layout of buckets with tags).
pub fn blind_token(index_key: &SecretKey, name: &str, value: &str) -> [u8; 32] {
    let len = (name.len() as u32).to_be_bytes();
    hmac(
        index_key.expose(),
        &[
            b"fhirseal-blind-v2",
            &len,
            name.as_bytes(),
            value.as_bytes(),
        ],
    )
}

/// A blind-index tag: what an entry carries for a finer value than its bucket, the first
/// [`TAG_LEN`] bytes of its token. It is only ever compared within one bucket, whose entries are
/// few: a false match needs two 64-bit truncations of a keyed hash to collide there.
pub fn blind_tag(index_key: &SecretKey, name: &str, value: &str) -> [u8; TAG_LEN] {
    let mut tag = [0; TAG_LEN];
    tag.copy_from_slice(&blind_token(index_key, name, value)[..TAG_LEN]);
    tag
}

/// Bytes of a blind-index tag.
pub const TAG_LEN: usize = 8;

pub(crate) fn aes(dek: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new(&Key::<Aes256Gcm>::from(*dek))
}

pub(crate) fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = <HmacSha256 as hmac::KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// What a sealed record is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMeta {
    pub fingerprint: Fingerprint,
    pub resource_type: String,
    pub id: String,
    pub version: String,
}

impl RecordMeta {
    /// Whether a record of this person is sealed under a person key: every person's but the
    /// "no one" fingerprint's (a resource about no person).
    fn has_person(&self) -> bool {
        self.fingerprint.0 != [0; 32]
    }

    fn aad(&self, person_keyed: bool, key_id: &[u8; 32], salt: &[u8; 32]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(160);
        aad.extend_from_slice(if person_keyed {
            AAD_LABEL_PERSON
        } else {
            AAD_LABEL
        });
        aad.extend_from_slice(&self.fingerprint.0);
        for part in [&self.resource_type, &self.id, &self.version] {
            aad.extend_from_slice(&(part.len() as u16).to_be_bytes());
            aad.extend_from_slice(part.as_bytes());
        }
        aad.extend_from_slice(key_id);
        aad.extend_from_slice(salt);
        aad
    }
}

/// An encrypted identity part with its binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRecord {
    pub meta: RecordMeta,
    /// Whether its data key depends on its person's key too (format 2): destroying that key
    /// erases it.
    pub person_keyed: bool,
    pub key_id: [u8; 32],
    pub salt: [u8; 32],
    pub nonce: [u8; 12],
    pub ciphertext: Vec<u8>,
}

impl SealedRecord {
    pub fn encode(&self) -> Vec<u8> {
        let m = &self.meta;
        let mut out =
            Vec::with_capacity(160 + m.resource_type.len() + m.id.len() + self.ciphertext.len());
        out.extend_from_slice(if self.person_keyed {
            MAGIC_PERSON
        } else {
            MAGIC
        });
        out.extend_from_slice(&m.fingerprint.0);
        for part in [&m.resource_type, &m.id, &m.version] {
            out.extend_from_slice(&(part.len() as u16).to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(&(self.ciphertext.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.ciphertext);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<SealedRecord> {
        let mut r = Reader(bytes);
        let person_keyed = match r.take(4)? {
            m if m == MAGIC => false,
            m if m == MAGIC_PERSON => true,
            _ => {
                return Err(StorageError::Corrupt(
                    "not a version 1 or 2 sealed record".to_owned(),
                ))
            }
        };
        let fingerprint = Fingerprint(r.array()?);
        let resource_type = r.string16()?;
        let id = r.string16()?;
        let version = r.string16()?;
        let key_id = r.array()?;
        let salt = r.array()?;
        let nonce = r.array()?;
        let len = u32::from_be_bytes(r.array()?) as usize;
        let ciphertext = r.take(len)?.to_vec();
        if !r.0.is_empty() {
            return Err(StorageError::Corrupt(
                "trailing bytes after a sealed record".to_owned(),
            ));
        }
        Ok(SealedRecord {
            meta: RecordMeta {
                fingerprint,
                resource_type,
                id,
                version,
            },
            person_keyed,
            key_id,
            salt,
            nonce,
            ciphertext,
        })
    }

    /// The SHA-256 of the encoded record.
    pub fn address(encoded: &[u8]) -> [u8; 32] {
        Sha256::digest(encoded).into()
    }
}

/// A sealed record as a grantee receives it (see the module's documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedRecord {
    pub record: SealedRecord,
    /// The record's data key, RSA-OAEP-SHA-256 for the grantee's RSA key.
    pub wrapped_data_key: Vec<u8>,
}

impl SharedRecord {
    /// `"FSS1" ‖ u32 len ‖ sealed record ‖ u16 len ‖ wrapped data key`.
    pub fn encode(&self) -> Vec<u8> {
        let record = self.record.encode();
        let mut out = Vec::with_capacity(10 + record.len() + self.wrapped_data_key.len());
        out.extend_from_slice(SHARED_MAGIC);
        out.extend_from_slice(&(record.len() as u32).to_be_bytes());
        out.extend_from_slice(&record);
        out.extend_from_slice(&(self.wrapped_data_key.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.wrapped_data_key);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<SharedRecord> {
        let mut r = Reader(bytes);
        if r.take(4)? != SHARED_MAGIC {
            return Err(StorageError::Corrupt(
                "not a version 1 shared record".to_owned(),
            ));
        }
        let len = u32::from_be_bytes(r.array()?) as usize;
        let record = SealedRecord::decode(r.take(len)?)?;
        let len = u16::from_be_bytes(r.array()?) as usize;
        let wrapped_data_key = r.take(len)?.to_vec();
        if !r.0.is_empty() {
            return Err(StorageError::Corrupt(
                "trailing bytes after a shared record".to_owned(),
            ));
        }
        Ok(SharedRecord {
            record,
            wrapped_data_key,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(StorageError::Corrupt(
                "sealed record is truncated".to_owned(),
            ));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn string16(&mut self) -> Result<String> {
        let len = u16::from_be_bytes(self.array()?) as usize;
        String::from_utf8(self.take(len)?.to_vec())
            .map_err(|_| StorageError::Corrupt("sealed record metadata is not UTF-8".to_owned()))
    }
}

/// A wrapped epoch key made by [`Sealer::seal`], which the caller stores with the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEpochKey {
    pub id: [u8; 32],
    pub wrapped: Vec<u8>,
}

type CurrentEpoch = ([u8; 32], Zeroizing<[u8; 32]>, Option<NewEpochKey>);

struct Epoch {
    id: [u8; 32],
    key: Zeroizing<[u8; 32]>,
    uses: u32,
}

/// Bounded cache of unwrapped keys by id (epoch keys, person keys), evicting the oldest
/// insertion.
pub(crate) struct KeyCache {
    keys: HashMap<[u8; 32], Zeroizing<[u8; 32]>>,
    order: VecDeque<[u8; 32]>,
    capacity: usize,
}

impl KeyCache {
    /// An empty cache of at most `capacity` keys (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        KeyCache {
            keys: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }
    pub(crate) fn get(&self, id: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
        self.keys.get(id).cloned()
    }
    /// Forgets the key `id`, if it is kept.
    pub(crate) fn remove(&mut self, id: &[u8; 32]) {
        if self.keys.remove(id).is_some() {
            self.order.retain(|k| k != id);
        }
    }
    pub(crate) fn insert(&mut self, id: [u8; 32], key: Zeroizing<[u8; 32]>) {
        if self.keys.insert(id, key).is_none() {
            self.order.push_back(id);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.keys.remove(&old);
                }
            }
        }
    }
}

/// Seals and unseals identity parts with the node's keys.
pub struct Sealer {
    keys: std::sync::Arc<NodeKeys>,
    epoch: Mutex<Option<Epoch>>,
    cache: Mutex<KeyCache>,
    max_uses: u32,
    /// Where a new epoch key is written the moment it is made (the vault's `epoch_keys`).
    key_store: Option<sled::Tree>,
    /// The persons' keys, when records are sealed under them too.
    person_keys: Option<std::sync::Arc<PersonKeys>>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("max_uses", &self.max_uses)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    pub fn new(keys: std::sync::Arc<NodeKeys>, max_uses: u32, cache_keys: usize) -> Sealer {
        Sealer {
            keys,
            epoch: Mutex::new(None),
            cache: Mutex::new(KeyCache::new(cache_keys)),
            max_uses: max_uses.max(1),
            key_store: None,
            person_keys: None,
        }
    }

    /// Seals every record of a person under that person's key too (made with its first
    /// record), so that [`PersonKeys::destroy`] erases them. Records sealed before, and
    /// records about no person, depend on their epoch key alone.
    pub fn with_person_keys(mut self, person_keys: std::sync::Arc<PersonKeys>) -> Sealer {
        self.person_keys = Some(person_keys);
        self
    }

    /// The persons' keys, if records are sealed under them.
    pub fn person_keys(&self) -> Option<&std::sync::Arc<PersonKeys>> {
        self.person_keys.as_ref()
    }

    /// The data key of a record sealed with `epoch_key` and `salt`: under the person's key too
    /// when `person_keyed` (an error when that key is gone: the person was erased).
    fn data_key(
        &self,
        meta: &RecordMeta,
        person_keyed: bool,
        epoch_key: &[u8; 32],
        salt: &[u8; 32],
        make: bool,
    ) -> Result<Zeroizing<[u8; 32]>> {
        if !person_keyed {
            return Ok(Zeroizing::new(hmac(epoch_key, &[DEK_LABEL, salt])));
        }
        let keys = self.person_keys.as_ref().ok_or_else(|| {
            StorageError::Corrupt("a record sealed under a person key, and no person keys".into())
        })?;
        let person = if make {
            keys.get_or_create(&meta.fingerprint)?
        } else {
            keys.get(&meta.fingerprint)?.ok_or(StorageError::Erased)?
        };
        Ok(Zeroizing::new(hmac(
            epoch_key,
            &[DEK_LABEL_PERSON, salt, person.as_ref()],
        )))
    }

    /// Writes each new epoch key to `tree` (keyed by its id) as it is made, before any record
    /// sealed under it leaves this sealer. Without it a key would reach the store only with
    /// the write that made it, while other writes sealed under it meanwhile could be made
    /// durable first (a record, or a write's intent, that no key opens after a crash), and a
    /// write that made a key and then failed would take the key with it. A flush of the
    /// database that holds `tree` then covers the keys of everything written before it.
    pub fn with_key_store(mut self, tree: sled::Tree) -> Sealer {
        self.key_store = Some(tree);
        self
    }

    pub fn keys(&self) -> &NodeKeys {
        &self.keys
    }

    /// Encrypts `plaintext` for `meta`. When a new epoch key was made for it, that key comes
    /// back wrapped: the caller must store it with the record, or the record cannot be opened.
    pub fn seal(
        &self,
        meta: RecordMeta,
        plaintext: &[u8],
    ) -> Result<(SealedRecord, Option<NewEpochKey>)> {
        let (key_id, epoch_key, new_key) = self.current_epoch()?;
        let mut salt = [0u8; 32];
        random(&mut salt)?;
        let mut nonce = [0u8; 12];
        random(&mut nonce)?;
        let person_keyed = self.person_keys.is_some() && meta.has_person();
        let dek = self.data_key(&meta, person_keyed, &epoch_key, &salt, true)?;
        let cipher = aes(&dek);
        let aad = meta.aad(person_keyed, &key_id, &salt);
        let ciphertext = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| StorageError::Authentication)?;
        Ok((
            SealedRecord {
                meta,
                person_keyed,
                key_id,
                salt,
                nonce,
                ciphertext,
            },
            new_key,
        ))
    }

    /// The current epoch key (id, key, and the wrapped key when it was made now), making a new
    /// one when there is none or it is used up.
    fn current_epoch(&self) -> Result<CurrentEpoch> {
        let mut epoch = self.epoch.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = epoch.as_mut().filter(|e| e.uses < self.max_uses) {
            e.uses += 1;
            return Ok((e.id, e.key.clone(), None));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        random(key.as_mut())?;
        let wrapped = self
            .keys
            .rsa_public
            .oaep_encrypt::<RsaSha256>(key.as_ref())
            .map_err(|e| StorageError::Rsa(e.to_string()))?;
        let id: [u8; 32] = Sha256::digest(&wrapped).into();
        // Stored while the epoch is still locked: no record uses the key before it is stored.
        if let Some(store) = &self.key_store {
            store.insert(id, wrapped.as_slice())?;
        }
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, key.clone());
        *epoch = Some(Epoch {
            id,
            key: key.clone(),
            uses: 1,
        });
        Ok((id, key, Some(NewEpochKey { id, wrapped })))
    }

    /// Whether the epoch key of `record` is unwrapped in memory (no RSA operation needed).
    pub fn is_cached(&self, key_id: &[u8; 32]) -> bool {
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key_id)
            .is_some()
    }

    /// The epoch key `key_id` names: from the cache, or unwrapped from what `wrapped` finds
    /// (an RSA private-key operation).
    fn epoch_key(
        &self,
        key_id: &[u8; 32],
        wrapped: impl FnOnce(&[u8; 32]) -> Result<Option<Vec<u8>>>,
    ) -> Result<Zeroizing<[u8; 32]>> {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key_id);
        if let Some(key) = cached {
            return Ok(key);
        }
        let blob = wrapped(key_id)?.ok_or_else(|| StorageError::UnknownDataKey(hex(key_id)))?;
        // The id is the hash of the wrapped key: a substituted blob is refused here.
        let id: [u8; 32] = Sha256::digest(&blob).into();
        if &id != key_id {
            return Err(StorageError::Authentication);
        }
        let key = self.unwrap_key(&blob)?;
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(*key_id, key.clone());
        Ok(key)
    }

    /// Decrypts `record`; `wrapped` finds a wrapped epoch key by id when it is not cached (an
    /// RSA private-key operation, milliseconds: call from a blocking thread).
    pub fn unseal(
        &self,
        record: &SealedRecord,
        wrapped: impl FnOnce(&[u8; 32]) -> Result<Option<Vec<u8>>>,
    ) -> Result<Zeroizing<Vec<u8>>> {
        open(record, &self.record_key(record, wrapped)?)
    }

    /// The data key of a stored record (see [`Sealer::unseal`] for `wrapped`).
    fn record_key(
        &self,
        record: &SealedRecord,
        wrapped: impl FnOnce(&[u8; 32]) -> Result<Option<Vec<u8>>>,
    ) -> Result<Zeroizing<[u8; 32]>> {
        let epoch_key = self.epoch_key(&record.key_id, wrapped)?;
        self.data_key(
            &record.meta,
            record.person_keyed,
            &epoch_key,
            &record.salt,
            false,
        )
    }

    /// Hands `record` to a grantee whose RSA key is `grantee` (SubjectPublicKeyInfo DER): its
    /// own data key wrapped for that key. Nothing is decrypted but the epoch key (see
    /// [`Sealer::unseal`] for `wrapped`); call from a blocking thread.
    pub fn share(
        &self,
        record: &SealedRecord,
        wrapped: impl FnOnce(&[u8; 32]) -> Result<Option<Vec<u8>>>,
        grantee: &[u8],
    ) -> Result<SharedRecord> {
        use rsa::pkcs8::DecodePublicKey;
        let grantee = rsa::PublicKey::from_public_key_der(grantee)
            .map_err(|e| StorageError::Rsa(format!("the grantee's RSA key: {e}")))?;
        let dek = self.record_key(record, wrapped)?;
        let wrapped_data_key = grantee
            .oaep_encrypt::<RsaSha256>(dek.as_ref())
            .map_err(|e| StorageError::Rsa(e.to_string()))?;
        Ok(SharedRecord {
            record: record.clone(),
            wrapped_data_key,
        })
    }

    /// Opens a record another member shared with this node (an RSA private-key operation:
    /// call from a blocking thread). A key wrapped for another member, or a record altered or
    /// moved on the way, fails.
    pub fn open_shared(&self, shared: &SharedRecord) -> Result<Zeroizing<Vec<u8>>> {
        open(&shared.record, &self.unwrap_key(&shared.wrapped_data_key)?)
    }

    /// A 32-byte key wrapped (RSA-OAEP-SHA-256) for this node's RSA key.
    fn unwrap_key(&self, wrapped: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
        let plain = self
            .keys
            .rsa
            .oaep_decrypt::<RsaSha256>(wrapped)
            .map_err(|_| StorageError::Authentication)?;
        key_of(Zeroizing::new(plain))
    }
}

/// An unwrapped key: exactly 32 bytes, or the wrapping did not authenticate.
pub(crate) fn key_of(plain: Zeroizing<Vec<u8>>) -> Result<Zeroizing<[u8; 32]>> {
    let key: [u8; 32] = plain
        .as_slice()
        .try_into()
        .map_err(|_| StorageError::Authentication)?;
    Ok(Zeroizing::new(key))
}

/// Decrypts `record` under its data key.
fn open(record: &SealedRecord, dek: &Zeroizing<[u8; 32]>) -> Result<Zeroizing<Vec<u8>>> {
    let cipher = aes(dek);
    let aad = record
        .meta
        .aad(record.person_keyed, &record.key_id, &record.salt);
    cipher
        .decrypt(
            &Nonce::from(record.nonce),
            Payload {
                msg: &record.ciphertext,
                aad: &aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| StorageError::Authentication)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn sealer(max_uses: u32) -> (tempfile::TempDir, Sealer) {
        let dir = tempfile::tempdir().unwrap();
        let (keys, _) = NodeKeys::load_or_create(&dir.path().join("keys"), 2048).unwrap();
        (dir, Sealer::new(Arc::new(keys), max_uses, 8))
    }

    fn meta(version: &str) -> RecordMeta {
        RecordMeta {
            fingerprint: Fingerprint([7; 32]),
            resource_type: "Patient".into(),
            id: "123".into(),
            version: version.into(),
        }
    }

    #[test]
    fn seal_unseal_round_trip_and_encoding() {
        let (_dir, sealer) = sealer(2);
        let (record, new_key) = sealer.seal(meta("1"), br#"{"name":"Ada"}"#).unwrap();
        let new_key = new_key.unwrap();
        assert!(!record.ciphertext.windows(3).any(|w| w == b"Ada"));
        let encoded = record.encode();
        assert_eq!(SealedRecord::decode(&encoded).unwrap(), record);
        let plain = sealer.unseal(&record, |_| Ok(None)).unwrap();
        assert_eq!(plain.as_slice(), br#"{"name":"Ada"}"#);

        // A fresh sealer (no cache) opens it through the wrapped key.
        let fresh = Sealer::new(sealer.keys.clone(), 2, 8);
        let plain = fresh
            .unseal(&record, |id| {
                assert_eq!(id, &new_key.id);
                Ok(Some(new_key.wrapped.clone()))
            })
            .unwrap();
        assert_eq!(plain.as_slice(), br#"{"name":"Ada"}"#);
        assert!(fresh.is_cached(&new_key.id));
    }

    #[test]
    fn a_new_epoch_key_is_stored_before_any_record_sealed_under_it_leaves() {
        let (dir, sealer) = sealer(10);
        let db = sled::open(dir.path().join("db")).unwrap();
        let tree = db.open_tree("epoch_keys").unwrap();
        let sealer = Sealer::new(sealer.keys.clone(), 10, 8).with_key_store(tree.clone());
        // The write that made the key never stores it (it failed); another write sealed under
        // the same key is kept.
        let (first, made) = sealer.seal(meta("1"), b"lost write").unwrap();
        let (second, none) = sealer.seal(meta("2"), b"kept write").unwrap();
        assert!(made.is_some() && none.is_none());
        assert_eq!(first.key_id, second.key_id);
        // After a restart (nothing cached) the kept record opens from the store.
        let fresh = Sealer::new(sealer.keys.clone(), 10, 8);
        let plain = fresh
            .unseal(&second, |id| Ok(tree.get(id).unwrap().map(|v| v.to_vec())))
            .unwrap();
        assert_eq!(plain.as_slice(), b"kept write");
    }

    #[test]
    fn epochs_rotate_and_records_differ() {
        let (_dir, sealer) = sealer(2);
        let (a, ka) = sealer.seal(meta("1"), b"x").unwrap();
        let (b, kb) = sealer.seal(meta("1"), b"x").unwrap();
        let (c, kc) = sealer.seal(meta("1"), b"x").unwrap();
        assert!(ka.is_some() && kb.is_none() && kc.is_some());
        assert_eq!(a.key_id, b.key_id);
        assert_ne!(b.key_id, c.key_id);
        assert_ne!(a.salt, b.salt);
        assert_ne!(a.ciphertext, b.ciphertext);
    }

    #[test]
    fn moved_or_altered_records_fail() {
        let (_dir, sealer) = sealer(10);
        let (record, _) = sealer.seal(meta("1"), b"secret").unwrap();
        let mut moved = record.clone();
        moved.meta.version = "2".into();
        assert!(matches!(
            sealer.unseal(&moved, |_| Ok(None)),
            Err(StorageError::Authentication)
        ));
        let mut flipped = record.clone();
        flipped.ciphertext[0] ^= 1;
        assert!(sealer.unseal(&flipped, |_| Ok(None)).is_err());
        let encoded = record.encode();
        assert!(SealedRecord::decode(&encoded[..encoded.len() - 1]).is_err());
        let mut longer = encoded.clone();
        longer.push(0);
        assert!(SealedRecord::decode(&longer).is_err());
    }

    #[test]
    fn a_shared_record_opens_at_the_grantee_only_and_its_key_opens_no_other() {
        use rsa::pkcs8::EncodePublicKey;
        let (_a, owner) = sealer(10);
        let (_b, grantee) = sealer(10);
        let (_c, stranger) = sealer(10);
        let (first, _) = owner.seal(meta("1"), br#"{"name":"Ada"}"#).unwrap();
        let (second, _) = owner.seal(meta("2"), br#"{"name":"Bea"}"#).unwrap();
        assert_eq!(first.key_id, second.key_id, "one epoch");
        let der = grantee.keys.rsa_public.to_public_key_der().unwrap();
        let shared = owner.share(&first, |_| Ok(None), der.as_bytes()).unwrap();
        let bytes = shared.encode();
        assert_eq!(SharedRecord::decode(&bytes).unwrap(), shared);
        assert!(!bytes.windows(3).any(|w| w == b"Ada"));
        assert!(SharedRecord::decode(&bytes[..bytes.len() - 1]).is_err());
        assert_eq!(
            grantee.open_shared(&shared).unwrap().as_slice(),
            br#"{"name":"Ada"}"#
        );
        // Not for another member; not moved to another version; not another record's key.
        assert!(stranger.open_shared(&shared).is_err());
        let mut moved = shared.clone();
        moved.record.meta.version = "9".into();
        assert!(grantee.open_shared(&moved).is_err());
        let other = SharedRecord {
            record: second,
            wrapped_data_key: shared.wrapped_data_key.clone(),
        };
        assert!(matches!(
            grantee.open_shared(&other),
            Err(StorageError::Authentication)
        ));
        assert!(owner.share(&first, |_| Ok(None), b"not a key").is_err());
    }

    /// A sealer whose records of a person depend on that person's key too.
    fn person_sealer() -> (tempfile::TempDir, Sealer) {
        let dir = tempfile::tempdir().unwrap();
        let keys_dir = dir.path().join("keys");
        let (keys, _) = NodeKeys::load_or_create(&keys_dir, 2048).unwrap();
        let persons = Arc::new(PersonKeys::open(&keys_dir, &keys, 4).unwrap());
        let sealer = Sealer::new(Arc::new(keys), 10, 8).with_person_keys(persons);
        (dir, sealer)
    }

    #[test]
    fn a_person_keyed_record_is_erased_with_its_persons_key_and_no_other() {
        use rsa::pkcs8::EncodePublicKey;
        let (dir, sealer) = person_sealer();
        let (ada, epoch) = sealer.seal(meta("1"), br#"{"name":"Ada"}"#).unwrap();
        let epoch = epoch.unwrap().wrapped;
        let mut other = meta("1");
        other.fingerprint = Fingerprint([8; 32]);
        let (bea, _) = sealer.seal(other, br#"{"name":"Bea"}"#).unwrap();
        let mut nobody = meta("1");
        nobody.fingerprint = Fingerprint([0; 32]);
        let (plain, _) = sealer.seal(nobody, b"{}").unwrap();
        assert!(ada.person_keyed && bea.person_keyed && !plain.person_keyed);
        assert_eq!(&ada.encode()[..4], b"FSR2");
        assert_eq!(SealedRecord::decode(&ada.encode()).unwrap(), ada);
        assert_eq!(ada.key_id, bea.key_id, "one epoch key, two person keys");
        // Its format is bound: read as format 1, it fails.
        let mut flipped = ada.clone();
        flipped.person_keyed = false;
        assert!(sealer.unseal(&flipped, |_| Ok(None)).is_err());
        // A copy of the record kept elsewhere (a backup of the vault) before the erasure.
        let copy = ada.encode();
        let persons = sealer.person_keys().unwrap().clone();
        assert!(persons.destroy(&Fingerprint([7; 32])).unwrap());
        assert!(!persons.destroy(&Fingerprint([7; 32])).unwrap(), "once");
        let copy = SealedRecord::decode(&copy).unwrap();
        assert!(matches!(
            sealer.unseal(&copy, |_| Ok(None)),
            Err(StorageError::Erased)
        ));
        let der = sealer.keys.rsa_public.to_public_key_der().unwrap();
        assert!(matches!(
            sealer.share(&copy, |_| Ok(None), der.as_bytes()),
            Err(StorageError::Erased)
        ));
        // The same keystore opened again (a restart) cannot either; the others still open.
        let keys_dir = dir.path().join("keys");
        let persons = Arc::new(PersonKeys::open(&keys_dir, &sealer.keys, 4).unwrap());
        let (keys, _) = NodeKeys::load_or_create(&keys_dir, 2048).unwrap();
        let again = Sealer::new(Arc::new(keys), 10, 8).with_person_keys(persons);
        let wrapped = |id: &[u8; 32]| {
            assert_eq!(id, &ada.key_id);
            Ok(Some(epoch.clone()))
        };
        assert!(matches!(
            again.unseal(&copy, wrapped),
            Err(StorageError::Erased)
        ));
        assert_eq!(
            again.unseal(&bea, wrapped).unwrap().as_slice(),
            br#"{"name":"Bea"}"#
        );
        assert_eq!(
            sealer.unseal(&bea, |_| Ok(None)).unwrap().as_slice(),
            br#"{"name":"Bea"}"#
        );
        assert_eq!(
            sealer.unseal(&plain, |_| Ok(None)).unwrap().as_slice(),
            b"{}"
        );
        // No file of the keystore holds the erased key's name any more.
        let names: Vec<String> = std::fs::read_dir(keys_dir.join(crate::person_keys::PERSONS_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let erased = hex(&crate::person_keys::person_key_id(&Fingerprint([7; 32])));
        assert_eq!(names.len(), 1, "{names:?}");
        assert!(!names.contains(&erased));
    }

    #[test]
    fn records_sealed_before_person_keys_still_open() {
        let dir = tempfile::tempdir().unwrap();
        let keys_dir = dir.path().join("keys");
        let (keys, _) = NodeKeys::load_or_create(&keys_dir, 2048).unwrap();
        let keys = Arc::new(keys);
        let before = Sealer::new(keys.clone(), 10, 8);
        let (old, new_key) = before.seal(meta("1"), b"old").unwrap();
        assert!(!old.person_keyed);
        let persons = Arc::new(PersonKeys::open(&keys_dir, &keys, 4).unwrap());
        let after = Sealer::new(keys, 10, 8).with_person_keys(persons);
        let blob = new_key.unwrap().wrapped;
        assert_eq!(
            after.unseal(&old, |_| Ok(Some(blob))).unwrap().as_slice(),
            b"old"
        );
    }

    #[test]
    fn fingerprints_and_tokens_are_keyed() {
        let k1 = SecretKey::from_bytes([1; 32]);
        let k2 = SecretKey::from_bytes([2; 32]);
        assert_eq!(Fingerprint::of(&k1, b"a"), Fingerprint::of(&k1, b"a"));
        assert_ne!(Fingerprint::of(&k1, b"a"), Fingerprint::of(&k2, b"a"));
        assert_ne!(
            blind_token(&k1, "name", "ab"),
            blind_token(&k1, "nam", "eab")
        );
        // Fingerprint = HMAC-SHA-256(key, "fhirseal-fp-v1" ‖ identity key), checked by hand.
        let mut mac = <HmacSha256 as hmac::KeyInit>::new_from_slice(&[1; 32]).unwrap();
        mac.update(b"fhirseal-fp-v1a");
        let expected: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(Fingerprint::of(&k1, b"a").0, expected);
    }
}
