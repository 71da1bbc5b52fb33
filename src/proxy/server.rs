//! Accepting clients: HTTP/1.1 and HTTP/2 on one port, a bounded number of
//! connections, each watched for slow heads and silence, and a graceful
//! stop.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use super::forward::{ConnInfo, Shared, handle};
use super::limits::{Settings, Stamped, now_ms};

/// Binds a listening socket (address reuse on, so a restart does not wait
/// out TIME_WAIT).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The HTTP server settings every connection uses.
pub fn http_builder(s: &Settings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(s.header_timeout)
        .max_buf_size(s.max_header_size)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(s.max_header_size).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    builder
}

/// Serves `listener` until `shutdown` resolves; then stops accepting, lets
/// open connections finish what they are doing for up to the grace time,
/// and returns.
pub async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let builder = Arc::new(http_builder(&shared.settings));
    let max = shared
        .settings
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        // A free slot first: past the limit, clients wait in the backlog.
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and the like: back off, go on.
                    tracing::warn!(error = %e, "proxy: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(
            Arc::clone(&shared),
            Arc::clone(&builder),
            stream,
            peer,
            permit,
            stop_rx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every slot back means every connection is closed.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let grace = shared.settings.shutdown_grace + Duration::from_secs(1);
    let _ = tokio::time::timeout(grace, slots.acquire_many(all)).await;
    Ok(())
}

/// Why a connection was closed by the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// No complete request head within the header timeout.
    SlowHead,
    /// Nothing moved and nothing in flight for the idle timeout.
    Idle,
}

async fn connection(
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) {
    shared.metrics.connections.inc();
    let (io, last) = Stamped::new(stream);
    let info = Arc::new(ConnInfo::new(peer, "http"));
    let service = {
        let shared = Arc::clone(&shared);
        let info = Arc::clone(&info);
        service_fn(move |req| handle(Arc::clone(&shared), Arc::clone(&info), req))
    };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let watchdog = watchdog(&info, &last, &shared.settings);
    tokio::pin!(watchdog);
    let mut grace = None;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            cut = &mut watchdog, if grace.is_none() => {
                // Nothing is in flight: closing loses nothing.
                tracing::debug!(%peer, ?cut, "connection closed by the proxy");
                break;
            }
            _ = stop.wait_for(|stopping| *stopping), if grace.is_none() => {
                conn.as_mut().graceful_shutdown();
                grace = Some(Box::pin(tokio::time::sleep(shared.settings.shutdown_grace)));
            }
            _ = async {
                match grace.as_mut() {
                    Some(sleep) => sleep.await,
                    None => std::future::pending().await,
                }
            }, if grace.is_some() => break,
        }
    }
    shared.metrics.connections.dec();
}

/// Resolves when the connection should be cut: its first request head is
/// not in after the header timeout (HTTP/1.1 heads after it are hyper's own
/// job), or it has been silent with nothing in flight for the idle timeout.
async fn watchdog(info: &ConnInfo, last: &AtomicU64, s: &Settings) -> Cut {
    let accepted = now_ms();
    let header_ms = millis(s.header_timeout);
    let idle_ms = millis(s.idle_timeout);
    loop {
        let now = now_ms();
        let mut wake = now.saturating_add(idle_ms);
        if info.requests.load(Ordering::Relaxed) == 0 {
            let deadline = accepted.saturating_add(header_ms);
            if now >= deadline {
                return Cut::SlowHead;
            }
            wake = wake.min(deadline);
        }
        if info.busy.load(Ordering::Relaxed) == 0 {
            let deadline = last.load(Ordering::Relaxed).saturating_add(idle_ms);
            if now >= deadline {
                return Cut::Idle;
            }
            wake = wake.min(deadline);
        }
        tokio::time::sleep(Duration::from_millis(wake.saturating_sub(now).max(10))).await;
    }
}

/// Resolves once no byte has moved for `idle` (per `last`).
pub async fn quiet_for(last: &AtomicU64, idle: Duration) {
    let idle_ms = millis(idle);
    loop {
        let now = now_ms();
        let deadline = last.load(Ordering::Relaxed).saturating_add(idle_ms);
        if now >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis((deadline - now).max(10))).await;
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
