//! Reading a node's state. [`probe`] runs the read-only commands over SSH
//! and [`node_record`] turns what it found into state-store rows; all the
//! rest is pure: the argv of each command (data, never a shell string: the
//! SSH layer quotes it) and typed parsers of what those commands print.
//!
//! | argv | parser | expect |
//! |---|---|---|
//! | [`node_facts_argv`] | [`parse_node_facts`] | any status; judge the output |
//! | [`docker_info_argv`] | [`parse_docker_info`] | status 0, also when the daemon is down |
//! | [`list_containers_argv`] | [`parse_container_ids`] | status 0 |
//! | [`inspect_containers_argv`] | [`parse_inspect`] | 0, or 1 with only [`vanished_ids`] on stderr |
//!
//! Errors are [`ParseError`]s naming the command ([`Probe`]) and, where
//! known, the line; they carry no node name, for the caller to add.

mod containers;
mod error;
mod info;
pub mod labels;
mod node;
mod probe;
mod record;
mod time;

pub use containers::{
    ContainerId, ContainerState, Health, Protocol, PublishedPort, RunState,
    inspect_containers_argv, list_containers_argv, parse_container_ids, parse_inspect,
    vanished_ids,
};
pub(crate) use error::clip;
pub use error::{ParseError, Probe};
pub use info::{DockerInfo, docker_info_argv, parse_docker_info};
pub use labels::{Identity, LabelProblem, PrismLabels};
pub use node::{DockerStatus, FACTS_SCRIPT, NodeFacts, node_facts_argv, parse_node_facts};
pub use probe::{Condition, ProbeLimits, Probed, probe};
pub use record::{container_records, node_record};
