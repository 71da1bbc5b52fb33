//! `prism daemon`: discovery and reconcile in a loop, with logs, until
//! SIGTERM or SIGINT; the bundled proxy in front, its routes following
//! every pass, and the admin listener with the proxy's and the operator's
//! metrics.

use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;

use super::Failure;
use crate::config::Config;
use crate::operator::{Control, Front, Operator, run_applier};
use crate::store::{LockHolder, NewEvent, Store};

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
    let (quit, quitting) = watch::channel(false);
    let signals = tokio::spawn(quit_on_signal(
        signal(SignalKind::terminate()).map_err(Failure::Runtime)?,
        signal(SignalKind::interrupt()).map_err(Failure::Runtime)?,
        quit,
    ));
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
        let follow = serving.as_ref().map(|s| s.follow(control.clone()));
        let next = tokio::spawn(reload::next(
            current.config.clone(),
            loaded.clone(),
            interval,
            quitting.clone(),
            control.clone(),
        ));
        let ran = run_applier(current.clone(), &me, interval, control.clone()).await;
        if let Some(follow) = follow {
            follow.abort();
        }
        if let Err(e) = ran {
            next.abort();
            break Err((current, Failure::Store(e)));
        }
        match next.await {
            Ok(reload::Next::Reload {
                operator: new,
                text,
            }) => {
                tracing::info!("fleet.toml changed: reconciling with the new one");
                record_reload(&new);
                operator = *new;
                loaded = text;
            }
            _ => break Ok(current),
        }
    };
    signals.abort();
    if let Some(serving) = serving {
        serving.stop().await;
    }
    let (last, result) = match result {
        Ok(last) => (last, Ok(())),
        Err((last, e)) => (last, Err(e)),
    };
    if let Err(e) = last.lock().unlock(&me) {
        tracing::warn!(error = %e, "could not release the apply lock");
    }
    tracing::info!("daemon stopped");
    result
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
