//! One action's commands on its node, each within its own deadline, and
//! what can go wrong with them.

use std::time::Duration;

use super::Context;
use crate::bootstrap::{BootstrapError, install_docker};
use crate::config::PullPolicy;
use crate::observe::ContainerId;
use crate::reconcile::docker::{
    STOP_GRACE, env_file_content, image_present_argv, login_command, mesh_connect_argv,
    network_create_argv, network_remove_argv, pull_argv, remove_argv, restart_argv, run_argv,
    start_argv, start_argv_named, stop_argv,
};
use crate::reconcile::{Action, EnvFileError, EnvFileMissing, JobEnd, watchdog_name};
use crate::ssh::{ExecLimits, Output, SshError, Target};

/// Why an action did not do what it should.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// The node could not be reached, or a command outlived its deadline.
    #[error(transparent)]
    Ssh(#[from] SshError),
    /// A command ran and failed: its exit status and stderr's tail.
    #[error("{command} failed: {brief}")]
    Command { command: String, brief: String },
    #[error(transparent)]
    EnvFile(#[from] EnvFileError),
    #[error(transparent)]
    EnvFileMissing(#[from] EnvFileMissing),
    #[error("no credentials resolved for registry {0}")]
    NoCredentials(String),
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    #[error(transparent)]
    Cloud(#[from] crate::cloud::CloudError),
    /// Not tried: this process no longer holds the apply lock.
    #[error("not done: this process lost the apply lock ({0})")]
    LockLost(String),
}

/// A command's deadline, and at most 1 MiB of its output.
pub(super) fn limits(timeout: Duration) -> ExecLimits {
    ExecLimits {
        timeout,
        max_output: 1 << 20,
    }
}

/// A step that needs root on the node (see `operator::host`).
pub(super) async fn as_root(
    cx: &Context,
    target: &Target,
    argv: &[String],
    timeout: Duration,
) -> Result<Output, ActionError> {
    crate::operator::run_as_root(
        &cx.pool,
        &cx.journal,
        target,
        &cx.fleet,
        &cx.helper_image,
        argv,
        limits(timeout),
    )
    .await
}

/// Deadlines of the commands: most answer at once; a pull may take
/// minutes; a stop waits out the grace period.
const QUICK: Duration = Duration::from_secs(60);
const PULL: Duration = Duration::from_secs(600);

/// Puts a container on the node's mesh network; "already exists" (it is
/// there) counts as done.
async fn join_mesh(cx: &Context, target: &Target, container: &str) -> Result<(), ActionError> {
    let out = exec(
        cx,
        target,
        &mesh_connect_argv(container),
        None,
        limits(QUICK),
    )
    .await?;
    if out.success() || out.stderr_text().contains("already exists") {
        Ok(())
    } else {
        Err(failure("docker network connect prism-mesh", &out))
    }
}

/// Runs `action`'s commands. `Ok` carries what the node said worth
/// telling (a job's last output line), if anything.
pub(super) async fn run(
    cx: &Context,
    target: &Target,
    action: &Action,
) -> Result<Option<String>, ActionError> {
    act(cx, target, action).await
}

async fn act(
    cx: &Context,
    target: &Target,
    action: &Action,
) -> Result<Option<String>, ActionError> {
    if let Action::RemoveJob { container, end } = action {
        // A run that ended tells its last output line, before it goes.
        let said = match end {
            JobEnd::Exited { .. } => last_output(cx, target, &container.id).await,
            JobEnd::Overdue { .. } => None,
        };
        remove_job(cx, target, &container.id).await?;
        return Ok(said);
    }
    plain(cx, target, action).await.map(|()| None)
}

async fn plain(cx: &Context, target: &Target, action: &Action) -> Result<(), ActionError> {
    if super::volumes::handles(action) {
        return super::volumes::run(cx, target, action).await;
    }
    if super::mesh::handles(action) {
        return super::mesh::run(cx, target, action).await;
    }
    let quick = limits(QUICK);
    match action {
        Action::EnsureNetwork { pod, network } => {
            let argv = network_create_argv(&cx.fleet, pod, network);
            let out = exec(cx, target, &argv, None, quick).await?;
            if out.success() || out.stderr_text().contains("already exists") {
                Ok(())
            } else {
                Err(failure("docker network create", &out))
            }
        }
        Action::Pull {
            image,
            login,
            policy,
            ..
        } => {
            if *policy == PullPolicy::Missing
                && exec(cx, target, &image_present_argv(image), None, quick)
                    .await?
                    .success()
            {
                return Ok(());
            }
            if let Some(host) = login {
                let Some(credentials) = cx.secrets.registries.get(host) else {
                    return Err(ActionError::NoCredentials(host.clone()));
                };
                let (argv, password) = login_command(host, credentials);
                let out =
                    exec(cx, target, &argv, Some(password.expose().as_bytes()), quick).await?;
                check(
                    out,
                    &format!(
                        "docker login to registry {host} as {}",
                        credentials.username
                    ),
                )?;
            }
            let out = exec(cx, target, &pull_argv(image), None, limits(PULL)).await?;
            check(out, "docker pull")
        }
        Action::Run { spec, .. } => {
            // Secrets reach Docker through an env file read from stdin:
            // never in argv, never on the node's disk.
            let (argv, stdin) = if spec.needs_env_file() {
                let content = env_file_content(&spec.config.secrets)?;
                (run_argv(spec, Some("/dev/stdin"))?, Some(content))
            } else {
                (run_argv(spec, None)?, None)
            };
            let stdin = stdin.as_ref().map(|s| s.expose().as_bytes());
            if !spec.config.mesh {
                return check(exec(cx, target, &argv, stdin, quick).await?, "docker run");
            }
            // Created, on the mesh too, then started; a step that fails
            // leaves a created container, which the next pass starts.
            check(
                exec(cx, target, &argv, stdin, quick).await?,
                "docker create",
            )?;
            join_mesh(cx, target, &spec.name).await?;
            check(
                exec(cx, target, &start_argv_named(&spec.name), None, quick).await?,
                "docker start",
            )
        }
        Action::Start { container, .. } => {
            if cx.mesh {
                join_mesh(cx, target, &container.name).await?;
            }
            check(
                exec(cx, target, &start_argv(&container.id), None, quick).await?,
                "docker start",
            )
        }
        Action::Restart { container, .. } => {
            let grace = limits(STOP_GRACE + QUICK);
            let argv = restart_argv(container.id.as_str(), STOP_GRACE);
            check(
                exec(cx, target, &argv, None, grace).await?,
                "docker restart",
            )
        }
        Action::RemoveNetwork { network, .. } => {
            let out = exec(cx, target, &network_remove_argv(network), None, quick).await?;
            let err = out.stderr_text();
            // Gone already counts as removed: a rerun must converge.
            if out.success() || err.contains("No such network") || err.contains("not found") {
                Ok(())
            } else {
                Err(failure("docker network rm", &out))
            }
        }
        Action::Remove { container, .. } => {
            // Routes leave it before it stops: requests in flight finish.
            if let Some(router) = &cx.router {
                router.drain(&container.id).await;
            }
            let grace = limits(STOP_GRACE + Duration::from_secs(30));
            let stopped = exec(
                cx,
                target,
                &stop_argv(&container.id, STOP_GRACE),
                None,
                grace,
            )
            .await?;
            let out = exec(cx, target, &remove_argv(&container.id), None, quick).await?;
            // Gone already counts as removed: a rerun must converge.
            if out.success() || out.stderr_text().contains("No such container") {
                Ok(())
            } else if !stopped.success() {
                Err(failure("docker stop", &stopped))
            } else {
                Err(failure("docker rm", &out))
            }
        }
        Action::RunJob { run } => {
            let stdin = run.env_file.as_ref().map(|s| s.expose().as_bytes());
            check(
                exec(cx, target, &run.argv, stdin, quick).await?,
                "docker run (job)",
            )?;
            let watchdog = exec(cx, target, &run.watchdog, None, quick).await?;
            if watchdog.success() {
                return Ok(());
            }
            // A watchdog that could not start may be left created: it goes.
            let leftover: Vec<String> = ["docker", "rm", "--force", "--"]
                .map(String::from)
                .into_iter()
                .chain([watchdog_name(&run.name)])
                .collect();
            exec(cx, target, &leftover, None, quick).await?;
            if !still_running(cx, target, &run.name).await? {
                // A run that ended already has nothing to watch.
                return Ok(());
            }
            // The run keeps its deadline label: a later pass removes it
            // once overdue.
            Err(failure("docker run (job watchdog)", &watchdog))
        }
        // Taken apart above: it tells its output.
        Action::RemoveJob { container, .. } => remove_job(cx, target, &container.id).await,
        Action::InstallDocker => {
            let outcome = install_docker(&cx.pool, target).await?;
            tracing::info!(node = %target.id, "{}", outcome.summary());
            Ok(())
        }
        // Volume actions: see above.
        _ => Ok(()),
    }
}

/// Whether container `name` runs.
async fn still_running(cx: &Context, target: &Target, name: &str) -> Result<bool, ActionError> {
    let argv: Vec<String> = [
        "docker",
        "inspect",
        "--format",
        "{{.State.Running}}",
        "--",
        name,
    ]
    .map(String::from)
    .into();
    let out = exec(cx, target, &argv, None, limits(QUICK)).await?;
    Ok(out.success() && String::from_utf8_lossy(&out.stdout).trim() == "true")
}

/// `docker rm --force` of a job's run; gone already counts as removed.
async fn remove_job(cx: &Context, target: &Target, id: &ContainerId) -> Result<(), ActionError> {
    let argv: Vec<String> = ["docker", "rm", "--force", "--", id.as_str()]
        .map(String::from)
        .into();
    let out = exec(cx, target, &argv, None, limits(STOP_GRACE + QUICK)).await?;
    if out.success() || out.stderr_text().contains("No such container") {
        Ok(())
    } else {
        Err(failure("docker rm", &out))
    }
}

/// The last line a container wrote (stderr first, as errors go there),
/// clipped; `None` when it wrote nothing or cannot be read.
async fn last_output(cx: &Context, target: &Target, id: &ContainerId) -> Option<String> {
    let argv: Vec<String> = ["docker", "logs", "--tail", "5", "--", id.as_str()]
        .map(String::from)
        .into();
    let out = exec(cx, target, &argv, None, limits(QUICK)).await.ok()?;
    let last = |bytes: &[u8]| {
        String::from_utf8_lossy(bytes)
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(|l| {
                l.chars()
                    .filter(|c| !c.is_control())
                    .take(200)
                    .collect::<String>()
            })
    };
    last(&out.stderr).or_else(|| last(&out.stdout))
}

async fn exec(
    cx: &Context,
    target: &Target,
    argv: &[String],
    stdin: Option<&[u8]>,
    limits: ExecLimits,
) -> Result<Output, SshError> {
    cx.pool.exec(target, argv, stdin, limits).await
}

fn check(out: Output, command: &str) -> Result<(), ActionError> {
    if out.success() {
        Ok(())
    } else {
        Err(failure(command, &out))
    }
}

fn failure(command: &str, out: &Output) -> ActionError {
    ActionError::Command {
        command: command.to_owned(),
        brief: out.brief(),
    }
}
