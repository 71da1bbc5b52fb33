//! `prism daemon`: discovery and reconcile in a loop, with logs, until
//! SIGTERM or SIGINT; the bundled proxy in front, its routes following
//! every pass, and the admin listener with the proxy's and the operator's
//! metrics. The start-up is the operator's own ([`operator::start`]), the
//! same the dashboard uses.

use std::time::Duration;

use tokio::signal::unix::{Signal, SignalKind, signal};

use super::Failure;
use crate::config::Config;
use crate::operator::{self, Options};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

pub(crate) fn init_logs(format: LogFormat) {
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
    // Signals first: a SIGTERM during start-up still stops it cleanly.
    let mut term = signal(SignalKind::terminate()).map_err(Failure::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Failure::Runtime)?;
    let mut running = operator::start(
        config,
        Options {
            role: "daemon",
            interval,
            proxy: with_proxy,
        },
    )
    .await?;
    let ended = tokio::select! {
        name = quit_on_signal(&mut term, &mut int) => {
            tracing::info!("{name}: finishing the pass in flight, then stopping");
            None
        }
        ended = running.ended() => Some(ended),
    };
    if let Some(e) = &ended {
        tracing::error!(error = %e, "daemon stopping on an error");
    }
    let stopped = running.stop().await;
    tracing::info!("daemon stopped");
    match ended {
        Some(e) => Err(e.into()),
        None => stopped.map_err(Failure::from),
    }
}

/// Waits for SIGTERM or SIGINT; says which.
async fn quit_on_signal(term: &mut Signal, int: &mut Signal) -> &'static str {
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
