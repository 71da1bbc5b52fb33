//! One reconcile pass: discover → observe → record → plan (pure). The
//! daemon, the dashboard, `reconcile --once` and `plan` all plan through
//! here; what is planned is carried out by the applier alone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use super::health::check_all_within;
use super::lifecycle::worth_recheck;
use super::memory::Memory;
use super::mesh_local::LocalMesh;
use super::observe::{Observed, observe_with_metadata, record};
use super::routing::Router;
use crate::cloud::{
    Discovery, DiscoveryError, Ebs, Found, Inventory, Lifecycle, Node, Presence, Stale,
};
use crate::config::{Config, Provider};
use crate::observe::{
    Condition, ContainerId, ContainerState, Health, MeshFacts, ProbeLimits, Probed,
};
use crate::reconcile::{
    Action, Admission, Desired, Hold, HoldKind, MeshInput, MeshSettings, MissingSecret, NodeView,
    Peer, Plan, SecretError, Secrets, SnapshotTick, SpecKey, Storage, Tick, apps_removed,
    fleet_pods, gateway, hold_apps, inventory_shrank, members, names, operator_peers, plan,
    plan_deletes, plan_jobs, plan_mesh, plan_restarts, plan_snapshots, resolve_secrets,
};
use crate::ssh::{Pool, SshError, SshSettings};
use crate::store::{Level, NewEvent, RequestKind, Store, VolumeLines, Writer, now_ms};

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    MissingSecret(#[from] MissingSecret),
    #[error(transparent)]
    Ssh(#[from] SshError),
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// The state file could not give the spec hash's key.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("reading the state file ended early: {0}")]
    Task(String),
}

impl PassError {
    /// Problems of the operator's own set-up (fleet.toml's secrets, the
    /// key), as opposed to the world: nothing was applied.
    pub(crate) fn is_setup(&self) -> bool {
        matches!(
            self,
            PassError::Secret(_) | PassError::MissingSecret(_) | PassError::Ssh(_)
        )
    }
}

/// What one fleet.toml makes: made once per load, read by every pass.
pub struct Operator {
    pub config: Config,
    pub desired: Desired,
    pub secrets: Arc<Secrets>,
    pub pool: Arc<Pool>,
    inventory: Inventory,
    /// The proxy's side of each pass, when one runs.
    pub router: Option<Arc<dyn Router>>,
    /// EBS, with EC2 discovery: the fleet's durable volumes.
    pub ebs: Option<Ebs>,
    /// With `[network]`: the operator box's side of the mesh.
    pub mesh: Option<Arc<LocalMesh>>,
}

/// What a pass saw and decided.
#[derive(Default)]
pub struct Planned {
    pub nodes: Vec<Node>,
    pub views: Vec<NodeView>,
    /// With a mesh: the operator box's peers (every node with a key).
    pub mesh_peers: Option<Vec<Peer>>,
    /// The fleet's containers per ready node, with Prism's health verdicts.
    pub observed: BTreeMap<String, Vec<ContainerState>>,
    /// Volumes as this pass saw them.
    pub storage: Storage,
    /// The same, as `prism volumes` lists them.
    pub volumes: VolumeLines,
    pub plan: Plan,
    /// Discovery failed: `nodes` are the last known ones.
    pub stale: Option<Stale>,
    /// Changes held back by the guards against mass change.
    pub held: Vec<Hold>,
    /// Restart requests that cannot be done, with why, by request id.
    pub refused: Vec<(i64, String)>,
    /// Job ticks and restart requests planned, by node: those whose node
    /// gets no worker this pass (one is still at work) are kept for the
    /// next.
    pub carried: Vec<(String, Carried)>,
}

/// The mesh's steps into `plan`: a node's set-up before anything else it
/// does (its containers join the mesh network), the names after. Returns
/// the operator box's peers.
fn plan_mesh_steps(
    local: &LocalMesh,
    memory: &Memory,
    plan: &mut Plan,
    views: &[NodeView],
    observed: &BTreeMap<String, Vec<ContainerState>>,
    facts: &BTreeMap<String, Option<MeshFacts>>,
    fleet: &str,
) -> Vec<Peer> {
    let leaving: BTreeSet<ContainerId> = plan
        .actions
        .values()
        .flatten()
        .filter_map(|a| match a {
            Action::Remove { container, .. } | Action::Restart { container, .. } => {
                Some(container.id.clone())
            }
            _ => None,
        })
        .collect();
    let text = names(
        fleet,
        &local.settings.domain,
        views,
        observed,
        &memory.mesh_last_seen,
        &leaving,
    );
    let (setups, writes) = plan_mesh(&MeshInput {
        settings: &local.settings,
        views,
        members: &memory.mesh,
        operator_key: local.public_key.as_deref(),
        facts,
        names: &text,
    });
    for (node, step) in setups {
        plan.actions.entry(node).or_default().insert(0, step);
    }
    for (node, step) in writes {
        plan.actions.entry(node).or_default().push(step);
    }
    operator_peers(&local.settings, views, &memory.mesh)
}

/// Something planned for a node that must not be lost if the node's
/// worker cannot take it this pass.
#[derive(Debug, Clone)]
pub enum Carried {
    Tick(Tick),
    Snapshot(SnapshotTick),
    Ask(crate::store::Request),
}

impl Operator {
    /// `journal` pins host keys and records what SSH sees.
    pub async fn new(config: Config, journal: Option<Writer>) -> Result<Operator, PassError> {
        let mut secrets = resolve_secrets(&config)?;
        // The spec hash's key lives in the state file; without a writer
        // (nothing applies) the file is read, or made, here.
        secrets.spec_key = SpecKey(match &journal {
            Some(journal) => journal.call("read the spec key", |s| s.spec_key()).await?,
            None => {
                let state = config.state_path();
                tokio::task::spawn_blocking(move || Store::open(&state)?.spec_key())
                    .await
                    .map_err(|e| PassError::Task(e.to_string()))??
            }
        });
        let desired = Desired::build(&config.fleet, &secrets)?;
        let pool = Pool::new(SshSettings::from_config(&config)?, journal);
        let inventory = Inventory::new(Discovery::from_config(&config).await);
        let ebs = match config.fleet.discovery.provider {
            Provider::Ec2 => Some(Ebs::from_config(&config).await),
            Provider::Static => None,
        };
        let mesh = match MeshSettings::of(config.fleet.network.as_ref()) {
            Some(settings) => Some(Arc::new(
                LocalMesh::new(settings, &config.state_path()).await,
            )),
            None => None,
        };
        Ok(Operator {
            config,
            desired,
            secrets: Arc::new(secrets),
            pool: Arc::new(pool),
            inventory,
            router: None,
            ebs,
            mesh,
        })
    }

    /// Routes follow each pass, and containers are drained before they
    /// stop.
    pub(crate) fn with_router(self, router: Arc<dyn Router>) -> Operator {
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

    /// Discovers, probes and records every node, then plans: the pods, the
    /// jobs' ticks and the restarts asked for in `memory`, and what the
    /// guards hold back. Changes nothing on the nodes.
    pub(crate) async fn observe_and_plan(
        &self,
        memory: &mut Memory,
        journal: &Writer,
    ) -> Result<Planned, PassError> {
        let found = self
            .inventory
            .nodes(|| stored_nodes(&self.config, memory))
            .await?;
        report_discovery(journal, &found);
        let Found {
            mut nodes,
            mut stale,
            listed,
            ..
        } = found;
        let mut held = Vec::new();
        if stale.is_none() {
            let known: BTreeSet<String> = memory.known().map(|n| n.id.clone()).collect();
            let change = inventory_shrank(&known, &listed);
            if let Some(hold) = self.admit(memory, journal, HoldKind::InventoryShrank, change) {
                // Keep probing the nodes the listing lacks, as if it had
                // failed: those that answer stay, none is marked gone.
                let missing: BTreeSet<&String> = hold.items.iter().collect();
                nodes.extend(
                    stored_nodes(&self.config, memory)
                        .into_iter()
                        .filter(|n| missing.contains(&n.id)),
                );
                nodes.sort_by(|a, b| a.id.cmp(&b.id));
                stale = Some(Stale::held(&hold.summary));
                held.push(hold);
            }
        }
        let limits = ProbeLimits {
            timeout: self.config.fleet.lifecycle.probe_timeout.0,
            ..ProbeLimits::default()
        };
        let notices: BTreeMap<String, String> = nodes
            .iter()
            .filter_map(|n| Some((n.id.clone(), self.notice_due(memory, n)?)))
            .collect();
        let unread: BTreeSet<String> = self
            .desired
            .images()
            .into_iter()
            .filter(|i| !memory.image_volumes.contains_key(i))
            .collect();
        let probes = observe_with_metadata(
            &self.pool,
            &nodes,
            self.fleet(),
            limits,
            |n| notices.get(&n.id).cloned(),
            &unread,
        );
        let (mut pass, ebs) = tokio::join!(probes, self.list_ebs(memory));
        // A node that stopped answering may have been terminated while it
        // was probed: asking again now moves its pods a pass earlier. Only
        // on a first miss, so a node that stays unreachable costs one
        // DescribeInstances per pass, not two.
        let recheck = pass.iter().any(|o| {
            matches!(o.probed, Probed::Failed(_))
                && worth_recheck(&o.node, &o.probed, memory.state_of(&o.node.id))
        });
        if stale.is_none() && recheck {
            self.recheck(journal, &mut nodes, &mut pass).await;
        }
        let wanted = self.desired.images();
        let mut views = record(
            memory,
            journal,
            &pass,
            stale.is_none(),
            &wanted,
            self.config.fleet.lifecycle.lost_after,
        );
        // Prism's own checks decide health for services that declare one.
        let reaches = |ip| self.mesh.as_ref().is_none_or(|m| m.reaches(ip));
        let verdicts = check_all_within(
            &self.pool,
            &mut memory.health,
            journal,
            &self.config.fleet,
            &pass,
            &reaches,
        )
        .await;
        let docker_missing: Vec<String> = pass
            .iter()
            .filter(|o| {
                matches!(
                    o.probed,
                    Probed::NoDocker {
                        condition: Condition::DockerMissing,
                        ..
                    }
                )
            })
            .map(|o| o.node.id.clone())
            .collect();
        let pass_storage = NodeStorage::of(&pass);
        // What each node answering with Docker holds of the mesh.
        let mesh_facts: BTreeMap<String, Option<MeshFacts>> = pass
            .iter()
            .filter_map(|o| match &o.probed {
                Probed::Ready { facts, .. } => Some((o.node.id.clone(), facts.mesh.clone())),
                _ => None,
            })
            .collect();
        if let Some(local) = &self.mesh {
            self.allot_mesh(local, memory, journal, &mut views, &mesh_facts);
        }
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
        let storage = self.storage(memory, &pass_storage, ebs, &listed, &nodes, &views);
        let placements = memory.placement_list();
        let mut plan = plan(&self.desired, &views, &observed, &placements, &storage);

        // Then what else the nodes are to do: jobs, asked restarts, Docker.
        let ticks: Vec<Tick> = std::mem::take(&mut memory.due_jobs);
        let jobs = plan_jobs(
            &self.desired,
            &ticks,
            &views,
            &observed,
            &placements,
            now_ms() / 1000,
        );
        for (tick, why) in &jobs.skipped {
            let message = format!("job {}/{}: tick skipped: {why}", tick.app, tick.job);
            tracing::warn!(app = %tick.app, "{message}");
            journal.event(NewEvent::new(Level::Warn, "job.skipped", message).app(tick.app.clone()));
        }
        merge(&mut plan, jobs.actions);
        let mut carried: Vec<(String, Carried)> = jobs
            .planned
            .into_iter()
            .map(|(node, tick)| (node, Carried::Tick(tick)))
            .collect();
        let snapshot_ticks = std::mem::take(&mut memory.due_snapshots);
        let snapshots = plan_snapshots(&self.desired, &snapshot_ticks, &views, &storage);
        for (tick, why) in &snapshots.skipped {
            let message = format!(
                "snapshot of {}'s volume {}: skipped: {why}",
                tick.app, tick.volume
            );
            tracing::warn!(app = %tick.app, "{message}");
            journal.event(
                NewEvent::new(Level::Warn, "volume.snapshot_skipped", message)
                    .app(tick.app.clone()),
            );
        }
        merge(&mut plan, snapshots.actions);
        carried.extend(
            snapshots
                .planned
                .into_iter()
                .map(|(node, t)| (node, Carried::Snapshot(t))),
        );
        let (deletes, asks): (Vec<_>, Vec<_>) = std::mem::take(&mut memory.asks)
            .into_iter()
            .partition(|a| a.kind == RequestKind::DeleteVolume);
        let (restarts, mut refused) = plan_restarts(self.fleet(), &asks, &views, &observed);
        carried.extend(
            asks.into_iter()
                .filter(|a| !refused.iter().any(|(r, _)| *r == a.id))
                .filter_map(|a| Some((a.node_id.clone()?, Carried::Ask(a)))),
        );
        merge(&mut plan, restarts);
        let deletes = plan_deletes(&self.desired, &deletes, &views, &storage);
        carried.extend(
            deletes
                .planned
                .into_iter()
                .map(|(node, a)| (node, Carried::Ask(a))),
        );
        refused.extend(deletes.refused);
        merge(&mut plan, deletes.actions);
        if self.config.fleet.fleet.bootstrap {
            let installs = docker_missing
                .into_iter()
                .map(|id| (id, vec![Action::InstallDocker]))
                .collect();
            merge(&mut plan, installs);
        }
        if self.mesh.is_some() {
            // What each node ran when it last answered, for its names
            // while it misses a probe.
            for (id, containers) in &observed {
                memory.mesh_last_seen.insert(id.clone(), containers.clone());
            }
            memory
                .mesh_last_seen
                .retain(|id, _| views.iter().any(|v| v.id == *id));
        }
        let mesh_peers = self.mesh.as_ref().map(|local| {
            plan_mesh_steps(
                local,
                memory,
                &mut plan,
                &views,
                &observed,
                &mesh_facts,
                self.fleet(),
            )
        });
        Ok(Planned {
            nodes,
            views,
            mesh_peers,
            observed,
            volumes: storage.lines(&self.desired),
            storage,
            plan,
            stale,
            held,
            refused,
            carried,
        })
    }

    /// Each listed node's /24 and key, kept in memory and the store; each
    /// view learns its mesh gateway (where its containers' names are).
    fn allot_mesh(
        &self,
        local: &LocalMesh,
        memory: &mut Memory,
        journal: &Writer,
        views: &mut [NodeView],
        facts: &BTreeMap<String, Option<MeshFacts>>,
    ) {
        let reported: BTreeMap<String, MeshFacts> = facts
            .iter()
            .filter_map(|(id, f)| Some((id.clone(), f.clone()?)))
            .collect();
        let members = members(&local.settings, views, &reported, &memory.mesh);
        if members != memory.mesh {
            for (id, m) in &members {
                if memory.mesh.get(id).map(|old| old.slot) != Some(m.slot) {
                    let subnet = local.settings.subnet(m.slot).map(|s| s.to_string());
                    journal.event(
                        NewEvent::info(
                            "mesh.member",
                            format!("node {id} holds {} of the mesh", subnet.unwrap_or_default()),
                        )
                        .node(id.clone()),
                    );
                }
            }
            for id in memory.mesh.keys().filter(|id| !members.contains_key(*id)) {
                journal.event(
                    NewEvent::info(
                        "mesh.left",
                        format!("node {id} left the mesh: its peer goes everywhere"),
                    )
                    .node(id.clone()),
                );
            }
            memory.mesh = members.clone();
            journal.submit("keep the mesh's members", move |s| {
                s.set_mesh_members(&members)
            });
        }
        for v in views.iter_mut() {
            v.mesh = memory
                .mesh
                .get(&v.id)
                .and_then(|m| local.settings.subnet(m.slot))
                .map(|s| gateway(&s));
        }
    }

    /// The guard against apps that vanished from fleet.toml, on a pass's
    /// plan: more than half of the fleet's pods removed that way is held
    /// back (see `reconcile::guard`). Not while a reload is held back: the
    /// loop plans with the fleet.toml it had, and the hold is the reload's.
    pub(crate) fn guard_apps(&self, memory: &mut Memory, journal: &Writer, planned: &mut Planned) {
        let placed = memory.placements.keys().cloned();
        let pods = fleet_pods(self.fleet(), placed, &planned.observed);
        let change = apps_removed(&self.desired, &pods);
        if let Some(hold) = self.admit(memory, journal, HoldKind::AppsRemoved, change) {
            hold_apps(&mut planned.plan, &hold.items);
            planned.held.push(hold);
        }
    }

    /// Judges a mass change of `kind`; returns the hold when it is held
    /// back. Keeps memory and the store in step and tells of it.
    pub(crate) fn admit(
        &self,
        memory: &mut Memory,
        journal: &Writer,
        kind: HoldKind,
        change: Option<crate::reconcile::MassChange>,
    ) -> Option<Hold> {
        let had = memory.holds.all().any(|h| h.kind == kind);
        let hold_for = self.config.fleet.guard.hold.0;
        match memory.holds.admit(kind, change, now_ms(), hold_for) {
            Admission::Clear => {
                if had {
                    journal.submit("clear a hold", move |s| s.remove_hold(kind));
                }
                None
            }
            Admission::Held { hold, new } => {
                if new {
                    let message = format!(
                        "{}; held back for {} unless `prism confirm` lets it go sooner",
                        hold.summary,
                        humantime::format_duration(hold_for)
                    );
                    tracing::warn!("{message}");
                    journal.event(NewEvent::new(Level::Warn, "guard.held", message));
                    Memory::keep_hold(journal, &hold);
                }
                Some(hold)
            }
            Admission::Go(hold) => {
                let how = if hold.confirmed {
                    "confirmed"
                } else {
                    "still seen after the hold"
                };
                let message = format!("{} ({how}): going ahead", hold.summary);
                tracing::warn!("{message}");
                journal.event(NewEvent::new(Level::Warn, "guard.released", message));
                None
            }
        }
    }

    /// The fleet's EBS volumes and Prism's snapshots of them, when the
    /// fleet has or had durable ones (EC2 discovery only); each `None` when
    /// it could not be listed.
    async fn list_ebs(&self, memory: &Memory) -> Listed {
        let Some(ebs) = self.ebs.as_ref() else {
            return (None, None);
        };
        let wanted = self
            .desired
            .apps
            .values()
            .any(|a| a.durable_volumes().next().is_some());
        if !wanted && !memory.had_ebs {
            return (Some(Vec::new()), Some(Vec::new()));
        }
        let (volumes, snapshots) = tokio::join!(ebs.volumes(), ebs.snapshots());
        let volumes = volumes
            .inspect_err(|e| tracing::warn!(error = %e, "cannot list the fleet's EBS volumes"))
            .ok();
        let snapshots = snapshots
            .inspect_err(|e| tracing::warn!(error = %e, "cannot list the fleet's EBS snapshots"))
            .ok();
        (volumes, snapshots)
    }

    /// What the plan knows of storage: EBS (`ebs`), what each node holds,
    /// the images' declared volumes (remembered), terminated instances.
    fn storage(
        &self,
        memory: &mut Memory,
        seen: &NodeStorage,
        (ebs, snapshots): Listed,
        listed: &BTreeSet<String>,
        nodes: &[Node],
        views: &[NodeView],
    ) -> Storage {
        for (image, paths) in &seen.image_volumes {
            memory.image_volumes.insert(image.clone(), paths.clone());
        }
        if let Some(v) = &ebs {
            memory.had_ebs = !v.is_empty();
        }
        let present: BTreeSet<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
        let zones_empty_for = zones_empty_for(memory, ebs.as_deref().unwrap_or_default(), views);
        Storage {
            ebs,
            snapshots,
            zones_empty_for,
            at_ms: now_ms(),
            mounted: seen.mounted.clone(),
            local: seen.local.clone(),
            image_volumes: memory.image_volumes.clone(),
            ended: listed
                .iter()
                .filter(|id| !present.contains(id.as_str()))
                .cloned()
                .collect(),
        }
    }

    /// Asks discovery again; drops what it no longer lists from the pass
    /// and takes each node's presence anew. Kept as is if discovery fails
    /// now.
    async fn recheck(&self, journal: &Writer, nodes: &mut Vec<Node>, pass: &mut Vec<Observed>) {
        let Ok(again) = self.inventory.nodes(Vec::new).await else {
            return;
        };
        report_discovery(journal, &again);
        if again.stale.is_some() {
            return;
        }
        let now = |id: &str| again.nodes.iter().find(|n| n.id == id);
        pass.retain(|o| now(&o.node.id).is_some());
        for o in pass.iter_mut() {
            if let Some(n) = now(&o.node.id) {
                o.node.presence = n.presence;
            }
        }
        nodes.retain(|n| now(&n.id).is_some());
    }

    /// The metadata URL to read on `node` this pass: spot nodes only, every
    /// `[lifecycle] notice_interval`.
    fn notice_due(&self, memory: &mut Memory, node: &Node) -> Option<String> {
        let url = self.config.fleet.metadata_url()?;
        if node.lifecycle != Lifecycle::Spot {
            return None;
        }
        let every = self.config.fleet.lifecycle.notice_interval.0;
        let now = Instant::now();
        match memory.notices_read.get(&node.id) {
            Some(at) if now.duration_since(*at) < every => None,
            _ => {
                memory.notices_read.insert(node.id.clone(), now);
                Some(url.to_owned())
            }
        }
    }
}

/// The fleet's EBS volumes and Prism's snapshots, as listed this pass.
type Listed = (
    Option<Vec<crate::reconcile::EbsVolume>>,
    Option<Vec<crate::reconcile::EbsSnapshot>>,
);

/// For each zone holding a volume of the fleet and no ready node: how
/// long it has had none (since this process started, if it never had).
fn zones_empty_for(
    memory: &mut Memory,
    ebs: &[crate::reconcile::EbsVolume],
    views: &[NodeView],
) -> BTreeMap<String, std::time::Duration> {
    let now = Instant::now();
    for v in views {
        if let (Some(zone), crate::reconcile::NodeState::Ready) = (&v.zone, v.state) {
            memory.zone_ready_at.insert(zone.clone(), now);
        }
    }
    let since = memory.loaded_at.unwrap_or(now);
    ebs.iter()
        .map(|v| v.zone.as_str())
        .collect::<BTreeSet<&str>>()
        .into_iter()
        .filter(|z| {
            !views.iter().any(|v| {
                v.zone.as_deref() == Some(*z) && v.state == crate::reconcile::NodeState::Ready
            })
        })
        .map(|z| {
            let last = memory.zone_ready_at.get(z).copied().unwrap_or(since);
            (z.to_owned(), now.saturating_duration_since(last))
        })
        .collect()
}

/// What the probes of a pass saw of storage, by node.
#[derive(Default)]
struct NodeStorage {
    mounted: BTreeMap<String, BTreeMap<String, String>>,
    local: BTreeMap<String, BTreeSet<String>>,
    image_volumes: BTreeMap<String, Vec<String>>,
}

impl NodeStorage {
    fn of(pass: &[Observed]) -> NodeStorage {
        let mut out = NodeStorage::default();
        for o in pass {
            let Probed::Ready {
                facts,
                volumes,
                image_volumes,
                ..
            } = &o.probed
            else {
                continue;
            };
            out.mounted
                .insert(o.node.id.clone(), facts.volume_mounts.clone());
            if let Some(v) = volumes {
                out.local.insert(o.node.id.clone(), v.clone());
            }
            for (image, paths) in image_volumes {
                out.image_volumes.insert(image.clone(), paths.clone());
            }
        }
        out
    }
}

/// Adds `more` after each node's planned actions.
fn merge(plan: &mut Plan, more: BTreeMap<String, Vec<Action>>) {
    for (node, actions) in more {
        if !actions.is_empty() {
            plan.actions.entry(node).or_default().extend(actions);
        }
    }
}

/// The nodes recorded (not gone): what is probed when discovery fails
/// before it ever answered, or lists too little.
fn stored_nodes(config: &Config, memory: &Memory) -> Vec<Node> {
    let fleet = &config.fleet;
    memory
        .known()
        .filter(|r| !r.address.is_empty())
        .map(|r| Node {
            port: fleet.ssh.port,
            user: fleet.ssh.user.clone(),
            provider: r.provider,
            lifecycle: r.lifecycle,
            presence: Presence::Running,
            halted: false,
            launched_at: None,
            memory: fleet.discovery.node_memory.map(|b| b.0),
            cpu: fleet.discovery.node_cpus.map(|m| m.0),
            tags: BTreeMap::new(),
            id: r.id.clone(),
            name: r.name.clone(),
            address: r.address.clone(),
            zone: r.zone.clone(),
            instance_type: r.instance_type.clone(),
        })
        .collect()
}

/// Logs each failed attempt at discovery; records an event when it
/// starts failing and when it answers again.
fn report_discovery(journal: &Writer, found: &Found) {
    if let Some(s) = found.stale.as_ref().filter(|s| s.attempted) {
        let kept = if s.from_store {
            "the nodes recorded in the state store"
        } else {
            "the nodes it last listed"
        };
        tracing::warn!(
            error = %s.error,
            failures = s.failures,
            retry_in_ms = u64::try_from(s.retry_in.as_millis()).unwrap_or(u64::MAX),
            nodes = found.nodes.len(),
            "discovery failed; probing {kept}"
        );
        if s.failures == 1 {
            journal.event(NewEvent::new(
                Level::Warn,
                "discovery.stale",
                format!(
                    "discovery failed, so the node list is stale: Prism keeps probing {kept} ({} nodes) and retries with backoff: {}",
                    found.nodes.len(),
                    s.error
                ),
            ));
        }
    }
    if let Some(r) = &found.recovered {
        let message = format!(
            "discovery answers again, after {} failed attempts over {}",
            r.failures,
            humantime::format_duration(std::time::Duration::from_secs(r.after.as_secs()))
        );
        tracing::info!("{message}");
        journal.event(NewEvent::info("discovery.recovered", message));
    }
}

impl Planned {
    /// A node's name for people: `node1 (i-0abc…)`, or the id alone.
    pub fn label(&self, id: &str) -> String {
        match self.nodes.iter().find(|n| n.id == id) {
            Some(n) if n.name != n.id => format!("{} ({})", n.name, n.id),
            _ => id.to_owned(),
        }
    }
}

/// Whether a node's health verdict says its new containers still settle.
pub(crate) fn settling(planned: &Planned) -> bool {
    planned
        .observed
        .values()
        .flatten()
        .any(|c| c.health == Health::Starting)
}
