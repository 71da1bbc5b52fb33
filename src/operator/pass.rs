//! One reconcile pass: discover → observe → record → plan (pure) → apply.
//! The daemon, `reconcile --once` and `plan` all run passes through here.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::apply::{Context, Outcome, apply};
use super::health::check_all;
use super::lifecycle::{GONE, worth_recheck};
use super::observe::{Observed, Recorder, observe_with_metadata};
use super::routing::Router;
use crate::bootstrap::install_docker;
use crate::cloud::{Discovery, DiscoveryError, Found, Inventory, Lifecycle, Node, Presence, Stale};
use crate::config::Config;
use crate::observe::{Condition, ContainerState, Health, ProbeLimits, Probed};
use crate::reconcile::{
    Action, Desired, MissingSecret, NodeView, PlacementChange, Plan, SecretError, Secrets, plan,
    resolve_secrets,
};
use crate::ssh::{Pool, SshError, SshSettings};
use crate::store::{Level, NewEvent, Placement, Store, StoreError, now_ms};

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("{0}")]
    Secret(#[from] SecretError),
    #[error("{0}")]
    MissingSecret(#[from] MissingSecret),
    #[error("{0}")]
    Ssh(#[from] SshError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Discovery(#[from] DiscoveryError),
}

impl PassError {
    /// Problems of the operator's own set-up (fleet.toml's secrets, the
    /// key), as opposed to the world: nothing was applied.
    pub fn is_setup(&self) -> bool {
        matches!(
            self,
            PassError::Secret(_) | PassError::MissingSecret(_) | PassError::Ssh(_)
        )
    }
}

/// Everything a pass needs, made once per process.
pub struct Operator {
    pub config: Config,
    pub desired: Desired,
    secrets: Secrets,
    pub store: Arc<Mutex<Store>>,
    pub pool: Pool,
    inventory: Inventory,
    recorder: Mutex<Recorder>,
    /// When each spot node's instance metadata was last read.
    notices_read: Mutex<BTreeMap<String, Instant>>,
    /// The nodes of the latest pass, for work between passes (jobs).
    last_nodes: Mutex<Vec<Node>>,
    /// Containers were just started, or await their first passing check:
    /// the next pass should come soon (see [`Operator::next_pass`]).
    settling: AtomicBool,
    /// When the last apply started containers.
    started_at: Mutex<Option<Instant>>,
    /// The proxy's side of each pass, when one runs (the daemon).
    router: Option<Arc<dyn Router>>,
}

/// How soon the next pass comes while containers are settling: their
/// checks run as often as each service's `interval` allows.
const SETTLE: Duration = Duration::from_millis(500);
/// For this long after containers were started, at most: a container that
/// never passes does not keep passes (and EC2 calls) quick for ever.
const SETTLE_FOR: Duration = Duration::from_secs(30);

/// What a pass saw and decided.
pub struct Planned {
    pub nodes: Vec<Node>,
    pub views: Vec<NodeView>,
    /// The fleet's containers per ready node, with Prism's health verdicts.
    pub observed: BTreeMap<String, Vec<ContainerState>>,
    pub plan: Plan,
    /// Discovery failed: `nodes` are the last known ones.
    pub stale: Option<Stale>,
}

impl Operator {
    pub async fn new(config: Config) -> Result<Operator, PassError> {
        let secrets = resolve_secrets(&config)?;
        let desired = Desired::build(&config.fleet, &secrets)?;
        let store = Arc::new(Mutex::new(Store::open(&config.state_path())?));
        let pool = Pool::new(SshSettings::from_config(&config)?, Some(store.clone()));
        let inventory = Inventory::new(Discovery::from_config(&config).await);
        let recorder = Mutex::new(Recorder::new(config.fleet.lifecycle.lost_after));
        Ok(Operator {
            config,
            desired,
            secrets,
            store,
            pool,
            inventory,
            recorder,
            notices_read: Mutex::new(BTreeMap::new()),
            last_nodes: Mutex::new(Vec::new()),
            settling: AtomicBool::new(false),
            started_at: Mutex::new(None),
            router: None,
        })
    }

    /// Routes follow each pass, and containers are drained before they
    /// stop.
    pub fn with_router(self, router: Arc<dyn Router>) -> Operator {
        Operator {
            router: Some(router),
            ..self
        }
    }

    /// Publishes routes to what a pass observed, if a router is set. Call
    /// it before applying the pass's plan, so a new instance takes
    /// requests before its predecessor is drained.
    pub fn route(&self, planned: &Planned) {
        if let Some(router) = &self.router {
            router.publish(planned);
        }
    }

    fn fleet(&self) -> &str {
        &self.config.fleet.fleet.name
    }

    /// Discovers, probes and records every node, then plans. Changes
    /// nothing on the nodes, except installing Docker where fleet.toml
    /// opts in to bootstrap.
    pub async fn observe_and_plan(&self) -> Result<Planned, PassError> {
        let found = self.inventory.nodes(|| self.stored_nodes()).await?;
        self.report_discovery(&found)?;
        let Found {
            mut nodes, stale, ..
        } = found;
        let limits = ProbeLimits {
            timeout: self.config.fleet.lifecycle.probe_timeout.0,
            ..ProbeLimits::default()
        };
        let mut pass = observe_with_metadata(&self.pool, &nodes, self.fleet(), limits, |n| {
            self.notice_due(n)
        })
        .await;
        // A node that stopped answering may have been terminated while it
        // was probed: asking again now moves its pods a pass earlier. Only
        // on a first miss, so a node that stays unreachable costs one
        // DescribeInstances per pass, not two.
        if stale.is_none() && self.recheck_due(&pass)? {
            self.recheck(&mut nodes, &mut pass).await?;
        }
        *self.last_nodes.lock().unwrap_or_else(|p| p.into_inner()) = nodes.clone();
        if self.config.fleet.fleet.bootstrap {
            self.bootstrap(&mut pass).await;
        }
        let views = self
            .recorder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(&self.store, &pass, stale.is_none(), &self.desired.images())?;
        // Prism's own checks decide health for services that declare one.
        let verdicts = check_all(&self.pool, &self.store, &self.config.fleet, &pass).await?;
        let starting = verdicts.values().any(|h| *h == Health::Starting);
        self.settling.store(starting, Ordering::Relaxed);
        let observed: BTreeMap<String, Vec<ContainerState>> = pass
            .into_iter()
            .filter_map(|o| match o.probed {
                Probed::Ready { containers, .. } => Some((o.node.id, containers)),
                _ => None,
            })
            .map(|(node, mut containers)| {
                for c in &mut containers {
                    if let Some(verdict) = verdicts.get(&c.id) {
                        c.health = verdict.clone();
                    }
                }
                (node, containers)
            })
            .collect();
        let placements = self.lock().placements()?;
        let plan = plan(&self.desired, &views, &observed, &placements);
        Ok(Planned {
            nodes,
            views,
            observed,
            plan,
            stale,
        })
    }

    /// The time from one pass's start to the next: `interval`, or less
    /// while containers just started await their checks, so that a pod
    /// that moved is seen healthy (and what it replaces removed) as soon
    /// as its checks allow rather than a whole interval later.
    pub fn next_pass(&self, interval: Duration) -> Duration {
        let recent = self
            .started_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() < SETTLE_FOR);
        if recent && self.settling.load(Ordering::Relaxed) {
            interval.min(SETTLE)
        } else {
            interval
        }
    }

    /// Whether some node's probe is its first miss ([`worth_recheck`]).
    fn recheck_due(&self, pass: &[Observed]) -> Result<bool, PassError> {
        let store = self.lock();
        for o in pass
            .iter()
            .filter(|o| matches!(o.probed, Probed::Failed(_)))
        {
            let previous = store.node(&o.node.id)?;
            if worth_recheck(
                &o.node,
                &o.probed,
                previous.as_ref().map(|p| p.state.as_str()),
            ) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Asks discovery again; drops what it no longer lists from the pass and
    /// takes each node's presence anew. Kept as is if discovery fails now.
    async fn recheck(
        &self,
        nodes: &mut Vec<Node>,
        pass: &mut Vec<Observed>,
    ) -> Result<(), PassError> {
        let again = self.inventory.nodes(Vec::new).await;
        let Ok(again) = again else {
            return Ok(());
        };
        self.report_discovery(&again)?;
        if again.stale.is_some() {
            return Ok(());
        }
        let now = |id: &str| again.nodes.iter().find(|n| n.id == id);
        pass.retain(|o| now(&o.node.id).is_some());
        for o in pass.iter_mut() {
            if let Some(n) = now(&o.node.id) {
                o.node.presence = n.presence;
            }
        }
        nodes.retain(|n| now(&n.id).is_some());
        Ok(())
    }

    /// The metadata URL to read on `node` this pass: spot nodes only, every
    /// `[lifecycle] notice_interval`.
    fn notice_due(&self, node: &Node) -> Option<String> {
        let url = self.config.fleet.metadata_url()?;
        if node.lifecycle != Lifecycle::Spot {
            return None;
        }
        let every = self.config.fleet.lifecycle.notice_interval.0;
        let now = Instant::now();
        let mut read = self.notices_read.lock().unwrap_or_else(|p| p.into_inner());
        match read.get(&node.id) {
            Some(at) if now.duration_since(*at) < every => None,
            _ => {
                read.insert(node.id.clone(), now);
                Some(url.to_owned())
            }
        }
    }

    /// The nodes the state store knows (not gone): what is probed when
    /// discovery fails before it ever answered.
    fn stored_nodes(&self) -> Vec<Node> {
        let rows = match self.lock().nodes() {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the recorded nodes");
                return Vec::new();
            }
        };
        let fleet = &self.config.fleet;
        rows.into_iter()
            .filter(|r| r.state != GONE && !r.address.is_empty())
            .map(|r| Node {
                port: fleet.ssh.port,
                user: fleet.ssh.user.clone(),
                provider: if r.provider == "static" {
                    "static"
                } else {
                    "ec2"
                },
                lifecycle: Lifecycle::parse(&r.lifecycle).unwrap_or(Lifecycle::OnDemand),
                presence: Presence::Running,
                launched_at: None,
                memory: fleet.discovery.node_memory.map(|b| b.0),
                cpu: fleet.discovery.node_cpus.map(|m| m.0),
                tags: BTreeMap::new(),
                id: r.id,
                name: r.name,
                address: r.address,
                zone: r.zone,
                instance_type: r.instance_type,
            })
            .collect()
    }

    /// Logs each failed attempt at discovery; records an event when it
    /// starts failing and when it answers again.
    fn report_discovery(&self, found: &Found) -> Result<(), PassError> {
        if let Some(s) = found.stale.as_ref().filter(|s| s.attempted) {
            let kept = if s.from_store {
                "the nodes recorded in the state store"
            } else {
                "the nodes it last listed"
            };
            tracing::warn!(
                error = %s.error,
                failures = s.failures,
                retry_in_ms = s.retry_in.as_millis() as u64,
                nodes = found.nodes.len(),
                "discovery failed; probing {kept}"
            );
            if s.failures == 1 {
                self.lock().record_event(&NewEvent::new(
                    Level::Warn,
                    "discovery.stale",
                    format!(
                        "discovery failed, so the node list is stale: Prism keeps probing {kept} ({} nodes) and retries with backoff: {}",
                        found.nodes.len(),
                        s.error
                    ),
                ))?;
            }
        }
        if let Some(r) = &found.recovered {
            let message = format!(
                "discovery answers again, after {} failed attempts over {}",
                r.failures,
                humantime::format_duration(std::time::Duration::from_secs(r.after.as_secs()))
            );
            tracing::info!("{message}");
            self.lock()
                .record_event(&NewEvent::info("discovery.recovered", message))?;
        }
        Ok(())
    }

    /// Stores the plan's placements, then runs its actions; `progress`
    /// hears of each outcome as it happens.
    pub async fn apply(
        &self,
        planned: &Planned,
        progress: &(dyn Fn(&Outcome) + Sync),
    ) -> Result<Vec<Outcome>, PassError> {
        self.store_placements(&planned.plan)?;
        if planned.plan.all_actions().any(|(_, a)| {
            matches!(
                a,
                Action::Run { .. } | Action::Start { .. } | Action::Restart { .. }
            )
        }) {
            self.settling.store(true, Ordering::Relaxed);
            *self.started_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        }
        let targets: Vec<_> = planned.nodes.iter().map(Node::target).collect();
        let cx = Context {
            pool: &self.pool,
            store: &self.store,
            secrets: &self.secrets,
            fleet: self.fleet(),
            router: self.router.as_deref(),
            progress,
        };
        Ok(apply(&cx, &targets, &planned.plan).await)
    }

    fn store_placements(&self, plan: &Plan) -> Result<(), PassError> {
        let store = self.lock();
        let now = now_ms();
        for change in &plan.placement_changes {
            match change {
                PlacementChange::Place { pod, node, .. } => store.set_placement(&Placement {
                    app: pod.app.clone(),
                    instance: pod.instance,
                    node_id: node.clone(),
                    placed_at: now,
                })?,
                PlacementChange::Unplace { pod, .. } => {
                    store.remove_placement(&pod.app, pod.instance)?
                }
            }
            store.record_event(&NewEvent::info("placement", change.to_string()))?;
        }
        Ok(())
    }

    /// Installs Docker on reachable nodes without it, then probes them again.
    async fn bootstrap(&self, pass: &mut [Observed]) {
        for seen in pass.iter_mut() {
            if !matches!(
                &seen.probed,
                Probed::NoDocker {
                    condition: Condition::DockerMissing,
                    ..
                }
            ) {
                continue;
            }
            let target = seen.node.target();
            let event = match install_docker(&self.pool, &target).await {
                Ok(outcome) => NewEvent::info("node.bootstrap", outcome.summary()),
                Err(e) => NewEvent::new(Level::Error, "node.bootstrap", e.to_string()),
            };
            if let Err(e) = self.lock().record_event(&event.node(seen.node.id.clone())) {
                tracing::warn!(error = %e, "could not record a bootstrap event");
            }
            seen.probed = crate::observe::probe(
                &self.pool,
                &target,
                &self.config.fleet.fleet.name,
                ProbeLimits::default(),
            )
            .await;
        }
    }

    /// The node a pod is placed on, as the latest pass saw it.
    pub fn node_of(&self, app: &str, instance: u32) -> Result<Option<Node>, PassError> {
        let placements = self.lock().placements()?;
        let Some(p) = placements
            .iter()
            .find(|p| p.app == app && p.instance == instance)
        else {
            return Ok(None);
        };
        let nodes = self.last_nodes.lock().unwrap_or_else(|p| p.into_inner());
        Ok(nodes.iter().find(|n| n.id == p.node_id).cloned())
    }

    /// A node as the latest pass found it.
    /// Drains a node by hand from the next pass on: its pods start
    /// elsewhere, then leave it. `None` when the latest pass did not find it.
    pub fn drain(&self, id: &str) -> Option<Node> {
        let node = self.node(id)?;
        self.recorder
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(id);
        Some(node)
    }

    pub fn node(&self, id: &str) -> Option<Node> {
        let nodes = self.last_nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes.iter().find(|n| n.id == id).cloned()
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}
