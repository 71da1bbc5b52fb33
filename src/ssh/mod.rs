//! The one way Prism reaches a node: SSH (russh) with verified host keys,
//! one multiplexed connection per node, argv quoted once at this boundary,
//! and Docker's API over a channel of that connection.

mod auth;
mod docker_api;
mod error;
mod pool;
mod session;
mod trust;

use std::path::PathBuf;
use std::time::Duration;

pub use auth::Credentials;
pub use docker_api::{ApiResponse, DOCKER_SOCKET, DockerApiError};
pub use error::SshError;
pub use pool::{Pool, fan_out};
pub use session::{ConnectOptions, ExecLimits, Output, Session, quote};
pub use trust::{Trust, Verdict, fingerprint};

use crate::config::{Config, HostKeyPolicy};

/// A node as SSH sees it. `id` is the instance id (or a static node's
/// name): host keys are pinned per id, so a replaced spot instance, which
/// has a new id, is a new node rather than a changed key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub id: String,
    pub address: String,
    pub port: u16,
    pub user: String,
}

/// How host keys are checked.
#[derive(Debug, Clone)]
pub enum HostKeys {
    /// Pin per instance id in the state store.
    Pin,
    KnownHosts(PathBuf),
}

/// Everything the pool needs from fleet.toml, resolved.
#[derive(Debug, Clone)]
pub struct SshSettings {
    pub credentials: Credentials,
    pub host_keys: HostKeys,
    pub connect: ConnectOptions,
    /// Wait before retrying a node that failed, doubling up to this.
    pub max_backoff: Duration,
}

impl SshSettings {
    pub fn from_config(config: &Config) -> Result<SshSettings, SshError> {
        let ssh = &config.fleet.ssh;
        let credentials = match &ssh.identity {
            Some(path) => Credentials::key_file(&config.resolve(path))?,
            None => Credentials::agent_from_env()?,
        };
        let host_keys = match ssh.host_keys {
            HostKeyPolicy::Pin => HostKeys::Pin,
            HostKeyPolicy::KnownHosts => HostKeys::KnownHosts(
                config.resolve(
                    ssh.known_hosts
                        .as_deref()
                        .unwrap_or_else(|| std::path::Path::new("~/.ssh/known_hosts")),
                ),
            ),
        };
        Ok(SshSettings {
            credentials,
            host_keys,
            connect: ConnectOptions {
                connect_timeout: ssh.connect_timeout.0,
                ..ConnectOptions::default()
            },
            max_backoff: Duration::from_secs(8),
        })
    }
}
