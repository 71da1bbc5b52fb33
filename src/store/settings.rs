//! Values made once per state file and kept with it: the key secret
//! values are hashed with for spec hashes ([`crate::reconcile::SpecKey`]).

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError};

const SPEC_KEY: &str = "spec_key";

impl Store {
    /// The spec hash's key, made (from the system's generator) the first
    /// time it is asked for.
    pub fn spec_key(&self) -> Result<[u8; 64], StoreError> {
        if let Some(key) = self.spec_key_stored()? {
            return Ok(key);
        }
        let mut fresh = [0u8; 64];
        crate::random::fill(&mut fresh).map_err(|reason| StoreError::Open {
            file: self.file.clone(),
            reason,
        })?;
        // Two processes at once: the first one's key stays.
        self.conn
            .execute(
                "INSERT OR IGNORE INTO settings (key, value) VALUES (?1, ?2)",
                params![SPEC_KEY, fresh.as_slice()],
            )
            .map_err(|e| self.sql(e))?;
        Ok(self.spec_key_stored()?.unwrap_or(fresh))
    }

    fn spec_key_stored(&self) -> Result<Option<[u8; 64]>, StoreError> {
        let value: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT value FROM settings WHERE key = ?1",
                [SPEC_KEY],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        Ok(value.and_then(|v| <[u8; 64]>::try_from(v.as_slice()).ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("s.db");
        let first = Store::open(&file).expect("open").spec_key().expect("made");
        assert_ne!(first, [0; 64]);
        let again = Store::open(&file).expect("open").spec_key().expect("kept");
        assert_eq!(first, again);
        let other = tempfile::tempdir().expect("tempdir");
        let elsewhere = Store::open(&other.path().join("s.db"))
            .expect("open")
            .spec_key()
            .expect("made");
        assert_ne!(first, elsewhere);
    }
}
