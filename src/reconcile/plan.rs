//! The plan: from desired state, nodes, what they run and stored
//! placements, the actions that converge them. Pure; the apply side runs
//! the actions.
//!
//! Rules:
//! - Idempotent: when the nodes run what is desired, the plan is empty.
//!   Containers are recognised by their labels, so a rerun after a
//!   half-done apply picks up where it stopped (a created container is
//!   started, not created again).
//! - Make before break: a container whose spec changed, and a pod that
//!   moves, keep running until their successor is observed ready (running,
//!   and healthy if the service has a health check); a later plan removes
//!   them. A pod's old containers on another node go together, once the
//!   whole pod is ready on its node. Except a service with a writable
//!   volume: on its node, the old container is removed just before the new
//!   one runs (after the pull), as two must not write the same data.
//! - Containers of apps, services or instances no longer in fleet.toml are
//!   removed at once (apply drains each from the proxy first, as it does
//!   every container it removes).
//! - Foreign containers (without Prism's five labels, like job containers)
//!   and other fleets' containers are never touched; nor is any node that
//!   is untrusted, unknown, or was not observed this pass.
//! - On a node: unwanted containers are removed first (freeing memory),
//!   then per pod: its network, image pulls, then its services in start
//!   order.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Serialize, Serializer};

use super::desired::{Desired, PodKey, ServiceSpec};
use super::docker::{RunSpec, registry_host};
use super::job::{JobContainer, JobEnd, JobRun};
use super::problem::Problem;
use super::schedule::{NodeState, NodeView, PodDemand, schedule};
use super::spec::SpecHash;
use super::storage::Storage;
use super::volumes::{EbsSpec, VolumeKey};
use crate::config::{Filesystem, PullPolicy, RestartPolicy};
use crate::observe::{ContainerId, ContainerState, Health, PrismLabels, RunState};
use crate::store::Placement;

/// What a reconcile would do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// Where every placed pod runs after this plan, by app and instance.
    pub placements: Vec<PodPlacement>,
    /// How `placements` differs from the stored ones: what to write to the
    /// state store.
    pub placement_changes: Vec<PlacementChange>,
    /// Per node id, the actions to run there in order. Only nodes with
    /// actions appear.
    pub actions: BTreeMap<String, Vec<Action>>,
    /// Pods that could not be placed or moved.
    pub problems: Vec<Problem>,
    /// Old containers kept until their successor is ready (a replacement
    /// or a move in progress): not converged yet, though nothing is to be
    /// done now.
    pub waiting: Vec<String>,
}

impl Plan {
    /// Nothing to run and nothing to store (problems may remain).
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty() && self.placement_changes.is_empty()
    }

    /// Every action, with its node, in order.
    #[cfg(test)]
    pub(crate) fn all_actions(&self) -> impl Iterator<Item = (&str, &Action)> {
        self.actions
            .iter()
            .flat_map(|(node, acts)| acts.iter().map(move |a| (node.as_str(), a)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PodPlacement {
    pub pod: PodKey,
    pub node: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum PlacementChange {
    /// The pod now belongs on `node`; `from` is its previous node, if it
    /// had one. Store it (`Store::set_placement`).
    Place {
        pod: PodKey,
        node: String,
        from: Option<String>,
    },
    /// The pod is no longer wanted (app removed, scaled down) or has no
    /// node to go to: forget it (`Store::remove_placement`).
    Unplace { pod: PodKey, node: String },
}

impl fmt::Display for PlacementChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlacementChange::Place {
                pod,
                node,
                from: None,
            } => write!(f, "+ place {pod} on node {node}"),
            PlacementChange::Place {
                pod,
                node,
                from: Some(from),
            } => write!(f, "~ move {pod} from node {from} to node {node}"),
            PlacementChange::Unplace { pod, node } => {
                write!(f, "- unplace {pod} from node {node}")
            }
        }
    }
}

/// A Prism container on a node, as the plan names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ContainerRef {
    #[serde(serialize_with = "container_id")]
    pub id: ContainerId,
    pub name: String,
    pub pod: PodKey,
    pub service: String,
    pub spec: SpecHash,
}

fn container_id<S: Serializer>(id: &ContainerId, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(id.as_str())
}

impl ContainerRef {
    pub(crate) fn new(c: &ContainerState, l: &PrismLabels) -> ContainerRef {
        ContainerRef {
            id: c.id.clone(),
            name: c.name.clone(),
            pod: PodKey::new(&l.app, l.instance),
            service: l.service.clone(),
            spec: SpecHash::from_label(&l.spec),
        }
    }
}

/// One step on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Create the pod's network ([`super::docker::network_create_argv`]);
    /// "already exists" counts as done. Comes before the pod's first run.
    EnsureNetwork { pod: PodKey, network: String },
    /// Pull an image before running it; `login`: a registry host with
    /// credentials in fleet.toml, to `docker login` to first. With
    /// `policy` `missing` (the default), only when the node lacks the
    /// image: then neither login nor pull happens. `prepare`: pulled
    /// ahead, for no pod yet, by a preparing node that lacks it; a failure
    /// is recorded and lets the node go ready all the same.
    Pull {
        image: String,
        login: Option<String>,
        policy: PullPolicy,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        prepare: bool,
    },
    /// Create and start a container (`docker run`).
    Run {
        spec: Box<RunSpec>,
        reason: RunReason,
    },
    /// Start a container of the current spec that is created or exited.
    Start {
        container: ContainerRef,
        state: String,
    },
    /// Restart a container: one of the current spec that is unhealthy (its
    /// restart policy allows it), or one someone asked to restart.
    Restart {
        container: ContainerRef,
        why: RestartWhy,
    },
    /// Stop (with a grace period) and remove a container.
    Remove {
        container: ContainerRef,
        reason: RemoveReason,
    },
    /// Remove the pod's network: its last container on this node was
    /// removed just before. "No such network" counts as done.
    RemoveNetwork { pod: PodKey, network: String },
    /// Start a scheduled job's run, then its watchdog.
    RunJob { run: Box<JobRun> },
    /// Report how a job's run ended and remove its container (`docker rm
    /// -f`: an overdue one is stopped too).
    RemoveJob {
        container: JobContainer,
        end: JobEnd,
    },
    /// Install and start Docker on a node that answers without it
    /// (`[fleet] bootstrap = true`).
    InstallDocker,
    /// Make a pod's local volume (`docker volume create`, labelled), unless
    /// the node has it. `seed`: a volume the service's old container wrote
    /// at the same path, copied into the new one first (kept as it was).
    EnsureLocalVolume {
        volume: VolumeKey,
        name: String,
        seed: Option<String>,
    },
    /// Create a pod's EBS volume in `zone` (this node's), tagged as the
    /// pod's, and wait until it is available. It is attached next pass.
    CreateVolume {
        volume: VolumeKey,
        zone: String,
        ebs: Box<EbsSpec>,
        /// Made from a snapshot of this volume to move the pod's data to
        /// `zone`: tagged so, the old one is superseded (and kept).
        moved_from: Option<String>,
    },
    /// Start a snapshot of EBS volume `id` (an EC2 call; this node is not
    /// touched). For a schedule, then delete that schedule's snapshots of
    /// it past the newest `keep`.
    SnapshotVolume {
        volume: VolumeKey,
        id: String,
        why: SnapshotWhy,
    },
    /// Attach EBS volume `id` to this node's instance, as the first of
    /// `devices` not in use, and wait until the node sees the device.
    AttachVolume {
        volume: VolumeKey,
        id: String,
        devices: Vec<String>,
    },
    /// Mount the attached volume at its directory: find its device, check
    /// the filesystem, or make one when `may_format` and the device holds
    /// nothing at all (no filesystem, no partition table); then the `data`
    /// directory containers see. As root, through Docker.
    MountVolume {
        volume: VolumeKey,
        id: String,
        name: String,
        filesystem: Filesystem,
        may_format: bool,
    },
    /// Unmount a durable volume whose containers are gone from this node.
    UnmountVolume { volume: VolumeKey, name: String },
    /// Detach EBS volume `id` from `instance` and wait until it is
    /// available. `force` only when that instance is terminated.
    DetachVolume {
        volume: VolumeKey,
        id: String,
        instance: String,
        force: bool,
    },
    /// Terminate this node's instance through EC2: it has not answered
    /// for `silent_for_s` seconds and holds the data of pods that wait to
    /// move (`[lifecycle] fence`).
    Fence {
        instance: String,
        silent_for_s: u64,
        pods: Vec<PodKey>,
    },
    /// Set the node's part of the mesh up, or bring it to `setup` (as
    /// root, through Docker): its WireGuard key (made there, once), the
    /// mesh network for its containers, the interface and its peers, the
    /// firewall rules, and the resolver of the fleet's names.
    SetUpMesh { setup: Box<super::mesh::MeshSetup> },
    /// Write the names the node's resolver answers (`records` lines), as
    /// the login user.
    WriteNames {
        #[serde(skip)]
        hosts: String,
        records: usize,
    },
    /// Delete a volume someone asked to delete (`prism volumes delete`,
    /// request `request`): never planned otherwise.
    DeleteVolume {
        volume: VolumeKey,
        id: VolumeRef,
        request: i64,
    },
}

/// Why a volume is snapshotted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum SnapshotWhy {
    /// `snapshots = { schedule, keep }`. `named`: snapshots fleet.toml
    /// names in a `from_snapshot`, never pruned.
    Scheduled { keep: u32, named: Vec<String> },
    /// Its zone has had no ready node for `[lifecycle] zone_wait`.
    Move { to_zone: String },
}

/// Which volume a delete removes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum VolumeRef {
    /// An EBS volume, by id.
    Ebs(String),
    /// A Docker volume on the node, by name.
    Docker(String),
}

impl std::fmt::Display for VolumeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VolumeRef::Ebs(id) => write!(f, "EBS volume {id}"),
            VolumeRef::Docker(name) => write!(f, "Docker volume {name}"),
        }
    }
}

/// Why a container is restarted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum RestartWhy {
    /// Prism's checks found it unhealthy.
    Unhealthy,
    /// Someone asked (the dashboard's `x`): request `request`, by `by`.
    Asked { request: i64, by: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum RunReason {
    /// Nothing of this service runs for the pod.
    New,
    /// A container of an older spec runs here; it is removed once this one
    /// is ready.
    Replace { old: SpecHash },
    /// The pod moves here from `from` (lost, draining or gone); its old
    /// containers there are removed once it is ready here.
    Move { from: String },
    /// The container of the current spec is dead and was removed just
    /// before.
    Recreate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum RemoveReason {
    /// The app is no longer in fleet.toml.
    AppRemoved,
    /// The service is no longer in the app.
    ServiceRemoved,
    /// The instance is beyond the app's `instances`.
    ScaledDown { instances: u32 },
    /// A container of the current spec (`spec`) is ready beside it.
    SpecChanged { spec: SpecHash },
    /// The spec changed and the service mounts a writable volume: the old
    /// container goes before the one of spec `spec` starts, so that two
    /// never write the same data.
    StopFirst { spec: SpecHash },
    /// The pod runs on another node now (it moved, or this node came back
    /// after its pods were placed elsewhere), and is ready there.
    Stray { node: String },
    /// Another container of the same service and spec is kept (`kept`).
    Duplicate { kept: String },
    /// Dead containers cannot be started; a new one replaces it.
    Dead,
    /// Its pod holds data and moves to node `to`: stopped here first, so
    /// that it never runs in two places.
    Moves { to: String },
}

impl fmt::Display for RemoveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RemoveReason::AppRemoved => f.write_str("app removed from fleet.toml"),
            RemoveReason::ServiceRemoved => f.write_str("service removed from fleet.toml"),
            RemoveReason::ScaledDown { instances } => {
                write!(f, "scaled down to {instances} instances")
            }
            RemoveReason::SpecChanged { spec } => {
                write!(f, "spec changed; {spec} is ready")
            }
            RemoveReason::StopFirst { spec } => {
                write!(
                    f,
                    "spec changed; stopped before {spec} starts, as they share writable volumes"
                )
            }
            RemoveReason::Stray { node } => write!(f, "pod now runs on node {node}"),
            RemoveReason::Duplicate { kept } => write!(f, "duplicate of {kept}"),
            RemoveReason::Dead => f.write_str("dead"),
            RemoveReason::Moves { to } => {
                write!(
                    f,
                    "its pod holds data and moves to node {to}: stopped here first"
                )
            }
        }
    }
}

impl fmt::Display for Action {
    /// One `prism plan` line: `+ create`, `~ replace`, `- remove`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::EnsureNetwork { network, .. } => write!(f, "+ create network {network}"),
            Action::Pull {
                image,
                login,
                policy,
                prepare,
            } => {
                write!(f, "+ pull {image}")?;
                let mut notes = Vec::new();
                if *policy == PullPolicy::Missing {
                    notes.push("if missing".to_owned());
                }
                if let Some(host) = login {
                    notes.push(format!("logging in to {host}"));
                }
                if *prepare {
                    notes.push("preparing the node".to_owned());
                }
                if notes.is_empty() {
                    Ok(())
                } else {
                    write!(f, " ({})", notes.join(", "))
                }
            }
            Action::Run { spec, reason } => {
                let what = format!(
                    "{} {} ({}, spec {})",
                    spec.pod, spec.service, spec.config.image, spec.spec
                );
                match reason {
                    RunReason::New => write!(f, "+ create {what}"),
                    RunReason::Move { from } => {
                        write!(f, "+ create {what}, moving from node {from}")
                    }
                    RunReason::Replace { old } => write!(f, "~ replace {what}, was spec {old}"),
                    RunReason::Recreate => write!(f, "~ replace {what}, the old one is dead"),
                }
            }
            Action::Start {
                container: c,
                state,
            } => {
                write!(f, "+ start {} {} ({}, {state})", c.pod, c.service, c.name)
            }
            Action::Restart { container: c, why } => {
                let why = match why {
                    RestartWhy::Unhealthy => "unhealthy".to_owned(),
                    RestartWhy::Asked { by, .. } => format!("asked by {by}"),
                };
                write!(f, "~ restart {} {} ({}, {why})", c.pod, c.service, c.name)
            }
            Action::Remove {
                container: c,
                reason,
            } => write!(f, "- remove {} {} ({}, {reason})", c.pod, c.service, c.name),
            Action::RemoveNetwork { network, .. } => write!(f, "- remove network {network}"),
            Action::RunJob { run } => write!(
                f,
                "+ run job {}/{} ({}, until unix {})",
                run.labels.app, run.labels.job, run.name, run.labels.deadline
            ),
            Action::RemoveJob { container, end } => write!(
                f,
                "- remove job {}/{} ({}, {end})",
                container.labels.app, container.labels.job, container.name
            ),
            Action::InstallDocker => f.write_str("+ install Docker"),
            Action::EnsureLocalVolume { volume, name, seed } => {
                write!(f, "+ create local volume {volume} ({name})")?;
                match seed {
                    Some(from) => write!(f, ", copying what {from} holds"),
                    None => Ok(()),
                }
            }
            Action::CreateVolume {
                volume,
                zone,
                ebs,
                moved_from,
            } => {
                write!(
                    f,
                    "+ create EBS volume {volume} ({} GiB {}, {zone})",
                    ebs.size_gib,
                    ebs.ebs_type.as_str()
                )?;
                match (moved_from, &ebs.from_snapshot) {
                    (Some(old), Some(snap)) => {
                        write!(f, " from snapshot {snap} of {old}, to move it there")
                    }
                    (None, Some(snap)) => write!(f, " from snapshot {snap}"),
                    _ => Ok(()),
                }
            }
            Action::SnapshotVolume { volume, id, why } => match why {
                SnapshotWhy::Scheduled { keep, .. } => write!(
                    f,
                    "+ snapshot {volume} ({id}), as scheduled; keeping the newest {keep}"
                ),
                SnapshotWhy::Move { to_zone } => {
                    write!(f, "+ snapshot {volume} ({id}) to move it to zone {to_zone}")
                }
            },
            Action::AttachVolume { volume, id, .. } => {
                write!(f, "+ attach {volume} ({id})")
            }
            Action::MountVolume {
                volume,
                id,
                filesystem,
                may_format,
                ..
            } => {
                write!(f, "+ mount {volume} ({id})")?;
                if *may_format {
                    write!(f, ", making {} if it holds nothing", filesystem.as_str())?;
                }
                Ok(())
            }
            Action::UnmountVolume { volume, .. } => write!(f, "- unmount {volume}"),
            Action::DetachVolume {
                volume,
                id,
                instance,
                force,
            } => {
                let how = if *force { "force-detach" } else { "detach" };
                write!(f, "- {how} {volume} ({id}) from {instance}")
            }
            Action::Fence {
                instance,
                silent_for_s,
                pods,
            } => {
                let pods: Vec<String> = pods.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "! fence: terminate instance {instance}, silent for {silent_for_s}s, holding {}",
                    pods.join(", ")
                )
            }
            Action::DeleteVolume {
                volume,
                id,
                request,
            } => write!(f, "- delete {volume} ({id}), as request {request} asks"),
            Action::SetUpMesh { setup } => write!(
                f,
                "~ mesh: {} on {} with {} peer(s)",
                setup.subnet,
                setup.interface,
                setup.peers.len()
            ),
            Action::WriteNames { records, .. } => {
                write!(f, "~ names: {records} record(s)")
            }
        }
    }
}

/// Plans one reconcile.
///
/// - `observed`: per node id, the fleet's containers on it, for the nodes
///   observed this pass only. A container's `health` is what the planner
///   judges: the caller writes Prism's own check verdict over Docker's for
///   services that declare `health` (else such a container is never ready).
/// - `placements`: as stored. A desired pod without one is adopted by the
///   ready or suspect node running most of its containers, if any.
pub fn plan(
    desired: &Desired,
    nodes: &[NodeView],
    observed: &BTreeMap<String, Vec<ContainerState>>,
    placements: &[Placement],
    storage: &Storage,
) -> Plan {
    let view = View::new(desired, nodes, observed, storage);

    let stored: BTreeMap<PodKey, String> = placements
        .iter()
        .map(|p| (PodKey::new(&p.app, p.instance), p.node_id.clone()))
        .collect();
    let demands: Vec<PodDemand> = desired
        .pods()
        .filter_map(|pod| {
            let app = desired.apps.get(&pod.app)?;
            Some(PodDemand {
                holds_data: view.pod_holds_data(app),
                zone: view.zone_rule(&pod, app),
                pod,
                memory: app.memory,
                cpu: app.cpu,
            })
        })
        .collect();
    let mut current = BTreeMap::new();
    for d in &demands {
        let node = match stored.get(&d.pod) {
            Some(node) => Some(node.clone()),
            None => view.adopt(&d.pod),
        };
        if let Some(node) = node {
            current.insert(d.pod.clone(), node);
        }
    }
    let sched = schedule(&demands, nodes, &current, desired.reserve);

    let mut out = Plan {
        placements: sched
            .placements
            .iter()
            .map(|(pod, node)| PodPlacement {
                pod: pod.clone(),
                node: node.clone(),
            })
            .collect(),
        placement_changes: placement_changes(&stored, &sched.placements),
        actions: BTreeMap::new(),
        problems: sched.problems.clone(),
        waiting: Vec::new(),
    };

    for node in nodes {
        let Some(containers) = view.on_node.get(node.id.as_str()) else {
            continue;
        };
        let mut p = NodePlanner {
            desired,
            view: &view,
            targets: &sched.placements,
            node,
            containers,
            actions: Vec::new(),
            waiting: Vec::new(),
        };
        p.remove_unwanted();
        for (pod, target) in &sched.placements {
            if target == &node.id {
                p.converge_pod(pod, &current);
            }
        }
        p.remove_emptied_networks();
        p.release_volumes();
        p.prepare();
        out.waiting.append(&mut p.waiting);
        if !p.actions.is_empty() {
            out.actions.insert(node.id.clone(), dedup(p.actions));
        }
    }
    for (node, fence) in volume_steps::fences(desired, nodes, &demands, &sched.placements) {
        out.actions.entry(node).or_default().push(fence);
    }
    let (moves, waiting) =
        volume_steps::zone_moves(desired, &view, nodes, &demands, &sched, &current);
    for (node, step) in moves {
        out.actions.entry(node).or_default().push(step);
    }
    out.waiting.extend(waiting);
    out
}

/// Store changes turning `stored` into `new`.
fn placement_changes(
    stored: &BTreeMap<PodKey, String>,
    new: &BTreeMap<PodKey, String>,
) -> Vec<PlacementChange> {
    let pods: BTreeSet<&PodKey> = stored.keys().chain(new.keys()).collect();
    pods.into_iter()
        .filter_map(|pod| match (stored.get(pod), new.get(pod)) {
            (None, Some(node)) => Some(PlacementChange::Place {
                pod: pod.clone(),
                node: node.clone(),
                from: None,
            }),
            (Some(old), Some(node)) if old != node => Some(PlacementChange::Place {
                pod: pod.clone(),
                node: node.clone(),
                from: Some(old.clone()),
            }),
            (Some(old), None) => Some(PlacementChange::Unplace {
                pod: pod.clone(),
                node: old.clone(),
            }),
            _ => None,
        })
        .collect()
}

/// Drops repeated network, pull and local volume actions on one node (two
/// pods sharing an image, two services one volume), keeping the first.
fn dedup(actions: Vec<Action>) -> Vec<Action> {
    let mut seen = BTreeSet::new();
    actions
        .into_iter()
        .filter(|a| match a {
            Action::EnsureNetwork { network, .. } => seen.insert(format!("network {network}")),
            Action::Pull { image, .. } => seen.insert(format!("pull {image}")),
            Action::EnsureLocalVolume { name, .. } => seen.insert(format!("volume {name}")),
            _ => true,
        })
        .collect()
}

/// A Prism container of this fleet on a node that may be acted on.
struct Seen<'a> {
    c: &'a ContainerState,
    l: &'a PrismLabels,
}

/// The observed containers that matter, by node, and storage.
struct View<'a> {
    desired: &'a Desired,
    /// Touchable, known, observed nodes only.
    on_node: BTreeMap<&'a str, Vec<Seen<'a>>>,
    nodes: BTreeMap<&'a str, &'a NodeView>,
    storage: &'a Storage,
}

impl<'a> View<'a> {
    fn new(
        desired: &'a Desired,
        nodes: &'a [NodeView],
        observed: &'a BTreeMap<String, Vec<ContainerState>>,
        storage: &'a Storage,
    ) -> View<'a> {
        let by_id: BTreeMap<&str, &NodeView> = nodes.iter().map(|n| (n.id.as_str(), n)).collect();
        let mut on_node = BTreeMap::new();
        for (id, list) in observed {
            let Some(node) = by_id.get(id.as_str()) else {
                continue;
            };
            if !node.state.touchable() {
                continue;
            }
            let mut seen: Vec<Seen> = list
                .iter()
                .filter_map(|c| {
                    let l = c.identity.prism()?;
                    (l.fleet == desired.fleet).then_some(Seen { c, l })
                })
                .collect();
            seen.sort_by(|a, b| {
                (
                    &a.l.app,
                    a.l.instance,
                    &a.l.service,
                    &a.l.spec,
                    &a.c.name,
                    &a.c.id,
                )
                    .cmp(&(
                        &b.l.app,
                        b.l.instance,
                        &b.l.service,
                        &b.l.spec,
                        &b.c.name,
                        &b.c.id,
                    ))
            });
            on_node.insert(node.id.as_str(), seen);
        }
        View {
            desired,
            on_node,
            nodes: by_id,
            storage,
        }
    }

    /// The pod's containers on a node.
    fn pod_on<'s>(
        &'s self,
        node: &str,
        pod: &'s PodKey,
    ) -> impl Iterator<Item = &'s Seen<'a>> + 's {
        self.on_node
            .get(node)
            .into_iter()
            .flatten()
            .filter(move |s| s.l.app == pod.app && s.l.instance == pod.instance)
    }

    /// For a pod without a stored placement: the ready or suspect node
    /// holding most of its running containers (then most containers, then
    /// the lowest id).
    fn adopt(&self, pod: &PodKey) -> Option<String> {
        self.on_node
            .keys()
            .filter(|id| self.nodes.get(*id).is_some_and(|n| n.state.keeps_pods()))
            .filter_map(|id| {
                let all: Vec<&Seen> = self.pod_on(id, pod).collect();
                let running = all
                    .iter()
                    .filter(|s| s.c.state == RunState::Running)
                    .count();
                (!all.is_empty()).then_some((running, all.len(), std::cmp::Reverse(*id)))
            })
            .max()
            .map(|(_, _, std::cmp::Reverse(id))| id.to_owned())
    }

    /// Whether every service of the pod has a ready container of its
    /// current spec on `node` (false for a node not observed).
    fn pod_ready_on(&self, node: &str, pod: &PodKey) -> bool {
        let Some(app) = self.desired.app_of(pod) else {
            return false;
        };
        self.on_node.contains_key(node)
            && app.services.iter().all(|svc| {
                self.pod_on(node, pod).any(|s| {
                    s.l.service == svc.name && s.l.spec == svc.spec.as_str() && ready(s.c, svc)
                })
            })
    }
}

/// A container that serves: running (and healthy when the service has a
/// check, or the image has one of its own), or a one-shot (restart `no` or
/// `on-failure`) that exited 0.
fn ready(c: &ContainerState, svc: &ServiceSpec) -> bool {
    match c.state {
        RunState::Running => match c.health {
            Health::Healthy => true,
            Health::None => svc.health.is_none(),
            _ => false,
        },
        RunState::Exited => completed(c, svc),
        _ => false,
    }
}

/// Exited 0 under a policy that does not restart it: done, not failed.
fn completed(c: &ContainerState, svc: &ServiceSpec) -> bool {
    c.exit_code == 0
        && matches!(
            svc.container.restart,
            RestartPolicy::No | RestartPolicy::OnFailure
        )
}

/// Builds one node's actions.
struct NodePlanner<'a, 'v> {
    desired: &'a Desired,
    view: &'v View<'a>,
    targets: &'v BTreeMap<PodKey, String>,
    node: &'a NodeView,
    containers: &'v [Seen<'a>],
    actions: Vec<Action>,
    waiting: Vec<String>,
}

impl NodePlanner<'_, '_> {
    fn remove(&mut self, s: &Seen, reason: RemoveReason) {
        self.actions.push(Action::Remove {
            container: ContainerRef::new(s.c, s.l),
            reason,
        });
    }

    /// Containers nobody wants any more: of removed apps, services or
    /// instances; of pods ready elsewhere; of older specs whose successor
    /// is ready here.
    fn remove_unwanted(&mut self) {
        let containers = self.containers;
        for s in containers {
            let pod = PodKey::new(&s.l.app, s.l.instance);
            let Some(app) = self.desired.apps.get(&s.l.app) else {
                self.remove(s, RemoveReason::AppRemoved);
                continue;
            };
            if s.l.instance >= app.instances {
                self.remove(
                    s,
                    RemoveReason::ScaledDown {
                        instances: app.instances,
                    },
                );
                continue;
            }
            let Some(svc) = app.service(&s.l.service) else {
                self.remove(s, RemoveReason::ServiceRemoved);
                continue;
            };
            // A pod with no node keeps what it has.
            let Some(target) = self.targets.get(&pod) else {
                continue;
            };
            if target != &self.node.id {
                if self.view.pod_holds_data(app) {
                    // Stop before start: its successor waits for this.
                    let to = target.clone();
                    self.remove(s, RemoveReason::Moves { to });
                } else if self.view.pod_ready_on(target, &pod) {
                    let node = target.clone();
                    self.remove(s, RemoveReason::Stray { node });
                } else {
                    self.waiting.push(format!(
                        "{} on node {} waits until {pod} is ready on node {target}",
                        s.c.name, self.node.id
                    ));
                }
            } else if s.l.spec != svc.spec.as_str() {
                let mut successors = self.containers.iter().filter(|n| {
                    n.l.app == s.l.app
                        && n.l.instance == s.l.instance
                        && n.l.service == s.l.service
                        && n.l.spec == svc.spec.as_str()
                });
                let spec = svc.spec.clone();
                if self.view.service_holds_data(svc) {
                    // Normally removed just before the run; here the
                    // successor exists already (an old one came back, or a
                    // removal failed) and may wait on the old one's lock.
                    if successors.next().is_some() {
                        self.remove(s, RemoveReason::StopFirst { spec });
                    }
                } else if successors.any(|n| ready(n.c, svc)) {
                    self.remove(s, RemoveReason::SpecChanged { spec });
                } else {
                    self.waiting.push(format!(
                        "{} on node {} waits until {pod} {} of spec {spec} is ready",
                        s.c.name, self.node.id, svc.name
                    ));
                }
            }
            // Else: the current spec on its node, handled per pod.
        }
    }

    /// After the removals: the network of every pod that this plan leaves
    /// with no container on this node goes too.
    fn remove_emptied_networks(&mut self) {
        let mut removed: BTreeMap<PodKey, usize> = BTreeMap::new();
        let mut kept = BTreeSet::new();
        for a in &self.actions {
            match a {
                Action::Remove { container, .. } => {
                    *removed.entry(container.pod.clone()).or_default() += 1
                }
                Action::Run { spec, .. } => {
                    kept.insert(spec.pod.clone());
                }
                Action::Start { container, .. } | Action::Restart { container, .. } => {
                    kept.insert(container.pod.clone());
                }
                _ => {}
            }
        }
        for (pod, n) in removed {
            let on_node = self
                .containers
                .iter()
                .filter(|s| s.l.app == pod.app && s.l.instance == pod.instance);
            if kept.contains(&pod) || on_node.count() != n {
                continue;
            }
            let network = self.desired.network(&pod);
            self.actions.push(Action::RemoveNetwork { pod, network });
        }
    }

    /// The registry to log in to before pulling `image`, if fleet.toml
    /// has credentials for it.
    fn login(&self, image: &str) -> Option<String> {
        let host = registry_host(image);
        self.desired
            .registries
            .contains(host)
            .then(|| host.to_owned())
    }

    /// A preparing node pulls each of the fleet's images it lacks, before
    /// it takes pods (see operator::lifecycle). After its pods' own pulls,
    /// so those come first where both want an image.
    fn prepare(&mut self) {
        if self.node.state != NodeState::Preparing {
            return;
        }
        let Some(held) = &self.node.images else {
            return;
        };
        for (image, policy) in self.desired.image_policies() {
            if held.contains(&image) {
                continue;
            }
            let login = self.login(&image);
            self.actions.push(Action::Pull {
                image,
                login,
                policy,
                prepare: true,
            });
        }
    }

    /// Brings one pod placed on this node to its desired state.
    fn converge_pod(&mut self, pod: &PodKey, current: &BTreeMap<PodKey, String>) {
        let Some(app) = self.desired.app_of(pod) else {
            return;
        };
        // A draining node keeps a pod that cannot move, but gets nothing new.
        if !self.node.state.keeps_pods() {
            return;
        }
        // Stop before start: a pod that holds data runs in one place only.
        if self.view.pod_holds_data(app)
            && let Some(other) = self.view.pod_elsewhere(pod, &self.node.id)
        {
            self.waiting.push(format!(
                "{pod} waits on node {} until its containers on node {other} are gone",
                self.node.id
            ));
            return;
        }
        // Its durable volumes first: a container never starts without them.
        let mut steps = match self.durable_steps(pod, app) {
            volume_steps::Durable::Ready(steps) => steps,
            volume_steps::Durable::Wait { steps, why } => {
                self.actions.extend(steps);
                self.waiting.push(why);
                return;
            }
        };
        let volume_steps = std::mem::take(&mut steps);
        let moved_from = current
            .get(pod)
            .filter(|from| *from != &self.node.id)
            .cloned();
        let mut runs = Vec::new();
        let mut waiting = Vec::new();
        for svc in &app.services {
            self.converge_service(
                pod,
                svc,
                moved_from.as_deref(),
                &mut steps,
                &mut runs,
                &mut waiting,
            );
        }
        self.waiting.append(&mut waiting);
        self.actions.extend(volume_steps);
        if !runs.is_empty() {
            self.actions.push(Action::EnsureNetwork {
                pod: pod.clone(),
                network: self.desired.network(pod),
            });
            for (image, policy) in runs {
                let login = self.login(&image);
                self.actions.push(Action::Pull {
                    image,
                    login,
                    policy,
                    prepare: false,
                });
            }
        }
        self.actions.extend(steps);
    }

    fn converge_service(
        &self,
        pod: &PodKey,
        svc: &ServiceSpec,
        moved_from: Option<&str>,
        steps: &mut Vec<Action>,
        runs: &mut Vec<(String, PullPolicy)>,
        waiting: &mut Vec<String>,
    ) {
        let mine = |s: &&Seen| {
            s.l.app == pod.app && s.l.instance == pod.instance && s.l.service == svc.name
        };
        let (currents, olds): (Vec<&Seen>, Vec<&Seen>) = self
            .containers
            .iter()
            .filter(mine)
            .partition(|s| s.l.spec == svc.spec.as_str());
        // Dead containers cannot be started: they go, and free their name.
        let (dead, live): (Vec<&Seen>, Vec<&Seen>) = currents
            .into_iter()
            .partition(|s| s.c.state == RunState::Dead);
        for d in &dead {
            steps.push(Action::Remove {
                container: ContainerRef::new(d.c, d.l),
                reason: RemoveReason::Dead,
            });
        }
        // Keep the best of the others: running first, then the one with the
        // expected name, then the oldest.
        let run = self.desired.run_spec(pod, svc);
        let mut ranked = live;
        ranked.sort_by_key(|s| {
            (
                s.c.state != RunState::Running,
                s.c.name != run.name,
                s.c.created_at,
                s.c.id.clone(),
            )
        });
        let run_reason = if let Some((keep, rest)) = ranked.split_first() {
            for dup in rest {
                steps.push(Action::Remove {
                    container: ContainerRef::new(dup.c, dup.l),
                    reason: RemoveReason::Duplicate {
                        kept: keep.c.name.clone(),
                    },
                });
            }
            let container = ContainerRef::new(keep.c, keep.l);
            match &keep.c.state {
                RunState::Created => steps.push(Action::Start {
                    container,
                    state: "created".into(),
                }),
                RunState::Exited if restarts_after_exit(keep.c, svc) => steps.push(Action::Start {
                    container,
                    state: format!("exited with {}", keep.c.exit_code),
                }),
                RunState::Running
                    if keep.c.health == Health::Unhealthy
                        && svc.container.restart != RestartPolicy::No =>
                {
                    steps.push(Action::Restart {
                        container,
                        why: RestartWhy::Unhealthy,
                    })
                }
                // Running, restarting (Docker is on it), paused (by hand),
                // removing (gone by the next pass), or unknown: leave it.
                _ => {}
            }
            None
        } else if !dead.is_empty() {
            Some(RunReason::Recreate)
        } else {
            Some(match (olds.first(), moved_from) {
                (Some(old), _) => RunReason::Replace {
                    old: SpecHash::from_label(&old.l.spec),
                },
                (None, Some(from)) => RunReason::Move {
                    from: from.to_owned(),
                },
                (None, None) => RunReason::New,
            })
        };
        let Some(reason) = run_reason else {
            return;
        };
        // One pull per image; `always` wins over `missing`.
        match runs.iter_mut().find(|(i, _)| *i == svc.container.image) {
            Some((_, policy)) => *policy = (*policy).max(svc.pull),
            None => runs.push((svc.container.image.clone(), svc.pull)),
        }
        // The paths the image declares as volumes get volumes of the pod;
        // until they are known (read once the image is on a node), the
        // container waits, as Docker would give each an anonymous volume
        // that the next container never sees.
        let Some(image_mounts) = self.view.storage.image_mounts(svc) else {
            waiting.push(format!(
                "{pod} {} waits until node {} has read the volumes image {} declares",
                svc.name, self.node.id, svc.container.image
            ));
            return;
        };
        if self.view.service_holds_data(svc) && matches!(reason, RunReason::Replace { .. }) {
            for old in &olds {
                steps.push(Action::Remove {
                    container: ContainerRef::new(old.c, old.l),
                    reason: RemoveReason::StopFirst {
                        spec: svc.spec.clone(),
                    },
                });
            }
        }
        let mut run = run;
        run.image_mounts = image_mounts;
        run.dns = self.node.mesh;
        if run.config.mesh && run.dns.is_none() {
            waiting.push(format!(
                "{pod} {}: waits for node {} to join the mesh",
                svc.name, self.node.id
            ));
            return;
        }
        steps.extend(self.local_volume_steps(&run, &olds));
        steps.push(Action::Run {
            spec: Box::new(run),
            reason,
        });
    }
}

/// Whether an exited container of the current spec should be started:
/// always for `always` and `unless-stopped` (the desired state is
/// running), for `on-failure` only after a failure, never for `no`.
fn restarts_after_exit(c: &ContainerState, svc: &ServiceSpec) -> bool {
    match svc.container.restart {
        RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
        RestartPolicy::OnFailure => c.exit_code != 0,
        RestartPolicy::No => false,
    }
}

mod volume_steps;

#[cfg(test)]
mod tests;
