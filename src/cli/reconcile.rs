//! `prism reconcile --once`: converge, then exit. For cron: prints nothing
//! when there was nothing to do.

use std::time::{Duration, Instant};

use super::Failure;
use super::plan::node_label;
use crate::config::Config;
use crate::operator::{Operator, Outcome};
use crate::store::LockHolder;

/// A stale lock (its holder died without unlocking) is taken over after this.
const LOCK_TTL: Duration = Duration::from_secs(120);

/// Pause between passes while waiting for new containers to be ready.
const SETTLE: Duration = Duration::from_secs(1);

/// Exit status of a run that did not fail outright.
pub enum Converged {
    Yes,
    /// Some action failed, or the timeout came first.
    No,
}

pub async fn once(config: Config, timeout: Duration) -> Result<Converged, Failure> {
    let operator = Operator::new(config).await?;
    let me = LockHolder::this_process("reconcile --once");
    operator.lock().try_lock(&me, LOCK_TTL)?;
    let result = converge(&operator, &me, timeout).await;
    let unlocked = operator.lock().unlock(&me);
    let converged = result?;
    unlocked?;
    Ok(converged)
}

async fn converge(
    operator: &Operator,
    me: &LockHolder,
    timeout: Duration,
) -> Result<Converged, Failure> {
    let deadline = Instant::now() + timeout;
    loop {
        operator.lock().heartbeat(me)?;
        let planned = operator.observe_and_plan().await?;
        for p in &planned.plan.problems {
            eprintln!("{p}");
        }
        let plan = &planned.plan;
        if plan.is_empty() && plan.waiting.is_empty() {
            return Ok(Converged::Yes);
        }
        // With actions, apply them; without, only new containers are still
        // to pass their checks. Either way, look again after a pause.
        if !plan.is_empty() {
            for c in &plan.placement_changes {
                println!("{c}");
            }
            let report = |o: &Outcome| {
                let node = node_label(&planned.nodes, &o.node);
                match &o.error {
                    None => println!("{node}: {}", o.action),
                    Some(e) => eprintln!("{node}: {}: FAILED: {e}", o.action),
                }
            };
            let outcomes = operator.apply(&planned, &report).await?;
            // A preparing node's failed pull only lets it go ready: the
            // next pass places its pods, whose own pulls then fail.
            if outcomes.iter().any(|o| o.error.is_some() && !o.prepare) {
                return Ok(Converged::No);
            }
        }
        if Instant::now() + SETTLE >= deadline {
            for w in &plan.waiting {
                eprintln!("waiting: {w}");
            }
            eprintln!(
                "not converged after {}: the next run goes on from here",
                humantime::format_duration(timeout)
            );
            return Ok(Converged::No);
        }
        tokio::time::sleep(SETTLE).await;
    }
}
