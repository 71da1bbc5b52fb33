//! Host keys pinned per instance id: the first key seen is trusted, a
//! different one later is refused by the SSH layer.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Store, StoreError, now_ms};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PinnedKey {
    pub instance_id: String,
    pub algorithm: String,
    pub public_key: String,
    pub fingerprint: String,
    pub first_seen: i64,
    pub last_seen: i64,
}

impl Store {
    pub fn pinned_key(&self, instance_id: &str) -> Result<Option<PinnedKey>, StoreError> {
        self.conn
            .query_row(
                "SELECT instance_id, algorithm, public_key, fingerprint, first_seen, last_seen
                 FROM host_keys WHERE instance_id = ?1",
                [instance_id],
                |r| {
                    Ok(PinnedKey {
                        instance_id: r.get(0)?,
                        algorithm: r.get(1)?,
                        public_key: r.get(2)?,
                        fingerprint: r.get(3)?,
                        first_seen: r.get(4)?,
                        last_seen: r.get(5)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// Pins a key unless one is pinned already; returns the key now pinned,
    /// which the caller compares with the one it was offered.
    pub fn pin_key(
        &self,
        instance_id: &str,
        algorithm: &str,
        public_key: &str,
        fingerprint: &str,
    ) -> Result<PinnedKey, StoreError> {
        let now = now_ms();
        self.conn
            .execute(
                "INSERT INTO host_keys (instance_id, algorithm, public_key, fingerprint, first_seen, last_seen)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)
                 ON CONFLICT (instance_id) DO UPDATE SET last_seen = excluded.last_seen
                 WHERE host_keys.public_key = excluded.public_key",
                params![instance_id, algorithm, public_key, fingerprint, now],
            )
            .map_err(|e| self.sql(e))?;
        self.pinned_key(instance_id)?
            .ok_or_else(|| self.sql(rusqlite::Error::QueryReturnedNoRows))
    }

    /// Forgets a pin (an operator who rebuilt a machine on purpose).
    pub fn unpin_key(&self, instance_id: &str) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute(
                "DELETE FROM host_keys WHERE instance_id = ?1",
                [instance_id],
            )
            .map_err(|e| self.sql(e))?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_key_wins_and_a_new_one_does_not_replace_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("s.db")).expect("open");
        assert!(store.pinned_key("i-1").expect("read").is_none());
        let first = store
            .pin_key("i-1", "ssh-ed25519", "AAAAfirst", "SHA256:first")
            .expect("pin");
        assert_eq!(first.public_key, "AAAAfirst");
        let again = store
            .pin_key("i-1", "ssh-ed25519", "AAAAother", "SHA256:other")
            .expect("pin again");
        assert_eq!(
            again.public_key, "AAAAfirst",
            "a different key must not replace the pin"
        );
        let other = store
            .pin_key("i-2", "ssh-ed25519", "AAAAother", "SHA256:other")
            .expect("new instance");
        assert_eq!(other.public_key, "AAAAother");
        assert!(store.unpin_key("i-1").expect("unpin"));
        assert!(store.pinned_key("i-1").expect("read").is_none());
    }
}
