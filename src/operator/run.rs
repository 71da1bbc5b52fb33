//! The operator's loop: a pass every interval, again at once when a node
//! appears, leaves or changes state, or when asked (`Control::reconcile_now`),
//! until told to stop. `prism daemon` and the dashboard's in-process mode
//! both run it. Each pass's result is published on a watch channel, so the
//! proxy, the dashboard or anything else follows the fleet without polling,
//! and its plan in the store, for dashboards in other processes.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use super::{Operator, Outcome, PassError, Planned, jobs, requests};
use crate::store::{LockHolder, StoreError, now_ms};

/// What one pass saw and did.
#[derive(Clone)]
pub struct PassReport {
    /// When the pass ended (ms since the epoch).
    pub finished_ms: i64,
    pub took: Duration,
    /// What the pass observed and planned; `None` when it failed before
    /// planning (see `error`).
    pub planned: Option<Arc<Planned>>,
    pub actions: usize,
    pub failed: usize,
    pub error: Option<String>,
}

impl PassReport {
    /// Each node and its state, to notice a change between passes.
    fn node_states(&self) -> Option<BTreeSet<(String, &'static str)>> {
        self.planned.as_ref().map(|p| {
            p.views
                .iter()
                .map(|v| (v.id.clone(), v.state.as_str()))
                .collect()
        })
    }
}

/// How the outside steers a running loop, and hears from it.
pub struct Control {
    wake: Notify,
    stop: watch::Sender<bool>,
    reports: watch::Sender<Option<Arc<PassReport>>>,
}

impl Control {
    pub fn new() -> Arc<Control> {
        Arc::new(Control {
            wake: Notify::new(),
            stop: watch::Sender::new(false),
            reports: watch::Sender::new(None),
        })
    }

    /// Starts a pass now instead of at the next tick (one pending wake-up
    /// is kept if a pass is running).
    pub fn reconcile_now(&self) {
        self.wake.notify_one();
    }

    /// Ends the loop after the pass in flight, if any, has finished.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// The latest pass report, and every later one.
    pub fn reports(&self) -> watch::Receiver<Option<Arc<PassReport>>> {
        self.reports.subscribe()
    }
}

/// Runs passes until `control.stop()`. Returns an error only when the apply
/// lock was lost to another applier; a pass that failed on the world is
/// logged, reported and retried at the next tick.
pub async fn run(
    operator: &Operator,
    me: &LockHolder,
    interval: Duration,
    control: &Control,
) -> Result<(), StoreError> {
    let mut stop = control.stop.subscribe();
    let mut known: Option<BTreeSet<(String, &'static str)>> = None;
    loop {
        if *stop.borrow_and_update() {
            return Ok(());
        }
        let started = Instant::now();
        // A pass runs to its end, even when a stop comes in: actions in
        // flight finish (each has its own timeout), so no node is left
        // half-changed.
        let report = match pass(operator, me).await {
            Ok(report) => report,
            Err(PassError::Store(e @ StoreError::Locked { .. })) => return Err(e),
            Err(e) => {
                tracing::error!(error = %e, "pass failed; retrying");
                PassReport {
                    finished_ms: now_ms(),
                    took: started.elapsed(),
                    planned: None,
                    actions: 0,
                    failed: 0,
                    error: Some(e.to_string()),
                }
            }
        };
        let now = report.node_states();
        // For dashboards attached from other processes; they read it.
        if let Err(e) = operator.lock().publish_plan(&report.published()) {
            tracing::warn!(error = %e, "could not publish the pass's plan");
        }
        control.reports.send_replace(Some(Arc::new(report)));
        if *stop.borrow_and_update() {
            return Ok(());
        }
        let changed = matches!((&known, &now), (Some(before), Some(now)) if before != now);
        if now.is_some() {
            known = now;
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
            _ = control.wake.notified() => tracing::info!("reconcile requested"),
            _ = stop.changed() => return Ok(()),
        }
    }
}

/// [`run`], with what goes beside it while this process is the applier:
/// the scheduled jobs, and the server of requests from attached
/// dashboards. Both stop when the loop does.
pub async fn run_applier(
    operator: Arc<Operator>,
    me: &LockHolder,
    interval: Duration,
    control: Arc<Control>,
) -> Result<(), StoreError> {
    let mut jobs = match jobs::start(operator.clone()).await {
        Ok(jobs) => Some(jobs),
        Err(e) => {
            tracing::error!(error = %e, "scheduled jobs could not start; reconciling without them");
            None
        }
    };
    let requests = tokio::spawn(requests::serve(operator.clone(), control.clone()));
    let ran = run(&operator, me, interval, &control).await;
    requests.abort();
    if let Some(jobs) = jobs.as_mut()
        && let Err(e) = jobs.shutdown().await
    {
        tracing::warn!(error = %e, "scheduled jobs did not stop cleanly");
    }
    ran
}

async fn pass(operator: &Operator, me: &LockHolder) -> Result<PassReport, PassError> {
    operator.lock().heartbeat(me)?;
    let t = Instant::now();
    let planned = operator.observe_and_plan().await?;
    operator.route(&planned);
    for p in &planned.plan.problems {
        tracing::warn!(app = %p.pod.app, instance = p.pod.instance, "{p}");
    }
    let (mut actions, mut failed) = (0, 0);
    if planned.plan.is_empty() {
        tracing::debug!(
            took_ms = t.elapsed().as_millis() as u64,
            "pass: nothing to do"
        );
    } else {
        for c in &planned.plan.placement_changes {
            tracing::info!("{c}");
        }
        let log = |o: &Outcome| match &o.error {
            None => tracing::info!(node = %o.node, "{}", o.action),
            Some(e) => tracing::error!(node = %o.node, error = %e, "{} failed", o.action),
        };
        let outcomes = operator.apply(&planned, &log).await?;
        actions = outcomes.len();
        failed = outcomes.iter().filter(|o| o.error.is_some()).count();
        tracing::info!(
            actions,
            failed,
            took_ms = t.elapsed().as_millis() as u64,
            "pass applied"
        );
    }
    Ok(PassReport {
        finished_ms: now_ms(),
        took: t.elapsed(),
        planned: Some(Arc::new(planned)),
        actions,
        failed,
        error: None,
    })
}
