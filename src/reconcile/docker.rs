//! Every command that changes a node, as argv (data, never a shell string:
//! the SSH layer quotes it once). Secret values never appear in an argv:
//! they go in an env file ([`env_file_content`]) or on stdin (`docker
//! login --password-stdin`).
//!
//! Image references and names are passed after `--`, so nothing from
//! fleet.toml can be read as an option.

use std::time::Duration;

use serde::Serialize;

use super::desired::PodKey;
use super::secrets::{RegistryLogin, Secret, env_file_unsafe};
use super::spec::{ContainerConfig, SpecHash, restart_arg};
use super::volumes::MountSpec;
use crate::config::Millicores;
use crate::observe::labels::{self, PrismLabels};
use crate::observe::{ContainerId, MESH_NETWORK};

/// How long `docker stop` waits after SIGTERM before SIGKILL.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(10);

/// Everything `docker run` needs for one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunSpec {
    /// [`super::spec::container_name`].
    pub name: String,
    pub fleet: String,
    pub pod: PodKey,
    pub service: String,
    pub spec: SpecHash,
    /// The pod's network ([`super::spec::network_name`]); the container
    /// joins it under its service name.
    pub network: String,
    pub config: ContainerConfig,
    /// Paths the image declares (`VOLUME`) that the service mounts nothing
    /// at: each gets a local volume of the pod.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub image_mounts: Vec<String>,
    /// With a mesh (`config.mesh`): the node's mesh gateway, where the
    /// fleet's names are answered (`--dns`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<std::net::Ipv4Addr>,
}

impl RunSpec {
    /// The labels that identify the container when it is read back.
    pub fn labels(&self) -> PrismLabels {
        PrismLabels {
            fleet: self.fleet.clone(),
            app: self.pod.app.clone(),
            service: self.service.clone(),
            instance: self.pod.instance,
            spec: self.spec.as_str().to_owned(),
        }
    }

    /// Whether `docker run` needs an env file (the service has secrets).
    pub(crate) fn needs_env_file(&self) -> bool {
        !self.config.secrets.is_empty()
    }
}

fn argv<const N: usize>(words: [&str; N]) -> Vec<String> {
    words.map(String::from).into()
}

/// `docker network create` for a pod's network, labelled with the fleet,
/// app and instance. Exits 1 with "already exists" when it does: the
/// caller treats that as done.
pub(crate) fn network_create_argv(fleet: &str, pod: &PodKey, network: &str) -> Vec<String> {
    let mut v = argv(["docker", "network", "create"]);
    for (key, value) in [
        (labels::FLEET, fleet),
        (labels::APP, &pod.app),
        (labels::INSTANCE, &pod.instance.to_string()),
    ] {
        v.push("--label".into());
        v.push(format!("{key}={value}"));
    }
    v.extend(["--".into(), network.to_owned()]);
    v
}

/// `docker pull --quiet -- IMAGE`.
pub(crate) fn pull_argv(image: &str) -> Vec<String> {
    let mut v = argv(["docker", "pull", "--quiet", "--"]);
    v.push(image.to_owned());
    v
}

/// `docker image inspect --format {{.Id}} -- IMAGE`: exit 0 when the node
/// has the image (then a `pull = "missing"` service skips the pull).
pub(crate) fn image_present_argv(image: &str) -> Vec<String> {
    let mut v = argv(["docker", "image", "inspect", "--format", "{{.Id}}", "--"]);
    v.push(image.to_owned());
    v
}

/// `docker network connect -- prism-mesh CONTAINER`: the container's
/// address on the node's mesh. "already exists" counts as done.
pub(crate) fn mesh_connect_argv(container: &str) -> Vec<String> {
    let mut v = argv(["docker", "network", "connect", "--"]);
    v.extend([MESH_NETWORK.to_owned(), container.to_owned()]);
    v
}

/// `docker network rm -- NETWORK`; "No such network" counts as done.
pub(crate) fn network_remove_argv(network: &str) -> Vec<String> {
    let mut v = argv(["docker", "network", "rm", "--"]);
    v.push(network.to_owned());
    v
}

/// A registry login: the argv, and what goes on its stdin (the password,
/// and nothing else). The password has no way into the argv.
pub(crate) fn login_command<'a>(host: &str, login: &'a RegistryLogin) -> (Vec<String>, &'a Secret) {
    (login_argv(host, &login.username), &login.password)
}

/// `docker login --username U --password-stdin HOST`; write the password
/// (and nothing else) to its stdin.
pub(crate) fn login_argv(host: &str, username: &str) -> Vec<String> {
    let mut v = argv(["docker", "login", "--username"]);
    v.extend([
        username.to_owned(),
        "--password-stdin".into(),
        "--".into(),
        host.to_owned(),
    ]);
    v
}

/// The registry host of an image reference as Docker reads it: the part
/// before the first '/' if it looks like a host (has a '.' or ':' or is
/// `localhost`), else Docker Hub's `docker.io`.
pub(crate) fn registry_host(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

/// A `docker run` needs an env file for the service's secrets and none
/// was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("container {name} has secrets, so docker run needs an env file holding them")]
pub struct EnvFileMissing {
    pub name: String,
}

/// `docker run -d` of a container: labels, pod network (reachable there by
/// its service name), limits, restart policy, the port published on an
/// ephemeral node port (read back with inspect), volumes, plain env, and
/// the secrets through `env_file`: a path on the node holding
/// [`env_file_content`], mode 0600 (or `/dev/stdin` with the content on
/// stdin, which leaves nothing on the node's disk). Required exactly when
/// [`RunSpec::needs_env_file`].
pub(crate) fn run_argv(
    spec: &RunSpec,
    env_file: Option<&str>,
) -> Result<Vec<String>, EnvFileMissing> {
    let c = &spec.config;
    // On a mesh the container joins a second network before it starts
    // (Docker 20.10 takes one at create): created here, then
    // `mesh_connect_argv`, then `start_argv`.
    let mut v = if c.mesh {
        argv(["docker", "create", "--init", "--name"])
    } else {
        argv(["docker", "run", "-d", "--init", "--name"])
    };
    v.push(spec.name.clone());
    v.extend(["--network".into(), spec.network.clone()]);
    v.extend(["--network-alias".into(), spec.service.clone()]);
    if let Some(dns) = spec.dns {
        v.extend(["--dns".into(), dns.to_string()]);
    }
    v.extend(spec.labels().run_args());
    // Always, empty without secrets: a container without it was made by
    // an older Prism, and what shows it hides every value.
    let names: Vec<&str> = c.secrets.keys().map(String::as_str).collect();
    v.extend([
        "--label".into(),
        format!("{}={}", labels::SECRETS, names.join(",")),
    ]);
    // Bytes without a unit: Docker reads a bare number as bytes.
    v.extend(["--memory".into(), c.memory.0.to_string()]);
    if let Some(cpu) = c.cpu {
        v.extend(["--cpus".into(), cpus_arg(cpu)]);
    }
    v.extend(["--restart".into(), restart_arg(c.restart).to_owned()]);
    // json-file named: a daemon whose default driver takes other options
    // (journald, syslog) would refuse these.
    v.extend([
        "--log-driver".into(),
        "json-file".into(),
        "--log-opt".into(),
        format!("max-size={}", c.logs.max_size.0),
        "--log-opt".into(),
        format!("max-file={}", c.logs.max_files),
    ]);
    // On a mesh the port is reached at the container's mesh address.
    if let Some(port) = c.port.filter(|_| !c.mesh) {
        v.extend(["-p".into(), port.to_string()]);
    }
    for m in &c.mounts {
        v.extend(m.run_args(&spec.fleet, &spec.pod, &spec.service));
    }
    for target in &spec.image_mounts {
        let m = MountSpec::Image {
            target: target.clone(),
        };
        v.extend(m.run_args(&spec.fleet, &spec.pod, &spec.service));
    }
    for (key, value) in &c.env {
        v.extend(["-e".into(), format!("{key}={value}")]);
    }
    match env_file {
        Some(path) => v.extend(["--env-file".into(), path.to_owned()]),
        None if spec.needs_env_file() => {
            return Err(EnvFileMissing {
                name: spec.name.clone(),
            });
        }
        None => {}
    }
    v.extend(["--".into(), c.image.clone()]);
    if let Some(cmd) = &c.command {
        v.extend(cmd.iter().cloned());
    }
    Ok(v)
}

/// Millicores as the decimal cores `--cpus` takes: 500 → `0.5`, 2000 → `2`.
fn cpus_arg(cpu: Millicores) -> String {
    let (whole, milli) = (cpu.0 / 1000, cpu.0 % 1000);
    if milli == 0 {
        return whole.to_string();
    }
    let frac = format!("{milli:03}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// A secret value that a Docker env file cannot carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secret {name} {why}")]
pub struct EnvFileError {
    pub name: String,
    pub why: &'static str,
}

/// The env file for `docker run --env-file`: one `NAME=value` line per
/// secret, values verbatim (Docker does no quoting or expansion). Values
/// with a line break, carriage return or NUL are refused: the caller must
/// fail the run, naming the secret.
pub(crate) fn env_file_content(
    secrets: &std::collections::BTreeMap<String, Secret>,
) -> Result<Secret, EnvFileError> {
    let mut text = String::new();
    for (name, value) in secrets {
        if let Some(why) = env_file_unsafe(value.expose()) {
            return Err(EnvFileError {
                name: name.clone(),
                why,
            });
        }
        text.push_str(name);
        text.push('=');
        text.push_str(value.expose());
        text.push('\n');
    }
    Ok(Secret::new(text))
}

/// `docker start ID`.
pub(crate) fn start_argv(id: &ContainerId) -> Vec<String> {
    start_argv_named(id.as_str())
}

/// `docker start -- CONTAINER`, by name (one just created).
pub(crate) fn start_argv_named(container: &str) -> Vec<String> {
    let mut v = argv(["docker", "start", "--"]);
    v.push(container.to_owned());
    v
}

/// `docker restart -t SECONDS CONTAINER` (an id, or a name).
pub(crate) fn restart_argv(container: &str, grace: Duration) -> Vec<String> {
    let mut v = argv(["docker", "restart", "-t"]);
    v.extend([
        grace.as_secs().to_string(),
        "--".into(),
        container.to_owned(),
    ]);
    v
}

/// `docker stop -t SECONDS ID`: SIGTERM, then SIGKILL after the grace.
pub(crate) fn stop_argv(id: &ContainerId, grace: Duration) -> Vec<String> {
    let mut v = argv(["docker", "stop", "-t"]);
    v.extend([grace.as_secs().to_string(), "--".into(), id.to_string()]);
    v
}

/// `docker rm -f ID` (after [`stop_argv`] for a graceful stop).
pub(crate) fn remove_argv(id: &ContainerId) -> Vec<String> {
    let mut v = argv(["docker", "rm", "-f", "--"]);
    v.push(id.to_string());
    v
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::{Bytes, Logs, RestartPolicy};

    fn spec() -> RunSpec {
        RunSpec {
            name: "prism.hobby.blog.0.web.0123456789ab".into(),
            fleet: "hobby".into(),
            pod: PodKey::new("blog", 0),
            service: "web".into(),
            spec: SpecHash::from_label("0123456789ab"),
            network: "prism.hobby.blog.0".into(),
            config: ContainerConfig {
                image: "registry.example.com/blog:1.4".into(),
                command: Some(vec!["php".into(), "-S".into(), "0.0.0.0:8080".into()]),
                env: BTreeMap::from([
                    ("APP_ENV".into(), "production".into()),
                    ("GREETING".into(), "hello world; $(rm -rf /)".into()),
                ]),
                secrets: BTreeMap::from([
                    ("APP_KEY".into(), Secret::new("base64:s3cr3t==")),
                    ("DB_PASSWORD".into(), Secret::new("p@ss word'\"")),
                ]),
                port: Some(8080),
                memory: Bytes(256 << 20),
                cpu: Some(Millicores(1500)),
                restart: RestartPolicy::UnlessStopped,
                mounts: vec![
                    MountSpec::Volume {
                        name: "storage".into(),
                        kind: crate::config::VolumeKind::Local,
                        target: "/srv/storage".into(),
                        read_only: false,
                    },
                    MountSpec::Host {
                        written: "/etc/ssl:/ssl:ro".into(),
                        target: "/ssl".into(),
                        read_only: true,
                    },
                ],
                logs: Logs::default(),
                mesh: false,
            },
            image_mounts: vec![],
            dns: None,
        }
    }

    fn id() -> ContainerId {
        ContainerId::parse(&"ab".repeat(32)).unwrap()
    }

    #[test]
    fn run() {
        let argv = run_argv(&spec(), Some("/run/prism/env.abc")).unwrap();
        assert_eq!(
            argv,
            [
                "docker",
                "run",
                "-d",
                "--init",
                "--name",
                "prism.hobby.blog.0.web.0123456789ab",
                "--network",
                "prism.hobby.blog.0",
                "--network-alias",
                "web",
                "--label",
                "prism.fleet=hobby",
                "--label",
                "prism.app=blog",
                "--label",
                "prism.service=web",
                "--label",
                "prism.instance=0",
                "--label",
                "prism.spec=0123456789ab",
                "--label",
                "prism.secrets=APP_KEY,DB_PASSWORD",
                "--memory",
                "268435456",
                "--cpus",
                "1.5",
                "--restart",
                "unless-stopped",
                "--log-driver",
                "json-file",
                "--log-opt",
                "max-size=10485760",
                "--log-opt",
                "max-file=3",
                "-p",
                "8080",
                "--mount",
                "type=volume,src=prism.hobby.blog.0.storage,dst=/srv/storage",
                "-v",
                "/etc/ssl:/ssl:ro",
                "-e",
                "APP_ENV=production",
                "-e",
                "GREETING=hello world; $(rm -rf /)",
                "--env-file",
                "/run/prism/env.abc",
                "--",
                "registry.example.com/blog:1.4",
                "php",
                "-S",
                "0.0.0.0:8080",
            ]
        );
        for arg in &argv {
            assert!(!arg.contains("s3cr3t") && !arg.contains("p@ss"), "{arg}");
        }
    }

    #[test]
    fn run_minimal() {
        let mut s = spec();
        s.config = ContainerConfig {
            image: "redis:7".into(),
            command: None,
            env: BTreeMap::new(),
            secrets: BTreeMap::new(),
            port: None,
            memory: Bytes(64 << 20),
            cpu: None,
            restart: RestartPolicy::No,
            mounts: vec![],
            logs: Logs {
                max_size: Bytes(1 << 20),
                max_files: 1,
            },
            mesh: false,
        };
        assert!(!s.needs_env_file());
        let argv = run_argv(&s, None).unwrap();
        // Without secrets the label is there, empty: no value is hidden.
        assert!(argv.iter().any(|a| a == "prism.secrets="), "{argv:?}");
        let tail: Vec<&str> = argv[22..].iter().map(String::as_str).collect();
        assert_eq!(
            tail,
            [
                "--memory",
                "67108864",
                "--restart",
                "no",
                "--log-driver",
                "json-file",
                "--log-opt",
                "max-size=1048576",
                "--log-opt",
                "max-file=1",
                "--",
                "redis:7"
            ]
        );
    }

    #[test]
    fn run_refuses_to_drop_secrets() {
        assert_eq!(
            run_argv(&spec(), None),
            Err(EnvFileMissing {
                name: "prism.hobby.blog.0.web.0123456789ab".into()
            })
        );
    }

    #[test]
    fn env_file() {
        let content = env_file_content(&spec().config.secrets).unwrap();
        assert_eq!(
            content.expose(),
            "APP_KEY=base64:s3cr3t==\nDB_PASSWORD=p@ss word'\"\n"
        );
        assert_eq!(env_file_content(&BTreeMap::new()).unwrap().expose(), "");
        let bad = BTreeMap::from([("PEM".to_owned(), Secret::new("line1\nline2"))]);
        let err = env_file_content(&bad).unwrap_err();
        assert_eq!(
            err.to_string(),
            "secret PEM contains a line break, which a Docker env file cannot carry"
        );
    }

    #[test]
    fn cpus() {
        let cases = [
            (1, "0.001"),
            (10, "0.01"),
            (500, "0.5"),
            (1000, "1"),
            (1250, "1.25"),
            (2000, "2"),
        ];
        for (milli, want) in cases {
            assert_eq!(cpus_arg(Millicores(milli)), want);
        }
    }

    #[test]
    fn small_commands() {
        let id = id();
        let hex = "ab".repeat(32);
        assert_eq!(
            network_create_argv("hobby", &PodKey::new("blog", 3), "prism.hobby.blog.3"),
            [
                "docker",
                "network",
                "create",
                "--label",
                "prism.fleet=hobby",
                "--label",
                "prism.app=blog",
                "--label",
                "prism.instance=3",
                "--",
                "prism.hobby.blog.3"
            ]
        );
        assert_eq!(
            pull_argv("-x:1"),
            ["docker", "pull", "--quiet", "--", "-x:1"]
        );
        assert_eq!(
            login_argv("reg.example.com", "bot"),
            [
                "docker",
                "login",
                "--username",
                "bot",
                "--password-stdin",
                "--",
                "reg.example.com"
            ]
        );
        assert_eq!(
            image_present_argv("-x:1"),
            [
                "docker", "image", "inspect", "--format", "{{.Id}}", "--", "-x:1"
            ]
        );
        assert_eq!(
            network_remove_argv("prism.hobby.blog.3"),
            ["docker", "network", "rm", "--", "prism.hobby.blog.3"]
        );
        assert_eq!(start_argv(&id), ["docker", "start", "--", &hex]);
        assert_eq!(
            restart_argv(id.as_str(), Duration::from_secs(7)),
            ["docker", "restart", "-t", "7", "--", &hex]
        );
        assert_eq!(
            stop_argv(&id, STOP_GRACE),
            ["docker", "stop", "-t", "10", "--", &hex]
        );
        assert_eq!(remove_argv(&id), ["docker", "rm", "-f", "--", &hex]);
    }

    #[test]
    fn login_keeps_the_password_on_stdin() {
        let password = "hunter2-$(id)";
        let login = RegistryLogin {
            username: "bot".into(),
            password: Secret::new(password),
        };
        let (argv, stdin) = login_command("172.31.250.3:5000", &login);
        assert_eq!(
            argv,
            [
                "docker",
                "login",
                "--username",
                "bot",
                "--password-stdin",
                "--",
                "172.31.250.3:5000"
            ]
        );
        assert!(argv.iter().all(|a| !a.contains("hunter2")), "{argv:?}");
        assert_eq!(stdin.expose(), password);
    }

    #[test]
    fn registries() {
        let cases = [
            ("redis:7", "docker.io"),
            ("library/redis", "docker.io"),
            ("bitnami/redis:7", "docker.io"),
            ("ghcr.io/org/app:1", "ghcr.io"),
            ("172.31.250.2:5000/prism/testapp:1", "172.31.250.2:5000"),
            ("localhost/app", "localhost"),
            ("localhost:5000/app", "localhost:5000"),
        ];
        for (image, host) in cases {
            assert_eq!(registry_host(image), host, "{image}");
        }
    }
}
