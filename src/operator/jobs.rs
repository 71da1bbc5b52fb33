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
        for (name, job) in &spec.jobs {
            let running = Arc::new(AtomicBool::new(false));
            let (op, app, name) = (operator.clone(), app.clone(), name.clone());
            let job = CronJob::new_async(scheduler_cron(&job.schedule), move |_, _| {
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

/// How one tick of a job ended, in words for its event.
enum End {
    Ok(String),
    Skipped(String),
    Failed(String),
}

async fn run(op: &Operator, app: &str, name: &str) {
    let (level, kind, message) = match attempt(op, app, name).await {
        End::Ok(m) => (Level::Info, "job.ok", m),
        End::Skipped(m) => (Level::Warn, "job.skipped", m),
        End::Failed(m) => (Level::Error, "job.failed", m),
    };
    event(op, app, level, kind, message);
}

async fn attempt(op: &Operator, app: &str, name: &str) -> End {
    let Some(job) = op.config.fleet.apps.get(app).and_then(|a| a.jobs.get(name)) else {
        return End::Skipped(format!("job {app}/{name} is no longer in fleet.toml"));
    };
    let node = match op.node_of(app, 0) {
        Ok(Some(node)) => node,
        Ok(None) => {
            return End::Skipped(format!(
                "job {app}/{name}: {app}/0 is not placed on a node yet"
            ));
        }
        Err(e) => return End::Failed(format!("job {app}/{name}: {e}")),
    };
    let spec = match job_run(&op.desired, app, name, job, now_ms() / 1000) {
        Ok(spec) => spec,
        Err(e) => return End::Failed(format!("job {app}/{name}: {e}")),
    };
    let target = node.target();
    let limits = ExecLimits {
        timeout: job.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0),
        max_output: 1 << 20,
    };
    let stdin = spec.env_file.as_ref().map(|s| s.expose().as_bytes());
    let started = std::time::Instant::now();
    let result = op.pool.exec(&target, &spec.argv, stdin, limits).await;
    let took = humantime::format_duration(Duration::from_secs(started.elapsed().as_secs()));
    let on = format!("job {app}/{name} on {}", node.name);
    match result {
        Ok(out) if out.success() => End::Ok(format!("{on} exited 0 after {took}")),
        Ok(out) => End::Failed(format!("{on} after {took}: {}", out.brief())),
        Err(e) => {
            if matches!(e, SshError::Timeout { .. }) {
                // The run outlived its timeout: stop its container too.
                let rm = remove_argv_name(&spec.name);
                let _ = op
                    .pool
                    .exec(&target, &rm, None, ExecLimits::default())
                    .await;
            }
            End::Failed(format!("{on}: {e}"))
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
