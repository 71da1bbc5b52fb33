//! The mesh's members: each node's /24 and public key, kept so that a node
//! that does not answer for a while keeps its place and its peers keep it.

use std::collections::BTreeMap;

use rusqlite::params;

use super::{Store, StoreError, classify};
use crate::reconcile::Member;

impl Store {
    pub fn mesh_members(&self) -> Result<BTreeMap<String, Member>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT node_id, slot, public_key FROM mesh_members")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Member {
                        slot: r.get(1)?,
                        public_key: r.get(2)?,
                    },
                ))
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// Replaces the members with `members`, in one transaction.
    pub(crate) fn set_mesh_members(
        &mut self,
        members: &BTreeMap<String, Member>,
    ) -> Result<(), StoreError> {
        let file = self.file.clone();
        let err = |e| classify(&file, e);
        let tx = self.conn.transaction().map_err(err)?;
        tx.execute("DELETE FROM mesh_members", []).map_err(err)?;
        for (node, m) in members {
            tx.execute(
                "INSERT INTO mesh_members (node_id, slot, public_key) VALUES (?1, ?2, ?3)",
                params![node, m.slot, m.public_key],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_kept_whole_and_replaced_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("s.db")).expect("open");
        let a = BTreeMap::from([
            (
                "i-1".to_owned(),
                Member {
                    slot: 1,
                    public_key: Some("K1".into()),
                },
            ),
            (
                "i-2".to_owned(),
                Member {
                    slot: 2,
                    public_key: None,
                },
            ),
        ]);
        store.set_mesh_members(&a).expect("set");
        assert_eq!(store.mesh_members().expect("read"), a);
        let b = BTreeMap::from([(
            "i-2".to_owned(),
            Member {
                slot: 2,
                public_key: Some("K2".into()),
            },
        )]);
        store.set_mesh_members(&b).expect("set");
        assert_eq!(store.mesh_members().expect("read"), b);
    }
}
