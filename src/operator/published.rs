//! A pass report in the form the applier publishes to the store each pass
//! (`store::PublishedPlan`), so that a dashboard attached to a daemon shows
//! the plan as one running the operator itself does.

use super::{PassReport, Planned};
use crate::store::{NodeActions, PlanLines, PublishedPlan, Unplaceable};

impl PassReport {
    pub fn published(&self) -> PublishedPlan {
        PublishedPlan {
            at: self.finished_ms,
            took_ms: u64::try_from(self.took.as_millis()).unwrap_or(u64::MAX),
            applied: self.actions,
            failed: self.failed,
            error: self.error.clone(),
            plan: self.planned.as_deref().map(lines).unwrap_or_default(),
            volumes: self
                .planned
                .as_deref()
                .map(|p| p.volumes.clone())
                .unwrap_or_default(),
        }
    }
}

/// The plan's lines, as `prism plan` prints them.
pub fn lines(planned: &Planned) -> PlanLines {
    let plan = &planned.plan;
    PlanLines {
        nodes: plan
            .actions
            .iter()
            .map(|(id, actions)| NodeActions {
                id: id.clone(),
                name: planned
                    .nodes
                    .iter()
                    .find(|n| n.id == *id)
                    .map_or_else(|| id.clone(), |n| n.name.clone()),
                actions: actions.iter().map(ToString::to_string).collect(),
            })
            .collect(),
        placements: plan
            .placement_changes
            .iter()
            .map(ToString::to_string)
            .collect(),
        unplaceable: plan
            .problems
            .iter()
            .map(|p| Unplaceable {
                app: p.pod.app.clone(),
                instance: p.pod.instance,
                line: p.to_string(),
            })
            .collect(),
        waiting: plan.waiting.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::reconcile::{Action, PlacementChange, Plan, PodKey, Problem, ProblemKind};

    fn planned() -> Planned {
        let pod = PodKey::new("blog", 0);
        let mut actions = BTreeMap::new();
        actions.insert(
            "i-0aaa".to_owned(),
            vec![Action::EnsureNetwork {
                pod: pod.clone(),
                network: "prism-blog-0".into(),
            }],
        );
        actions.insert(
            "i-0zzz".to_owned(),
            vec![Action::RemoveNetwork {
                pod: pod.clone(),
                network: "prism-blog-0".into(),
            }],
        );
        Planned {
            nodes: Vec::new(),
            views: Vec::new(),
            observed: BTreeMap::new(),
            plan: Plan {
                placement_changes: vec![PlacementChange::Place {
                    pod,
                    node: "i-0aaa".into(),
                    from: None,
                }],
                actions,
                problems: vec![Problem {
                    kind: ProblemKind::CannotPlace,
                    pod: PodKey::new("blog", 1),
                    detail: "blog/1 needs 768M of memory".into(),
                }],
                waiting: vec!["old web kept".into()],
                ..Plan::default()
            },
            stale: None,
            ..Planned::default()
        }
    }

    #[test]
    fn a_report_as_published() {
        let report = PassReport {
            finished_ms: 42,
            took: Duration::from_millis(1_500),
            planned: Some(Arc::new(planned())),
            actions: 2,
            failed: 1,
            error: None,
            store: crate::store::WriteHealth::default(),
        };
        let p = report.published();
        assert_eq!((p.at, p.took_ms, p.applied, p.failed), (42, 1_500, 2, 1));
        let nodes: Vec<_> = p.plan.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(nodes, ["i-0aaa", "i-0zzz"]);
        // A node the pass did not list keeps its id as its name.
        assert_eq!(p.plan.nodes[1].name, "i-0zzz");
        assert_eq!(p.plan.nodes[0].actions, ["+ create network prism-blog-0"]);
        assert_eq!(p.plan.placements, ["+ place blog/0 on node i-0aaa"]);
        assert_eq!(p.plan.unplaceable.len(), 1);
        assert_eq!(
            (
                p.plan.unplaceable[0].app.as_str(),
                p.plan.unplaceable[0].instance
            ),
            ("blog", 1)
        );
        assert!(p.plan.unplaceable[0].line.contains("cannot place"));
        assert_eq!(p.plan.waiting, ["old web kept"]);
    }

    #[test]
    fn a_failed_pass_publishes_its_error_and_no_plan() {
        let report = PassReport {
            finished_ms: 7,
            took: Duration::from_millis(3),
            planned: None,
            actions: 0,
            failed: 0,
            error: Some("discovery: timed out".into()),
            store: crate::store::WriteHealth::default(),
        };
        let p = report.published();
        assert_eq!(p.error.as_deref(), Some("discovery: timed out"));
        assert_eq!(p.plan, PlanLines::default());
    }
}
