//! A probe's findings as state-store rows: what `prism status` and the
//! dashboard read.

use super::{ContainerState, Health, Probed};
use crate::cloud::Node;
use crate::reconcile::NodeState;
use crate::store::{ContainerRecord, NodeRecord};

/// The node's row after a probe at `now`, in `state` (ready, suspect, ...).
/// `previous` keeps what a failed probe cannot tell (memory, Docker's
/// version) and when it was first seen.
pub(crate) fn node_record(
    node: &Node,
    probed: &Probed,
    state: NodeState,
    previous: Option<&NodeRecord>,
    now: i64,
) -> NodeRecord {
    // A node reached tells its Docker version, or that Docker is not running.
    let (facts, docker_version) = match probed {
        Probed::Ready {
            facts,
            docker_version,
            ..
        } => (Some(facts), Some(docker_version.clone())),
        Probed::NoDocker { facts, .. } => (Some(facts), None),
        Probed::Failed(_) => (None, None),
    };
    let condition = probed.condition();
    let mut record = NodeRecord {
        id: node.id.clone(),
        name: node.name.clone(),
        address: node.address.clone(),
        provider: node.provider,
        zone: node.zone.clone(),
        instance_type: node.instance_type.clone(),
        lifecycle: node.lifecycle,
        state,
        condition: condition.map(|c| c.name().to_owned()),
        condition_detail: condition.map(|c| c.detail().to_owned()),
        docker_version: previous.and_then(|p| p.docker_version.clone()),
        memory_total: previous.and_then(|p| p.memory_total),
        memory_free: previous.and_then(|p| p.memory_free),
        cpus: previous.and_then(|p| p.cpus),
        disk_free: previous.and_then(|p| p.disk_free),
        first_seen: previous.map_or(now, |p| p.first_seen),
        // When it last answered (for a node never reached, when it was
        // first seen): how long it has been silent decides its fence.
        last_seen: match (probed, previous) {
            (Probed::Failed(_), Some(p)) => p.last_seen,
            _ => now,
        },
        last_probe: Some(now),
    };
    if let Some(f) = facts {
        record.memory_total = Some(clamp(f.mem_total));
        record.memory_free = Some(clamp(f.mem_available));
        record.cpus = Some(i64::from(f.cpus) * 1000);
        record.disk_free = Some(clamp(f.disk_free));
        record.docker_version = docker_version;
    }
    record
}

/// The fleet's containers on the node; containers whose labels are not
/// whole Prism labels are left out (they are not Prism's to show as pods).
pub(crate) fn container_records(
    node_id: &str,
    containers: &[ContainerState],
    now: i64,
) -> Vec<ContainerRecord> {
    containers
        .iter()
        .filter_map(|c| {
            let labels = c.identity.prism()?;
            Some(ContainerRecord {
                node_id: node_id.to_owned(),
                name: c.name.clone(),
                app: labels.app.clone(),
                service: labels.service.clone(),
                instance: labels.instance,
                image: c.image.clone(),
                state: c.state.as_str().to_owned(),
                health: match &c.health {
                    Health::None => None,
                    h => Some(h.as_str().to_owned()),
                },
                restarts: c.restart_count,
                ports: c
                    .ports
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                started_at: c.started_at,
                spec_hash: Some(labels.spec.clone()),
                observed_at: now,
            })
        })
        .collect()
}

fn clamp(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}
