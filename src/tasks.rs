//! Named background tasks whose end is noticed. A task spawned with
//! `tokio::spawn` that panics only says so to whoever awaits its handle;
//! the dashboard and the daemon keep theirs here and wait on `next()`
//! beside their own work, so a panic ends the process (or, for a task that
//! can be done without, is shown) instead of leaving it half-alive.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;

use tokio::task::{AbortHandle, Id, JoinError, JoinSet};

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Returned,
    /// With the panic's message.
    Panicked(String),
    /// It could not go on, and said why (a thread reading the terminal).
    Failed(String),
    Cancelled,
}

impl Exit {
    fn from_error(e: JoinError) -> Exit {
        if e.is_cancelled() {
            Exit::Cancelled
        } else {
            match e.try_into_panic() {
                Ok(payload) => Exit::Panicked(panic_message(payload.as_ref())),
                Err(e) => Exit::Panicked(e.to_string()),
            }
        }
    }
}

/// What `panic!` was given, when it was text.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_owned()
    }
}

/// A task that ended, by name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Ended {
    pub task: String,
    pub exit: Exit,
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.exit {
            Exit::Returned => write!(f, "the {} stopped", self.task),
            Exit::Panicked(m) => write!(f, "the {} panicked: {m}", self.task),
            Exit::Failed(e) => write!(f, "the {} failed: {e}", self.task),
            Exit::Cancelled => write!(f, "the {} was cancelled", self.task),
        }
    }
}

impl Ended {
    /// How the task behind a `JoinHandle` ended, from its error.
    pub(crate) fn from_join(task: &str, e: JoinError) -> Ended {
        Ended {
            task: task.to_owned(),
            exit: Exit::from_error(e),
        }
    }

    pub fn panicked(&self) -> bool {
        matches!(self.exit, Exit::Panicked(_))
    }
}

/// Tasks by name; aborted when dropped.
#[derive(Default)]
pub(crate) struct Tasks {
    set: JoinSet<()>,
    names: HashMap<Id, String>,
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks::default()
    }

    pub fn spawn<F>(&mut self, name: impl Into<String>, task: F) -> AbortHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let handle = self.set.spawn(task);
        self.names.insert(handle.id(), name.into());
        handle
    }

    /// Watches a task spawned elsewhere: its end (a panic too) is reported
    /// under `name`.
    pub(crate) fn adopt(&mut self, name: impl Into<String>, handle: tokio::task::JoinHandle<()>) {
        self.spawn(name, async move {
            if let Err(e) = handle.await
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        });
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// The next task to end and how, or `None` when none is left (then it
    /// returns at once). Cancel-safe.
    pub async fn next(&mut self) -> Option<Ended> {
        let (id, exit) = match self.set.join_next_with_id().await? {
            Ok((id, ())) => (id, Exit::Returned),
            Err(e) => (e.id(), Exit::from_error(e)),
        };
        let task = self
            .names
            .remove(&id)
            .unwrap_or_else(|| "background task".to_owned());
        Some(Ended { task, exit })
    }

    /// The next task to panic; tasks that return or are cancelled are let
    /// go. Pending for ever when none is left, so it can sit in a
    /// `select!` beside the work it guards.
    pub(crate) async fn next_panic(&mut self) -> Ended {
        loop {
            match self.next().await {
                Some(ended) if ended.panicked() => return ended,
                Some(_) => {}
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Waits for every task to end, reporting those that panicked.
    pub async fn join_all(&mut self) -> Vec<Ended> {
        let mut panicked = Vec::new();
        while let Some(ended) = self.next().await {
            if ended.panicked() {
                panicked.push(ended);
            }
        }
        panicked
    }

    pub(crate) fn abort_all(&mut self) {
        self.set.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_panic_is_reported_with_the_task_and_message() {
        let mut tasks = Tasks::new();
        tasks.spawn("calm", std::future::pending());
        tasks.spawn("store poller", async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            panic!("disk on fire");
        });
        let ended = tokio::time::timeout(Duration::from_secs(5), tasks.next_panic())
            .await
            .expect("the panic is noticed");
        assert_eq!(ended.task, "store poller");
        assert_eq!(ended.exit, Exit::Panicked("disk on fire".into()));
        assert_eq!(ended.to_string(), "the store poller panicked: disk on fire");
        // The calm task is still there.
        assert!(!tasks.is_empty());
    }

    #[tokio::test]
    async fn formatted_panics_and_returns() {
        let mut tasks = Tasks::new();
        tasks.spawn("done", async {});
        let n = 3;
        tasks.spawn("counter", async move { panic!("{n} too many") });
        let mut seen = Vec::new();
        while let Some(e) = tasks.next().await {
            seen.push((e.task, e.exit));
        }
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            seen,
            [
                ("counter".to_owned(), Exit::Panicked("3 too many".into())),
                ("done".to_owned(), Exit::Returned)
            ]
        );
    }

    #[tokio::test]
    async fn an_adopted_handle_reports_its_panic_under_its_name() {
        let mut tasks = Tasks::new();
        let handle = tokio::spawn(async { panic!("listener broke") });
        tasks.adopt("proxy listener", handle);
        let ended = tasks.next_panic().await;
        assert_eq!(
            ended.to_string(),
            "the proxy listener panicked: listener broke"
        );
    }

    #[tokio::test]
    async fn aborted_tasks_are_not_panics() {
        let mut tasks = Tasks::new();
        let h = tasks.spawn("log stream", std::future::pending());
        h.abort();
        assert_eq!(tasks.next().await.map(|e| e.exit), Some(Exit::Cancelled));
        assert!(tasks.join_all().await.is_empty());
        // With nothing left, `next_panic` waits for ever.
        let waited = tokio::time::timeout(Duration::from_millis(50), tasks.next_panic()).await;
        assert!(waited.is_err());
    }

    #[test]
    fn a_panic_without_text() {
        assert_eq!(panic_message(&7_u8), "a panic without a message");
    }
}
