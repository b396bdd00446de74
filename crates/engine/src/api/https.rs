//! HTTPS on the API listener (`[api] tls`): the certificate loading of
//! [`crate::sources::tls`] (the same keys as an MLLP source), served by
//! `axum::serve` through a [`TlsListener`].
//!
//! Handshakes run in their own tasks, each with a time limit, and finished
//! connections are handed to axum over a bounded channel: a client that
//! opens a socket and never completes its handshake delays nobody else.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::sources::tls::{TlsError, TlsServerConfig};

/// How long a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections whose handshake finished, waiting for axum to take them.
const READY_QUEUE: usize = 64;

/// The acceptor for `config` (files relative to `base_dir`), offering
/// HTTP/2 and HTTP/1.1 by ALPN.
pub fn acceptor(config: &TlsServerConfig, base_dir: &Path) -> Result<TlsAcceptor, TlsError> {
    let mut server = (*config.build(base_dir)?).clone();
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// A TCP listener that yields TLS connections, for `axum::serve`.
#[derive(Debug)]
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `listener` until `stop` is cancelled.
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor, stop: CancellationToken) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_QUEUE);
        tokio::spawn(accept_loop(listener, acceptor, tx, stop));
        Ok(TlsListener { ready, local })
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    stop: CancellationToken,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => return,
            () = tx.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off, go on.
                    debug!(error = %e, "api: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(e)) => debug!(%peer, error = %e, "api: TLS handshake failed"),
                Err(_) => debug!(%peer, "api: TLS handshake timed out"),
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop ended (shutdown): axum's graceful shutdown
            // ends the server; until then there is nothing to accept.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// The peer of a TLS connection, as axum's connect info. Handlers keep
/// extracting `ConnectInfo<SocketAddr>`: [`serve`] copies it over.
#[derive(Debug, Clone, Copy)]
pub struct TlsPeer(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for TlsPeer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> TlsPeer {
        TlsPeer(*stream.remote_addr())
    }
}

/// Serves `app` on `listener` until `stop` is cancelled.
pub async fn serve(listener: TlsListener, app: axum::Router, stop: CancellationToken) -> io::Result<()> {
    use axum::extract::{ConnectInfo, Request};
    use axum::middleware::Next;
    let app = app.layer(axum::middleware::from_fn(
        |ConnectInfo(TlsPeer(peer)): ConnectInfo<TlsPeer>, mut request: Request, next: Next| async move {
            request.extensions_mut().insert(ConnectInfo(peer));
            next.run(request).await
        },
    ));
    let service = app.into_make_service_with_connect_info::<TlsPeer>();
    axum::serve(listener, service).with_graceful_shutdown(stop.cancelled_owned()).await
}
