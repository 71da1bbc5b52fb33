//! One reconcile pass: discover → observe → record → plan (pure) → apply.
//! The daemon, `reconcile --once` and `plan` all run passes through here.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::apply::{Context, Outcome, apply};
use super::health::check_all;
use super::observe::{Observed, observe, record};
use super::routing::Router;
use crate::bootstrap::install_docker;
use crate::cloud::{Discovery, DiscoveryError, Node};
use crate::config::Config;
use crate::observe::{Condition, ContainerState, ProbeLimits, Probed};
use crate::reconcile::{
    Desired, MissingSecret, NodeView, PlacementChange, Plan, SecretError, Secrets, plan,
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
    discovery: Discovery,
    /// The nodes of the latest pass, for work between passes (jobs).
    last_nodes: Mutex<Vec<Node>>,
    /// The proxy's side of each pass, when one runs (the daemon).
    router: Option<Arc<dyn Router>>,
}

/// What a pass saw and decided.
pub struct Planned {
    pub nodes: Vec<Node>,
    pub views: Vec<NodeView>,
    /// The fleet's containers per ready node, with Prism's health verdicts.
    pub observed: BTreeMap<String, Vec<ContainerState>>,
    pub plan: Plan,
}

impl Operator {
    pub async fn new(config: Config) -> Result<Operator, PassError> {
        let secrets = resolve_secrets(&config)?;
        let desired = Desired::build(&config.fleet, &secrets)?;
        let store = Arc::new(Mutex::new(Store::open(&config.state_path())?));
        let pool = Pool::new(SshSettings::from_config(&config)?, Some(store.clone()));
        let discovery = Discovery::from_config(&config).await;
        Ok(Operator {
            config,
            desired,
            secrets,
            store,
            pool,
            discovery,
            last_nodes: Mutex::new(Vec::new()),
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
        let nodes = self.discovery.nodes().await?;
        *self.last_nodes.lock().unwrap_or_else(|p| p.into_inner()) = nodes.clone();
        let mut pass = observe(&self.pool, &nodes, self.fleet(), ProbeLimits::default()).await;
        if self.config.fleet.fleet.bootstrap {
            self.bootstrap(&mut pass).await;
        }
        let views = record(&self.store, &pass)?;
        // Prism's own checks decide health for services that declare one.
        let verdicts = check_all(&self.pool, &self.store, &self.config.fleet, &pass).await?;
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
        })
    }

    /// Stores the plan's placements, then runs its actions; `progress`
    /// hears of each outcome as it happens.
    pub async fn apply(
        &self,
        planned: &Planned,
        progress: &(dyn Fn(&Outcome) + Sync),
    ) -> Result<Vec<Outcome>, PassError> {
        self.store_placements(&planned.plan)?;
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

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}
