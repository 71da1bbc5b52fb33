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

mod desired;
pub mod docker;
mod plan;
mod problem;
mod schedule;
mod secrets;
mod spec;

pub use desired::{AppSpec, Desired, MissingSecret, PodKey, Reserve, ServiceSpec};
pub use docker::{EnvFileError, EnvFileMissing, RunSpec};
pub use plan::{
    Action, ContainerRef, PlacementChange, Plan, PodPlacement, RemoveReason, RunReason, plan,
};
pub use problem::{Problem, ProblemKind};
pub use schedule::{NodeState, NodeView, PodDemand, Schedule, schedule};
pub use secrets::{
    RegistryLogin, Secret, SecretError, SecretOwner, Secrets, env_file_unsafe, resolve_secrets,
};
pub use spec::{
    ContainerConfig, SPEC_HASH_LEN, SpecHash, container_name, network_name, restart_arg,
};
