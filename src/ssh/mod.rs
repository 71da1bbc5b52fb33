//! The one way Prism reaches a node: SSH (russh) with verified host keys,
//! one multiplexed connection per node, argv quoted once at this boundary,
//! and Docker's API over a channel of that connection.

mod auth;
mod docker_api;
mod error;
mod pool;
mod session;
mod stream;
mod trust;

use std::path::PathBuf;
use std::time::Duration;

pub use auth::Credentials;
pub(crate) use docker_api::DOCKER_SOCKET;
pub use docker_api::{ApiResponse, DockerApiError};
pub use error::SshError;
pub use pool::{Pool, fan_out};
pub use session::{ConnectOptions, ExecLimits, Output, Session};
pub use stream::{Chunk, ExecStream, StreamLimits};
pub use trust::{Trust, Verdict, fingerprint};

use crate::config::{Config, HostKeyPolicy, Ssh};

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

impl Target {
    /// A jump host. Its id, which its host key is pinned under, is
    /// `bastion:<address>:<port>`: stable, and never an instance id.
    pub fn bastion(address: &str, port: u16, user: &str) -> Target {
        Target {
            id: format!("bastion:{address}:{port}"),
            address: address.to_owned(),
            port,
            user: user.to_owned(),
        }
    }
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
    /// A jump host every node is reached through, with the same
    /// credentials and host key checks as the nodes.
    pub bastion: Option<Target>,
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
            bastion: bastion_target(ssh),
        })
    }
}

/// `[ssh] bastion`: port 22 and the nodes' user unless it says otherwise.
fn bastion_target(ssh: &Ssh) -> Option<Target> {
    ssh.bastion.as_ref().map(|b| {
        Target::bastion(
            &b.address,
            b.port.unwrap_or(22),
            b.user.as_deref().unwrap_or(&ssh.user),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Bastion;

    #[test]
    fn the_bastion_defaults_to_port_22_and_the_nodes_user() {
        let mut ssh = Ssh {
            user: "admin".into(),
            port: 2222,
            ..Ssh::default()
        };
        assert_eq!(bastion_target(&ssh), None);
        ssh.bastion = Some(Bastion {
            address: "10.0.0.5".into(),
            user: None,
            port: None,
        });
        assert_eq!(
            bastion_target(&ssh),
            Some(Target {
                id: "bastion:10.0.0.5:22".into(),
                address: "10.0.0.5".into(),
                port: 22,
                user: "admin".into(),
            })
        );
        ssh.bastion = Some(Bastion {
            address: "jump.example.com".into(),
            user: Some("jump".into()),
            port: Some(2200),
        });
        let t = bastion_target(&ssh).expect("a bastion");
        assert_eq!(
            (t.id.as_str(), t.port, t.user.as_str()),
            ("bastion:jump.example.com:2200", 2200, "jump")
        );
    }
}
