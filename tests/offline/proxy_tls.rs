//! HTTPS on the proxy, end to end on 127.0.0.1: certificate files chosen
//! by SNI (exact and wildcard), HTTP/2 over ALPN, reloading changed files,
//! and certificates from ACME against Debian's pebble (with
//! pebble-challtestsrv answering its DNS with 127.0.0.1), validated over
//! HTTP-01 through the proxy's own HTTP listener or over TLS-ALPN-01
//! through its HTTPS listener.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prism::config::{AcmeChallenge, Config};
use prism::proxy::{Acme, AcmeSettings, Listener, Obtained, Proxy, RouteTable, Settings, Upstream};
use prometheus_client::registry::Registry;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

// ------------------------------------------------------------- certificates

/// A throwaway CA that signs the certificates a test serves.
struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        roots
    }

    /// A leaf for `sans` (DNS names, or IP addresses), with `cn` as its
    /// subject: (certificate PEM, key PEM).
    fn leaf(&self, cn: &str, sans: &[&str]) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans
            .iter()
            .map(|s| match s.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*s).try_into().unwrap()),
            })
            .collect();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The subject CN of a DER certificate.
fn subject_cn(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_owned()
}

// ---------------------------------------------------------------- instances

/// An HTTP/1.1 instance answering `instance=NAME`, then the request's
/// X-Forwarded-Proto and Host.
async fn instance(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| async move {
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    let text = format!(
                        "instance={name}\nproto={}\nhost={}\n",
                        h("x-forwarded-proto"),
                        h("host")
                    );
                    Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from(text))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn upstream(app: &str, addr: SocketAddr) -> Upstream {
    Upstream {
        app: app.into(),
        service: "web".into(),
        instance: 0,
        node: "local".into(),
        address: "127.0.0.1".into(),
        port: addr.port(),
        healthy: true,
    }
}

// ---------------------------------------------------------------- the proxy

/// fleet.toml written into `dir` (so relative paths resolve there) and
/// loaded the way the operator loads it.
fn write_fleet(dir: &Path, text: &str) -> Config {
    let file = dir.join("fleet.toml");
    std::fs::write(&file, text).unwrap();
    Config::load(&file).unwrap_or_else(|e| panic!("fleet.toml: {e}"))
}

/// The proxy serving HTTP and HTTPS on loopback, as the operator runs it.
struct Running {
    proxy: Proxy,
    http: SocketAddr,
    https: SocketAddr,
    stops: Vec<oneshot::Sender<()>>,
}

impl Running {
    /// `http` is an HTTP listener bound ahead (ACME's validation port has to
    /// be known before the proxy starts).
    fn start(proxy: Proxy, http: Listener) -> Running {
        let https = proxy.bind_https("127.0.0.1:0".parse().unwrap()).unwrap();
        Running::start_with(proxy, http, https)
    }

    /// With the HTTPS listener bound ahead too (TLS-ALPN-01 validates on it).
    fn start_with(proxy: Proxy, http: Listener, https: Listener) -> Running {
        let addrs = (http.local_addr(), https.local_addr());
        let mut stops = Vec::new();
        for listener in [http, https] {
            let (stop, stopped) = oneshot::channel::<()>();
            let proxy2 = proxy.clone();
            tokio::spawn(async move {
                proxy2
                    .serve(listener, async {
                        let _ = stopped.await;
                    })
                    .await
            });
            stops.push(stop);
        }
        Running {
            proxy,
            http: addrs.0,
            https: addrs.1,
            stops,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
    }
}

fn new_proxy(config: &Config) -> Proxy {
    proxy_with_metrics(config).0
}

fn proxy_with_metrics(config: &Config) -> (Proxy, Registry) {
    let mut registry = Registry::default();
    let proxy = Proxy::new(
        Settings {
            shutdown_grace: Duration::from_secs(1),
            ..Settings::from_config(&config.fleet.proxy)
        },
        &mut registry,
    );
    (proxy, registry)
}

/// The metrics in Prometheus text format.
fn scrape(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

// ---------------------------------------------------------------- clients

fn client_config(roots: RootCertStore, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn handshake(
    addr: SocketAddr,
    sni: &str,
    roots: RootCertStore,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    TlsConnector::from(client_config(roots, alpn))
        .connect(name, tcp)
        .await
}

/// What one HTTPS request saw: the certificate, the protocol, the answer.
struct Seen {
    leaf: CertificateDer<'static>,
    alpn: Option<Vec<u8>>,
    version: http::Version,
    status: StatusCode,
    body: String,
}

/// GET `path` for `host` over TLS with SNI `host`, in HTTP/2 when ALPN
/// agrees on it.
async fn get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    roots: RootCertStore,
    alpn: &[&[u8]],
) -> std::io::Result<Seen> {
    let tls = handshake(addr, host, roots, alpn).await?;
    let (_, conn) = tls.get_ref();
    let leaf = conn.peer_certificates().unwrap()[0].clone().into_owned();
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let io = TokioIo::new(tls);
    let resp = if alpn.as_deref() == Some(b"h2") {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get(format!("https://{host}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        send.send_request(req).await.unwrap()
    };
    let version = resp.version();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Ok(Seen {
        leaf,
        alpn,
        version,
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

const H1: &[&[u8]] = &[b"http/1.1"];
const H2: &[&[u8]] = &[b"h2", b"http/1.1"];

// ---------------------------------------------------------------- static files

/// Two certificate files (one exact, one wildcard) and two apps behind the
/// proxy; the files live beside fleet.toml and are named relatively.
struct StaticSite {
    dir: tempfile::TempDir,
    ca: TestCa,
    config: Config,
    running: Running,
    /// Not running: a test that wants files watched starts it.
    upkeep: prism::proxy::TlsUpkeep,
    metrics: Registry,
}

async fn static_site() -> StaticSite {
    static_site_with("").await
}

/// [`static_site`] with `proxy` added to its `[proxy]` table.
async fn static_site_with(proxy: &str) -> StaticSite {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("Prism test CA");
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    for (file, cn, sans) in [
        ("a", "a cert", &["a.test"][..]),
        ("b", "b wildcard cert", &["*.b.test"][..]),
    ] {
        let (cert, key) = ca.leaf(cn, sans);
        std::fs::write(certs.join(format!("{file}.pem")), cert).unwrap();
        std::fs::write(certs.join(format!("{file}.key")), key).unwrap();
    }
    let config = write_fleet(
        dir.path(),
        &format!(
            r#"
[fleet]
name = "t"
[discovery]
provider = "ec2"
[proxy]
listen = "127.0.0.1:80"
https = "127.0.0.1:443"
{proxy}
[[proxy.certificates]]
cert = "certs/a.pem"
key = "certs/a.key"
[[proxy.certificates]]
cert = "certs/b.pem"
key = "certs/b.key"
[apps.a.services.web]
image = "x"
port = 8080
hosts = ["a.test", "plain.test"]
[apps.b.services.web]
image = "x"
port = 8080
hosts = ["*.b.test"]
"#
        ),
    );
    let (proxy, metrics) = proxy_with_metrics(&config);
    let upkeep = proxy.prepare_tls(&config).unwrap();
    assert!(upkeep.acme_hosts().is_empty());
    let (a, b) = (instance("a").await, instance("b").await);
    proxy.publish(RouteTable::build(
        &config.fleet,
        &[upstream("a", a), upstream("b", b)],
    ));
    let http = proxy.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let running = Running::start(proxy, http);
    StaticSite {
        dir,
        ca,
        config,
        running,
        upkeep,
        metrics,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_the_route() {
    let site = static_site().await;
    let addr = site.running.https;
    let a = get(addr, "a.test", "/", site.ca.roots(), H1).await.unwrap();
    assert_eq!(subject_cn(&a.leaf), "a cert");
    assert_eq!(a.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(a.status, 200);
    assert!(a.body.contains("instance=a\n"), "{}", a.body);
    assert!(a.body.contains("proto=https\n"), "{}", a.body);
    assert!(a.body.contains("host=a.test\n"), "{}", a.body);

    let b = get(addr, "shop.b.test", "/", site.ca.roots(), H1)
        .await
        .unwrap();
    assert_eq!(subject_cn(&b.leaf), "b wildcard cert");
    assert!(b.body.contains("instance=b\n"), "{}", b.body);
    assert!(b.body.contains("proto=https\n"), "{}", b.body);
}

/// One plain-HTTP request to the static site: status, Location, body.
async fn plain_get(site: &StaticSite, host: &str, path: &str) -> (u16, String, String) {
    let tcp = TcpStream::connect(site.running.http).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            Request::get(path)
                .header("host", host)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        location,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_for_a_host_with_a_certificate_is_redirected_to_https() {
    let site = static_site().await;
    // `https` in fleet.toml is port 443: no port in the Location.
    let (status, location, _) = plain_get(&site, "A.test:80", "/cart?item=2&n=1").await;
    assert_eq!(status, 308);
    assert_eq!(location, "https://a.test/cart?item=2&n=1");
    let (status, location, _) = plain_get(&site, "shop.b.test", "/").await;
    assert_eq!((status, location.as_str()), (308, "https://shop.b.test/"));
    // A Host that is no plain DNS name never makes a Location, though it
    // ends like the wildcard.
    let (status, location, body) = plain_get(&site, "evil%2ecom/.b.test", "/").await;
    assert_eq!((status, location.as_str()), (200, ""));
    assert!(body.contains("instance=b\n"), "{body}");

    // ACME paths stay on HTTP (passed on to the app when no challenge is
    // pending), as does a host no certificate covers.
    let (status, _, body) =
        plain_get(&site, "a.test", "/.well-known/acme-challenge/unknown-token").await;
    assert_eq!(status, 200);
    assert!(body.contains("instance=a\nproto=http\n"), "{body}");
    let (status, _, body) = plain_get(&site, "plain.test", "/").await;
    assert_eq!(status, 200);
    assert!(body.contains("instance=a\nproto=http\n"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_https_false_serves_plain_http_as_it_comes() {
    let site = static_site_with("redirect_https = false\n").await;
    let (status, location, body) = plain_get(&site, "a.test", "/").await;
    assert_eq!((status, location.as_str()), (200, ""));
    assert!(body.contains("instance=a\nproto=http\n"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_missing_sni_fails_the_handshake() {
    let site = static_site().await;
    let addr = site.running.https;
    // No certificate for the name: no default certificate either.
    for sni in ["c.test", "x.y.b.test", "b.test"] {
        let err = handshake(addr, sni, site.ca.roots(), H1).await.err();
        assert!(err.is_some(), "{sni} got a certificate");
    }
    // An IP address is sent without SNI (RFC 6066): refused too.
    let err = handshake(addr, "127.0.0.1", site.ca.roots(), H1)
        .await
        .err();
    assert!(err.is_some(), "a handshake without SNI got a certificate");
    // And the proxy still serves the names it has.
    let a = get(addr, "A.TEST", "/", site.ca.roots(), H1).await.unwrap();
    assert_eq!(subject_cn(&a.leaf), "a cert");

    // Counted once the proxy's side of each handshake has ended.
    let mut text = scrape(&site.metrics);
    for _ in 0..100 {
        if text.contains("prism_proxy_tls_handshake_failures_total 4\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        text = scrape(&site.metrics);
    }
    assert!(
        text.contains("prism_proxy_tls_handshake_failures_total 4\n"),
        "{text}"
    );
    for name in ["a.test", "*.b.test"] {
        let series = format!(
            "prism_proxy_certificate_expiry_timestamp_seconds{{name=\"{name}\",source=\"file\"}} "
        );
        assert!(text.contains(&series), "{series} in {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_by_alpn() {
    let site = static_site().await;
    let seen = get(site.running.https, "a.test", "/x?y=1", site.ca.roots(), H2)
        .await
        .unwrap();
    assert_eq!(seen.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(seen.version, http::Version::HTTP_2);
    assert_eq!(seen.status, 200);
    assert!(seen.body.contains("instance=a\n"), "{}", seen.body);
    assert!(seen.body.contains("proto=https\n"), "{}", seen.body);
    assert!(seen.body.contains("host=a.test\n"), "{}", seen.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_certificate_files_are_served_after_a_reload() {
    let site = static_site().await;
    let tls = site.running.proxy.tls();
    assert_eq!(tls.reload_changed_files().0, 0, "nothing changed yet");
    let (cert, key) = site.ca.leaf("a cert, renewed", &["a.test"]);
    let certs = site.dir.path().join("certs");
    for (file, text) in [("a.pem", cert), ("a.key", key)] {
        let path = certs.join(file);
        std::fs::write(&path, text).unwrap();
        // A later mtime than the first write, however coarse the clock.
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(5))
            .unwrap();
    }
    let (changed, errors) = tls.reload_changed_files();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(changed, 1);
    let a = get(site.running.https, "a.test", "/", site.ca.roots(), H1)
        .await
        .unwrap();
    assert_eq!(subject_cn(&a.leaf), "a cert, renewed");

    // A broken file keeps the good certificate serving.
    let path = certs.join("a.pem");
    std::fs::write(&path, "not a certificate").unwrap();
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(10))
        .unwrap();
    let (changed, errors) = tls.reload_changed_files();
    assert_eq!(changed, 0);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].field, "proxy.certificates[0]");
    let a = get(site.running.https, "a.test", "/", site.ca.roots(), H1)
        .await
        .unwrap();
    assert_eq!(subject_cn(&a.leaf), "a cert, renewed");

    // The upkeep task the operator runs picks changes up by itself.
    let mut upkeep = site.upkeep;
    upkeep.check_files = Duration::from_millis(50);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(upkeep.run(async {
        let _ = stopped.await;
    }));
    let (cert, key) = site.ca.leaf("a cert, third", &["a.test"]);
    // Key first, as a careful renewal tool would: a new cert with the old
    // key in between fails to load and the second one keeps serving.
    for (file, text) in [("a.key", key), ("a.pem", cert)] {
        let path = certs.join(file);
        std::fs::write(&path, text).unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(15))
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let seen = get(site.running.https, "a.test", "/", site.ca.roots(), H1).await;
        if let Ok(seen) = seen
            && subject_cn(&seen.leaf) == "a cert, third"
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the changed file was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificate_files_are_named_by_their_field() {
    let site = static_site().await;
    let certs = site.dir.path().join("certs");
    let tls = prism::proxy::Tls::new();

    std::fs::remove_file(certs.join("b.key")).unwrap();
    let err = tls.load_files(&site.config).unwrap_err();
    assert_eq!(err.field, "proxy.certificates[1].key");
    assert_eq!(err.path, certs.join("b.key"));
    assert!(err.to_string().contains("cannot read it"), "{err}");

    // Another certificate's key.
    std::fs::copy(certs.join("a.key"), certs.join("b.key")).unwrap();
    let err = tls.load_files(&site.config).unwrap_err();
    assert_eq!(err.field, "proxy.certificates[1]");
    assert!(err.to_string().contains("cannot be used"), "{err}");
    assert!(!tls.serves("a.test"), "a failed load serves nothing");
}

// ---------------------------------------------------------------- ACME

/// A free port on 127.0.0.1 (taken back at once: a small race, fine for
/// tests that start their servers right after).
fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// pebble and pebble-challtestsrv on loopback ports of their own.
struct Pebble {
    dir: PathBuf,
    acme: SocketAddr,
    management: SocketAddr,
    /// The CA of pebble's own HTTPS listeners (not of what it issues).
    listener_ca: TestCa,
    children: Vec<tokio::process::Child>,
}

impl Pebble {
    /// Starts both; pebble validates HTTP-01 on `http_port` and
    /// TLS-ALPN-01 on `tls_port` of whatever challtestsrv resolves a name
    /// to: 127.0.0.1.
    /// `validity`: the lifetime of the certificates it issues (default
    /// five years).
    async fn start(
        dir: &Path,
        http_port: u16,
        tls_port: u16,
        validity: Option<Duration>,
    ) -> Pebble {
        for tool in ["pebble", "pebble-challtestsrv"] {
            assert!(
                std::process::Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .stdout(Stdio::null())
                    .status()
                    .unwrap()
                    .success(),
                "{tool} is not installed: run lab/lab install (it installs Debian's pebble)"
            );
        }
        let listener_ca = TestCa::new("pebble listener CA");
        let (cert, key) = listener_ca.leaf("pebble", &["localhost", "127.0.0.1"]);
        std::fs::write(dir.join("pebble-cert.pem"), cert).unwrap();
        std::fs::write(dir.join("pebble-key.pem"), key).unwrap();
        std::fs::write(dir.join("pebble-ca.pem"), listener_ca.pem()).unwrap();
        let acme: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let management: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dns = format!("127.0.0.1:{}", free_port());
        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": acme.to_string(),
                "managementListenAddress": management.to_string(),
                "certificate": dir.join("pebble-cert.pem"),
                "privateKey": dir.join("pebble-key.pem"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        if let Some(v) = validity {
            config["pebble"]["certificateValidityPeriod"] = v.as_secs().into();
        }
        std::fs::write(dir.join("pebble.json"), config.to_string()).unwrap();
        let log = |name: &str| std::fs::File::create(dir.join(name)).unwrap();
        let challtestsrv = tokio::process::Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args([
                "-dns01",
                &dns,
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
            ])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pebble = tokio::process::Command::new("pebble")
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &dns])
            // Validate at once rather than after a random pause; never
            // reject a nonce at random (real validation stays on).
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let p = Pebble {
            dir: dir.to_path_buf(),
            acme,
            management,
            listener_ca,
            children: vec![challtestsrv, pebble],
        };
        p.wait_listening().await;
        p
    }

    async fn wait_listening(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(self.acme).await.is_ok()
                && TcpStream::connect(self.management).await.is_ok()
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "pebble did not listen on {} within 20 s: {}",
                self.acme,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn logs(&self) -> String {
        [
            "pebble.log",
            "pebble.err",
            "challtestsrv.log",
            "challtestsrv.err",
        ]
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
            format!("--- {f}\n{text}")
        })
        .collect()
    }

    /// The root pebble issues under (it makes a new one each start), from
    /// its management API.
    async fn issuing_root(&self) -> RootCertStore {
        let seen = get(
            self.management,
            "localhost",
            "/roots/0",
            self.listener_ca.roots(),
            H1,
        )
        .await
        .unwrap();
        assert_eq!(seen.status, 200, "{}", seen.body);
        let der = CertificateDer::pem_slice_iter(seen.body.as_bytes())
            .next()
            .expect("a PEM root")
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(der).unwrap();
        roots
    }

    async fn stop(mut self) {
        for child in &mut self.children {
            let _ = child.kill().await;
        }
    }
}

const ACME_HOST: &str = "shop.prism.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_certificate_from_pebble_is_served_stored_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    // The proxy's HTTP listener comes first: pebble checks HTTP-01 on it.
    let probe = new_proxy(&write_fleet(
        dir.path(),
        "[fleet]\nname = \"t\"\n[discovery]\nprovider = \"ec2\"\n",
    ));
    let http = probe.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let pebble = Pebble::start(dir.path(), http.local_addr().port(), free_port(), None).await;
    let config = write_fleet(
        dir.path(),
        &format!(
            r#"
[fleet]
name = "t"
state = "state/prism.db"
[discovery]
provider = "ec2"
[proxy]
listen = "127.0.0.1:80"
https = "127.0.0.1:443"
acme = {{ directory = "https://{}/dir", email = "ops@prism.test", ca = "pebble-ca.pem" }}
[apps.shop.services.web]
image = "x"
port = 8080
hosts = ["{ACME_HOST}", "*.wild.prism.test"]
"#,
            pebble.acme
        ),
    );
    let shop = instance("shop").await;
    let proxy = new_proxy(&config);
    proxy.publish(RouteTable::build(&config.fleet, &[upstream("shop", shop)]));
    let running = Running::start(proxy, http);

    let hosts = prism::proxy::acme_hosts(&config, |h| running.proxy.tls().files_cover(h));
    assert_eq!(
        hosts,
        [ACME_HOST],
        "wildcards are left to certificate files"
    );
    let settings = AcmeSettings::from_config(&config).unwrap();
    let store = dir.path().join("state/acme");
    assert_eq!(settings.store, store);
    let acme = Acme::new(settings.clone(), Arc::clone(running.proxy.tls()));
    let (how, renew_at) = match acme.ensure(ACME_HOST).await {
        Ok(r) => r,
        Err(e) => panic!("ACME failed: {e}\n{}", pebble.logs()),
    };
    assert_eq!(how, Obtained::Issued);
    // Real HTTP-01 validation, through the proxy's HTTP listener.
    let logs = pebble.logs();
    let probe = format!(
        "Attempting to validate w/ HTTP: http://{ACME_HOST}:{}/.well-known/acme-challenge/",
        running.http.port()
    );
    assert!(logs.contains(&probe), "{logs}");
    assert!(logs.contains("set VALID by completed challenge"), "{logs}");
    assert!(renew_at > SystemTime::now());

    // Through the proxy, trusting only pebble's issuing root.
    let roots = pebble.issuing_root().await;
    let seen = get(running.https, ACME_HOST, "/", roots.clone(), H2)
        .await
        .unwrap();
    assert_eq!(seen.status, 200);
    assert!(seen.body.contains("instance=shop\n"), "{}", seen.body);
    assert!(seen.body.contains("proto=https\n"), "{}", seen.body);
    let names = prism::proxy::cert_info(&seen.leaf).unwrap().names;
    assert_eq!(names, [ACME_HOST]);
    let first_leaf = seen.leaf.clone();

    // On disk: the chain, and a key and account only the owner can read.
    let host_dir = store.join(ACME_HOST);
    assert!(host_dir.join("cert.pem").is_file());
    for private in [host_dir.join("key.pem"), store.join("account.json")] {
        let mode = std::fs::metadata(&private).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", private.display());
    }
    // Asked again while fresh: nothing is ordered.
    assert_eq!(acme.ensure(ACME_HOST).await.unwrap().0, Obtained::Stored);
    drop(running);

    // A second start with pebble gone: the stored certificate is served,
    // and nothing is ordered (there is no CA to order from).
    pebble.stop().await;
    let proxy = new_proxy(&config);
    proxy.publish(RouteTable::build(&config.fleet, &[upstream("shop", shop)]));
    let http = proxy.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let running = Running::start(proxy, http);
    // The upkeep task the operator runs puts it in place...
    let upkeep = running.proxy.prepare_tls(&config).unwrap();
    assert_eq!(upkeep.acme_hosts(), [ACME_HOST]);
    let (stop_acme, acme_stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(upkeep.run(async {
        let _ = acme_stopped.await;
    }));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !running.proxy.tls().serves(ACME_HOST) {
        assert!(
            std::time::Instant::now() < deadline,
            "the stored certificate was not served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_acme.send(());
    task.await.unwrap();
    // ...from the store.
    let acme = Acme::new(settings, Arc::clone(running.proxy.tls()));
    let (how, _) = acme.ensure(ACME_HOST).await.unwrap();
    assert_eq!(how, Obtained::Stored);
    let seen = get(running.https, ACME_HOST, "/", roots, H1).await.unwrap();
    assert_eq!(seen.leaf, first_leaf);
    assert!(seen.body.contains("instance=shop\n"), "{}", seen.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_upkeep_renews_a_certificate_at_two_thirds_of_its_life() {
    let dir = tempfile::tempdir().unwrap();
    let probe = new_proxy(&write_fleet(
        dir.path(),
        "[fleet]\nname = \"t\"\n[discovery]\nprovider = \"ec2\"\n",
    ));
    let http = probe.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    // Certificates that live 9 s: due for renewal after 6 s.
    let pebble = Pebble::start(
        dir.path(),
        http.local_addr().port(),
        free_port(),
        Some(Duration::from_secs(9)),
    )
    .await;
    let config = write_fleet(
        dir.path(),
        &format!(
            r#"
[fleet]
name = "t"
state = "state/prism.db"
[discovery]
provider = "ec2"
[proxy]
https = "127.0.0.1:443"
acme = {{ directory = "https://{}/dir", email = "ops@prism.test", ca = "pebble-ca.pem" }}
[apps.shop.services.web]
image = "x"
port = 8080
hosts = ["{ACME_HOST}"]
"#,
            pebble.acme
        ),
    );
    let shop = instance("shop").await;
    let proxy = new_proxy(&config);
    proxy.publish(RouteTable::build(&config.fleet, &[upstream("shop", shop)]));
    let running = Running::start(proxy, http);
    let upkeep = running.proxy.prepare_tls(&config).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(upkeep.run(async {
        let _ = stopped.await;
    }));
    let roots = pebble.issuing_root().await;
    // The served leaf, once there is one.
    let leaf = || async {
        get(running.https, ACME_HOST, "/", roots.clone(), H1)
            .await
            .ok()
            .map(|seen| seen.leaf)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(l) = leaf().await {
            break l;
        }
        let logs = pebble.logs();
        assert!(
            std::time::Instant::now() < deadline,
            "no certificate within 30 s\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let info = prism::proxy::cert_info(&first).unwrap();
    let renew_at = info.renew_at();
    assert!(renew_at > SystemTime::now(), "issued already due");
    // Not renewed early...
    tokio::time::sleep(Duration::from_secs(2)).await;
    if SystemTime::now() < renew_at {
        assert_eq!(leaf().await.unwrap(), first, "renewed before it was due");
    }
    // ...but once due, without anyone asking.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let second = loop {
        if let Some(l) = leaf().await
            && l != first
        {
            break l;
        }
        let logs = pebble.logs();
        assert!(
            std::time::Instant::now() < deadline,
            "not renewed within 30 s\n{logs}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let renewed = prism::proxy::cert_info(&second).unwrap();
    assert!(renewed.not_before >= renew_at - Duration::from_secs(1));
    let stored = std::fs::read(
        dir.path()
            .join("state/acme")
            .join(ACME_HOST)
            .join("cert.pem"),
    )
    .unwrap();
    let stored = CertificateDer::pem_slice_iter(&stored)
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(stored, second, "the renewed certificate is the stored one");
    let _ = stop.send(());
    task.await.unwrap();
    pebble.stop().await;
}

// ---------------------------------------------------------------- TLS-ALPN-01

const ACME_TLS_1: &[&[u8]] = &[b"acme-tls/1"];

/// Takes any server certificate: for looking at the TLS-ALPN-01 challenge
/// certificate, which no trust store accepts (self-signed, with a critical
/// extension webpki does not know, so its signature checks refuse it
/// too). Test-only.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A handshake that accepts whatever certificate is shown, offering `alpn`
/// (as a CA's validation does, and as a careless client might).
async fn any_handshake(
    addr: SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}

/// The leaf and the protocol agreed on.
fn seen(tls: &TlsStream<TcpStream>) -> (CertificateDer<'static>, Option<Vec<u8>>) {
    let (_, conn) = tls.get_ref();
    (
        conn.peer_certificates().unwrap()[0].clone().into_owned(),
        conn.alpn_protocol().map(<[u8]>::to_vec),
    )
}

/// The acmeIdentifier (1.3.6.1.5.5.7.1.31) of a certificate, if it has
/// one: whether it is critical, and the digest it holds.
fn acme_identifier(der: &[u8]) -> Option<(bool, Vec<u8>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let ext = cert
        .extensions()
        .iter()
        .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")?;
    // An OCTET STRING of the 32-byte digest.
    assert_eq!(&ext.value[..2], [0x04, 32]);
    Some((ext.critical, ext.value[2..].to_vec()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_acme_validations_get_the_tls_alpn_challenge_certificate() {
    let site = static_site().await;
    let addr = site.running.https;
    let tls = site.running.proxy.tls();
    let digest = [7u8; 32];
    // a.test also has a certificate file; z.test has no certificate yet.
    tls.set_alpn_challenge("a.test", &digest).unwrap();
    tls.set_alpn_challenge("z.test", &digest).unwrap();

    // The CA's validation: acme-tls/1 alone, the challenge certificate, and
    // the connection ends with the handshake.
    for sni in ["a.test", "Z.Test"] {
        let mut stream = any_handshake(addr, sni, ACME_TLS_1).await.unwrap();
        let (leaf, alpn) = seen(&stream);
        assert_eq!(alpn.as_deref(), Some(&b"acme-tls/1"[..]), "{sni}");
        assert_eq!(acme_identifier(&leaf), Some((true, digest.to_vec())));
        let names = prism::proxy::cert_info(&leaf).unwrap().names;
        assert_eq!(names, [sni.to_ascii_lowercase()]);
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("the proxy closes a validation connection");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }

    // Everyone else, while the challenge is pending: the file's certificate
    // and never acme-tls/1, whatever they offer alongside it.
    let offers: [&[&[u8]]; 5] = [
        &[],
        H1,
        H2,
        &[b"h2", b"acme-tls/1"],
        &[b"acme-tls/1", b"http/1.1"],
    ];
    for alpn in offers {
        let stream = any_handshake(addr, "a.test", alpn).await.unwrap();
        let (leaf, agreed) = seen(&stream);
        assert_eq!(subject_cn(&leaf), "a cert", "offering {alpn:?}");
        assert_eq!(acme_identifier(&leaf), None);
        assert_ne!(agreed.as_deref(), Some(&b"acme-tls/1"[..]), "{alpn:?}");
    }
    let a = get(addr, "a.test", "/", site.ca.roots(), H2).await.unwrap();
    assert_eq!(a.version, http::Version::HTTP_2);
    assert!(a.body.contains("instance=a\n"), "{}", a.body);
    // A host with only a challenge certificate has nothing for them.
    for alpn in [&[][..], H1, H2] {
        assert!(
            any_handshake(addr, "z.test", alpn).await.is_err(),
            "z.test offering {alpn:?} got a certificate"
        );
    }
    // acme-tls/1 for a host with no pending challenge, or without SNI: no
    // certificate at all (the usual one is not shown either).
    for sni in ["shop.b.test", "y.test", "127.0.0.1"] {
        assert!(
            any_handshake(addr, sni, ACME_TLS_1).await.is_err(),
            "{sni}: a validation without a pending challenge succeeded"
        );
    }

    // Withdrawn: validations fail, ordinary traffic goes on.
    tls.remove_alpn_challenge("a.test");
    tls.remove_alpn_challenge("Z.TEST");
    for sni in ["a.test", "z.test"] {
        assert!(any_handshake(addr, sni, ACME_TLS_1).await.is_err(), "{sni}");
    }
    let a = get(addr, "a.test", "/", site.ca.roots(), H1).await.unwrap();
    assert_eq!(subject_cn(&a.leaf), "a cert");
    assert_eq!(a.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acme_tls_alpn_01_certificate_from_pebble_is_served_and_stored() {
    let dir = tempfile::tempdir().unwrap();
    // The proxy exists before pebble: pebble validates on its HTTPS port.
    let proxy = new_proxy(&write_fleet(
        dir.path(),
        "[fleet]\nname = \"t\"\n[discovery]\nprovider = \"ec2\"\n",
    ));
    let http = proxy.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let https = proxy.bind_https("127.0.0.1:0".parse().unwrap()).unwrap();
    // Nothing listens on pebble's HTTP-01 port: only TLS-ALPN-01 can pass.
    let pebble = Pebble::start(dir.path(), free_port(), https.local_addr().port(), None).await;
    let config = write_fleet(
        dir.path(),
        &format!(
            r#"
[fleet]
name = "t"
state = "state/prism.db"
[discovery]
provider = "ec2"
[proxy]
https = "127.0.0.1:443"
[proxy.acme]
directory = "https://{}/dir"
email = "ops@prism.test"
ca = "pebble-ca.pem"
challenge = "tls-alpn-01"
[apps.shop.services.web]
image = "x"
port = 8080
hosts = ["{ACME_HOST}"]
"#,
            pebble.acme
        ),
    );
    let shop = instance("shop").await;
    proxy.publish(RouteTable::build(&config.fleet, &[upstream("shop", shop)]));
    let running = Running::start_with(proxy, http, https);
    let settings = AcmeSettings::from_config(&config).unwrap();
    assert_eq!(settings.challenge, AcmeChallenge::TlsAlpn01);
    let acme = Acme::new(settings, Arc::clone(running.proxy.tls()));
    let (how, renew_at) = match acme.ensure(ACME_HOST).await {
        Ok(r) => r,
        Err(e) => panic!("ACME failed: {e}\n{}", pebble.logs()),
    };
    assert_eq!(how, Obtained::Issued);
    assert!(renew_at > SystemTime::now());
    let logs = pebble.logs();
    assert!(logs.contains("set VALID by completed challenge"), "{logs}");
    // Pebble does not log TLS-ALPN-01 attempts; nothing listens on its
    // HTTP-01 port and it never tried HTTP, so the handshake proved it.
    assert!(!logs.contains("validate w/ HTTP"), "{logs}");

    // Served through the proxy, trusting only pebble's issuing root.
    let roots = pebble.issuing_root().await;
    let seen = get(running.https, ACME_HOST, "/", roots.clone(), H2)
        .await
        .unwrap();
    assert_eq!(seen.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(seen.status, 200);
    assert!(seen.body.contains("instance=shop\n"), "{}", seen.body);
    assert!(seen.body.contains("proto=https\n"), "{}", seen.body);
    assert_eq!(
        prism::proxy::cert_info(&seen.leaf).unwrap().names,
        [ACME_HOST]
    );
    assert_eq!(acme_identifier(&seen.leaf), None);

    // Stored, and the key readable by the owner only.
    let host_dir = dir.path().join("state/acme").join(ACME_HOST);
    let stored = std::fs::read(host_dir.join("cert.pem")).unwrap();
    let stored = CertificateDer::pem_slice_iter(&stored)
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(stored, seen.leaf);
    let mode = std::fs::metadata(host_dir.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The challenge is withdrawn once the order is done.
    assert!(
        any_handshake(running.https, ACME_HOST, ACME_TLS_1)
            .await
            .is_err()
    );
    assert_eq!(acme.ensure(ACME_HOST).await.unwrap().0, Obtained::Stored);
    pebble.stop().await;
}
