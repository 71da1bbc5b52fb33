//! Reading one node over SSH: its facts, then Docker's view of the fleet's
//! containers through the Docker API socket. The impure twin of this
//! module's parsers; it only reads, never changes a node.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::api::{
    VERSION_PATH, inspect_container_path, list_containers_path, list_volumes_path,
    parse_container_inspect, parse_container_list, parse_version, parse_volume_list,
};
use super::{
    ContainerState, DockerSetup, IMAGES_PATH, Images, NodeFacts, ParseError, SocketAccess,
    docker_version_argv, inspect_image_path, node_facts_argv, parse_docker_version,
    parse_image_list, parse_image_volumes, parse_node_facts,
};
use crate::ssh::{
    ApiResponse, DOCKER_SOCKET, DockerApiError, ExecLimits, Output, Pool, SshError, Target,
};

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
    /// Neither a docker command nor a Docker socket on the node.
    DockerMissing,
    DockerDown(String),
    /// The SSH user may not use the Docker socket: its permissions, or
    /// sshd's refusal to forward to it.
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
            Condition::DockerMissing => "no docker command and no Docker socket on the node",
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
    /// Docker answers: the node's facts, Docker's version
    /// (`20.10.24+dfsg1`), the fleet's containers on it and the images it
    /// holds (`None` when their list could not be read: that alone is no
    /// reason to doubt a node that answers).
    Ready {
        facts: NodeFacts,
        docker_version: String,
        containers: Vec<ContainerState>,
        images: Option<Images>,
        /// The fleet's Docker volumes on it, when they could be listed.
        volumes: Option<BTreeSet<String>>,
        /// The paths images declare as volumes, for the images asked
        /// about that the node holds, by reference as asked.
        image_volumes: BTreeMap<String, Vec<String>>,
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

/// Per-request bounds: a probe reads little, and a node that cannot answer
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

/// Probes one node: the facts script over an exec channel and, at the
/// same time, Docker's state over the node's kept Docker API connection
/// (no docker process runs on the node).
pub async fn probe(pool: &Pool, target: &Target, fleet: &str, limits: ProbeLimits) -> Probed {
    probe_with_metadata(pool, target, fleet, limits, None, &BTreeSet::new()).await
}

/// [`probe`], and with `metadata_url` the node's instance metadata is read
/// for a spot notice in the same round trip (in [`NodeFacts::notice`]).
pub(crate) async fn probe_with_metadata(
    pool: &Pool,
    target: &Target,
    fleet: &str,
    limits: ProbeLimits,
    metadata_url: Option<&str>,
    unread_images: &BTreeSet<String>,
) -> Probed {
    let limits = ExecLimits {
        timeout: limits.timeout,
        max_output: limits.max_output,
    };
    let facts_argv = node_facts_argv(metadata_url);
    let (facts, docker) = tokio::join!(
        pool.exec(target, &facts_argv, None, limits),
        docker_state(pool, target, fleet, limits, unread_images),
    );
    let facts = match facts.map(|out| read(&out, parse_node_facts)) {
        Ok(Ok(facts)) => facts,
        Ok(Err(e)) => return Probed::Failed(e),
        Err(e) => return Probed::Failed(Condition::from_ssh(&e)),
    };
    match docker {
        Ok(DockerState {
            version: docker_version,
            containers,
            images,
            volumes,
            image_volumes,
        }) => Probed::Ready {
            facts,
            docker_version,
            containers,
            images,
            volumes,
            image_volumes,
        },
        Err(Unanswered::Socket(reason)) => {
            match no_socket(pool, target, &facts.docker, &reason, limits).await {
                Ok(condition) => Probed::NoDocker { facts, condition },
                Err(condition) => Probed::Failed(condition),
            }
        }
        Err(Unanswered::Failed(condition)) => Probed::Failed(condition),
    }
}

/// Why Docker's API gave no state.
#[derive(Debug)]
enum Unanswered {
    /// sshd could not connect to the socket (why: see [`no_socket`]).
    Socket(String),
    Failed(Condition),
}

struct DockerState {
    version: String,
    containers: Vec<ContainerState>,
    images: Option<Images>,
    volumes: Option<BTreeSet<String>>,
    image_volumes: BTreeMap<String, Vec<String>>,
}

/// Docker's version (asked once per API connection), then the fleet's
/// containers: one list, and one inspect per container, then the node's
/// images, all on the node's kept connection. A container removed in
/// between is left out.
async fn docker_state(
    pool: &Pool,
    target: &Target,
    fleet: &str,
    limits: ExecLimits,
    unread_images: &BTreeSet<String>,
) -> Result<DockerState, Unanswered> {
    let answer = pool.docker_get_once(target, VERSION_PATH, limits).await;
    let version = judge(answer, parse_version)?;
    let answer = pool
        .docker_get(target, &list_containers_path(fleet), limits)
        .await;
    let ids = judge(answer, parse_container_list)?;
    let mut containers = Vec::with_capacity(ids.len());
    for id in &ids {
        let answer = pool
            .docker_get(target, &inspect_container_path(id), limits)
            .await;
        if let Some(c) = judge(answer, parse_container_inspect)? {
            containers.push(c);
        }
    }
    // What a preparing node still lacks (see operator::lifecycle).
    let answer = pool.docker_get(target, IMAGES_PATH, limits).await;
    let images = match judge(answer, parse_image_list) {
        Ok(images) => Some(images),
        Err(why) => {
            tracing::debug!(node = %target.id, reason = ?why, "cannot list the node's images");
            None
        }
    };
    // The fleet's volumes, and what images not read yet declare: neither
    // is a reason to doubt a node that answers.
    let answer = pool
        .docker_get(target, &list_volumes_path(fleet), limits)
        .await;
    let volumes = judge(answer, parse_volume_list).ok();
    let mut image_volumes = BTreeMap::new();
    for image in unread_images {
        let Some(path) = images
            .as_ref()
            .and_then(|i| i.id_of(image))
            .and_then(inspect_image_path)
        else {
            continue;
        };
        let answer = pool.docker_get(target, &path, limits).await;
        if let Ok(paths) = judge(answer, parse_image_volumes) {
            image_volumes.insert(image.clone(), paths);
        }
    }
    Ok(DockerState {
        version,
        containers,
        images,
        volumes,
        image_volumes,
    })
}

/// An API answer, parsed; a failure as the condition it means.
fn judge<T>(
    answer: Result<ApiResponse, DockerApiError>,
    parse: fn(u16, &[u8]) -> Result<T, ParseError>,
) -> Result<T, Unanswered> {
    let answer = answer.map_err(|e| match e {
        DockerApiError::SocketRefused { reason, .. } => Unanswered::Socket(reason),
        DockerApiError::Ssh(e) => Unanswered::Failed(Condition::from_ssh(&e)),
        DockerApiError::Timeout { .. } => Unanswered::Failed(Condition::Timeout(e.to_string())),
        DockerApiError::Http { .. } | DockerApiError::TooLarge { .. } => {
            Unanswered::Failed(Condition::ProbeFailed(e.to_string()))
        }
    })?;
    parse(answer.status, &answer.body)
        .map_err(|e| Unanswered::Failed(Condition::ProbeFailed(e.to_string())))
}

/// Why sshd could not connect to the Docker socket, from what the facts
/// script saw; when that cannot tell (the socket is there and usable),
/// `docker version` is asked.
async fn no_socket(
    pool: &Pool,
    target: &Target,
    setup: &DockerSetup,
    reason: &str,
    limits: ExecLimits,
) -> Result<Condition, Condition> {
    if let Some(condition) = socket_condition(setup, &target.user, reason) {
        return Ok(condition);
    }
    let out = pool
        .exec(target, &docker_version_argv(), None, limits)
        .await
        .map_err(|e| Condition::from_ssh(&e))?;
    Ok(cli_condition(&out))
}

/// What a socket sshd could not connect to means, given the facts; `None`
/// when only the docker CLI can tell (a usable socket: a daemon that died
/// without removing it, or an sshd that refuses to forward to it).
fn socket_condition(setup: &DockerSetup, user: &str, reason: &str) -> Option<Condition> {
    match (setup.cli, setup.socket) {
        (false, SocketAccess::Missing) => Some(Condition::DockerMissing),
        (true, SocketAccess::Missing) => Some(Condition::DockerDown(format!(
            "Cannot connect to the Docker daemon at unix://{DOCKER_SOCKET}: there is no such \
             socket. Is the docker daemon running?"
        ))),
        (_, SocketAccess::Denied) => Some(Condition::DockerDenied(format!(
            "permission denied on {DOCKER_SOCKET}: user {user} may not use Docker (make it a \
             member of the socket's group, usually `docker`)"
        ))),
        (false, SocketAccess::Usable) => Some(Condition::DockerDown(format!(
            "Cannot connect to the Docker daemon at unix://{DOCKER_SOCKET}: sshd could not \
             connect to the socket ({reason}). Is the docker daemon running, and does sshd allow \
             AllowStreamLocalForwarding?"
        ))),
        (true, SocketAccess::Usable) => None,
    }
}

/// `docker version`'s verdict when sshd could not connect to a usable
/// socket: Docker's own error, or, if it answers, sshd is the obstacle.
fn cli_condition(out: &Output) -> Condition {
    if out.truncated {
        return Condition::ProbeFailed(
            "`docker version` printed more than the probe's limit".into(),
        );
    }
    match parse_docker_version(out.status, &out.stdout_text(), &out.stderr_text()) {
        Ok(version) => Condition::DockerDenied(format!(
            "sshd refuses to connect to {DOCKER_SOCKET} while Docker {version} answers the docker \
             CLI: allow it in sshd_config (AllowStreamLocalForwarding yes, no DisableForwarding) \
             and in authorized_keys (no restrict or no-port-forwarding)"
        )),
        Err(message) if message.to_ascii_lowercase().contains("permission denied") => {
            Condition::DockerDenied(message)
        }
        Err(message) => Condition::DockerDown(message),
    }
}

fn read<T>(out: &Output, parse: fn(&str) -> Result<T, ParseError>) -> Result<T, Condition> {
    if out.truncated {
        return Err(Condition::ProbeFailed(
            "output exceeded the probe's limit".into(),
        ));
    }
    parse(&out.stdout_text()).map_err(|e| Condition::ProbeFailed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(cli: bool, socket: SocketAccess) -> DockerSetup {
        DockerSetup { cli, socket }
    }

    fn output(status: Option<u32>, stdout: &str, stderr: &str) -> Output {
        Output {
            stdout: stdout.as_bytes().to_vec(),
            stderr: stderr.as_bytes().to_vec(),
            status,
            truncated: false,
        }
    }

    #[test]
    fn a_refused_socket_is_judged_by_the_facts() {
        let judge = |cli, socket| socket_condition(&setup(cli, socket), "admin", "connect failed");
        assert_eq!(
            judge(false, SocketAccess::Missing),
            Some(Condition::DockerMissing)
        );
        let Some(Condition::DockerDown(down)) = judge(true, SocketAccess::Missing) else {
            panic!("not docker-down");
        };
        assert_eq!(
            down,
            "Cannot connect to the Docker daemon at unix:///var/run/docker.sock: there is no \
             such socket. Is the docker daemon running?"
        );
        for cli in [true, false] {
            let Some(Condition::DockerDenied(denied)) = judge(cli, SocketAccess::Denied) else {
                panic!("not docker-denied");
            };
            assert!(
                denied.starts_with("permission denied on /var/run/docker.sock: user admin"),
                "{denied}"
            );
        }
        // No CLI to ask: say what could be wrong.
        let Some(Condition::DockerDown(down)) = judge(false, SocketAccess::Usable) else {
            panic!("not docker-down");
        };
        assert!(
            down.contains("(connect failed)") && down.contains("AllowStreamLocalForwarding"),
            "{down}"
        );
        // The CLI is asked.
        assert_eq!(judge(true, SocketAccess::Usable), None);
    }

    #[test]
    fn the_cli_tells_a_dead_daemon_from_sshd_refusing() {
        let down = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?";
        assert_eq!(
            cli_condition(&output(Some(1), "", down)),
            Condition::DockerDown(down.into())
        );
        let denied = "permission denied while trying to connect to the Docker daemon socket";
        assert_eq!(
            cli_condition(&output(Some(1), "", denied)),
            Condition::DockerDenied(denied.into())
        );
        let Condition::DockerDenied(sshd) = cli_condition(&output(Some(0), "20.10.24\n", ""))
        else {
            panic!("not docker-denied");
        };
        assert!(
            sshd.starts_with(
                "sshd refuses to connect to /var/run/docker.sock while Docker 20.10.24 answers"
            ),
            "{sshd}"
        );
        let mut long = output(Some(0), "20.10.24\n", "");
        long.truncated = true;
        assert!(matches!(cli_condition(&long), Condition::ProbeFailed(_)));
    }
}
