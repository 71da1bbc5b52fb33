//! Apply: the one place that changes nodes. Runs each node's actions in
//! order over SSH, nodes in parallel, and records every action and its
//! outcome as an event.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::routing::Router;
use crate::reconcile::docker::{
    STOP_GRACE, env_file_content, login_argv, network_create_argv, pull_argv, remove_argv,
    restart_argv, run_argv, start_argv, stop_argv,
};
use crate::reconcile::{Action, Plan, Secrets};
use crate::ssh::{ExecLimits, Output, Pool, Target, fan_out};
use crate::store::{Level, NewEvent, Store};

/// Nodes changed at once; each runs its own list in order.
const PARALLEL: usize = 16;

/// What happened to one action.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub node: String,
    /// The action as `prism plan` prints it.
    pub action: String,
    pub error: Option<String>,
}

/// Where apply runs and what it tells on the way.
pub struct Context<'a> {
    pub pool: &'a Pool,
    pub store: &'a Arc<Mutex<Store>>,
    pub secrets: &'a Secrets,
    pub fleet: &'a str,
    /// Drains a container from the proxy before it is stopped.
    pub router: Option<&'a dyn Router>,
    /// Hears of each outcome as it happens.
    pub progress: &'a (dyn Fn(&Outcome) + Sync),
}

/// Runs the plan's actions. A failed action ends its node's list for this
/// pass (later ones may depend on it); other nodes go on. Returns every
/// action tried, in order per node.
pub async fn apply(cx: &Context<'_>, targets: &[Target], plan: &Plan) -> Vec<Outcome> {
    let busy: Vec<Target> = targets
        .iter()
        .filter(|t| plan.actions.contains_key(&t.id))
        .cloned()
        .collect();
    let per_node = fan_out(&busy, PARALLEL, |target| async move {
        let mut outcomes = Vec::new();
        for action in plan.actions.get(&target.id).into_iter().flatten() {
            let result = run(cx, &target, action).await;
            let outcome = Outcome {
                node: target.id.clone(),
                action: action.to_string(),
                error: result.err(),
            };
            record(cx.store, &outcome, action);
            (cx.progress)(&outcome);
            let failed = outcome.error.is_some();
            outcomes.push(outcome);
            if failed {
                break;
            }
        }
        outcomes
    })
    .await;
    let mut all: Vec<Outcome> = per_node.into_iter().flat_map(|(_, o)| o).collect();
    // fan_out returns nodes as they finish; keep a stable order per node.
    all.sort_by(|a, b| a.node.cmp(&b.node));
    all
}

fn record(store: &Arc<Mutex<Store>>, outcome: &Outcome, action: &Action) {
    let kind = format!("apply.{}", kind(action));
    let event = match &outcome.error {
        None => NewEvent::info(&kind, outcome.action.clone()),
        Some(e) => NewEvent::new(
            Level::Error,
            &kind,
            format!("{}: failed: {e}", outcome.action),
        ),
    };
    let event = match pod_app(action) {
        Some(app) => event.app(app),
        None => event,
    };
    if let Err(e) = lock(store).record_event(&event.node(outcome.node.clone())) {
        tracing::warn!(error = %e, "could not record an apply event");
    }
}

fn kind(action: &Action) -> &'static str {
    match action {
        Action::EnsureNetwork { .. } => "network",
        Action::Pull { .. } => "pull",
        Action::Run { .. } => "run",
        Action::Start { .. } => "start",
        Action::Restart { .. } => "restart",
        Action::Remove { .. } => "remove",
    }
}

fn pod_app(action: &Action) -> Option<String> {
    match action {
        Action::EnsureNetwork { pod, .. } => Some(pod.app.clone()),
        Action::Run { spec, .. } => Some(spec.pod.app.clone()),
        Action::Start { container, .. }
        | Action::Restart { container }
        | Action::Remove { container, .. } => Some(container.pod.app.clone()),
        Action::Pull { .. } => None,
    }
}

fn limits(timeout: Duration) -> ExecLimits {
    ExecLimits {
        timeout,
        max_output: 1 << 20,
    }
}

/// One action's commands. Errors are one line for people: the command's
/// stderr tail, or why it could not run.
async fn run(cx: &Context<'_>, target: &Target, action: &Action) -> Result<(), String> {
    let (pool, store, secrets, fleet) = (cx.pool, cx.store, cx.secrets, cx.fleet);
    let quick = limits(Duration::from_secs(60));
    match action {
        Action::EnsureNetwork { pod, network } => {
            let out = exec(
                pool,
                target,
                &network_create_argv(fleet, pod, network),
                None,
                quick,
            )
            .await?;
            if out.success() || out.stderr_text().contains("already exists") {
                Ok(())
            } else {
                Err(failure("docker network create", &out))
            }
        }
        Action::Pull { image, login } => {
            if let Some(host) = login {
                let Some(credentials) = secrets.registries.get(host) else {
                    return Err(format!("no credentials resolved for registry {host}"));
                };
                let argv = login_argv(host, &credentials.username);
                let password = credentials.password.expose().as_bytes();
                check(
                    exec(pool, target, &argv, Some(password), quick).await?,
                    "docker login",
                )?;
            }
            let out = exec(
                pool,
                target,
                &pull_argv(image),
                None,
                limits(Duration::from_secs(600)),
            )
            .await?;
            check(out, "docker pull")
        }
        Action::Run { spec, .. } => {
            // Secrets reach Docker through an env file read from stdin:
            // never in argv, never on the node's disk.
            let (argv, stdin) = if spec.needs_env_file() {
                let content = env_file_content(&spec.config.secrets).map_err(|e| e.to_string())?;
                let argv = run_argv(spec, Some("/dev/stdin")).map_err(|e| e.to_string())?;
                (argv, Some(content))
            } else {
                (run_argv(spec, None).map_err(|e| e.to_string())?, None)
            };
            let stdin = stdin.as_ref().map(|s| s.expose().as_bytes());
            check(exec(pool, target, &argv, stdin, quick).await?, "docker run")
        }
        Action::Start { container, .. } => check(
            exec(pool, target, &start_argv(&container.id), None, quick).await?,
            "docker start",
        ),
        Action::Restart { container } => {
            let grace = limits(STOP_GRACE + Duration::from_secs(60));
            let argv = restart_argv(&container.id, STOP_GRACE);
            check(
                exec(pool, target, &argv, None, grace).await?,
                "docker restart",
            )?;
            // Its verdict starts over, else the next pass restarts it again.
            lock(store)
                .reset_health(container.id.as_str())
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        Action::Remove { container, .. } => {
            // Routes leave it before it stops: requests in flight finish.
            if let Some(router) = cx.router {
                router.drain(&container.id).await;
            }
            let grace = limits(STOP_GRACE + Duration::from_secs(30));
            let stopped = exec(
                pool,
                target,
                &stop_argv(&container.id, STOP_GRACE),
                None,
                grace,
            )
            .await?;
            let out = exec(pool, target, &remove_argv(&container.id), None, quick).await?;
            // Gone already counts as removed: a rerun must converge.
            if out.success() || out.stderr_text().contains("No such container") {
                Ok(())
            } else if !stopped.success() {
                Err(failure("docker stop", &stopped))
            } else {
                Err(failure("docker rm", &out))
            }
        }
    }
}

async fn exec(
    pool: &Pool,
    target: &Target,
    argv: &[String],
    stdin: Option<&[u8]>,
    limits: ExecLimits,
) -> Result<Output, String> {
    pool.exec(target, argv, stdin, limits)
        .await
        .map_err(|e| e.to_string())
}

fn check(out: Output, command: &str) -> Result<(), String> {
    if out.success() {
        Ok(())
    } else {
        Err(failure(command, &out))
    }
}

fn failure(command: &str, out: &Output) -> String {
    format!("{command} failed: {}", out.brief())
}

fn lock(store: &Arc<Mutex<Store>>) -> std::sync::MutexGuard<'_, Store> {
    store.lock().unwrap_or_else(|poison| poison.into_inner())
}
