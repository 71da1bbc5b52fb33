//! One live connection per node, reused across commands and reconciles.
//! A dead connection is noticed and replaced; a node that keeps failing is
//! retried with backoff so it never slows the others. With a bastion, one
//! pooled connection to it carries every node's session in a tunnel.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use russh::keys::PublicKey;
use tokio::sync::Mutex as AsyncMutex;

use super::docker_api::DockerSlot;
use super::trust::{Trust, fingerprint};
use super::{
    ExecLimits, ExecStream, HostKeys, Output, Session, SshError, SshSettings, StreamLimits, Target,
};
use crate::store::{Level, NewEvent, Writer};

#[derive(Default)]
struct Slot {
    session: Option<Arc<Session>>,
    /// Where the live session goes; a new address means a new connection.
    address: String,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<SshError>,
    /// The Docker API connection riding on `session`; replaced with it.
    docker: DockerSlot,
}

pub struct Pool {
    settings: SshSettings,
    /// Pins host keys (pin mode) and records trust events.
    store: Option<Writer>,
    slots: Mutex<HashMap<String, Arc<AsyncMutex<Slot>>>>,
}

impl Pool {
    /// `store` is required for `HostKeys::Pin`: without one, nothing can be
    /// pinned and every connection is refused.
    pub fn new(settings: SshSettings, store: Option<Writer>) -> Pool {
        Pool {
            settings,
            store,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, id: &str) -> Arc<AsyncMutex<Slot>> {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        slots.entry(id.to_owned()).or_default().clone()
    }

    /// The node's live session, connecting if there is none.
    pub async fn session(&self, target: &Target) -> Result<Arc<Session>, SshError> {
        self.pooled(target, self.settings.bastion.as_ref()).await
    }

    /// The live session to `target`, reached directly or through `bastion`.
    async fn pooled(
        &self,
        target: &Target,
        bastion: Option<&Target>,
    ) -> Result<Arc<Session>, SshError> {
        let slot = self.slot(&target.id);
        let mut slot = slot.lock().await;
        if let Some(session) = &slot.session {
            if !session.is_closed() && slot.address == target.address {
                return Ok(session.clone());
            }
            slot.session = None;
        }
        if let (Some(at), Some(err)) = (slot.retry_at, &slot.last_error)
            && Instant::now() < at
        {
            return Err(err.clone());
        }
        match self.connect(target, bastion).await {
            Ok(session) => {
                let session = Arc::new(session);
                *slot = Slot {
                    session: Some(session.clone()),
                    address: target.address.clone(),
                    ..Slot::default()
                };
                Ok(session)
            }
            Err(err) => {
                slot.failures += 1;
                let backoff = Duration::from_millis(500 << slot.failures.min(5))
                    .min(self.settings.max_backoff);
                slot.retry_at = Some(Instant::now() + backoff);
                slot.last_error = Some(err.clone());
                Err(err)
            }
        }
    }

    /// Runs argv on the node over its pooled connection; a connection found
    /// dead is replaced once.
    pub async fn exec(
        &self,
        target: &Target,
        argv: &[String],
        stdin: Option<&[u8]>,
        limits: ExecLimits,
    ) -> Result<Output, SshError> {
        let session = self.session(target).await?;
        match session.exec(argv, stdin, limits).await {
            Err(SshError::Protocol { .. }) if session.is_closed() => {
                self.forget(target).await;
                self.session(target).await?.exec(argv, stdin, limits).await
            }
            result => result,
        }
    }

    /// Starts argv on the node and streams its output (`docker logs -f`);
    /// a connection found dead is replaced once.
    pub async fn exec_stream(
        &self,
        target: &Target,
        argv: &[String],
        limits: StreamLimits,
    ) -> Result<ExecStream, SshError> {
        let session = self.session(target).await?;
        match session.exec_stream(argv, limits).await {
            Err(SshError::Protocol { .. }) if session.is_closed() => {
                self.forget(target).await;
                self.session(target).await?.exec_stream(argv, limits).await
            }
            result => result,
        }
    }

    /// The node's live session and the Docker API connection kept beside
    /// it (see docker_api.rs).
    pub(super) async fn session_and_docker(
        &self,
        target: &Target,
    ) -> Result<(Arc<Session>, DockerSlot), SshError> {
        let session = self.session(target).await?;
        let docker = self.slot(&target.id).lock().await.docker.clone();
        Ok((session, docker))
    }

    /// Drops the node's connection and its backoff (a node that was healed
    /// or replaced).
    pub async fn forget(&self, target: &Target) {
        let slot = self.slot(&target.id);
        let mut slot = slot.lock().await;
        if let Some(session) = slot.session.take() {
            session.close().await;
        }
        *slot = Slot::default();
    }

    async fn trust_for(&self, target: &Target) -> Result<Trust, SshError> {
        match &self.settings.host_keys {
            HostKeys::KnownHosts(file) => Ok(Trust::KnownHosts {
                file: file.clone(),
                host: target.address.clone(),
                port: target.port,
            }),
            HostKeys::Pin => {
                let id = target.id.clone();
                let pinned = self
                    .store()?
                    .call("read a pinned host key", move |s| s.pinned_key(&id))
                    .await
                    .map_err(|e| self.unchecked(target, e.to_string()))?;
                match pinned {
                    None => Ok(Trust::FirstUse),
                    Some(pin) => {
                        let text = format!("{} {}", pin.algorithm, pin.public_key);
                        PublicKey::from_openssh(&text)
                            .map(Trust::Pinned)
                            .map_err(|e| {
                                self.unchecked(
                                    target,
                                    format!("the pinned key does not parse: {e}"),
                                )
                            })
                    }
                }
            }
        }
    }

    fn store(&self) -> Result<&Writer, SshError> {
        self.store.as_ref().ok_or_else(|| {
            SshError::Credentials("host_keys = \"pin\" needs the state store".into())
        })
    }

    fn unchecked(&self, target: &Target, reason: String) -> SshError {
        SshError::HostKeyUnchecked {
            node: target.id.clone(),
            reason,
        }
    }

    async fn connect(
        &self,
        target: &Target,
        bastion: Option<&Target>,
    ) -> Result<Session, SshError> {
        let trust = self.trust_for(target).await?;
        let (credentials, options) = (&self.settings.credentials, &self.settings.connect);
        let result = match bastion {
            None => Session::connect(target, trust, credentials, options).await,
            Some(bastion) => {
                // The bastion's own failures are told apart from the node's.
                let jump = Box::pin(self.pooled(bastion, None)).await.map_err(|e| {
                    SshError::ViaBastion {
                        node: target.id.clone(),
                        source: Box::new(e),
                    }
                })?;
                let tunnel =
                    jump.tunnel(target, options.connect_timeout)
                        .await
                        .map_err(|e| match e {
                            SshError::Unreachable { .. } => e,
                            other => SshError::ViaBastion {
                                node: target.id.clone(),
                                source: Box::new(other),
                            },
                        })?;
                Session::over_stream(tunnel, target, trust, credentials, options).await
            }
        };
        let session = match result {
            Ok(session) => session,
            Err(err) => {
                if let SshError::HostKeyMismatch { offered, .. } = &err {
                    let (kind, what) = self.kind_of(target);
                    let mut event = NewEvent::new(
                        Level::Error,
                        &format!("{kind}.untrusted"),
                        format!(
                            "host key changed for {what} at {}: offered {offered}; refused",
                            target.address
                        ),
                    );
                    if kind == "node" {
                        event = event.node(target.id.clone());
                    }
                    self.event(event);
                }
                return Err(err);
            }
        };
        if session.needs_pin() {
            self.pin(target, &session).await?;
        }
        Ok(session)
    }

    /// Records the first key seen; if another process pinned a different
    /// one meanwhile, this connection is refused too.
    async fn pin(&self, target: &Target, session: &Session) -> Result<(), SshError> {
        let key = session.host_key();
        let text = key
            .to_openssh()
            .map_err(|e| self.unchecked(target, format!("cannot encode host key: {e}")))?;
        let mut parts = text.split_whitespace();
        let (algorithm, body) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let offered = fingerprint(key);
        let (id, algorithm, key_body, seen) = (
            target.id.clone(),
            algorithm.to_owned(),
            body.to_owned(),
            offered.clone(),
        );
        let pinned = self
            .store()?
            .call("pin a host key", move |s| {
                s.pin_key(&id, &algorithm, &key_body, &seen)
            })
            .await
            .map_err(|e| self.unchecked(target, e.to_string()))?;
        if pinned.public_key != body {
            session.close().await;
            return Err(SshError::HostKeyMismatch {
                node: target.id.clone(),
                expected: pinned.fingerprint,
                offered,
            });
        }
        let (kind, what) = self.kind_of(target);
        let mut event = NewEvent::info(
            &format!("{kind}.host_key_pinned"),
            format!("pinned host key {offered} for {what} at {}", target.address),
        );
        if kind == "node" {
            event = event.node(target.id.clone());
        }
        self.event(event);
        Ok(())
    }

    /// Events about the bastion are its own, not a node's.
    fn kind_of<'a>(&self, target: &'a Target) -> (&'static str, &'a str) {
        match &self.settings.bastion {
            Some(b) if b.id == target.id => ("bastion", "the bastion"),
            _ => ("node", target.id.as_str()),
        }
    }

    fn event(&self, event: NewEvent) {
        if let Some(store) = &self.store {
            store.event(event);
        }
    }
}

/// Runs `f` for every target, at most `limit` at a time, results in the
/// order they finish. Each call carries its own timeouts, so a dead node
/// delays nobody else.
pub async fn fan_out<T, F, Fut>(targets: &[Target], limit: usize, f: F) -> Vec<(Target, T)>
where
    F: Fn(Target) -> Fut,
    Fut: Future<Output = T>,
{
    stream::iter(targets.iter().cloned())
        .map(|t| {
            let run = f(t.clone());
            async move { (t, run.await) }
        })
        .buffer_unordered(limit.max(1))
        .collect()
        .await
}
