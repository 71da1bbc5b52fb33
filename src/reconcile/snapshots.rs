//! Scheduled snapshots of durable volumes (`snapshots = { schedule, keep
//! }`): the scheduler only says a volume's tick came; the pass plans a
//! snapshot of each pod instance's EBS volume, and the applier takes it
//! (and prunes that schedule's older ones). Pure.

use std::collections::BTreeMap;

use super::desired::Desired;
use super::plan::{Action, SnapshotWhy};
use super::schedule::{NodeState, NodeView};
use super::storage::Storage;
use super::volumes::VolumeKey;

/// A volume's schedule came due: snapshot it in every pod instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotTick {
    pub app: String,
    pub volume: String,
    /// Every instance's volume (`None`, as the scheduler sends it), or one
    /// (a tick carried over for a node that was busy).
    pub instance: Option<u32>,
    /// Unix seconds.
    pub at: i64,
}

/// What the ticks need this pass.
#[derive(Debug, Default)]
pub(crate) struct SnapshotPlan {
    /// Per node (whose worker makes the EC2 call), in order.
    pub actions: BTreeMap<String, Vec<Action>>,
    /// Each tick planned, with the node it went to.
    pub planned: Vec<(String, SnapshotTick)>,
    /// Snapshots not taken, and why, for the event log.
    pub skipped: Vec<(SnapshotTick, String)>,
}

pub(crate) fn plan_snapshots(
    desired: &Desired,
    ticks: &[SnapshotTick],
    nodes: &[NodeView],
    storage: &Storage,
) -> SnapshotPlan {
    let mut out = SnapshotPlan::default();
    let named: Vec<String> = desired
        .apps
        .values()
        .flat_map(|a| a.volumes.values())
        .filter_map(|v| v.ebs.as_ref()?.from_snapshot.clone())
        .collect();
    let ready = |id: &str| {
        nodes
            .iter()
            .any(|n| n.id == id && n.state == NodeState::Ready)
    };
    for tick in ticks {
        let Some(app) = desired.apps.get(&tick.app) else {
            out.skipped
                .push((tick.clone(), "the app is no longer in fleet.toml".into()));
            continue;
        };
        let Some(keep) = app
            .volumes
            .get(&tick.volume)
            .and_then(|v| v.ebs.as_ref())
            .and_then(|e| e.snapshots.as_ref())
            .map(|s| s.keep)
        else {
            out.skipped.push((
                tick.clone(),
                "the volume no longer has a snapshot schedule".into(),
            ));
            continue;
        };
        if storage.ebs.is_none() {
            out.skipped.push((
                tick.clone(),
                "EC2 could not list the fleet's volumes".into(),
            ));
            continue;
        }
        let instances = match tick.instance {
            Some(i) => i..i.saturating_add(1).min(app.instances),
            None => 0..app.instances,
        };
        for instance in instances {
            let key = VolumeKey {
                app: tick.app.clone(),
                instance,
                volume: tick.volume.clone(),
            };
            let Some(ev) = storage.ebs_of(&key) else {
                out.skipped
                    .push((tick.clone(), format!("{key} has no EBS volume yet")));
                continue;
            };
            // The node it is attached to, else any ready one: the call
            // goes to EC2 either way.
            let node = ev
                .attachment
                .as_ref()
                .map(|a| a.instance.as_str())
                .filter(|id| ready(id))
                .or_else(|| {
                    nodes
                        .iter()
                        .find(|n| n.state == NodeState::Ready)
                        .map(|n| n.id.as_str())
                });
            let Some(node) = node else {
                out.skipped
                    .push((tick.clone(), format!("{key}: no node is ready to take it")));
                continue;
            };
            out.actions
                .entry(node.to_owned())
                .or_default()
                .push(Action::SnapshotVolume {
                    volume: key,
                    id: ev.id.clone(),
                    why: SnapshotWhy::Scheduled {
                        keep,
                        named: named.clone(),
                    },
                });
            out.planned.push((
                node.to_owned(),
                SnapshotTick {
                    instance: Some(instance),
                    ..tick.clone()
                },
            ));
        }
    }
    out
}
