//! Reconcile, the pure half: from fleet.toml's desired state, the nodes,
//! what they run and the stored placements, a [`Plan`] of actions. No I/O
//! here apart from [`resolve_secrets`]; the apply side runs the plan.
//!
//! | module | job |
//! |---|---|
//! | `secrets` | secret values: read once, never printed |
//! | `desired` | fleet.toml → [`Desired`]: pods and container specs |
//! | `spec` | [`ContainerConfig`], its [`SpecHash`], container and network names |
//! | `docker` | argv of every command that changes a node |
//! | `schedule` | which node each pod runs on |
//! | `plan` | the actions, per node, in order |
//! | `problem` | what could not be done, as RFC 7807 problems |
//!
//! One pass: [`resolve_secrets`] → [`Desired::build`] → [`plan`] with the
//! inventory as [`NodeView`]s, the containers of each node observed this
//! pass (health overwritten with Prism's own check verdicts) and the stored
//! placements. Then store [`Plan::placement_changes`] and run each node's
//! actions in order, nodes in parallel:
//!
//! | action | commands ([`docker`]) |
//! |---|---|
//! | `EnsureNetwork` | `network_create_argv`; "already exists" is success |
//! | `Pull` | policy `missing`: nothing if `image_present_argv` succeeds; with `login`: `login_command` (password on stdin); then `pull_argv` |
//! | `Run` | `run_argv`, with the secrets' `env_file_content` in a 0600 file (or on stdin as `/dev/stdin`) when `needs_env_file` |
//! | `Start` | `start_argv` |
//! | `Restart` | `restart_argv(id, STOP_GRACE)` |
//! | `Remove` | `stop_argv(id, STOP_GRACE)`, then `remove_argv` |
//! | `RemoveNetwork` | `network_remove_argv`; "No such network" is success |
//!
//! A failed action should end its pod's steps on that node for this pass
//! (later ones depend on it; a failed pull, every pod running that image);
//! the next plan picks up from what is observed then.

mod asked;
mod deletes;
mod desired;
pub mod docker;
mod guard;
mod job;
mod mesh;
mod plan;
mod problem;
mod schedule;
mod secrets;
mod snapshots;
mod spec;
mod storage;
mod volumes;

pub(crate) use asked::plan_restarts;
pub(crate) use deletes::plan_deletes;
pub use desired::{AppSpec, Desired, MissingSecret, PodKey, Reserve};
pub use docker::{EnvFileError, EnvFileMissing, RunSpec};
pub(crate) use guard::{
    Admission, MassChange, apps_removed, fleet_pods, hold_apps, inventory_shrank,
};
pub use guard::{Hold, HoldKind, Holds};
pub use job::{JobContainer, JobEnd, JobRun, Tick};
pub(crate) use job::{plan_jobs, watchdog_name};
pub use mesh::{
    KEEPALIVE_S, Member, MeshInput, MeshSettings, MeshSetup, Peer, gateway, members, names,
    names_hash, operator_peers, plan_mesh,
};
pub use plan::{
    Action, ContainerRef, PlacementChange, Plan, PodPlacement, RemoveReason, RestartWhy, RunReason,
    SnapshotWhy, VolumeRef, plan,
};
pub use problem::{Problem, ProblemKind};
pub use schedule::{NodeState, NodeView, PodDemand, Schedule, ZoneRule, schedule};
pub(crate) use secrets::resolve_secrets;
pub use secrets::{Secret, SecretError, Secrets, SpecKey};
pub use snapshots::SnapshotTick;
pub(crate) use snapshots::plan_snapshots;
pub use spec::{ContainerConfig, SpecHash};
pub use storage::{
    AttachState, EbsAttachment, EbsSnapshot, EbsState, EbsVolume, SnapshotPurpose, SnapshotState,
    Storage,
};
pub use volumes::{
    DATA_DIR, EbsSpec, MOUNT_ROOT, MountSpec, VolumeKey, VolumeSpec, image_volume_name, mount_dir,
};
pub(crate) use volumes::{volume_create_argv, volume_present_argv, volume_seed_argv};
