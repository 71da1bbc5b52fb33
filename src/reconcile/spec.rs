//! What a service's container is made from ([`ContainerConfig`]), its
//! stable hash ([`SpecHash`], the `prism.spec` label) and the names Prism
//! gives containers and networks.
//!
//! The hash covers exactly the `ContainerConfig`, which is exactly what
//! `docker run` is given besides the container's identity (name, labels,
//! network): a change to any of it replaces the container, and nothing
//! else does. Health checks are run by Prism, not Docker, so changing one
//! replaces nothing; `hosts` and `depends_on` neither.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

use super::secrets::{Secret, SpecKey};
use super::volumes::MountSpec;
use crate::config::{Bytes, Logs, Millicores, RestartPolicy};

/// Everything `docker run` needs about a service apart from who the
/// container is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerConfig {
    pub image: String,
    /// Arguments after the image; `None` runs the image's own command.
    pub command: Option<Vec<String>>,
    /// Plain variables, given as `-e K=V`.
    pub env: BTreeMap<String, String>,
    /// Secret variables, given only through an env file. Serialized as
    /// their names.
    #[serde(serialize_with = "secret_names")]
    pub secrets: BTreeMap<String, Secret>,
    /// The container port, published on an ephemeral node port.
    pub port: Option<u16>,
    /// A hard limit (`--memory`) and what the scheduler reserves.
    pub memory: Bytes,
    /// A limit (`--cpus`) and what the scheduler reserves; `None`: no
    /// limit, and nothing reserved (as `prism validate` counts it).
    pub cpu: Option<Millicores>,
    #[serde(serialize_with = "restart_policy")]
    pub restart: RestartPolicy,
    /// The service's `volumes`, resolved: volumes of the pod, host paths.
    pub mounts: Vec<MountSpec>,
    /// Log rotation (`--log-opt max-size`, `max-file`).
    #[serde(serialize_with = "logs")]
    pub logs: Logs,
    /// On the node's mesh network too (`[network]`): reached at its mesh
    /// address, its port not published on the node.
    pub mesh: bool,
}

fn logs<S: Serializer>(l: &Logs, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut st = s.serialize_struct("Logs", 2)?;
    st.serialize_field("max_size", &l.max_size.0)?;
    st.serialize_field("max_files", &l.max_files)?;
    st.end()
}

fn secret_names<S: Serializer>(
    secrets: &BTreeMap<String, Secret>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(secrets.keys())
}

fn restart_policy<S: Serializer>(p: &RestartPolicy, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(restart_arg(*p))
}

/// The `--restart` value Docker takes.
pub(crate) fn restart_arg(p: RestartPolicy) -> &'static str {
    match p {
        RestartPolicy::Always => "always",
        RestartPolicy::UnlessStopped => "unless-stopped",
        RestartPolicy::OnFailure => "on-failure",
        RestartPolicy::No => "no",
    }
}

/// Hex digits kept of the SHA-256: 48 bits, plenty to tell the versions
/// of one service apart.
pub(crate) const SPEC_HASH_LEN: usize = 12;

/// The short hash of a [`ContainerConfig`], as it appears in the
/// `prism.spec` label and the container name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SpecHash(String);

impl SpecHash {
    /// Hashes the config. Stable across runs, platforms and Prism versions
    /// as long as the encoding below is kept: fields are written in a fixed
    /// order, each length-prefixed, maps in key order; optional fields only
    /// when set, so a field added later leaves existing hashes alone.
    /// Secret values count (a new value must replace the container) only
    /// through their HMAC under `key`, which stays in the state file: the
    /// short hash shown in names and labels cannot be used to test guesses
    /// of a secret.
    pub fn of(c: &ContainerConfig, key: &SpecKey) -> SpecHash {
        // Destructured so that a new field cannot be forgotten here.
        let ContainerConfig {
            image,
            command,
            env,
            secrets,
            port,
            memory,
            cpu,
            restart,
            mounts,
            logs,
            mesh,
        } = c;
        let mut e = Encoder(Sha256::new());
        e.bytes(b"prism-spec-v1");
        e.field("image", image.as_bytes());
        if let Some(command) = command {
            e.list("command", command.iter().map(String::as_str));
        }
        if !env.is_empty() {
            e.map("env", env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        }
        if !secrets.is_empty() {
            let keyed: Vec<(&str, String)> = secrets
                .iter()
                .map(|(k, v)| (k.as_str(), key.digest(v.expose())))
                .collect();
            e.map("secrets_keyed", keyed.iter().map(|(k, v)| (*k, v.as_str())));
        }
        if let Some(port) = port {
            e.field("port", &port.to_le_bytes());
        }
        e.field("memory", &memory.0.to_le_bytes());
        if let Some(cpu) = cpu {
            e.field("cpu", &cpu.0.to_le_bytes());
        }
        e.field("restart", restart_arg(*restart).as_bytes());
        if !mounts.is_empty() {
            let written: Vec<String> = mounts.iter().map(written).collect();
            e.list("volumes", written.iter().map(String::as_str));
            // Since volumes belong to pods: what a named one is. A service
            // with host paths alone keeps the hash it had before.
            let kinds: Vec<&str> = mounts
                .iter()
                .filter_map(|m| match m {
                    MountSpec::Volume { kind, .. } => Some(kind.as_str()),
                    _ => None,
                })
                .collect();
            if !kinds.is_empty() {
                e.list("volume_kinds", kinds.into_iter());
            }
        }
        // Only when not the default: containers made before Prism rotated
        // logs keep their hash (and get rotation at their next change).
        if *logs != Logs::default() {
            e.field("log_max_size", &logs.max_size.0.to_le_bytes());
            e.field("log_max_files", &logs.max_files.to_le_bytes());
        }
        // Only when on: a fleet without a mesh keeps its hashes.
        if *mesh {
            e.field("mesh", b"1");
        }
        let digest = e.0.finalize();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        SpecHash(hex[..SPEC_HASH_LEN].to_owned())
    }

    /// A hash read back from a `prism.spec` label.
    pub(crate) fn from_label(s: &str) -> SpecHash {
        SpecHash(s.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SpecHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A mount as fleet.toml writes it: `name:/path[:ro]`, a host path verbatim.
fn written(m: &MountSpec) -> String {
    match m {
        MountSpec::Volume {
            name,
            target,
            read_only,
            ..
        } => format!("{name}:{target}{}", if *read_only { ":ro" } else { "" }),
        MountSpec::Host { written, .. } => written.clone(),
        MountSpec::Image { target } => format!("image:{target}"),
    }
}

/// An unambiguous encoding: every item is length-prefixed.
struct Encoder(Sha256);

impl Encoder {
    fn bytes(&mut self, b: &[u8]) {
        self.0.update((b.len() as u64).to_le_bytes());
        self.0.update(b);
    }

    fn field(&mut self, name: &str, value: &[u8]) {
        self.bytes(name.as_bytes());
        self.bytes(value);
    }

    fn list<'a>(&mut self, name: &str, items: impl ExactSizeIterator<Item = &'a str>) {
        self.field(name, &(items.len() as u64).to_le_bytes());
        for item in items {
            self.bytes(item.as_bytes());
        }
    }

    fn map<'a>(&mut self, name: &str, pairs: impl ExactSizeIterator<Item = (&'a str, &'a str)>) {
        self.field(name, &(pairs.len() as u64).to_le_bytes());
        for (k, v) in pairs {
            self.bytes(k.as_bytes());
            self.bytes(v.as_bytes());
        }
    }
}

/// `prism.FLEET.APP.INSTANCE.SERVICE.SPEC`. App and service names cannot
/// hold a '.', so read from the right the name is unambiguous even when the
/// fleet's name has dots; the spec hash in it lets a replacement run beside
/// the container it replaces.
pub(crate) fn container_name(
    fleet: &str,
    app: &str,
    instance: u32,
    service: &str,
    spec: &SpecHash,
) -> String {
    format!("prism.{fleet}.{app}.{instance}.{service}.{spec}")
}

/// `prism.FLEET.APP.INSTANCE`: one network per pod, so the services of one
/// instance reach each other by service name and never those of another
/// instance that happens to share the node.
pub(crate) fn network_name(fleet: &str, app: &str, instance: u32) -> String {
    format!("prism.{fleet}.{app}.{instance}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(read_only: bool) -> MountSpec {
        MountSpec::Volume {
            name: "blog-storage".into(),
            kind: crate::config::VolumeKind::Local,
            target: "/var/www/storage".into(),
            read_only,
        }
    }

    fn key() -> SpecKey {
        SpecKey::default()
    }

    pub(crate) fn config() -> ContainerConfig {
        ContainerConfig {
            image: "registry.example.com/blog:1.4".into(),
            command: Some(vec!["php".into(), "artisan".into(), "serve".into()]),
            env: BTreeMap::from([("APP_ENV".into(), "production".into())]),
            secrets: BTreeMap::from([("APP_KEY".into(), Secret::new("s3cret"))]),
            port: Some(8080),
            memory: Bytes(256 << 20),
            cpu: Some(Millicores(500)),
            restart: RestartPolicy::UnlessStopped,
            mounts: vec![storage(false)],
            logs: Logs::default(),
            mesh: false,
        }
    }

    #[test]
    fn hash_is_stable() {
        // Pinned, and computed independently from the encoding described
        // on `SpecHash::of`: a change here replaces every container of
        // every fleet. (With a secret: 841c6cb16204 until secret values
        // counted only through the key.)
        assert_eq!(SpecHash::of(&config(), &key()).as_str(), "7de9f9011c7b");
        assert_eq!(
            SpecHash::of(&config(), &key()),
            SpecHash::of(&config().clone(), &key())
        );
        // Host paths alone, or no volumes: the hashes Prism gave before
        // volumes belonged to pods (a named volume's changed, once, as its
        // Docker volume did: 8cf88db68d43 then), with the secret keyed
        // (42368ee3c040 and f033dc1e3d15 before).
        let mut host = config();
        host.mounts = vec![MountSpec::Host {
            written: "/srv/storage:/var/www/storage".into(),
            target: "/var/www/storage".into(),
            read_only: false,
        }];
        assert_eq!(SpecHash::of(&host, &key()).as_str(), "c77c1212112d");
        let mut none = config();
        none.mounts.clear();
        assert_eq!(SpecHash::of(&none, &key()).as_str(), "bbb1a703ddde");
    }

    #[test]
    fn every_field_changes_the_hash() {
        let base = SpecHash::of(&config(), &key());
        type Change = Box<dyn Fn(&mut ContainerConfig)>;
        let changes: Vec<(&str, Change)> = vec![
            (
                "image",
                Box::new(|c| c.image = "registry.example.com/blog:1.5".into()),
            ),
            ("command", Box::new(|c| c.command = None)),
            (
                "command arg",
                Box::new(|c| c.command = Some(vec!["php".into(), "artisan serve".into()])),
            ),
            (
                "env value",
                Box::new(|c| {
                    c.env.insert("APP_ENV".into(), "staging".into());
                }),
            ),
            (
                "env key",
                Box::new(|c| c.env = BTreeMap::from([("APP_ENVX".into(), "production".into())])),
            ),
            (
                "secret value",
                Box::new(|c| {
                    c.secrets = BTreeMap::from([("APP_KEY".into(), Secret::new("other"))])
                }),
            ),
            (
                "secret moved to env",
                Box::new(|c| {
                    c.secrets.clear();
                    c.env.insert("APP_KEY".into(), "s3cret".into());
                }),
            ),
            ("port", Box::new(|c| c.port = Some(8081))),
            ("no port", Box::new(|c| c.port = None)),
            ("memory", Box::new(|c| c.memory = Bytes(512 << 20))),
            ("cpu", Box::new(|c| c.cpu = Some(Millicores(501)))),
            ("no cpu", Box::new(|c| c.cpu = None)),
            ("restart", Box::new(|c| c.restart = RestartPolicy::Always)),
            ("volume ro", Box::new(|c| c.mounts = vec![storage(true)])),
            (
                "volume kind",
                Box::new(|c| {
                    c.mounts = vec![MountSpec::Volume {
                        name: "blog-storage".into(),
                        kind: crate::config::VolumeKind::Durable,
                        target: "/var/www/storage".into(),
                        read_only: false,
                    }]
                }),
            ),
            (
                "host path",
                Box::new(|c| {
                    c.mounts = vec![MountSpec::Host {
                        written: "/srv/storage:/var/www/storage".into(),
                        target: "/var/www/storage".into(),
                        read_only: false,
                    }]
                }),
            ),
            ("no volumes", Box::new(|c| c.mounts.clear())),
            ("log size", Box::new(|c| c.logs.max_size = Bytes(50 << 20))),
            ("log files", Box::new(|c| c.logs.max_files = 5)),
        ];
        let mut seen = std::collections::BTreeSet::from([base.clone()]);
        for (what, change) in changes {
            let mut c = config();
            change(&mut c);
            let h = SpecHash::of(&c, &key());
            assert_ne!(h, base, "{what}");
            assert!(seen.insert(h), "{what} collides with another change");
        }
    }

    #[test]
    fn secrets_count_only_through_the_key() {
        let other = SpecKey([7; 64]);
        // With a secret, whoever lacks the key cannot tell the hash.
        assert_ne!(
            SpecHash::of(&config(), &key()),
            SpecHash::of(&config(), &other)
        );
        // Without one, the key changes nothing: no container without
        // secrets is replaced for it.
        let mut plain = config();
        plain.secrets.clear();
        assert_eq!(SpecHash::of(&plain, &key()), SpecHash::of(&plain, &other));
        // The value still counts, under any one key.
        let mut changed = config();
        changed.secrets = BTreeMap::from([("APP_KEY".into(), Secret::new("other"))]);
        assert_ne!(
            SpecHash::of(&changed, &other),
            SpecHash::of(&config(), &other)
        );
    }

    #[test]
    fn length_prefixes_keep_fields_apart() {
        let mut a = config();
        a.command = Some(vec!["ab".into(), "c".into()]);
        let mut b = config();
        b.command = Some(vec!["a".into(), "bc".into()]);
        assert_ne!(SpecHash::of(&a, &key()), SpecHash::of(&b, &key()));
    }

    #[test]
    fn serialized_config_names_secrets_without_values() {
        let json = serde_json::to_string(&config()).unwrap();
        assert!(json.contains(r#""secrets":["APP_KEY"]"#), "{json}");
        assert!(json.contains(r#""restart":"unless-stopped""#), "{json}");
        assert!(!json.contains("s3cret"), "{json}");
    }

    #[test]
    fn names() {
        let spec = SpecHash::from_label("0123456789ab");
        assert_eq!(
            container_name("hobby", "blog", 0, "web", &spec),
            "prism.hobby.blog.0.web.0123456789ab"
        );
        assert_eq!(network_name("hobby", "blog", 2), "prism.hobby.blog.2");
    }
}
