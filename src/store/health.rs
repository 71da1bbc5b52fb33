//! Prism's own health checks, as counted: per container, the consecutive
//! passes and failures and the verdict they add up to. The checks run in
//! `operator::health`; the counting rules live here, in [`Tally::after`].

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{Row, params};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// What the checks say of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
pub(crate) struct Tally {
    pub successes: u32,
    pub failures: u32,
    pub verdict: Verdict,
}

impl Tally {
    /// A container not checked since it started.
    pub(crate) const NEW: Tally = Tally {
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

impl HealthRecord {
    /// The record after one more result for container `c`, counted on
    /// `previous` (its record before, if any). A container without a
    /// record, or that started again since, starts from [`Tally::NEW`].
    pub fn counted(
        previous: Option<&HealthRecord>,
        c: &Checked<'_>,
        outcome: &CheckOutcome,
        t: Thresholds,
    ) -> Recorded {
        let previous = previous.filter(|p| p.started_at == c.started_at);
        let before = previous.map(|p| p.verdict);
        let tally = previous.map_or(Tally::NEW, HealthRecord::tally);
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
        Recorded { before, record }
    }

    /// The count started over (after Prism restarted the container): it is
    /// `starting` and due for a check at once.
    pub fn reset(&mut self) {
        self.successes = 0;
        self.failures = 0;
        self.verdict = Verdict::Starting;
        self.last_check = None;
        self.last_ok = None;
        self.detail = None;
    }
}

impl Store {
    /// Writes a container's record as counted ([`HealthRecord::counted`]).
    pub(crate) fn put_health(&self, record: &HealthRecord) -> Result<(), StoreError> {
        self.conn
            .execute(
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
                    record.verdict,
                    record.last_check,
                    record.last_ok,
                    record.detail,
                ],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Drops the records of these containers.
    pub(crate) fn remove_health(&mut self, ids: &[String]) -> Result<(), StoreError> {
        let file = self.file.clone();
        let err = |e| super::classify(&file, e);
        let tx = self.conn.transaction().map_err(err)?;
        for id in ids {
            tx.execute("DELETE FROM health WHERE container_id = ?1", [id])
                .map_err(err)?;
        }
        tx.commit().map_err(err)
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
}

/// The check records the applier keeps in memory, by container id: what
/// each pass counts on. Written through to the store as they change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthBook(BTreeMap<String, HealthRecord>);

impl HealthBook {
    pub fn new(records: Vec<HealthRecord>) -> HealthBook {
        HealthBook(
            records
                .into_iter()
                .map(|r| (r.container_id.clone(), r))
                .collect(),
        )
    }

    pub fn get(&self, container_id: &str) -> Option<&HealthRecord> {
        self.0.get(container_id)
    }

    /// Counts one result ([`HealthRecord::counted`]) and keeps the record.
    pub fn count(&mut self, c: &Checked<'_>, outcome: &CheckOutcome, t: Thresholds) -> Recorded {
        let recorded = HealthRecord::counted(self.0.get(c.container_id), c, outcome, t);
        self.0
            .insert(c.container_id.to_owned(), recorded.record.clone());
        recorded
    }

    /// Starts a container's count over; its record, if it had one.
    pub fn reset(&mut self, container_id: &str) -> Option<HealthRecord> {
        let record = self.0.get_mut(container_id)?;
        record.reset();
        Some(record.clone())
    }

    /// Drops the records of containers that are gone: every record of a
    /// node not in `nodes` (no longer in the inventory), and on each node
    /// in `seen` (its containers read this pass) those not listed. Nodes
    /// in `nodes` but not in `seen` (unreachable this pass) keep theirs.
    /// Returns the ids dropped.
    pub(crate) fn prune(
        &mut self,
        nodes: &BTreeSet<String>,
        seen: &BTreeMap<String, BTreeSet<String>>,
    ) -> Vec<String> {
        let gone: Vec<String> = self
            .0
            .values()
            .filter(|r| {
                !(nodes.contains(&r.node_id)
                    && seen
                        .get(&r.node_id)
                        .is_none_or(|ids| ids.contains(&r.container_id)))
            })
            .map(|r| r.container_id.clone())
            .collect();
        for id in &gone {
            self.0.remove(id);
        }
        gone
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
        let mut store = HealthBook::default();
        let c = checked("c1", "i-1", 1_000);
        let first = store.count(&c, &outcome(true, 2_000), T);
        assert_eq!(first.before, None);
        assert!(!first.changed(), "a new container starts as starting");
        assert_eq!(first.record.verdict, S);
        let second = store.count(&c, &outcome(true, 3_000), T);
        assert_eq!(second.before, Some(S));
        assert!(second.changed());
        assert_eq!(second.record.verdict, H);
        assert_eq!(second.record.successes, 2);
        // Another container counts on its own.
        let other = store.count(&checked("c2", "i-1", 1_000), &outcome(false, 3_000), T);
        assert_eq!((other.record.failures, other.record.verdict), (1, S));

        let stored = store.get("c1").expect("there").clone();
        assert_eq!(stored, second.record);
        assert_eq!(stored.last_check, Some(3_000));
        assert_eq!(stored.last_ok, Some(true));
        assert_eq!(stored.detail.as_deref(), Some("GET /up: 200"));
        let all: Vec<_> = ["c1", "c2"]
            .iter()
            .map(|id| (id.to_string(), store.get(id).expect("kept").verdict))
            .collect();
        assert_eq!(all, [("c1".to_owned(), H), ("c2".to_owned(), S)]);
    }

    #[test]
    fn a_new_start_begins_the_count_anew() {
        let mut store = HealthBook::default();
        for at in [2_000, 3_000, 4_000] {
            store.count(&checked("c1", "i-1", 1_000), &outcome(false, at), T);
        }
        assert_eq!(store.get("c1").expect("kept").verdict, U);
        // Docker (or Prism) restarted it.
        let after = store.count(&checked("c1", "i-1", 5_000), &outcome(false, 6_000), T);
        assert_eq!(after.before, None);
        assert_eq!((after.record.failures, after.record.verdict), (1, S));
    }

    #[test]
    fn failures_in_the_start_period_are_not_counted() {
        let mut store = HealthBook::default();
        let t = Thresholds {
            start_period_ms: 10_000,
            ..T
        };
        let c = checked("c1", "i-1", 1_000);
        for at in [2_000, 5_000, 10_999] {
            let r = store.count(&c, &outcome(false, at), t);
            assert_eq!((r.record.failures, r.record.verdict), (0, S), "at {at}");
            assert_eq!(r.record.last_ok, Some(false));
        }
        for (at, want) in [(11_000, 1), (12_000, 2)] {
            let r = store.count(&c, &outcome(false, at), t);
            assert_eq!(r.record.failures, want);
        }
        let r = store.count(&c, &outcome(false, 13_000), t);
        assert_eq!(r.record.verdict, U);
    }

    #[test]
    fn reset_makes_a_container_starting_and_due() {
        let mut store = HealthBook::default();
        let c = checked("c1", "i-1", 1_000);
        for at in [2_000, 3_000] {
            store.count(&c, &outcome(true, at), T);
        }
        let r = store.reset("c1").expect("had a record");
        assert_eq!(store.get("c1"), Some(&r));
        assert_eq!(
            (r.successes, r.failures, r.verdict, r.last_check, r.detail),
            (0, 0, S, None, None)
        );
        assert!(store.reset("unknown").is_none());
        // One pass after the reset is not yet healthy.
        let next = store.count(&c, &outcome(true, 9_000), T);
        assert_eq!((next.before, next.record.verdict), (Some(S), S));
    }

    #[test]
    fn prune_drops_gone_containers_and_nodes_but_keeps_unread_nodes() {
        let mut store = HealthBook::default();
        for (id, node) in [("a", "i-1"), ("b", "i-1"), ("c", "i-2"), ("d", "i-3")] {
            store.count(&checked(id, node, 1), &outcome(true, 2), T);
        }
        let nodes: BTreeSet<String> = ["i-1", "i-2"].map(String::from).into();
        // i-1 was read and runs only `a`; i-2 was not reached this pass;
        // i-3 left the inventory.
        let seen = BTreeMap::from([("i-1".to_owned(), BTreeSet::from(["a".to_owned()]))]);
        assert_eq!(store.prune(&nodes, &seen), ["b", "d"]);
        let left: Vec<_> = ["a", "b", "c", "d"]
            .into_iter()
            .filter(|id| store.get(id).is_some())
            .collect();
        assert_eq!(left, ["a", "c"]);
    }

    #[test]
    fn records_are_written_read_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut store = Store::open(&dir.path().join("s.db")).expect("open");
        let mut book = HealthBook::default();
        for (id, passed) in [("c1", true), ("c2", false)] {
            let r = book.count(&checked(id, "i-1", 1_000), &outcome(passed, 2_000), T);
            store.put_health(&r.record).expect("put");
        }
        let read = HealthBook::new(store.health_records().expect("read"));
        assert_eq!(read, book);
        store.remove_health(&["c1".to_owned()]).expect("remove");
        let ids: Vec<String> = store
            .health_records()
            .expect("read")
            .into_iter()
            .map(|r| r.container_id)
            .collect();
        assert_eq!(ids, ["c2"]);
    }
}
