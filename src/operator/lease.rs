//! Holding the apply lock while this process applies: a heartbeat in the
//! background for as long as the process lives (a pass of any length
//! keeps the lock), and a fence the applier checks before each batch of
//! remote commands, so a process that lost the lock stops changing nodes
//! at once.

use std::sync::Mutex;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::store::{Lease, StoreError, Writer};

/// How often the heartbeat is written. Well inside any TTL, and often
/// enough that `prism status` can tell an applier whose writes fail
/// ([`HEARTBEAT_LATE`]).
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(5);
/// A heartbeat this old, from a holder whose process still runs, means its
/// writes to the state file fail (or the process hangs).
pub(crate) const HEARTBEAT_LATE: Duration = Duration::from_secs(20);
/// How long a fence check waits for the store; a store this slow cannot
/// prove the lock lost, and the heartbeat goes on trying.
const CHECK_WAIT: Duration = Duration::from_secs(2);

/// This process's claim to apply.
pub struct Fence {
    lease: Lease,
    journal: Writer,
    /// Why the lock was lost, once it was.
    lost: Mutex<Option<String>>,
}

impl Fence {
    pub fn new(lease: Lease, journal: Writer) -> Fence {
        Fence {
            lease,
            journal,
            lost: Mutex::new(None),
        }
    }

    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Ok while this process holds the lock; why not, once it does not. A
    /// store that cannot be read in time proves nothing: Ok.
    pub async fn check(&self) -> Result<(), String> {
        if let Some(why) = self.lost_why() {
            return Err(why);
        }
        let lease = self.lease.clone();
        let read = self
            .journal
            .call("check the apply lock", move |s| s.check_lease(&lease));
        match tokio::time::timeout(CHECK_WAIT, read).await {
            Ok(Err(StoreError::LockLost { now, .. })) => {
                self.lose(now.clone());
                Err(now)
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn lost_why(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn lose(&self, why: String) {
        let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        if lost.is_none() {
            tracing::error!("lost the apply lock: {why}; changing nothing more");
            *lost = Some(why);
        }
    }
}

/// How often the heartbeat of `lease` is written: every [`HEARTBEAT`], or
/// three times per TTL when that is shorter.
pub fn period(lease: &Lease) -> Duration {
    HEARTBEAT.min(lease.ttl / 3).max(Duration::from_millis(100))
}

/// Writes the heartbeat every [`period`] until aborted. When the lock
/// turns out lost, marks the fence and calls `lost` (once). A write that
/// fails otherwise (a full disk) is counted by the writer and tried again.
pub fn keep(fence: std::sync::Arc<Fence>, lost: impl Fn() + Send + 'static) -> JoinHandle<()> {
    tokio::spawn(async move {
        let every = period(&fence.lease);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let lease = fence.lease.clone();
            let beat = fence
                .journal
                .call("write the lock's heartbeat", move |s| s.heartbeat(&lease));
            if let Ok(Err(StoreError::LockLost { now, .. })) =
                tokio::time::timeout(HEARTBEAT, beat).await
            {
                fence.lose(now);
                lost();
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::store::{LockHolder, Store};

    #[test]
    fn the_heartbeat_comes_three_times_per_ttl_at_most_every_5s() {
        let lease = |secs: u64| Lease {
            holder: LockHolder::this_process("daemon"),
            generation: 1,
            ttl: Duration::from_secs(secs),
        };
        assert_eq!(period(&lease(60)), HEARTBEAT);
        assert_eq!(period(&lease(3)), Duration::from_secs(1));
        assert_eq!(period(&lease(0)), Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_fence_passes_while_held_and_fails_for_good_once_taken_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("s.db");
        let mut mine = Store::open(&file).expect("open");
        let me = LockHolder {
            role: "daemon".into(),
            pid: 4242,
            host: "operator-box".into(),
        };
        let lease = mine.try_lock(&me, Duration::from_secs(1)).expect("take");
        let fence = Arc::new(Fence::new(lease, Writer::start(mine)));
        fence.check().await.expect("held");
        // Another host takes over once the heartbeat is older than the TTL.
        let mut other = Store::open(&file).expect("open");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        other
            .try_lock(
                &LockHolder::this_process("dashboard"),
                Duration::from_secs(60),
            )
            .expect("stale, taken over");
        let why = fence.check().await.expect_err("lost");
        assert!(why.contains("held by dashboard"), "{why}");
        // The heartbeat sees it too, and says so once.
        let told = Arc::new(AtomicBool::new(false));
        let flag = told.clone();
        let task = keep(fence.clone(), move || flag.store(true, Ordering::SeqCst));
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("ends")
            .expect("no panic");
        assert!(told.load(Ordering::SeqCst));
        assert!(fence.lost_why().is_some());
    }
}
