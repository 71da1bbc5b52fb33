//! The operator's own Prometheus metrics, served by the admin listener next
//! to the proxy's: nodes by state, pods placed and not, containers running,
//! and how long reconcile passes take. Filled from each pass report.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::PassReport;
use crate::observe::RunState;
use crate::reconcile::NodeState;

const STATES: [NodeState; 5] = [
    NodeState::Ready,
    NodeState::Suspect,
    NodeState::Lost,
    NodeState::Draining,
    NodeState::Untrusted,
];

/// Seconds a pass takes: 50 ms to 5 min.
const BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Handles on the operator's metrics; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct FleetMetrics {
    nodes: Family<StateLabels, Gauge>,
    pods_placed: Gauge,
    pods_unplaced: Gauge,
    containers_running: Gauge,
    pass_duration: Histogram,
    passes: Family<ResultLabels, Counter>,
    actions: Counter,
    actions_failed: Counter,
    last_pass: Gauge,
    /// State store operations that failed, as the writer counts them.
    store_failures: Counter,
}

impl FleetMetrics {
    /// Registers the operator's metrics under `prism_` in `registry`.
    pub fn new(registry: &mut Registry) -> FleetMetrics {
        let m = FleetMetrics {
            nodes: Family::default(),
            pods_placed: Gauge::default(),
            pods_unplaced: Gauge::default(),
            containers_running: Gauge::default(),
            pass_duration: Histogram::new(BUCKETS),
            passes: Family::default(),
            actions: Counter::default(),
            actions_failed: Counter::default(),
            last_pass: Gauge::default(),
            store_failures: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("prism");
        r.register("nodes", "Nodes by state", m.nodes.clone());
        r.register(
            "pods_placed",
            "Pods placed on a node",
            m.pods_placed.clone(),
        );
        r.register(
            "pods_unplaced",
            "Pods that could not be placed or moved",
            m.pods_unplaced.clone(),
        );
        r.register(
            "containers_running",
            "The fleet's containers running on nodes observed in the last pass",
            m.containers_running.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time a reconcile pass takes (observe, plan, apply)",
            m.pass_duration.clone(),
        );
        r.register(
            "reconcile_passes",
            "Reconcile passes, by result (ok, or failed before planning)",
            m.passes.clone(),
        );
        r.register("reconcile_actions", "Actions applied", m.actions.clone());
        r.register(
            "reconcile_actions_failed",
            "Actions that failed",
            m.actions_failed.clone(),
        );
        r.register(
            "reconcile_last_pass_timestamp_seconds",
            "When the last pass ended (Unix time)",
            m.last_pass.clone(),
        );
        r.register(
            "store_failures",
            "State store operations that failed (a full disk): the fleet heals on, unrecorded",
            m.store_failures.clone(),
        );
        m
    }

    /// Takes in one pass report.
    pub fn record(&self, report: &PassReport) {
        self.pass_duration.observe(report.took.as_secs_f64());
        // The writer's count only grows: add what is new since the last.
        let seen = self.store_failures.get();
        self.store_failures
            .inc_by(report.store.failed.saturating_sub(seen));
        self.actions.inc_by(report.actions as u64);
        self.actions_failed.inc_by(report.failed as u64);
        self.last_pass.set(report.finished_ms / 1000);
        let result = if report.error.is_some() {
            "failed"
        } else {
            "ok"
        };
        self.passes.get_or_create(&ResultLabels { result }).inc();
        // A failed pass says nothing of the fleet: the counts stand.
        let Some(planned) = &report.planned else {
            return;
        };
        for state in STATES {
            let n = planned.views.iter().filter(|v| v.state == state).count();
            self.nodes
                .get_or_create(&StateLabels {
                    state: state.as_str(),
                })
                .set(count(n));
        }
        self.pods_placed.set(count(planned.plan.placements.len()));
        self.pods_unplaced.set(count(planned.plan.problems.len()));
        let running = planned
            .observed
            .values()
            .flatten()
            .filter(|c| c.state == RunState::Running && c.identity.prism().is_some())
            .count();
        self.containers_running.set(count(running));
    }
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::config::{Bytes, Millicores};
    use crate::operator::Planned;
    use crate::reconcile::{NodeView, Plan, PodKey, PodPlacement};

    fn view(id: &str, state: NodeState) -> NodeView {
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

    fn report(took_ms: u64, views: Vec<NodeView>, pods: u32) -> PassReport {
        let plan = Plan {
            placements: (0..pods)
                .map(|i| PodPlacement {
                    pod: PodKey::new("blog", i),
                    node: "i-1".into(),
                })
                .collect(),
            ..Plan::default()
        };
        PassReport {
            finished_ms: 1_700_000_000_000,
            took: Duration::from_millis(took_ms),
            planned: Some(Arc::new(Planned {
                nodes: vec![],
                views,
                observed: BTreeMap::new(),
                stale: None,
                plan,
                ..Planned::default()
            })),
            actions: 3,
            failed: 1,
            error: None,
            store: crate::store::WriteHealth::default(),
        }
    }

    fn sample(page: &str, name: &str) -> Option<String> {
        page.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .map(str::to_owned)
    }

    #[test]
    fn pass_reports_set_node_and_pod_counts_and_time_passes() {
        let mut registry = Registry::default();
        let m = FleetMetrics::new(&mut registry);
        m.record(&report(
            200,
            vec![
                view("i-1", NodeState::Ready),
                view("i-2", NodeState::Ready),
                view("i-3", NodeState::Lost),
            ],
            2,
        ));
        // A later pass: one node fewer, one pod more; a failed pass after
        // it leaves the counts.
        m.record(&report(3000, vec![view("i-1", NodeState::Ready)], 3));
        m.record(&PassReport {
            planned: None,
            error: Some("discovery failed".into()),
            store: crate::store::WriteHealth::default(),
            actions: 0,
            failed: 0,
            ..report(100, vec![], 0)
        });
        let mut page = String::new();
        prometheus_client::encoding::text::encode(&mut page, &registry).unwrap();
        let s = |name: &str| sample(&page, name).unwrap_or_else(|| panic!("{name} in {page}"));
        assert_eq!(s("prism_nodes{state=\"ready\"}"), "1");
        assert_eq!(s("prism_nodes{state=\"lost\"}"), "0");
        assert_eq!(s("prism_nodes{state=\"draining\"}"), "0");
        assert_eq!(s("prism_pods_placed"), "3");
        assert_eq!(s("prism_reconcile_duration_seconds_count"), "3");
        let sum: f64 = s("prism_reconcile_duration_seconds_sum").parse().unwrap();
        assert!((sum - 3.3).abs() < 1e-9, "{sum}");
        assert_eq!(
            s("prism_reconcile_duration_seconds_bucket{le=\"0.25\"}"),
            "2"
        );
        assert_eq!(s("prism_reconcile_passes_total{result=\"ok\"}"), "2");
        assert_eq!(s("prism_reconcile_passes_total{result=\"failed\"}"), "1");
        assert_eq!(s("prism_reconcile_actions_total"), "6");
        assert_eq!(s("prism_reconcile_actions_failed_total"), "2");
        assert_eq!(
            s("prism_reconcile_last_pass_timestamp_seconds"),
            "1700000000"
        );
    }
}
