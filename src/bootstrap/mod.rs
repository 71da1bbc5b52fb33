//! Docker bootstrap (opt-in, `[fleet] bootstrap = true`): a reachable node
//! without Docker gets it installed and started. One constant script
//! (`install-docker.sh`, no interpolated input) does it in one round trip
//! and reports in markers:
//!
//! ```text
//! @@ prism-bootstrap 1
//! @@ os ID VERSION_ID          /etc/os-release, when it had to install
//! @@ warn TEXT                 went wrong without stopping it; `| ` lines follow
//! @@ install TOOL PACKAGE      what it installed (apt-get docker.io, dnf docker)
//! @@ start METHOD              how the daemon came up: systemd, service, dockerd, package
//! @@ group-added USER          a login user that is not root joined `docker`
//! @@ result KIND ARGS          one of: present V, started V, installed V,
//!                              no-root USER, unsupported-os NAME,
//!                              install-failed TOOL STATUS, start-failed METHOD;
//!                              a failure's output follows in `| ` lines
//! @@ end                       the output is complete
//! ```
//!
//! [`parse_output`] turns that into an [`Outcome`] or a [`Failure`];
//! [`install_docker`] runs it on a node. Neither records anything: the
//! caller writes the event (from [`Outcome::summary`] or the error).

mod outcome;

use std::time::Duration;

pub(crate) use outcome::parse_output;
pub use outcome::{Action, Failure, Outcome, StartMethod, Warning};

use crate::ssh::{ExecLimits, Pool, SshError, Target};

/// The script run by `sh -c`: a constant, never formatted.
pub(crate) const INSTALL_SCRIPT: &str = include_str!("install-docker.sh");

/// How long a bootstrap may take: a package index refresh and a download
/// on a slow mirror, after waiting for an unattended upgrade's apt lock.
pub(crate) const INSTALL_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// `sh -c <INSTALL_SCRIPT>`. Exits 0 on success; judge the output.
pub(crate) fn install_argv() -> Vec<String> {
    vec!["sh".to_owned(), "-c".to_owned(), INSTALL_SCRIPT.to_owned()]
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum BootstrapError {
    /// The node could not be reached, or the script did not finish in time.
    #[error(transparent)]
    Ssh(#[from] SshError),
    /// The script ran and reported why Docker could not be made to run.
    #[error("{node}: Docker bootstrap: {failure}")]
    Failed { node: String, failure: Failure },
}

impl BootstrapError {
    /// A short condition name for status and the store.
    pub fn condition(&self) -> &'static str {
        match self {
            BootstrapError::Ssh(e) => e.condition(),
            BootstrapError::Failed { failure, .. } => failure.condition(),
        }
    }
}

/// Makes sure Docker is installed and answering on `target`, installing and
/// starting it if need be. Docker that already answers is left as it is.
/// When the login user was added to the `docker` group, the pooled
/// connection is dropped so the next command logs in with the group.
pub async fn install_docker(pool: &Pool, target: &Target) -> Result<Outcome, BootstrapError> {
    let limits = ExecLimits {
        timeout: INSTALL_TIMEOUT,
        max_output: 1 << 20,
    };
    let out = pool.exec(target, &install_argv(), None, limits).await?;
    let failed = |failure| BootstrapError::Failed {
        node: target.id.clone(),
        failure,
    };
    match parse_output(&out.stdout_text()) {
        Ok(outcome) => {
            if outcome.group_added.is_some() {
                pool.forget(target).await;
            }
            Ok(outcome)
        }
        Err(Failure::Malformed { line, detail }) => {
            // A script that died (a shell error, a kill) says why on stderr.
            let stderr = out.stderr_text();
            let stderr = outcome::tail(&stderr, 3);
            let status = out
                .status
                .map_or_else(|| "no exit status".to_owned(), |s| format!("exit {s}"));
            let detail = if stderr.is_empty() {
                format!("{detail} ({status})")
            } else {
                format!("{detail} ({status}; stderr: {stderr})")
            };
            Err(failed(Failure::Malformed { line, detail }))
        }
        Err(failure) => Err(failed(failure)),
    }
}

#[cfg(test)]
mod tests;
