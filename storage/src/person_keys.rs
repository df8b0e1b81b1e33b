//! Person keys: one random 32-byte key per person (per fingerprint), which every identity
//! record of that person is sealed under besides its epoch key (see [`crate::seal`]), so that
//! destroying it erases the person's identity: from the vault, and from every copy of the
//! vault, backups included.
//!
//! **Where they live.** In the keystore, not in the vault: `KEYS/persons/<id>`, one file per
//! person (mode 0600), named by `SHA-256("fhirseal-person-key-id-v1" ‖ fingerprint)` so that
//! the names link no one. A copy of the vault (`fhirseal backup` without `--with-keys`) holds
//! none of them, so a person erased after the copy was made cannot be read from it. One file
//! each rather than a database: a database keeps removed values in its log until it reclaims
//! the space, a file is overwritten before it is unlinked ([`PersonKeys::destroy`]).
//!
//! **Wrapping.** Each file holds the key encrypted with AES-256-GCM under a key derived from
//! the institution's RSA private key (`HMAC-SHA-256(SHA-256(PKCS#8 DER), label)`), its id the
//! associated data: the keystore's RSA key is the one secret to keep, as for everything else.
//!
//! What this cannot do: blocks a file system or a disk keeps after an overwrite (journals,
//! copy-on-write, SSD wear levelling), and copies of the keystore itself (`--with-keys`
//! backups) taken before an erasure, are beyond a process's reach; the operator's key
//! backups fall under the erasure policy too.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rsa::pkcs8::EncodePrivateKey;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{random, Result, StorageError};
use crate::keys::{hex, key_error, restrict_dir, sync_dir, write_new, NodeKeys};
use crate::seal::{Fingerprint, KeyCache};

/// The directory under the keystore that holds the person keys.
pub const PERSONS_DIR: &str = "persons";

const ID_LABEL: &[u8] = b"fhirseal-person-key-id-v1";
const KEK_LABEL: &[u8] = b"fhirseal-person-kek-v1";
/// nonce ‖ ciphertext of 32 bytes ‖ tag.
const FILE_LEN: usize = 12 + 32 + 16;

/// The person keys of one keystore, with a bounded cache of those in use.
pub struct PersonKeys {
    dir: PathBuf,
    kek: Zeroizing<[u8; 32]>,
    cache: Mutex<KeyCache>,
}

impl std::fmt::Debug for PersonKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersonKeys")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// The id, and file name, of a person's key.
pub fn person_key_id(fingerprint: &Fingerprint) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(ID_LABEL);
    hash.update(fingerprint.0);
    hash.finalize().into()
}

impl PersonKeys {
    /// The person keys under the keystore `keys_dir` of `keys`, keeping up to `cache` of them
    /// unwrapped in memory.
    pub fn open(keys_dir: &Path, keys: &NodeKeys, cache: usize) -> Result<PersonKeys> {
        let dir = keys_dir.join(PERSONS_DIR);
        fs::create_dir_all(&dir).map_err(|e| key_error(&dir, e))?;
        restrict_dir(&dir)?;
        let der = keys
            .rsa
            .to_pkcs8_der()
            .map_err(|e| StorageError::Rsa(e.to_string()))?;
        let secret: Zeroizing<[u8; 32]> = Zeroizing::new(Sha256::digest(der.as_bytes()).into());
        let kek = Zeroizing::new(crate::seal::hmac(&secret, &[KEK_LABEL]));
        Ok(PersonKeys {
            dir,
            kek,
            cache: Mutex::new(KeyCache::new(cache)),
        })
    }

    fn path(&self, id: &[u8; 32]) -> PathBuf {
        self.dir.join(hex(id))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, KeyCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The person's key; `None` when there is none (never made, or destroyed).
    pub fn get(&self, fingerprint: &Fingerprint) -> Result<Option<Zeroizing<[u8; 32]>>> {
        let id = person_key_id(fingerprint);
        if let Some(key) = self.cache().get(&id) {
            return Ok(Some(key));
        }
        let path = self.path(&id);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(key_error(&path, e)),
        };
        let key = self.unwrap(&id, &bytes)?;
        self.cache().insert(id, key.clone());
        Ok(Some(key))
    }

    /// The person's key, made and stored durably (before it is returned) when there is none.
    pub fn get_or_create(&self, fingerprint: &Fingerprint) -> Result<Zeroizing<[u8; 32]>> {
        if let Some(key) = self.get(fingerprint)? {
            return Ok(key);
        }
        let id = person_key_id(fingerprint);
        let mut key = Zeroizing::new([0u8; 32]);
        random(key.as_mut())?;
        let mut nonce = [0u8; 12];
        random(&mut nonce)?;
        let ciphertext = self.cipher().encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: key.as_ref(),
                aad: &id,
            },
        );
        let ciphertext = ciphertext.map_err(|_| StorageError::Authentication)?;
        let mut file = nonce.to_vec();
        file.extend_from_slice(&ciphertext);
        if !write_new(&self.path(&id), &file, true)? {
            // Another write made this person's key meanwhile: that one stands.
            return self.get(fingerprint)?.ok_or_else(|| {
                StorageError::Corrupt("a person key vanished as it was made".to_owned())
            });
        }
        self.cache().insert(id, key.clone());
        Ok(key)
    }

    /// Destroys the person's key: its file overwritten with random bytes, synced, unlinked,
    /// and the directory synced; forgotten from memory. Returns whether there was one.
    pub fn destroy(&self, fingerprint: &Fingerprint) -> Result<bool> {
        let id = person_key_id(fingerprint);
        self.cache().remove(&id);
        let path = self.path(&id);
        let mut file = match fs::OpenOptions::new().write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(key_error(&path, e)),
        };
        let mut noise = [0u8; FILE_LEN];
        random(&mut noise)?;
        file.write_all(&noise)
            .and_then(|()| file.sync_all())
            .map_err(|e| key_error(&path, e))?;
        drop(file);
        fs::remove_file(&path).map_err(|e| key_error(&path, e))?;
        sync_dir(&self.dir)?;
        Ok(true)
    }

    fn cipher(&self) -> Aes256Gcm {
        crate::seal::aes(&self.kek)
    }

    fn unwrap(&self, id: &[u8; 32], bytes: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
        if bytes.len() != FILE_LEN {
            return Err(StorageError::Corrupt(format!(
                "the person key {} is not {FILE_LEN} bytes",
                hex(id)
            )));
        }
        let (nonce, ciphertext) = bytes.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().unwrap_or_default();
        let plain = self
            .cipher()
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: id,
                },
            )
            .map_err(|_| StorageError::Authentication)?;
        crate::seal::key_of(Zeroizing::new(plain))
    }
}
