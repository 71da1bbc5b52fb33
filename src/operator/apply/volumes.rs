//! The commands of volume actions: EBS calls through EC2, and the steps
//! on the node that need root (mount, unmount), run through Docker as
//! the login user (`operator::host`).

use std::time::Duration;

use super::Context;
use super::commands::{ActionError, as_root, limits};
use crate::cloud::{CloudError, Ebs};
use crate::reconcile::{
    Action, SnapshotPurpose, SnapshotState, SnapshotWhy, VolumeRef, mount_dir, volume_create_argv,
    volume_present_argv, volume_seed_argv,
};
use crate::ssh::Target;
use crate::store::{Level, NewEvent};

/// How long EC2 has to create, attach or detach a volume.
const EBS_WAIT: Duration = Duration::from_secs(120);

/// The mount script: a constant, its input passed as arguments.
const MOUNT_SCRIPT: &str = include_str!("mount.sh");

fn ebs(cx: &Context) -> Result<&Ebs, ActionError> {
    cx.ebs.as_ref().ok_or_else(|| {
        ActionError::Cloud(CloudError {
            call: "(none)",
            message: "durable volumes need EC2 discovery".into(),
        })
    })
}

/// Whether `action` is one of this module's.
pub(super) fn handles(action: &Action) -> bool {
    matches!(
        action,
        Action::EnsureLocalVolume { .. }
            | Action::CreateVolume { .. }
            | Action::SnapshotVolume { .. }
            | Action::AttachVolume { .. }
            | Action::MountVolume { .. }
            | Action::UnmountVolume { .. }
            | Action::DetachVolume { .. }
            | Action::Fence { .. }
            | Action::DeleteVolume { .. }
    )
}

/// Runs a volume action (see [`handles`]).
pub(super) async fn run(cx: &Context, target: &Target, action: &Action) -> Result<(), ActionError> {
    match action {
        Action::EnsureLocalVolume { volume, name, seed } => {
            ensure_local(cx, target, volume, name, seed.as_deref()).await
        }
        Action::CreateVolume {
            volume,
            zone,
            ebs: spec,
            moved_from,
        } => {
            let id = ebs(cx)?
                .create(volume, zone, spec, moved_from.as_deref(), EBS_WAIT)
                .await
                .map_err(ActionError::Cloud)?;
            let message = match (moved_from, &spec.from_snapshot) {
                (Some(old), Some(snap)) => format!(
                    "moved {volume} to zone {zone}: EBS volume {id} made from snapshot {snap} of {old} (which is kept)"
                ),
                _ => format!("created EBS volume {id} for {volume} in {zone}"),
            };
            cx.journal
                .event(NewEvent::info("volume.created", message).app(volume.app.clone()));
            Ok(())
        }
        Action::SnapshotVolume { volume, id, why } => snapshot(cx, volume, id, why).await,
        Action::AttachVolume {
            volume,
            id,
            devices,
        } => {
            let device = attach(cx, target, id, devices).await?;
            cx.journal.event(
                NewEvent::info(
                    "volume.attached",
                    format!("attached EBS volume {id} ({volume}) as {device}"),
                )
                .app(volume.app.clone())
                .node(target.id.clone()),
            );
            Ok(())
        }
        Action::MountVolume {
            volume,
            id,
            name,
            filesystem,
            may_format,
        } => {
            let dir = mount_dir(name);
            // The name it was attached as: where a Xen instance shows it.
            let device = match ebs(cx) {
                Ok(e) => e
                    .volume(id)
                    .await
                    .map_err(ActionError::Cloud)?
                    .and_then(|v| v.attachment)
                    .map(|a| a.device)
                    .unwrap_or_default(),
                Err(e) => return Err(e),
            };
            let argv: Vec<String> = [
                "sh",
                "-c",
                MOUNT_SCRIPT,
                "prism-mount",
                id,
                &device,
                filesystem.as_str(),
                if *may_format { "yes" } else { "no" },
                &dir,
            ]
            .map(String::from)
            .into();
            match as_root(cx, target, &argv, Duration::from_secs(600)).await {
                Ok(out) => {
                    let said = String::from_utf8_lossy(&out.stdout).into_owned();
                    let fs = said
                        .lines()
                        .find_map(|l| l.strip_prefix("fs="))
                        .unwrap_or(filesystem.as_str())
                        .to_owned();
                    if said.lines().any(|l| l == "formatted") {
                        cx.journal.event(
                            NewEvent::info(
                                "volume.formatted",
                                format!("made {fs} on EBS volume {id} ({volume}): it held nothing"),
                            )
                            .app(volume.app.clone())
                            .node(target.id.clone()),
                        );
                    }
                    // Marked as formatted once it mounts: should it ever
                    // show no filesystem later, it is never formatted again.
                    if *may_format && let Ok(e) = ebs(cx) {
                        e.tag_formatted(id, &fs).await.map_err(ActionError::Cloud)?;
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        Action::UnmountVolume { name, .. } => {
            let dir = mount_dir(name);
            let script = "sync; if mountpoint -q \"$1\"; then umount \"$1\"; fi";
            let argv: Vec<String> = ["sh", "-c", script, "prism-umount", &dir]
                .map(String::from)
                .into();
            as_root(cx, target, &argv, Duration::from_secs(120))
                .await
                .map(|_| ())
        }
        Action::DetachVolume {
            volume,
            id,
            instance,
            force,
        } => match ebs(cx) {
            Ok(e) => {
                if *force {
                    cx.journal.event(
                        NewEvent::new(
                            Level::Warn,
                            "volume.force_detach",
                            format!(
                                "detaching EBS volume {id} ({volume}) by force from instance {instance}, which is terminated; its filesystem is checked before it mounts again"
                            ),
                        )
                        .app(volume.app.clone()),
                    );
                }
                e.detach(id, instance, *force, EBS_WAIT)
                    .await
                    .map_err(ActionError::Cloud)
            }
            Err(e) => Err(e),
        },
        Action::Fence {
            instance,
            silent_for_s,
            pods,
        } => match ebs(cx) {
            Ok(e) => {
                let pods: Vec<String> = pods.iter().map(ToString::to_string).collect();
                cx.journal.event(
                    NewEvent::new(
                        Level::Warn,
                        "node.fenced",
                        format!(
                            "fencing node {instance}: no answer for {silent_for_s}s and it holds the data of {}; terminating its instance so they can move",
                            pods.join(", ")
                        ),
                    )
                    .node(instance.clone()),
                );
                e.terminate(instance).await.map_err(ActionError::Cloud)
            }
            Err(e) => Err(e),
        },
        Action::DeleteVolume { volume, id, .. } => {
            match id {
                VolumeRef::Ebs(id) => ebs(cx)?.delete(id).await.map_err(ActionError::Cloud)?,
                VolumeRef::Docker(name) => {
                    // Docker refuses while a container uses it.
                    let argv: Vec<String> = ["docker", "volume", "rm", "--", name.as_str()]
                        .map(String::from)
                        .into();
                    let out = cx
                        .pool
                        .exec(target, &argv, None, limits(Duration::from_secs(60)))
                        .await?;
                    if !out.success() {
                        return Err(ActionError::Command {
                            command: format!("docker volume rm {name}"),
                            brief: out.brief(),
                        });
                    }
                }
            }
            cx.journal.event(
                NewEvent::new(
                    Level::Warn,
                    "volume.deleted",
                    format!("deleted {id} ({volume}) and everything on it, as asked"),
                )
                .app(volume.app.clone())
                .node(target.id.clone()),
            );
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Starts a snapshot; for a schedule, then deletes that schedule's
/// completed snapshots of the volume past the newest `keep` (never one a
/// person or a zone move took).
async fn snapshot(
    cx: &Context,
    volume: &crate::reconcile::VolumeKey,
    id: &str,
    why: &SnapshotWhy,
) -> Result<(), ActionError> {
    let e = ebs(cx)?;
    let purpose = match why {
        SnapshotWhy::Scheduled { .. } => SnapshotPurpose::Scheduled,
        SnapshotWhy::Move { .. } => SnapshotPurpose::Move,
    };
    let snap = e
        .snapshot(volume, id, purpose)
        .await
        .map_err(ActionError::Cloud)?;
    let said = match why {
        SnapshotWhy::Scheduled { .. } => {
            format!("snapshot {snap} of {volume} ({id}) started, as scheduled")
        }
        SnapshotWhy::Move { to_zone } => format!(
            "snapshot {snap} of {volume} ({id}) started, to move it to zone {to_zone}: its zone has had no ready node for [lifecycle] zone_wait"
        ),
    };
    cx.journal
        .event(NewEvent::info("volume.snapshot", said).app(volume.app.clone()));
    let SnapshotWhy::Scheduled { keep, named } = why else {
        return Ok(());
    };
    let mut mine: Vec<_> = e
        .snapshots()
        .await
        .map_err(ActionError::Cloud)?
        .into_iter()
        // This volume's own (not those of an earlier volume of the same
        // name, deleted since: maybe the only copy left of it).
        .filter(|s| {
            s.purpose == SnapshotPurpose::Scheduled
                && s.volume_id == id
                && s.key.as_ref() == Some(volume)
                && s.state == SnapshotState::Completed
                && !named.contains(&s.id)
        })
        .collect();
    // Newest first; the one just started is still pending, so `keep`
    // completed ones stay besides it.
    mine.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(b.id.cmp(&a.id)));
    let keep = usize::try_from(*keep).unwrap_or(usize::MAX);
    for old in mine.iter().skip(keep) {
        e.delete_snapshot(&old.id)
            .await
            .map_err(ActionError::Cloud)?;
        cx.journal.event(
            NewEvent::info(
                "volume.snapshot_pruned",
                format!(
                    "deleted snapshot {} of {volume}: past the newest {keep} of its schedule",
                    old.id
                ),
            )
            .app(volume.app.clone()),
        );
    }
    Ok(())
}

/// Attaches as the first free device name (which it returns); a name the
/// instance uses for a volume not the fleet's is skipped.
async fn attach<'a>(
    cx: &Context,
    target: &Target,
    id: &str,
    devices: &'a [String],
) -> Result<&'a str, ActionError> {
    let e = ebs(cx)?;
    let mut last = None;
    for device in devices {
        match e.attach(id, &target.id, device, EBS_WAIT).await {
            Ok(()) => return Ok(device),
            Err(err) if err.message.contains("already in use") => last = Some(err),
            Err(err) => return Err(ActionError::Cloud(err)),
        }
    }
    Err(ActionError::Cloud(last.unwrap_or(CloudError {
        call: "AttachVolume",
        message: format!("no free device name for volume {id}"),
    })))
}

/// A pod's local volume: made unless the node has it, and filled from
/// `seed` when given. Should the copy fail, the new volume (holding only
/// part of it) goes, so that the next pass copies again; `seed` is never
/// touched.
async fn ensure_local(
    cx: &Context,
    target: &Target,
    volume: &crate::reconcile::VolumeKey,
    name: &str,
    seed: Option<&str>,
) -> Result<(), ActionError> {
    let quick = limits(Duration::from_secs(60));
    let present = cx
        .pool
        .exec(target, &volume_present_argv(name), None, quick)
        .await?;
    if present.success() {
        return Ok(());
    }
    // Only Docker's word that there is none makes one (and may fill and,
    // on failure, remove it): a slow or failing Docker is no "absent".
    let said = String::from_utf8_lossy(&present.stderr).to_lowercase();
    if !said.contains("no such volume") {
        return Err(ActionError::Command {
            command: format!("docker volume inspect {name}"),
            brief: present.brief(),
        });
    }
    let argv = volume_create_argv(&cx.fleet, &volume.pod(), &volume.volume, name);
    let out = cx.pool.exec(target, &argv, None, quick).await?;
    if !out.success() {
        return Err(ActionError::Command {
            command: "docker volume create".into(),
            brief: out.brief(),
        });
    }
    let Some(seed) = seed else { return Ok(()) };
    let copy = volume_seed_argv(&cx.fleet, &cx.helper_image, seed, name);
    let out = cx
        .pool
        .exec(target, &copy, None, limits(Duration::from_secs(1800)))
        .await?;
    if out.success() {
        cx.journal.event(
            NewEvent::info(
                "volume.seeded",
                format!("{volume}: copied what volume {seed} held into {name}; {seed} is kept"),
            )
            .app(volume.app.clone())
            .node(target.id.clone()),
        );
        return Ok(());
    }
    let rm: Vec<String> = ["docker", "volume", "rm", "--", name]
        .map(String::from)
        .into();
    cx.pool.exec(target, &rm, None, quick).await?;
    Err(ActionError::Command {
        command: format!("copying volume {seed} into {name}"),
        brief: out.brief(),
    })
}
