//! How Prism proves who it is: a private key file, or the ssh-agent.
//! Keys are loaded once; a passphrase-protected file is refused with a
//! pointer to the agent, since Prism runs unattended.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::client::Handle;
use russh::keys::agent::client::AgentClient;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg};

use super::SshError;

#[derive(Clone)]
pub enum Credentials {
    Key { path: PathBuf, key: Arc<PrivateKey> },
    Agent { socket: PathBuf },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Key { path, .. } => write!(f, "key file {}", path.display()),
            Credentials::Agent { socket } => write!(f, "ssh-agent at {}", socket.display()),
        }
    }
}

impl Credentials {
    pub fn key_file(path: &Path) -> Result<Self, SshError> {
        match russh::keys::load_secret_key(path, None) {
            Ok(key) => Ok(Credentials::Key {
                path: path.to_path_buf(),
                key: Arc::new(key),
            }),
            Err(russh::keys::Error::KeyIsEncrypted) => Err(SshError::Credentials(format!(
                "{} is protected by a passphrase; load it into ssh-agent (ssh-add) and leave [ssh] identity out",
                path.display()
            ))),
            Err(e) => Err(SshError::Credentials(format!(
                "cannot load private key {}: {e}",
                path.display()
            ))),
        }
    }

    /// The agent named by SSH_AUTH_SOCK.
    pub(crate) fn agent_from_env() -> Result<Self, SshError> {
        match std::env::var_os("SSH_AUTH_SOCK") {
            Some(sock) if !sock.is_empty() => Ok(Credentials::Agent {
                socket: PathBuf::from(sock),
            }),
            _ => Err(SshError::Credentials(
                "no [ssh] identity is set and SSH_AUTH_SOCK is empty: set identity to a key file, or start ssh-agent".into(),
            )),
        }
    }

    pub(super) async fn authenticate<H: russh::client::Handler>(
        &self,
        handle: &mut Handle<H>,
        node: &str,
        user: &str,
    ) -> Result<(), SshError> {
        let refused = |reason: String| SshError::AuthRefused {
            node: node.to_owned(),
            user: user.to_owned(),
            reason,
        };
        let proto = |e: russh::Error| SshError::Protocol {
            node: node.to_owned(),
            reason: e.to_string(),
        };
        match self {
            Credentials::Key { path, key } => {
                let hash = handle
                    .best_supported_rsa_hash()
                    .await
                    .map_err(proto)?
                    .flatten();
                let result = handle
                    .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key.clone(), hash))
                    .await
                    .map_err(proto)?;
                if result.success() {
                    Ok(())
                } else {
                    Err(refused(format!("key {} was not accepted", path.display())))
                }
            }
            Credentials::Agent { socket } => {
                let mut agent = AgentClient::connect_uds(socket).await.map_err(|e| {
                    SshError::Credentials(format!(
                        "cannot reach ssh-agent at {}: {e}",
                        socket.display()
                    ))
                })?;
                let identities = agent.request_identities().await.map_err(|e| {
                    SshError::Credentials(format!(
                        "ssh-agent at {} did not list keys: {e}",
                        socket.display()
                    ))
                })?;
                if identities.is_empty() {
                    return Err(SshError::Credentials(format!(
                        "ssh-agent at {} holds no keys (ssh-add one)",
                        socket.display()
                    )));
                }
                let hash = handle
                    .best_supported_rsa_hash()
                    .await
                    .map_err(proto)?
                    .flatten();
                for identity in identities {
                    let key = identity.public_key().into_owned();
                    match handle
                        .authenticate_publickey_with(user, key, hash, &mut agent)
                        .await
                    {
                        Ok(result) if result.success() => return Ok(()),
                        Ok(_) => continue,
                        Err(e) => return Err(refused(format!("ssh-agent failed to sign: {e}"))),
                    }
                }
                Err(refused("no key in ssh-agent was accepted".into()))
            }
        }
    }
}
