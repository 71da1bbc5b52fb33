//! Waiting for a change to roll out: read from the state file the applier
//! keeps (containers as last observed, health verdicts), until every pod
//! of the app runs what fleet.toml now asks for, healthy, with nothing of
//! the old left (the applier stops an old container only once its
//! replacement is healthy and routed: make before break). A change whose
//! new containers turn unhealthy, or are not there in time, failed; with
//! the app's `rollback_on_failure` the file comes back as it was.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::edit::{Recorded, RolloutError, record};
use crate::config::{self, App, Edit};
use crate::reconcile::NodeState;
use crate::store::{ContainerRecord, HealthRecord, Store, Verdict, hostname, now_ms};

/// How often the state file is read while waiting.
const POLL: Duration = Duration::from_secs(1);

/// Where one app's rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Not there yet, and why (the first pod found lacking).
    Pending(String),
    Ready,
    /// It cannot get there: a new container failed.
    Failed(String),
}

/// How a waited-for change ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Every pod runs the change, healthy and routed.
    Done,
    /// It did not roll out and stays in fleet.toml (no rollback asked).
    Failed { why: String },
    /// It did not roll out; the app's previous content is back in
    /// fleet.toml as change `id`, and runs again when `settled`.
    RolledBack { why: String, id: i64, settled: bool },
}

impl Outcome {
    pub fn ok(&self) -> bool {
        matches!(self, Outcome::Done)
    }
}

/// What the applier last recorded, as a wait reads it.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub containers: Vec<ContainerRecord>,
    pub health: Vec<HealthRecord>,
    /// Nodes that may run containers now: the rows of a node lost or gone
    /// are what it ran then, not what runs.
    pub live: BTreeSet<String>,
}

/// A container's start, by its node's clock, counts as after a change made
/// this long before it (clocks a little apart).
const SKEW_MS: i64 = 5_000;

/// Where `app` (as `spec` asks, `None`: removed) stands in what the
/// applier last recorded; only containers started after `since` (unix ms,
/// the change) can fail it.
pub fn progress(app: &str, spec: Option<&App>, seen: &Seen, since: i64) -> Progress {
    let health = &seen.health;
    let mine: Vec<&ContainerRecord> = seen
        .containers
        .iter()
        .filter(|c| c.app == app && seen.live.contains(&c.node_id))
        .collect();
    let Some(spec) = spec else {
        return match mine.first() {
            Some(c) => Progress::Pending(format!("{} still runs on {}", c.name, c.node_id)),
            None => Progress::Ready,
        };
    };
    let verdict = |c: &ContainerRecord| {
        health
            .iter()
            .find(|h| {
                h.node_id == c.node_id
                    && h.app == c.app
                    && h.service == c.service
                    && h.instance == c.instance
                    && h.started_at == c.started_at
            })
            .map(|h| (h.verdict, h.detail.as_deref().unwrap_or("no detail")))
    };
    for (name, svc) in &spec.services {
        // A new container that failed decides it, old ones beside it or
        // not; one that ran before the change is none of its doing.
        for c in mine.iter().filter(|c| {
            &c.service == name
                && c.image == svc.image
                && c.started_at
                    .is_some_and(|t| t >= since.saturating_sub(SKEW_MS))
        }) {
            let pod = format!("{app}/{name}/{}", c.instance);
            if c.state != "running" && c.restarts >= 3 {
                return Progress::Failed(format!(
                    "{pod} keeps stopping ({}, {} restarts)",
                    c.state, c.restarts
                ));
            }
            if svc.health.is_some()
                && let Some((Verdict::Unhealthy, detail)) = verdict(c)
            {
                return Progress::Failed(format!(
                    "{pod} on {} failed its health check ({detail})",
                    c.node_id
                ));
            }
        }
        for c in mine.iter().filter(|c| &c.service == name) {
            if c.instance >= spec.instances {
                return Progress::Pending(format!("{} is still to be removed", c.name));
            }
            if c.image != svc.image {
                return Progress::Pending(format!("{} still runs {}", c.name, c.image));
            }
        }
        for instance in 0..spec.instances {
            let pod = format!("{app}/{name}/{instance}");
            let Some(c) = mine
                .iter()
                .find(|c| &c.service == name && c.instance == instance)
            else {
                return Progress::Pending(format!("{pod} has no container yet"));
            };
            if c.state != "running" {
                return Progress::Pending(format!("{pod} is {}", c.state));
            }
            if svc.health.is_some() && !matches!(verdict(c), Some((Verdict::Healthy, _))) {
                return Progress::Pending(format!("{pod} is not healthy yet"));
            }
        }
    }
    Progress::Ready
}

/// Follows one app in the state file.
pub struct Watch {
    pub file: PathBuf,
    pub state: PathBuf,
    pub app: String,
    pub timeout: Duration,
    /// Recorded as the author of a rollback after a failure.
    pub who: String,
}

impl Watch {
    /// Waits for `change` to roll out; when it fails and the app asks for
    /// it, puts the app back and waits for that too.
    pub async fn wait(&self, change: &Recorded) -> Result<Outcome, RolloutError> {
        let spec = self.spec(&change.after)?;
        let why = match self.until_ready(spec.as_ref(), change.at).await {
            Ok(()) => return Ok(Outcome::Done),
            Err(why) => why,
        };
        if !spec.as_ref().is_none_or(|a| a.rollback_on_failure) {
            return Ok(Outcome::Failed { why });
        }
        let edit = Edit::Restore {
            app: self.app.clone(),
            from: change.before.clone(),
        };
        let words = format!("rollback of #{} (it did not roll out)", change.id);
        let back = {
            let (file, state, who) = (self.file.clone(), self.state.clone(), self.who.clone());
            let after = change.after.clone();
            // Only while the app is as the change left it: a newer change
            // (by hand or another deploy) is never undone.
            tokio::task::spawn_blocking(move || {
                record(&file, &state, &edit, &words, &who, Some(&after))
            })
            .await
            .map_err(|e| RolloutError::Conflict(format!("the rollback did not finish: {e}")))?
        };
        let back = match back {
            Ok(back) => back,
            Err(RolloutError::Superseded { app }) => {
                return Ok(Outcome::Failed {
                    why: format!("{why}; not rolled back: {app} changed in fleet.toml since"),
                });
            }
            Err(e) => return Err(e),
        };
        let settled = self
            .until_ready(self.spec(&back.after)?.as_ref(), back.at)
            .await;
        Ok(Outcome::RolledBack {
            why,
            id: back.id,
            settled: settled.is_ok(),
        })
    }

    /// The app as `text` (a fleet.toml) asks for it.
    fn spec(&self, text: &str) -> Result<Option<App>, RolloutError> {
        let fleet = config::parse(&self.file, text).map_err(config::ConfigError::Invalid)?;
        Ok(fleet.apps.get(&self.app).cloned())
    }

    /// Until `spec` runs, or why not within the timeout; `since`: when the
    /// change was made.
    async fn until_ready(&self, spec: Option<&App>, since: i64) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let state = self.state.clone();
            let read = tokio::task::spawn_blocking(move || -> Result<_, String> {
                let store = Store::open_read_only(&state).map_err(|e| e.to_string())?;
                let Some(store) = store else {
                    return Ok((Seen::default(), None));
                };
                let live = store
                    .nodes()
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .filter(|n| !matches!(n.state, NodeState::Lost | NodeState::Gone))
                    .map(|n| n.id)
                    .collect();
                let seen = Seen {
                    containers: store.containers().map_err(|e| e.to_string())?,
                    health: store.health_records().map_err(|e| e.to_string())?,
                    live,
                };
                let lock = store.lock_info().map_err(|e| e.to_string())?;
                Ok((seen, lock))
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            let last = match read {
                Ok((seen, lock)) => {
                    let why = match progress(&self.app, spec, &seen, since) {
                        Progress::Ready => return Ok(()),
                        Progress::Failed(why) => return Err(why),
                        Progress::Pending(why) => why,
                    };
                    if lock.is_some_and(|l| l.alive(&hostname(), now_ms())) {
                        why
                    } else {
                        format!(
                            "{why}; no applier holds the state file (is `prism daemon` running?)"
                        )
                    }
                }
                Err(e) => format!("cannot read the state file: {e}"),
            };
            if tokio::time::Instant::now() + POLL > deadline {
                return Err(format!(
                    "not rolled out within {}: {last}",
                    humantime::format_duration(self.timeout)
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const FLEET: &str = "[fleet]\nname = \"t\"\n[discovery]\nprovider = \"static\"\nnodes = [{ name = \"a\", address = \"10.0.0.5\" }]\n[apps.blog]\ninstances = 2\n[apps.blog.services.web]\nimage = \"blog:2\"\nport = 80\nhealth = { http = \"/up\" }\n[apps.blog.services.worker]\nimage = \"blog:2\"\n";

    fn seen(containers: &[ContainerRecord], health: &[HealthRecord]) -> Seen {
        Seen {
            containers: containers.to_vec(),
            health: health.to_vec(),
            live: ["i-1".to_owned()].into(),
        }
    }

    fn spec() -> App {
        let fleet = config::parse(Path::new("fleet.toml"), FLEET).expect("valid");
        fleet.apps["blog"].clone()
    }

    fn container(service: &str, instance: u32, image: &str) -> ContainerRecord {
        ContainerRecord {
            node_id: "i-1".into(),
            name: format!("prism-blog-{service}-{instance}"),
            app: "blog".into(),
            service: service.into(),
            instance,
            image: image.into(),
            state: "running".into(),
            health: None,
            restarts: 0,
            ports: String::new(),
            started_at: Some(10),
            spec_hash: None,
            observed_at: 11,
        }
    }

    fn verdict(instance: u32, verdict: Verdict) -> HealthRecord {
        HealthRecord {
            container_id: format!("c{instance}"),
            node_id: "i-1".into(),
            app: "blog".into(),
            service: "web".into(),
            instance,
            started_at: Some(10),
            successes: 0,
            failures: 0,
            verdict,
            last_check: Some(12),
            last_ok: Some(verdict == Verdict::Healthy),
            detail: Some("GET /up: 503".into()),
        }
    }

    #[test]
    fn ready_only_when_every_pod_runs_the_new_image_healthy_and_nothing_old_is_left() {
        let spec = spec();
        let new = vec![
            container("web", 0, "blog:2"),
            container("web", 1, "blog:2"),
            container("worker", 0, "blog:2"),
            container("worker", 1, "blog:2"),
        ];
        let healthy = vec![verdict(0, Verdict::Healthy), verdict(1, Verdict::Healthy)];
        assert_eq!(
            progress("blog", Some(&spec), &seen(&new, &healthy), 0),
            Progress::Ready
        );
        // An old container still beside the new one: not yet.
        let mut old = new.clone();
        old.push(container("web", 1, "blog:1"));
        assert!(matches!(
            progress("blog", Some(&spec), &seen(&old, &healthy), 0),
            Progress::Pending(why) if why.contains("still runs blog:1")
        ));
        // A pod without a container, or not healthy yet.
        assert!(matches!(
            progress("blog", Some(&spec), &seen(&new[1..], &healthy), 0),
            Progress::Pending(why) if why.contains("blog/web/0 has no container")
        ));
        let starting = vec![verdict(0, Verdict::Healthy), verdict(1, Verdict::Starting)];
        assert!(matches!(
            progress("blog", Some(&spec), &seen(&new, &starting), 0),
            Progress::Pending(why) if why.contains("blog/web/1 is not healthy")
        ));
        // A verdict of an earlier start of the container does not count.
        let mut earlier = verdict(1, Verdict::Healthy);
        earlier.started_at = Some(5);
        assert!(matches!(
            progress(
                "blog",
                Some(&spec),
                &seen(&new, &[verdict(0, Verdict::Healthy), earlier]),
                0
            ),
            Progress::Pending(_)
        ));
        // Scaling down: the extra pod must go.
        let mut extra = new.clone();
        extra.push(container("worker", 2, "blog:2"));
        assert!(matches!(
            progress("blog", Some(&spec), &seen(&extra, &healthy), 0),
            Progress::Pending(why) if why.contains("worker-2 is still to be removed")
        ));
        // Other apps' containers are none of its business.
        let mut other = new.clone();
        other.push(ContainerRecord {
            app: "shop".into(),
            ..container("web", 0, "shop:1")
        });
        assert_eq!(
            progress("blog", Some(&spec), &seen(&other, &healthy), 0),
            Progress::Ready
        );
    }

    #[test]
    fn an_unhealthy_or_crashing_new_container_fails_and_a_removed_app_is_ready_when_gone() {
        let spec = spec();
        let new = vec![container("web", 0, "blog:2"), container("web", 1, "blog:2")];
        assert!(matches!(
            progress("blog", Some(&spec), &seen(&new, &[verdict(0, Verdict::Unhealthy)]), 0),
            Progress::Failed(why) if why.contains("blog/web/0 on i-1 failed its health check (GET /up: 503)")
        ));
        // Beside the old container still serving, too.
        let mut beside = new.clone();
        beside.push(ContainerRecord {
            started_at: Some(1),
            ..container("web", 0, "blog:1")
        });
        assert!(matches!(
            progress(
                "blog",
                Some(&spec),
                &seen(&beside, &[verdict(0, Verdict::Unhealthy)]),
                0
            ),
            Progress::Failed(_)
        ));
        let mut crashing = new.clone();
        crashing[0].state = "restarting".into();
        crashing[0].restarts = 3;
        assert!(matches!(
            progress("blog", Some(&spec), &seen(&crashing, &[]), 0),
            Progress::Failed(why) if why.contains("keeps stopping")
        ));
        assert!(matches!(
            progress("blog", None, &seen(&new, &[]), 0),
            Progress::Pending(_)
        ));
        assert_eq!(progress("blog", None, &seen(&[], &[]), 0), Progress::Ready);
        // What a lost node last ran is not running.
        let mut gone = seen(&new, &[]);
        gone.live.clear();
        assert_eq!(progress("blog", None, &gone, 0), Progress::Ready);
        // A container that failed before the change is none of its doing.
        assert!(matches!(
            progress(
                "blog",
                Some(&spec),
                &seen(&new, &[verdict(0, Verdict::Unhealthy)]),
                60_000
            ),
            Progress::Pending(_)
        ));
    }
}
