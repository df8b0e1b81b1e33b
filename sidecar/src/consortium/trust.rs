//! Who may talk to a node: the replicated whitelist, checked in the TLS handshake and again on
//! every request.
//!
//! Nodes present self-signed certificates; a certificate is known by its SHA-256, which the
//! governance state records for each member. [`Trust::peer`] answers who presents a certificate:
//!
//! - an active member's current certificate, not on the revocation list, per the replicated
//!   state this node has applied ([`fhirseal_consensus::governance::GovernanceState::member_by_certificate`]);
//! - until this node's state holds its own admission, a member named in `trust.toml` (the list
//!   the regulator's join desk gave it), unless the state already revoked that certificate:
//!   before its admission reaches it a new node's state is empty or behind, and would refuse the
//!   leader that brings it up to date (the list also says which of them vote, for
//!   [`Trust::voters`]);
//! - the node's own certificates, pinned: the CLI run on the same directory speaks to its node
//!   with the member's certificate, even after a revocation, so that `status` still answers.
//!
//! The handshake refuses any other certificate ([`PeerVerifier`], for both sides), and because a
//! revocation must cut off connections already open, the server checks the peer again on every
//! request and the client before every request.
//!
//! There is no grace on this side: a certificate this node's state has revoked, by a `Revoke`
//! or by a rotation, is refused from the moment the state applies it. What a rotation needs
//! (peers that applied it and peers that have not, at once) is on the presenting side:
//! [`Identity`] holds the node's certificates, and the peer's trust picks.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Instant;

use fhirseal_consensus::raft::{GovernanceView, NodeId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::consortium::files::fingerprint;
pub use crate::consortium::files::BootstrapPeer;

/// A peer the trust accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its member id.
    pub member: String,
    /// Its node's Raft id.
    pub node_id: NodeId,
}

/// The certificates a node or a CLI accepts. Cloning shares it.
#[derive(Clone)]
pub struct Trust {
    inner: Arc<Inner>,
}

struct Inner {
    view: OnceLock<GovernanceView>,
    own: Peer,
    bootstrap: BTreeMap<[u8; 32], BootstrapPeer>,
    pinned: RwLock<BTreeSet<[u8; 32]>>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("own", &self.inner.own)
            .finish_non_exhaustive()
    }
}

impl Trust {
    /// A node's trust: the bootstrap list and its own certificates, then its replicated state
    /// once [`Trust::attach`] hands it over (the state machine is opened with the Raft node,
    /// which needs the network, which needs this).
    pub fn node(
        own: Peer,
        bootstrap: BTreeMap<[u8; 32], BootstrapPeer>,
        pinned: BTreeSet<[u8; 32]>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                view: OnceLock::new(),
                own,
                bootstrap,
                pinned: RwLock::new(pinned),
            }),
        }
    }

    /// A CLI's trust: only the certificates of its own node.
    pub fn pinned(own: Peer, pinned: BTreeSet<[u8; 32]>) -> Self {
        Self::node(own, BTreeMap::new(), pinned)
    }

    /// Trusts what `view` says from now on.
    pub fn attach(&self, view: GovernanceView) {
        // Attached once, right after the node starts; a second call changes nothing.
        let _already = self.inner.view.set(view);
    }

    /// Replaces the pinned certificates (after a key rotation).
    pub fn set_pinned(&self, pinned: BTreeSet<[u8; 32]>) {
        *self
            .inner
            .pinned
            .write()
            .unwrap_or_else(PoisonError::into_inner) = pinned;
    }

    /// Who presents the certificate with SHA-256 `fp`, or `None` to refuse it.
    pub fn peer(&self, fp: &[u8; 32]) -> Option<Peer> {
        let pinned = self
            .inner
            .pinned
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(fp);
        if pinned {
            return Some(self.inner.own.clone());
        }
        let view = self.inner.view.get()?;
        view.read(|state| {
            if let Some(member) = state.member_by_certificate(fp) {
                return Some(Peer {
                    member: member.id().to_owned(),
                    node_id: member.profile.node_id,
                });
            }
            let caught_up = state.member(&self.inner.own.member).is_some();
            if caught_up || state.revoked_certificates().contains_key(fp) {
                return None;
            }
            self.inner.bootstrap.get(fp).map(|peer| Peer {
                member: peer.member.clone(),
                node_id: peer.node_id,
            })
        })
    }

    /// The nodes that vote, as far as this node knows: the voters of its state (active members
    /// whose role is voter) and, until its own admission reaches its state, the bootstrap list's
    /// voters whose certificates the state has not revoked (the same rule as [`Trust::peer`]).
    /// What [`fhirseal_consensus::raft::authorize`] checks a Raft RPC's sender against.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        let Some(view) = self.inner.view.get() else {
            return BTreeSet::new();
        };
        view.read(|state| {
            let mut voters: BTreeSet<NodeId> = state.voters().into_keys().collect();
            if state.member(&self.inner.own.member).is_none() {
                voters.extend(
                    self.inner
                        .bootstrap
                        .iter()
                        .filter(|(fp, peer)| {
                            peer.voter && !state.revoked_certificates().contains_key(*fp)
                        })
                        .map(|(_, peer)| peer.node_id),
                );
            }
            voters
        })
    }

    /// The certificate node `node_id` presents, by what [`Trust::peer`] accepts: its active
    /// member's current certificate, or before this node's admission the bootstrap list's;
    /// `None` if this trust knows none (a CLI's, or a node whose state is not attached yet).
    pub fn certificate_of(&self, node_id: NodeId) -> Option<[u8; 32]> {
        let view = self.inner.view.get()?;
        view.read(|state| {
            let member = state
                .members()
                .find(|m| m.is_active() && m.profile.node_id == node_id);
            if let Some(member) = member {
                let fp = member.keys().tls_certificate;
                return state.member_by_certificate(&fp).map(|_| fp);
            }
            if state.member(&self.inner.own.member).is_some() {
                return None;
            }
            self.inner
                .bootstrap
                .iter()
                .find(|(fp, peer)| {
                    peer.node_id == node_id && !state.revoked_certificates().contains_key(*fp)
                })
                .map(|(fp, _)| *fp)
        })
    }

    /// [`Trust::peer`] of a DER certificate.
    pub fn peer_of(&self, cert: &CertificateDer<'_>) -> Option<Peer> {
        self.peer(&fingerprint(cert))
    }
}

/// Checks a TLS peer's certificate against a [`Trust`]: as a server, any trusted peer; as a
/// client, the node it meant to reach (`expect`) or, without one, any trusted peer. Only TLS 1.3
/// is offered, and the handshake signature is checked with ring's algorithms.
#[derive(Debug)]
pub struct PeerVerifier {
    trust: Trust,
    expect: Option<NodeId>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PeerVerifier {
    /// A verifier over `trust`, for a connection to node `expect` if given.
    pub fn new(trust: Trust, expect: Option<NodeId>) -> Arc<Self> {
        Arc::new(Self {
            trust,
            expect,
            algorithms: crate::tls::provider().signature_verification_algorithms,
        })
    }

    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        match self.trust.peer_of(end_entity) {
            Some(peer) if self.expect.is_none_or(|id| id == peer.node_id) => Ok(()),
            Some(_) => Err(rustls::Error::General(
                "the certificate belongs to another node".into(),
            )),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
        }
    }
}

/// Only TLS 1.3 is offered, so a TLS 1.2 signature is never asked for.
const TLS12_NOT_OFFERED: rustls::Error =
    rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered);

impl PeerVerifier {
    fn signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Identity is the certificate's fingerprint in the replicated state, not a name or a CA.
        self.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(TLS12_NOT_OFFERED)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(TLS12_NOT_OFFERED)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The certificates a node may present, and which one it presents to whom.
///
/// A rotation is applied at different moments on different nodes: until a peer applies it, the
/// peer accepts only the member's old certificate, and from then on only the new one. So a node
/// holds, beside its current certificate (the one its own state names), the others a peer may
/// be waiting for:
///
/// - *spares*: keys on disk that its state has not revoked, chiefly one being rotated in
///   (`keys/next`), which a peer accepts as soon as it applies the rotation, perhaps before this
///   node does;
/// - the *previous* certificate, the one the last rotation replaced, until a deadline set when
///   it was replaced ([`Identity::rotate_to`]) and dropped by [`Identity::expire`]: peers that
///   have not applied the rotation accept it, and no other does (every peer that applied the
///   rotation holds it revoked).
///
/// As a server it presents the certificate the client asks for by name ([`server_name`]) if it
/// holds it, else the current one; as a client, [`crate::consortium::transport::Channel`]
/// presents the current one and, when the peer refuses it, tries the others in turn
/// ([`Identity::candidates`]). Either way the peer's own state decides whether it accepts.
#[derive(Clone)]
pub struct Identity {
    keys: Arc<RwLock<Keys>>,
}

struct Keys {
    current: Arc<CertifiedKey>,
    spares: Vec<Arc<CertifiedKey>>,
    previous: Option<(Arc<CertifiedKey>, Instant)>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field(
                "certificate",
                &crate::consortium::files::hex(&self.fingerprint()),
            )
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a key's certificate.
pub fn key_fingerprint(key: &CertifiedKey) -> [u8; 32] {
    key.cert.first().map(fingerprint).unwrap_or_default()
}

impl Identity {
    /// Presents `key`, and nothing else.
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        Self {
            keys: Arc::new(RwLock::new(Keys {
                current: key,
                spares: Vec::new(),
                previous: None,
            })),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Keys> {
        self.keys.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The certificate it presents first.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.read().current)
    }

    /// SHA-256 of the certificate it presents first.
    pub fn fingerprint(&self) -> [u8; 32] {
        key_fingerprint(&self.read().current)
    }

    /// Every key it may present, each once: the current one, then the spares, then the
    /// previous one while it is held.
    pub fn candidates(&self) -> Vec<Arc<CertifiedKey>> {
        let keys = self.read();
        let mut all: Vec<Arc<CertifiedKey>> = Vec::with_capacity(2 + keys.spares.len());
        let held = keys.previous.as_ref().map(|(key, _)| key);
        for key in std::iter::once(&keys.current)
            .chain(&keys.spares)
            .chain(held)
        {
            let fp = key_fingerprint(key);
            if !all.iter().any(|k| key_fingerprint(k) == fp) {
                all.push(Arc::clone(key));
            }
        }
        all
    }

    /// The candidate whose certificate has SHA-256 `fp`.
    pub fn find(&self, fp: &[u8; 32]) -> Option<Arc<CertifiedKey>> {
        self.candidates()
            .into_iter()
            .find(|k| key_fingerprint(k) == *fp)
    }

    /// Replaces the spares (keys on disk that the state has not revoked).
    pub fn set_spares(&self, spares: Vec<Arc<CertifiedKey>>) {
        self.write().spares = spares;
    }

    /// Presents `key` first from the next handshake on, and holds the certificate it replaces
    /// until `hold_until` (the one held before, if any, is dropped).
    pub fn rotate_to(&self, key: Arc<CertifiedKey>, hold_until: Instant) {
        let mut keys = self.write();
        let replaced = std::mem::replace(&mut keys.current, key);
        keys.previous = Some((replaced, hold_until));
    }

    /// Drops the previous certificate once `now` reaches its deadline. Nothing brings it back:
    /// only [`Identity::rotate_to`] sets a previous certificate, and only the current one.
    pub fn expire(&self, now: Instant) {
        let mut keys = self.write();
        if keys
            .previous
            .as_ref()
            .is_some_and(|(_, until)| now >= *until)
        {
            keys.previous = None;
        }
    }

    /// SHA-256 of the previous certificate while it is held.
    pub fn previous_fingerprint(&self) -> Option<[u8; 32]> {
        self.read()
            .previous
            .as_ref()
            .map(|(key, _)| key_fingerprint(key))
    }
}

/// The suffix of every server name a node's client sends.
const SERVER_NAME: &str = "fhirseal-node";

/// The server name a client sends (SNI): the certificate it expects the node to present, when
/// it knows one (`{first 32 hex digits}.{last 32}.fhirseal-node`), else `fhirseal-node`. It
/// chooses which of the node's own certificates the node presents, never whether the client
/// accepts it: the client's verifier decides that from its own state. The name crosses in the
/// clear, like the address; fingerprints are no secret (the state and the join desk list them).
pub fn server_name(
    expected: Option<[u8; 32]>,
) -> Result<ServerName<'static>, rustls::pki_types::InvalidDnsNameError> {
    let name = match expected {
        Some(fp) => {
            let digits = crate::consortium::files::hex(&fp);
            format!("{}.{}.{SERVER_NAME}", &digits[..32], &digits[32..])
        }
        None => SERVER_NAME.to_owned(),
    };
    ServerName::try_from(name)
}

/// The certificate a server name of [`server_name`] asks for.
pub fn expected_in(name: &str) -> Option<[u8; 32]> {
    let digits = name.strip_suffix(SERVER_NAME)?.strip_suffix('.')?;
    let (first, last) = digits.split_once('.')?;
    if first.len() != 32 || last.len() != 32 {
        return None;
    }
    crate::consortium::files::parse_fingerprint(&format!("{first}{last}"))
}

impl rustls::server::ResolvesServerCert for Identity {
    fn resolve(&self, hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let asked = hello
            .server_name()
            .and_then(expected_in)
            .and_then(|fp| self.find(&fp));
        Some(asked.unwrap_or_else(|| self.current()))
    }
}

/// A client presenting one key.
#[derive(Debug)]
struct Presenting(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for Presenting {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The node's server config: TLS 1.3, a client certificate required and checked against
/// `trust`, HTTP/2 only.
pub fn server_config(
    trust: &Trust,
    identity: &Identity,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(PeerVerifier::new(trust.clone(), None))
        .with_cert_resolver(Arc::new(identity.clone()));
    config.alpn_protocols = vec![b"h2".to_vec()];
    // No session tickets: a resumed session would skip the client certificate's check.
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// A client config for reaching node `expect` (any trusted peer if `None`), presenting `key`.
/// Sessions are never resumed: a resumed session skips the certificate checks, and identity is
/// checked in every handshake.
pub fn client_config(
    trust: &Trust,
    key: Arc<CertifiedKey>,
    expect: Option<NodeId>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(PeerVerifier::new(trust.clone(), expect))
        .with_client_cert_resolver(Arc::new(Presenting(key)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_carry_the_expected_certificate() {
        let fp = [0x5a; 32];
        let name = server_name(Some(fp)).unwrap();
        let ServerName::DnsName(dns) = &name else {
            panic!("{name:?}");
        };
        assert_eq!(expected_in(dns.as_ref()), Some(fp));
        let plain = server_name(None).unwrap();
        let ServerName::DnsName(dns) = &plain else {
            panic!("{plain:?}");
        };
        assert_eq!(expected_in(dns.as_ref()), None);
        for junk in [
            "fhirseal-node",
            "x.fhirseal-node",
            "5a5a.5a5a.fhirseal-node",
            "zz5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a.5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a.fhirseal-node",
            "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a.5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a.example",
        ] {
            assert_eq!(expected_in(junk), None, "{junk}");
        }
    }
}
