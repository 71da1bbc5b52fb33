//! The proxy's limits and timeouts, read from `[proxy]`, and the byte
//! counter a connection's idle watchdog reads.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config;

pub(crate) use crate::config::Balance;

/// Everything the proxy needs from `[proxy]`, in plain types.
#[derive(Debug, Clone)]
pub struct Settings {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_size: usize,
    pub max_connections: usize,
    /// Worker threads (and listening sockets).
    pub workers: usize,
    pub connect_timeout: Duration,
    pub upstream_timeout: Duration,
    pub down_time: Duration,
    pub drain_timeout: Duration,
    pub balance: Balance,
    /// Seconds a 503 asks the client to wait before trying again.
    pub retry_after: u32,
    /// How long open connections get to finish when the proxy stops.
    pub shutdown_grace: Duration,
    /// The HTTPS port plain-HTTP requests are redirected to, for hosts
    /// with a certificate; `None`: no redirects.
    pub redirect_https: Option<u16>,
    /// Peers whose forwarding headers are believed (`[proxy]
    /// trusted_proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Settings {
    pub fn from_config(p: &config::Proxy) -> Settings {
        Settings {
            header_timeout: p.header_timeout.0,
            idle_timeout: p.idle_timeout.0,
            max_header_size: usize::try_from(p.max_header_size.0).unwrap_or(usize::MAX),
            max_connections: p.max_connections as usize,
            workers: match p.workers {
                Some(n) => n as usize,
                None => std::thread::available_parallelism().map_or(1, |n| n.get()),
            },
            connect_timeout: p.connect_timeout.0,
            upstream_timeout: p.upstream_timeout.0,
            down_time: p.down_time.0,
            drain_timeout: p.drain_timeout.0,
            balance: p.balance,
            retry_after: 5,
            shutdown_grace: Duration::from_secs(10),
            redirect_https: p
                .https
                .as_deref()
                .filter(|_| p.redirect_https)
                .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
                .map(|a| a.port())
                .filter(|&port| port != 0),
            trusted_proxies: p
                .trusted_proxies
                .iter()
                .filter_map(|t| config::trusted_net(t))
                .collect(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::from_config(&config::Proxy::default())
    }
}

/// Milliseconds on the coarse monotonic clock, shared by every connection.
/// Bytes are stamped with it on every read and write: the coarse clock is
/// read without asking the hardware, and a few milliseconds of resolution
/// is plenty for timeouts counted in seconds.
pub fn now_ms() -> u64 {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let clock = rustix::time::ClockId::MonotonicCoarse;
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let clock = rustix::time::ClockId::Monotonic;
    let t = rustix::time::clock_gettime(clock);
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let millis = u64::try_from(t.tv_nsec).unwrap_or(0) / 1_000_000;
    secs.saturating_mul(1000).saturating_add(millis)
}

/// What a connection's watchdog reads: when bytes last moved each way,
/// since when a request head has been coming in, and what is in flight.
/// Stamped by [`Stamped`] as bytes move and by the request handler.
#[derive(Debug)]
pub(crate) struct Activity {
    /// When a byte was last read, and written (`now_ms`).
    read: AtomicU64,
    written: AtomicU64,
    /// Since when a request head is awaited: the connection's start for
    /// the first, then the first byte read while no request was being
    /// handled or answered (on HTTP/1.1 that byte starts the next head);
    /// 0 once a head is complete.
    head_since: AtomicU64,
    /// Requests being handled (until the handler returns the response).
    busy: AtomicUsize,
    /// Responses whose bodies are still being sent: bytes read meanwhile
    /// (a pipelined request, the rest of an upload) start no head.
    answering: AtomicUsize,
    /// HTTP/2: frames come between requests, so no byte starts a head.
    multiplexed: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        let now = now_ms().max(1);
        Activity {
            read: AtomicU64::new(now),
            written: AtomicU64::new(now),
            head_since: AtomicU64::new(now),
            busy: AtomicUsize::new(0),
            answering: AtomicUsize::new(0),
            multiplexed: AtomicBool::new(false),
        }
    }
}

impl Activity {
    /// When a byte last moved either way.
    pub fn last(&self) -> u64 {
        let read = self.read.load(Ordering::Relaxed);
        read.max(self.written.load(Ordering::Relaxed))
    }

    pub fn busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed) > 0
    }

    pub(crate) fn multiplexed(&self) -> bool {
        self.multiplexed.load(Ordering::Relaxed)
    }

    /// Since when the request head being awaited has been, if one is: the
    /// connection's start for the first, later (HTTP/1.1) ones from their
    /// first byte read after the last response was sent.
    pub(crate) fn head_started(&self) -> Option<u64> {
        let since = self.head_since.load(Ordering::Relaxed);
        (since != 0 && self.quiet() && !self.multiplexed()).then_some(since)
    }

    /// Neither handling a request nor sending a response.
    fn quiet(&self) -> bool {
        !self.busy() && self.answering.load(Ordering::Relaxed) == 0
    }

    /// A request head is complete: it is being handled until the first
    /// guard drops, and answered until the second does (give that one to
    /// the response body).
    pub(crate) fn start_request(self: &Arc<Self>, multiplexed: bool) -> (Handling<'_>, Answering) {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.answering.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Relaxed);
        if multiplexed {
            self.multiplexed.store(true, Ordering::Relaxed);
        }
        (Handling(self), Answering(Arc::clone(self)))
    }

    fn stamp_read(&self) {
        // 0 means "no head", so a stamp is never 0.
        let now = now_ms().max(1);
        self.read.store(now, Ordering::Relaxed);
        if self.quiet() && self.head_since.load(Ordering::Relaxed) == 0 {
            self.head_since.store(now, Ordering::Relaxed);
        }
    }

    fn stamp_written(&self) {
        self.written.store(now_ms(), Ordering::Relaxed);
    }
}

/// A request in flight on a connection (see [`Activity::start_request`]).
pub(crate) struct Handling<'a>(&'a Activity);

impl Drop for Handling<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response being sent on a connection (see [`Activity::start_request`]).
#[derive(Debug)]
pub(crate) struct Answering(Arc<Activity>);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.answering.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Wraps a client socket and stamps its [`Activity`] as bytes move, so a
/// watchdog can close connections that went quiet or trickle their heads.
pub(crate) struct Stamped<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Stamped<T> {
    pub fn new(inner: T) -> (Stamped<T>, Arc<Activity>) {
        let activity = Arc::new(Activity::default());
        (
            Stamped {
                inner,
                activity: Arc::clone(&activity),
            },
            activity,
        )
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Stamped<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.stamp_read();
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stamped<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.stamp_written();
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.stamp_written();
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_counts_from_its_first_byte_read_while_nothing_is_handled_or_answered() {
        let a = Arc::new(Activity::default());
        let first = a
            .head_started()
            .expect("the first head counts from the start");
        a.stamp_read();
        assert_eq!(a.head_started(), Some(first), "its first byte");
        std::thread::sleep(Duration::from_millis(20));
        a.stamp_read();
        assert_eq!(
            a.head_started(),
            Some(first),
            "later bytes of the same head"
        );

        let (handling, answering) = a.start_request(false);
        assert_eq!(a.head_started(), None, "the head is complete");
        a.stamp_read();
        assert_eq!(a.head_started(), None, "a body's bytes start no head");
        drop(handling);
        a.stamp_read();
        assert_eq!(
            a.head_started(),
            None,
            "bytes read while the response is sent (pipelined, or the rest of an upload)"
        );
        drop(answering);
        assert_eq!(a.head_started(), None);
        a.stamp_read();
        assert!(a.head_started().is_some(), "the next head");
    }

    #[test]
    fn http2_frames_between_requests_start_no_head() {
        let a = Arc::new(Activity::default());
        drop(a.start_request(true));
        a.stamp_read();
        assert_eq!(a.head_started(), None);
        assert!(a.multiplexed());
    }

    #[test]
    fn defaults_follow_the_config_defaults() {
        let s = Settings::default();
        assert_eq!(s.header_timeout, Duration::from_secs(10));
        assert_eq!(s.max_header_size, 32 << 10);
        assert_eq!(s.max_connections, 4096);
        assert_eq!(s.balance, Balance::RoundRobin);
        assert_eq!(s.redirect_https, None, "no https listener");
    }

    #[test]
    fn plain_http_is_redirected_to_the_https_listener_s_port_unless_turned_off() {
        let with = |https: &str, redirect: bool| {
            Settings::from_config(&config::Proxy {
                https: Some(https.into()),
                redirect_https: redirect,
                ..config::Proxy::default()
            })
            .redirect_https
        };
        assert_eq!(with("0.0.0.0:443", true), Some(443));
        assert_eq!(with("[::]:8443", true), Some(8443));
        assert_eq!(with("0.0.0.0:443", false), None);
        assert_eq!(with("127.0.0.1:0", true), None, "no port to name");
    }
}
