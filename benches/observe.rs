//! Observe benchmark on the lab: a cold pass (connect + probe every node)
//! and warm passes over the pooled connections, and how a pass's time
//! compares with its slowest node's. Prints figures; asserts nothing.
//!
//!     lab/lab up --nodes 10 && . .lab/env && cargo bench --bench observe

use std::path::PathBuf;
use std::time::{Duration, Instant};

use prism::cloud::{Discovery, Node};
use prism::config::Config;
use prism::observe::{ProbeLimits, Probed, probe};
use prism::operator::observe;
use prism::ssh::{Pool, SshSettings};

const WARM_PASSES: usize = 30;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let file = std::env::var_os("PRISM_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".lab/fleet.toml"));
    let config = Config::load(&file)?;
    let fleet = config.fleet.fleet.name.clone();
    let nodes = Discovery::from_config(&config).await.nodes().await?;
    let limits = ProbeLimits::default();
    println!(
        "observe benchmark: {} nodes of fleet {fleet} ({})",
        nodes.len(),
        file.display()
    );

    // Known-hosts mode needs no state store; pin mode would write one.
    let pool = Pool::new(SshSettings::from_config(&config)?, None);
    let t = Instant::now();
    let cold = observe(&pool, &nodes, &fleet, limits).await;
    let cold_time = t.elapsed();
    let ready = cold
        .iter()
        .filter(|o| matches!(o.probed, Probed::Ready { .. }))
        .count();
    println!(
        "cold pass (connect + probe): {}  ({ready}/{} ready)",
        ms(cold_time),
        nodes.len()
    );
    for o in cold.iter().filter(|o| o.probed.condition().is_some()) {
        if let Some(c) = o.probed.condition() {
            println!("  {} not ready: {c}", o.node.name);
        }
    }

    let mut warm = Vec::with_capacity(WARM_PASSES);
    for _ in 0..WARM_PASSES {
        let t = Instant::now();
        observe(&pool, &nodes, &fleet, limits).await;
        warm.push(t.elapsed());
    }
    warm.sort();
    println!(
        "warm pass x{WARM_PASSES}: p50 {}  p90 {}  max {}",
        ms(warm[WARM_PASSES / 2]),
        ms(warm[WARM_PASSES * 9 / 10]),
        ms(warm[WARM_PASSES - 1])
    );

    // Does a pass cost the slowest node, or the sum? Time each node alone,
    // then passes over growing subsets.
    let mut alone = Vec::new();
    for node in &nodes {
        let mut times = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            probe(&pool, &node.target(), &fleet, limits).await;
            times.push(t.elapsed());
        }
        times.sort();
        alone.push((node.name.clone(), times[2]));
    }
    let slowest = alone.iter().map(|(_, t)| *t).max().unwrap_or_default();
    let sum: Duration = alone.iter().map(|(_, t)| *t).sum();
    println!(
        "one node alone (median of 5): slowest {}, sum over all nodes {}",
        ms(slowest),
        ms(sum)
    );
    for n in [1, 3, nodes.len() / 2, nodes.len()] {
        if n == 0 || n > nodes.len() {
            continue;
        }
        let subset: Vec<Node> = nodes[..n].to_vec();
        let mut times = Vec::new();
        for _ in 0..9 {
            let t = Instant::now();
            observe(&pool, &subset, &fleet, limits).await;
            times.push(t.elapsed());
        }
        times.sort();
        println!("warm pass over {n:>2} nodes: median {}", ms(times[4]));
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
