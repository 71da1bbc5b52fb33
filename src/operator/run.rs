//! The operator's loop: one task owns what the operator remembers and runs
//! a pass every interval, again at once when a node appears, leaves or
//! changes state, when a worker finishes, or when asked. Everything else
//! reaches it as an [`Input`] (requests from the store, job ticks, a new
//! fleet.toml) and leaves it as a [`PassReport`] on a watch channel (the
//! proxy's metrics, the dashboard) and as writes to the store. Nothing in
//! here waits on a store write: the loop heals from memory.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::apply::{Applier, Outcome, SOON, Workers};
use super::lease::Fence;
use super::memory::Memory;
use super::pass::{Carried, settling};
use super::{Operator, Planned, jobs};
use crate::reconcile::{
    Action, HoldKind, JobEnd, PlacementChange, RestartWhy, SnapshotTick, Tick, apps_removed,
};
use crate::store::{Level, NewEvent, Request, RequestKind, WriteHealth, Writer, now_ms};

/// A pass waits this long at most for its nodes' workers; slower ones
/// (a hung node, a long pull) go on in the background and report later.
pub(crate) const PASS_BUDGET: Duration = Duration::from_secs(10);
/// For this long after containers were started, at most: a container that
/// never passes does not keep passes (and EC2 calls) quick for ever.
const SETTLE_FOR: Duration = Duration::from_secs(30);
/// How often history older than `[fleet] keep_history` is dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// What one pass saw and did.
#[derive(Clone)]
pub(crate) struct PassReport {
    /// When the pass ended (ms since the epoch).
    pub finished_ms: i64,
    pub took: Duration,
    /// What the pass observed and planned; `None` when it failed before
    /// planning (see `error`).
    pub planned: Option<Arc<Planned>>,
    pub actions: usize,
    pub failed: usize,
    pub error: Option<String>,
    /// How the state store takes writes.
    pub store: WriteHealth,
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

/// What reaches the loop from outside.
pub enum Input {
    /// A pass now.
    Reconcile,
    /// A request another process left in the store.
    Request(Request),
    /// A scheduled job's tick.
    Tick(Tick),
    /// A volume's snapshot schedule came due.
    SnapshotTick(SnapshotTick),
    /// fleet.toml changed and loads: plan with this from now on.
    Reload(Box<Operator>, Applier),
}

/// How the outside steers a running loop, and hears from it.
pub(crate) struct Control {
    inbox: mpsc::UnboundedSender<Input>,
    stop: watch::Sender<bool>,
    reports: watch::Sender<Option<Arc<PassReport>>>,
}

impl Control {
    pub fn new() -> (Arc<Control>, mpsc::UnboundedReceiver<Input>) {
        let (inbox, rx) = mpsc::unbounded_channel();
        let control = Arc::new(Control {
            inbox,
            stop: watch::Sender::new(false),
            reports: watch::Sender::new(None),
        });
        (control, rx)
    }

    pub fn send(&self, input: Input) {
        let _ = self.inbox.send(input);
    }

    /// Ends the loop after the pass in flight, if any, has finished.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    pub(crate) fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// The latest pass report, and every later one.
    pub fn reports(&self) -> watch::Receiver<Option<Arc<PassReport>>> {
        self.reports.subscribe()
    }
}

/// What a pass tells as it goes.
pub(crate) enum Heard<'a> {
    /// A placement stored, before the actions run.
    Placement(&'a PlacementChange),
    /// An action's outcome, on the node so named.
    Outcome(&'a str, &'a Outcome),
}

/// A listener to a pass as it goes.
pub(crate) type Progress = Box<dyn Fn(Heard<'_>) + Send + Sync>;

/// Everything the loop owns.
pub(crate) struct Loop {
    pub operator: Arc<Operator>,
    pub applier: Applier,
    pub memory: Memory,
    pub journal: Writer,
    pub fence: Arc<Fence>,
    pub workers: Arc<Workers>,
    pub interval: Duration,
    /// How long a pass waits for its nodes' workers.
    pub budget: Duration,
    /// Hears of each outcome as it comes (`reconcile --once` prints it).
    pub progress: Option<Progress>,
    /// A reloaded fleet.toml the guard holds back (it would remove most
    /// of the fleet's pods): the loop goes on with the one it has, routes
    /// and jobs included, until the new one is let go.
    pub pending: Option<(Arc<Operator>, Applier)>,
    /// The hold on `pending`, shown with each pass's plan.
    pub held_reload: Option<crate::reconcile::Hold>,
    pub control: Arc<Control>,
    pub inbox: mpsc::UnboundedReceiver<Input>,
}

/// Why the loop ended other than being told to stop.
#[derive(Debug, thiserror::Error)]
pub enum LoopEnd {
    #[error("lost the apply lock: {0}")]
    LockLost(String),
}

impl Loop {
    /// Runs passes until `control.stop()` or the lock is lost.
    pub async fn run(mut self) -> Result<(), LoopEnd> {
        let mut stop = self.control.stopping();
        let mut known: Option<BTreeSet<(String, &'static str)>> = None;
        let mut scheduler = jobs::start(&self.operator, &self.control).await;
        let mut pruned: Option<Instant> = None;
        let result = loop {
            if let Some(why) = self.fence.lost_why() {
                break Err(LoopEnd::LockLost(why));
            }
            if *stop.borrow_and_update() {
                break Ok(());
            }
            while let Ok(input) = self.inbox.try_recv() {
                if let Some(next) = self.take(input) {
                    scheduler = jobs::restart(scheduler, &next, &self.control).await;
                }
            }
            if self.pending.is_some()
                && let Some(next) = self.switch()
            {
                scheduler = jobs::restart(scheduler, &next, &self.control).await;
            }
            if pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                self.prune();
                pruned = Some(Instant::now());
            }
            let started = Instant::now();
            let (report, next, _) = self.pass().await;
            let now = report.node_states();
            self.journal.submit("publish the pass's plan", {
                let published = report.published();
                move |s| s.publish_plan(&published)
            });
            self.control.reports.send_replace(Some(Arc::new(report)));
            let changed = matches!((&known, &now), (Some(before), Some(now)) if before != now);
            if now.is_some() {
                known = now;
            }
            if changed {
                tracing::info!("nodes changed: reconciling again now");
                continue;
            }
            let wait = next.saturating_sub(started.elapsed());
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.workers.finished.notified() => {}
                input = self.inbox.recv() => {
                    if let Some(input) = input
                        && let Some(next) = self.take(input)
                    {
                        scheduler = jobs::restart(scheduler, &next, &self.control).await;
                    }
                }
                _ = stop.changed() => {}
            }
        };
        jobs::stop(scheduler).await;
        result
    }

    /// Takes in one input; a reload that goes ahead returns the new
    /// operator for the job scheduler to follow.
    pub fn take(&mut self, input: Input) -> Option<Arc<Operator>> {
        match input {
            Input::Reconcile => None,
            Input::Tick(tick) => {
                self.memory.due_jobs.push(tick);
                None
            }
            Input::SnapshotTick(tick) => {
                self.memory.due_snapshots.push(tick);
                None
            }
            Input::Request(req) => {
                self.request(req);
                None
            }
            Input::Reload(operator, applier) => {
                self.pending = Some((Arc::from(operator), applier));
                self.switch()
            }
        }
    }

    /// Takes the pending fleet.toml unless the guard holds it back: one
    /// whose apps leave out more than half of the fleet's pods waits
    /// (see `reconcile::guard`). Returns the new operator when it went.
    fn switch(&mut self) -> Option<Arc<Operator>> {
        let (next, _) = self.pending.as_ref()?;
        let pods = self.memory.placements.keys().cloned().collect();
        let change = apps_removed(&next.desired, &pods);
        let next = next.clone();
        if let Some(hold) = next.admit(
            &mut self.memory,
            &self.journal,
            HoldKind::AppsRemoved,
            change,
        ) {
            self.held_reload = Some(hold);
            return None;
        }
        self.held_reload = None;
        let (operator, applier) = self.pending.take()?;
        tracing::info!("fleet.toml changed: reconciling with the new one");
        self.journal.event(NewEvent::info(
            "config.reload",
            "fleet.toml changed: reloaded".to_owned(),
        ));
        self.operator = operator;
        self.applier = applier;
        Some(self.operator.clone())
    }

    /// A request from another process: answered at once, or (a restart)
    /// when its action's outcome comes in.
    fn request(&mut self, req: Request) {
        let answer = match req.kind {
            RequestKind::Reconcile => Ok("reconcile started".to_owned()),
            // Planned by the next pass; answered with their action's outcome.
            RequestKind::Restart | RequestKind::DeleteVolume => {
                self.memory.asks.push(req);
                return;
            }
            RequestKind::Drain => match req.node_id.as_deref() {
                None => Err("drain needs a node".to_owned()),
                Some(id) => match self.memory.nodes.get(id) {
                    Some(node) => {
                        self.memory.drains.insert(id.to_owned());
                        Ok(format!(
                            "draining {} ({id}): its pods start elsewhere, then leave it",
                            node.name
                        ))
                    }
                    None => Err(format!("node {id} was not found by the latest pass")),
                },
            },
            RequestKind::Confirm => {
                let confirmed = self.memory.holds.confirm_all();
                for hold in &confirmed {
                    super::memory::Memory::keep_hold(&self.journal, hold);
                }
                if confirmed.is_empty() {
                    Ok("nothing is held back".to_owned())
                } else {
                    let what: Vec<&str> = confirmed.iter().map(|h| h.summary.as_str()).collect();
                    Ok(format!("going ahead: {}", what.join("; ")))
                }
            }
        };
        answer_request(&self.journal, &req, answer);
    }

    fn prune(&self) {
        let keep = self.operator.config.fleet.fleet.keep_history.0;
        let before = now_ms().saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
        self.journal.submit("drop old history", move |s| {
            let (events, requests) = s.prune_history(before)?;
            if events + requests > 0 {
                tracing::info!(
                    events,
                    requests,
                    "dropped history older than [fleet] keep_history"
                );
            }
            Ok(())
        });
    }

    /// One pass: outcomes that came in late, observe and plan, routes,
    /// placements, apply within the budget. Returns its report, when the
    /// next pass should start (from this one's start), and the outcomes
    /// that came in within the budget.
    pub async fn pass(&mut self) -> (PassReport, Duration, Vec<Outcome>) {
        let t = Instant::now();
        for outcome in self.workers.take_late() {
            self.settle(&outcome);
        }
        let operator = self.operator.clone();
        let planned = match operator
            .observe_and_plan(&mut self.memory, &self.journal)
            .await
        {
            Ok(mut planned) => {
                match &self.held_reload {
                    Some(hold) => planned.held.push(hold.clone()),
                    None => operator.guard_apps(&mut self.memory, &self.journal, &mut planned),
                }
                planned
            }
            Err(e) => {
                tracing::error!(error = %e, "pass failed; retrying");
                let report = PassReport {
                    finished_ms: now_ms(),
                    took: t.elapsed(),
                    planned: None,
                    actions: 0,
                    failed: 0,
                    error: Some(e.to_string()),
                    store: self.journal.health(),
                };
                return (report, self.interval, Vec::new());
            }
        };
        operator.route(&planned);
        if let (Some(local), Some(peers)) = (&operator.mesh, &planned.mesh_peers) {
            local.join_reporting(peers, &self.journal).await;
        }
        for p in &planned.plan.problems {
            tracing::warn!(app = %p.pod.app, instance = p.pod.instance, "{p}");
        }
        for (id, why) in &planned.refused {
            if let Some(pos) = self.memory.asks.iter().position(|a| a.id == *id) {
                self.memory.asks.remove(pos);
            }
            answer_request(&self.journal, &request_stub(*id), Err(why.clone()));
        }
        self.place(&planned);
        let (mut actions, mut failed) = (0, 0);
        let mut requeue = None;
        let mut outcomes = Vec::new();
        if !planned.plan.actions.is_empty() {
            let progress = |o: &Outcome| {
                if let Some(p) = &self.progress {
                    p(Heard::Outcome(&planned.label(&o.node), o));
                }
            };
            let applied = self
                .applier
                .apply(&planned.plan, &planned.nodes, self.budget, &progress)
                .await;
            actions = applied.outcomes.len();
            failed = applied.outcomes.iter().filter(|o| o.failed()).count();
            for o in &applied.outcomes {
                self.settle(o);
            }
            requeue = applied.requeue;
            outcomes = applied.outcomes;
            // What a node still at work could not take waits for the next
            // pass: a job's tick is never lost to a busy node.
            for (node, c) in &planned.carried {
                if applied.busy.contains(node) {
                    match c {
                        Carried::Tick(t) => self.memory.due_jobs.push(t.clone()),
                        Carried::Snapshot(t) => self.memory.due_snapshots.push(t.clone()),
                        Carried::Ask(a) => self.memory.asks.push(a.clone()),
                    }
                }
            }
            tracing::info!(
                actions,
                failed,
                still_at_work = applied.running.len(),
                took_ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX),
                "pass applied"
            );
        } else {
            tracing::debug!(
                took_ms = u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX),
                "pass: nothing to do"
            );
        }
        if requeue.is_some() {
            self.memory.started_at = Some(Instant::now());
        }
        // Checks of containers just started come as often as they may, for
        // a while: a pod that moved is seen healthy (and what it replaces
        // removed) soon, not a whole interval later.
        let recent = self
            .memory
            .started_at
            .is_some_and(|at| at.elapsed() < SETTLE_FOR);
        let next = match requeue {
            Some(soon) => self.interval.min(soon),
            None if recent && settling(&planned) => self.interval.min(SOON),
            None => self.interval,
        };
        let report = PassReport {
            finished_ms: now_ms(),
            took: t.elapsed(),
            planned: Some(Arc::new(planned)),
            actions,
            failed,
            error: None,
            store: self.journal.health(),
        };
        (report, next, outcomes)
    }

    /// Stores the plan's placements, here and in the store.
    fn place(&mut self, planned: &Planned) {
        for change in &planned.plan.placement_changes {
            match change {
                PlacementChange::Place { pod, node, .. } => {
                    self.memory.place(&self.journal, pod, node)
                }
                PlacementChange::Unplace { pod, .. } => self.memory.unplace(&self.journal, pod),
            }
            tracing::info!("{change}");
            if let Some(p) = &self.progress {
                p(Heard::Placement(change));
            }
            self.journal
                .event(NewEvent::info("placement", change.to_string()));
            if let Some(event) = local_data_left(&self.operator.desired, planned, change) {
                self.journal.event(event);
            }
        }
    }

    /// What an outcome means for what the operator remembers.
    fn settle(&mut self, o: &Outcome) {
        match (&o.action, &o.result) {
            (Action::Restart { container, why }, result) => {
                if result.is_ok()
                    && let Some(record) = self.memory.health.reset(container.id.as_str())
                {
                    // Its verdict starts over, else the next pass restarts
                    // it again.
                    self.journal
                        .submit("reset a health count", move |s| s.put_health(&record));
                }
                if let RestartWhy::Asked { request, .. } = why {
                    let answer = match result {
                        Ok(_) => Ok(format!("restarted {} on {}", container.name, o.node)),
                        Err(e) => Err(format!(
                            "docker restart {} on {}: {e}",
                            container.name, o.node
                        )),
                    };
                    answer_request(&self.journal, &request_stub(*request), answer);
                }
            }
            (
                Action::DeleteVolume {
                    volume,
                    id,
                    request,
                },
                result,
            ) => {
                let answer = match result {
                    Ok(_) => Ok(format!("deleted {id} ({volume})")),
                    Err(e) => Err(format!("deleting {id} ({volume}): {e}")),
                };
                answer_request(&self.journal, &request_stub(*request), answer);
            }
            (
                Action::Pull {
                    image,
                    prepare: true,
                    ..
                },
                Err(e),
            ) => {
                // The node stops waiting for this image (see lifecycle).
                self.memory
                    .pull_failures
                    .entry(o.node.clone())
                    .or_default()
                    .insert(image.clone());
                let (node, image, error) = (o.node.clone(), image.clone(), e.to_string());
                self.journal.submit("record a failed pull", move |s| {
                    s.record_pull_failure(&node, &image, &error, now_ms())
                });
            }
            (Action::RemoveJob { container, end }, Ok(said)) => {
                let l = &container.labels;
                let (level, kind) = match end {
                    JobEnd::Exited { code: 0, .. } => (Level::Info, "job.ok"),
                    _ => (Level::Error, "job.failed"),
                };
                let said = said
                    .as_deref()
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                let message = format!("job {}/{} on {} {end}{said}", l.app, l.job, o.node);
                self.journal.event(
                    NewEvent::new(level, kind, message)
                        .app(l.app.clone())
                        .node(o.node.clone()),
                );
            }
            _ => {}
        }
    }
}

/// A pod that moves leaves its local volumes (and those of the paths its
/// images declare) on the node it leaves: it starts on new, empty ones.
/// Said plainly, as a warning.
fn local_data_left(
    desired: &crate::reconcile::Desired,
    planned: &Planned,
    change: &PlacementChange,
) -> Option<NewEvent> {
    let PlacementChange::Place {
        pod,
        node,
        from: Some(from),
    } = change
    else {
        return None;
    };
    let app = desired.apps.get(&pod.app)?;
    let mut left: Vec<String> = app
        .volumes
        .values()
        .filter(|v| v.kind == crate::config::VolumeKind::Local)
        .map(|v| v.name.clone())
        .collect();
    for s in &app.services {
        if let Some(paths) = planned.storage.image_mounts(s) {
            left.extend(paths.iter().map(|p| format!("{}:{p}", s.name)));
        }
    }
    if left.is_empty() {
        return None;
    }
    Some(
        NewEvent::new(
            Level::Warn,
            "volume.left_behind",
            format!(
                "{pod} moves from node {from} to node {node}: its local volumes ({}) stay on {from} and it starts on new, empty ones",
                left.join(", ")
            ),
        )
        .app(pod.app.clone())
        .node(from.clone()),
    )
}

/// Just enough of a request to answer it.
fn request_stub(id: i64) -> Request {
    Request {
        id,
        at: 0,
        kind: RequestKind::Restart,
        node_id: None,
        container: None,
        by: String::new(),
        state: crate::store::RequestState::Running,
        done_at: None,
        result: None,
    }
}

/// Records a request's outcome on it and as an event.
fn answer_request(journal: &Writer, req: &Request, answer: Result<String, String>) {
    let (ok, text) = match answer {
        Ok(t) => (true, t),
        Err(t) => (false, t),
    };
    tracing::info!(id = req.id, ok, "request: {text}");
    let level = if ok { Level::Info } else { Level::Error };
    let mut event = NewEvent::new(
        level,
        &format!("request.{}", req.kind.as_str()),
        text.clone(),
    );
    event.node_id = req.node_id.clone();
    let id = req.id;
    journal.submit("answer a request", move |s| {
        s.finish_request(id, ok, &text)?;
        s.record_event(&event).map(|_| ())
    });
}
