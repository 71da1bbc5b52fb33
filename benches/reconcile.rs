//! Reconcile benchmark on the lab: 10 nodes of the bench's own fleet
//! (`lab/lab add --fleet bench`, found by the tag prism:fleet=bench) and
//! 100 containers (10 apps × 5 instances × web + worker). Times, through
//! the real `prism` binary, a cold full placement (`reconcile --once` from
//! nothing until converged) and no-op `reconcile --once` runs, and sets
//! the no-op beside the slowest node's probe and the sum of all probes.
//! Removes its containers at the end. Prints figures; asserts nothing.
//!
//!     make bench-reconcile    (adds the bench nodes, runs this, preempts them)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use prism::cloud::Discovery;
use prism::config::Config;
use prism::observe::{ProbeLimits, probe};
use prism::ssh::{Pool, SshSettings};

const FLEET: &str = "bench";
const APPS: usize = 10;
const INSTANCES: usize = 5;
const NOOP_RUNS: usize = 9;

fn lab_dir() -> PathBuf {
    match std::env::var_os("PRISM_LAB_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join(".lab"),
    }
}

/// The lab's fleet.toml as fleet `bench` on the nodes tagged
/// prism:fleet=bench, its own state file in `dir`, and `apps`.
fn fleet_file(dir: &Path, apps: &str) -> anyhow::Result<PathBuf> {
    let lab = lab_dir();
    let text = std::fs::read_to_string(lab.join("fleet.toml"))
        .with_context(|| format!("the lab's fleet.toml in {} (lab/lab up)", lab.display()))?;
    let at = |p: &Path| format!("{:?}", p.display().to_string());
    let text = text
        .replace("name = \"lab\"", &format!("name = {FLEET:?}"))
        .replace(
            "state = \"state.db\"",
            &format!("state = {}", at(&dir.join("state.db"))),
        )
        .replace(
            "identity = \"id_ed25519\"",
            &format!("identity = {}", at(&lab.join("id_ed25519"))),
        )
        .replace(
            "known_hosts = \"known_hosts\"",
            &format!("known_hosts = {}", at(&lab.join("known_hosts"))),
        )
        .replace(
            "[discovery]\n",
            &format!("[discovery]\ntags = {{ \"prism:fleet\" = {FLEET:?} }}\n"),
        );
    let cut = text.find("[apps.").unwrap_or(text.len());
    let file = dir.join("fleet.toml");
    std::fs::write(&file, format!("{}\n{apps}", &text[..cut]))?;
    Ok(file)
}

fn apps(image: &str) -> String {
    (0..APPS)
        .map(|i| {
            format!(
                r#"
[apps.app{i}]
instances = {INSTANCES}
[apps.app{i}.services.web]
image = "{image}"
port = 8080
memory = "16M"
[apps.app{i}.services.worker]
image = "{image}"
command = ["sh", "-c", "while true; do sleep 60; done"]
memory = "16M"
"#
            )
        })
        .collect()
}

/// `prism -c FILE reconcile --once`: its time, exit code and output.
fn reconcile(file: &Path) -> anyhow::Result<(Duration, Option<i32>, String)> {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_prism"))
        .args(["-c"])
        .arg(file)
        .args(["reconcile", "--once", "--timeout", "300s"])
        .env("AWS_ACCESS_KEY_ID", "lab")
        .env("AWS_SECRET_ACCESS_KEY", "lab")
        .env_remove("PRISM_CONFIG")
        .output()
        .context("run prism")?;
    let elapsed = t.elapsed();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((elapsed, out.status.code(), text))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let image = "172.31.250.2:5000/prism/testapp:1";
    let file = fleet_file(dir.path(), &apps(image))?;
    let config = Config::load(&file)?;
    let nodes = Discovery::from_config(&config).await.nodes().await?;
    if nodes.is_empty() {
        bail!(
            "no node tagged prism:fleet={FLEET}: lab/lab add --fleet {FLEET} (make bench-reconcile does)"
        );
    }
    println!(
        "reconcile benchmark: {} nodes of fleet {FLEET}, {} containers ({APPS} apps x {INSTANCES} instances x 2 services)",
        nodes.len(),
        APPS * INSTANCES * 2
    );

    // From nothing until a run exits 0 (converged); under load a run may
    // end with failed actions (exit 1), and the next goes on from there.
    let mut cold = Duration::ZERO;
    let mut runs = Vec::new();
    for _ in 0..5 {
        let (t, code, out) = reconcile(&file)?;
        cold += t;
        let done = out.lines().filter(|l| l.contains(": + ")).count();
        let failed: Vec<&str> = out.lines().filter(|l| l.contains("FAILED")).collect();
        runs.push(format!(
            "{} exit {code:?} ({done} actions, {} failed)",
            ms(t),
            failed.len()
        ));
        for f in failed.iter().take(3) {
            println!("  {f}");
        }
        if code == Some(0) {
            break;
        }
    }
    println!(
        "cold full placement (reconcile --once from nothing to converged): {}  runs: {}",
        ms(cold),
        runs.join("; ")
    );

    let mut noop = Vec::with_capacity(NOOP_RUNS);
    for _ in 0..NOOP_RUNS {
        let (t, code, out) = reconcile(&file)?;
        if code != Some(0) || !out.is_empty() {
            println!("a no-op run was not one: exit {code:?}\n{out}");
        }
        noop.push(t);
    }
    noop.sort();
    println!(
        "no-op reconcile --once x{NOOP_RUNS}: p50 {}  max {}",
        ms(noop[NOOP_RUNS / 2]),
        ms(noop[NOOP_RUNS - 1])
    );

    // What one node's probe costs alone (fresh connection, as each
    // reconcile --once process makes), against the no-op's time.
    let warm_pool = Pool::new(SshSettings::from_config(&config)?, None);
    let limits = ProbeLimits::default();
    let mut alone = Vec::new();
    for node in &nodes {
        let fresh = Pool::new(SshSettings::from_config(&config)?, None);
        let t = Instant::now();
        probe(&fresh, &node.target(), FLEET, limits).await;
        let cold = t.elapsed();
        let mut warm = Vec::new();
        for _ in 0..4 {
            let t = Instant::now();
            probe(&warm_pool, &node.target(), FLEET, limits).await;
            warm.push(t.elapsed());
        }
        // The first connects; the median of the other three.
        let mut warm = warm[1..].to_vec();
        warm.sort();
        alone.push((cold, warm[1]));
    }
    let slowest_cold = alone.iter().map(|a| a.0).max().unwrap_or_default();
    let sum_cold: Duration = alone.iter().map(|a| a.0).sum();
    let slowest_warm = alone.iter().map(|a| a.1).max().unwrap_or_default();
    println!(
        "one node's probe alone: slowest {} with connect ({} warm); sum over {} nodes {} with connect",
        ms(slowest_cold),
        ms(slowest_warm),
        nodes.len(),
        ms(sum_cold)
    );
    println!(
        "no-op p50 / slowest node (with connect): {:.1}x; / sum of nodes: {:.2}x",
        noop[NOOP_RUNS / 2].as_secs_f64() / slowest_cold.as_secs_f64().max(1e-9),
        noop[NOOP_RUNS / 2].as_secs_f64() / sum_cold.as_secs_f64().max(1e-9)
    );

    // Clean up: the fleet without apps removes every container and network.
    let empty = fleet_file(dir.path(), "")?;
    let (t, code, _) = reconcile(&empty)?;
    println!(
        "remove all (reconcile --once with no apps): {}  exit {code:?}",
        ms(t)
    );
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
