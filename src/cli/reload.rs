//! The daemon follows edits of fleet.toml: it reads the file every poll,
//! and when the text changed and still loads (valid, secrets resolved, the
//! same state file), ends the current loop so the daemon goes on with the
//! new one. An edit that does not load is logged once and the fleet keeps
//! running as it was.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::{self, Config};
use crate::operator::{Control, Operator};

/// Why the loop was stopped.
pub enum Next {
    /// SIGTERM or SIGINT.
    Quit,
    /// fleet.toml changed to `text`, which made `operator`.
    Reload {
        operator: Box<Operator>,
        text: String,
    },
}

/// Waits for a quit or a usable edit of `current`'s file (`loaded` is the
/// text it was made from), then stops `control`'s loop and says which.
pub async fn next(
    current: Config,
    loaded: String,
    poll: Duration,
    mut quit: watch::Receiver<bool>,
    control: Arc<Control>,
) -> Next {
    let mut seen = loaded;
    let next = loop {
        tokio::select! {
            _ = quit.wait_for(|q| *q) => break Next::Quit,
            _ = tokio::time::sleep(poll) => {}
        }
        // Editors replace files in steps: a missing file is a moment of
        // that, not a change.
        let Ok(text) = tokio::fs::read_to_string(&current.file).await else {
            continue;
        };
        if text == seen {
            continue;
        }
        seen = text.clone();
        match load(&current, &text).await {
            Ok(operator) => {
                break Next::Reload {
                    operator: Box::new(operator),
                    text,
                };
            }
            Err(why) => tracing::error!(
                "fleet.toml changed but cannot be used; still running the previous one: {why}"
            ),
        }
    };
    control.stop();
    next
}

async fn load(current: &Config, text: &str) -> Result<Operator, String> {
    let fleet = config::parse(&current.file, text).map_err(|e| e.to_string())?;
    let config = Config {
        file: current.file.clone(),
        fleet,
    };
    if config.state_path() != current.state_path() {
        return Err("[fleet] state changed: restart the daemon to use another state file".into());
    }
    if format!("{:?}", config.fleet.proxy) != format!("{:?}", current.fleet.proxy) {
        tracing::warn!("[proxy] changed: its new settings take effect when the daemon restarts");
    }
    Operator::new(config).await.map_err(|e| e.to_string())
}
