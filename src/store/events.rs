//! The event log: what Prism did and saw, newest last in the table.

use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Level> {
        [Level::Info, Level::Warn, Level::Error]
            .into_iter()
            .find(|l| l.as_str() == s)
    }
}

/// An event to record; the store stamps its id and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub level: Level,
    /// A short machine-readable kind: `node.lost`, `container.started`, ...
    pub kind: String,
    pub node_id: Option<String>,
    pub app: Option<String>,
    pub message: String,
}

impl NewEvent {
    pub fn new(level: Level, kind: &str, message: impl Into<String>) -> Self {
        NewEvent {
            level,
            kind: kind.to_owned(),
            node_id: None,
            app: None,
            message: message.into(),
        }
    }

    pub fn info(kind: &str, message: impl Into<String>) -> Self {
        Self::new(Level::Info, kind, message)
    }

    pub fn node(mut self, id: impl Into<String>) -> Self {
        self.node_id = Some(id.into());
        self
    }

    pub fn app(mut self, app: impl Into<String>) -> Self {
        self.app = Some(app.into());
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub at: i64,
    pub level: Level,
    pub kind: String,
    pub node_id: Option<String>,
    pub app: Option<String>,
    pub message: String,
}

impl Store {
    pub(crate) fn record_event(&self, e: &NewEvent) -> Result<i64, StoreError> {
        self.conn
            .execute(
                "INSERT INTO events (at, level, kind, node_id, app, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![now_ms(), e.level, e.kind, e.node_id, e.app, e.message],
            )
            .map_err(|e| self.sql(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// The newest `limit` events, newest first.
    pub fn events(&self, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.events_after(0, limit)
    }

    /// Events with an id above `after` (for following the log), newest first.
    pub(crate) fn events_after(&self, after: i64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.events_where(after, limit, "DESC")
    }

    /// The first `limit` events with an id above `after`, oldest first: a
    /// stream that resumes there misses none.
    pub(crate) fn events_since(&self, after: i64, limit: usize) -> Result<Vec<Event>, StoreError> {
        self.events_where(after, limit, "ASC")
    }

    fn events_where(
        &self,
        after: i64,
        limit: usize,
        order: &str,
    ) -> Result<Vec<Event>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT id, at, level, kind, node_id, app, message FROM events
                 WHERE id > ?1 ORDER BY id {order} LIMIT ?2"
            ))
            .map_err(|e| self.sql(e))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt
            .query_map(params![after, limit], |r| {
                Ok(Event {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    level: r.get(2)?,
                    kind: r.get(3)?,
                    node_id: r.get(4)?,
                    app: r.get(5)?,
                    message: r.get(6)?,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_first_and_follow_from_an_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("s.db")).expect("open");
        let first = store.record_event(&NewEvent::info("a", "one")).expect("1");
        store
            .record_event(
                &NewEvent::new(Level::Warn, "node.lost", "two")
                    .node("i-1")
                    .app("blog"),
            )
            .expect("2");
        store
            .record_event(&NewEvent::info("c", "three"))
            .expect("3");
        let all = store.events(10).expect("read");
        let msgs: Vec<_> = all.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(msgs, ["three", "two", "one"]);
        assert_eq!(all[1].level, Level::Warn);
        assert_eq!(all[1].node_id.as_deref(), Some("i-1"));
        assert_eq!(all[1].app.as_deref(), Some("blog"));
        assert_eq!(store.events(2).expect("limited").len(), 2);
        let newer = store.events_after(first, 10).expect("after");
        assert_eq!(newer.len(), 2);
        // Resuming from an id takes the oldest first, so a limit drops
        // the newest (read next time), never one in between.
        let since = store.events_since(first, 1).expect("since");
        assert_eq!(
            since.iter().map(|e| e.message.as_str()).collect::<Vec<_>>(),
            ["two"]
        );
    }
}
