//! `prism daemon`: discovery and reconcile in a loop, with logs, until
//! SIGTERM or SIGINT.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};

use super::Failure;
use crate::config::Config;
use std::sync::Arc;

use crate::operator::{Operator, Outcome, Planned, start_jobs};
use crate::store::LockHolder;

/// A daemon that stops heartbeating for this long is presumed dead.
const LOCK_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

pub fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PRISM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

pub async fn run(config: Config, interval: Duration) -> Result<(), Failure> {
    let operator = Arc::new(Operator::new(config).await?);
    let me = LockHolder::this_process("daemon");
    operator.lock().try_lock(&me, LOCK_TTL)?;
    let mut jobs = match start_jobs(operator.clone()).await {
        Ok(jobs) => Some(jobs),
        Err(e) => {
            tracing::error!(error = %e, "scheduled jobs could not start; reconciling without them");
            None
        }
    };
    tracing::info!(
        fleet = %operator.desired.fleet,
        interval = %humantime::format_duration(interval),
        pid = me.pid,
        "daemon started"
    );
    let result = serve(&operator, &me, interval).await;
    if let Some(jobs) = jobs.as_mut()
        && let Err(e) = jobs.shutdown().await
    {
        tracing::warn!(error = %e, "scheduled jobs did not stop cleanly");
    }
    let unlocked = operator.lock().unlock(&me);
    if let Err(e) = &unlocked {
        tracing::warn!(error = %e, "could not release the apply lock");
    }
    tracing::info!("daemon stopped");
    result
}

async fn serve(operator: &Operator, me: &LockHolder, interval: Duration) -> Result<(), Failure> {
    let mut term = signal(SignalKind::terminate()).map_err(Failure::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Failure::Runtime)?;
    let mut known: Option<BTreeSet<(String, &'static str)>> = None;
    loop {
        let started = Instant::now();
        // A pass runs to its end: actions in flight finish (each has its
        // own timeout) so no node is left half-changed by a stop.
        let pass = pass(operator, me);
        tokio::pin!(pass);
        let mut stopping = false;
        let nodes = loop {
            tokio::select! {
                result = &mut pass => break result,
                _ = term.recv(), if !stopping => {
                    tracing::info!("SIGTERM: finishing the pass in flight, then stopping");
                    stopping = true;
                }
                _ = int.recv(), if !stopping => {
                    tracing::info!("SIGINT: finishing the pass in flight, then stopping");
                    stopping = true;
                }
            }
        };
        let nodes = match nodes {
            Ok(nodes) => Some(nodes),
            // The lock lost to another applier ends the daemon; a pass
            // that failed on the world is logged and retried.
            Err(Failure::Store(e @ crate::store::StoreError::Locked { .. })) => {
                return Err(Failure::Store(e));
            }
            Err(e) => {
                tracing::error!(error = %e, "pass failed; retrying");
                None
            }
        };
        if stopping {
            return Ok(());
        }
        // A node that appeared, left or changed state: plan again at once.
        let changed = match (&known, &nodes) {
            (Some(before), Some(now)) => before != now,
            _ => false,
        };
        if nodes.is_some() {
            known = nodes;
        }
        if changed {
            tracing::info!("nodes changed: reconciling again now");
            continue;
        }
        let wait = operator
            .next_pass(interval)
            .saturating_sub(started.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
        }
    }
}

/// One pass; returns the nodes and their states, to notice changes.
async fn pass(
    operator: &Operator,
    me: &LockHolder,
) -> Result<BTreeSet<(String, &'static str)>, Failure> {
    operator.lock().heartbeat(me)?;
    let t = Instant::now();
    let planned: Planned = operator.observe_and_plan().await?;
    for p in &planned.plan.problems {
        tracing::warn!(app = %p.pod.app, instance = p.pod.instance, "{p}");
    }
    if !planned.plan.is_empty() {
        for c in &planned.plan.placement_changes {
            tracing::info!("{c}");
        }
        let log = |o: &Outcome| match &o.error {
            None => tracing::info!(node = %o.node, "{}", o.action),
            Some(e) => tracing::error!(node = %o.node, error = %e, "{} failed", o.action),
        };
        let outcomes = operator.apply(&planned, &log).await?;
        tracing::info!(
            actions = outcomes.len(),
            failed = outcomes.iter().filter(|o| o.error.is_some()).count(),
            took_ms = t.elapsed().as_millis() as u64,
            "pass applied"
        );
    } else {
        tracing::debug!(
            took_ms = t.elapsed().as_millis() as u64,
            "pass: nothing to do"
        );
    }
    Ok(planned
        .views
        .iter()
        .map(|v| (v.id.clone(), v.state.as_str()))
        .collect())
}
