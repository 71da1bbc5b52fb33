//! The proxy's Prometheus metrics: requests by host and status, latency per
//! host, open connections, and each instance's health read at scrape time
//! from the table being served.
//!
//! The `host` label is the route's `hosts` entry as written in fleet.toml
//! (or `unknown`), never the Host header, so a client cannot grow the
//! number of series.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;

use super::backends::{BackendState, Snapshot};
use super::shards::Shards;
use super::tls::Tls;

/// The `host` label of requests that matched no route.
pub(crate) const UNKNOWN_HOST: &str = "unknown";

/// Upper bounds of the latency buckets, in seconds to the response head:
/// 1 ms to 30 s (and +Inf after).
const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The same bounds in microseconds, which a request's time is compared to.
const BUCKET_MICROS: [u64; BUCKETS.len()] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000, 30_000_000,
];

/// Status codes counted in a worker's own part; others (rare) go to one
/// map per host under a lock.
const COMMON_CODES: [u16; 20] = [
    200, 101, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 405, 413, 429, 500, 502, 503,
    504,
];

/// The proxy's metric handles; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    hosts: Arc<Mutex<Hosts>>,
    pub connections: Gauge,
    pub swaps: Counter,
    pub tls_handshake_failures: Counter,
    unknown: RouteMetrics,
}

/// Every host's counts so far, by its label. A host removed from
/// fleet.toml keeps its series: counters never go back.
#[derive(Debug)]
struct Hosts {
    /// Parts per host: one per worker number (see [`Shards`]).
    parts: usize,
    by_label: BTreeMap<String, RouteMetrics>,
}

impl Hosts {
    fn get(&mut self, host: &str) -> RouteMetrics {
        let parts = self.parts;
        let counts = self.by_label.entry(host.to_owned()).or_insert_with(|| {
            Arc::new(HostCounts {
                parts: Shards::new(parts, Part::default),
                rare: Mutex::default(),
            })
        });
        Arc::clone(counts)
    }
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

/// One host's counts: what a route (or the unknown host) records into.
pub(crate) type RouteMetrics = Arc<HostCounts>;

/// One host's requests by status and latency, a part per worker (see
/// [`Shards`]): every request counts on its own worker's lines only.
#[derive(Debug)]
pub(crate) struct HostCounts {
    parts: Shards<Part>,
    /// Codes not in [`COMMON_CODES`].
    rare: Mutex<HashMap<u16, u64>>,
}

/// One worker's counts for one host.
#[derive(Debug, Default)]
struct Part {
    /// By [`COMMON_CODES`] index.
    codes: [AtomicU64; COMMON_CODES.len()],
    /// Requests by latency bucket, not cumulative; the last is +Inf. Every
    /// request lands in one, so they also add up to the request count.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    /// The requests' latencies added up, in microseconds: a part wraps
    /// after 584,000 years of them.
    micros: AtomicU64,
}

impl HostCounts {
    /// Counts a request answered with `code` after `elapsed`, on
    /// `worker`'s part.
    pub fn record(&self, worker: usize, code: u16, elapsed: Duration) {
        let part = self.parts.get(worker);
        match COMMON_CODES.iter().position(|c| *c == code) {
            Some(i) => {
                part.codes[i].fetch_add(1, Ordering::Relaxed);
            }
            None => {
                let mut rare = self.rare.lock().unwrap_or_else(|p| p.into_inner());
                *rare.entry(code).or_default() += 1;
            }
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        // `le` buckets: the first whose bound is not below the time.
        let bucket = BUCKET_MICROS.partition_point(|&bound| bound < micros);
        part.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        part.micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Requests by status code, every worker's parts added up.
    fn by_code(&self) -> BTreeMap<u16, u64> {
        let mut codes: BTreeMap<u16, u64> = self
            .rare
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(c, n)| (*c, *n))
            .collect();
        for part in self.parts.iter() {
            for (code, n) in COMMON_CODES.iter().zip(&part.codes) {
                match n.load(Ordering::Relaxed) {
                    0 => {}
                    n => *codes.entry(*code).or_default() += n,
                }
            }
        }
        codes
    }

    /// Requests by latency bucket, and the latencies' sum in seconds.
    fn latency(&self) -> ([u64; BUCKETS.len() + 1], f64) {
        let mut buckets = [0; BUCKETS.len() + 1];
        let mut micros = 0u128;
        for part in self.parts.iter() {
            for (total, n) in buckets.iter_mut().zip(&part.buckets) {
                *total += n.load(Ordering::Relaxed);
            }
            micros += u128::from(part.micros.load(Ordering::Relaxed));
        }
        #[allow(clippy::cast_precision_loss)] // Seconds for a scrape.
        (buckets, micros as f64 / 1e6)
    }
}

impl Metrics {
    /// Registers the proxy's metrics under `prism_proxy_` in `registry`,
    /// with request counts kept in `parts` parts (see [`Shards`]).
    pub fn new(registry: &mut Registry, parts: usize) -> Metrics {
        let mut hosts = Hosts {
            parts,
            by_label: BTreeMap::new(),
        };
        let unknown = hosts.get(UNKNOWN_HOST);
        let hosts = Arc::new(Mutex::new(hosts));
        registry.register_collector(Box::new(RequestCollector(Arc::clone(&hosts))));
        let sub = registry.sub_registry_with_prefix("prism_proxy");
        let connections = Gauge::default();
        let swaps = Counter::default();
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
        Metrics {
            hosts,
            connections,
            swaps,
            tls_handshake_failures,
            unknown,
        }
    }

    /// The counts of requests to the route whose `hosts` entry is `host`.
    pub fn route(&self, host: &str) -> RouteMetrics {
        self.hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
    }

    /// The request counters now, every host and worker added up. Parts
    /// are read one after another, so a request counted meanwhile may show
    /// in one figure and not yet the other.
    pub fn traffic(&self) -> Traffic {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        let mut traffic = Traffic::default();
        for counts in hosts.by_label.values() {
            for (code, n) in counts.by_code() {
                traffic.requests += n;
                if code >= 500 {
                    traffic.server_errors += n;
                }
            }
        }
        traffic
    }

    pub fn unknown(&self) -> &RouteMetrics {
        &self.unknown
    }
}

/// Requests by host and status, and latency by host, read at scrape time.
#[derive(Debug)]
struct RequestCollector(Arc<Mutex<Hosts>>);

impl Collector for RequestCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let hosts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut metric = encoder.encode_descriptor(
            "prism_proxy_requests",
            "Requests answered, by route host and status code",
            None,
            MetricType::Counter,
        )?;
        for (host, counts) in &hosts.by_label {
            for (code, n) in counts.by_code() {
                let labels = ([("host", host.as_str())], [("code", code)]);
                ConstCounter::new(n).encode(metric.encode_family(&labels)?)?;
            }
        }
        let mut metric = encoder.encode_descriptor(
            "prism_proxy_request_duration_seconds",
            "Time from a request's arrival to its response head, by route host",
            None,
            MetricType::Histogram,
        )?;
        for (host, counts) in &hosts.by_label {
            let (buckets, sum) = counts.latency();
            let count = buckets.iter().sum();
            let bounds = BUCKETS.iter().copied().chain([f64::INFINITY]);
            let buckets: Vec<(f64, u64)> = bounds.zip(buckets).collect();
            metric
                .encode_family(&[("host", host.as_str())])?
                .encode_histogram(
                    sum,
                    count,
                    &buckets,
                    None::<&HashMap<usize, Exemplar<NoLabelSet, f64>>>,
                )?;
        }
        Ok(())
    }
}

/// Each instance in the table being served, read at scrape time.
#[derive(Debug)]
pub(crate) struct UpstreamCollector(pub Arc<ArcSwap<Snapshot>>);

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
pub(crate) struct TlsCollector(pub Arc<Tls>);

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
        let metrics = Metrics::new(&mut Registry::default(), 2);
        let (a, b) = (metrics.route("a.test"), metrics.route("b.test"));
        let ms = Duration::from_millis(1);
        a.record(0, 200, ms);
        a.record(1, 503, ms);
        b.record(1, 599, ms);
        b.record(0, 404, ms);
        metrics.unknown().record(0, 502, ms);
        assert_eq!(
            metrics.traffic(),
            Traffic {
                requests: 5,
                server_errors: 3
            }
        );
    }

    #[test]
    fn scrapes_add_up_every_workers_part() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry, 2);
        let a = metrics.route("a.test");
        // The same host again (a later table) shares its counts.
        let again = metrics.route("a.test");
        a.record(0, 200, Duration::from_micros(500));
        again.record(1, 200, Duration::from_millis(3));
        a.record(3, 418, Duration::from_secs(60));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "prism_proxy_requests_total{host=\"a.test\",code=\"200\"} 2",
            "prism_proxy_requests_total{host=\"a.test\",code=\"418\"} 1",
            "prism_proxy_request_duration_seconds_count{host=\"a.test\"} 3",
            "prism_proxy_request_duration_seconds_sum{host=\"a.test\"} 60.0035",
            "prism_proxy_request_duration_seconds_bucket{le=\"0.001\",host=\"a.test\"} 1",
            "prism_proxy_request_duration_seconds_bucket{le=\"0.005\",host=\"a.test\"} 2",
            "prism_proxy_request_duration_seconds_bucket{le=\"30.0\",host=\"a.test\"} 2",
            "prism_proxy_request_duration_seconds_bucket{le=\"+Inf\",host=\"a.test\"} 3",
            // Known hosts have a histogram before their first request.
            "prism_proxy_request_duration_seconds_count{host=\"unknown\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
        assert!(!text.contains("code=\"404\""), "{text}");
    }
}
