//! Prism's own health checks, as counted: per container, the consecutive
//! passes and failures and the verdict they add up to. The checks run in
//! `operator::health`; the counting rules live here, in [`Tally::after`].

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ValueRef};
use rusqlite::{OptionalExtension, Row, TransactionBehavior, params};
use serde::Serialize;

use super::{Store, StoreError};

/// What the checks say of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Not yet `healthy_threshold` passes in a row since it started.
    Starting,
    Healthy,
    /// `unhealthy_threshold` failures in a row, outside the start period.
    Unhealthy,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Starting => "starting",
            Verdict::Healthy => "healthy",
            Verdict::Unhealthy => "unhealthy",
        }
    }

    pub fn parse(s: &str) -> Option<Verdict> {
        match s {
            "starting" => Some(Verdict::Starting),
            "healthy" => Some(Verdict::Healthy),
            "unhealthy" => Some(Verdict::Unhealthy),
            _ => None,
        }
    }
}

impl FromSql for Verdict {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let s = value.as_str()?;
        Verdict::parse(s)
            .ok_or_else(|| FromSqlError::Other(format!("unknown verdict {s:?}").into()))
    }
}

/// When results become a verdict: a service's `health` in fleet.toml.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// Passes in a row that make a container healthy (at least 1).
    pub healthy: u32,
    /// Failures in a row that make it unhealthy (at least 1).
    pub unhealthy: u32,
    /// Failures this many milliseconds after the container started do not
    /// count (slow boots are not failures).
    pub start_period_ms: i64,
}

/// Consecutive results and the verdict they add up to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub successes: u32,
    pub failures: u32,
    pub verdict: Verdict,
}

impl Tally {
    /// A container not checked since it started.
    pub const NEW: Tally = Tally {
        successes: 0,
        failures: 0,
        verdict: Verdict::Starting,
    };

    /// The tally after one more result. The verdict only moves when a run
    /// reaches its threshold: a healthy container stays healthy through
    /// fewer failures than `unhealthy`, an unhealthy one stays unhealthy
    /// until `healthy` passes in a row. A failure in the start period does
    /// not count, but still breaks a run of passes.
    pub fn after(self, passed: bool, in_start_period: bool, t: Thresholds) -> Tally {
        if passed {
            let successes = self.successes.saturating_add(1);
            Tally {
                successes,
                failures: 0,
                verdict: if successes >= t.healthy.max(1) {
                    Verdict::Healthy
                } else {
                    self.verdict
                },
            }
        } else if in_start_period {
            Tally {
                successes: 0,
                ..self
            }
        } else {
            let failures = self.failures.saturating_add(1);
            Tally {
                successes: 0,
                failures,
                verdict: if failures >= t.unhealthy.max(1) {
                    Verdict::Unhealthy
                } else {
                    self.verdict
                },
            }
        }
    }
}

/// The container a check result is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked<'a> {
    pub container_id: &'a str,
    pub node_id: &'a str,
    pub app: &'a str,
    pub service: &'a str,
    pub instance: u32,
    /// When the container last started (unix ms). A different start than
    /// the record's means it restarted: the count begins anew.
    pub started_at: Option<i64>,
}

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    pub passed: bool,
    /// When the check ran (unix ms).
    pub at: i64,
    /// What it saw, short: `GET /up: 503`, `connect …: connection refused`.
    pub detail: String,
}

/// A container's check record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthRecord {
    pub container_id: String,
    pub node_id: String,
    pub app: String,
    pub service: String,
    pub instance: u32,
    pub started_at: Option<i64>,
    pub successes: u32,
    pub failures: u32,
    pub verdict: Verdict,
    /// `None` after a reset: check it now.
    pub last_check: Option<i64>,
    pub last_ok: Option<bool>,
    pub detail: Option<String>,
}

impl HealthRecord {
    fn tally(&self) -> Tally {
        Tally {
            successes: self.successes,
            failures: self.failures,
            verdict: self.verdict,
        }
    }
}

/// What recording a result did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The verdict before this result; `None` for a container new to the
    /// record (or newly started).
    pub before: Option<Verdict>,
    pub record: HealthRecord,
}

impl Recorded {
    /// The verdict changed with this result (a new container's first
    /// `starting` is no change).
    pub fn changed(&self) -> bool {
        self.before.unwrap_or(Verdict::Starting) != self.record.verdict
    }
}

const COLUMNS: &str = "container_id, node_id, app, service, instance, started_at, successes, \
     failures, verdict, last_check, last_ok, detail";

fn from_row(r: &Row<'_>) -> rusqlite::Result<HealthRecord> {
    Ok(HealthRecord {
        container_id: r.get(0)?,
        node_id: r.get(1)?,
        app: r.get(2)?,
        service: r.get(3)?,
        instance: r.get(4)?,
        started_at: r.get(5)?,
        successes: r.get(6)?,
        failures: r.get(7)?,
        verdict: r.get(8)?,
        last_check: r.get(9)?,
        last_ok: r.get(10)?,
        detail: r.get(11)?,
    })
}

impl Store {
    /// Counts one check result and returns the container's record after
    /// it. A container without a record, or that started again since its
    /// record was made, starts from [`Tally::NEW`].
    pub fn record_check(
        &mut self,
        c: &Checked<'_>,
        outcome: &CheckOutcome,
        t: Thresholds,
    ) -> Result<Recorded, StoreError> {
        let file = self.file.clone();
        let err = |e| super::classify(&file, e);
        // Immediate: a read then a write, safe against another process.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let previous = tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM health WHERE container_id = ?1"),
                [c.container_id],
                from_row,
            )
            .optional()
            .map_err(err)?
            .filter(|p| p.started_at == c.started_at);
        let before = previous.as_ref().map(|p| p.verdict);
        let tally = previous.as_ref().map_or(Tally::NEW, HealthRecord::tally);
        let in_start_period = c
            .started_at
            .is_some_and(|s| outcome.at < s.saturating_add(t.start_period_ms));
        let tally = tally.after(outcome.passed, in_start_period, t);
        let record = HealthRecord {
            container_id: c.container_id.to_owned(),
            node_id: c.node_id.to_owned(),
            app: c.app.to_owned(),
            service: c.service.to_owned(),
            instance: c.instance,
            started_at: c.started_at,
            successes: tally.successes,
            failures: tally.failures,
            verdict: tally.verdict,
            last_check: Some(outcome.at),
            last_ok: Some(outcome.passed),
            detail: Some(outcome.detail.clone()),
        };
        tx.execute(
            &format!(
                "INSERT OR REPLACE INTO health ({COLUMNS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
            ),
            params![
                record.container_id,
                record.node_id,
                record.app,
                record.service,
                record.instance,
                record.started_at,
                record.successes,
                record.failures,
                record.verdict.as_str(),
                record.last_check,
                record.last_ok,
                record.detail,
            ],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Recorded { before, record })
    }

    /// Starts a container's count over (after Prism restarted it): it is
    /// `starting` and due for a check at once. Returns whether it had a
    /// record.
    pub fn reset_health(&self, container_id: &str) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute(
                "UPDATE health SET successes = 0, failures = 0, verdict = 'starting',
                   last_check = NULL, last_ok = NULL, detail = NULL
                 WHERE container_id = ?1",
                [container_id],
            )
            .map_err(|e| self.sql(e))?;
        Ok(n > 0)
    }

    pub fn health_record(&self, container_id: &str) -> Result<Option<HealthRecord>, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM health WHERE container_id = ?1"),
                [container_id],
                from_row,
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// Every check record, by app, instance, service and node.
    pub fn health_records(&self) -> Result<Vec<HealthRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM health ORDER BY app, instance, service, node_id, container_id"
            ))
            .map_err(|e| self.sql(e))?;
        let rows = stmt.query_map([], from_row).map_err(|e| self.sql(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.sql(e))
    }

    /// Drops the records of containers that are gone: every record of a
    /// node not in `nodes` (no longer in the inventory), and on each node
    /// in `seen` (its containers read this pass) those not listed. Nodes
    /// in `nodes` but not in `seen` (unreachable this pass) keep theirs.
    /// Returns how many went.
    pub fn prune_health(
        &mut self,
        nodes: &BTreeSet<String>,
        seen: &BTreeMap<String, BTreeSet<String>>,
    ) -> Result<usize, StoreError> {
        let file = self.file.clone();
        let err = |e| super::classify(&file, e);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err)?;
        let gone: Vec<String> = {
            let mut stmt = tx
                .prepare("SELECT container_id, node_id FROM health")
                .map_err(err)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(err)?;
            let mut gone = Vec::new();
            for row in rows {
                let (container, node) = row.map_err(err)?;
                let keep = nodes.contains(&node)
                    && seen.get(&node).is_none_or(|ids| ids.contains(&container));
                if !keep {
                    gone.push(container);
                }
            }
            gone
        };
        for id in &gone {
            tx.execute("DELETE FROM health WHERE container_id = ?1", [id])
                .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(gone.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Verdict::{Healthy as H, Starting as S, Unhealthy as U};

    const T: Thresholds = Thresholds {
        healthy: 2,
        unhealthy: 3,
        start_period_ms: 0,
    };

    /// The verdicts after each result in turn, from a new container.
    fn run(results: &[bool], t: Thresholds) -> Vec<Verdict> {
        let mut tally = Tally::NEW;
        results
            .iter()
            .map(|&passed| {
                tally = tally.after(passed, false, t);
                tally.verdict
            })
            .collect()
    }

    #[test]
    fn healthy_after_healthy_threshold_passes_in_a_row() {
        assert_eq!(run(&[true, true, true], T), [S, H, H]);
        // A failure breaks the run of passes.
        assert_eq!(run(&[true, false, true, true], T), [S, S, S, H]);
    }

    #[test]
    fn unhealthy_after_unhealthy_threshold_failures_in_a_row() {
        assert_eq!(run(&[false, false, false], T), [S, S, U]);
        assert_eq!(run(&[true, true, false, false, false], T), [S, H, H, H, U]);
        // A pass breaks the run of failures, and the verdict holds.
        assert_eq!(
            run(&[true, true, false, false, true, false, false], T),
            [S, H, H, H, H, H, H]
        );
    }

    #[test]
    fn an_unhealthy_container_needs_the_full_run_of_passes_back() {
        assert_eq!(
            run(&[false, false, false, true, false, true, true], T),
            [S, S, U, U, U, U, H]
        );
    }

    #[test]
    fn thresholds_of_one_and_zero_judge_each_result() {
        let one = Thresholds {
            healthy: 1,
            unhealthy: 1,
            start_period_ms: 0,
        };
        assert_eq!(run(&[true, false, true], one), [H, U, H]);
        let zero = Thresholds {
            healthy: 0,
            unhealthy: 0,
            start_period_ms: 0,
        };
        assert_eq!(run(&[false, true], zero), [U, H]);
    }

    #[test]
    fn failures_in_the_start_period_do_not_count_but_break_a_run() {
        let t = Tally::NEW.after(false, true, T).after(false, true, T);
        assert_eq!(t, Tally::NEW);
        let t = Tally::NEW.after(true, true, T);
        assert_eq!((t.successes, t.verdict), (1, S));
        let t = t.after(false, true, T);
        assert_eq!((t.successes, t.failures, t.verdict), (0, 0, S));
        // Passes in the start period count.
        let t = t.after(true, true, T).after(true, true, T);
        assert_eq!(t.verdict, H);
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("s.db")).expect("open");
        (dir, store)
    }

    fn checked(id: &'static str, node: &'static str, started_at: i64) -> Checked<'static> {
        Checked {
            container_id: id,
            node_id: node,
            app: "blog",
            service: "web",
            instance: 0,
            started_at: Some(started_at),
        }
    }

    fn outcome(passed: bool, at: i64) -> CheckOutcome {
        CheckOutcome {
            passed,
            at,
            detail: if passed {
                "GET /up: 200"
            } else {
                "GET /up: 503"
            }
            .into(),
        }
    }

    #[test]
    fn results_are_counted_per_container_and_kept() {
        let (_d, mut store) = store();
        let c = checked("c1", "i-1", 1_000);
        let first = store.record_check(&c, &outcome(true, 2_000), T).expect("1");
        assert_eq!(first.before, None);
        assert!(!first.changed(), "a new container starts as starting");
        assert_eq!(first.record.verdict, S);
        let second = store.record_check(&c, &outcome(true, 3_000), T).expect("2");
        assert_eq!(second.before, Some(S));
        assert!(second.changed());
        assert_eq!(second.record.verdict, H);
        assert_eq!(second.record.successes, 2);
        // Another container counts on its own.
        let other = store
            .record_check(&checked("c2", "i-1", 1_000), &outcome(false, 3_000), T)
            .expect("other");
        assert_eq!((other.record.failures, other.record.verdict), (1, S));

        let stored = store.health_record("c1").expect("read").expect("there");
        assert_eq!(stored, second.record);
        assert_eq!(stored.last_check, Some(3_000));
        assert_eq!(stored.last_ok, Some(true));
        assert_eq!(stored.detail.as_deref(), Some("GET /up: 200"));
        let all: Vec<_> = store
            .health_records()
            .expect("all")
            .into_iter()
            .map(|r| (r.container_id, r.verdict))
            .collect();
        assert_eq!(all, [("c1".to_owned(), H), ("c2".to_owned(), S)]);
    }

    #[test]
    fn a_new_start_begins_the_count_anew() {
        let (_d, mut store) = store();
        for at in [2_000, 3_000, 4_000] {
            store
                .record_check(&checked("c1", "i-1", 1_000), &outcome(false, at), T)
                .expect("fail");
        }
        assert_eq!(store.health_record("c1").expect("r").expect("s").verdict, U);
        // Docker (or Prism) restarted it.
        let after = store
            .record_check(&checked("c1", "i-1", 5_000), &outcome(false, 6_000), T)
            .expect("restarted");
        assert_eq!(after.before, None);
        assert_eq!((after.record.failures, after.record.verdict), (1, S));
    }

    #[test]
    fn failures_in_the_start_period_are_not_counted() {
        let (_d, mut store) = store();
        let t = Thresholds {
            start_period_ms: 10_000,
            ..T
        };
        let c = checked("c1", "i-1", 1_000);
        for at in [2_000, 5_000, 10_999] {
            let r = store
                .record_check(&c, &outcome(false, at), t)
                .expect("early");
            assert_eq!((r.record.failures, r.record.verdict), (0, S), "at {at}");
            assert_eq!(r.record.last_ok, Some(false));
        }
        for (at, want) in [(11_000, 1), (12_000, 2)] {
            let r = store
                .record_check(&c, &outcome(false, at), t)
                .expect("late");
            assert_eq!(r.record.failures, want);
        }
        let r = store
            .record_check(&c, &outcome(false, 13_000), t)
            .expect("3");
        assert_eq!(r.record.verdict, U);
    }

    #[test]
    fn reset_makes_a_container_starting_and_due() {
        let (_d, mut store) = store();
        let c = checked("c1", "i-1", 1_000);
        for at in [2_000, 3_000] {
            store.record_check(&c, &outcome(true, at), T).expect("pass");
        }
        assert!(store.reset_health("c1").expect("reset"));
        let r = store.health_record("c1").expect("read").expect("kept");
        assert_eq!(
            (r.successes, r.failures, r.verdict, r.last_check, r.detail),
            (0, 0, S, None, None)
        );
        assert!(!store.reset_health("unknown").expect("reset"));
        // One pass after the reset is not yet healthy.
        let next = store.record_check(&c, &outcome(true, 9_000), T).expect("1");
        assert_eq!((next.before, next.record.verdict), (Some(S), S));
    }

    #[test]
    fn prune_drops_gone_containers_and_nodes_but_keeps_unread_nodes() {
        let (_d, mut store) = store();
        for (id, node) in [("a", "i-1"), ("b", "i-1"), ("c", "i-2"), ("d", "i-3")] {
            store
                .record_check(&checked(id, node, 1), &outcome(true, 2), T)
                .expect("record");
        }
        let nodes: BTreeSet<String> = ["i-1", "i-2"].map(String::from).into();
        // i-1 was read and runs only `a`; i-2 was not reached this pass;
        // i-3 left the inventory.
        let seen = BTreeMap::from([("i-1".to_owned(), BTreeSet::from(["a".to_owned()]))]);
        assert_eq!(store.prune_health(&nodes, &seen).expect("prune"), 2);
        let left: Vec<_> = store
            .health_records()
            .expect("all")
            .into_iter()
            .map(|r| r.container_id)
            .collect();
        assert_eq!(left, ["a", "c"]);
    }
}
