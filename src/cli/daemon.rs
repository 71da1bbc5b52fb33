//! `prism daemon`: discovery and reconcile in a loop, with logs, until
//! SIGTERM or SIGINT; the bundled proxy in front, its routes following
//! every pass, and the admin listener with the proxy's and the operator's
//! metrics.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::Failure;
use crate::config::Config;
use crate::operator::{Control, Front, Operator, run_applier};
use crate::store::{LockHolder, NewEvent, Store};
use crate::tasks::{Ended, Tasks};

use super::reload;

/// A daemon that stops heartbeating for this long is presumed dead.
const LOCK_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

pub fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PRISM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

pub async fn run(config: Config, interval: Duration, with_proxy: bool) -> Result<(), Failure> {
    let file = config.file.clone();
    // What was loaded, to notice edits; unreadable now means any later
    // readable text counts as an edit.
    let mut loaded = std::fs::read_to_string(&file).unwrap_or_default();
    let mut operator = Operator::new(config).await?;
    let me = LockHolder::this_process("daemon");
    operator.lock().try_lock(&me, LOCK_TTL)?;
    let front = if with_proxy {
        match Front::bind(&operator.config) {
            Ok(front) => Some(front),
            Err(e) => {
                let _ = operator.lock().unlock(&me);
                return Err(e.into());
            }
        }
    } else {
        None
    };
    let mut serving = front.map(Front::serve);
    if let Some(serving) = serving.as_mut() {
        // Attached dashboards read the proxy's figures from the store: it
        // is what they already poll, it needs no address beyond the state
        // file (the admin port may differ, or be unreachable, from where
        // the dashboard runs), and a daemon without a proxy simply leaves
        // the row to go stale.
        match Store::open(&operator.config.state_path()) {
            Ok(store) => serving.publish_traffic(store),
            Err(e) => tracing::warn!(error = %e, "the proxy's counters will not be recorded"),
        }
    }
    // Everything beside the applier: a panic in any ends the daemon.
    let mut watched = Tasks::new();
    if let Some(serving) = serving.as_mut() {
        for task in serving.take_tasks() {
            watched.adopt("proxy or admin listener", task);
        }
    }
    let (quit, quitting) = watch::channel(false);
    let signals = watched.spawn(
        "signal handler",
        quit_on_signal(
            signal(SignalKind::terminate()).map_err(Failure::Runtime)?,
            signal(SignalKind::interrupt()).map_err(Failure::Runtime)?,
            quit,
        ),
    );
    tracing::info!(
        fleet = %operator.desired.fleet,
        interval = %humantime::format_duration(interval),
        pid = me.pid,
        "daemon started"
    );
    // One round per fleet.toml: an edit that loads starts a new round
    // with it; the proxy keeps serving across rounds.
    let result = loop {
        if let Some(serving) = &serving {
            operator = serving.route(operator);
        }
        let current = Arc::new(operator);
        let control = Control::new();
        let follow = serving.as_ref().map(|s| {
            let task = s.follow(control.clone());
            let handle = task.abort_handle();
            watched.adopt("metrics recorder", task);
            handle
        });
        let mut next = tokio::spawn(reload::next(
            current.config.clone(),
            loaded.clone(),
            interval,
            quitting.clone(),
            control.clone(),
        ));
        let applier = run_applier(current.clone(), &me, interval, control.clone());
        let supervised = supervise(applier, &mut next, &mut watched, || control.stop()).await;
        if let Some(follow) = follow {
            follow.abort();
        }
        let (ran, done) = match supervised {
            Ok(ran) => ran,
            Err(ended) => {
                next.abort();
                break Err((current, Failure::Task(ended)));
            }
        };
        if let Err(e) = ran {
            next.abort();
            break Err((current, Failure::Store(e)));
        }
        let next = match done {
            Some(next) => next,
            None => match next.await {
                Ok(next) => next,
                Err(e) => break Err((current, Failure::Task(Ended::from_join(WATCHER, e)))),
            },
        };
        match next {
            reload::Next::Reload {
                operator: new,
                text,
            } => {
                tracing::info!("fleet.toml changed: reconciling with the new one");
                record_reload(&new);
                operator = *new;
                loaded = text;
            }
            reload::Next::Quit => break Ok(current),
        }
    };
    signals.abort();
    if let Some(serving) = serving {
        serving.stop().await;
    }
    let mut panicked = watched.join_all().await;
    let (last, result) = match result {
        Ok(last) if panicked.is_empty() => (last, Ok(())),
        Ok(last) => (last, Err(Failure::Task(panicked.remove(0)))),
        Err((last, e)) => (last, Err(e)),
    };
    if let Err(e) = &result {
        tracing::error!(error = %e, "daemon stopping on an error");
    }
    if let Err(e) = last.lock().unlock(&me) {
        tracing::warn!(error = %e, "could not release the apply lock");
    }
    tracing::info!("daemon stopped");
    result
}

/// The task watching fleet.toml (and the quit signal) in each round.
const WATCHER: &str = "fleet.toml watcher";

/// Drives `applier` to its end while watching the rest: a panic in a
/// `watched` task or in `next` (the fleet.toml watcher) calls `stop`, so
/// the pass in flight finishes, and is returned once the applier has
/// ended: the daemon never runs on with a part gone. Also returns what
/// `next` gave if it ended meanwhile (its handle is then spent).
async fn supervise<R, N>(
    applier: impl Future<Output = R>,
    next: &mut JoinHandle<N>,
    watched: &mut Tasks,
    stop: impl Fn(),
) -> Result<(R, Option<N>), Ended> {
    tokio::pin!(applier);
    let (mut done, mut failed) = (None, None);
    let mut next_ended = false;
    let ran = loop {
        tokio::select! {
            ran = &mut applier => break ran,
            joined = &mut *next, if !next_ended => {
                next_ended = true;
                match joined {
                    Ok(n) => done = Some(n),
                    Err(e) if failed.is_none() => {
                        let ended = Ended::from_join(WATCHER, e);
                        tracing::error!("{ended}; stopping after the pass in flight");
                        failed = Some(ended);
                        stop();
                    }
                    Err(_) => {}
                }
            }
            ended = watched.next_panic(), if failed.is_none() => {
                tracing::error!("{ended}; stopping after the pass in flight");
                failed = Some(ended);
                stop();
            }
        }
    };
    match failed {
        Some(ended) => Err(ended),
        None => Ok((ran, done)),
    }
}

fn record_reload(operator: &Operator) {
    let event = NewEvent::info("config.reload", "fleet.toml changed: reloaded".to_owned());
    if let Err(e) = operator.lock().record_event(&event) {
        tracing::warn!(error = %e, "could not record the reload");
    }
}

/// Turns SIGTERM/SIGINT into a quit: the pass in flight finishes first.
async fn quit_on_signal(mut term: Signal, mut int: Signal, quit: watch::Sender<bool>) {
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!("{name}: finishing the pass in flight, then stopping");
    quit.send_replace(true);
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::tasks::Exit;

    /// An applier that runs until stopped, like `run_applier`.
    async fn applier(stopped: Arc<tokio::sync::Notify>) -> &'static str {
        stopped.notified().await;
        "finished its pass"
    }

    #[tokio::test]
    async fn a_panicking_listener_stops_the_applier_and_is_returned() {
        let stopped = Arc::new(tokio::sync::Notify::new());
        let asked = AtomicBool::new(false);
        let mut watched = Tasks::new();
        watched.spawn("metrics recorder", std::future::pending());
        watched.spawn("proxy listener", async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            panic!("accept loop broke");
        });
        let mut next = tokio::spawn(std::future::pending::<()>());
        let out = tokio::time::timeout(
            Duration::from_secs(5),
            supervise(applier(stopped.clone()), &mut next, &mut watched, || {
                asked.store(true, Ordering::Relaxed);
                stopped.notify_one();
            }),
        )
        .await
        .expect("the daemon does not run on");
        let ended = out.expect_err("the panic is the outcome");
        assert_eq!(ended.task, "proxy listener");
        assert_eq!(ended.exit, Exit::Panicked("accept loop broke".into()));
        assert!(
            asked.load(Ordering::Relaxed),
            "the applier was told to stop"
        );
        let failure = Failure::Task(ended);
        assert_eq!(failure.exit_code(), 1);
        assert_eq!(
            failure.to_string(),
            "the proxy listener panicked: accept loop broke"
        );
    }

    #[tokio::test]
    async fn a_panicking_fleet_toml_watcher_ends_the_round() {
        let stopped = Arc::new(tokio::sync::Notify::new());
        let mut watched = Tasks::new();
        let mut next = tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            panic!("watcher broke");
        });
        let out = tokio::time::timeout(
            Duration::from_secs(5),
            supervise(applier(stopped.clone()), &mut next, &mut watched, || {
                stopped.notify_one()
            }),
        )
        .await
        .expect("ends");
        let ended = out.expect_err("the panic is the outcome");
        assert_eq!(
            ended.to_string(),
            "the fleet.toml watcher panicked: watcher broke"
        );
    }

    #[tokio::test]
    async fn a_quiet_round_gives_the_applier_and_the_watcher_outcome() {
        let stopped = Arc::new(tokio::sync::Notify::new());
        let mut watched = Tasks::new();
        // Tasks that return or are cancelled are not failures.
        watched.spawn("metrics recorder", async {});
        let stop = stopped.clone();
        let mut next = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            stop.notify_one();
            "quit"
        });
        let (ran, done) = supervise(applier(stopped), &mut next, &mut watched, || {})
            .await
            .expect("no failure");
        assert_eq!(ran, "finished its pass");
        // The watcher's outcome, whether seen in the round or after it.
        let next = match done {
            Some(n) => n,
            None => next.await.expect("watcher"),
        };
        assert_eq!(next, "quit");
    }
}
