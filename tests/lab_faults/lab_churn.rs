//! Churns the local lab: `lab/lab add` a node, then `lab/lab preempt` it,
//! checking what EC2 and SSH see at each step. Alone in its own test binary
//! because it changes the lab; it leaves the lab's live nodes as it found
//! them. Needs a lab that is up (`lab/lab up`); fails otherwise.

use crate::common;

use std::collections::BTreeSet;

use common::{Lab, describe_instance, fleet_instances, lab_cmd};

/// Preempts the added node if the test ends before it does.
struct Added {
    name: Option<String>,
}

impl Drop for Added {
    fn drop(&mut self) {
        if let Some(name) = self.name.take()
            && let Err(e) = lab_cmd(&["preempt", &name])
        {
            eprintln!("could not remove the node this test added ({name}): {e:#}");
        }
    }
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn an_added_node_appears_and_a_preempted_one_disappears() {
    let before = Lab::load();
    let names = |lab: &Lab| {
        lab.nodes
            .iter()
            .map(|n| n.name.clone())
            .collect::<BTreeSet<_>>()
    };
    let before_names = names(&before);
    let client = before.ec2().await;

    lab_cmd(&["add"]).expect("lab/lab add");
    let after_add = Lab::load();
    let mut new: Vec<_> = after_add
        .nodes
        .iter()
        .filter(|n| !before_names.contains(&n.name))
        .cloned()
        .collect();
    assert_eq!(
        new.len(),
        1,
        "lab/lab add should make one new node, made {new:?}"
    );
    let node = new.remove(0);
    let mut added = Added {
        name: Some(node.name.clone()),
    };
    assert!(
        before.nodes.iter().all(|n| n.address != node.address),
        "the new node reuses an address: {}",
        node.address
    );
    let id = node
        .instance_id
        .clone()
        .expect("lab.json gives the new node an instance");

    let listed = fleet_instances(&client)
        .await
        .expect("list the fleet after add");
    let inst = listed
        .get(&id)
        .unwrap_or_else(|| panic!("the new node's instance {id} is not listed with the fleet"));
    assert_eq!(inst.address.as_deref(), Some(node.address.as_str()));
    let version = after_add
        .ssh(&node.address, "docker info --format '{{.ServerVersion}}'")
        .expect("ssh docker info on the new node");
    assert!(!version.trim().is_empty(), "docker info printed nothing");

    lab_cmd(&["preempt", &node.name]).expect("lab/lab preempt");
    added.name = None;

    let inst = describe_instance(&client, &id)
        .await
        .expect("describe the preempted node's instance");
    assert_eq!(
        inst.state.as_deref(),
        Some("terminated"),
        "the preempted node's instance"
    );
    let listed = fleet_instances(&client)
        .await
        .expect("list the fleet after preempt");
    assert!(
        !listed.contains_key(&id),
        "the preempted node's instance {id} is still listed with the fleet"
    );
    let out = after_add.ssh_with(&after_add.identity(), &node.address, "true");
    assert!(
        !out.status.success(),
        "ssh to the preempted node {} still works",
        node.address
    );

    let after = Lab::load();
    assert_eq!(
        names(&after),
        before_names,
        "the lab's live nodes differ from before the test"
    );
    let ids = |lab: &Lab| {
        lab.nodes
            .iter()
            .map(|n| n.instance_id.clone())
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(ids(&after), ids(&before), "the lab's instances changed");
}
