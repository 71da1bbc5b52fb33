//! A node's state from its latest probe and the one before: how the
//! scheduler should treat it. Pure.

use crate::cloud::{Node, Presence};
use crate::observe::{Condition, Probed};
use crate::reconcile::NodeState;
use crate::store::NodeRecord;

/// - EC2 says it is going (shutting down, stopping): lost at once.
/// - A changed host key: untrusted, never touched, until someone looks.
/// - It answers with Docker running: ready.
/// - Otherwise one missed probe makes it suspect (keeps its pods, takes no
///   new ones), a second in a row lost (its pods go elsewhere).
pub fn node_state(node: &Node, probed: &Probed, previous: Option<&NodeRecord>) -> NodeState {
    if node.presence == Presence::Leaving {
        return NodeState::Lost;
    }
    match probed {
        Probed::Ready { .. } => NodeState::Ready,
        Probed::Failed(Condition::HostKeyMismatch(_)) => NodeState::Untrusted,
        _ => match previous.map(|p| p.state.as_str()) {
            Some("suspect" | "lost") => NodeState::Lost,
            _ => NodeState::Suspect,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::cloud::Lifecycle;
    use crate::observe::{DockerSetup, NodeFacts, SocketAccess};

    fn node(presence: Presence) -> Node {
        Node {
            id: "i-1".into(),
            name: "n1".into(),
            address: "10.0.0.1".into(),
            port: 22,
            user: "root".into(),
            provider: "ec2",
            zone: None,
            instance_type: None,
            lifecycle: Lifecycle::Spot,
            presence,
            launched_at: None,
            memory: None,
            cpu: None,
            tags: BTreeMap::new(),
        }
    }

    fn previous(state: &str) -> NodeRecord {
        NodeRecord {
            id: "i-1".into(),
            name: "n1".into(),
            address: "10.0.0.1".into(),
            provider: "ec2".into(),
            zone: None,
            instance_type: None,
            lifecycle: "spot".into(),
            state: state.into(),
            condition: None,
            condition_detail: None,
            docker_version: None,
            memory_total: None,
            memory_free: None,
            cpus: None,
            disk_free: None,
            first_seen: 0,
            last_seen: 0,
            last_probe: None,
        }
    }

    fn ready() -> Probed {
        Probed::Ready {
            facts: NodeFacts {
                mem_total: 1 << 30,
                mem_available: 1 << 29,
                cpus: 2,
                disk_path: "/".into(),
                disk_free: 1 << 30,
                docker: DockerSetup {
                    cli: true,
                    socket: SocketAccess::Usable,
                },
            },
            docker_version: "20.10".into(),
            containers: vec![],
        }
    }

    fn unreachable() -> Probed {
        Probed::Failed(Condition::Unreachable("no route".into()))
    }

    #[test]
    fn answering_nodes_are_ready() {
        let n = node(Presence::Running);
        assert_eq!(node_state(&n, &ready(), None), NodeState::Ready);
        assert_eq!(
            node_state(&n, &ready(), Some(&previous("lost"))),
            NodeState::Ready
        );
    }

    #[test]
    fn one_miss_is_suspect_two_are_lost() {
        let n = node(Presence::Running);
        assert_eq!(node_state(&n, &unreachable(), None), NodeState::Suspect);
        assert_eq!(
            node_state(&n, &unreachable(), Some(&previous("ready"))),
            NodeState::Suspect
        );
        assert_eq!(
            node_state(&n, &unreachable(), Some(&previous("suspect"))),
            NodeState::Lost
        );
        assert_eq!(
            node_state(&n, &unreachable(), Some(&previous("lost"))),
            NodeState::Lost
        );
    }

    #[test]
    fn leaving_instances_are_lost_at_once_and_changed_keys_untrusted() {
        assert_eq!(
            node_state(&node(Presence::Leaving), &ready(), None),
            NodeState::Lost
        );
        let mismatch = Probed::Failed(Condition::HostKeyMismatch("changed".into()));
        assert_eq!(
            node_state(
                &node(Presence::Running),
                &mismatch,
                Some(&previous("ready"))
            ),
            NodeState::Untrusted
        );
    }
}
