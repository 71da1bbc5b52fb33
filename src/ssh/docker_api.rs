//! A node's Docker Engine API, reached through its pooled SSH connection:
//! a `direct-streamlocal@openssh.com` channel to the Docker socket with
//! HTTP/1.1 (hyper) on it. sshd connects to the socket as the login user,
//! so the same permissions apply as to the docker CLI, and no process is
//! started on the node. Each node keeps one such connection beside its
//! pooled session: reused across requests and passes, reopened when it
//! dies, dropped with the session.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex as AsyncMutex;
use tokio::time::Instant;

use super::{ExecLimits, Pool, Session, SshError, Target};

/// Where Docker listens unless told otherwise (and where the docker CLI
/// looks without `DOCKER_HOST`).
pub(crate) const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// A node's kept API connection, if one is open. The pool holds one per
/// node beside the session; requests to the node take turns on it.
pub(super) type DockerSlot = Arc<AsyncMutex<Option<ApiConnection>>>;

pub(super) struct ApiConnection {
    /// The session whose channel carries it: another session (the pool
    /// replaced it) means this connection is stale.
    session: Weak<Session>,
    sender: SendRequest<Empty<Bytes>>,
    /// Answers asked with `docker_get_once`, by path.
    remembered: HashMap<String, ApiResponse>,
}

/// An API answer: its status and whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    pub status: u16,
    pub body: Bytes,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum DockerApiError {
    /// No SSH session to the node.
    #[error(transparent)]
    Ssh(#[from] SshError),
    /// sshd could not connect to the socket. OpenSSH gives one answer for
    /// a missing socket, nothing listening, no permission and forwarding
    /// refused by its configuration: the caller tells them apart.
    #[error("{node}: sshd could not connect to {socket}: {reason}")]
    SocketRefused {
        node: String,
        socket: String,
        reason: String,
    },
    #[error("{node}: Docker API request timed out after {}s: GET {path}", .after.as_secs_f32())]
    Timeout {
        node: String,
        path: String,
        after: Duration,
    },
    /// The connection broke, or what came back was not HTTP.
    #[error("{node}: Docker API request GET {path} failed: {reason}")]
    Http {
        node: String,
        path: String,
        reason: String,
    },
    #[error("{node}: Docker API answer to GET {path} is over {limit} bytes")]
    TooLarge {
        node: String,
        path: String,
        limit: usize,
    },
}

impl Pool {
    /// `GET path` (origin form: `/containers/json?all=1`) on the node's
    /// Docker API, over the connection kept for the node: opened on first
    /// use, reopened when it died or the pool replaced the session. The
    /// timeout covers waiting for the connection, opening it and the whole
    /// answer; the body is capped at `max_output` bytes. A request that
    /// fails or times out takes the connection with it.
    pub async fn docker_get(
        &self,
        target: &Target,
        path: &str,
        limits: ExecLimits,
    ) -> Result<ApiResponse, DockerApiError> {
        self.docker_request(target, path, false, limits).await
    }

    /// `docker_get` for an answer that cannot change while the daemon runs
    /// (`/version`): asked once per connection, then answered from memory.
    /// A daemon that restarts closes the connection, and with it what was
    /// remembered. (Worth it: dockerd starts helper processes to answer
    /// `/version`, six per call on the lab's Docker 20.10.)
    pub async fn docker_get_once(
        &self,
        target: &Target,
        path: &str,
        limits: ExecLimits,
    ) -> Result<ApiResponse, DockerApiError> {
        self.docker_request(target, path, true, limits).await
    }

    async fn docker_request(
        &self,
        target: &Target,
        path: &str,
        once: bool,
        limits: ExecLimits,
    ) -> Result<ApiResponse, DockerApiError> {
        let get = Get {
            target,
            path,
            once,
            limits,
        };
        let (session, slot) = self.session_and_docker(target).await?;
        match get.run(&session, &slot).await {
            // As for exec: a connection found dead is replaced once.
            Err(DockerApiError::Http { .. }) if session.is_closed() => {
                self.forget(target).await;
                let (session, slot) = self.session_and_docker(target).await?;
                get.run(&session, &slot).await
            }
            result => result,
        }
    }
}

/// One request, as asked.
#[derive(Clone, Copy)]
struct Get<'a> {
    target: &'a Target,
    path: &'a str,
    once: bool,
    limits: ExecLimits,
}

impl Get<'_> {
    async fn run(
        self,
        session: &Arc<Session>,
        slot: &DockerSlot,
    ) -> Result<ApiResponse, DockerApiError> {
        let deadline = Instant::now() + self.limits.timeout;
        let timed_out = || DockerApiError::Timeout {
            node: self.target.id.clone(),
            path: self.path.to_owned(),
            after: self.limits.timeout,
        };
        let mut kept = tokio::time::timeout_at(deadline, slot.lock())
            .await
            .map_err(|_| timed_out())?;
        let result = tokio::time::timeout_at(deadline, self.on(&mut kept, session))
            .await
            .unwrap_or_else(|_| Err(timed_out()));
        if result.is_err() {
            // Its state is unknown (a request may be half sent): start afresh.
            *kept = None;
        }
        result
    }

    /// Sends on the kept connection if it is still good, else on a new
    /// one; a kept connection that breaks (closed while idle) is replaced
    /// once.
    async fn on(
        self,
        kept: &mut Option<ApiConnection>,
        session: &Arc<Session>,
    ) -> Result<ApiResponse, DockerApiError> {
        if let Some(conn) = kept.as_mut()
            && Weak::ptr_eq(&conn.session, &Arc::downgrade(session))
            && conn.sender.ready().await.is_ok()
        {
            if self.once
                && let Some(answer) = conn.remembered.get(self.path)
            {
                return Ok(answer.clone());
            }
            match self.send(conn).await {
                Err(DockerApiError::Http { .. }) => {}
                result => return result,
            }
        }
        *kept = None;
        let conn = kept.insert(open(session, self.target, self.path).await?);
        self.send(conn).await
    }

    async fn send(self, conn: &mut ApiConnection) -> Result<ApiResponse, DockerApiError> {
        let answer = send(
            &mut conn.sender,
            self.target,
            self.path,
            self.limits.max_output,
        )
        .await?;
        if self.once && answer.status == 200 {
            conn.remembered.insert(self.path.to_owned(), answer.clone());
        }
        Ok(answer)
    }
}

async fn open(
    session: &Arc<Session>,
    target: &Target,
    path: &str,
) -> Result<ApiConnection, DockerApiError> {
    let channel = session
        .open_socket(DOCKER_SOCKET)
        .await
        .map_err(|e| match e {
            russh::Error::ChannelOpenFailure(why) => DockerApiError::SocketRefused {
                node: target.id.clone(),
                socket: DOCKER_SOCKET.to_owned(),
                reason: refusal(&why),
            },
            other => DockerApiError::Ssh(SshError::Protocol {
                node: target.id.clone(),
                reason: other.to_string(),
            }),
        })?;
    let (sender, connection) = http1::handshake(TokioIo::new(channel.into_stream()))
        .await
        .map_err(|e| DockerApiError::Http {
            node: target.id.clone(),
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    // Drives the connection until the sender is dropped or the channel
    // closes (the session ended, or dockerd went away).
    let node = target.id.clone();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(node, error = %e, "Docker API connection ended");
        }
    });
    Ok(ApiConnection {
        session: Arc::downgrade(session),
        sender,
        remembered: HashMap::new(),
    })
}

async fn send(
    sender: &mut SendRequest<Empty<Bytes>>,
    target: &Target,
    path: &str,
    max_body: usize,
) -> Result<ApiResponse, DockerApiError> {
    let failed = |reason: String| DockerApiError::Http {
        node: target.id.clone(),
        path: path.to_owned(),
        reason,
    };
    let request = Request::get(path)
        .header(header::HOST, "docker")
        .header(
            header::USER_AGENT,
            concat!("prism/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::new())
        .map_err(|e| failed(format!("not a request path: {e}")))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let status = response.status().as_u16();
    let body = Limited::new(response.into_body(), max_body)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                DockerApiError::TooLarge {
                    node: target.id.clone(),
                    path: path.to_owned(),
                    limit: max_body,
                }
            } else {
                failed(e.to_string())
            }
        })?
        .to_bytes();
    Ok(ApiResponse { status, body })
}

fn refusal(why: &russh::ChannelOpenFailure) -> String {
    match why {
        russh::ChannelOpenFailure::ConnectFailed => "connect failed".into(),
        russh::ChannelOpenFailure::AdministrativelyProhibited => {
            "administratively prohibited".into()
        }
        russh::ChannelOpenFailure::UnknownChannelType => {
            "the server does not support direct-streamlocal channels".into()
        }
        russh::ChannelOpenFailure::ResourceShortage => "resource shortage".into(),
        russh::ChannelOpenFailure::Other { code, reason } => format!("{reason} (code {code})"),
    }
}
