//! The running simulator: the HTTPS listeners of the two KMEs (one or more each) and the
//! optional admin listener, sharing one [`Link`], with graceful shutdown. Each KME listener
//! accepts in its own task, so the admin `listener` command can close and reopen it
//! ([`crate::listeners`]); accepted connections are served from the main loop.

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
use crate::listeners::Listener;
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

/// The addresses the simulator actually listens on (ports may have been chosen by the OS),
/// each KME's in configured order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddrs {
    pub kme_a: Vec<SocketAddr>,
    pub kme_b: Vec<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// One listening address of one KME.
struct KmeListener {
    kme: Arc<Kme>,
    tls: TlsAcceptor,
    control: Arc<Listener>,
}

/// A bound, not yet running simulator.
pub struct Simulator {
    link: Arc<Link>,
    kmes: Vec<(KmeListener, TcpListener)>,
    admin: Option<TcpListener>,
}

/// How long a restarted listener waits before it tries to bind its address again.
const REBIND_PAUSE: Duration = Duration::from_millis(100);

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
        let mut kmes = Vec::new();
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
            let kme = Arc::new(Kme::new(own, peer, link.clone()));
            let tls = TlsAcceptor::from(tls_config);
            for addr in &own.listen {
                let listener = bind(&own.id, *addr).await?;
                let control = link.listeners.add(&own.id, local_addr(&listener));
                let kme_listener = KmeListener {
                    kme: kme.clone(),
                    tls: tls.clone(),
                    control,
                };
                kmes.push((kme_listener, listener));
            }
        }
        let admin = match config.admin_listen {
            Some(addr) => Some(bind("admin", addr).await?),
            None => None,
        };
        Ok(Simulator { link, kmes, admin })
    }

    pub fn listen_addrs(&self) -> ListenAddrs {
        let of = |kme: &Arc<Kme>| {
            self.kmes
                .iter()
                .filter(|(l, _)| Arc::ptr_eq(&l.kme, kme))
                .map(|(l, _)| l.control.addr)
                .collect::<Vec<_>>()
        };
        let (first, _) = self.kmes.first().expect("every KME listens somewhere");
        let (last, _) = self.kmes.last().expect("every KME listens somewhere");
        ListenAddrs {
            kme_a: of(&first.kme),
            kme_b: of(&last.kme),
            admin: self.admin.as_ref().map(local_addr),
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
        let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::channel(64);
        let mut listeners = Vec::new();
        let mut accept_tasks = Vec::new();
        for (index, (kme_listener, listener)) in self.kmes.into_iter().enumerate() {
            let tx = accepted_tx.clone();
            let control = kme_listener.control.clone();
            accept_tasks.push(tokio::spawn(accept_loop(listener, control, index, tx)));
            listeners.push(kme_listener);
        }
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some((index, accepted)) = accepted_rx.recv() => {
                    spawn_kme_connection(&listeners[index], accepted, graceful.watcher());
                }
                accepted = accept_admin(self.admin.as_ref()) => {
                    spawn_admin_connection(&self.link, accepted, graceful.watcher());
                }
            }
        }
        for task in accept_tasks {
            task.abort();
        }
        drop(listeners);
        drop(self.admin);
        tracing::info!(connections = graceful.count(), "shutting down");
        if tokio::time::timeout(grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("connections still open after {grace:?}, closing them");
        }
    }
}

fn local_addr(listener: &TcpListener) -> SocketAddr {
    listener
        .local_addr()
        .expect("a bound TCP socket has an address")
}

type Accepted = (usize, std::io::Result<(TcpStream, SocketAddr)>);

/// Accepts on one KME listener and hands the connections to the main loop (as `index`).
/// Stopped by the admin `listener` command, it closes its socket; restarted, it binds the
/// same address again.
async fn accept_loop(
    listener: TcpListener,
    control: Arc<Listener>,
    index: usize,
    accepted: tokio::sync::mpsc::Sender<Accepted>,
) {
    let mut up = control.subscribe();
    let mut listener = Some(listener);
    loop {
        match listener.take() {
            Some(open) => {
                tokio::select! {
                    result = open.accept() => {
                        if accepted.send((index, result)).await.is_err() {
                            return;
                        }
                        listener = Some(open);
                    }
                    // The guard wait_for returns must not live across an await: map it away.
                    stopped = async { up.wait_for(|up| !*up).await.is_ok() } => {
                        if !stopped {
                            return;
                        }
                        drop(open);
                        tracing::info!(kme = %control.kme, addr = %control.addr, "listener stopped (admin)");
                    }
                }
            }
            None => {
                if up.wait_for(|up| *up).await.is_err() {
                    return;
                }
                match TcpListener::bind(control.addr).await {
                    Ok(open) => {
                        tracing::info!(kme = %control.kme, addr = %control.addr, "listener restarted (admin)");
                        listener = Some(open);
                    }
                    Err(err) => {
                        tracing::warn!(kme = %control.kme, addr = %control.addr, error = %err, "cannot listen again, retrying");
                        tokio::time::sleep(REBIND_PAUSE).await;
                    }
                }
            }
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
    let control = listener.control.clone();
    let mut up = control.subscribe();
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
            control.request();
            async move {
                kme.serve(sae.as_deref(), request)
                    .await
                    .ok_or(ServerError::DroppedByFault)
            }
        });
        let connection = http1::Builder::new().serve_connection(TokioIo::new(tls_stream), service);
        // A stopped listener stands for a node that went down: its connections go too.
        tokio::select! {
            result = watcher.watch(connection) => {
                if let Err(err) = result {
                    tracing::debug!(%peer, error = %err, "KME connection ended");
                }
            }
            _ = async { up.wait_for(|up| !*up).await.is_ok() } => {
                tracing::debug!(%peer, "KME connection closed: its listener was stopped");
            }
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
