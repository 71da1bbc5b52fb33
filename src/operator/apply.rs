//! Apply: the one place that changes nodes. Runs each node's actions in
//! order over SSH, nodes in parallel, and records every action and its
//! outcome as an event.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::routing::Router;
use crate::config::PullPolicy;
use crate::reconcile::docker::{
    STOP_GRACE, env_file_content, image_present_argv, login_command, network_create_argv,
    network_remove_argv, pull_argv, remove_argv, restart_argv, run_argv, start_argv, stop_argv,
};
use crate::reconcile::{Action, Plan, PodKey, Secrets};
use crate::ssh::{ExecLimits, Output, Pool, Target, fan_out};
use crate::store::{Level, NewEvent, Store, now_ms};

/// Nodes changed at once; each runs its own list in order.
const PARALLEL: usize = 16;

/// What happened to one action.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub node: String,
    /// The action as `prism plan` prints it.
    pub action: String,
    pub error: Option<String>,
    /// A pull ahead of need on a preparing node: its failure is recorded
    /// and lets the node go ready; the pods that need the image fail later.
    pub prepare: bool,
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

/// Runs the plan's actions. A failed action ends its pod's steps on that
/// node for this pass ([`Blocked`]); other pods and other nodes go on.
/// Returns every action tried, in order per node.
pub async fn apply(cx: &Context<'_>, targets: &[Target], plan: &Plan) -> Vec<Outcome> {
    let busy: Vec<Target> = targets
        .iter()
        .filter(|t| plan.actions.contains_key(&t.id))
        .cloned()
        .collect();
    let per_node = fan_out(&busy, PARALLEL, |target| async move {
        let actions = plan
            .actions
            .get(&target.id)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let mut blocked = Blocked::new(actions);
        let mut outcomes = Vec::new();
        for action in actions {
            if blocked.skips(action) {
                continue;
            }
            let result = run(cx, &target, action).await;
            let outcome = Outcome {
                node: target.id.clone(),
                action: action.to_string(),
                error: result.err(),
                prepare: matches!(action, Action::Pull { prepare: true, .. }),
            };
            record(cx.store, &outcome, action);
            (cx.progress)(&outcome);
            if outcome.error.is_some() {
                blocked.failed(action);
            }
            outcomes.push(outcome);
        }
        outcomes
    })
    .await;
    let mut all: Vec<Outcome> = per_node.into_iter().flat_map(|(_, o)| o).collect();
    // fan_out returns nodes as they finish; keep a stable order per node.
    all.sort_by(|a, b| a.node.cmp(&b.node));
    all
}

/// What a failed action stops on its node for this pass: the rest of its
/// pod (later steps depend on earlier ones), and after a failed pull every
/// pod that would run that image. Other pods go on; the next plan picks up
/// from what is observed then.
struct Blocked {
    /// Per image, the pods on this node whose runs need it.
    users: BTreeMap<String, BTreeSet<PodKey>>,
    pods: BTreeSet<PodKey>,
}

impl Blocked {
    fn new(actions: &[Action]) -> Blocked {
        let mut users: BTreeMap<String, BTreeSet<PodKey>> = BTreeMap::new();
        for a in actions {
            if let Action::Run { spec, .. } = a {
                users
                    .entry(spec.config.image.clone())
                    .or_default()
                    .insert(spec.pod.clone());
            }
        }
        Blocked {
            users,
            pods: BTreeSet::new(),
        }
    }

    fn skips(&self, action: &Action) -> bool {
        pod_of(action).is_some_and(|pod| self.pods.contains(pod))
    }

    fn failed(&mut self, action: &Action) {
        match action {
            Action::Pull { image, .. } => {
                if let Some(pods) = self.users.get(image) {
                    self.pods.extend(pods.iter().cloned());
                }
            }
            other => {
                if let Some(pod) = pod_of(other) {
                    self.pods.insert(pod.clone());
                }
            }
        }
    }
}

fn pod_of(action: &Action) -> Option<&PodKey> {
    match action {
        Action::EnsureNetwork { pod, .. } | Action::RemoveNetwork { pod, .. } => Some(pod),
        Action::Run { spec, .. } => Some(&spec.pod),
        Action::Start { container, .. }
        | Action::Restart { container }
        | Action::Remove { container, .. } => Some(&container.pod),
        Action::Pull { .. } => None,
    }
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
    let event = match pod_of(action) {
        Some(pod) => event.app(pod.app.clone()),
        None => event,
    };
    let store = lock(store);
    if let Err(e) = store.record_event(&event.node(outcome.node.clone())) {
        tracing::warn!(error = %e, "could not record an apply event");
    }
    // The node stops waiting for this image (see operator::lifecycle).
    if let (Action::Pull { image, .. }, Some(error)) = (action, &outcome.error)
        && outcome.prepare
        && let Err(e) = store.record_pull_failure(&outcome.node, image, error, now_ms())
    {
        tracing::warn!(error = %e, "could not record a failed pull");
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
        Action::RemoveNetwork { .. } => "network_remove",
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
        Action::Pull {
            image,
            login,
            policy,
            ..
        } => {
            if *policy == PullPolicy::Missing
                && exec(pool, target, &image_present_argv(image), None, quick)
                    .await?
                    .success()
            {
                return Ok(());
            }
            if let Some(host) = login {
                let Some(credentials) = secrets.registries.get(host) else {
                    return Err(format!("no credentials resolved for registry {host}"));
                };
                let (argv, password) = login_command(host, credentials);
                let out = exec(
                    pool,
                    target,
                    &argv,
                    Some(password.expose().as_bytes()),
                    quick,
                )
                .await?;
                check(
                    out,
                    &format!(
                        "docker login to registry {host} as {}",
                        credentials.username
                    ),
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
            let argv = restart_argv(container.id.as_str(), STOP_GRACE);
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
        Action::RemoveNetwork { network, .. } => {
            let out = exec(pool, target, &network_remove_argv(network), None, quick).await?;
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::{Bytes, Logs, PullPolicy, RestartPolicy};
    use crate::reconcile::docker::RunSpec;
    use crate::reconcile::{ContainerConfig, RunReason, SpecHash};

    fn run(app: &str, service: &str, image: &str) -> Action {
        let pod = PodKey::new(app, 0);
        Action::Run {
            spec: Box::new(RunSpec {
                name: format!("prism.f.{app}.0.{service}.0123456789ab"),
                fleet: "f".into(),
                pod: pod.clone(),
                service: service.into(),
                spec: SpecHash::from_label("0123456789ab"),
                network: format!("prism.f.{app}.0"),
                config: ContainerConfig {
                    image: image.into(),
                    command: None,
                    env: BTreeMap::new(),
                    secrets: BTreeMap::new(),
                    port: None,
                    memory: Bytes(1 << 20),
                    cpu: None,
                    restart: RestartPolicy::No,
                    volumes: vec![],
                    logs: Logs::default(),
                },
            }),
            reason: RunReason::New,
        }
    }

    fn pull(image: &str) -> Action {
        Action::Pull {
            image: image.into(),
            login: None,
            policy: PullPolicy::Missing,
            prepare: false,
        }
    }

    #[test]
    fn a_failure_stops_its_pods_only() {
        let actions = [
            pull("reg/a:1"),
            pull("reg/b:1"),
            run("one", "web", "reg/a:1"),
            run("two", "web", "reg/a:1"),
            run("two", "queue", "reg/b:1"),
            run("three", "web", "reg/b:1"),
            run("three", "queue", "reg/b:1"),
        ];
        let mut b = Blocked::new(&actions);
        assert!(actions.iter().all(|a| !b.skips(a)));
        // A failed pull stops every pod that runs its image, wholly.
        b.failed(&actions[0]);
        let skipped: Vec<bool> = actions.iter().map(|a| b.skips(a)).collect();
        assert_eq!(skipped, [false, false, true, true, true, false, false]);
        // A failed step stops the rest of its pod.
        b.failed(&actions[5]);
        assert!(b.skips(&actions[6]));
        assert!(!b.skips(&actions[1]), "pulls belong to no pod");
    }
}
