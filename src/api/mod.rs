//! The operator's HTTP API (`[api]`): what `prism deploy --remote` and a
//! CI job talk to. It does what the command line does on the operator's
//! box, for a token: reads the state file (the fleet, the plan, events,
//! history), edits fleet.toml (deploy, scale, rollback: rollout/), and
//! leaves requests for the applier (drain, reconcile). The applier picks
//! all of it up as it does a person's, so nothing here changes a node.
//!
//! ```text
//! routes.rs   the endpoints, each with the scope it needs
//! auth.rs     tokens (Argon2id), failed attempts per client
//! handlers.rs what each endpoint does
//! problem.rs  errors as RFC 7807
//! openapi.json the document served at /v1/openapi.json
//! ```

mod auth;
mod handlers;
mod problem;
mod routes;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::operator::FrontError;
use crate::proxy::Tls;
use crate::store::{Scope, Store, TokenRecord, Writer, now_ms};

pub use auth::{Minted, mint};
pub use problem::Problem;
pub use routes::{Op, ROUTES, Route};

/// The OpenAPI document of the endpoints.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Response bodies: whole JSON, or the event stream.
pub type Body = BoxBody<Bytes, Infallible>;

/// Token checks (Argon2, 19 MiB each) that run at once, at most.
const HASHING: usize = 2;

/// How long a client has to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The API's listener, bound, with TLS when it has a host.
pub struct Api {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
}

impl Api {
    /// Binds `[api] listen`. With `host`, HTTPS with certificates from
    /// `tls` (the proxy's, kept current by it), or without a proxy from
    /// `[[proxy.certificates]]` read now.
    pub fn bind(config: &Config, tls: Option<&Arc<Tls>>) -> Result<Option<Api>, FrontError> {
        let Some(api) = &config.fleet.api else {
            return Ok(None);
        };
        let listen_err = |source| FrontError::Listen {
            what: "api",
            addr: api.listen.clone(),
            source,
        };
        let addr: SocketAddr = api.addr().ok_or_else(|| {
            listen_err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not an address and port",
            ))
        })?;
        let tls = match &api.host {
            None => None,
            Some(host) => Some(acceptor(config, host, tls)?),
        };
        let listener = crate::proxy::bind_one(addr).map_err(listen_err)?;
        Ok(Some(Api { listener, tls }))
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown` resolves; the text of each edit of
    /// fleet.toml goes to `edited` (the watcher takes it without waiting).
    pub async fn serve(
        self,
        config: Config,
        journal: Writer,
        edited: tokio::sync::watch::Sender<Option<String>>,
        shutdown: impl Future<Output = ()>,
    ) {
        tracing::info!(
            listen = ?self.local_addr(),
            https = self.tls.is_some(),
            "API serving"
        );
        let shared = Arc::new(Shared {
            config,
            journal,
            edited,
            verifier: auth::Verifier::default(),
            limiter: auth::Limiter::default(),
            hashing: tokio::sync::Semaphore::new(HASHING),
        });
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::warn!(error = %e, "api: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => return,
            };
            let shared = Arc::clone(&shared);
            let tls = self.tls.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let shared = Arc::clone(&shared);
                    async move { Ok::<_, Infallible>(shared.answer(peer.ip(), req).await) }
                });
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT);
                let served = match tls {
                    None => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                    Some(tls) => {
                        let handshake =
                            tokio::time::timeout(HEADER_TIMEOUT, tls.accept(stream)).await;
                        match handshake {
                            Ok(Ok(stream)) => {
                                builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "api: TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        }
                    }
                };
                if let Err(e) = served {
                    tracing::debug!(error = %e, "api connection ended with an error");
                }
            });
        }
    }
}

/// TLS for `host` from the proxy's certificates, or, without a proxy,
/// from the certificate files alone.
fn acceptor(
    config: &Config,
    host: &str,
    tls: Option<&Arc<Tls>>,
) -> Result<TlsAcceptor, FrontError> {
    let tls = match tls {
        Some(tls) => Arc::clone(tls),
        None => {
            let own = Arc::new(Tls::new());
            own.load_files(config)?;
            if !own.files_cover(host) {
                return Err(FrontError::Tls(crate::proxy::TlsError {
                    field: "api.host".into(),
                    path: config.file.clone(),
                    message: format!(
                        "no file of [[proxy.certificates]] covers {host}, and ACME runs only with the proxy"
                    ),
                }));
            }
            own
        }
    };
    let server: Arc<ServerConfig> = tls.server_config().map_err(|e| FrontError::Listen {
        what: "api",
        addr: host.to_owned(),
        source: std::io::Error::other(e),
    })?;
    Ok(TlsAcceptor::from(server))
}

/// What every request needs.
struct Shared {
    config: Config,
    journal: Writer,
    edited: tokio::sync::watch::Sender<Option<String>>,
    verifier: auth::Verifier,
    limiter: auth::Limiter,
    /// Turns at Argon2 ([`HASHING`] at once).
    hashing: tokio::sync::Semaphore,
}

/// Who a request is from.
pub(crate) struct Caller {
    pub name: String,
    pub scope: Scope,
}

impl Caller {
    /// As history and events name it.
    pub fn who(&self) -> String {
        format!("token {}", self.name)
    }
}

impl Shared {
    async fn answer(self: &Arc<Self>, peer: IpAddr, req: Request<Incoming>) -> Response<Body> {
        match self.respond(peer, req).await {
            Ok(resp) => resp,
            Err(p) => p.response(),
        }
    }

    async fn respond(
        self: &Arc<Self>,
        peer: IpAddr,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Problem> {
        let caller = self.authenticate(peer, &req).await?;
        let (route, params) = routes::find(req.method(), req.uri().path())?;
        if caller.scope < route.scope {
            return Err(Problem::new(
                StatusCode::FORBIDDEN,
                format!(
                    "token {} has scope {}; {} {} needs {}",
                    caller.name,
                    caller.scope.as_str(),
                    route.method,
                    route.path,
                    route.scope.as_str()
                ),
            ));
        }
        handlers::handle(self, &caller, route.op, params, req).await
    }

    /// The token of `req`, live and with its secret right. An attempt with
    /// a secret this process has not checked yet counts against `peer`
    /// before Argon2 runs (taken back if it was right): a client at its
    /// limit waits, but a token already checked goes on working.
    async fn authenticate(
        self: &Arc<Self>,
        peer: IpAddr,
        req: &Request<Incoming>,
    ) -> Result<Caller, Problem> {
        let now = Instant::now();
        let token = bearer(req);
        let known = token
            .as_ref()
            .is_ok_and(|(id, secret)| self.verifier.known(id, secret));
        if !known {
            if let Some(wait) = self.limiter.wait(peer, now) {
                let mut p = Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too many failed attempts from this address; try again later",
                );
                p.retry_after = Some(wait.as_secs().max(1));
                return Err(p);
            }
            self.limiter.failed(peer, now);
        }
        let found = match token {
            Ok((id, secret)) => self.check(id, secret, known).await,
            Err(p) => Err(p),
        };
        match &found {
            Ok(_) if !known => self.limiter.forgive(peer),
            Err(p) if p.status == 401 => {
                tracing::warn!(%peer, path = req.uri().path(), "api: a request was refused its token");
            }
            _ => {}
        }
        found
    }

    /// The caller whose token is `id` and `secret` (`known`: checked before
    /// by this process); Argon2 at most [`HASHING`] at a time, whatever
    /// arrives at once.
    async fn check(
        self: &Arc<Self>,
        id: String,
        secret: String,
        known: bool,
    ) -> Result<Caller, Problem> {
        let _turn = match known {
            true => None,
            false => Some(self.hashing.acquire().await.map_err(|_| {
                Problem::new(StatusCode::SERVICE_UNAVAILABLE, "the API is stopping")
            })?),
        };
        let me = Arc::clone(self);
        let state = self.config.state_path();
        let record = tokio::task::spawn_blocking(move || -> Result<Option<TokenRecord>, String> {
            let record = match Store::open_read_only(&state).map_err(|e| e.to_string())? {
                Some(store) => store.token(&id).map_err(|e| e.to_string())?,
                None => None,
            };
            Ok(me
                .verifier
                .verify(record.as_ref(), &id, &secret)
                .then_some(record)
                .flatten())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(|e| {
            tracing::error!(error = %e, "api: cannot read the tokens");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the tokens cannot be read from the state file now; try again",
            )
        })?;
        let Some(record) = record else {
            return Err(Problem::unauthorized("unknown token"));
        };
        let now = now_ms();
        if let Some(at) = record.revoked {
            return Err(Problem::unauthorized(format!(
                "token {} was revoked {}",
                record.name,
                crate::cli::table::age(now, at)
            )));
        }
        if !record.live(now) {
            return Err(Problem::unauthorized(format!(
                "token {} has expired",
                record.name
            )));
        }
        if record
            .last_used
            .is_none_or(|t| now.saturating_sub(t) > 60_000)
        {
            let id = record.id.clone();
            self.journal
                .submit("note a token's use", move |s| s.token_used(&id, now));
        }
        Ok(Caller {
            name: record.name,
            scope: record.scope,
        })
    }
}

/// The token of `req`'s `Authorization: Bearer`, as its id and secret.
fn bearer(req: &Request<Incoming>) -> Result<(String, String), Problem> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Problem::unauthorized("no token: send Authorization: Bearer TOKEN"))?;
    let token = header
        .strip_prefix("Bearer ")
        .map(str::trim)
        .ok_or_else(|| Problem::unauthorized("send the token as Authorization: Bearer TOKEN"))?;
    auth::parse(token)
        .map(|(id, secret)| (id.to_owned(), secret.to_owned()))
        .ok_or_else(|| Problem::unauthorized("that is not a Prism token"))
}

/// A JSON response.
pub(crate) fn json_body(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_else(|e| {
        format!("{{\"detail\": \"cannot encode the answer: {e}\"}}").into_bytes()
    });
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
