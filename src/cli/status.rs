//! `prism status`: nodes and containers as the state store last saw them.

use std::io::Write;

use serde::Serialize;

use std::sync::{Arc, Mutex};

use super::Failure;
use super::table::{age, opt, render, size};
use crate::cloud::Discovery;
use crate::config::Config;
use crate::observe::ProbeLimits;
use crate::operator::{Recorder, observe};
use crate::ssh::{Pool, SshSettings};
use crate::store::{ContainerRecord, LockInfo, NodeRecord, Placement, Store, now_ms};

#[derive(Serialize)]
struct Status {
    fleet: String,
    state_file: String,
    /// False when the fleet was never reconciled (no state file yet).
    recorded: bool,
    nodes: Vec<NodeRecord>,
    containers: Vec<ContainerRecord>,
    placements: Vec<Placement>,
    lock: Option<LockInfo>,
}

pub fn run(config: &Config, json: bool) -> Result<(), Failure> {
    let state_file = config.state_path();
    let mut status = Status {
        fleet: config.fleet.fleet.name.clone(),
        state_file: state_file.display().to_string(),
        recorded: false,
        nodes: Vec::new(),
        containers: Vec::new(),
        placements: Vec::new(),
        lock: None,
    };
    if let Some(store) = Store::open_existing(&state_file)? {
        status.recorded = true;
        status.nodes = store.nodes()?;
        status.containers = store.containers()?;
        status.placements = store.placements()?;
        status.lock = store.lock_info()?;
    }
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &status)?;
        writeln!(out)?;
    } else {
        out.write_all(human(&status, now_ms()).as_bytes())?;
    }
    Ok(())
}

/// Discovers the fleet, probes every node and records what was found.
pub async fn probe(config: &Config) -> Result<(), Failure> {
    let store = Arc::new(Mutex::new(Store::open(&config.state_path())?));
    let pool = Pool::new(SshSettings::from_config(config)?, Some(store.clone()));
    let nodes = Discovery::from_config(config).await.nodes().await?;
    let pass = observe(
        &pool,
        &nodes,
        &config.fleet.fleet.name,
        ProbeLimits::default(),
    )
    .await;
    // As Desired::images (which needs the secrets): apps scaled to zero
    // want no image.
    let images = config
        .fleet
        .apps
        .values()
        .filter(|a| a.instances > 0)
        .flat_map(|a| a.services.values().map(|s| s.image.clone()))
        .collect();
    Recorder::new(config.fleet.lifecycle.lost_after).record(&store, &pass, true, &images)?;
    Ok(())
}

fn human(s: &Status, now: i64) -> String {
    let mut text = format!("fleet {}  (state: {})\n", s.fleet, s.state_file);
    if !s.recorded {
        text.push_str("\nNo state recorded yet: this fleet has not been reconciled.\n");
        return text;
    }
    if let Some(lock) = &s.lock {
        text.push_str(&format!("applier: {lock}\n"));
    }
    text.push_str(&format!("\nNODES ({})\n", s.nodes.len()));
    if s.nodes.is_empty() {
        text.push_str("  none seen yet\n");
    } else {
        let pods = |id: &str| s.placements.iter().filter(|p| p.node_id == id).count();
        let rows: Vec<Vec<String>> = s
            .nodes
            .iter()
            .map(|n| {
                let memory = match (n.memory_free, n.memory_total) {
                    (Some(free), Some(total)) => format!("{} free of {}", size(free), size(total)),
                    (None, Some(total)) => size(total),
                    _ => "-".into(),
                };
                vec![
                    n.name.clone(),
                    n.id.clone(),
                    n.address.clone(),
                    opt(n.zone.as_deref()),
                    opt(n.instance_type.as_deref()),
                    n.lifecycle.clone(),
                    match &n.condition {
                        Some(c) => format!("{} ({c})", n.state),
                        None => n.state.clone(),
                    },
                    memory,
                    pods(&n.id).to_string(),
                    age(now, n.last_seen),
                ]
            })
            .collect();
        text.push_str(&render(
            &[
                "NAME",
                "ID",
                "ADDRESS",
                "ZONE",
                "TYPE",
                "LIFECYCLE",
                "STATE",
                "MEMORY",
                "PODS",
                "SEEN",
            ],
            &rows,
        ));
        let troubled: Vec<_> = s.nodes.iter().filter(|n| n.condition.is_some()).collect();
        if !troubled.is_empty() {
            text.push_str("\nNOT READY\n");
            for n in troubled {
                let detail = n.condition_detail.as_deref().unwrap_or("");
                text.push_str(&format!("  {} ({}): {detail}\n", n.name, n.id));
            }
        }
    }
    text.push_str(&format!("\nCONTAINERS ({})\n", s.containers.len()));
    if s.containers.is_empty() {
        text.push_str("  none\n");
    } else {
        let node_name = |id: &str| {
            s.nodes
                .iter()
                .find(|n| n.id == id)
                .map_or_else(|| id.to_owned(), |n| n.name.clone())
        };
        let rows: Vec<Vec<String>> = s
            .containers
            .iter()
            .map(|c| {
                vec![
                    format!("{}/{}/{}", c.app, c.service, c.instance),
                    node_name(&c.node_id),
                    c.image.clone(),
                    c.state.clone(),
                    opt(c.health.as_deref()),
                    c.started_at.map_or_else(|| "-".into(), |t| age(now, t)),
                    c.restarts.to_string(),
                    if c.ports.is_empty() {
                        "-".into()
                    } else {
                        c.ports.clone()
                    },
                ]
            })
            .collect();
        text.push_str(&render(
            &[
                "POD", "NODE", "IMAGE", "STATE", "HEALTH", "UP", "RESTARTS", "PORTS",
            ],
            &rows,
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ContainerRecord, NodeRecord};

    fn status() -> Status {
        Status {
            fleet: "lab".into(),
            state_file: "/tmp/s.db".into(),
            recorded: true,
            nodes: vec![NodeRecord {
                id: "i-0abc".into(),
                name: "node1".into(),
                address: "172.31.250.10".into(),
                provider: "ec2".into(),
                zone: Some("eu-north-1a".into()),
                instance_type: Some("t3.small".into()),
                lifecycle: "spot".into(),
                state: "lost".into(),
                condition: Some("unreachable".into()),
                condition_detail: Some("i-0abc: unreachable at 172.31.250.10: no route".into()),
                docker_version: None,
                memory_total: Some(2 << 30),
                memory_free: Some(1 << 30),
                cpus: Some(2000),
                disk_free: None,
                first_seen: 0,
                last_seen: 50_000,
                last_probe: None,
            }],
            containers: vec![ContainerRecord {
                node_id: "i-0abc".into(),
                name: "prism-blog-web-0".into(),
                app: "blog".into(),
                service: "web".into(),
                instance: 0,
                image: "blog:1.4".into(),
                state: "running".into(),
                health: Some("healthy".into()),
                restarts: 2,
                ports: "8080->31000".into(),
                started_at: Some(40_000),
                spec_hash: None,
                observed_at: 50_000,
            }],
            placements: vec![],
            lock: None,
        }
    }

    #[test]
    fn human_output_shows_nodes_and_containers() {
        let text = human(&status(), 100_000);
        assert!(
            text.starts_with("fleet lab  (state: /tmp/s.db)\n"),
            "{text}"
        );
        assert!(text.contains("NODES (1)"));
        let node_line = text
            .lines()
            .find(|l| l.starts_with("node1"))
            .expect("node row");
        for cell in [
            "i-0abc",
            "172.31.250.10",
            "eu-north-1a",
            "t3.small",
            "spot",
            "lost (unreachable)",
            "1G free of 2G",
            "50s",
        ] {
            assert!(
                node_line.contains(cell),
                "{cell} missing from {node_line:?}"
            );
        }
        assert!(
            text.contains(
                "NOT READY\n  node1 (i-0abc): i-0abc: unreachable at 172.31.250.10: no route\n"
            ),
            "{text}"
        );
        let pod_line = text
            .lines()
            .find(|l| l.starts_with("blog/web/0"))
            .expect("container row");
        for cell in [
            "node1",
            "blog:1.4",
            "running",
            "healthy",
            "60s",
            "8080->31000",
        ] {
            assert!(pod_line.contains(cell), "{cell} missing from {pod_line:?}");
        }
    }

    #[test]
    fn no_state_says_so() {
        let mut s = status();
        s.recorded = false;
        let text = human(&s, 0);
        assert!(text.contains("No state recorded yet"), "{text}");
        assert!(!text.contains("NODES"));
    }
}
