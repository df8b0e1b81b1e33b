//! A node's consortium files: its membership, its bootstrap trust, its Raft store, and the
//! member's keys in the node's keystore.
//!
//! ```text
//! DATA/consortium/membership.toml   consortium, member, kind, node id, the address it was
//!                                   admitted with, the regulator's join desk
//! DATA/consortium/address           where the running node's governance listener is bound
//! DATA/consortium/genesis/*.cmd     the regulator's first commands, signed by `init` (or the
//!                                   embedded default's first start)
//! DATA/consortium/join-request.cmd  an institution's signed join request
//! DATA/consortium/trust.toml        who the node trusts until its own admission reaches it
//! DATA/consortium/raft/             the sled database (log, state machine, pending joins)
//! KEYS/signing.key                  Ed25519 secret (32 bytes): governance commands and the
//!                                   institution's ledger batches                       0600
//! KEYS/vote.key                     Ristretto255 scalar (32 bytes)                     0600
//! KEYS/beacon.key                   schnorrkel mini secret key (32 bytes): the election
//!                                   beacon's VRF, expanded the Ed25519 way             0600
//! KEYS/tls.key.pem, tls.cert.pem    the node's TLS key (PKCS#8, 0600) and self-signed
//!                                   certificate (identity is its SHA-256)
//! KEYS/institution-rsa.pem          the RSA key data keys and the link key are wrapped for
//! KEYS/link.key                     the consortium link key, once the state hands it over
//! KEYS/next/                        keys being rotated in (see `rotate`)
//! ```
//!
//! KEYS is the node's keystore (`data_dir/keys`, or `seal.keys_dir`), which
//! [`crate::keystore`] opens whole. Secrets are written with mode 0600 into a 0700 directory,
//! whole or not at all, and never overwritten in place; a secret file that others can read is
//! refused rather than used.

use std::collections::BTreeMap;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
use curve25519_dalek::Scalar;
use ed25519_dalek::SigningKey;
use fhirseal_consensus::governance::{MemberKeys, MemberKind};
use fhirseal_consensus::PublicKey;
use fhirseal_storage::keys::{read_rsa, read_secret, read_secret_32, restrict_dir, sync_dir};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use schnorrkel::{ExpansionMode, MiniSecretKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::config::Config;
use crate::consortium::error::{ConsortiumError, Result};

/// The paths of a node's consortium files and keystore.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
    keys: PathBuf,
}

impl Layout {
    /// The data directory `data_dir`, with its keystore in `data_dir/keys`.
    pub fn new(data_dir: impl AsRef<Path>) -> Self {
        let data_dir = data_dir.as_ref();
        Self {
            dir: data_dir.join("consortium"),
            keys: data_dir.join("keys"),
        }
    }

    /// The data directory and keystore of `config`.
    pub fn of(config: &Config) -> Self {
        Self {
            dir: config.data_dir.join("consortium"),
            keys: config.keys_dir(),
        }
    }

    /// The consortium directory (`data_dir/consortium`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `membership.toml`.
    pub fn membership(&self) -> PathBuf {
        self.dir.join("membership.toml")
    }

    /// Where the running node says its governance listener is bound.
    pub fn address(&self) -> PathBuf {
        self.dir.join("address")
    }

    /// The keystore: the member's current keys among the node's.
    pub fn keys(&self) -> PathBuf {
        self.keys.clone()
    }

    /// Keys being rotated in.
    pub fn next_keys(&self) -> PathBuf {
        self.keys.join("next")
    }

    /// The sled database.
    pub fn raft(&self) -> PathBuf {
        self.dir.join("raft")
    }

    /// The regulator's genesis commands.
    pub fn genesis(&self) -> PathBuf {
        self.dir.join("genesis")
    }

    /// An institution's join request.
    pub fn join_request(&self) -> PathBuf {
        self.dir.join("join-request.cmd")
    }

    /// The bootstrap trust list.
    pub fn trust(&self) -> PathBuf {
        self.dir.join("trust.toml")
    }

    /// The link key.
    pub fn link_key(&self) -> PathBuf {
        self.keys.join(fhirseal_storage::keys::LINK_KEY_FILE)
    }

    /// The address the running node wrote, if it runs (or ran) here.
    pub fn running_address(&self) -> Option<SocketAddr> {
        fs::read_to_string(self.address())
            .ok()
            .and_then(|text| text.trim().parse().ok())
    }

    /// Records where the node's governance listener is bound.
    pub fn write_address(&self, addr: SocketAddr) -> Result<()> {
        let path = self.address();
        fs::write(&path, format!("{addr}\n")).map_err(|e| ConsortiumError::file(&path, e))
    }
}

/// `membership.toml`: who this node is in its consortium, written once by `consortium init`,
/// `consortium join` or the embedded default's first start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Membership {
    /// The consortium's name (commands are signed for it).
    pub consortium: String,
    /// This node's member id, which is also its institution on the ledger.
    pub member: String,
    /// Whether the member is the regulator (`regulator`), a `hospital` or a `provider`.
    pub kind: String,
    /// The Raft node id.
    pub node_id: u64,
    /// The address the member was admitted with: where the other members' nodes reach this
    /// one, and where it listens unless `consortium.listen` says otherwise.
    pub address: SocketAddr,
    /// Where the regulator's join desk listens (server-authenticated TLS only), if this node
    /// has one (`consortium.join_listen` overrides it).
    #[serde(default)]
    pub join_listen: Option<SocketAddr>,
}

impl Membership {
    /// Reads and checks `membership.toml`; `None` when the node belongs to no consortium yet.
    pub fn load(layout: &Layout) -> Result<Option<Self>> {
        let path = layout.membership();
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ConsortiumError::file(&path, e)),
        };
        let membership: Self =
            toml::from_str(&text).map_err(|e| ConsortiumError::file(&path, e))?;
        parse_kind(&membership.kind).map_err(|e| ConsortiumError::file(&path, e))?;
        Ok(Some(membership))
    }

    /// [`Membership::load`], or an error naming what to do when there is none.
    pub fn require(layout: &Layout) -> Result<Self> {
        Self::load(layout)?.ok_or_else(|| {
            ConsortiumError::Usage(format!(
                "{} belongs to no consortium yet: start the node (fhirseal run), or found one \
                 (fhirseal consortium init) or join one (fhirseal consortium join)",
                layout.dir().display()
            ))
        })
    }

    /// Writes `membership.toml`, refusing to replace one.
    pub fn create(&self, layout: &Layout) -> Result<()> {
        let text = toml::to_string(self).map_err(|e| ConsortiumError::Usage(e.to_string()))?;
        if !write_new(&layout.membership(), text.as_bytes(), false)? {
            return Err(ConsortiumError::Usage(format!(
                "{} already belongs to a consortium",
                layout.dir().display()
            )));
        }
        Ok(())
    }

    /// The member kind.
    pub fn member_kind(&self) -> MemberKind {
        parse_kind(&self.kind).unwrap_or(MemberKind::Provider)
    }
}

/// `regulator`, `hospital` or `provider`.
pub fn parse_kind(kind: &str) -> std::result::Result<MemberKind, String> {
    match kind {
        "regulator" => Ok(MemberKind::Regulator),
        "hospital" => Ok(MemberKind::Hospital),
        "provider" => Ok(MemberKind::Provider),
        other => Err(format!(
            "kind {other:?}: expected regulator, hospital or provider"
        )),
    }
}

/// The name of a member kind, as `membership.toml` and `status` write it.
pub fn kind_name(kind: MemberKind) -> &'static str {
    match kind {
        MemberKind::Regulator => "regulator",
        MemberKind::Hospital => "hospital",
        MemberKind::Provider => "provider",
    }
}

/// A node the bootstrap list trusts: a member known when this node asked to join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedPeer {
    /// Its member id.
    pub member: String,
    /// Its Raft node id.
    pub node_id: u64,
    /// SHA-256 of its certificate, hex.
    pub certificate: String,
    /// Whether its node votes.
    #[serde(default)]
    pub voter: bool,
}

/// `trust.toml`: the members an institution's node trusts until its replicated state holds its
/// own admission (before that its state is empty or behind, and would refuse the leader).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustFile {
    /// The members, as the regulator's join desk listed them.
    #[serde(default)]
    pub peer: Vec<TrustedPeer>,
}

impl TrustFile {
    /// Reads `trust.toml`; none is an empty list.
    pub fn load(layout: &Layout) -> Result<Self> {
        let path = layout.trust();
        match fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| ConsortiumError::file(&path, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(ConsortiumError::file(&path, e)),
        }
    }

    /// Writes `trust.toml`, replacing any.
    pub fn store(&self, layout: &Layout) -> Result<()> {
        let text = toml::to_string(self).map_err(|e| ConsortiumError::Usage(e.to_string()))?;
        let path = layout.trust();
        fs::write(&path, text).map_err(|e| ConsortiumError::file(&path, e))
    }

    /// Certificate fingerprint → the member that presents it.
    pub fn peers(&self) -> Result<BTreeMap<[u8; 32], BootstrapPeer>> {
        self.peer
            .iter()
            .map(|p| {
                let fp = parse_fingerprint(&p.certificate).ok_or_else(|| {
                    ConsortiumError::Usage(format!(
                        "bad fingerprint in trust.toml for {}",
                        p.member
                    ))
                })?;
                let peer = BootstrapPeer {
                    member: p.member.clone(),
                    node_id: p.node_id,
                    voter: p.voter,
                };
                Ok((fp, peer))
            })
            .collect()
    }
}

/// SHA-256 of a certificate's DER: how members name certificates.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    Sha256::digest(cert.as_ref()).into()
}

/// Lower-case hex: the storage crate's, which every other part of the node writes with.
pub use fhirseal_storage::keys::hex;

/// A 64-digit hex fingerprint.
pub fn parse_fingerprint(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A member's secret keys.
pub struct MemberSecrets {
    /// Signs governance commands and the institution's ledger batches.
    pub signing: SigningKey,
    vote: Zeroizing<[u8; 32]>,
    // Zeroized on drop by schnorrkel.
    beacon: MiniSecretKey,
    tls_key: Zeroizing<Vec<u8>>,
    tls_key_pem: Zeroizing<String>,
    /// The node's certificate.
    pub tls_cert: CertificateDer<'static>,
    tls_cert_pem: String,
    /// The institution's RSA key: the link key is wrapped for it.
    pub wrapping: rsa::PrivateKey,
}

impl std::fmt::Debug for MemberSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberSecrets")
            .field("tls_certificate", &hex(&self.certificate_fingerprint()))
            .finish_non_exhaustive()
    }
}

/// The member's signing key.
pub const SIGNING: &str = "signing.key";
const VOTE: &str = "vote.key";
const BEACON: &str = "beacon.key";
const TLS_KEY: &str = "tls.key.pem";
const TLS_CERT: &str = "tls.cert.pem";
const WRAPPING: &str = fhirseal_storage::keys::RSA_KEY_FILE;
/// The files a rotation replaces (the RSA key stays: data keys and the link key are wrapped
/// for it).
const ROTATED: [&str; 5] = [SIGNING, VOTE, BEACON, TLS_KEY, TLS_CERT];
/// How a beacon key's 32-byte seed becomes a keypair: the Ed25519 way (SHA-512 of the seed,
/// clamped), as [`fhirseal_consensus::election::beacon::BeaconKey::from_seed`] expands it, so
/// that the keystore's key and the beacon's are one key. A seed expanded the other way
/// (`Uniform`) would give another public key.
const BEACON_EXPANSION: ExpansionMode = ExpansionMode::Ed25519;

impl MemberSecrets {
    /// New keys; the RSA key has `rsa_bits` bits.
    pub fn generate(rsa_bits: usize) -> Result<Self> {
        let wrapping = rsa::PrivateKey::new(&mut getrandom::SysRng, rsa_bits)
            .map_err(|e| ConsortiumError::Keys(format!("RSA key: {e}")))?;
        Self::generate_with(wrapping, None)
    }

    /// New signing (unless `seed` gives it), vote, beacon and TLS keys beside the RSA key
    /// `wrapping`.
    pub fn generate_with(wrapping: rsa::PrivateKey, seed: Option<[u8; 32]>) -> Result<Self> {
        let seed = match seed {
            Some(seed) => Zeroizing::new(seed),
            None => {
                let mut seed = Zeroizing::new([0u8; 32]);
                random(seed.as_mut())?;
                seed
            }
        };
        let signing = SigningKey::from_bytes(&seed);
        let mut wide = Zeroizing::new([0u8; 64]);
        random(wide.as_mut())?;
        let vote = Zeroizing::new(Scalar::from_bytes_mod_order_wide(&wide).to_bytes());
        let mut beacon = Zeroizing::new([0u8; 32]);
        random(beacon.as_mut())?;
        let beacon = beacon_key(&beacon)?;
        let tls = rcgen::generate_simple_self_signed(vec!["fhirseal-node".to_owned()])
            .map_err(|e| ConsortiumError::Keys(format!("TLS certificate: {e}")))?;
        Ok(Self {
            signing,
            vote,
            beacon,
            tls_key: Zeroizing::new(tls.signing_key.serialize_der()),
            tls_key_pem: Zeroizing::new(tls.signing_key.serialize_pem()),
            tls_cert: tls.cert.der().clone(),
            tls_cert_pem: tls.cert.pem(),
            wrapping,
        })
    }

    /// New signing, vote, beacon and TLS keys for a rotation, keeping the RSA key.
    pub fn rotated(&self) -> Result<Self> {
        Self::generate_with(self.wrapping.clone(), None)
    }

    /// Whether `dir` holds a member's keys (its signing key).
    pub fn present_in(dir: &Path) -> bool {
        dir.join(SIGNING).exists()
    }

    /// Writes the keys into `dir` (made 0700), refusing to replace any file.
    pub fn write(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).map_err(|e| ConsortiumError::file(dir, e))?;
        restrict_dir(dir)?;
        let refuse = |name: &str| {
            ConsortiumError::file(&dir.join(name), "already there; keys are never replaced")
        };
        for (name, bytes, secret) in [
            (SIGNING, self.signing.as_bytes().as_slice(), true),
            (VOTE, self.vote.as_slice(), true),
            (BEACON, self.beacon.as_bytes().as_slice(), true),
            (TLS_KEY, self.tls_key_pem.as_bytes(), true),
            (TLS_CERT, self.tls_cert_pem.as_bytes(), false),
        ] {
            if !write_new(&dir.join(name), bytes, secret)? {
                return Err(refuse(name));
            }
        }
        if !dir.join(WRAPPING).exists() {
            let rsa_pem = self
                .wrapping
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| ConsortiumError::Keys(format!("RSA key: {e}")))?;
            write_new(&dir.join(WRAPPING), rsa_pem.as_bytes(), true)?;
        }
        Ok(())
    }

    /// Reads the keys in `dir`; the RSA key is read from `rsa_dir` (a rotation keeps it).
    pub fn load(dir: &Path, rsa_dir: &Path) -> Result<Self> {
        Self::load_with(dir, read_rsa(&rsa_dir.join(WRAPPING))?)
    }

    /// Reads the keys in `dir` beside the RSA key `wrapping`, already read.
    pub fn load_with(dir: &Path, wrapping: rsa::PrivateKey) -> Result<Self> {
        let signing = Zeroizing::new(read_secret_32(&dir.join(SIGNING))?);
        let signing = SigningKey::from_bytes(&signing);
        let vote = Zeroizing::new(read_secret_32(&dir.join(VOTE))?);
        let beacon = beacon_key(&Zeroizing::new(read_secret_32(&dir.join(BEACON))?))?;
        let key_path = dir.join(TLS_KEY);
        let key_pem = read_secret(&key_path)?;
        let tls_key = match PrivateKeyDer::from_pem_slice(&key_pem) {
            Ok(PrivateKeyDer::Pkcs8(der)) => Zeroizing::new(der.secret_pkcs8_der().to_vec()),
            Ok(_) => return Err(ConsortiumError::file(&key_path, "not a PKCS#8 key")),
            Err(e) => return Err(ConsortiumError::file(&key_path, e)),
        };
        let tls_key_pem = Zeroizing::new(
            String::from_utf8(key_pem.to_vec()).map_err(|e| ConsortiumError::file(&key_path, e))?,
        );
        let cert_path = dir.join(TLS_CERT);
        let tls_cert_pem =
            fs::read_to_string(&cert_path).map_err(|e| ConsortiumError::file(&cert_path, e))?;
        let tls_cert = CertificateDer::from_pem_slice(tls_cert_pem.as_bytes())
            .map_err(|e| ConsortiumError::file(&cert_path, e))?;
        Ok(Self {
            signing,
            vote,
            beacon,
            tls_key,
            tls_key_pem,
            tls_cert,
            tls_cert_pem,
            wrapping,
        })
    }

    /// The public keys the consortium knows this member by.
    pub fn member_keys(&self) -> Result<MemberKeys> {
        let wrapping_key = self
            .wrapping
            .to_public_key()
            .to_public_key_der()
            .map_err(|e| ConsortiumError::Keys(format!("RSA public key: {e}")))?
            .as_bytes()
            .to_vec();
        let vote_point = Scalar::from_canonical_bytes(*self.vote)
            .into_option()
            .ok_or_else(|| {
                ConsortiumError::Keys("the vote key is not a canonical scalar".into())
            })?
            * RISTRETTO_BASEPOINT_POINT;
        Ok(MemberKeys {
            tls_certificate: self.certificate_fingerprint(),
            signing_key: PublicKey::of(&self.signing),
            wrapping_key,
            vote_key: vote_point.compress().to_bytes(),
            beacon_key: self.beacon_keypair().public.to_bytes(),
        })
    }

    /// The member's beacon keypair (schnorrkel, sr25519): its contributions to the election
    /// beacon. Expanded from `beacon.key` the Ed25519 way, as the beacon's own keys are.
    pub fn beacon_keypair(&self) -> schnorrkel::Keypair {
        self.beacon.expand_to_keypair(BEACON_EXPANSION)
    }

    /// The member's election keys as the ledger uses them: its ring-vote secret and its beacon
    /// key (the same key as [`MemberSecrets::beacon_keypair`]).
    pub fn voter_keys(&self) -> Result<crate::ledger::view::VoterKeys> {
        let vote = fhirseal_consensus::election::lsag::VoteSecret::from_bytes(*self.vote)
            .ok_or_else(|| {
                ConsortiumError::Keys("the vote key is not a canonical scalar".into())
            })?;
        let seed = Zeroizing::new(self.beacon.to_bytes());
        let beacon = fhirseal_consensus::election::beacon::BeaconKey::from_seed(&seed)
            .map_err(|e| ConsortiumError::Keys(format!("the beacon key: {e}")))?;
        Ok(crate::ledger::view::VoterKeys { vote, beacon })
    }

    /// SHA-256 of the certificate.
    pub fn certificate_fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.tls_cert)
    }

    /// The certificate and key as rustls presents them.
    pub fn certified_key(&self) -> Result<Arc<CertifiedKey>> {
        let provider = crate::tls::provider();
        let key = PrivateKeyDer::Pkcs8(self.tls_key.to_vec().into());
        let signer = provider.key_provider.load_private_key(key)?;
        Ok(Arc::new(CertifiedKey::new(
            vec![self.tls_cert.clone()],
            signer,
        )))
    }

    /// Unwraps a link key wrapped (RSA-OAEP-SHA-256) for this member.
    pub fn unwrap_link_key(&self, ciphertext: &[u8]) -> Result<fhirseal_storage::SecretKey> {
        unwrap_link_key(&self.wrapping, ciphertext)
    }
}

/// The election keys kept in the key directory `dir` (`vote.key`, `beacon.key`): what a node
/// takes again after its member rotated its keys.
pub fn voter_keys_in(dir: &Path) -> Result<crate::ledger::view::VoterKeys> {
    let vote = Zeroizing::new(read_secret_32(&dir.join(VOTE))?);
    let beacon = Zeroizing::new(read_secret_32(&dir.join(BEACON))?);
    voter_keys(&vote, &beacon)
}

fn voter_keys(vote: &[u8; 32], beacon: &[u8; 32]) -> Result<crate::ledger::view::VoterKeys> {
    let vote = fhirseal_consensus::election::lsag::VoteSecret::from_bytes(*vote)
        .ok_or_else(|| ConsortiumError::Keys("the vote key is not a canonical scalar".into()))?;
    let beacon = fhirseal_consensus::election::beacon::BeaconKey::from_seed(beacon)
        .map_err(|e| ConsortiumError::Keys(format!("the beacon key: {e}")))?;
    Ok(crate::ledger::view::VoterKeys { vote, beacon })
}

/// Unwraps a link key wrapped (RSA-OAEP-SHA-256) for the RSA key `wrapping`.
pub fn unwrap_link_key(
    wrapping: &rsa::PrivateKey,
    ciphertext: &[u8],
) -> Result<fhirseal_storage::SecretKey> {
    let plain = Zeroizing::new(
        wrapping
            .oaep_decrypt::<rsa::sha2::Sha256>(ciphertext)
            .map_err(|_| ConsortiumError::Keys("the wrapped link key does not open".into()))?,
    );
    let key: [u8; 32] = plain
        .as_slice()
        .try_into()
        .map_err(|_| ConsortiumError::Keys("the link key is not 32 bytes".into()))?;
    Ok(fhirseal_storage::SecretKey::from_bytes(key))
}

/// Wraps `link_key` (RSA-OAEP-SHA-256) for the RSA public key `wrapping_key` (SPKI DER).
pub fn wrap_link_key(
    link_key: &fhirseal_storage::SecretKey,
    wrapping_key: &[u8],
) -> Result<Vec<u8>> {
    use rsa::pkcs8::DecodePublicKey;
    let public = rsa::PublicKey::from_public_key_der(wrapping_key)
        .map_err(|e| ConsortiumError::Keys(format!("the member's RSA key: {e}")))?;
    public
        .oaep_encrypt::<rsa::sha2::Sha256>(link_key.expose())
        .map_err(|e| ConsortiumError::Keys(format!("wrapping the link key: {e}")))
}

/// Moves the rotated keys of `next` over those of `keys`, each file by an atomic rename, then
/// removes `next`.
pub fn promote_rotation(layout: &Layout) -> Result<()> {
    let next = layout.next_keys();
    let keys = layout.keys();
    for name in ROTATED {
        let from = next.join(name);
        fs::rename(&from, keys.join(name)).map_err(|e| ConsortiumError::file(&from, e))?;
    }
    sync_dir(&keys)?;
    fs::remove_dir_all(&next).map_err(|e| ConsortiumError::file(&next, e))
}

/// The certificate in `dir`, if there is one.
pub fn certificate_in(dir: &Path) -> Option<CertificateDer<'static>> {
    CertificateDer::from_pem_file(dir.join(TLS_CERT)).ok()
}

/// The TLS certificate and key in `dir`, as rustls presents them; an error if they are missing
/// or do not match.
pub fn certified_key_in(dir: &Path) -> Result<Arc<CertifiedKey>> {
    let cert_path = dir.join(TLS_CERT);
    let cert = CertificateDer::from_pem_file(&cert_path)
        .map_err(|e| ConsortiumError::file(&cert_path, e))?;
    let key_path = dir.join(TLS_KEY);
    let key_pem = read_secret(&key_path)?;
    let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(key @ PrivateKeyDer::Pkcs8(_)) => key,
        Ok(_) => return Err(ConsortiumError::file(&key_path, "not a PKCS#8 key")),
        Err(e) => return Err(ConsortiumError::file(&key_path, e)),
    };
    let certified = CertifiedKey::from_der(vec![cert], key, &crate::tls::provider())
        .map_err(|e| ConsortiumError::file(&key_path, e))?;
    Ok(Arc::new(certified))
}

/// The beacon key of a 32-byte seed.
fn beacon_key(seed: &[u8; 32]) -> Result<MiniSecretKey> {
    MiniSecretKey::from_bytes(seed).map_err(|e| ConsortiumError::Keys(format!("beacon key: {e}")))
}

fn random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| ConsortiumError::Keys(format!("no randomness: {e}")))
}

/// Writes a new file (mode 0600 when `secret`) whole or not at all; `false` when one was
/// already there ([`fhirseal_storage::keys::write_new`]).
pub(crate) fn write_new(path: &Path, bytes: &[u8], secret: bool) -> Result<bool> {
    Ok(fhirseal_storage::keys::write_new(path, bytes, secret)?)
}

/// A member of the bootstrap list (`trust.toml`: what the join desk answered).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootstrapPeer {
    /// Its member id.
    pub member: String,
    /// Its node's Raft id.
    pub node_id: fhirseal_consensus::raft::NodeId,
    /// Whether its node votes: only a voter may lead this node before its state can tell.
    pub voter: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_written_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let secrets = MemberSecrets::generate(2048).unwrap();
        secrets.write(&keys).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for name in [SIGNING, VOTE, BEACON, TLS_KEY, WRAPPING] {
                let mode = fs::metadata(keys.join(name)).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{name}");
            }
        }
        let back = MemberSecrets::load(&keys, &keys).unwrap();
        assert_eq!(back.member_keys().unwrap(), secrets.member_keys().unwrap());
        assert!(secrets.write(&keys).is_err(), "keys are never overwritten");
        assert!(!format!("{secrets:?}").contains(&hex(secrets.signing.as_bytes())));
        back.certified_key().unwrap();
    }

    #[test]
    fn the_beacon_key_round_trips_and_is_the_beacons_kind_of_key() {
        use fhirseal_consensus::election::beacon::{check_reveal, BeaconInput, BeaconKey};
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let secrets = MemberSecrets::generate(2048).unwrap();
        secrets.write(&keys).unwrap();
        let back = MemberSecrets::load(&keys, &keys).unwrap();
        let public = back.member_keys().unwrap().beacon_key;
        assert_eq!(public, secrets.member_keys().unwrap().beacon_key);
        assert_eq!(public, back.beacon_keypair().public.to_bytes());
        assert_eq!(
            back.beacon_keypair().secret.to_bytes(),
            secrets.beacon_keypair().secret.to_bytes()
        );
        // The file holds the seed the beacon's own keys are made from, expanded the same way.
        let seed = read_secret_32(&keys.join(BEACON)).unwrap();
        assert_eq!(BeaconKey::from_seed(&seed).unwrap().public(), public);
        // A contribution made with it checks against the key the state records.
        let input = BeaconInput {
            chain: b"chain",
            epoch: 3,
            previous_seed: [9; 32],
        };
        let reveal = BeaconKey::from_seed(&seed).unwrap().contribute(&input);
        let commitment = reveal.commitment("h1", &input);
        assert!(check_reveal("h1", &public, &input, &commitment, &reveal).is_ok());
        assert!(!format!("{secrets:?}").contains(&hex(&seed)));
    }

    #[test]
    fn a_rotation_keeps_the_wrapping_key_and_changes_the_rest() {
        let secrets = MemberSecrets::generate(2048).unwrap();
        let next = secrets.rotated().unwrap();
        let (a, b) = (secrets.member_keys().unwrap(), next.member_keys().unwrap());
        assert_eq!(a.wrapping_key, b.wrapping_key);
        assert_ne!(a.signing_key, b.signing_key);
        assert_ne!(a.tls_certificate, b.tls_certificate);
        assert_ne!(a.vote_key, b.vote_key);
        assert_ne!(a.beacon_key, b.beacon_key);
        let link = fhirseal_storage::SecretKey::random().unwrap();
        let wrapped = wrap_link_key(&link, &a.wrapping_key).unwrap();
        assert_eq!(next.unwrap_link_key(&wrapped).unwrap(), link);
    }

    #[test]
    fn membership_is_written_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        assert_eq!(Membership::load(&layout).unwrap(), None);
        assert!(Membership::require(&layout)
            .unwrap_err()
            .to_string()
            .contains("belongs to no consortium"));
        std::fs::create_dir_all(layout.dir()).unwrap();
        let membership = Membership {
            consortium: "c".into(),
            member: "h1".into(),
            kind: "hospital".into(),
            node_id: 7,
            address: "127.0.0.1:7101".parse().unwrap(),
            join_listen: None,
        };
        membership.create(&layout).unwrap();
        assert!(membership.create(&layout).is_err());
        assert_eq!(Membership::load(&layout).unwrap(), Some(membership));
        layout
            .write_address("127.0.0.1:7102".parse().unwrap())
            .unwrap();
        assert_eq!(
            layout.running_address(),
            Some("127.0.0.1:7102".parse().unwrap())
        );
    }

    #[test]
    fn fingerprints_round_trip() {
        let fp = [0xab; 32];
        assert_eq!(parse_fingerprint(&hex(&fp)), Some(fp));
        assert_eq!(parse_fingerprint("zz"), None);
    }
}
