//! The desired state: fleet.toml's apps turned into pods and container
//! specs, with secret values filled in. Built by a pure function.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use super::docker::RunSpec;
use super::secrets::Secrets;
use super::spec::{ContainerConfig, SpecHash, container_name, network_name};
use super::volumes::{EbsSpec, MountSpec, VolumeSpec, gib};
use crate::config::{
    App, Bytes, Fleet, Health, Job, Millicores, Mount, MountSource, Provider, PullPolicy,
    VolumeKind,
};

/// One app instance: its services run together on one node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PodKey {
    pub app: String,
    pub instance: u32,
}

impl PodKey {
    pub fn new(app: &str, instance: u32) -> PodKey {
        PodKey {
            app: app.to_owned(),
            instance,
        }
    }
}

impl fmt::Display for PodKey {
    /// `blog/0`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.app, self.instance)
    }
}

/// What every node keeps free for the OS, sshd and Docker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Reserve {
    pub memory: Bytes,
    pub cpu: Millicores,
}

#[derive(Debug, Clone)]
pub struct Desired {
    /// `[fleet] name`: the `prism.fleet` label of every container.
    pub fleet: String,
    pub reserve: Reserve,
    pub apps: BTreeMap<String, AppSpec>,
    /// Registry hosts that have credentials in fleet.toml: pull from them
    /// after `docker login`.
    pub registries: BTreeSet<String>,
    /// `[fleet] helper_image`: small containers of Prism's own on the
    /// nodes (a job run's timeout).
    pub helper_image: String,
    /// `[lifecycle] fence_after`, when nodes are fenced (EC2 discovery,
    /// `fence = "terminate"`).
    pub fence_after: Option<std::time::Duration>,
    /// `[lifecycle] zone_wait` (EC2 discovery): how long a durable volume's
    /// zone has no ready node before the volume moves through a snapshot.
    pub zone_wait: Option<std::time::Duration>,
}

#[derive(Debug, Clone)]
pub struct AppSpec {
    pub name: String,
    /// Pods `0..instances`.
    pub instances: u32,
    /// In start order: every service after those it depends on (ties by
    /// name).
    pub services: Vec<ServiceSpec>,
    /// What one pod reserves: the sum over its services.
    pub memory: Bytes,
    /// What one pod reserves; a service without `cpu` counts 0.
    pub cpu: Millicores,
    /// Scheduled jobs, by name.
    pub jobs: BTreeMap<String, Job>,
    /// Each pod's volumes, by name.
    pub volumes: BTreeMap<String, VolumeSpec>,
}

#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub container: ContainerConfig,
    /// `SpecHash::of(&container, key)`.
    pub spec: SpecHash,
    pub depends_on: Vec<String>,
    /// Proxy routes (not part of the container).
    pub hosts: Vec<String>,
    /// Checked by Prism (not part of the container). A container of a
    /// service with a check counts as ready only once it is healthy.
    pub health: Option<Health>,
    /// When the image is pulled (not part of the container).
    pub pull: PullPolicy,
}

/// A secret fleet.toml names that the given `Secrets` lack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("secret {name} of apps.{app}.services.{service} was not resolved")]
pub struct MissingSecret {
    pub app: String,
    pub service: String,
    pub name: String,
}

impl Desired {
    /// The desired state of a validated fleet, with secret values from
    /// [`super::resolve_secrets`].
    pub fn build(fleet: &Fleet, secrets: &Secrets) -> Result<Desired, MissingSecret> {
        let mut apps = BTreeMap::new();
        let provider = fleet.discovery.provider;
        for (name, app) in &fleet.apps {
            apps.insert(
                name.clone(),
                app_spec(name, app, secrets, provider, fleet.network.is_some())?,
            );
        }
        Ok(Desired {
            fleet: fleet.fleet.name.clone(),
            reserve: Reserve {
                memory: fleet.fleet.reserve_memory,
                cpu: fleet.fleet.reserve_cpu,
            },
            apps,
            registries: fleet.registries.keys().cloned().collect(),
            helper_image: fleet.fleet.helper_image.clone(),
            fence_after: (provider == Provider::Ec2
                && fleet.lifecycle.fence == crate::config::Fence::Terminate)
                .then_some(fleet.lifecycle.fence_after.0),
            zone_wait: (provider == Provider::Ec2).then_some(fleet.lifecycle.zone_wait.0),
        })
    }

    /// Every pod, by app then instance.
    pub fn pods(&self) -> impl Iterator<Item = PodKey> + '_ {
        self.apps
            .values()
            .flat_map(|a| (0..a.instances).map(|i| PodKey::new(&a.name, i)))
    }

    /// Every image a service runs, each with the strongest pull policy
    /// among its services (`always` over `missing`). An app scaled to zero
    /// runs nothing, so its images are not wanted anywhere.
    pub(crate) fn image_policies(&self) -> BTreeMap<String, PullPolicy> {
        let mut out: BTreeMap<String, PullPolicy> = BTreeMap::new();
        let running = self.apps.values().filter(|a| a.instances > 0);
        for svc in running.flat_map(|a| &a.services) {
            let policy = out.entry(svc.container.image.clone()).or_default();
            *policy = (*policy).max(svc.pull);
        }
        out
    }

    /// Every image a service runs.
    pub fn images(&self) -> BTreeSet<String> {
        self.image_policies().into_keys().collect()
    }

    /// The app of a pod, if the pod is wanted.
    pub(crate) fn app_of(&self, pod: &PodKey) -> Option<&AppSpec> {
        self.apps
            .get(&pod.app)
            .filter(|a| pod.instance < a.instances)
    }

    pub fn network(&self, pod: &PodKey) -> String {
        network_name(&self.fleet, &pod.app, pod.instance)
    }

    /// What `docker run` needs for one service of one pod.
    pub(crate) fn run_spec(&self, pod: &PodKey, service: &ServiceSpec) -> RunSpec {
        RunSpec {
            name: container_name(
                &self.fleet,
                &pod.app,
                pod.instance,
                &service.name,
                &service.spec,
            ),
            fleet: self.fleet.clone(),
            pod: pod.clone(),
            service: service.name.clone(),
            spec: service.spec.clone(),
            network: self.network(pod),
            config: service.container.clone(),
            image_mounts: Vec::new(),
            dns: None,
        }
    }
}

impl ServiceSpec {
    /// Whether the service writes what outlives its container: it mounts a
    /// volume or a host path read-write. Then a replacement waits for the
    /// old container to be gone, as two containers writing the same data
    /// (a database's files, an append-only log) corrupt it or fight over
    /// its lock (other services are replaced make-before-break); and its
    /// pod leaves a node only when the node is provably stopped.
    pub(crate) fn holds_data(&self) -> bool {
        self.container.mounts.iter().any(MountSpec::writable)
    }
}

impl AppSpec {
    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The durable volumes each pod has (whether a service mounts them or
    /// not: one declared and not mounted yet is still made, kept and
    /// moved with its pod).
    pub(crate) fn durable_volumes(&self) -> impl Iterator<Item = &VolumeSpec> {
        self.volumes
            .values()
            .filter(|v| v.kind == VolumeKind::Durable)
    }
}

/// A declared volume as the plan uses it.
fn volume_spec(name: &str, v: &crate::config::Volume, provider: Provider) -> VolumeSpec {
    let kind = v.kind_for(provider);
    let ebs = (kind == VolumeKind::Durable).then(|| EbsSpec {
        size_gib: gib(v.size.map_or(1 << 30, |s| s.0)),
        ebs_type: v.ebs_type,
        iops: v.iops,
        throughput: v.throughput,
        encrypted: v.encrypted,
        filesystem: v.filesystem,
        from_snapshot: v.from_snapshot.clone(),
        snapshots: v.snapshots.clone(),
    });
    VolumeSpec {
        name: name.to_owned(),
        kind,
        ebs,
    }
}

/// A service's `volumes`, resolved against its app's declared volumes.
/// Validation has checked every entry; one that still does not parse is
/// left out rather than guessed at.
fn mounts(written: &[String], volumes: &BTreeMap<String, VolumeSpec>) -> Vec<MountSpec> {
    written
        .iter()
        .filter_map(|w| {
            let m = Mount::parse(w).ok()?;
            Some(match m.source {
                MountSource::Volume(name) => MountSpec::Volume {
                    name: name.to_owned(),
                    kind: volumes.get(name)?.kind,
                    target: m.target.to_owned(),
                    read_only: m.read_only,
                },
                MountSource::Host(_) => MountSpec::Host {
                    written: w.clone(),
                    target: m.target.to_owned(),
                    read_only: m.read_only,
                },
            })
        })
        .collect()
}

fn app_spec(
    name: &str,
    app: &App,
    secrets: &Secrets,
    provider: Provider,
    mesh: bool,
) -> Result<AppSpec, MissingSecret> {
    let volumes: BTreeMap<String, VolumeSpec> = app
        .volumes
        .iter()
        .map(|(n, v)| (n.clone(), volume_spec(n, v, provider)))
        .collect();
    let mut services = Vec::with_capacity(app.services.len());
    for svc_name in start_order(app) {
        let Some(svc) = app.services.get(svc_name) else {
            continue;
        };
        let mut secret_values = BTreeMap::new();
        for key in svc.secrets.keys() {
            let value = secrets
                .get(name, svc_name, key)
                .ok_or_else(|| MissingSecret {
                    app: name.to_owned(),
                    service: svc_name.to_owned(),
                    name: key.clone(),
                })?;
            secret_values.insert(key.clone(), value.clone());
        }
        let container = ContainerConfig {
            image: svc.image.clone(),
            command: svc.command.clone(),
            env: svc
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect(),
            secrets: secret_values,
            port: svc.port,
            memory: svc.memory,
            cpu: svc.cpu,
            restart: svc.restart,
            mounts: mounts(&svc.volumes, &volumes),
            logs: svc.logs,
            mesh,
        };
        services.push(ServiceSpec {
            name: svc_name.to_owned(),
            spec: SpecHash::of(&container, &secrets.spec_key),
            container,
            depends_on: svc.depends_on.clone(),
            hosts: svc.hosts.clone(),
            health: svc.health.clone(),
            pull: svc.pull,
        });
    }
    let memory = Bytes(
        services
            .iter()
            .map(|s| s.container.memory.0)
            .fold(0, u64::saturating_add),
    );
    let cpu = Millicores(
        services
            .iter()
            .filter_map(|s| s.container.cpu)
            .map(|c| c.0)
            .fold(0, u64::saturating_add),
    );
    Ok(AppSpec {
        name: name.to_owned(),
        instances: app.instances,
        services,
        memory,
        cpu,
        jobs: app.jobs.clone(),
        volumes,
    })
}

/// Services in dependency order, ties by name (Kahn's algorithm over the
/// name-sorted map, so the order is deterministic). Validation rejects
/// cycles; should one get here anyway, its services come last by name
/// rather than being dropped.
fn start_order(app: &App) -> Vec<&str> {
    let mut waiting: BTreeMap<&str, BTreeSet<&str>> = app
        .services
        .iter()
        .map(|(name, svc)| {
            let deps = svc
                .depends_on
                .iter()
                .map(String::as_str)
                .filter(|d| app.services.contains_key(*d) && d != name)
                .collect();
            (name.as_str(), deps)
        })
        .collect();
    let mut order = Vec::with_capacity(waiting.len());
    while !waiting.is_empty() {
        let ready = waiting
            .iter()
            .find(|(_, deps)| deps.is_empty())
            .map(|(name, _)| *name)
            .or_else(|| waiting.keys().next().copied());
        let Some(next) = ready else { break };
        waiting.remove(next);
        for deps in waiting.values_mut() {
            deps.remove(next);
        }
        order.push(next);
    }
    order
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::RestartPolicy;
    use crate::reconcile::secrets::Secret;
    use crate::reconcile::secrets::SpecKey;

    fn fleet(apps: &str) -> Fleet {
        let text = format!(
            r#"
[fleet]
name = "hobby"
reserve_memory = "256M"
reserve_cpu = "100m"
[discovery]
provider = "static"
nodes = [{{ name = "n1", address = "10.0.0.1" }}]
[registries."reg.example.com"]
username = "bot"
password_env = "X"
{apps}"#
        );
        crate::config::parse(Path::new("fleet.toml"), &text).unwrap()
    }

    const BLOG: &str = r#"
[apps.blog]
instances = 2
[apps.blog.services.web]
image = "reg.example.com/blog:1.4"
port = 8080
hosts = ["blog.example.com"]
memory = "256M"
cpu = "500m"
env = { APP_ENV = "production", N = 3 }
secrets = { APP_KEY = { env = "BLOG_KEY" } }
health = { http = "/up" }
depends_on = ["redis"]
[apps.blog.services.queue]
image = "reg.example.com/blog:1.4"
command = ["php", "artisan", "queue:work"]
depends_on = ["web", "redis"]
restart = "always"
[apps.blog.volumes.redis-data]
kind = "local"
[apps.blog.services.redis]
image = "redis:7"
memory = "64M"
volumes = ["redis-data:/data"]
[apps.blog.services.cron]
image = "reg.example.com/blog:1.4"
"#;

    fn secrets() -> Secrets {
        let mut s = Secrets::default();
        s.insert("blog", "web", "APP_KEY", Secret::new("k3y"));
        s
    }

    #[test]
    fn pods_services_and_totals() {
        let d = Desired::build(&fleet(BLOG), &secrets()).unwrap();
        assert_eq!(d.fleet, "hobby");
        assert_eq!(
            d.reserve,
            Reserve {
                memory: Bytes(256 << 20),
                cpu: Millicores(100)
            }
        );
        assert_eq!(d.registries, BTreeSet::from(["reg.example.com".to_owned()]));
        assert_eq!(
            d.pods().collect::<Vec<_>>(),
            [PodKey::new("blog", 0), PodKey::new("blog", 1)]
        );
        let blog = &d.apps["blog"];
        let order: Vec<&str> = blog.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(order, ["cron", "redis", "web", "queue"]);
        // 256M + 64M + 128M (default) twice; only web sets cpu.
        assert_eq!(blog.memory, Bytes((256 + 64 + 128 + 128) << 20));
        assert_eq!(blog.cpu, Millicores(500));
        let web = blog.service("web").unwrap();
        assert_eq!(web.container.env["N"], "3");
        assert_eq!(web.container.secrets["APP_KEY"], Secret::new("k3y"));
        assert_eq!(web.hosts, ["blog.example.com"]);
        assert!(web.health.is_some());
        assert!(!web.holds_data());
        assert!(blog.service("redis").unwrap().holds_data());
        assert_eq!(
            blog.service("redis").unwrap().container.mounts,
            [MountSpec::Volume {
                name: "redis-data".into(),
                kind: VolumeKind::Local,
                target: "/data".into(),
                read_only: false,
            }]
        );
        assert_eq!(web.spec, SpecHash::of(&web.container, &SpecKey::default()));
        assert_eq!(
            blog.service("queue").unwrap().container.restart,
            RestartPolicy::Always
        );
        assert!(d.app_of(&PodKey::new("blog", 1)).is_some());
        assert!(d.app_of(&PodKey::new("blog", 2)).is_none());
        assert!(d.app_of(&PodKey::new("shop", 0)).is_none());
    }

    #[test]
    fn run_spec_names_the_container() {
        let d = Desired::build(&fleet(BLOG), &secrets()).unwrap();
        let pod = PodKey::new("blog", 1);
        let web = d.apps["blog"].service("web").unwrap();
        let run = d.run_spec(&pod, web);
        assert_eq!(run.name, format!("prism.hobby.blog.1.web.{}", web.spec));
        assert_eq!(run.network, "prism.hobby.blog.1");
        assert_eq!(run.labels().spec, web.spec.as_str());
    }

    #[test]
    fn a_missing_secret_is_an_error() {
        let err = Desired::build(&fleet(BLOG), &Secrets::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "secret APP_KEY of apps.blog.services.web was not resolved"
        );
    }

    #[test]
    fn same_input_same_hashes() {
        let a = Desired::build(&fleet(BLOG), &secrets()).unwrap();
        let b = Desired::build(&fleet(BLOG), &secrets()).unwrap();
        for (x, y) in a.apps["blog"].services.iter().zip(&b.apps["blog"].services) {
            assert_eq!((&x.name, &x.spec), (&y.name, &y.spec));
        }
        let mut other = Secrets::default();
        other.insert("blog", "web", "APP_KEY", Secret::new("new key"));
        let c = Desired::build(&fleet(BLOG), &other).unwrap();
        let spec = |d: &Desired, s: &str| d.apps["blog"].service(s).unwrap().spec.clone();
        assert_ne!(spec(&a, "web"), spec(&c, "web"));
        assert_eq!(spec(&a, "queue"), spec(&c, "queue"));
    }

    #[test]
    fn empty_fleet() {
        let d = Desired::build(&fleet(""), &Secrets::default()).unwrap();
        assert!(d.apps.is_empty());
        assert_eq!(d.pods().count(), 0);
    }
}
