//! What the dashboard shows, as read from the state store (the same whether
//! it runs the operator or is attached to a daemon), and the figures of
//! the header. Loading is one function of a `Store`; the rest is pure.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::config::Fleet;
use crate::reconcile::NodeState;
use crate::store::{
    ContainerRecord, Event, HealthRecord, LockInfo, NodeRecord, Placement, ProxyTraffic,
    PublishedPlan, Request, Store, StoreError,
};

/// Events kept on screen.
pub(crate) const EVENTS: usize = 300;

/// Also what `GET /v1/dashboard` answers, for a dashboard elsewhere.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub nodes: Vec<NodeRecord>,
    pub containers: Vec<ContainerRecord>,
    pub placements: Vec<Placement>,
    /// Newest first.
    pub events: Vec<Event>,
    pub lock: Option<LockInfo>,
    /// Newest first.
    pub requests: Vec<Request>,
    /// Prism's own health verdicts, which win over Docker's.
    pub health: Vec<HealthRecord>,
    /// What the applier's last pass planned, as it published it.
    pub plan: Option<PublishedPlan>,
    /// The daemon's proxy counters, as it last wrote them.
    pub traffic: Option<ProxyTraffic>,
}

impl Snapshot {
    /// Nodes discovery no longer lists (terminated), as the operator
    /// records them: history, not the fleet.
    pub fn gone(&self) -> BTreeSet<&str> {
        self.nodes
            .iter()
            .filter(|n| n.state == NodeState::Gone)
            .map(|n| n.id.as_str())
            .collect()
    }

    pub fn load(store: &Store) -> Result<Snapshot, StoreError> {
        Ok(Snapshot {
            nodes: store.nodes()?,
            containers: store.containers()?,
            placements: store.placements()?,
            events: store.events(EVENTS)?,
            lock: store.lock_info()?,
            requests: store.requests(20)?,
            health: store.health_records()?,
            plan: store.last_plan()?,
            traffic: store.proxy_traffic()?,
        })
    }
}

/// The pods fleet.toml asks for, and each one's services.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "DesiredList", into = "DesiredList")]
pub struct DesiredPods {
    pub pods: BTreeMap<(String, u32), BTreeSet<String>>,
    /// Service → host names the proxy routes to it.
    pub hosts: BTreeMap<(String, String), Vec<String>>,
}

impl DesiredPods {
    pub(crate) fn from_fleet(fleet: &Fleet) -> DesiredPods {
        let mut d = DesiredPods::default();
        for (app, a) in &fleet.apps {
            let services: BTreeSet<String> = a.services.keys().cloned().collect();
            for i in 0..a.instances {
                d.pods.insert((app.clone(), i), services.clone());
            }
            for (name, s) in &a.services {
                if !s.hosts.is_empty() {
                    d.hosts.insert((app.clone(), name.clone()), s.hosts.clone());
                }
            }
        }
        d
    }
}

/// What a dashboard elsewhere reads through the API (`GET /v1/dashboard`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dashboard {
    pub fleet: String,
    pub desired: DesiredPods,
    pub snapshot: Snapshot,
}

/// [`DesiredPods`] in JSON, whose keys are strings only.
#[derive(Serialize, Deserialize)]
struct DesiredList {
    pods: Vec<(String, u32, BTreeSet<String>)>,
    hosts: Vec<(String, String, Vec<String>)>,
}

impl From<DesiredPods> for DesiredList {
    fn from(d: DesiredPods) -> DesiredList {
        DesiredList {
            pods: d.pods.into_iter().map(|((a, i), s)| (a, i, s)).collect(),
            hosts: d.hosts.into_iter().map(|((a, s), h)| (a, s, h)).collect(),
        }
    }
}

impl From<DesiredList> for DesiredPods {
    fn from(l: DesiredList) -> DesiredPods {
        DesiredPods {
            pods: l.pods.into_iter().map(|(a, i, s)| ((a, i), s)).collect(),
            hosts: l.hosts.into_iter().map(|(a, s, h)| ((a, s), h)).collect(),
        }
    }
}

/// The header's figures.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Counts {
    pub nodes_ready: usize,
    pub nodes_total: usize,
    /// Ready nodes by lifecycle (spot, on-demand, static).
    pub ready_by_lifecycle: BTreeMap<&'static str, usize>,
    pub pods_running: usize,
    pub pods_desired: usize,
    /// Desired pods with no placement.
    pub unplaced: usize,
}

impl Counts {
    pub fn of(snap: &Snapshot, desired: &DesiredPods) -> Counts {
        let gone = snap.gone();
        let mut c = Counts {
            // Nodes discovery no longer finds are history, not the fleet.
            nodes_total: snap.nodes.len() - gone.len(),
            pods_desired: desired.pods.len(),
            ..Counts::default()
        };
        let ready_nodes = || snap.nodes.iter().filter(|n| n.state == NodeState::Ready);
        for n in ready_nodes() {
            c.nodes_ready += 1;
            *c.ready_by_lifecycle
                .entry(n.lifecycle.as_str())
                .or_default() += 1;
        }
        let ready: BTreeSet<&str> = ready_nodes().map(|n| n.id.as_str()).collect();
        // A pod runs when each of its services has a running container on
        // a ready node.
        c.pods_running = desired
            .pods
            .iter()
            .filter(|((app, instance), services)| {
                services.iter().all(|s| {
                    snap.containers.iter().any(|k| {
                        k.app == *app
                            && k.instance == *instance
                            && k.service == *s
                            && k.state == "running"
                            && ready.contains(k.node_id.as_str())
                    })
                })
            })
            .count();
        c.unplaced = desired
            .pods
            .keys()
            .filter(|(app, instance)| {
                !snap
                    .placements
                    .iter()
                    .any(|p| p.app == *app && p.instance == *instance)
            })
            .count();
        c
    }
}

#[cfg(test)]
pub mod fixtures {
    //! A small fleet for the dashboard's tests.
    use super::*;
    use crate::cloud::Lifecycle;
    use crate::store::{Level, RequestKind, RequestState};

    pub(crate) const NOW: i64 = 1_000_000_000;

    pub fn node(id: &str, name: &str, state: NodeState, lifecycle: Lifecycle) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            name: name.into(),
            address: format!("172.31.250.{}", 10 + name.len()),
            provider: crate::config::Provider::Ec2,
            zone: Some("eu-north-1a".into()),
            instance_type: Some("t3.small".into()),
            lifecycle,
            state,
            condition: (state != NodeState::Ready).then(|| "unreachable".into()),
            condition_detail: None,
            docker_version: Some("27.1".into()),
            memory_total: Some(2 << 30),
            memory_free: Some(1 << 30),
            cpus: Some(2000),
            disk_free: None,
            first_seen: NOW - 3_600_000,
            last_seen: NOW - 4_000,
            last_probe: Some(NOW - 4_000),
        }
    }

    pub fn container(
        node: &str,
        app: &str,
        service: &str,
        state: &str,
        health: Option<&str>,
    ) -> ContainerRecord {
        ContainerRecord {
            node_id: node.into(),
            name: format!("prism-{app}-{service}-0"),
            app: app.into(),
            service: service.into(),
            instance: 0,
            image: format!("registry/{app}:1"),
            state: state.into(),
            health: health.map(Into::into),
            restarts: 0,
            ports: if service == "web" {
                "8080->31000".into()
            } else {
                String::new()
            },
            started_at: Some(NOW - 600_000),
            spec_hash: None,
            observed_at: NOW - 4_000,
        }
    }

    pub(crate) fn snapshot() -> Snapshot {
        Snapshot {
            nodes: vec![
                node("i-0aaa", "node1", NodeState::Ready, Lifecycle::Spot),
                node("i-0bbb", "node2", NodeState::Lost, Lifecycle::Spot),
                node("i-0ccc", "node3", NodeState::Ready, Lifecycle::OnDemand),
            ],
            containers: vec![
                container("i-0aaa", "blog", "web", "running", Some("healthy")),
                container("i-0aaa", "blog", "queue", "running", None),
                container("i-0ccc", "shop", "web", "running", Some("unhealthy")),
                container("i-0ccc", "wiki", "web", "exited", Some("starting")),
            ],
            placements: vec![
                Placement {
                    app: "blog".into(),
                    instance: 0,
                    node_id: "i-0aaa".into(),
                    placed_at: NOW - 600_000,
                },
                Placement {
                    app: "shop".into(),
                    instance: 0,
                    node_id: "i-0ccc".into(),
                    placed_at: NOW - 600_000,
                },
            ],
            events: vec![
                Event {
                    id: 2,
                    at: NOW - 5_000,
                    level: Level::Warn,
                    kind: "node.lost".into(),
                    node_id: Some("i-0bbb".into()),
                    app: None,
                    message: "node2 is lost: unreachable".into(),
                },
                Event {
                    id: 1,
                    at: NOW - 60_000,
                    level: Level::Info,
                    kind: "placement".into(),
                    node_id: None,
                    app: Some("blog".into()),
                    message: "blog/0 placed on i-0aaa".into(),
                },
            ],
            lock: None,
            requests: vec![Request {
                id: 7,
                at: NOW - 2_000,
                kind: RequestKind::Reconcile,
                node_id: None,
                container: None,
                by: "dashboard".into(),
                state: RequestState::Done,
                done_at: Some(NOW - 1_000),
                result: Some("reconcile started".into()),
            }],
            health: Vec::new(),
            traffic: None,
            plan: None,
        }
    }

    /// A pass that placed blog/0, replaced shop's web and could not place
    /// wiki/0.
    pub fn published_plan() -> PublishedPlan {
        use crate::store::{NodeActions, PlanLines, Unplaceable};
        PublishedPlan {
            at: NOW - 12_000,
            took_ms: 840,
            applied: 3,
            failed: 0,
            error: None,
            volumes: crate::store::VolumeLines {
                ebs_unlisted: false,
                volumes: vec![
                    crate::store::VolumeLine {
                        app: "blog".into(),
                        instance: 0,
                        volume: "storage".into(),
                        kind: crate::store::VolumeKind::Durable,
                        id: "vol-0aaa".into(),
                        size_gib: Some(10),
                        zone: Some("eu-north-1a".into()),
                        node: Some("i-0aaa".into()),
                        state: "in-use, attached".into(),
                        wanted: true,
                        last_snapshot: Some(crate::store::SnapshotLine {
                            id: "snap-0aaa".into(),
                            state: "completed".into(),
                            at: Some(NOW - 3 * 3_600_000),
                        }),
                    },
                    crate::store::VolumeLine {
                        app: "wiki".into(),
                        instance: 1,
                        volume: "pages".into(),
                        kind: crate::store::VolumeKind::Durable,
                        id: "vol-0bbb".into(),
                        size_gib: Some(5),
                        zone: Some("eu-north-1b".into()),
                        node: None,
                        state: "available".into(),
                        wanted: false,
                        last_snapshot: None,
                    },
                ],
            },
            plan: PlanLines {
                nodes: vec![
                    NodeActions {
                        id: "i-0aaa".into(),
                        name: "node1".into(),
                        actions: vec![
                            "+ create network prism-blog-0".into(),
                            "+ create blog/0 web (new)".into(),
                        ],
                    },
                    NodeActions {
                        id: "i-0ccc".into(),
                        name: "node3".into(),
                        actions: vec!["~ replace shop/0 web (spec changed)".into()],
                    },
                ],
                placements: vec!["+ place blog/0 on node i-0aaa".into()],
                unplaceable: vec![Unplaceable {
                    app: "wiki".into(),
                    instance: 0,
                    line: "! cannot place: wiki/0 needs 4G of memory; the largest free space is 1G, on node i-0aaa".into(),
                }],
                waiting: vec!["shop/0 web: old container kept until the new one is ready".into()],
            },
        }
    }

    pub(crate) fn desired() -> DesiredPods {
        let mut d = DesiredPods::default();
        let web: BTreeSet<String> = ["web".to_string()].into();
        d.pods.insert(
            ("blog".into(), 0),
            ["web".to_string(), "queue".to_string()].into(),
        );
        d.pods.insert(("shop".into(), 0), web.clone());
        d.pods.insert(("wiki".into(), 0), web);
        d.hosts.insert(
            ("blog".into(), "web".into()),
            vec!["blog.example.com".into()],
        );
        d
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn counts_for_the_header() {
        let c = Counts::of(&snapshot(), &desired());
        assert_eq!((c.nodes_ready, c.nodes_total), (2, 3));
        assert_eq!(c.ready_by_lifecycle.get("spot"), Some(&1));
        assert_eq!(c.ready_by_lifecycle.get("on-demand"), Some(&1));
        // blog runs both services; shop's web runs (unhealthy still runs);
        // wiki exited and was never placed.
        assert_eq!((c.pods_running, c.pods_desired), (2, 3));
        assert_eq!(c.unplaced, 1);
    }

    #[test]
    fn a_node_recorded_gone_is_history() {
        let mut snap = snapshot();
        assert!(snap.gone().is_empty());
        snap.nodes[0].state = NodeState::Gone;
        assert_eq!(snap.gone().into_iter().collect::<Vec<_>>(), ["i-0aaa"]);
        let c = Counts::of(&snap, &desired());
        // node1 (gone) held blog: neither counted nor running.
        assert_eq!((c.nodes_ready, c.nodes_total), (1, 2));
        assert_eq!(c.pods_running, 1);
    }

    #[test]
    fn desired_pods_from_fleet_toml() {
        let fleet: Fleet = toml::from_str(
            r#"
            [fleet]
            name = "t"
            [discovery]
            provider = "static"
            [apps.blog]
            instances = 2
            [apps.blog.services.web]
            image = "blog:1"
            port = 8080
            hosts = ["blog.example.com"]
            [apps.blog.services.queue]
            image = "blog:1"
            "#,
        )
        .expect("fleet");
        let d = DesiredPods::from_fleet(&fleet);
        assert_eq!(d.pods.len(), 2);
        assert_eq!(d.pods[&("blog".to_string(), 1)].len(), 2);
        assert_eq!(
            d.hosts[&("blog".to_string(), "web".to_string())],
            ["blog.example.com"]
        );
        // What the API sends a dashboard elsewhere reads back the same.
        let mut snapshot = super::fixtures::snapshot();
        snapshot.plan = Some(super::fixtures::published_plan());
        snapshot.traffic = Some(ProxyTraffic {
            at_ms: 5,
            requests: 9,
            server_errors: 1,
        });
        let doc = Dashboard {
            fleet: "t".into(),
            desired: d.clone(),
            snapshot: snapshot.clone(),
        };
        let back: Dashboard =
            serde_json::from_str(&serde_json::to_string(&doc).expect("JSON")).expect("read back");
        assert_eq!((back.desired, back.snapshot), (d, snapshot));
    }
}
