//! The node's keystore: one directory (`data_dir/keys`, or `seal.keys_dir`) with every key the
//! node holds, made on first start (secrets 0600 in a 0700 directory):
//!
//! | file | key | used by |
//! |---|---|---|
//! | `signing.key` | Ed25519: the member's governance commands and its institution's ledger batches | governance, ledger |
//! | `vote.key` | Ristretto255 scalar: ring-signed ballots | governance |
//! | `beacon.key` | schnorrkel mini secret key, expanded the Ed25519 way: the election beacon's VRF | governance |
//! | `tls.key.pem`, `tls.cert.pem` | the node's certificate for the consortium's mutual TLS | governance transport |
//! | `institution-rsa.pem` | RSA: data keys, and the link key the consortium wraps for the member | sealing, governance |
//! | `index.key` | the blind-index key, local to the node | sealing |
//! | `delegate.ed25519` | Ed25519: blocks, as the delegate of the node's chain | ledger |
//! | `link.key` | the consortium's link key, as the governance state hands it over | sealing |
//! | `api-keys.toml` | the embedded default's API keys | the proxy |
//!
//! [`fhirseal_storage::NodeKeys`] reads the keys sealing and the ledger use,
//! [`crate::consortium::files::MemberSecrets`] the member's; this module makes and opens them
//! together. A data directory from before the node was a consortium member holds
//! `institution.ed25519` (the key its ledger batches were signed with) and no `signing.key`:
//! that key becomes the member's signing key, so that its chain still verifies.

use std::path::Path;

use fhirseal_storage::keys::read_secret_32;
use fhirseal_storage::NodeKeys;

use crate::consortium::error::Result;
use crate::consortium::files::MemberSecrets;

/// The ledger batch key of data directories made before the node was a consortium member.
const LEGACY_SIGNING: &str = "institution.ed25519";

/// Every key of a node.
#[derive(Debug)]
pub struct Keystore {
    /// What sealing and the ledger use.
    pub node: NodeKeys,
    /// The member's keys.
    pub member: MemberSecrets,
    /// Whether any key was made now.
    pub created: bool,
}

impl Keystore {
    /// Opens the keystore in `dir`, making every missing key (the RSA key with `rsa_bits`
    /// bits). Key generation blocks: call from a blocking context.
    pub fn open_or_create(dir: &Path, rsa_bits: usize) -> Result<Keystore> {
        let (node, mut created) = NodeKeys::load_or_create(dir, rsa_bits)?;
        if !MemberSecrets::present_in(dir) {
            let legacy = dir.join(LEGACY_SIGNING);
            let seed = if legacy.exists() {
                tracing::info!(
                    file = %legacy.display(),
                    "the ledger's batch key becomes the member's signing key"
                );
                Some(read_secret_32(&legacy)?)
            } else {
                None
            };
            MemberSecrets::generate_with(node.rsa.clone(), seed)?.write(dir)?;
            created = true;
        }
        let member = MemberSecrets::load_with(dir, node.rsa.clone())?;
        Ok(Keystore {
            node,
            member,
            created,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_keystore_holds_the_node_and_member_keys_with_one_rsa_key() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let first = Keystore::open_or_create(&keys, 2048).unwrap();
        assert!(first.created);
        let member = first.member.member_keys().unwrap();
        // The link key is wrapped for the RSA key sealing uses.
        use rsa::pkcs8::EncodePublicKey;
        let sealing_rsa = first.node.rsa_public.to_public_key_der().unwrap();
        assert_eq!(member.wrapping_key, sealing_rsa.as_bytes());
        let again = Keystore::open_or_create(&keys, 2048).unwrap();
        assert!(!again.created);
        assert_eq!(again.member.member_keys().unwrap(), member);
    }

    #[test]
    fn a_legacy_batch_key_becomes_the_signing_key() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        fhirseal_storage::keys::write_new(&keys.join(LEGACY_SIGNING), &[7; 32], true).unwrap();
        let store = Keystore::open_or_create(&keys, 2048).unwrap();
        assert_eq!(store.member.signing.to_bytes(), [7; 32]);
    }
}
