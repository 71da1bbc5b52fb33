//! The bundled reverse proxy: routes requests by Host (and path prefix) to
//! the healthy instances of each service, wherever they run.
//!
//! The operator embeds it: it builds a [`RouteTable`] from fleet.toml and
//! the instances it placed ([`RouteTable::build`]), [`Proxy::publish`]es it
//! whenever placements or health change, and [`Proxy::drain`]s an instance
//! before stopping it. A published table replaces the old one in one atomic
//! step; requests already running keep the table they started with.
//!
//! ```text
//! routes.rs   the table: hosts and prefixes to instances (pure)
//! backends.rs per-instance state across swaps, balancing, draining
//! forward.rs  one request: headers, retry, upgrade, streaming
//! pool.rs     keep-alive connections to instances, per worker thread
//! server.rs   accepting, limits per connection, graceful stop
//! headers.rs  hop-by-hop, X-Forwarded-*, request ids
//! body.rs     response bodies and the proxy's own pages
//! limits.rs   settings from [proxy]
//! metrics.rs  Prometheus metrics;  admin.rs  /healthz and /metrics
//! shards.rs   counts kept per worker thread, so no two cores write one line
//! tls.rs      certificates by SNI (files, ACME), pending ACME answers
//! alpn.rs     TLS-ALPN-01 challenge certificates and handshakes
//! acme.rs     obtaining, storing and renewing certificates over ACME
//! ```

mod acme;
mod admin;
mod alpn;
mod backends;
mod body;
mod forward;
mod headers;
mod limits;
mod metrics;
mod pool;
mod routes;
mod server;
mod shards;
mod tls;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;

use crate::config::Config;

pub use acme::{Acme, AcmeSettings, Obtained};
pub use admin::{bind as bind_admin, serve as serve_admin};
pub(crate) use backends::DrainReport;
pub(crate) use forward::chain;
pub use limits::Settings;
pub(crate) use metrics::Traffic;
pub use routes::{RouteTable, Upstream, endpoint};
pub use server::Listener;
pub(crate) use server::bind_one;
pub use tls::{CertInfo, Loaded, Tls, TlsError, acme_hosts, cert_info, provider};

use backends::Snapshot;
use forward::Shared;
use metrics::{Metrics, TlsCollector, UpstreamCollector};

/// Keeps the proxy's certificates current (see [`Proxy::prepare_tls`]).
pub struct TlsUpkeep {
    tls: Arc<Tls>,
    acme: Option<(Arc<Acme>, Vec<String>)>,
    /// How often certificate files are checked for changes.
    pub check_files: Duration,
}

impl TlsUpkeep {
    /// The hosts ACME keeps certificates for.
    pub fn acme_hosts(&self) -> &[String] {
        self.acme
            .as_ref()
            .map_or(&[], |(_, hosts)| hosts.as_slice())
    }

    /// Runs until `shutdown` resolves. An ACME order cut short by it is
    /// simply made again at the next start.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let files = async {
            loop {
                tokio::time::sleep(self.check_files).await;
                let (changed, errors) = self.tls.reload_changed_files();
                if changed > 0 {
                    tracing::info!(changed, "proxy: certificate files read again");
                }
                for e in errors {
                    tracing::warn!(error = %e, "proxy: certificate file not reloaded; the old one keeps serving");
                }
            }
        };
        let acme = async {
            match &self.acme {
                Some((acme, hosts)) if !hosts.is_empty() => {
                    Arc::clone(acme)
                        .run(hosts.clone(), std::future::pending())
                        .await
                }
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown => {}
            _ = files => {}
            _ = acme => {}
        }
    }
}

/// A handle on the proxy; clones share one proxy.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    /// Instance states by endpoint; locked only to publish and to drain.
    registry: Arc<Mutex<backends::Registry>>,
}

impl Proxy {
    /// A proxy with an empty table (every host is unknown until the first
    /// publish). Its metrics go into `metrics`, which the operator serves
    /// with [`serve_admin`].
    pub fn new(settings: Settings, metrics: &mut Registry) -> Proxy {
        let routes = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
        let tls = Arc::new(Tls::new());
        metrics.register_collector(Box::new(UpstreamCollector(Arc::clone(&routes))));
        metrics.register_collector(Box::new(TlsCollector(Arc::clone(&tls))));
        let parts = shards::parts(settings.workers);
        let metrics = Metrics::new(metrics, parts);
        Proxy {
            shared: Arc::new(Shared {
                routes,
                settings,
                metrics,
                tls,
            }),
            registry: Arc::new(Mutex::new(backends::Registry::new(parts))),
        }
    }

    /// Serves from `table` from now on.
    pub fn publish(&self, table: RouteTable) {
        for conflict in table.conflicts() {
            tracing::warn!("proxy: {conflict}");
        }
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let snapshot = registry.snapshot(table, &self.shared.metrics);
        self.shared.routes.store(Arc::new(snapshot));
        self.shared.metrics.swaps.inc();
    }

    /// Requests answered so far, and how many with a 5xx status: cheap
    /// enough to read every second, and never in a request's way.
    pub fn traffic(&self) -> Traffic {
        self.shared.metrics.traffic()
    }

    /// The table being served.
    pub fn table(&self) -> RouteTable {
        self.shared.routes.load().table.clone()
    }

    /// Stops sending new requests to the instance at `endpoint`
    /// (`address:port`, see [`Upstream::endpoint`]) and waits until its
    /// requests in flight finish, or `timeout` (default `[proxy]
    /// drain_timeout`) passes. An open WebSocket (or other upgraded
    /// connection) counts as in flight until it closes. The instance stays
    /// out of rotation for as long as tables list it; publish one without
    /// it once it is stopped. One that a table already left (its app
    /// removed) is still found while requests run to it.
    pub async fn drain(&self, endpoint: &str, timeout: Option<Duration>) -> DrainReport {
        let timeout = timeout.unwrap_or(self.shared.settings.drain_timeout);
        let state = self
            .registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(endpoint);
        match state {
            Some(state) => state.drain(timeout).await,
            None => DrainReport {
                endpoint: endpoint.to_owned(),
                known: false,
                finished: true,
                in_flight_left: 0,
                waited: Duration::ZERO,
            },
        }
    }

    /// Requests in flight to the instance at `endpoint`, if the proxy
    /// knows it.
    pub fn in_flight(&self, endpoint: &str) -> Option<usize> {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(endpoint)
            .map(|s| s.in_flight())
    }

    /// Binds the proxy's listening sockets on `addr`, one per worker
    /// thread (`[proxy] workers`).
    pub fn bind(&self, addr: SocketAddr) -> io::Result<Listener> {
        server::bind(addr, self.shared.settings.workers)
    }

    /// Binds an HTTPS listener on `addr` (`[proxy] https`): as
    /// [`Proxy::bind`], with TLS on every connection, its certificates
    /// from [`Proxy::tls`].
    pub fn bind_https(&self, addr: SocketAddr) -> io::Result<Listener> {
        let config = self.shared.tls.server_config().map_err(io::Error::other)?;
        Ok(server::bind(addr, self.shared.settings.workers)?.with_tls(config))
    }

    /// The certificates served on HTTPS listeners; load files into it
    /// ([`Tls::load_files`]) and hand it to [`Acme`].
    pub fn tls(&self) -> &Arc<Tls> {
        &self.shared.tls
    }

    /// HTTPS from fleet.toml: reads `[[proxy.certificates]]` into
    /// [`Proxy::tls`] now (an error names the field and the file), and
    /// returns the work that keeps certificates current, to run until
    /// shutdown: changed files read again every minute, and with
    /// `[proxy.acme]` a certificate for every app host no file serves.
    pub fn prepare_tls(&self, config: &Config) -> Result<TlsUpkeep, TlsError> {
        let tls = Arc::clone(&self.shared.tls);
        tls.load_files(config)?;
        let acme = AcmeSettings::from_config(config).map(|settings| {
            let hosts = acme_hosts(config, |h| tls.files_cover(h));
            (Arc::new(Acme::new(settings, Arc::clone(&tls))), hosts)
        });
        Ok(TlsUpkeep {
            tls,
            acme,
            check_files: Duration::from_secs(60),
        })
    }

    /// Serves clients on `listener` with worker threads of its own until
    /// `shutdown` resolves, then lets open connections finish (up to the
    /// grace time) and returns. Upgraded connections (WebSocket) end with
    /// it.
    pub async fn serve(
        &self,
        listener: Listener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        server::serve(Arc::clone(&self.shared), listener, shutdown).await
    }
}
