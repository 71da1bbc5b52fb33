//! `prism validate`: load fleet.toml and summarise what it declares.

use std::io::Write;
use std::path::Path;

use super::Failure;
use crate::config::{Config, Provider};

pub fn run(file: &Path) -> Result<(), Failure> {
    let config = Config::load(file)?;
    let fleet = &config.fleet;
    let services: usize = fleet.apps.values().map(|a| a.services.len()).sum();
    let containers: u64 = fleet
        .apps
        .values()
        .map(|a| u64::from(a.instances) * a.services.len() as u64)
        .sum();
    let jobs: usize = fleet.apps.values().map(|a| a.jobs.len()).sum();
    let nodes = match fleet.discovery.provider {
        Provider::Ec2 => {
            let region = fleet
                .discovery
                .region
                .as_deref()
                .unwrap_or("region from the AWS environment");
            format!(
                "EC2 instances tagged for fleet {:?} ({region})",
                fleet.fleet.name
            )
        }
        Provider::Static => format!("{} static node(s)", fleet.discovery.nodes.len()),
    };
    let mut out = std::io::stdout().lock();
    for w in &config.warnings {
        writeln!(out, "{w}")?;
    }
    writeln!(out, "{}: valid", file.display())?;
    writeln!(
        out,
        "  fleet {:?}: {} app(s), {services} service(s), {containers} container(s) when all run, {jobs} scheduled job(s)",
        fleet.fleet.name,
        fleet.apps.len()
    )?;
    writeln!(out, "  nodes: {nodes}")?;
    if let Some(net) = &fleet.network {
        writeln!(
            out,
            "  mesh: {} (WireGuard on UDP {}, interface {}), names under .{}",
            net.cidr, net.port, net.interface, net.domain
        )?;
    }
    writeln!(out, "  state: {}", config.state_path().display())?;
    Ok(())
}
