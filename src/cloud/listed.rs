//! Static nodes: machines outside AWS, listed in fleet.toml.

use std::collections::BTreeMap;

use super::{Lifecycle, Node, Presence};
use crate::config::{Config, Provider};

pub fn nodes(config: &Config) -> Vec<Node> {
    let fleet = &config.fleet;
    fleet
        .discovery
        .nodes
        .iter()
        .map(|n| Node {
            id: n.name.clone(),
            name: n.name.clone(),
            address: n.address.clone(),
            port: n.port.unwrap_or(fleet.ssh.port),
            user: n.user.clone().unwrap_or_else(|| fleet.ssh.user.clone()),
            provider: Provider::Static,
            zone: n.zone.clone(),
            instance_type: None,
            lifecycle: Lifecycle::Static,
            presence: Presence::Running,
            halted: false,
            launched_at: None,
            memory: n.memory.or(fleet.discovery.node_memory).map(|b| b.0),
            cpu: n.cpus.or(fleet.discovery.node_cpus).map(|m| m.0),
            tags: BTreeMap::new(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn per_node_user_and_port_override_the_fleet() {
        let text = r#"
            [fleet]
            name = "home"
            [ssh]
            user = "admin"
            port = 2222
            [discovery]
            provider = "static"
            node_memory = "1G"
            nodes = [
              { name = "pi", address = "10.0.0.5", user = "pi", port = 22, memory = "512M", zone = "shelf" },
              { name = "nuc", address = "10.0.0.6" },
            ]
        "#;
        let fleet = crate::config::parse(Path::new("fleet.toml"), text).expect("valid");
        let config = Config {
            file: "fleet.toml".into(),
            fleet,
            warnings: Vec::new(),
        };
        let nodes = nodes(&config);
        let pi = &nodes[0];
        assert_eq!(
            (pi.user.as_str(), pi.port, pi.memory, pi.zone.as_deref()),
            ("pi", 22, Some(512 << 20), Some("shelf"))
        );
        let nuc = &nodes[1];
        assert_eq!(
            (nuc.user.as_str(), nuc.port, nuc.memory, nuc.cpu),
            ("admin", 2222, Some(1 << 30), None)
        );
    }
}
