//! A fleet's containers on one node, read in two commands:
//!
//! 1. `docker ps -aq --no-trunc --filter label=prism.fleet=<fleet>`: the
//!    ids, one per line (none: no containers, and no second command);
//! 2. `docker container inspect -- <ids…>`: one JSON array with everything.
//!
//! `docker ps --format '{{json .}}'` is not used: it lacks health (only
//! inside the free-text `Status`), exit code, restart count and times, and
//! its labels and ports are comma-joined text that a label value with a
//! comma makes ambiguous. Inspect carries all of it, typed.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::Deserialize;

use super::error::{ParseError, Probe, clip, from_json};
use super::labels::Identity;
use super::time::docker_time;

/// A full (64 hex digit) container id. Only ids read from Docker are
/// made, so they are safe as arguments.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(String);

impl ContainerId {
    /// `s` if it is a full container id (64 lowercase hex digits).
    pub fn parse(s: &str) -> Option<ContainerId> {
        let ok = s.len() == 64 && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
        ok.then(|| ContainerId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 12-digit form `docker ps` shows.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for ContainerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Container ids one per line (`docker ps -aq --no-trunc`). Empty output
/// means no containers; blank lines are skipped.
pub fn parse_container_ids(stdout: &str) -> Result<Vec<ContainerId>, ParseError> {
    let mut ids = Vec::new();
    for (i, line) in stdout.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let id = ContainerId::parse(line).ok_or_else(|| {
            ParseError::malformed(
                Probe::ContainerIds,
                Some(i + 1),
                format!("expected a 64-digit container id, found {:?}", clip(line)),
            )
        })?;
        ids.push(id);
    }
    Ok(ids)
}

/// One container as `docker container inspect` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub id: ContainerId,
    /// Without Docker's leading '/'.
    pub name: String,
    /// The image as it was asked for (`registry/app:tag`).
    pub image: String,
    /// The image it runs (`sha256:…`).
    pub image_id: String,
    pub identity: Identity,
    pub state: RunState,
    pub health: Health,
    /// Meaningful once the container has run (`exited`, `restarting`).
    /// 128 with `error` set when it could not start; 137 when killed.
    pub exit_code: i64,
    /// Why the last start failed (`… port is already allocated`).
    pub error: Option<String>,
    pub oom_killed: bool,
    /// Restarts done by Docker's restart policy.
    pub restart_count: u32,
    /// Epoch milliseconds.
    pub created_at: i64,
    /// `None` if never started.
    pub started_at: Option<i64>,
    /// `None` if it has not stopped since it was created.
    pub finished_at: Option<i64>,
    /// Published ports while it runs, sorted. Exposed-only ports are left out.
    pub ports: Vec<PublishedPort>,
    /// The Docker volumes it mounts, by path in the container (named ones
    /// and those Docker made for the image's `VOLUME`s).
    pub volumes: BTreeMap<String, String>,
    /// Its address on the node's mesh network ([`MESH_NETWORK`]), while it
    /// has one.
    pub mesh_ip: Option<std::net::Ipv4Addr>,
}

/// The Docker network, one per node, that gives containers their address
/// in the node's /24 of the mesh. Its name sorts before every pod network
/// (`prism.FLEET.…`): Docker gives a container on several networks the
/// default route of the first by name, and replies must leave by the mesh.
pub const MESH_NETWORK: &str = "prism-mesh";

/// Docker's `State.Status`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RunState {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
    /// A status this Prism does not know.
    Other(String),
}

impl RunState {
    pub fn parse(s: &str) -> RunState {
        match s {
            "created" => RunState::Created,
            "running" => RunState::Running,
            "paused" => RunState::Paused,
            "restarting" => RunState::Restarting,
            "removing" => RunState::Removing,
            "exited" => RunState::Exited,
            "dead" => RunState::Dead,
            other => RunState::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            RunState::Created => "created",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Restarting => "restarting",
            RunState::Removing => "removing",
            RunState::Exited => "exited",
            RunState::Dead => "dead",
            RunState::Other(s) => s,
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Docker's health check verdict (`State.Health.Status`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Health {
    /// No health check.
    None,
    Starting,
    Healthy,
    Unhealthy,
    /// A status this Prism does not know.
    Other(String),
}

impl Health {
    pub fn parse(s: &str) -> Health {
        match s {
            "" | "none" => Health::None,
            "starting" => Health::Starting,
            "healthy" => Health::Healthy,
            "unhealthy" => Health::Unhealthy,
            other => Health::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Health::None => "none",
            Health::Starting => "starting",
            Health::Healthy => "healthy",
            Health::Unhealthy => "unhealthy",
            Health::Other(s) => s,
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// A container port published on the node: `host_ip:host_port` →
/// `container_port/protocol`. `0.0.0.0` or `::` is every address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublishedPort {
    pub container_port: u16,
    pub protocol: Protocol,
    pub host_ip: IpAddr,
    pub host_port: u16,
}

impl fmt::Display for PublishedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match self.host_ip {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        };
        write!(
            f,
            "{host}:{}->{}/{}",
            self.host_port,
            self.container_port,
            self.protocol.as_str()
        )
    }
}

/// The JSON array `docker container inspect` prints, in its order.
/// Unknown fields are ignored; a container whose labels are not Prism's
/// is `Identity::Foreign`, not an error.
pub fn parse_inspect(stdout: &str) -> Result<Vec<ContainerState>, ParseError> {
    if stdout.trim().is_empty() {
        return Err(ParseError::malformed(
            Probe::Inspect,
            None,
            "no output (expected a JSON array)",
        ));
    }
    let raw: Vec<RawContainer> = from_json(Probe::Inspect, stdout)?;
    raw.into_iter()
        .enumerate()
        .map(|(i, c)| {
            let label = format!("container [{i}] {}", c.name);
            c.into_state().map_err(|why| {
                ParseError::malformed(Probe::Inspect, None, format!("{label}: {why}"))
            })
        })
        .collect()
}

/// One container object, as `GET /containers/{id}/json` answers: the
/// schema of one element of [`parse_inspect`]'s array.
pub(crate) fn parse_container(json: &str) -> Result<ContainerState, ParseError> {
    let raw: RawContainer = from_json(Probe::ContainerInspect, json)?;
    let label = format!("container {}", raw.name);
    raw.into_state().map_err(|why| {
        ParseError::malformed(Probe::ContainerInspect, None, format!("{label}: {why}"))
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", expecting = "a container object")]
struct RawContainer {
    id: String,
    created: String,
    name: String,
    image: String,
    restart_count: u32,
    state: RawState,
    config: RawConfig,
    #[serde(default)]
    network_settings: RawNetwork,
    #[serde(default)]
    mounts: Option<Vec<RawMount>>,
}

/// One of `Mounts`: `{"Type": "volume", "Name": "…", "Destination": "/data", "RW": true}`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawMount {
    #[serde(rename = "Type", default)]
    kind: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    destination: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawState {
    status: String,
    exit_code: i64,
    #[serde(default)]
    error: String,
    #[serde(default, rename = "OOMKilled")]
    oom_killed: bool,
    started_at: String,
    finished_at: String,
    #[serde(default)]
    health: Option<RawHealth>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawHealth {
    status: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    image: String,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct RawNetwork {
    /// `"8080/tcp": [{"HostIp": "0.0.0.0", "HostPort": "8080"}]`, or
    /// `null` for a port exposed but not published.
    #[serde(default)]
    ports: Option<BTreeMap<String, Option<Vec<RawBinding>>>>,
    /// Per network its endpoint: `{"prism-mesh": {"IPAddress": "10.210.1.2"}}`.
    #[serde(default)]
    networks: Option<BTreeMap<String, RawEndpoint>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawEndpoint {
    #[serde(default, rename = "IPAddress")]
    ip_address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawBinding {
    host_ip: String,
    host_port: String,
}

impl RawContainer {
    fn into_state(self) -> Result<ContainerState, String> {
        let id = ContainerId::parse(&self.id)
            .ok_or_else(|| format!("Id {:?} is not a container id", clip(&self.id)))?;
        let time = |field: &str, s: &str| docker_time(s).map_err(|e| format!("{field}: {e}"));
        let created_at = time("Created", &self.created)?.ok_or("Created is Docker's zero time")?;
        let started_at = time("State.StartedAt", &self.state.started_at)?;
        let finished_at = time("State.FinishedAt", &self.state.finished_at)?;
        let ports = published_ports(self.network_settings.ports.unwrap_or_default())?;
        // Empty while the container does not run; anything else that is
        // not an address is Docker's business, not a reason to fail.
        let mesh_ip = self
            .network_settings
            .networks
            .unwrap_or_default()
            .get(MESH_NETWORK)
            .and_then(|e| e.ip_address.parse().ok());
        let labels = self.config.labels.unwrap_or_default();
        let name = self.name.strip_prefix('/').unwrap_or(&self.name).to_owned();
        let volumes = self
            .mounts
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m.kind == "volume")
            .filter_map(|m| Some((m.destination, m.name.filter(|n| !n.is_empty())?)))
            .collect();
        Ok(ContainerState {
            id,
            name,
            image: self.config.image,
            image_id: self.image,
            identity: Identity::from_labels(&labels),
            state: RunState::parse(&self.state.status),
            health: self
                .state
                .health
                .map_or(Health::None, |h| Health::parse(&h.status)),
            exit_code: self.state.exit_code,
            error: Some(self.state.error).filter(|e| !e.is_empty()),
            oom_killed: self.state.oom_killed,
            restart_count: self.restart_count,
            created_at,
            started_at,
            finished_at,
            ports,
            volumes,
            mesh_ip,
        })
    }
}

fn published_ports(
    raw: BTreeMap<String, Option<Vec<RawBinding>>>,
) -> Result<Vec<PublishedPort>, String> {
    let mut ports = Vec::new();
    for (key, bindings) in raw {
        let bad_key = || {
            format!(
                "NetworkSettings.Ports: {:?} is not PORT/PROTOCOL",
                clip(&key)
            )
        };
        let (port, proto) = key.split_once('/').ok_or_else(bad_key)?;
        let container_port = port.parse::<u16>().map_err(|_| bad_key())?;
        let protocol = match proto {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "sctp" => Protocol::Sctp,
            _ => return Err(bad_key()),
        };
        for b in bindings.unwrap_or_default() {
            let host_ip = if b.host_ip.is_empty() {
                IpAddr::from([0, 0, 0, 0])
            } else {
                b.host_ip.parse().map_err(|_| {
                    format!(
                        "NetworkSettings.Ports[{key:?}]: HostIp {:?} is not an IP address",
                        b.host_ip
                    )
                })?
            };
            let host_port = b.host_port.parse().map_err(|_| {
                format!(
                    "NetworkSettings.Ports[{key:?}]: HostPort {:?} is not a port",
                    b.host_port
                )
            })?;
            ports.push(PublishedPort {
                container_port,
                protocol,
                host_ip,
                host_port,
            });
        }
    }
    ports.sort();
    Ok(ports)
}

#[cfg(test)]
mod tests;
