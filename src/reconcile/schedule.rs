//! Which node each pod runs on: bin-packing by declared memory and CPU.
//!
//! 1. A pod stays where it is while its node is ready or suspect (no
//!    churn), even if the node has since become too small for it.
//! 2. Pods on lost, untrusted or unknown nodes, on draining nodes, and new
//!    pods are placed on ready nodes with room, instance 0 of every app
//!    first (so every app runs before any gets a second instance), larger
//!    pods first within that. Among the nodes with room: fewest instances
//!    of the same app on the node, then in its zone, then best fit (least
//!    memory left), then least CPU left, then node id.
//! 3. A pod that holds data (a writable volume) on a node that stopped
//!    answering, or whose host key changed, stays placed there until the
//!    node is provably stopped ([`NodeView::stopped`]): a node cut off for
//!    a while must never come back to find its pod running elsewhere on
//!    other data. Its drain moves it, and a fence (`operator`) proves it.
//! 4. A pod with durable volumes goes only to nodes in their zone.
//! 5. A pod without room is a [`Problem`]; the rest are still placed. A
//!    draining node's pod without room elsewhere stays on it.
//!
//! Deterministic: the same input gives the same placements.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::desired::{PodKey, Reserve};
use super::problem::{Problem, ProblemKind};
use crate::config::{Bytes, Millicores};
use crate::observe::Images;

/// A node as the scheduler and planner see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeView {
    /// The instance id (EC2) or the static node's name.
    pub id: String,
    pub address: String,
    /// The availability zone, when known: instances of one app are spread
    /// across zones.
    pub zone: Option<String>,
    /// Total memory (the reserve is taken off by the scheduler).
    pub memory: Bytes,
    /// Total CPU.
    pub cpu: Millicores,
    pub state: NodeState,
    /// The images it holds, when its probe read them: a preparing node
    /// pulls the fleet's missing ones.
    #[serde(skip)]
    pub images: Option<Images>,
    /// Provably stopped: EC2 reports its instance shutting down, stopped
    /// or terminated (Prism's fence included), or it left the inventory.
    /// Only then do pods that hold data leave it without a drain.
    pub stopped: bool,
    /// How long it has not answered, when it does not.
    #[serde(skip)]
    pub silent_for: Option<std::time::Duration>,
    /// With a mesh: the gateway of its /24, where its containers' names
    /// are answered.
    #[serde(skip)]
    pub mesh: Option<std::net::Ipv4Addr>,
}

impl NodeView {
    /// Whether its running containers serve: it keeps its pods (ready or
    /// suspect) or drains them; routes and names include them.
    pub fn serves(&self) -> bool {
        matches!(
            self.state,
            NodeState::Ready | NodeState::Suspect | NodeState::Draining
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Answering probes: keeps its pods and takes new ones.
    Ready,
    /// Missed probes: keeps its pods, takes no new ones.
    Suspect,
    /// New, and not ready yet (booting, sshd not up, Docker not running or
    /// being installed, the fleet's images being pulled): takes no pods
    /// until it is.
    Preparing,
    /// Gone or unreachable for good: its pods are placed elsewhere.
    Lost,
    /// A spot interruption notice: its pods are started elsewhere first,
    /// and only then removed here.
    Draining,
    /// Its host key changed: placed like lost, and never touched.
    Untrusted,
    /// No longer in the inventory (EC2 terminated it, or it left the static
    /// list): history, never probed again.
    Gone,
}

impl NodeState {
    /// Whether pods placed on the node stay there.
    pub(crate) fn keeps_pods(self) -> bool {
        matches!(
            self,
            NodeState::Ready | NodeState::Suspect | NodeState::Preparing
        )
    }

    /// Whether new pods may go there.
    pub(crate) fn takes_pods(self) -> bool {
        self == NodeState::Ready
    }

    /// Whether Prism may run commands on it (when it was observed).
    pub(crate) fn touchable(self) -> bool {
        !matches!(self, NodeState::Untrusted | NodeState::Gone)
    }

    /// Every state, in the order `as_str` lists them.
    pub(crate) const ALL: [NodeState; 7] = [
        NodeState::Ready,
        NodeState::Suspect,
        NodeState::Preparing,
        NodeState::Lost,
        NodeState::Draining,
        NodeState::Untrusted,
        NodeState::Gone,
    ];

    pub fn parse(s: &str) -> Option<NodeState> {
        NodeState::ALL.into_iter().find(|n| n.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Ready => "ready",
            NodeState::Suspect => "suspect",
            NodeState::Preparing => "preparing",
            NodeState::Lost => "lost",
            NodeState::Draining => "draining",
            NodeState::Untrusted => "untrusted",
            NodeState::Gone => "gone",
        }
    }
}

/// What one pod reserves, and where it may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodDemand {
    pub pod: PodKey,
    pub memory: Bytes,
    pub cpu: Millicores,
    /// It writes data that outlives its containers: it leaves a node that
    /// stopped answering only once the node is provably stopped.
    pub holds_data: bool,
    /// Where its durable volumes let it run.
    pub zone: ZoneRule,
}

/// Where a pod may run, by its durable volumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneRule {
    /// Anywhere: no durable volume yet (one is made where it lands).
    Any,
    /// Only in this zone, where its volumes are.
    In(String),
    /// Its volumes could not be listed this pass: it stays where it is,
    /// and a pod that must move waits.
    Unknown,
}

impl ZoneRule {
    fn allows(&self, n: &NodeView) -> bool {
        match self {
            ZoneRule::Any => true,
            ZoneRule::In(z) => n.zone.as_ref() == Some(z),
            ZoneRule::Unknown => false,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    /// Every pod that has a node.
    pub placements: BTreeMap<PodKey, String>,
    /// Pods without room, sorted.
    pub problems: Vec<Problem>,
}

/// Places `pods`; `current` is where pods are now (stored placements, or
/// where their containers were found). Entries of `current` for pods not
/// in `pods` are ignored.
pub fn schedule(
    pods: &[PodDemand],
    nodes: &[NodeView],
    current: &BTreeMap<PodKey, String>,
    reserve: Reserve,
) -> Schedule {
    let mut room: BTreeMap<&str, Room> = nodes
        .iter()
        .map(|n| (n.id.as_str(), Room::new(n, reserve)))
        .collect();
    let by_id: BTreeMap<&str, &NodeView> = nodes.iter().map(|n| (n.id.as_str(), n)).collect();
    let mut out = Schedule::default();
    let mut pending: Vec<(&PodDemand, Option<&NodeView>)> = Vec::new();

    let mut sorted: Vec<&PodDemand> = pods.iter().collect();
    sorted.sort_by(|a, b| a.pod.cmp(&b.pod));
    for demand in sorted {
        let node = current
            .get(&demand.pod)
            .and_then(|id| by_id.get(id.as_str()).copied());
        match node {
            Some(n)
                if n.state.keeps_pods()
                    && (demand.zone.allows(n) || demand.zone == ZoneRule::Unknown) =>
            {
                if let Some(r) = room.get_mut(n.id.as_str()) {
                    r.take(demand);
                }
                out.placements.insert(demand.pod.clone(), n.id.clone());
            }
            Some(n) if n.state == NodeState::Draining => pending.push((demand, Some(n))),
            Some(n) if demand.holds_data && !n.stopped => {
                out.problems.push(Problem {
                    kind: ProblemKind::HoldsData,
                    pod: demand.pod.clone(),
                    detail: held_by(demand, n),
                });
                out.placements.insert(demand.pod.clone(), n.id.clone());
            }
            _ => pending.push((demand, None)),
        }
    }

    pending.sort_by(|(a, _), (b, _)| {
        (
            a.pod.instance,
            Reverse(a.memory),
            Reverse(a.cpu),
            &a.pod.app,
        )
            .cmp(&(
                b.pod.instance,
                Reverse(b.memory),
                Reverse(b.cpu),
                &b.pod.app,
            ))
    });
    for (demand, draining) in pending {
        let zone_count = |zone: &Option<String>, room: &BTreeMap<&str, Room>| -> usize {
            let Some(zone) = zone else { return 0 };
            room.values()
                .filter(|r| r.zone.as_ref() == Some(zone))
                .map(|r| r.count(&demand.pod.app))
                .sum()
        };
        let best = nodes
            .iter()
            .filter(|n| n.state.takes_pods())
            .filter(|n| demand.zone.allows(n))
            .filter(|n| room[n.id.as_str()].fits(demand))
            .min_by_key(|n| {
                let r = &room[n.id.as_str()];
                (
                    r.count(&demand.pod.app),
                    zone_count(&n.zone, &room),
                    r.memory - demand.memory.0 as i128,
                    r.cpu - demand.cpu.0 as i128,
                    n.id.as_str(),
                )
            });
        match (best, draining) {
            (Some(n), _) => {
                if let Some(r) = room.get_mut(n.id.as_str()) {
                    r.take(demand);
                }
                out.placements.insert(demand.pod.clone(), n.id.clone());
            }
            (None, Some(d)) => {
                out.problems.push(Problem {
                    kind: ProblemKind::CannotMove,
                    pod: demand.pod.clone(),
                    detail: format!(
                        "{} stays on draining node {}: {}",
                        demand.pod,
                        d.id,
                        no_room(demand, nodes, &room)
                    ),
                });
                out.placements.insert(demand.pod.clone(), d.id.clone());
            }
            (None, None) => {
                let zone_empty = match &demand.zone {
                    ZoneRule::In(z) => !nodes
                        .iter()
                        .any(|n| n.zone.as_ref() == Some(z) && n.state.takes_pods()),
                    _ => false,
                };
                out.problems.push(Problem {
                    kind: if zone_empty {
                        ProblemKind::NoNodeInZone
                    } else {
                        ProblemKind::CannotPlace
                    },
                    pod: demand.pod.clone(),
                    detail: format!("{} {}", demand.pod, no_room(demand, nodes, &room)),
                })
            }
        }
    }
    out.problems.sort();
    out
}

/// Why a pod that holds data stays on a node it cannot run on.
fn held_by(d: &PodDemand, n: &NodeView) -> String {
    let why = match n.state {
        NodeState::Untrusted => "whose host key changed (check the node, then `prism trust`)",
        _ => "which does not answer",
    };
    format!(
        "{} holds data and stays on node {}, {why}: it moves once EC2 reports the instance stopped or terminated, or Prism fences it ([lifecycle] fence)",
        d.pod, n.id
    )
}

/// Free capacity of a node; signed, as kept pods may overcommit it.
struct Room {
    memory: i128,
    cpu: i128,
    zone: Option<String>,
    apps: BTreeMap<String, usize>,
}

impl Room {
    fn new(n: &NodeView, reserve: Reserve) -> Room {
        Room {
            memory: n.memory.0 as i128 - reserve.memory.0 as i128,
            cpu: n.cpu.0 as i128 - reserve.cpu.0 as i128,
            zone: n.zone.clone(),
            apps: BTreeMap::new(),
        }
    }

    fn fits(&self, d: &PodDemand) -> bool {
        d.memory.0 as i128 <= self.memory && d.cpu.0 as i128 <= self.cpu
    }

    fn take(&mut self, d: &PodDemand) {
        self.memory -= d.memory.0 as i128;
        self.cpu -= d.cpu.0 as i128;
        *self.apps.entry(d.pod.app.clone()).or_default() += 1;
    }

    fn count(&self, app: &str) -> usize {
        self.apps.get(app).copied().unwrap_or(0)
    }
}

/// Why no node could take the pod, with the numbers: "needs 768M of
/// memory; the largest free space is 512M, on node i-1".
fn no_room(d: &PodDemand, nodes: &[NodeView], room: &BTreeMap<&str, Room>) -> String {
    if d.zone == ZoneRule::Unknown {
        return "has durable volumes, and EC2 could not list them this pass".into();
    }
    if let ZoneRule::In(zone) = &d.zone {
        let in_zone: Vec<NodeView> = nodes
            .iter()
            .filter(|n| n.zone.as_deref() == Some(zone))
            .cloned()
            .collect();
        if !in_zone.iter().any(|n| n.state.takes_pods()) {
            return format!("has its durable volumes in zone {zone}, where no node is ready");
        }
        let why = no_room_among(d, &in_zone, room);
        return format!("{why} (its durable volumes are in zone {zone})");
    }
    no_room_among(d, nodes, room)
}

fn no_room_among(d: &PodDemand, nodes: &[NodeView], room: &BTreeMap<&str, Room>) -> String {
    let ready: Vec<&NodeView> = nodes.iter().filter(|n| n.state.takes_pods()).collect();
    if ready.is_empty() {
        let mut states: BTreeMap<&str, usize> = BTreeMap::new();
        for n in nodes {
            *states.entry(n.state.as_str()).or_default() += 1;
        }
        let summary: Vec<String> = states.iter().map(|(s, n)| format!("{n} {s}")).collect();
        return if nodes.is_empty() {
            "has no node to run on: the fleet has no nodes".into()
        } else {
            format!(
                "has no node to run on: none is ready ({})",
                summary.join(", ")
            )
        };
    }
    let free = |id: &str| -> (i128, i128) {
        room.get(id)
            .map_or((0, 0), |r| (r.memory.max(0), r.cpu.max(0)))
    };
    // Most free first; ties by node id.
    let most_memory = ready
        .iter()
        .max_by_key(|n| (free(&n.id).0, Reverse(n.id.as_str())))
        .map(|n| (n.id.as_str(), free(&n.id)));
    let most_cpu = ready
        .iter()
        .max_by_key(|n| (free(&n.id).1, Reverse(n.id.as_str())))
        .map(|n| (n.id.as_str(), free(&n.id)));
    let (Some((mem_node, (mem_free, mem_node_cpu))), Some((cpu_node, (cpu_mem, cpu_free)))) =
        (most_memory, most_cpu)
    else {
        return "has no node to run on".into();
    };
    let bytes = |v: i128| Bytes(v as u64);
    let cores = |v: i128| Millicores(v as u64);
    if d.memory.0 as i128 > mem_free {
        format!(
            "needs {} of memory; the largest free space is {}, on node {mem_node}",
            d.memory,
            bytes(mem_free)
        )
    } else if d.cpu.0 as i128 > cpu_free {
        format!(
            "needs {} CPU; the most free is {}, on node {cpu_node}",
            d.cpu,
            cores(cpu_free)
        )
    } else {
        format!(
            "needs {} of memory and {} CPU on one node; node {mem_node} has {} and {}, node {cpu_node} has {} and {}",
            d.memory,
            d.cpu,
            bytes(mem_free),
            cores(mem_node_cpu),
            bytes(cpu_mem),
            cores(cpu_free)
        )
    }
}

#[cfg(test)]
mod tests;
