//! What the applier's last pass planned and how it went, for readers in
//! other processes (the dashboard attached to a daemon). One row, replaced
//! each pass; the applier writes it, readers only read.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// The last pass, in the words `prism plan` uses. Actions are kept as
/// their one-line descriptions: readers show them, and a run spec's
/// environment stays out of the store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPlan {
    /// When the pass ended (unix ms).
    pub at: i64,
    pub took_ms: u64,
    /// Actions applied, and how many of them failed.
    pub applied: usize,
    pub failed: usize,
    /// The pass failed before it could plan: `plan` is empty.
    pub error: Option<String>,
    pub plan: PlanLines,
    /// The fleet's volumes as the pass saw them (`prism volumes`).
    #[serde(default)]
    pub volumes: VolumeLines,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeLines {
    /// EC2 could not list the fleet's EBS volumes: `volumes` holds only
    /// local ones.
    pub ebs_unlisted: bool,
    pub volumes: Vec<VolumeLine>,
}

/// One volume of one pod instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeLine {
    pub app: String,
    pub instance: u32,
    /// Its name in fleet.toml; for an image's own volume,
    /// `SERVICE:/path-slug`.
    pub volume: String,
    pub kind: VolumeKind,
    /// The EBS volume id, or the Docker volume's name on its node.
    pub id: String,
    pub size_gib: Option<u32>,
    pub zone: Option<String>,
    /// The node (instance id) it is attached to, or holds it.
    pub node: Option<String>,
    /// EC2's state and attachment (`in-use, attached`), `present` for a
    /// Docker volume.
    pub state: String,
    /// fleet.toml still asks for it; when not, it is kept until `prism
    /// volumes delete`.
    pub wanted: bool,
    /// The newest snapshot Prism took of it.
    #[serde(default)]
    pub last_snapshot: Option<SnapshotLine>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotLine {
    pub id: String,
    /// `pending`, `completed`, `error`.
    pub state: String,
    /// When it was started (unix ms).
    pub at: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VolumeKind {
    Durable,
    #[default]
    Local,
    /// Made for a path the image declares as `VOLUME`.
    Image,
}

impl VolumeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeKind::Durable => "durable",
            VolumeKind::Local => "local",
            VolumeKind::Image => "image",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanLines {
    /// Nodes with actions, in the order they run there.
    pub nodes: Vec<NodeActions>,
    /// Placement changes: `+ place blog/0 on node i-0abc`.
    pub placements: Vec<String>,
    pub unplaceable: Vec<Unplaceable>,
    /// Old containers kept until their successor is ready.
    pub waiting: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeActions {
    pub id: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// A pod the plan could not place (or move off a draining node).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaceable {
    pub app: String,
    pub instance: u32,
    /// `! cannot place: blog/1 needs 768M …`
    pub line: String,
}

impl Store {
    /// Replaces the published plan with this pass's.
    pub(crate) fn publish_plan(&self, plan: &PublishedPlan) -> Result<(), StoreError> {
        let body = serde_json::to_string(plan)
            .map_err(|e| self.sql(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        self.conn
            .execute(
                "INSERT INTO last_plan (id, at, body) VALUES (1, ?1, ?2)
                 ON CONFLICT (id) DO UPDATE SET at = excluded.at, body = excluded.body",
                params![plan.at, body],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// The last published plan, if an applier has published one.
    pub fn last_plan(&self) -> Result<Option<PublishedPlan>, StoreError> {
        let body: Option<String> = self
            .conn
            .query_row("SELECT body FROM last_plan WHERE id = 1", [], |r| r.get(0))
            .optional()
            .map_err(|e| self.sql(e))?;
        body.map(|b| {
            serde_json::from_str(&b).map_err(|e| {
                self.sql(rusqlite::Error::FromSqlConversionFailure(
                    0,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                ))
            })
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: i64) -> PublishedPlan {
        PublishedPlan {
            at,
            took_ms: 1_250,
            applied: 2,
            failed: 1,
            error: None,
            plan: PlanLines {
                nodes: vec![NodeActions {
                    id: "i-0aaa".into(),
                    name: "node1".into(),
                    actions: vec!["+ create network prism-blog-0".into()],
                }],
                placements: vec!["+ place blog/0 on node i-0aaa".into()],
                unplaceable: vec![Unplaceable {
                    app: "blog".into(),
                    instance: 1,
                    line: "! cannot place: blog/1 needs 768M".into(),
                }],
                waiting: vec!["blog/0 web: old kept until new is ready".into()],
            },
            volumes: VolumeLines {
                ebs_unlisted: false,
                volumes: vec![VolumeLine {
                    app: "db".into(),
                    instance: 0,
                    volume: "pgdata".into(),
                    kind: VolumeKind::Durable,
                    id: "vol-0abc".into(),
                    size_gib: Some(10),
                    zone: Some("eu-north-1a".into()),
                    node: Some("i-0aaa".into()),
                    state: "in-use, attached".into(),
                    wanted: true,
                    last_snapshot: None,
                }],
            },
        }
    }

    #[test]
    fn round_trip_and_one_row_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("s.db");
        let store = Store::open(&file).expect("open");
        assert_eq!(store.last_plan().expect("empty"), None);
        store.publish_plan(&sample(1)).expect("first");
        let second = PublishedPlan {
            error: Some("discovery failed".into()),
            plan: PlanLines::default(),
            ..sample(2)
        };
        store.publish_plan(&second).expect("second");
        // Another connection (the attached reader) sees the latest only.
        let reader = Store::open(&file).expect("reader");
        assert_eq!(reader.last_plan().expect("read"), Some(second));
        let rows: i64 = reader
            .conn
            .query_row("SELECT count(*) FROM last_plan", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, 1);
        store.publish_plan(&sample(3)).expect("third");
        assert_eq!(reader.last_plan().expect("read"), Some(sample(3)));
    }

    #[test]
    fn an_unreadable_body_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("s.db");
        let store = Store::open(&file).expect("open");
        store
            .conn
            .execute(
                "INSERT INTO last_plan (id, at, body) VALUES (1, 5, 'nope')",
                [],
            )
            .expect("insert");
        let err = store.last_plan().expect_err("not JSON");
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );
    }
}
