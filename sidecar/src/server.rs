//! The node's startup, and the FHIR listener.
//!
//! [`Sidecar::bind`] opens one node from one configuration and data directory: the keystore
//! ([`crate::keystore`]), its consortium membership (on the embedded default's first start it
//! founds a consortium of one: the node is regulator, only member and only delegate), the
//! governance node on its mutual-TLS listener ([`crate::consortium::RunningNode`]), the vault
//! (sealing with the link key the governance state hands over), the node's part of the shared
//! ledger (its task, on the governance listener's transport, with the rosters, delegates and
//! signing key the state names), the API keys and the proxy. [`Sidecar::serve`] accepts
//! TCP (and TLS) connections and serves HTTP/1.1 and HTTP/2 on them with the proxy until told
//! to shut down; then it stops accepting, lets open requests finish, anchors what they wrote,
//! and stops the ledger and the governance node. [`Sidecar::embed`] opens the same node without
//! a FHIR listener, with a [`FhirSealLayer`] whose wrapped service is its upstream.
//!
//! Before the proxy, the node's standing decides over writes ([`crate::gate`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use fhirseal_consensus::governance::ElectionParams;
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::admin::Admin;
use crate::config::Config;
use crate::consortium::files::{Layout, Membership};
use crate::consortium::founding::{found, Founding};
use crate::consortium::participation::{Followers, Participation};
use crate::consortium::standing::{Standing, Verdict};
use crate::consortium::{ConsortiumError, NodeStart, RunningNode};
use crate::error::ProxyError;
use crate::gate::Gate;
use crate::keystore::Keystore;
use crate::layer::FhirSealLayer;
use crate::ledger::LedgerError;
use crate::ledger::{NodeLedger, Opened};
use crate::listener::{self, Connection, ListenerConfig};
use crate::metrics::Metrics;
use crate::proxy::{ClientAddr, Proxy};
use crate::sealing::{SealError, Sealing};
use crate::stores::{Store, StoreError};
use crate::tls::{self, TlsError};
use crate::upstream::ServiceSlot;
use fhirseal_storage::chain_store::ChainStoreError;
use fhirseal_storage::NodeKeys;
use fhirseal_storage::StorageError;

/// A client has this long to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Open requests get this long to finish once shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the sidecar cannot start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("proxy: {0}")]
    Proxy(#[from] ProxyError),
    #[error("accepting connections failed: {0}")]
    Accept(std::io::Error),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthSetupError),
    #[error("sealing: {0}")]
    Seal(#[from] crate::sealing::SealError),
    #[error("ledger: {0}")]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error("consortium: {0}")]
    Consortium(#[from] ConsortiumError),
    /// A store is damaged (or changed since the clean stop): the node does not start on it.
    #[error(transparent)]
    Store(#[from] crate::stores::StoreError),
    #[error("start-up failed: {0}")]
    Start(String),
}

/// A bound, not yet serving, node.
pub struct Sidecar {
    /// The FHIR listener; none when embedded as a layer.
    listener: Option<TcpListener>,
    /// The local control socket `fhirseal backup` asks (see [`crate::backup`]).
    control: Option<crate::backup::ControlListener>,
    proxy: Proxy,
    /// The governance node: stopped last, after the anchorer.
    consortium: RunningNode,
    /// Whether writes are taken.
    gate: Gate,
    /// The anchoring task and its stop signal: stopped after the last request, so that what
    /// those requests wrote is anchored before `serve` returns.
    anchorer: Option<(JoinHandle<()>, watch::Sender<bool>)>,
    /// The ledger's task and its stop signal: stopped after the anchorer's last round.
    ledger: Option<(JoinHandle<()>, watch::Sender<bool>)>,
    /// How the FHIR listener serves its connections.
    serving: ListenerConfig,
    /// The upstream's answer time: unsettled writes older than twice it are resolved.
    upstream_timeout: Duration,
    /// The admin listener and what it answers from, when `admin.listen` is set.
    admin: Option<(TcpListener, Admin)>,
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecar")
            .field("listener", &self.listener)
            .field("proxy", &self.proxy)
            .field("tls", &self.serving.tls.is_some())
            .finish()
    }
}

impl Sidecar {
    /// Opens the node of `config` (see the module's documentation), binds its listeners and
    /// builds the proxy; no FHIR request is served until [`Sidecar::serve`].
    pub async fn bind(config: &Config) -> Result<Sidecar, ServerError> {
        let tls = match &config.server.tls {
            Some(t) => Some(TlsAcceptor::from(Arc::new(tls::server_config(
                &t.cert, &t.key,
            )?))),
            None => None,
        };
        let addr = config.server.listen;
        let listener = bind(addr).await?;
        Self::open(config, Some(listener), tls, None).await
    }

    /// Opens the node of `config` as [`Sidecar::bind`] does, without a FHIR listener (and
    /// without `server.listen` and `server.tls`), and the layer that wraps the FHIR service the
    /// node forwards to (see [`crate::layer`]). [`Sidecar::serve`] runs the node's background
    /// work until shutdown.
    pub async fn embed(config: &Config) -> Result<(Sidecar, FhirSealLayer), ServerError> {
        let slot = ServiceSlot::default();
        let node = Self::open(config, None, None, Some(slot.clone())).await?;
        let layer = FhirSealLayer::new(node.proxy.clone(), node.gate.clone(), slot);
        Ok((node, layer))
    }

    /// The node of `config`, serving FHIR on `listener` (if any) with `tls`, forwarding to the
    /// service `slot` holds (if any) instead of over HTTP.
    async fn open(
        config: &Config,
        listener: Option<TcpListener>,
        tls: Option<TlsAcceptor>,
        slot: Option<ServiceSlot>,
    ) -> Result<Sidecar, ServerError> {
        let admin_listener = match config.admin.listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        // Before sled opens anything: the stores must be as the last clean stop left them.
        let data_dir = config.data_dir.clone();
        let sealed = tokio::task::spawn_blocking(move || crate::stores::take_seal(&data_dir))
            .await
            .map_err(|e| ServerError::Start(e.to_string()))??;
        if sealed {
            tracing::info!("the stores are as the last clean stop left them");
        }
        let (keys, membership, consortium) = start_member(config).await?;
        let config = &member_config(config, &membership)?;
        let auth = crate::auth::load(config)?;
        let followers = consortium.followers().clone();
        let (sealing, opened) = open_parts(
            config,
            &membership.consortium,
            keys,
            &followers,
            Some(consortium.network()),
        )
        .await?;
        consortium.attach_ledger(opened.port.clone());
        let (stop_ledger, ledger_stopped) = watch::channel(false);
        let ledger = tokio::spawn(opened.runtime.run(ledger_stopped));
        // What the outbox holds from before a restart is anchored by the first rounds.
        let (stop, stopped) = watch::channel(false);
        let anchorer = tokio::spawn(opened.anchorer.run(stopped));
        let control = crate::backup::Control {
            vault: sealing.vault().database().clone(),
            ledger: opened.ledger.reader().store().database().clone(),
            governance: consortium.database().clone(),
        };
        // Without it the node still serves: only a backup of it while it runs is not possible
        // (a socket path over the system's limit of about 100 bytes, a read-only directory).
        let control = match crate::backup::ControlListener::bind(&config.data_dir, control) {
            Ok(listener) => Some(listener),
            Err(error) => {
                tracing::warn!(%error, "no control socket: `fhirseal backup` cannot copy this node while it runs");
                None
            }
        };
        let mut proxy = Proxy::new(config, tls.is_some(), sealing, opened.ledger, auth)?
            .with_network(consortium.network());
        if let Some(slot) = slot {
            proxy = proxy.in_process(slot);
        }
        consortium.attach_sharing(proxy.sharing());
        let admin = admin_listener.map(|listener| {
            let admin = Admin {
                metrics: proxy.sealing().metrics().clone(),
                proxy: proxy.clone(),
                ledger: proxy.ledger(),
                governance: consortium.governance().clone(),
                max_anchor_lag: Duration::from_secs(config.admin.max_anchor_lag_secs),
            };
            (listener, admin)
        });
        let serving = ListenerConfig {
            tls,
            handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
            http1: true,
            max_connections: config.server.max_connections,
            header_read_timeout: Duration::from_secs(config.server.header_read_timeout_secs),
            max_http2_streams: config.server.max_http2_streams,
            max_header_bytes: config.server.max_header_bytes,
            drain_timeout: DRAIN_TIMEOUT,
        };
        Ok(Sidecar {
            control,
            listener,
            proxy,
            consortium,
            gate: Gate {
                standing: followers.standing,
                base_path: config.server.base_path.trim_end_matches('/').to_owned(),
            },
            anchorer: Some((anchorer, stop)),
            ledger: Some((ledger, stop_ledger)),
            serving,
            upstream_timeout: config.upstream.timeout(),
            admin,
        })
    }

    /// The address actually bound (useful with port 0); `0.0.0.0:0` when embedded.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener always has a local address.
        self.listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The node's sealing and vault (for tools and tests that look inside).
    pub fn sealing(&self) -> Arc<Sealing> {
        self.proxy.sealing()
    }

    /// The node's ledger (for tools and tests that look inside).
    pub fn ledger(&self) -> Arc<NodeLedger> {
        self.proxy.ledger()
    }

    /// Whether clients must speak TLS.
    pub fn is_tls(&self) -> bool {
        self.serving.tls.is_some()
    }

    /// Where the admin listener is bound, when there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// Where the node's governance listener (mutual TLS) is bound.
    pub fn consortium_addr(&self) -> SocketAddr {
        self.consortium.local_addr()
    }

    /// Where the node stands in its consortium now.
    pub fn standing(&self) -> Standing {
        *self.gate.standing.borrow()
    }

    /// Serves until `shutdown` resolves, then drains open connections; then anchors what the
    /// last requests wrote and stops the ledger and the governance node. Embedded, there is no
    /// listener: it runs the node's background work until `shutdown`, then stops it the same way
    /// (requests still arriving through the layer are answered, without the node's tasks).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let resolver = tokio::spawn(resolve_intents(self.proxy.clone(), self.upstream_timeout));
        // The admin listener answers until `serve` returns, however it returns.
        let (admin_stop, admin_stopped) = watch::channel(false);
        let _admin_stop = StopOnDrop(admin_stop);
        if let Some((listener, admin)) = self.admin {
            let mut stopped = admin_stopped;
            tokio::spawn(async move {
                let until_stopped = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                if let Err(error) = admin.serve(listener, until_stopped).await {
                    tracing::warn!(%error, "the admin listener failed");
                }
            });
        }
        let control = self.control;
        let control_task = control.as_ref().map(|c| c.serve());
        let (proxy, gate) = (self.proxy.clone(), self.gate.clone());
        let make = move |connection: &Connection| {
            let (proxy, gate, peer) = (proxy.clone(), gate.clone(), connection.remote);
            service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(ClientAddr(peer));
                let answer = gate.answer(&proxy, req);
                async move { Ok::<_, std::convert::Infallible>(answer.await) }
            })
        };
        let served = match self.listener {
            Some(listener) => listener::serve(listener, self.serving, make, shutdown).await,
            None => {
                shutdown.await;
                Ok(())
            }
        };
        resolver.abort();
        if let Some(task) = control_task {
            task.abort();
        }
        drop(control);
        served.map_err(ServerError::Accept)?;
        if let Some((anchorer, stop)) = self.anchorer {
            stop.send_replace(true);
            if tokio::time::timeout(DRAIN_TIMEOUT, anchorer).await.is_err() {
                tracing::warn!("the last anchoring round did not finish in time; the outbox keeps what it holds");
            }
        }
        if let Some((ledger, stop)) = self.ledger {
            stop.send_replace(true);
            if tokio::time::timeout(DRAIN_TIMEOUT, ledger).await.is_err() {
                tracing::warn!("the ledger's task did not stop in time");
            }
        }
        self.consortium.stop().await?;
        Ok(())
    }
}

/// Tells a listener to stop when dropped.
struct StopOnDrop(watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// The keystore, the membership (founding a consortium of one on the embedded default's first
/// start) and the running governance node of `config`'s data directory.
async fn start_member(config: &Config) -> Result<(NodeKeys, Membership, RunningNode), ServerError> {
    let layout = Layout::of(config);
    if Membership::load(&layout)?.is_some() {
        require_keys(&layout.keys())?;
    }
    let (keys, bits) = (layout.keys(), config.seal.rsa_bits);
    let keystore = tokio::task::spawn_blocking(move || Keystore::open_or_create(&keys, bits))
        .await
        .map_err(|e| ServerError::Start(e.to_string()))??;
    if keystore.created {
        tracing::info!(dir = %layout.keys().display(), "made the node's keys");
    }
    let (membership, listener) = match Membership::load(&layout)? {
        Some(membership) => {
            let addr = config.consortium.listen.unwrap_or(membership.address);
            (membership, bind(addr).await?)
        }
        None => {
            // The embedded default: a consortium of one, founded at its first start, whose
            // genesis records the address bound now.
            let addr = config
                .consortium
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
            let listener = bind(addr).await?;
            let mut address = listener
                .local_addr()
                .map_err(|e| ServerError::Start(e.to_string()))?;
            if address.ip().is_unspecified() {
                address.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            let institution = &config.seal.institution;
            let founding = Founding {
                consortium: institution.clone(),
                member: institution.clone(),
                name: institution.clone(),
                node_id: 1,
                address,
                join_listen: None,
                delegates: config.ledger.delegates,
                election: ElectionParams::NONE,
            };
            std::fs::create_dir_all(layout.dir())
                .map_err(|e| ConsortiumError::file(layout.dir(), e))?;
            found(&layout, &keystore.member, &founding)?;
            tracing::info!(consortium = %institution, "founding a consortium of one");
            (Membership::require(&layout)?, listener)
        }
    };
    if membership.address != listener.local_addr().unwrap_or(membership.address) {
        tracing::warn!(
            admitted = %membership.address,
            "the governance listener is not bound where the other members reach this node"
        );
    }
    let desk = match config.consortium.join_listen.or(membership.join_listen) {
        Some(addr) => Some(bind(addr).await?),
        None => None,
    };
    let Keystore { node, member, .. } = keystore;
    let data_dir = config.data_dir.clone();
    let running = RunningNode::start(NodeStart {
        layout,
        membership: membership.clone(),
        listener,
        desk,
        raft: config.consortium.raft,
        secrets: member,
    })
    .await
    .map_err(|e| match e {
        ConsortiumError::Open(e) if !is_locked(&e) => {
            StoreError::opened(Store::Governance, &data_dir, &e).into()
        }
        other => ServerError::from(other),
    })?;
    Ok((node, membership, running))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })
}

/// `config` for the node of `membership`: its institution is its member id. A configuration
/// that names another institution is refused (its API keys would be another institution's).
fn member_config(config: &Config, membership: &Membership) -> Result<Config, ServerError> {
    let configured = &config.seal.institution;
    if *configured != membership.member && *configured != Config::default().seal.institution {
        return Err(ServerError::Start(format!(
            "seal.institution is {configured}, but this data directory is member {} of consortium \
             {}: set seal.institution = \"{}\" (or leave it unset)",
            membership.member, membership.consortium, membership.member
        )));
    }
    let mut config = config.clone();
    config.seal.institution = membership.member.clone();
    Ok(config)
}

/// Opens the vault (sealing with `followers`' link key) and the ledger of consortium
/// `consortium` (with their rosters, delegates and signing key, over `network`). sled's recovery
/// blocks: it runs off the async threads.
async fn open_parts(
    config: &Config,
    consortium: &str,
    keys: NodeKeys,
    followers: &Followers,
    network: Option<crate::consortium::transport::HttpNetwork>,
) -> Result<(Arc<Sealing>, Opened), ServerError> {
    let for_config = config.clone();
    let consortium = consortium.to_owned();
    let link_key = followers.link_key.clone();
    let view = followers.ledger.clone();
    tokio::task::spawn_blocking(move || -> Result<_, ServerError> {
        let data_dir = &for_config.data_dir;
        // One set of metrics for the node, counted by its parts, served on the admin listener.
        let metrics = Arc::new(Metrics::new());
        let sealing = match Sealing::open(&for_config, keys, link_key, metrics.clone()) {
            Ok(sealing) => Arc::new(sealing),
            Err(SealError::Storage(StorageError::Open(e))) if !is_locked(&e) => {
                return Err(StoreError::opened(Store::Vault, data_dir, &e).into());
            }
            Err(e) => return Err(e.into()),
        };
        let opened = match NodeLedger::open(
            &for_config,
            &consortium,
            sealing.vault().outbox().clone(),
            view,
            network,
            crate::clock::system(),
            metrics,
        ) {
            Ok(opened) => opened,
            Err(LedgerError::Chain(fhirseal_consensus::Error::Store(ChainStoreError::Open(e)))) => {
                return Err(StoreError::opened(Store::Ledger, data_dir, &e).into());
            }
            Err(e) => return Err(e.into()),
        };
        Ok((sealing, opened))
    })
    .await
    .map_err(|e| ServerError::Start(e.to_string()))?
}

/// Opens a stopped node's vault and ledger for the offline tools: the ledger verifies against
/// the rosters its governance state names, read from its Raft store (the node is not started,
/// nothing is anchored or sealed).
pub(crate) async fn open_node(config: &Config) -> Result<(Arc<Sealing>, Opened), ServerError> {
    let layout = Layout::of(config);
    let membership = Membership::require(&layout)?;
    let config = member_config(config, &membership)?;
    require_keys(&layout.keys())?;
    let (keys, bits) = (layout.keys(), config.seal.rsa_bits);
    let keystore = tokio::task::spawn_blocking(move || Keystore::open_or_create(&keys, bits))
        .await
        .map_err(|e| ServerError::Start(e.to_string()))??;
    let raft = layout.raft();
    let data_dir = config.data_dir.clone();
    let view = tokio::task::spawn_blocking(move || -> Result<_, ServerError> {
        let db = fhirseal_storage::open::open_db(&raft).map_err(|e| match e {
            e if is_locked(&e) => ServerError::from(ConsortiumError::Open(e)),
            e => StoreError::opened(Store::Governance, &data_dir, &e).into(),
        })?;
        let store =
            fhirseal_storage::raft_store::RaftStore::open(&db).map_err(ConsortiumError::from)?;
        let machine = fhirseal_consensus::raft::StateMachine::open(store).map_err(|e| {
            StoreError::Damaged {
                store: Store::Governance,
                path: Store::Governance.dir(&data_dir).display().to_string(),
                what: format!("its governance state does not read back: {e}"),
            }
        })?;
        Ok(machine.view())
    })
    .await
    .map_err(|e| ServerError::Start(e.to_string()))??;
    let (mut participation, followers) = Participation::new(&membership.member, Verdict::Alone);
    participation.refresh(&view);
    open_parts(
        &config,
        &membership.consortium,
        keystore.node,
        &followers,
        None,
    )
    .await
}

/// The key files sealing needs (the RSA key that unwraps every data key, the blind-index key,
/// the delegate key). Checked before a node that has run before starts: the keystore would
/// otherwise make new ones, and every identity its vault holds would be unreadable.
pub fn require_keys(dir: &std::path::Path) -> Result<(), ServerError> {
    let missing: Vec<&str> = [
        fhirseal_storage::keys::RSA_KEY_FILE,
        "index.key",
        "delegate.ed25519",
    ]
    .into_iter()
    .filter(|file| !dir.join(file).is_file())
    .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(ServerError::Start(format!(
        "the keystore {} lacks {}, but this data directory has run before: its vault was sealed \
         for the keys it had. Copy the node's keys there (a backup made with --with-keys holds \
         them); new keys would leave every identity in the vault unreadable",
        dir.display(),
        missing.join(", ")
    )))
}

fn is_locked(error: &fhirseal_storage::open::OpenError) -> bool {
    matches!(error, fhirseal_storage::open::OpenError::Locked { .. })
}

/// Refiles the blind index if an earlier build filed it in another layout, then resolves the
/// writes a crash left unsettled: those kept before this start, then, every
/// minute, also those older than twice the upstream's timeout (an exchange that failed without
/// an answer). A write in flight here is never touched. One the upstream does not hold is
/// forgotten only once older than twice the upstream's timeout (an exchange a crash cut off
/// goes on at the upstream); until then it is looked up again every [`AWAIT_ROUND`]. A round
/// whose lookups failed (the upstream did not answer) is tried again after [`AWAIT_ROUND`],
/// then twice as long each time, up to [`INTENT_ROUND`].
async fn resolve_intents(proxy: Proxy, upstream_timeout: Duration) {
    let clock = proxy.clock();
    let started = clock.now_ms();
    let margin = u64::try_from((upstream_timeout * 2).as_millis()).unwrap_or(u64::MAX);
    let mut retry = AWAIT_ROUND;
    while let Err(error) = proxy.refile_index().await {
        tracing::warn!(error = %error.log_text(), "the blind index not refiled yet; retrying");
        tokio::time::sleep(REFILE_RETRY).await;
    }
    loop {
        let forget_before = clock.now_ms().saturating_sub(margin);
        let cutoff = started.max(forget_before);
        let pause = match proxy.resolve_intents(cutoff, forget_before).await {
            Ok(resolved) if resolved.failed == 0 => {
                retry = AWAIT_ROUND;
                if resolved.awaited > 0 {
                    AWAIT_ROUND
                } else {
                    INTENT_ROUND
                }
            }
            outcome => {
                if let Err(error) = outcome {
                    tracing::warn!(error = %error.log_text(), "unsettled writes not resolved yet; retrying");
                }
                let pause = retry;
                retry = (retry * 2).min(INTENT_ROUND);
                pause
            }
        };
        tokio::time::sleep(pause).await;
    }
}

/// How soon refiling the blind index is tried again after the upstream failed to answer.
const REFILE_RETRY: Duration = Duration::from_secs(5);

/// How often unsettled writes are looked at again.
const INTENT_ROUND: Duration = Duration::from_secs(60);
/// How often writes the upstream may still commit are looked up again.
const AWAIT_ROUND: Duration = Duration::from_secs(2);
