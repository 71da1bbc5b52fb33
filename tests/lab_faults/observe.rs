//! `prism status --probe` against the lab: every node's facts and the
//! fleet's containers are read over SSH and recorded, and a node whose
//! Docker is stopped is reported as such while the others still answer.

use crate::common;

use std::sync::{Mutex, MutexGuard};

use common::{Lab, Node, lab_cmd, prism};
use prism::store::Store;
use serde_json::Value;

/// The tests here read every node and one stops Docker on a node: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poison| poison.into_inner())
}

fn probe(fleet: &std::path::Path, json: bool) -> (Value, String) {
    let file = fleet.to_str().expect("utf-8 path");
    let mut args = vec!["-c", file, "status", "--probe"];
    if json {
        args.push("--json");
    }
    let out = prism(&args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "prism status --probe failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let value = if json {
        serde_json::from_str(&stdout).expect("status --json prints JSON")
    } else {
        Value::Null
    };
    (value, stdout)
}

fn node_row<'a>(status: &'a Value, node: &Node) -> &'a Value {
    let id = node
        .instance_id
        .as_deref()
        .expect("lab nodes are instances");
    status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["id"] == id)
        .unwrap_or_else(|| panic!("{} ({id}) missing from {status:#}", node.name))
}

/// Runs `docker` on a node over the lab's ssh; panics with its stderr.
fn docker_on(lab: &Lab, node: &Node, args: &str) -> String {
    lab.ssh(&node.address, &format!("docker {args}"))
        .unwrap_or_else(|e| panic!("docker {args} on {}: {e:#}", node.name))
}

/// Removes a container when dropped, also when the test fails.
struct Container<'a> {
    lab: &'a Lab,
    node: &'a Node,
    name: String,
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self
            .lab
            .ssh(&self.node.address, &format!("docker rm -f {}", self.name));
    }
}

/// Starts Docker again when dropped, also when the test fails.
struct DockerStopped<'a>(&'a Node);

impl Drop for DockerStopped<'_> {
    fn drop(&mut self) {
        if let Err(e) = lab_cmd(&["dockerd", &self.0.name, "start"]) {
            eprintln!("could not start dockerd on {} again: {e:#}", self.0.name);
        }
    }
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn probe_records_every_nodes_facts_and_the_fleets_containers() {
    let _serial = serial();
    let lab = Lab::load();
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = lab.fleet_file(dir.path(), "");
    let node = &lab.nodes[0];
    let name = format!("observe-test-{}", std::process::id());
    docker_on(
        &lab,
        node,
        &format!(
            "run -d --init --name {name} -p 8080 --label prism.fleet=lab --label prism.app=observed \
             --label prism.service=web --label prism.instance=3 --label prism.spec=abc123 {}",
            lab.testapp_image
        ),
    );
    let _cleanup = Container {
        lab: &lab,
        node,
        name: name.clone(),
    };

    let (status, _) = probe(&fleet, true);
    assert_eq!(status["recorded"], true);
    for n in &lab.nodes {
        let row = node_row(&status, n);
        assert_eq!(row["state"], "ready", "{row:#}");
        assert_eq!(row["condition"], Value::Null, "{row:#}");
        assert_eq!(row["address"], n.address.as_str());
        assert_eq!(row["zone"], n.az.as_str());
        assert_eq!(row["lifecycle"], "spot");
        assert!(
            row["docker_version"]
                .as_str()
                .is_some_and(|v| !v.is_empty()),
            "{row:#}"
        );
        assert!(
            row["memory_total"].as_i64().is_some_and(|m| m > 0),
            "{row:#}"
        );
        assert!(row["cpus"].as_i64().is_some_and(|c| c >= 1000), "{row:#}");
        assert!(row["disk_free"].as_i64().is_some_and(|d| d > 0), "{row:#}");
    }
    let ours: Vec<&Value> = status["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .filter(|c| c["name"] == name.as_str())
        .collect();
    assert_eq!(ours.len(), 1, "{status:#}");
    let c = ours[0];
    assert_eq!(c["node_id"], node.instance_id.as_deref().expect("id"));
    assert_eq!(
        (&c["app"], &c["service"], &c["instance"], &c["spec_hash"]),
        (
            &Value::from("observed"),
            &Value::from("web"),
            &Value::from(3),
            &Value::from("abc123")
        )
    );
    assert_eq!(c["state"], "running");
    assert!(
        c["ports"]
            .as_str()
            .is_some_and(|p| p.ends_with("->8080/tcp")),
        "{c:#}"
    );

    // Gone from the node, gone from the record at the next probe.
    docker_on(&lab, node, &format!("rm -f {name}"));
    let (status, _) = probe(&fleet, true);
    assert!(
        !status["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .any(|c| c["name"] == name.as_str()),
        "{status:#}"
    );
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn docker_stopped_on_a_node_is_reported_while_the_others_answer() {
    let _serial = serial();
    let lab = Lab::load();
    assert!(lab.nodes.len() >= 2, "the lab needs two nodes");
    let dir = tempfile::tempdir().expect("tempdir");
    let fleet = lab.fleet_file(dir.path(), "");
    let down = lab.nodes.last().expect("nodes");
    probe(&fleet, true);

    lab_cmd(&["dockerd", &down.name, "stop"]).expect("stop dockerd");
    let restart = DockerStopped(down);
    let (_, human) = probe(&fleet, false);
    let (status, _) = probe(&fleet, true);
    let row = node_row(&status, down);
    // Two probes in a row without Docker: suspect, then lost.
    assert_eq!(row["state"], "lost", "{row:#}");
    assert_eq!(row["condition"], "docker-down", "{row:#}");
    assert!(
        row["condition_detail"]
            .as_str()
            .is_some_and(|d| d.contains("Cannot connect to the Docker daemon")),
        "{row:#}"
    );
    // What it knew before Docker stopped, it still shows.
    assert!(row["memory_total"].as_i64().is_some_and(|m| m > 0));
    for n in lab.nodes.iter().filter(|n| n.name != down.name) {
        assert_eq!(node_row(&status, n)["state"], "ready", "{}", n.name);
    }
    let line = human
        .lines()
        .skip_while(|l| *l != "NOT READY")
        .nth(1)
        .unwrap_or_else(|| panic!("no NOT READY section in:\n{human}"));
    assert!(
        line.contains(&down.name) && line.contains("Cannot connect to the Docker daemon"),
        "{line}"
    );

    drop(restart);
    let (status, _) = probe(&fleet, true);
    assert_eq!(node_row(&status, down)["state"], "ready");

    let store = Store::open_existing(&dir.path().join("state.db"))
        .expect("state file")
        .expect("exists");
    let id = down.instance_id.as_deref().expect("id");
    let mut kinds: Vec<String> = store
        .events(1000)
        .expect("events")
        .into_iter()
        .filter(|e| e.node_id.as_deref() == Some(id))
        .map(|e| e.kind)
        .collect();
    kinds.reverse();
    assert_eq!(
        kinds,
        [
            "node.discovered",
            "node.docker-down",
            "node.suspect",
            "node.lost",
            "node.ready"
        ]
    );
}
