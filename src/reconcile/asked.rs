//! Restarts someone asked for (the dashboard's `x`, as a request in the
//! state store): planned like any other action, so the one applier runs
//! them. Pure.

use std::collections::BTreeMap;

use super::plan::{Action, ContainerRef, RestartWhy};
use super::schedule::NodeView;
use crate::observe::ContainerState;
use crate::store::Request;

/// Per node, the restarts asked for.
pub(crate) type Restarts = BTreeMap<String, Vec<Action>>;

/// Per node, the restarts `asks` want; and the asks that cannot be done,
/// with why, by request id. Only a container of this fleet that the pass
/// observed on the node the request names can be restarted: a request
/// cannot name anything else on the machine.
pub(crate) fn plan_restarts(
    fleet: &str,
    asks: &[Request],
    nodes: &[NodeView],
    observed: &BTreeMap<String, Vec<ContainerState>>,
) -> (Restarts, Vec<(i64, String)>) {
    let mut actions = Restarts::new();
    let mut refused = Vec::new();
    for ask in asks {
        let (Some(node), Some(name)) = (ask.node_id.as_deref(), ask.container.as_deref()) else {
            refused.push((ask.id, "restart needs a node and a container".to_owned()));
            continue;
        };
        let touchable = nodes.iter().any(|n| n.id == node && n.state.touchable());
        let Some(containers) = observed.get(node).filter(|_| touchable) else {
            refused.push((ask.id, format!("node {node} was not reachable this pass")));
            continue;
        };
        let found = containers.iter().find_map(|c| {
            let l = c.identity.prism()?;
            (c.name == name && l.fleet == fleet).then(|| ContainerRef::new(c, l))
        });
        match found {
            Some(container) => actions
                .entry(node.to_owned())
                .or_default()
                .push(Action::Restart {
                    container,
                    why: RestartWhy::Asked {
                        request: ask.id,
                        by: ask.by.clone(),
                    },
                }),
            None => refused.push((ask.id, format!("no fleet container {name} on {node}"))),
        }
    }
    (actions, refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Bytes, Millicores};
    use crate::observe::{ContainerId, Health, Identity, PrismLabels, RunState};
    use crate::reconcile::NodeState;
    use crate::store::{RequestKind, RequestState};

    fn ask(id: i64, node: Option<&str>, container: Option<&str>) -> Request {
        Request {
            id,
            at: 0,
            kind: RequestKind::Restart,
            node_id: node.map(Into::into),
            container: container.map(Into::into),
            by: "dashboard (pid 1)".into(),
            state: RequestState::Running,
            done_at: None,
            result: None,
        }
    }

    fn web(fleet: &str) -> ContainerState {
        ContainerState {
            id: ContainerId::parse(&"ab".repeat(32)).expect("id"),
            name: "prism.lab.blog.0.web.0123".into(),
            image: "blog:1".into(),
            image_id: "sha256:1".into(),
            identity: Identity::Prism(PrismLabels {
                fleet: fleet.into(),
                app: "blog".into(),
                service: "web".into(),
                instance: 0,
                spec: "0123".into(),
            }),
            state: RunState::Running,
            health: Health::None,
            exit_code: 0,
            error: None,
            oom_killed: false,
            restart_count: 0,
            created_at: 0,
            started_at: Some(0),
            finished_at: None,
            ports: vec![],
            volumes: BTreeMap::new(),
            mesh_ip: None,
        }
    }

    fn node(id: &str, state: NodeState) -> NodeView {
        NodeView {
            id: id.into(),
            address: "10.0.0.1".into(),
            zone: None,
            memory: Bytes(1 << 30),
            cpu: Millicores(1000),
            state,
            images: None,
            stopped: false,
            silent_for: None,
            mesh: None,
        }
    }

    #[test]
    fn only_an_observed_fleet_container_on_the_named_node_is_restarted() {
        let nodes = [
            node("i-1", NodeState::Ready),
            node("i-2", NodeState::Untrusted),
        ];
        let observed = BTreeMap::from([
            (
                "i-1".to_owned(),
                vec![web("lab"), {
                    let mut other = web("other");
                    other.name = "prism.other.blog.0.web.0123".into();
                    other
                }],
            ),
            ("i-2".to_owned(), vec![web("lab")]),
        ]);
        let name = "prism.lab.blog.0.web.0123";
        let asks = [
            ask(1, Some("i-1"), Some(name)),
            ask(2, Some("i-1"), Some("postgres")),
            ask(3, Some("i-1"), Some("prism.other.blog.0.web.0123")),
            ask(4, Some("i-2"), Some(name)),
            ask(5, Some("i-9"), Some(name)),
            ask(6, None, Some(name)),
        ];
        let (actions, refused) = plan_restarts("lab", &asks, &nodes, &observed);
        let planned: Vec<String> = actions["i-1"].iter().map(ToString::to_string).collect();
        assert_eq!(
            planned,
            ["~ restart blog/0 web (prism.lab.blog.0.web.0123, asked by dashboard (pid 1))"]
        );
        assert_eq!(actions.len(), 1);
        let ids: Vec<i64> = refused.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [2, 3, 4, 5, 6]);
        assert_eq!(refused[0].1, "no fleet container postgres on i-1");
        assert_eq!(refused[2].1, "node i-2 was not reachable this pass");
    }
}
