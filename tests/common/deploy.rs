//! A redeploy under load, shared by tests/routing.rs and benches/deploy.rs:
//! `prism daemon` with its proxy on a loopback port runs a fleet of its own
//! (the lab's test app behind a host name) on the lab's nodes; clients send
//! requests through the proxy without pause while fleet.toml changes the
//! app's spec, so every container is replaced.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::common::{Lab, free_port, prism_command};

pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// `GET path` with `host` through the proxy at `addr`: status and body.
pub async fn get(client: &HttpClient, addr: &str, host: &str, path: &str) -> Result<(u16, String)> {
    let req = Request::get(format!("http://{addr}{path}"))
        .header("host", host)
        .body(Empty::new())
        .context("a request")?;
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .map_err(|_| anyhow!("no answer in 30 s"))??;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The value of `key: value` in the test app's answer.
pub fn field(body: &str, key: &str) -> Option<String> {
    body.lines()
        .filter_map(|l| l.split_once(": "))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_owned())
}

/// A daemon running a fleet of its own, removed (daemon stopped, containers
/// gone) when dropped.
pub struct Deploy<'a> {
    pub lab: &'a Lab,
    pub name: String,
    pub host: String,
    /// The proxy's address, and the admin listener's.
    pub addr: String,
    pub admin: String,
    pub instances: u32,
    /// The fleet tag of the nodes it runs on, when not the shared lab's
    /// (`lab/lab add --fleet`).
    pub nodes: Option<String>,
    /// Tables written after the app (`[api]`, certificates).
    extra: String,
    file: PathBuf,
    dir: tempfile::TempDir,
    daemon: Option<Child>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl<'a> Deploy<'a> {
    /// Writes fleet.toml with `version` and starts the daemon on it, on
    /// the shared lab nodes.
    pub fn start(lab: &'a Lab, tag: &str, instances: u32, version: &str) -> Deploy<'a> {
        Self::start_on(lab, tag, instances, version, None)
    }

    /// As [`Deploy::start`]; with `nodes`, on the nodes of that fleet tag
    /// instead (nodes of its own, to notice and preempt), their host keys
    /// pinned and their stand-in metadata service read every second.
    pub fn start_on(
        lab: &'a Lab,
        tag: &str,
        instances: u32,
        version: &str,
        nodes: Option<&str>,
    ) -> Deploy<'a> {
        Self::start_with(lab, tag, instances, version, nodes, "")
    }

    /// As [`Deploy::start_on`], with `extra` tables after the app; an
    /// empty `version` sets no `PRISM_APP` (the image's own answers).
    pub fn start_with(
        lab: &'a Lab,
        tag: &str,
        instances: u32,
        version: &str,
        nodes: Option<&str>,
        extra: &str,
    ) -> Deploy<'a> {
        let name = format!("t{}{tag}", std::process::id());
        lab.remove_fleet(&name);
        let dir = tempfile::tempdir().expect("tempdir");
        let file = lab.own_fleet(dir.path(), &name, "");
        if let Some(nodes) = nodes {
            let text = std::fs::read_to_string(&file).expect("read fleet.toml");
            let text: String = text
                .replace(
                    "tags = { \"prism:fleet\" = \"lab\" }",
                    &format!("tags = {{ \"prism:fleet\" = {nodes:?} }}"),
                )
                .replace("host_keys = \"known_hosts\"", "host_keys = \"pin\"")
                .lines()
                .filter(|l| !l.starts_with("known_hosts = "))
                .map(|l| format!("{l}\n"))
                .collect();
            let lifecycle = "[lifecycle]\nnotice_interval = \"1s\"\n\
                             metadata_url = \"http://127.0.0.1:1338\"\n";
            std::fs::write(&file, format!("{text}\n{lifecycle}")).expect("write fleet.toml");
        }
        let mut d = Deploy {
            nodes: nodes.map(str::to_owned),
            lab,
            host: format!("web.{name}.test"),
            name,
            addr: format!("127.0.0.1:{}", free_port()),
            admin: format!("127.0.0.1:{}", free_port()),
            instances,
            extra: extra.to_owned(),
            file,
            dir,
            daemon: None,
            logs: Arc::new(Mutex::new(Vec::new())),
        };
        d.write(version);
        let mut daemon = prism_command(&[
            "-c",
            d.file.to_str().expect("utf-8 path"),
            "daemon",
            "--interval",
            "1s",
            "--log-format",
            "json",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn prism daemon");
        let stderr = daemon.stderr.take().expect("stderr");
        let logs = Arc::clone(&d.logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                logs.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        d.daemon = Some(daemon);
        d
    }

    /// fleet.toml with the app's `PRISM_APP` (which the test app echoes
    /// as `app:`) set to `version`: a new spec for every container.
    pub fn write(&self, version: &str) {
        let text = std::fs::read_to_string(&self.file).expect("read fleet.toml");
        let cut = text.find("[apps.").unwrap_or(text.len());
        let mut head: String = text[..cut]
            .lines()
            .filter(|l| {
                !["listen =", "admin =", "drain_timeout ="]
                    .iter()
                    .any(|k| l.starts_with(k))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        head = head.replace(
            "[proxy]\n",
            &format!(
                "[proxy]\nlisten = \"{}\"\nadmin = \"{}\"\ndrain_timeout = \"30s\"\n",
                self.addr, self.admin
            ),
        );
        if !head.contains("[proxy]") {
            head.push_str(&format!(
                "[proxy]\nlisten = \"{}\"\nadmin = \"{}\"\ndrain_timeout = \"30s\"\n",
                self.addr, self.admin
            ));
        }
        let env = if version.is_empty() {
            String::new()
        } else {
            format!("env = {{ PRISM_APP = \"{version}\" }}\n")
        };
        let app = format!(
            r#"
# The lab's test app, behind its own host name.
[apps.web]
instances = {instances}
[apps.web.services.web]
image = "{image}"  # what `prism deploy` sets
port = 8080
hosts = ["{host}"]
memory = "32M"
{env}health = {{ http = "/up", interval = "1s", timeout = "1s", healthy_threshold = 2, unhealthy_threshold = 3 }}
"#,
            instances = self.instances,
            image = self.lab.testapp_image,
            host = self.host,
        );
        // Written whole and renamed, as an editor would, so the daemon
        // never reads half a file.
        self.write_raw(&format!("{head}{app}\n{}", self.extra));
    }

    /// Replaces fleet.toml with `text` as it is.
    pub fn write_raw(&self, text: &str) {
        let tmp = self.dir.path().join("fleet.toml.new");
        std::fs::write(&tmp, text).expect("write fleet.toml");
        std::fs::rename(&tmp, &self.file).expect("replace fleet.toml");
    }

    pub fn file(&self) -> &std::path::Path {
        &self.file
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.file).expect("read fleet.toml")
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until `version` answers from `instances` different
    /// containers (and nothing else answers).
    pub async fn wait_serving(
        &self,
        client: &HttpClient,
        version: &str,
        limit: Duration,
    ) -> Result<()> {
        let started = Instant::now();
        loop {
            let mut seen = std::collections::BTreeSet::new();
            let mut last = Err(anyhow!("nothing tried"));
            for _ in 0..(4 * self.instances) {
                last = get(client, &self.addr, &self.host, "/").await;
                match &last {
                    Ok((200, body)) if field(body, "app").as_deref() == Some(version) => {
                        seen.insert(field(body, "hostname"));
                    }
                    _ => break,
                }
            }
            if seen.len() == self.instances as usize && last.is_ok() {
                return Ok(());
            }
            if started.elapsed() > limit {
                return Err(anyhow!(
                    "{version} not served by {} containers after {limit:?}: last answer {last:?}",
                    self.instances
                ));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The fleet's containers on the nodes (`docker ps` lines).
    pub fn containers(&self) -> Vec<String> {
        match &self.nodes {
            None => self.lab.fleet_containers(&self.name),
            Some(fleet) => {
                let nodes: Vec<_> = Lab::load()
                    .other_nodes
                    .into_iter()
                    .filter(|n| &n.fleet == fleet)
                    .collect();
                self.lab.fleet_containers_on(&nodes, &self.name)
            }
        }
    }

    /// The daemon's state store.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }

    /// Waits until only the `instances` new containers are left on the
    /// nodes: the old ones were drained and removed.
    pub async fn wait_replaced(&self, old: &[String], limit: Duration) -> Result<Vec<String>> {
        let started = Instant::now();
        loop {
            let now = tokio::task::block_in_place(|| self.containers());
            let left_old = now.iter().filter(|l| old.contains(l)).count();
            if left_old == 0 && now.len() == self.instances as usize {
                return Ok(now);
            }
            ensure!(
                started.elapsed() < limit,
                "old containers still there after {limit:?}: {now:#?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Stops the daemon with SIGTERM; its exit status.
    pub fn stop(&mut self) -> Option<i32> {
        let mut daemon = self.daemon.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &daemon.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match daemon.try_wait() {
                Ok(Some(status)) => return status.code(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => {
                    let _ = daemon.kill();
                    let _ = daemon.wait();
                    return None;
                }
            }
        }
    }
}

impl Drop for Deploy<'_> {
    fn drop(&mut self) {
        self.stop();
        self.lab.remove_fleet(&self.name);
    }
}

/// Clients sending GETs through the proxy until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub stats: Arc<Stats>,
}

#[derive(Default)]
pub struct Stats {
    pub total: AtomicU64,
    pub failed: AtomicU64,
    /// The first failures, for the report.
    pub failures: Mutex<Vec<String>>,
    /// `app:` of every answer, in order of arrival.
    pub versions: Mutex<Vec<String>>,
}

impl Load {
    /// `clients` loops, each its own keep-alive client, `pause` between
    /// requests (zero: none).
    pub fn start(addr: &str, host: &str, clients: usize, pause: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Stats::default());
        let tasks = (0..clients)
            .map(|_| {
                let (stop, stats) = (Arc::clone(&stop), Arc::clone(&stats));
                let (addr, host) = (addr.to_owned(), host.to_owned());
                tokio::spawn(async move {
                    let client = client();
                    while !stop.load(Ordering::Relaxed) {
                        let answer = get(&client, &addr, &host, "/").await;
                        stats.total.fetch_add(1, Ordering::Relaxed);
                        match answer {
                            Ok((200, body)) => {
                                let version = field(&body, "app").unwrap_or_default();
                                stats.versions.lock().unwrap().push(version);
                            }
                            other => {
                                stats.failed.fetch_add(1, Ordering::Relaxed);
                                let mut f = stats.failures.lock().unwrap();
                                if f.len() < 20 {
                                    f.push(format!("{other:?}"));
                                }
                            }
                        }
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                })
            })
            .collect();
        Load { stop, tasks, stats }
    }

    pub async fn stop(self) -> Arc<Stats> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.stats
    }
}
