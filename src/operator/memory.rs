//! What the applier knows between passes, held in memory first: each
//! node's last recorded row, the placements, the health counts, failed
//! pulls, holds, drains and requests waiting for a pass. Loaded from the
//! state store once when the process starts; from then on every pass
//! reads it here and writes through to the store ([`Writer::submit`]), so
//! a store that cannot take writes costs the record, never the healing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use super::lifecycle::Misses;
use crate::reconcile::{Hold, Holds, Member, NodeState, PodKey, SnapshotTick, Tick};
use crate::store::{HealthBook, NodeRecord, Placement, Request, Store, StoreError, Writer, now_ms};

#[derive(Debug, Default)]
pub struct Memory {
    /// Every node recorded, gone ones included, by id.
    pub nodes: BTreeMap<String, NodeRecord>,
    pub placements: BTreeMap<PodKey, Placement>,
    pub health: HealthBook,
    /// Per node, images it failed to pull while preparing.
    pub pull_failures: BTreeMap<String, BTreeSet<String>>,
    pub holds: Holds,
    /// Probes missed in a row.
    pub misses: Misses,
    /// Nodes someone asked to drain (the dashboard's `D`): draining from
    /// the next pass on, until they leave the fleet.
    pub drains: BTreeSet<String>,
    /// When each spot node's instance metadata was last read.
    pub notices_read: BTreeMap<String, Instant>,
    /// Restarts asked for (the dashboard's `x`), for the next pass.
    pub asks: Vec<Request>,
    /// Job ticks for the next pass.
    pub due_jobs: Vec<Tick>,
    /// When an apply last started containers: passes come quicker while
    /// they settle.
    pub started_at: Option<Instant>,
    /// The paths images declare as volumes, by reference, once read on a
    /// node: an image's `VOLUME`s do not change under its reference in a
    /// way Prism could follow anyway, and a pod waits until they are known.
    pub image_volumes: BTreeMap<String, Vec<String>>,
    /// The fleet had EBS volumes at the last listing: keep listing them.
    pub had_ebs: bool,
    /// Scheduled snapshots due at the next pass.
    pub due_snapshots: Vec<SnapshotTick>,
    /// When each zone last had a ready node (zones of the fleet's
    /// volumes): one empty for `[lifecycle] zone_wait` sees its volumes
    /// moved.
    pub zone_ready_at: BTreeMap<String, Instant>,
    /// When this process loaded its memory: a zone never seen ready counts
    /// as empty since then.
    pub loaded_at: Option<Instant>,
    /// The mesh's members: each node's /24 and public key.
    pub mesh: BTreeMap<String, Member>,
    /// Per node, the fleet's containers when it last answered a probe.
    pub mesh_last_seen: BTreeMap<String, Vec<crate::observe::ContainerState>>,
}

impl Memory {
    /// What the store recorded, as the process starts.
    pub fn load(store: &Store) -> Result<Memory, StoreError> {
        let mut pull_failures: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let nodes: BTreeMap<String, NodeRecord> = store
            .nodes()?
            .into_iter()
            .map(|n| (n.id.clone(), n))
            .collect();
        for id in nodes.keys() {
            let failed = store.pull_failures(id)?;
            if !failed.is_empty() {
                pull_failures.insert(id.clone(), failed);
            }
        }
        Ok(Memory {
            nodes,
            placements: store
                .placements()?
                .into_iter()
                .map(|p| (PodKey::new(&p.app, p.instance), p))
                .collect(),
            health: HealthBook::new(store.health_records()?),
            pull_failures,
            holds: Holds::new(store.holds()?),
            mesh: store.mesh_members()?,
            loaded_at: Some(Instant::now()),
            ..Memory::default()
        })
    }

    /// The recorded state of a node, if any.
    pub(crate) fn state_of(&self, id: &str) -> Option<NodeState> {
        self.nodes.get(id).map(|n| n.state)
    }

    /// Nodes recorded and not gone.
    pub fn known(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values().filter(|n| n.state != NodeState::Gone)
    }

    pub(crate) fn placement_list(&self) -> Vec<Placement> {
        self.placements.values().cloned().collect()
    }

    /// Records a pod's new node, here and in the store.
    pub fn place(&mut self, journal: &Writer, pod: &PodKey, node: &str) {
        let p = Placement {
            app: pod.app.clone(),
            instance: pod.instance,
            node_id: node.to_owned(),
            placed_at: now_ms(),
        };
        self.placements.insert(pod.clone(), p.clone());
        journal.submit("store a placement", move |s| s.set_placement(&p));
    }

    /// Forgets a pod's placement, here and in the store.
    pub(crate) fn unplace(&mut self, journal: &Writer, pod: &PodKey) {
        self.placements.remove(pod);
        let (app, instance) = (pod.app.clone(), pod.instance);
        journal.submit("remove a placement", move |s| {
            s.remove_placement(&app, instance)
        });
    }

    /// Keeps a hold, here and in the store.
    pub(crate) fn keep_hold(journal: &Writer, hold: &Hold) {
        let hold = hold.clone();
        journal.submit("store a hold", move |s| s.put_hold(&hold));
    }
}
