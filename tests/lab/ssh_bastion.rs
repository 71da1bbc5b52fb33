//! Nodes reached through a bastion, against the lab's real sshd: node 1
//! is the jump host, and the others are addressed by their container
//! names, which only Docker's DNS inside the lab network resolves, so a
//! command that answers at all went through the bastion.

use crate::common;

use std::collections::BTreeSet;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::prism_ssh::{argv, lab_key, limits, run, run_everywhere, settings};
use common::{Lab, Node};
use prism::ssh::{HostKeys, Pool, SshError, SshSettings, Target};
use prism::store::{Store, Writer};

/// These tests count this process's connections to the bastion: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn bastion(lab: &Lab) -> Target {
    Target::bastion(&lab.nodes[0].address, 22, common::NODE_USER)
}

/// A node by its container name: resolvable on the lab network only.
fn by_name(node: &Node) -> Target {
    Target {
        id: node
            .instance_id
            .clone()
            .unwrap_or_else(|| node.name.clone()),
        address: node.container.clone(),
        port: 22,
        user: common::NODE_USER.into(),
    }
}

fn via_bastion(lab: &Lab, host_keys: HostKeys) -> SshSettings {
    SshSettings {
        bastion: Some(bastion(lab)),
        ..settings(lab_key(lab), host_keys)
    }
}

/// The lab's known_hosts lines for `node`, under its container name.
fn known_as_name(lab: &Lab, node: &Node) -> String {
    let text = std::fs::read_to_string(lab.dir.join("known_hosts")).expect("lab known_hosts");
    let lines: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(host, _)| *host == node.address)
        .map(|(_, key)| format!("{} {key}\n", node.container))
        .collect();
    assert!(!lines.is_empty(), "{} is not in known_hosts", node.address);
    lines.concat()
}

/// A known_hosts file: the lab's own (which lists the bastion by address)
/// when `with_bastion`, plus every node under its container name.
fn known_hosts(lab: &Lab, dir: &Path, with_bastion: bool) -> PathBuf {
    let mut text = String::new();
    if with_bastion {
        text = std::fs::read_to_string(lab.dir.join("known_hosts")).expect("lab known_hosts");
    }
    for node in &lab.nodes {
        text.push_str(&known_as_name(lab, node));
    }
    let file = dir.join("known_hosts");
    std::fs::write(&file, text).expect("write known_hosts");
    file
}

/// Local ports of this process's TCP connections to `address:22`.
fn our_connections(address: &str) -> BTreeSet<String> {
    let out = Command::new("ss")
        .args(["-Htnp", "state", "established", "dst"])
        .arg(format!("{address}:22"))
        .output()
        .expect("run ss");
    let pid = format!("pid={},", std::process::id());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&pid))
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned))
        .collect()
}

fn pin_store(dir: &Path) -> Writer {
    Writer::start(Store::open(&dir.join("state.db")).expect("open the state store"))
}

/// The store in `dir`, once `writer`'s writes so far have landed.
async fn written(writer: &Writer, dir: &Path) -> Store {
    writer
        .call("wait for the writes", |_| Ok(()))
        .await
        .expect("the writer answers");
    Store::open(&dir.join("state.db")).expect("read the state store")
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn every_node_answers_through_one_shared_bastion_connection() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    assert!(lab.nodes.len() >= 2, "the lab needs two nodes");
    let names: Vec<Target> = lab.nodes.iter().map(by_name).collect();
    // Without this, an answer would prove nothing.
    assert!(
        (names[1].address.as_str(), 22).to_socket_addrs().is_err(),
        "this host resolves {}: the test cannot tell a direct connection from the bastion's",
        names[1].address
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = known_hosts(&lab, dir.path(), true);
    let before: Vec<_> = lab
        .nodes
        .iter()
        .map(|n| our_connections(&n.address))
        .collect();

    let pool = Pool::new(via_bastion(&lab, HostKeys::KnownHosts(file)), None);
    // Several rounds on every node at once, through the same pool.
    for _ in 0..3 {
        let results = run_everywhere(
            &pool,
            &names,
            &["sh", "-c", "echo \"$SSH_CONNECTION\""],
            limits(20),
        )
        .await;
        assert_eq!(results.len(), names.len());
        for (t, result) in results {
            let out = result.unwrap_or_else(|e| panic!("{}: {e}", t.address));
            assert!(out.success(), "{}: {}", t.address, out.stderr_text());
            // The node saw the bastion as its client.
            let client = out.stdout_text();
            assert_eq!(
                client.split_whitespace().next(),
                Some(lab.nodes[0].address.as_str()),
                "{}: {client}",
                t.address
            );
        }
    }

    let bastion_new: Vec<_> = our_connections(&lab.nodes[0].address)
        .difference(&before[0])
        .cloned()
        .collect();
    assert_eq!(
        bastion_new.len(),
        1,
        "every node's session must share one connection to the bastion: {bastion_new:?}"
    );
    for (node, before) in lab.nodes.iter().zip(&before).skip(1) {
        let direct: Vec<_> = our_connections(&node.address)
            .difference(before)
            .cloned()
            .collect();
        assert!(
            direct.is_empty(),
            "{} was reached directly: {direct:?}",
            node.name
        );
    }
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn the_bastion_key_is_pinned_under_its_own_id_and_a_changed_one_refused() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let node = by_name(&lab.nodes[1]);
    let jump = bastion(&lab);
    assert_eq!(jump.id, format!("bastion:{}:22", lab.nodes[0].address));

    let dir = tempfile::tempdir().expect("tempdir");
    let store = pin_store(dir.path());
    let pool = Pool::new(via_bastion(&lab, HostKeys::Pin), Some(store.clone()));
    let out = run(&pool, &node, &["hostname"]).await;
    assert!(out.success(), "{}", out.stderr_text());
    {
        let store = written(&store, dir.path()).await;
        let pinned = store
            .pinned_key(&jump.id)
            .expect("read")
            .expect("the bastion's key is pinned");
        let lab_keys =
            std::fs::read_to_string(lab.dir.join("known_hosts")).expect("lab known_hosts");
        assert!(
            lab_keys.contains(&format!(
                "{} {} {}",
                lab.nodes[0].address, pinned.algorithm, pinned.public_key
            )),
            "the pinned key is not node 1's"
        );
        assert!(
            store.pinned_key(&node.id).expect("read").is_some(),
            "the node's own key is pinned too"
        );
        let events = store.events(20).expect("events");
        assert!(
            events
                .iter()
                .any(|e| e.kind == "bastion.host_key_pinned" && e.node_id.is_none()),
            "{events:?}"
        );
    }

    // Another state file where the bastion's id holds a different key.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = pin_store(dir.path());
    let other_key = known_as_name(&lab, &lab.nodes[1]);
    let other_key = other_key
        .lines()
        .find(|l| l.contains("ssh-ed25519"))
        .expect("an ed25519 key");
    let mut parts = other_key.split_whitespace().skip(1);
    let (algorithm, body) = (parts.next().expect("alg"), parts.next().expect("key"));
    let (id, algorithm, body) = (jump.id.clone(), algorithm.to_owned(), body.to_owned());
    store
        .call("pin a wrong key", move |s| {
            s.pin_key(&id, &algorithm, &body, "SHA256:not-the-bastion")
        })
        .await
        .expect("pin");
    let pool = Pool::new(via_bastion(&lab, HostKeys::Pin), Some(store.clone()));
    let err = pool
        .exec(&node, &argv(&["true"]), None, limits(20))
        .await
        .expect_err("a bastion with another key must be refused");
    match &err {
        SshError::ViaBastion { node: id, source } => {
            assert_eq!(id, &node.id);
            assert!(
                matches!(**source, SshError::HostKeyMismatch { .. }),
                "{source:?}"
            );
        }
        other => panic!("expected the bastion to be refused, got {other:?}"),
    }
    assert_eq!(err.condition(), "bastion-untrusted");
    let text = err.to_string();
    assert!(
        text.contains(&jump.id) && text.contains("HOST KEY MISMATCH"),
        "{text}"
    );
    let events = written(&store, dir.path())
        .await
        .events(20)
        .expect("events");
    assert!(
        events.iter().any(|e| e.kind == "bastion.untrusted"),
        "{events:?}"
    );
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn known_hosts_mode_checks_the_bastion_too() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let dir = tempfile::tempdir().expect("tempdir");
    // Every node under its name, but no entry for the bastion's address.
    let file = known_hosts(&lab, dir.path(), false);
    let pool = Pool::new(via_bastion(&lab, HostKeys::KnownHosts(file)), None);
    let err = pool
        .exec(&by_name(&lab.nodes[1]), &argv(&["true"]), None, limits(20))
        .await
        .expect_err("an unlisted bastion must be refused");
    match &err {
        SshError::ViaBastion { source, .. } => {
            assert!(
                matches!(**source, SshError::HostKeyUnknown { .. }),
                "{source:?}"
            );
        }
        other => panic!("expected the bastion to be refused, got {other:?}"),
    }
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn a_dead_bastion_fails_fast_and_is_named() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = known_hosts(&lab, dir.path(), true);
    // In the lab network's unused last /26: nothing answers there.
    let dead = Target::bastion("172.31.250.250", 22, common::NODE_USER);
    let mut settings = SshSettings {
        bastion: Some(dead.clone()),
        ..settings(lab_key(&lab), HostKeys::KnownHosts(file))
    };
    settings.connect.connect_timeout = Duration::from_secs(1);
    let pool = Pool::new(settings, None);
    let names: Vec<Target> = lab.nodes.iter().map(by_name).collect();
    let started = Instant::now();
    let results = run_everywhere(&pool, &names, &["true"], limits(20)).await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    for (t, result) in results {
        let err = result.expect_err("nothing answers at the bastion");
        assert!(
            matches!(&err, SshError::ViaBastion { node, source }
                if node == &t.id && source.condition() == "unreachable"),
            "{err:?}"
        );
        assert_eq!(err.condition(), "bastion-unreachable");
        assert!(err.to_string().contains(&dead.id), "{err}");
    }
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn a_node_the_bastion_cannot_reach_is_the_nodes_failure() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = known_hosts(&lab, dir.path(), true);
    let pool = Pool::new(via_bastion(&lab, HostKeys::KnownHosts(file)), None);
    let missing = Target {
        id: "i-missing".into(),
        address: "prism-lab-no-such-node".into(),
        port: 22,
        user: common::NODE_USER.into(),
    };
    let err = pool
        .exec(&missing, &argv(&["true"]), None, limits(20))
        .await
        .expect_err("no such node");
    assert!(
        matches!(&err, SshError::Unreachable { node, .. } if node == "i-missing"),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("prism-lab-no-such-node:22 via bastion:"),
        "{text}"
    );
    // The bastion itself is fine: the next node goes through.
    let out = run(&pool, &by_name(&lab.nodes[1]), &["true"]).await;
    assert!(out.success());
}
