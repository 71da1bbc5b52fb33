//! Scheduled jobs and snapshots from fleet.toml: the scheduler only tells
//! the loop that a job's or a volume's tick came ([`Input::Tick`],
//! [`Input::SnapshotTick`]); the next pass plans the run or the snapshots
//! (or skips them) and the applier carries them out, like any other change
//! (see `reconcile::job`, `reconcile::snapshots`).

use std::sync::Arc;

use tokio_cron_scheduler::{Job as CronJob, JobScheduler, JobSchedulerError};

use super::Operator;
use super::run::{Control, Input};
use crate::reconcile::{SnapshotTick, Tick};
use crate::store::now_ms;

/// Schedules every job of `operator`'s fleet.toml; `None`, logged, when
/// the scheduler cannot start (the fleet is reconciled without jobs).
pub async fn start(operator: &Operator, control: &Arc<Control>) -> Option<JobScheduler> {
    let has_jobs = operator
        .config
        .fleet
        .apps
        .values()
        .any(|a| !a.jobs.is_empty() || a.volumes.values().any(|v| v.snapshots.is_some()));
    if !has_jobs {
        return None;
    }
    match schedule(operator, control).await {
        Ok(scheduler) => Some(scheduler),
        Err(e) => {
            tracing::error!(error = %e, "scheduled jobs could not start; reconciling without them");
            None
        }
    }
}

async fn schedule(
    operator: &Operator,
    control: &Arc<Control>,
) -> Result<JobScheduler, JobSchedulerError> {
    let scheduler = JobScheduler::new().await?;
    for (app, spec) in &operator.config.fleet.apps {
        for (name, job) in &spec.jobs {
            let (control, app, name) = (control.clone(), app.clone(), name.clone());
            let cron = CronJob::new_async(job.schedule.six_fields(), move |_, _| {
                control.send(Input::Tick(Tick {
                    app: app.clone(),
                    job: name.clone(),
                    at: now_ms() / 1000,
                }));
                Box::pin(async {})
            })?;
            scheduler.add(cron).await?;
        }
        for (volume, v) in &spec.volumes {
            let Some(snapshots) = &v.snapshots else {
                continue;
            };
            let (control, app, volume) = (control.clone(), app.clone(), volume.clone());
            let cron = CronJob::new_async(snapshots.schedule.six_fields(), move |_, _| {
                control.send(Input::SnapshotTick(SnapshotTick {
                    app: app.clone(),
                    volume: volume.clone(),
                    instance: None,
                    at: now_ms() / 1000,
                }));
                Box::pin(async {})
            })?;
            scheduler.add(cron).await?;
        }
    }
    scheduler.start().await?;
    Ok(scheduler)
}

/// The scheduler for a reloaded fleet.toml, in place of `old`.
pub async fn restart(
    old: Option<JobScheduler>,
    operator: &Operator,
    control: &Arc<Control>,
) -> Option<JobScheduler> {
    stop(old).await;
    start(operator, control).await
}

pub async fn stop(scheduler: Option<JobScheduler>) {
    if let Some(mut s) = scheduler
        && let Err(e) = s.shutdown().await
    {
        tracing::warn!(error = %e, "scheduled jobs did not stop cleanly");
    }
}
