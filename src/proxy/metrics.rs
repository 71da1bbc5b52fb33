//! The proxy's Prometheus metrics: requests by host and status, latency per
//! host, open connections, and each instance's health read at scrape time
//! from the table being served.
//!
//! The `host` label is the route's `hosts` entry as written in fleet.toml
//! (or `unknown`), never the Host header, so a client cannot grow the
//! number of series.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::backends::{BackendState, Snapshot};
use super::tls::Tls;

/// The `host` label of requests that matched no route.
pub const UNKNOWN_HOST: &str = "unknown";

/// Seconds to the response head: 1 ms to 30 s.
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    host: Arc<String>,
    code: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabels {
    host: Arc<String>,
}

type Latency = Family<HostLabels, Histogram, fn() -> Histogram>;

/// The proxy's metric handles; cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    latency: Latency,
    pub connections: Gauge,
    pub swaps: Counter,
    pub tls_handshake_failures: Counter,
    unknown: RouteMetrics,
    totals: Arc<Totals>,
}

/// Requests answered so far, over every host: what the dashboard's header
/// turns into rates. Two atomics beside the families, because summing a
/// family means locking it.
#[derive(Debug, Default)]
struct Totals {
    requests: AtomicU64,
    server_errors: AtomicU64,
}

/// The proxy's request counters at one moment (see [`super::Proxy::traffic`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Requests answered, whatever the status.
    pub requests: u64,
    /// Of those, answered with a 5xx status: the app's own, or the proxy's
    /// 502/503/504 when no instance could answer.
    pub server_errors: u64,
}

/// Status codes whose counters a route keeps at hand, so counting one
/// needs no lookup in the family (a lock and a hash).
const COMMON_CODES: [u16; 12] = [200, 101, 204, 301, 302, 304, 400, 404, 413, 502, 503, 504];

/// One host's handles, looked up once per table rather than per request.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    host: Arc<String>,
    requests: Family<RequestLabels, Counter>,
    /// Made on first use, so only codes that occurred have a series.
    common: Arc<[OnceLock<Counter>; COMMON_CODES.len()]>,
    latency: Histogram,
    totals: Arc<Totals>,
}

impl RouteMetrics {
    pub fn record(&self, code: u16, elapsed: Duration) {
        let labels = || RequestLabels {
            host: Arc::clone(&self.host),
            code,
        };
        match COMMON_CODES.iter().position(|c| *c == code) {
            Some(i) => self.common[i]
                .get_or_init(|| self.requests.get_or_create(&labels()).clone())
                .inc(),
            None => self.requests.get_or_create(&labels()).inc(),
        };
        self.latency.observe(elapsed.as_secs_f64());
        self.totals.requests.fetch_add(1, Ordering::Relaxed);
        if code >= 500 {
            self.totals.server_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Metrics {
    /// Registers the proxy's metrics under `prism_proxy_` in `registry`.
    pub fn new(registry: &mut Registry) -> Metrics {
        let sub = registry.sub_registry_with_prefix("prism_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: Latency = Family::new_with_constructor(|| Histogram::new(BUCKETS));
        let connections = Gauge::default();
        let swaps = Counter::default();
        sub.register(
            "requests",
            "Requests answered, by route host and status code",
            requests.clone(),
        );
        sub.register(
            "request_duration_seconds",
            "Time from a request's arrival to its response head, by route host",
            latency.clone(),
        );
        sub.register(
            "connections",
            "Client connections open",
            connections.clone(),
        );
        sub.register("route_swaps", "Route tables published", swaps.clone());
        let tls_handshake_failures = Counter::default();
        sub.register(
            "tls_handshake_failures",
            "TLS handshakes that failed or timed out (unknown SNI, no common protocol, not TLS)",
            tls_handshake_failures.clone(),
        );
        let totals = Arc::new(Totals::default());
        let unknown = route_metrics(&requests, &latency, &totals, UNKNOWN_HOST);
        Metrics {
            requests,
            latency,
            connections,
            swaps,
            tls_handshake_failures,
            unknown,
            totals,
        }
    }

    pub fn route(&self, host: &str) -> RouteMetrics {
        route_metrics(&self.requests, &self.latency, &self.totals, host)
    }

    /// The request counters now; two relaxed loads, so a request counted
    /// between them may show in one and not yet the other.
    pub fn traffic(&self) -> Traffic {
        Traffic {
            requests: self.totals.requests.load(Ordering::Relaxed),
            server_errors: self.totals.server_errors.load(Ordering::Relaxed),
        }
    }

    pub fn unknown(&self) -> &RouteMetrics {
        &self.unknown
    }
}

fn route_metrics(
    requests: &Family<RequestLabels, Counter>,
    latency: &Latency,
    totals: &Arc<Totals>,
    host: &str,
) -> RouteMetrics {
    let host = Arc::new(host.to_owned());
    let latency = latency
        .get_or_create(&HostLabels {
            host: Arc::clone(&host),
        })
        .clone();
    RouteMetrics {
        host,
        requests: requests.clone(),
        common: Arc::new(std::array::from_fn(|_| OnceLock::new())),
        latency,
        totals: Arc::clone(totals),
    }
}

/// Each instance in the table being served, read at scrape time.
#[derive(Debug)]
pub struct UpstreamCollector(pub Arc<ArcSwap<Snapshot>>);

#[derive(Debug, Clone, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    app: String,
    service: String,
    instance: u32,
    node: String,
    endpoint: String,
}

/// A gauge's value for one instance and its health in the table.
type GaugeOf = fn(&BackendState, bool) -> i64;

impl Collector for UpstreamCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.0.load();
        // An instance behind several hosts is listed once.
        let mut rows = Vec::new();
        for route in &snapshot.routes {
            for b in &route.backends {
                if rows.iter().any(|(s, _)| Arc::ptr_eq(s, &b.state)) {
                    continue;
                }
                rows.push((Arc::clone(&b.state), b.healthy));
            }
        }
        let labels = |s: &BackendState| UpstreamLabels {
            app: s.upstream.app.clone(),
            service: s.upstream.service.clone(),
            instance: s.upstream.instance,
            node: s.upstream.node.clone(),
            endpoint: s.endpoint.clone(),
        };
        let gauges: [(&str, &str, GaugeOf); 3] = [
            (
                "prism_proxy_upstream_healthy",
                "1 when the operator reports the instance healthy",
                |_, healthy| i64::from(healthy),
            ),
            (
                "prism_proxy_upstream_available",
                "1 when the instance takes new requests: healthy, not marked down after a failed connect, not draining",
                |s, healthy| i64::from(healthy && !s.is_down() && !s.is_draining()),
            ),
            (
                "prism_proxy_upstream_in_flight",
                "Requests in flight to the instance",
                |s, _| i64::try_from(s.in_flight()).unwrap_or(i64::MAX),
            ),
        ];
        for (name, help, value) in gauges {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (state, healthy) in &rows {
                let l = labels(state);
                ConstGauge::new(value(state, *healthy)).encode(metric.encode_family(&l)?)?;
            }
        }
        let mut metric = encoder.encode_descriptor(
            "prism_proxy_upstream_connect_failures",
            "Failed connections to the instance",
            None,
            MetricType::Counter,
        )?;
        for (state, _) in &rows {
            let l = labels(state);
            ConstCounter::new(state.connect_failures()).encode(metric.encode_family(&l)?)?;
        }
        Ok(())
    }
}

/// The certificates being served, read at scrape time: alert on an expiry
/// that comes near (a renewal that keeps failing, a file not replaced).
#[derive(Debug)]
pub struct TlsCollector(pub Arc<Tls>);

#[derive(Debug, Clone, PartialEq, Eq, EncodeLabelSet)]
struct CertLabels {
    /// A name from a certificate (or an ACME host), never from a client.
    name: String,
    source: &'static str,
}

impl Collector for TlsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(
            "prism_proxy_certificate_expiry_timestamp_seconds",
            "When the certificate served for a name expires (Unix time), by name and source (file or acme)",
            None,
            MetricType::Gauge,
        )?;
        for (name, source, not_after) in self.0.expiries() {
            let secs = not_after
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            ConstGauge::new(secs).encode(metric.encode_family(&CertLabels { name, source })?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_counts_every_host_and_5xx_apart() {
        let metrics = Metrics::new(&mut Registry::default());
        let (a, b) = (metrics.route("a.test"), metrics.route("b.test"));
        let ms = Duration::from_millis(1);
        a.record(200, ms);
        a.record(503, ms);
        b.record(599, ms);
        b.record(404, ms);
        metrics.unknown().record(502, ms);
        assert_eq!(
            metrics.traffic(),
            Traffic {
                requests: 5,
                server_errors: 3
            }
        );
    }
}
