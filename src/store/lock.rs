//! The apply lock: one applier at a time per state file (a daemon and a
//! cron `reconcile --once` never apply concurrently). A holder refreshes
//! its heartbeat; a lock whose heartbeat is older than the TTL, or whose
//! process on this host is gone, is stale and may be taken over.

use std::fmt;
use std::time::Duration;

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use super::{Store, StoreError, now_ms};

/// Who asks for the lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockHolder {
    /// What is applying: `daemon`, `reconcile --once`, `dashboard`.
    pub role: String,
    pub pid: u32,
    pub host: String,
}

impl LockHolder {
    pub fn this_process(role: &str) -> Self {
        LockHolder {
            role: role.to_owned(),
            pid: std::process::id(),
            host: hostname(),
        }
    }
}

/// The lock as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockInfo {
    pub role: String,
    pub pid: u32,
    pub host: String,
    pub acquired_at: i64,
    pub heartbeat_at: i64,
}

impl fmt::Display for LockInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let age = (super::now_ms() - self.heartbeat_at).max(0) / 1000;
        write!(
            f,
            "{} (pid {} on {}), last heartbeat {age}s ago",
            self.role, self.pid, self.host
        )
    }
}

fn lock_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LockInfo> {
    Ok(LockInfo {
        role: r.get(0)?,
        pid: r.get(1)?,
        host: r.get(2)?,
        acquired_at: r.get(3)?,
        heartbeat_at: r.get(4)?,
    })
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

impl Store {
    /// Takes the lock, or says who holds it.
    pub fn try_lock(&mut self, me: &LockHolder, ttl: Duration) -> Result<(), StoreError> {
        let file = self.file.clone();
        let err = |e| super::classify(&file, e);
        let now = now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let current = tx
            .query_row(
                "SELECT holder, pid, host, acquired_at, heartbeat_at FROM apply_lock WHERE id = 1",
                [],
                lock_from_row,
            )
            .optional()
            .map_err(err)?;
        if let Some(held) = current {
            let mine = held.pid == me.pid && held.host == me.host;
            let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            let stale = now - held.heartbeat_at > ttl_ms
                || (held.host == me.host && !process_alive(held.pid));
            if !mine && !stale {
                return Err(StoreError::Locked { file, holder: held });
            }
        }
        tx.execute(
            "INSERT INTO apply_lock (id, holder, pid, host, acquired_at, heartbeat_at) VALUES (1, ?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, pid = excluded.pid, host = excluded.host,
               acquired_at = excluded.acquired_at, heartbeat_at = excluded.heartbeat_at",
            params![me.role, me.pid, me.host, now],
        )
        .map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Refreshes the heartbeat; fails if the lock was taken over meanwhile.
    pub fn heartbeat(&self, me: &LockHolder) -> Result<(), StoreError> {
        let n = self
            .conn
            .execute(
                "UPDATE apply_lock SET heartbeat_at = ?1 WHERE id = 1 AND pid = ?2 AND host = ?3",
                params![now_ms(), me.pid, me.host],
            )
            .map_err(|e| self.sql(e))?;
        if n == 1 {
            return Ok(());
        }
        match self.lock_info()? {
            Some(holder) => Err(StoreError::Locked {
                file: self.file.clone(),
                holder,
            }),
            None => Err(StoreError::Open {
                file: self.file.clone(),
                reason: "the apply lock was released by someone else".into(),
            }),
        }
    }

    pub fn unlock(&self, me: &LockHolder) -> Result<(), StoreError> {
        self.conn
            .execute(
                "DELETE FROM apply_lock WHERE id = 1 AND pid = ?1 AND host = ?2",
                params![me.pid, me.host],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    pub fn lock_info(&self) -> Result<Option<LockInfo>, StoreError> {
        self.conn
            .query_row(
                "SELECT holder, pid, host, acquired_at, heartbeat_at FROM apply_lock WHERE id = 1",
                [],
                lock_from_row,
            )
            .optional()
            .map_err(|e| self.sql(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(30);

    fn two_stores() -> (tempfile::TempDir, Store, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("s.db");
        let a = Store::open(&file).expect("a");
        let b = Store::open(&file).expect("b");
        (dir, a, b)
    }

    /// A holder on another host, so liveness cannot be judged by pid.
    fn remote(role: &str) -> LockHolder {
        LockHolder {
            role: role.into(),
            pid: 4242,
            host: "operator-box".into(),
        }
    }

    #[test]
    fn second_applier_is_refused_and_told_who_holds_it() {
        let (_d, mut a, mut b) = two_stores();
        let daemon = remote("daemon");
        let cron = LockHolder::this_process("reconcile --once");
        a.try_lock(&daemon, TTL).expect("daemon takes it");
        let err = b.try_lock(&cron, TTL).expect_err("cron must be refused");
        let text = err.to_string();
        assert!(
            text.contains("held by daemon (pid 4242 on operator-box)"),
            "{text}"
        );
        a.unlock(&daemon).expect("release");
        b.try_lock(&cron, TTL).expect("free now");
        assert_eq!(
            b.lock_info().expect("info").expect("held").role,
            "reconcile --once"
        );
    }

    #[test]
    fn a_stale_lock_is_taken_over() {
        let (_d, mut a, mut b) = two_stores();
        a.try_lock(&remote("daemon"), TTL).expect("take");
        // The holder stopped heartbeating long ago.
        a.conn
            .execute(
                "UPDATE apply_lock SET heartbeat_at = heartbeat_at - 60000",
                [],
            )
            .expect("age it");
        b.try_lock(&LockHolder::this_process("reconcile --once"), TTL)
            .expect("stale lock taken over");
        let err = a
            .heartbeat(&remote("daemon"))
            .expect_err("old holder lost it");
        assert!(matches!(err, StoreError::Locked { .. }), "{err:?}");
    }

    #[test]
    fn a_dead_local_holder_is_stale_at_once() {
        let (_d, mut a, mut b) = two_stores();
        let me = LockHolder::this_process("x");
        // A pid that cannot exist on Linux (above pid_max's ceiling).
        let dead = LockHolder {
            role: "daemon".into(),
            pid: 4_194_305,
            host: me.host.clone(),
        };
        a.try_lock(&dead, TTL).expect("take");
        b.try_lock(&me, TTL).expect("dead holder's lock is free");
    }

    #[test]
    fn relocking_by_the_holder_is_fine_and_heartbeat_works() {
        let (_d, mut a, _b) = two_stores();
        let me = LockHolder::this_process("daemon");
        a.try_lock(&me, TTL).expect("take");
        a.try_lock(&me, TTL).expect("again");
        a.heartbeat(&me).expect("heartbeat");
    }
}
