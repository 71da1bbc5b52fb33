//! One request through the proxy: find its route, pick an instance, pass
//! the request on with rewritten headers, retry elsewhere when an instance
//! cannot be reached, and stream the answer back (or splice the two
//! connections together after an upgrade).

use std::convert::Infallible;
use std::error::Error as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use http_body::Body as _;
use http_body_util::{Either, Empty, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::backends::{InFlight, LiveRoute, Snapshot};
use super::body::{ProxyBody, pages};
use super::headers::{self, X_REQUEST_ID};
use super::limits::{Activity, Settings, Stamped};
use super::metrics::{Metrics, RouteMetrics};
use super::pool::{self, Lease, Pool};

/// What an instance receives as a body: the client's, capped at the
/// route's limit, or nothing (and then the request can be sent again).
pub(crate) type UpstreamBody = Either<Limited<Incoming>, Empty<Bytes>>;

/// Instances tried per request at most, the first one included.
const MAX_ATTEMPTS: usize = 3;

/// State shared by every worker thread.
pub(crate) struct Shared {
    pub routes: Arc<ArcSwap<Snapshot>>,
    pub settings: Settings,
    pub metrics: Metrics,
    pub tls: Arc<super::tls::Tls>,
}

/// One worker thread's own: its number, its pool of connections to
/// instances and its hold on the route table. A request is served start to
/// end on one thread.
pub(crate) struct Worker {
    pub shared: Arc<Shared>,
    /// Which part of each per-worker count is this worker's (see
    /// [`super::shards`]).
    index: usize,
    pub pool: Arc<Pool>,
    routes: Mutex<Arc<Handle>>,
}

/// A worker's handle on a route table: requests count their hold on the
/// worker's own handle, so workers on other cores never write to the
/// table's reference count, a cache line that would bounce between them
/// on every request.
struct Handle(Arc<Snapshot>);

impl std::ops::Deref for Handle {
    type Target = Snapshot;

    fn deref(&self) -> &Snapshot {
        &self.0
    }
}

impl Worker {
    pub fn new(shared: Arc<Shared>, index: usize) -> Worker {
        // Shorter than the usual app server's keep-alive (60-75 s), so the
        // proxy closes an idle connection before the app does.
        let pool = Pool::new(shared.settings.connect_timeout, Duration::from_secs(30));
        let table = shared.routes.load_full();
        Worker {
            shared,
            index,
            pool: Arc::new(pool),
            routes: Mutex::new(Arc::new(Handle(table))),
        }
    }

    /// The current route table (the one published last).
    fn routes(&self) -> Arc<Handle> {
        let current = self.shared.routes.load();
        let mut held = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        if !Arc::ptr_eq(&held.0, &current) {
            *held = Arc::new(Handle(arc_swap::Guard::into_inner(current)));
        }
        Arc::clone(&held)
    }
}

/// One client connection, as its requests see it.
#[derive(Debug)]
pub(crate) struct ConnInfo {
    /// The peer's address as a header value, made once for every request's
    /// X-Forwarded-For.
    pub client_ip: HeaderValue,
    /// `http` or `https`, for X-Forwarded-Proto.
    pub proto: &'static str,
    /// The peer is one of `[proxy] trusted_proxies`: its forwarding
    /// headers are kept.
    pub trusted: bool,
    /// Bytes moved and requests in flight, for the watchdog.
    pub activity: Arc<Activity>,
    /// The upstream timeout's timer, kept between requests: moving a
    /// registered timer later costs one atomic, a new one a trip through
    /// the timer wheel.
    timer: Mutex<Option<Pin<Box<tokio::time::Sleep>>>>,
}

impl ConnInfo {
    pub fn new(
        peer: SocketAddr,
        proto: &'static str,
        trusted: bool,
        activity: Arc<Activity>,
    ) -> ConnInfo {
        ConnInfo {
            client_ip: HeaderValue::from_str(&peer.ip().to_string())
                .unwrap_or(HeaderValue::from_static("unknown")),
            proto,
            trusted,
            activity,
            timer: Mutex::new(None),
        }
    }
}

/// hyper's service for one request.
pub(crate) async fn handle(
    worker: Arc<Worker>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let shared = &worker.shared;
    let (_handling, answering) = conn
        .activity
        .start_request(req.version() == Version::HTTP_2);
    let started = Instant::now();
    let resp = match acme_challenge(shared, &conn, &req) {
        Some(resp) => resp,
        None => {
            let snapshot = worker.routes();
            let (resp, metrics) = forward(&worker, &conn, &snapshot, req, started).await;
            let metrics = metrics.unwrap_or(shared.metrics.unknown());
            metrics.record(worker.index, resp.status().as_u16(), started.elapsed());
            resp
        }
    };
    Ok(resp.map(|body| body.answering(answering)))
}

/// Where an ACME CA asks for HTTP-01 challenges.
const ACME_PATH: &str = "/.well-known/acme-challenge/";

/// The answer to a pending ACME HTTP-01 challenge, which the CA asks for
/// over plain HTTP. Other paths under /.well-known/ go to the app.
fn acme_challenge(
    shared: &Shared,
    conn: &ConnInfo,
    req: &Request<Incoming>,
) -> Option<Response<ProxyBody>> {
    let token = req.uri().path().strip_prefix(ACME_PATH)?;
    if conn.proto != "http" || req.method() != Method::GET {
        return None;
    }
    shared
        .tls
        .challenge(token)
        .map(|answer| super::body::page(StatusCode::OK, answer))
}

/// The redirect of a plain-HTTP request to HTTPS, when redirects are on
/// and the host has a certificate (so the HTTPS side can answer). ACME
/// HTTP-01 paths stay on HTTP: the CA asks for them there.
fn to_https(
    shared: &Shared,
    conn: &ConnInfo,
    host: &str,
    uri: &Uri,
) -> Option<Response<ProxyBody>> {
    let port = shared.settings.redirect_https?;
    let path = uri.path();
    // `*` (OPTIONS) has no URL to send the client to.
    if conn.proto != "http" || !path.starts_with('/') || path.starts_with(ACME_PATH) {
        return None;
    }
    let name = super::routes::normalize_host(host)?;
    // Only a plain DNS name goes into a Location: the Host header is the
    // client's, and `evil%2ecom/.example.com` also ends in `.example.com`.
    let plain = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.';
    if !name.bytes().all(plain) || !shared.tls.serves(&name) {
        return None;
    }
    let target = https_url(&name, port, uri);
    Some(pages::moved_to(&target))
}

/// `https://name[:port]/path?query`; the port only when not 443.
fn https_url(name: &str, port: u16, uri: &Uri) -> String {
    let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    if port == 443 {
        format!("https://{name}{path}")
    } else {
        format!("https://{name}:{port}{path}")
    }
}

/// The response and the metrics of the route it went to, if any.
async fn forward<'s>(
    worker: &Worker,
    conn: &ConnInfo,
    snapshot: &'s Snapshot,
    mut req: Request<Incoming>,
    started: Instant,
) -> (Response<ProxyBody>, Option<&'s RouteMetrics>) {
    let shared = &*worker.shared;
    // HTTP/2 carries the host in the URI (:authority), HTTP/1.1 in Host.
    let host = match req.uri().authority() {
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    };
    let Some(host) = host else {
        return (pages::no_host(), None);
    };
    let Ok(host_text) = host.to_str() else {
        return (pages::no_host(), None);
    };
    let Some(route) = snapshot.lookup(host_text, req.uri().path()) else {
        return (pages::unknown_host(host_text), None);
    };
    let metrics = Some(&route.metrics);
    if let Some(resp) = to_https(shared, conn, host_text, req.uri()) {
        return (resp, metrics);
    }
    let limit = route.route.max_body;
    if req.body().size_hint().lower() > limit {
        return (pages::too_large(limit), metrics);
    }
    let upgrade = req.version() == Version::HTTP_11 && headers::wants_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    headers::strip_hop_by_hop(&mut headers, upgrade);
    headers::add_forwarded(
        &mut headers,
        &conn.client_ip,
        conn.proto,
        &host,
        conn.trusted,
    );
    let request_id = headers::request_id(&mut headers);
    headers.insert(header::HOST, host.clone());
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));

    // Only a request without a body can be sent twice: the body streams
    // from the client and is gone once read.
    let bodyless = body.is_end_stream();
    let retryable = bodyless && parts.method.is_idempotent() && !upgrade;
    let mut body = Some(if bodyless {
        Either::Right(Empty::new())
    } else {
        Either::Left(Limited::new(
            body,
            usize::try_from(limit).unwrap_or(usize::MAX),
        ))
    });
    let mut out = Outgoing {
        method: parts.method,
        path,
        headers,
    };

    // Every try shares the one upstream timeout.
    let deadline = started
        .checked_add(shared.settings.upstream_timeout)
        .unwrap_or(started + Duration::from_secs(365 * 86_400));
    let deadline = tokio::time::Instant::from_std(deadline);
    let mut tried = [usize::MAX; MAX_ATTEMPTS];
    let mut tries = 0;
    let (resp, guard, lease) = loop {
        let picked = if tries < MAX_ATTEMPTS {
            route.pick(shared.settings.balance, &tried[..tries], worker.index)
        } else {
            None
        };
        let Some(i) = picked else {
            if tries == 0 {
                return (pages::unavailable(shared.settings.retry_after), metrics);
            }
            return (pages::bad_gateway(), metrics);
        };
        tried[tries] = i;
        tries += 1;
        let backend = &route.backends[i];
        // A drain that began since the pick turns the request elsewhere.
        let Some(guard) = backend.state.start(worker.index) else {
            continue;
        };
        let last_try = !retryable || tries >= MAX_ATTEMPTS.min(route.backends.len());
        let Some(body) = (if retryable {
            Some(Either::Right(Empty::new()))
        } else {
            body.take()
        }) else {
            return (pages::bad_gateway(), metrics);
        };
        let Some(authority) = backend.state.authority.as_ref() else {
            return (pages::bad_gateway(), metrics);
        };
        let req = out.request(authority, body, last_try);
        let send = std::pin::pin!(worker.pool.send(authority, req));
        match within(conn, deadline, send).await {
            Some(Ok((resp, lease))) => break (resp, guard, lease),
            None => {
                tracing::warn!(endpoint = %backend.state.endpoint, host = %host_text, "instance did not answer in time");
                return (pages::gateway_timeout(), metrics);
            }
            Some(Err(e)) => {
                if e.is_connect() {
                    backend.state.mark_down(shared.settings.down_time);
                    tracing::warn!(endpoint = %backend.state.endpoint, error = %chain(&e), "cannot connect to instance; marked down");
                } else if is_over_limit(&e) {
                    return (pages::too_large(limit), metrics);
                } else {
                    tracing::warn!(endpoint = %backend.state.endpoint, error = %chain(&e), "request to instance failed");
                }
                // An idempotent request without a body is safe to send
                // again whatever went wrong before an answer came.
                if last_try {
                    return (pages::bad_gateway(), metrics);
                }
            }
        }
    };
    (
        respond(
            resp,
            guard,
            lease,
            client_upgrade,
            request_id,
            shared,
            route,
        ),
        metrics,
    )
}

/// `fut`'s output, or `None` once `deadline` has passed, on the
/// connection's kept timer (a fresh one when another request holds it, on
/// HTTP/2).
///
/// `fut` comes pinned where it was made: moved in by value, it would be
/// stored twice in this future (a large one, moved whole at every await).
async fn within<F: Future>(
    conn: &ConnInfo,
    deadline: tokio::time::Instant,
    mut fut: Pin<&mut F>,
) -> Option<F::Output> {
    let kept = conn.timer.lock().unwrap_or_else(|p| p.into_inner()).take();
    let mut timer = match kept {
        Some(mut timer) => {
            timer.as_mut().reset(deadline);
            timer
        }
        None => Box::pin(tokio::time::sleep_until(deadline)),
    };
    let out = std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await;
    *conn.timer.lock().unwrap_or_else(|p| p.into_inner()) = Some(timer);
    out
}

/// The parts of a request sent to each instance tried.
struct Outgoing {
    method: Method,
    path: PathAndQuery,
    headers: HeaderMap,
}

impl Outgoing {
    /// The request for one instance; the headers are copied while another
    /// try may follow and moved out on the last. The URI is in origin form
    /// (authority form for CONNECT), as sent on the wire.
    fn request(
        &mut self,
        authority: &Authority,
        body: UpstreamBody,
        last: bool,
    ) -> Request<UpstreamBody> {
        let uri = if self.method == Method::CONNECT {
            Uri::from(authority.clone())
        } else {
            Uri::from(self.path.clone())
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = if last {
            std::mem::take(&mut self.headers)
        } else {
            self.headers.clone()
        };
        req
    }
}

/// The instance's response, passed to the client.
fn respond(
    mut resp: Response<Incoming>,
    guard: InFlight,
    lease: Lease,
    client_upgrade: Option<OnUpgrade>,
    request_id: HeaderValue,
    shared: &Shared,
    route: &LiveRoute,
) -> Response<ProxyBody> {
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        let Some(client_upgrade) = client_upgrade else {
            tracing::warn!(host = %route.route.pattern, "instance switched protocols unasked");
            return pages::bad_gateway();
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        let idle = shared.settings.idle_timeout;
        tokio::spawn(tunnel(client_upgrade, upstream_upgrade, guard, lease, idle));
        let (mut parts, _) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, true);
        parts.headers.insert(&X_REQUEST_ID, request_id);
        return Response::from_parts(parts, ProxyBody::empty());
    }
    let (mut parts, body) = resp.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, false);
    parts.headers.insert(&X_REQUEST_ID, request_id);
    Response::from_parts(parts, ProxyBody::upstream(body, guard, lease))
}

/// Splices an upgraded client connection to the instance's until either
/// side closes or no byte moves for `idle`. The lease only goes with the
/// connection: an upgraded one is never reused.
async fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    guard: InFlight,
    _lease: Lease,
    idle: Duration,
) {
    let (client, upstream) = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let (mut client, last) = Stamped::new(TokioIo::new(client));
    let mut upstream = TokioIo::new(upstream);
    tokio::select! {
        res = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "upgraded connection ended");
            }
        }
        _ = super::server::quiet_for(&last, idle) => {
            tracing::debug!("upgraded connection idle; closed");
        }
    }
    drop(guard);
}

/// The body limit was hit while the request streamed to the instance.
fn is_over_limit(e: &pool::Error) -> bool {
    let mut source = e.source();
    while let Some(s) = source {
        if s.is::<LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// An error and its causes on one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_urls_keep_the_path_and_query_and_name_a_port_other_than_443() {
        let uri = |s: &str| s.parse::<Uri>().unwrap();
        assert_eq!(
            https_url("a.test", 443, &uri("/x/y?q=1&r")),
            "https://a.test/x/y?q=1&r"
        );
        assert_eq!(https_url("a.test", 8443, &uri("/")), "https://a.test:8443/");
        // An absolute-form request line: its path and query only.
        assert_eq!(
            https_url("a.test", 443, &uri("http://a.test:80/p?q")),
            "https://a.test/p?q"
        );
    }
}
