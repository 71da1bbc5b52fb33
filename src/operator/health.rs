//! Prism's own health checks of the containers whose service declares
//! `health` in fleet.toml, and the verdicts they add up to.
//!
//! - [`check`] runs one check of one container: `http` (a GET from the
//!   operator to the node's published port), `tcp` (a connect to it) or
//!   `cmd` (`docker exec` over SSH).
//! - [`check_all`] checks every running container that is due, counts
//!   the results in the applier's [`HealthBook`] (thresholds and start
//!   period: [`crate::store::Tally::after`]), writes them through to the
//!   store and returns the verdicts, for the caller to write over the
//!   observed `health` before planning.
//!
//! After Prism restarts a container, its count starts over
//! ([`HealthBook::reset`]); a container Docker restarted is noticed by its
//! new start time.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use http_body_util::Empty;
use hyper::Request;
use hyper::header::{CONNECTION, HOST, USER_AGENT};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::Observed;
use crate::cloud::Node;
use crate::config::{Fleet, Service};
use crate::observe::{
    ContainerId, ContainerState, Health, PrismLabels, Probed, Protocol, RunState,
};
use crate::ssh::{ExecLimits, Pool, SshError};
use crate::store::{
    CheckOutcome, Checked, HealthBook, Level, NewEvent, Recorded, Thresholds, Verdict, Writer,
    now_ms,
};
use tokio_util::task::AbortOnDropHandle;

/// Checks run at once. Each waits on the network (or on one SSH channel
/// of an already open connection), so this is well above the core count.
const PARALLEL: usize = 64;
/// Output kept of a `cmd` check: enough for its last line.
const CMD_OUTPUT: usize = 4096;
/// Longest detail kept.
const DETAIL_MAX: usize = 200;

/// What one check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub passed: bool,
    /// Short, for the record and the dashboard: `GET /up: 200`,
    /// `GET /up: connect 172.31.250.10:32768: Connection refused …`.
    pub detail: String,
}

impl CheckResult {
    fn pass(detail: String) -> CheckResult {
        CheckResult {
            passed: true,
            detail: clip(detail),
        }
    }

    fn fail(detail: String) -> CheckResult {
        CheckResult {
            passed: false,
            detail: clip(detail),
        }
    }
}

/// Runs the health check `service` declares once against `container` on
/// `node`, within the check's timeout:
///
/// - `http = PATH`: `GET PATH` on the node's address at the host port the
///   container's `health.port` (default: the service's `port`) is
///   published on; 2xx and 3xx pass. Host header: the service's first
///   plain host name, else the address and port.
/// - `tcp = PORT`: a TCP connect to the host port of container port PORT.
/// - `cmd = [...]`: `docker exec <id> <cmd…>` over SSH; exit 0 passes. A
///   command that times out is abandoned by the client, not killed inside
///   the container.
///
/// A container that is not running, a port that is not published, and a
/// service without a check all fail, saying so.
pub async fn check(
    pool: &Pool,
    node: &Node,
    container: &ContainerState,
    service: &Service,
) -> CheckResult {
    let Some(health) = &service.health else {
        return CheckResult::fail("the service declares no health check".into());
    };
    if container.state != RunState::Running {
        return CheckResult::fail(format!("not running ({})", container.state.as_str()));
    }
    let timeout = health.timeout().0;
    if let Some(path) = &health.http {
        let what = format!("GET {path}");
        let Some(port) = health.port.or(service.port) else {
            return CheckResult::fail(format!(
                "{what}: no port to check (set port on the service or health.port)"
            ));
        };
        match reach(node, container, port) {
            Ok((address, port)) => {
                let host = host_header(&service.hosts, &address, port);
                http_get(&address, port, path, &host, timeout).await
            }
            Err(why) => CheckResult::fail(format!("{what}: {why}")),
        }
    } else if let Some(port) = health.tcp {
        match reach(node, container, port) {
            Ok((address, to)) => tcp_connect(&address, to, port, timeout).await,
            Err(why) => CheckResult::fail(format!("TCP {port}: {why}")),
        }
    } else if let Some(cmd) = &health.cmd {
        exec(pool, node, &container.id, cmd, timeout).await
    } else {
        CheckResult::fail("the health check names none of http, tcp or cmd".into())
    }
}

/// Checks the fleet's containers and returns every verdict Prism holds
/// for containers of services with a `health` check: container id →
/// `Healthy`, `Unhealthy` or `Starting`. Write these over the observed
/// containers' `health` before [`crate::reconcile::plan`].
///
/// - `pass` is this pass's observation of the whole inventory: the
///   records of containers no longer there are dropped (a node not
///   reached this pass keeps its records).
/// - A running container is checked when due: never checked since it
///   started, or its last check is at least (about) `interval` old. The
///   daemon can call this as often as it likes; `reconcile --once` calls
///   it once per pass, so each pass counts at most one result.
/// - A container that is not running is `Starting` (its count begins
///   when it runs again) and is not checked.
/// - A verdict that changes is an event (`container.healthy`,
///   `container.unhealthy`).
///
/// Checks run in parallel (bounded), each within its own timeout; only a
/// state store failure is an error.
pub async fn check_all(
    pool: &Pool,
    book: &mut HealthBook,
    journal: &Writer,
    fleet: &Fleet,
    pass: &[Observed],
) -> BTreeMap<ContainerId, Health> {
    check_all_within(pool, book, journal, fleet, pass, &|_| true).await
}

/// [`check_all`], where `reaches` says which mesh addresses this box
/// reaches now. An HTTP or TCP check of a container it cannot reach (the
/// box not in the mesh yet, or the node's peer not set yet) is not run:
/// the container keeps its verdict (or is starting), so that a box that
/// cannot join the mesh never has every container restarted as unhealthy.
pub async fn check_all_within(
    pool: &Pool,
    book: &mut HealthBook,
    journal: &Writer,
    fleet: &Fleet,
    pass: &[Observed],
    reaches: &(dyn Fn(std::net::Ipv4Addr) -> bool + Sync),
) -> BTreeMap<ContainerId, Health> {
    let now = now_ms();
    let subjects = subjects(fleet, pass);
    let mut verdicts = BTreeMap::new();
    let mut due = Vec::new();
    for s in subjects {
        let id = s.container.id.clone();
        if s.container.state != RunState::Running {
            verdicts.insert(id, Health::Starting);
            continue;
        }
        let record = book
            .get(id.as_str())
            .filter(|r| r.started_at == s.container.started_at);
        let unreachable =
            s.health.cmd.is_none() && s.container.mesh_ip.is_some_and(|ip| !reaches(ip));
        if unreachable {
            verdicts.insert(
                id,
                record.map_or(Health::Starting, |r| health_of(r.verdict)),
            );
            continue;
        }
        match record {
            Some(r) if !is_due(r.last_check, s.interval(), now) => {
                verdicts.insert(id, health_of(r.verdict));
            }
            _ => due.push(s),
        }
    }

    // Made up front: a closure in the stream's type would make the pass
    // future not Send (rustc's higher-ranked lifetime limits), and the
    // daemon spawns it.
    let checks: Vec<_> = due.iter().map(|s| timed(pool, s)).collect();
    let results: Vec<_> = stream::iter(checks)
        .buffer_unordered(PARALLEL)
        .collect()
        .await;

    for (s, at, result) in results {
        let outcome = CheckOutcome {
            passed: result.passed,
            at,
            detail: result.detail,
        };
        let recorded = book.count(&s.checked(), &outcome, s.thresholds());
        if recorded.changed() {
            journal.event(verdict_event(s, &recorded));
        }
        verdicts.insert(s.container.id.clone(), health_of(recorded.record.verdict));
        let record = recorded.record;
        journal.submit("record a health check", move |st| st.put_health(&record));
    }
    let (nodes, seen) = inventory(pass);
    let gone = book.prune(&nodes, &seen);
    if !gone.is_empty() {
        journal.submit("drop health records of gone containers", move |st| {
            st.remove_health(&gone)
        });
    }
    verdicts
}

/// One check, with its subject and when it started.
async fn timed<'s, 'a>(pool: &Pool, s: &'s Subject<'a>) -> (&'s Subject<'a>, i64, CheckResult) {
    let at = now_ms();
    (
        s,
        at,
        check(pool, &s.node.node, s.container, s.service).await,
    )
}

/// A container to judge, with the service that says how.
struct Subject<'a> {
    node: &'a Observed,
    container: &'a ContainerState,
    labels: &'a PrismLabels,
    service: &'a Service,
    health: &'a crate::config::Health,
}

impl Subject<'_> {
    fn interval(&self) -> Duration {
        self.health.interval.0
    }

    fn thresholds(&self) -> Thresholds {
        Thresholds {
            healthy: self.health.healthy_threshold,
            unhealthy: self.health.unhealthy_threshold,
            start_period_ms: self
                .health
                .start_period
                .map_or(0, |p| i64::try_from(p.0.as_millis()).unwrap_or(i64::MAX)),
        }
    }

    fn checked(&self) -> Checked<'_> {
        Checked {
            container_id: self.container.id.as_str(),
            node_id: &self.node.node.id,
            app: &self.labels.app,
            service: &self.labels.service,
            instance: self.labels.instance,
            started_at: self.container.started_at,
        }
    }
}

/// The fleet's containers, on nodes read this pass, whose service (as
/// fleet.toml has it now) declares a check.
fn subjects<'a>(fleet: &'a Fleet, pass: &'a [Observed]) -> Vec<Subject<'a>> {
    let mut found = Vec::new();
    for node in pass {
        let Probed::Ready { containers, .. } = &node.probed else {
            continue;
        };
        for container in containers {
            let Some(labels) = container.identity.prism() else {
                continue;
            };
            if labels.fleet != fleet.fleet.name {
                continue;
            }
            let service = fleet
                .apps
                .get(&labels.app)
                .and_then(|app| app.services.get(&labels.service));
            if let Some(service) = service
                && let Some(health) = &service.health
            {
                found.push(Subject {
                    node,
                    container,
                    labels,
                    service,
                    health,
                });
            }
        }
    }
    found
}

/// Every node of the pass, and per node read, the containers on it.
fn inventory(pass: &[Observed]) -> (BTreeSet<String>, BTreeMap<String, BTreeSet<String>>) {
    let nodes = pass.iter().map(|o| o.node.id.clone()).collect();
    let seen = pass
        .iter()
        .filter_map(|o| match &o.probed {
            Probed::Ready { containers, .. } => Some((
                o.node.id.clone(),
                containers.iter().map(|c| c.id.to_string()).collect(),
            )),
            _ => None,
        })
        .collect();
    (nodes, seen)
}

/// Due when never checked, or checked at least `interval` ago, less a
/// tenth: a caller on the same period as the check, a little early,
/// should not skip a whole interval.
pub(crate) fn is_due(last_check: Option<i64>, interval: Duration, now: i64) -> bool {
    let interval = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
    last_check.is_none_or(|last| now.saturating_sub(last) >= interval - interval / 10)
}

fn health_of(v: Verdict) -> Health {
    match v {
        Verdict::Starting => Health::Starting,
        Verdict::Healthy => Health::Healthy,
        Verdict::Unhealthy => Health::Unhealthy,
    }
}

fn verdict_event(s: &Subject<'_>, r: &Recorded) -> NewEvent {
    let l = s.labels;
    let who = format!(
        "{}/{}#{} ({}) on {}",
        l.app, l.service, l.instance, s.container.name, s.node.node.name
    );
    let detail = r.record.detail.as_deref().unwrap_or("");
    let event = match r.record.verdict {
        Verdict::Unhealthy => {
            tracing::warn!(container = %who, detail, "unhealthy");
            NewEvent::new(
                Level::Warn,
                "container.unhealthy",
                format!(
                    "{who} is unhealthy after {} failed checks: {detail}",
                    r.record.failures
                ),
            )
        }
        Verdict::Healthy => {
            tracing::info!(container = %who, detail, "healthy");
            NewEvent::info("container.healthy", format!("{who} is healthy: {detail}"))
        }
        Verdict::Starting => {
            NewEvent::info("container.starting", format!("{who} is starting: {detail}"))
        }
    };
    event.node(s.node.node.id.clone()).app(l.app.clone())
}

/// Where container port `port`/tcp is reached from the operator: at the
/// container's mesh address, else at the node port it is published on.
fn reach(node: &Node, container: &ContainerState, port: u16) -> Result<(String, u16), String> {
    match container.mesh_ip {
        Some(ip) => Ok((ip.to_string(), port)),
        None => host_port(container, port).map(|p| (node.address.clone(), p)),
    }
}

/// The node port container port `port`/tcp is published on, reachable
/// from outside the node.
fn host_port(container: &ContainerState, port: u16) -> Result<u16, String> {
    let bound: Vec<_> = container
        .ports
        .iter()
        .filter(|p| p.container_port == port && p.protocol == Protocol::Tcp)
        .collect();
    let reachable = |ip: &IpAddr| !ip.is_loopback();
    bound
        .iter()
        .find(|p| p.host_ip.is_unspecified() && p.host_ip.is_ipv4())
        .or_else(|| bound.iter().find(|p| reachable(&p.host_ip)))
        .map(|p| p.host_port)
        .ok_or_else(|| {
            if bound.is_empty() {
                format!("container port {port}/tcp is not published on the node")
            } else {
                format!("container port {port}/tcp is published only on the node's loopback")
            }
        })
}

/// The Host header of an http check: the service's first host name that
/// is a plain name (a path prefix dropped, wildcards skipped), else the
/// node's address and port.
pub(crate) fn host_header(hosts: &[String], address: &str, port: u16) -> String {
    hosts
        .iter()
        .map(|h| h.split('/').next().unwrap_or(h.as_str()))
        .find(|h| !h.is_empty() && !h.contains('*'))
        .map(str::to_owned)
        .unwrap_or_else(|| match address.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
            _ => format!("{address}:{port}"),
        })
}

async fn http_get(
    address: &str,
    port: u16,
    path: &str,
    host: &str,
    timeout: Duration,
) -> CheckResult {
    let what = format!("GET {path}");
    match tokio::time::timeout(timeout, status_of(address, port, path, host)).await {
        Err(_) => CheckResult::fail(format!("{what}: no answer within {}", shown(timeout))),
        Ok(Err(why)) => CheckResult::fail(format!("{what}: {why}")),
        Ok(Ok(status)) if status.is_success() || status.is_redirection() => {
            CheckResult::pass(format!("{what}: {}", status.as_u16()))
        }
        Ok(Ok(status)) => CheckResult::fail(format!("{what}: {}", status.as_u16())),
    }
}

/// One request on a fresh connection (a health check must not reuse a
/// connection that a broken server would keep alive); only the status is
/// read.
async fn status_of(
    address: &str,
    port: u16,
    path: &str,
    host: &str,
) -> Result<hyper::StatusCode, String> {
    let stream = TcpStream::connect((address, port))
        .await
        .map_err(|e| format!("connect {}: {e}", socket(address, port)))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    // Dropped with the check: the connection of one that timed out goes too.
    let _driver = AbortOnDropHandle::new(tokio::spawn(async move {
        // Its error, if any, is the request's error too.
        let _ = conn.await;
    }));
    let request = Request::get(path)
        .header(HOST, host)
        .header(
            USER_AGENT,
            concat!("prism-health/", env!("CARGO_PKG_VERSION")),
        )
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("cannot make the request: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    Ok(response.status())
}

async fn tcp_connect(address: &str, host_port: u16, port: u16, timeout: Duration) -> CheckResult {
    let what = format!("TCP {port}: connect {}", socket(address, host_port));
    match tokio::time::timeout(timeout, TcpStream::connect((address, host_port))).await {
        Ok(Ok(_)) => CheckResult::pass(format!("{what}: ok")),
        Ok(Err(e)) => CheckResult::fail(format!("{what}: {e}")),
        Err(_) => CheckResult::fail(format!("{what}: no answer within {}", shown(timeout))),
    }
}

async fn exec(
    pool: &Pool,
    node: &Node,
    id: &ContainerId,
    cmd: &[String],
    timeout: Duration,
) -> CheckResult {
    let mut argv: Vec<String> = vec!["docker".into(), "exec".into(), id.to_string()];
    argv.extend(cmd.iter().cloned());
    let limits = ExecLimits {
        timeout,
        max_output: CMD_OUTPUT,
    };
    let what = cmd.join(" ");
    match pool.exec(&node.target(), &argv, None, limits).await {
        Ok(out) if out.success() => CheckResult::pass(format!("{what}: exit 0")),
        Ok(out) => {
            let status = out
                .status
                .map_or_else(|| "killed".to_owned(), |s| format!("exit {s}"));
            let (stderr, stdout) = (out.stderr_text(), out.stdout_text());
            let said = last_line(&stderr)
                .or_else(|| last_line(&stdout))
                .map(|l| format!(": {l}"))
                .unwrap_or_default();
            CheckResult::fail(format!("{what}: {status}{said}"))
        }
        Err(SshError::Timeout { .. }) => {
            CheckResult::fail(format!("{what}: no answer within {}", shown(timeout)))
        }
        Err(e) => CheckResult::fail(format!("{what}: {e}")),
    }
}

fn last_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).rfind(|l| !l.is_empty())
}

fn socket(address: &str, port: u16) -> String {
    match address.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        _ => format!("{address}:{port}"),
    }
}

fn shown(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn clip(s: String) -> String {
    match s.char_indices().nth(DETAIL_MAX) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::observe::PublishedPort;

    #[test]
    fn due_when_never_checked_or_an_interval_ago() {
        let five = Duration::from_secs(5);
        assert!(is_due(None, five, 1_000));
        assert!(!is_due(Some(1_000), five, 1_000));
        assert!(!is_due(Some(1_000), five, 5_000));
        // A tenth early still counts: a caller on the same period.
        assert!(is_due(Some(1_000), five, 5_500));
        assert!(is_due(Some(1_000), five, 6_000));
        assert!(is_due(Some(1_000), Duration::ZERO, 1_000));
    }

    #[test]
    fn host_header_is_the_first_plain_host_name_else_the_address() {
        let hosts = |h: &[&str]| h.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            host_header(
                &hosts(&["blog.example.com", "www.blog.example.com"]),
                "10.0.0.1",
                32768
            ),
            "blog.example.com"
        );
        assert_eq!(
            host_header(
                &hosts(&["*.example.com", "example.com/api"]),
                "10.0.0.1",
                80
            ),
            "example.com"
        );
        assert_eq!(host_header(&[], "10.0.0.1", 32768), "10.0.0.1:32768");
        assert_eq!(host_header(&[], "fd00::1", 8080), "[fd00::1]:8080");
        assert_eq!(
            host_header(&hosts(&["*.example.com"]), "node.internal", 8080),
            "node.internal:8080"
        );
    }

    fn published(container_port: u16, ip: IpAddr, host_port: u16) -> PublishedPort {
        PublishedPort {
            container_port,
            protocol: Protocol::Tcp,
            host_ip: ip,
            host_port,
        }
    }

    fn container_with(ports: Vec<PublishedPort>) -> ContainerState {
        let json = include_str!("../observe/fixtures/inspect_lab.json");
        let mut c = crate::observe::parse_inspect(json)
            .expect("fixture parses")
            .remove(0);
        c.ports = ports;
        c
    }

    #[test]
    fn the_host_port_is_the_published_one_reachable_from_outside() {
        let any4 = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let any6: IpAddr = "::".parse().expect("ip");
        let local = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let c = container_with(vec![
            published(8080, any6, 32769),
            published(8080, any4, 32768),
            published(9090, any4, 32770),
        ]);
        assert_eq!(host_port(&c, 8080), Ok(32768));
        assert_eq!(host_port(&c, 9090), Ok(32770));
        let err = host_port(&c, 7000).expect_err("not published");
        assert!(err.contains("7000/tcp is not published"), "{err}");

        let c = container_with(vec![published(8080, local, 32768)]);
        let err = host_port(&c, 8080).expect_err("loopback only");
        assert!(err.contains("only on the node's loopback"), "{err}");

        let mut udp = published(8080, any4, 32768);
        udp.protocol = Protocol::Udp;
        assert!(host_port(&container_with(vec![udp]), 8080).is_err());
    }

    /// A one-request HTTP server on loopback answering `reply` (or
    /// nothing, when `None`); hands back the request head it read.
    async fn serve_once(reply: Option<&'static str>) -> (u16, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            match reply {
                Some(reply) => conn.write_all(reply.as_bytes()).await.expect("write"),
                None => tokio::time::sleep(Duration::from_secs(5)).await,
            }
            String::from_utf8_lossy(&head).into_owned()
        });
        (port, task)
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn http_passes_on_2xx_and_3xx_and_fails_otherwise() {
        for (reply, passed, code) in [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n",
                true,
                "200",
            ),
            (
                "HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n",
                true,
                "302",
            ),
            (
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
                false,
                "503",
            ),
            (
                "HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n",
                false,
                "404",
            ),
        ] {
            let (port, server) = serve_once(Some(reply)).await;
            let r = http_get("127.0.0.1", port, "/up?deep=1", "blog.example.com", SECOND).await;
            assert_eq!(r.passed, passed, "{reply:?}: {r:?}");
            assert_eq!(r.detail, format!("GET /up?deep=1: {code}"));
            let head = server.await.expect("server");
            assert!(head.starts_with("GET /up?deep=1 HTTP/1.1\r\n"), "{head}");
            assert!(
                head.to_ascii_lowercase()
                    .contains("host: blog.example.com\r\n"),
                "{head}"
            );
        }
    }

    #[tokio::test]
    async fn http_fails_on_silence_refusal_and_garbage() {
        let (port, _server) = serve_once(None).await;
        let started = std::time::Instant::now();
        let r = http_get("127.0.0.1", port, "/up", "h", Duration::from_millis(300)).await;
        assert!(!r.passed);
        assert_eq!(r.detail, "GET /up: no answer within 300ms");
        assert!(started.elapsed() < SECOND, "the timeout holds");

        let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = closed.local_addr().expect("addr").port();
        drop(closed);
        let r = http_get("127.0.0.1", port, "/up", "h", SECOND).await;
        assert!(!r.passed);
        assert!(
            r.detail
                .starts_with(&format!("GET /up: connect 127.0.0.1:{port}: ")),
            "{}",
            r.detail
        );
        assert!(r.detail.to_lowercase().contains("refused"), "{}", r.detail);

        let (port, _server) = serve_once(Some("SSH-2.0-OpenSSH\r\n\r\n")).await;
        let r = http_get("127.0.0.1", port, "/up", "h", SECOND).await;
        assert!(!r.passed);
        assert!(r.detail.starts_with("GET /up: HTTP: "), "{}", r.detail);
    }

    #[tokio::test]
    async fn tcp_passes_on_connect_and_fails_on_refusal() {
        let open = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = open.local_addr().expect("addr").port();
        let r = tcp_connect("127.0.0.1", port, 8080, SECOND).await;
        assert_eq!(
            r,
            CheckResult {
                passed: true,
                detail: format!("TCP 8080: connect 127.0.0.1:{port}: ok")
            }
        );
        drop(open);
        let r = tcp_connect("127.0.0.1", port, 8080, SECOND).await;
        assert!(!r.passed);
        assert!(r.detail.to_lowercase().contains("refused"), "{}", r.detail);
    }

    #[test]
    fn details_are_clipped() {
        let long = "x".repeat(DETAIL_MAX + 50);
        let r = CheckResult::fail(long);
        assert_eq!(r.detail.chars().count(), DETAIL_MAX + 1);
        assert!(r.detail.ends_with('…'));
        assert_eq!(last_line("a\nb\n\n  "), Some("b"));
        assert_eq!(last_line(" \n"), None);
    }
}
