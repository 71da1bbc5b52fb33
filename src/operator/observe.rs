//! One observe pass: every node probed in parallel, what was found recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use super::lifecycle::{GONE, GONE_SHOWN_FOR, Misses, images_settled, node_state};
use crate::cloud::{Node, Presence};
use crate::config::{Bytes, Millicores};
use crate::observe::{
    Condition, ProbeLimits, Probed, container_records, node_record, probe_with_metadata,
};
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
    observe_with_metadata(pool, nodes, fleet, limits, |_| None).await
}

/// [`observe`]; `metadata` gives, per node, the instance metadata URL to
/// read a spot notice at in the same round trip, if it is due. A probe,
/// connecting included, that takes longer than `limits.timeout` is a
/// timeout: a dead node delays the pass by that much at most.
pub async fn observe_with_metadata(
    pool: &Pool,
    nodes: &[Node],
    fleet: &str,
    limits: ProbeLimits,
    metadata: impl Fn(&Node) -> Option<String>,
) -> Vec<Observed> {
    let targets: Vec<_> = nodes.iter().map(Node::target).collect();
    let urls: std::collections::BTreeMap<&str, String> = nodes
        .iter()
        .filter_map(|n| Some((n.id.as_str(), metadata(n)?)))
        .collect();
    let urls = &urls;
    // EC2 says these are going: they are lost whatever a probe says, and a
    // probe of a dying machine only waits out its timeout.
    let leaving: std::collections::BTreeSet<&str> = nodes
        .iter()
        .filter(|n| n.presence == Presence::Leaving)
        .map(|n| n.id.as_str())
        .collect();
    let leaving = &leaving;
    let mut found: Vec<Observed> = fan_out(&targets, PARALLEL, |target| async move {
        if leaving.contains(target.id.as_str()) {
            return Probed::Failed(Condition::Unreachable(
                "not probed: EC2 says the instance is shutting down or stopped".into(),
            ));
        }
        let url = urls.get(target.id.as_str()).map(String::as_str);
        let probe = probe_with_metadata(pool, &target, fleet, limits, url);
        match tokio::time::timeout(limits.timeout, probe).await {
            Ok(probed) => probed,
            Err(_) => Probed::Failed(Condition::Timeout(format!(
                "no answer within {}",
                humantime::format_duration(limits.timeout)
            ))),
        }
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

/// Turns passes into node states and records them; remembers the misses
/// in a row between passes.
#[derive(Debug)]
pub struct Recorder {
    lost_after: u32,
    misses: Misses,
    /// Nodes an operator asked to drain (the dashboard's `D`): from the
    /// next pass on they are draining, as after a spot notice.
    drains: BTreeSet<String>,
}

impl Recorder {
    /// `lost_after`: missed probes in a row that make a node lost.
    pub fn new(lost_after: u32) -> Recorder {
        Recorder {
            lost_after,
            misses: Misses::default(),
            drains: BTreeSet::new(),
        }
    }

    /// Drains `node` from the next pass on; it stays draining (the state
    /// sticks) until it leaves the fleet.
    pub fn drain(&mut self, node: &str) {
        self.drains.insert(node.to_owned());
    }

    /// Writes a pass to the store: each node's row in its new state, its
    /// containers when they were read, and an event whenever a node's
    /// condition changes. With a `complete` inventory (discovery answered),
    /// recorded nodes not in it are gone. `wanted`: the fleet's images, which
    /// a new node pulls before it is ready. Returns the nodes as the
    /// scheduler sees them.
    pub fn record(
        &mut self,
        store: &Arc<Mutex<Store>>,
        pass: &[Observed],
        complete: bool,
        wanted: &BTreeSet<String>,
    ) -> Result<Vec<NodeView>, StoreError> {
        let ids: Vec<&str> = pass.iter().map(|o| o.node.id.as_str()).collect();
        self.misses.retain(&ids);
        self.drains.retain(|d| ids.contains(&d.as_str()));
        let mut store = store.lock().unwrap_or_else(|poison| poison.into_inner());
        // A fleet's first pass takes its nodes as they are: nothing runs
        // yet, so its pods wait for their pulls either way, and a first
        // `prism plan` shows the work. Nodes that join later are prepared.
        let first_pass = store.nodes()?.is_empty();
        let mut failed = BTreeMap::new();
        for id in &ids {
            failed.insert(*id, store.pull_failures(id)?);
        }
        let views = record(&mut store, pass, |seen, previous| {
            let missed = self.misses.count(&seen.node.id, &seen.probed, previous);
            let previous = if self.drains.contains(&seen.node.id) {
                Some(NodeState::Draining.as_str())
            } else {
                previous
            };
            let prepared = first_pass
                || match &seen.probed {
                    Probed::Ready {
                        images: Some(images),
                        ..
                    } => images_settled(
                        wanted,
                        images,
                        failed
                            .get(seen.node.id.as_str())
                            .unwrap_or(&BTreeSet::new()),
                    ),
                    _ => false,
                };
            node_state(
                &seen.node,
                &seen.probed,
                previous,
                missed,
                self.lost_after,
                prepared,
            )
        })?;
        if complete {
            record_gone(&mut store, &ids)?;
        }
        Ok(views)
    }
}

/// Recorded nodes no longer in the inventory: gone, with an event, and no
/// containers (what they ran is not running anywhere). Those gone for
/// longer than [`GONE_SHOWN_FOR`] are forgotten.
fn record_gone(store: &mut Store, present: &[&str]) -> Result<(), StoreError> {
    let now = now_ms();
    store.forget_gone(GONE, now - GONE_SHOWN_FOR.as_millis() as i64)?;
    for mut row in store.nodes()? {
        if present.contains(&row.id.as_str()) || row.state == GONE {
            continue;
        }
        let was = std::mem::replace(&mut row.state, GONE.to_owned());
        row.condition = None;
        row.condition_detail = None;
        row.last_probe = Some(now);
        store.record_event(
            &NewEvent::new(
                Level::Warn,
                "node.gone",
                format!(
                    "{} is gone: no longer in the inventory (terminated) (was {was})",
                    row.name
                ),
            )
            .node(row.id.clone()),
        )?;
        store.upsert_node(&row)?;
        store.replace_containers(&row.id, &[])?;
    }
    Ok(())
}

fn record(
    store: &mut Store,
    pass: &[Observed],
    mut state_of: impl FnMut(&Observed, Option<&str>) -> NodeState,
) -> Result<Vec<NodeView>, StoreError> {
    let now = now_ms();
    let mut views = Vec::with_capacity(pass.len());
    for seen in pass {
        let previous = store.node(&seen.node.id)?;
        let state = state_of(seen, previous.as_ref().map(|p| p.state.as_str()));
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
        views.push(view(&seen.node, &seen.probed, &row, state));
    }
    Ok(views)
}

/// Capacity is the smaller of what fleet.toml declares and what the node
/// reports (a node's cgroup may see the host's memory).
fn view(node: &Node, probed: &Probed, row: &NodeRecord, state: NodeState) -> NodeView {
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
        images: match probed {
            Probed::Ready { images, .. } => images.clone(),
            _ => None,
        },
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
        let why = match &seen.probed {
            Probed::Ready { facts, .. } | Probed::NoDocker { facts, .. } => {
                facts.notice.as_ref().map(|n| format!(": {n}"))
            }
            Probed::Failed(_) => None,
        };
        out.push(NewEvent::new(
            level,
            &format!("node.{}", row.state),
            format!(
                "{} is {} (was {}){}",
                row.name,
                row.state,
                previous.state,
                why.unwrap_or_default()
            ),
        ));
    }
    out
}
