//! Prism's SSH executor against the lab's real sshd and dockerd: auth,
//! host key checks, exact arguments, exit codes, big output, stdin.
//! Nothing here changes the lab.

use crate::common;

use std::process::{Child, Command};
use std::time::Duration;

use common::Lab;
use common::prism_ssh::{
    argv, known_hosts_pool, lab_key, limits, pin_pool, run, run_everywhere, settings, target,
};
use prism::ssh::{Credentials, ExecLimits, HostKeys, Pool, SshError};

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn every_node_runs_docker_with_key_auth_and_known_hosts() {
    let lab = Lab::load();
    let pool = known_hosts_pool(&lab);
    let targets: Vec<_> = lab.nodes.iter().map(target).collect();
    let results = run_everywhere(
        &pool,
        &targets,
        &["docker", "version", "--format", "{{.Server.Version}}"],
        limits(20),
    )
    .await;
    assert_eq!(results.len(), targets.len());
    for (t, result) in results {
        let out = result.unwrap_or_else(|e| panic!("{}: {e}", t.address));
        assert!(out.success(), "{}: {}", t.address, out.stderr_text());
        assert!(
            out.stdout_text().trim().starts_with("20."),
            "{}",
            out.stdout_text()
        );
    }
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn a_host_missing_from_known_hosts_is_refused() {
    let lab = Lab::load();
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("known_hosts");
    std::fs::write(&empty, "").expect("write");
    let pool = Pool::new(settings(lab_key(&lab), HostKeys::KnownHosts(empty)), None);
    let err = pool
        .exec(&target(&lab.nodes[0]), &argv(&["true"]), None, limits(20))
        .await
        .expect_err("an unknown host key must be refused");
    assert!(matches!(err, SshError::HostKeyUnknown { .. }), "{err:?}");
    assert!(err.to_string().contains("SHA256:"), "{err}");
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn pin_mode_pins_the_first_key_and_trusts_it_after() {
    let lab = Lab::load();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("state.db");
    let node = target(&lab.nodes[0]);
    let fingerprint = {
        let (pool, store) = pin_pool(&lab, &file);
        let session = pool.session(&node).await.expect("first connection");
        let id = node.id.clone();
        let pinned = store
            .call("read the pin", move |s| s.pinned_key(&id))
            .await
            .expect("read")
            .expect("a key is pinned");
        assert_eq!(pinned.fingerprint, session.host_key_fingerprint());
        let events = store
            .call("read events", |s| s.events(10))
            .await
            .expect("events");
        assert!(events.iter().any(|e| e.kind == "node.host_key_pinned"));
        pinned.fingerprint
    };
    // A new process (a new pool) on the same state file trusts the pin.
    let (pool, _store) = pin_pool(&lab, &file);
    let session = pool.session(&node).await.expect("second connection");
    assert_eq!(session.host_key_fingerprint(), fingerprint);
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn a_key_the_node_does_not_know_is_refused() {
    let lab = Lab::load();
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("stranger");
    keygen(&key, "");
    let credentials = Credentials::key_file(&key).expect("loads");
    let pool = Pool::new(
        settings(
            credentials,
            HostKeys::KnownHosts(lab.dir.join("known_hosts")),
        ),
        None,
    );
    let err = pool
        .exec(&target(&lab.nodes[0]), &argv(&["true"]), None, limits(20))
        .await
        .expect_err("must be refused");
    assert!(matches!(err, SshError::AuthRefused { .. }), "{err:?}");
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn a_passphrase_protected_key_points_to_the_agent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("locked");
    keygen(&key, "secret passphrase");
    let err = Credentials::key_file(&key).expect_err("cannot be used unattended");
    let text = err.to_string();
    assert!(
        text.contains("passphrase") && text.contains("ssh-agent"),
        "{text}"
    );
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn the_ssh_agent_can_log_in() {
    let lab = Lab::load();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("agent.sock");
    let agent = AgentGuard(
        Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start ssh-agent"),
    );
    for _ in 0..50 {
        if socket.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let added = Command::new("ssh-add")
        .arg("-q")
        .arg(lab.identity())
        .env("SSH_AUTH_SOCK", &socket)
        .status()
        .expect("run ssh-add");
    assert!(added.success());
    let credentials = Credentials::Agent { socket };
    let pool = Pool::new(
        settings(
            credentials,
            HostKeys::KnownHosts(lab.dir.join("known_hosts")),
        ),
        None,
    );
    let out = pool
        .exec(
            &target(&lab.nodes[0]),
            &argv(&["id", "-un"]),
            None,
            limits(20),
        )
        .await
        .expect("agent login");
    assert_eq!(out.stdout_text().trim(), common::NODE_USER);
    drop(agent);
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn arguments_arrive_byte_for_byte() {
    let lab = Lab::load();
    let pool = known_hosts_pool(&lab);
    let node = target(&lab.nodes[0]);
    let nasty = [
        "plain",
        "it's",
        "\"double\" quotes",
        "$(touch /tmp/prism-pwned)",
        "`touch /tmp/prism-pwned`",
        "; touch /tmp/prism-pwned",
        "a && b || c | d > e < f",
        "line one\nline two\n",
        "tab\there",
        "unicode ✓ 日本語 🚀",
        "*",
        "~root",
        "$HOME ${PATH}",
        "back\\slash",
        "-n",
        "",
        " leading and trailing ",
        "!history",
        "#comment",
    ];
    for arg in nasty {
        let out = run(&pool, &node, &["printf", "%s", arg]).await;
        assert!(out.success(), "{arg:?}: {}", out.stderr_text());
        assert_eq!(out.stdout, arg.as_bytes(), "{arg:?} came back changed");
    }
    let out = run(&pool, &node, &["test", "-e", "/tmp/prism-pwned"]).await;
    assert_eq!(
        out.status,
        Some(1),
        "an argument was run by the remote shell"
    );
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn exit_codes_stderr_and_stdin() {
    let lab = Lab::load();
    let pool = known_hosts_pool(&lab);
    let node = target(&lab.nodes[0]);
    let out = run(
        &pool,
        &node,
        &["sh", "-c", "echo out; echo err >&2; exit 3"],
    )
    .await;
    assert_eq!(out.status, Some(3));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");
    assert!(!out.success());

    let secret = b"s3cr3t value, never in argv\n";
    let out = pool
        .exec(&node, &argv(&["cat"]), Some(secret), limits(20))
        .await
        .expect("exec with stdin");
    assert_eq!(out.stdout, secret);
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn a_mebibyte_of_output_arrives_whole_and_the_cap_holds() {
    let lab = Lab::load();
    let pool = known_hosts_pool(&lab);
    let node = target(&lab.nodes[0]);
    let out = run(&pool, &node, &["head", "-c", "1048576", "/dev/urandom"]).await;
    assert!(out.success());
    assert_eq!(out.stdout.len(), 1 << 20);
    assert!(!out.truncated);

    let capped = ExecLimits {
        max_output: 1000,
        ..limits(20)
    };
    let out = pool
        .exec(
            &node,
            &argv(&["head", "-c", "100000", "/dev/zero"]),
            None,
            capped,
        )
        .await
        .expect("exec");
    assert_eq!(out.stdout.len(), 1000);
    assert!(out.truncated);
}

fn keygen(path: &std::path::Path, passphrase: &str) {
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-C", "test", "-N", passphrase, "-f"])
        .arg(path)
        .status()
        .expect("run ssh-keygen");
    assert!(made.success());
}

struct AgentGuard(Child);

impl Drop for AgentGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
