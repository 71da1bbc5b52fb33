//! Node lifecycle on the lab with nodes of the test's own (`lab/lab add
//! --fleet`): a preempted node's pods run elsewhere, a partitioned node is
//! lost and its duplicates go when it heals, an EC2 outage drops no node,
//! a spot notice drains make-before-break, and host keys are pinned per
//! instance. Each test preempts the nodes it added when it ends (a run uses
//! 11 of the lab's 150 node numbers). The shared nodes and the shared moto
//! are only read.

use crate::common;

use std::io::{BufRead, BufReader};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::{Lab, OwnNodes, ProxyPorts, Trust, lab_cmd, retry};
use prism::store::{Event, HealthRecord, Store};

/// Nodes are added and killed here: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

pub(crate) fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Nodes of this test's own fleet (`lc<pid><tag>`).
pub(crate) fn own_nodes(tag: &str) -> OwnNodes {
    OwnNodes::new(format!("lc{}{tag}", std::process::id()))
}

/// This test's fleet on its own nodes, host keys pinned, the lab's
/// stand-in metadata service, `endpoint` as the EC2 endpoint, and `apps`.
pub(crate) fn fleet_toml(
    lab: &Lab,
    dir: &Path,
    fleet: &str,
    endpoint: Option<&str>,
    apps: &str,
) -> PathBuf {
    let lifecycle = "[lifecycle]\nlost_after = 2\nnotice_interval = \"1s\"\n\
                     metadata_url = \"http://127.0.0.1:1338\"\n";
    let rest = format!("{lifecycle}\n{apps}");
    let file = lab.own_nodes_fleet(dir, fleet, Trust::Pin, &ProxyPorts::free(), &rest);
    if let Some(endpoint) = endpoint {
        lab.set_endpoint(&file, endpoint);
    }
    file
}

/// One web service with Prism's own health check, `instances` pods.
pub(crate) fn web_app(lab: &Lab, instances: u32) -> String {
    format!(
        r#"
[apps.web]
instances = {instances}
[apps.web.services.web]
image = "{}"
port = 8080
memory = "64M"
health = {{ http = "/up", interval = "1s", timeout = "1s", healthy_threshold = 1, unhealthy_threshold = 2 }}
"#,
        lab.testapp_image
    )
}

/// `prism daemon` on a fleet file; stopped (SIGTERM) when dropped.
pub(crate) struct Daemon {
    child: Child,
    logs: Option<JoinHandle<Vec<String>>>,
    state: PathBuf,
}

impl Daemon {
    pub(crate) fn start(file: &Path) -> Daemon {
        let path = file.to_str().expect("utf-8 path");
        let mut child = common::prism_command(&["-c", path, "daemon", "--interval", "1s"])
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn prism daemon");
        let stderr = child.stderr.take().expect("stderr");
        let logs = std::thread::spawn(move || {
            BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .collect()
        });
        Daemon {
            child,
            logs: Some(logs),
            state: file.with_file_name("state.db"),
        }
    }

    /// Where it keeps its state.
    pub(crate) fn state_path(&self) -> &Path {
        &self.state
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads the state at `file` (a fleet whose `[fleet] state` is not
    /// beside its fleet.toml).
    pub(crate) fn set_state(&mut self, file: &Path) {
        self.state = file.to_path_buf();
    }

    /// SIGKILL: gone without a word, its lock left behind.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.logs = None;
    }

    pub(crate) fn store(&self) -> Result<Store> {
        Store::open_existing(&self.state)?.context("no state file yet")
    }

    /// Every event, oldest first.
    pub(crate) fn events(&self) -> Vec<Event> {
        let mut events = self
            .store()
            .and_then(|s| Ok(s.events(100_000)?))
            .unwrap_or_default();
        events.sort_by_key(|e| e.id);
        events
    }

    pub(crate) fn node_state(&self, id: &str) -> Result<String> {
        Ok(self
            .store()?
            .node(id)?
            .with_context(|| format!("node {id} not recorded"))?
            .state
            .as_str()
            .to_owned())
    }

    /// Containers Prism's own checks last found healthy.
    pub(crate) fn healthy(&self) -> Result<Vec<HealthRecord>> {
        Ok(self
            .store()?
            .health_records()?
            .into_iter()
            .filter(|r| r.verdict.as_str() == "healthy")
            .collect())
    }

    /// The node pod `web/instance` is placed on.
    pub(crate) fn placed(&self, instance: u32) -> Result<String> {
        self.store()?
            .placements()?
            .into_iter()
            .find(|p| p.app == "web" && p.instance == instance)
            .map(|p| p.node_id)
            .context("web pod not placed")
    }

    /// Stops it; returns its log lines.
    pub(crate) fn stop(&mut self) -> Vec<String> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        self.logs
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.logs.is_some() {
            let logs = self.stop();
            if std::thread::panicking() {
                eprintln!("daemon log:\n{}", logs.join("\n"));
            }
        }
    }
}

/// Waits until the fleet's `instances` pods run healthy on distinct
/// nodes (when there are enough); returns pod 0's node id.
pub(crate) fn converged(daemon: &Daemon, instances: usize) -> String {
    retry(Duration::from_secs(90), || {
        let healthy = daemon.healthy()?;
        ensure!(healthy.len() == instances, "healthy: {healthy:?}");
        daemon.placed(0)
    })
    .unwrap_or_else(|e| panic!("the fleet did not converge: {e:#}"))
}

pub(crate) fn instance_id(node: &common::Node) -> String {
    node.instance_id.clone().expect("a registered instance")
}

/// Two nodes of the test's own fleet and `instances` web pods placed on
/// them by a daemon. Fields drop in order: the daemon stops first, the
/// nodes go last.
struct Placed {
    daemon: Daemon,
    _dir: tempfile::TempDir,
    /// Pod 0's node, its instance id, and the other node.
    pod: common::Node,
    on: String,
    other: common::Node,
    own: OwnNodes,
}

fn placed(lab: &Lab, tag: &str, instances: u32) -> Placed {
    let mut own = own_nodes(tag);
    let [a, b] = own.add_many::<2>().expect("lab/lab add --fleet");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = fleet_toml(lab, dir.path(), &own.fleet, None, &web_app(lab, instances));
    let daemon = Daemon::start(&file);
    let on = converged(&daemon, instances as usize);
    let (pod, other) = if instance_id(&a) == on {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(
        instance_id(&pod),
        on,
        "pod 0 is on neither of the test's nodes"
    );
    Placed {
        daemon,
        _dir: dir,
        pod,
        on,
        other,
        own,
    }
}

/// `docker ps` lines (`name state`) of fleet `fleet` on a node.
pub(crate) fn containers_on(lab: &Lab, node: &common::Node, fleet: &str) -> Result<Vec<String>> {
    let out = lab.ssh(
        &node.address,
        &format!("docker ps -a --filter label=prism.fleet={fleet} --format '{{{{.Names}}}} {{{{.State}}}}'"),
    )?;
    Ok(out.lines().map(str::to_owned).collect())
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn a_preempted_node_s_pods_run_healthy_elsewhere_and_a_new_instance_is_trusted() {
    let _serial = serial();
    let lab = Lab::load();
    let mut p = placed(&lab, "p", 2);
    let (daemon, on, victim, survivor) = (&p.daemon, p.on.clone(), &p.pod, &p.other);
    let own = &mut p.own;

    let killed = Instant::now();
    own.preempt(&victim.name.clone()).expect("lab/lab preempt");
    retry(Duration::from_secs(60), || {
        let healthy = daemon.healthy()?;
        ensure!(
            healthy.len() == 2 && healthy.iter().all(|c| c.node_id == instance_id(survivor)),
            "healthy: {healthy:?}"
        );
        Ok(())
    })
    .expect("both pods healthy on the surviving node");
    eprintln!("recovered in {:.1} s", killed.elapsed().as_secs_f64());
    // The terminated instance is gone, and said so.
    retry(Duration::from_secs(10), || {
        ensure!(daemon.node_state(&on)? == "gone");
        Ok(())
    })
    .expect("the preempted node recorded as gone");
    assert!(
        daemon
            .events()
            .iter()
            .any(|e| e.kind == "node.gone" && e.node_id.as_deref() == Some(on.as_str())),
        "no node.gone event"
    );

    // A replacement: a new instance id with a new host key, pinned and
    // trusted on first sight.
    let fresh = own.add().expect("lab/lab add --fleet");
    let fresh_id = instance_id(&fresh);
    retry(Duration::from_secs(30), || {
        ensure!(daemon.node_state(&fresh_id)? == "ready");
        Ok(())
    })
    .expect("the new instance becomes ready");
    let pinned = daemon
        .store()
        .expect("store")
        .pinned_key(&fresh_id)
        .expect("pin");
    assert!(pinned.is_some(), "the new instance's key is not pinned");
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn a_changed_host_key_on_the_same_instance_is_untrusted() {
    let _serial = serial();
    let lab = Lab::load();
    let mut own = own_nodes("k");
    let nodes = own.add_many::<2>().expect("lab/lab add --fleet");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = fleet_toml(&lab, dir.path(), &own.fleet, None, "");
    let path = file.to_str().expect("utf-8");
    let probe = || {
        let out = common::prism(&["-c", path, "status", "--probe", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    probe();
    let (a, b) = (instance_id(&nodes[0]), instance_id(&nodes[1]));
    {
        // Node a's pin now holds node b's key: as if a's key changed.
        let store = Store::open(&dir.path().join("state.db")).expect("store");
        let other = store.pinned_key(&b).expect("read").expect("b pinned");
        store.unpin_key(&a).expect("unpin");
        store
            .pin_key(&a, &other.algorithm, &other.public_key, &other.fingerprint)
            .expect("pin");
    }
    probe();
    let store = Store::open(&dir.path().join("state.db")).expect("store");
    let row = store.node(&a).expect("read").expect("a recorded");
    assert_eq!(
        (row.state.as_str(), row.condition.as_deref()),
        ("untrusted", Some("host-key-mismatch"))
    );
    assert_eq!(
        store.node(&b).expect("read").expect("b").state.as_str(),
        "ready"
    );
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn a_partitioned_node_is_lost_and_its_duplicates_go_when_it_heals() {
    let _serial = serial();
    let lab = Lab::load();
    let p = placed(&lab, "n", 1);
    let (daemon, on, cut, other, own) = (&p.daemon, p.on.clone(), &p.pod, &p.other, &p.own);

    lab_cmd(&["partition", &cut.name]).expect("partition");
    let healed = Heal(&cut.name);
    retry(Duration::from_secs(90), || {
        ensure!(daemon.node_state(&on)? == "lost");
        let healthy = daemon.healthy()?;
        ensure!(
            healthy.iter().any(|c| c.node_id == instance_id(other)),
            "healthy: {healthy:?}"
        );
        Ok(())
    })
    .expect("lost, and the pod healthy on the other node");
    // While cut off, the old container still runs there (Prism cannot reach it).
    assert!(
        containers_on_via_docker(&cut.container, &own.fleet)
            .iter()
            .any(|l| l.ends_with(" running"))
    );
    drop(healed);
    retry(Duration::from_secs(60), || {
        ensure!(daemon.node_state(&on)? == "ready");
        let left = containers_on(&lab, cut, &own.fleet)?;
        ensure!(left.is_empty(), "still on the healed node: {left:?}");
        let there = containers_on(&lab, other, &own.fleet)?;
        ensure!(
            there.len() == 1 && there[0].ends_with(" running"),
            "{there:?}"
        );
        Ok(())
    })
    .expect("the healed node's duplicate removed, one copy left");
    let events = daemon.events();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "apply.remove" && e.message.contains("pod now runs on node")),
        "{events:#?}"
    );
}

/// Heals a partitioned node when dropped.
struct Heal<'a>(&'a str);

impl Drop for Heal<'_> {
    fn drop(&mut self) {
        if let Err(e) = lab_cmd(&["heal", self.0]) {
            eprintln!("could not heal {}: {e:#}", self.0);
        }
    }
}

/// `docker ps` in a node through `docker exec` (works while it is cut off).
fn containers_on_via_docker(container: &str, fleet: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["exec", container, "docker", "ps", "-a"])
        .args(["--filter", &format!("label=prism.fleet={fleet}")])
        .args(["--format", "{{.Names}} {{.State}}"])
        .output()
        .expect("docker exec");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A TCP forwarder on a loopback port to the lab's moto: the EC2 endpoint
/// of a test fleet, which the test can take down and bring back without
/// touching the shared moto.
pub(crate) struct Forwarder {
    port: u16,
    target: String,
    running: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl Forwarder {
    pub(crate) fn start(target: &str) -> Forwarder {
        let mut f = Forwarder {
            port: 0,
            target: target.to_owned(),
            running: None,
        };
        f.up();
        f
    }

    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(crate) fn up(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("bind the forwarder");
        self.port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let target = self.target.clone();
        let flag = stop.clone();
        let accept = std::thread::spawn(move || {
            let mut open: Vec<TcpStream> = Vec::new();
            for client in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(upstream) = TcpStream::connect(&target) else {
                    continue;
                };
                for (from, to) in [(&client, &upstream), (&upstream, &client)] {
                    let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(Shutdown::Write);
                    });
                }
                open.push(client);
                open.push(upstream);
            }
            // Down: every connection in flight is cut too.
            for s in open {
                let _ = s.shutdown(Shutdown::Both);
            }
        });
        self.running = Some((stop, accept));
    }

    pub(crate) fn down(&mut self) {
        if let Some((stop, accept)) = self.running.take() {
            stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect(("127.0.0.1", self.port));
            let _ = accept.join();
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.down();
    }
}

/// The outage lasts 20 s: with passes every second and discovery retried
/// after 1, 2, 4, 8 s, that spans about twenty passes and five failed
/// attempts, which is what a minute would show, only shorter.
#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn an_ec2_outage_drops_no_node_and_discovery_recovers() {
    let _serial = serial();
    let lab = Lab::load();
    let mut own = own_nodes("e");
    let nodes = own.add_many::<2>().expect("lab/lab add --fleet");
    let mut forwarder = Forwarder::start(lab.moto_url.trim_start_matches("http://"));
    let dir = tempfile::tempdir().expect("tempdir");
    let file = fleet_toml(
        &lab,
        dir.path(),
        &own.fleet,
        Some(&forwarder.url()),
        &web_app(&lab, 2),
    );
    let daemon = Daemon::start(&file);
    converged(&daemon, 2);
    let before: Vec<String> = {
        let mut ids: Vec<String> = daemon
            .healthy()
            .expect("containers")
            .into_iter()
            .map(|c| format!("{} {}", c.node_id, c.container_id))
            .collect();
        ids.sort();
        ids
    };

    forwarder.down();
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(20) {
        for n in &nodes {
            let state = daemon.node_state(&instance_id(n)).expect("state");
            assert_eq!(state, "ready", "{} during the outage", n.name);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let events = daemon.events();
    let stale: Vec<&Event> = events
        .iter()
        .filter(|e| e.kind == "discovery.stale")
        .collect();
    assert_eq!(stale.len(), 1, "{events:#?}");
    assert!(stale[0].message.contains("2 nodes"), "{}", stale[0].message);

    forwarder.up();
    retry(Duration::from_secs(30), || {
        let events = daemon.events();
        if !events.iter().any(|e| e.kind == "discovery.recovered") {
            bail!("no discovery.recovered event yet");
        }
        Ok(())
    })
    .expect("discovery recovers");
    let after: Vec<String> = {
        let mut ids: Vec<String> = daemon
            .healthy()
            .expect("containers")
            .into_iter()
            .map(|c| format!("{} {}", c.node_id, c.container_id))
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(before, after, "containers changed over the outage");
    let events = daemon.events();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind.as_str(), "node.gone" | "node.lost" | "node.suspect")),
        "{events:#?}"
    );
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn a_spot_notice_drains_the_node_make_before_break() {
    let _serial = serial();
    let lab = Lab::load();
    let p = placed(&lab, "d", 1);
    let (daemon, on, noticed, other, own) = (&p.daemon, p.on.clone(), &p.pod, &p.other, &p.own);

    lab_cmd(&["notice", &noticed.name]).expect("lab/lab notice");
    retry(Duration::from_secs(60), || {
        ensure!(daemon.node_state(&on)? == "draining");
        ensure!(daemon.placed(0)? == instance_id(other));
        let left = containers_on(&lab, noticed, &own.fleet)?;
        ensure!(left.is_empty(), "still on the draining node: {left:?}");
        Ok(())
    })
    .expect("the pod moved off the draining node");
    // The old container's health record goes on the next pass.
    retry(Duration::from_secs(10), || {
        let healthy = daemon.healthy()?;
        ensure!(
            healthy.len() == 1 && healthy[0].node_id == instance_id(other),
            "{healthy:?}"
        );
        Ok(())
    })
    .expect("healthy on the other node only");

    // The order, from the events: draining, the new container healthy on
    // the other node, and only then the old one removed.
    let events = daemon.events();
    let position = |pred: &dyn Fn(&Event) -> bool, what: &str| {
        events
            .iter()
            .position(pred)
            .unwrap_or_else(|| panic!("no event: {what}\n{events:#?}"))
    };
    let draining = position(
        &|e| e.kind == "node.draining" && e.message.contains("spot interruption notice"),
        "node.draining",
    );
    let healthy_there = position(
        &|e| e.kind == "container.healthy" && e.message.contains(&other.name),
        "healthy on the other node",
    );
    let removed = position(
        &|e| e.kind == "apply.remove" && e.node_id.as_deref() == Some(on.as_str()),
        "removed from the draining node",
    );
    assert!(
        draining < healthy_there && healthy_there < removed,
        "{events:#?}"
    );
}

/// Discovery by tag: the lab's fleet tag lists exactly the lab's live
/// nodes, not the running instance without the tag nor the terminated one
/// with it. Only reads the shared nodes (a probe).
#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn discovery_lists_tagged_live_instances_only() {
    let lab = Lab::load();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = lab.fleet_file(dir.path(), "");
    let path = file.to_str().expect("utf-8");
    let out = common::prism(&["-c", path, "status", "--probe", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let mut found: Vec<String> = json["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["id"].as_str().expect("id").to_owned())
        .collect();
    found.sort();
    let mut want: Vec<String> = lab.nodes.iter().map(instance_id).collect();
    want.sort();
    assert_eq!(found, want);
    for decoy in [&lab.decoys.not_ours, &lab.decoys.terminated] {
        let decoy = decoy.as_ref().expect("lab.json names its decoys");
        assert!(!found.contains(decoy), "{decoy} listed");
    }
}
