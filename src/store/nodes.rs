//! Nodes, the containers last observed on them, and placements.

use rusqlite::{OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};
use crate::cloud::Lifecycle;
use crate::config::Provider;
use crate::reconcile::NodeState;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub name: String,
    pub address: String,
    pub provider: Provider,
    pub zone: Option<String>,
    pub instance_type: Option<String>,
    pub lifecycle: Lifecycle,
    pub state: NodeState,
    /// A short name (`unreachable`, `docker-down`, ...) when not ready.
    pub condition: Option<String>,
    /// The condition in words, as the node or SSH reported it.
    pub condition_detail: Option<String>,
    pub docker_version: Option<String>,
    pub memory_total: Option<i64>,
    pub memory_free: Option<i64>,
    pub cpus: Option<i64>,
    /// Bytes free where Docker keeps its data.
    pub disk_free: Option<i64>,
    pub first_seen: i64,
    pub last_seen: i64,
    pub last_probe: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub node_id: String,
    pub name: String,
    pub app: String,
    pub service: String,
    pub instance: u32,
    pub image: String,
    pub state: String,
    pub health: Option<String>,
    pub restarts: u32,
    pub ports: String,
    pub started_at: Option<i64>,
    pub spec_hash: Option<String>,
    pub observed_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub app: String,
    pub instance: u32,
    pub node_id: String,
    pub placed_at: i64,
}

const NODE_COLUMNS: &str = "id, name, address, provider, zone, instance_type, lifecycle, state, condition, \
     docker_version, memory_total, memory_free, cpus, first_seen, last_seen, last_probe, \
     condition_detail, disk_free";

fn node_from_row(r: &Row<'_>) -> rusqlite::Result<NodeRecord> {
    Ok(NodeRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        address: r.get(2)?,
        provider: r.get(3)?,
        zone: r.get(4)?,
        instance_type: r.get(5)?,
        lifecycle: r.get(6)?,
        state: r.get(7)?,
        condition: r.get(8)?,
        docker_version: r.get(9)?,
        memory_total: r.get(10)?,
        memory_free: r.get(11)?,
        cpus: r.get(12)?,
        first_seen: r.get(13)?,
        last_seen: r.get(14)?,
        last_probe: r.get(15)?,
        condition_detail: r.get(16)?,
        disk_free: r.get(17)?,
    })
}

impl Store {
    /// Inserts or updates a node; `first_seen` of a known node is kept.
    pub fn upsert_node(&self, n: &NodeRecord) -> Result<(), StoreError> {
        self.conn
            .execute(
                &format!(
                    "INSERT INTO nodes ({NODE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
                     ON CONFLICT (id) DO UPDATE SET name = excluded.name, address = excluded.address,
                       provider = excluded.provider, zone = excluded.zone, instance_type = excluded.instance_type,
                       lifecycle = excluded.lifecycle, state = excluded.state, condition = excluded.condition,
                       docker_version = excluded.docker_version, memory_total = excluded.memory_total,
                       memory_free = excluded.memory_free, cpus = excluded.cpus, last_seen = excluded.last_seen,
                       last_probe = excluded.last_probe, condition_detail = excluded.condition_detail,
                       disk_free = excluded.disk_free"
                ),
                params![
                    n.id, n.name, n.address, n.provider, n.zone, n.instance_type, n.lifecycle, n.state,
                    n.condition, n.docker_version, n.memory_total, n.memory_free, n.cpus, n.first_seen,
                    n.last_seen, n.last_probe, n.condition_detail, n.disk_free
                ],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    pub fn node(&self, id: &str) -> Result<Option<NodeRecord>, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = ?1"),
                [id],
                node_from_row,
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// Every node, by name.
    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {NODE_COLUMNS} FROM nodes ORDER BY name, id"
            ))
            .map_err(|e| self.sql(e))?;
        let rows = stmt.query_map([], node_from_row).map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// Forgets the nodes that went before `before` (unix ms): their rows,
    /// containers and failed pulls. A gone node's `last_probe` is when it
    /// went (see the operator's `record_gone`); events keep its history.
    /// Returns how many were forgotten.
    pub(crate) fn forget_gone(&mut self, before: i64) -> Result<usize, StoreError> {
        let file = self.file.clone();
        let err = |e| super::classify(&file, e);
        let tx = self.conn.transaction().map_err(err)?;
        let ids: Vec<String> = {
            let mut stmt = tx
                .prepare("SELECT id FROM nodes WHERE state = ?1 AND COALESCE(last_probe, last_seen) < ?2")
                .map_err(err)?;
            let rows = stmt
                .query_map(params![NodeState::Gone, before], |r| r.get(0))
                .map_err(err)?;
            rows.collect::<Result<_, _>>().map_err(err)?
        };
        for id in &ids {
            for sql in [
                "DELETE FROM nodes WHERE id = ?1",
                "DELETE FROM containers WHERE node_id = ?1",
                "DELETE FROM pull_failures WHERE node_id = ?1",
            ] {
                tx.execute(sql, [id]).map_err(err)?;
            }
        }
        tx.commit().map_err(err)?;
        Ok(ids.len())
    }

    /// Replaces what is known of one node's containers with a new observation.
    pub fn replace_containers(
        &mut self,
        node_id: &str,
        containers: &[ContainerRecord],
    ) -> Result<(), StoreError> {
        let file = self.file.clone();
        let err = |e| super::classify(&file, e);
        let tx = self.conn.transaction().map_err(err)?;
        tx.execute("DELETE FROM containers WHERE node_id = ?1", [node_id])
            .map_err(err)?;
        {
            let mut stmt = tx
                .prepare(
                    "INSERT INTO containers (node_id, name, app, service, instance, image, state, health,
                       restarts, ports, started_at, spec_hash, observed_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                )
                .map_err(err)?;
            for c in containers {
                stmt.execute(params![
                    node_id,
                    c.name,
                    c.app,
                    c.service,
                    c.instance,
                    c.image,
                    c.state,
                    c.health,
                    c.restarts,
                    c.ports,
                    c.started_at,
                    c.spec_hash,
                    c.observed_at
                ])
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// Every container last observed, by app, service and instance.
    pub fn containers(&self) -> Result<Vec<ContainerRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT node_id, name, app, service, instance, image, state, health, restarts, ports,
                   started_at, spec_hash, observed_at
                 FROM containers ORDER BY app, instance, service, node_id",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(ContainerRecord {
                    node_id: r.get(0)?,
                    name: r.get(1)?,
                    app: r.get(2)?,
                    service: r.get(3)?,
                    instance: r.get(4)?,
                    image: r.get(5)?,
                    state: r.get(6)?,
                    health: r.get(7)?,
                    restarts: r.get(8)?,
                    ports: r.get(9)?,
                    started_at: r.get(10)?,
                    spec_hash: r.get(11)?,
                    observed_at: r.get(12)?,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    pub fn set_placement(&self, p: &Placement) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO placements (app, instance, node_id, placed_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (app, instance) DO UPDATE SET node_id = excluded.node_id, placed_at = excluded.placed_at",
                params![p.app, p.instance, p.node_id, p.placed_at],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    pub(crate) fn remove_placement(&self, app: &str, instance: u32) -> Result<(), StoreError> {
        self.conn
            .execute(
                "DELETE FROM placements WHERE app = ?1 AND instance = ?2",
                params![app, instance],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    pub fn placements(&self) -> Result<Vec<Placement>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT app, instance, node_id, placed_at FROM placements ORDER BY app, instance",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Placement {
                    app: r.get(0)?,
                    instance: r.get(1)?,
                    node_id: r.get(2)?,
                    placed_at: r.get(3)?,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn node(id: &str, name: &str) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            name: name.into(),
            address: "172.31.250.10".into(),
            provider: Provider::Ec2,
            zone: Some("eu-north-1a".into()),
            instance_type: Some("t3.small".into()),
            lifecycle: Lifecycle::Spot,
            state: NodeState::Ready,
            condition: None,
            condition_detail: None,
            docker_version: Some("20.10.24".into()),
            memory_total: Some(2 << 30),
            memory_free: Some(1 << 30),
            cpus: Some(2000),
            disk_free: Some(10 << 30),
            first_seen: 1000,
            last_seen: 2000,
            last_probe: Some(2000),
        }
    }

    pub fn container(node_id: &str, app: &str, service: &str) -> ContainerRecord {
        ContainerRecord {
            node_id: node_id.into(),
            name: format!("prism-{app}-{service}-0"),
            app: app.into(),
            service: service.into(),
            instance: 0,
            image: "testapp:1".into(),
            state: "running".into(),
            health: Some("healthy".into()),
            restarts: 0,
            ports: "8080/tcp".into(),
            started_at: Some(1500),
            spec_hash: Some("abc".into()),
            observed_at: 2000,
        }
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("s.db")).expect("open");
        (dir, store)
    }

    #[test]
    fn upsert_keeps_first_seen_and_updates_the_rest() {
        let (_d, store) = store();
        store.upsert_node(&node("i-1", "node1")).expect("insert");
        let mut later = node("i-1", "node1");
        later.first_seen = 9999;
        later.state = NodeState::Lost;
        later.condition = Some("unreachable".into());
        store.upsert_node(&later).expect("update");
        let got = store.node("i-1").expect("read").expect("present");
        assert_eq!(got.first_seen, 1000);
        assert_eq!(got.state, NodeState::Lost);
        assert_eq!(got.condition.as_deref(), Some("unreachable"));
        assert_eq!(store.nodes().expect("all").len(), 1);
        assert!(store.node("i-2").expect("read").is_none());
    }

    #[test]
    fn gone_nodes_are_forgotten_once_they_went_long_enough_ago() {
        let (_d, mut store) = store();
        let at = |id: &str, state: NodeState, went: i64| {
            let mut n = node(id, id);
            n.state = state;
            n.last_probe = Some(went);
            n
        };
        store
            .upsert_node(&at("i-old", NodeState::Gone, 1_000))
            .expect("old");
        store
            .upsert_node(&at("i-new", NodeState::Gone, 5_000))
            .expect("new");
        store
            .upsert_node(&at("i-lost", NodeState::Lost, 1_000))
            .expect("lost");
        store
            .replace_containers("i-old", &[container("i-old", "blog", "web")])
            .expect("containers");
        store
            .record_pull_failure("i-old", "reg/a:1", "no such tag", 900)
            .expect("failure");
        assert_eq!(store.forget_gone(3_000).expect("forget"), 1);
        let ids: Vec<String> = store
            .nodes()
            .expect("all")
            .into_iter()
            .map(|n| n.id)
            .collect();
        assert_eq!(ids, ["i-lost", "i-new"]);
        assert!(store.containers().expect("containers").is_empty());
        assert!(store.pull_failures("i-old").expect("failures").is_empty());
        // Later, the other one goes too; nothing else is gone.
        assert_eq!(store.forget_gone(6_000).expect("forget"), 1);
        assert_eq!(store.forget_gone(6_000).expect("again"), 0);
        assert_eq!(store.nodes().expect("all").len(), 1);
    }

    #[test]
    fn containers_are_replaced_per_node() {
        let (_d, mut store) = store();
        store
            .replace_containers(
                "i-1",
                &[
                    container("i-1", "blog", "web"),
                    container("i-1", "blog", "queue"),
                ],
            )
            .expect("first");
        store
            .replace_containers("i-2", &[container("i-2", "shop", "web")])
            .expect("other node");
        store
            .replace_containers("i-1", &[container("i-1", "blog", "web")])
            .expect("second");
        let all = store.containers().expect("read");
        let names: Vec<_> = all
            .iter()
            .map(|c| (c.node_id.as_str(), c.service.as_str()))
            .collect();
        assert_eq!(names, [("i-1", "web"), ("i-2", "web")]);
    }

    #[test]
    fn placements_move_and_go() {
        let (_d, store) = store();
        let p = |node: &str| Placement {
            app: "blog".into(),
            instance: 0,
            node_id: node.into(),
            placed_at: 1,
        };
        store.set_placement(&p("i-1")).expect("place");
        store.set_placement(&p("i-2")).expect("move");
        assert_eq!(store.placements().expect("read"), [p("i-2")]);
        store.remove_placement("blog", 0).expect("remove");
        assert!(store.placements().expect("read").is_empty());
    }
}
