//! Changes the guards against mass change hold back
//! ([`crate::reconcile::guard`]), kept across processes: a cron `reconcile
//! --once` sees the hold an earlier run began, and its wait counts from
//! then.

use rusqlite::params;

use super::{Store, StoreError};
use crate::reconcile::{Hold, HoldKind};

impl Store {
    pub fn holds(&self) -> Result<Vec<Hold>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT kind, change, summary, first_seen, confirmed FROM holds ORDER BY kind")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                let change: String = r.get(1)?;
                Ok(Hold {
                    kind: r.get(0)?,
                    items: serde_json::from_str(&change).unwrap_or_default(),
                    summary: r.get(2)?,
                    first_seen: r.get(3)?,
                    confirmed: r.get(4)?,
                })
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    pub(crate) fn put_hold(&self, hold: &Hold) -> Result<(), StoreError> {
        let change = serde_json::to_string(&hold.items).unwrap_or_default();
        self.conn
            .execute(
                "INSERT OR REPLACE INTO holds (kind, change, summary, first_seen, confirmed)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    hold.kind,
                    change,
                    hold.summary,
                    hold.first_seen,
                    hold.confirmed
                ],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    pub(crate) fn remove_hold(&self, kind: HoldKind) -> Result<(), StoreError> {
        self.conn
            .execute("DELETE FROM holds WHERE kind = ?1", [kind])
            .map_err(|e| self.sql(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("s.db")).expect("open");
        let hold = Hold {
            kind: HoldKind::InventoryShrank,
            items: vec!["i-2".into(), "i-3".into()],
            summary: "two of three".into(),
            first_seen: 1_000,
            confirmed: false,
        };
        store.put_hold(&hold).expect("put");
        assert_eq!(store.holds().expect("read"), std::slice::from_ref(&hold));
        let confirmed = Hold {
            confirmed: true,
            ..hold
        };
        store.put_hold(&confirmed).expect("replace");
        assert_eq!(store.holds().expect("read"), [confirmed]);
        store
            .remove_hold(HoldKind::InventoryShrank)
            .expect("remove");
        assert!(store.holds().expect("read").is_empty());
    }
}
