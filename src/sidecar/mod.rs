//! The sidecar: a WebSocket-aware reverse proxy in every backend pod (see the README).
//!
//! - [`proxy`]: the public port: auth ([`auth`]; a warm pod's [`claim`]), readiness gate, header rules ([`headers`],
//!   with [`framing`] for what hyper's parser hides), streaming ([`body`]) and upgrades
//!   ([`splice`]) to the app on 127.0.0.1.
//! - [`state`]: live-connection accounting and readiness ([`readiness`]), published as the event
//!   stream of [`event`] on the admin port ([`admin`]) with health and [`metrics`].
//! - [`Sidecar::run`]: both listeners and the graceful shutdown.

pub mod admin;
pub mod auth;
pub mod body;
pub mod claim;
pub mod config;
pub mod event;
pub mod framing;
pub mod headers;
pub mod metrics;
pub mod proxy;
pub mod readiness;
pub mod session;
pub mod splice;
pub mod state;
pub mod tasks;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to listen on {addr} ({what} port)")]
    Listen {
        addr: SocketAddr,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Auth(#[from] auth::Error),
}

/// The sidecar, listening; [`Sidecar::run`] serves until `shutdown` resolves.
pub struct Sidecar {
    config: Config,
    proxy_listener: TcpListener,
    admin_listener: TcpListener,
    proxy: Arc<proxy::Proxy>,
    admin: Arc<admin::Admin>,
}

impl Sidecar {
    /// Read the token and bind both ports.
    pub async fn bind(config: Config) -> Result<Self, Error> {
        let access = match (&config.token_file, &config.claim_key_file) {
            (Some(token), _) => claim::Access::Token(auth::Auth::from_file(token)?),
            (None, Some(key)) => claim::Access::Claimable(Arc::new(claim::Claim::from_file(key)?)),
            (None, None) => claim::Access::Open,
        };
        let claim = match &access {
            claim::Access::Claimable(claim) => Some(claim.clone()),
            _ => None,
        };
        let bind = |port: u16, what: &'static str| {
            let addr = SocketAddr::new(config.listen_address, port);
            async move { TcpListener::bind(addr).await.map_err(|source| Error::Listen { addr, what, source }) }
        };
        let proxy_listener = bind(config.proxy_port, "proxy").await?;
        let admin_listener = bind(config.admin_port, "admin").await?;
        let tracker = state::Tracker::new();
        let metrics = Arc::new(metrics::Metrics::new());
        let mut client = hyper::client::conn::http1::Builder::new();
        client.max_buf_size(256 * 1024);
        let proxy = Arc::new(proxy::Proxy {
            app: SocketAddr::new(config.app_host, config.app_port),
            tracker: tracker.clone(),
            access,
            metrics: metrics.clone(),
            upstream_timeout: config.upstream_timeout(),
            connect_timeout: config.connect_timeout(),
            client,
            upgraded: tasks::TaskGroup::default(),
            close_upgraded: CancellationToken::new(),
            close_timeout: config.close_timeout(),
        });
        let session = session::Slot::new(config.session.clone());
        let admin = Arc::new(admin::Admin { tracker, metrics, draining: Default::default(), claim, session });
        Ok(Self { config, proxy_listener, admin_listener, proxy, admin })
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_listener.local_addr().expect("bound socket has an address")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener.local_addr().expect("bound socket has an address")
    }

    /// Serve until `shutdown`, then: stop accepting and fail /readyz, let in-flight requests
    /// finish (bounded by the drain timeout), then close upgraded streams properly (bounded by
    /// the close timeout).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self { config, proxy_listener, admin_listener, proxy, admin } = self;
        tokio::spawn(readiness::probe(proxy.app, proxy.tracker.clone()));

        let mut server = http1::Builder::new();
        server
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout())
            .max_header_size(config.max_header_bytes)
            .max_headers(config.max_headers)
            .max_buf_size((config.max_header_bytes * 2).max(64 * 1024));

        let stop_http = CancellationToken::new();
        let http_conns = tasks::TaskGroup::default();
        let stop_admin = CancellationToken::new();
        let admin_conns = tasks::TaskGroup::default();

        let accept_proxy = {
            let proxy = proxy.clone();
            let server = server.clone();
            let stop = stop_http.clone();
            let conns = http_conns.clone();
            let (max_head_bytes, max_headers) = (config.max_header_bytes, config.max_headers);
            tokio::spawn(accept_loop(proxy_listener, stop.clone(), move |tcp, peer| {
                let proxy = proxy.clone();
                let both_lengths = Arc::new(framing::BothLengths::default());
                let client = Arc::new(proxy::ClientConn::new(peer.ip(), both_lengths.clone()));
                let svc = service_fn(move |req| proxy.clone().handle(client.clone(), req));
                let framing = framing::Framing::new(max_head_bytes, max_headers);
                let tcp = framing::Watched::new(tcp, framing, both_lengths);
                let conn = server.serve_connection(TokioIo::new(tcp), svc).with_upgrades();
                let stop = stop.clone();
                conns.spawn(async move {
                    tokio::pin!(conn);
                    let result = tokio::select! {
                        r = conn.as_mut() => r,
                        () = stop.cancelled() => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    };
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "client connection ended with an error");
                    }
                });
            }))
        };
        let accept_admin = {
            let admin = admin.clone();
            let stop = stop_admin.clone();
            let conns = admin_conns.clone();
            tokio::spawn(accept_loop(admin_listener, stop.clone(), move |tcp, peer| {
                let admin = admin.clone();
                let svc = service_fn(move |req| admin.clone().handle(req, peer));
                let conn = server.serve_connection(TokioIo::new(tcp), svc);
                let stop = stop.clone();
                conns.spawn(async move {
                    tokio::select! {
                        _ = conn => {}
                        () = stop.cancelled() => {}
                    }
                });
            }))
        };

        shutdown.await;
        tracing::info!(
            requests = http_conns.len(),
            upgraded = proxy.upgraded.len(),
            "shutting down: no new connections, draining"
        );
        admin.draining.store(true, Ordering::Relaxed);
        stop_http.cancel();
        let _ = accept_proxy.await;
        if !http_conns.wait(config.drain_timeout()).await {
            tracing::warn!(left = http_conns.len(), "drain timeout: cutting in-flight requests");
        }
        proxy.close_upgraded.cancel();
        // Each stream bounds its own close handshake; the extra second covers scheduling.
        let bound = config.close_timeout() * 3 + std::time::Duration::from_secs(1);
        if !proxy.upgraded.wait(bound).await {
            tracing::warn!(left = proxy.upgraded.len(), "upgraded streams did not close in time");
        }
        stop_admin.cancel();
        let _ = accept_admin.await;
        tracing::info!("stopped");
    }
}

async fn accept_loop(
    listener: TcpListener,
    stop: CancellationToken,
    mut serve: impl FnMut(tokio::net::TcpStream, SocketAddr),
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    serve(tcp, peer);
                }
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning; the listener stays open.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        }
    }
}
