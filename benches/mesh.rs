//! The mesh on the lab: what WireGuard (wireguard-go here: the kernel has
//! none) costs between containers, how fast names follow a move, and what
//! the mesh costs the operator.
//!
//! 1. Two nodes of the benchmark's own fleet, a web on each (the test
//!    app), the mesh on. From the web container on one node to the other
//!    node's: `ROUNDS` interleaved rounds of 2,000 requests on one
//!    keep-alive connection (latency) and 4 × 32 MiB answers (throughput),
//!    by name over the mesh, and the same to a container of the same image
//!    published on the other node's port (no mesh). Medians and the ratio.
//! 2. `KILLS` times: a spare node is added, pod 0's node is preempted, and
//!    every live node's resolver is asked every 20 ms until all answer
//!    pod 0's new address; the time from Prism's check finding it healthy
//!    (its `container.healthy` event) to then, and from the kill. p50, max.
//! 3. Ten nodes, a web on each: the daemon's CPU over `IDLE_S` seconds once
//!    converged, with the mesh on, then with it off (fleet.toml without
//!    `[network]`, the same nodes). Share of one core.
//!
//!     cargo bench --profile dev --bench mesh      (or: make bench-mesh)
//!
//! MESH_ROUNDS, MESH_KILLS, MESH_IDLE_S override the counts (5, 5, 60).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use common::{Lab, LoggedDaemon, Node, OwnNodes, ProxyPorts, Trust, retry};
use prism::store::Store;

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/on_node.rs"]
mod on_node;
use on_node::{gateway, on_node, resolve};

/// A pod this size fills a lab node: one per node.
const WHOLE_NODE: &str = "1200M";
const PUBLISHED_PORT: u16 = 18080;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let logs = root.join("target").join("bench-mesh");
    std::fs::create_dir_all(&logs)?;
    let lab = Lab::load();
    let fleet = format!("meshbench{}", std::process::id());
    let iface = format!("pmb{}", std::process::id() % 100_000);
    let mut own = OwnNodes::new(fleet.clone());
    let dir = tempfile::tempdir()?;
    let result = run(&lab, &mut own, dir.path(), &fleet, &iface, &logs);
    let _ = Command::new("ip")
        .args(["link", "del", "dev", &iface])
        .status();
    result
}

fn run(
    lab: &Lab,
    own: &mut OwnNodes,
    dir: &Path,
    fleet: &str,
    iface: &str,
    logs: &Path,
) -> Result<()> {
    own.add()?;
    own.add()?;
    let file = write_fleet(lab, dir, fleet, iface, 2, true);
    let state = file.with_file_name("state.db");
    let mut daemon = LoggedDaemon::start(&file, &logs.join("daemon.log"))?;
    healthy(&state, 2, Duration::from_secs(120))?;

    // 1: across nodes, over the mesh and through a published port.
    let nodes = live(fleet)?;
    let (a, b) = (&nodes[0], &nodes[1]);
    let b_instance = on_node(
        b,
        &format!(
            "docker ps --filter label=prism.fleet={fleet} --filter label=prism.service=web \
             --format '{{{{.Label \"prism.instance\"}}}}'"
        ),
    )?;
    let by_name = format!("http://{}.web.blog.internal:8080", b_instance.trim());
    let published = format!("http://{}:{PUBLISHED_PORT}", b.address);
    on_node(
        b,
        &format!(
            "docker rm -f prism-bench-published >/dev/null 2>&1; docker run -d --name prism-bench-published -p {PUBLISHED_PORT}:8080 {}",
            lab.testapp_image
        ),
    )?;
    let rounds = env_or("MESH_ROUNDS", 5);
    let (mut lat, mut tput) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for round in 0..rounds {
        for (k, base) in [&by_name, &published].into_iter().enumerate() {
            let us = timed_get(a, fleet, &format!("{base}/"), 2000)?;
            lat[k].push(us as f64 / 2000.0);
            let us = timed_get(a, fleet, &format!("{base}/bytes?n=33554432"), 4)?;
            tput[k].push(4.0 * 32.0 / (us as f64 / 1e6));
        }
        eprintln!(
            "  round {round}: mesh {:.0} µs/request, {:.0} MiB/s; published {:.0} µs/request, {:.0} MiB/s",
            lat[0][round as usize],
            tput[0][round as usize],
            lat[1][round as usize],
            tput[1][round as usize]
        );
    }
    let _ = on_node(b, "docker rm -f prism-bench-published");

    // 2: names after a move.
    let kills = env_or("MESH_KILLS", 5);
    let (mut from_healthy, mut from_kill) = (Vec::new(), Vec::new());
    for round in 0..kills {
        own.add()?;
        healthy(&state, 2, Duration::from_secs(60))?;
        let nodes = live(fleet)?;
        // The new node set up (its resolver) before the kill.
        let gws: Vec<String> = retry(Duration::from_secs(60), || {
            nodes.iter().map(gateway).collect::<Result<_>>()
        })?;
        let old = resolve(&gws[0], "0.web.blog.internal")?;
        let victim = running(&nodes, fleet, 0)?;
        let killed = Instant::now();
        let killed_ms = now_ms();
        own.preempt(&victim.name)?;
        let survivors: Vec<String> = nodes
            .iter()
            .zip(&gws)
            .filter(|(n, _)| n.name != victim.name)
            .map(|(_, g)| g.clone())
            .collect();
        let new = loop {
            ensure!(
                killed.elapsed() < Duration::from_secs(120),
                "names never followed"
            );
            let answers: Vec<Vec<String>> = survivors
                .iter()
                .map(|g| resolve(g, "0.web.blog.internal").unwrap_or_default())
                .collect();
            if answers
                .iter()
                .all(|a| a.len() == 1 && *a != old && *a == answers[0])
            {
                break answers[0][0].clone();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let named_ms = now_ms();
        let took = killed.elapsed();
        let healthy_at = Store::open_existing(&state)?
            .context("state")?
            .events(100_000)?
            .into_iter()
            .filter(|e| e.kind == "container.healthy" && e.at >= killed_ms)
            .filter(|e| e.message.contains("blog/web#0"))
            .map(|e| e.at)
            .min()
            .context("no container.healthy event for the moved pod")?;
        let lag = named_ms.saturating_sub(healthy_at);
        eprintln!(
            "  move {round}: {} killed; every resolver answers {new} {:.2} s after the kill, {lag} ms after it was found healthy",
            victim.name,
            took.as_secs_f64()
        );
        from_healthy.push(lag as f64 / 1000.0);
        from_kill.push(took.as_secs_f64());
    }

    // 3: the operator's idle CPU at ten nodes, mesh on and off.
    let idle = env_or("MESH_IDLE_S", 60);
    while live(fleet)?.len() < 10 {
        own.add()?;
    }
    let mut cpu = Vec::new();
    for mesh in [true, false] {
        daemon.stop();
        let file = write_fleet(lab, dir, fleet, iface, 10, mesh);
        daemon = LoggedDaemon::start(&file, &logs.join(format!("daemon-10-{mesh}.log")))?;
        healthy(&state, 10, Duration::from_secs(240))?;
        // Old containers replaced (mesh on → off changes every spec).
        std::thread::sleep(Duration::from_secs(20));
        healthy(&state, 10, Duration::from_secs(240))?;
        let pid = daemon.pid();
        let before = cpu_ticks(pid)?;
        std::thread::sleep(Duration::from_secs(idle));
        let used = cpu_ticks(pid)?.saturating_sub(before);
        // Clock ticks are 1/100 s on Linux.
        cpu.push(used as f64 / 100.0 / idle as f64 * 100.0);
    }
    daemon.stop();

    println!(
        "mesh benchmark ({rounds} rounds, {kills} moves, {idle} s idle; wireguard-go in the lab)"
    );
    println!(
        "container → container across nodes, one keep-alive connection: mesh {:.0} µs/request vs published port {:.0} µs (ratio {:.2}); throughput mesh {:.0} MiB/s vs published {:.0} MiB/s (ratio {:.2})",
        median(&lat[0]),
        median(&lat[1]),
        median(&lat[0]) / median(&lat[1]),
        median(&tput[0]),
        median(&tput[1]),
        median(&tput[0]) / median(&tput[1])
    );
    println!(
        "names after a move: found healthy → every node answers the new address: p50 {:.2} s, max {:.2} s (target ≤ 2 s); kill → named: p50 {:.2} s, max {:.2} s",
        median(&from_healthy),
        max(&from_healthy),
        median(&from_kill),
        max(&from_kill)
    );
    println!(
        "operator idle CPU at 10 nodes, 10 containers: mesh on {:.2}% of a core, off {:.2}% (difference {:+.2} points)",
        cpu[0],
        cpu[1],
        cpu[0] - cpu[1]
    );
    Ok(())
}

fn write_fleet(
    lab: &Lab,
    dir: &Path,
    fleet: &str,
    iface: &str,
    instances: u32,
    mesh: bool,
) -> std::path::PathBuf {
    let network = if mesh {
        format!("[network]\ncidr = \"10.224.0.0/16\"\ninterface = \"{iface}\"\n")
    } else {
        String::new()
    };
    let rest = format!(
        "[lifecycle]\nlost_after = 2\n\n{network}\n[apps.blog]\ninstances = {instances}\n\
         [apps.blog.services.web]\nimage = \"{}\"\nport = 8080\nmemory = \"{WHOLE_NODE}\"\n\
         health = {{ http = \"/up\", interval = \"1s\", timeout = \"1s\", healthy_threshold = 1, unhealthy_threshold = 2 }}\n",
        lab.testapp_image
    );
    lab.own_nodes_fleet(dir, fleet, Trust::Pin, &ProxyPorts::free(), &rest)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

fn live(fleet: &str) -> Result<Vec<Node>> {
    Ok(Lab::load()
        .other_nodes
        .into_iter()
        .filter(|n| n.fleet == fleet)
        .collect())
}

fn healthy(state: &Path, count: usize, limit: Duration) -> Result<()> {
    retry(limit, || {
        let store = Store::open_existing(state)?.context("no state yet")?;
        let n = store
            .health_records()?
            .into_iter()
            .filter(|r| r.verdict.as_str() == "healthy")
            .count();
        ensure!(n == count, "{n} healthy of {count}");
        Ok(())
    })
}

/// Microseconds `testapp get URL COUNT` took in the web on `node`.
fn timed_get(node: &Node, fleet: &str, url: &str, count: u32) -> Result<u64> {
    let id = on_node(
        node,
        &format!(
            "docker ps -q --filter label=prism.fleet={fleet} --filter label=prism.service=web | head -n 1"
        ),
    )?;
    let out = Command::new("docker")
        .args([
            "exec",
            &node.container,
            "docker",
            "exec",
            id.trim(),
            "testapp",
            "get",
            url,
        ])
        .arg(count.to_string())
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "testapp get {url}: {err}");
    err.split_whitespace()
        .skip_while(|w| *w != "in")
        .nth(1)
        .and_then(|w| w.parse().ok())
        .with_context(|| format!("no time in {err:?}"))
}

/// The node running pod `instance` of the web.
fn running<'a>(nodes: &'a [Node], fleet: &str, instance: u32) -> Result<&'a Node> {
    for n in nodes {
        let ids = on_node(
            n,
            &format!(
                "docker ps -q --filter label=prism.fleet={fleet} --filter label=prism.instance={instance}"
            ),
        )
        .unwrap_or_default();
        if !ids.trim().is_empty() {
            return Ok(n);
        }
    }
    bail!("pod {instance} runs nowhere")
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = f.get(11).context("utime")?.parse()?;
    let stime: u64 = f.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}
