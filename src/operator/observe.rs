//! One observe pass: every node probed in parallel, what was found recorded.

use std::sync::{Arc, Mutex};

use super::lifecycle::node_state;
use crate::cloud::Node;
use crate::config::{Bytes, Millicores};
use crate::observe::{ProbeLimits, Probed, container_records, node_record, probe};
use crate::reconcile::{NodeState, NodeView};
use crate::ssh::{Pool, fan_out};
use crate::store::NodeRecord;
use crate::store::{Level, NewEvent, Store, StoreError, now_ms};

/// How many nodes are probed at once. Each probe waits mostly on the
/// network, so this can be well above the core count.
const PARALLEL: usize = 32;

/// A node and what its probe found.
#[derive(Debug, Clone)]
pub struct Observed {
    pub node: Node,
    pub probed: Probed,
}

/// Probes every node at once (bounded); a dead node costs its own timeout
/// and delays nobody. Sorted by node id.
pub async fn observe(
    pool: &Pool,
    nodes: &[Node],
    fleet: &str,
    limits: ProbeLimits,
) -> Vec<Observed> {
    let targets: Vec<_> = nodes.iter().map(Node::target).collect();
    let mut found: Vec<Observed> = fan_out(&targets, PARALLEL, |target| async move {
        probe(pool, &target, fleet, limits).await
    })
    .await
    .into_iter()
    .filter_map(|(target, probed)| {
        let node = nodes.iter().find(|n| n.id == target.id)?.clone();
        Some(Observed { node, probed })
    })
    .collect();
    found.sort_by(|a, b| a.node.id.cmp(&b.node.id));
    found
}

/// Writes a pass to the store: each node's row in its new state, its
/// containers when they were read, and an event whenever a node's
/// condition changes. Returns the nodes as the scheduler sees them.
pub fn record(store: &Arc<Mutex<Store>>, pass: &[Observed]) -> Result<Vec<NodeView>, StoreError> {
    let now = now_ms();
    let mut store = store.lock().unwrap_or_else(|poison| poison.into_inner());
    let mut views = Vec::with_capacity(pass.len());
    for seen in pass {
        let previous = store.node(&seen.node.id)?;
        let state = node_state(&seen.node, &seen.probed, previous.as_ref());
        let row = node_record(
            &seen.node,
            &seen.probed,
            state.as_str(),
            previous.as_ref(),
            now,
        );
        for event in events(previous.as_ref(), &row, seen) {
            store.record_event(&event.node(row.id.clone()))?;
        }
        store.upsert_node(&row)?;
        if let Probed::Ready { containers, .. } = &seen.probed {
            store.replace_containers(&row.id, &container_records(&row.id, containers, now))?;
        }
        views.push(view(&seen.node, &row, state));
    }
    Ok(views)
}

/// Capacity is the smaller of what fleet.toml declares and what the node
/// reports (a node's cgroup may see the host's memory).
fn view(node: &Node, row: &NodeRecord, state: NodeState) -> NodeView {
    let reported_memory = row.memory_total.and_then(|m| u64::try_from(m).ok());
    let reported_cpu = row.cpus.and_then(|c| u64::try_from(c).ok());
    let smaller = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (Some(a), Some(b)) => a.min(b),
        (a, b) => a.or(b).unwrap_or(0),
    };
    NodeView {
        id: node.id.clone(),
        address: node.address.clone(),
        zone: node.zone.clone(),
        memory: Bytes(smaller(node.memory, reported_memory)),
        cpu: Millicores(smaller(node.cpu, reported_cpu)),
        state,
    }
}

/// What changed for people to know: a node joined, its state changed, or
/// it has a new reason not to be ready.
fn events(previous: Option<&NodeRecord>, row: &NodeRecord, seen: &Observed) -> Vec<NewEvent> {
    let mut out = Vec::new();
    let Some(previous) = previous else {
        out.push(NewEvent::info(
            "node.discovered",
            format!(
                "{} at {} joined the fleet, {}",
                row.name, row.address, row.state
            ),
        ));
        if let Some(c) = seen.probed.condition() {
            out.push(NewEvent::new(
                Level::Warn,
                &format!("node.{}", c.name()),
                format!("{}: {c}", row.name),
            ));
        }
        return out;
    };
    if let Some(c) = seen.probed.condition()
        && previous.condition.as_deref() != Some(c.name())
    {
        out.push(NewEvent::new(
            Level::Warn,
            &format!("node.{}", c.name()),
            format!("{}: {c}", row.name),
        ));
    }
    if previous.state != row.state {
        let level = if row.state == "ready" {
            Level::Info
        } else {
            Level::Warn
        };
        out.push(NewEvent::new(
            level,
            &format!("node.{}", row.state),
            format!("{} is {} (was {})", row.name, row.state, previous.state),
        ));
    }
    out
}
