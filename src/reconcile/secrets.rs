//! Secret values: read on the operator box (environment or file), carried
//! in a type that never prints them, and handed to containers only through
//! an env file. `resolve_secrets` is this module's only I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::config::{Config, SecretSource};

/// A value that must never reach argv, logs or `prism plan` output.
/// `Debug` prints `Secret(…)`; there is no `Display` and no `Serialize`:
/// the only way to the text is [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself: only for the spec hash, the env file and the
    /// registry login's stdin.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// Why a value cannot go into a Docker env file, if it cannot: Docker
/// reads the file line by line (so no line breaks), drops a trailing `\r`,
/// and a process environment cannot hold NUL.
pub(crate) fn env_file_unsafe(value: &str) -> Option<&'static str> {
    if value.contains('\n') {
        Some("contains a line break, which a Docker env file cannot carry")
    } else if value.contains('\r') {
        Some("contains a carriage return, which Docker drops from env files")
    } else if value.contains('\0') {
        Some("contains a NUL byte, which no environment variable can hold")
    } else {
        None
    }
}

/// Registry credentials, for `docker login --password-stdin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryLogin {
    pub username: String,
    pub password: Secret,
}

/// The key secret values are hashed with before they go into a spec hash
/// (HMAC-SHA256), kept in the state file: a spec hash, which names and
/// labels show, cannot be used to test guesses of a secret by anyone
/// without it.
/// As long as SHA-256's block: HMAC uses such a key as it is.
#[derive(Clone, PartialEq, Eq)]
pub struct SpecKey(pub [u8; 64]);

impl Default for SpecKey {
    fn default() -> Self {
        SpecKey([0; 64])
    }
}

impl fmt::Debug for SpecKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SpecKey(…)")
    }
}

impl SpecKey {
    /// HMAC-SHA256 of `value` under this key, as hex.
    pub(crate) fn digest(&self, value: &str) -> String {
        use hmac::{KeyInit, Mac};
        let mut mac = <hmac::Hmac<sha2::Sha256> as KeyInit>::new(&self.0.into());
        mac.update(value.as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// Every secret a fleet needs, resolved: per (app, service) the variable
/// name and its value, and per registry host its login; and the key their
/// values are hashed with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    services: BTreeMap<(String, String), BTreeMap<String, Secret>>,
    pub registries: BTreeMap<String, RegistryLogin>,
    pub spec_key: SpecKey,
}

impl Secrets {
    pub fn insert(&mut self, app: &str, service: &str, name: &str, value: Secret) {
        self.services
            .entry((app.to_owned(), service.to_owned()))
            .or_default()
            .insert(name.to_owned(), value);
    }

    pub fn get(&self, app: &str, service: &str, name: &str) -> Option<&Secret> {
        self.services
            .get(&(app.to_owned(), service.to_owned()))?
            .get(name)
    }
}

/// Where a secret is used, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretOwner {
    /// `apps.APP.services.SERVICE.secrets.NAME`
    Service {
        app: String,
        service: String,
        name: String,
    },
    /// `registries.HOST.password_*`
    Registry { host: String },
}

impl fmt::Display for SecretOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretOwner::Service { app, service, name } => {
                write!(f, "secret {name} of apps.{app}.services.{service}")
            }
            SecretOwner::Registry { host } => write!(f, "the password of registry {host}"),
        }
    }
}

/// A secret that could not be read. Messages name the secret and its
/// source, never its value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{owner}: environment variable {var} is not set on the operator box")]
    EnvMissing { owner: SecretOwner, var: String },
    #[error("{owner}: environment variable {var} is not valid UTF-8")]
    EnvNotUnicode { owner: SecretOwner, var: String },
    #[error("{owner}: cannot read {}: {source}", .file.display())]
    File {
        owner: SecretOwner,
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{owner} (from {from}) {why}")]
    Unusable {
        owner: SecretOwner,
        from: String,
        why: &'static str,
    },
    #[error("{owner}: no source (set env or file)")]
    NoSource { owner: SecretOwner },
}

/// Reads every service secret and registry password fleet.toml names.
/// Service secret files may end in one line break (as `echo` writes them),
/// which is dropped; any other line break is refused, as Docker env files
/// cannot carry it. A registry password is the file's first line.
pub(crate) fn resolve_secrets(config: &Config) -> Result<Secrets, SecretError> {
    let mut out = Secrets::default();
    for (app_name, app) in &config.fleet.apps {
        for (svc_name, svc) in &app.services {
            for (name, source) in &svc.secrets {
                let owner = SecretOwner::Service {
                    app: app_name.clone(),
                    service: svc_name.clone(),
                    name: name.clone(),
                };
                let (value, from) = read_source(config, source, &owner)?;
                let value = trim_one_newline(value);
                if let Some(why) = env_file_unsafe(&value) {
                    return Err(SecretError::Unusable { owner, from, why });
                }
                out.insert(app_name, svc_name, name, Secret(value));
            }
        }
    }
    for (host, reg) in &config.fleet.registries {
        let owner = SecretOwner::Registry { host: host.clone() };
        let source = SecretSource {
            env: reg.password_env.clone(),
            file: reg.password_file.clone(),
        };
        let (value, _) = read_source(config, &source, &owner)?;
        let first_line = value.lines().next().unwrap_or_default().to_owned();
        out.registries.insert(
            host.clone(),
            RegistryLogin {
                username: reg.username.clone(),
                password: Secret(first_line),
            },
        );
    }
    Ok(out)
}

/// The raw value and a description of where it came from.
fn read_source(
    config: &Config,
    source: &SecretSource,
    owner: &SecretOwner,
) -> Result<(String, String), SecretError> {
    if let Some(var) = &source.env {
        return match std::env::var(var) {
            Ok(v) => Ok((v, format!("environment variable {var}"))),
            Err(std::env::VarError::NotPresent) => Err(SecretError::EnvMissing {
                owner: owner.clone(),
                var: var.clone(),
            }),
            Err(std::env::VarError::NotUnicode(_)) => Err(SecretError::EnvNotUnicode {
                owner: owner.clone(),
                var: var.clone(),
            }),
        };
    }
    if let Some(file) = &source.file {
        let path = config.resolve(file);
        return match std::fs::read_to_string(&path) {
            Ok(v) => Ok((v, path.display().to_string())),
            Err(source) => Err(SecretError::File {
                owner: owner.clone(),
                file: path,
                source,
            }),
        };
    }
    Err(SecretError::NoSource {
        owner: owner.clone(),
    })
}

fn trim_one_newline(mut s: String) -> String {
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::path::Path;

    use super::*;

    fn config(dir: &Path, text: &str) -> Config {
        let file = dir.join("fleet.toml");
        let fleet = crate::config::parse(&file, text).unwrap();
        Config {
            file,
            fleet,
            warnings: Vec::new(),
        }
    }

    const HEAD: &str = r#"
[fleet]
name = "t"
[discovery]
provider = "static"
nodes = [{ name = "n1", address = "10.0.0.1" }]
"#;

    #[test]
    fn reads_env_and_files_relative_to_fleet_toml() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("db-password"), "hunter2\n").unwrap();
        let mut reg = std::fs::File::create(dir.path().join("reg")).unwrap();
        writeln!(reg, "regpass\nignored second line").unwrap();
        // A variable every test process has: setting one would race other
        // threads reading the environment.
        let var = "PATH";
        let path = std::env::var(var).unwrap();
        let text = format!(
            r#"{HEAD}
[registries."reg.example.com"]
username = "bot"
password_file = "reg"
[apps.blog.services.web]
image = "blog:1"
secrets = {{ APP_KEY = {{ env = "{var}" }}, DB_PASSWORD = {{ file = "db-password" }} }}
"#
        );
        let secrets = resolve_secrets(&config(dir.path(), &text)).unwrap();
        assert_eq!(
            secrets.get("blog", "web", "APP_KEY"),
            Some(&Secret::new(path.clone()))
        );
        assert_eq!(
            secrets.get("blog", "web", "DB_PASSWORD"),
            Some(&Secret::new("hunter2"))
        );
        assert_eq!(secrets.get("blog", "queue", "APP_KEY"), None);
        assert_eq!(
            secrets.registries["reg.example.com"],
            RegistryLogin {
                username: "bot".into(),
                password: Secret::new("regpass"),
            }
        );
        // Nothing prints a value.
        let debug = format!("{secrets:?}");
        assert!(!debug.contains("hunter2") && !debug.contains(&path) && !debug.contains("regpass"));
    }

    #[test]
    fn missing_sources_are_named_without_values() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"{HEAD}
[apps.blog.services.web]
image = "blog:1"
secrets = {{ APP_KEY = {{ env = "PRISM_TEST_SECRET_NEVER_SET" }} }}
"#
        );
        let err = resolve_secrets(&config(dir.path(), &text)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "secret APP_KEY of apps.blog.services.web: environment variable PRISM_TEST_SECRET_NEVER_SET is not set on the operator box"
        );

        let text = format!(
            r#"{HEAD}
[apps.blog.services.web]
image = "blog:1"
secrets = {{ DB = {{ file = "nope" }} }}
"#
        );
        let err = resolve_secrets(&config(dir.path(), &text)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("secret DB of apps.blog.services.web: cannot read "),
            "{msg}"
        );
        assert!(msg.contains("nope"), "{msg}");
    }

    #[test]
    fn line_breaks_inside_a_value_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), "-----BEGIN-----\nabc\n").unwrap();
        let text = format!(
            r#"{HEAD}
[apps.blog.services.web]
image = "blog:1"
secrets = {{ TLS_KEY = {{ file = "key" }} }}
"#
        );
        let err = resolve_secrets(&config(dir.path(), &text)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("secret TLS_KEY of apps.blog.services.web (from "),
            "{msg}"
        );
        assert!(
            msg.ends_with("contains a line break, which a Docker env file cannot carry"),
            "{msg}"
        );
        assert!(!msg.contains("BEGIN"), "{msg}");
    }

    #[test]
    fn unsafe_values() {
        assert_eq!(
            env_file_unsafe("plain value with spaces = and # and 'quotes'"),
            None
        );
        assert!(env_file_unsafe("a\nb").is_some());
        assert!(env_file_unsafe("a\r").is_some());
        assert!(env_file_unsafe("a\0").is_some());
        assert_eq!(trim_one_newline("x\r\n".into()), "x");
        assert_eq!(trim_one_newline("x\n\n".into()), "x\n");
    }
}
