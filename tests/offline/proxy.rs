//! The proxy end to end: real HTTP servers as instances on 127.0.0.1, a
//! real HTTP client (hyper; tungstenite for WebSocket; raw TCP where the
//! test is about bytes on the wire), the real proxy in between. The last
//! test puts the lab's test app on lab nodes behind it.

use crate::common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prism::config::Fleet;
use prism::proxy::{self, Proxy, RouteTable, Settings, Upstream};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------- instances

/// An HTTP/1.1 server standing in for one instance. `/slow?ms=N` answers
/// after N ms, `/body` answers with the length of the body it read,
/// anything else echoes what it received: its name, method, path, version
/// and every header as `h:name: value` lines. Answers carry a hop-by-hop
/// header (`X-Up-Hop`, named in Connection) the proxy must drop.
struct Instance {
    name: String,
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    /// Dropping it stops the server and cuts its open connections.
    server: Option<tokio::task::JoinHandle<()>>,
}

impl Instance {
    async fn start(name: &str) -> Instance {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let server = {
            let name = name.to_owned();
            let hits = Arc::clone(&hits);
            tokio::spawn(async move {
                let mut conns = JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let name = name.clone();
                    let hits = Arc::clone(&hits);
                    conns.spawn(async move {
                        let service = service_fn(move |req| {
                            hits.fetch_add(1, Ordering::SeqCst);
                            answer(name.clone(), req)
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        Instance {
            name: name.to_owned(),
            addr,
            hits,
            server: Some(server),
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The instance dies: listener closed, connections cut.
    fn kill(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }

    fn upstream(&self, app: &str, instance: u32, healthy: bool) -> Upstream {
        upstream_at(app, instance, self.addr.port(), healthy)
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
    }
}

fn upstream_at(app: &str, instance: u32, port: u16, healthy: bool) -> Upstream {
    Upstream {
        app: app.into(),
        service: "web".into(),
        instance,
        node: "local".into(),
        address: "127.0.0.1".into(),
        port,
        healthy,
    }
}

async fn answer(
    name: String,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let path = req.uri().path().to_owned();
    if path == "/slow" {
        let ms: u64 = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Ok(Response::new(Full::new(Bytes::from(format!(
            "instance={name}\nslept={ms}\n"
        )))));
    }
    if path == "/body" {
        let body = req.into_body().collect().await?.to_bytes();
        return Ok(Response::new(Full::new(Bytes::from(format!(
            "instance={name}\nlength={}\n",
            body.len()
        )))));
    }
    let mut text = format!(
        "instance={name}\nmethod={}\npath={}\nversion={:?}\n",
        req.method(),
        req.uri(),
        req.version()
    );
    for (k, v) in req.headers() {
        text.push_str(&format!("h:{k}: {}\n", v.to_str().unwrap_or("?")));
    }
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut()
        .insert("connection", "x-up-hop".parse().unwrap());
    resp.headers_mut().insert("x-up-hop", "1".parse().unwrap());
    resp.headers_mut().insert("x-up-end", "1".parse().unwrap());
    Ok(resp)
}

/// The `key=value` and `h:name: value` lines of an echo.
fn echo(body: &str) -> BTreeMap<String, String> {
    body.lines()
        .filter_map(|l| {
            l.strip_prefix("h:")
                .and_then(|h| h.split_once(": "))
                .map(|(k, v)| (format!("h:{k}"), v.to_owned()))
                .or_else(|| l.split_once('=').map(|(k, v)| (k.into(), v.into())))
        })
        .collect()
}

/// A WebSocket server that echoes every message back, upper-cased.
async fn websocket_instance() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(t) = msg {
                        let reply = t.as_str().to_uppercase();
                        if ws.send(Message::text(reply)).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

// ---------------------------------------------------------------- the proxy

struct Harness {
    proxy: Proxy,
    addr: SocketAddr,
    admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Harness {
    async fn start(settings: Settings) -> Harness {
        let mut registry = Registry::default();
        let proxy = Proxy::new(settings, &mut registry);
        let listener = proxy.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr();
        let admin_listener = proxy::bind_admin("127.0.0.1:0".parse().unwrap()).unwrap();
        let admin = admin_listener.local_addr().unwrap();
        tokio::spawn(proxy::serve_admin(
            admin_listener,
            Arc::new(registry),
            std::future::pending(),
        ));
        let (stop, stopped) = oneshot::channel::<()>();
        let served = {
            let proxy = proxy.clone();
            tokio::spawn(async move {
                proxy
                    .serve(listener, async {
                        let _ = stopped.await;
                    })
                    .await
            })
        };
        Harness {
            proxy,
            addr,
            admin,
            stop: Some(stop),
            served,
        }
    }

    /// A proxy with `settings` serving `a.test` from `a` alone.
    async fn serving_a(a: &Instance, settings: Settings) -> Harness {
        let h = Harness::start(settings).await;
        h.publish(
            &fleet(&app("a", &["a.test"], "")),
            &[a.upstream("a", 0, true)],
        );
        h
    }

    fn publish(&self, fleet: &Fleet, upstreams: &[Upstream]) {
        self.proxy.publish(RouteTable::build(fleet, upstreams));
    }

    async fn get(&self, host: &str, path: &str) -> (StatusCode, http::HeaderMap, String) {
        send(&client(), self.addr, host, Method::GET, path, empty()).await
    }

    async fn metrics(&self) -> String {
        let (status, _, body) = send(
            &client(),
            self.admin,
            "localhost",
            Method::GET,
            "/metrics",
            empty(),
        )
        .await;
        assert_eq!(status, 200);
        body
    }
}

fn fleet(apps: &str) -> Fleet {
    let text = format!("[fleet]\nname = \"t\"\n[discovery]\nprovider = \"ec2\"\n{apps}");
    prism::config::parse(Path::new("fleet.toml"), &text).unwrap()
}

/// A service `web` with these hosts, in app `app`.
fn app(app: &str, hosts: &[&str], extra: &str) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
    format!(
        "[apps.{app}.services.web]\nimage = \"x\"\nport = 8080\nhosts = [{}]\n{extra}\n",
        hosts.join(", ")
    )
}

type Body = BoxBody<Bytes, Infallible>;

fn empty() -> Body {
    Full::new(Bytes::new()).boxed()
}

fn client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

async fn send(
    client: &Client<HttpConnector, Body>,
    addr: SocketAddr,
    host: &str,
    method: Method,
    path: &str,
    body: Body,
) -> (StatusCode, http::HeaderMap, String) {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", host)
        .body(body)
        .unwrap();
    let resp = client.request(req).await.expect("the proxy answers");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("a whole body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Sends raw bytes, returns what came back until the proxy closed (or
/// `wait` passed) and how long that took.
async fn raw(addr: SocketAddr, bytes: &[u8], wait: Duration) -> (String, Duration) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

fn fast_settings() -> Settings {
    Settings {
        shutdown_grace: Duration::from_secs(3),
        ..Settings::default()
    }
}

// ---------------------------------------------------------------- routing

#[tokio::test]
async fn routes_by_exact_host_wildcard_and_path_prefix() {
    let blog = Instance::start("blog").await;
    let wild = Instance::start("wild").await;
    let api = Instance::start("api").await;
    let h = Harness::start(fast_settings()).await;
    let f = fleet(&format!(
        "{}{}{}",
        app("blog", &["blog.test"], ""),
        app("wild", &["*.wild.test"], ""),
        app("api", &["blog.test/api", "x.wild.test/api"], ""),
    ));
    h.publish(
        &f,
        &[
            blog.upstream("blog", 0, true),
            wild.upstream("wild", 0, true),
            api.upstream("api", 0, true),
        ],
    );
    for (host, path, want) in [
        ("blog.test", "/", "blog"),
        ("BLOG.test:80", "/posts/1", "blog"),
        ("blog.test", "/api/users?page=2", "api"),
        ("blog.test", "/apiary", "blog"),
        ("x.wild.test", "/", "wild"),
        ("a.b.wild.test", "/api", "wild"),
        ("x.wild.test", "/api/v1", "api"),
    ] {
        let (status, _, body) = h.get(host, path).await;
        assert_eq!(status, 200, "{host}{path}");
        let e = echo(&body);
        assert_eq!(e["instance"], want, "{host}{path}");
        // The path and query reach the instance unchanged.
        assert_eq!(e["path"], path, "{host}{path}");
    }
}

#[tokio::test]
async fn unknown_host_is_404_and_no_healthy_instance_is_503() {
    let a = Instance::start("a").await;
    let h = Harness::start(fast_settings()).await;
    let f = fleet(&format!(
        "{}{}",
        app("sick", &["sick.test"], ""),
        app("empty", &["empty.test"], "")
    ));
    h.publish(&f, &[a.upstream("sick", 0, false)]);

    let (status, headers, body) = h.get("nowhere.test", "/").await;
    assert_eq!(status, 404);
    assert!(
        body.contains("No app is served at \"nowhere.test\""),
        "{body}"
    );
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");

    for host in ["sick.test", "empty.test"] {
        let (status, headers, body) = h.get(host, "/").await;
        assert_eq!(status, 503, "{host}");
        assert_eq!(headers["retry-after"], "5");
        assert!(body.contains("try again"), "{body}");
    }
    assert_eq!(a.hits(), 0, "an unhealthy instance gets no request");
}

#[tokio::test]
async fn headers_are_forwarded_rewritten_and_stripped() {
    let a = Instance::start("a").await;
    let h = Harness::serving_a(&a, fast_settings()).await;
    let req = Request::builder()
        .uri(format!("http://{}/hello", h.addr))
        .header("host", "a.test")
        .header("connection", "keep-alive, x-client-hop, upgrade")
        .header("x-client-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("x-forwarded-for", "198.51.100.1")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "spoofed.test")
        .header("forwarded", "for=198.51.100.1")
        .header("x-real-ip", "198.51.100.1")
        .header("x-forwarded-prefix", "/admin")
        .header("upgrade", "h2c")
        .header("cookie", "a=1")
        .body(empty())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
    let e = echo(&body);
    assert_eq!(e["h:host"], "a.test");
    // The client is no trusted proxy: what it claimed is gone.
    assert_eq!(e["h:x-forwarded-for"], "127.0.0.1");
    assert_eq!(e["h:x-forwarded-proto"], "http");
    assert_eq!(e["h:x-forwarded-host"], "a.test");
    assert_eq!(e["h:cookie"], "a=1");
    assert_eq!(e["version"], "HTTP/1.1");
    for gone in [
        "h:x-client-hop",
        "h:keep-alive",
        "h:forwarded",
        "h:x-real-ip",
        "h:x-forwarded-prefix",
        "h:upgrade",
    ] {
        assert!(!e.contains_key(gone), "{gone} reached the instance: {body}");
    }
    // A request id was made, given to the instance and to the client.
    let id = e["h:x-request-id"].clone();
    assert_eq!(id.len(), 32);
    assert_eq!(parts.headers["x-request-id"], id.as_str());
    // The instance's hop-by-hop header stays on its side.
    assert!(!parts.headers.contains_key("x-up-hop"));
    assert_eq!(parts.headers["x-up-end"], "1");

    // Behind a trusted proxy (here: loopback) its headers are believed.
    let trusting = Settings {
        trusted_proxies: vec!["127.0.0.0/8".parse().unwrap()],
        ..fast_settings()
    };
    let t = Harness::serving_a(&a, trusting).await;
    let req = Request::builder()
        .uri(format!("http://{}/", t.addr))
        .header("host", "a.test")
        .header("x-forwarded-for", "198.51.100.1")
        .header("x-forwarded-proto", "https")
        .header("x-real-ip", "198.51.100.1")
        .body(empty())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let e = echo(&String::from_utf8_lossy(&body));
    assert_eq!(e["h:x-forwarded-for"], "198.51.100.1, 127.0.0.1");
    assert_eq!(e["h:x-forwarded-proto"], "https");
    assert_eq!(e["h:x-real-ip"], "198.51.100.1");

    // A client's own request id is kept.
    let req = Request::builder()
        .uri(format!("http://{}/", h.addr))
        .header("host", "a.test")
        .header("x-request-id", "trace-42")
        .body(empty())
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-42");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        echo(&String::from_utf8_lossy(&body))["h:x-request-id"],
        "trace-42"
    );
}

#[tokio::test]
async fn http2_clients_reach_http1_instances() {
    let a = Instance::start("a").await;
    let h = Harness::serving_a(&a, fast_settings()).await;
    // HTTP/2 with prior knowledge; the host travels as :authority.
    let stream = TcpStream::connect(h.addr).await.unwrap();
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .uri("http://a.test/h2")
        .body(empty())
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let e = echo(&String::from_utf8_lossy(&body));
    assert_eq!(e["instance"], "a");
    assert_eq!(e["version"], "HTTP/1.1");
}

#[tokio::test]
async fn requests_spread_evenly_over_healthy_instances() {
    let insts = [
        Instance::start("i0").await,
        Instance::start("i1").await,
        Instance::start("i2").await,
        Instance::start("sick").await,
    ];
    let h = Harness::start(Settings {
        workers: 2,
        ..fast_settings()
    })
    .await;
    let ups: Vec<Upstream> = insts
        .iter()
        .enumerate()
        .map(|(i, inst)| inst.upstream("a", i as u32, inst.name != "sick"))
        .collect();
    h.publish(&fleet(&app("a", &["a.test"], "")), &ups);
    for _ in 0..30 {
        assert_eq!(h.get("a.test", "/").await.0, 200);
    }
    // Each worker thread takes its own turns (as nginx's do), so with two
    // workers an instance's share can be off by one.
    let hits: Vec<usize> = insts.iter().map(Instance::hits).collect();
    assert_eq!(hits.iter().sum::<usize>(), 30);
    assert!(hits[..3].iter().all(|n| (9..=11).contains(n)), "{hits:?}");
    assert_eq!(hits[3], 0, "the sick one got requests: {hits:?}");
}

// ---------------------------------------------------------------- swaps

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_swap_under_load_without_a_failed_request() {
    let a = Instance::start("a").await;
    let b = Instance::start("b").await;
    let h = Arc::new(Harness::start(fast_settings()).await);
    let f = fleet(&app("a", &["a.test"], ""));
    let tables = [
        vec![a.upstream("a", 0, true)],
        vec![a.upstream("a", 0, true), b.upstream("a", 1, true)],
        vec![b.upstream("a", 1, true)],
        vec![a.upstream("a", 0, false), b.upstream("a", 1, true)],
    ];
    h.publish(&f, &tables[0]);

    // A slow request started on the first table finishes after its
    // instance has left the table.
    let slow = {
        let h = Arc::clone(&h);
        tokio::spawn(async move { h.get("a.test", "/slow?ms=600").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    h.publish(&f, &tables[2]);

    // Load and swaps overlap for as long as either lasts, whatever the
    // build's speed: clients send at least their share and go on until
    // the swapper has made its swaps; it swaps until they stop.
    const SWAPS: usize = 100;
    let swaps = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (h, done, swaps, f) = (
            Arc::clone(&h),
            Arc::clone(&done),
            Arc::clone(&swaps),
            f.clone(),
        );
        tokio::spawn(async move {
            while !done.load(Ordering::SeqCst) {
                let n = swaps.load(Ordering::SeqCst);
                h.publish(&f, &tables[n % tables.len()]);
                swaps.store(n + 1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    let mut load = JoinSet::new();
    for _ in 0..16 {
        let (h, swaps) = (Arc::clone(&h), Arc::clone(&swaps));
        load.spawn(async move {
            let client = client();
            let (mut sent, mut failed) = (0usize, Vec::new());
            while sent < 150 || swaps.load(Ordering::SeqCst) < SWAPS {
                let (status, _, body) =
                    send(&client, h.addr, "a.test", Method::GET, "/", empty()).await;
                if status != 200 {
                    failed.push(format!("{status}: {body}"));
                }
                sent += 1;
            }
            (sent, failed)
        });
    }
    let (mut sent, mut failed) = (0, Vec::new());
    while let Some(r) = load.join_next().await {
        let (n, f) = r.unwrap();
        sent += n;
        failed.extend(f);
    }
    done.store(true, Ordering::SeqCst);
    swapper.await.unwrap();
    assert!(
        failed.is_empty(),
        "{} of {sent} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(a.hits() > 0 && b.hits() > 0);

    let (status, _, body) = slow.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(echo(&body)["instance"], "a");
}

// ---------------------------------------------------------------- failures

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instance_is_retried_elsewhere_and_marked_down() {
    let mut a = Instance::start("a").await;
    let b = Instance::start("b").await;
    // Two workers, each taking its own turns: four requests reach both.
    let h = Arc::new(
        Harness::start(Settings {
            workers: 2,
            ..fast_settings()
        })
        .await,
    );
    let f = fleet(&app("a", &["a.test"], ""));
    h.publish(&f, &[a.upstream("a", 0, true), b.upstream("a", 1, true)]);
    for _ in 0..4 {
        assert_eq!(h.get("a.test", "/").await.0, 200);
    }
    assert_eq!(a.hits() + b.hits(), 4);
    assert!(a.hits() > 0 && b.hits() > 0, "{} / {}", a.hits(), b.hits());

    // Requests in flight on a when it dies, and more after.
    let mut load = JoinSet::new();
    for i in 0..8 {
        let h = Arc::clone(&h);
        load.spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 40)).await;
            let mut statuses = Vec::new();
            for _ in 0..10 {
                statuses.push(h.get("a.test", "/slow?ms=20").await.0);
            }
            statuses
        });
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    a.kill();
    let mut statuses = Vec::new();
    while let Some(r) = load.join_next().await {
        statuses.extend(r.unwrap());
    }
    assert!(
        statuses.iter().all(|s| *s == 200),
        "some GETs failed: {statuses:?}"
    );
    let hits_after = a.hits();
    // Marked down: for the next seconds nothing even tries it.
    let metrics = h.metrics().await;
    let failures = metric(
        &metrics,
        "prism_proxy_upstream_connect_failures_total",
        "instance=\"0\"",
    );
    assert!(failures >= 1.0, "{metrics}");
    let available = metric(&metrics, "prism_proxy_upstream_available", "instance=\"0\"");
    assert_eq!(available, 0.0);
    for _ in 0..10 {
        assert_eq!(h.get("a.test", "/").await.0, 200);
    }
    assert_eq!(a.hits(), hits_after);
    assert_eq!(
        metric(
            &h.metrics().await,
            "prism_proxy_upstream_connect_failures_total",
            "instance=\"0\""
        ),
        failures
    );
}

#[tokio::test]
async fn a_request_with_a_body_is_not_sent_twice() {
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().port()
    };
    let b = Instance::start("b").await;
    // One worker: its turns start at the dead one.
    let h = Harness::start(Settings {
        workers: 1,
        ..fast_settings()
    })
    .await;
    let f = fleet(&app("a", &["a.test"], ""));
    h.publish(
        &f,
        &[upstream_at("a", 0, dead, true), b.upstream("a", 1, true)],
    );
    // Round robin starts at the dead one.
    let (status, _, _) = send(
        &client(),
        h.addr,
        "a.test",
        Method::POST,
        "/body",
        Full::new(Bytes::from_static(b"order=1")).boxed(),
    )
    .await;
    assert_eq!(status, 502);
    assert_eq!(b.hits(), 0);
    // The dead one is now marked down: the next POST goes to b.
    let (status, _, body) = send(
        &client(),
        h.addr,
        "a.test",
        Method::POST,
        "/body",
        Full::new(Bytes::from_static(b"order=2")).boxed(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(echo(&body)["length"], "7");
}

#[tokio::test]
async fn an_instance_that_does_not_answer_in_time_is_504() {
    let a = Instance::start("a").await;
    let h = Harness::serving_a(
        &a,
        Settings {
            upstream_timeout: Duration::from_millis(300),
            ..fast_settings()
        },
    )
    .await;
    let started = Instant::now();
    let (status, _, _) = h.get("a.test", "/slow?ms=3000").await;
    assert_eq!(status, 504);
    assert!(started.elapsed() < Duration::from_secs(2));

    // One kept-alive connection keeps its timer between requests: each
    // request gets the whole timeout, after one that ran out as well.
    let stream = TcpStream::connect(h.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for (path, want) in [
        ("/slow?ms=3000", 504),
        ("/slow?ms=0", 200),
        ("/slow?ms=200", 200),
        ("/slow?ms=3000", 504),
        ("/slow?ms=200", 200),
    ] {
        let req = Request::get(path)
            .header("host", "a.test")
            .body(empty())
            .unwrap();
        let started = Instant::now();
        let resp = sender
            .send_request(req)
            .await
            .expect("the connection stays open");
        let status = resp.status();
        resp.into_body().collect().await.unwrap();
        let took = started.elapsed();
        assert_eq!(status, want, "{path} after {took:?}");
        if want == 504 {
            assert!(
                took >= Duration::from_millis(250) && took < Duration::from_secs(2),
                "{path}: 504 after {took:?}"
            );
        }
    }
}

// ---------------------------------------------------------------- upgrades

#[tokio::test]
async fn websockets_pass_through() {
    let ws = websocket_instance().await;
    let h = Harness::start(fast_settings()).await;
    h.publish(
        &fleet(&app("chat", &["chat.test"], "")),
        &[upstream_at("chat", 0, ws.port(), true)],
    );
    let stream = TcpStream::connect(h.addr).await.unwrap();
    let (mut socket, resp) = tokio_tungstenite::client_async("ws://chat.test/socket", stream)
        .await
        .expect("the handshake passes through the proxy");
    assert_eq!(resp.status(), 101);
    assert!(resp.headers().contains_key("x-request-id"));
    for word in ["hello", "through", "the proxy"] {
        socket.send(Message::text(word)).await.unwrap();
        let reply = socket.next().await.unwrap().unwrap();
        assert_eq!(reply.into_text().unwrap().as_str(), word.to_uppercase());
    }
    socket.close(None).await.unwrap();
}

// ---------------------------------------------------------------- limits

#[tokio::test]
async fn slowloris_is_cut_off_after_the_header_timeout() {
    let a = Instance::start("a").await;
    let h = Harness::serving_a(
        &a,
        Settings {
            header_timeout: Duration::from_secs(1),
            ..fast_settings()
        },
    )
    .await;

    // A head trickling in, a byte every 200 ms.
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    let cut = trickle(&mut s).await;
    assert!(
        cut >= Duration::from_millis(900) && cut < Duration::from_millis(2500),
        "cut after {cut:?}"
    );

    // A connection that sends nothing at all is closed as well.
    let (_, waited) = raw(h.addr, b"", Duration::from_secs(5)).await;
    assert!(
        waited < Duration::from_millis(2500),
        "silent connection kept {waited:?}"
    );
    // Others are served all along.
    assert_eq!(h.get("a.test", "/").await.0, 200);
    assert_eq!(a.hits(), 1);
}

/// Trickles a request head into `s`, a byte every 200 ms, and returns how
/// long it took the proxy to close the connection.
async fn trickle(s: &mut TcpStream) -> Duration {
    let started = Instant::now();
    let head = b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    for byte in head.iter() {
        if s.write_all(&[*byte]).await.is_err() {
            return started.elapsed();
        }
        // A closed socket reads as EOF (or an error).
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await;
        if read.is_ok() {
            return started.elapsed();
        }
    }
    panic!("the proxy never closed the slow connection");
}

/// Reads one answer to `GET /slow` off a kept-alive connection.
async fn answer_on(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while !out.ends_with(b"slept=0\n") {
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("the connection stays open");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_kept_alive_connection_waits_out_the_idle_timeout_and_a_later_slow_head_is_cut() {
    let a = Instance::start("a").await;
    let h = Harness::serving_a(
        &a,
        Settings {
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            ..fast_settings()
        },
    )
    .await;
    let request = b"GET /slow?ms=0 HTTP/1.1\r\nHost: a.test\r\n\r\n";
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(request).await.unwrap();
    assert!(answer_on(&mut s).await.starts_with("HTTP/1.1 200"));
    // Between requests the idle timeout applies, not the header one.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.write_all(request).await.unwrap();
    assert!(answer_on(&mut s).await.starts_with("HTTP/1.1 200"));
    // A later head that trickles in is timed from its first byte.
    let cut = trickle(&mut s).await;
    assert!(
        cut >= Duration::from_millis(900) && cut < Duration::from_millis(2500),
        "cut after {cut:?}"
    );
    assert_eq!(a.hits(), 2);
}

/// An instance that answers each request with its head and a first chunk
/// at once, and the last chunk after `pause`.
async fn dripping_instance(pause: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    let mut head = Vec::new();
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    let start =
                        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n";
                    if s.write_all(start).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(pause).await;
                    if s.write_all(b"4\r\nlast\r\n0\r\n\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn a_pipelined_request_waits_out_a_slow_answer_without_the_connection_being_cut() {
    let port = dripping_instance(Duration::from_millis(2500)).await;
    let h = Harness::start(Settings {
        header_timeout: Duration::from_secs(1),
        ..fast_settings()
    })
    .await;
    h.publish(
        &fleet(&app("d", &["d.test"], "")),
        &[upstream_at("d", 0, port, true)],
    );
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(b"GET /1 HTTP/1.1\r\nHost: d.test\r\n\r\n")
        .await
        .unwrap();
    // The second request comes while the first answer is still streaming
    // and goes silent for longer than the header timeout.
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while !out.ends_with(b"first\r\n") {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    s.write_all(b"GET /2 HTTP/1.1\r\nHost: d.test\r\n\r\n")
        .await
        .unwrap();
    let answers = |out: &[u8]| out.windows(5).filter(|w| w == b"0\r\n\r\n").count();
    while answers(&out) < 2 {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("both answers in time")
            .unwrap_or(0);
        assert!(n > 0, "cut after {:?}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    assert_eq!(text.matches("last").count(), 2, "{text}");
}

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_still_gets_the_answer() {
    let a = Instance::start("a").await;
    let h = Harness::serving_a(&a, fast_settings()).await;
    // Sends its request, shuts its sending side (as `nc -N` and some
    // HTTP/1.0-era clients do), then waits for the answer: the end of
    // input must not cut the request short while the instance works.
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(b"GET /slow?ms=300 HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .await
        .unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the proxy closes after answering")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("instance=a\nslept=300"), "{text}");
    assert_eq!(h.proxy.in_flight(&a.addr.to_string()), Some(0));
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let a = Instance::start("a").await;
    let h = Harness::serving_a(
        &a,
        Settings {
            idle_timeout: Duration::from_millis(800),
            ..fast_settings()
        },
    )
    .await;
    // HTTP/2 has no header timeout between requests: the idle one applies.
    let mut s = TcpStream::connect(h.addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "idle HTTP/2 connection never closed");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_millis(2000),
        "closed after {waited:?}"
    );
}

#[tokio::test]
async fn oversized_heads_and_bodies_are_refused() {
    let a = Instance::start("a").await;
    let h = Harness::start(Settings {
        max_header_size: 8 << 10,
        ..fast_settings()
    })
    .await;
    let f = fleet(&format!(
        "[proxy]\nmax_body = \"4K\"\n{}{}",
        app("a", &["a.test"], ""),
        app("big", &["big.test"], "max_body = \"64K\""),
    ));
    h.publish(&f, &[a.upstream("a", 0, true), a.upstream("big", 0, true)]);

    let head = format!(
        "GET / HTTP/1.1\r\nHost: a.test\r\nX-Big: {}\r\n\r\n",
        "x".repeat(16 << 10)
    );
    let (reply, _) = raw(h.addr, head.as_bytes(), Duration::from_secs(3)).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");

    let post = |host: &'static str, body: Body| {
        let addr = h.addr;
        async move { send(&client(), addr, host, Method::POST, "/body", body).await }
    };
    // Declared too large: refused before the instance sees it.
    let (status, _, body) = post("a.test", Full::new(Bytes::from(vec![b'x'; 5000])).boxed()).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(a.hits(), 0);
    // Streamed without a length: cut when it passes the limit.
    let chunks = (0..10).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'y'; 1000]))));
    let streamed = BodyExt::boxed(StreamBody::new(futures::stream::iter(chunks)));
    let (status, _, _) = post("a.test", streamed).await;
    assert_eq!(status, 413);
    // Under the limit, and a service with its own larger one.
    let (status, _, body) = post("a.test", Full::new(Bytes::from(vec![b'x'; 4096])).boxed()).await;
    assert_eq!(
        (status, echo(&body)["length"].as_str()),
        (StatusCode::OK, "4096")
    );
    let (status, _, body) = post(
        "big.test",
        Full::new(Bytes::from(vec![b'x'; 60000])).boxed(),
    )
    .await;
    assert_eq!(
        (status, echo(&body)["length"].as_str()),
        (StatusCode::OK, "60000")
    );
}

#[tokio::test]
async fn connections_past_the_limit_wait_their_turn() {
    let a = Instance::start("a").await;
    let h = Harness::serving_a(
        &a,
        Settings {
            max_connections: 2,
            ..fast_settings()
        },
    )
    .await;
    let first = TcpStream::connect(h.addr).await.unwrap();
    let _second = TcpStream::connect(h.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let third = tokio::spawn({
        let addr = h.addr;
        async move {
            let started = Instant::now();
            let (reply, _) = raw(
                addr,
                b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
                Duration::from_secs(5),
            )
            .await;
            (reply, started.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(a.hits(), 0, "a third connection was served past the limit");
    drop(first);
    let (reply, waited) = third.await.unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(waited >= Duration::from_millis(600), "{waited:?}");
}

// ---------------------------------------------------------------- drain

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_stops_new_requests_and_waits_for_those_in_flight() {
    let a = Instance::start("a").await;
    let b = Instance::start("b").await;
    let h = Arc::new(Harness::start(fast_settings()).await);
    let f = fleet(&app("a", &["a.test"], ""));
    h.publish(&f, &[a.upstream("a", 0, true)]);
    let slow = {
        let h = Arc::clone(&h);
        tokio::spawn(async move { h.get("a.test", "/slow?ms=1000").await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The new instance is up: both in the table, then the old one drains.
    h.publish(&f, &[a.upstream("a", 0, true), b.upstream("a", 1, true)]);
    let endpoint = a.upstream("a", 0, true).endpoint();
    assert_eq!(h.proxy.in_flight(&endpoint), Some(1));
    let drain = {
        let h = Arc::clone(&h);
        let endpoint = endpoint.clone();
        tokio::spawn(async move { h.proxy.drain(&endpoint, None).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..6 {
        let (status, _, body) = h.get("a.test", "/").await;
        assert_eq!(status, 200);
        assert_eq!(echo(&body)["instance"], "b");
    }
    let report = drain.await.unwrap();
    assert!(report.known && report.finished, "{report:?}");
    assert_eq!(report.in_flight_left, 0);
    assert!(
        report.waited >= Duration::from_millis(600) && report.waited < Duration::from_millis(1500),
        "{report:?}"
    );
    let (status, _, body) = slow.await.unwrap();
    assert_eq!(
        (status, echo(&body)["instance"].as_str()),
        (StatusCode::OK, "a")
    );

    // A drain that runs out of time says how many were left.
    let stuck = {
        let h = Arc::clone(&h);
        tokio::spawn(async move { h.get("a.test", "/slow?ms=1500").await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let endpoint_b = b.upstream("a", 1, true).endpoint();
    let report = h
        .proxy
        .drain(&endpoint_b, Some(Duration::from_millis(300)))
        .await;
    assert!(!report.finished);
    assert_eq!(report.in_flight_left, 1);
    assert!(
        report.waited >= Duration::from_millis(300) && report.waited < Duration::from_millis(800)
    );
    // Both drained: nothing takes new requests.
    assert_eq!(h.get("a.test", "/").await.0, 503);
    assert_eq!(stuck.await.unwrap().0, 200);

    let report = h.proxy.drain("127.0.0.1:1", None).await;
    assert!(!report.known && report.finished);
}

// ---------------------------------------------------------------- admin

/// The value of the first sample of `name` whose labels contain `label`.
fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .find(|l| {
            let rest = l.strip_prefix(name).unwrap_or("");
            (rest.starts_with('{') || rest.starts_with(' ')) && l.contains(label)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} with {label} in:\n{text}"))
}

#[tokio::test]
async fn admin_serves_health_and_metrics() {
    let a = Instance::start("a").await;
    let h = Harness::start(fast_settings()).await;
    h.publish(
        &fleet(&app("a", &["a.test", "*.a.test"], "")),
        &[a.upstream("a", 0, true)],
    );
    for _ in 0..3 {
        h.get("a.test", "/").await;
    }
    h.get("x.a.test", "/").await;
    h.get("nope.test", "/").await;

    let (status, _, body) = send(
        &client(),
        h.admin,
        "localhost",
        Method::GET,
        "/healthz",
        empty(),
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));

    let m = h.metrics().await;
    let requests = "prism_proxy_requests_total";
    assert_eq!(metric(&m, requests, "host=\"a.test\",code=\"200\""), 3.0);
    assert_eq!(metric(&m, requests, "host=\"*.a.test\",code=\"200\""), 1.0);
    assert_eq!(metric(&m, requests, "host=\"unknown\",code=\"404\""), 1.0);
    assert_eq!(
        metric(
            &m,
            "prism_proxy_request_duration_seconds_count",
            "host=\"a.test\""
        ),
        3.0
    );
    assert_eq!(
        metric(
            &m,
            "prism_proxy_request_duration_seconds_bucket",
            "le=\"+Inf\",host=\"a.test\""
        ),
        3.0
    );
    let labels = format!(
        "app=\"a\",service=\"web\",instance=\"0\",node=\"local\",endpoint=\"{}\"",
        a.addr
    );
    assert_eq!(metric(&m, "prism_proxy_upstream_healthy", &labels), 1.0);
    assert_eq!(metric(&m, "prism_proxy_upstream_in_flight", &labels), 0.0);
    assert_eq!(metric(&m, "prism_proxy_route_swaps_total", ""), 1.0);
    assert!(m.trim_end().ends_with("# EOF"));

    let (status, _, _) = send(
        &client(),
        h.admin,
        "localhost",
        Method::GET,
        "/other",
        empty(),
    )
    .await;
    assert_eq!(status, 404);
    let err = proxy::bind_admin("0.0.0.0:0".parse().unwrap()).unwrap_err();
    assert!(err.to_string().contains("loopback"), "{err}");
}

// ---------------------------------------------------------------- shutdown

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish() {
    let a = Instance::start("a").await;
    let mut h = Harness::serving_a(&a, fast_settings()).await;
    let addr = h.addr;
    let slow = tokio::spawn(async move {
        send(
            &client(),
            addr,
            "a.test",
            Method::GET,
            "/slow?ms=500",
            empty(),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let _ = h.stop.take().unwrap().send(());
    let (status, _, body) = slow.await.unwrap();
    assert_eq!(
        (status, echo(&body)["instance"].as_str()),
        (StatusCode::OK, "a")
    );
    tokio::time::timeout(Duration::from_secs(3), &mut h.served)
        .await
        .expect("serve returns once connections are done")
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
}

// ---------------------------------------------------------------- the lab

/// The lab's test app, unlabelled (Prism's own passes never see it), on a
/// node with its port published at a free host port; removed when dropped.
struct LabApp<'a> {
    lab: &'a common::Lab,
    node: &'a common::Node,
    name: String,
    port: u16,
}

impl<'a> LabApp<'a> {
    fn start(lab: &'a common::Lab, node: &'a common::Node, instance: u32) -> LabApp<'a> {
        let name = format!("proxy-test-{}-{instance}", std::process::id());
        let run = format!(
            "docker run -d --init --name {name} -p 8080 -e PRISM_APP=demo -e PRISM_INSTANCE={instance} {}",
            lab.testapp_image
        );
        lab.ssh(&node.address, &run)
            .unwrap_or_else(|e| panic!("{run} on {}: {e:#}", node.name));
        let mut app = LabApp {
            lab,
            node,
            name,
            port: 0,
        };
        // `0.0.0.0:32768` (and maybe `[::]:32768`).
        let ports = lab
            .ssh(&node.address, &format!("docker port {} 8080", app.name))
            .unwrap();
        app.port = ports
            .lines()
            .next()
            .and_then(|l| l.rsplit(':').next())
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no published port in {ports:?}"));
        let addr = format!("{}:{}", node.address, app.port);
        common::retry(Duration::from_secs(20), || {
            match common::http_status(&addr, "/up", Duration::from_secs(2))? {
                200 => Ok(()),
                s => anyhow::bail!("/up answered {s}"),
            }
        })
        .unwrap_or_else(|e| panic!("the test app on {addr} never came up: {e:#}"));
        app
    }

    fn upstream(&self, instance: u32) -> Upstream {
        Upstream {
            app: "demo".into(),
            service: "web".into(),
            instance,
            node: self.node.name.clone(),
            address: self.node.address.clone(),
            port: self.port,
            healthy: true,
        }
    }

    fn remove(&self) {
        let _ = self
            .lab
            .ssh(&self.node.address, &format!("docker rm -f {}", self.name));
    }
}

impl Drop for LabApp<'_> {
    fn drop(&mut self) {
        self.remove();
    }
}

/// `key: value` lines of the test app's answer.
fn testapp_echo(body: &str) -> BTreeMap<String, String> {
    body.lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn the_lab_test_app_on_two_nodes_behind_the_proxy() {
    let lab = common::Lab::load();
    assert!(lab.nodes.len() >= 2, "the lab needs two nodes");
    let (a, b) = tokio::task::block_in_place(|| {
        (
            LabApp::start(&lab, &lab.nodes[0], 0),
            LabApp::start(&lab, &lab.nodes[1], 1),
        )
    });
    let h = Harness::start(Settings {
        workers: 2,
        ..fast_settings()
    })
    .await;
    h.publish(
        &fleet(&app("demo", &["demo.lab.test"], "")),
        &[a.upstream(0), b.upstream(1)],
    );
    let mut seen = BTreeMap::new();
    for _ in 0..10 {
        let (status, _, body) = h.get("demo.lab.test", "/").await;
        assert_eq!(status, 200, "{body}");
        let e = testapp_echo(&body);
        assert_eq!(e["host"], "demo.lab.test");
        *seen.entry(e["instance"].clone()).or_insert(0) += 1;
    }
    // Each of the two workers takes its own turns: 5 and 5, or one off.
    assert_eq!(seen.values().sum::<usize>(), 10);
    assert!(
        ["0", "1"]
            .iter()
            .all(|i| (4..=6).contains(&seen.get(*i).copied().unwrap_or(0))),
        "{seen:?}"
    );
    let (status, _, body) = h.get("demo.lab.test", "/slow?ms=300").await;
    assert_eq!((status, body.trim()), (StatusCode::OK, "slept 300 ms"));

    // One instance is gone without notice: every GET still succeeds.
    tokio::task::block_in_place(|| a.remove());
    for _ in 0..10 {
        let (status, _, body) = h.get("demo.lab.test", "/").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(testapp_echo(&body)["instance"], "1");
    }
}
