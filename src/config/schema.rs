//! The shape of fleet.toml, as serde reads it. Every table denies unknown
//! keys so a typo is an error, never a silently ignored setting.
//! Cross-field rules live in `validate.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::schedule::Schedule;
use super::units::{Bytes, Interval, Millicores};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    pub fleet: FleetSection,
    #[serde(default)]
    pub ssh: Ssh,
    pub discovery: Discovery,
    #[serde(default)]
    pub proxy: Proxy,
    #[serde(default)]
    pub lifecycle: NodeLifecycle,
    #[serde(default)]
    pub guard: Guard,
    /// The mesh between nodes and names for instances; absent: none
    /// (routed services publish a port on their node).
    pub network: Option<Network>,
    /// The HTTP API for deploys from elsewhere (CI, a laptop); absent: none.
    pub api: Option<Api>,
    /// Credentials per registry host, e.g. `[registries."ghcr.io"]`.
    #[serde(default)]
    pub registries: BTreeMap<String, Registry>,
    #[serde(default)]
    pub apps: BTreeMap<String, App>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetSection {
    /// Instances tagged `prism:fleet = <name>` belong to this fleet.
    pub name: String,
    /// The SQLite state file; relative paths are taken from fleet.toml's folder.
    #[serde(default = "default_state")]
    pub state: PathBuf,
    /// Memory kept free on every node for Docker, sshd and the OS.
    #[serde(default = "default_reserve_memory")]
    pub reserve_memory: Bytes,
    /// CPU kept free on every node.
    #[serde(default = "default_reserve_cpu")]
    pub reserve_cpu: Millicores,
    /// Install and start Docker on a reachable node that lacks it. Off by
    /// default: installing software on a machine is the operator's call.
    #[serde(default)]
    pub bootstrap: bool,
    /// A small image with a shell (busybox), pinned by digest, for the
    /// short-lived containers of Prism's own on the nodes: the watchdog
    /// that ends a job's run at its timeout. Pulled like any other image.
    #[serde(default = "default_helper_image")]
    pub helper_image: String,
    /// How long another host waits, after this applier's last heartbeat,
    /// before it takes the apply lock over (a state file on shared
    /// storage). On one host, a live holder keeps the lock regardless.
    #[serde(default = "default_lock_ttl")]
    pub lock_ttl: Interval,
    /// How long events and answered requests are kept in the state file.
    #[serde(default = "default_keep_history")]
    pub keep_history: Interval,
}

/// busybox 1.37.0 from Docker Hub, by its digest.
pub(crate) const DEFAULT_HELPER_IMAGE: &str = "docker.io/library/busybox:1.37.0@sha256:bdf57e528e45e4433820e045b29b4597825a1c9e38353532d90a01445013f82e";

fn default_helper_image() -> String {
    DEFAULT_HELPER_IMAGE.to_owned()
}
fn default_lock_ttl() -> Interval {
    Interval(std::time::Duration::from_secs(60))
}
fn default_keep_history() -> Interval {
    Interval(std::time::Duration::from_secs(30 * 24 * 3600))
}

fn default_state() -> PathBuf {
    PathBuf::from("prism.db")
}
fn default_reserve_memory() -> Bytes {
    Bytes(256 << 20)
}
fn default_reserve_cpu() -> Millicores {
    Millicores(100)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ssh {
    #[serde(default = "default_ssh_user")]
    pub user: String,
    #[serde(default = "default_ssh_port")]
    pub port: u16,
    /// A private key file; without it Prism uses the ssh-agent (SSH_AUTH_SOCK).
    pub identity: Option<PathBuf>,
    #[serde(default)]
    pub host_keys: HostKeyPolicy,
    /// The OpenSSH known_hosts file read when `host_keys = "known_hosts"`.
    pub known_hosts: Option<PathBuf>,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Interval,
    /// A jump host for nodes in a private subnet.
    pub bastion: Option<Bastion>,
}

impl Default for Ssh {
    fn default() -> Self {
        Ssh {
            user: default_ssh_user(),
            port: default_ssh_port(),
            identity: None,
            host_keys: HostKeyPolicy::default(),
            known_hosts: None,
            connect_timeout: default_connect_timeout(),
            bastion: None,
        }
    }
}

fn default_ssh_user() -> String {
    "root".into()
}
fn default_ssh_port() -> u16 {
    22
}
fn default_connect_timeout() -> Interval {
    Interval(std::time::Duration::from_secs(5))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostKeyPolicy {
    /// Trust the first key seen for an instance id, refuse any later change.
    #[default]
    Pin,
    /// Check keys against an OpenSSH known_hosts file.
    KnownHosts,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bastion {
    pub address: String,
    pub user: Option<String>,
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    pub provider: Provider,
    /// ec2: the region; without it the standard AWS chain decides (AWS_REGION, profile).
    pub region: Option<String>,
    /// ec2: an endpoint override (moto, LocalStack).
    pub endpoint: Option<String>,
    /// ec2: a named profile from the shared AWS config.
    pub profile: Option<String>,
    /// ec2: tags an instance must carry; default `prism:fleet = <fleet.name>`.
    pub tags: Option<BTreeMap<String, String>>,
    /// ec2: which address Prism connects to (default private).
    pub address: Option<AddressKind>,
    /// static: the machines.
    #[serde(default)]
    pub nodes: Vec<StaticNode>,
    /// The memory of each node, when known ahead; Prism uses the smaller of
    /// this and what a node reports.
    pub node_memory: Option<Bytes>,
    pub node_cpus: Option<Millicores>,
}

/// How nodes are watched: probes, when one counts as lost, spot notices.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeLifecycle {
    /// Time between passes of the daemon: each probes every node.
    #[serde(default = "default_probe_interval")]
    pub probe_interval: Interval,
    /// Time a probe (connecting included) has to answer before it counts as
    /// missed: a dead node must not hold up the pass that would move its pods.
    #[serde(default = "default_probe_timeout")]
    pub probe_timeout: Interval,
    /// Missed probes in a row after which a node is lost (its pods move).
    #[serde(default = "default_lost_after")]
    pub lost_after: u32,
    /// How often each spot node's instance metadata is read for an
    /// interruption notice or a rebalance recommendation.
    #[serde(default = "default_notice_interval")]
    pub notice_interval: Interval,
    /// The instance metadata service as seen from a node. Default: the
    /// link-local address, unless `[discovery] endpoint` points at a
    /// stand-in EC2 (then notices are read only if this is set).
    pub metadata_url: Option<String>,
    /// A node holding a pod with a writable volume that has not answered
    /// for this long is fenced (see `fence`), so that the pod can move.
    #[serde(default = "default_fence_after")]
    pub fence_after: Interval,
    /// How a node is fenced: `terminate` its instance through EC2, or
    /// `never` (its stateful pods wait for a person).
    #[serde(default)]
    pub fence: Fence,
    /// How long a pod waits for a ready node in its durable volume's zone
    /// before the volume moves to another zone through a snapshot.
    #[serde(default = "default_zone_wait")]
    pub zone_wait: Interval,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fence {
    #[default]
    Terminate,
    Never,
}

impl Default for NodeLifecycle {
    fn default() -> Self {
        NodeLifecycle {
            probe_interval: default_probe_interval(),
            probe_timeout: default_probe_timeout(),
            lost_after: default_lost_after(),
            notice_interval: default_notice_interval(),
            metadata_url: None,
            fence_after: default_fence_after(),
            fence: Fence::default(),
            zone_wait: default_zone_wait(),
        }
    }
}

/// Guards against mass change (a fleet.toml cut short, a listing that
/// comes back nearly empty): see `crate::reconcile::guard`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guard {
    /// How long such a change is held back before it goes ahead, if it is
    /// still seen then; `prism confirm` lets it go at once.
    #[serde(default = "default_guard_hold")]
    pub hold: Interval,
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            hold: default_guard_hold(),
        }
    }
}

fn default_guard_hold() -> Interval {
    Interval(std::time::Duration::from_secs(600))
}

/// Where EC2's instance metadata service answers on every instance.
pub(crate) const EC2_METADATA_URL: &str = "http://169.254.169.254";

impl Fleet {
    /// The metadata URL spot nodes are asked at, if any (see
    /// [`NodeLifecycle::metadata_url`]): a fake EC2 has no real metadata
    /// service behind its instances, and the link-local address would
    /// leave the machine.
    pub fn metadata_url(&self) -> Option<&str> {
        match (&self.lifecycle.metadata_url, &self.discovery.endpoint) {
            (Some(url), _) => Some(url.trim_end_matches('/')),
            (None, None) if self.discovery.provider == Provider::Ec2 => Some(EC2_METADATA_URL),
            (None, _) => None,
        }
    }
}

fn default_probe_interval() -> Interval {
    Interval(std::time::Duration::from_secs(2))
}
fn default_probe_timeout() -> Interval {
    Interval(std::time::Duration::from_secs(2))
}
fn default_lost_after() -> u32 {
    2
}
fn default_notice_interval() -> Interval {
    Interval(std::time::Duration::from_secs(5))
}
fn default_zone_wait() -> Interval {
    Interval(std::time::Duration::from_secs(300))
}
fn default_fence_after() -> Interval {
    Interval(std::time::Duration::from_secs(60))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    Ec2,
    Static,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Ec2 => "ec2",
            Provider::Static => "static",
        }
    }

    pub fn parse(s: &str) -> Option<Provider> {
        [Provider::Ec2, Provider::Static]
            .into_iter()
            .find(|p| p.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressKind {
    #[default]
    Private,
    Public,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticNode {
    pub name: String,
    pub address: String,
    pub user: Option<String>,
    pub port: Option<u16>,
    pub zone: Option<String>,
    pub memory: Option<Bytes>,
    pub cpus: Option<Millicores>,
}

/// `[network]`: a WireGuard mesh between the nodes and the operator's box,
/// a /24 of `cidr` per node for its containers, and names for healthy
/// instances (`SERVICE.APP.DOMAIN`) answered on every node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// The mesh's addresses: the operator's box takes its first /24, each
    /// node one of the others.
    #[serde(default = "default_mesh_cidr")]
    pub cidr: String,
    /// WireGuard's UDP port on every node.
    #[serde(default = "default_mesh_port")]
    pub port: u16,
    /// Names end with it: `web.blog.internal`.
    #[serde(default = "default_mesh_domain")]
    pub domain: String,
    /// The WireGuard interface, on the nodes and on the operator's box.
    #[serde(default = "default_mesh_interface")]
    pub interface: String,
}

impl Network {
    /// `cidr`, once validation has accepted it.
    pub fn net(&self) -> Option<ipnet::Ipv4Net> {
        self.cidr.parse::<ipnet::Ipv4Net>().ok().map(|n| n.trunc())
    }
}

/// `[api]`: the operator's HTTP API (`prism deploy --remote`, CI).
/// HTTPS with the proxy's certificates (files or ACME) for `host`; plain
/// HTTP only on a loopback address without `host`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Api {
    /// Address and port, e.g. `0.0.0.0:9443`.
    pub listen: String,
    /// The name clients use (`https://HOST:PORT`): its certificate comes
    /// from `[[proxy.certificates]]` or `[proxy.acme]`.
    pub host: Option<String>,
}

impl Api {
    /// `listen`, once validation has accepted it.
    pub fn addr(&self) -> Option<std::net::SocketAddr> {
        self.listen.parse().ok()
    }
}

fn default_mesh_cidr() -> String {
    "10.210.0.0/16".into()
}
fn default_mesh_port() -> u16 {
    51820
}
fn default_mesh_domain() -> String {
    "internal".into()
}
fn default_mesh_interface() -> String {
    "prism0".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proxy {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Loopback-only admin listener (/healthz, /metrics).
    #[serde(default = "default_admin")]
    pub admin: String,
    /// Time a client has to send a whole request head: the first from the
    /// connection's start, a later one (HTTP/1.1) from its first byte after
    /// the previous response. A kept-alive connection waiting for its next
    /// request is idle.
    #[serde(default = "default_header_timeout")]
    pub header_timeout: Interval,
    /// A connection with no bytes either way and no request in flight for
    /// this long is closed (also idle WebSocket tunnels).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Interval,
    /// Largest request head (request line and headers) accepted.
    #[serde(default = "default_max_header_size")]
    pub max_header_size: Bytes,
    /// Largest request body, unless a service sets its own `max_body`.
    #[serde(default = "default_max_body")]
    pub max_body: Bytes,
    /// Client connections served at once; more wait to be accepted.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Time to open a connection to an instance.
    #[serde(default = "default_proxy_connect_timeout")]
    pub connect_timeout: Interval,
    /// Time an instance has to start answering a request (504 after).
    #[serde(default = "default_upstream_timeout")]
    pub upstream_timeout: Interval,
    /// How long an instance that refused a connection gets no new requests.
    #[serde(default = "default_down_time")]
    pub down_time: Interval,
    /// How long a drained instance may take to finish its requests.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: Interval,
    #[serde(default)]
    pub balance: Balance,
    /// Worker threads; default one per CPU.
    pub workers: Option<u32>,
    /// The HTTPS listener, e.g. "0.0.0.0:443"; without it the proxy serves
    /// plain HTTP only.
    pub https: Option<String>,
    /// With `https`: a plain-HTTP request for a host the proxy has a
    /// certificate for is sent to HTTPS (308), except ACME HTTP-01 paths.
    #[serde(default = "yes")]
    pub redirect_https: bool,
    /// Certificate files served over HTTPS; each serves the names its
    /// certificate lists (exact and `*.` wildcard).
    #[serde(default)]
    pub certificates: Vec<CertificateFiles>,
    /// Certificates obtained and renewed over ACME for every app host that
    /// no certificate file covers.
    pub acme: Option<Acme>,
    /// Peers (CIDRs or addresses) whose X-Forwarded-*, Forwarded and
    /// X-Real-IP headers are kept, e.g. a load balancer in front; from any
    /// other client they are dropped and set from the connection.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

/// One of `[proxy] trusted_proxies`: a network, or one address.
pub fn trusted_net(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .ok()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// PEM: the certificate first, then the intermediates.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acme {
    /// The CA's directory URL (https).
    pub directory: String,
    /// The account's contact address.
    pub email: String,
    /// A PEM file of the CA that signs the directory's HTTPS certificate,
    /// trusted instead of the system's roots (a test CA such as pebble).
    pub ca: Option<PathBuf>,
    /// How the CA checks that Prism serves a host.
    #[serde(default)]
    pub challenge: AcmeChallenge,
}

/// The ACME challenge Prism answers to prove it serves a host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum AcmeChallenge {
    /// HTTP-01 (RFC 8555): the CA fetches a token from the HTTP listener
    /// (port 80).
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    /// TLS-ALPN-01 (RFC 8737): the CA opens a TLS connection to the HTTPS
    /// listener (port 443) with ALPN `acme-tls/1`; no plain HTTP needed.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl Default for Proxy {
    fn default() -> Self {
        Proxy {
            listen: default_listen(),
            admin: default_admin(),
            header_timeout: default_header_timeout(),
            idle_timeout: default_idle_timeout(),
            max_header_size: default_max_header_size(),
            max_body: default_max_body(),
            max_connections: default_max_connections(),
            connect_timeout: default_proxy_connect_timeout(),
            upstream_timeout: default_upstream_timeout(),
            down_time: default_down_time(),
            drain_timeout: default_drain_timeout(),
            balance: Balance::default(),
            workers: None,
            https: None,
            redirect_https: true,
            certificates: Vec::new(),
            acme: None,
            trusted_proxies: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_listen() -> String {
    "0.0.0.0:80".into()
}
fn default_admin() -> String {
    "127.0.0.1:9090".into()
}
fn secs(n: u64) -> Interval {
    Interval(std::time::Duration::from_secs(n))
}
fn default_header_timeout() -> Interval {
    secs(10)
}
fn default_idle_timeout() -> Interval {
    secs(60)
}
fn default_max_header_size() -> Bytes {
    Bytes(32 << 10)
}
fn default_max_body() -> Bytes {
    Bytes(10 << 20)
}
fn default_max_connections() -> u32 {
    4096
}
fn default_proxy_connect_timeout() -> Interval {
    secs(3)
}
fn default_upstream_timeout() -> Interval {
    secs(60)
}
fn default_down_time() -> Interval {
    secs(3)
}
fn default_drain_timeout() -> Interval {
    secs(30)
}

/// How the proxy spreads requests over a route's instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    /// The instance with the fewest requests in flight.
    LeastConnections,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    pub username: String,
    /// Name of an environment variable of the operator holding the password.
    pub password_env: Option<String>,
    /// A file holding the password (first line).
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    #[serde(default = "default_instances")]
    pub instances: u32,
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    #[serde(default)]
    pub jobs: BTreeMap<String, Job>,
    /// Volumes each pod instance has, by name; its services mount them by
    /// that name (`volumes = ["NAME:/path"]`).
    #[serde(default)]
    pub volumes: BTreeMap<String, Volume>,
    /// A deploy that waits (`--wait`) and whose new containers never turn
    /// healthy puts the previous images back.
    #[serde(default = "yes")]
    pub rollback_on_failure: bool,
}

/// `[apps.APP.volumes.NAME]`: one volume per pod instance. Never shared
/// between instances, apps or fleets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// Default: durable with EC2 discovery, local with a static list.
    pub kind: Option<VolumeKind>,
    /// Durable volumes: the EBS volume's size (whole GiB, rounded up).
    pub size: Option<Bytes>,
    /// Durable volumes: the EBS volume type (default gp3).
    #[serde(rename = "type", default)]
    pub ebs_type: EbsType,
    /// Durable volumes: provisioned IOPS (gp3, io1, io2).
    pub iops: Option<u32>,
    /// Durable volumes: provisioned throughput in MiB/s (gp3).
    pub throughput: Option<u32>,
    /// Durable volumes: encrypted at rest with the account's EBS key.
    #[serde(default = "default_true")]
    pub encrypted: bool,
    /// Durable volumes: the filesystem made on a new, empty volume.
    #[serde(default)]
    pub filesystem: Filesystem,
    /// Durable volumes: scheduled EBS snapshots, the newest `keep` kept.
    pub snapshots: Option<Snapshots>,
    /// Durable volumes: a new volume starts as a copy of this snapshot.
    pub from_snapshot: Option<String>,
}

impl Volume {
    /// The kind in effect: `kind`, else what the discovery provider gives.
    pub fn kind_for(&self, provider: Provider) -> VolumeKind {
        self.kind.unwrap_or(match provider {
            Provider::Ec2 => VolumeKind::Durable,
            Provider::Static => VolumeKind::Local,
        })
    }
}

fn default_true() -> bool {
    true
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum VolumeKind {
    /// An EBS volume that follows its pod from node to node.
    Durable,
    /// A Docker volume on the node: lost with the node.
    Local,
}

impl VolumeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeKind::Durable => "durable",
            VolumeKind::Local => "local",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EbsType {
    #[default]
    Gp3,
    Gp2,
    Io1,
    Io2,
    St1,
    Sc1,
    Standard,
}

impl EbsType {
    pub fn as_str(self) -> &'static str {
        match self {
            EbsType::Gp3 => "gp3",
            EbsType::Gp2 => "gp2",
            EbsType::Io1 => "io1",
            EbsType::Io2 => "io2",
            EbsType::St1 => "st1",
            EbsType::Sc1 => "sc1",
            EbsType::Standard => "standard",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Filesystem {
    #[default]
    Ext4,
    Xfs,
}

impl Filesystem {
    pub fn as_str(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Xfs => "xfs",
        }
    }
}

/// `snapshots = { schedule = "0 3 * * *", keep = 7 }`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshots {
    pub schedule: Schedule,
    pub keep: u32,
}

fn default_instances() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub image: String,
    pub command: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, EnvValue>,
    /// Variables whose values come from the operator's environment or a
    /// file, never from fleet.toml, and never reach argv or logs.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretSource>,
    /// The container port the service listens on; published on the node.
    pub port: Option<u16>,
    /// Host names (optionally with a path prefix) the proxy routes here.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Largest request body the proxy passes to this service; default
    /// `[proxy] max_body`.
    pub max_body: Option<Bytes>,
    #[serde(default = "default_memory")]
    pub memory: Bytes,
    pub cpu: Option<Millicores>,
    pub health: Option<Health>,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// `NAME:/path` (a volume of the app, `[apps.APP.volumes.NAME]`) or
    /// `/host/path:/path`, `:ro` optional.
    #[serde(default)]
    pub volumes: Vec<String>,
    /// When the image is pulled before a container is made.
    #[serde(default)]
    pub pull: PullPolicy,
    /// Rotation of the container's log (Docker's json-file driver).
    #[serde(default)]
    pub logs: Logs,
}

fn default_memory() -> Bytes {
    Bytes(128 << 20)
}

/// When a node pulls a service's image.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    /// Only when the node lacks the image: a tag is taken as a version.
    #[default]
    Missing,
    /// Before every new container (a tag such as `latest` that moves),
    /// logging in first when the registry has credentials.
    Always,
}

/// A container's log kept by Docker's json-file driver: at most
/// `max_files` files of `max_size` each, the oldest dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logs {
    #[serde(default = "default_log_max_size")]
    pub max_size: Bytes,
    #[serde(default = "default_log_max_files")]
    pub max_files: u32,
}

impl Default for Logs {
    fn default() -> Self {
        Logs {
            max_size: default_log_max_size(),
            max_files: default_log_max_files(),
        }
    }
}

fn default_log_max_size() -> Bytes {
    Bytes(10 << 20)
}
fn default_log_max_files() -> u32 {
    3
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// An environment variable of the operator process.
    pub env: Option<String>,
    /// A file on the operator box.
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// An HTTP path; 2xx and 3xx are healthy.
    pub http: Option<String>,
    /// A TCP port that must accept connections.
    pub tcp: Option<u16>,
    /// A command run in the container; exit 0 is healthy.
    pub cmd: Option<Vec<String>>,
    /// The port for `http`; default the service's port.
    pub port: Option<u16>,
    #[serde(default = "default_health_interval")]
    pub interval: Interval,
    /// Default: 2s, or the interval when that is shorter.
    pub timeout: Option<Interval>,
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: u32,
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: u32,
    /// Failures during this time after start do not count.
    pub start_period: Option<Interval>,
}

fn default_health_interval() -> Interval {
    Interval(std::time::Duration::from_secs(5))
}
impl Health {
    pub fn timeout(&self) -> Interval {
        self.timeout
            .unwrap_or(Interval(std::time::Duration::from_secs(2)).min(self.interval))
    }
}
fn default_healthy_threshold() -> u32 {
    2
}
fn default_unhealthy_threshold() -> u32 {
    3
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    #[default]
    UnlessStopped,
    OnFailure,
    No,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Standard five-field cron: minute hour day-of-month month day-of-week.
    pub schedule: Schedule,
    /// Run in this service's image with its env and secrets...
    pub service: Option<String>,
    /// ...or in this image.
    pub image: Option<String>,
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, EnvValue>,
    pub memory: Option<Bytes>,
    /// A run still going after this is stopped.
    pub timeout: Option<Interval>,
}

/// An environment value; TOML numbers and booleans are accepted and kept as
/// the text the container sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvValue(pub String);

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<EnvValue, E> {
                Ok(EnvValue(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}
