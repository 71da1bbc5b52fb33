//! One observe pass: every node probed in parallel, what was found recorded.

use std::collections::BTreeSet;

use super::lifecycle::{GONE_SHOWN_FOR, images_settled, node_state};
use super::memory::Memory;
use crate::cloud::{Node, Presence};
use crate::config::{Bytes, Millicores};
use crate::observe::{
    Condition, ProbeLimits, Probed, container_records, node_record, probe_with_metadata,
};
use crate::reconcile::{NodeState, NodeView};
use crate::ssh::{Pool, fan_out};
use crate::store::{Level, NewEvent, NodeRecord, Writer, now_ms};

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
    observe_with_metadata(pool, nodes, fleet, limits, |_| None, &BTreeSet::new()).await
}

/// [`observe`]; `metadata` gives, per node, the instance metadata URL to
/// read a spot notice at in the same round trip, if it is due. A probe,
/// connecting included, that takes longer than `limits.timeout` is a
/// timeout: a dead node delays the pass by that much at most.
pub(crate) async fn observe_with_metadata(
    pool: &Pool,
    nodes: &[Node],
    fleet: &str,
    limits: ProbeLimits,
    metadata: impl Fn(&Node) -> Option<String>,
    unread_images: &BTreeSet<String>,
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
        let probe = probe_with_metadata(pool, &target, fleet, limits, url, unread_images);
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

/// Turns a pass into node states: each node's row in its new state, its
/// containers when they were read, and an event whenever its condition
/// changes, in `memory` and written through to the store. With a
/// `complete` inventory (discovery answered), recorded nodes not in it are
/// gone. `wanted`: the fleet's images, which a new node pulls before it is
/// ready. Returns the nodes as the scheduler sees them.
pub fn record(
    memory: &mut Memory,
    journal: &Writer,
    pass: &[Observed],
    complete: bool,
    wanted: &BTreeSet<String>,
    lost_after: u32,
) -> Vec<NodeView> {
    let ids: Vec<&str> = pass.iter().map(|o| o.node.id.as_str()).collect();
    memory.misses.retain(&ids);
    memory.drains.retain(|d| ids.contains(&d.as_str()));
    // A fleet's first pass takes its nodes as they are: nothing runs
    // yet, so its pods wait for their pulls either way, and a first
    // `prism plan` shows the work. Nodes that join later are prepared.
    let first_pass = memory.nodes.is_empty();
    let now = now_ms();
    // When this process began to listen (unix ms).
    let since_ms = memory.loaded_at.map_or(0, |t| {
        now.saturating_sub(i64::try_from(t.elapsed().as_millis()).unwrap_or(i64::MAX))
    });
    let mut views = Vec::with_capacity(pass.len());
    for seen in pass {
        let id = seen.node.id.as_str();
        let previous = memory.nodes.get(id).cloned();
        let before = previous.as_ref().map(|p| p.state);
        let missed = memory.misses.count(id, &seen.probed, before);
        let before = if memory.drains.contains(id) {
            Some(NodeState::Draining)
        } else {
            before
        };
        let no_failures = BTreeSet::new();
        let prepared = first_pass
            || match &seen.probed {
                Probed::Ready {
                    images: Some(images),
                    ..
                } => images_settled(
                    wanted,
                    images,
                    memory.pull_failures.get(id).unwrap_or(&no_failures),
                ),
                _ => false,
            };
        let state = node_state(
            &seen.node,
            &seen.probed,
            before,
            missed,
            lost_after,
            prepared,
        );
        let row = node_record(&seen.node, &seen.probed, state, previous.as_ref(), now);
        for event in events(previous.as_ref(), &row, seen) {
            journal.event(event.node(row.id.clone()));
        }
        let containers = match &seen.probed {
            Probed::Ready { containers, .. } => Some(container_records(&row.id, containers, now)),
            _ => None,
        };
        let written = row.clone();
        journal.submit("record a node", move |s| {
            s.upsert_node(&written)?;
            match containers {
                Some(containers) => s.replace_containers(&written.id, &containers),
                None => Ok(()),
            }
        });
        views.push(view(&seen.node, &seen.probed, &row, state, since_ms));
        memory.nodes.insert(row.id.clone(), row);
    }
    if complete {
        record_gone(memory, journal, &ids, now);
    }
    views
}

/// Recorded nodes no longer in the inventory: gone, with an event, and no
/// containers (what they ran is not running anywhere). Those gone for
/// longer than [`GONE_SHOWN_FOR`] are forgotten.
fn record_gone(memory: &mut Memory, journal: &Writer, present: &[&str], now: i64) {
    let shown_for = i64::try_from(GONE_SHOWN_FOR.as_millis()).unwrap_or(i64::MAX);
    let before = now.saturating_sub(shown_for);
    memory
        .nodes
        .retain(|_, n| n.state != NodeState::Gone || n.last_probe.unwrap_or(n.last_seen) >= before);
    memory
        .pull_failures
        .retain(|id, _| memory.nodes.contains_key(id));
    journal.submit("forget nodes gone long ago", move |s| {
        s.forget_gone(before).map(|_| ())
    });
    for row in memory.nodes.values_mut() {
        if present.contains(&row.id.as_str()) || row.state == NodeState::Gone {
            continue;
        }
        let was = std::mem::replace(&mut row.state, NodeState::Gone);
        row.condition = None;
        row.condition_detail = None;
        row.last_probe = Some(now);
        journal.event(
            NewEvent::new(
                Level::Warn,
                "node.gone",
                format!(
                    "{} is gone: no longer in the inventory (terminated) (was {})",
                    row.name,
                    was.as_str()
                ),
            )
            .node(row.id.clone()),
        );
        let written = row.clone();
        journal.submit("record a node gone", move |s| {
            s.upsert_node(&written)?;
            s.replace_containers(&written.id, &[])
        });
    }
}

/// Capacity is the smaller of what fleet.toml declares and what the node
/// reports (a node's cgroup may see the host's memory).
fn view(
    node: &Node,
    probed: &Probed,
    row: &NodeRecord,
    state: NodeState,
    since_ms: i64,
) -> NodeView {
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
        stopped: node.halted,
        silent_for: match probed {
            // Counted from when this process could first have heard it: a
            // time the operator itself was down is no silence of the node.
            Probed::Failed(_) => {
                let ms = now_ms().saturating_sub(row.last_seen.max(since_ms));
                Some(std::time::Duration::from_millis(
                    u64::try_from(ms).unwrap_or(0),
                ))
            }
            _ => None,
        },
        // Set by the pass once the mesh's addresses are allotted.
        mesh: None,
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
                row.name,
                row.address,
                row.state.as_str()
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
        let level = if row.state == NodeState::Ready {
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
            &format!("node.{}", row.state.as_str()),
            format!(
                "{} is {} (was {}){}",
                row.name,
                row.state.as_str(),
                previous.state.as_str(),
                why.unwrap_or_default()
            ),
        ));
    }
    out
}
