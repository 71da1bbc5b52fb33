//! The history of fleet.toml edits Prism made (deploy, scale, rollback):
//! who, when, what, and the file before and after, so that a rollback can
//! put an app back as it was.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// One edit of fleet.toml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub id: i64,
    /// Unix ms.
    pub at: i64,
    pub app: String,
    /// `user@host` (or a token's name, through the API).
    pub who: String,
    /// What changed, in words: `web=registry/blog:1.5`, `instances=3`.
    pub change: String,
    #[serde(skip)]
    pub before: String,
    #[serde(skip)]
    pub after: String,
}

const COLUMNS: &str = "id, at, app, who, change, before, after";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Change> {
    Ok(Change {
        id: r.get(0)?,
        at: r.get(1)?,
        app: r.get(2)?,
        who: r.get(3)?,
        change: r.get(4)?,
        before: r.get(5)?,
        after: r.get(6)?,
    })
}

impl Store {
    /// Records an edit; its id.
    pub fn record_change(
        &self,
        at: i64,
        app: &str,
        who: &str,
        change: &str,
        before: &str,
        after: &str,
    ) -> Result<i64, StoreError> {
        self.conn
            .execute(
                "INSERT INTO history (at, app, who, change, before, after) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![at, app, who, change, before, after],
            )
            .map_err(|e| self.sql(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    /// The edits, newest first; of `app` only when given.
    pub fn history(&self, app: Option<&str>, limit: u32) -> Result<Vec<Change>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM history WHERE ?1 IS NULL OR app = ?1 ORDER BY id DESC LIMIT ?2"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![app, limit], row)
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// The newest edit of `app`.
    pub fn last_change(&self, app: &str) -> Result<Option<Change>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM history WHERE app = ?1 ORDER BY id DESC LIMIT 1");
        self.conn
            .query_row(&sql, [app], row)
            .optional()
            .map_err(|e| self.sql(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_are_listed_newest_first_and_by_app() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("s.db")).expect("open");
        let a = store
            .record_change(1, "blog", "ops@box", "web=b:2", "v1", "v2")
            .expect("record");
        store
            .record_change(2, "shop", "ops@box", "instances=3", "v2", "v3")
            .expect("record");
        let c = store
            .record_change(3, "blog", "ci@runner", "web=b:3", "v3", "v4")
            .expect("record");
        let all = store.history(None, 10).expect("history");
        assert_eq!(all.iter().map(|c| c.at).collect::<Vec<_>>(), [3, 2, 1]);
        let blog = store.history(Some("blog"), 10).expect("history");
        assert_eq!(blog.iter().map(|c| c.id).collect::<Vec<_>>(), [c, a]);
        let last = store.last_change("blog").expect("last").expect("one");
        assert_eq!(
            (last.who.as_str(), last.before.as_str()),
            ("ci@runner", "v3")
        );
        assert_eq!(store.last_change("nope").expect("none"), None);
    }
}
