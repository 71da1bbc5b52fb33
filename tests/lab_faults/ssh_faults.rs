//! The SSH executor when nodes misbehave: paused, partitioned, a changed
//! host key, a dropped connection. These change the lab for a moment, so
//! they run one at a time and always put the lab back.

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::prism_ssh::{argv, known_hosts_pool, limits, pin_pool, run_everywhere, target};
use common::{Lab, lab_cmd};
use prism::ssh::{ExecLimits, SshError};

/// One fault at a time: the tests of this file share the lab.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn docker(args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .args(args)
        .output()
        .expect("run docker")
}

/// Runs `undo` when dropped, so a failing assertion still restores the lab.
struct Undo<F: FnMut()>(F);

impl<F: FnMut()> Drop for Undo<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn a_paused_node_times_out_while_the_others_answer() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let pool = known_hosts_pool(&lab);
    let targets: Vec<_> = lab.nodes.iter().map(target).collect();
    // Connect everywhere first, so the pause hits a live connection.
    for t in &targets {
        pool.session(t).await.expect("connect");
    }
    let paused = lab.nodes.last().expect("a node");
    assert!(docker(&["pause", &paused.container]).status.success());
    let _undo = Undo(|| {
        docker(&["unpause", &paused.container]);
    });
    let started = Instant::now();
    let results = run_everywhere(&pool, &targets, &["true"], limits(2)).await;
    let elapsed = started.elapsed();
    for (t, result) in results {
        if t.address == paused.address {
            let err = result.expect_err("the paused node cannot answer");
            assert!(matches!(err, SshError::Timeout { .. }), "{err:?}");
        } else {
            assert!(result.expect("the others answer").success());
        }
    }
    // Everyone waited on the paused node's timeout at most, not one each.
    assert!(elapsed < Duration::from_secs(4), "fan-out took {elapsed:?}");
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn a_partitioned_node_is_unreachable_while_the_others_answer() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let pool = known_hosts_pool(&lab);
    let cut = &lab.nodes[1];
    lab_cmd(&["partition", &cut.name]).expect("partition");
    let _undo = Undo(|| {
        let _ = lab_cmd(&["heal", &cut.name]);
    });
    let targets: Vec<_> = lab.nodes.iter().map(target).collect();
    let results = run_everywhere(&pool, &targets, &["true"], limits(2)).await;
    for (t, result) in results {
        if t.address == cut.address {
            let err = result.expect_err("a partitioned node cannot answer");
            assert_eq!(err.condition(), "unreachable", "{err:?}");
        } else {
            assert!(result.expect("the others answer").success());
        }
    }
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn a_changed_host_key_on_the_same_instance_is_refused() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("state.db");
    let node = &lab.nodes[0];
    let t = target(node);
    {
        let (pool, _store) = pin_pool(&lab, &file);
        pool.session(&t)
            .await
            .expect("first connection pins the key");
    }
    // The same instance id now shows a new host key (a MITM, or a rebuilt
    // machine): keep the real keys aside, make new ones, restart sshd.
    let sh = |script: &str| docker(&["exec", &node.container, "sh", "-c", script]);
    let regen = sh(
        "mkdir -p /root/keys-aside && cp -p /etc/ssh/ssh_host_* /root/keys-aside/ \
                    && rm -f /etc/ssh/ssh_host_* && ssh-keygen -A >/dev/null && pkill -HUP -x sshd",
    );
    assert!(
        regen.status.success(),
        "{}",
        String::from_utf8_lossy(&regen.stderr)
    );
    let _undo = Undo(|| {
        sh("cp -p /root/keys-aside/ssh_host_* /etc/ssh/ && pkill -HUP -x sshd");
        std::thread::sleep(Duration::from_millis(300));
    });
    std::thread::sleep(Duration::from_millis(300));
    let (pool, store) = pin_pool(&lab, &file);
    let err = match pool.session(&t).await {
        Ok(_) => panic!("a changed key must be refused"),
        Err(err) => err,
    };
    assert!(matches!(err, SshError::HostKeyMismatch { .. }), "{err:?}");
    assert_eq!(err.condition(), "host-key-mismatch");
    let events = store
        .call("read events", |s| s.events(10))
        .await
        .expect("events");
    assert!(
        events
            .iter()
            .any(|e| e.kind == "node.untrusted" && e.node_id.as_deref() == Some(t.id.as_str())),
        "{events:?}"
    );
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn many_commands_share_one_connection_and_a_dropped_one_is_replaced() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let pool = known_hosts_pool(&lab);
    let node = &lab.nodes[0];
    let t = target(node);
    let limits = ExecLimits::default();
    let runs = (0..40).map(|i| {
        let pool = &pool;
        let t = &t;
        async move {
            pool.exec(t, &argv(&["echo", &i.to_string()]), None, limits)
                .await
        }
    });
    for (i, result) in futures::future::join_all(runs)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(result.expect("exec").stdout_text().trim(), i.to_string());
    }
    // Count this process's TCP connections to the node's sshd.
    let ours = || {
        let out = Command::new("ss")
            .args(["-Htnp", "state", "established", "dst"])
            .arg(format!("{}:22", node.address))
            .output()
            .expect("run ss");
        let pid = format!("pid={},", std::process::id());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&pid))
            .count()
    };
    assert_eq!(ours(), 1, "40 commands must share one connection");

    // The node drops the connection (sshd restarted, a NAT timeout...).
    let killed = docker(&[
        "exec",
        &node.container,
        "pkill",
        "-f",
        &format!("sshd: {}", common::NODE_USER),
    ]);
    assert!(killed.status.success());
    std::thread::sleep(Duration::from_millis(300));
    let out = pool
        .exec(&t, &argv(&["echo", "again"]), None, limits)
        .await
        .expect("a dead connection is replaced");
    assert_eq!(out.stdout_text().trim(), "again");
    assert_eq!(ours(), 1);
}
