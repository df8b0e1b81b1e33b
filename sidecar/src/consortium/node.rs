//! The governance part of a fhirseal node: openraft over the sled store, the mutual-TLS listener
//! (Raft RPCs and the API), the regulator's join desk, the leader's duties, and what the rest of
//! the node follows of the state ([`crate::consortium::participation`]). The node's startup
//! ([`crate::server`]) starts it ([`RunningNode::start`]) beside the proxy.
//!
//! Routes of the mutual-TLS listener (every request's peer certificate checked again against the
//! replicated state):
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /raft/append`, `/raft/vote` | openraft's request, JSON | `Result<response, RaftError>`, JSON |
//! | `POST /raft/snapshot` | a whole snapshot ([`SnapshotRpc`]), JSON | `Result<SnapshotResponse, Fatal>`, JSON |
//! | `POST /consortium/submit` | a signed command, canonical bytes | [`SubmitAnswer`]: 200 accepted, 403 refused (and recorded), 400 malformed, 503 no leader |
//! | `GET /consortium/status` | — | [`crate::consortium::api::Status`] |
//! | `GET /consortium/ping` | — | `{}`: another member's node asks whether its certificate is still taken |
//! | `GET /consortium/joins`, `/consortium/joins/{id}` | — | this member's own CLI only: pending join requests (the list, JSON; one, its bytes) |
//! | `POST /consortium/invites` | [`InviteRequest`], JSON | the regulator's own CLI only: an invite kept (201) |
//! | `POST /sharing/records` | a member's request for one person's records under a grant (JSON) | answered by the proxy's grantor side (`proxy::grantor`); 503 until it runs |
//! | `POST /bft/messages`, `/bft/block`, `/ledger/block`, `/ledger/submit`, `GET /ledger/sync` | the shared ledger's traffic ([`crate::ledger::wire`]) | answered by the ledger ([`LedgerPort`]); 503 until it runs |
//!
//! A Raft RPC reaches openraft only if [`authorize`] lets the peer send it (the leader or
//! candidate it names is the peer's own node, and a voter; a snapshot comes from the leader this
//! node follows) and, for a snapshot, if its history continues this node's and builds its state
//! ([`fhirseal_consensus::raft::SnapshotData::verify`]); else it is answered 403 and nothing
//! changes.
//!
//! The join desk (`join_listen`, server-authenticated TLS only: applicants are not members yet):
//! `GET /join` ([`DeskInfo`]) and `POST /join` with the applicant's signed admission request and
//! its invite token in the [`INVITE_HEADER`] header ([`JoinAnswer`], 202; see
//! [`crate::consortium::desk`]).
//!
//! A follower forwards a submission to the leader over the same transport; the leader proposes
//! it with its clock's time. Every node runs the leader's duties when it leads: it brings the
//! Raft membership in line with the governance state ([`GovernanceNode::sync_membership`]:
//! admitted members' nodes join as learners, voters through openraft's joint consensus, revoked
//! and suspended ones leave).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use fhirseal_consensus::governance::SignedCommand;
use fhirseal_consensus::raft::{
    authorize, GovernanceNode, NodeError, NodeId, RaftRpc, RpcRefusal, TypeConfig, Verified,
};
use fhirseal_consensus::SigningKey;
use fhirseal_storage::keys::{read_link_key, read_secret_32, store_link_key};
use fhirseal_storage::raft_store::RaftStore;
use fhirseal_storage::SecretKey;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use openraft::error::Fatal;
use openraft::raft::{AppendEntriesRequest, SnapshotResponse, VoteRequest};
use openraft::{Snapshot, Vote};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::config::RaftTiming;
use crate::consortium::api::{self, DeskInfo, InviteRequest, NodeStatus, SubmitAnswer};
use crate::consortium::desk::{Desk, Invite, INVITE_HEADER};
use crate::consortium::error::{ConsortiumError, Result};
use crate::consortium::files::{
    certificate_in, certified_key_in, fingerprint, hex, parse_fingerprint, unwrap_link_key, Layout,
    MemberSecrets, Membership, TrustFile, SIGNING,
};
use crate::consortium::participation::{Followers, Participation};
use crate::consortium::standing::{verdict, Verdict};
use crate::consortium::transport::{
    Channel, HttpNetwork, SnapshotRpc, TransportError, CERTIFICATE_REFUSED, MAX_ANSWER_BYTES,
};
use crate::consortium::trust::{key_fingerprint, server_config, Identity, Peer, Trust};
use crate::consortium::window::wall_clock;
use crate::error::{json_error, json_response};
use crate::ledger::routes::{is_ledger_route, Answer as PeerAnswer, LedgerPort};
use crate::listener::{self, Connection, ListenerConfig};

/// The route members ask for the records another member shares with them on.
pub const SHARING_PATH: &str = "/sharing/records";

/// Largest API or join request body.
const MAX_REQUEST_BYTES: usize = 1 << 20;
/// A peer has this long to finish the TLS handshake (and open connections this long to finish
/// once the listener stops).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections the governance listener (or the join desk) serves at once.
const MAX_CONNECTIONS: usize = 256;
/// Streams one peer's HTTP/2 connection may have open at once.
const MAX_STREAMS: u32 = 256;
/// The most header bytes a peer's request may carry.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// How often the leader's duties and the key watcher run.
const DUTY_INTERVAL: Duration = Duration::from_millis(200);
/// How long a node keeps the certificate and key a rotation replaced, to present to peers that
/// have not applied the rotation yet and refuse the new certificate (a node that was cut off or
/// stopped while the rotation committed, above all when the rotated member leads and no other
/// node can bring it the rotation). Peers that applied the rotation refuse the old certificate
/// at once whatever this says; the key is kept in memory only, so a restart ends the hold.
pub const PREVIOUS_CERTIFICATE_HOLD: Duration = Duration::from_secs(10 * 60);
/// How long one round of membership changes may wait for a new learner to catch up.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(10);
/// Marks a submission a follower forwarded, so that it is never forwarded twice.
const FORWARDED: &str = "x-fhirseal-forwarded";

/// How often a node of a consortium with other voters asks them whether they accept its
/// certificate ([`crate::consortium::standing`]).
const ASK_INTERVAL: Duration = Duration::from_secs(2);
/// How long asking one voter may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a founding node waits to lead its consortium of one before it submits its genesis.
const FOUNDING_TIMEOUT: Duration = Duration::from_secs(10);

type Body = Full<Bytes>;

struct Shared {
    membership: Membership,
    layout: Layout,
    /// Where the governance listener is bound.
    address: SocketAddr,
    /// Whether this node runs the join desk.
    runs_desk: bool,
    node: GovernanceNode,
    trust: Trust,
    identity: Identity,
    desk: Desk,
    // Channels to leaders, for forwarded submissions.
    leaders: tokio::sync::Mutex<BTreeMap<NodeId, Channel>>,
    /// The wrapped link key last taken (or tried).
    link_wrapping: Mutex<Option<Vec<u8>>>,
    /// The institution's RSA key, for which the link key is wrapped.
    wrapping: Arc<rsa::PrivateKey>,
    participation: Mutex<Participation>,
    /// The shared ledger's routes, once the ledger is open.
    ledger: OnceLock<LedgerPort>,
    /// What answers members asking for records this node shares, once the proxy runs.
    sharing: OnceLock<PeerHandler>,
}

/// Answers a member's request on a route another part of the node owns: the member (by its
/// certificate) and the request's body in, the answer out.
pub type PeerHandler = Arc<
    dyn Fn(String, Bytes) -> std::pin::Pin<Box<dyn std::future::Future<Output = PeerAnswer> + Send>>
        + Send
        + Sync,
>;

impl Shared {
    fn participation(&self) -> std::sync::MutexGuard<'_, Participation> {
        self.participation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Recomputes what the node's parts follow; logs a change of standing.
    fn refresh(&self) {
        if let Some(standing) = self.participation().refresh(self.node.state()) {
            match standing.refusal() {
                None => tracing::info!(
                    standing = standing.name(),
                    "this node takes part in its consortium"
                ),
                Some(why) => tracing::warn!(standing = standing.name(), "{why}"),
            }
        }
    }
}

/// What a node needs to start: its files, its listeners (bound by the caller, so that port 0
/// works and the caller knows the address), its timing, and its member's keys.
#[derive(Debug)]
pub struct NodeStart {
    /// The node's files.
    pub layout: Layout,
    /// Who it is.
    pub membership: Membership,
    /// The governance listener (mutual TLS).
    pub listener: TcpListener,
    /// The join desk's listener, at the regulator's node if it has one.
    pub desk: Option<TcpListener>,
    /// Raft timing.
    pub raft: RaftTiming,
    /// The member's keys, as the keystore holds them.
    pub secrets: MemberSecrets,
}

/// A running governance node: openraft, the governance listener and join desk, the leader's
/// duties, and what the rest of the node follows of the state.
pub struct RunningNode {
    shared: Arc<Shared>,
    followers: Followers,
    tasks: JoinSet<()>,
    db: sled::Db,
}

impl std::fmt::Debug for RunningNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningNode")
            .field("member", &self.shared.membership.member)
            .field("address", &self.shared.address)
            .finish_non_exhaustive()
    }
}

/// openraft's configuration for `timing`.
pub fn raft_config(timing: &RaftTiming, consortium: &str) -> fhirseal_consensus::raft::Config {
    fhirseal_consensus::raft::Config {
        cluster_name: consortium.to_owned(),
        heartbeat_interval: timing.heartbeat_ms,
        election_timeout_min: timing.election_timeout_ms,
        election_timeout_max: timing.election_timeout_ms * 2,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(timing.snapshot_every),
        max_in_snapshot_log_to_keep: 0,
        // A snapshot crosses whole, in one request, and its receiver replays its history
        // before installing it (see `transport::PeerConnection::full_snapshot`): more than
        // openraft's 200 ms for one chunk.
        install_snapshot_timeout: SNAPSHOT_TIMEOUT_MS,
        ..Default::default()
    }
}

/// How long sending a snapshot, and its receiver's checks and installation, may take.
const SNAPSHOT_TIMEOUT_MS: u64 = 20_000;

impl RunningNode {
    /// Starts the node: openraft over the Raft store, the listeners, the duties. A regulator's
    /// node that has not applied its genesis yet (the embedded default's first start, or the
    /// first start after `consortium init`) leads at once and applies it before this returns,
    /// so that the link key is there before the node's first write.
    pub async fn start(start: NodeStart) -> Result<RunningNode> {
        let NodeStart {
            layout,
            membership,
            listener,
            desk,
            raft,
            secrets,
        } = start;
        let address = listener.local_addr()?;
        let identity = Identity::new(secrets.certified_key()?);
        let bootstrap = TrustFile::load(&layout)?.peers()?;
        let own = Peer {
            member: membership.member.clone(),
            node_id: membership.node_id,
        };
        let trust = Trust::node(own, bootstrap, own_certificates(&layout, &identity));

        let db = fhirseal_storage::open::open_db(&layout.raft()).map_err(ConsortiumError::Open)?;
        let store = RaftStore::open(&db)?;
        let join_desk = Desk::open(&db)?;
        let network = HttpNetwork::new(trust.clone(), identity.clone());
        let node = GovernanceNode::start(
            membership.node_id,
            raft_config(&raft, &membership.consortium),
            store,
            network,
        )
        .await?;
        trust.attach(node.state().clone());
        let (mut participation, followers) =
            Participation::new(&membership.member, Verdict::Unasked);
        participation.set_signer(Some(secrets.signing.clone()));
        participation.set_voter(Some(Arc::new(secrets.voter_keys()?)));

        let shared = Arc::new(Shared {
            membership: membership.clone(),
            layout: layout.clone(),
            address,
            runs_desk: desk.is_some(),
            node: node.clone(),
            trust: trust.clone(),
            identity: identity.clone(),
            desk: join_desk,
            leaders: tokio::sync::Mutex::new(BTreeMap::new()),
            link_wrapping: Mutex::new(None),
            wrapping: Arc::new(secrets.wrapping.clone()),
            participation: Mutex::new(participation),
            ledger: OnceLock::new(),
            sharing: OnceLock::new(),
        });

        let mut tasks = JoinSet::new();
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&trust, &identity)?));
        tasks.spawn(serve(listener, acceptor, Arc::clone(&shared), true));
        if let Some(desk) = desk {
            let desk_addr = desk.local_addr()?;
            let desk_config = desk_server_config(&identity)?;
            tasks.spawn(serve(
                desk,
                TlsAcceptor::from(Arc::new(desk_config)),
                Arc::clone(&shared),
                false,
            ));
            tracing::info!(desk = %desk_addr, "join desk listening");
        }
        if membership.member_kind() == fhirseal_consensus::governance::MemberKind::Regulator {
            node.initialize(membership.address.to_string()).await?;
            found(&shared).await?;
        }
        if let Err(e) = take_link_key(&shared).await {
            tracing::warn!(error = %e, "link key not taken");
        }
        let alone = node
            .state()
            .read(|s| s.voters().keys().all(|id| *id == membership.node_id));
        if alone {
            // No other voter to ask (a consortium of one, above all): nothing to wait for.
            shared.participation().set_verdict(Verdict::Alone);
        }
        shared.refresh();
        tasks.spawn(duties(Arc::clone(&shared)));
        tasks.spawn(ask_voters(Arc::clone(&shared)));
        if let Err(e) = layout.write_address(address) {
            tracing::warn!(error = %e, "the governance listener's address is not written down");
        }
        tracing::info!(
            consortium = %membership.consortium,
            member = %membership.member,
            node_id = membership.node_id,
            listen = %address,
            certificate = %hex(&identity.fingerprint()),
            "consortium node running"
        );
        Ok(RunningNode {
            shared,
            followers,
            tasks,
            db,
        })
    }

    /// The governance store's sled database (the Raft log, the state, the join desk), for
    /// `fhirseal backup`.
    pub fn database(&self) -> &sled::Db {
        &self.db
    }

    /// Where the governance listener is bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.address
    }

    /// What the rest of the node follows of the state.
    pub fn followers(&self) -> &Followers {
        &self.followers
    }

    /// The governance node (for tests and tools that look inside).
    pub fn governance(&self) -> &GovernanceNode {
        &self.shared.node
    }

    /// Channels to other members' nodes, over this node's trust and certificates.
    pub fn network(&self) -> HttpNetwork {
        HttpNetwork::new(self.shared.trust.clone(), self.shared.identity.clone())
    }

    /// Hands the ledger's routes to the listener (once; until then they answer 503).
    pub fn attach_ledger(&self, port: LedgerPort) {
        // Attached once at start-up; a second call changes nothing.
        let _already = self.shared.ledger.set(port);
    }

    /// Hands the sharing route (`POST /sharing/records`) to the listener (once; until then
    /// it answers 503).
    pub fn attach_sharing(&self, handler: PeerHandler) {
        // Attached once at start-up; a second call changes nothing.
        let _already = self.shared.sharing.set(handler);
    }

    /// Stops the listeners and duties, then Raft, and flushes the store.
    pub async fn stop(mut self) -> Result<()> {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.shared.node.shutdown().await?;
        self.db.flush_async().await?;
        if let Err(e) = std::fs::remove_file(self.shared.layout.address()) {
            tracing::debug!(error = %e, "the address file was not removed");
        }
        tracing::info!("consortium node stopped");
        Ok(())
    }
}

/// A regulator's node that has not applied its genesis: waits until it leads (a cluster of one
/// voter elects itself at once) and submits it.
async fn found(shared: &Shared) -> Result<()> {
    let member = &shared.membership.member;
    // Applied whole: the regulator admitted, and the link key wrapped for it.
    let founded = shared
        .node
        .state()
        .read(|s| s.member(member).is_some() && s.wrapped_link_key(member).is_some());
    if founded || !shared.layout.genesis().exists() {
        return Ok(());
    }
    let deadline = Instant::now() + FOUNDING_TIMEOUT;
    let mut metrics = shared.node.raft().metrics();
    while metrics.borrow().current_leader != Some(shared.membership.node_id) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ConsortiumError::Usage(
                "the regulator's node did not come to lead its consortium; its genesis waits"
                    .into(),
            ));
        }
        // A timeout only ends this wait; the loop's head decides.
        let _changed = tokio::time::timeout(left, metrics.changed()).await;
    }
    genesis(shared).await?;
    tracing::info!(consortium = %shared.membership.consortium, "consortium founded");
    Ok(())
}

/// The keys whose certificate the state names as this member's: the current ones, or the ones
/// a rotation left in `keys/next` if the rotation was committed before they were moved.
fn own_certificates(layout: &Layout, identity: &Identity) -> BTreeSet<[u8; 32]> {
    let mut pinned = BTreeSet::from([identity.fingerprint()]);
    for dir in [layout.keys(), layout.next_keys()] {
        if let Some(cert) = certificate_in(&dir) {
            pinned.insert(fingerprint(&cert));
        }
    }
    pinned
}

fn desk_server_config(identity: &Identity) -> Result<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(identity.clone()));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Serves the consortium's API (`mutual`: members only, by certificate) or the join desk on
/// `listener`, through the node's one accept loop ([`crate::listener`]): HTTP/2 over TLS.
async fn serve(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>, mutual: bool) {
    let config = ListenerConfig {
        tls: Some(acceptor),
        handshake_timeout: HANDSHAKE_TIMEOUT,
        http1: false,
        max_connections: MAX_CONNECTIONS,
        header_read_timeout: HANDSHAKE_TIMEOUT,
        max_http2_streams: MAX_STREAMS,
        max_header_bytes: MAX_HEADER_BYTES,
        drain_timeout: HANDSHAKE_TIMEOUT,
    };
    let make = move |connection: &Connection| {
        let shared = Arc::clone(&shared);
        let peer_fp = connection.peer_certificate.as_ref().map(fingerprint);
        hyper::service::service_fn(move |req| {
            let shared = Arc::clone(&shared);
            async move {
                let response = if mutual {
                    api_request(&shared, peer_fp, req).await
                } else {
                    desk_request(&shared, req).await
                };
                Ok::<_, std::convert::Infallible>(response)
            }
        })
    };
    // The task is aborted when the node stops.
    if let Err(error) = listener::serve(listener, config, make, std::future::pending()).await {
        tracing::error!(%error, "the consortium listener stopped accepting");
    }
}

async fn read_body(
    req: Request<Incoming>,
    limit: usize,
) -> std::result::Result<Bytes, Response<Body>> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body: {e}"),
        )),
    }
}

async fn api_request(
    shared: &Shared,
    peer_fp: Option<[u8; 32]>,
    req: Request<Incoming>,
) -> Response<Body> {
    // The handshake checked the certificate; a revocation since then must cut the peer off.
    let Some(peer) = peer_fp.and_then(|fp| shared.trust.peer(&fp)) else {
        // Marked, so that the client knows nothing was done and may send the request again
        // over a new connection presenting another of its certificates.
        let mut refused = json_error(
            StatusCode::FORBIDDEN,
            "the certificate is not an active member's",
        );
        refused
            .headers_mut()
            .insert(CERTIFICATE_REFUSED, http::HeaderValue::from_static("1"));
        return refused;
    };
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    // What only this member's own CLI may ask (the peer presents this node's member's
    // certificate): the regulator's pending joins and invites are not other members' to read
    // or make.
    let own = peer.member == shared.membership.member;
    match (method, path.as_str()) {
        (Method::POST, "/raft/append") => {
            let raft = shared.node.raft().clone();
            let vote = |rpc: &AppendEntriesRequest<TypeConfig>| rpc.vote;
            raft_rpc(
                shared,
                &peer,
                req,
                RaftRpc::Append,
                vote,
                |rpc| async move { raft.append_entries(rpc).await },
            )
            .await
        }
        (Method::POST, "/raft/vote") => {
            let raft = shared.node.raft().clone();
            let vote = |rpc: &VoteRequest<NodeId>| rpc.vote;
            raft_rpc(shared, &peer, req, RaftRpc::Vote, vote, |rpc| async move {
                raft.vote(rpc).await
            })
            .await
        }
        (Method::POST, "/raft/snapshot") => install_snapshot(shared, &peer, req).await,
        (Method::POST, "/consortium/submit") => {
            let forwarded = req.headers().contains_key(FORWARDED);
            let body = match read_body(req, MAX_REQUEST_BYTES).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            submit(shared, body, forwarded).await
        }
        (Method::GET, "/consortium/status") => json_response(StatusCode::OK, &node_status(shared)),
        // A member's node asks whether its certificate is still taken (the handshake and the
        // check above answered that already).
        (Method::GET, "/consortium/ping") => json_response(StatusCode::OK, &serde_json::json!({})),
        (Method::GET, p) if p.starts_with("/consortium/joins") && !own => json_error(
            StatusCode::FORBIDDEN,
            "only this node's own member reads its pending join requests",
        ),
        (Method::GET, "/consortium/joins") => match shared.desk.pending() {
            Ok(pending) => json_response(StatusCode::OK, &pending),
            Err(e) => json_error(e.status(), e.to_string()),
        },
        (Method::GET, p) if p.starts_with("/consortium/joins/") => {
            let id = &p["/consortium/joins/".len()..];
            match shared.desk.request(id) {
                Ok(Some(bytes)) => {
                    let mut response = Response::new(Full::new(Bytes::from(bytes)));
                    response.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("application/octet-stream"),
                    );
                    response
                }
                Ok(None) => json_error(
                    StatusCode::NOT_FOUND,
                    format!("no pending join request from {id:?}"),
                ),
                Err(e) => json_error(e.status(), e.to_string()),
            }
        }
        (Method::POST, "/consortium/invites") => {
            let body = match read_body(req, MAX_REQUEST_BYTES).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            invite(shared, own, &body)
        }
        (Method::POST, SHARING_PATH) => {
            let Some(handler) = shared.sharing.get() else {
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this node does not share records yet",
                );
            };
            let body = match read_body(req, MAX_REQUEST_BYTES).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            answer_response(handler(peer.member.clone(), body).await)
        }
        (method, p) if is_ledger_route(p) => {
            let Some(port) = shared.ledger.get() else {
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the ledger is not open yet",
                );
            };
            let query = req.uri().query().map(str::to_owned);
            let body = match read_body(req, MAX_ANSWER_BYTES).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            answer_response(
                port.answer(&peer.member, &method, p, query.as_deref(), body)
                    .await,
            )
        }
        (
            _,
            "/raft/append"
            | "/raft/vote"
            | "/raft/snapshot"
            | "/consortium/submit"
            | "/consortium/status"
            | "/consortium/ping"
            | "/consortium/joins"
            | "/consortium/invites"
            | SHARING_PATH,
        ) => json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => json_error(StatusCode::NOT_FOUND, format!("no route {path}")),
    }
}

/// Whether `peer` may send `rpc` under `vote` to this node ([`authorize`], over the voters
/// its trust knows and its own vote).
fn authorize_rpc(
    shared: &Shared,
    peer: &Peer,
    rpc: RaftRpc,
    vote: &Vote<NodeId>,
) -> std::result::Result<(), RpcRefusal> {
    let receiver = shared.node.receiver(shared.trust.voters());
    authorize(rpc, vote, peer.node_id, &receiver)
}

/// The 403 of a Raft RPC refused before it reached openraft: nothing was done.
fn refused(peer: &Peer, refusal: &dyn std::fmt::Display) -> Response<Body> {
    tracing::warn!(peer = %peer.member, node = peer.node_id, %refusal, "raft rpc refused");
    json_error(StatusCode::FORBIDDEN, format!("refused: {refusal}"))
}

/// The response of a route another part of the node answered (the ledger's, sharing).
fn answer_response(answer: PeerAnswer) -> Response<Body> {
    let mut response = Response::new(Full::new(answer.body));
    *response.status_mut() = answer.status;
    let kind = if answer.json {
        "application/json"
    } else {
        "application/octet-stream"
    };
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(kind),
    );
    response
}

/// A Raft RPC's JSON body (up to [`MAX_ANSWER_BYTES`]: a snapshot is the largest), or the
/// 4xx to answer.
async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    what: RaftRpc,
) -> std::result::Result<T, Response<Body>> {
    let body = read_body(req, MAX_ANSWER_BYTES).await?;
    serde_json::from_slice(&body)
        .map_err(|e| json_error(StatusCode::BAD_REQUEST, format!("{what}: {e}")))
}

/// One Raft RPC: the JSON request in, checked ([`authorize_rpc`]), openraft's JSON answer out.
async fn raft_rpc<Req, Resp, F, Fut>(
    shared: &Shared,
    peer: &Peer,
    req: Request<Incoming>,
    rpc: RaftRpc,
    vote: impl FnOnce(&Req) -> Vote<NodeId>,
    call: F,
) -> Response<Body>
where
    Req: serde::de::DeserializeOwned,
    Resp: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: Future<Output = Resp>,
{
    let request: Req = match read_json(req, rpc).await {
        Ok(request) => request,
        Err(r) => return r,
    };
    if let Err(refusal) = authorize_rpc(shared, peer, rpc, &vote(&request)) {
        return refused(peer, &refusal);
    }
    json_response(StatusCode::OK, &call(request).await)
}

/// A whole snapshot: checked ([`authorize_rpc`], then its history against this node's, off the
/// async workers since it replays every command), then installed by openraft. A snapshot older
/// than what this node applied is answered as openraft answers one: with this node's vote,
/// nothing installed.
async fn install_snapshot(shared: &Shared, peer: &Peer, req: Request<Incoming>) -> Response<Body> {
    let rpc: SnapshotRpc = match read_json(req, RaftRpc::Snapshot).await {
        Ok(rpc) => rpc,
        Err(r) => return r,
    };
    if let Err(refusal) = authorize_rpc(shared, peer, RaftRpc::Snapshot, &rpc.vote) {
        return refused(peer, &refusal);
    }
    let data = match rpc.data() {
        Ok(data) => data,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("snapshot data: {e}")),
    };
    let view = shared.node.state().clone();
    let checked =
        tokio::task::spawn_blocking(move || view.check_snapshot(&data).map(|v| (v, data))).await;
    let data = match checked {
        Ok(Ok((Verified::Continues, data))) => data,
        Ok(Ok((Verified::Behind, _))) => {
            let answer: std::result::Result<_, Fatal<NodeId>> =
                Ok(SnapshotResponse::new(shared.node.vote()));
            return json_response(StatusCode::OK, &answer);
        }
        Ok(Err(refusal)) => return refused(peer, &refusal),
        Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let last_log_id = rpc.meta.last_log_id;
    let snapshot = Snapshot {
        meta: rpc.meta,
        snapshot: Box::new(Cursor::new(data)),
    };
    let installed = shared
        .node
        .raft()
        .install_full_snapshot(rpc.vote, snapshot)
        .await;
    if installed.is_ok() {
        tracing::info!(
            leader = peer.node_id,
            ?last_log_id,
            "snapshot verified and handed to raft"
        );
    }
    json_response(StatusCode::OK, &installed)
}

/// Keeps an invite for the regulator's CLI (its node runs the join desk).
fn invite(shared: &Shared, own: bool, body: &[u8]) -> Response<Body> {
    let regulator = shared
        .node
        .state()
        .read(|s| s.regulator().map(|m| m.id().to_owned()));
    if !own || !shared.runs_desk || regulator != Some(shared.membership.member.clone()) {
        return json_error(
            StatusCode::FORBIDDEN,
            "only the regulator's own CLI issues invites, at the node that runs the join desk",
        );
    }
    let request: InviteRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("invite: {e}")),
    };
    let Some(hash) = parse_fingerprint(&request.token_sha256) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "invite: token_sha256 is not 64 hex digits",
        );
    };
    let invite = Invite {
        member: request.member,
        expires_at: request.expires_at,
    };
    match shared
        .desk
        .invite(shared.node.state(), hash, &invite, wall_clock())
    {
        Ok(()) => {
            // The token is not logged (the node never had it); its hash names the invite.
            tracing::info!(member = %invite.member, expires_at = invite.expires_at, "invite kept");
            let kept = serde_json::json!({
                "member": invite.member,
                "expires_at": invite.expires_at,
            });
            json_response(StatusCode::CREATED, &kept)
        }
        Err(e) => json_error(e.status(), e.to_string()),
    }
}

fn node_status(shared: &Shared) -> api::Status {
    let (link_key_version, standing) = {
        let participation = shared.participation();
        (participation.link_key_version(), participation.standing())
    };
    let own = NodeStatus {
        member: shared.membership.member.clone(),
        node_id: shared.membership.node_id,
        address: shared.address.to_string(),
        certificate: hex(&shared.identity.fingerprint()),
        link_key_version,
        standing: standing.name().to_owned(),
    };
    let mut status = api::status(&shared.node, own);
    status.standing = shared
        .ledger
        .get()
        .and_then(LedgerPort::election)
        .map(|(tracker, delegates)| api::election_standing(&tracker, delegates));
    status
}

async fn submit(shared: &Shared, body: Bytes, forwarded: bool) -> Response<Body> {
    let command = match SignedCommand::from_bytes(&body) {
        Ok(c) => c,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!("not a signed governance command: {e}"),
            )
        }
    };
    match shared.node.submit(command, wall_clock()).await {
        Ok(outcome) => {
            let answer = SubmitAnswer::of(outcome);
            let status = if answer.code.is_some() {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::OK
            };
            json_response(status, &answer)
        }
        Err(NodeError::Unencodable(e)) => json_error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(NodeError::ForwardToLeader {
            leader_id: Some(leader),
            leader_address: Some(address),
        }) if !forwarded && leader != shared.membership.node_id => {
            forward(shared, leader, address, body).await
        }
        Err(e @ NodeError::ForwardToLeader { .. }) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no leader to take the command now ({e}); retry"),
        ),
        Err(e) if e.is_retryable() => {
            json_error(StatusCode::SERVICE_UNAVAILABLE, format!("{e}; retry"))
        }
        Err(e) => {
            tracing::error!(error = %e, "submission failed");
            json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the node failed to replicate the command",
            )
        }
    }
}

async fn forward(shared: &Shared, leader: NodeId, address: String, body: Bytes) -> Response<Body> {
    let mut leaders = shared.leaders.lock().await;
    if leaders.get(&leader).is_none_or(|c| c.addr() != address) {
        match Channel::new(
            address.clone(),
            &shared.trust,
            &shared.identity,
            Some(leader),
        ) {
            Ok(channel) => {
                leaders.insert(leader, channel);
            }
            Err(e) => return json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
    let Some(channel) = leaders.get_mut(&leader) else {
        return json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no channel to the leader",
        );
    };
    // The leader knows the request came through a member; it marks nothing but the hop.
    let result = channel
        .call_marked(
            Method::POST,
            "/consortium/submit",
            body.to_vec(),
            Some(FORWARDED),
            Duration::from_secs(10),
        )
        .await;
    match result {
        Ok((status, bytes)) => {
            let mut response = Response::new(Full::new(bytes));
            *response.status_mut() = status;
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => json_error(
            StatusCode::BAD_GATEWAY,
            format!("forwarding to the leader: {e}"),
        ),
    }
}

async fn desk_request(shared: &Shared, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/join") => match shared
            .node
            .state()
            .read(|s| s.consortium().map(str::to_owned))
        {
            Some(consortium) => json_response(StatusCode::OK, &DeskInfo { consortium }),
            None => json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the consortium has no genesis yet; retry",
            ),
        },
        (Method::POST, "/join") => {
            let token = req
                .headers()
                .get(INVITE_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = match read_body(req, MAX_REQUEST_BYTES).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            let received =
                shared
                    .desk
                    .receive(shared.node.state(), &body, token.as_deref(), wall_clock());
            match received {
                Ok(answer) => json_response(StatusCode::ACCEPTED, &answer),
                Err(e) => {
                    tracing::info!(error = %e, "join request refused");
                    json_error(e.status(), e.to_string())
                }
            }
        }
        (_, "/join") => json_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
        _ => json_error(StatusCode::NOT_FOUND, format!("no route {path}")),
    }
}

/// What every node does in the background: the regulator's genesis and the leader's membership
/// changes; forgetting admitted joins, swapping in rotated keys, taking the link key. Two loops,
/// so that a membership change waiting for a slow learner never holds up the others.
async fn duties(shared: Arc<Shared>) {
    let leader_duties = {
        let shared = Arc::clone(&shared);
        async move {
            let mut ticker = interval();
            loop {
                ticker.tick().await;
                let leads = shared.node.raft().metrics().borrow().current_leader
                    == Some(shared.membership.node_id);
                if !leads {
                    continue;
                }
                if let Err(e) = genesis(&shared).await {
                    tracing::warn!(error = %e, "genesis not submitted yet");
                }
                // Adding a learner waits until it has caught up; a node that is not running would
                // hold this loop for ever. It is added all the same and tried again next time.
                match tokio::time::timeout(MEMBERSHIP_TIMEOUT, shared.node.sync_membership()).await
                {
                    Ok(Ok(true)) => tracing::info!("raft membership follows the governance state"),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) if e.is_retryable() => {
                        tracing::debug!(error = %e, "membership change deferred");
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "membership change failed"),
                    Err(_) => tracing::warn!("a new member's node is slow to catch up"),
                }
            }
        }
    };
    let node_duties = async move {
        let mut ticker = interval();
        loop {
            ticker.tick().await;
            if let Err(e) = shared.desk.forget_admitted(shared.node.state()) {
                tracing::warn!(error = %e, "cannot forget admitted join requests");
            }
            if let Err(e) = follow_own_keys(&shared, Instant::now()) {
                tracing::warn!(error = %e, "rotated keys not swapped in");
            }
            if let Err(e) = take_link_key(&shared).await {
                tracing::warn!(error = %e, "link key not taken");
            }
            follow_own_signer(&shared);
            shared.refresh();
        }
    };
    tokio::join!(leader_duties, node_duties);
}

fn interval() -> tokio::time::Interval {
    let mut ticker = tokio::time::interval(DUTY_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker
}

/// Submits the regulator's genesis commands that the state has not applied yet.
async fn genesis(shared: &Shared) -> Result<()> {
    let dir = shared.layout.genesis();
    if !dir.exists() {
        return Ok(());
    }
    let applied = shared
        .node
        .state()
        .read(|s| s.member(&shared.membership.member).map(|m| m.last_sequence));
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| ConsortiumError::file(&dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cmd"))
        .collect();
    files.sort();
    for path in files {
        let bytes = std::fs::read(&path).map_err(|e| ConsortiumError::file(&path, e))?;
        let command =
            SignedCommand::from_bytes(&bytes).map_err(|e| ConsortiumError::file(&path, e))?;
        if applied.is_some_and(|last| command.sequence <= last) {
            continue;
        }
        let outcome = shared.node.submit(command, wall_clock()).await?;
        tracing::info!(file = %path.display(), ?outcome, "genesis command");
    }
    Ok(())
}

/// Keeps the certificates this node presents ([`Identity`]) in line with its state and its key
/// directories: first the certificate the state names for its member, as soon as a key
/// directory holds its key (`keys/next` during a rotation, `keys/` after); to a peer that
/// refuses it, the keys on disk that the state has not revoked (one being rotated in is
/// accepted by a peer that applied the rotation before this node did); and, for
/// [`PREVIOUS_CERTIFICATE_HOLD`] after it swaps, the certificate it replaced (accepted only by
/// peers that have not applied the rotation yet).
fn follow_own_keys(shared: &Shared, now: Instant) -> Result<()> {
    let mut on_disk = Vec::new();
    let mut unreadable = Vec::new();
    for dir in [shared.layout.next_keys(), shared.layout.keys()] {
        let Some(cert) = certificate_in(&dir) else {
            continue;
        };
        // Each key is read once. While the CLI moves rotated keys into place a directory can
        // hold a certificate and a key that do not match; it is read again next time.
        let fp = fingerprint(&cert);
        match shared.identity.find(&fp) {
            Some(key) => on_disk.push(key),
            None => match certified_key_in(&dir) {
                Ok(key) => on_disk.push(key),
                Err(e) => unreadable.push((fp, e)),
            },
        }
    }
    let (wanted, revoked) = shared.node.state().read(|s| {
        let wanted = s
            .member(&shared.membership.member)
            .map(|m| m.keys().tls_certificate);
        let revoked: Vec<bool> = on_disk
            .iter()
            .map(|k| s.revoked_certificates().contains_key(&key_fingerprint(k)))
            .collect();
        (wanted, revoked)
    });
    let mut result = Ok(());
    if let Some(wanted) = wanted {
        if wanted != shared.identity.fingerprint() {
            if let Some((_, e)) = unreadable.into_iter().find(|(fp, _)| *fp == wanted) {
                result = Err(e);
            } else if let Some(key) = on_disk.iter().find(|k| key_fingerprint(k) == wanted) {
                shared
                    .identity
                    .rotate_to(Arc::clone(key), now + PREVIOUS_CERTIFICATE_HOLD);
                tracing::info!(
                    certificate = %hex(&wanted),
                    hold_s = PREVIOUS_CERTIFICATE_HOLD.as_secs(),
                    "presenting the rotated certificate; the previous one only to peers that refuse it, for the hold"
                );
            }
        }
    }
    let spares = on_disk
        .into_iter()
        .zip(revoked)
        .filter_map(|(key, revoked)| (!revoked).then_some(key))
        .collect();
    shared.identity.set_spares(spares);
    let held = shared.identity.previous_fingerprint();
    shared.identity.expire(now);
    if let (Some(fp), None) = (held, shared.identity.previous_fingerprint()) {
        tracing::info!(certificate = %hex(&fp), "the previous certificate is no longer held");
    }
    shared
        .trust
        .set_pinned(own_certificates(&shared.layout, &shared.identity));
    result
}

/// Unwraps the link key the regulator wrapped for this member, when it changes, hands it to
/// the node's parts and keeps it in the keystore.
async fn take_link_key(shared: &Shared) -> Result<()> {
    let wrapped = shared
        .node
        .state()
        .read(|s| s.wrapped_link_key(&shared.membership.member).cloned());
    let Some(wrapped) = wrapped else {
        return Ok(());
    };
    {
        let mut last = shared
            .link_wrapping
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.as_deref() == Some(wrapped.ciphertext.as_slice()) {
            return Ok(());
        }
        // Tried once per wrapping: a key that does not open is reported, not retried every
        // tick.
        *last = Some(wrapped.ciphertext.clone());
    }
    let layout = shared.layout.clone();
    let ciphertext = wrapped.ciphertext;
    // The RSA key is never rotated: the one read at start opens every wrapping for the member.
    let wrapping = shared.wrapping.clone();
    // An RSA private-key operation: off the async workers.
    let key = tokio::task::spawn_blocking(move || -> Result<SecretKey> {
        let key = unwrap_link_key(&wrapping, &ciphertext)?;
        if read_link_key(&layout.keys())?.as_ref() != Some(&key) {
            store_link_key(&layout.keys(), &key)?;
        }
        Ok(key)
    })
    .await
    .map_err(|e| ConsortiumError::Keys(format!("link key task: {e}")))??;
    shared.participation().set_link_key(key, wrapped.version);
    tracing::info!(version = wrapped.version, "link key taken");
    Ok(())
}

/// Asks the other voters, every [`ASK_INTERVAL`], whether they accept this node's certificate
/// (see [`crate::consortium::standing`]), over channels kept open between rounds.
async fn ask_voters(shared: Arc<Shared>) {
    let mut channels: BTreeMap<NodeId, Channel> = BTreeMap::new();
    let mut ticker = tokio::time::interval(ASK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let own = shared.membership.node_id;
        let (active, voters) = shared.node.state().read(|s| {
            let voters: Vec<(NodeId, String)> = s
                .voters()
                .into_iter()
                .filter(|(id, _)| *id != own)
                .collect();
            (s.is_active(&shared.membership.member), voters)
        });
        if !active {
            // Not a member yet (or no longer, by its own state): nothing to ask. The others
            // refuse a node that is not admitted yet; that says nothing once it is.
            shared.participation().set_verdict(Verdict::Unasked);
            channels.clear();
            continue;
        }
        channels.retain(|id, c| voters.iter().any(|(v, a)| v == id && a == c.addr()));
        let mut asked = JoinSet::new();
        for (id, address) in &voters {
            let channel = match channels.remove(id) {
                Some(channel) => channel,
                None => {
                    match Channel::new(address.clone(), &shared.trust, &shared.identity, Some(*id))
                    {
                        Ok(channel) => channel,
                        Err(e) => {
                            tracing::warn!(node = id, error = %e, "cannot ask a voter");
                            continue;
                        }
                    }
                }
            };
            asked.spawn(ask(*id, channel));
        }
        let mut refused = 0;
        while let Some(answer) = asked.join_next().await {
            let Ok((id, channel, answer)) = answer else {
                continue;
            };
            channels.insert(id, channel);
            match answer {
                Answer::Accepted | Answer::Unreachable => {}
                Answer::Refused => refused += 1,
            }
        }
        shared
            .participation()
            .set_verdict(verdict(voters.len(), refused));
        shared.refresh();
    }
}

/// What one voter answered.
enum Answer {
    Accepted,
    Refused,
    Unreachable,
}

async fn ask(id: NodeId, mut channel: Channel) -> (NodeId, Channel, Answer) {
    let answer = match channel
        .call(Method::GET, "/consortium/ping", Vec::new(), ASK_TIMEOUT)
        .await
    {
        Ok((status, _)) if status.is_success() => Answer::Accepted,
        Ok((StatusCode::FORBIDDEN, _)) | Err(TransportError::Refused { .. }) => Answer::Refused,
        Ok(_) | Err(_) => Answer::Unreachable,
    };
    (id, channel, answer)
}

/// Reads this member's current signing key from the keystore (or from the keys a rotation is
/// moving in), the one whose public key is `wanted`.
fn signer_on_disk(layout: &Layout, wanted: &fhirseal_consensus::PublicKey) -> Option<SigningKey> {
    [layout.keys(), layout.next_keys()]
        .iter()
        .filter_map(|dir| read_secret_32(&dir.join(SIGNING)).ok())
        .map(|seed| SigningKey::from_bytes(&seed))
        .find(|key| fhirseal_consensus::PublicKey::of(key) == *wanted)
}

/// Keeps the ledger's signing key the one the state names for this member.
fn follow_own_signer(shared: &Shared) {
    let wanted = shared.node.state().read(|s| {
        s.member(&shared.membership.member)
            .map(|m| m.keys().signing_key)
    });
    let Some(wanted) = wanted else {
        return;
    };
    let held = shared
        .participation()
        .signer()
        .map(fhirseal_consensus::PublicKey::of);
    if held != Some(wanted) {
        let found = signer_on_disk(&shared.layout, &wanted);
        if found.is_some() {
            tracing::info!("signing with the member's rotated key");
        }
        shared.participation().set_signer(found);
    }
    follow_own_voter(shared);
}

/// Keeps the ledger's vote and beacon keys the ones the state names for this member: after a
/// rotation the old ones no longer count (a ballot outside the ring, a reveal that fails).
fn follow_own_voter(shared: &Shared) {
    let wanted = shared.node.state().read(|s| {
        s.member(&shared.membership.member)
            .map(|m| (m.keys().vote_key, m.keys().beacon_key))
    });
    let Some((vote, beacon)) = wanted else {
        return;
    };
    let held = shared
        .participation()
        .voter()
        .map(|v| (v.vote.public(), v.beacon.public()));
    if held == Some((vote, beacon)) {
        return;
    }
    let found = [shared.layout.keys(), shared.layout.next_keys()]
        .iter()
        .filter_map(|dir| crate::consortium::files::voter_keys_in(dir).ok())
        .find(|v| v.vote.public() == vote && v.beacon.public() == beacon);
    if found.is_some() {
        tracing::info!("voting and contributing to the beacon with the member's rotated keys");
    }
    shared.participation().set_voter(found.map(Arc::new));
}
