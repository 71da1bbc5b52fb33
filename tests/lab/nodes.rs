//! Lab nodes made as production nodes are (issue 26): systemd as PID 1,
//! the nodes' EC2 user data run on each new one, a login user `prism` in
//! the docker group, no root login; and a step that needs root done as
//! that user, through Docker.

use crate::common;

use std::process::Command;

use common::prism_ssh::{known_hosts_pool, limits, target};
use common::{Lab, NODE_USER, OwnNodes, text};
use prism::store::{Store, Writer};

fn exec(container: &str, args: &[&str]) -> std::process::Output {
    Command::new("docker")
        .arg("exec")
        .arg(container)
        .args(args)
        .output()
        .expect("docker exec")
}

/// The user data as the lab runs it: the lab's public key filled in.
fn user_data(lab: &Lab) -> String {
    let key = std::fs::read_to_string(lab.dir.join("id_ed25519.pub")).expect("the lab's key");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(root.join("contrib/aws/user-data.sh"))
        .expect("the user data")
        .replace("REPLACE-WITH-THE-OPERATOR-PUBLIC-KEY", key.trim())
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn a_fresh_node_is_made_by_the_user_data_and_root_cannot_log_in() {
    let lab = Lab::load();
    let mut own = OwnNodes::new(format!("nodes{}", std::process::id()));
    let node = own.add().expect("lab/lab add --fleet");
    let c = node.container.as_str();

    // systemd runs the machine.
    let init = exec(c, &["cat", "/proc/1/comm"]);
    assert_eq!(text(&init.stdout).trim(), "systemd");
    let docker = exec(
        c,
        &["systemctl", "is-active", "docker.service", "ssh.service"],
    );
    assert_eq!(
        text(&docker.stdout).trim(),
        "active\nactive",
        "{}",
        text(&docker.stderr)
    );

    // The user data ran: `prism` is in the docker group, with the lab's key.
    let groups = exec(c, &["id", "-nG", NODE_USER]);
    assert!(
        text(&groups.stdout)
            .split_whitespace()
            .any(|g| g == "docker"),
        "{}",
        text(&groups.stdout)
    );
    let keys = exec(
        c,
        &["cat", &format!("/home/{NODE_USER}/.ssh/authorized_keys")],
    );
    let lab_key = std::fs::read_to_string(lab.dir.join("id_ed25519.pub")).expect("the key");
    assert_eq!(text(&keys.stdout).trim(), lab_key.trim());

    // It logs in with the lab's key and may use Docker; root may not log in.
    let out = lab.ssh_with(
        &lab.identity(),
        &node.address,
        "docker info --format '{{.ServerVersion}}'",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let root = lab.ssh_as("root", &node.address, "true");
    assert!(!root.status.success(), "root logged in");
    assert!(
        text(&root.stderr).contains("Permission denied"),
        "{}",
        text(&root.stderr)
    );

    // Run again, as cloud-init may: it changes nothing and fetches nothing.
    let again = Command::new("docker")
        .args(["exec", "-i", c, "bash", "-s"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(user_data(&lab).as_bytes())?;
            child.wait_with_output()
        })
        .expect("run the user data again");
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains("Docker and the mesh's tools are installed already"),
        "{}",
        text(&again.stdout)
    );
    let keys_after = exec(
        c,
        &["cat", &format!("/home/{NODE_USER}/.ssh/authorized_keys")],
    );
    assert_eq!(keys_after.stdout, keys.stdout, "one key, as before");
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn a_step_that_needs_root_runs_as_the_login_user_through_docker() {
    let lab = Lab::load();
    let mut own = OwnNodes::new(format!("root{}", std::process::id()));
    let node = own.add().expect("lab/lab add --fleet");
    let fleet = prism::config::Config::load(&lab.dir.join("fleet.toml")).expect("the lab's fleet");
    let helper = fleet.fleet.fleet.helper_image.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = Writer::start(Store::open(&dir.path().join("state.db")).expect("store"));
    let pool = known_hosts_pool(&lab);
    let t = target(&node);
    assert_eq!(t.user, NODE_USER);
    let mountpoint = "/mnt/prism-root-test";
    let mount = |what: &[&str]| -> Vec<String> { what.iter().map(|s| (*s).to_owned()).collect() };
    // The user itself cannot mount.
    let plain = pool
        .exec(
            &t,
            &mount(&["mount", "-t", "tmpfs", "none", "/mnt"]),
            None,
            limits(20),
        )
        .await
        .expect("ssh");
    assert!(!plain.success(), "{} may mount without root", t.user);

    let as_root = |argv: Vec<String>| {
        let (pool, journal, t, helper) = (&pool, &journal, &t, &helper);
        async move {
            prism::operator::run_as_root(pool, journal, t, "roottest", helper, &argv, limits(60))
                .await
        }
    };
    as_root(mount(&["mkdir", "-p", mountpoint]))
        .await
        .expect("mkdir as root");
    as_root(mount(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "size=1m",
        "prism-root-test",
        mountpoint,
    ]))
    .await
    .expect("mount as root");
    // The host's own mount table has it.
    let mounts = text(&exec(&node.container, &["cat", "/proc/mounts"]).stdout);
    assert!(
        mounts
            .lines()
            .any(|l| l.starts_with(&format!("prism-root-test {mountpoint} tmpfs"))),
        "{mounts}"
    );
    as_root(mount(&["umount", mountpoint]))
        .await
        .expect("umount as root");
    let mounts = text(&exec(&node.container, &["cat", "/proc/mounts"]).stdout);
    assert!(!mounts.contains(mountpoint), "{mounts}");
    // Nothing of it is left on the node, and each command was recorded whole.
    let left = exec(
        &node.container,
        &[
            "docker",
            "ps",
            "-aq",
            "--filter",
            "label=prism.host-command",
        ],
    );
    assert_eq!(text(&left.stdout).trim(), "", "a helper container was left");
    let events = journal
        .call("read events", |s| s.events(10))
        .await
        .expect("events");
    let commands: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == "node.root_command")
        .map(|e| e.message.as_str())
        .collect();
    assert_eq!(commands.len(), 3, "{commands:?}");
    assert!(
        commands.iter().any(
            |m| m.contains("as prism: docker run --rm --cap-add SYS_ADMIN")
                && m.ends_with(&format!(
                    "mount -t tmpfs -o 'size=1m' prism-root-test {mountpoint}"
                ))
        ),
        "{commands:?}"
    );
}
