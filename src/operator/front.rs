//! What runs in front of the operator while this process applies: the
//! bundled proxy on `[proxy] listen` (and `https`), its routes following
//! every pass, and the admin listener with the proxy's and the operator's
//! metrics. `prism daemon` and the dashboard's in-process mode both start
//! it here, so the two serve the same way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::routing::Router;
use super::{Control, FleetMetrics, Operator, ProxyRouter};
use crate::config::{Config, Fleet};
use crate::proxy::{self, Listener, Proxy, Settings, TlsError, TlsUpkeep};
use crate::store::{ProxyTraffic, Writer, now_ms};

/// Makes the router of a fleet.toml for the proxy that serves.
pub(crate) type RouterMaker = Arc<dyn Fn(&Fleet) -> Arc<dyn Router> + Send + Sync>;

/// How often [`Serving::publish_traffic`] writes the proxy's counters.
pub(crate) const TRAFFIC_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum FrontError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Listen {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    /// HTTPS certificates named by fleet.toml could not be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The proxy and admin listeners, bound before anything is served so a
/// port in use stops the process at once.
pub(crate) struct Front {
    proxy: Proxy,
    listener: Listener,
    /// `[proxy] https`.
    https: Option<Listener>,
    /// The task keeping certificates current, for HTTPS and the API.
    upkeep: Option<TlsUpkeep>,
    admin: TcpListener,
    registry: Registry,
    metrics: FleetMetrics,
}

impl Front {
    /// The certificates the proxy serves (for the API's HTTPS).
    pub fn tls(&self) -> &Arc<crate::proxy::Tls> {
        self.proxy.tls()
    }

    pub fn bind(config: &Config) -> Result<Front, FrontError> {
        let mut registry = Registry::default();
        let metrics = FleetMetrics::new(&mut registry);
        let p = &config.fleet.proxy;
        let proxy = Proxy::new(Settings::from_config(p), &mut registry);
        let listener = parse(&p.listen, "proxy")
            .and_then(|addr| proxy.bind(addr).map_err(|e| listen("proxy", addr, e)))?;
        // Certificate files are read before a port is bound: a missing
        // one stops the process with its field named. The API's HTTPS
        // takes its certificate from the same sources.
        let api_tls = config.fleet.api.as_ref().is_some_and(|a| a.host.is_some());
        let upkeep = if p.https.is_some() || api_tls {
            Some(proxy.prepare_tls(config)?)
        } else {
            None
        };
        let https =
            match &p.https {
                Some(addr) => Some(parse(addr, "https").and_then(|addr| {
                    proxy.bind_https(addr).map_err(|e| listen("https", addr, e))
                })?),
                None => None,
            };
        let admin = parse(&p.admin, "admin")
            .and_then(|addr| proxy::bind_admin(addr).map_err(|e| listen("admin", addr, e)))?;
        Ok(Front {
            proxy,
            listener,
            https,
            upkeep,
            admin,
            registry,
            metrics,
        })
    }

    /// Serves every listener until [`Serving::stop`].
    pub fn serve(self) -> Serving {
        let (stop, _) = watch::channel(false);
        tracing::info!(
            listen = %self.listener.local_addr(),
            admin = ?self.admin.local_addr().ok(),
            "proxy serving"
        );
        let mut tasks = Vec::new();
        let mut listeners = vec![("proxy", self.listener)];
        if let Some(https) = self.https {
            tracing::info!(https = %https.local_addr(), "proxy serving HTTPS");
            listeners.push(("https", https));
        }
        if let Some(upkeep) = self.upkeep {
            tasks.push(tokio::spawn(upkeep.run(stopped(stop.subscribe()))));
        }
        for (what, listener) in listeners {
            let proxy = self.proxy.clone();
            let served = stopped(stop.subscribe());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = proxy.serve(listener, served).await {
                    tracing::error!(error = %e, "{what} listener stopped with an error");
                }
            }));
        }
        let admin = tokio::spawn(proxy::serve_admin(
            self.admin,
            Arc::new(self.registry),
            stopped(stop.subscribe()),
        ));
        tasks.push(tokio::spawn(async move {
            if let Ok(Err(e)) = admin.await {
                tracing::error!(error = %e, "admin listener stopped with an error");
            }
        }));
        Serving {
            proxy: self.proxy,
            metrics: self.metrics,
            stop,
            tasks,
        }
    }
}

/// The listeners of a [`Front`], being served.
pub(crate) struct Serving {
    proxy: Proxy,
    metrics: FleetMetrics,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Serving {
    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    /// `operator` with its routes published to this proxy after every pass,
    /// and its containers drained through it before they stop.
    pub fn route(&self, operator: Operator) -> Operator {
        let router = (self.router_maker())(&operator.config.fleet);
        operator.with_router(router)
    }

    /// Makes the router of a fleet.toml for this proxy (a reload's).
    pub(crate) fn router_maker(&self) -> RouterMaker {
        let proxy = self.proxy.clone();
        Arc::new(move |fleet: &Fleet| -> Arc<dyn Router> {
            Arc::new(ProxyRouter::new(proxy.clone(), fleet.clone()))
        })
    }

    /// Records each pass report of `control` into the metrics the admin
    /// listener serves, until aborted.
    pub fn follow(&self, control: Arc<Control>) -> JoinHandle<()> {
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let mut reports = control.reports();
            while reports.changed().await.is_ok() {
                let report = reports.borrow_and_update().clone();
                if let Some(report) = report {
                    metrics.record(&report);
                }
            }
        })
    }

    /// Writes the proxy's request counters into the store every second,
    /// for dashboards attached to this process (they read the store, not
    /// this process's memory). Stops with the listeners.
    pub(crate) fn publish_traffic(&mut self, journal: Writer) {
        let proxy = self.proxy.clone();
        let mut stop = self.stop.subscribe();
        self.tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(TRAFFIC_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                let t = proxy.traffic();
                let traffic = ProxyTraffic {
                    at_ms: now_ms(),
                    requests: t.requests,
                    server_errors: t.server_errors,
                };
                journal.submit("record the proxy's counters", move |s| {
                    s.write_proxy_traffic(&traffic)
                });
            }
        }));
    }

    /// The listener tasks, for a supervisor to watch; `stop` then only
    /// signals them, and the supervisor joins them.
    pub(crate) fn take_tasks(&mut self) -> Vec<JoinHandle<()>> {
        std::mem::take(&mut self.tasks)
    }

    /// Stops accepting, lets open connections finish (up to the proxy's
    /// grace time), and returns when every listener has stopped.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn parse(addr: &str, what: &'static str) -> Result<SocketAddr, FrontError> {
    addr.parse().map_err(|e| FrontError::Listen {
        what,
        addr: addr.to_owned(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    })
}

fn listen(what: &'static str, addr: SocketAddr, source: std::io::Error) -> FrontError {
    FrontError::Listen {
        what,
        addr: addr.to_string(),
        source,
    }
}
