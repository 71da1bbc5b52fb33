//! Prism: containers on cheap spot instances that survive preemption.

pub mod bootstrap;
pub mod cli;
pub mod config;
pub mod observe;
pub mod ssh;
pub mod store;
