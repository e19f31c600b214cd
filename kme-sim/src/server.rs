//! The running simulator: two HTTPS KME listeners and the optional admin listener, sharing one
//! [`Link`], with graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::config::ServeConfig;
use crate::etsi::Kme;
use crate::keystore::KeyStoreError;
use crate::link::Link;
use crate::tls::{self, TlsError};

/// A client that opens a connection and sends nothing must not hold a task forever.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the simulator could not start or a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("TLS setup of {kme} failed: {source}")]
    Tls { kme: String, source: TlsError },
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create the key store: {0}")]
    KeyStore(#[from] KeyStoreError),
    /// Returned to hyper by the ETSI service so that it closes the connection unanswered.
    #[error("connection closed without an answer (drop fault)")]
    DroppedByFault,
}

/// The addresses the simulator actually listens on (ports may have been chosen by the OS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddrs {
    pub kme_a: SocketAddr,
    pub kme_b: SocketAddr,
    pub admin: Option<SocketAddr>,
}

struct KmeListener {
    kme: Arc<Kme>,
    listener: TcpListener,
    tls: TlsAcceptor,
}

/// A bound, not yet running simulator.
pub struct Simulator {
    link: Arc<Link>,
    kme_a: KmeListener,
    kme_b: KmeListener,
    admin: Option<TcpListener>,
}

async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind {
            what: what.to_owned(),
            addr,
            source,
        })
}

impl Simulator {
    /// Loads the certificates and binds every listener, so that a bad setting fails here and
    /// not after the first client arrives.
    pub async fn bind(config: &ServeConfig) -> Result<Simulator, ServerError> {
        let link = Arc::new(Link::new(&config.link)?);
        let mut kmes = Vec::with_capacity(2);
        for (own, peer) in [
            (&config.kme_a, &config.kme_b),
            (&config.kme_b, &config.kme_a),
        ] {
            let tls_config =
                tls::server_config(&config.ca, &own.cert, &own.key).map_err(|source| {
                    ServerError::Tls {
                        kme: own.id.clone(),
                        source,
                    }
                })?;
            kmes.push(KmeListener {
                kme: Arc::new(Kme::new(own, peer, link.clone())),
                listener: bind(&own.id, own.listen).await?,
                tls: TlsAcceptor::from(tls_config),
            });
        }
        let admin = match config.admin_listen {
            Some(addr) => Some(bind("admin", addr).await?),
            None => None,
        };
        let kme_b = kmes.pop().expect("two KMEs were pushed");
        let kme_a = kmes.pop().expect("two KMEs were pushed");
        Ok(Simulator {
            link,
            kme_a,
            kme_b,
            admin,
        })
    }

    pub fn listen_addrs(&self) -> ListenAddrs {
        let local = |l: &TcpListener| l.local_addr().expect("a bound TCP socket has an address");
        ListenAddrs {
            kme_a: local(&self.kme_a.listener),
            kme_b: local(&self.kme_b.listener),
            admin: self.admin.as_ref().map(local),
        }
    }

    pub fn link(&self) -> Arc<Link> {
        self.link.clone()
    }

    /// Serves until `shutdown` completes, then stops accepting and gives open connections up
    /// to `grace` to finish their current request.
    pub async fn run(self, shutdown: impl Future<Output = ()>, grace: Duration) {
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                accepted = self.kme_a.listener.accept() => {
                    spawn_kme_connection(&self.kme_a, accepted, graceful.watcher());
                }
                accepted = self.kme_b.listener.accept() => {
                    spawn_kme_connection(&self.kme_b, accepted, graceful.watcher());
                }
                accepted = accept_admin(self.admin.as_ref()) => {
                    spawn_admin_connection(&self.link, accepted, graceful.watcher());
                }
            }
        }
        drop(self);
        tracing::info!(connections = graceful.count(), "shutting down");
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after {grace:?}, closing them");
        }
    }
}

/// Accepts on the admin listener, or never if there is none.
async fn accept_admin(admin: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match admin {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

fn log_accept_error(err: &std::io::Error) {
    // Typically EMFILE; the listener stays usable, so keep serving.
    tracing::warn!(error = %err, "accept failed");
}

fn spawn_kme_connection(
    listener: &KmeListener,
    accepted: std::io::Result<(TcpStream, SocketAddr)>,
    watcher: Watcher,
) {
    let (stream, peer) = match accepted {
        Ok(accepted) => accepted,
        Err(err) => return log_accept_error(&err),
    };
    let kme = listener.kme.clone();
    let acceptor = listener.tls.clone();
    tokio::spawn(async move {
        let _ = stream.set_nodelay(true);
        let tls_stream =
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => tls_stream,
                Ok(Err(err)) => {
                    kme.link().counters.tls_handshake_failure();
                    tracing::info!(kme = %kme.id(), %peer, error = %err, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    kme.link().counters.tls_handshake_failure();
                    tracing::info!(kme = %kme.id(), %peer, "TLS handshake timed out");
                    return;
                }
            };
        kme.link().counters.tls_connection();
        let sae: Option<Arc<str>> = tls_stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(tls::sae_id)
            .map(Arc::from);
        tracing::debug!(kme = %kme.id(), %peer, sae = sae.as_deref().unwrap_or("-"), "SAE connected");
        let service = service_fn(move |request| {
            let kme = kme.clone();
            let sae = sae.clone();
            async move {
                kme.serve(sae.as_deref(), request)
                    .await
                    .ok_or(ServerError::DroppedByFault)
            }
        });
        let connection = http1::Builder::new().serve_connection(TokioIo::new(tls_stream), service);
        if let Err(err) = watcher.watch(connection).await {
            tracing::debug!(%peer, error = %err, "KME connection ended");
        }
    });
}

fn spawn_admin_connection(
    link: &Arc<Link>,
    accepted: std::io::Result<(TcpStream, SocketAddr)>,
    watcher: Watcher,
) {
    let (stream, _) = match accepted {
        Ok(accepted) => accepted,
        Err(err) => return log_accept_error(&err),
    };
    let link = link.clone();
    tokio::spawn(async move {
        let service = service_fn(move |request| {
            let link = link.clone();
            async move { Ok::<_, std::convert::Infallible>(crate::admin::handle(&link, request).await) }
        });
        let connection = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
        if let Err(err) = watcher.watch(connection).await {
            tracing::debug!(error = %err, "admin connection ended");
        }
    });
}
