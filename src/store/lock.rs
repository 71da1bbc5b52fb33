//! The apply lock: one applier at a time per state file (a daemon and a
//! cron `reconcile --once` never apply concurrently).
//!
//! The holder records its TTL in the lock row and refreshes its heartbeat
//! in the background for as long as it lives ([`crate::operator`]'s
//! runtime). Another process judges a holder by that holder's own TTL: on
//! the same host, a holder whose process still runs is alive however old
//! its heartbeat (a long pass, or a store that cannot take writes, must
//! not let a second applier in); on another host, one whose heartbeat is
//! older than its TTL is presumed dead. Each taking of the lock gets a new
//! generation; the holder checks it before each batch of remote commands,
//! so a process that lost the lock stops changing nodes at once.

use std::fmt;
use std::time::Duration;

use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

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

/// The lock as taken: what its holder checks before acting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub holder: LockHolder,
    pub generation: i64,
    pub ttl: Duration,
}

/// The lock as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub role: String,
    pub pid: u32,
    pub host: String,
    pub acquired_at: i64,
    pub heartbeat_at: i64,
    /// The holder's TTL: how long another host waits after its last
    /// heartbeat before taking over.
    pub ttl_ms: i64,
    /// Counts every taking of the lock.
    pub generation: i64,
}

impl LockInfo {
    /// Whether the holder is presumed alive, seen from `host` at `now`
    /// (unix ms); see the module's rule.
    pub fn alive(&self, host: &str, now: i64) -> bool {
        if self.host == host {
            process_alive(self.pid)
        } else {
            now.saturating_sub(self.heartbeat_at) <= self.ttl_ms
        }
    }

    /// Whether `lease` is this lock, as taken.
    fn is(&self, lease: &Lease) -> bool {
        self.pid == lease.holder.pid
            && self.host == lease.holder.host
            && self.generation == lease.generation
    }
}

impl fmt::Display for LockInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let age = now_ms().saturating_sub(self.heartbeat_at).max(0) / 1000;
        write!(
            f,
            "{} (pid {} on {}), last heartbeat {age}s ago",
            self.role, self.pid, self.host
        )
    }
}

const COLUMNS: &str = "holder, pid, host, acquired_at, heartbeat_at, ttl_ms, generation";

fn lock_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<LockInfo> {
    Ok(LockInfo {
        role: r.get(0)?,
        pid: r.get(1)?,
        host: r.get(2)?,
        acquired_at: r.get(3)?,
        heartbeat_at: r.get(4)?,
        ttl_ms: r.get(5)?,
        generation: r.get(6)?,
    })
}

pub fn hostname() -> String {
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
    pub fn try_lock(&mut self, me: &LockHolder, ttl: Duration) -> Result<Lease, StoreError> {
        let file = self.file.clone();
        let err = |e| super::classify(&file, e);
        let now = now_ms();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let current = tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM apply_lock WHERE id = 1"),
                [],
                lock_from_row,
            )
            .optional()
            .map_err(err)?;
        // A released lock keeps its row (pid 0), so generations only grow.
        let generation = current.as_ref().map_or(0, |h| h.generation) + 1;
        if let Some(held) = current.filter(|h| h.pid != 0) {
            let mine = held.pid == me.pid && held.host == me.host;
            if !mine && held.alive(&me.host, now) {
                return Err(StoreError::Locked { file, holder: held });
            }
        }
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        tx.execute(
            "INSERT INTO apply_lock (id, holder, pid, host, acquired_at, heartbeat_at, ttl_ms, generation)
             VALUES (1, ?1, ?2, ?3, ?4, ?4, ?5, ?6)
             ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, pid = excluded.pid, host = excluded.host,
               acquired_at = excluded.acquired_at, heartbeat_at = excluded.heartbeat_at,
               ttl_ms = excluded.ttl_ms, generation = excluded.generation",
            params![me.role, me.pid, me.host, now, ttl_ms, generation],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Lease {
            holder: me.clone(),
            generation,
            ttl,
        })
    }

    /// Refreshes the heartbeat; fails with [`StoreError::LockLost`] if the
    /// lock was taken over or released meanwhile.
    pub fn heartbeat(&self, lease: &Lease) -> Result<(), StoreError> {
        let h = &lease.holder;
        let n = self
            .conn
            .execute(
                "UPDATE apply_lock SET heartbeat_at = ?1
                 WHERE id = 1 AND pid = ?2 AND host = ?3 AND generation = ?4",
                params![now_ms(), h.pid, h.host, lease.generation],
            )
            .map_err(|e| self.sql(e))?;
        if n == 1 {
            Ok(())
        } else {
            Err(self.lost(self.lock_info()?))
        }
    }

    /// Whether `lease` still holds the lock (a read only: it works on a
    /// full disk); [`StoreError::LockLost`] when it does not.
    pub(crate) fn check_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        match self.lock_info()? {
            Some(held) if held.is(lease) => Ok(()),
            other => Err(self.lost(other)),
        }
    }

    fn lost(&self, now: Option<LockInfo>) -> StoreError {
        StoreError::LockLost {
            file: self.file.clone(),
            now: match now {
                Some(holder) => format!("it is held by {holder}"),
                None => "it was released by someone else".into(),
            },
        }
    }

    /// Releases the lock if `lease` still holds it. The row stays, with
    /// no holder, to carry the generation on.
    pub fn unlock(&self, lease: &Lease) -> Result<(), StoreError> {
        let h = &lease.holder;
        self.conn
            .execute(
                "UPDATE apply_lock SET holder = '', pid = 0, host = ''
                 WHERE id = 1 AND pid = ?1 AND host = ?2 AND generation = ?3",
                params![h.pid, h.host, lease.generation],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// The holder, if any.
    pub fn lock_info(&self) -> Result<Option<LockInfo>, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM apply_lock WHERE id = 1 AND pid != 0"),
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

    fn age_heartbeat(store: &Store, by_ms: i64) {
        store
            .conn
            .execute(
                "UPDATE apply_lock SET heartbeat_at = heartbeat_at - ?1",
                [by_ms],
            )
            .expect("age it");
    }

    #[test]
    fn second_applier_is_refused_and_told_who_holds_it() {
        let (_d, mut a, mut b) = two_stores();
        let daemon = remote("daemon");
        let cron = LockHolder::this_process("reconcile --once");
        let lease = a.try_lock(&daemon, TTL).expect("daemon takes it");
        let err = b.try_lock(&cron, TTL).expect_err("cron must be refused");
        let text = err.to_string();
        assert!(
            text.contains("held by daemon (pid 4242 on operator-box)"),
            "{text}"
        );
        a.unlock(&lease).expect("release");
        b.try_lock(&cron, TTL).expect("free now");
        assert_eq!(
            b.lock_info().expect("info").expect("held").role,
            "reconcile --once"
        );
    }

    #[test]
    fn a_remote_holder_is_judged_by_its_own_ttl() {
        let (_d, mut a, mut b) = two_stores();
        let lease = a
            .try_lock(&remote("daemon"), Duration::from_secs(300))
            .expect("take");
        // Older than the taker's TTL, within the holder's own: still held.
        age_heartbeat(&a, 60_000);
        let me = LockHolder::this_process("reconcile --once");
        b.try_lock(&me, TTL).expect_err("the holder's 300 s count");
        // Past the holder's TTL: presumed dead, taken over.
        age_heartbeat(&a, 300_000);
        b.try_lock(&me, TTL).expect("stale lock taken over");
        let err = a.heartbeat(&lease).expect_err("old holder lost it");
        assert!(matches!(err, StoreError::LockLost { .. }), "{err:?}");
        assert!(a.check_lease(&lease).is_err());
    }

    #[test]
    fn a_live_local_holder_keeps_it_however_old_its_heartbeat() {
        let (_d, mut a, mut b) = two_stores();
        // This test process is alive: a long pass, or a store that took no
        // heartbeat for a while, must not let a second applier in.
        let me = LockHolder::this_process("daemon");
        a.try_lock(&me, TTL).expect("take");
        age_heartbeat(&a, 3_600_000);
        let other = LockHolder {
            pid: me.pid.wrapping_add(1),
            ..LockHolder::this_process("dashboard")
        };
        let err = b.try_lock(&other, TTL).expect_err("refused");
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
    fn each_taking_is_a_new_generation_and_old_leases_are_fenced() {
        let (_d, mut a, mut b) = two_stores();
        let first = a.try_lock(&remote("daemon"), TTL).expect("take");
        a.check_lease(&first).expect("holds it");
        a.heartbeat(&first).expect("heartbeat");
        a.unlock(&first).expect("release");
        assert!(a.check_lease(&first).is_err(), "released");
        // The same process taking it again gets a new generation: a lease
        // from before a release never passes the fence.
        let second = b.try_lock(&remote("daemon"), TTL).expect("again");
        assert_eq!(second.generation, first.generation + 1);
        let err = b.check_lease(&first).expect_err("old lease");
        assert!(err.to_string().contains("held by daemon"), "{err}");
        b.check_lease(&second).expect("new lease");
        // An unlock with the old lease leaves the new one alone.
        b.unlock(&first).expect("no-op");
        b.check_lease(&second).expect("still held");
        let info = b.lock_info().expect("info").expect("held");
        assert_eq!((info.ttl_ms, info.generation), (30_000, second.generation));
    }
}
