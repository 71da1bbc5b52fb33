//! Docker's Engine API through the pooled SSH connection, against the
//! lab's real sshd and dockerd: it answers as the docker CLI does, one
//! streamlocal channel per node carries every request and goes with its
//! session, a restarted daemon gets a new connection, and a login user who
//! may not reach Docker is told why.

use crate::common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use common::prism_ssh::{known_hosts_pool, limits, run, settings, target};
use common::{Lab, Node, lab_cmd};
use prism::observe::api::{
    VERSION_PATH, inspect_container_path, list_containers_path, parse_container_inspect,
    parse_container_list, parse_version,
};
use prism::observe::{
    Condition, ContainerState, ProbeLimits, Probed, parse_container_ids, parse_inspect, probe,
};
use prism::ssh::{Credentials, DockerApiError, HostKeys, Pool, Target};
use tokio::sync::Mutex;

/// The tests count sshd's connections to the Docker socket, or stop
/// dockerd: one at a time (across each test's own runtime).
static SERIAL: Mutex<()> = Mutex::const_new(());

/// Runs `remote` as root on the node (its container; root cannot log in
/// over SSH), not through the pool under test; panics with what went
/// wrong.
fn on(_lab: &Lab, node: &Node, remote: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["exec", &node.container, "sh", "-c", remote])
        .output()
        .expect("docker exec");
    assert!(
        out.status.success(),
        "{remote} on {}: {}",
        node.name,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How many connections sshd processes hold to /var/run/docker.sock on
/// the node: client ends (`sshd`) whose peer is an end dockerd accepted on
/// that path, from `ss -xp`.
fn sshd_socket_connections(lab: &Lab, node: &Node) -> usize {
    let table = on(lab, node, "ss -Hxp");
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    // u_str ESTAB 0 0 <local> <inode> <peer> <peer inode> users:((…))
    let docker_ends: BTreeSet<&str> = rows
        .iter()
        // systemd's docker.socket listens at /run/docker.sock, which
        // /var/run/docker.sock reaches through /var/run -> /run.
        .filter(|r| r.len() >= 8 && matches!(r[4], "/var/run/docker.sock" | "/run/docker.sock"))
        .map(|r| r[5])
        .collect();
    rows.iter()
        .filter(|r| r.len() >= 9 && r[8].contains("\"sshd\"") && docker_ends.contains(r[7]))
        .count()
}

/// Waits until the count settles at `want` (sshd closes asynchronously),
/// sleeping on the runtime so the pool's own tasks can close channels.
async fn expect_connections(lab: &Lab, node: &Node, want: usize, what: &str) {
    let start = Instant::now();
    loop {
        let n = sshd_socket_connections(lab, node);
        if n == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: {n} connections after 10 s, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Removes containers when dropped, also when the test fails.
struct Containers<'a> {
    lab: &'a Lab,
    node: &'a Node,
    names: Vec<String>,
}

impl Drop for Containers<'_> {
    fn drop(&mut self) {
        let _ = self.lab.ssh(
            &self.node.address,
            &format!("docker rm -f {}", self.names.join(" ")),
        );
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

async fn get(pool: &Pool, t: &Target, path: &str) -> (u16, Vec<u8>) {
    let answer = pool
        .docker_get(t, path, limits(20))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (answer.status, answer.body.to_vec())
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn the_api_answers_as_the_docker_cli_does() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let node = &lab.nodes[0];
    let t = target(node);
    let pool = known_hosts_pool(&lab);
    // A fleet of this test's own, so no one else's containers show.
    let fleet = format!("apitest-{}", std::process::id());
    let labels = format!(
        "--label prism.fleet={fleet} --label prism.app=api --label prism.instance=0 \
         --label prism.spec=abc"
    );
    let names = vec![format!("{fleet}-web"), format!("{fleet}-cron")];
    let _cleanup = Containers {
        lab: &lab,
        node,
        names: names.clone(),
    };
    on(
        &lab,
        node,
        &format!(
            "docker run -d --init --name {} -p 127.0.0.1::8080 {labels} --label prism.service=web {img} \
             && docker create --name {} {labels} --label prism.service=cron {img} sh -c 'exit 3'",
            names[0],
            names[1],
            img = lab.testapp_image
        ),
    );

    // What the docker CLI says, run over the same pool.
    let ps = run(
        &pool,
        &t,
        &[
            "docker",
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label=prism.fleet={fleet}"),
        ],
    )
    .await;
    let mut cli_ids = parse_container_ids(&ps.stdout_text()).expect("docker ps ids");
    cli_ids.sort();
    assert_eq!(cli_ids.len(), 2, "{}", ps.stdout_text());
    let mut inspect: Vec<String> = ["docker", "container", "inspect", "--"]
        .map(String::from)
        .into();
    inspect.extend(cli_ids.iter().map(ToString::to_string));
    let inspect: Vec<&str> = inspect.iter().map(String::as_str).collect();
    let mut cli_states = parse_inspect(&run(&pool, &t, &inspect).await.stdout_text())
        .expect("docker inspect parses");
    cli_states.sort_by(|a, b| a.id.cmp(&b.id));
    let version = run(
        &pool,
        &t,
        &["docker", "version", "--format", "{{.Server.Version}}"],
    )
    .await
    .stdout_text()
    .trim()
    .to_owned();

    // What the API says.
    let (status, body) = get(&pool, &t, &list_containers_path(&fleet)).await;
    let mut api_ids = parse_container_list(status, &body).expect("list parses");
    api_ids.sort();
    assert_eq!(api_ids, cli_ids);
    let mut api_states: Vec<ContainerState> = Vec::new();
    for id in &api_ids {
        let (status, body) = get(&pool, &t, &inspect_container_path(id)).await;
        api_states.push(
            parse_container_inspect(status, &body)
                .expect("inspect parses")
                .expect("exists"),
        );
    }
    assert_eq!(api_states, cli_states);
    let answer = pool
        .docker_get_once(&t, VERSION_PATH, limits(20))
        .await
        .expect("version");
    assert_eq!(
        parse_version(answer.status, &answer.body).expect("version parses"),
        version
    );

    // The probe reads the same, through the API.
    let Probed::Ready {
        docker_version,
        mut containers,
        ..
    } = probe(&pool, &t, &fleet, ProbeLimits::default()).await
    else {
        panic!("{} is not ready", node.name);
    };
    containers.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(docker_version, version);
    assert_eq!(containers, cli_states);

    // A container removed after the list is gone, not an error.
    on(&lab, node, &format!("docker rm -f {}", names[1]));
    for id in &api_ids {
        let (status, body) = get(&pool, &t, &inspect_container_path(id)).await;
        let found = parse_container_inspect(status, &body).expect("inspect parses");
        let web = cli_states.iter().any(|c| &c.id == id && c.name == names[0]);
        assert_eq!(found.is_some(), web, "{id}: status {status}");
    }
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn one_channel_carries_every_request_and_goes_with_its_session() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let node = &lab.nodes[0];
    let t = target(node);
    let before = sshd_socket_connections(&lab, node);

    let pool = known_hosts_pool(&lab);
    for _ in 0..5 {
        let probed = probe(&pool, &t, "lab", ProbeLimits::default()).await;
        assert!(matches!(probed, Probed::Ready { .. }), "{probed:?}");
    }
    for _ in 0..50 {
        let (status, _) = get(&pool, &t, &list_containers_path("lab")).await;
        assert_eq!(status, 200);
    }
    assert_eq!(
        sshd_socket_connections(&lab, node),
        before + 1,
        "5 probes and 50 requests over one connection"
    );

    // A new session (the pool forgot the node) gets its own connection;
    // the old one closes with the old session.
    pool.forget(&t).await;
    let (status, _) = get(&pool, &t, "/_ping").await;
    assert_eq!(status, 200);
    expect_connections(&lab, node, before + 1, "after the session was replaced").await;

    drop(pool);
    expect_connections(&lab, node, before, "after the pool was dropped").await;
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn the_version_is_asked_once_per_connection() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let node = &lab.nodes[0];
    let t = target(node);
    let pool = known_hosts_pool(&lab);
    // The node's last process id: how many processes it has started.
    let last_pid = || async {
        let out = run(&pool, &t, &["cut", "-d", " ", "-f", "5", "/proc/loadavg"]).await;
        out.stdout_text()
            .trim()
            .parse::<i64>()
            .unwrap_or_else(|_| panic!("not a pid: {:?}", out.stdout_text()))
    };
    let version = |once: bool| {
        let pool = &pool;
        let t = &t;
        async move {
            let answer = if once {
                pool.docker_get_once(t, VERSION_PATH, limits(20)).await
            } else {
                pool.docker_get(t, VERSION_PATH, limits(20)).await
            };
            let answer = answer.expect("version");
            parse_version(answer.status, &answer.body).expect("parses")
        }
    };
    let first = version(true).await;
    // dockerd starts processes (runc, docker-init) to answer /version; a
    // remembered answer starts none. Other users of the node start
    // processes too, so the quiet count needs one quiet window in three.
    let mut quiet = Vec::new();
    for _ in 0..3 {
        let a = last_pid().await;
        for _ in 0..20 {
            assert_eq!(version(true).await, first);
        }
        let b = last_pid().await;
        quiet.push(b - a);
    }
    let a = last_pid().await;
    for _ in 0..5 {
        assert_eq!(version(false).await, first);
    }
    let asked = last_pid().await - a;
    let fewest = quiet.iter().copied().min().unwrap_or(i64::MAX);
    assert!(
        fewest < 10,
        "20 remembered answers: {quiet:?} processes started"
    );
    assert!(
        asked >= 10,
        "5 asked answers: only {asked} processes started"
    );
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn a_restarted_daemon_gets_a_new_connection() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    // Only the newest node image can stop and start its dockerd.
    let node = lab.nodes.last().expect("nodes");
    let t = target(node);
    let before = sshd_socket_connections(&lab, node);
    let pool = known_hosts_pool(&lab);
    let answer = pool
        .docker_get_once(&t, VERSION_PATH, limits(20))
        .await
        .expect("version");
    let version = parse_version(answer.status, &answer.body).expect("parses");

    lab_cmd(&["dockerd", &node.name, "stop"]).expect("stop dockerd");
    let restart = DockerStopped(node);
    let err = pool
        .docker_get(&t, &list_containers_path("lab"), limits(20))
        .await
        .expect_err("no daemon");
    assert!(
        matches!(err, DockerApiError::SocketRefused { .. }),
        "{err:?}"
    );
    let Probed::NoDocker { condition, .. } = probe(&pool, &t, "lab", ProbeLimits::default()).await
    else {
        panic!("not NoDocker");
    };
    assert_eq!(
        condition,
        // systemd keeps the socket's file when Docker stops: nothing
        // listens on it.
        Condition::DockerDown(
            "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker \
             daemon running?"
                .into()
        )
    );

    drop(restart);
    let (status, _) = get(&pool, &t, &list_containers_path("lab")).await;
    assert_eq!(status, 200);
    let Probed::Ready { docker_version, .. } =
        probe(&pool, &t, "lab", ProbeLimits::default()).await
    else {
        panic!("not ready after dockerd started");
    };
    assert_eq!(docker_version, version);
    expect_connections(&lab, node, before + 1, "after the restart").await;
}

/// A login user of this test's own on a node; removed when dropped.
struct User<'a> {
    lab: &'a Lab,
    node: &'a Node,
    name: String,
}

impl User<'_> {
    /// Replaces the user's authorized_keys with `line`.
    fn authorize(&self, line: &str) {
        let name = &self.name;
        on(
            self.lab,
            self.node,
            &format!(
                "printf '%s\\n' '{line}' > /home/{name}/.ssh/authorized_keys \
                 && chown {name}: /home/{name}/.ssh/authorized_keys \
                 && chmod 600 /home/{name}/.ssh/authorized_keys"
            ),
        );
    }
}

impl Drop for User<'_> {
    fn drop(&mut self) {
        let _ = self
            .lab
            .ssh(&self.node.address, &format!("userdel -f -r {}", self.name));
    }
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn a_user_who_may_not_reach_docker_is_told_why() {
    let _serial = SERIAL.lock().await;
    let lab = Lab::load();
    let node = lab.nodes.last().expect("nodes");
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("user_key");
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-C", "prism-test", "-N", "", "-f"])
        .arg(&key)
        .status()
        .expect("run ssh-keygen");
    assert!(made.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
    let public = public.trim();

    let user = User {
        lab: &lab,
        node,
        name: format!("prismapi{}", std::process::id()),
    };
    on(
        &lab,
        node,
        &format!(
            "useradd -m -s /bin/sh {name} && install -d -m 700 -o {name} -g {name} /home/{name}/.ssh",
            name = user.name
        ),
    );
    user.authorize(public);
    let t = Target {
        user: user.name.clone(),
        ..target(node)
    };
    let pool = || {
        Pool::new(
            settings(
                Credentials::key_file(&key).expect("the key loads"),
                HostKeys::KnownHosts(lab.dir.join("known_hosts")),
            ),
            None,
        )
    };
    let condition = |probed: Probed| match probed {
        Probed::NoDocker { condition, .. } => condition,
        other => panic!("not NoDocker: {other:?}"),
    };

    // Not in the docker group: sshd may not open the socket for it.
    let probed = probe(&pool(), &t, "lab", ProbeLimits::default()).await;
    assert_eq!(
        condition(probed),
        Condition::DockerDenied(format!(
            "permission denied on /var/run/docker.sock: user {} may not use Docker (make it a \
             member of the socket's group, usually `docker`)",
            user.name
        ))
    );

    // In the group, but its key forbids forwarding: the CLI answers, the
    // socket is refused, and that is what the condition says.
    on(&lab, node, &format!("usermod -aG docker {}", user.name));
    user.authorize(&format!("no-port-forwarding {public}"));
    let probed = probe(&pool(), &t, "lab", ProbeLimits::default()).await;
    let Condition::DockerDenied(detail) = condition(probed) else {
        panic!("not docker-denied");
    };
    assert!(
        detail.starts_with("sshd refuses to connect to /var/run/docker.sock while Docker 20.")
            && detail.contains("no-port-forwarding"),
        "{detail}"
    );

    // In the group, key unrestricted: the API works as for root.
    user.authorize(public);
    let probed = probe(&pool(), &t, "lab", ProbeLimits::default()).await;
    assert!(matches!(probed, Probed::Ready { .. }), "{probed:?}");
}
