//! The node's secret keys, made on first start and kept in files readable by the owner only.
//!
//! - `link.key` — the consortium link key `K_link` (32 bytes) keying identity fingerprints; on the
//!   embedded default the node makes it, in a consortium the governance layer distributes it;
//! - `index.key` — this node's blind-index key (32 bytes), never shared: blind tokens are local;
//! - `institution-rsa.pem` — the institution's RSA private key (PKCS#8) that wraps data keys;
//! - `institution.ed25519` — the seed (32 bytes) of the Ed25519 key the institution signs its
//!   ledger batches with;
//! - `delegate.ed25519` — the seed of the Ed25519 key this node signs blocks with as a delegate.
//!
//! No key material appears in `Debug` output or errors.

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

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// The keys one node seals and fingerprints with.
pub struct NodeKeys {
    pub link_key: SecretKey,
    pub index_key: SecretKey,
    pub rsa: PrivateKey,
    pub rsa_public: PublicKey,
    /// SHA-256 of the public key's DER (SubjectPublicKeyInfo): names the key in sealed records.
    pub rsa_key_id: [u8; 32],
    /// Seed of the institution's Ed25519 batch-signing key.
    pub institution_signing: SecretKey,
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

impl NodeKeys {
    /// Loads the keys from `dir`, making each missing one (RSA with `rsa_bits` bits). Returns
    /// the keys and whether any was made now.
    pub fn load_or_create(dir: &Path, rsa_bits: usize) -> Result<(NodeKeys, bool)> {
        fs::create_dir_all(dir).map_err(|e| key_error(dir, e))?;
        restrict_dir(dir)?;
        let mut created = false;
        let link_key = secret_file(&dir.join("link.key"), &mut created)?;
        let index_key = secret_file(&dir.join("index.key"), &mut created)?;
        let institution_signing = secret_file(&dir.join("institution.ed25519"), &mut created)?;
        let delegate_signing = secret_file(&dir.join("delegate.ed25519"), &mut created)?;
        let rsa_path = dir.join("institution-rsa.pem");
        let rsa = if rsa_path.exists() {
            let pem =
                Zeroizing::new(fs::read_to_string(&rsa_path).map_err(|e| key_error(&rsa_path, e))?);
            PrivateKey::from_pkcs8_pem(&pem).map_err(|e| StorageError::KeyFile {
                path: rsa_path.display().to_string(),
                reason: format!("not a PKCS#8 RSA private key: {e}"),
            })?
        } else {
            let key = PrivateKey::new(&mut getrandom::SysRng, rsa_bits)
                .map_err(|e| StorageError::Rsa(e.to_string()))?;
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| StorageError::Rsa(e.to_string()))?;
            write_new_private(&rsa_path, pem.as_bytes())?;
            created = true;
            key
        };
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
            fs::write(&pub_path, pem).map_err(|e| key_error(&pub_path, e))?;
        }
        Ok((
            NodeKeys {
                link_key,
                index_key,
                rsa,
                rsa_public,
                rsa_key_id,
                institution_signing,
                delegate_signing,
            },
            created,
        ))
    }
}

fn key_error(path: &Path, e: std::io::Error) -> StorageError {
    StorageError::KeyFile {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Reads a 32-byte secret, or makes one when the file is absent.
fn secret_file(path: &Path, created: &mut bool) -> Result<SecretKey> {
    if path.exists() {
        check_private(path)?;
        let bytes = Zeroizing::new(fs::read(path).map_err(|e| key_error(path, e))?);
        let array: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| StorageError::KeyFile {
                path: path.display().to_string(),
                reason: format!("expected 32 bytes, found {}", bytes.len()),
            })?;
        return Ok(SecretKey::from_bytes(array));
    }
    let key = SecretKey::random()?;
    write_new_private(path, key.expose())?;
    *created = true;
    Ok(key)
}

/// Writes a new file with mode 0600, refusing to overwrite, and syncs it to disk.
fn write_new_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| key_error(path, e))?;
    file.write_all(bytes).map_err(|e| key_error(path, e))?;
    file.sync_all().map_err(|e| key_error(path, e))
}

/// A private key readable by others is refused rather than used.
fn check_private(path: &Path) -> Result<()> {
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
    Ok(())
}

fn restrict_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| key_error(dir, e))?;
    }
    Ok(())
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the keys of a data directory live.
pub fn key_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("keys")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_once_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let keys_dir = dir.path().join("keys");
        let (first, created) = NodeKeys::load_or_create(&keys_dir, 2048).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for name in ["link.key", "index.key", "institution-rsa.pem"] {
                let mode = fs::metadata(keys_dir.join(name))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600, "{name}");
            }
        }
        let (second, created) = NodeKeys::load_or_create(&keys_dir, 2048).unwrap();
        assert!(!created);
        assert_eq!(first.link_key.expose(), second.link_key.expose());
        assert_eq!(first.rsa_key_id, second.rsa_key_id);
        assert!(!format!("{first:?}").contains(&hex(first.link_key.expose())));
    }

    #[test]
    fn a_key_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let keys_dir = dir.path().join("keys");
        NodeKeys::load_or_create(&keys_dir, 2048).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(keys_dir.join("link.key"), fs::Permissions::from_mode(0o644))
                .unwrap();
            let err = NodeKeys::load_or_create(&keys_dir, 2048).unwrap_err();
            assert!(err.to_string().contains("chmod 600"), "{err}");
        }
    }
}
