//! A node's state from its latest probe and what came before: how the
//! scheduler should treat it. Pure; the misses counted between passes live
//! in [`Misses`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::cloud::{Node, Presence};
use crate::observe::{Condition, Images, Probed};
use crate::reconcile::NodeState;

/// How long a gone node is still listed (`prism status`, the dashboard)
/// after it went; then its row is dropped. Events keep its history.
pub(crate) const GONE_SHOWN_FOR: Duration = Duration::from_secs(60 * 60);

/// - EC2 says it is going (shutting down, stopping): lost at once.
/// - A changed host key: untrusted, never touched, until someone looks.
/// - A spot interruption notice or rebalance recommendation, now or
///   before: draining (its pods start elsewhere, then leave it); one that
///   then stops answering is lost at once, as it is going anyway.
/// - It answers with Docker running: ready, except that a node never
///   ready yet is preparing until it is `prepared`: it holds every image
///   of the fleet, or its pull failed (a bad image must not hold a node
///   for ever; its pods then fail as anywhere else). A node that was
///   ready once never goes back to preparing.
/// - A node never ready yet that does not answer (booting, Docker missing
///   or being installed): preparing.
/// - Otherwise each missed probe makes it suspect (keeps its pods, takes
///   no new ones), and `lost_after` in a row lost (its pods go elsewhere).
///
/// `previous` is the state recorded by the pass before, `missed` the
/// probes missed in a row including this one (see [`Misses`]), `prepared`
/// whether its images are settled ([`images_settled`]).
pub fn node_state(
    node: &Node,
    probed: &Probed,
    previous: Option<NodeState>,
    missed: u32,
    lost_after: u32,
    prepared: bool,
) -> NodeState {
    if node.presence == Presence::Leaving {
        return NodeState::Lost;
    }
    let was_draining = previous == Some(NodeState::Draining);
    let noticed = match probed {
        Probed::Ready { facts, .. } | Probed::NoDocker { facts, .. } => facts.notice.is_some(),
        Probed::Failed(_) => false,
    };
    match probed {
        Probed::Failed(Condition::HostKeyMismatch(_)) => NodeState::Untrusted,
        Probed::Ready { .. } | Probed::NoDocker { .. } if noticed || was_draining => {
            NodeState::Draining
        }
        Probed::Ready { .. } if never_ready(previous) && !prepared => NodeState::Preparing,
        Probed::Ready { .. } => NodeState::Ready,
        _ if was_draining => NodeState::Lost,
        _ if never_ready(previous) => NodeState::Preparing,
        _ if missed >= lost_after => NodeState::Lost,
        _ => NodeState::Suspect,
    }
}

fn never_ready(previous: Option<NodeState>) -> bool {
    matches!(previous, None | Some(NodeState::Preparing))
}

/// Whether a node that answers holds what it needs before it takes pods:
/// each of the fleet's images (`wanted`) is on it (`held`), or failed to
/// pull there (`failed`).
pub(crate) fn images_settled(
    wanted: &BTreeSet<String>,
    held: &Images,
    failed: &BTreeSet<String>,
) -> bool {
    wanted
        .iter()
        .all(|image| held.contains(image) || failed.contains(image))
}

/// Whether a failed probe is worth asking discovery again in the same pass
/// (a second DescribeInstances): only a node's first miss after it
/// answered. Spot termination looks like that: the pass's listing said
/// running, then the node stopped answering; asking again finds it
/// shutting down and makes it lost at once instead of suspect. A node
/// that keeps missing is seen by the next pass's listing anyway, one
/// never ready has no pods to move, and one EC2 already reports leaving
/// is lost already; a host key or login problem is no sign of termination.
pub(crate) fn worth_recheck(node: &Node, probed: &Probed, previous: Option<NodeState>) -> bool {
    let answered_before = matches!(previous, Some(NodeState::Ready | NodeState::Draining));
    let silent = matches!(
        probed,
        Probed::Failed(
            Condition::Unreachable(_) | Condition::Timeout(_) | Condition::ProbeFailed(_)
        )
    );
    node.presence != Presence::Leaving && answered_before && silent
}

/// Probes missed in a row, per node, kept in memory between passes. A
/// process that starts without a count (`reconcile --once` from cron)
/// takes one from the recorded state: suspect counts as one miss, lost as
/// enough.
#[derive(Debug, Default)]
pub struct Misses {
    counts: BTreeMap<String, u32>,
}

impl Misses {
    /// Counts this probe (a miss unless Docker answered); returns the
    /// misses in a row.
    pub fn count(&mut self, id: &str, probed: &Probed, previous: Option<NodeState>) -> u32 {
        let missed = match probed {
            Probed::Ready { .. } => 0,
            _ => {
                let before = self.counts.get(id).copied().unwrap_or(match previous {
                    Some(NodeState::Suspect) => 1,
                    Some(NodeState::Lost) => u32::MAX - 1,
                    _ => 0,
                });
                before.saturating_add(1)
            }
        };
        self.counts.insert(id.to_owned(), missed);
        missed
    }

    /// Forgets nodes no longer in the inventory.
    pub fn retain(&mut self, ids: &[&str]) {
        self.counts.retain(|id, _| ids.contains(&id.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::cloud::Lifecycle;
    use crate::observe::{DockerSetup, NodeFacts, Notice, SocketAccess};

    fn node(presence: Presence) -> Node {
        Node {
            id: "i-1".into(),
            name: "n1".into(),
            address: "10.0.0.1".into(),
            port: 22,
            user: "root".into(),
            provider: crate::config::Provider::Ec2,
            zone: None,
            instance_type: None,
            lifecycle: Lifecycle::Spot,
            presence,
            halted: false,
            launched_at: None,
            memory: None,
            cpu: None,
            tags: BTreeMap::new(),
        }
    }

    fn facts(notice: Option<Notice>) -> NodeFacts {
        NodeFacts {
            mem_total: 1 << 30,
            mem_available: 1 << 29,
            cpus: 2,
            disk_path: "/".into(),
            disk_free: 1 << 30,
            docker: DockerSetup {
                cli: true,
                socket: SocketAccess::Usable,
            },
            notice,
            volume_mounts: BTreeMap::new(),
            mesh: None,
        }
    }

    fn ready_with(notice: Option<Notice>) -> Probed {
        Probed::Ready {
            facts: facts(notice),
            docker_version: "20.10".into(),
            containers: vec![],
            images: Some(Images::default()),
            volumes: None,
            image_volumes: BTreeMap::new(),
        }
    }

    fn ready() -> Probed {
        ready_with(None)
    }

    fn notice() -> Notice {
        Notice::Interruption {
            action: "terminate".into(),
            time: "2026-11-22T02:00:00Z".into(),
        }
    }

    fn unreachable() -> Probed {
        Probed::Failed(Condition::Unreachable("no route".into()))
    }

    fn docker_missing() -> Probed {
        Probed::NoDocker {
            facts: facts(None),
            condition: Condition::DockerMissing,
        }
    }

    /// The states a node goes through over a run of probes, from `start`,
    /// its images settled throughout.
    fn run(start: Option<&str>, probes: &[Probed], lost_after: u32) -> Vec<&'static str> {
        let steps: Vec<(Probed, bool)> = probes.iter().map(|p| (p.clone(), true)).collect();
        run_with(start, &steps, lost_after)
    }

    /// The same, with each probe's `prepared`.
    fn run_with(
        start: Option<&str>,
        steps: &[(Probed, bool)],
        lost_after: u32,
    ) -> Vec<&'static str> {
        let n = node(Presence::Running);
        let mut misses = Misses::default();
        let mut previous = start.map(|s| NodeState::parse(s).expect("a state"));
        steps
            .iter()
            .map(|(p, prepared)| {
                let missed = misses.count(&n.id, p, previous);
                let state = node_state(&n, p, previous, missed, lost_after, *prepared);
                previous = Some(state);
                state.as_str()
            })
            .collect()
    }

    #[test]
    fn answering_nodes_are_ready() {
        assert_eq!(run(None, &[ready()], 2), ["ready"]);
        assert_eq!(run(Some("lost"), &[ready()], 2), ["ready"]);
        assert_eq!(run(Some("gone"), &[ready()], 2), ["ready"]);
    }

    #[test]
    fn misses_in_a_row_make_a_ready_node_suspect_then_lost() {
        let miss = unreachable;
        assert_eq!(
            run(Some("ready"), &[miss(), miss(), miss()], 2),
            ["suspect", "lost", "lost"]
        );
        assert_eq!(
            run(Some("ready"), &[miss(), miss(), miss(), miss()], 4),
            ["suspect", "suspect", "suspect", "lost"]
        );
        assert_eq!(run(Some("ready"), &[miss()], 1), ["lost"]);
        // An answer in between starts the count again.
        assert_eq!(
            run(Some("ready"), &[miss(), ready(), miss(), miss()], 2),
            ["suspect", "ready", "suspect", "lost"]
        );
        // Docker down on a node that was ready is a miss too.
        assert_eq!(
            run(Some("ready"), &[docker_missing(), docker_missing()], 2),
            ["suspect", "lost"]
        );
    }

    #[test]
    fn a_fresh_process_takes_the_count_from_the_recorded_state() {
        assert_eq!(run(Some("suspect"), &[unreachable()], 2), ["lost"]);
        assert_eq!(run(Some("suspect"), &[unreachable()], 3), ["suspect"]);
        assert_eq!(run(Some("lost"), &[unreachable()], 5), ["lost"]);
    }

    #[test]
    fn a_new_node_is_preparing_until_docker_answers() {
        assert_eq!(
            run(
                None,
                &[unreachable(), docker_missing(), unreachable(), ready()],
                1
            ),
            ["preparing", "preparing", "preparing", "ready"]
        );
    }

    #[test]
    fn a_new_node_is_preparing_until_its_images_are_settled() {
        let (settled, pulling) = (true, false);
        assert_eq!(
            run_with(
                None,
                &[
                    (unreachable(), pulling),
                    (ready(), pulling),
                    (ready(), pulling),
                    (ready(), settled),
                    (ready(), pulling),
                ],
                2
            ),
            ["preparing", "preparing", "preparing", "ready", "ready"],
            "once ready, a new image in fleet.toml does not make it preparing again"
        );
        // Nor after it was lost, suspect or drained.
        for was in ["ready", "suspect", "lost", "gone"] {
            assert_eq!(
                run_with(Some(was), &[(ready(), pulling)], 2),
                ["ready"],
                "{was}"
            );
        }
        assert_eq!(
            run_with(Some("draining"), &[(ready(), pulling)], 2),
            ["draining"]
        );
        // A preparing node that stops answering stays preparing.
        assert_eq!(
            run_with(Some("preparing"), &[(unreachable(), settled)], 1),
            ["preparing"]
        );
    }

    #[test]
    fn images_are_settled_when_each_is_held_or_failed() {
        let set = |names: &[&str]| -> BTreeSet<String> {
            names.iter().map(|n| (*n).to_owned()).collect()
        };
        let wanted = set(&["reg/app:1", "redis:7-alpine"]);
        let held = Images::new(["reg/app:1", "docker.io/library/redis:7-alpine"]);
        assert!(images_settled(&wanted, &held, &set(&[])));
        let held = Images::new(["reg/app:1"]);
        assert!(!images_settled(&wanted, &held, &set(&[])));
        assert!(images_settled(&wanted, &held, &set(&["redis:7-alpine"])));
        assert!(!images_settled(
            &wanted,
            &Images::default(),
            &set(&["redis:7-alpine"])
        ));
        assert!(images_settled(&set(&[]), &Images::default(), &set(&[])));
    }

    #[test]
    fn a_notice_drains_until_the_node_goes() {
        assert_eq!(
            run(
                Some("ready"),
                &[ready_with(Some(notice())), ready(), ready(), unreachable()],
                3
            ),
            ["draining", "draining", "draining", "lost"]
        );
        let rebalance = Notice::Rebalance {
            time: "2026-11-22T02:00:00Z".into(),
        };
        assert_eq!(
            run(Some("ready"), &[ready_with(Some(rebalance))], 2),
            ["draining"]
        );
    }

    #[test]
    fn only_a_first_miss_asks_discovery_again() {
        let running = node(Presence::Running);
        let timeout = Probed::Failed(Condition::Timeout("no answer".into()));
        let auth = Probed::Failed(Condition::AuthRefused("denied".into()));
        let mismatch = Probed::Failed(Condition::HostKeyMismatch("changed".into()));
        for previous in ["ready", "draining"] {
            assert!(worth_recheck(
                &running,
                &unreachable(),
                NodeState::parse(previous)
            ));
            assert!(worth_recheck(
                &running,
                &timeout,
                NodeState::parse(previous)
            ));
        }
        // Answers, or Docker down: no sign of termination.
        let ready_before = Some(NodeState::Ready);
        assert!(!worth_recheck(&running, &ready(), ready_before));
        assert!(!worth_recheck(&running, &docker_missing(), ready_before));
        assert!(!worth_recheck(&running, &auth, ready_before));
        assert!(!worth_recheck(&running, &mismatch, ready_before));
        // Missed before, never ready, or known to be leaving: the next
        // listing (or this one) tells.
        for previous in [
            None,
            Some(NodeState::Suspect),
            Some(NodeState::Lost),
            Some(NodeState::Preparing),
            Some(NodeState::Gone),
        ] {
            assert!(
                !worth_recheck(&running, &unreachable(), previous),
                "{previous:?}"
            );
        }
        assert!(!worth_recheck(
            &node(Presence::Leaving),
            &unreachable(),
            Some(NodeState::Ready)
        ));
    }

    #[test]
    fn leaving_instances_are_lost_at_once_and_changed_keys_untrusted() {
        assert_eq!(
            node_state(&node(Presence::Leaving), &ready(), None, 0, 2, true),
            NodeState::Lost
        );
        let mismatch = Probed::Failed(Condition::HostKeyMismatch("changed".into()));
        assert_eq!(
            node_state(
                &node(Presence::Running),
                &mismatch,
                Some(NodeState::Ready),
                1,
                2,
                true
            ),
            NodeState::Untrusted
        );
    }
}
