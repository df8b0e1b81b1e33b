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
//!   leader that brings it up to date;
//! - the node's own certificates, pinned: the CLI run on the same directory speaks to its node
//!   with the member's certificate, even after a revocation, so that `status` still answers.
//!
//! The handshake refuses any other certificate ([`PeerVerifier`], for both sides), and because a
//! revocation must cut off connections already open, the server checks the peer again on every
//! request and the client before every request.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use fhirseal_consensus::raft::{GovernanceView, NodeId};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::consortium::files::fingerprint;

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
    bootstrap: BTreeMap<[u8; 32], (String, NodeId)>,
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
        bootstrap: BTreeMap<[u8; 32], (String, NodeId)>,
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
            self.inner.bootstrap.get(fp).map(|(member, node_id)| Peer {
                member: member.clone(),
                node_id: *node_id,
            })
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

/// The certificate a node presents, swapped in place when its keys are rotated.
#[derive(Clone)]
pub struct Identity {
    current: Arc<RwLock<Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field(
                "certificate",
                &crate::consortium::files::hex(&self.fingerprint()),
            )
            .finish()
    }
}

impl Identity {
    /// Presents `key`.
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        Self {
            current: Arc::new(RwLock::new(key)),
        }
    }

    /// What it presents now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Presents `key` from the next handshake on.
    pub fn replace(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = key;
    }

    /// SHA-256 of the certificate presented now.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.current()
            .cert
            .first()
            .map(fingerprint)
            .unwrap_or_default()
    }
}

impl rustls::server::ResolvesServerCert for Identity {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for Identity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
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
    Ok(config)
}

/// A client config for reaching node `expect` (any trusted peer if `None`), presenting
/// `identity`.
pub fn client_config(
    trust: &Trust,
    identity: &Identity,
    expect: Option<NodeId>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(PeerVerifier::new(trust.clone(), expect))
        .with_client_cert_resolver(Arc::new(identity.clone()));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}
