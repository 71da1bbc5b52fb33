//! The operator's runtime under the faults that used to stop it (issue
//! 17): a pass longer than the lock's TTL, a hung dockerd beside a
//! preemption, a state file on a full filesystem, a fleet.toml cut short,
//! a DescribeInstances that answers with nothing, and a daemon killed in
//! the middle of a job. Each test runs its own fleet, mostly on nodes of
//! its own; the shared nodes are only read.

use crate::common;
use crate::lifecycle::{
    Daemon, containers_on, converged, fleet_toml, instance_id, own_nodes, serial,
};

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::{Lab, retry, text};

/// A web app routed by the proxy at `host`, with Prism's own check.
fn routed_app(lab: &Lab, name: &str, host: &str) -> String {
    format!(
        r#"
[apps.{name}]
[apps.{name}.services.web]
image = "{image}"
port = 8080
hosts = ["{host}"]
memory = "64M"
health = {{ http = "/up", interval = "1s", timeout = "1s", healthy_threshold = 1, unhealthy_threshold = 2 }}
"#,
        image = lab.testapp_image
    )
}

/// The `[proxy]` listen address in a fleet file.
fn proxy_addr(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("read fleet.toml");
    let line = text
        .lines()
        .find(|l| l.starts_with("listen = "))
        .expect("a proxy listen line");
    line.trim_start_matches("listen = ")
        .trim_matches('"')
        .to_owned()
}

/// GET `path` through the proxy for `host`: status and body.
fn via_proxy(addr: &str, host: &str, path: &str, timeout: Duration) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line")?;
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The pids listening on TCP `port` (from `ss`).
fn listeners(port: u16) -> Vec<u32> {
    let out = Command::new("ss")
        .args(["-Hltnp", &format!("sport = :{port}")])
        .output()
        .expect("run ss");
    let text = text(&out.stdout);
    let mut pids: Vec<u32> = text
        .split("pid=")
        .skip(1)
        .filter_map(|rest| rest.split(',').next()?.parse().ok())
        .collect();
    pids.sort();
    pids.dedup();
    pids
}

fn prism_in(file: &Path, args: &[&str]) -> std::process::Output {
    let path = file.to_str().expect("utf-8 path");
    let mut all = vec!["-c", path];
    all.extend_from_slice(args);
    common::prism(&all)
}

/// A slow request through the proxy, on a thread of its own.
fn slow_request(addr: &str, host: &str, ms: u64) -> std::thread::JoinHandle<Result<u16>> {
    let (addr, host) = (addr.to_owned(), host.to_owned());
    std::thread::spawn(move || {
        via_proxy(
            &addr,
            &host,
            &format!("/slow?ms={ms}"),
            Duration::from_millis(ms + 20_000),
        )
        .map(|(status, _)| status)
    })
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn a_pass_longer_than_the_lock_ttl_keeps_the_lock_and_the_port() {
    let _serial = serial();
    let lab = Lab::load();
    let mut own = own_nodes("ttl");
    let [_node] = own.add_many::<1>().expect("lab/lab add --fleet");
    let dir = tempfile::tempdir().expect("tempdir");
    // A TTL of 2 s, and a drain that waits for a 15 s request: the
    // removal it is part of takes many TTLs.
    let apps = routed_app(&lab, "web", "ttl.lab.test")
        .replace("memory = \"64M\"", "memory = \"64M\"\nenv = { V = \"1\" }");
    let file = fleet_toml(&lab, dir.path(), &own.fleet, None, &apps);
    let text0 = std::fs::read_to_string(&file).expect("read");
    let text0 = text0
        .replacen("[fleet]\n", "[fleet]\nlock_ttl = \"2s\"\n", 1)
        .replacen("[proxy]\n", "[proxy]\ndrain_timeout = \"30s\"\n", 1);
    std::fs::write(&file, &text0).expect("write");
    let addr = proxy_addr(&file);
    let port: u16 = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let mut daemon = Daemon::start(&file);
    retry(Duration::from_secs(90), || {
        let (status, _) = via_proxy(&addr, "ttl.lab.test", "/up", Duration::from_secs(2))?;
        ensure!(status == 200, "status {status}");
        Ok(())
    })
    .expect("the app serves through the proxy");
    let holder = daemon
        .store()
        .and_then(|s| Ok(s.lock_info()?))
        .expect("read the lock")
        .expect("the daemon holds the lock");

    // A request that lasts 15 s, then a spec change: the old container's
    // removal drains it first, in a worker of its own.
    let slow = slow_request(&addr, "ttl.lab.test", 15_000);
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&file, text0.replace("V = \"1\"", "V = \"2\"")).expect("edit");
    let started = Instant::now();
    let mut refused = 0;
    while started.elapsed() < Duration::from_secs(14) {
        let lock = daemon
            .store()
            .and_then(|s| Ok(s.lock_info()?))
            .expect("read the lock")
            .expect("still held");
        assert_eq!(
            (lock.pid, lock.generation),
            (holder.pid, holder.generation),
            "the lock changed hands"
        );
        let age = prism::store::now_ms() - lock.heartbeat_at;
        assert!(
            age < 2_000,
            "the heartbeat is {age} ms old, older than the TTL"
        );
        // Any other applier is refused, and never joins the port.
        for args in [
            &["reconcile", "--once"][..],
            &["daemon", "--interval", "1s"][..],
        ] {
            let out = prism_in(&file, args);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{args:?}: {}",
                text(&out.stderr)
            );
            assert!(
                text(&out.stderr).contains("held by daemon"),
                "{}",
                text(&out.stderr)
            );
            refused += 1;
        }
        assert_eq!(listeners(port), [daemon.pid()], "only the daemon listens");
        std::thread::sleep(Duration::from_millis(1_500));
    }
    assert!(refused >= 8);
    assert_eq!(slow.join().expect("thread").expect("slow request"), 200);
    // The drain ended with the request, then the old container went.
    let events = retry(Duration::from_secs(60), || {
        let events = daemon.events();
        ensure!(
            events
                .iter()
                .any(|e| e.kind == "apply.remove" && e.message.contains("spec changed")),
            "no removal yet"
        );
        Ok(events)
    })
    .expect("the old container is removed");
    assert!(
        !events.iter().any(|e| e.kind.contains("lock")),
        "{events:#?}"
    );
    daemon.stop();
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn a_hung_dockerd_delays_only_its_own_node_while_a_preempted_nodes_pods_move() {
    let _serial = serial();
    let lab = Lab::load();
    let mut own = own_nodes("hung");
    let nodes = own.add_many::<3>().expect("lab/lab add --fleet");
    let dir = tempfile::tempdir().expect("tempdir");
    // One pod per node: the app that hangs, and the one that moves.
    let apps = format!(
        "{}{}",
        routed_app(&lab, "slow", "slow.lab.test"),
        routed_app(&lab, "mover", "mover.lab.test")
    )
    .replace("memory = \"64M\"", "memory = \"400M\"");
    let file = fleet_toml(&lab, dir.path(), &own.fleet, None, &apps);
    let text0 = std::fs::read_to_string(&file).expect("read");
    let text0 = text0
        .replacen("node_memory = \"2G\"", "node_memory = \"700M\"", 1)
        .replacen("[fleet]\n", "[fleet]\nreserve_memory = \"64M\"\n", 1)
        .replacen("[proxy]\n", "[proxy]\ndrain_timeout = \"30s\"\n", 1);
    std::fs::write(&file, &text0).expect("write");
    let addr = proxy_addr(&file);
    let daemon = Daemon::start(&file);
    let placed = |app: &str| -> Result<String> {
        daemon
            .store()?
            .placements()?
            .into_iter()
            .find(|p| p.app == app)
            .map(|p| p.node_id)
            .context("not placed")
    };
    let (slow_on, mover_on) = retry(Duration::from_secs(90), || {
        ensure!(daemon.healthy()?.len() == 2, "not both healthy");
        Ok((placed("slow")?, placed("mover")?))
    })
    .expect("both apps run");
    assert_ne!(slow_on, mover_on, "one pod per node");
    let node_of = |id: &str| {
        nodes
            .iter()
            .find(|n| instance_id(n) == id)
            .cloned()
            .expect("an own node")
    };
    let (hung, preempted) = (node_of(&slow_on), node_of(&mover_on));

    // The slow app leaves fleet.toml while a 20 s request is in flight:
    // its removal drains first; dockerd on its node is stopped meanwhile,
    // so the `docker stop` after the drain hangs.
    let slow = slow_request(&addr, "slow.lab.test", 20_000);
    std::thread::sleep(Duration::from_millis(500));
    let cut = text0.find("[apps.slow]").expect("the slow app");
    let rest = &text0[cut..];
    let end = rest[1..].find("[apps.").map_or(rest.len(), |i| i + 1);
    std::fs::write(&file, format!("{}{}", &text0[..cut], &rest[end..])).expect("edit");
    retry(Duration::from_secs(20), || {
        ensure!(
            daemon.events().iter().any(|e| e.kind == "config.reload"),
            "not reloaded yet"
        );
        Ok(())
    })
    .expect("the edit is taken");
    std::thread::sleep(Duration::from_secs(3));
    let pause = |signal: &str| {
        let out = Command::new("docker")
            .args(["exec", &hung.container, "pkill", signal, "-x", "dockerd"])
            .output()
            .expect("docker exec pkill");
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    pause("-STOP");
    struct Resume<F: FnMut()>(F);
    impl<F: FnMut()> Drop for Resume<F> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    let _resume = Resume(|| pause("-CONT"));

    // Now the other node is taken away.
    let killed = Instant::now();
    own.preempt(&preempted.name).expect("preempt");
    let spare = nodes
        .iter()
        .find(|n| n.name != hung.name && n.name != preempted.name)
        .expect("a spare node");
    retry(Duration::from_secs(30), || {
        let healthy = daemon.healthy()?;
        ensure!(
            healthy
                .iter()
                .any(|r| r.app == "mover" && r.node_id == instance_id(spare)),
            "mover not healthy on the spare node: {healthy:?}"
        );
        Ok(())
    })
    .expect("the preempted node's pod runs elsewhere while the hung node's worker waits");
    let took = killed.elapsed();
    // A pass is a second apart and probes time out in 2 s: two passes
    // and the pod's start, far from the hung stop's 40 s.
    assert!(took < Duration::from_secs(25), "took {took:?}");
    // The hung node's removal is still at it: nothing recorded yet.
    assert!(
        !daemon
            .events()
            .iter()
            .any(|e| e.kind == "apply.remove" && e.message.contains("slow/0")),
        "the hung node's removal cannot have finished"
    );
    drop(_resume);
    let _ = slow.join();
    let _ = containers_on(&lab, spare, &own.fleet);
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn a_full_state_filesystem_stops_no_healing_and_status_says_writes_fail() {
    let _serial = serial();
    let lab = Lab::load();
    let mut own = own_nodes("full");
    let nodes = own.add_many::<2>().expect("lab/lab add --fleet");
    let dir = tempfile::tempdir().expect("tempdir");
    // The state file alone on a small filesystem.
    let small = dir.path().join("small");
    std::fs::create_dir(&small).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&small)
        .status()
        .expect("mount");
    assert!(mounted.success(), "mount a tmpfs (the tests run as root)");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let apps = routed_app(&lab, "web", "full.lab.test");
    let file = fleet_toml(&lab, dir.path(), &own.fleet, None, &apps);
    let text0 = std::fs::read_to_string(&file).expect("read");
    let state = small.join("state.db");
    let text0 = text0.replacen(
        &format!(
            "state = {:?}",
            dir.path().join("state.db").display().to_string()
        ),
        &format!("state = {:?}", state.display().to_string()),
        1,
    );
    assert!(text0.contains(&state.display().to_string()), "{text0}");
    std::fs::write(&file, &text0).expect("write");
    let addr = proxy_addr(&file);
    let mut daemon = Daemon::start(&file);
    daemon.set_state(&state);
    let on = converged(&daemon, 1);
    let (_, first) =
        via_proxy(&addr, "full.lab.test", "/", Duration::from_secs(2)).expect("served");

    // Fill the filesystem to the last byte.
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=1M"])
        .arg(format!("of={}", small.join("fill").display()))
        .stderr(Stdio::null())
        .status();
    let out = prism_in(&file, &["status"]);
    assert!(
        text(&out.stdout).contains("writes fail"),
        "{}",
        text(&out.stdout)
    );

    let victim = nodes
        .iter()
        .find(|n| instance_id(n) == on)
        .expect("the pod's node");
    let other = nodes.iter().find(|n| n.name != victim.name).expect("other");
    own.preempt(&victim.name).expect("preempt");
    // Nothing reaches the store now: the node and the proxy tell.
    retry(Duration::from_secs(60), || {
        let up = containers_on(&lab, other, &own.fleet)?;
        ensure!(up.iter().any(|l| l.ends_with(" running")), "{up:?}");
        let (status, body) = via_proxy(&addr, "full.lab.test", "/", Duration::from_secs(2))?;
        ensure!(status == 200 && body != first, "{status}: {body}");
        Ok(())
    })
    .expect("the pod moved and the route followed, with the store full");
    let out = prism_in(&file, &["status"]);
    let said = text(&out.stdout);
    assert!(said.contains("STATE STORE: writes fail"), "{said}");
    let health = Command::new("curl")
        .args(["-s", &format!("http://{}/metrics", admin_addr(&file))])
        .output()
        .expect("curl");
    let metrics = text(&health.stdout);
    let failed = metrics
        .lines()
        .find(|l| l.starts_with("prism_store_failures_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse::<f64>().ok())
        .expect("the failures metric");
    assert!(failed > 0.0, "{metrics}");
    daemon.stop();
}

/// The `[proxy]` admin address in a fleet file.
fn admin_addr(file: &Path) -> String {
    let text = std::fs::read_to_string(file).expect("read fleet.toml");
    let line = text
        .lines()
        .find(|l| l.starts_with("admin = "))
        .expect("an admin line");
    line.trim_start_matches("admin = ")
        .trim_matches('"')
        .to_owned()
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn a_fleet_toml_cut_short_removes_nothing_until_confirmed() {
    let _serial = serial();
    let lab = Lab::load();
    let mut own = own_nodes("cut");
    let [_a, _b] = own.add_many::<2>().expect("lab/lab add --fleet");
    let dir = tempfile::tempdir().expect("tempdir");
    let apps = format!(
        "{}{}{}",
        routed_app(&lab, "one", "one.lab.test"),
        routed_app(&lab, "two", "two.lab.test"),
        routed_app(&lab, "three", "three.lab.test")
    );
    let file = fleet_toml(&lab, dir.path(), &own.fleet, None, &apps);
    let daemon = Daemon::start(&file);
    converged_all(&daemon, 3);
    let running = |lab: &Lab| -> Result<usize> {
        let mut n = 0;
        for node in Lab::load()
            .other_nodes
            .iter()
            .filter(|n| n.fleet == own.fleet)
        {
            n += containers_on(lab, node, &own.fleet)?
                .iter()
                .filter(|l| l.ends_with(" running"))
                .count();
        }
        Ok(n)
    };
    assert_eq!(running(&lab).expect("docker ps"), 3);

    // Written in place, cut after [discovery]'s table: it still parses.
    let whole = std::fs::read_to_string(&file).expect("read");
    let cut = whole.find("[proxy]").expect("the proxy table");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&file)
        .expect("open in place");
    f.write_all(&whole.as_bytes()[..cut]).expect("write");
    drop(f);
    retry(Duration::from_secs(30), || {
        ensure!(
            daemon.events().iter().any(|e| e.kind == "guard.held"),
            "no hold yet"
        );
        Ok(())
    })
    .expect("the mass removal is held back");
    // Passes go on (a second apart); nothing is removed.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(
        running(&lab).expect("docker ps"),
        3,
        "{:#?}",
        daemon.events()
    );
    let plan = prism_in(&file, &["plan"]);
    assert!(
        text(&plan.stdout).contains("held: 3 of the fleet's 3 pods"),
        "{}",
        text(&plan.stdout)
    );
    let status = prism_in(&file, &["status"]);
    assert!(
        text(&status.stdout).contains("HELD BACK"),
        "{}",
        text(&status.stdout)
    );

    // Someone says it is meant: it goes.
    let out = prism_in(&file, &["confirm"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    retry(Duration::from_secs(60), || {
        let n = running(&lab)?;
        ensure!(n == 0, "{n} still running");
        Ok(())
    })
    .expect("confirmed, the apps go");
    assert!(
        daemon.events().iter().any(|e| e.kind == "guard.released"),
        "{:#?}",
        daemon.events()
    );
}

/// Waits until `n` pods run healthy.
fn converged_all(daemon: &Daemon, n: usize) {
    retry(Duration::from_secs(90), || {
        let healthy = daemon.healthy()?;
        ensure!(healthy.len() == n, "healthy: {healthy:?}");
        Ok(())
    })
    .expect("the fleet converges");
}

/// An EC2 endpoint in front of the lab's moto that, once told to, answers
/// every DescribeInstances with no instances at all.
struct EmptyFront {
    port: u16,
    empty: Arc<AtomicBool>,
}

const EMPTY_ANSWER: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DescribeInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>prism-test</requestId><reservationSet/></DescribeInstancesResponse>";

impl EmptyFront {
    fn start(moto: &str) -> EmptyFront {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let empty = Arc::new(AtomicBool::new(false));
        let (flag, moto) = (empty.clone(), moto.to_owned());
        // Ends with the test process.
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let (flag, moto) = (flag.clone(), moto.clone());
                std::thread::spawn(move || {
                    let _ = serve(client, &moto, &flag);
                });
            }
        });
        EmptyFront { port, empty }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// One client connection, request by request.
fn serve(mut client: TcpStream, moto: &str, empty: &AtomicBool) -> Result<()> {
    loop {
        let Some(request) = read_request(&mut client)? else {
            return Ok(());
        };
        let describe = String::from_utf8_lossy(&request).contains("Action=DescribeInstances");
        if describe && empty.load(Ordering::SeqCst) {
            write!(
                client,
                "HTTP/1.1 200 OK\r\nContent-Type: text/xml;charset=UTF-8\r\nContent-Length: {}\r\n\r\n{EMPTY_ANSWER}",
                EMPTY_ANSWER.len()
            )?;
            continue;
        }
        let mut upstream = TcpStream::connect(moto)?;
        upstream.write_all(&close_after(&request))?;
        let mut answer = Vec::new();
        upstream.read_to_end(&mut answer)?;
        client.write_all(&answer)?;
        // The answer said `close` (it was asked to): the client reconnects.
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    }
}

/// A request head and body off `s`, or `None` at its end.
fn read_request(s: &mut TcpStream) -> Result<Option<Vec<u8>>> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Ok(None);
        }
        buf.push(byte[0]);
        if buf.len() > 64 << 10 {
            bail!("head too long");
        }
    }
    let head = String::from_utf8_lossy(&buf).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body)?;
    buf.extend_from_slice(&body);
    Ok(Some(buf))
}

/// The request with `Connection: close`, so the upstream's answer ends at
/// its end.
fn close_after(request: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(request);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut out: Vec<&str> = head
        .lines()
        .filter(|l| !l.to_lowercase().starts_with("connection:"))
        .collect();
    out.push("Connection: close");
    format!("{}\r\n\r\n{body}", out.join("\r\n")).into_bytes()
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn an_empty_describe_instances_marks_no_node_gone() {
    let _serial = serial();
    let lab = Lab::load();
    let mut own = own_nodes("empty");
    let [_a, _b] = own.add_many::<2>().expect("lab/lab add --fleet");
    let dir = tempfile::tempdir().expect("tempdir");
    let front = EmptyFront::start(lab.moto_url.trim_start_matches("http://"));
    let apps = routed_app(&lab, "web", "empty.lab.test");
    let file = fleet_toml(&lab, dir.path(), &own.fleet, Some(&front.url()), &apps);
    let daemon = Daemon::start(&file);
    converged(&daemon, 1);
    front.empty.store(true, Ordering::SeqCst);
    retry(Duration::from_secs(30), || {
        ensure!(
            daemon
                .events()
                .iter()
                .any(|e| e.kind == "guard.held" && e.message.contains("discovery no longer lists")),
            "no hold yet"
        );
        Ok(())
    })
    .expect("the empty listing is held back");
    std::thread::sleep(Duration::from_secs(6));
    let states: Vec<String> = daemon
        .store()
        .and_then(|s| Ok(s.nodes()?))
        .expect("nodes")
        .into_iter()
        .map(|n| n.state.as_str().to_owned())
        .collect();
    assert_eq!(states, ["ready", "ready"], "{:#?}", daemon.events());
    assert_eq!(daemon.healthy().expect("health").len(), 1);
    // EC2 answers whole again: the hold clears, nothing happened.
    front.empty.store(false, Ordering::SeqCst);
    retry(Duration::from_secs(30), || {
        let held = daemon.store()?.holds()?;
        ensure!(held.is_empty(), "{held:?}");
        Ok(())
    })
    .expect("the hold clears");
    assert!(
        !daemon.events().iter().any(|e| e.kind == "node.gone"),
        "{:#?}",
        daemon.events()
    );
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn a_daemon_killed_during_a_job_leaves_no_run_past_its_timeout_nor_an_overlap() {
    let _serial = serial();
    let lab = Lab::load();
    let mut own = own_nodes("job");
    let [node] = own.add_many::<1>().expect("lab/lab add --fleet");
    let dir = tempfile::tempdir().expect("tempdir");
    // Every minute a run that would take 5 minutes, stopped at 90 s: the
    // next tick comes while it runs.
    let apps = format!(
        "{}[apps.web.jobs.long]\nschedule = \"* * * * *\"\nservice = \"web\"\ncommand = [\"sleep\", \"300\"]\ntimeout = \"90s\"\n",
        routed_app(&lab, "web", "job.lab.test")
    );
    let file = fleet_toml(&lab, dir.path(), &own.fleet, None, &apps);
    let mut daemon = Daemon::start(&file);
    converged(&daemon, 1);
    let runs = |lab: &Lab| -> Vec<String> {
        containers_on(lab, &node, &own.fleet)
            .unwrap_or_default()
            .into_iter()
            .filter(|l| l.contains(".job.long.") && !l.contains(".timeout "))
            .collect()
    };
    let first = retry(Duration::from_secs(75), || {
        let up: Vec<String> = runs(&lab)
            .into_iter()
            .filter(|l| l.ends_with(" running"))
            .collect();
        ensure!(up.len() == 1, "{up:?}");
        Ok(up[0]
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned())
    })
    .expect("the first run starts on its tick");
    let started: i64 = first
        .rsplit('.')
        .next()
        .and_then(|s| s.parse().ok())
        .expect("the run's name ends with its tick");
    // Killed without a word, 5 s in; a new daemon takes over at once.
    std::thread::sleep(Duration::from_secs(5));
    daemon.kill();
    let mut again = Daemon::start(&file);
    // Until the first run's deadline: never two runs at once.
    let deadline = started + 90;
    while prism::store::now_ms() / 1000 < deadline - 2 {
        let up: Vec<String> = runs(&lab)
            .into_iter()
            .filter(|l| l.ends_with(" running"))
            .collect();
        assert!(up.len() <= 1, "overlapping runs: {up:?}");
        std::thread::sleep(Duration::from_secs(1));
    }
    // Its watchdog ends it at the deadline; the applier reports it.
    retry(Duration::from_secs(40), || {
        let left: Vec<String> = runs(&lab)
            .into_iter()
            .filter(|l| l.contains(&first))
            .collect();
        ensure!(left.is_empty(), "{left:?}");
        Ok(())
    })
    .expect("the run is gone by its timeout");
    let ended_at = prism::store::now_ms() / 1000;
    assert!(
        ended_at <= deadline + 40,
        "gone {}s after its deadline",
        ended_at - deadline
    );
    let events = again.events();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "job.skipped" && e.message.contains("previous run still goes")),
        "{events:#?}"
    );
    assert!(
        events.iter().any(|e| e.kind == "job.failed"
            && e.message.contains("web/long")
            && e.message.contains("137")),
        "{events:#?}"
    );
    again.stop();
}
