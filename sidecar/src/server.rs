//! The listener: accepts TCP (and TLS) connections and serves HTTP/1.1 and HTTP/2 on them with
//! the proxy, until told to shut down; then it stops accepting and lets open requests finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::error::ProxyError;
use crate::ledger::{NodeLedger, Opened};
use crate::proxy::{ClientAddr, Proxy};
use crate::sealing::Sealing;
use crate::tls::{self, TlsError};

/// A client has this long to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 connections are pinged when idle this long, and closed when a ping goes unanswered
/// as long.
const HTTP2_KEEP_ALIVE: Duration = Duration::from_secs(30);
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
    #[error("start-up failed: {0}")]
    Start(String),
}

/// A bound, not yet serving, sidecar.
pub struct Sidecar {
    listener: TcpListener,
    proxy: Proxy,
    /// The anchoring task and its stop signal: stopped after the last request, so that what
    /// those requests wrote is anchored before `serve` returns.
    anchorer: Option<(JoinHandle<()>, watch::Sender<bool>)>,
    tls: Option<TlsAcceptor>,
    header_read_timeout: Duration,
    /// One permit per open client connection.
    connections: Arc<tokio::sync::Semaphore>,
    max_http2_streams: u32,
    max_header_bytes: usize,
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecar")
            .field("listener", &self.listener)
            .field("proxy", &self.proxy)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Sidecar {
    /// Binds the listener and builds the proxy; nothing is served until [`Sidecar::serve`].
    pub async fn bind(config: &Config) -> Result<Sidecar, ServerError> {
        let tls = match &config.server.tls {
            Some(t) => Some(TlsAcceptor::from(Arc::new(tls::server_config(
                &t.cert, &t.key,
            )?))),
            None => None,
        };
        let addr = config.server.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let auth = crate::auth::load(config)?;
        let (sealing, opened) = open_node(config).await?;
        // What the outbox holds from before a restart is anchored by the first rounds.
        let (stop, stopped) = watch::channel(false);
        let anchorer = tokio::spawn(opened.anchorer.run(stopped));
        let proxy = Proxy::new(config, tls.is_some(), sealing, opened.ledger, auth)?;
        Ok(Sidecar {
            listener,
            proxy,
            anchorer: Some((anchorer, stop)),
            tls,
            header_read_timeout: Duration::from_secs(config.server.header_read_timeout_secs),
            connections: Arc::new(tokio::sync::Semaphore::new(config.server.max_connections)),
            max_http2_streams: config.server.max_http2_streams,
            max_header_bytes: config.server.max_header_bytes,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener always has a local address.
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
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
        self.tls.is_some()
    }

    /// Serves until `shutdown` resolves, then drains open connections.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            // At the connection limit, accepting waits: further clients queue in the kernel's
            // listen backlog instead of each costing a task.
            let permit = tokio::select! {
                permit = self.connections.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
                () = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(pair) => pair,
                    // Per-connection failures (reset before accept, fd pressure) must not stop
                    // the server; wait a moment so a persistent one does not spin.
                    Err(error) if is_transient(&error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Err(error) => return Err(ServerError::Accept(error)),
                },
                () = &mut shutdown => break,
            };
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%peer, %error, "TCP_NODELAY not set");
            }
            let proxy = self.proxy.clone();
            let tls = self.tls.clone();
            let header_read_timeout = self.header_read_timeout;
            let (max_streams, max_header) = (self.max_http2_streams, self.max_header_bytes);
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let _permit = permit;
                let service = service_fn(move |mut req: hyper::Request<Incoming>| {
                    req.extensions_mut().insert(ClientAddr(peer));
                    let response = proxy.handle(req);
                    async move { Ok::<_, std::convert::Infallible>(response.await) }
                });
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_read_timeout)
                    .max_buf_size(max_header);
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(max_streams)
                    .max_header_list_size(u32::try_from(max_header).unwrap_or(u32::MAX))
                    .keep_alive_interval(Some(HTTP2_KEEP_ALIVE))
                    .keep_alive_timeout(HTTP2_KEEP_ALIVE);
                let result = match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(tls_stream)) => {
                                let conn = builder
                                    .serve_connection(TokioIo::new(tls_stream), service)
                                    .into_owned();
                                watcher.watch(conn).await
                            }
                            Ok(Err(error)) => {
                                tracing::debug!(%peer, %error, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        }
                    }
                    None => {
                        let conn = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .into_owned();
                        watcher.watch(conn).await
                    }
                };
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
            });
        }
        drop(self.listener);
        if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("open connections did not finish in time and were dropped");
        }
        if let Some((anchorer, stop)) = self.anchorer {
            stop.send_replace(true);
            if tokio::time::timeout(DRAIN_TIMEOUT, anchorer).await.is_err() {
                tracing::warn!("the last anchoring round did not finish in time; the outbox keeps what it holds");
            }
        }
        Ok(())
    }
}

/// Opens the node's keys, vault and ledger. Key generation and sled's recovery block: they run
/// off the async threads.
pub(crate) async fn open_node(config: &Config) -> Result<(Arc<Sealing>, Opened), ServerError> {
    let for_sealing = config.clone();
    let sealing = tokio::task::spawn_blocking(move || Sealing::open(&for_sealing))
        .await
        .map_err(|e| ServerError::Start(e.to_string()))??;
    let sealing = Arc::new(sealing);
    let (for_ledger, for_config) = (sealing.clone(), config.clone());
    let opened = tokio::task::spawn_blocking(move || {
        NodeLedger::open(
            &for_config,
            for_ledger.keys(),
            for_ledger.vault().outbox().clone(),
        )
    })
    .await
    .map_err(|e| ServerError::Start(e.to_string()))??;
    Ok((sealing, opened))
}

fn is_transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || error
        .raw_os_error()
        .is_some_and(|code| code == 24 || code == 23) // EMFILE, ENFILE
}
