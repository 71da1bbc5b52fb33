//! The proxy's limits and timeouts, read from `[proxy]`, and the byte
//! counter a connection's idle watchdog reads.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config;

pub use crate::config::Balance;

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
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings::from_config(&config::Proxy::default())
    }
}

/// Milliseconds on a clock shared by every connection, from process start.
pub fn now_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Wraps a client socket and stamps the time of its last read or write,
/// so a watchdog can close connections that went quiet.
pub struct Stamped<T> {
    inner: T,
    last: Arc<AtomicU64>,
}

impl<T> Stamped<T> {
    pub fn new(inner: T) -> (Stamped<T>, Arc<AtomicU64>) {
        let last = Arc::new(AtomicU64::new(now_ms()));
        (
            Stamped {
                inner,
                last: Arc::clone(&last),
            },
            last,
        )
    }

    fn touch(&self) {
        self.last.store(now_ms(), Ordering::Relaxed);
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
            self.touch();
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
            self.touch();
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
            self.touch();
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
