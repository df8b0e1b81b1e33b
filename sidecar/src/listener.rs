//! Every listener's accept loop, written once: the FHIR listener ([`crate::server`]) and the
//! consortium's mutual-TLS listener and join desk ([`crate::consortium::node`]) all accept
//! TCP under a connection limit, finish a TLS handshake (when they speak TLS) within a time
//! limit, serve HTTP on the connection with a service made for it, and stop on shutdown,
//! letting open connections finish.
//!
//! What it does not know: what the services do, or which certificates a listener trusts (the
//! `TlsAcceptor` handed in carries that).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// HTTP/2 connections are pinged when idle this long, and closed when a ping goes unanswered
/// as long.
const HTTP2_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// How one listener serves its connections.
#[derive(Clone)]
pub struct ListenerConfig {
    /// TLS, when the listener speaks it (with the client verification it requires).
    pub tls: Option<TlsAcceptor>,
    /// A client has this long to finish the TLS handshake.
    pub handshake_timeout: Duration,
    /// HTTP/1.1 as well as HTTP/2 (else HTTP/2 only).
    pub http1: bool,
    /// Connections served at once; at the limit, accepting waits and further clients queue in
    /// the kernel's listen backlog instead of each costing a task.
    pub max_connections: usize,
    /// An HTTP/1.1 client has this long to send a request's headers.
    pub header_read_timeout: Duration,
    /// Streams one HTTP/2 connection may have open at once.
    pub max_http2_streams: u32,
    /// The most header bytes a request may carry.
    pub max_header_bytes: usize,
    /// Open connections get this long to finish once shutdown begins.
    pub drain_timeout: Duration,
}

impl std::fmt::Debug for ListenerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerConfig")
            .field("tls", &self.tls.is_some())
            .field("http1", &self.http1)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

/// What a service is made for: one accepted connection.
#[derive(Debug, Clone)]
pub struct Connection {
    pub remote: SocketAddr,
    /// The certificate the client presented in the TLS handshake, if it presented one.
    pub peer_certificate: Option<CertificateDer<'static>>,
}

/// Accepts on `listener` until `shutdown` resolves, serving each connection with the service
/// `make` returns for it; then stops accepting and waits up to the drain timeout for open
/// connections. Returns an error only when accepting fails for good.
pub async fn serve<M, S, B>(
    listener: TcpListener,
    config: ListenerConfig,
    make: M,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    M: Fn(&Connection) -> S + Send + Sync + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = GracefulShutdown::new();
    let make = Arc::new(make);
    let connections = Arc::new(Semaphore::new(config.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                // Per-connection failures (reset before accept, fd pressure) must not stop
                // the listener; wait a moment so a persistent one does not spin.
                Err(error) if is_transient(&error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Err(error) => return Err(error),
            },
            () = &mut shutdown => break,
        };
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%remote, %error, "TCP_NODELAY not set");
        }
        let watcher = graceful.watcher();
        let (builder, make) = (builder(&config), Arc::clone(&make));
        let (tls, handshake_timeout) = (config.tls.clone(), config.handshake_timeout);
        tokio::spawn(async move {
            let _permit = permit;
            let result = match tls {
                None => {
                    let service = make(&Connection {
                        remote,
                        peer_certificate: None,
                    });
                    let conn = builder.serve_connection(TokioIo::new(tcp), service);
                    watcher.watch(conn.into_owned()).await
                }
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp))
                        .await
                    {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            // An unknown or revoked certificate ends here.
                            tracing::info!(%remote, %error, "connection refused at the TLS handshake");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%remote, "TLS handshake timed out");
                            return;
                        }
                    };
                    let peer_certificate = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| c.clone().into_owned());
                    let service = make(&Connection {
                        remote,
                        peer_certificate,
                    });
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(error) = result {
                tracing::debug!(%remote, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(config.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open connections did not finish in time and were dropped");
    }
    Ok(())
}

/// The HTTP side of a connection, as `config` says.
fn builder(config: &ListenerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.max_http2_streams)
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(HTTP2_KEEP_ALIVE))
        .keep_alive_timeout(HTTP2_KEEP_ALIVE);
    if config.http1 {
        builder
    } else {
        builder.http2_only()
    }
}

/// Accept errors that concern one connection, or pass.
fn is_transient(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        error.kind(),
        ConnectionAborted | ConnectionReset | Interrupted | WouldBlock
    ) || error
        .raw_os_error()
        .is_some_and(|code| code == 24 || code == 23) // EMFILE, ENFILE
}
