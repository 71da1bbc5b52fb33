//! testapp: the lab's stand-in for a real service (std only).
//!
//! With no arguments it serves HTTP/1.1 on 0.0.0.0:$TESTAPP_PORT (8080):
//! - `GET /up`: 200 `ok` while healthy, 503 while failing. It starts failing
//!   when `TESTAPP_HEALTH=fail`.
//! - `GET /fail` makes `/up` fail from then on; `GET /recover` heals it.
//! - `GET /bytes?n=N` answers N bytes (at most 256 MiB), for throughput.
//! - `GET /slow?ms=N` answers after N ms. `TESTAPP_DELAY_MS` delays every
//!   response.
//! - anything else: a short text naming the host, PRISM_APP, PRISM_SERVICE,
//!   PRISM_INSTANCE and the request's Host header.
//!
//! `testapp get URL [COUNT]` is a client: COUNT (1) GETs of an `http://`
//! URL over one keep-alive connection, the name resolved as any program's
//! (the container's resolver); prints the last body, and to stderr how
//! long the requests took; exits 0 when every answer was 2xx.
//!
//! With other arguments it runs them instead (`testapp sh -c '...'`), so the
//! image can keep it as its entrypoint and still run any command.
//!
//! SIGTERM and SIGINT end it at once with status 0, also as PID 1.

use std::env;
use std::ffi::OsString;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Command, exit};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

/// Longest request head (request line and headers) accepted.
const MAX_HEAD: u64 = 16 * 1024;
/// Largest request body read (and thrown away).
const MAX_BODY: u64 = 1 << 20;
/// Largest `/bytes` answer.
const MAX_BYTES: usize = 256 << 20;
/// Longest `/slow` wait.
const MAX_SLOW_MS: u64 = 600_000;
/// Most connections served at once; more are answered 503 and closed.
const MAX_CONNS: usize = 512;
/// An idle keep-alive connection is closed after this long.
const IDLE: Duration = Duration::from_secs(75);

struct App {
    healthy: AtomicBool,
    conns: AtomicUsize,
    delay: Duration,
    hostname: String,
    prism: Vec<(&'static str, String)>,
}

fn main() {
    let args: Vec<OsString> = env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "get") {
        let url = args.get(1).map(|a| a.to_string_lossy().into_owned());
        let count = args.get(2).map(|a| a.to_string_lossy().parse::<u32>());
        match (url, count.unwrap_or(Ok(1))) {
            (Some(url), Ok(count)) if count > 0 => exit(client::get(&url, count)),
            _ => fail("usage: testapp get http://HOST:PORT/PATH [COUNT]"),
        }
    }
    if let Some((program, rest)) = args.split_first() {
        let err = Command::new(program).args(rest).exec();
        eprintln!("testapp: cannot run {}: {err}", program.to_string_lossy());
        exit(127);
    }
    signals::install();

    let port = match env::var("TESTAPP_PORT") {
        Ok(v) => match v.trim().parse::<u16>() {
            Ok(p) => p,
            Err(_) => fail(&format!("TESTAPP_PORT={v:?} is not a port number")),
        },
        Err(_) => 8080,
    };
    let delay = match env::var("TESTAPP_DELAY_MS") {
        Ok(v) if !v.trim().is_empty() => match v.trim().parse::<u64>() {
            Ok(ms) => Duration::from_millis(ms.min(MAX_SLOW_MS)),
            Err(_) => fail(&format!("TESTAPP_DELAY_MS={v:?} is not a number of ms")),
        },
        _ => Duration::ZERO,
    };
    let healthy = !env::var("TESTAPP_HEALTH").is_ok_and(|v| v.trim().eq_ignore_ascii_case("fail"));
    let prism = [
        ("app", "PRISM_APP"),
        ("service", "PRISM_SERVICE"),
        ("instance", "PRISM_INSTANCE"),
    ]
    .into_iter()
    .filter_map(|(label, var)| env::var(var).ok().map(|v| (label, v)))
    .collect();
    let app = Arc::new(App {
        healthy: AtomicBool::new(healthy),
        conns: AtomicUsize::new(0),
        delay,
        hostname: hostname(),
        prism,
    });

    let listener = match TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => fail(&format!("cannot listen on 0.0.0.0:{port}: {e}")),
    };
    eprintln!(
        "testapp: listening on 0.0.0.0:{port} (healthy: {healthy}, delay: {} ms)",
        delay.as_millis()
    );
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => accept(stream, &app),
            Err(e) => {
                // Out of descriptors and the like: back off, keep serving.
                eprintln!("testapp: accept: {e}");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("testapp: {msg}");
    exit(2);
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_string())
}

fn accept(mut stream: TcpStream, app: &Arc<App>) {
    if app.conns.fetch_add(1, Ordering::SeqCst) >= MAX_CONNS {
        app.conns.fetch_sub(1, Ordering::SeqCst);
        let _ = respond(
            &mut stream,
            "HTTP/1.1",
            503,
            "too many connections\n",
            false,
            false,
        );
        return;
    }
    let app2 = Arc::clone(app);
    let spawned = thread::Builder::new()
        .name("conn".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            serve(stream, &app2);
            app2.conns.fetch_sub(1, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        app.conns.fetch_sub(1, Ordering::SeqCst);
        eprintln!("testapp: cannot start a thread: {e}");
    }
}

struct Request {
    method: String,
    target: String,
    version: String,
    host: Option<String>,
    keep_alive: bool,
}

/// Why a request could not be read: answer with this status and close.
struct Bad(u16, &'static str);

fn serve(stream: TcpStream, app: &App) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    if stream.set_read_timeout(Some(IDLE)).is_err() {
        return;
    }
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let req = match read_request(&mut reader) {
            Ok(Some(req)) => req,
            Ok(None) => break,
            Err(Ok(Bad(status, why))) => {
                eprintln!("testapp: {peer}: bad request: {why}");
                let _ = respond(
                    &mut out,
                    "HTTP/1.1",
                    status,
                    &format!("{why}\n"),
                    false,
                    false,
                );
                break;
            }
            Err(Err(_)) => break, // timed out or reset
        };
        if !app.delay.is_zero() {
            thread::sleep(app.delay);
        }
        let (status, body) = route(&req, app);
        eprintln!("testapp: {peer} {} {} -> {status}", req.method, req.target);
        let head_only = req.method.eq_ignore_ascii_case("HEAD");
        if respond(
            &mut out,
            &req.version,
            status,
            &body,
            req.keep_alive,
            head_only,
        )
        .is_err()
            || !req.keep_alive
        {
            break;
        }
    }
    let _ = out.shutdown(Shutdown::Both);
}

fn route(req: &Request, app: &App) -> (u16, String) {
    let (path, query) = match req.target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (req.target.as_str(), ""),
    };
    match path {
        "/up" => {
            if app.healthy.load(Ordering::SeqCst) {
                (200, "ok\n".into())
            } else {
                (503, "failing\n".into())
            }
        }
        "/fail" => {
            app.healthy.store(false, Ordering::SeqCst);
            (200, "now failing /up\n".into())
        }
        "/recover" => {
            app.healthy.store(true, Ordering::SeqCst);
            (200, "recovered\n".into())
        }
        "/bytes" => {
            let n = query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == "n")
                .and_then(|(_, v)| v.parse::<usize>().ok());
            match n {
                Some(n) => (200, "x".repeat(n.min(MAX_BYTES))),
                None => (400, "want /bytes?n=N\n".into()),
            }
        }
        "/slow" => {
            let ms = query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == "ms")
                .map(|(_, v)| v.parse::<u64>());
            match ms {
                Some(Ok(ms)) => {
                    let ms = ms.min(MAX_SLOW_MS);
                    thread::sleep(Duration::from_millis(ms));
                    (200, format!("slept {ms} ms\n"))
                }
                _ => (400, "want /slow?ms=N\n".into()),
            }
        }
        _ => {
            let mut body = format!("hostname: {}\n", app.hostname);
            for (label, value) in &app.prism {
                body.push_str(&format!("{label}: {value}\n"));
            }
            body.push_str(&format!("host: {}\n", req.host.as_deref().unwrap_or("")));
            (200, body)
        }
    }
}

/// Reads one request head and skips its body. `Ok(None)` when the client
/// closed the connection between requests.
fn read_request(r: &mut BufReader<TcpStream>) -> Result<Option<Request>, Result<Bad, io::Error>> {
    let mut budget = MAX_HEAD;
    let mut line = Vec::new();
    // The request line; empty lines before it are allowed (RFC 9112 2.2).
    let request_line = loop {
        match read_line(r, &mut line, &mut budget)? {
            None => return Ok(None),
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let mut parts = request_line.split_ascii_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Ok(Bad(400, "malformed request line")));
    };
    if !version.starts_with("HTTP/1.") || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(Ok(Bad(400, "not an HTTP/1.x request")));
    }
    let mut req = Request {
        method: method.to_string(),
        target: target.to_string(),
        version: version.to_string(),
        host: None,
        keep_alive: version == "HTTP/1.1",
    };
    let mut body_len = 0u64;
    loop {
        let Some(l) = read_line(r, &mut line, &mut budget)? else {
            return Err(Ok(Bad(400, "connection closed inside the request head")));
        };
        if l.is_empty() {
            break;
        }
        let Some((name, value)) = l.split_once(':') else {
            return Err(Ok(Bad(400, "malformed header line")));
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "host" => req.host = Some(value.to_string()),
            "connection" => {
                for token in value.split(',').map(str::trim) {
                    if token.eq_ignore_ascii_case("close") {
                        req.keep_alive = false;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        req.keep_alive = true;
                    }
                }
            }
            "content-length" => match value.parse::<u64>() {
                Ok(n) if n <= MAX_BODY => body_len = n,
                Ok(_) => return Err(Ok(Bad(413, "request body too large"))),
                Err(_) => return Err(Ok(Bad(400, "bad Content-Length"))),
            },
            "transfer-encoding" => return Err(Ok(Bad(501, "Transfer-Encoding not supported"))),
            _ => {}
        }
    }
    if body_len > 0 {
        let copied = io::copy(&mut r.by_ref().take(body_len), &mut io::sink()).map_err(Err)?;
        if copied < body_len {
            return Err(Ok(Bad(400, "request body cut short")));
        }
    }
    Ok(Some(req))
}

/// One line without its CRLF, or `None` at a clean end of stream.
fn read_line(
    r: &mut BufReader<TcpStream>,
    buf: &mut Vec<u8>,
    budget: &mut u64,
) -> Result<Option<String>, Result<Bad, io::Error>> {
    buf.clear();
    let n = r
        .by_ref()
        .take(*budget)
        .read_until(b'\n', buf)
        .map_err(Err)?;
    if n == 0 {
        return if *budget == 0 {
            Err(Ok(Bad(431, "request head too large")))
        } else {
            Ok(None)
        };
    }
    *budget -= n as u64;
    if buf.last() != Some(&b'\n') {
        return if *budget == 0 {
            Err(Ok(Bad(431, "request head too large")))
        } else {
            Err(Ok(Bad(400, "connection closed inside a line")))
        };
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(buf).into_owned()))
}

fn respond(
    out: &mut TcpStream,
    version: &str,
    status: u16,
    body: &str,
    keep_alive: bool,
    head_only: bool,
) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    };
    let version = if version == "HTTP/1.0" {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut msg = format!(
        "{version} {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
        body.len()
    );
    if !head_only {
        msg.push_str(body);
    }
    out.write_all(msg.as_bytes())?;
    out.flush()
}

mod signals {
    use std::ffi::c_int;

    const SIGINT: c_int = 2;
    const SIGTERM: c_int = 15;

    unsafe extern "C" {
        fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
        fn _exit(status: c_int) -> !;
    }

    extern "C" fn on_stop(_signum: c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { _exit(0) }
    }

    /// As PID 1 in a container a signal with no handler is ignored, so
    /// `docker stop` would wait out its grace period: handle them.
    pub fn install() {
        // SAFETY: the handler only calls an async-signal-safe function.
        unsafe {
            signal(SIGTERM, on_stop);
            signal(SIGINT, on_stop);
        }
    }
}

mod client {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, Instant};

    /// `count` GETs of `url` on one connection; the exit status.
    pub fn get(url: &str, count: u32) -> i32 {
        let Some(rest) = url.strip_prefix("http://") else {
            eprintln!("testapp get: only http:// URLs");
            return 2;
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        let addr = if authority.contains(':') {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let host = authority.split(':').next().unwrap_or(authority);
        let stream = match TcpStream::connect(&addr) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("testapp get: connect {addr}: {e}");
                return 1;
            }
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = stream.set_nodelay(true);
        let Ok(mut out) = stream.try_clone() else {
            return 1;
        };
        let mut reader = BufReader::new(stream);
        let start = Instant::now();
        let mut body = Vec::new();
        for _ in 0..count {
            let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
            if let Err(e) = out.write_all(req.as_bytes()) {
                eprintln!("testapp get: write: {e}");
                return 1;
            }
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                eprintln!("testapp get: the connection closed");
                return 1;
            }
            let status: u16 = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            let mut length = 0usize;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 {
                    return 1;
                }
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                return 1;
            }
            if !(200..300).contains(&status) {
                eprintln!("testapp get: {url}: status {status}");
                print!("{}", String::from_utf8_lossy(&body));
                return 1;
            }
        }
        let took = start.elapsed();
        if body.len() <= 4096 {
            print!("{}", String::from_utf8_lossy(&body));
        }
        eprintln!(
            "testapp get: {count} requests in {} us, {} bytes in the last",
            took.as_micros(),
            body.len()
        );
        0
    }
}
