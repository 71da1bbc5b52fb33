//! Failover benchmark on the lab: time to recover from a preemption.
//!
//! Three nodes of the benchmark's own fleet (`lab/lab add --fleet`), three
//! apps with spare capacity, `prism daemon` with default settings, and a
//! client hitting every app's node port all along. Ten times: `lab/lab
//! preempt` the node holding pods, and measure the seconds from the kill
//! until every pod it held runs healthy on another node (Prism's own
//! checks, as recorded in the state store); then `lab/lab add` a
//! replacement. Prints p50 and max.
//!
//! Then, with no spare capacity (each node holds one pod it cannot share):
//! preempt, `lab/lab add`, and measure the seconds from the new instance's
//! appearance (the add returning) until the waiting pod is healthy there.
//!
//! Without the proxy the client's failed requests are counted but not a
//! target: it finds an app's new address only from the state store.
//!
//! Each run uses 16 of the lab's 150 node numbers (`lab/lab add` never
//! reuses one until `lab/lab down` and `up`).
//!
//!     cargo bench --profile dev --bench failover      (or: make bench-failover)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::{Lab, LoggedDaemon, OwnNodes};

#[path = "../tests/common/mod.rs"]
mod common;
use prism::store::Store;

/// Kills measured (`FAILOVER_KILLS` overrides, for a quick look).
const KILLS: usize = 10;
const NO_ROOM_KILLS: usize = 3;
const APPS: [&str; 3] = ["alpha", "bravo", "charlie"];

fn main() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lab = Lab::load();
    let lab_dir = lab.dir.clone();
    let fleet = format!("failover{}", std::process::id());
    let mut nodes = OwnNodes::new(fleet.clone());
    nodes.add_many::<3>()?;
    let dir = tempfile::tempdir()?;
    let image = lab.testapp_image.clone();
    let kills: usize = std::env::var("FAILOVER_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(KILLS);
    // The daemon's logs outlive the run, for a look at where time went.
    let logs = root.join("target").join("bench-failover");
    std::fs::create_dir_all(&logs)?;

    println!("failover benchmark: fleet {fleet}, 3 nodes, default [lifecycle] settings");
    let small: Vec<String> = APPS.iter().map(|a| a.to_string()).collect();
    let apps: String = small.iter().map(|a| app(a, &image, "64M")).collect();
    let file = fleet_toml(&lab_dir, dir.path(), &fleet, &apps)?;
    let state = dir.path().join("state.db");
    let mut daemon = LoggedDaemon::start(&file, &logs.join("daemon.log"))?;
    let client = Client::start(state.clone());
    let mut times = Vec::new();
    for round in 1..=kills {
        wait_healthy(&state, &small, Duration::from_secs(120))?;
        let victim = busiest_node(&state)?;
        let pods = pods_on(&state, &victim)?;
        let name = nodes.by_instance(&victim)?.name;
        let failed_before = client.failed.load(Ordering::SeqCst);
        let killed = Instant::now();
        nodes.preempt(&name)?;
        wait_moved(&state, &victim, &pods, Duration::from_secs(120))?;
        let took = killed.elapsed();
        times.push(took);
        println!(
            "  kill {round:>2}: {name} held {} pods; healthy elsewhere after {:.2} s ({} failed requests)",
            pods.len(),
            took.as_secs_f64(),
            client.failed.load(Ordering::SeqCst) - failed_before
        );
        let fresh = instance(nodes.add()?)?;
        wait_node_ready(&state, &fresh, Duration::from_secs(60))?;
    }
    client.stop();
    daemon.stop();
    times.sort();
    println!(
        "preempt → pods healthy elsewhere: p50 {:.2} s, max {:.2} s over {kills} kills (targets: p50 ≤ 5 s, max ≤ 10 s)",
        times[times.len() / 2].as_secs_f64(),
        times[times.len() - 1].as_secs_f64()
    );
    println!(
        "client: {} requests, {} failed (no proxy: it learns new addresses from the state store)",
        client.total.load(Ordering::SeqCst),
        client.failed.load(Ordering::SeqCst)
    );

    // No spare capacity: each pod needs most of a node (2G, 256M kept).
    // New app names: placed afresh, one per node, rather than kept where
    // the small ones were packed.
    let big: Vec<String> = APPS.iter().map(|a| format!("big-{a}")).collect();
    let apps: String = big.iter().map(|a| app(a, &image, "1200M")).collect();
    let file = fleet_toml(&lab_dir, dir.path(), &fleet, &apps)?;
    let mut daemon = LoggedDaemon::start(&file, &logs.join("daemon-no-room.log"))?;
    let mut waits = Vec::new();
    for round in 1..=NO_ROOM_KILLS {
        wait_healthy(&state, &big, Duration::from_secs(120))?;
        let victim = busiest_node(&state)?;
        let pods = pods_on(&state, &victim)?;
        let name = nodes.by_instance(&victim)?.name;
        nodes.preempt(&name)?;
        let fresh = instance(nodes.add()?)?;
        let appeared = Instant::now();
        wait_moved(&state, &victim, &pods, Duration::from_secs(120))?;
        let took = appeared.elapsed();
        waits.push(took);
        println!(
            "  no room {round}: {name} preempted; its pod healthy on the new {} {:.2} s after it appeared",
            nodes.by_instance(&fresh)?.name,
            took.as_secs_f64()
        );
    }
    daemon.stop();
    waits.sort();
    println!(
        "no spare capacity, new instance → its pods healthy: p50 {:.2} s, max {:.2} s over {NO_ROOM_KILLS}",
        waits[waits.len() / 2].as_secs_f64(),
        waits[waits.len() - 1].as_secs_f64()
    );
    println!(
        "a notice 30 s before the kill (zero failed requests through the daemon's proxy): PRISM_BENCH_PHASES=notice cargo bench --bench deploy"
    );
    Ok(())
}

fn app(name: &str, image: &str, memory: &str) -> String {
    format!(
        r#"
[apps.{name}.services.web]
image = "{image}"
port = 8080
memory = "{memory}"
health = {{ http = "/up", interval = "1s", timeout = "1s" }}
"#
    )
}

fn instance(node: common::Node) -> Result<String> {
    node.instance_id
        .with_context(|| format!("{} has no EC2 instance", node.name))
}

/// The lab's fleet.toml for the benchmark's fleet: its own state, pinned
/// host keys (new instances are trusted on first sight), default
/// `[lifecycle]`.
fn fleet_toml(lab_dir: &Path, dir: &Path, fleet: &str, apps: &str) -> Result<PathBuf> {
    let text = std::fs::read_to_string(lab_dir.join("fleet.toml"))
        .context("read the lab's fleet.toml: run lab/lab up")?;
    let cut = text.find("[apps.").unwrap_or(text.len());
    let at = |f: &str| format!("{:?}", lab_dir.join(f).display().to_string());
    let text: String = text[..cut]
        .replace("name = \"lab\"", &format!("name = {fleet:?}"))
        .replace(
            "state = \"state.db\"",
            &format!("state = {:?}", dir.join("state.db").display().to_string()),
        )
        .replace(
            "identity = \"id_ed25519\"",
            &format!("identity = {}", at("id_ed25519")),
        )
        .replace("host_keys = \"known_hosts\"", "host_keys = \"pin\"")
        .lines()
        .filter(|l| !l.starts_with("known_hosts = "))
        .map(|l| format!("{l}\n"))
        .collect();
    let file = dir.join("fleet.toml");
    std::fs::write(&file, format!("{text}\n{apps}"))?;
    Ok(file)
}

fn store(state: &Path) -> Result<Store> {
    Store::open_existing(state)?.context("no state file yet")
}

/// `(app, instance, node)` of containers Prism's checks find healthy.
fn healthy(state: &Path) -> Result<Vec<(String, u32, String)>> {
    Ok(store(state)?
        .health_records()?
        .into_iter()
        .filter(|r| r.verdict.as_str() == "healthy")
        .map(|r| (r.app, r.instance, r.node_id))
        .collect())
}

fn poll<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let start = Instant::now();
    loop {
        // The daemon writes the store meanwhile: a busy read is retried.
        if let Ok(Some(v)) = f() {
            return Ok(v);
        }
        if start.elapsed() > limit {
            bail!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Until each of `apps` (one pod each) is placed and healthy there, and
/// nothing else is.
fn wait_healthy(state: &Path, apps: &[String], limit: Duration) -> Result<()> {
    poll(limit, "every pod healthy", || {
        let h = healthy(state)?;
        let placed = store(state)?.placements()?;
        let pods = apps.len();
        let ok = placed.len() == pods
            && placed.iter().all(|p| apps.contains(&p.app))
            && placed.iter().all(|p| {
                h.iter()
                    .any(|(a, i, n)| *a == p.app && *i == p.instance && *n == p.node_id)
            })
            && h.len() == pods;
        Ok(ok.then_some(()))
    })
}

/// The node placements put most pods on.
fn busiest_node(state: &Path) -> Result<String> {
    let placed = store(state)?.placements()?;
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for p in placed {
        *counts.entry(p.node_id).or_default() += 1;
    }
    counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(id, _)| id)
        .context("no pod is placed")
}

fn pods_on(state: &Path, node: &str) -> Result<Vec<(String, u32)>> {
    Ok(store(state)?
        .placements()?
        .into_iter()
        .filter(|p| p.node_id == node)
        .map(|p| (p.app, p.instance))
        .collect())
}

/// Until every pod of `from` is healthy on another node.
fn wait_moved(state: &Path, from: &str, pods: &[(String, u32)], limit: Duration) -> Result<()> {
    poll(limit, "pods healthy elsewhere", || {
        let h = healthy(state)?;
        let moved = pods.iter().all(|(app, instance)| {
            h.iter()
                .any(|(a, i, n)| a == app && i == instance && n != from)
        });
        Ok(moved.then_some(()))
    })
}

fn wait_node_ready(state: &Path, id: &str, limit: Duration) -> Result<()> {
    poll(limit, "the new node ready", || {
        let node = store(state)?.node(id)?;
        Ok(node
            .filter(|n| n.state == prism::reconcile::NodeState::Ready)
            .map(|_| ()))
    })
}

/// Hits every app's web port (where the state store says it is) in a loop.
struct Client {
    stop: Arc<AtomicBool>,
    total: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Client {
    fn start(state: PathBuf) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let total = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let threads = APPS
            .iter()
            .map(|app| {
                let (stop, total, failed, state) =
                    (stop.clone(), total.clone(), failed.clone(), state.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        if let Ok(Some(addr)) = address(&state, app) {
                            total.fetch_add(1, Ordering::SeqCst);
                            if get_up(addr).is_err() {
                                failed.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                })
            })
            .collect();
        Client {
            stop,
            total,
            failed,
            threads,
        }
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The node address and published port of `app`'s placed web container.
fn address(state: &Path, app: &str) -> Result<Option<SocketAddr>> {
    let store = store(state)?;
    let Some(p) = store.placements()?.into_iter().find(|p| p.app == app) else {
        return Ok(None);
    };
    let Some(node) = store.node(&p.node_id)? else {
        return Ok(None);
    };
    let Some(c) = store
        .containers()?
        .into_iter()
        .find(|c| c.app == app && c.node_id == p.node_id && c.state == "running")
    else {
        return Ok(None);
    };
    let port = c.ports.split(", ").find_map(|m| {
        m.split_once("->")?
            .0
            .rsplit_once(':')?
            .1
            .parse::<u16>()
            .ok()
    });
    Ok(port.and_then(|port| format!("{}:{port}", node.address).parse().ok()))
}

/// `GET /up` over HTTP/1.0; Ok on a 200.
fn get_up(addr: SocketAddr) -> Result<()> {
    let timeout = Duration::from_secs(1);
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"GET /up HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply)?;
    if reply.starts_with(b"HTTP/1.0 200") || reply.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        bail!("not a 200")
    }
}
