//! Requests to the applier from another process: the dashboard attached to
//! a daemon cannot act on the fleet itself (one applier per state file), so
//! it asks here and the daemon's loop takes each request once and records
//! what came of it.

use rusqlite::{Row, params};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestKind {
    /// A pass now instead of at the next tick.
    Reconcile,
    /// `docker restart` of one container.
    Restart,
    /// Move a node's pods elsewhere, then leave it empty.
    Drain,
    /// Let the changes the guards hold back go ahead (`prism confirm`).
    Confirm,
    /// Delete one volume fleet.toml no longer asks for (`prism volumes
    /// delete`): its id is in `container` (`vol-…`, or a Docker volume's
    /// name with its node in `node_id`).
    #[serde(rename = "delete_volume")]
    DeleteVolume,
}

impl RequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::Reconcile => "reconcile",
            RequestKind::Restart => "restart",
            RequestKind::Drain => "drain",
            RequestKind::Confirm => "confirm",
            RequestKind::DeleteVolume => "delete_volume",
        }
    }

    pub fn parse(s: &str) -> Option<RequestKind> {
        [
            RequestKind::Reconcile,
            RequestKind::Restart,
            RequestKind::Drain,
            RequestKind::Confirm,
            RequestKind::DeleteVolume,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestState {
    Pending,
    /// Taken by the applier, not finished yet.
    Running,
    Done,
    Failed,
}

impl RequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Running => "running",
            RequestState::Done => "done",
            RequestState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<RequestState> {
        [
            RequestState::Pending,
            RequestState::Running,
            RequestState::Done,
            RequestState::Failed,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewRequest {
    pub kind: RequestKind,
    pub node_id: Option<String>,
    pub container: Option<String>,
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: i64,
    pub at: i64,
    pub kind: RequestKind,
    pub node_id: Option<String>,
    pub container: Option<String>,
    pub by: String,
    pub state: RequestState,
    pub done_at: Option<i64>,
    pub result: Option<String>,
}

const COLUMNS: &str = "id, at, kind, node_id, container, by, state, done_at, result";

/// Rows of a kind this Prism does not know (written by a newer one) are
/// skipped rather than failing the read.
fn from_row(r: &Row<'_>) -> rusqlite::Result<Option<Request>> {
    let kind: String = r.get(2)?;
    let Some(kind) = RequestKind::parse(&kind) else {
        return Ok(None);
    };
    Ok(Some(Request {
        id: r.get(0)?,
        at: r.get(1)?,
        kind,
        node_id: r.get(3)?,
        container: r.get(4)?,
        by: r.get(5)?,
        state: r.get(6)?,
        done_at: r.get(7)?,
        result: r.get(8)?,
    }))
}

impl Store {
    pub(crate) fn add_request(&self, req: &NewRequest) -> Result<i64, StoreError> {
        self.conn
            .execute(
                "INSERT INTO requests (at, kind, node_id, container, by, state) VALUES (?1, ?2, ?3, ?4, ?5, 'pending')",
                params![now_ms(), req.kind, req.node_id, req.container, req.by],
            )
            .map_err(|e| self.sql(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Marks every pending request running and returns them, oldest first:
    /// each is taken once, even with two readers.
    pub(crate) fn take_requests(&self) -> Result<Vec<Request>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "UPDATE requests SET state = 'running' WHERE state = 'pending' RETURNING {COLUMNS}"
            ))
            .map_err(|e| self.sql(e))?;
        let rows = stmt.query_map([], from_row).map_err(|e| self.sql(e))?;
        let mut taken: Vec<Request> = rows
            .filter_map(|r| r.transpose())
            .collect::<Result<_, _>>()
            .map_err(|e| self.sql(e))?;
        taken.sort_by_key(|r| r.id);
        Ok(taken)
    }

    pub(crate) fn finish_request(&self, id: i64, ok: bool, result: &str) -> Result<(), StoreError> {
        let state = if ok {
            RequestState::Done
        } else {
            RequestState::Failed
        };
        self.conn
            .execute(
                "UPDATE requests SET state = ?2, done_at = ?3, result = ?4 WHERE id = ?1",
                params![id, state.as_str(), now_ms(), result],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// The newest `limit` requests, newest first.
    pub fn requests(&self, limit: usize) -> Result<Vec<Request>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM requests ORDER BY id DESC LIMIT ?1"
            ))
            .map_err(|e| self.sql(e))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map([limit], from_row).map_err(|e| self.sql(e))?;
        rows.filter_map(|r| r.transpose())
            .collect::<Result<_, _>>()
            .map_err(|e| self.sql(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restart(by: &str) -> NewRequest {
        NewRequest {
            kind: RequestKind::Restart,
            node_id: Some("i-1".into()),
            container: Some("prism-blog-web-0".into()),
            by: by.into(),
        }
    }

    #[test]
    fn a_request_is_taken_once_then_finished() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("s.db");
        let asker = Store::open(&file).expect("asker");
        let applier = Store::open(&file).expect("applier");
        let first = asker.add_request(&restart("dashboard")).expect("add");
        let second = asker
            .add_request(&NewRequest {
                kind: RequestKind::Reconcile,
                node_id: None,
                container: None,
                by: "dashboard".into(),
            })
            .expect("add");
        let taken = applier.take_requests().expect("take");
        assert_eq!(
            taken.iter().map(|r| (r.id, r.kind)).collect::<Vec<_>>(),
            [
                (first, RequestKind::Restart),
                (second, RequestKind::Reconcile)
            ]
        );
        assert_eq!(taken[0].container.as_deref(), Some("prism-blog-web-0"));
        assert!(taken.iter().all(|r| r.state == RequestState::Running));
        assert!(applier.take_requests().expect("again").is_empty());
        applier
            .finish_request(first, false, "no such container")
            .expect("finish");
        let seen = asker.requests(10).expect("read");
        assert_eq!(seen[1].id, first);
        assert_eq!(seen[1].state, RequestState::Failed);
        assert_eq!(seen[1].result.as_deref(), Some("no such container"));
        assert!(seen[1].done_at.is_some());
        assert_eq!(seen[0].state, RequestState::Running);
    }

    #[test]
    fn unknown_kinds_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("s.db")).expect("open");
        store
            .conn
            .execute(
                "INSERT INTO requests (at, kind, by, state) VALUES (1, 'teleport', 'x', 'pending')",
                [],
            )
            .expect("insert");
        store.add_request(&restart("d")).expect("add");
        let taken = store.take_requests().expect("take");
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[0].kind, RequestKind::Restart);
    }
}
