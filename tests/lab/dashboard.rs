//! The dashboard end to end, as a person sees it: `prism` in a tmux pane
//! of 120×40 on nodes of this test's own fleet. It shows the nodes and
//! containers; a node is preempted (`lab/lab preempt`) and the screen shows
//! it gone and its pods running on the other node; `q` quits and the
//! terminal is restored. In-process, the dashboard also serves the
//! bundled proxy, and its header counts the requests. Needs the lab
//! (`lab/lab up`) and tmux.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use common::{Lab, OwnNodes, ProxyPorts, Trust, free_port, retry};

/// The test's tmux server (on its own socket), killed however it ends.
struct Cleanup {
    socket: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = tmux(&self.socket, &["kill-server"]);
    }
}

fn tmux(socket: &str, args: &[&str]) -> Result<String> {
    let out = Command::new("tmux")
        .args(["-L", socket])
        .args(args)
        .output()
        .context("cannot run tmux (lab/lab install installs it)")?;
    if !out.status.success() {
        bail!(
            "tmux {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A detached tmux session named `dash`, `width`×`height`, running `run`.
fn start_session(socket: &str, run: &str, width: u16, height: u16) -> Result<()> {
    let (width, height) = (width.to_string(), height.to_string());
    tmux(
        socket,
        &[
            "new-session",
            "-d",
            "-s",
            "dash",
            "-x",
            &width,
            "-y",
            &height,
            run,
        ],
    )?;
    Ok(())
}

/// The pane's text now.
fn screen(socket: &str) -> Result<String> {
    tmux(socket, &["capture-pane", "-p", "-t", "dash"])
}

/// Waits until `ok` holds for the screen; the last screen in the error.
fn wait_for(socket: &str, what: &str, secs: u64, ok: impl Fn(&str) -> bool) -> Result<String> {
    retry(Duration::from_secs(secs), || {
        let s = screen(socket)?;
        ensure!(ok(&s), "waiting for {what}; the screen:\n{s}");
        Ok(s)
    })
}

fn keys(socket: &str, keys: &[&str]) -> Result<()> {
    for k in keys {
        tmux(socket, &["send-keys", "-t", "dash", k])?;
        std::thread::sleep(Duration::from_millis(150));
    }
    Ok(())
}

/// The rows of `pod` on the containers screen, as words.
fn pod_rows(screen: &str, pod: &str) -> Vec<Vec<String>> {
    screen
        .lines()
        .map(|l| l.trim_matches(|c| c == '│' || c == ' '))
        .filter(|l| l.starts_with(&format!("{pod} ")))
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// `pod` has a running container on `node` (any node if None).
fn running(screen: &str, pod: &str, node: Option<&str>) -> bool {
    pod_rows(screen, pod).iter().any(|r| {
        r.get(3).is_some_and(|s| s == "running")
            && node.is_none_or(|n| r.get(1).is_some_and(|x| x == n))
    })
}

const PODS: [&str; 4] = ["dash/web/0", "dash/web/1", "dash/worker/0", "dash/worker/1"];

/// `GET path` with `host` from `127.0.0.1:port`: status and body.
fn get(port: u16, host: &str, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no HTTP status line: {reply:?}"))?;
    Ok((status, reply))
}

/// The requests per second the header shows, if it shows a rate.
fn header_rate(screen: &str) -> Option<f64> {
    let line = screen.lines().find(|l| l.contains(" req/s"))?;
    let (before, _) = line.split_once(" req/s")?;
    before.rsplit(' ').next()?.parse().ok()
}

/// The pane's terminal is restored: out of the alternate screen, cursor
/// shown.
fn ensure_restored(socket: &str) -> Result<()> {
    let flags = tmux(
        socket,
        &[
            "display-message",
            "-p",
            "-t",
            "dash",
            "#{alternate_on} #{cursor_flag}",
        ],
    )?;
    ensure!(flags.trim() == "0 1", "terminal not restored: {flags}");
    Ok(())
}

/// This test's fleet on its own nodes, its proxy on `ports`, one app of
/// two pods behind a host name.
fn fleet_toml(lab: &Lab, dir: &Path, fleet: &str, ports: &ProxyPorts) -> std::path::PathBuf {
    let apps = format!(
        r#"
[apps.dash]
instances = 2
[apps.dash.services.web]
image = "{image}"
port = 8080
hosts = ["dash.lab.test"]
memory = "64M"
health = {{ http = "/up", interval = "2s", timeout = "1s" }}
[apps.dash.services.worker]
image = "{image}"
command = ["sh", "-c", "while true; do sleep 60; done"]
memory = "32M"
"#,
        image = lab.testapp_image,
    );
    lab.own_nodes_fleet(dir, fleet, Trust::KnownHosts, ports, &apps)
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn the_dashboard_follows_a_preemption_on_screen() -> Result<()> {
    let lab = Lab::load();
    let fleet = format!("tui{}", std::process::id());
    // Dropped in reverse: the tmux server goes before the nodes.
    let mut nodes = OwnNodes::new(fleet.clone());
    let cleanup = Cleanup {
        socket: format!("prism-dash-{}", std::process::id()),
    };
    let [a, b] = nodes.add_many::<2>()?.map(|n| n.name);
    let dir = tempfile::tempdir()?;
    let ports = ProxyPorts::free();
    let config = fleet_toml(&lab, dir.path(), &fleet, &ports);
    let prism = env!("CARGO_BIN_EXE_prism");
    // The shell reports how prism ended, then keeps the pane open to read.
    let run = format!(
        "env -u PRISM_CONFIG AWS_ACCESS_KEY_ID=lab AWS_SECRET_ACCESS_KEY=lab {prism} -c {}; \
         echo PRISM-EXITED $?; sleep 120",
        config.display()
    );
    start_session(&cleanup.socket, &run, 120, 40)?;

    // Both nodes, and both pods with their two services running.
    let s = wait_for(&cleanup.socket, "four running containers", 90, |s| {
        PODS.iter().all(|p| running(s, p, None))
    })?;
    ensure!(s.contains("fleet ") && s.contains("operator: here"), "{s}");
    let web0 = pod_rows(&s, "dash/web/0");
    let victim = web0
        .first()
        .and_then(|r| r.get(1))
        .context("no dash/web/0 row")?
        .clone();
    ensure!(
        victim == a || victim == b,
        "web/0 on {victim}, not ours:\n{s}"
    );
    let survivor = if victim == a { b.clone() } else { a.clone() };

    keys(&cleanup.socket, &[":", "n", "o", "d", "e", "s", "Enter"])?;
    wait_for(&cleanup.socket, "both nodes ready", 30, |s| {
        s.contains("nodes 2/2 ready")
            && [&a, &b].iter().all(|n| {
                s.lines()
                    .any(|l| l.contains(n.as_str()) && l.contains("ready"))
            })
    })?;

    nodes.preempt(&victim)?;
    wait_for(&cleanup.socket, "the preempted node shown gone", 60, |s| {
        s.lines()
            .any(|l| l.contains(victim.as_str()) && (l.contains("gone") || l.contains("lost")))
    })?;

    // Back to the pods: web/0 comes back on the surviving node.
    keys(&cleanup.socket, &[":", "p", "o", "d", "s", "Enter"])?;
    let s = wait_for(
        &cleanup.socket,
        "dash/web/0 running on the survivor",
        90,
        |s| PODS.iter().all(|p| running(s, p, Some(&survivor))),
    )?;
    ensure!(s.contains("pods 2/2 running"), "{s}");

    keys(&cleanup.socket, &["q"])?;
    let s = wait_for(&cleanup.socket, "prism to exit", 60, |s| {
        s.contains("PRISM-EXITED")
    })?;
    ensure!(s.contains("PRISM-EXITED 0"), "prism did not exit 0:\n{s}");
    ensure_restored(&cleanup.socket)?;
    ensure!(
        !s.contains("nodes 2/2 ready"),
        "the dashboard is still on screen:\n{s}"
    );
    drop(cleanup);
    Ok(())
}

/// A fleet of one static node that does not answer, with the lab's key:
/// the dashboard runs, no node is needed.
fn static_fleet(dir: &Path, name: &str, ports: &ProxyPorts) -> Result<std::path::PathBuf> {
    let config = dir.join("fleet.toml");
    let lab = common::lab_dir();
    std::fs::write(
        &config,
        format!(
            r#"
[fleet]
name = {name:?}
state = "state.db"
[ssh]
identity = {identity:?}
host_keys = "known_hosts"
known_hosts = {known:?}
[discovery]
provider = "static"
nodes = [{{ name = "n1", address = "127.0.0.1", port = 1 }}]
{proxy}
[apps.blog.services.web]
image = "blog:1"
"#,
            identity = lab.join("id_ed25519").display().to_string(),
            known = lab.join("known_hosts").display().to_string(),
            proxy = ports.section(),
        ),
    )?;
    Ok(config)
}

/// SIGTERM (systemd, `kill`) ends the dashboard cleanly: exit 0, the
/// terminal restored, the apply lock released. No node needed: a static
/// fleet whose one node does not answer.
#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn sigterm_restores_the_terminal_and_releases_the_lock() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = static_fleet(dir.path(), "sigterm", &ProxyPorts::free())?;
    let cleanup = Cleanup {
        socket: format!("prism-dash-term-{}", std::process::id()),
    };
    let pid_file = dir.path().join("pid");
    let run = format!(
        "sh -c 'echo $$ > {pid}; exec {prism} -c {config}'; echo PRISM-EXITED $?; sleep 120",
        pid = pid_file.display(),
        prism = env!("CARGO_BIN_EXE_prism"),
        config = config.display()
    );
    start_session(&cleanup.socket, &run, 80, 24)?;
    wait_for(&cleanup.socket, "the dashboard", 30, |s| {
        s.contains("fleet sigterm") && s.contains("operator: here")
    })?;
    let pid = std::fs::read_to_string(&pid_file)?.trim().to_owned();
    let kill = Command::new("kill").args(["-TERM", &pid]).status()?;
    ensure!(kill.success(), "kill -TERM {pid}");
    let s = wait_for(&cleanup.socket, "prism to exit", 60, |s| {
        s.contains("PRISM-EXITED")
    })?;
    ensure!(s.contains("PRISM-EXITED 0"), "{s}");
    ensure_restored(&cleanup.socket)?;
    let store = prism::store::Store::open(&dir.path().join("state.db"))?;
    ensure!(
        store.lock_info()?.is_none(),
        "the apply lock is still held: {:?}",
        store.lock_info()?
    );
    Ok(())
}

/// `q`, and the dashboard exits 0.
fn quit(socket: &str) -> Result<()> {
    keys(socket, &["q"])?;
    let s = wait_for(socket, "prism to exit", 30, |s| s.contains("PRISM-EXITED"))?;
    ensure!(s.contains("PRISM-EXITED 0"), "{s}");
    Ok(())
}

/// On the nodes screen, drains the static node n1 (asked, confirmed) and
/// waits for the daemon's answer.
fn drain_n1(socket: &str) -> Result<()> {
    keys(socket, &[":", "n", "o", "d", "e", "s", "Enter"])?;
    wait_for(socket, "the static node", 30, |s| {
        s.lines().any(|l| l.contains("│n1 "))
    })?;
    keys(socket, &["D"])?;
    wait_for(socket, "the confirm dialog", 10, |s| s.contains("Drain n1"))?;
    keys(socket, &["y"])?;
    wait_for(socket, "the daemon's answer to drain", 30, |s| {
        s.contains("draining n1")
    })?;
    Ok(())
}

/// Stops the daemon this test started, however the test ends.
struct Daemon(std::process::Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// With a daemon applying for the same state file, the dashboard attaches
/// instead of running a second applier, and `r` reaches the daemon
/// through the store's request queue.
#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn the_dashboard_attaches_to_a_running_daemon() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ports = ProxyPorts::free();
    let config = static_fleet(dir.path(), "attach", &ports)?;
    let state = dir.path().join("state.db");
    let daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_prism"))
            .args(["-c", &config.display().to_string(), "daemon"])
            .env_remove("PRISM_CONFIG")
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    retry(Duration::from_secs(30), || {
        let holder = prism::store::Store::open_existing(&state)?
            .map(|s| s.lock_info())
            .transpose()?
            .flatten();
        ensure!(
            holder.as_ref().is_some_and(|h| h.role == "daemon"),
            "no daemon lock yet: {holder:?}"
        );
        Ok(())
    })?;
    let cleanup = Cleanup {
        socket: format!("prism-dash-attach-{}", std::process::id()),
    };
    let run = format!(
        "{} -c {}; echo PRISM-EXITED $?; sleep 120",
        env!("CARGO_BIN_EXE_prism"),
        config.display()
    );
    start_session(&cleanup.socket, &run, 80, 24)?;
    let pid = daemon.0.id();
    wait_for(&cleanup.socket, "the dashboard attached", 30, |s| {
        s.contains(&format!("operator: daemon pid {pid}"))
    })?;
    // The daemon's proxy figures reach the header through the store:
    // requests for a host no service has (404) count too.
    for _ in 0..20 {
        let (status, reply) = get(ports.listen, "nobody.test", "/")?;
        ensure!(status == 404, "{reply}");
    }
    wait_for(&cleanup.socket, "the daemon's proxy rate", 30, |s| {
        header_rate(s).is_some_and(|r| r > 0.0)
    })?;
    keys(&cleanup.socket, &["r"])?;
    wait_for(&cleanup.socket, "the daemon's answer", 30, |s| {
        s.contains("reconcile started")
    })?;
    // Drain is asked, confirmed, and taken by the daemon (the node, which
    // answers no probe, then stays lost rather than draining).
    drain_n1(&cleanup.socket)?;
    let store = prism::store::Store::open(&state)?;
    let requests = store.requests(10)?;
    use prism::store::{RequestKind, RequestState};
    let kinds: Vec<_> = requests.iter().map(|r| (r.kind, r.state)).collect();
    ensure!(
        kinds
            == [
                (RequestKind::Drain, RequestState::Done),
                (RequestKind::Reconcile, RequestState::Done)
            ]
            && requests.iter().all(|r| r.by.starts_with("dashboard")),
        "{requests:?}"
    );
    // The daemon still holds the lock: the dashboard never took it.
    ensure!(
        store.lock_info()?.is_some_and(|l| l.pid == pid),
        "{:?}",
        store.lock_info()?
    );
    quit(&cleanup.socket)?;
    drop(daemon);
    Ok(())
}

/// `prism --remote URL` on another machine (here: another folder, with no
/// fleet.toml and no SSH key) shows the daemon's fleet through its API,
/// and a drain asked there reaches the daemon as a request under the
/// token's name.
#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn the_remote_dashboard_shows_the_fleet_and_drains_a_node_through_the_api() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ports = ProxyPorts::free();
    let config = static_fleet(dir.path(), "remote", &ports)?;
    let api = free_port();
    let mut text = std::fs::read_to_string(&config)?;
    text.push_str(&format!("[api]\nlisten = \"127.0.0.1:{api}\"\n"));
    std::fs::write(&config, text)?;
    let state = dir.path().join("state.db");
    let made = Command::new(env!("CARGO_BIN_EXE_prism"))
        .args([
            "-c",
            &config.display().to_string(),
            "token",
            "create",
            "laptop",
        ])
        .args(["--scope", "admin"])
        .env_remove("PRISM_CONFIG")
        .output()?;
    ensure!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &made.stdout)?;
    let daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_prism"))
            .args(["-c", &config.display().to_string(), "daemon"])
            .env_remove("PRISM_CONFIG")
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    let elsewhere = tempfile::tempdir()?;
    let cleanup = Cleanup {
        socket: format!("prism-dash-remote-{}", std::process::id()),
    };
    let url = format!("http://127.0.0.1:{api}");
    let run = format!(
        "cd {}; PRISM_TOKEN=$(cat {}) {} --remote {url}; echo PRISM-EXITED $?; sleep 120",
        elsewhere.path().display(),
        token_file.display(),
        env!("CARGO_BIN_EXE_prism"),
    );
    // The API answers once the daemon has started.
    retry(Duration::from_secs(30), || {
        TcpStream::connect(("127.0.0.1", api))?;
        Ok(())
    })?;
    start_session(&cleanup.socket, &run, 100, 24)?;
    let pid = daemon.0.id();
    wait_for(&cleanup.socket, "the remote dashboard", 30, |s| {
        s.contains(&format!("operator: daemon pid {pid} via {url}"))
    })?;
    drain_n1(&cleanup.socket)?;
    let store = prism::store::Store::open(&state)?;
    let requests = store.requests(10)?;
    use prism::store::{RequestKind, RequestState};
    ensure!(
        requests.iter().any(|r| r.kind == RequestKind::Drain
            && r.state == RequestState::Done
            && r.by == "token laptop"),
        "{requests:?}"
    );
    quit(&cleanup.socket)?;
    drop(daemon);
    Ok(())
}

/// In-process, the dashboard serves the bundled proxy as the daemon does:
/// a request by Host reaches the lab app on this test's own node, the
/// admin listener counts it, and the header shows the requests per second.
#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn the_in_process_dashboard_serves_the_proxy_and_counts_its_requests() -> Result<()> {
    let lab = Lab::load();
    let fleet = format!("dashproxy{}", std::process::id());
    let mut nodes = OwnNodes::new(fleet.clone());
    let cleanup = Cleanup {
        socket: format!("prism-dash-proxy-{}", std::process::id()),
    };
    nodes.add()?;
    let dir = tempfile::tempdir()?;
    let ports = ProxyPorts::free();
    let config = fleet_toml(&lab, dir.path(), &fleet, &ports);
    // One pod is enough here.
    let text = std::fs::read_to_string(&config)?.replace("instances = 2", "instances = 1");
    std::fs::write(&config, text)?;
    let run = format!(
        "env -u PRISM_CONFIG AWS_ACCESS_KEY_ID=lab AWS_SECRET_ACCESS_KEY=lab {} -c {}; \
         echo PRISM-EXITED $?; sleep 120",
        env!("CARGO_BIN_EXE_prism"),
        config.display()
    );
    start_session(&cleanup.socket, &run, 120, 40)?;
    // Before any request: a proxy, and no traffic.
    wait_for(&cleanup.socket, "the proxy's figures", 60, |s| {
        header_rate(s) == Some(0.0)
    })?;
    // Routes follow the passes: the app answers once healthy.
    let (status, reply) = retry(Duration::from_secs(120), || {
        let (status, reply) = get(ports.listen, "dash.lab.test", "/")?;
        ensure!(status == 200, "{status}: {reply}");
        Ok((status, reply))
    })?;
    ensure!(
        status == 200 && reply.contains("dash.lab.test"),
        "the app did not answer for its host: {reply}"
    );
    // Steady traffic for a few seconds, while the header is read.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, port) = (stop.clone(), ports.listen);
        std::thread::spawn(move || {
            let mut ok = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if matches!(get(port, "dash.lab.test", "/"), Ok((200, _))) {
                    ok += 1;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            ok
        })
    };
    let seen = wait_for(&cleanup.socket, "a non-zero request rate", 30, |s| {
        header_rate(s).is_some_and(|r| r > 0.0) && s.contains("0.0% 5xx")
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let ok = load
        .join()
        .map_err(|_| anyhow::anyhow!("load thread panicked"))?;
    seen?;
    ensure!(ok > 0, "no request of the load succeeded");
    let (status, page) = get(ports.admin, "localhost", "/metrics")?;
    ensure!(
        status == 200
            && page
                .lines()
                .any(|l| l.starts_with("prism_proxy_requests_total{")
                    && l.contains("host=\"dash.lab.test\"")
                    && l.contains("code=\"200\"")),
        "{page}"
    );

    keys(&cleanup.socket, &["q"])?;
    let s = wait_for(&cleanup.socket, "prism to exit", 60, |s| {
        s.contains("PRISM-EXITED")
    })?;
    ensure!(s.contains("PRISM-EXITED 0"), "{s}");
    // The proxy stopped with the dashboard.
    ensure!(
        TcpStream::connect(("127.0.0.1", ports.listen)).is_err(),
        "the proxy still listens after the dashboard quit"
    );
    drop(cleanup);
    Ok(())
}

/// A proxy port in use is a set-up error (exit 2) that names the port,
/// printed on the restored terminal, with the apply lock left free.
#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn a_proxy_port_in_use_stops_the_dashboard_with_exit_2() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let taken = std::net::TcpListener::bind("127.0.0.1:0")?;
    let ports = ProxyPorts {
        listen: taken.local_addr()?.port(),
        admin: free_port(),
    };
    let config = static_fleet(dir.path(), "busy", &ports)?;
    let cleanup = Cleanup {
        socket: format!("prism-dash-busy-{}", std::process::id()),
    };
    let run = format!(
        "{} -c {}; echo PRISM-EXITED $?; sleep 120",
        env!("CARGO_BIN_EXE_prism"),
        config.display()
    );
    start_session(&cleanup.socket, &run, 120, 24)?;
    let s = wait_for(&cleanup.socket, "prism to exit", 30, |s| {
        s.contains("PRISM-EXITED")
    })?;
    ensure!(s.contains("PRISM-EXITED 2"), "{s}");
    ensure!(
        s.contains(&format!(
            "cannot listen on 127.0.0.1:{} (proxy)",
            ports.listen
        )) && s.contains("--no-proxy"),
        "{s}"
    );
    ensure_restored(&cleanup.socket)?;
    let store = prism::store::Store::open(&dir.path().join("state.db"))?;
    ensure!(store.lock_info()?.is_none(), "{:?}", store.lock_info()?);
    drop(taken);
    Ok(())
}
