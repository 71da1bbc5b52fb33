//! What the plan knows of storage in one pass: the fleet's EBS volumes
//! (from EC2), what each node has mounted and which local volumes it
//! holds, and the paths images declare as volumes. Plain data, filled by
//! the operator from its observations.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::desired::{Desired, ServiceSpec};
use super::volumes::VolumeKey;
use crate::config;
use crate::store::{SnapshotLine, VolumeKind, VolumeLine, VolumeLines};

/// Storage as observed this pass.
#[derive(Debug, Clone, Default)]
pub struct Storage {
    /// The fleet's EBS volumes; `None` when they could not be listed this
    /// pass (then no durable volume is created, attached or moved, and
    /// pods that need one wait).
    pub ebs: Option<Vec<EbsVolume>>,
    /// Per node observed this pass: durable volumes mounted under
    /// [`super::volumes::MOUNT_ROOT`], by name, with their device.
    pub mounted: BTreeMap<String, BTreeMap<String, String>>,
    /// Per node observed this pass: the fleet's Docker volumes on it, by
    /// name, when they could be listed.
    pub local: BTreeMap<String, BTreeSet<String>>,
    /// The paths an image declares as volumes (`VOLUME`), per image
    /// reference as fleet.toml writes it, for images read so far.
    pub image_volumes: BTreeMap<String, Vec<String>>,
    /// Instances EC2 reports terminated: a volume still attached to one
    /// may be detached by force, as nothing can write to it any more.
    pub ended: BTreeSet<String>,
    /// The snapshots Prism took of the fleet's volumes; `None` when they
    /// could not be listed this pass (then no zone move goes on).
    pub snapshots: Option<Vec<EbsSnapshot>>,
    /// Zones that hold volumes of the fleet but have had no ready node,
    /// and for how long.
    pub zones_empty_for: BTreeMap<String, std::time::Duration>,
    /// When this was observed (unix ms).
    pub at_ms: i64,
}

impl Storage {
    /// The EBS volume of a pod's volume, if EC2 listed one.
    pub fn ebs_of(&self, key: &VolumeKey) -> Option<&EbsVolume> {
        let ebs = self.ebs.as_ref()?;
        ebs.iter()
            .filter(|v| v.key.as_ref() == Some(key) && !self.superseded(v))
            // Should two carry the same tags (made by hand), the oldest.
            .min_by_key(|v| (v.created_at.unwrap_or(i64::MAX), v.id.clone()))
    }
}

/// Whether a mount at `target` covers the image's `path`.
fn covers(target: &str, path: &str) -> bool {
    let target = target.trim_end_matches('/');
    let path = path.trim_end_matches('/');
    path == target
        || path
            .strip_prefix(target)
            .is_some_and(|r| r.starts_with('/'))
}

impl Storage {
    /// The paths the service's image declares as volumes that its own
    /// mounts do not cover; `None` while the image has not been read.
    pub fn image_mounts(&self, svc: &ServiceSpec) -> Option<Vec<String>> {
        let declared = self.image_volumes.get(&svc.container.image)?;
        Some(
            declared
                .iter()
                .filter(|p| !svc.container.mounts.iter().any(|m| covers(m.target(), p)))
                .cloned()
                .collect(),
        )
    }

    /// Whether a volume was moved to another zone: a volume made from its
    /// snapshot names it as `moved_from`. Kept, but its pod's data is now
    /// that one.
    pub fn superseded(&self, v: &EbsVolume) -> bool {
        self.ebs
            .iter()
            .flatten()
            .any(|o| o.moved_from.as_deref() == Some(v.id.as_str()) && o.state != EbsState::Error)
    }

    /// The newest snapshot of a pod's volume, of any purpose.
    pub fn last_snapshot(&self, key: &VolumeKey) -> Option<&EbsSnapshot> {
        self.snapshots
            .iter()
            .flatten()
            .filter(|s| s.key.as_ref() == Some(key))
            .max_by_key(|s| (s.started_at.unwrap_or(0), s.id.clone()))
    }

    /// The snapshot taken to move volume `id` to another zone, started at
    /// or after `since_ms` (when its zone last emptied: an older one may
    /// miss what was written since), if any.
    pub fn move_snapshot(&self, id: &str, since_ms: i64) -> Option<&EbsSnapshot> {
        self.snapshots
            .iter()
            .flatten()
            .filter(|s| s.volume_id == id && s.purpose == SnapshotPurpose::Move)
            .filter(|s| s.started_at.is_some_and(|t| t >= since_ms))
            .filter(|s| s.state != SnapshotState::Error)
            .max_by_key(|s| (s.started_at.unwrap_or(0), s.id.clone()))
    }
}

/// A snapshot Prism took of one of the fleet's volumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EbsSnapshot {
    pub id: String,
    /// Whose volume it is a snapshot of, from its tags.
    pub key: Option<VolumeKey>,
    /// The volume it was taken of.
    pub volume_id: String,
    pub state: SnapshotState,
    /// EC2's `progress`, e.g. `40%`.
    pub progress: Option<String>,
    /// Epoch milliseconds.
    pub started_at: Option<i64>,
    pub purpose: SnapshotPurpose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotState {
    Pending,
    Completed,
    Error,
    Other,
}

impl SnapshotState {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotState::Pending => "pending",
            SnapshotState::Completed => "completed",
            SnapshotState::Error => "error",
            SnapshotState::Other => "unknown",
        }
    }
}

/// Why Prism took a snapshot (its `prism:snapshot` tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotPurpose {
    /// `snapshots = { schedule, keep }`: pruned to the newest `keep`.
    Scheduled,
    /// To move the volume to another zone: never pruned.
    Move,
}

impl SnapshotPurpose {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotPurpose::Scheduled => "scheduled",
            SnapshotPurpose::Move => "move",
        }
    }
}

/// A fleet's EBS volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EbsVolume {
    pub id: String,
    /// Whose volume it is, from its tags; `None` when they do not say (a
    /// volume tagged for the fleet by hand): left alone.
    pub key: Option<VolumeKey>,
    pub zone: String,
    pub size_gib: u32,
    pub state: EbsState,
    pub attachment: Option<EbsAttachment>,
    /// The snapshot it was made from.
    pub snapshot_id: Option<String>,
    /// [`TAG_FORMATTED`].
    pub formatted: Option<String>,
    /// The volume this one was made from to move its pod's data to another
    /// zone (`prism:moved-from`).
    pub moved_from: Option<String>,
    /// Epoch milliseconds.
    pub created_at: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EbsState {
    Creating,
    Available,
    InUse,
    Deleting,
    Deleted,
    Error,
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EbsAttachment {
    pub instance: String,
    /// The device name asked for (`/dev/sdf`).
    pub device: String,
    pub state: AttachState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachState {
    Attaching,
    Attached,
    Detaching,
    /// Detaching, and the instance still uses it (mounted): it stays so
    /// until it is unmounted or detached by force.
    Busy,
    Detached,
    Other,
}

impl EbsState {
    pub fn as_str(self) -> &'static str {
        match self {
            EbsState::Creating => "creating",
            EbsState::Available => "available",
            EbsState::InUse => "in-use",
            EbsState::Deleting => "deleting",
            EbsState::Deleted => "deleted",
            EbsState::Error => "error",
            EbsState::Other => "unknown",
        }
    }
}

impl AttachState {
    pub fn as_str(self) -> &'static str {
        match self {
            AttachState::Attaching => "attaching",
            AttachState::Attached => "attached",
            AttachState::Detaching => "detaching",
            AttachState::Busy => "busy",
            AttachState::Detached => "detached",
            AttachState::Other => "unknown",
        }
    }
}

/// What a Docker volume's name on a node says it is: a pod's local volume
/// or an image's own.
pub(crate) fn local_volume(fleet: &str, name: &str) -> Option<(VolumeKey, VolumeKind)> {
    if let Some(key) = VolumeKey::from_name(fleet, name) {
        return Some((key, VolumeKind::Local));
    }
    // prism.FLEET.APP.INSTANCE.SERVICE.image-SLUG-HASH
    let rest = name
        .strip_prefix("prism.")?
        .strip_prefix(fleet)?
        .strip_prefix('.')?;
    let mut parts = rest.splitn(4, '.');
    let (app, instance, service, image) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let slug = image.strip_prefix("image-")?;
    Some((
        VolumeKey {
            app: app.to_owned(),
            instance: instance.parse().ok()?,
            volume: format!("{service}:{slug}"),
        },
        VolumeKind::Image,
    ))
}

/// Whether fleet.toml still asks for this volume: its pod is one of its
/// app's instances and (but for an image's own) the app declares it, of
/// that kind.
pub(crate) fn wanted(desired: &Desired, key: &VolumeKey, kind: VolumeKind) -> bool {
    let Some(app) = desired.apps.get(&key.app) else {
        return false;
    };
    key.instance < app.instances
        && match kind {
            VolumeKind::Image => true,
            VolumeKind::Durable | VolumeKind::Local => {
                app.volumes.get(&key.volume).is_some_and(|v| {
                    matches!(
                        (v.kind, kind),
                        (config::VolumeKind::Durable, VolumeKind::Durable)
                            | (config::VolumeKind::Local, VolumeKind::Local)
                    )
                })
            }
        }
}

impl Storage {
    /// Every volume of the fleet this pass saw, for `prism volumes` and
    /// the dashboard, each marked by whether fleet.toml still asks for it.
    pub fn lines(&self, desired: &Desired) -> VolumeLines {
        let wanted = |key: &VolumeKey, kind: VolumeKind| wanted(desired, key, kind);
        let mut volumes: Vec<VolumeLine> = self
            .ebs
            .iter()
            .flatten()
            .filter_map(|v| {
                let key = v.key.as_ref()?;
                Some(VolumeLine {
                    app: key.app.clone(),
                    instance: key.instance,
                    volume: key.volume.clone(),
                    kind: VolumeKind::Durable,
                    id: v.id.clone(),
                    size_gib: Some(v.size_gib),
                    zone: Some(v.zone.clone()),
                    node: v.attachment.as_ref().map(|a| a.instance.clone()),
                    state: match (&v.attachment, self.superseded(v)) {
                        (_, true) => format!("{}, moved to another zone", v.state.as_str()),
                        (Some(a), _) => format!("{}, {}", v.state.as_str(), a.state.as_str()),
                        (None, _) => v.state.as_str().to_owned(),
                    },
                    wanted: wanted(key, VolumeKind::Durable) && !self.superseded(v),
                    last_snapshot: self.last_snapshot(key).map(|s| SnapshotLine {
                        id: s.id.clone(),
                        state: s.state.as_str().to_owned(),
                        at: s.started_at,
                    }),
                })
            })
            .collect();
        for (node, names) in &self.local {
            for name in names {
                let Some((key, kind)) = local_volume(&desired.fleet, name) else {
                    continue;
                };
                volumes.push(VolumeLine {
                    wanted: wanted(&key, kind),
                    app: key.app,
                    instance: key.instance,
                    volume: key.volume,
                    kind,
                    id: name.clone(),
                    size_gib: None,
                    zone: None,
                    node: Some(node.clone()),
                    state: "present".to_owned(),
                    last_snapshot: None,
                });
            }
        }
        volumes.sort_by(|a, b| {
            (&a.app, a.instance, &a.volume, &a.id).cmp(&(&b.app, b.instance, &b.volume, &b.id))
        });
        VolumeLines {
            ebs_unlisted: self.ebs.is_none(),
            volumes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn a_mount_covers_its_path_and_below() {
        assert!(covers("/data", "/data"));
        assert!(covers("/data/", "/data"));
        assert!(covers("/var/lib/postgresql", "/var/lib/postgresql/data"));
        assert!(!covers("/var/lib/postgres", "/var/lib/postgresql/data"));
        assert!(!covers("/data/sub", "/data"));
        assert!(covers("/", "/data"));
    }
}
