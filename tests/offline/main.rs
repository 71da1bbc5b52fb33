//! Tests that need neither the lab nor root: `cargo test` runs them
//! anywhere. The few that need the checking tools `lab/lab install` adds
//! (shellcheck, systemd-analyze, ruby) or the lab are ignored unless asked
//! for (`make test` asks).

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod config_corpus;
mod packaging;
mod proxy;
mod proxy_tls;
