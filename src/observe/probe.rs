//! Reading one node over SSH: its facts, then the fleet's containers. The
//! impure twin of this module's parsers; it only reads, never changes a node.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::{
    ContainerState, DockerStatus, NodeFacts, ParseError, inspect_containers_argv,
    list_containers_argv, node_facts_argv, parse_container_ids, parse_inspect, parse_node_facts,
    vanished_ids,
};
use crate::ssh::{ExecLimits, Output, Pool, SshError, Target};

/// Why a node cannot run containers right now. Each needs a different fix,
/// so each is its own case.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "condition", content = "detail", rename_all = "kebab-case")]
pub enum Condition {
    /// No TCP connection or no SSH handshake in time.
    Unreachable(String),
    /// The server refused our key or the user (or we have no usable key).
    AuthRefused(String),
    /// The node offered a different host key than the one pinned or known.
    HostKeyMismatch(String),
    /// The host key is not in known_hosts, or could not be checked.
    HostKeyUnknown(String),
    /// A read took longer than its timeout (a paused or overloaded node).
    Timeout(String),
    DockerMissing,
    DockerDown(String),
    /// The SSH user may not use the Docker socket.
    DockerDenied(String),
    /// A command's output did not parse, or SSH failed mid-way.
    ProbeFailed(String),
}

impl Condition {
    pub fn name(&self) -> &'static str {
        match self {
            Condition::Unreachable(_) => "unreachable",
            Condition::AuthRefused(_) => "auth-refused",
            Condition::HostKeyMismatch(_) => "host-key-mismatch",
            Condition::HostKeyUnknown(_) => "host-key-unknown",
            Condition::Timeout(_) => "timeout",
            Condition::DockerMissing => "docker-missing",
            Condition::DockerDown(_) => "docker-down",
            Condition::DockerDenied(_) => "docker-denied",
            Condition::ProbeFailed(_) => "probe-failed",
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            Condition::DockerMissing => "no docker command on the node",
            Condition::Unreachable(d)
            | Condition::AuthRefused(d)
            | Condition::HostKeyMismatch(d)
            | Condition::HostKeyUnknown(d)
            | Condition::Timeout(d)
            | Condition::DockerDown(d)
            | Condition::DockerDenied(d)
            | Condition::ProbeFailed(d) => d,
        }
    }

    fn from_ssh(e: &SshError) -> Condition {
        Condition::classify(e, e.to_string())
    }

    /// `text` is the outermost error's, which names the bastion when the
    /// cause is behind one.
    fn classify(e: &SshError, text: String) -> Condition {
        match e {
            SshError::ViaBastion { source, .. } => Condition::classify(source, text),
            SshError::Unreachable { .. } | SshError::HandshakeTimeout { .. } => {
                Condition::Unreachable(text)
            }
            SshError::AuthRefused { .. } | SshError::Credentials(_) => Condition::AuthRefused(text),
            SshError::HostKeyMismatch { .. } => Condition::HostKeyMismatch(text),
            SshError::HostKeyUnknown { .. } | SshError::HostKeyUnchecked { .. } => {
                Condition::HostKeyUnknown(text)
            }
            SshError::Timeout { .. } => Condition::Timeout(text),
            SshError::BadArgument { .. }
            | SshError::Protocol { .. }
            | SshError::TooManyStreams { .. }
            | SshError::StreamStalled { .. } => Condition::ProbeFailed(text),
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name(), self.detail())
    }
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probed {
    /// Docker answers: the node's facts and the fleet's containers on it.
    Ready {
        facts: NodeFacts,
        containers: Vec<ContainerState>,
    },
    /// Reached, but Docker cannot be used.
    NoDocker {
        facts: NodeFacts,
        condition: Condition,
    },
    /// Not reached, or what it said made no sense.
    Failed(Condition),
}

impl Probed {
    pub fn condition(&self) -> Option<&Condition> {
        match self {
            Probed::Ready { .. } => None,
            Probed::NoDocker { condition, .. } | Probed::Failed(condition) => Some(condition),
        }
    }
}

/// Per-command bounds: a probe reads little, and a node that cannot answer
/// in this time is not one to schedule on.
#[derive(Debug, Clone, Copy)]
pub struct ProbeLimits {
    pub timeout: Duration,
    pub max_output: usize,
}

impl Default for ProbeLimits {
    fn default() -> Self {
        ProbeLimits {
            timeout: Duration::from_secs(10),
            max_output: 16 << 20,
        }
    }
}

/// Probes one node: facts and the container list at once over the pooled
/// connection, then one inspect of every listed container.
pub async fn probe(pool: &Pool, target: &Target, fleet: &str, limits: ProbeLimits) -> Probed {
    let limits = ExecLimits {
        timeout: limits.timeout,
        max_output: limits.max_output,
    };
    let facts_argv = node_facts_argv();
    let list_argv = list_containers_argv(fleet);
    let (facts, listed) = tokio::join!(
        pool.exec(target, &facts_argv, None, limits),
        pool.exec(target, &list_argv, None, limits),
    );
    let facts = match facts.map(|out| read(&out, parse_node_facts)) {
        Ok(Ok(facts)) => facts,
        Ok(Err(e)) => return Probed::Failed(e),
        Err(e) => return Probed::Failed(Condition::from_ssh(&e)),
    };
    let condition = match &facts.docker {
        DockerStatus::Running { .. } => None,
        DockerStatus::Missing => Some(Condition::DockerMissing),
        DockerStatus::DaemonDown { message } => Some(Condition::DockerDown(message.clone())),
        DockerStatus::PermissionDenied { message } => {
            Some(Condition::DockerDenied(message.clone()))
        }
    };
    if let Some(condition) = condition {
        return Probed::NoDocker { facts, condition };
    }
    match containers(pool, target, listed, limits).await {
        Ok(containers) => Probed::Ready { facts, containers },
        Err(condition) => Probed::Failed(condition),
    }
}

async fn containers(
    pool: &Pool,
    target: &Target,
    listed: Result<Output, SshError>,
    limits: ExecLimits,
) -> Result<Vec<ContainerState>, Condition> {
    let listed = listed.map_err(|e| Condition::from_ssh(&e))?;
    if !listed.success() || listed.truncated {
        return Err(failed("docker ps", &listed));
    }
    let ids = read(&listed, parse_container_ids)?;
    let Some(argv) = inspect_containers_argv(&ids) else {
        return Ok(Vec::new());
    };
    let out = pool
        .exec(target, &argv, None, limits)
        .await
        .map_err(|e| Condition::from_ssh(&e))?;
    // A container removed between ps and inspect is simply gone.
    let whole = out.success() || vanished_ids(&out.stderr_text()).is_some();
    if !whole || out.truncated {
        return Err(failed("docker inspect", &out));
    }
    read(&out, parse_inspect)
}

fn read<T>(out: &Output, parse: fn(&str) -> Result<T, ParseError>) -> Result<T, Condition> {
    if out.truncated {
        return Err(Condition::ProbeFailed(
            "output exceeded the probe's limit".into(),
        ));
    }
    parse(&out.stdout_text()).map_err(|e| Condition::ProbeFailed(e.to_string()))
}

fn failed(command: &str, out: &Output) -> Condition {
    let status = out
        .status
        .map_or_else(|| "no exit status".to_owned(), |s| format!("exit {s}"));
    let stderr = out.stderr_text();
    let tail = stderr.trim().lines().last().unwrap_or("no output");
    Condition::ProbeFailed(format!("`{command}` failed ({status}): {tail}"))
}
