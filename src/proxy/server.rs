//! Accepting clients: HTTP/1.1 and HTTP/2 on one port (inside TLS on an
//! HTTPS listener), served by worker threads of the proxy's own, a bounded
//! number of connections, each watched for slow heads and silence, and a
//! graceful stop.
//!
//! Each worker is a single-threaded runtime with its own listening socket
//! (SO_REUSEPORT: the kernel spreads connections) and its own connections
//! to instances, so a request and its trip to the instance never change
//! thread: no cross-thread wake-ups on the hot path, as in nginx's
//! worker processes.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::Poll;
use std::time::Duration;

use futures::task::AtomicWaker;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use socket2::{Domain, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use super::forward::{ConnInfo, Shared, Worker, handle};
use super::limits::{Activity, Settings, Stamped, now_ms};
use super::pool::Pool;
use tokio_util::task::AbortOnDropHandle;

/// The proxy's listening sockets: one per worker, all on one address.
pub struct Listener {
    sockets: Vec<std::net::TcpListener>,
    addr: SocketAddr,
    /// Set on an HTTPS listener.
    tls: Option<Arc<ServerConfig>>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("addr", &self.addr)
            .field("workers", &self.sockets.len())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Listener {
    /// The address bound (with the actual port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The same sockets, serving TLS with `config`.
    pub(crate) fn with_tls(mut self, config: Arc<ServerConfig>) -> Listener {
        self.tls = Some(config);
        self
    }
}

/// Binds `workers` sockets to `addr`, so each worker thread accepts on its
/// own. Address reuse is on, so a restart does not wait out TIME_WAIT.
///
/// A port another process listens on is an error, never shared: the
/// workers' SO_REUSEPORT would let them join any listener of the same
/// user, and the kernel would split clients between two proxies. So a
/// socket without it binds first, which only succeeds where nobody
/// listens.
pub fn bind(addr: SocketAddr, workers: usize) -> io::Result<Listener> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into())?;
    probe.listen(1)?;
    let mut bound = probe
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("the probe socket has no address"))?;
    drop(probe);
    let mut sockets = Vec::with_capacity(workers.max(1));
    for _ in 0..workers.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&bound.into())?;
        socket.listen(1024)?;
        let listener: std::net::TcpListener = socket.into();
        bound = listener.local_addr()?;
        sockets.push(listener);
    }
    Ok(Listener {
        sockets,
        addr: bound,
        tls: None,
    })
}

/// Binds one socket on the caller's runtime (the admin listener).
pub(crate) fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let mut listener = bind(addr, 1)?;
    match listener.sockets.pop() {
        Some(socket) => TcpListener::from_std(socket),
        None => Err(io::Error::other("no socket was bound")),
    }
}

/// The HTTP server settings every connection uses.
pub(crate) fn http_builder(s: &Settings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The watchdog times heads instead (see `watchdog`): hyper's timer
        // also runs while a kept-alive connection waits for its next
        // request, and costs a timer of its own per request.
        .header_read_timeout(None)
        .max_buf_size(s.max_header_size)
        // A client that shuts its sending side after its request still
        // gets the answer (nginx cuts it). This also keeps hyper from
        // reading while a request is handled, when the request's headers
        // still point into its read buffer and the read would need a new
        // one: two allocations fewer per request. A client that leaves
        // meanwhile is noticed when its answer is sent.
        .half_close(true)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(s.max_header_size).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);
    builder
}

/// Serves on `listener`'s sockets, a worker thread each, until `shutdown`
/// resolves (or a worker fails); then the workers stop accepting, let open
/// connections finish what they are doing for up to the grace time, and
/// this returns.
pub async fn serve(
    shared: Arc<Shared>,
    listener: Listener,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let max = shared
        .settings
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<io::Result<()>>();
    let workers = listener.sockets.len();
    let tls = listener.tls;
    for (i, socket) in listener.sockets.into_iter().enumerate() {
        let index = super::shards::worker_number(shared.settings.workers, tls.is_some(), i);
        let (shared, slots, stop, done, tls) = (
            Arc::clone(&shared),
            Arc::clone(&slots),
            stop_rx.clone(),
            done_tx.clone(),
            tls.clone(),
        );
        std::thread::Builder::new()
            .name(format!("prism-proxy-{i}"))
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|rt| rt.block_on(worker(shared, index, socket, tls, slots, stop)));
                let _ = done.send(result);
            })?;
    }
    drop(done_tx);
    let mut first = tokio::select! {
        _ = shutdown => None,
        r = done_rx.recv() => r,
    };
    let _ = stop_tx.send(true);
    let mut finished = usize::from(first.is_some());
    while finished < workers {
        match done_rx.recv().await {
            Some(r) => {
                finished += 1;
                if first.as_ref().is_none_or(|f| f.is_ok()) {
                    first = Some(r);
                }
            }
            None => break,
        }
    }
    first.unwrap_or(Ok(()))
}

/// Worker thread `index`: accepts on its socket and serves its
/// connections.
async fn worker(
    shared: Arc<Shared>,
    index: usize,
    socket: std::net::TcpListener,
    tls: Option<Arc<ServerConfig>>,
    slots: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let listener = TcpListener::from_std(socket)?;
    let worker = Arc::new(Worker::new(Arc::clone(&shared), index));
    tokio::spawn(Pool::sweep_while_alive(Arc::downgrade(&worker.pool)));
    let builder = Arc::new(http_builder(&shared.settings));
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
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
            _ = stop.wait_for(|stopping| *stopping) => break,
        };
        // Past the limit this worker holds the one connection it took until
        // a slot frees, and accepts no other: the rest wait in the backlog.
        // (Taking the slot before accepting would leave it idle while
        // another worker's socket has clients waiting.)
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.wait_for(|stopping| *stopping) => break,
        };
        let _ = stream.set_nodelay(true);
        let (worker, builder, stop) = (Arc::clone(&worker), Arc::clone(&builder), stop.clone());
        match &tls {
            None => conns.spawn(connection(
                worker, builder, stream, peer, "http", permit, stop,
            )),
            Some(tls) => conns.spawn(handshake(
                Arc::clone(tls),
                worker,
                builder,
                stream,
                peer,
                permit,
                stop,
            )),
        };
    }
    drop(listener);
    // Connections were told to stop with the same signal.
    let grace = shared.settings.shutdown_grace + Duration::from_secs(1);
    let _ = tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
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

/// TLS first, within the header timeout (a client that stalls its
/// handshake is cut off like one that stalls its request head), then HTTP
/// over it.
async fn handshake(
    tls: Arc<ServerConfig>,
    worker: Arc<Worker>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) {
    let timeout = worker.shared.settings.header_timeout;
    let accepted = tokio::select! {
        r = tokio::time::timeout(timeout, accept(tls, &worker.shared.tls, stream)) => r,
        _ = stop.wait_for(|stopping| *stopping) => return,
    };
    match accepted {
        Ok(Ok(Some(stream))) => {
            connection(worker, builder, stream, peer, "https", permit, stop).await
        }
        Ok(Ok(None)) => tracing::debug!(%peer, "ACME: answered a TLS-ALPN-01 validation"),
        // Unknown SNI, no shared protocol, not TLS at all: the client has
        // its alert; only a count for the operator.
        Ok(Err(e)) => {
            worker.shared.metrics.tls_handshake_failures.inc();
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            worker.shared.metrics.tls_handshake_failures.inc();
            tracing::debug!(%peer, "TLS handshake timed out");
        }
    }
}

/// The TLS handshake: with the settings for a TLS-ALPN-01 validation when
/// the ClientHello is one for a host with a pending challenge (then the
/// connection ends with the handshake: `None`), else with `config`.
async fn accept(
    config: Arc<ServerConfig>,
    certs: &super::tls::Tls,
    stream: TcpStream,
) -> io::Result<Option<TlsStream<TcpStream>>> {
    let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream).await?;
    let validation = certs.validation_config(&start.client_hello());
    if let Some(validation) = validation {
        let mut stream = start.into_stream(validation).await?;
        // RFC 8737: nothing is exchanged over acme-tls/1; close cleanly.
        let _ = stream.shutdown().await;
        return Ok(None);
    }
    start.into_stream(config).await.map(Some)
}

async fn connection<S>(
    worker: Arc<Worker>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stream: S,
    peer: SocketAddr,
    proto: &'static str,
    _permit: OwnedSemaphorePermit,
    stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let shared = Arc::clone(&worker.shared);
    shared.metrics.connections.inc();
    let (io, activity) = Stamped::new(stream);
    let trusted = shared
        .settings
        .trusted_proxies
        .iter()
        .any(|n| n.contains(&peer.ip()));
    let info = Arc::new(ConnInfo::new(peer, proto, trusted, activity));
    // The watchdog and the stop signal wait in a task of their own and
    // raise `orders` when the connection must go: this task, woken for
    // every request, then looks at one flag rather than polling a timer
    // and a watch channel each time.
    let orders = Arc::new(Orders::default());
    let _watching = AbortOnDropHandle::new(tokio::spawn(watch_connection(
        Arc::clone(&info),
        shared.settings.clone(),
        stop,
        Arc::clone(&orders),
        peer,
    )));
    let service = {
        let info = Arc::clone(&info);
        service_fn(move |req| handle(Arc::clone(&worker), Arc::clone(&info), req))
    };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    loop {
        tokio::select! {
            // Orders first: a close decided while nothing was in flight
            // must not let a request that arrived since start.
            biased;
            order = orders.next() => match order {
                Order::Finish => conn.as_mut().graceful_shutdown(),
                Order::Close => break,
            },
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
        }
    }
    shared.metrics.connections.dec();
}

/// What the watching task tells a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// The proxy stops: finish the request in flight, take no more.
    Finish,
    /// Close now (slow head, silence, or the stop's grace is over).
    Close,
}

/// Orders for one connection: a flag and the waker of its task.
#[derive(Default)]
struct Orders {
    /// 0: none; else an `Order`, as `code` gives it.
    pending: AtomicU8,
    waker: AtomicWaker,
}

impl Orders {
    fn code(order: Order) -> u8 {
        match order {
            Order::Finish => 1,
            Order::Close => 2,
        }
    }

    fn give(&self, order: Order) {
        self.pending.store(Self::code(order), Ordering::Release);
        self.waker.wake();
    }

    /// The next order given.
    fn next(&self) -> impl Future<Output = Order> + '_ {
        std::future::poll_fn(move |cx| {
            let take = || match self.pending.swap(0, Ordering::Acquire) {
                1 => Some(Order::Finish),
                2 => Some(Order::Close),
                _ => None,
            };
            if let Some(order) = take() {
                return Poll::Ready(order);
            }
            self.waker.register(cx.waker());
            // An order given between the look and the register.
            take().map_or(Poll::Pending, Poll::Ready)
        })
    }
}

/// Watches one connection: cuts it when the watchdog says so, and on the
/// proxy's stop lets it finish its request in flight, up to the grace.
async fn watch_connection(
    info: Arc<ConnInfo>,
    settings: Settings,
    mut stop: watch::Receiver<bool>,
    orders: Arc<Orders>,
    peer: SocketAddr,
) {
    tokio::select! {
        cut = watchdog(&info, &settings) => {
            // No request is being handled: a head that never came, or a
            // connection silent both ways for the idle timeout.
            tracing::debug!(%peer, ?cut, "connection closed by the proxy");
            orders.give(Order::Close);
            return;
        }
        _ = stop.wait_for(|stopping| *stopping) => {}
    }
    orders.give(Order::Finish);
    tokio::time::sleep(settings.shutdown_grace).await;
    orders.give(Order::Close);
}

/// Resolves when the connection should be cut: a request head is not in
/// within the header timeout (the first one counted from the connection's
/// start, later HTTP/1.1 ones from their first byte), or the connection
/// has been silent with nothing in flight for the idle timeout.
async fn watchdog(info: &ConnInfo, s: &Settings) -> Cut {
    let activity = &info.activity;
    let header_ms = millis(s.header_timeout);
    let idle_ms = millis(s.idle_timeout);
    loop {
        let now = now_ms();
        let mut wake = now.saturating_add(idle_ms);
        if let Some(started) = activity.head_started() {
            let deadline = started.saturating_add(header_ms);
            if now >= deadline {
                return Cut::SlowHead;
            }
            wake = wake.min(deadline);
        }
        if !activity.busy() {
            let deadline = activity.last().saturating_add(idle_ms);
            if now >= deadline {
                return Cut::Idle;
            }
            wake = wake.min(deadline);
        }
        if !activity.multiplexed() {
            // A head may start at any moment and nothing says so: looking
            // at least this often finds it before its time is up, and the
            // next sleep then ends on its deadline.
            wake = wake.min(now.saturating_add(header_ms));
        }
        tokio::time::sleep(Duration::from_millis(wake.saturating_sub(now).max(10))).await;
    }
}

/// Resolves once no byte has moved for `idle`.
pub(crate) async fn quiet_for(activity: &Activity, idle: Duration) {
    let idle_ms = millis(idle);
    loop {
        let now = now_ms();
        let deadline = activity.last().saturating_add(idle_ms);
        if now >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis((deadline - now).max(10))).await;
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_another_listener_holds_is_refused_even_with_reuseport() {
        // Another process's proxy, as this one would bind it.
        let other = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        other.set_reuse_address(true).expect("reuseaddr");
        other.set_reuse_port(true).expect("reuseport");
        let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        other.bind(&any.into()).expect("bind");
        other.listen(16).expect("listen");
        let held = other.local_addr().expect("addr").as_socket().expect("inet");
        let Err(err) = bind(held, 2) else {
            panic!("never joins another listener");
        };
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        drop(other);
        let listener = bind(held, 2).expect("free now");
        assert_eq!(listener.local_addr(), held);
        assert_eq!(listener.sockets.len(), 2);
    }
}
