//! Schema migrations, by version. `PRAGMA user_version` records how far a
//! file has come; each step runs in its own transaction, so a crash leaves
//! the file at a whole version.

use rusqlite::Connection;

/// Append only: a released step is never edited, a change is a new step.
const STEPS: &[&str] = &[
    // 1: the first schema.
    r#"
    CREATE TABLE nodes (
        id            TEXT PRIMARY KEY,  -- EC2 instance id, or the static node's name
        name          TEXT NOT NULL,
        address       TEXT NOT NULL,
        provider      TEXT NOT NULL,     -- ec2 | static
        zone          TEXT,
        instance_type TEXT,
        lifecycle     TEXT NOT NULL,     -- spot | on-demand | static
        state         TEXT NOT NULL,
        condition     TEXT,              -- why it is not ready, when it is not
        docker_version TEXT,
        memory_total  INTEGER,
        memory_free   INTEGER,
        cpus          INTEGER,           -- millicores
        first_seen    INTEGER NOT NULL,  -- unix ms
        last_seen     INTEGER NOT NULL,
        last_probe    INTEGER
    );
    CREATE TABLE containers (
        node_id     TEXT NOT NULL,
        name        TEXT NOT NULL,
        app         TEXT NOT NULL,
        service     TEXT NOT NULL,
        instance    INTEGER NOT NULL,
        image       TEXT NOT NULL,
        state       TEXT NOT NULL,
        health      TEXT,
        restarts    INTEGER NOT NULL DEFAULT 0,
        ports       TEXT NOT NULL DEFAULT '',
        started_at  INTEGER,
        spec_hash   TEXT,
        observed_at INTEGER NOT NULL,
        PRIMARY KEY (node_id, name)
    );
    CREATE TABLE placements (
        app       TEXT NOT NULL,
        instance  INTEGER NOT NULL,
        node_id   TEXT NOT NULL,
        placed_at INTEGER NOT NULL,
        PRIMARY KEY (app, instance)
    );
    CREATE TABLE events (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        at      INTEGER NOT NULL,
        level   TEXT NOT NULL,
        kind    TEXT NOT NULL,
        node_id TEXT,
        app     TEXT,
        message TEXT NOT NULL
    );
    CREATE INDEX events_at ON events (at);
    CREATE TABLE host_keys (
        instance_id TEXT PRIMARY KEY,
        algorithm   TEXT NOT NULL,
        public_key  TEXT NOT NULL,       -- OpenSSH base64
        fingerprint TEXT NOT NULL,       -- SHA256:...
        first_seen  INTEGER NOT NULL,
        last_seen   INTEGER NOT NULL
    );
    CREATE TABLE apply_lock (
        id           INTEGER PRIMARY KEY CHECK (id = 1),
        holder       TEXT NOT NULL,
        pid          INTEGER NOT NULL,
        host         TEXT NOT NULL,
        acquired_at  INTEGER NOT NULL,
        heartbeat_at INTEGER NOT NULL
    );
    "#,
    // 2: why a node is not ready, in words; its free disk.
    r#"
    ALTER TABLE nodes ADD COLUMN condition_detail TEXT;
    ALTER TABLE nodes ADD COLUMN disk_free INTEGER;
    "#,
    // 3: Prism's own health checks, one row per checked container.
    r#"
    CREATE TABLE health (
        container_id TEXT PRIMARY KEY,
        node_id      TEXT NOT NULL,
        app          TEXT NOT NULL,
        service      TEXT NOT NULL,
        instance     INTEGER NOT NULL,
        started_at   INTEGER,           -- the container start the counts belong to (unix ms)
        successes    INTEGER NOT NULL,  -- consecutive
        failures     INTEGER NOT NULL,  -- consecutive, outside the start period
        verdict      TEXT NOT NULL,     -- starting | healthy | unhealthy
        last_check   INTEGER,           -- unix ms; NULL: due now
        last_ok      INTEGER,           -- 1 passed, 0 failed
        detail       TEXT               -- what the last check saw: "GET /up: 503"
    );
    CREATE INDEX health_node ON health (node_id);
    "#,
    // 4: actions asked of the applier by another process (the dashboard
    // attached to a daemon): reconcile now, restart a container, drain a node.
    r#"
    CREATE TABLE requests (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        at        INTEGER NOT NULL,     -- unix ms
        kind      TEXT NOT NULL,        -- reconcile | restart | drain
        node_id   TEXT,
        container TEXT,                 -- the container's name, for restart
        by        TEXT NOT NULL,        -- who asked: "dashboard (pid 12)"
        state     TEXT NOT NULL,        -- pending | running | done | failed
        done_at   INTEGER,
        result    TEXT                  -- what came of it, in words
    );
    CREATE INDEX requests_state ON requests (state);
    "#,
    // 5: what the applier's last pass planned, for attached readers; one
    // row, replaced each pass.
    r#"
    CREATE TABLE last_plan (
        id   INTEGER PRIMARY KEY CHECK (id = 1),
        at   INTEGER NOT NULL,          -- when the pass ended (unix ms)
        body TEXT NOT NULL              -- JSON: store::PublishedPlan
    );
    "#,
    // 6: the daemon's proxy counters, rewritten every second, for attached
    // dashboards to turn into rates.
    r#"
    CREATE TABLE proxy_traffic (
        id            INTEGER PRIMARY KEY CHECK (id = 1),
        at            INTEGER NOT NULL,  -- unix ms, when read from the proxy
        requests      INTEGER NOT NULL,  -- answered since the proxy started
        server_errors INTEGER NOT NULL   -- of those, with a 5xx status
    );
    "#,
    // 7: images a node failed to pull while it was preparing: it goes
    // ready all the same (see the operator's lifecycle).
    r#"
    CREATE TABLE pull_failures (
        node_id TEXT NOT NULL,
        image   TEXT NOT NULL,
        at      INTEGER NOT NULL,       -- unix ms, the latest failure
        error   TEXT NOT NULL,
        PRIMARY KEY (node_id, image)
    );
    "#,
    // 8: the lock holder's own TTL and a generation per taking (fencing);
    // changes held back by the guards against mass change.
    r#"
    ALTER TABLE apply_lock ADD COLUMN ttl_ms INTEGER NOT NULL DEFAULT 60000;
    ALTER TABLE apply_lock ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE holds (
        kind       TEXT PRIMARY KEY,      -- apps-removed | inventory-shrank
        change     TEXT NOT NULL,         -- what is held, as a fingerprint
        summary    TEXT NOT NULL,         -- the same, in words
        first_seen INTEGER NOT NULL,      -- unix ms
        confirmed  INTEGER NOT NULL DEFAULT 0
    );
    "#,
    // 9: the mesh: each node's /24 and WireGuard public key.
    r#"
    CREATE TABLE mesh_members (
        node_id    TEXT PRIMARY KEY,
        slot       INTEGER NOT NULL UNIQUE,  -- its /24, counted in the cidr from 0 (the operator's)
        public_key TEXT                      -- read back from the node; the private key never leaves it
    );
    "#,
    // 10: fleet.toml edits Prism made (deploy, scale, rollback).
    r#"
    CREATE TABLE history (
        id     INTEGER PRIMARY KEY,
        at     INTEGER NOT NULL,  -- unix ms
        app    TEXT NOT NULL,
        who    TEXT NOT NULL,     -- user@host
        change TEXT NOT NULL,     -- what changed, in words
        before TEXT NOT NULL,     -- the whole file before
        after  TEXT NOT NULL      -- and after
    );
    CREATE INDEX history_app ON history (app, id);
    "#,
    // 11: the API's tokens; only a hash of each secret is kept.
    r#"
    CREATE TABLE api_tokens (
        id        TEXT PRIMARY KEY,  -- the token's public part
        name      TEXT NOT NULL,
        scope     TEXT NOT NULL,     -- read | deploy | admin
        hash      TEXT NOT NULL,     -- Argon2id (PHC string) of the secret part
        created   INTEGER NOT NULL,  -- unix ms
        expires   INTEGER,           -- unix ms; NULL: never
        revoked   INTEGER,           -- unix ms
        last_used INTEGER            -- unix ms
    );
    CREATE UNIQUE INDEX api_tokens_name ON api_tokens (name) WHERE revoked IS NULL;
    "#,
    // 12: values made once per state file (the spec hash's key).
    r#"
    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value BLOB NOT NULL
    );
    "#,
];

pub(crate) const LATEST: i64 = STEPS.len() as i64;

#[derive(Debug)]
pub enum Error {
    TooNew { found: i64, known: i64 },
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Sql(e)
    }
}

/// Brings the file to the latest version; returns the version it was at.
pub(crate) fn migrate(conn: &mut Connection) -> Result<i64, Error> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > LATEST {
        return Err(Error::TooNew {
            found,
            known: LATEST,
        });
    }
    for (i, step) in STEPS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        // Another process may have migrated while we waited for the lock.
        let now: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if now > i as i64 {
            continue;
        }
        tx.execute_batch(step)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
            .expect("prepare");
        stmt.query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    #[test]
    fn migrates_an_empty_file_to_latest() {
        let mut conn = Connection::open_in_memory().expect("open");
        assert_eq!(migrate(&mut conn).expect("migrate"), 0);
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(version, LATEST);
        assert_eq!(
            tables(&conn),
            [
                "api_tokens",
                "apply_lock",
                "containers",
                "events",
                "health",
                "history",
                "holds",
                "host_keys",
                "last_plan",
                "mesh_members",
                "nodes",
                "placements",
                "proxy_traffic",
                "pull_failures",
                "requests",
                "settings"
            ]
        );
    }

    #[test]
    fn migrating_twice_changes_nothing() {
        let mut conn = Connection::open_in_memory().expect("open");
        migrate(&mut conn).expect("first");
        conn.execute(
            "INSERT INTO events (at, level, kind, message) VALUES (1, 'info', 'k', 'kept')",
            [],
        )
        .expect("insert");
        assert_eq!(migrate(&mut conn).expect("second"), LATEST);
        let n: i64 = conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 1);
    }

    #[test]
    fn a_newer_file_is_refused() {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.pragma_update(None, "user_version", LATEST + 3)
            .expect("set");
        match migrate(&mut conn) {
            Err(Error::TooNew { found, known }) => {
                assert_eq!(found, LATEST + 3);
                assert_eq!(known, LATEST);
            }
            other => panic!("expected TooNew, got {other:?}"),
        }
    }
}
