//! HTTP/2 over mutual TLS between nodes, and from the CLI to its node.
//!
//! A [`Channel`] is one HTTP/2 connection to one address, made on first use and made again
//! after any failure; before each request it checks that the peer's certificate is still
//! trusted (a revocation applied since the handshake closes the connection). It names, in the
//! server name it sends, the certificate its trust expects the peer to present, and presents
//! the node's current certificate; a peer that refuses it (it closes the connection after the
//! handshake, or answers a request 403 marked [`CERTIFICATE_REFUSED`]) is offered the node's
//! other certificates in turn (see [`crate::consortium::trust::Identity`]: a key rotation is
//! applied at different moments on different nodes). [`HttpNetwork`] is
//! openraft's network over channels: each RPC is a `POST /raft/{append,vote}` whose body is the
//! request in JSON and whose answer is `Result<response, RaftError>` in JSON (openraft's types
//! with its `serde` feature; the governance request crosses as its canonical bytes). A snapshot
//! crosses whole, in one `POST /raft/snapshot` ([`SnapshotRpc`], answered
//! `Result<SnapshotResponse, Fatal>`), because its receiver checks it whole (its sender is the
//! leader it follows, its history builds its state) before openraft sees any of it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use fhirseal_consensus::raft::{BasicNode, NodeId, TypeConfig};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use openraft::error::{
    Fatal, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed,
    StreamingError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{OptionalSend, RaftNetwork, RaftNetworkFactory, Snapshot, SnapshotMeta, Vote};
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::consortium::error::{ConsortiumError, Result};
use crate::consortium::files::fingerprint;
use crate::consortium::trust::{client_config, key_fingerprint, server_name, Identity, Trust};

/// Longest answer read from a peer: a snapshot chunk in JSON, with room.
pub const MAX_ANSWER_BYTES: usize = 64 << 20;
/// How long a connection attempt (TCP, TLS and the peer's first bytes) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A response header: the 403 it comes with means the peer no longer trusts the certificate the
/// connection presented, and did nothing with the request (see [`Channel`]).
pub const CERTIFICATE_REFUSED: &str = "x-fhirseal-certificate-refused";

/// Why a request over a channel failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No connection could be made (refused, timed out, or the TLS handshake failed: an unknown
    /// or revoked certificate on either side).
    #[error("cannot connect to {addr}: {reason}")]
    Unreachable {
        /// Where.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The peer took the TLS handshake and then refused every certificate this node offered
    /// (it is no active member's there: revoked, suspended, or not admitted yet).
    #[error("cannot connect to {addr}: {reason}")]
    Refused {
        /// Where.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The connection broke, or the request timed out.
    #[error("request to {addr} failed: {reason}")]
    Failed {
        /// Where.
        addr: String,
        /// Why.
        reason: String,
    },
}

impl From<TransportError> for ConsortiumError {
    fn from(e: TransportError) -> Self {
        match e {
            TransportError::Unreachable { addr, reason }
            | TransportError::Refused { addr, reason }
            | TransportError::Failed { addr, reason } => {
                ConsortiumError::Unreachable { addr, reason }
            }
        }
    }
}

/// One HTTP/2 connection over mutual TLS to `addr`, checked against a [`Trust`].
pub struct Channel {
    addr: String,
    trust: Trust,
    presenting: Presenting,
    connection: Option<Connection>,
}

/// What a channel presents.
enum Presenting {
    /// A fixed client config (the join desk's: no client certificate).
    Config(TlsConnector),
    /// A node's or a CLI's certificates, to node `expect` (any trusted peer if `None`).
    Identity {
        identity: Identity,
        expect: Option<NodeId>,
    },
}

struct Connection {
    sender: SendRequest<Full<Bytes>>,
    peer: [u8; 32],
    presented: Option<[u8; 32]>,
}

/// Why one connection attempt failed.
enum Attempt {
    /// The peer took the TLS handshake but closed the connection instead of speaking HTTP/2:
    /// it refused the certificate presented (TLS 1.3 lets a client finish its handshake before
    /// the server has checked the client's certificate).
    Refused(String),
    /// Anything else: no TCP connection, a failed handshake (the peer's certificate refused
    /// here, or no common protocol), HTTP/2 failing.
    Failed(String),
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// A channel to node `expect` (any trusted peer if `None`) at `addr`, presenting
    /// `identity`: its current certificate first, its other candidates to a peer that refuses
    /// it.
    pub fn new(
        addr: impl Into<String>,
        trust: &Trust,
        identity: &Identity,
        expect: Option<NodeId>,
    ) -> Result<Self> {
        // Built once here so that a config that cannot be built is reported now.
        client_config(trust, identity.current(), expect)?;
        Ok(Self {
            addr: addr.into(),
            trust: trust.clone(),
            presenting: Presenting::Identity {
                identity: identity.clone(),
                expect,
            },
            connection: None,
        })
    }

    /// A channel with its own client config (the join desk's: no client certificate).
    pub fn with_config(
        addr: impl Into<String>,
        trust: &Trust,
        config: rustls::ClientConfig,
    ) -> Self {
        Self {
            addr: addr.into(),
            trust: trust.clone(),
            presenting: Presenting::Config(TlsConnector::from(Arc::new(config))),
            connection: None,
        }
    }

    /// Where it leads.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// SHA-256 of the certificate the open connection presented, if any.
    pub fn presented(&self) -> Option<[u8; 32]> {
        self.connection.as_ref().and_then(|c| c.presented)
    }

    /// Whether the open connection may still be used: open, its peer still trusted, and the
    /// certificate it presented still one of ours (a certificate rotated away and no longer
    /// held is not).
    fn usable(&self, c: &Connection) -> bool {
        let still_ours = match (&self.presenting, c.presented) {
            (Presenting::Identity { identity, .. }, Some(fp)) => identity.find(&fp).is_some(),
            _ => true,
        };
        !c.sender.is_closed()
            && c.sender.is_ready()
            && still_ours
            && self.trust.peer(&c.peer).is_some()
    }

    async fn connect(&mut self) -> Result<SendRequest<Full<Bytes>>, TransportError> {
        if let Some(c) = &self.connection {
            if self.usable(c) {
                return Ok(c.sender.clone());
            }
        }
        self.connection = None;
        let unreachable = |reason: String| TransportError::Unreachable {
            addr: self.addr.clone(),
            reason,
        };
        let (attempts, expected) = match &self.presenting {
            Presenting::Config(connector) => (vec![(None, connector.clone())], None),
            Presenting::Identity { identity, expect } => {
                let mut attempts = Vec::new();
                for key in identity.candidates() {
                    let fp = key_fingerprint(&key);
                    let config = client_config(&self.trust, key, *expect)
                        .map_err(|e| unreachable(format!("TLS config: {e}")))?;
                    attempts.push((Some(fp), TlsConnector::from(Arc::new(config))));
                }
                (
                    attempts,
                    expect.and_then(|id| self.trust.certificate_of(id)),
                )
            }
        };
        let name = server_name(expected).map_err(|e| unreachable(e.to_string()))?;
        let mut refusals = Vec::new();
        for (presented, connector) in attempts {
            let attempt = open(&self.addr, &connector, name.clone());
            match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
                Ok(Ok((sender, peer))) => {
                    if !refusals.is_empty() {
                        tracing::debug!(addr = %self.addr, refused = refusals.len(), "connected presenting another of our certificates");
                    }
                    self.connection = Some(Connection {
                        sender: sender.clone(),
                        peer,
                        presented,
                    });
                    return Ok(sender);
                }
                // Refused: the peer's state may name another of our certificates.
                Ok(Err(Attempt::Refused(reason))) => refusals.push(reason),
                Ok(Err(Attempt::Failed(reason))) => return Err(unreachable(reason)),
                Err(_) => return Err(unreachable("timed out".into())),
            }
        }
        Err(TransportError::Refused {
            addr: self.addr.clone(),
            reason: format!("the peer refused our certificate ({})", refusals.join("; ")),
        })
    }

    /// Sends `body` to `path` and reads the answer (at most `limit` bytes) within `timeout`.
    /// Any failure closes the connection, so the next call makes a new one.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), TransportError> {
        self.call_marked(method, path, body, None, timeout).await
    }

    /// [`Channel::call`] with a header `mark: 1`.
    pub async fn call_marked(
        &mut self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        mark: Option<&'static str>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), TransportError> {
        let headers: Vec<(&'static str, String)> =
            mark.map(|m| (m, "1".to_owned())).into_iter().collect();
        self.call_with(method, path, body, &headers, timeout).await
    }

    /// [`Channel::call`] with `headers`.
    pub async fn call_with(
        &mut self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        headers: &[(&'static str, String)],
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), TransportError> {
        let result =
            tokio::time::timeout(timeout, self.call_inner(method, path, body, headers)).await;
        let result = match result {
            Ok(r) => r,
            Err(_) => Err(TransportError::Failed {
                addr: self.addr.clone(),
                reason: "timed out".into(),
            }),
        };
        match &result {
            Ok((status, _)) if !status.is_client_error() => {}
            // A refusal (say, our certificate no longer trusted there) or a broken connection:
            // start afresh next time.
            _ => self.connection = None,
        }
        result
    }

    async fn call_inner(
        &mut self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        headers: &[(&'static str, String)],
    ) -> Result<(StatusCode, Bytes), TransportError> {
        let body = Bytes::from(body);
        let mut refused_once = false;
        loop {
            let (status, refused, answer) = self.send(&method, path, body.clone(), headers).await?;
            if refused && !refused_once {
                // The peer no longer trusts the certificate this connection presented (it
                // applied a rotation or a revocation since the handshake) and did nothing with
                // the request: send it once more over a new connection, which presents
                // whichever of our certificates the peer takes.
                refused_once = true;
                self.connection = None;
                continue;
            }
            return Ok((status, answer));
        }
    }

    /// One request over the current connection (made if need be): the status, whether the peer
    /// refused the connection's certificate ([`CERTIFICATE_REFUSED`]), the answer.
    async fn send(
        &mut self,
        method: &Method,
        path: &str,
        body: Bytes,
        headers: &[(&'static str, String)],
    ) -> Result<(StatusCode, bool, Bytes), TransportError> {
        let mut sender = self.connect().await?;
        let failed = |reason: String| TransportError::Failed {
            addr: self.addr.clone(),
            reason,
        };
        let mut request = Request::builder()
            .method(method.clone())
            .uri(format!("https://{}{path}", self.addr))
            .header(http::header::CONTENT_TYPE, "application/octet-stream");
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| failed(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let status = response.status();
        let refused =
            status == StatusCode::FORBIDDEN && response.headers().contains_key(CERTIFICATE_REFUSED);
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| failed(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok((status, refused, body))
    }

    /// [`Channel::call`] for an API answer: a 2xx body, or the error the node gave.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes)> {
        let answer = self.call(method, path, body, timeout).await?;
        self.answer(answer)
    }

    /// An answer of this channel's peer as an API answer: a 2xx body, or the error it gave.
    pub fn answer(&self, (status, bytes): (StatusCode, Bytes)) -> Result<(StatusCode, Bytes)> {
        if status.is_success() {
            return Ok((status, bytes));
        }
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
        Err(ConsortiumError::Refused {
            addr: self.addr.clone(),
            status: status.as_u16(),
            message,
        })
    }
}

/// Opens one connection to `addr`: TCP, the TLS handshake, then the peer's first bytes.
///
/// In TLS 1.3 the client's handshake ends before the server has checked the client's
/// certificate. A server that accepts it speaks first (HTTP/2 begins with the server's
/// SETTINGS); one that refuses it sends an alert and closes. Waiting for those first bytes tells
/// a refusal apart before any request is sent, so a request is never sent twice because of one.
async fn open(
    addr: &str,
    connector: &TlsConnector,
    name: ServerName<'static>,
) -> std::result::Result<(SendRequest<Full<Bytes>>, [u8; 32]), Attempt> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| Attempt::Failed(e.to_string()))?;
    tcp.set_nodelay(true)
        .map_err(|e| Attempt::Failed(e.to_string()))?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| Attempt::Failed(format!("TLS handshake: {e}")))?;
    let fp = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(fingerprint)
        .ok_or_else(|| Attempt::Failed("no peer certificate".into()))?;
    let mut first = vec![0u8; FIRST_READ];
    let n = tls
        .read(&mut first)
        .await
        .map_err(|e| Attempt::Refused(format!("closed after the handshake: {e}")))?;
    if n == 0 {
        return Err(Attempt::Refused("closed after the handshake".into()));
    }
    first.truncate(n);
    let io = Replay {
        first: Bytes::from(first),
        inner: tls,
    };
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .map_err(|e| Attempt::Failed(format!("HTTP/2: {e}")))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "consortium connection closed");
        }
    });
    Ok((sender, fp))
}

/// How much of the peer's first bytes [`open`] reads (its SETTINGS frame fits).
const FIRST_READ: usize = 4096;

/// A stream whose first bytes were already read: hands them out again before reading on.
struct Replay<S> {
    first: Bytes,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.first.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.first.len().min(buf.remaining());
        let chunk = self.first.split_to(n);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// openraft's network over [`Channel`]s: one per target node, expecting that node's
/// certificate.
#[derive(Debug, Clone)]
pub struct HttpNetwork {
    trust: Trust,
    identity: Identity,
}

impl HttpNetwork {
    /// A network whose connections present `identity` and trust `trust`.
    pub fn new(trust: Trust, identity: Identity) -> Self {
        Self { trust, identity }
    }

    /// A channel to node `node` at `addr` over this network's trust and certificates (the
    /// ledger's traffic uses it beside openraft's).
    pub fn channel(&self, addr: &str, node: NodeId) -> Result<Channel> {
        Channel::new(addr.to_owned(), &self.trust, &self.identity, Some(node))
    }
}

impl RaftNetworkFactory<TypeConfig> for HttpNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        PeerConnection {
            target,
            channel: Channel::new(node.addr.clone(), &self.trust, &self.identity, Some(target))
                .map_err(|e| e.to_string()),
        }
    }
}

/// The line to one peer.
#[derive(Debug)]
pub struct PeerConnection {
    target: NodeId,
    // A config that cannot be built is reported on every call rather than panicking here.
    channel: std::result::Result<Channel, String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Why(String);

/// `POST /raft/snapshot`: a whole snapshot, sent under the leader's vote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotRpc {
    /// The sending leader's vote.
    pub vote: Vote<NodeId>,
    /// Where in the log the snapshot stands, and the membership there.
    pub meta: SnapshotMeta<NodeId, BasicNode>,
    /// The snapshot's data ([`fhirseal_consensus::raft::SnapshotData`]), base64.
    pub data: String,
}

impl SnapshotRpc {
    /// The request for `snapshot`, sent under `vote`.
    pub fn new(vote: Vote<NodeId>, meta: SnapshotMeta<NodeId, BasicNode>, data: &[u8]) -> Self {
        Self {
            vote,
            meta,
            data: base64::engine::general_purpose::STANDARD.encode(data),
        }
    }

    /// The snapshot's data.
    pub fn data(&self) -> std::result::Result<Vec<u8>, base64::DecodeError> {
        base64::engine::general_purpose::STANDARD.decode(&self.data)
    }
}

/// Why a call to a peer failed, as openraft's errors tell it.
enum CallError {
    Unreachable(Unreachable),
    Network(NetworkError),
}

impl PeerConnection {
    /// Posts `body` to `path` and reads a 2xx answer. A peer that refuses (our certificate is
    /// not trusted there, or the RPC is not ours to send) is backed off from as from a dead
    /// node.
    async fn post(
        &mut self,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> std::result::Result<Bytes, CallError> {
        let channel = match &mut self.channel {
            Ok(c) => c,
            Err(e) => return Err(CallError::Unreachable(Unreachable::new(&Why(e.clone())))),
        };
        let (status, bytes) = channel
            .call(Method::POST, path, body, timeout)
            .await
            .map_err(|e| match e {
                TransportError::Unreachable { .. } | TransportError::Refused { .. } => {
                    CallError::Unreachable(Unreachable::new(&e))
                }
                TransportError::Failed { .. } => CallError::Network(NetworkError::new(&e)),
            })?;
        if !status.is_success() {
            let why = Why(format!(
                "{} answered {status}: {}",
                channel.addr(),
                String::from_utf8_lossy(&bytes)
            ));
            return Err(CallError::Unreachable(Unreachable::new(&why)));
        }
        Ok(bytes)
    }

    async fn rpc<Req, Resp, E>(
        &mut self,
        path: &str,
        rpc: &Req,
        option: &RPCOption,
    ) -> std::result::Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = serde_json::to_vec(rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let bytes = self
            .post(path, body, option.hard_ttl())
            .await
            .map_err(|e| match e {
                CallError::Unreachable(e) => RPCError::Unreachable(e),
                CallError::Network(e) => RPCError::Network(e),
            })?;
        let answer: std::result::Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&bytes).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> std::result::Result<
        AppendEntriesResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId>>,
    > {
        self.rpc("/raft/append", &rpc, &option).await
    }

    /// Never called: [`PeerConnection::full_snapshot`] sends snapshots whole, and no node
    /// takes them in chunks.
    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> std::result::Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let why = Why("snapshots are sent whole, not in chunks".into());
        Err(RPCError::Unreachable(Unreachable::new(&why)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> std::result::Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>>
    {
        self.rpc("/raft/vote", &rpc, &option).await
    }

    /// Sends `snapshot` whole, in one request: its receiver checks all of it before openraft
    /// installs it (a snapshot of a few thousand governance commands is a few megabytes).
    async fn full_snapshot(
        &mut self,
        vote: Vote<NodeId>,
        snapshot: Snapshot<TypeConfig>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> std::result::Result<SnapshotResponse<NodeId>, StreamingError<TypeConfig, Fatal<NodeId>>>
    {
        let rpc = SnapshotRpc::new(vote, snapshot.meta, snapshot.snapshot.get_ref());
        let body = serde_json::to_vec(&rpc).map_err(|e| NetworkError::new(&e))?;
        let bytes = tokio::select! {
            closed = cancel => return Err(closed.into()),
            posted = self.post("/raft/snapshot", body, option.hard_ttl()) => posted,
        };
        let bytes = bytes.map_err(|e| match e {
            CallError::Unreachable(e) => StreamingError::Unreachable(e),
            CallError::Network(e) => StreamingError::Network(e),
        })?;
        let answer: std::result::Result<SnapshotResponse<NodeId>, Fatal<NodeId>> =
            serde_json::from_slice(&bytes).map_err(|e| NetworkError::new(&e))?;
        answer.map_err(|e| RemoteError::new(self.target, e).into())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Instant;

    use http::Response;
    use rustls::pki_types::PrivateKeyDer;
    use rustls::sign::CertifiedKey;
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    use super::*;
    use crate::consortium::trust::{server_config, Peer};

    fn tls_key() -> Arc<CertifiedKey> {
        let made = rcgen::generate_simple_self_signed(vec!["fhirseal-node".to_owned()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
        let key =
            CertifiedKey::from_der(vec![made.cert.der().clone()], key, &crate::tls::provider());
        Arc::new(key.unwrap())
    }

    fn peer(node_id: NodeId) -> Peer {
        Peer {
            member: format!("m{node_id}"),
            node_id,
        }
    }

    /// A node's listener in miniature: mutual TLS with `trust`, presenting `identity`, every
    /// request's client certificate checked again (403 marked [`CERTIFICATE_REFUSED`] when it
    /// is no longer trusted); the answer is the hex SHA-256 of the client's certificate.
    async fn serve(trust: Trust, identity: Identity) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&trust, &identity).unwrap()));
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (acceptor, trust) = (acceptor.clone(), trust.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let fp = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
                    let fp = fingerprint(&fp);
                    let service = hyper::service::service_fn(move |_req| {
                        let mut response = Response::new(Full::new(Bytes::from(
                            crate::consortium::files::hex(&fp),
                        )));
                        if trust.peer(&fp).is_none() {
                            *response.status_mut() = StatusCode::FORBIDDEN;
                            response
                                .headers_mut()
                                .insert(CERTIFICATE_REFUSED, http::HeaderValue::from_static("1"));
                        }
                        async move { Ok::<_, std::convert::Infallible>(response) }
                    });
                    let _ended = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        addr
    }

    async fn call(channel: &mut Channel) -> Result<String, TransportError> {
        let (status, body) = channel
            .call(Method::GET, "/", Vec::new(), Duration::from_secs(5))
            .await?;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        Ok(String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_client_presents_whichever_of_its_certificates_the_server_takes() {
        let (old, new, server_key) = (tls_key(), tls_key(), tls_key());
        let (old_fp, new_fp) = (key_fingerprint(&old), key_fingerprint(&new));
        let hex = crate::consortium::files::hex;
        // The server trusts what its "state" says: here a pinned set, changed as a state would.
        let server_trust = Trust::pinned(peer(1), BTreeSet::from([old_fp]));
        let addr = serve(server_trust.clone(), Identity::new(Arc::clone(&server_key))).await;
        let client_trust = Trust::pinned(peer(2), BTreeSet::from([key_fingerprint(&server_key)]));
        let identity = Identity::new(Arc::clone(&old));
        let mut channel = Channel::new(&addr, &client_trust, &identity, None).unwrap();
        assert_eq!(call(&mut channel).await.unwrap(), hex(&old_fp));

        // The client rotates; the server has not applied the rotation. The open connection, made
        // with the certificate now held as the previous one, is still used.
        let now = Instant::now();
        identity.rotate_to(Arc::clone(&new), now + Duration::from_secs(60));
        assert_eq!(call(&mut channel).await.unwrap(), hex(&old_fp));

        // The server applies it: the open connection is refused (403, marked), and the same call
        // goes through a new connection presenting the new certificate.
        server_trust.set_pinned(BTreeSet::from([new_fp]));
        assert_eq!(call(&mut channel).await.unwrap(), hex(&new_fp));

        // A server that accepts only the old certificate (it has not applied the rotation): the
        // new one is refused in the handshake, and the previous one, still held, is taken.
        server_trust.set_pinned(BTreeSet::from([old_fp]));
        assert_eq!(call(&mut channel).await.unwrap(), hex(&old_fp));
        assert_eq!(channel.presented(), Some(old_fp));

        // Once the hold ends the previous certificate is never presented again.
        identity.expire(now + Duration::from_secs(59));
        assert_eq!(identity.previous_fingerprint(), Some(old_fp));
        identity.expire(now + Duration::from_secs(60));
        assert_eq!(identity.previous_fingerprint(), None);
        let refused = call(&mut channel).await.unwrap_err().to_string();
        assert!(refused.contains("refused our certificate"), "{refused}");
        identity.expire(now);
        assert_eq!(identity.candidates().len(), 1);
        assert!(call(&mut channel).await.is_err());
    }

    #[tokio::test]
    async fn a_spare_certificate_is_presented_to_a_peer_that_refuses_the_current_one() {
        let (current, spare, server_key) = (tls_key(), tls_key(), tls_key());
        let spare_fp = key_fingerprint(&spare);
        let server_trust = Trust::pinned(peer(1), BTreeSet::from([spare_fp]));
        let addr = serve(server_trust, Identity::new(Arc::clone(&server_key))).await;
        let client_trust = Trust::pinned(peer(2), BTreeSet::from([key_fingerprint(&server_key)]));
        let identity = Identity::new(current);
        let mut channel = Channel::new(&addr, &client_trust, &identity, None).unwrap();
        assert!(call(&mut channel).await.is_err(), "no spare yet");
        identity.set_spares(vec![spare]);
        assert_eq!(
            call(&mut channel).await.unwrap(),
            crate::consortium::files::hex(&spare_fp)
        );
    }

    #[tokio::test]
    async fn a_server_presents_the_certificate_the_client_names() {
        let (current, spare, previous, client_key) = (tls_key(), tls_key(), tls_key(), tls_key());
        let identity = Identity::new(Arc::clone(&previous));
        identity.rotate_to(
            Arc::clone(&current),
            Instant::now() + Duration::from_secs(60),
        );
        identity.set_spares(vec![Arc::clone(&spare)]);
        let server_trust = Trust::pinned(peer(1), BTreeSet::from([key_fingerprint(&client_key)]));
        let addr = serve(server_trust, identity.clone()).await;
        let unknown = key_fingerprint(&tls_key());
        let all = BTreeSet::from(
            [current.clone(), spare.clone(), previous.clone()].map(|k| key_fingerprint(&k)),
        );
        let client_trust = Trust::pinned(peer(2), all);
        let config = Arc::new(client_config(&client_trust, client_key, None).unwrap());
        for (asked, presented) in [
            (None, &current),
            (Some(key_fingerprint(&spare)), &spare),
            (Some(key_fingerprint(&previous)), &previous),
            (Some(unknown), &current),
        ] {
            let tcp = TcpStream::connect(&addr).await.unwrap();
            let tls = TlsConnector::from(Arc::clone(&config))
                .connect(server_name(asked).unwrap(), tcp)
                .await
                .unwrap();
            let got = fingerprint(&tls.get_ref().1.peer_certificates().unwrap()[0]);
            assert_eq!(got, key_fingerprint(presented));
        }
    }
}
