//! Keep-alive connections to instances, one pool per worker thread.
//!
//! A request takes an idle connection (or opens one), and its connection
//! goes back once the response body has been passed on to the end. The
//! pool belongs to one worker, so its lock is never contended, and nothing
//! is spawned per request (hyper-util's pooled client spawns a task per
//! HTTP/1 request to wait for the connection to come free).

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::uri::Authority;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::forward::UpstreamBody;
use super::limits::now_ms;

/// Idle connections kept per instance at most.
const MAX_IDLE_PER_INSTANCE: usize = 256;

type Sender = SendRequest<UpstreamBody>;

/// hyper's settings for connections to instances. Requests are written
/// with one `write` of a buffer rather than a `writev` of the head and
/// each body chunk: most requests are a head alone, and that buffer saves
/// work on both sides of the socket (body bytes are copied into it, as
/// nginx buffers request bodies too).
fn requests_builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder.writev(false);
    builder
}

pub struct Pool {
    idle: Mutex<HashMap<Box<str>, Slot, foldhash::fast::RandomState>>,
    builder: http1::Builder,
    connect_timeout: Duration,
    /// An idle connection older than this is closed, not reused.
    idle_timeout: Duration,
}

/// One instance's idle connections, and the worker's own copy of its
/// address: leases clone that one, so workers on other cores never write
/// to the reference count of the routes' copy.
struct Slot {
    authority: Authority,
    idle: Vec<Idle>,
}

struct Idle {
    sender: Sender,
    /// When it went idle (`now_ms`).
    since: u64,
}

/// A connection in use; [`Lease::release`] puts it back for the next
/// request, dropping it closes it.
pub struct Lease {
    pool: Arc<Pool>,
    authority: Authority,
    sender: Sender,
}

impl Lease {
    /// Back to the pool, once its response has been read to the end.
    pub(crate) fn release(self) {
        self.pool.put(self.authority, self.sender);
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("authority", &self.authority)
            .finish()
    }
}

/// Why a request got no response from an instance.
#[derive(Debug)]
pub enum Error {
    /// No connection could be made (refused, unreachable, timed out).
    Connect(io::Error),
    /// The connection failed while the request was sent or answered.
    Request(hyper::Error),
}

impl Error {
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, Error::Connect(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect(_) => f.write_str("cannot connect"),
            Error::Request(_) => f.write_str("request failed"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Connect(e) => Some(e),
            Error::Request(e) => Some(e),
        }
    }
}

impl Pool {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Pool {
        Pool {
            idle: Mutex::new(HashMap::default()),
            builder: requests_builder(),
            connect_timeout,
            idle_timeout,
        }
    }

    /// Sends `req` (origin-form URI, Host set) to the instance at
    /// `authority`. A request that a reused connection closed under before
    /// sending a byte goes out again on another, as hyper-util's client
    /// does; on a fresh connection that is an error.
    pub async fn send(
        self: &Arc<Self>,
        authority: &Authority,
        mut req: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Lease), Error> {
        loop {
            let (local, taken) = self.take(authority).await;
            let (mut sender, reused) = match taken {
                Some(sender) => (sender, true),
                None => (self.connect(authority).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let lease = Lease {
                        pool: Arc::clone(self),
                        authority: local,
                        sender,
                    };
                    return Ok((resp, lease));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(Error::Request(e.into_error())),
                },
            }
        }
    }

    /// The worker's copy of `authority`, and the most recently used idle
    /// connection to it that is still open and ready for a request.
    async fn take(&self, authority: &Authority) -> (Authority, Option<Sender>) {
        loop {
            let (local, idle) = {
                let mut slots = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                match slots.get_mut(authority.as_str()) {
                    Some(slot) => (slot.authority.clone(), slot.idle.pop()),
                    None => {
                        let own = own_copy(authority);
                        let slot = Slot {
                            authority: own.clone(),
                            idle: Vec::new(),
                        };
                        slots.insert(authority.as_str().into(), slot);
                        (own, None)
                    }
                }
            };
            let Some(idle) = idle else {
                return (local, None);
            };
            if idle.sender.is_closed() || self.expired(idle.since, now_ms()) {
                continue;
            }
            let mut sender = idle.sender;
            // Put back as soon as its body ended, it may still be finishing
            // that response: this waits for that (or reports it closed).
            if sender.ready().await.is_ok() {
                return (local, Some(sender));
            }
        }
    }

    async fn connect(&self, authority: &Authority) -> Result<Sender, Error> {
        // An IPv6 authority is bracketed; the socket address is not.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(80);
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect((host, port)))
            .await
            .map_err(|_| Error::Connect(io::Error::new(io::ErrorKind::TimedOut, "timed out")))?
            .map_err(Error::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = self
            .builder
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Error::Connect(io::Error::other(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "connection to instance ended with an error");
            }
        });
        Ok(sender)
    }

    fn expired(&self, since: u64, now: u64) -> bool {
        let timeout = u64::try_from(self.idle_timeout.as_millis()).unwrap_or(u64::MAX);
        now.saturating_sub(since) >= timeout
    }

    fn put(&self, authority: Authority, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let idle = Idle {
            sender,
            since: now_ms(),
        };
        let mut slots = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        match slots.get_mut(authority.as_str()) {
            Some(slot) if slot.idle.len() < MAX_IDLE_PER_INSTANCE => slot.idle.push(idle),
            Some(_) => {}
            // Swept while the connection was out: the lease's copy is
            // already the worker's own.
            None => {
                let key = authority.as_str().into();
                let idle = vec![idle];
                slots.insert(key, Slot { authority, idle });
            }
        }
    }

    /// Closes idle connections past the idle timeout (or closed by the
    /// instance) and forgets instances with none left.
    fn sweep(&self) {
        let now = now_ms();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, slot| {
            slot.idle
                .retain(|i| !i.sender.is_closed() && !self.expired(i.since, now));
            !slot.idle.is_empty()
        });
    }

    /// Sweeps `pool` every few seconds while it exists. Spawn it on the
    /// worker's runtime: it ends with the runtime.
    pub(crate) async fn sweep_while_alive(pool: Weak<Pool>) {
        let period = match pool.upgrade() {
            Some(p) => (p.idle_timeout / 3).max(Duration::from_millis(100)),
            None => return,
        };
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match pool.upgrade() {
                Some(p) => p.sweep(),
                None => return,
            }
        }
    }
}

/// A worker's own copy of an instance's address: the bytes copied, not
/// shared.
fn own_copy(authority: &Authority) -> Authority {
    Authority::try_from(authority.as_str().as_bytes()).unwrap_or_else(|_| authority.clone())
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Either, Empty, Full};
    use hyper::service::service_fn;
    use tokio::net::TcpListener;

    use super::*;

    /// An instance on loopback that counts the connections it accepted and
    /// closes each after one answer when `close` is set.
    async fn instance(close: bool) -> (Authority, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let authority: Authority = listener.local_addr().unwrap().to_string().parse().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(move |_req| async move {
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"hello")));
                        if close {
                            resp.headers_mut()
                                .insert(http::header::CONNECTION, "close".parse().unwrap());
                        }
                        Ok::<_, Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (authority, accepted)
    }

    fn get(authority: &Authority) -> Request<UpstreamBody> {
        let mut req = Request::new(Either::Right(Empty::new()));
        req.headers_mut()
            .insert(http::header::HOST, authority.as_str().parse().unwrap());
        req
    }

    fn pool() -> Arc<Pool> {
        Arc::new(Pool::new(Duration::from_secs(1), Duration::from_secs(30)))
    }

    async fn fetch(pool: &Arc<Pool>, authority: &Authority) -> (Bytes, Lease) {
        let (resp, lease) = pool.send(authority, get(authority)).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (body, lease)
    }

    #[tokio::test]
    async fn a_released_connection_serves_the_next_request() {
        let (authority, accepted) = instance(false).await;
        let pool = pool();
        for _ in 0..5 {
            let (body, lease) = fetch(&pool, &authority).await;
            assert_eq!(body, "hello");
            lease.release();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_not_released_is_not_reused() {
        let (authority, accepted) = instance(false).await;
        let pool = pool();
        let (_, lease) = fetch(&pool, &authority).await;
        drop(lease);
        let (body, _lease) = fetch(&pool, &authority).await;
        assert_eq!(body, "hello");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_connection_the_instance_closed_is_replaced() {
        let (authority, accepted) = instance(true).await;
        let pool = pool();
        for _ in 0..3 {
            let (body, lease) = fetch(&pool, &authority).await;
            assert_eq!(body, "hello");
            lease.release();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let (authority, accepted) = instance(false).await;
        let pool = Arc::new(Pool::new(
            Duration::from_secs(1),
            Duration::from_millis(100),
        ));
        let (_, lease) = fetch(&pool, &authority).await;
        lease.release();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (_, lease) = fetch(&pool, &authority).await;
        lease.release();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        pool.sweep();
        assert!(pool.idle.lock().unwrap().contains_key(authority.as_str()));
        tokio::time::sleep(Duration::from_millis(150)).await;
        pool.sweep();
        assert!(pool.idle.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_instance_not_listening_is_a_connect_error() {
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let authority: Authority = format!("127.0.0.1:{port}").parse().unwrap();
        let err = pool().send(&authority, get(&authority)).await.unwrap_err();
        assert!(err.is_connect(), "{err:?}");
    }
}
