//! The API's tokens: a name, a scope, an expiry and a hash of the secret.
//! The secret itself is printed once by `prism token create` and kept
//! nowhere; a token is looked up by its public id, then its secret checked
//! against the hash (api/auth.rs).

use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;

use super::{Store, StoreError};

/// What a token may do; each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every GET: the fleet, the plan, events, history.
    Read,
    /// And deploy, scale, rollback.
    Deploy,
    /// And everything else: drain, reconcile.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Deploy, Scope::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Deploy => "deploy",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// A token as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    /// The secret's Argon2id hash, as a PHC string.
    #[serde(skip)]
    pub hash: String,
    /// Unix ms.
    pub created: i64,
    pub expires: Option<i64>,
    pub revoked: Option<i64>,
    pub last_used: Option<i64>,
}

impl TokenRecord {
    /// Whether it may be used at `now` (unix ms).
    pub fn live(&self, now: i64) -> bool {
        self.revoked.is_none() && self.expires.is_none_or(|e| now < e)
    }
}

const COLUMNS: &str = "id, name, scope, hash, created, expires, revoked, last_used";

fn from_row(r: &Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        scope: r.get(2)?,
        hash: r.get(3)?,
        created: r.get(4)?,
        expires: r.get(5)?,
        revoked: r.get(6)?,
        last_used: r.get(7)?,
    })
}

impl Store {
    /// Adds a token; `false` when a token that is not revoked has the name.
    pub fn add_token(&self, t: &TokenRecord) -> Result<bool, StoreError> {
        let added = self
            .conn
            .execute(
                "INSERT INTO api_tokens (id, name, scope, hash, created, expires)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6
                 WHERE NOT EXISTS (SELECT 1 FROM api_tokens WHERE name = ?2 AND revoked IS NULL)",
                params![t.id, t.name, t.scope, t.hash, t.created, t.expires],
            )
            .map_err(|e| self.sql(e))?;
        Ok(added == 1)
    }

    /// Every token, revoked ones too, by name.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM api_tokens ORDER BY name, created"
            ))
            .map_err(|e| self.sql(e))?;
        let rows = stmt.query_map([], from_row).map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// The token with public id `id`.
    pub fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM api_tokens WHERE id = ?1"),
                [id],
                from_row,
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// Revokes the token named `name`; `false` when none that is not
    /// revoked has that name.
    pub fn revoke_token(&self, name: &str, at: i64) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute(
                "UPDATE api_tokens SET revoked = ?2 WHERE name = ?1 AND revoked IS NULL",
                params![name, at],
            )
            .map_err(|e| self.sql(e))?;
        Ok(n > 0)
    }

    pub(crate) fn token_used(&self, id: &str, at: i64) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE api_tokens SET last_used = ?2 WHERE id = ?1",
                params![id, at],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: &str, name: &str) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            name: name.into(),
            scope: Scope::Deploy,
            hash: "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA".into(),
            created: 1,
            expires: Some(100),
            revoked: None,
            last_used: None,
        }
    }

    #[test]
    fn a_name_is_taken_until_its_token_is_revoked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("s.db")).expect("open");
        assert!(store.add_token(&token("a1", "ci")).expect("add"));
        assert!(!store.add_token(&token("a2", "ci")).expect("same name"));
        let got = store.token("a1").expect("read").expect("there");
        assert_eq!(got, token("a1", "ci"));
        assert!(got.live(99) && !got.live(100));
        assert!(store.revoke_token("ci", 5).expect("revoke"));
        assert!(!store.revoke_token("ci", 6).expect("twice"));
        assert!(!store.token("a1").expect("read").expect("kept").live(2));
        assert!(
            store
                .add_token(&token("a3", "ci"))
                .expect("name free again")
        );
        store.token_used("a3", 7).expect("used");
        let all = store.tokens().expect("list");
        assert_eq!(
            all.iter()
                .map(|t| (t.id.as_str(), t.revoked, t.last_used))
                .collect::<Vec<_>>(),
            [("a1", Some(5), None), ("a3", None, Some(7))]
        );
        assert_eq!(Scope::parse("admin"), Some(Scope::Admin));
        assert!(Scope::Read < Scope::Deploy && Scope::Deploy < Scope::Admin);
    }
}
