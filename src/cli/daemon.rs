//! `prism daemon`: discovery and reconcile in a loop, with logs, until
//! SIGTERM or SIGINT.

use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};

use super::Failure;
use crate::config::Config;
use std::sync::Arc;

use crate::operator::{Control, Operator, run_loop, serve_requests, start_jobs};
use crate::store::LockHolder;

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

pub async fn run(config: Config, interval: Duration) -> Result<(), Failure> {
    let operator = Arc::new(Operator::new(config).await?);
    let me = LockHolder::this_process("daemon");
    operator.lock().try_lock(&me, LOCK_TTL)?;
    let mut jobs = match start_jobs(operator.clone()).await {
        Ok(jobs) => Some(jobs),
        Err(e) => {
            tracing::error!(error = %e, "scheduled jobs could not start; reconciling without them");
            None
        }
    };
    tracing::info!(
        fleet = %operator.desired.fleet,
        interval = %humantime::format_duration(interval),
        pid = me.pid,
        "daemon started"
    );
    let control = Control::new();
    let signals = tokio::spawn(stop_on_signal(
        signal(SignalKind::terminate()).map_err(Failure::Runtime)?,
        signal(SignalKind::interrupt()).map_err(Failure::Runtime)?,
        control.clone(),
    ));
    // Actions asked by a dashboard attached to this daemon.
    let requests = tokio::spawn(serve_requests(operator.clone(), control.clone()));
    let result = run_loop(&operator, &me, interval, &control)
        .await
        .map_err(Failure::Store);
    requests.abort();
    signals.abort();
    if let Some(jobs) = jobs.as_mut()
        && let Err(e) = jobs.shutdown().await
    {
        tracing::warn!(error = %e, "scheduled jobs did not stop cleanly");
    }
    let unlocked = operator.lock().unlock(&me);
    if let Err(e) = &unlocked {
        tracing::warn!(error = %e, "could not release the apply lock");
    }
    tracing::info!("daemon stopped");
    result
}

/// Turns SIGTERM/SIGINT into a stop: the pass in flight finishes first.
async fn stop_on_signal(mut term: Signal, mut int: Signal, control: Arc<Control>) {
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!("{name}: finishing the pass in flight, then stopping");
    control.stop();
}
