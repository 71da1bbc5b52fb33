//! Apply: the one place that changes nodes. Each node's actions run in
//! order in a worker task of their own, nodes in parallel; a pass waits
//! for its workers only up to its budget, so a hung node (dockerd stopped,
//! a pull of minutes, a Docker install) delays its own actions and nobody
//! else's. A node still at work takes no new actions until its worker is
//! done. Before each node's batch the worker checks in the store that this
//! process still holds the apply lock, and before each action what the
//! heartbeat last saw ([`Fence`]). Every action and its outcome is an
//! event; outcomes also come back to the loop, which owns what the
//! operator remembers.

mod commands;
mod mesh;
mod volumes;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};

pub(crate) use commands::ActionError;

use super::lease::Fence;
use super::routing::Router;
use crate::cloud::Node;
use crate::reconcile::{Action, Plan, PodKey, Secrets};
use crate::ssh::{Pool, Target};
use crate::store::{Level, NewEvent, Writer};

/// What happened to one action.
#[derive(Debug)]
pub struct Outcome {
    pub node: String,
    pub action: Action,
    /// `Ok` with what the node said worth telling (a job's last output
    /// line), if anything.
    pub result: Result<Option<String>, ActionError>,
}

impl Outcome {
    pub fn failed(&self) -> bool {
        self.result.is_err()
    }

    /// A pull ahead of need on a preparing node: its failure is recorded
    /// and lets the node go ready; the pods that need the image fail later.
    pub fn prepare(&self) -> bool {
        matches!(self.action, Action::Pull { prepare: true, .. })
    }
}

/// What a pass's apply saw within its budget.
#[derive(Debug, Default)]
pub struct Applied {
    /// Outcomes in the order they came, each node's in its order.
    pub outcomes: Vec<Outcome>,
    /// Nodes whose workers of this pass are still at work.
    pub running: Vec<String>,
    /// Nodes with actions that got none this pass: a worker of an earlier
    /// pass is still at work there.
    pub busy: Vec<String>,
    /// When the next pass should come, if sooner than the interval:
    /// containers just started await their checks (as kube-rs's reconcile
    /// asks to be requeued). A worker still at work wakes the loop itself
    /// when it is done ([`Workers::finished`]).
    pub requeue: Option<Duration>,
}

/// How soon the next pass comes after containers were started.
pub const SOON: Duration = Duration::from_millis(500);

/// The workers in flight, shared by every [`Applier`] of the process (a
/// reload makes a new applier; a node's worker outlives it).
pub struct Workers {
    busy: Mutex<BTreeMap<String, Instant>>,
    tx: mpsc::UnboundedSender<Report>,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Report>>,
    /// Pinged when a worker finishes: the loop may plan the next steps.
    pub finished: Notify,
}

enum Report {
    Done(Box<Outcome>),
    Idle(String),
}

impl Workers {
    pub fn new() -> Arc<Workers> {
        let (tx, rx) = mpsc::unbounded_channel();
        Arc::new(Workers {
            busy: Mutex::new(BTreeMap::new()),
            tx,
            rx: tokio::sync::Mutex::new(rx),
            finished: Notify::new(),
        })
    }

    fn busy(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Instant>> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Nodes at work, and since when.
    pub(crate) fn at_work(&self) -> Vec<(String, Instant)> {
        self.busy().iter().map(|(n, at)| (n.clone(), *at)).collect()
    }

    /// Outcomes that came in since the last apply stopped waiting.
    pub(crate) fn take_late(&self) -> Vec<Outcome> {
        let Ok(mut rx) = self.rx.try_lock() else {
            return Vec::new();
        };
        let mut late = Vec::new();
        while let Ok(report) = rx.try_recv() {
            if let Report::Done(o) = report {
                late.push(*o);
            }
        }
        late
    }

    /// Waits until no worker is at work, or `deadline`.
    pub(crate) async fn wait_idle(&self, deadline: tokio::time::Instant) {
        loop {
            // Listening before looking: a worker that ends in between
            // still wakes this.
            let finished = self.finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            if self.busy().is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline, finished).await.is_err() {
                return;
            }
        }
    }
}

/// What a worker needs, shared with it.
struct Context {
    fleet: String,
    pool: Arc<Pool>,
    journal: Writer,
    fence: Arc<Fence>,
    secrets: Arc<Secrets>,
    /// Drains a container from the proxy before it is stopped.
    router: Option<Arc<dyn Router>>,
    workers: Arc<Workers>,
    /// EBS, with EC2 discovery: durable volumes and fences.
    ebs: Option<crate::cloud::Ebs>,
    /// `[fleet] helper_image`: the root steps' container.
    helper_image: String,
    /// `[network]` is set: containers join the node's mesh network.
    mesh: bool,
}

/// The applier of one fleet.toml.
pub struct Applier {
    cx: Arc<Context>,
}

impl Applier {
    pub fn new(
        operator: &super::Operator,
        journal: Writer,
        fence: Arc<Fence>,
        workers: Arc<Workers>,
    ) -> Applier {
        Applier {
            cx: Arc::new(Context {
                fleet: operator.config.fleet.fleet.name.clone(),
                pool: operator.pool.clone(),
                journal,
                fence,
                secrets: operator.secrets.clone(),
                router: operator.router.clone(),
                workers,
                ebs: operator.ebs.clone(),
                helper_image: operator.desired.helper_image.clone(),
                mesh: operator.config.fleet.network.is_some(),
            }),
        }
    }

    /// Starts a worker for each node of `plan` that is not at work, and
    /// collects outcomes as they come (each handed to `progress` too)
    /// until those workers are done or `budget` is spent.
    pub async fn apply(
        &self,
        plan: &Plan,
        nodes: &[Node],
        budget: Duration,
        progress: &(dyn Fn(&Outcome) + Sync),
    ) -> Applied {
        let workers = &self.cx.workers;
        let mut applied = Applied::default();
        let mut started = BTreeSet::new();
        for (id, actions) in &plan.actions {
            let Some(node) = nodes.iter().find(|n| &n.id == id) else {
                continue;
            };
            {
                let mut busy = workers.busy();
                if busy.contains_key(id) {
                    applied.busy.push(id.clone());
                    continue;
                }
                busy.insert(id.clone(), Instant::now());
            }
            started.insert(id.clone());
            tokio::spawn(work(self.cx.clone(), node.target(), actions.clone()));
        }
        let deadline = tokio::time::Instant::now()
            .checked_add(budget)
            .unwrap_or_else(tokio::time::Instant::now);
        let mut rx = workers.rx.lock().await;
        while !started.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(Report::Done(outcome))) => {
                    progress(&outcome);
                    applied.outcomes.push(*outcome);
                }
                Ok(Some(Report::Idle(node))) => {
                    started.remove(&node);
                }
                Ok(None) | Err(_) => break,
            }
        }
        applied.running = started.into_iter().collect();
        let started_containers = applied.outcomes.iter().any(|o| {
            o.result.is_ok()
                && matches!(
                    o.action,
                    Action::Run { .. } | Action::Start { .. } | Action::Restart { .. }
                )
        });
        // A volume just created is attached by the next pass.
        let created_volume = applied
            .outcomes
            .iter()
            .any(|o| o.result.is_ok() && matches!(o.action, Action::CreateVolume { .. }));
        // A node set up for the mesh has a key its peers learn next pass.
        let meshed = applied
            .outcomes
            .iter()
            .any(|o| o.result.is_ok() && matches!(o.action, Action::SetUpMesh { .. }));
        if started_containers || created_volume || meshed {
            applied.requeue = Some(SOON);
        }
        applied
    }
}

/// One node's actions, in order: a batch, checked against the lock's
/// generation in the store before it starts, and against what the
/// heartbeat has seen before each action. A failed action ends its pod's
/// steps for this pass ([`Blocked`]); a lost lock ends them all.
async fn work(cx: Arc<Context>, target: Target, actions: Vec<Action>) {
    let mut blocked = Blocked::new(&actions);
    let mut held = cx.fence.check().await;
    for action in actions {
        if blocked.skips(&action) {
            continue;
        }
        if held.is_ok()
            && let Some(why) = cx.fence.lost_why()
        {
            held = Err(why);
        }
        let result = match &held {
            Ok(()) => commands::run(&cx, &target, &action).await,
            Err(lost) => Err(ActionError::LockLost(lost.clone())),
        };
        let lost = matches!(result, Err(ActionError::LockLost(_)));
        let outcome = Outcome {
            node: target.id.clone(),
            action,
            result,
        };
        record(&cx.journal, &outcome);
        if outcome.failed() {
            blocked.failed(&outcome.action);
        }
        let _ = cx.workers.tx.send(Report::Done(Box::new(outcome)));
        if lost {
            break;
        }
    }
    cx.workers.busy().remove(&target.id);
    let _ = cx.workers.tx.send(Report::Idle(target.id));
    cx.workers.finished.notify_waiters();
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
        pod_of(action).is_some_and(|pod| self.pods.contains(&pod))
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
                    self.pods.insert(pod);
                }
            }
        }
    }
}

fn pod_of(action: &Action) -> Option<PodKey> {
    match action {
        Action::EnsureNetwork { pod, .. } | Action::RemoveNetwork { pod, .. } => Some(pod.clone()),
        Action::Run { spec, .. } => Some(spec.pod.clone()),
        Action::Start { container, .. }
        | Action::Restart { container, .. }
        | Action::Remove { container, .. } => Some(container.pod.clone()),
        Action::EnsureLocalVolume { volume, .. }
        | Action::CreateVolume { volume, .. }
        | Action::AttachVolume { volume, .. }
        | Action::MountVolume { volume, .. }
        | Action::UnmountVolume { volume, .. }
        | Action::DetachVolume { volume, .. } => Some(volume.pod()),
        // A job's run stands alone: its failure stops none of its app's
        // steps, nor theirs it.
        Action::Pull { .. }
        | Action::RunJob { .. }
        | Action::RemoveJob { .. }
        | Action::InstallDocker
        | Action::Fence { .. }
        | Action::SnapshotVolume { .. }
        | Action::DeleteVolume { .. }
        | Action::SetUpMesh { .. }
        | Action::WriteNames { .. } => None,
    }
}

/// The action and its outcome as an event (and a log line).
fn record(journal: &Writer, o: &Outcome) {
    let kind = format!("apply.{}", kind(&o.action));
    let event = match &o.result {
        Ok(_) => {
            tracing::info!(node = %o.node, "{}", o.action);
            NewEvent::info(&kind, o.action.to_string())
        }
        Err(e) => {
            tracing::error!(node = %o.node, error = %e, "{} failed", o.action);
            NewEvent::new(Level::Error, &kind, format!("{}: failed: {e}", o.action))
        }
    };
    let app = match &o.action {
        Action::RemoveJob { container, .. } => Some(container.labels.app.clone()),
        Action::RunJob { run } => Some(run.labels.app.clone()),
        Action::DeleteVolume { volume, .. } | Action::SnapshotVolume { volume, .. } => {
            Some(volume.app.clone())
        }
        other => pod_of(other).map(|p| p.app),
    };
    let event = match app {
        Some(app) => event.app(app),
        None => event,
    };
    journal.event(event.node(o.node.clone()));
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
        Action::RunJob { .. } => "job_run",
        Action::RemoveJob { .. } => "job_remove",
        Action::InstallDocker => "install_docker",
        Action::EnsureLocalVolume { .. } => "local_volume",
        Action::CreateVolume { .. } => "volume_create",
        Action::SnapshotVolume { .. } => "volume_snapshot",
        Action::AttachVolume { .. } => "volume_attach",
        Action::MountVolume { .. } => "volume_mount",
        Action::UnmountVolume { .. } => "volume_unmount",
        Action::DetachVolume { .. } => "volume_detach",
        Action::Fence { .. } => "fence",
        Action::DeleteVolume { .. } => "volume_delete",
        Action::SetUpMesh { .. } => "mesh",
        Action::WriteNames { .. } => "names",
    }
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
                    mounts: vec![],
                    logs: Logs::default(),
                    mesh: false,
                },
                image_mounts: vec![],
                dns: None,
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
