//! Tests against the local lab (`lab/lab up`): real sshd, dockerd, moto
//! and registry. Ignored by a plain `cargo test`; `make test` brings the
//! lab up and runs them with `--include-ignored`. They share the lab
//! nodes read-only or use nodes of their own, so they run in parallel.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/db.rs"]
mod db;
#[path = "../common/deploy.rs"]
mod deploy;
#[path = "../common/on_node.rs"]
mod on_node;

mod api;
mod bootstrap;
mod dashboard;
mod health;
mod lab;
mod laravel;
mod lifecycle;
mod mesh;
mod nodes;
mod prepare;
mod published_plan;
mod reconcile;
mod registry;
mod routing;
mod runtime;
mod ssh;
mod ssh_bastion;
mod ssh_stream;
mod volumes;
