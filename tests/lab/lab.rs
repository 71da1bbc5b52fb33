//! Checks the local lab itself: the nodes Prism will drive answer over SSH
//! with Docker, the EC2 endpoint lists exactly them, and they can pull and
//! serve the test app. Needs a lab that is up (`lab/lab up`); fails
//! otherwise. These tests change nothing that outlives them.

use crate::common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::{Lab, fleet_instances, http_status, retry};

/// Runs `check` on every node and fails listing every node that failed.
fn on_every_node(lab: &Lab, check: impl Fn(&common::Node) -> Result<()>) {
    let failures: Vec<String> = lab
        .nodes
        .iter()
        .filter_map(|n| {
            check(n)
                .err()
                .map(|e| format!("{} ({}): {e:#}", n.name, n.address))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} nodes failed (lab/lab status shows the lab):\n{}",
        failures.len(),
        lab.nodes.len(),
        failures.join("\n")
    );
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn every_node_runs_docker_over_ssh_with_pinned_host_keys() {
    let lab = Lab::load();
    on_every_node(&lab, |node| {
        let version = lab.ssh(&node.address, "docker info --format '{{.ServerVersion}}'")?;
        let version = version.trim();
        ensure!(
            version.starts_with(|c: char| c.is_ascii_digit()),
            "docker info printed {version:?}, not a server version"
        );
        Ok(())
    });
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn a_key_the_nodes_do_not_know_is_refused() {
    let lab = Lab::load();
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let key = dir.path().join("wrong_ed25519");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "not-the-lab", "-f"])
        .arg(&key)
        .status()
        .expect("run ssh-keygen");
    assert!(made.success(), "ssh-keygen could not make a key: {made}");
    on_every_node(&lab, |node| {
        let out = lab.ssh_with(&key, &node.address, "true");
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "ssh with a wrong key got in");
        // Refused by the server after the host key matched known_hosts, not
        // turned away for some other reason.
        ensure!(
            stderr.contains("Permission denied"),
            "ssh with a wrong key failed, but not with Permission denied: {}",
            stderr.trim()
        );
        Ok(())
    });
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn ec2_lists_exactly_the_lab_nodes_by_fleet_tag() {
    let lab = Lab::load();
    let client = lab.ec2().await;
    let listed = fleet_instances(&client)
        .await
        .expect("list the lab's fleet on its EC2 endpoint");

    let want: BTreeMap<String, String> = lab
        .nodes
        .iter()
        .map(|n| {
            let id = n.instance_id.clone().unwrap_or_else(|| {
                panic!("{} has no instance in lab.json: run lab/lab up", n.name)
            });
            (id, n.address.clone())
        })
        .collect();
    let got: BTreeMap<String, String> = listed
        .values()
        .map(|i| (i.id.clone(), i.address.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        got, want,
        "running instances tagged prism:fleet=lab (left) differ from lab.json's nodes (right)"
    );

    for node in &lab.nodes {
        let id = node.instance_id.as_deref().unwrap_or_default();
        let inst = &listed[id];
        assert!(inst.spot, "{} ({id}) is not a spot instance", node.name);
        assert_eq!(
            inst.az.as_deref(),
            Some(node.az.as_str()),
            "{} ({id}) is in the wrong availability zone",
            node.name
        );
    }

    // The decoys prove the listing filters: one runs without the fleet tag,
    // one has the tag but is terminated.
    for (decoy, want_state) in [
        (&lab.decoys.not_ours, "running"),
        (&lab.decoys.terminated, "terminated"),
    ] {
        let decoy = decoy
            .as_deref()
            .expect("lab.json names both decoys: run lab/lab up");
        assert!(
            !listed.contains_key(decoy),
            "decoy {decoy} is listed with the fleet"
        );
        let inst = common::describe_instance(&client, decoy)
            .await
            .expect("describe a decoy instance");
        assert_eq!(
            inst.state.as_deref(),
            Some(want_state),
            "decoy {decoy} should be {want_state}"
        );
    }
}

/// Removes the test's container from a node however the test ends.
struct Cleanup<'a> {
    lab: &'a Lab,
    addr: String,
}

const REACH_LABEL: &str = "prism-lab-test=reach";

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        let rm = format!(
            "docker ps -aq --filter label={REACH_LABEL} | xargs -r docker rm -f >/dev/null"
        );
        if let Err(e) = self.lab.ssh(&self.addr, &rm) {
            eprintln!("cleanup on {}: {e:#}", self.addr);
        }
    }
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn every_node_pulls_the_testapp_from_the_lab_registry_and_serves_it() {
    let lab = Lab::load();
    on_every_node(&lab, |node| {
        let cleanup = Cleanup {
            lab: &lab,
            addr: node.address.clone(),
        };
        drop(Cleanup {
            lab: &lab,
            addr: node.address.clone(),
        }); // leftovers of an earlier run
        lab.ssh(
            &node.address,
            &format!("docker pull -q {}", lab.testapp_image),
        )
        .context("docker pull from the lab registry")?;
        lab.ssh(
            &node.address,
            &format!(
                "docker run -d --label {REACH_LABEL} -p 18080:8080 -e PRISM_APP=labtest {}",
                lab.testapp_image
            ),
        )
        .context("docker run the testapp")?;
        let target = format!("{}:18080", node.address);
        let status = retry(Duration::from_secs(10), || {
            http_status(&target, "/up", Duration::from_secs(2))
        })
        .with_context(|| format!("GET http://{target}/up"))?;
        ensure!(
            status == 200,
            "GET http://{target}/up answered {status}, not 200"
        );
        drop(cleanup);
        Ok(())
    });
}
