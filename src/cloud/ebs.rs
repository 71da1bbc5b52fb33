//! EBS, for durable volumes: the fleet's volumes and Prism's snapshots of
//! them as EC2 shows them (found by tag), and the calls apply makes to
//! create, attach, detach and snapshot them and to fence an instance. A
//! volume is deleted only for `prism volumes delete`, a snapshot only when
//! a schedule's `keep` says so, and only one that schedule took.

use std::time::Duration;

use crate::config::Config;
use crate::reconcile::{
    AttachState, EbsAttachment, EbsSnapshot, EbsSpec, EbsState, EbsVolume, SnapshotPurpose,
    SnapshotState, VolumeKey,
};
use aws_sdk_ec2::types::{
    Filter, ResourceType, Snapshot, SnapshotState as Ec2SnapshotState, Tag, TagSpecification,
    Volume, VolumeAttachmentState, VolumeState, VolumeType,
};

/// The tags that say whose a volume is.
pub const TAG_FLEET: &str = "prism:fleet";
pub const TAG_APP: &str = "prism:app";
pub const TAG_INSTANCE: &str = "prism:instance";
pub const TAG_VOLUME: &str = "prism:volume";
/// Set once Prism made a filesystem on the volume (its type): a volume
/// with this tag whose device then shows no filesystem is damaged, and is
/// never formatted again.
pub const TAG_FORMATTED: &str = "prism:formatted";
/// On a volume made to move a pod's data to another zone: the volume it
/// was made from (through a snapshot). That one is kept, superseded.
pub const TAG_MOVED_FROM: &str = "prism:moved-from";
/// On Prism's snapshots: why it took it (`scheduled`, `move`).
pub const TAG_SNAPSHOT: &str = "prism:snapshot";

/// An EC2 call that failed, with what AWS said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("EC2 {call} failed: {message}")]
pub struct CloudError {
    pub call: &'static str,
    pub message: String,
}

impl CloudError {
    /// EC2's own code and message when it answered; the whole chain of
    /// causes otherwise (a timeout, a refused connection).
    fn of<E>(call: &'static str, e: E) -> CloudError
    where
        E: std::error::Error + aws_sdk_ec2::error::ProvideErrorMetadata,
    {
        let message = match (e.code(), e.message()) {
            (Some(code), Some(text)) => format!("{code}: {text}"),
            (Some(code), None) => code.to_owned(),
            _ => aws_sdk_ec2::error::DisplayErrorContext(&e).to_string(),
        };
        CloudError { call, message }
    }

    fn timeout(call: &'static str, what: String) -> CloudError {
        CloudError {
            call,
            message: what,
        }
    }
}

/// EBS through the EC2 API, with the fleet's credentials and endpoint.
#[derive(Clone)]
pub struct Ebs {
    client: aws_sdk_ec2::Client,
    fleet: String,
}

/// How often a wait asks again.
const POLL: Duration = Duration::from_millis(500);

impl Ebs {
    pub async fn from_config(config: &Config) -> Ebs {
        Ebs {
            client: aws_sdk_ec2::Client::new(&super::ec2::sdk_config(config).await),
            fleet: config.fleet.fleet.name.clone(),
        }
    }

    /// Every volume tagged for the fleet, deleted ones left out.
    pub async fn volumes(&self) -> Result<Vec<EbsVolume>, CloudError> {
        let mut pages = self
            .client
            .describe_volumes()
            .filters(
                Filter::builder()
                    .name(format!("tag:{TAG_FLEET}"))
                    .values(&self.fleet)
                    .build(),
            )
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| CloudError::of("DescribeVolumes", e))?;
            out.extend(page.volumes().iter().filter_map(volume));
        }
        out.retain(|v| v.state != EbsState::Deleted);
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// One volume by id; `None` when EC2 no longer knows it.
    pub async fn volume(&self, id: &str) -> Result<Option<EbsVolume>, CloudError> {
        let answer = self.client.describe_volumes().volume_ids(id).send().await;
        match answer {
            Ok(a) => Ok(a.volumes().iter().find_map(volume)),
            Err(e) => {
                let e = CloudError::of("DescribeVolumes", e);
                if e.message.contains("InvalidVolume.NotFound") {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Creates a pod's volume in `zone`, tagged as its own; returns its id
    /// once it is available.
    pub async fn create(
        &self,
        key: &VolumeKey,
        zone: &str,
        spec: &EbsSpec,
        moved_from: Option<&str>,
        timeout: Duration,
    ) -> Result<String, CloudError> {
        let mut spec_tags = self.key_tags(key, ResourceType::Volume);
        if let Some(old) = moved_from {
            spec_tags = spec_tags.tags(Tag::builder().key(TAG_MOVED_FROM).value(old).build());
        }
        let size = i32::try_from(spec.size_gib).unwrap_or(i32::MAX);
        let mut call = self
            .client
            .create_volume()
            .availability_zone(zone)
            .size(size)
            .volume_type(VolumeType::from(spec.ebs_type.as_str()))
            .encrypted(spec.encrypted)
            .tag_specifications(spec_tags.build());
        if let Some(iops) = spec.iops {
            call = call.iops(i32::try_from(iops).unwrap_or(i32::MAX));
        }
        if let Some(tp) = spec.throughput {
            call = call.throughput(i32::try_from(tp).unwrap_or(i32::MAX));
        }
        if let Some(snap) = &spec.from_snapshot {
            call = call.snapshot_id(snap);
        }
        let made = call
            .send()
            .await
            .map_err(|e| CloudError::of("CreateVolume", e))?;
        let id = made
            .volume_id()
            .ok_or_else(|| {
                CloudError::timeout("CreateVolume", "the answer has no volume id".into())
            })?
            .to_owned();
        self.wait(&id, timeout, "CreateVolume", "available", |v| {
            v.is_some_and(|v| v.state == EbsState::Available)
        })
        .await?;
        Ok(id)
    }

    /// Attaches a volume to an instance as `device`, and waits until EC2
    /// says attached.
    pub async fn attach(
        &self,
        id: &str,
        instance: &str,
        device: &str,
        timeout: Duration,
    ) -> Result<(), CloudError> {
        self.client
            .attach_volume()
            .volume_id(id)
            .instance_id(instance)
            .device(device)
            .send()
            .await
            .map_err(|e| CloudError::of("AttachVolume", e))?;
        self.wait(id, timeout, "AttachVolume", "attached", |v| {
            v.and_then(|v| v.attachment.as_ref())
                .is_some_and(|a| a.instance == instance && a.state == AttachState::Attached)
        })
        .await
    }

    /// Detaches a volume from `instance` (never from another one it may
    /// be attached to by now), and waits until it is available. `force`
    /// only for an instance that is terminated: checked again first.
    pub async fn detach(
        &self,
        id: &str,
        instance: &str,
        force: bool,
        timeout: Duration,
    ) -> Result<(), CloudError> {
        let now = self.volume(id).await?;
        match now.as_ref().and_then(|v| v.attachment.as_ref()) {
            None => return Ok(()),
            Some(a) if a.instance != instance => {
                return Err(CloudError {
                    call: "DetachVolume",
                    message: format!(
                        "{id} is attached to {} by now, not {instance}: left as it is",
                        a.instance
                    ),
                });
            }
            Some(_) => {}
        }
        let sent = self
            .client
            .detach_volume()
            .volume_id(id)
            .instance_id(instance)
            .force(force)
            .send()
            .await;
        if let Err(e) = sent {
            // Already detached (its instance went, or an earlier try got
            // through): done.
            let available = matches!(
                self.volume(id).await,
                Ok(Some(v)) if v.state == EbsState::Available && v.attachment.is_none()
            );
            if !available {
                return Err(CloudError::of("DetachVolume", e));
            }
        }
        self.wait(id, timeout, "DetachVolume", "available", |v| {
            v.is_some_and(|v| v.state == EbsState::Available)
        })
        .await
    }

    /// The tags that say whose a volume or snapshot is.
    fn key_tags(
        &self,
        key: &VolumeKey,
        on: ResourceType,
    ) -> aws_sdk_ec2::types::builders::TagSpecificationBuilder {
        let tags = [
            ("Name", key.name(&self.fleet)),
            (TAG_FLEET, self.fleet.clone()),
            (TAG_APP, key.app.clone()),
            (TAG_INSTANCE, key.instance.to_string()),
            (TAG_VOLUME, key.volume.clone()),
        ];
        let mut spec = TagSpecification::builder().resource_type(on);
        for (k, v) in tags {
            spec = spec.tags(Tag::builder().key(k).value(v).build());
        }
        spec
    }

    /// Every snapshot Prism took of the fleet's volumes.
    pub async fn snapshots(&self) -> Result<Vec<EbsSnapshot>, CloudError> {
        let mut pages = self
            .client
            .describe_snapshots()
            .owner_ids("self")
            .filters(
                Filter::builder()
                    .name(format!("tag:{TAG_FLEET}"))
                    .values(&self.fleet)
                    .build(),
            )
            .into_paginator()
            .send();
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| CloudError::of("DescribeSnapshots", e))?;
            out.extend(page.snapshots().iter().filter_map(snapshot));
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Starts a snapshot of a pod's volume, tagged with whose it is and
    /// why; returns its id (it completes later).
    pub async fn snapshot(
        &self,
        key: &VolumeKey,
        id: &str,
        purpose: SnapshotPurpose,
    ) -> Result<String, CloudError> {
        let tags = self
            .key_tags(key, ResourceType::Snapshot)
            .tags(
                Tag::builder()
                    .key(TAG_SNAPSHOT)
                    .value(purpose.as_str())
                    .build(),
            )
            .build();
        let made = self
            .client
            .create_snapshot()
            .volume_id(id)
            .description(format!("prism {} {key} ({})", self.fleet, purpose.as_str()))
            .tag_specifications(tags)
            .send()
            .await
            .map_err(|e| CloudError::of("CreateSnapshot", e))?;
        made.snapshot_id().map(str::to_owned).ok_or_else(|| {
            CloudError::timeout("CreateSnapshot", "the answer has no snapshot id".into())
        })
    }

    /// Deletes one of a schedule's own snapshots past its `keep`.
    pub async fn delete_snapshot(&self, id: &str) -> Result<(), CloudError> {
        self.client
            .delete_snapshot()
            .snapshot_id(id)
            .send()
            .await
            .map_err(|e| CloudError::of("DeleteSnapshot", e))?;
        Ok(())
    }

    /// Deletes a volume: only ever for `prism volumes delete`.
    pub async fn delete(&self, id: &str) -> Result<(), CloudError> {
        self.client
            .delete_volume()
            .volume_id(id)
            .send()
            .await
            .map_err(|e| CloudError::of("DeleteVolume", e))?;
        Ok(())
    }

    /// Tags a volume as formatted with `filesystem`.
    pub async fn tag_formatted(&self, id: &str, filesystem: &str) -> Result<(), CloudError> {
        self.client
            .create_tags()
            .resources(id)
            .tags(Tag::builder().key(TAG_FORMATTED).value(filesystem).build())
            .send()
            .await
            .map_err(|e| CloudError::of("CreateTags", e))?;
        Ok(())
    }

    /// Terminates an instance: the fence for a node that cannot be reached
    /// and holds a pod's data.
    pub async fn terminate(&self, instance: &str) -> Result<(), CloudError> {
        self.client
            .terminate_instances()
            .instance_ids(instance)
            .send()
            .await
            .map_err(|e| CloudError::of("TerminateInstances", e))?;
        Ok(())
    }

    async fn wait(
        &self,
        id: &str,
        timeout: Duration,
        call: &'static str,
        want: &str,
        done: impl Fn(Option<&EbsVolume>) -> bool,
    ) -> Result<(), CloudError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let now = self.volume(id).await?;
            if done(now.as_ref()) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                let seen = match &now {
                    None => "gone".to_owned(),
                    Some(v) => match &v.attachment {
                        Some(a) => format!("{:?}, attachment {:?}", v.state, a.state),
                        None => format!("{:?}", v.state),
                    },
                };
                return Err(CloudError::timeout(
                    call,
                    format!(
                        "volume {id} was not {want} within {}s (it is {seen})",
                        timeout.as_secs()
                    ),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// A volume as Prism sees it; `None` without an id.
fn volume(v: &Volume) -> Option<EbsVolume> {
    let id = v.volume_id()?.to_owned();
    let tag = |key: &str| tag_of(v.tags(), key);
    let key = key_of(v.tags());
    let state = match v.state() {
        Some(VolumeState::Creating) => EbsState::Creating,
        Some(VolumeState::Available) => EbsState::Available,
        Some(VolumeState::InUse) => EbsState::InUse,
        Some(VolumeState::Deleting) => EbsState::Deleting,
        Some(VolumeState::Deleted) => EbsState::Deleted,
        Some(VolumeState::Error) => EbsState::Error,
        _ => EbsState::Other,
    };
    let attachment = v
        .attachments()
        .iter()
        .filter(|a| a.state() != Some(&VolumeAttachmentState::Detached))
        .find_map(|a| {
            Some(EbsAttachment {
                instance: a.instance_id()?.to_owned(),
                device: a.device().unwrap_or_default().to_owned(),
                state: match a.state() {
                    Some(VolumeAttachmentState::Attaching) => AttachState::Attaching,
                    Some(VolumeAttachmentState::Attached) => AttachState::Attached,
                    Some(VolumeAttachmentState::Detaching) => AttachState::Detaching,
                    Some(VolumeAttachmentState::Busy) => AttachState::Busy,
                    Some(VolumeAttachmentState::Detached) => AttachState::Detached,
                    _ => AttachState::Other,
                },
            })
        });
    Some(EbsVolume {
        id,
        key,
        zone: v.availability_zone().unwrap_or_default().to_owned(),
        size_gib: v.size().and_then(|s| u32::try_from(s).ok()).unwrap_or(0),
        state,
        attachment,
        snapshot_id: v.snapshot_id().filter(|s| !s.is_empty()).map(str::to_owned),
        formatted: tag(TAG_FORMATTED),
        moved_from: tag(TAG_MOVED_FROM),
        created_at: v.create_time().and_then(|t| t.to_millis().ok()),
    })
}

/// The value of tag `key` among `tags`.
fn tag_of(tags: &[Tag], key: &str) -> Option<String> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
        .map(str::to_owned)
}

/// Whose volume the tags say it is (a volume or a snapshot of one).
fn key_of(tags: &[Tag]) -> Option<VolumeKey> {
    Some(VolumeKey {
        app: tag_of(tags, TAG_APP)?,
        instance: tag_of(tags, TAG_INSTANCE)?.parse().ok()?,
        volume: tag_of(tags, TAG_VOLUME)?,
    })
}

/// One of Prism's snapshots; `None` for one without an id, a volume, or
/// Prism's purpose tag (taken by someone else: not Prism's to prune).
fn snapshot(s: &Snapshot) -> Option<EbsSnapshot> {
    let tags = s.tags();
    let purpose = match tag_of(tags, TAG_SNAPSHOT)?.as_str() {
        "scheduled" => SnapshotPurpose::Scheduled,
        "move" => SnapshotPurpose::Move,
        _ => return None,
    };
    let key = key_of(tags);
    Some(EbsSnapshot {
        id: s.snapshot_id()?.to_owned(),
        key,
        volume_id: s.volume_id()?.to_owned(),
        state: match s.state() {
            Some(Ec2SnapshotState::Pending) => SnapshotState::Pending,
            Some(Ec2SnapshotState::Completed) => SnapshotState::Completed,
            Some(Ec2SnapshotState::Error) => SnapshotState::Error,
            _ => SnapshotState::Other,
        },
        progress: s.progress().map(str::to_owned),
        started_at: s.start_time().and_then(|t| t.to_millis().ok()),
        purpose,
    })
}
