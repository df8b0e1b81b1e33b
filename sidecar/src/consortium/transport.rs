//! HTTP/2 over mutual TLS between nodes, and from the CLI to its node.
//!
//! A [`Channel`] is one HTTP/2 connection to one address, made on first use and made again
//! after any failure; before each request it checks that the peer's certificate is still
//! trusted (a revocation applied since the handshake closes the connection). [`HttpNetwork`] is
//! openraft's network over channels: each RPC is a `POST /raft/{append,vote,snapshot}` whose
//! body is the request in JSON and whose answer is `Result<response, RaftError>` in JSON
//! (openraft's types with its `serde` feature; the governance request crosses as its canonical
//! bytes).

use std::time::Duration;

use bytes::Bytes;
use fhirseal_consensus::raft::{BasicNode, NodeId, TypeConfig};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{RaftNetwork, RaftNetworkFactory};
use rustls::pki_types::ServerName;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::consortium::error::{ConsortiumError, Result};
use crate::consortium::files::fingerprint;
use crate::consortium::trust::{client_config, Identity, Trust};

/// Longest answer read from a peer: a snapshot chunk in JSON, with room.
pub const MAX_ANSWER_BYTES: usize = 64 << 20;
/// How long a connection attempt (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

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
    connector: TlsConnector,
    // The identity presented, if any: a connection made with a certificate since rotated away
    // is made again.
    identity: Option<Identity>,
    connection: Option<Connection>,
}

struct Connection {
    sender: SendRequest<Full<Bytes>>,
    peer: [u8; 32],
    presented: Option<[u8; 32]>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// A channel to node `expect` (any trusted peer if `None`) at `addr`, presenting `identity`.
    pub fn new(
        addr: impl Into<String>,
        trust: &Trust,
        identity: &Identity,
        expect: Option<NodeId>,
    ) -> Result<Self> {
        let config = client_config(trust, identity, expect)?;
        let mut channel = Self::with_config(addr, trust, config);
        channel.identity = Some(identity.clone());
        Ok(channel)
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
            connector: TlsConnector::from(std::sync::Arc::new(config)),
            identity: None,
            connection: None,
        }
    }

    /// Where it leads.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn connect(&mut self) -> Result<SendRequest<Full<Bytes>>, TransportError> {
        let presented = self.identity.as_ref().map(Identity::fingerprint);
        if let Some(c) = &self.connection {
            if !c.sender.is_closed()
                && c.sender.is_ready()
                && c.presented == presented
                && self.trust.peer(&c.peer).is_some()
            {
                return Ok(c.sender.clone());
            }
        }
        self.connection = None;
        let unreachable = |reason: String| TransportError::Unreachable {
            addr: self.addr.clone(),
            reason,
        };
        let handshake = async {
            let tcp = TcpStream::connect(&self.addr)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
            tcp.set_nodelay(true)
                .map_err(|e| unreachable(e.to_string()))?;
            let name =
                ServerName::try_from("fhirseal-node").map_err(|e| unreachable(e.to_string()))?;
            let tls = self
                .connector
                .connect(name, tcp)
                .await
                .map_err(|e| unreachable(format!("TLS handshake: {e}")))?;
            let fp = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(fingerprint)
                .ok_or_else(|| unreachable("no peer certificate".into()))?;
            let (sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .map_err(|e| unreachable(format!("HTTP/2: {e}")))?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "consortium connection closed");
                }
            });
            Ok::<_, TransportError>((sender, fp))
        };
        let (sender, fp) = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
            .await
            .map_err(|_| unreachable("timed out".into()))??;
        self.connection = Some(Connection {
            sender: sender.clone(),
            peer: fp,
            presented,
        });
        Ok(sender)
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
        let result = tokio::time::timeout(timeout, self.call_inner(method, path, body, mark)).await;
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
        mark: Option<&'static str>,
    ) -> Result<(StatusCode, Bytes), TransportError> {
        let mut sender = self.connect().await?;
        let failed = |reason: String| TransportError::Failed {
            addr: self.addr.clone(),
            reason,
        };
        let mut request = Request::builder()
            .method(method)
            .uri(format!("https://{}{path}", self.addr))
            .header(http::header::CONTENT_TYPE, "application/octet-stream");
        if let Some(mark) = mark {
            request = request.header(mark, "1");
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| failed(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| failed(format!("reading the answer: {e}")))?
            .to_bytes();
        Ok((status, body))
    }

    /// [`Channel::call`] for an API answer: a 2xx body, or the error the node gave.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes)> {
        let (status, bytes) = self.call(method, path, body, timeout).await?;
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

impl PeerConnection {
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
        let channel = match &mut self.channel {
            Ok(c) => c,
            Err(e) => return Err(RPCError::Unreachable(Unreachable::new(&Why(e.clone())))),
        };
        let body = serde_json::to_vec(rpc).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let (status, bytes) = channel
            .call(Method::POST, path, body, option.hard_ttl())
            .await
            .map_err(|e| match e {
                TransportError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                TransportError::Failed { .. } => RPCError::Network(NetworkError::new(&e)),
            })?;
        if !status.is_success() {
            let why = Why(format!(
                "{} answered {status}: {}",
                channel.addr(),
                String::from_utf8_lossy(&bytes)
            ));
            // Refused (our certificate is not trusted there): back off as from a dead node.
            return Err(RPCError::Unreachable(Unreachable::new(&why)));
        }
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

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> std::result::Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc("/raft/snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> std::result::Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>>
    {
        self.rpc("/raft/vote", &rpc, &option).await
    }
}
