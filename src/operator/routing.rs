//! From a pass to the proxy: the route table of what the nodes run
//! ([`routes`], pure), and the [`Router`] hook through which apply takes a
//! container out of rotation before stopping it.
//!
//! A deploy without downtime is then: a pass sees the new container healthy
//! and publishes routes to it; the same pass plans the old one's removal,
//! and apply drains it first (no new requests, those in flight finish, up
//! to `[proxy] drain_timeout`), then stops it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;

use super::Planned;
use crate::config::Fleet;
use crate::observe::{ContainerId, ContainerState, Health, Protocol, RunState};
use crate::proxy::{Proxy, RouteTable, Upstream, endpoint};
use crate::reconcile::NodeView;

/// What the proxy should serve after a pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Routes {
    pub table: RouteTable,
    /// The endpoint (`address:port`) of every container listed, and of
    /// those that lost their route, to drain it by container.
    pub endpoints: HashMap<ContainerId, String>,
}

/// The route table for what the nodes run: each service's `hosts` to the
/// node address and published port of each of its running containers on a
/// node that keeps its pods or is draining (not lost, not untrusted).
/// Such a container is healthy to the proxy when it passes its health
/// check, or has none; others are listed but get no requests. Running
/// containers whose app or hosts are no longer in fleet.toml get no route
/// but keep an endpoint: they are drained before they stop, like the rest.
pub fn routes(
    fleet: &Fleet,
    views: &[NodeView],
    observed: &BTreeMap<String, Vec<ContainerState>>,
) -> Routes {
    let mut upstreams = Vec::new();
    let mut endpoints = HashMap::new();
    for view in views {
        if !view.serves() {
            continue;
        }
        for c in observed.get(&view.id).into_iter().flatten() {
            let Some(labels) = c.identity.prism() else {
                continue;
            };
            if labels.fleet != fleet.fleet.name || c.state != RunState::Running {
                continue;
            }
            let service = fleet
                .apps
                .get(&labels.app)
                .and_then(|a| a.services.get(&labels.service))
                .filter(|s| !s.hosts.is_empty());
            let Some(service) = service else {
                // Its app or hosts left fleet.toml: no route, but it may
                // have been routed to until now, so a drain must find it.
                if let Some(port) = host_port(c, None) {
                    endpoints.insert(c.id.clone(), endpoint(&view.address, port));
                }
                continue;
            };
            // On a mesh, the container's own address and port; else the
            // node's, at the port it is published on.
            let reach = match (c.mesh_ip, service.port) {
                (Some(ip), Some(port)) => Some((ip.to_string(), port)),
                _ => host_port(c, service.port).map(|p| (view.address.clone(), p)),
            };
            let Some((address, port)) = reach else {
                continue;
            };
            let upstream = Upstream {
                app: labels.app.clone(),
                service: labels.service.clone(),
                instance: labels.instance,
                node: view.id.clone(),
                address,
                port,
                healthy: matches!(c.health, Health::Healthy | Health::None),
            };
            endpoints.insert(c.id.clone(), upstream.endpoint());
            upstreams.push(upstream);
        }
    }
    Routes {
        table: RouteTable::build(fleet, &upstreams),
        endpoints,
    }
}

/// The node port a container's service port is published on. A container
/// made from an older spec may publish another port than fleet.toml says
/// now; Prism publishes one port per container, so that one is taken.
fn host_port(c: &ContainerState, port: Option<u16>) -> Option<u16> {
    // Port 0 is Docker's "exposed but not published": nothing to reach.
    let tcp = || {
        c.ports
            .iter()
            .filter(|p| p.protocol == Protocol::Tcp && p.host_port != 0)
    };
    if let Some(p) = port.and_then(|port| tcp().find(|p| p.container_port == port)) {
        return Some(p.host_port);
    }
    let first = tcp().next()?;
    tcp()
        .all(|p| p.container_port == first.container_port)
        .then_some(first.host_port)
}

/// What apply tells the routing side. The daemon gives one backed by the
/// proxy; `reconcile --once` runs without.
pub trait Router: Send + Sync {
    /// Routes to what a pass observed; called once per pass, before any
    /// of its actions.
    fn publish(&self, planned: &Planned);

    /// Called before a container is stopped: no new requests go to it,
    /// and those in flight may finish (up to the drain timeout).
    fn drain<'a>(&'a self, container: &'a ContainerId) -> BoxFuture<'a, ()>;
}

/// A [`Router`] that feeds the bundled proxy.
pub(crate) struct ProxyRouter {
    proxy: Proxy,
    fleet: Fleet,
    /// Endpoints of the containers in the table last published.
    endpoints: Mutex<HashMap<ContainerId, String>>,
}

impl ProxyRouter {
    pub fn new(proxy: Proxy, fleet: Fleet) -> ProxyRouter {
        ProxyRouter {
            proxy,
            fleet,
            endpoints: Mutex::new(HashMap::new()),
        }
    }
}

/// A request that chose an instance just as its drain began is counted a
/// moment later; a second look after this catches it.
const STRAGGLER: Duration = Duration::from_millis(20);

impl Router for ProxyRouter {
    fn publish(&self, planned: &Planned) {
        let routes = routes(&self.fleet, &planned.views, &planned.observed);
        *self.endpoints.lock().unwrap_or_else(|p| p.into_inner()) = routes.endpoints;
        if routes.table != self.proxy.table() {
            let healthy = routes
                .table
                .routes()
                .iter()
                .map(|r| r.upstreams.iter().filter(|u| u.healthy).count())
                .sum::<usize>();
            tracing::info!(
                routes = routes.table.routes().len(),
                healthy_upstreams = healthy,
                "proxy: routes published"
            );
            self.proxy.publish(routes.table);
        }
    }

    fn drain<'a>(&'a self, container: &'a ContainerId) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let endpoint = self
                .endpoints
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(container)
                .cloned();
            let Some(endpoint) = endpoint else {
                return;
            };
            let first = self.proxy.drain(&endpoint, None).await;
            if !first.known {
                return;
            }
            let report = if first.finished {
                tokio::time::sleep(STRAGGLER).await;
                let left = self
                    .proxy
                    .drain(&endpoint, Some(Duration::from_secs(1)))
                    .await;
                crate::proxy::DrainReport {
                    waited: first.waited + STRAGGLER + left.waited,
                    ..left
                }
            } else {
                first
            };
            let waited_ms = u64::try_from(report.waited.as_millis()).unwrap_or(u64::MAX);
            if report.finished {
                tracing::info!(endpoint, waited_ms, "proxy: drained");
            } else {
                tracing::warn!(
                    endpoint,
                    waited_ms,
                    in_flight = report.in_flight_left,
                    "proxy: drain timed out; stopping with requests in flight"
                );
            }
        })
    }
}

#[cfg(test)]
mod tests;
