//! Scheduled jobs from fleet.toml, run by the daemon: at each tick a
//! one-off container on the node of the app's first instance; a run still
//! going at the next tick makes that tick skip (no overlap).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_cron_scheduler::{Job as CronJob, JobScheduler, JobSchedulerError};

use super::pass::Operator;
use crate::reconcile::{job_run, scheduler_cron};
use crate::ssh::{ExecLimits, SshError};
use crate::store::{Level, NewEvent, now_ms};

/// A run with no `timeout` in fleet.toml is stopped after this.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

/// Schedules every job of every app and starts the scheduler.
pub async fn start(operator: Arc<Operator>) -> Result<JobScheduler, JobSchedulerError> {
    let scheduler = JobScheduler::new().await?;
    for (app, spec) in &operator.config.fleet.apps {
        for name in spec.jobs.keys() {
            let running = Arc::new(AtomicBool::new(false));
            let (op, app, name) = (operator.clone(), app.clone(), name.clone());
            let Some(schedule) = spec.jobs.get(&name).map(|j| scheduler_cron(&j.schedule)) else {
                continue;
            };
            let job = CronJob::new_async(schedule, move |_, _| {
                let (op, app, name, running) =
                    (op.clone(), app.clone(), name.clone(), running.clone());
                Box::pin(async move {
                    if running.swap(true, Ordering::SeqCst) {
                        event(
                            &op,
                            &app,
                            Level::Warn,
                            "job.skipped",
                            format!(
                                "job {app}/{name}: the previous run still goes; this tick is skipped"
                            ),
                        );
                        return;
                    }
                    run(&op, &app, &name).await;
                    running.store(false, Ordering::SeqCst);
                })
            })?;
            scheduler.add(job).await?;
        }
    }
    scheduler.start().await?;
    Ok(scheduler)
}

async fn run(op: &Operator, app: &str, name: &str) {
    let Some(job) = op.config.fleet.apps.get(app).and_then(|a| a.jobs.get(name)) else {
        return;
    };
    let node = match op.node_of(app, 0) {
        Ok(Some(node)) => node,
        Ok(None) => {
            event(
                op,
                app,
                Level::Warn,
                "job.skipped",
                format!("job {app}/{name}: {app}/0 is not placed on a node yet"),
            );
            return;
        }
        Err(e) => {
            event(
                op,
                app,
                Level::Error,
                "job.failed",
                format!("job {app}/{name}: {e}"),
            );
            return;
        }
    };
    let spec = match job_run(&op.desired, app, name, job, now_ms() / 1000) {
        Ok(spec) => spec,
        Err(e) => {
            event(
                op,
                app,
                Level::Error,
                "job.failed",
                format!("job {app}/{name}: {e}"),
            );
            return;
        }
    };
    let timeout = job.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0);
    let target = node.target();
    let limits = ExecLimits {
        timeout,
        max_output: 1 << 20,
    };
    let stdin = spec.env_file.as_ref().map(|s| s.expose().as_bytes());
    let started = std::time::Instant::now();
    let result = op.pool.exec(&target, &spec.argv, stdin, limits).await;
    let took = humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()));
    match result {
        Ok(out) if out.success() => event(
            op,
            app,
            Level::Info,
            "job.ok",
            format!("job {app}/{name} on {} exited 0 after {took}", node.name),
        ),
        Ok(out) => {
            event(
                op,
                app,
                Level::Error,
                "job.failed",
                format!(
                    "job {app}/{name} on {} after {took}: {}",
                    node.name,
                    out.brief()
                ),
            );
        }
        Err(e) => {
            if matches!(e, SshError::Timeout { .. }) {
                // The run outlived its timeout: stop its container too.
                let _ = op
                    .pool
                    .exec(
                        &target,
                        &remove_argv_name(&spec.name),
                        None,
                        ExecLimits::default(),
                    )
                    .await;
            }
            event(
                op,
                app,
                Level::Error,
                "job.failed",
                format!("job {app}/{name} on {}: {e}", node.name),
            );
        }
    }
}

/// `docker rm -f -- NAME`: a job's container is known by the name given.
fn remove_argv_name(name: &str) -> Vec<String> {
    ["docker", "rm", "-f", "--", name].map(String::from).into()
}

fn event(op: &Operator, app: &str, level: Level, kind: &str, message: String) {
    match level {
        Level::Error => tracing::error!(app, "{message}"),
        Level::Warn => tracing::warn!(app, "{message}"),
        Level::Info => tracing::info!(app, "{message}"),
    }
    if let Err(e) = op
        .lock()
        .record_event(&NewEvent::new(level, kind, message).app(app.to_owned()))
    {
        tracing::warn!(error = %e, "could not record a job event");
    }
}
