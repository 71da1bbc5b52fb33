//! One observe pass: every node probed in parallel, what was found recorded.

use std::sync::{Arc, Mutex};

use crate::cloud::Node;
use crate::observe::{ProbeLimits, Probed, container_records, node_record, probe};
use crate::ssh::{Pool, fan_out};
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

/// Writes a pass to the store: each node's row, its containers when they
/// were read, and an event whenever a node's condition changes.
pub fn record(store: &Arc<Mutex<Store>>, pass: &[Observed]) -> Result<(), StoreError> {
    let now = now_ms();
    let mut store = store.lock().unwrap_or_else(|poison| poison.into_inner());
    for seen in pass {
        let previous = store.node(&seen.node.id)?;
        let row = node_record(&seen.node, &seen.probed, previous.as_ref(), now);
        let was = previous.as_ref().map(|p| p.condition.clone());
        if was.as_ref() != Some(&row.condition) {
            store.record_event(&condition_event(&row.name, &row.id, seen))?;
        }
        store.upsert_node(&row)?;
        if let Probed::Ready { containers, .. } = &seen.probed {
            store.replace_containers(&row.id, &container_records(&row.id, containers, now))?;
        }
    }
    Ok(())
}

fn condition_event(name: &str, id: &str, seen: &Observed) -> NewEvent {
    let event = match seen.probed.condition() {
        None => NewEvent::info("node.ready", format!("{name} is ready")),
        Some(c) => NewEvent::new(
            Level::Warn,
            &format!("node.{}", c.name()),
            format!("{name} is not ready: {c}"),
        ),
    };
    event.node(id.to_owned())
}
