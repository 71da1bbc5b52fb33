//! Helpers for the tests that run against the local lab (`lab/lab up`).
//!
//! The lab's own state, `.lab/lab.json`, says which nodes exist; its path
//! comes from `PRISM_LAB_DIR` or defaults to `<crate>/.lab`. A lab that is
//! not up makes every test fail, telling to run `lab/lab up`.

// Each test binary uses its own share of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use aws_sdk_ec2::types::Filter;
use serde::Deserialize;

pub const NOT_UP: &str = "the lab is not up: run `lab/lab up` (as root) first";

/// The user lab nodes log in as, as production nodes do: made by the
/// nodes' user data, in the docker group; root cannot log in.
pub const NODE_USER: &str = "prism";

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub index: u32,
    pub address: String,
    pub az: String,
    pub container: String,
    pub instance_id: Option<String>,
    /// The instance's `prism:fleet` tag: `lab` unless `lab/lab add --fleet`.
    #[serde(default = "lab_fleet")]
    pub fleet: String,
}

fn lab_fleet() -> String {
    "lab".to_string()
}

/// The bare node (`lab/lab bare up`): sshd, no Docker, not in EC2.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Bare {
    pub name: String,
    pub address: String,
    pub container: String,
}

#[derive(Debug, Deserialize)]
struct Moto {
    url: String,
    region: String,
}

#[derive(Debug, Deserialize)]
struct Registry {
    testapp_image: String,
    #[serde(default)]
    testapp_variants: BTreeMap<String, String>,
    postgres_image: String,
}

/// The registry with basic auth over HTTPS (`registry_auth` in lab.json).
#[derive(Debug, Clone, Deserialize)]
pub struct AuthRegistry {
    /// `172.31.250.3:5000`: the host nodes pull from.
    pub lab: String,
    pub testapp_image: String,
    pub username: String,
    /// Mode 0600, the password on its first line.
    pub password_file: PathBuf,
}

impl AuthRegistry {
    pub fn password(&self) -> String {
        std::fs::read_to_string(&self.password_file)
            .unwrap_or_else(|e| panic!("{}: {e}", self.password_file.display()))
            .trim()
            .to_owned()
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct Decoys {
    pub not_ours: Option<String>,
    pub terminated: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LabJson {
    nodes: Vec<Node>,
    moto: Moto,
    registry: Registry,
    #[serde(default)]
    registry_auth: Option<AuthRegistry>,
    #[serde(default)]
    decoys: Decoys,
    #[serde(default)]
    bare: Option<Bare>,
}

/// The lab as `.lab/lab.json` describes it.
#[derive(Debug)]
pub struct Lab {
    pub dir: PathBuf,
    /// Live nodes of fleet `lab`, the one every shared test uses.
    pub nodes: Vec<Node>,
    /// Live nodes a test added to its own fleet (`lab/lab add --fleet`).
    pub other_nodes: Vec<Node>,
    pub moto_url: String,
    pub region: String,
    pub testapp_image: String,
    /// The test app FROM it with one line more, by tag: `2` (answers
    /// `app: image-2`), `unhealthy` (/up answers 503).
    pub testapp_variants: BTreeMap<String, String>,
    /// PostgreSQL from Debian's packages, trust authentication, its data
    /// in the image's `VOLUME /var/lib/postgresql/data`.
    pub postgres_image: String,
    /// Once `lab/lab up` has made it.
    pub registry_auth: Option<AuthRegistry>,
    pub decoys: Decoys,
    /// Only while `lab/lab bare up` has it running.
    pub bare: Option<Bare>,
}

pub fn lab_dir() -> PathBuf {
    match std::env::var_os("PRISM_LAB_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".lab"),
    }
}

impl Lab {
    /// Reads the lab's state and checks that its EC2 endpoint answers.
    /// Panics, telling to run `lab/lab up`, when the lab is not up.
    pub fn load() -> Lab {
        match Self::try_load() {
            Ok(lab) => lab,
            Err(e) => panic!("{NOT_UP} ({e:#})"),
        }
    }

    fn try_load() -> Result<Lab> {
        let dir = lab_dir();
        let path = dir.join("lab.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let json: LabJson = serde_json::from_str(&text)
            .with_context(|| format!("{} is not the lab's state", path.display()))?;
        ensure!(
            json.nodes.iter().any(|n| n.fleet == "lab"),
            "{} lists no live node of fleet lab",
            path.display()
        );
        for file in ["id_ed25519", "known_hosts"] {
            ensure!(
                dir.join(file).exists(),
                "{} is missing",
                dir.join(file).display()
            );
        }
        let moto: SocketAddr = json
            .moto
            .url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .with_context(|| format!("moto url {:?} in lab.json", json.moto.url))?;
        TcpStream::connect_timeout(&moto, Duration::from_secs(2))
            .with_context(|| format!("the lab's EC2 endpoint (moto) at {moto} does not answer"))?;
        let (nodes, other_nodes) = json.nodes.into_iter().partition(|n| n.fleet == "lab");
        Ok(Lab {
            dir,
            nodes,
            other_nodes,
            moto_url: json.moto.url,
            region: json.moto.region,
            testapp_image: json.registry.testapp_image,
            testapp_variants: json.registry.testapp_variants,
            postgres_image: json.registry.postgres_image,
            registry_auth: json.registry_auth,
            decoys: json.decoys,
            bare: json.bare,
        })
    }

    pub fn identity(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }

    /// The lab's fleet.toml copied into `dir` with its own state file (so
    /// tests never share state) and the lab's key and known_hosts by
    /// absolute path. `extra` is appended (more apps, more tables).
    pub fn fleet_file(&self, dir: &Path, extra: &str) -> PathBuf {
        let text = std::fs::read_to_string(self.dir.join("fleet.toml"))
            .unwrap_or_else(|e| panic!("{NOT_UP}: cannot read the lab's fleet.toml: {e}"));
        let at = |file: &str| format!("{:?}", self.dir.join(file).display().to_string());
        let text = text
            .replace(
                "state = \"state.db\"",
                &format!("state = {:?}", dir.join("state.db").display().to_string()),
            )
            .replace(
                "identity = \"id_ed25519\"",
                &format!("identity = {}", at("id_ed25519")),
            )
            .replace(
                "known_hosts = \"known_hosts\"",
                &format!("known_hosts = {}", at("known_hosts")),
            );
        let file = dir.join("fleet.toml");
        std::fs::write(&file, format!("{text}\n{extra}")).expect("write fleet.toml");
        file
    }

    /// A fleet of its own named `name` on the lab's nodes (found by the
    /// lab's tag), with no apps but `apps`: its containers and networks
    /// never meet another test's.
    pub fn own_fleet(&self, dir: &Path, name: &str, apps: &str) -> PathBuf {
        let file = self.fleet_file(dir, "");
        let text = std::fs::read_to_string(&file).expect("read fleet.toml");
        let cut = text.find("[apps.").unwrap_or(text.len());
        let text = text[..cut]
            .replace("name = \"lab\"", &format!("name = {name:?}"))
            .replace(
                "[discovery]\n",
                "[discovery]\ntags = { \"prism:fleet\" = \"lab\" }\n",
            );
        std::fs::write(&file, format!("{text}\n{apps}")).expect("write fleet.toml");
        file
    }

    /// The lab's fleet.toml for fleet `name`, whose nodes are only those
    /// the test added ([`OwnNodes`]: discovery finds them by the default tag
    /// `prism:fleet = NAME`): the lab's settings without its proxy and
    /// apps, host keys trusted as `trust` says, quick SSH connects, the
    /// proxy on `ports`, then `rest` (more tables, the apps).
    pub fn own_nodes_fleet(
        &self,
        dir: &Path,
        name: &str,
        trust: Trust,
        ports: &ProxyPorts,
        rest: &str,
    ) -> PathBuf {
        let file = self.fleet_file(dir, "");
        let text = std::fs::read_to_string(&file).expect("read fleet.toml");
        let cut = [text.find("[proxy]"), text.find("[apps.")]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(text.len());
        let mut text = text[..cut]
            .replace("name = \"lab\"", &format!("name = {name:?}"))
            .replace("[ssh]\n", "[ssh]\nconnect_timeout = \"2s\"\n");
        if let Trust::Pin = trust {
            text = text
                .replace("host_keys = \"known_hosts\"", "host_keys = \"pin\"")
                .lines()
                .filter(|l| !l.starts_with("known_hosts = "))
                .map(|l| format!("{l}\n"))
                .collect();
        }
        let proxy = ports.section();
        std::fs::write(&file, format!("{text}\n{proxy}\n{rest}")).expect("write fleet.toml");
        file
    }

    /// Points a fleet file written by [`Lab::fleet_file`] at another EC2
    /// endpoint (a forwarder in front of moto, a closed port).
    pub fn set_endpoint(&self, file: &Path, endpoint: &str) {
        let text = std::fs::read_to_string(file).expect("read fleet.toml");
        let from = format!("endpoint = {:?}", self.moto_url);
        assert!(text.contains(&from), "no {from} in {}", file.display());
        let text = text.replace(&from, &format!("endpoint = {endpoint:?}"));
        std::fs::write(file, text).expect("write fleet.toml");
    }

    /// Every container of fleet `name` on every node, as `docker ps` lines
    /// `node name app service instance spec state`.
    pub fn fleet_containers(&self, name: &str) -> Vec<String> {
        self.fleet_containers_on(&self.nodes, name)
    }

    /// As [`Lab::fleet_containers`], on `nodes` only.
    pub fn fleet_containers_on(&self, nodes: &[Node], name: &str) -> Vec<String> {
        let format = "{{.Names}} {{.Label \"prism.app\"}} {{.Label \"prism.service\"}} \
                      {{.Label \"prism.instance\"}} {{.Label \"prism.spec\"}} {{.State}}";
        let mut lines = Vec::new();
        for node in nodes {
            let out = self
                .ssh(
                    &node.address,
                    &format!("docker ps -a --filter label=prism.fleet={name} --format '{format}'"),
                )
                .unwrap_or_else(|e| panic!("docker ps on {}: {e:#}", node.name));
            lines.extend(out.lines().map(|l| format!("{} {l}", node.name)));
        }
        lines.sort();
        lines
    }

    /// Removes every container and network of fleet `name` from every node.
    pub fn remove_fleet(&self, name: &str) {
        for node in &self.nodes {
            let _ = self.ssh(
                &node.address,
                &format!(
                    "docker ps -aq --filter label=prism.fleet={name} | xargs -r docker rm -f; \
                     docker network ls -q --filter label=prism.fleet={name} | xargs -r docker network rm"
                ),
            );
        }
    }

    /// `ssh prism@addr remote` with the lab's known_hosts and strict host
    /// key checking; `identity` picks the key offered (and only that key).
    pub fn ssh_with(&self, identity: &Path, addr: &str, remote: &str) -> Output {
        self.ssh_login(identity, NODE_USER, addr, remote)
    }

    /// `ssh user@addr remote` with the lab's key.
    pub fn ssh_as(&self, user: &str, addr: &str, remote: &str) -> Output {
        self.ssh_login(&self.identity(), user, addr, remote)
    }

    fn ssh_login(&self, identity: &Path, user: &str, addr: &str, remote: &str) -> Output {
        let known_hosts = self.dir.join("known_hosts");
        Command::new("ssh")
            .arg("-F")
            .arg("/dev/null")
            .arg("-i")
            .arg(identity)
            .args(["-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"])
            .args(["-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=5"])
            .args(["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"])
            .arg(format!("{user}@{addr}"))
            .arg(remote)
            .output()
            .expect("cannot run ssh (is openssh-client installed? lab/lab install)")
    }

    /// Runs `remote` on a node as the login user with the lab's key; fails
    /// with what ssh printed unless it exits 0. Returns stdout.
    pub fn ssh(&self, addr: &str, remote: &str) -> Result<String> {
        let out = self.ssh_with(&self.identity(), addr, remote);
        if !out.status.success() {
            bail!(
                "ssh {NODE_USER}@{addr} {remote:?} exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub async fn ec2(&self) -> aws_sdk_ec2::Client {
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(self.region.clone()))
            .endpoint_url(&self.moto_url)
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                "lab",
                "lab",
                None,
                None,
                "prism-lab",
            ))
            .load()
            .await;
        aws_sdk_ec2::Client::new(&conf)
    }
}

/// What a test needs to know of an EC2 instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub address: Option<String>,
    pub az: Option<String>,
    pub state: Option<String>,
    pub spot: bool,
}

/// Running instances tagged `prism:fleet=lab`, every page of them, by id.
pub async fn fleet_instances(client: &aws_sdk_ec2::Client) -> Result<BTreeMap<String, Instance>> {
    let mut pages = client
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag:prism:fleet")
                .values("lab")
                .build(),
        )
        .filters(
            Filter::builder()
                .name("instance-state-name")
                .values("running")
                .build(),
        )
        .into_paginator()
        .page_size(5)
        .send();
    let mut found = BTreeMap::new();
    while let Some(page) = pages.next().await {
        let page = page.context("DescribeInstances on the lab's EC2 endpoint")?;
        for inst in page.reservations().iter().flat_map(|r| r.instances()) {
            let i = instance(inst)?;
            found.insert(i.id.clone(), i);
        }
    }
    Ok(found)
}

/// One instance by id, whatever its state.
pub async fn describe_instance(client: &aws_sdk_ec2::Client, id: &str) -> Result<Instance> {
    let out = client
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .with_context(|| format!("DescribeInstances {id}"))?;
    let inst = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .next()
        .ok_or_else(|| anyhow!("EC2 does not know instance {id}"))?;
    instance(inst)
}

fn instance(inst: &aws_sdk_ec2::types::Instance) -> Result<Instance> {
    Ok(Instance {
        id: inst
            .instance_id()
            .ok_or_else(|| anyhow!("an instance without an id"))?
            .to_string(),
        address: inst.private_ip_address().map(str::to_string),
        az: inst
            .placement()
            .and_then(|p| p.availability_zone())
            .map(str::to_string),
        state: inst
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_string()),
        spot: inst.instance_lifecycle().map(|l| l.as_str()) == Some("spot"),
    })
}

/// `prism args` with the lab's AWS credentials, ready to run or spawn.
pub fn prism_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_prism"));
    cmd.args(args)
        .env_remove("PRISM_CONFIG")
        .env("AWS_ACCESS_KEY_ID", "lab")
        .env("AWS_SECRET_ACCESS_KEY", "lab")
        .env_remove("AWS_PROFILE");
    cmd
}

/// `prism daemon` on a fleet file for a benchmark, its log in `log`;
/// stopped (SIGTERM) when dropped.
pub struct LoggedDaemon(std::process::Child);

impl LoggedDaemon {
    pub fn start(file: &Path, log: &Path) -> Result<LoggedDaemon> {
        let log = std::fs::File::create(log)?;
        let child = prism_command(&["-c", file.to_str().context("utf-8 path")?, "daemon"])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .context("start prism daemon")?;
        Ok(LoggedDaemon(child))
    }

    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }

    #[allow(dead_code)] // not every benchmark reads it
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for LoggedDaemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.stop();
        }
    }
}

/// Runs `prism args` with the lab's AWS credentials.
pub fn prism(args: &[&str]) -> Output {
    prism_command(args).output().expect("run prism")
}

/// A command's output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// How a test's own fleet trusts its nodes' host keys.
#[derive(Debug, Clone, Copy)]
pub enum Trust {
    /// The lab's known_hosts, which lists every node `lab/lab` made.
    KnownHosts,
    /// Pinned per instance id in the fleet's state, as Prism does for
    /// instances that come and go.
    Pin,
}

/// The proxy's and the admin listener's ports of one test: free loopback
/// ports, so tests running at once never meet on the defaults (80, 9090).
#[derive(Debug, Clone, Copy)]
pub struct ProxyPorts {
    pub listen: u16,
    pub admin: u16,
}

impl ProxyPorts {
    pub fn free() -> ProxyPorts {
        // Both held at once, so the two differ.
        let bind = || std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        let (a, b) = (bind(), bind());
        let port = |l: &std::net::TcpListener| l.local_addr().expect("bound").port();
        ProxyPorts {
            listen: port(&a),
            admin: port(&b),
        }
    }

    /// Its `[proxy]` table.
    pub fn section(&self) -> String {
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{}\"\n",
            self.listen, self.admin
        )
    }
}

/// A loopback port nothing listens on (free when asked).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Nodes a test or benchmark added to a fleet of its own (`lab/lab add
/// --fleet`), the only ones it may kill or cut off; preempted when dropped.
pub struct OwnNodes {
    pub fleet: String,
    names: Vec<String>,
}

impl OwnNodes {
    pub fn new(fleet: impl Into<String>) -> OwnNodes {
        OwnNodes {
            fleet: fleet.into(),
            names: Vec::new(),
        }
    }

    /// `lab/lab add --fleet` one more node; returns it.
    pub fn add(&mut self) -> Result<Node> {
        self.add_to(None)
    }

    /// One more node in availability zone `zone`.
    pub fn add_in(&mut self, zone: &str) -> Result<Node> {
        self.add_to(Some(zone))
    }

    fn add_to(&mut self, zone: Option<&str>) -> Result<Node> {
        let before: Vec<String> = Lab::load()
            .other_nodes
            .into_iter()
            .map(|n| n.name)
            .collect();
        let mut args = vec!["add", "--fleet", &self.fleet];
        if let Some(zone) = zone {
            args.extend(["--zone", zone]);
        }
        lab_cmd(&args)?;
        let node = Lab::load()
            .other_nodes
            .into_iter()
            .find(|n| n.fleet == self.fleet && !before.contains(&n.name))
            .context("lab/lab add made no node of this fleet")?;
        self.names.push(node.name.clone());
        Ok(node)
    }

    /// `N` more nodes.
    pub fn add_many<const N: usize>(&mut self) -> Result<[Node; N]> {
        let mut nodes = Vec::with_capacity(N);
        for _ in 0..N {
            nodes.push(self.add()?);
        }
        nodes
            .try_into()
            .map_err(|_| anyhow!("lab/lab add made fewer than {N} nodes"))
    }

    /// The live node of this fleet that is EC2 instance `id`.
    pub fn by_instance(&self, id: &str) -> Result<Node> {
        Lab::load()
            .other_nodes
            .into_iter()
            .find(|n| n.fleet == self.fleet && n.instance_id.as_deref() == Some(id))
            .with_context(|| format!("no live node of fleet {} is instance {id}", self.fleet))
    }

    pub fn preempt(&mut self, name: &str) -> Result<()> {
        self.names.retain(|n| n != name);
        lab_cmd(&["preempt", name]).map(|_| ())
    }
}

impl Drop for OwnNodes {
    fn drop(&mut self) {
        for name in std::mem::take(&mut self.names) {
            if let Err(e) = lab_cmd(&["preempt", &name]) {
                eprintln!(
                    "could not remove node {name} of fleet {}: {e:#}",
                    self.fleet
                );
            }
        }
    }
}

/// Runs `lab/lab args`; fails with its stderr unless it exits 0.
pub fn lab_cmd(args: &[&str]) -> Result<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("lab")
        .join("lab");
    let out = Command::new(&script)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "lab/lab {} exited {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The status code of `GET path` on addr, or an error if nothing answers
/// in HTTP within `timeout`.
pub fn http_status(addr: &str, path: &str, timeout: Duration) -> Result<u16> {
    let sock: SocketAddr = addr.parse().with_context(|| format!("address {addr}"))?;
    let mut stream =
        TcpStream::connect_timeout(&sock, timeout).with_context(|| format!("connect {addr}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .context("set_read_timeout")?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: lab.test\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("send a request to {addr}"))?;
    let mut reply = String::new();
    stream
        .read_to_string(&mut reply)
        .with_context(|| format!("read the reply of {addr}"))?;
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("{addr} answered no HTTP status line: {reply:?}"))?;
    Ok(status)
}

/// Retries `f` until it returns Ok or `limit` passes; then the last error.
pub fn retry<T>(limit: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if start.elapsed() >= limit => {
                return Err(e.context(format!("still failing after {limit:?}")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Prism's SSH pieces pointed at the lab.
pub mod prism_ssh {
    use std::path::Path;
    use std::time::Duration;

    use prism::ssh::{
        ConnectOptions, Credentials, ExecLimits, HostKeys, Output, Pool, SshError, SshSettings,
        Target,
    };
    use prism::store::{Store, Writer};

    use super::{Bare, Lab, Node};

    pub fn target(node: &Node) -> Target {
        Target {
            id: node
                .instance_id
                .clone()
                .unwrap_or_else(|| node.name.clone()),
            address: node.address.clone(),
            port: 22,
            user: super::NODE_USER.into(),
        }
    }

    pub fn settings(credentials: Credentials, host_keys: HostKeys) -> SshSettings {
        SshSettings {
            credentials,
            host_keys,
            connect: ConnectOptions::default(),
            max_backoff: std::time::Duration::from_secs(1),
            bastion: None,
        }
    }

    pub fn lab_key(lab: &Lab) -> Credentials {
        Credentials::key_file(&lab.identity()).expect("the lab key loads")
    }

    /// A pool that checks host keys against the lab's known_hosts.
    pub fn known_hosts_pool(lab: &Lab) -> Pool {
        Pool::new(
            settings(
                lab_key(lab),
                HostKeys::KnownHosts(lab.dir.join("known_hosts")),
            ),
            None,
        )
    }

    /// The bare node as `user`. Pools keep one connection per id, so each
    /// user gets an id of its own.
    pub fn bare_target(bare: &Bare, user: &str) -> Target {
        Target {
            id: format!("{}-{user}", bare.name),
            address: bare.address.clone(),
            port: 22,
            user: user.into(),
        }
    }

    /// A pool for the bare node: its host keys are in their own file.
    pub fn bare_pool(lab: &Lab) -> Pool {
        Pool::new(
            settings(
                lab_key(lab),
                HostKeys::KnownHosts(lab.dir.join("bare_known_hosts")),
            ),
            None,
        )
    }

    /// A pool that pins host keys in a state store at `file`.
    pub fn pin_pool(lab: &Lab, file: &Path) -> (Pool, Writer) {
        let store = Writer::start(Store::open(file).expect("open the state store"));
        (
            Pool::new(settings(lab_key(lab), HostKeys::Pin), Some(store.clone())),
            store,
        )
    }

    pub fn argv(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    pub fn limits(timeout_secs: u64) -> ExecLimits {
        ExecLimits {
            timeout: Duration::from_secs(timeout_secs),
            ..ExecLimits::default()
        }
    }

    /// Runs `args` on one node (20 s timeout); a transport error fails the test.
    pub async fn run(pool: &Pool, node: &Target, args: &[&str]) -> Output {
        pool.exec(node, &argv(args), None, limits(20))
            .await
            .unwrap_or_else(|e| panic!("{args:?} on {}: {e}", node.address))
    }

    /// Runs `args` on every node at once.
    pub async fn run_everywhere(
        pool: &Pool,
        nodes: &[Target],
        args: &[&str],
        limits: ExecLimits,
    ) -> Vec<(Target, Result<Output, SshError>)> {
        let args = argv(args);
        prism::ssh::fan_out(nodes, 16, |t| {
            let args = &args;
            async move { pool.exec(&t, args, None, limits).await }
        })
        .await
    }
}

/// `address:port` of every container of `app`'s `service` with a published
/// port, as the state store at `state` last recorded them.
pub fn published_addrs(state: &Path, app: &str, service: &str) -> Vec<String> {
    let store = prism::store::Store::open_existing(state)
        .expect("state store")
        .expect("state store exists");
    store
        .containers()
        .expect("containers")
        .into_iter()
        .filter(|c| c.app == app && c.service == service)
        .filter_map(|c| {
            let port = c
                .ports
                .rsplit_once("->")
                .and_then(|(host, _)| host.rsplit_once(':'))
                .map(|(_, p)| p.to_owned())?;
            let node = store.node(&c.node_id).expect("node")?;
            Some(format!("{}:{port}", node.address))
        })
        .collect()
}
