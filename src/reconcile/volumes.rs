//! A pod's volumes, pure: what fleet.toml declares ([`VolumeSpec`]), what
//! each service mounts ([`MountSpec`]), the names they have on nodes and
//! in EC2, and the `docker` arguments that mount them.
//!
//! Every volume belongs to one pod instance: its name carries the fleet,
//! the app, the instance and the volume, so instances, apps and fleets
//! never share one.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::desired::PodKey;
use crate::config::{EbsType, Filesystem, Snapshots, VolumeKind};
use crate::observe::labels;

/// Where durable volumes are mounted on a node, one directory each.
pub const MOUNT_ROOT: &str = "/var/lib/prism/volumes";

/// The directory of a durable volume's filesystem that containers see.
/// Not its root, which holds `lost+found` (a database refuses to make
/// its files in a directory that is not empty), and which, while nothing
/// is mounted, is an empty directory on the node's own disk: `data`
/// exists only inside the volume's filesystem, and a bind mount of a
/// missing source fails, so no container ever writes to the node's disk
/// in its place.
pub const DATA_DIR: &str = "data";

/// A volume of an app, as fleet.toml declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeSpec {
    pub name: String,
    pub kind: VolumeKind,
    /// Durable volumes only.
    pub ebs: Option<EbsSpec>,
}

/// What an EBS volume is made with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EbsSpec {
    /// Whole GiB, rounded up from fleet.toml's size.
    pub size_gib: u32,
    pub ebs_type: EbsType,
    pub iops: Option<u32>,
    pub throughput: Option<u32>,
    pub encrypted: bool,
    pub filesystem: Filesystem,
    pub from_snapshot: Option<String>,
    #[serde(skip)]
    pub snapshots: Option<Snapshots>,
}

/// GiB from bytes, rounded up, at most `u32::MAX` (validation keeps sizes
/// to 16 TiB).
pub fn gib(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(1 << 30)).unwrap_or(u32::MAX)
}

/// One volume of one pod: the unit that exists on a node or in EC2.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct VolumeKey {
    pub app: String,
    pub instance: u32,
    pub volume: String,
}

impl VolumeKey {
    pub fn new(pod: &PodKey, volume: &str) -> VolumeKey {
        VolumeKey {
            app: pod.app.clone(),
            instance: pod.instance,
            volume: volume.to_owned(),
        }
    }

    pub fn pod(&self) -> PodKey {
        PodKey::new(&self.app, self.instance)
    }

    /// The key of a name made by [`VolumeKey::name`] for `fleet`.
    pub fn from_name(fleet: &str, name: &str) -> Option<VolumeKey> {
        let rest = name
            .strip_prefix("prism.")?
            .strip_prefix(fleet)?
            .strip_prefix('.')?;
        let mut parts = rest.split('.');
        let (app, instance, volume) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || app.is_empty() || volume.is_empty() {
            return None;
        }
        Some(VolumeKey {
            app: app.to_owned(),
            instance: instance.parse().ok()?,
            volume: volume.to_owned(),
        })
    }

    /// `prism.FLEET.APP.INSTANCE.VOLUME`: a local volume's Docker volume,
    /// a durable one's Name tag and mount directory. Volume names cannot
    /// hold a '.', so the name is unambiguous read from the right.
    pub fn name(&self, fleet: &str) -> String {
        format!(
            "prism.{fleet}.{}.{}.{}",
            self.app, self.instance, self.volume
        )
    }
}

impl std::fmt::Display for VolumeKey {
    /// `db/0/pgdata`
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.app, self.instance, self.volume)
    }
}

/// The local volume Prism mounts at a path a service's image declares
/// (`VOLUME`) and fleet.toml mounts nothing at, so that a new container
/// of the service finds what the old one wrote:
/// `prism.FLEET.APP.INSTANCE.SERVICE.image-SLUG-HASH`. The slug keeps the
/// path readable, the hash tells apart paths that slug alike.
pub fn image_volume_name(fleet: &str, pod: &PodKey, service: &str, path: &str) -> String {
    let slug: String = path
        .trim_matches('/')
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(40)
        .collect();
    let digest = Sha256::digest(path.as_bytes());
    let hash: String = digest.iter().take(3).map(|b| format!("{b:02x}")).collect();
    format!(
        "prism.{fleet}.{}.{}.{service}.image-{slug}-{hash}",
        pod.app, pod.instance
    )
}

/// The directory a durable volume is mounted at on its node.
pub fn mount_dir(name: &str) -> String {
    format!("{MOUNT_ROOT}/{name}")
}

/// One mount of a service's container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum MountSpec {
    /// A volume of the pod, by its name in fleet.toml.
    Volume {
        name: String,
        kind: VolumeKind,
        target: String,
        read_only: bool,
    },
    /// A path on the node, as written (`/srv/x:/x:ro`).
    Host {
        written: String,
        target: String,
        read_only: bool,
    },
    /// A path the image declares (`VOLUME`): a local volume of the pod.
    Image { target: String },
}

impl MountSpec {
    pub fn target(&self) -> &str {
        match self {
            MountSpec::Volume { target, .. }
            | MountSpec::Host { target, .. }
            | MountSpec::Image { target } => target,
        }
    }

    /// Whether the container may write what outlives it.
    pub fn writable(&self) -> bool {
        match self {
            MountSpec::Volume { read_only, .. } | MountSpec::Host { read_only, .. } => !read_only,
            MountSpec::Image { .. } => true,
        }
    }

    /// The `docker run` arguments that mount it for `service` of `pod`.
    /// Volumes go through `--mount`, which fails rather than make a missing
    /// source: a durable volume not mounted on the node stops the run.
    /// Host paths keep `-v`, which makes a missing directory, as Docker
    /// users expect.
    pub fn run_args(&self, fleet: &str, pod: &PodKey, service: &str) -> Vec<String> {
        let mount = |kind: &str, src: &str, target: &str, read_only: bool| {
            let ro = if read_only { ",readonly" } else { "" };
            vec![
                "--mount".to_owned(),
                format!("type={kind},src={src},dst={target}{ro}"),
            ]
        };
        match self {
            MountSpec::Volume {
                name,
                kind: VolumeKind::Local,
                target,
                read_only,
            } => mount(
                "volume",
                &VolumeKey::new(pod, name).name(fleet),
                target,
                *read_only,
            ),
            MountSpec::Volume {
                name,
                kind: VolumeKind::Durable,
                target,
                read_only,
            } => {
                let dir = mount_dir(&VolumeKey::new(pod, name).name(fleet));
                mount("bind", &format!("{dir}/{DATA_DIR}"), target, *read_only)
            }
            MountSpec::Host { written, .. } => vec!["-v".to_owned(), written.clone()],
            MountSpec::Image { target } => mount(
                "volume",
                &image_volume_name(fleet, pod, service, target),
                target,
                false,
            ),
        }
    }
}

/// `docker volume create` of a pod's local volume, labelled so that
/// `prism volumes` finds it and nothing else takes it for another's.
/// Creating one that exists changes nothing.
pub(crate) fn volume_create_argv(
    fleet: &str,
    pod: &PodKey,
    volume: &str,
    name: &str,
) -> Vec<String> {
    let mut v: Vec<String> = ["docker", "volume", "create"].map(String::from).into();
    for (key, value) in [
        (labels::FLEET, fleet),
        (labels::APP, &pod.app),
        (labels::INSTANCE, &pod.instance.to_string()),
        (labels::VOLUME, volume),
    ] {
        v.push("--label".into());
        v.push(format!("{key}={value}"));
    }
    v.extend(["--".into(), name.to_owned()]);
    v
}

/// `docker volume inspect --format {{.Name}} -- NAME`: exit 0 when the
/// node has the volume.
pub(crate) fn volume_present_argv(name: &str) -> Vec<String> {
    let mut v: Vec<String> = ["docker", "volume", "inspect", "--format", "{{.Name}}", "--"]
        .map(String::from)
        .into();
    v.push(name.to_owned());
    v
}

/// Copies what `from` holds into the new volume `to` with the helper
/// image, the source read-only: a service whose container wrote to another
/// volume at the same path (one Docker made for the image's `VOLUME`, or a
/// volume named before volumes belonged to pods) keeps its data. Nothing
/// is removed: the old volume stays until someone deletes it.
pub(crate) fn volume_seed_argv(
    fleet: &str,
    helper_image: &str,
    from: &str,
    to: &str,
) -> Vec<String> {
    let mut v: Vec<String> = ["docker", "run", "--rm", "--network", "none", "--label"]
        .map(String::from)
        .into();
    v.push(format!("{}={fleet}", labels::FLEET));
    v.extend([
        "--mount".into(),
        format!("type=volume,src={from},dst=/from,readonly"),
        "--mount".into(),
        format!("type=volume,src={to},dst=/to"),
        "--".into(),
        helper_image.to_owned(),
        "cp".into(),
        "-a".into(),
        "/from/.".into(),
        "/to/".into(),
    ]);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_belong_to_one_pod() {
        let k = VolumeKey::new(&PodKey::new("db", 1), "pgdata");
        assert_eq!(k.name("hobby"), "prism.hobby.db.1.pgdata");
        assert_eq!(k.to_string(), "db/1/pgdata");
        assert_eq!(k.pod(), PodKey::new("db", 1));
        let other = VolumeKey::new(&PodKey::new("db", 0), "pgdata");
        assert_ne!(k.name("hobby"), other.name("hobby"));
        assert_ne!(k.name("hobby"), k.name("shop"));
        assert_eq!(
            VolumeKey::from_name("hobby", &k.name("hobby")),
            Some(k.clone())
        );
        assert_eq!(VolumeKey::from_name("a.b", &k.name("a.b")), Some(k.clone()));
        assert_eq!(VolumeKey::from_name("shop", &k.name("hobby")), None);
        for bad in [
            "prism.hobby.db.x.pgdata",
            "prism.hobby.db.0",
            "prism.hobby.db.0.pgdata.extra",
            "other",
        ] {
            assert_eq!(VolumeKey::from_name("hobby", bad), None, "{bad}");
        }
        assert_eq!(
            mount_dir(&k.name("hobby")),
            "/var/lib/prism/volumes/prism.hobby.db.1.pgdata"
        );
    }

    #[test]
    fn image_volumes_are_named_by_service_and_path() {
        let pod = PodKey::new("db", 0);
        let a = image_volume_name("hobby", &pod, "postgres", "/var/lib/postgresql/data");
        assert!(
            a.starts_with("prism.hobby.db.0.postgres.image-var-lib-postgresql-data-"),
            "{a}"
        );
        // Paths that slug alike stay apart.
        let b = image_volume_name("hobby", &pod, "postgres", "/var/lib/postgresql.data");
        assert_ne!(a, b);
        assert_eq!(
            a,
            image_volume_name("hobby", &pod, "postgres", "/var/lib/postgresql/data")
        );
        assert_ne!(
            a,
            image_volume_name(
                "hobby",
                &PodKey::new("db", 1),
                "postgres",
                "/var/lib/postgresql/data"
            )
        );
        // Docker's rule for volume names.
        assert!(
            a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        );
    }

    #[test]
    fn mounts_as_docker_takes_them() {
        let pod = PodKey::new("db", 0);
        let local = MountSpec::Volume {
            name: "cache".into(),
            kind: VolumeKind::Local,
            target: "/cache".into(),
            read_only: false,
        };
        assert_eq!(
            local.run_args("hobby", &pod, "web"),
            [
                "--mount",
                "type=volume,src=prism.hobby.db.0.cache,dst=/cache"
            ]
        );
        let durable = MountSpec::Volume {
            name: "pgdata".into(),
            kind: VolumeKind::Durable,
            target: "/var/lib/postgresql/data".into(),
            read_only: true,
        };
        assert_eq!(
            durable.run_args("hobby", &pod, "web"),
            [
                "--mount",
                "type=bind,src=/var/lib/prism/volumes/prism.hobby.db.0.pgdata/data,dst=/var/lib/postgresql/data,readonly"
            ]
        );
        assert!(!durable.writable());
        let host = MountSpec::Host {
            written: "/srv/x:/x:ro".into(),
            target: "/x".into(),
            read_only: true,
        };
        assert_eq!(host.run_args("hobby", &pod, "web"), ["-v", "/srv/x:/x:ro"]);
        let image = MountSpec::Image {
            target: "/data".into(),
        };
        assert!(image.writable());
        let args = image.run_args("hobby", &pod, "redis");
        assert!(args[1].starts_with("type=volume,src=prism.hobby.db.0.redis.image-data-"));
        assert!(args[1].ends_with(",dst=/data"));
    }

    #[test]
    fn sizes_round_up_to_whole_gib() {
        assert_eq!(gib(1 << 30), 1);
        assert_eq!(gib((1 << 30) + 1), 2);
        assert_eq!(gib(10 << 30), 10);
        assert_eq!(gib(u64::MAX), u32::MAX);
    }

    #[test]
    fn volume_commands() {
        let pod = PodKey::new("db", 0);
        assert_eq!(
            volume_create_argv("hobby", &pod, "cache", "prism.hobby.db.0.cache").join(" "),
            "docker volume create --label prism.fleet=hobby --label prism.app=db \
             --label prism.instance=0 --label prism.volume=cache -- prism.hobby.db.0.cache"
        );
        assert_eq!(
            volume_seed_argv("hobby", "busybox@sha256:00", "old", "new").join(" "),
            "docker run --rm --network none --label prism.fleet=hobby \
             --mount type=volume,src=old,dst=/from,readonly --mount type=volume,src=new,dst=/to \
             -- busybox@sha256:00 cp -a /from/. /to/"
        );
    }
}
