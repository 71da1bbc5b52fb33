//! The plan's steps for volumes, and the rules that keep data safe:
//!
//! - A pod that holds data (a writable volume or host path, or a path its
//!   image declares) starts on a node only once none of its containers is
//!   left on another node: stop before start, never two copies.
//! - A durable volume is attached and mounted before any container of its
//!   pod runs; it is created on the pod's first placement, in the zone of
//!   the node chosen; it is detached from another node only when that
//!   node stopped (EC2 says so), and by force only when that instance is
//!   terminated. One attached to an instance that is not the fleet's is
//!   left alone.
//! - A volume is formatted only when Prism created it empty and never
//!   formatted it (no `prism:formatted` tag, no snapshot), and then only
//!   if the device holds nothing at all (checked on the node).
//! - A volume whose pod no longer runs on a node is unmounted and detached
//!   there once the pod's containers are gone; nothing is deleted.
//! - A node that stopped answering and holds such pods is fenced (its
//!   instance terminated) after `[lifecycle] fence_after`.

use super::*;
use crate::config::VolumeKind;
use crate::reconcile::desired::AppSpec;
use crate::reconcile::problem::ProblemKind;
use crate::reconcile::schedule::ZoneRule;
use crate::reconcile::schedule::{Schedule, schedule};
use crate::reconcile::storage::{AttachState, EbsState, SnapshotState};
use crate::reconcile::volumes::{MountSpec, image_volume_name};

/// Device names Prism attaches volumes as: those AWS recommends for EBS
/// data volumes. Nitro instances show them as NVMe devices whatever the
/// name; the node finds each by its volume id.
const DEVICES: [&str; 11] = [
    "/dev/sdf", "/dev/sdg", "/dev/sdh", "/dev/sdi", "/dev/sdj", "/dev/sdk", "/dev/sdl", "/dev/sdm",
    "/dev/sdn", "/dev/sdo", "/dev/sdp",
];

/// Whether a pod's durable volumes let its containers start on a node.
pub(super) enum Durable {
    /// All mounted there, or these steps (run before its containers) do it.
    Ready(Vec<Action>),
    /// Not this pass: these steps now, and why the containers wait.
    Wait { steps: Vec<Action>, why: String },
}

impl View<'_> {
    /// Whether the service writes data that outlives its container. An
    /// image not read yet counts as one that may.
    pub(super) fn service_holds_data(&self, svc: &ServiceSpec) -> bool {
        svc.holds_data() || self.storage.image_mounts(svc).is_none_or(|m| !m.is_empty())
    }

    pub(super) fn pod_holds_data(&self, app: &AppSpec) -> bool {
        app.services.iter().any(|s| self.service_holds_data(s))
    }

    /// Where the pod may run, by the zone of its durable volumes.
    pub(super) fn zone_rule(&self, pod: &PodKey, app: &AppSpec) -> ZoneRule {
        let durable: Vec<&str> = app.durable_volumes().map(|v| v.name.as_str()).collect();
        if durable.is_empty() {
            return ZoneRule::Any;
        }
        if self.storage.ebs.is_none() {
            return ZoneRule::Unknown;
        }
        let found: Vec<_> = durable
            .iter()
            .filter_map(|v| self.storage.ebs_of(&VolumeKey::new(pod, v)))
            .collect();
        // A move under way: where its volumes go (see `zone_moves`).
        found
            .iter()
            .find(|e| e.moved_from.is_some())
            .or(found.first())
            .map_or(ZoneRule::Any, |e| ZoneRule::In(e.zone.clone()))
    }

    /// An observed node other than `here` that still has containers of
    /// the pod.
    pub(super) fn pod_elsewhere(&self, pod: &PodKey, here: &str) -> Option<&str> {
        self.on_node
            .keys()
            .copied()
            .find(|id| *id != here && self.pod_on(id, pod).next().is_some())
    }
}

impl NodePlanner<'_, '_> {
    /// What it takes to have the pod's durable volumes mounted here.
    pub(super) fn durable_steps(&self, pod: &PodKey, app: &AppSpec) -> Durable {
        let here = self.node.id.as_str();
        let storage = self.view.storage;
        let mounted = storage.mounted.get(here);
        let mut steps = Vec::new();
        let mut waits = Vec::new();
        for v in app.durable_volumes() {
            let Some(ebs) = &v.ebs else { continue };
            let key = VolumeKey::new(pod, &v.name);
            let name = key.name(&self.desired.fleet);
            if mounted.is_some_and(|m| m.contains_key(&name)) {
                // Mounted, but the tag that it holds Prism's filesystem did
                // not make it (EC2 failed, the operator stopped): mount
                // again (a no-op) to tag it, so it is never formatted.
                if let Some(ev) = storage.ebs_of(&key)
                    && ev.formatted.is_none()
                    && ev.snapshot_id.is_none()
                {
                    steps.push(Action::MountVolume {
                        volume: key.clone(),
                        id: ev.id.clone(),
                        name: name.clone(),
                        filesystem: ebs.filesystem,
                        may_format: true,
                    });
                }
                continue;
            }
            if storage.ebs.is_none() {
                waits.push(format!("{key}: EC2 could not list the fleet's volumes"));
                continue;
            }
            let Some(ev) = storage.ebs_of(&key) else {
                match &self.node.zone {
                    Some(zone) => {
                        steps.push(Action::CreateVolume {
                            volume: key.clone(),
                            zone: zone.clone(),
                            ebs: Box::new(ebs.clone()),
                            moved_from: None,
                        });
                        waits.push(format!("{key} is being created in {zone}"));
                    }
                    None => waits.push(format!(
                        "{key}: node {here} has no availability zone to make it in"
                    )),
                }
                continue;
            };
            if self.node.zone.as_deref() != Some(ev.zone.as_str()) {
                waits.push(format!(
                    "{key} ({}) is in zone {}, node {here} is not",
                    ev.id, ev.zone
                ));
                continue;
            }
            let attach = Action::AttachVolume {
                volume: key.clone(),
                id: ev.id.clone(),
                devices: self.free_devices(),
            };
            let mount = Action::MountVolume {
                volume: key.clone(),
                id: ev.id.clone(),
                name: name.clone(),
                filesystem: ebs.filesystem,
                may_format: ev.formatted.is_none() && ev.snapshot_id.is_none(),
            };
            let detach = |instance: &str, force: bool| Action::DetachVolume {
                volume: key.clone(),
                id: ev.id.clone(),
                instance: instance.to_owned(),
                force,
            };
            match (&ev.state, &ev.attachment) {
                (EbsState::Available, None) => steps.extend([attach, mount]),
                (_, Some(a)) if a.instance == here => match a.state {
                    AttachState::Attaching | AttachState::Attached => steps.push(mount),
                    _ => waits.push(format!("{key} ({}) is detaching from node {here}", ev.id)),
                },
                (_, Some(a)) => match self.view.nodes.get(a.instance.as_str()) {
                    Some(x) if x.stopped => steps.extend([detach(&a.instance, false), attach, mount]),
                    Some(_) => waits.push(format!(
                        "{key} ({}) is still attached to node {}",
                        ev.id, a.instance
                    )),
                    None if storage.ended.contains(&a.instance) => {
                        steps.extend([detach(&a.instance, true), attach, mount])
                    }
                    None => waits.push(format!(
                        "{key} ({}) is attached to instance {}, which is not a node of the fleet: Prism leaves it alone",
                        ev.id, a.instance
                    )),
                },
                (state, None) => waits.push(format!("{key} ({}) is {state:?}", ev.id)),
            }
        }
        if waits.is_empty() {
            Durable::Ready(steps)
        } else {
            Durable::Wait {
                steps,
                why: format!("{pod} waits on node {here}: {}", waits.join("; ")),
            }
        }
    }

    /// Device names free on this node's instance, in order.
    fn free_devices(&self) -> Vec<String> {
        let used: BTreeSet<&str> = self
            .view
            .storage
            .ebs
            .iter()
            .flatten()
            .filter_map(|v| v.attachment.as_ref())
            .filter(|a| a.instance == self.node.id)
            .map(|a| a.device.as_str())
            .collect();
        DEVICES
            .iter()
            .filter(|d| !used.contains(**d))
            .map(|d| (*d).to_owned())
            .collect()
    }

    /// The local volumes a container to be run mounts that the node may
    /// lack, each made before it (and filled from what the service's old
    /// container had at the same path, when that was another volume).
    pub(super) fn local_volume_steps(&self, run: &RunSpec, olds: &[&Seen]) -> Vec<Action> {
        let fleet = &self.desired.fleet;
        let have = self.view.storage.local.get(self.node.id.as_str());
        let mut wanted: Vec<(VolumeKey, String, &str)> = Vec::new();
        for m in &run.config.mounts {
            if let MountSpec::Volume {
                name,
                kind: VolumeKind::Local,
                target,
                ..
            } = m
            {
                let key = VolumeKey::new(&run.pod, name);
                wanted.push((key.clone(), key.name(fleet), target));
            }
        }
        for target in &run.image_mounts {
            let key = VolumeKey::new(&run.pod, &format!("{}:{target}", run.service));
            let name = image_volume_name(fleet, &run.pod, &run.service, target);
            wanted.push((key, name, target));
        }
        wanted
            .into_iter()
            .filter(|(_, name, _)| !have.is_some_and(|h| h.contains(name)))
            .map(|(volume, name, target)| {
                let seed = olds
                    .iter()
                    .find_map(|o| o.c.volumes.get(target))
                    .filter(|v| **v != name)
                    .cloned();
                Action::EnsureLocalVolume { volume, name, seed }
            })
            .collect()
    }

    /// Durable volumes on this node whose pod no longer runs here:
    /// unmounted once the pod's containers are gone (they are removed
    /// earlier in this plan), then detached. Kept in EC2.
    pub(super) fn release_volumes(&mut self) {
        let here = self.node.id.clone();
        let storage = self.view.storage;
        let fleet = self.desired.fleet.clone();
        let mut released = BTreeSet::new();
        if let Some(mounted) = storage.mounted.get(&here) {
            for name in mounted.keys() {
                let Some(key) = VolumeKey::from_name(&fleet, name) else {
                    continue;
                };
                if self.wanted_here(&key) || self.keeps_containers(&key.pod()) {
                    continue;
                }
                self.actions.push(Action::UnmountVolume {
                    volume: key.clone(),
                    name: name.clone(),
                });
                released.insert(key);
            }
        }
        for ev in storage.ebs.iter().flatten() {
            let Some(key) = &ev.key else { continue };
            let attached_here = ev.attachment.as_ref().is_some_and(|a| {
                a.instance == here
                    && matches!(a.state, AttachState::Attaching | AttachState::Attached)
            });
            if !attached_here || self.wanted_here(key) {
                continue;
            }
            let still_mounted = storage
                .mounted
                .get(&here)
                .is_some_and(|m| m.contains_key(&key.name(&fleet)));
            if still_mounted && !released.contains(key) {
                continue;
            }
            self.actions.push(Action::DetachVolume {
                volume: key.clone(),
                id: ev.id.clone(),
                instance: here.clone(),
                force: false,
            });
        }
    }

    /// Whether the pod wants this durable volume on this node.
    fn wanted_here(&self, key: &VolumeKey) -> bool {
        let pod = key.pod();
        self.targets.get(&pod) == Some(&self.node.id)
            && self
                .desired
                .app_of(&pod)
                .is_some_and(|a| a.durable_volumes().any(|v| v.name == key.volume))
    }

    /// Whether containers of the pod stay on this node after this plan's
    /// removals.
    fn keeps_containers(&self, pod: &PodKey) -> bool {
        let removed: BTreeSet<&ContainerId> = self
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Remove { container, .. } => Some(&container.id),
                _ => None,
            })
            .collect();
        self.containers.iter().any(|s| {
            s.l.app == pod.app && s.l.instance == pod.instance && !removed.contains(&s.c.id)
        })
    }
}

/// Nodes to fence: lost (not answering), not provably stopped, silent
/// for `[lifecycle] fence_after` or longer, and holding pods that hold
/// data (so they wait for it). Each is terminated through EC2; its pods
/// then move as from any terminated instance.
pub(super) fn fences(
    desired: &Desired,
    nodes: &[NodeView],
    demands: &[PodDemand],
    placements: &BTreeMap<PodKey, String>,
) -> Vec<(String, Action)> {
    let Some(after) = desired.fence_after else {
        return Vec::new();
    };
    // More than half of the nodes silent at once points at the operator's
    // own network, not at the nodes: terminating them would be the outage.
    let silent = nodes
        .iter()
        .filter(|n| n.state == NodeState::Lost && !n.stopped)
        .count();
    if nodes.len() > 1 && silent.saturating_mul(2) > nodes.len() {
        return Vec::new();
    }
    nodes
        .iter()
        .filter(|n| n.state == NodeState::Lost && !n.stopped)
        .filter_map(|n| {
            let silent = n.silent_for.filter(|s| *s >= after)?;
            let pods: Vec<PodKey> = demands
                .iter()
                .filter(|d| d.holds_data && placements.get(&d.pod) == Some(&n.id))
                .map(|d| d.pod.clone())
                .collect();
            (!pods.is_empty()).then(|| {
                (
                    n.id.clone(),
                    Action::Fence {
                        instance: n.id.clone(),
                        silent_for_s: silent.as_secs(),
                        pods,
                    },
                )
            })
        })
        .collect()
}

/// Zone moves: a pod whose durable volumes are in a zone that has had no
/// ready node for `[lifecycle] zone_wait` gets them in a zone with room,
/// through a snapshot of each (taken once the volume is detached: its old
/// node is gone, so nothing writes to it; and taken after the zone
/// emptied, so it holds everything written before). New volumes are made
/// from the snapshots, all at once when every one has completed, in the
/// zone the pod would be placed in, tagged as moved from the old ones,
/// which are kept. The pod then follows its new volumes as any other; one
/// whose move was cut short (some volumes made, some not) goes on moving
/// the rest to the zone of those made.
pub(super) fn zone_moves(
    desired: &Desired,
    view: &View<'_>,
    nodes: &[NodeView],
    demands: &[PodDemand],
    sched: &Schedule,
    current: &BTreeMap<PodKey, String>,
) -> (Vec<(String, Action)>, Vec<String>) {
    let mut actions = Vec::new();
    let mut waiting = Vec::new();
    let Some(wait) = desired.zone_wait else {
        return (actions, waiting);
    };
    let storage = view.storage;
    // (pod, zone its volumes go to, node whose worker makes the calls,
    // whether some already went)
    let mut moving: Vec<(&PodDemand, String, String, bool)> = Vec::new();
    for d in demands {
        let ZoneRule::In(z) = &d.zone else { continue };
        let Some(app) = desired.apps.get(&d.pod.app) else {
            continue;
        };
        let vols: Vec<_> = app
            .durable_volumes()
            .filter_map(|v| storage.ebs_of(&VolumeKey::new(&d.pod, &v.name)))
            .collect();
        let started = vols.iter().any(|v| v.moved_from.is_some() && &v.zone == z);
        if !started || vols.iter().all(|v| &v.zone == z) {
            continue;
        }
        match sched.placements.get(&d.pod) {
            Some(node) => moving.push((d, z.clone(), node.clone(), true)),
            None => waiting.push(format!(
                "{}: its volumes are moving to zone {z}, where no node has room for it yet",
                d.pod
            )),
        }
    }
    let due: Vec<(&PodDemand, &str)> = demands
        .iter()
        .filter(|d| {
            sched
                .problems
                .iter()
                .any(|p| p.pod == d.pod && p.kind == ProblemKind::NoNodeInZone)
        })
        .filter_map(|d| match &d.zone {
            ZoneRule::In(z) => Some((d, z.as_str())),
            _ => None,
        })
        .filter(|(d, z)| {
            let empty = storage.zones_empty_for.get(*z).copied().unwrap_or_default();
            if empty < wait {
                waiting.push(format!(
                    "{}: zone {z} has had no ready node for {}s; its volumes move to another zone after {}s ([lifecycle] zone_wait)",
                    d.pod,
                    empty.as_secs(),
                    wait.as_secs()
                ));
            }
            empty >= wait
        })
        .collect();
    if !due.is_empty() {
        // Where each would go if its zone did not matter.
        let trial: Vec<PodDemand> = demands
            .iter()
            .map(|d| {
                let mut d = d.clone();
                if due.iter().any(|(m, _)| m.pod == d.pod) {
                    d.zone = ZoneRule::Any;
                }
                d
            })
            .collect();
        let trial = schedule(&trial, nodes, current, desired.reserve);
        for (d, from_zone) in due {
            let target = trial
                .placements
                .get(&d.pod)
                .and_then(|id| nodes.iter().find(|n| &n.id == id))
                .and_then(|n| Some((n.id.clone(), n.zone.clone()?)));
            match target.filter(|(_, z)| z != from_zone) {
                Some((node, to_zone)) => moving.push((d, to_zone, node, false)),
                None => waiting.push(format!(
                    "{}: no other zone has a ready node with room to move its volumes to",
                    d.pod
                )),
            }
        }
    }
    for (d, to_zone, node, started) in moving {
        let Some(app) = desired.apps.get(&d.pod.app) else {
            continue;
        };
        let mut creates = Vec::new();
        for v in app.durable_volumes() {
            let Some(spec) = &v.ebs else { continue };
            let key = VolumeKey::new(&d.pod, &v.name);
            let Some(ev) = storage.ebs_of(&key).filter(|ev| ev.zone != to_zone) else {
                continue;
            };
            if ev.state != EbsState::Available || ev.attachment.is_some() {
                waiting.push(format!(
                    "{key} ({}) moves to zone {to_zone} once it is detached from its old node",
                    ev.id
                ));
                continue;
            }
            // Written to last before its zone emptied (or now, if it has
            // a ready node again). Snapshots are taken zone_wait (10 s at
            // least) after that, more than clocks drift.
            let empty_for = storage
                .zones_empty_for
                .get(&ev.zone)
                .copied()
                .unwrap_or_default();
            let since = storage
                .at_ms
                .saturating_sub(i64::try_from(empty_for.as_millis()).unwrap_or(i64::MAX));
            match (storage.move_snapshot(&ev.id, since), &storage.snapshots) {
                (_, None) => waiting.push(format!(
                    "{key}: EC2 could not list the fleet's snapshots; its move to zone {to_zone} waits"
                )),
                (None, Some(_)) => actions.push((
                    node.clone(),
                    Action::SnapshotVolume {
                        volume: key,
                        id: ev.id.clone(),
                        why: SnapshotWhy::Move {
                            to_zone: to_zone.clone(),
                        },
                    },
                )),
                (Some(snap), _) if snap.state == SnapshotState::Completed => {
                    let mut spec = spec.clone();
                    spec.from_snapshot = Some(snap.id.clone());
                    spec.size_gib = spec.size_gib.max(ev.size_gib);
                    creates.push((
                        node.clone(),
                        Action::CreateVolume {
                            volume: key,
                            zone: to_zone.clone(),
                            ebs: Box::new(spec),
                            moved_from: Some(ev.id.clone()),
                        },
                    ));
                    continue;
                }
                (Some(snap), _) => waiting.push(format!(
                    "{key}: snapshot {} for its move to zone {to_zone} is {} ({})",
                    snap.id,
                    snap.state.as_str(),
                    snap.progress.as_deref().unwrap_or("0%")
                )),
            }
        }
        // All at once, so that the pod's volumes land in one zone; the
        // rest of a move cut short, as each is ready.
        let ready = creates.len()
            == app
                .durable_volumes()
                .filter(|v| {
                    storage
                        .ebs_of(&VolumeKey::new(&d.pod, &v.name))
                        .is_some_and(|ev| ev.zone != to_zone)
                })
                .count();
        if started || ready {
            actions.extend(creates);
        }
    }
    (actions, waiting)
}
