//! Certificates over ACME (RFC 8555), proved with the HTTP-01 challenge on
//! the proxy's own HTTP listener or with TLS-ALPN-01 (RFC 8737) on its
//! HTTPS listener (`[proxy.acme] challenge`). Certificates, their keys and the
//! account are kept under the state folder, so a restart serves the stored
//! certificate at once and orders nothing; a background task renews each
//! one once two thirds of its lifetime have passed.
//!
//! ```text
//! <state folder>/acme/account.json          account key (0600)
//! <state folder>/acme/<host>/cert.pem       chain, leaf first
//! <state folder>/acme/<host>/key.pem        private key (0600)
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};

use super::tls::{Loaded, Tls, load_pem};
use crate::config::{AcmeChallenge, Config};

/// Where and from whom to get certificates (`[proxy.acme]`).
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    /// The CA's directory URL.
    pub directory: String,
    pub email: String,
    /// A PEM CA certificate to trust for the directory's HTTPS instead of
    /// the system's roots (a test CA). Verification is never turned off.
    pub ca: Option<PathBuf>,
    /// The folder certificates and the account are kept in.
    pub store: PathBuf,
    /// How long to wait before trying again after a failed order.
    pub retry_after: Duration,
    /// The challenge answered to prove each host.
    pub challenge: AcmeChallenge,
}

impl AcmeSettings {
    /// From `[proxy.acme]`, stored in `acme/` beside the state file; `None`
    /// when ACME is not configured.
    pub fn from_config(config: &Config) -> Option<AcmeSettings> {
        let acme = config.fleet.proxy.acme.as_ref()?;
        let state = config.state_path();
        let dir = state.parent().unwrap_or(Path::new("."));
        Some(AcmeSettings {
            directory: acme.directory.clone(),
            email: acme.email.clone(),
            ca: acme.ca.as_ref().map(|ca| config.resolve(ca)),
            store: dir.join("acme"),
            retry_after: Duration::from_secs(10 * 60),
            challenge: acme.challenge,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("ACME: {0}")]
    Order(String),
    #[error("{}: {source}", path.display())]
    Store {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", path.display())]
    Stored { path: PathBuf, message: String },
}

/// Where a served certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Obtained {
    /// Read from the store: still fresh, nothing was ordered.
    Stored,
    /// Ordered from the CA just now.
    Issued,
}

/// The account as kept on disk, tied to the directory it was made on.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// Gets certificates for hosts and puts them into a [`Tls`] store.
pub struct Acme {
    settings: AcmeSettings,
    tls: Arc<Tls>,
    account: tokio::sync::Mutex<Option<Account>>,
}

impl Acme {
    pub fn new(settings: AcmeSettings, tls: Arc<Tls>) -> Acme {
        Acme {
            settings,
            tls,
            account: tokio::sync::Mutex::new(None),
        }
    }

    fn host_dir(&self, host: &str) -> Result<PathBuf, AcmeError> {
        // Hosts come from checked fleet.toml names; refuse anything that
        // could leave the store anyway.
        if host.is_empty()
            || host.starts_with('.')
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(AcmeError::Order(format!(
                "{host:?} is not a host name ACME can certify"
            )));
        }
        Ok(self.settings.store.join(host))
    }

    /// The certificate stored for `host`, if it is there, readable and
    /// names the host.
    pub fn stored(&self, host: &str) -> Result<Option<Loaded>, AcmeError> {
        let dir = self.host_dir(host)?;
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let read = |p: &Path| match std::fs::read(p) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(AcmeError::Store {
                path: p.to_path_buf(),
                source,
            }),
        };
        let (Some(cert_pem), Some(key_pem)) = (read(&cert)?, read(&key)?) else {
            return Ok(None);
        };
        let loaded = load_pem(&cert_pem, &key_pem).map_err(|message| AcmeError::Stored {
            path: cert.clone(),
            message,
        })?;
        if !loaded.info.covers(host) {
            return Err(AcmeError::Stored {
                path: cert,
                message: format!("the certificate does not name {host}"),
            });
        }
        Ok(Some(loaded))
    }

    /// Makes sure `host` is served with a certificate that is not due for
    /// renewal: the one being served, else the stored one, else a new one
    /// from the CA. Returns where it came from and when to renew it.
    pub async fn ensure(&self, host: &str) -> Result<(Obtained, SystemTime), AcmeError> {
        let now = SystemTime::now();
        if let Some(info) = self.tls.issued(host)
            && info.renew_at() > now
        {
            return Ok((Obtained::Stored, info.renew_at()));
        }
        match self.stored(host) {
            Ok(Some(loaded)) if loaded.info.renew_at() > now => {
                let renew_at = loaded.info.renew_at();
                self.tls.install(host, loaded);
                return Ok((Obtained::Stored, renew_at));
            }
            Ok(Some(loaded)) => {
                // Due: keep serving it while a new one is ordered.
                tracing::info!(host, "ACME: certificate due for renewal");
                if self.tls.issued(host).is_none() {
                    self.tls.install(host, loaded);
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(host, error = %e, "ACME: stored certificate unusable, ordering a new one")
            }
        }
        let loaded = self.order(host).await?;
        let renew_at = loaded.info.renew_at();
        self.tls.install(host, loaded);
        Ok((Obtained::Issued, renew_at))
    }

    async fn account(&self) -> Result<Account, AcmeError> {
        let mut slot = self.account.lock().await;
        if let Some(account) = slot.as_ref() {
            return Ok(account.clone());
        }
        let path = self.settings.store.join("account.json");
        let stored = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<StoredAccount>(&bytes) {
                Ok(s) if s.directory == self.settings.directory => Some(s.credentials),
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ACME: unreadable account, making a new one");
                    None
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(AcmeError::Store { path, source }),
        };
        let builder = match &self.settings.ca {
            Some(ca) => Account::builder_with_root(ca)?,
            None => Account::builder()?,
        };
        let account = match stored {
            Some(credentials) => builder.from_credentials(credentials).await?,
            None => {
                let contact = format!("mailto:{}", self.settings.email);
                let (account, credentials) = builder
                    .create(
                        &NewAccount {
                            contact: &[&contact],
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        self.settings.directory.clone(),
                        None,
                    )
                    .await?;
                let json = serde_json::to_vec_pretty(&StoredAccount {
                    directory: self.settings.directory.clone(),
                    credentials,
                })
                .map_err(|e| AcmeError::Order(format!("cannot encode the account: {e}")))?;
                write_private(&path, &json)?;
                tracing::info!(directory = %self.settings.directory, "ACME: account created");
                account
            }
        };
        *slot = Some(account.clone());
        Ok(account)
    }

    /// Orders a certificate for `host`, answers its challenge and stores
    /// the result.
    async fn order(&self, host: &str) -> Result<Loaded, AcmeError> {
        let dir = self.host_dir(host)?;
        let account = self.account().await?;
        tracing::info!(host, "ACME: ordering a certificate");
        let ids = [Identifier::Dns(host.to_owned())];
        let mut order = account.new_order(&NewOrder::new(&ids)).await?;
        let mut answers = Answers {
            tls: &self.tls,
            tokens: Vec::new(),
            alpn_hosts: Vec::new(),
        };
        let (kind, name) = match self.settings.challenge {
            AcmeChallenge::Http01 => (ChallengeType::Http01, "HTTP-01"),
            AcmeChallenge::TlsAlpn01 => (ChallengeType::TlsAlpn01, "TLS-ALPN-01"),
        };
        let mut auths = order.authorizations();
        while let Some(auth) = auths.next().await {
            let mut auth = auth?;
            match auth.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::Order(format!(
                        "authorization for {host} is {other:?}"
                    )));
                }
            }
            let mut challenge = auth
                .challenge(kind.clone())
                .ok_or_else(|| AcmeError::Order(format!("the CA offers no {name} for {host}")))?;
            let key_authorization = challenge.key_authorization();
            match self.settings.challenge {
                AcmeChallenge::Http01 => {
                    answers.add_http(&challenge.token, key_authorization.as_str())
                }
                AcmeChallenge::TlsAlpn01 => {
                    // The identifier the CA will name (SNI) in its validation.
                    let Identifier::Dns(domain) = challenge.identifier().identifier.clone() else {
                        return Err(AcmeError::Order(format!(
                            "the CA asks to validate {:?}, not a DNS name",
                            challenge.identifier().identifier
                        )));
                    };
                    answers.add_alpn(&domain, key_authorization.digest().as_ref())?;
                }
            }
            challenge.set_ready().await?;
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(Duration::from_secs(120));
        let status = order.poll_ready(&retry).await?;
        if status != OrderStatus::Ready {
            let hint = match self.settings.challenge {
                AcmeChallenge::Http01 => {
                    "the CA could not fetch the challenge over HTTP on port 80?"
                }
                AcmeChallenge::TlsAlpn01 => {
                    "the CA could not complete a TLS-ALPN-01 handshake on port 443?"
                }
            };
            return Err(AcmeError::Order(format!(
                "order for {host} ended {status:?} ({hint})"
            )));
        }
        drop(answers);
        let key_pem = order.finalize().await?;
        let chain_pem = order.poll_certificate(&retry).await?;
        let loaded = load_pem(chain_pem.as_bytes(), key_pem.as_bytes())
            .map_err(|e| AcmeError::Order(format!("the CA's certificate for {host}: {e}")))?;
        mkdir_private(&dir)?;
        // Key first: a cert without its key is useless, the reverse is an
        // order next time.
        write_private(&dir.join("key.pem"), key_pem.as_bytes())?;
        write_private(&dir.join("cert.pem"), chain_pem.as_bytes())?;
        tracing::info!(host, "ACME: certificate issued and stored");
        Ok(loaded)
    }

    /// Keeps every host in `hosts` served and renewed until `shutdown`
    /// resolves: checks each at its renewal time, and retries a failed one
    /// after `retry_after`.
    pub async fn run(self: Arc<Self>, hosts: Vec<String>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut due: BTreeMap<String, SystemTime> = hosts
            .into_iter()
            .map(|h| (h, SystemTime::UNIX_EPOCH))
            .collect();
        loop {
            let now = SystemTime::now();
            for (host, at) in due.iter_mut() {
                if *at > now {
                    continue;
                }
                *at = match self.ensure(host).await {
                    Ok((how, renew_at)) if renew_at > SystemTime::now() => {
                        tracing::debug!(host, ?how, "ACME: certificate in place");
                        renew_at
                    }
                    Ok(_) => {
                        // A CA issuing certificates already due would
                        // otherwise be asked again at once, in a loop.
                        tracing::warn!(
                            host,
                            "ACME: the new certificate is already due for renewal; will retry"
                        );
                        SystemTime::now() + self.settings.retry_after
                    }
                    Err(e) => {
                        tracing::warn!(host, error = %e, "ACME: could not get a certificate; will retry");
                        SystemTime::now() + self.settings.retry_after
                    }
                };
            }
            let next = due.values().min().copied();
            let wait = next
                .map(|at| {
                    at.duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO)
                })
                .unwrap_or(Duration::from_secs(24 * 3600))
                // Checked at least twice a day: clocks jump, machines sleep.
                .min(Duration::from_secs(12 * 3600));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut shutdown => return,
            }
        }
    }
}

/// The challenge answers of one order, withdrawn when it is done (or
/// given up).
struct Answers<'a> {
    tls: &'a Tls,
    /// HTTP-01 tokens.
    tokens: Vec<String>,
    /// Hosts with a TLS-ALPN-01 challenge certificate.
    alpn_hosts: Vec<String>,
}

impl Answers<'_> {
    fn add_http(&mut self, token: &str, key_authorization: &str) {
        self.tls.set_challenge(token, key_authorization);
        self.tokens.push(token.to_owned());
    }

    fn add_alpn(&mut self, host: &str, digest: &[u8]) -> Result<(), AcmeError> {
        self.tls
            .set_alpn_challenge(host, digest)
            .map_err(AcmeError::Order)?;
        self.alpn_hosts.push(host.to_owned());
        Ok(())
    }
}

impl Drop for Answers<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.tls.remove_challenge(t);
        }
        for h in &self.alpn_hosts {
            self.tls.remove_alpn_challenge(h);
        }
    }
}

fn mkdir_private(dir: &Path) -> Result<(), AcmeError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| AcmeError::Store {
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes `bytes` to `path` readable by the owner only, whole or not at
/// all (a temporary file renamed into place).
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AcmeError> {
    let err = |source| AcmeError::Store {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        mkdir_private(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn private_files_are_owner_only_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/key.pem");
        write_private(&path, b"one").unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn host_names_cannot_leave_the_store() {
        let acme = Acme::new(
            AcmeSettings {
                directory: "https://ca.test/dir".into(),
                email: "ops@example.com".into(),
                ca: None,
                store: PathBuf::from("/store"),
                retry_after: Duration::from_secs(1),
                challenge: AcmeChallenge::Http01,
            },
            Arc::new(Tls::new()),
        );
        assert_eq!(
            acme.host_dir("a.example.com").unwrap(),
            Path::new("/store/a.example.com")
        );
        for bad in ["", "..", "../x", "a/b", ".hidden"] {
            assert!(acme.host_dir(bad).is_err(), "{bad}");
        }
    }
}
