//! Lab tests that disturb the shared nodes for a moment (sshd paused,
//! dockerd stopped, a partition) or need the lab's exact listing: `make
//! test` runs this binary with one test thread. Ignored by a plain
//! `cargo test`, like the other lab tests.

#[path = "../common/mod.rs"]
mod common;

mod docker_api;
mod lab_churn;
mod observe;
mod ssh_faults;
