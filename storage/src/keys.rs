//! The node's secret keys that sealing and the ledger use, made on first start and kept in
//! files readable by the owner only, and the file primitives the rest of the node's keystore
//! (the member's governance keys, its certificate) is written with.
//!
//! - `index.key` — this node's blind-index key (32 bytes), never shared: blind tokens are local;
//! - `institution-rsa.pem` — the institution's RSA private key (PKCS#8) that wraps data keys,
//!   and for which the consortium wraps its link key;
//! - `delegate.ed25519` — the seed of the Ed25519 key this node signs blocks with as a delegate;
//! - `link.key` — the consortium link key `K_link` (32 bytes) keying identity fingerprints. It is
//!   not made here: the governance layer hands it to the node (wrapped for its RSA key), and the
//!   node keeps the unwrapped key in this file ([`read_link_key`], [`store_link_key`]); a
//!   consortium's founder makes it once ([`make_link_key`]).
//!
//! Files are written whole or not at all: into a temporary file, synced, then linked into
//! place, so that a reader never sees half a key and two processes making the same key at once
//! end up with one of them ([`write_new`]). No key material appears in `Debug` output or errors.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::{PrivateKey, PublicKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{random, Result, StorageError};

/// A 32-byte secret, zeroized on drop, never printed.
#[derive(Clone)]
pub struct SecretKey(Zeroizing<[u8; 32]>);

impl SecretKey {
    pub fn from_bytes(bytes: [u8; 32]) -> SecretKey {
        SecretKey(Zeroizing::new(bytes))
    }
    pub fn random() -> Result<SecretKey> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        random(bytes.as_mut())?;
        Ok(SecretKey(bytes))
    }
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        // Compared only against keys this node holds (is the link key new?), never against
        // what a client sends: no timing to hide.
        *self.0 == *other.0
    }
}

impl Eq for SecretKey {}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// The keys one node seals and indexes with, and its delegate key. The link key that
/// fingerprints are keyed with is the consortium's: it comes from the governance layer.
pub struct NodeKeys {
    pub index_key: SecretKey,
    pub rsa: PrivateKey,
    pub rsa_public: PublicKey,
    /// SHA-256 of the public key's DER (SubjectPublicKeyInfo): names the key in sealed records.
    pub rsa_key_id: [u8; 32],
    /// Seed of this node's Ed25519 delegate key.
    pub delegate_signing: SecretKey,
}

impl std::fmt::Debug for NodeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeKeys")
            .field("rsa_key_id", &hex(&self.rsa_key_id))
            .finish_non_exhaustive()
    }
}

/// The RSA key's file in a key directory.
pub const RSA_KEY_FILE: &str = "institution-rsa.pem";
/// The link key's file in a key directory.
pub const LINK_KEY_FILE: &str = "link.key";

impl NodeKeys {
    /// Loads the keys from `dir`, making each missing one (RSA with `rsa_bits` bits). Returns
    /// the keys and whether any was made now.
    pub fn load_or_create(dir: &Path, rsa_bits: usize) -> Result<(NodeKeys, bool)> {
        fs::create_dir_all(dir).map_err(|e| key_error(dir, e))?;
        restrict_dir(dir)?;
        let mut created = false;
        let index_key = secret_file(&dir.join("index.key"), &mut created)?;
        let delegate_signing = secret_file(&dir.join("delegate.ed25519"), &mut created)?;
        let rsa_path = dir.join(RSA_KEY_FILE);
        if !rsa_path.exists() {
            let key = PrivateKey::new(&mut getrandom::SysRng, rsa_bits)
                .map_err(|e| StorageError::Rsa(e.to_string()))?;
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| StorageError::Rsa(e.to_string()))?;
            // Another process may have made one meanwhile: then that one is read below.
            created |= write_new(&rsa_path, pem.as_bytes(), true)?;
        }
        let rsa = read_rsa(&rsa_path)?;
        let rsa_public = rsa.to_public_key();
        let der = rsa_public
            .to_public_key_der()
            .map_err(|e| StorageError::Rsa(e.to_string()))?;
        let rsa_key_id: [u8; 32] = Sha256::digest(der.as_bytes()).into();
        let pub_path = dir.join("institution-rsa.pub.pem");
        if !pub_path.exists() {
            let pem = rsa_public
                .to_public_key_pem(LineEnding::LF)
                .map_err(|e| StorageError::Rsa(e.to_string()))?;
            write_new(&pub_path, pem.as_bytes(), false)?;
        }
        Ok((
            NodeKeys {
                index_key,
                rsa,
                rsa_public,
                rsa_key_id,
                delegate_signing,
            },
            created,
        ))
    }
}

/// The id of the RSA key in the key directory `dir` (the SHA-256 of its public key's DER, as
/// [`NodeKeys::rsa_key_id`]), or `None` when `dir` holds none. Makes nothing.
pub fn rsa_key_id_in(dir: &Path) -> Result<Option<[u8; 32]>> {
    let path = dir.join(RSA_KEY_FILE);
    if !path.is_file() {
        return Ok(None);
    }
    let der = read_rsa(&path)?
        .to_public_key()
        .to_public_key_der()
        .map_err(|e| StorageError::Rsa(e.to_string()))?;
    Ok(Some(Sha256::digest(der.as_bytes()).into()))
}

/// Reads the RSA private key (PKCS#8 PEM) at `path`.
pub fn read_rsa(path: &Path) -> Result<PrivateKey> {
    let pem = read_secret(path)?;
    let text = std::str::from_utf8(&pem).map_err(|e| StorageError::KeyFile {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    PrivateKey::from_pkcs8_pem(text).map_err(|e| StorageError::KeyFile {
        path: path.display().to_string(),
        reason: format!("not a PKCS#8 RSA private key: {e}"),
    })
}

pub(crate) fn key_error(path: &Path, e: std::io::Error) -> StorageError {
    StorageError::KeyFile {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Reads a 32-byte secret, or makes one when the file is absent.
fn secret_file(path: &Path, created: &mut bool) -> Result<SecretKey> {
    if !path.exists() {
        let key = SecretKey::random()?;
        *created |= write_new(path, key.expose(), true)?;
    }
    Ok(SecretKey::from_bytes(read_secret_32(path)?))
}

/// The link key in the key directory `dir`, if this node has one.
pub fn read_link_key(dir: &Path) -> Result<Option<SecretKey>> {
    let path = dir.join(LINK_KEY_FILE);
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(SecretKey::from_bytes(read_secret_32(&path)?)))
}

/// Keeps `key` as the link key of the key directory `dir`, replacing the old one atomically.
pub fn store_link_key(dir: &Path, key: &SecretKey) -> Result<()> {
    replace_secret(&dir.join(LINK_KEY_FILE), key.expose())
}

/// The link key of `dir`, made now if there is none (a consortium's founder makes it once). Two
/// processes doing this at once get the same key.
pub fn make_link_key(dir: &Path) -> Result<SecretKey> {
    let path = dir.join(LINK_KEY_FILE);
    if !path.exists() {
        let key = SecretKey::random()?;
        write_new(&path, key.expose(), true)?;
    }
    Ok(SecretKey::from_bytes(read_secret_32(&path)?))
}

/// Writes a new file (mode 0600 when `secret`, else 0644), whole or not at all: into a
/// temporary file beside it, synced, then hard-linked into place, which refuses to replace a
/// file. Returns whether it wrote: `false` when `path` was already there (another process made
/// it meanwhile), which callers that must not replace anything treat as theirs to decide.
pub fn write_new(path: &Path, bytes: &[u8], secret: bool) -> Result<bool> {
    let tmp = temporary(path)?;
    write_file(&tmp, bytes, secret)?;
    let linked = fs::hard_link(&tmp, path);
    let removed = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
        Err(e) => return Err(key_error(path, e)),
    }
    removed.map_err(|e| key_error(&tmp, e))?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(true)
}

/// Replaces the secret file `path` with `bytes` (mode 0600) atomically: a temporary file,
/// synced, renamed over it.
pub fn replace_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary(path)?;
    write_file(&tmp, bytes, true)?;
    fs::rename(&tmp, path).map_err(|e| key_error(path, e))?;
    if let Some(parent) = path.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// A fresh temporary name beside `path` (random, so that concurrent writers never share one).
fn temporary(path: &Path) -> Result<PathBuf> {
    let mut tag = [0u8; 8];
    random(&mut tag)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(path.with_file_name(format!(".{name}.{}.tmp", hex(&tag))))
}

fn write_file(path: &Path, bytes: &[u8], secret: bool) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(path).map_err(|e| key_error(path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| key_error(path, e))
}

/// Reads a secret file; one readable by others is refused rather than used.
pub fn read_secret(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)
            .map_err(|e| key_error(path, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(StorageError::KeyFile {
                path: path.display().to_string(),
                reason: format!(
                    "permissions {:o} let others read it; chmod 600 it",
                    mode & 0o777
                ),
            });
        }
    }
    Ok(Zeroizing::new(
        fs::read(path).map_err(|e| key_error(path, e))?,
    ))
}

/// Reads a secret file of exactly 32 bytes.
pub fn read_secret_32(path: &Path) -> Result<[u8; 32]> {
    let bytes = read_secret(path)?;
    bytes
        .as_slice()
        .try_into()
        .map_err(|_| StorageError::KeyFile {
            path: path.display().to_string(),
            reason: format!("expected 32 bytes, found {}", bytes.len()),
        })
}

/// Makes `dir` readable by its owner only.
pub fn restrict_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| key_error(dir, e))?;
    }
    Ok(())
}

/// Syncs a directory, so that the names written into it survive a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| key_error(dir, e))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes hex digits spell (either case); `None` for anything else, odd lengths included.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_reads_back_and_nothing_else_does() {
        assert_eq!(unhex(&hex(&[0, 0xab, 0xff])), Some(vec![0, 0xab, 0xff]));
        assert_eq!(unhex("AB"), Some(vec![0xab]));
        for bad in ["a", "+a", "zz", "éa"] {
            assert_eq!(unhex(bad), None, "{bad}");
        }
    }

    #[test]
    fn keys_are_made_once_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let keys_dir = dir.path().join("keys");
        let (first, created) = NodeKeys::load_or_create(&keys_dir, 2048).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for name in ["index.key", "delegate.ed25519", RSA_KEY_FILE] {
                let mode = fs::metadata(keys_dir.join(name))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{name}");
            }
        }
        let (second, created) = NodeKeys::load_or_create(&keys_dir, 2048).unwrap();
        assert!(!created);
        assert_eq!(first.index_key.expose(), second.index_key.expose());
        assert_eq!(first.rsa_key_id, second.rsa_key_id);
        assert!(!format!("{first:?}").contains(&hex(first.index_key.expose())));
        // No link key is made with the node's keys: the consortium hands it over.
        assert!(read_link_key(&keys_dir).unwrap().is_none());
        let no_temporaries = fs::read_dir(&keys_dir)
            .unwrap()
            .all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp"));
        assert!(no_temporaries);
    }

    #[test]
    fn a_key_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keys_dir = dir.path().join("keys");
        NodeKeys::load_or_create(&keys_dir, 2048).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(
                keys_dir.join("index.key"),
                fs::Permissions::from_mode(0o644),
            )
            .unwrap();
            let err = NodeKeys::load_or_create(&keys_dir, 2048).unwrap_err();
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
    }

    #[test]
    fn the_link_key_is_made_once_kept_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let made = make_link_key(dir.path()).unwrap();
        assert_eq!(make_link_key(dir.path()).unwrap(), made);
        assert_eq!(read_link_key(dir.path()).unwrap(), Some(made.clone()));
        let next = SecretKey::random().unwrap();
        store_link_key(dir.path(), &next).unwrap();
        assert_eq!(read_link_key(dir.path()).unwrap(), Some(next));
    }

    #[test]
    fn a_new_file_never_replaces_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        assert!(write_new(&path, b"first", false).unwrap());
        assert!(!write_new(&path, b"second", false).unwrap());
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
