//! The state store: one SQLite file (WAL) holding what nodes cannot tell
//! Prism themselves: nodes seen, placements, events, pinned host keys,
//! health check counts, the apply lock, requests to the applier and what
//! its last pass planned.
//! Every failure is a `StoreError` naming the file.

mod columns;
mod events;
mod health;
mod history;
mod holds;
mod host_keys;
mod last_plan;
mod lock;
mod mesh;
mod migrations;
mod nodes;
mod pulls;
mod requests;
mod settings;
mod tokens;
mod traffic;
mod writer;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, ErrorCode, OpenFlags};

pub(crate) use events::NewEvent;
pub use events::{Event, Level};
pub use health::{CheckOutcome, Checked, HealthBook, HealthRecord, Recorded, Thresholds, Verdict};
pub use history::Change;
pub use last_plan::{
    NodeActions, PlanLines, PublishedPlan, SnapshotLine, Unplaceable, VolumeKind, VolumeLine,
    VolumeLines,
};
pub use lock::{Lease, LockHolder, LockInfo, hostname};
pub use nodes::{ContainerRecord, NodeRecord, Placement};
pub(crate) use requests::NewRequest;
pub use requests::{Request, RequestKind, RequestState};
pub use tokens::{Scope, TokenRecord};
pub(crate) use traffic::ProxyTraffic;
pub(crate) use writer::WriteHealth;
pub use writer::Writer;

/// How long a writer waits for another to finish before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open state file {file}: {reason}")]
    Open { file: PathBuf, reason: String },
    #[error(
        "state file {file} is not a Prism state database, or it is corrupt ({detail}); move it aside and Prism will start a new one"
    )]
    Corrupt { file: PathBuf, detail: String },
    #[error("state file {file} is locked by another process and stayed locked for {}s", BUSY_TIMEOUT.as_secs())]
    Busy { file: PathBuf },
    #[error("state file {file} is read-only or its folder is not writable ({detail})")]
    ReadOnly { file: PathBuf, detail: String },
    #[error(
        "state file {file} has schema version {found}, newer than this Prism knows ({known}); upgrade prism"
    )]
    TooNew {
        file: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("the apply lock on {file} is held by {holder}")]
    Locked { file: PathBuf, holder: LockInfo },
    /// This process held the lock and no longer does.
    #[error("lost the apply lock on {file}: {now}")]
    LockLost { file: PathBuf, now: String },
    #[error("state file {file}: {source}")]
    Sql {
        file: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}

pub struct Store {
    conn: Connection,
    file: PathBuf,
}

impl Store {
    /// Opens (creating it and its folder if needed) and migrates the state file.
    pub fn open(file: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                file: file.to_path_buf(),
                reason: format!("cannot create folder {}: {e}", dir.display()),
            })?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(file, flags).map_err(|e| classify(file, e))?;
        let mut store = Store {
            conn,
            file: file.to_path_buf(),
        };
        store.configure()?;
        migrations::migrate(&mut store.conn).map_err(|e| match e {
            migrations::Error::TooNew { found, known } => StoreError::TooNew {
                file: file.to_path_buf(),
                found,
                known,
            },
            migrations::Error::Sql(e) => classify(file, e),
        })?;
        Ok(store)
    }

    /// Opens the state file only if it exists: readers such as `prism status`
    /// must not create one.
    pub fn open_existing(file: &Path) -> Result<Option<Store>, StoreError> {
        if !file.exists() {
            return Ok(None);
        }
        Store::open(file).map(Some)
    }

    /// Opens an existing state file for reading only: `prism status` and
    /// the dashboard look without taking a writer's lock. A file from an
    /// older Prism is migrated first (a write, once).
    pub(crate) fn open_read_only(file: &Path) -> Result<Option<Store>, StoreError> {
        if !file.exists() {
            return Ok(None);
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(file, flags).map_err(|e| classify(file, e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| classify(file, e))?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| classify(file, e))?;
        if version > migrations::LATEST {
            return Err(StoreError::TooNew {
                file: file.to_path_buf(),
                found: version,
                known: migrations::LATEST,
            });
        }
        if version < migrations::LATEST {
            drop(conn);
            return Store::open(file).map(Some);
        }
        Ok(Some(Store {
            conn,
            file: file.to_path_buf(),
        }))
    }

    /// Drops events, and requests answered, older than `before` (unix ms):
    /// history is kept for `[fleet] keep_history`, not for ever. Returns
    /// how many of each went.
    pub(crate) fn prune_history(&self, before: i64) -> Result<(usize, usize), StoreError> {
        let events = self
            .conn
            .execute("DELETE FROM events WHERE at < ?1", [before])
            .map_err(|e| self.sql(e))?;
        let requests = self
            .conn
            .execute(
                "DELETE FROM requests WHERE at < ?1 AND state IN ('done', 'failed')",
                [before],
            )
            .map_err(|e| self.sql(e))?;
        Ok((events, requests))
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    fn configure(&mut self) -> Result<(), StoreError> {
        let file = self.file.clone();
        self.conn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| classify(&file, e))?;
        // journal_mode returns the mode it ended in; reading it also proves
        // the file is a database at all.
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| classify(&file, e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Open {
                file,
                reason: format!("could not switch to WAL journaling (got {mode})"),
            });
        }
        self.conn
            .execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")
            .map_err(|e| classify(&file, e))
    }

    fn sql(&self, e: rusqlite::Error) -> StoreError {
        classify(&self.file, e)
    }
}

/// Turns SQLite's error codes into the few cases a user can act on.
fn classify(file: &Path, e: rusqlite::Error) -> StoreError {
    let file = file.to_path_buf();
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            file,
            detail: e.to_string(),
        },
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Busy { file },
        Some(ErrorCode::ReadOnly) => StoreError::ReadOnly {
            file,
            detail: e.to_string(),
        },
        Some(ErrorCode::CannotOpen | ErrorCode::PermissionDenied) => StoreError::Open {
            file,
            reason: e.to_string(),
        },
        _ => StoreError::Sql { file, source: e },
    }
}

/// Milliseconds since the Unix epoch: the store's one time format.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_twice_and_keeps_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("sub/state.db");
        {
            let store = Store::open(&file).expect("first open");
            store
                .record_event(&NewEvent::info("test", "hello"))
                .expect("event");
        }
        let store = Store::open(&file).expect("second open");
        let events = store.events(10).expect("events");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].message, "hello");
    }

    #[test]
    fn history_older_than_the_cut_goes_and_pending_requests_stay() {
        use crate::store::{NewRequest, RequestKind};
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("s.db")).expect("open");
        for message in ["old", "new"] {
            store
                .record_event(&NewEvent::info("test", message))
                .expect("event");
        }
        let ask = |store: &Store| {
            store
                .add_request(&NewRequest {
                    kind: RequestKind::Reconcile,
                    node_id: None,
                    container: None,
                    by: "test".into(),
                })
                .expect("request")
        };
        let (done, pending) = (ask(&store), ask(&store));
        store.finish_request(done, true, "ok").expect("finish");
        store
            .conn
            .execute_batch(
                "UPDATE events SET at = 1000 WHERE message = 'old';
                 UPDATE requests SET at = 1000;",
            )
            .expect("age");
        assert_eq!(store.prune_history(2000).expect("prune"), (1, 1));
        let events = store.events(10).expect("events");
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].message, "new");
        let left: Vec<i64> = store
            .requests(10)
            .expect("requests")
            .iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(left, [pending], "a request not yet answered is kept");
    }

    #[test]
    fn read_only_reads_and_refuses_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("s.db");
        assert!(Store::open_read_only(&file).expect("no error").is_none());
        let writer = Store::open(&file).expect("create");
        writer
            .record_event(&NewEvent::info("test", "hello"))
            .expect("event");
        let reader = Store::open_read_only(&file).expect("open").expect("exists");
        assert_eq!(reader.events(10).expect("read")[0].message, "hello");
        let err = reader
            .record_event(&NewEvent::info("test", "no"))
            .expect_err("read-only");
        assert!(matches!(err, StoreError::ReadOnly { .. }), "{err:?}");
    }

    #[test]
    fn open_existing_does_not_create() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("none.db");
        assert!(Store::open_existing(&file).expect("no error").is_none());
        assert!(!file.exists());
    }

    #[test]
    fn corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("state.db");
        std::fs::write(
            &file,
            b"this is not sqlite, just some text that is long enough to have a header".repeat(100),
        )
        .expect("write");
        let err = Store::open(&file).err().expect("must fail");
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
        assert!(
            err.to_string().contains("not a Prism state database"),
            "{err}"
        );
        assert!(err.to_string().contains(&file.display().to_string()));
    }

    #[test]
    fn unwritable_folder_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A regular file where the folder should be: cannot create anything under it.
        let blocker = dir.path().join("blocker");
        std::fs::write(&blocker, b"").expect("write");
        let err = Store::open(&blocker.join("state.db"))
            .err()
            .expect("must fail");
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        assert!(err.to_string().contains("cannot create folder"), "{err}");
    }

    #[test]
    fn unwritable_location_is_a_clear_error() {
        // procfs refuses new files even to root.
        let file = Path::new("/proc/self/prism-state.db");
        let err = Store::open(file).err().expect("must fail");
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
        assert!(
            err.to_string().contains("/proc/self/prism-state.db"),
            "{err}"
        );
    }

    #[test]
    fn busy_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("state.db");
        drop(Store::open(&file).expect("create"));
        // Another process holds an exclusive lock on the file.
        let holder = Connection::open(&file).expect("open");
        holder
            .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;")
            .expect("lock");
        let started = std::time::Instant::now();
        let err = Store::open(&file).err().expect("must fail while locked");
        assert!(matches!(err, StoreError::Busy { .. }), "{err:?}");
        assert!(
            started.elapsed() >= Duration::from_secs(4),
            "waited for the busy timeout"
        );
        assert!(err.to_string().contains("locked by another process"));
    }
}
