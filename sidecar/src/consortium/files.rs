//! A consortium node's directory: its configuration, its member's keys, its Raft store.
//!
//! ```text
//! DIR/node.toml              consortium, member, node id, addresses, Raft timing
//! DIR/keys/signing.key       Ed25519 secret (32 bytes)             0600
//! DIR/keys/vote.key          Ristretto255 scalar (32 bytes)        0600
//! DIR/keys/tls.key.pem       the node's TLS key (PKCS#8)           0600
//! DIR/keys/tls.cert.pem      its self-signed certificate (identity is its SHA-256)
//! DIR/keys/wrapping-rsa.pem  RSA key the link key is wrapped for   0600
//! DIR/keys/link.key          the consortium link key, once known   0600
//! DIR/keys/next/             keys being rotated in (see `rotate`)
//! DIR/genesis/*.cmd          the regulator's first commands, signed by `init`
//! DIR/join-request.cmd       an institution's signed join request
//! DIR/trust.toml             who the node trusts until its own admission reaches it
//! DIR/raft/                  the sled database (log, state machine, pending joins)
//! ```
//!
//! Secrets are written with mode 0600 into a 0700 directory, synced, and never overwritten in
//! place; a secret file that others can read is refused rather than used.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use curve25519_dalek::constants::RISTRETTO_BASEPOINT_POINT;
use curve25519_dalek::Scalar;
use ed25519_dalek::SigningKey;
use fhirseal_consensus::governance::{MemberKeys, MemberKind};
use fhirseal_consensus::PublicKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::consortium::error::{ConsortiumError, Result};
use crate::consortium::trust::BootstrapPeer;

/// The paths of a node's directory.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// The directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The directory itself.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `node.toml`.
    pub fn config(&self) -> PathBuf {
        self.dir.join("node.toml")
    }

    /// The member's current keys.
    pub fn keys(&self) -> PathBuf {
        self.dir.join("keys")
    }

    /// Keys being rotated in.
    pub fn next_keys(&self) -> PathBuf {
        self.keys().join("next")
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
        self.keys().join("link.key")
    }
}

/// How long sending a snapshot, and its receiver's checks and installation, may take.
const SNAPSHOT_TIMEOUT_MS: u64 = 20_000;

/// Raft timing of a node, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftTiming {
    /// Leader heartbeat.
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a random time in [min, 2·min] stands for election.
    pub election_timeout_ms: u64,
    /// A snapshot is built every this many log entries.
    pub snapshot_every: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        // Several heartbeats fit in an election timeout even on a loaded two-core machine, where
        // an fsync can take tens of milliseconds.
        Self {
            heartbeat_ms: 100,
            election_timeout_ms: 500,
            snapshot_every: 1000,
        }
    }
}

impl RaftTiming {
    /// openraft's configuration for this timing.
    pub fn raft_config(&self, consortium: &str) -> fhirseal_consensus::raft::Config {
        fhirseal_consensus::raft::Config {
            cluster_name: consortium.to_owned(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_ms,
            election_timeout_max: self.election_timeout_ms * 2,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: 0,
            // A snapshot crosses whole, in one request, and its receiver replays its history
            // before installing it (see `transport::PeerConnection::full_snapshot`): more than
            // openraft's 200 ms for one chunk.
            install_snapshot_timeout: SNAPSHOT_TIMEOUT_MS,
            ..Default::default()
        }
    }
}

/// `node.toml`: who this node is and where it listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The consortium's name (commands are signed for it).
    pub consortium: String,
    /// This node's member id.
    pub member: String,
    /// Whether the member is the regulator (`regulator`), a `hospital` or a `provider`.
    pub kind: String,
    /// The Raft node id.
    pub node_id: u64,
    /// Where the node listens for Raft RPCs and the mutual-TLS API; also the address members
    /// reach it at.
    pub listen: SocketAddr,
    /// Where the join desk listens (server-authenticated TLS only), if this node has one.
    #[serde(default)]
    pub join_listen: Option<SocketAddr>,
    /// Raft timing.
    #[serde(default)]
    pub raft: RaftTiming,
}

impl NodeConfig {
    /// Reads and checks `node.toml`.
    pub fn load(layout: &Layout) -> Result<Self> {
        let path = layout.config();
        let text = fs::read_to_string(&path).map_err(|e| ConsortiumError::file(&path, e))?;
        let config: Self = toml::from_str(&text).map_err(|e| ConsortiumError::file(&path, e))?;
        parse_kind(&config.kind).map_err(|e| ConsortiumError::file(&path, e))?;
        if config.raft.heartbeat_ms == 0
            || config.raft.election_timeout_ms <= config.raft.heartbeat_ms
            || config.raft.snapshot_every == 0
        {
            return Err(ConsortiumError::file(
                &path,
                "raft: heartbeat_ms must be above 0 and below election_timeout_ms, snapshot_every above 0",
            ));
        }
        Ok(config)
    }

    /// Writes `node.toml`, refusing to replace one.
    pub fn create(&self, layout: &Layout) -> Result<()> {
        let text = toml::to_string(self).map_err(|e| ConsortiumError::Usage(e.to_string()))?;
        write_new(&layout.config(), text.as_bytes(), false)
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

/// The name of a member kind, as `node.toml` and `status` write it.
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

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

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
    /// Signs governance commands (and, later, ledger batches).
    pub signing: SigningKey,
    vote: Zeroizing<[u8; 32]>,
    tls_key: Zeroizing<Vec<u8>>,
    tls_key_pem: Zeroizing<String>,
    /// The node's certificate.
    pub tls_cert: CertificateDer<'static>,
    tls_cert_pem: String,
    /// The RSA key the link key is wrapped for.
    pub wrapping: rsa::PrivateKey,
}

impl std::fmt::Debug for MemberSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberSecrets")
            .field("tls_certificate", &hex(&self.certificate_fingerprint()))
            .finish_non_exhaustive()
    }
}

const SIGNING: &str = "signing.key";
const VOTE: &str = "vote.key";
const TLS_KEY: &str = "tls.key.pem";
const TLS_CERT: &str = "tls.cert.pem";
const WRAPPING: &str = "wrapping-rsa.pem";
/// The files a rotation replaces (the RSA wrapping key stays: the link key is wrapped for it).
const ROTATED: [&str; 4] = [SIGNING, VOTE, TLS_KEY, TLS_CERT];

impl MemberSecrets {
    /// New keys; the RSA key has `rsa_bits` bits.
    pub fn generate(rsa_bits: usize) -> Result<Self> {
        let wrapping = rsa::PrivateKey::new(&mut getrandom::SysRng, rsa_bits)
            .map_err(|e| ConsortiumError::Keys(format!("RSA key: {e}")))?;
        Self::generate_with(wrapping)
    }

    /// New signing, vote and TLS keys beside the RSA key `wrapping`.
    fn generate_with(wrapping: rsa::PrivateKey) -> Result<Self> {
        let mut seed = Zeroizing::new([0u8; 32]);
        random(seed.as_mut())?;
        let signing = SigningKey::from_bytes(&seed);
        let mut wide = Zeroizing::new([0u8; 64]);
        random(wide.as_mut())?;
        let vote = Zeroizing::new(Scalar::from_bytes_mod_order_wide(&wide).to_bytes());
        let tls = rcgen::generate_simple_self_signed(vec!["fhirseal-node".to_owned()])
            .map_err(|e| ConsortiumError::Keys(format!("TLS certificate: {e}")))?;
        Ok(Self {
            signing,
            vote,
            tls_key: Zeroizing::new(tls.signing_key.serialize_der()),
            tls_key_pem: Zeroizing::new(tls.signing_key.serialize_pem()),
            tls_cert: tls.cert.der().clone(),
            tls_cert_pem: tls.cert.pem(),
            wrapping,
        })
    }

    /// New signing, vote and TLS keys for a rotation, keeping the RSA key.
    pub fn rotated(&self) -> Result<Self> {
        Self::generate_with(self.wrapping.clone())
    }

    /// Writes the keys into `dir` (made 0700), refusing to replace any file.
    pub fn write(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).map_err(|e| ConsortiumError::file(dir, e))?;
        restrict_dir(dir)?;
        write_new(&dir.join(SIGNING), self.signing.as_bytes(), true)?;
        write_new(&dir.join(VOTE), self.vote.as_ref(), true)?;
        write_new(&dir.join(TLS_KEY), self.tls_key_pem.as_bytes(), true)?;
        write_new(&dir.join(TLS_CERT), self.tls_cert_pem.as_bytes(), false)?;
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
        let signing: [u8; 32] = read_secret_array(&dir.join(SIGNING))?;
        let signing = SigningKey::from_bytes(&signing);
        let vote = Zeroizing::new(read_secret_array(&dir.join(VOTE))?);
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
        let rsa_path = rsa_dir.join(WRAPPING);
        let rsa_pem = read_secret(&rsa_path)?;
        let rsa_text =
            std::str::from_utf8(&rsa_pem).map_err(|e| ConsortiumError::file(&rsa_path, e))?;
        let wrapping = rsa::PrivateKey::from_pkcs8_pem(rsa_text)
            .map_err(|e| ConsortiumError::file(&rsa_path, format!("not a PKCS#8 RSA key: {e}")))?;
        Ok(Self {
            signing,
            vote,
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
        })
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
    pub fn unwrap_link_key(&self, ciphertext: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
        let plain = Zeroizing::new(
            self.wrapping
                .oaep_decrypt::<rsa::sha2::Sha256>(ciphertext)
                .map_err(|_| ConsortiumError::Keys("the wrapped link key does not open".into()))?,
        );
        let key: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| ConsortiumError::Keys("the link key is not 32 bytes".into()))?;
        Ok(Zeroizing::new(key))
    }
}

/// Wraps `link_key` (RSA-OAEP-SHA-256) for the RSA public key `wrapping_key` (SPKI DER).
pub fn wrap_link_key(link_key: &[u8; 32], wrapping_key: &[u8]) -> Result<Vec<u8>> {
    use rsa::pkcs8::DecodePublicKey;
    let public = rsa::PublicKey::from_public_key_der(wrapping_key)
        .map_err(|e| ConsortiumError::Keys(format!("the member's RSA key: {e}")))?;
    public
        .oaep_encrypt::<rsa::sha2::Sha256>(link_key)
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

/// A new random link key.
pub fn new_link_key() -> Result<Zeroizing<[u8; 32]>> {
    let mut key = Zeroizing::new([0u8; 32]);
    random(key.as_mut())?;
    Ok(key)
}

/// Reads the link key, if this node has one.
pub fn read_link_key(layout: &Layout) -> Result<Option<Zeroizing<[u8; 32]>>> {
    let path = layout.link_key();
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(Zeroizing::new(read_secret_array(&path)?)))
}

/// Writes the link key, replacing the old one atomically.
pub fn store_link_key(layout: &Layout, key: &[u8; 32]) -> Result<()> {
    let path = layout.link_key();
    let tmp = layout.keys().join("link.key.new");
    if tmp.exists() {
        fs::remove_file(&tmp).map_err(|e| ConsortiumError::file(&tmp, e))?;
    }
    write_new(&tmp, key, true)?;
    fs::rename(&tmp, &path).map_err(|e| ConsortiumError::file(&path, e))?;
    sync_dir(&layout.keys())
}

fn random(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|e| ConsortiumError::Keys(format!("no randomness: {e}")))
}

/// Writes a new file (mode 0600 when `secret`), refusing to replace one, and syncs it.
pub(crate) fn write_new(path: &Path, bytes: &[u8], secret: bool) -> Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options
        .open(path)
        .map_err(|e| ConsortiumError::file(path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| ConsortiumError::file(path, e))
}

fn read_secret(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path)
            .map_err(|e| ConsortiumError::file(path, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(ConsortiumError::file(
                path,
                format!(
                    "permissions {:o} let others read it; chmod 600 it",
                    mode & 0o777
                ),
            ));
        }
    }
    Ok(Zeroizing::new(
        fs::read(path).map_err(|e| ConsortiumError::file(path, e))?,
    ))
}

fn read_secret_array(path: &Path) -> Result<[u8; 32]> {
    let bytes = read_secret(path)?;
    bytes.as_slice().try_into().map_err(|_| {
        ConsortiumError::file(path, format!("expected 32 bytes, found {}", bytes.len()))
    })
}

fn restrict_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| ConsortiumError::file(dir, e))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ConsortiumError::file(dir, e))
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
            for name in [SIGNING, VOTE, TLS_KEY, WRAPPING] {
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
    fn a_rotation_keeps_the_wrapping_key_and_changes_the_rest() {
        let secrets = MemberSecrets::generate(2048).unwrap();
        let next = secrets.rotated().unwrap();
        let (a, b) = (secrets.member_keys().unwrap(), next.member_keys().unwrap());
        assert_eq!(a.wrapping_key, b.wrapping_key);
        assert_ne!(a.signing_key, b.signing_key);
        assert_ne!(a.tls_certificate, b.tls_certificate);
        assert_ne!(a.vote_key, b.vote_key);
        let link = new_link_key().unwrap();
        let wrapped = wrap_link_key(&link, &a.wrapping_key).unwrap();
        assert_eq!(*next.unwrap_link_key(&wrapped).unwrap(), *link);
    }

    #[test]
    fn fingerprints_round_trip() {
        let fp = [0xab; 32];
        assert_eq!(parse_fingerprint(&hex(&fp)), Some(fp));
        assert_eq!(parse_fingerprint("zz"), None);
    }
}
