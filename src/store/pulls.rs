//! Images a node failed to pull: a preparing node waits for each fleet
//! image to be present or to have failed, so that a bad image (wrong
//! credentials, missing tag) does not hold it in preparing for ever.

use std::collections::BTreeSet;

use rusqlite::params;

use super::{Store, StoreError};

impl Store {
    /// Records (or renews) a failed pull of `image` on `node_id`.
    pub(crate) fn record_pull_failure(
        &self,
        node_id: &str,
        image: &str,
        error: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO pull_failures (node_id, image, at, error) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (node_id, image) DO UPDATE SET at = excluded.at, error = excluded.error",
                params![node_id, image, at, error],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// The images whose pull failed on `node_id`.
    pub fn pull_failures(&self, node_id: &str) -> Result<BTreeSet<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT image FROM pull_failures WHERE node_id = ?1")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([node_id], |r| r.get(0))
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_kept_per_node_and_image() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("s.db")).expect("open");
        store
            .record_pull_failure("i-1", "reg/a:1", "manifest unknown", 1)
            .expect("record");
        store
            .record_pull_failure("i-1", "reg/a:1", "manifest unknown", 2)
            .expect("again");
        store
            .record_pull_failure("i-1", "reg/b:1", "denied", 3)
            .expect("other image");
        store
            .record_pull_failure("i-2", "reg/c:1", "denied", 3)
            .expect("other node");
        let got: Vec<String> = store
            .pull_failures("i-1")
            .expect("read")
            .into_iter()
            .collect();
        assert_eq!(got, ["reg/a:1", "reg/b:1"]);
        assert!(store.pull_failures("i-3").expect("read").is_empty());
    }
}
