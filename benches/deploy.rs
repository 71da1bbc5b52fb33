//! A redeploy under load: `prism daemon` with its proxy in front of the
//! lab's test app (two instances on lab nodes), clients sending GETs
//! through it without pause while fleet.toml changes the app's spec, until
//! every container was replaced and at least PRISM_BENCH_REQUESTS (10 000)
//! requests were sent. Prints total, failed and req/s; asserts nothing.
//!
//!     cargo bench --bench deploy          (the lab must be up: lab/lab up)
//!
//! PRISM_BENCH_CONNS sets the clients (16), each with its own keep-alive
//! connection.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/deploy.rs"]
mod deploy;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use deploy::{Deploy, Load, client};

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
    let lab = common::Lab::load();
    let mut d = Deploy::start(&lab, "bench", 2, "v1");
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
    let total = stats.total.load(Ordering::Relaxed);
    let failed = stats.failed.load(Ordering::Relaxed);
    let versions = stats
        .versions
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let v1 = versions.iter().filter(|v| *v == "v1").count();
    let v2 = versions.iter().filter(|v| *v == "v2").count();
    let status = d.stop();

    println!(
        "redeploy under load: {clients} clients through prism daemon's proxy, 2 instances replaced"
    );
    println!("  requests  {total:>8}   (v1 {v1}, v2 {v2})");
    println!("  failed    {failed:>8}");
    println!(
        "  req/s     {:>8.0}   over {:.1} s",
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "  replaced in {:.1} s after the edit",
        replaced.as_secs_f64()
    );
    for f in stats
        .failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        println!("  failure: {f}");
    }
    if status != Some(0) {
        println!("  the daemon exited {status:?}");
    }
    Ok(())
}
