//! Zero failed requests through a redeploy and through a preemption with
//! notice: `prism daemon` with its proxy in front of the lab's test app (two
//! instances), clients sending GETs by Host header through it without
//! pause. Prints, per phase, total and failed requests (any answer but 200,
//! or no answer) and req/s; asserts nothing.
//!
//! 1. Redeploy, on the shared lab nodes: fleet.toml changes the app's spec;
//!    load until every container was replaced and at least
//!    PRISM_BENCH_REQUESTS (10 000) requests were sent.
//! 2. Preemption with notice, on three nodes of its own (`lab/lab add
//!    --fleet`; spare capacity for the two instances): `lab/lab notice` the
//!    node holding an instance, 30 s later `lab/lab preempt` it; load until
//!    its pod is healthy elsewhere, the node is gone and at least as many
//!    requests were sent. Also prints the seconds from the notice to the
//!    node draining, the old instance drained by the proxy and stopped, and
//!    its replacement healthy (Prism's checks, from the state store).
//!
//!     cargo bench --profile dev --bench deploy     (the lab must be up)
//!
//! 3. Deploys through the API: `prism deploy --remote` of a new image (the
//!    lab's testapp:1 and :2 in turn), 10 times; per deploy the seconds from
//!    the request to the new image answering alone through the proxy, from
//!    both instances (polled every 50 ms). Prints p50 and max.
//!
//! PRISM_BENCH_CONNS sets the clients (16), each with its own keep-alive
//! connection; PRISM_BENCH_PHASES `redeploy`, `notice`, `api` or all
//! (default).
//! The daemons' logs go to target/bench-deploy/.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/deploy.rs"]
mod deploy;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use common::{Lab, OwnNodes, lab_cmd};
use deploy::{Deploy, Load, Stats, client};
use prism::store::Store;

/// How long before the kill the notice comes, as the issue asks.
const NOTICE: Duration = Duration::from_secs(30);

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("a runtime")?
        .block_on(run())
}

async fn run() -> Result<()> {
    let clients = env_num("PRISM_BENCH_CONNS", 16) as usize;
    let want = env_num("PRISM_BENCH_REQUESTS", 10_000);
    let phases = std::env::var("PRISM_BENCH_PHASES").unwrap_or_default();
    let logs = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("bench-deploy");
    std::fs::create_dir_all(&logs).context("create target/bench-deploy")?;
    let lab = Lab::load();
    let mut totals = (0, 0);
    if phases.is_empty() || phases.contains("redeploy") {
        let (total, failed) = redeploy(&lab, clients, want, &logs).await?;
        totals = (totals.0 + total, totals.1 + failed);
    }
    if phases.is_empty() || phases.contains("notice") {
        let (total, failed) = preemption(&lab, clients, want, &logs).await?;
        totals = (totals.0 + total, totals.1 + failed);
    }
    if phases.is_empty() || phases.contains("api") {
        api_deploys(&lab, &logs).await?;
    }
    println!("all phases: {} requests, {} failed", totals.0, totals.1);
    Ok(())
}

/// Phase 1: a spec change replaces both instances under load.
async fn redeploy(lab: &Lab, clients: usize, want: u64, logs: &Path) -> Result<(u64, u64)> {
    let mut d = Deploy::start(lab, "bench", 2, "v1");
    let http = client();
    d.wait_serving(&http, "v1", Duration::from_secs(120))
        .await?;
    let old = tokio::task::block_in_place(|| d.containers());

    let started = Instant::now();
    let load = Load::start(&d.addr, &d.host, clients, Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let edited = Instant::now();
    d.write("v2");
    d.wait_replaced(&old, Duration::from_secs(180)).await?;
    let replaced = edited.elapsed();
    // Go on until enough requests were sent, and a moment on v2 alone.
    tokio::time::sleep(Duration::from_secs(1)).await;
    while load.stats.total.load(Ordering::Relaxed) < want {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = load.stop().await;
    let elapsed = started.elapsed();
    let versions = stats
        .versions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let v1 = versions.iter().filter(|v| *v == "v1").count();
    let v2 = versions.iter().filter(|v| *v == "v2").count();
    let status = d.stop();
    let log = save_logs(&d, logs, "redeploy.log")?;

    println!(
        "redeploy under load: {clients} clients through prism daemon's proxy, 2 instances replaced"
    );
    let counts = print_stats(&stats, elapsed, &format!("(v1 {v1}, v2 {v2})"));
    println!(
        "  replaced in {:.1} s after the edit",
        replaced.as_secs_f64()
    );
    print_end(status, &log);
    Ok(counts)
}

/// Phase 2: a spot notice, then the kill 30 s later, on nodes of its own.
async fn preemption(lab: &Lab, clients: usize, want: u64, logs: &Path) -> Result<(u64, u64)> {
    // Declared before the daemon, so dropped after it: the nodes go last.
    let mut nodes = OwnNodes::new(format!("dp{}", std::process::id()));
    let added = tokio::task::block_in_place(|| nodes.add_many::<3>())?;
    let mut d = Deploy::start_on(lab, "notice", 2, "v1", Some(&nodes.fleet));
    let http = client();
    // Fresh nodes pull the image first.
    d.wait_serving(&http, "v1", Duration::from_secs(240))
        .await?;
    let state = d.state();
    let before = tokio::task::block_in_place(|| d.containers());
    let victim_name = before
        .first()
        .and_then(|l| l.split_whitespace().next())
        .context("no container on the bench's nodes")?;
    let victim = added
        .iter()
        .find(|n| n.name == victim_name)
        .with_context(|| format!("{victim_name} is not one of the bench's nodes"))?
        .clone();
    let victim_id = victim
        .instance_id
        .clone()
        .with_context(|| format!("{} has no EC2 instance", victim.name))?;
    let pods: Vec<u32> = store(&state)?
        .placements()?
        .into_iter()
        .filter(|p| p.node_id == victim_id)
        .map(|p| p.instance)
        .collect();
    if pods.is_empty() {
        bail!("no pod is placed on {}", victim.name);
    }

    let started = Instant::now();
    let load = Load::start(&d.addr, &d.host, clients, Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let noticed = Instant::now();
    let seconds = NOTICE.as_secs().to_string();
    tokio::task::block_in_place(|| lab_cmd(&["notice", &victim.name, "--in", &seconds]))?;
    let mut t = Times::default();
    let drained_line = format!("\"endpoint\":\"{}:", victim.address);
    let check_stopped = format!(
        "docker ps -aq --filter label=prism.fleet={}",
        d.name.as_str()
    );
    loop {
        let now = noticed.elapsed();
        if t.draining.is_none() && node_state(&state, &victim_id).as_deref() == Some("draining") {
            t.draining = Some(now);
        }
        if t.drained.is_none()
            && d.logs()
                .iter()
                .any(|l| l.contains("proxy: drained") && l.contains(&drained_line))
        {
            t.drained = Some(now);
        }
        if t.healthy.is_none() && moved(&state, &victim_id, &pods) {
            t.healthy = Some(now);
        }
        if t.stopped.is_none() && t.killed.is_none() {
            let left = tokio::task::block_in_place(|| lab.ssh(&victim.address, &check_stopped));
            if left.is_ok_and(|out| out.trim().is_empty()) {
                t.stopped = Some(now);
            }
        }
        if t.killed.is_none() && now >= NOTICE {
            tokio::task::block_in_place(|| nodes.preempt(&victim.name))?;
            t.killed = Some(noticed.elapsed());
        }
        if t.gone.is_none()
            && t.killed.is_some()
            && matches!(
                node_state(&state, &victim_id).as_deref(),
                Some("lost" | "gone")
            )
        {
            t.gone = Some(now);
        }
        let sent = load.stats.total.load(Ordering::Relaxed);
        if t.healthy.is_some() && t.gone.is_some() && sent >= want {
            break;
        }
        if now > NOTICE + Duration::from_secs(150) {
            let stats = load.stop().await;
            let log = save_logs(&d, logs, "notice.log")?;
            print_stats(&stats, started.elapsed(), "");
            bail!(
                "the preemption did not settle in {:?} after the notice: {t:?}; see {}",
                NOTICE + Duration::from_secs(150),
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A moment on the survivors alone.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = load.stop().await;
    let elapsed = started.elapsed();
    let status = d.stop();
    let log = save_logs(&d, logs, "notice.log")?;

    println!(
        "preemption with notice under load: {clients} clients through prism daemon's proxy, \
         3 nodes of its own, 2 instances; {} noticed, preempted {} s later",
        victim.name,
        NOTICE.as_secs()
    );
    let counts = print_stats(&stats, elapsed, "");
    let secs =
        |d: Option<Duration>| d.map_or("never".into(), |d| format!("{:.1} s", d.as_secs_f64()));
    println!("  after the notice:");
    println!("    node draining           {}", secs(t.draining));
    println!("    replacement healthy     {}", secs(t.healthy));
    println!("    old instance drained    {}", secs(t.drained));
    println!("    old instance stopped    {}", secs(t.stopped));
    println!("    node preempted          {}", secs(t.killed));
    println!("    node recorded lost/gone {}", secs(t.gone));
    print_end(status, &log);
    Ok(counts)
}

/// Phase 3: deploy latency through the API, request to the new image
/// serving alone through the proxy.
async fn api_deploys(lab: &Lab, logs: &Path) -> Result<()> {
    const DEPLOYS: usize = 10;
    let v2 = lab
        .testapp_variants
        .get("2")
        .context("the lab has no testapp:2: lab/lab up makes it")?
        .clone();
    let port = common::free_port();
    let extra = format!("[api]\nlisten = \"127.0.0.1:{port}\"\n");
    let mut d = Deploy::start_with(lab, "apibench", 2, "", None, &extra);
    let http = client();
    let file = d.file().to_str().context("utf-8 path")?.to_owned();
    let out =
        common::prism_command(&["-c", &file, "token", "create", "bench", "--scope", "deploy"])
            .output()?;
    anyhow::ensure!(
        out.status.success(),
        "token create: {}",
        common::text(&out.stderr)
    );
    let token = common::text(&out.stdout).trim().to_owned();
    // Serving the first image (which names no app) from both instances.
    until_serving(&d, &http, None, Duration::from_secs(120)).await?;
    let mut took = Vec::new();
    for i in 0..DEPLOYS {
        let (image, app) = if i % 2 == 0 {
            (v2.as_str(), Some("image-2"))
        } else {
            (lab.testapp_image.as_str(), None)
        };
        let asked = Instant::now();
        let out = common::prism_command(&["deploy", "web", &format!("web={image}")])
            .args(["--remote", &format!("http://127.0.0.1:{port}")])
            .env("PRISM_TOKEN", &token)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "deploy: {}",
            common::text(&out.stderr)
        );
        until_serving(&d, &http, app, Duration::from_secs(180)).await?;
        took.push(asked.elapsed());
        // Old containers drained and gone before the next.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let status = d.stop();
    let log = save_logs(&d, logs, "api.log")?;
    took.sort();
    let secs = |d: Duration| d.as_secs_f64();
    println!(
        "deploys through the API: {DEPLOYS} x `prism deploy --remote` of a new image, 2 instances"
    );
    println!(
        "  request -> new image serving alone through the proxy: p50 {:.2} s, max {:.2} s",
        secs(took[DEPLOYS / 2]),
        secs(took[DEPLOYS - 1])
    );
    print_end(status, &log);
    Ok(())
}

/// Until only `app` answers through the proxy, from every instance (eight
/// answers in a row).
async fn until_serving(
    d: &Deploy<'_>,
    http: &deploy::HttpClient,
    app: Option<&str>,
    limit: Duration,
) -> Result<()> {
    let started = Instant::now();
    loop {
        let mut seen = std::collections::BTreeSet::new();
        let mut alone = true;
        for _ in 0..8 {
            match deploy::get(http, &d.addr, &d.host, "/").await {
                Ok((200, body)) if deploy::field(&body, "app").as_deref() == app => {
                    seen.insert(deploy::field(&body, "hostname"));
                }
                _ => {
                    alone = false;
                    break;
                }
            }
        }
        if alone && seen.len() == d.instances as usize {
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!("{app:?} not served alone after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Seconds from the notice to each step, as the bench saw them (polled
/// every 200 ms).
#[derive(Debug, Default)]
struct Times {
    draining: Option<Duration>,
    drained: Option<Duration>,
    stopped: Option<Duration>,
    healthy: Option<Duration>,
    killed: Option<Duration>,
    gone: Option<Duration>,
}

fn store(state: &Path) -> Result<Store> {
    Store::open_existing(state)?.context("no state file yet")
}

/// The node's recorded state; `None` while the store is busy.
fn node_state(state: &Path, id: &str) -> Option<String> {
    store(state)
        .ok()?
        .node(id)
        .ok()?
        .map(|n| n.state.as_str().to_owned())
}

/// Whether each of the app's `pods` is healthy on a node other than `from`.
fn moved(state: &Path, from: &str, pods: &[u32]) -> bool {
    let Ok(records) = store(state).and_then(|s| s.health_records().map_err(Into::into)) else {
        return false;
    };
    pods.iter().all(|i| {
        records
            .iter()
            .any(|r| r.instance == *i && r.node_id != from && r.verdict.as_str() == "healthy")
    })
}

fn save_logs(d: &Deploy, dir: &Path, name: &str) -> Result<PathBuf> {
    let file = dir.join(name);
    std::fs::write(&file, d.logs().join("\n"))
        .with_context(|| format!("write {}", file.display()))?;
    Ok(file)
}

/// Prints the load's figures; returns (total, failed).
fn print_stats(stats: &Stats, elapsed: Duration, extra: &str) -> (u64, u64) {
    let total = stats.total.load(Ordering::Relaxed);
    let failed = stats.failed.load(Ordering::Relaxed);
    println!("  requests  {total:>8}   {extra}");
    println!("  failed    {failed:>8}");
    println!(
        "  req/s     {:>8.0}   over {:.1} s",
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    for f in stats
        .failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        println!("  failure: {f}");
    }
    (total, failed)
}

fn print_end(status: Option<i32>, log: &Path) {
    if status != Some(0) {
        println!("  the daemon exited {status:?}");
    }
    println!("  daemon log: {}", log.display());
}
