//! Scheduled jobs, the pure half: a due tick becomes a run on the node of
//! the app's first instance, in its pod network, as a detached container
//! labelled with the job and its deadline; a watchdog beside it (the
//! helper image, in the run's PID namespace) kills the run at its
//! timeout even while no operator runs. What is running is read back
//! from the nodes' labels, so a restarted operator neither starts an
//! overlapping run nor leaves one running past its deadline: an ended run
//! is reported and removed, an overdue one removed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::desired::{Desired, PodKey};
use super::docker::env_file_content;
use super::plan::Action;
use super::schedule::NodeView;
use super::secrets::Secret;
use crate::config::{Bytes, Job, PullPolicy};
use crate::observe::{ContainerId, ContainerState, JobLabels, RunState, labels};
use crate::store::Placement;

/// A run with no `timeout` in fleet.toml is stopped after this.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
/// A run still up this long past its deadline (its watchdog failed, or
/// was never started) is removed by the applier.
pub(crate) const OVERDUE_GRACE: Duration = Duration::from_secs(30);
/// The watchdog's memory limit.
const WATCHDOG_MEMORY: &str = "16m";

/// One run of a job: its container and its watchdog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobRun {
    /// The pod whose node and network the job runs in.
    pub pod: PodKey,
    pub labels: JobLabels,
    pub name: String,
    pub image: String,
    #[serde(skip)]
    pub argv: Vec<String>,
    /// The watchdog: ends the run at its deadline.
    #[serde(skip)]
    pub watchdog: Vec<String>,
    /// The secrets' env file, sent on stdin (`--env-file /dev/stdin`).
    #[serde(skip)]
    pub env_file: Option<Secret>,
}

/// The watchdog's container name for run `name`.
pub(crate) fn watchdog_name(name: &str) -> String {
    format!("{name}.timeout")
}

/// A job's container seen on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobContainer {
    #[serde(serialize_with = "id_text")]
    pub id: ContainerId,
    pub name: String,
    pub labels: JobLabels,
}

fn id_text<S: serde::Serializer>(id: &ContainerId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(id.as_str())
}

/// How a run ended, as seen on its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "end", rename_all = "snake_case")]
pub enum JobEnd {
    /// Exited with `code` after running `ran_ms` (when Docker said).
    Exited { code: i64, ran_ms: Option<i64> },
    /// Still up past its deadline.
    Overdue { deadline: i64 },
}

impl fmt::Display for JobEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobEnd::Exited { code, ran_ms } => {
                write!(f, "ended with exit {code}")?;
                if let Some(ms) = ran_ms {
                    let secs = u64::try_from(*ms / 1000).unwrap_or(0);
                    write!(
                        f,
                        " after {}",
                        humantime::format_duration(Duration::from_secs(secs))
                    )?;
                }
                if *code == 137 {
                    f.write_str(" (killed: its timeout, or out of memory)")?;
                }
                Ok(())
            }
            JobEnd::Overdue { deadline } => {
                write!(f, "still running past its deadline (unix {deadline})")
            }
        }
    }
}

/// The run of `app`'s job `job_name` for the tick at `at` (unix seconds),
/// or why it cannot be built.
pub(crate) fn job_run(
    desired: &Desired,
    app: &str,
    job_name: &str,
    job: &Job,
    at: i64,
) -> Result<JobRun, String> {
    let spec = desired
        .apps
        .get(app)
        .ok_or_else(|| format!("app {app} is not in fleet.toml"))?;
    let service = match &job.service {
        Some(s) => Some(
            spec.service(s)
                .ok_or_else(|| format!("job {job_name}: service {s} is not in app {app}"))?,
        ),
        None => None,
    };
    let image = match (&job.image, service) {
        (Some(image), _) => image.clone(),
        (None, Some(s)) => s.container.image.clone(),
        (None, None) => return Err(format!("job {job_name} names neither image nor service")),
    };
    let mut env: BTreeMap<String, String> =
        service.map(|s| s.container.env.clone()).unwrap_or_default();
    env.extend(job.env.iter().map(|(k, v)| (k.clone(), v.0.clone())));
    let secrets = service
        .map(|s| s.container.secrets.clone())
        .unwrap_or_default();
    let memory = job
        .memory
        .or(service.map(|s| s.container.memory))
        .unwrap_or(Bytes(128 << 20));
    let timeout = job.timeout.map_or(DEFAULT_TIMEOUT, |t| t.0);
    let labels = JobLabels {
        fleet: desired.fleet.clone(),
        app: app.to_owned(),
        job: job_name.to_owned(),
        deadline: at.saturating_add(i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX)),
    };
    let pod = PodKey::new(app, 0);
    let name = format!("prism.{}.{app}.job.{job_name}.{at}", desired.fleet);
    // Detached, and kept after it exits: its exit code is read back and
    // reported by a later pass, which then removes it.
    let mut argv: Vec<String> = ["docker", "run", "--detach", "--init", "--name"]
        .map(String::from)
        .into();
    argv.push(name.clone());
    argv.extend(["--network".into(), desired.network(&pod)]);
    argv.extend(labels.run_args());
    argv.extend(["--memory".into(), memory.0.to_string()]);
    for (k, v) in &env {
        argv.extend(["-e".into(), format!("{k}={v}")]);
    }
    let env_file = if secrets.is_empty() {
        None
    } else {
        argv.extend(["--env-file".into(), "/dev/stdin".into()]);
        Some(env_file_content(&secrets).map_err(|e| e.to_string())?)
    };
    argv.extend(["--".into(), image.clone()]);
    argv.extend(job.command.iter().cloned());
    let watchdog = watchdog_argv(desired, &name, timeout);
    Ok(JobRun {
        pod,
        labels,
        name,
        image,
        argv,
        watchdog,
        env_file,
    })
}

/// The watchdog of run `name`: in the run's PID namespace, it sleeps out
/// the timeout, then kills every process there but the run's init
/// (`--init`), which then exits with the job's status. When the run ends
/// first, its init's exit ends the namespace and the watchdog with it
/// (`--rm` removes it). Nothing of it outlives the run.
fn watchdog_argv(desired: &Desired, name: &str, timeout: Duration) -> Vec<String> {
    let mut argv: Vec<String> = ["docker", "run", "--detach", "--rm", "--name"]
        .map(String::from)
        .into();
    argv.push(watchdog_name(name));
    argv.extend([
        "--pid".into(),
        format!("container:{name}"),
        "--network".into(),
        "none".into(),
        "--memory".into(),
        WATCHDOG_MEMORY.into(),
        "--label".into(),
        format!("{}={}", labels::FLEET, desired.fleet),
        "--label".into(),
        format!("{}={name}", labels::WATCHDOG),
        "--".into(),
        desired.helper_image.clone(),
        "sh".into(),
        "-c".into(),
        format!("sleep {}; kill -KILL -1", timeout.as_secs().max(1)),
    ]);
    argv
}

/// A tick that came for a job, waiting for a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tick {
    pub app: String,
    pub job: String,
    /// Unix seconds.
    pub at: i64,
}

/// What the jobs need this pass.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct JobPlan {
    /// Per node, in order.
    pub actions: BTreeMap<String, Vec<Action>>,
    /// Ticks not run, and why, for the event log.
    pub skipped: Vec<(Tick, String)>,
    /// Ticks planned, by the node that runs them: one whose node is still
    /// at work from before waits for the next pass.
    pub planned: Vec<(String, Tick)>,
}

/// Plans the jobs' work: every ended run is reported and removed, every
/// overdue one removed; each due tick runs on the node of its app's
/// instance 0, unless a run of the same job is still going anywhere (no
/// overlap), the pod is not placed, or its node is not ready and observed.
pub(crate) fn plan_jobs(
    desired: &Desired,
    ticks: &[Tick],
    nodes: &[NodeView],
    observed: &BTreeMap<String, Vec<ContainerState>>,
    placements: &[Placement],
    now_s: i64,
) -> JobPlan {
    let mut out = JobPlan::default();
    let mut going: BTreeSet<(String, String)> = BTreeSet::new();
    let grace = i64::try_from(OVERDUE_GRACE.as_secs()).unwrap_or(i64::MAX);
    let touchable = |id: &str| nodes.iter().any(|n| n.id == id && n.state.touchable());
    for (node, containers) in observed {
        for c in containers {
            let Some(l) = c.identity.job() else {
                continue;
            };
            if l.fleet != desired.fleet {
                continue;
            }
            let end = match c.state {
                RunState::Exited | RunState::Dead => Some(JobEnd::Exited {
                    code: c.exit_code,
                    ran_ms: c
                        .started_at
                        .zip(c.finished_at)
                        .map(|(s, f)| f.saturating_sub(s)),
                }),
                RunState::Created => Some(JobEnd::Exited {
                    code: c.exit_code,
                    ran_ms: None,
                }),
                _ if now_s > l.deadline.saturating_add(grace) => Some(JobEnd::Overdue {
                    deadline: l.deadline,
                }),
                _ => None,
            };
            if end.is_none() || matches!(end, Some(JobEnd::Overdue { .. })) {
                going.insert((l.app.clone(), l.job.clone()));
            }
            if let Some(end) = end
                && touchable(node)
            {
                out.actions
                    .entry(node.clone())
                    .or_default()
                    .push(Action::RemoveJob {
                        container: JobContainer {
                            id: c.id.clone(),
                            name: c.name.clone(),
                            labels: l.clone(),
                        },
                        end,
                    });
            }
        }
    }
    for tick in ticks {
        let key = (tick.app.clone(), tick.job.clone());
        let skip = |why: String| (tick.clone(), why);
        if going.contains(&key) {
            out.skipped.push(skip("the previous run still goes".into()));
            continue;
        }
        let Some(job) = desired
            .apps
            .get(&tick.app)
            .and_then(|a| a.jobs.get(&tick.job))
        else {
            out.skipped
                .push(skip("the job is no longer in fleet.toml".into()));
            continue;
        };
        let Some(node) = placements
            .iter()
            .find(|p| p.app == tick.app && p.instance == 0)
            .map(|p| p.node_id.clone())
        else {
            out.skipped
                .push(skip(format!("{}/0 is not placed on a node yet", tick.app)));
            continue;
        };
        let ready = nodes.iter().any(|n| n.id == node && n.state.takes_pods())
            && observed.contains_key(&node);
        if !ready {
            out.skipped
                .push(skip(format!("its node {node} is not ready this pass")));
            continue;
        }
        match job_run(desired, &tick.app, &tick.job, job, tick.at) {
            Ok(run) => {
                out.planned.push((node.clone(), tick.clone()));
                let actions = out.actions.entry(node).or_default();
                actions.push(Action::Pull {
                    image: desired.helper_image.clone(),
                    login: None,
                    policy: PullPolicy::Missing,
                    prepare: false,
                });
                actions.push(Action::RunJob { run: Box::new(run) });
                going.insert(key);
            }
            Err(e) => out.skipped.push(skip(e)),
        }
    }
    out
}

#[cfg(test)]
mod tests;
