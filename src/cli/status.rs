//! `prism status`: nodes and containers as the state store last saw them.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::Failure;
use super::table::{age, opt, printable_lines, render, size};
use crate::cloud::Discovery;
use crate::config::Config;
use crate::observe::ProbeLimits;
use crate::operator::{HEARTBEAT_LATE, Memory, observe, record};
use crate::reconcile::{Hold, MeshSettings};
use crate::ssh::{Pool, SshSettings};
use crate::store::{
    ContainerRecord, LockInfo, NodeRecord, Placement, Store, StoreError, Writer, hostname, now_ms,
};

/// Free space below which the state file's filesystem counts as full.
const FULL_BELOW: u64 = 1 << 20;

#[derive(Serialize)]
pub(crate) struct Status {
    fleet: String,
    state_file: String,
    /// False when the fleet was never reconciled (no state file yet).
    recorded: bool,
    nodes: Vec<NodeRecord>,
    containers: Vec<ContainerRecord>,
    placements: Vec<Placement>,
    lock: Option<LockInfo>,
    /// Changes held back by the guards against mass change.
    held: Vec<Hold>,
    /// Whether the applier's writes to the state file fail, and why it
    /// seems so; `None` when nothing says they do.
    writes_failing: Option<String>,
    /// With `[network]`: the mesh's cidr and each node's place in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    mesh: Option<MeshStatus>,
}

#[derive(Serialize)]
struct MeshStatus {
    cidr: String,
    domain: String,
    members: Vec<MeshMember>,
}

#[derive(Serialize)]
struct MeshMember {
    node_id: String,
    subnet: String,
    public_key: Option<String>,
}

/// What `prism status --json` prints (and the API's `GET /v1/fleet`).
pub(crate) fn document(config: &Config) -> Result<Status, StoreError> {
    let state_file = config.state_path();
    let mut status = Status {
        fleet: config.fleet.fleet.name.clone(),
        state_file: state_file.display().to_string(),
        recorded: false,
        nodes: Vec::new(),
        containers: Vec::new(),
        placements: Vec::new(),
        lock: None,
        held: Vec::new(),
        writes_failing: None,
        mesh: None,
    };
    if let Some(store) = Store::open_read_only(&state_file)? {
        status.recorded = true;
        status.nodes = store.nodes()?;
        status.containers = store.containers()?;
        status.placements = store.placements()?;
        status.lock = store.lock_info()?;
        status.held = store.holds()?;
        status.writes_failing =
            writes_failing(status.lock.as_ref(), &state_file, &hostname(), now_ms());
        if let Some(settings) = MeshSettings::of(config.fleet.network.as_ref()) {
            status.mesh = Some(MeshStatus {
                cidr: settings.cidr.to_string(),
                domain: settings.domain.clone(),
                members: store
                    .mesh_members()?
                    .into_iter()
                    .map(|(node_id, m)| MeshMember {
                        node_id,
                        subnet: settings
                            .subnet(m.slot)
                            .map_or_else(|| "-".into(), |s| s.to_string()),
                        public_key: m.public_key,
                    })
                    .collect(),
            });
        }
    }
    Ok(status)
}

pub fn run(config: &Config, json: bool) -> Result<(), Failure> {
    let status = document(config)?;
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &status)?;
        writeln!(out)?;
    } else {
        // Node-reported details are outside text: escaped, as the tables are.
        out.write_all(printable_lines(&human(&status, now_ms())).as_bytes())?;
    }
    Ok(())
}

/// Whether the applier holding `lock` fails to write the state file: its
/// heartbeat is late though it lives, or the file's filesystem is full.
fn writes_failing(lock: Option<&LockInfo>, file: &Path, host: &str, now: i64) -> Option<String> {
    let mut why = Vec::new();
    if let Some(lock) = lock.filter(|l| l.alive(host, now)) {
        let age = now.saturating_sub(lock.heartbeat_at);
        let late = i64::try_from(HEARTBEAT_LATE.as_millis()).unwrap_or(i64::MAX);
        if age > late {
            why.push(format!(
                "the applier ({}, pid {}) has written no heartbeat for {}s",
                lock.role,
                lock.pid,
                age / 1000
            ));
        }
    }
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if let Ok(fs) = rustix::fs::statvfs(dir) {
        let free = fs.f_bavail.saturating_mul(fs.f_frsize);
        if free < FULL_BELOW {
            why.push(format!(
                "the state file's filesystem is full ({free} bytes free)"
            ));
        }
    }
    (!why.is_empty()).then(|| why.join("; "))
}

/// Discovers the fleet, probes every node and records what was found.
pub async fn probe(config: &Config) -> Result<(), Failure> {
    let store = Store::open(&config.state_path())?;
    let mut memory = Memory::load(&store)?;
    let journal = Writer::start(store);
    let pool = Pool::new(SshSettings::from_config(config)?, Some(journal.clone()));
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
    record(
        &mut memory,
        &journal,
        &pass,
        true,
        &images,
        config.fleet.lifecycle.lost_after,
    );
    journal.call("finish writing", |_| Ok(())).await?;
    Ok(())
}

impl Status {
    /// A node's name, or its id when it is not recorded.
    fn node_name(&self, id: &str) -> String {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .map_or_else(|| id.to_owned(), |n| n.name.clone())
    }
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
    if let Some(why) = &s.writes_failing {
        text.push_str(&format!(
            "STATE STORE: writes fail: {why}; Prism goes on healing from memory, but what it does is not recorded\n"
        ));
    }
    for h in &s.held {
        text.push_str(&format!(
            "HELD BACK: {} (since {} ago){}; `prism confirm` lets it go ahead\n",
            h.summary,
            age(now, h.first_seen),
            if h.confirmed { ", confirmed" } else { "" }
        ));
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
                    n.lifecycle.as_str().to_owned(),
                    match &n.condition {
                        Some(c) => format!("{} ({c})", n.state.as_str()),
                        None => n.state.as_str().to_owned(),
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
    if let Some(mesh) = &s.mesh {
        text.push_str(&format!(
            "\nMESH {} (names under .{})\n",
            mesh.cidr, mesh.domain
        ));
        let rows: Vec<Vec<String>> = mesh
            .members
            .iter()
            .map(|m| {
                vec![
                    s.node_name(&m.node_id),
                    m.subnet.clone(),
                    opt(m.public_key.as_deref()),
                ]
            })
            .collect();
        if rows.is_empty() {
            text.push_str("  no node has joined yet\n");
        } else {
            text.push_str(&render(&["NODE", "SUBNET", "PUBLIC KEY"], &rows));
        }
    }
    text.push_str(&format!("\nCONTAINERS ({})\n", s.containers.len()));
    if s.containers.is_empty() {
        text.push_str("  none\n");
    } else {
        let rows: Vec<Vec<String>> = s
            .containers
            .iter()
            .map(|c| {
                vec![
                    format!("{}/{}/{}", c.app, c.service, c.instance),
                    s.node_name(&c.node_id),
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
    use crate::cloud::Lifecycle;
    use crate::config::Provider;
    use crate::reconcile::NodeState;
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
                provider: Provider::Ec2,
                zone: Some("eu-north-1a".into()),
                instance_type: Some("t3.small".into()),
                lifecycle: Lifecycle::Spot,
                state: NodeState::Lost,
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
            held: vec![],
            writes_failing: None,
            mesh: None,
        }
    }

    #[test]
    fn the_mesh_is_listed_by_node_name() {
        let mut s = status();
        s.mesh = Some(MeshStatus {
            cidr: "10.210.0.0/16".into(),
            domain: "internal".into(),
            members: vec![MeshMember {
                node_id: "i-0abc".into(),
                subnet: "10.210.1.0/24".into(),
                public_key: Some("n7WQBmJ52l8Dumdw225b4nsRgWhV2qrEQOKaMRSuT38=".into()),
            }],
        });
        let text = human(&s, 100_000);
        assert!(
            text.contains("MESH 10.210.0.0/16 (names under .internal)"),
            "{text}"
        );
        let row = text
            .lines()
            .find(|l| l.contains("10.210.1.0/24"))
            .expect("member row");
        assert!(
            row.starts_with("node1") && row.contains("n7WQBmJ52l8D"),
            "{row}"
        );
    }

    #[test]
    fn hostile_names_and_details_are_escaped() {
        let mut s = status();
        s.nodes[0].name = "web\u{1b}]52;c;cm0gLXJmIC8=\u{7}".into();
        s.nodes[0].condition_detail = Some("docker: \u{1b}[2Jgone".into());
        let text = printable_lines(&human(&s, 100_000));
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}'),
            "{text}"
        );
        assert!(
            text.contains("web\\u{1b}]52;c;cm0gLXJmIC8=\\u{7}"),
            "{text}"
        );
        assert!(text.contains("docker: \\u{1b}[2Jgone"), "{text}");
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
    fn a_live_applier_with_a_late_heartbeat_is_said_to_fail_its_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("s.db");
        let me = LockInfo {
            role: "daemon".into(),
            pid: std::process::id(),
            host: "box".into(),
            acquired_at: 0,
            heartbeat_at: 100_000,
            ttl_ms: 60_000,
            generation: 1,
        };
        assert_eq!(writes_failing(Some(&me), &file, "box", 110_000), None);
        let why = writes_failing(Some(&me), &file, "box", 200_000).expect("late");
        assert!(why.contains("no heartbeat for 100s"), "{why}");
        // A holder that is gone is no applier whose writes fail.
        let gone = LockInfo {
            pid: 4_194_305,
            ..me
        };
        assert_eq!(writes_failing(Some(&gone), &file, "box", 200_000), None);
        let mut s = status();
        s.writes_failing = Some(why);
        assert!(human(&s, 0).contains("STATE STORE: writes fail: the applier (daemon"));
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
