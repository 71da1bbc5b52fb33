//! Reading a node's state. [`probe`] runs the facts script over SSH and
//! asks Docker over its API socket, and [`node_record`] turns what it
//! found into state-store rows; all the rest is pure: the argv of each
//! command (data, never a shell string: the SSH layer quotes it), the API's
//! request paths, and typed parsers of the answers.
//!
//! What a probe reads:
//!
//! | argv or request | parser | expect |
//! |---|---|---|
//! | [`node_facts_argv`] | [`parse_node_facts`] | any status; judge the output |
//! | `GET` [`api::VERSION_PATH`] | [`api::parse_version`] | 200 (asked once per connection) |
//! | `GET` [`api::list_containers_path`] | [`api::parse_container_list`] | 200 |
//! | `GET` [`api::inspect_container_path`] | [`api::parse_container_inspect`] | 200, or 404: gone |
//! | `GET` [`IMAGES_PATH`] | [`parse_image_list`] | 200 |
//! | [`docker_version_argv`] | [`parse_docker_version`] | only when sshd cannot open the socket |
//!
//! The docker CLI's own answers parse into the same types
//! ([`parse_container_ids`] for `docker ps -aq`, [`parse_inspect`] for
//! `docker container inspect`): the probe does not run them; the lab tests
//! hold its API answers against them.
//!
//! Errors are [`ParseError`]s naming the command ([`Probe`]) and, where
//! known, the line; they carry no node name, for the caller to add.

pub mod api;
mod containers;
mod error;
mod images;
pub mod labels;
mod node;
mod probe;
mod record;
mod time;
mod version;

pub use containers::{
    ContainerId, ContainerState, Health, MESH_NETWORK, Protocol, PublishedPort, RunState,
    parse_container_ids, parse_inspect,
};
pub use error::{ParseError, Probe};
pub(crate) use error::{check_header, clip};
pub use images::Images;
pub(crate) use images::{IMAGES_PATH, inspect_image_path, parse_image_list, parse_image_volumes};
pub use labels::{Identity, JobLabels, LabelProblem, PrismLabels};
pub use node::{DockerSetup, MeshFacts, NodeFacts, Notice, SocketAccess};
pub(crate) use node::{node_facts_argv, parse_node_facts};
pub(crate) use probe::probe_with_metadata;
pub use probe::{Condition, ProbeLimits, Probed, probe};
pub(crate) use record::{container_records, node_record};
pub(crate) use version::{docker_version_argv, parse_docker_version};
