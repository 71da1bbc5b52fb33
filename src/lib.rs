//! Prism: containers on cheap spot instances that survive preemption.

pub mod api;
pub mod bootstrap;
pub mod cli;
pub mod cloud;
pub mod config;
pub mod observe;
pub mod operator;
pub mod proxy;
pub mod random;
pub mod reconcile;
pub mod rollout;
pub mod ssh;
pub mod store;
pub mod tasks;
pub mod tui;
