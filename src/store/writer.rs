//! The one writer: a thread owning the state file's writing connection.
//! Async callers hand it work and either wait for the answer
//! ([`Writer::call`]) or go on at once ([`Writer::submit`]: events, rows
//! of what a pass saw). A write that fails is counted and logged, never
//! passed up: the operator keeps healing from what it holds in memory, and
//! `status`, the dashboard and `/metrics` show the count.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::{NewEvent, Store, StoreError, now_ms};

/// Work waiting for the writer. Beyond this, [`Writer::submit`] drops
/// (and counts) what it is given rather than grow without bound while the
/// disk is stuck.
const QUEUE: usize = 4096;

type Job = Box<dyn FnOnce(&mut Store) + Send>;

/// A handle on the writer thread; clones share it. The thread ends when
/// the last handle is dropped, after the work already queued.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    health: Arc<Health>,
    file: PathBuf,
}

/// How the writer fares: failed operations in all, and the latest failure.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteHealth {
    pub failed: u64,
    /// When (unix ms) and why the latest operation failed.
    pub last_failure: Option<(i64, String)>,
    /// Whether the latest operation succeeded.
    pub ok_now: bool,
}

#[derive(Default)]
struct Health {
    failed: AtomicU64,
    last: Mutex<Option<(i64, String)>>,
    /// The latest operation failed: the next success is worth a log line.
    failing: std::sync::atomic::AtomicBool,
}

impl Health {
    fn failed(&self, what: &str, e: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some((now_ms(), e.to_owned()));
        // Once per run of failures: a full disk must not flood the log.
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::error!(
                error = %e,
                "the state store failed to {what}; Prism goes on from what it holds in memory and counts each failure"
            );
        }
    }

    fn succeeded(&self) {
        if self.failing.swap(false, Ordering::Relaxed) {
            tracing::info!(
                failed = self.failed.load(Ordering::Relaxed),
                "the state store takes writes again"
            );
        }
    }
}

impl Writer {
    /// Starts the writer thread with `store` as its connection.
    pub fn start(store: Store) -> Writer {
        let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
        let file = store.file().to_path_buf();
        let spawned = std::thread::Builder::new()
            .name("prism-store".into())
            .spawn(move || {
                let mut store = store;
                while let Some(job) = rx.blocking_recv() {
                    job(&mut store);
                }
            });
        let health = Arc::new(Health::default());
        if let Err(e) = spawned {
            // Every later operation fails on the closed queue, and says so.
            health.failed("start its thread", &e.to_string());
        }
        Writer { tx, health, file }
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Runs `work` on the writer and returns its answer.
    pub async fn call<R, F>(&self, what: &'static str, work: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let health = self.health.clone();
        let job: Job = Box::new(move |store| {
            let result = work(store);
            match &result {
                Ok(_) => health.succeeded(),
                Err(e) => health.failed(what, &e.to_string()),
            }
            let _ = reply.send(result);
        });
        if self.tx.send(job).await.is_err() {
            return Err(self.gone(what));
        }
        answer.await.map_err(|_| self.gone(what))?
    }

    /// Queues `work` and goes on; a failure is counted and logged.
    pub(crate) fn submit<F>(&self, what: &'static str, work: F)
    where
        F: FnOnce(&mut Store) -> Result<(), StoreError> + Send + 'static,
    {
        let health = self.health.clone();
        let job: Job = Box::new(move |store| match work(store) {
            Ok(()) => health.succeeded(),
            Err(e) => health.failed(what, &e.to_string()),
        });
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.health.failed(
                what,
                "the writer's queue is full (the disk is not keeping up)",
            ),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.health.failed(what, "the writer has stopped")
            }
        }
    }

    /// Records `event`, going on at once.
    pub fn event(&self, event: NewEvent) {
        self.submit("record an event", move |s| {
            s.record_event(&event).map(|_| ())
        });
    }

    /// Failures so far.
    pub fn health(&self) -> WriteHealth {
        WriteHealth {
            failed: self.health.failed.load(Ordering::Relaxed),
            last_failure: self
                .health
                .last
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            ok_now: !self.health.failing.load(Ordering::Relaxed),
        }
    }

    fn gone(&self, what: &str) -> StoreError {
        self.health.failed(what, "the writer has stopped");
        StoreError::Open {
            file: self.file.clone(),
            reason: "the state store's writer has stopped".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_answer_and_submits_land_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let writer = Writer::start(Store::open(&dir.path().join("s.db")).expect("open"));
        for i in 0..3 {
            writer.submit("record an event", move |s| {
                s.record_event(&NewEvent::info("test", format!("event {i}")))
                    .map(|_| ())
            });
        }
        let events = writer
            .call("read events", |s| s.events(10))
            .await
            .expect("read");
        let messages: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(messages, ["event 2", "event 1", "event 0"]);
        assert_eq!(writer.health().failed, 0);
    }

    #[tokio::test]
    async fn failures_are_counted_not_raised() {
        let dir = tempfile::tempdir().expect("tempdir");
        let writer = Writer::start(Store::open(&dir.path().join("s.db")).expect("open"));
        writer.submit("do the impossible", |s| {
            s.conn
                .execute("INSERT INTO no_such_table VALUES (1)", [])
                .map(|_| ())
                .map_err(|e| s.sql(e))
        });
        let err = writer
            .call("read a missing table", |s| {
                s.conn
                    .query_row("SELECT 1 FROM no_such_table", [], |r| r.get::<_, i64>(0))
                    .map_err(|e| s.sql(e))
            })
            .await
            .expect_err("fails");
        assert!(err.to_string().contains("no_such_table"), "{err}");
        let health = writer.health();
        assert_eq!(health.failed, 2);
        assert!(!health.ok_now);
        let (_, why) = health.last_failure.expect("a failure");
        assert!(why.contains("no_such_table"), "{why}");
        // A success after them: failing no more, the count kept.
        writer.call("read", |s| s.events(1)).await.expect("read");
        assert!(writer.health().ok_now);
        assert_eq!(writer.health().failed, 2);
    }
}
