//! The mesh on the lab (issue 19): WireGuard between the test's own nodes
//! and this machine (wireguard-go: the kernel here has no WireGuard), a
//! /24 per node, and names for healthy instances answered by dnsmasq on
//! every node. The seeds' shape: a database (PostgreSQL, its data on a
//! durable volume, acknowledged writes counted) on one node, a web on two
//! others reaching it by name; the name follows the database when its node
//! is preempted. An unhealthy instance leaves the names; names and traffic
//! outlive the operator; a gone node's peer goes everywhere; a node outside
//! the mesh cannot reach a container; traffic between nodes is WireGuard's.
//!
//! Each test has its own nodes, cidr and interface on this machine (removed
//! at its end); those that kill nodes run one at a time.

use crate::common::{Lab, Node, OwnNodes, ProxyPorts, Trust, retry};
use crate::db;
use crate::lifecycle::{Daemon, serial};
use crate::on_node::{gateway, mesh_state, on_node, resolve};

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// One zone: the database's volume follows it only there.
const ZONE: &str = "eu-north-1a";

/// A pod this size fills a lab node (2G, less the reserve): one per node.
const WHOLE_NODE: &str = "1200M";

/// A test's mesh: its nodes, its daemon, its interface on this machine.
/// Dropped in order: the daemon stops, the interface goes, then the nodes.
struct Mesh {
    daemon: Daemon,
    ports: ProxyPorts,
    file: PathBuf,
    _dir: tempfile::TempDir,
    iface: String,
    nodes: Vec<Node>,
    own: OwnNodes,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let logs = self.daemon.stop();
        if std::thread::panicking() {
            eprintln!("daemon log:\n{}", logs.join("\n"));
        }
        let _ = Command::new("ip")
            .args(["link", "del", "dev", &self.iface])
            .status();
    }
}

/// `n` nodes of a fleet of the test's own in [`ZONE`], the mesh on
/// `10.OCTET.0.0/16`, running `apps`.
fn mesh(lab: &Lab, tag: &str, octet: u8, n: usize, apps: &str) -> Mesh {
    let mut own = OwnNodes::new(format!("mesh{}{tag}", std::process::id()));
    let nodes: Vec<Node> = (0..n)
        .map(|_| own.add_in(ZONE).expect("lab/lab add --zone"))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let iface = format!("pm{}{tag}", std::process::id() % 100_000);
    let rest = format!(
        "[lifecycle]\nlost_after = 2\n\n[network]\ncidr = \"10.{octet}.0.0/16\"\ninterface = \"{iface}\"\n{apps}"
    );
    let ports = ProxyPorts::free();
    let file = lab.own_nodes_fleet(dir.path(), &own.fleet, Trust::Pin, &ports, &rest);
    let daemon = Daemon::start(&file);
    Mesh {
        daemon,
        ports,
        file,
        _dir: dir,
        iface,
        nodes,
        own,
    }
}

/// A web of `instances` pods of the test app, one per node, with a check.
/// `restart = "no"`: an unhealthy one stays so (and unnamed) until it
/// recovers, rather than being restarted healthy at once.
fn web_app(lab: &Lab, instances: u32) -> String {
    format!(
        r#"
[apps.blog]
instances = {instances}
[apps.blog.services.web]
image = "{}"
port = 8080
hosts = ["lab.test"]
memory = "{WHOLE_NODE}"
restart = "no"
health = {{ http = "/up", interval = "1s", timeout = "1s", healthy_threshold = 1, unhealthy_threshold = 1 }}
"#,
        lab.testapp_image
    )
}

/// Runs `script` in the running container of `app`/`service` on `node`.
fn in_container(
    node: &Node,
    fleet: &str,
    app: &str,
    service: &str,
    script: &str,
) -> Result<String> {
    let id = on_node(
        node,
        &format!(
            "docker ps -q --filter label=prism.fleet={fleet} --filter label=prism.app={app} \
             --filter label=prism.service={service} | head -n 1"
        ),
    )?;
    let id = id.trim();
    ensure!(
        !id.is_empty(),
        "no {app}/{service} running on {}",
        node.name
    );
    let quoted = shlex::try_quote(script).context("quote")?;
    on_node(node, &format!("docker exec {id} sh -c {quoted}"))
}

/// The node running the fleet's `app`/`service`, among `nodes`.
fn running_on<'a>(nodes: &'a [Node], fleet: &str, app: &str, service: &str) -> Result<&'a Node> {
    for n in nodes {
        let ids = on_node(
            n,
            &format!(
                "docker ps -q --filter label=prism.fleet={fleet} --filter label=prism.app={app} \
                 --filter label=prism.service={service}"
            ),
        )
        .unwrap_or_default();
        if !ids.trim().is_empty() {
            return Ok(n);
        }
    }
    bail!("{app}/{service} runs on none of the nodes")
}

/// Waits until `count` of the fleet's containers are healthy.
fn healthy(daemon: &Daemon, count: usize, limit: Duration) {
    retry(limit, || {
        let h = daemon.healthy()?;
        ensure!(h.len() == count, "healthy: {h:?}");
        Ok(())
    })
    .unwrap_or_else(|e| panic!("the fleet did not turn healthy: {e:#}"));
}

fn db_app(lab: &Lab) -> String {
    format!(
        r#"
[apps.db]
instances = 1
[apps.db.volumes.pgdata]
size = "1G"
[apps.db.services.postgres]
image = "{}"
port = 5432
memory = "{WHOLE_NODE}"
volumes = ["pgdata:/var/lib/postgresql/data"]
health = {{ tcp = 5432, interval = "1s", timeout = "1s", healthy_threshold = 1, unhealthy_threshold = 2, start_period = "90s" }}
"#,
        lab.postgres_image
    )
}

/// `postgres.db.internal` as the resolver at `gw` answers it, once it
/// answers one address that takes connections.
fn database(gw: &str) -> Result<String> {
    let ips = resolve(gw, "postgres.db.internal")?;
    ensure!(ips.len() == 1, "postgres.db.internal: {ips:?}");
    let addr = format!("{}:5432", ips[0]);
    db::connect(&addr)?;
    Ok(addr)
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn a_web_on_two_nodes_reaches_its_database_by_name_and_the_name_follows_a_preemption() {
    let _serial = serial();
    let lab = Lab::load();
    let apps = format!("{}\n{}", db_app(&lab), web_app(&lab, 2));
    let mut m = mesh(&lab, "db", 221, 4, &apps);
    let fleet = m.own.fleet.clone();
    healthy(&m.daemon, 3, Duration::from_secs(150));
    let db_node = running_on(&m.nodes, &fleet, "db", "postgres")
        .expect("the database runs")
        .clone();
    let webs: Vec<Node> = m
        .nodes
        .iter()
        .filter(|n| running_on(std::slice::from_ref(*n), &fleet, "blog", "web").is_ok())
        .cloned()
        .collect();
    assert_eq!(webs.len(), 2, "a web on each of two nodes");
    assert!(
        !webs.contains(&db_node),
        "the database has a node of its own"
    );
    let gw = gateway(&webs[0]).expect("mesh gateway");

    // Rows written through the name, as the web would.
    let addr = retry(Duration::from_secs(30), || database(&gw)).expect("the database by name");
    let acked = retry(Duration::from_secs(30), || db::write_rows(&addr, 0, 100)).expect("rows");
    for web in &webs {
        retry(Duration::from_secs(20), || {
            in_container(
                web,
                &fleet,
                "blog",
                "web",
                "nc -w 2 postgres.db.internal 5432 </dev/null",
            )
        })
        .unwrap_or_else(|e| panic!("the web on {} cannot reach the database: {e:#}", web.name));
    }

    let killed = Instant::now();
    m.own.preempt(&db_node.name).expect("lab/lab preempt");
    let moved = retry(Duration::from_secs(120), || {
        let a = database(&gw)?;
        ensure!(a != addr, "still the old address {a}");
        Ok(a)
    })
    .expect("the name follows the database");
    eprintln!(
        "postgres.db.internal answers at its new address {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    let found = retry(Duration::from_secs(30), || db::rows(&moved)).expect("rows read");
    let lost = db::lost(&acked, &found);
    assert!(lost.is_empty(), "{} acknowledged rows lost", lost.len());
    for web in &webs {
        retry(Duration::from_secs(30), || {
            in_container(
                web,
                &fleet,
                "blog",
                "web",
                "nc -w 2 postgres.db.internal 5432 </dev/null",
            )
        })
        .unwrap_or_else(|e| panic!("the web on {} lost the database: {e:#}", web.name));
    }
    let text = std::fs::read_to_string(&m.file).expect("fleet.toml");
    assert!(text.contains("[network]"), "fleet.toml was not changed");
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn an_unhealthy_instance_leaves_the_names_and_comes_back_healthy() {
    let lab = Lab::load();
    let m = mesh(&lab, "h", 222, 2, &web_app(&lab, 2));
    healthy(&m.daemon, 2, Duration::from_secs(90));
    let gw = gateway(&m.nodes[0]).expect("gateway");
    let both = retry(Duration::from_secs(20), || {
        let ips = resolve(&gw, "web.blog.internal")?;
        ensure!(ips.len() == 2, "{ips:?}");
        Ok(ips)
    })
    .expect("both instances named");
    // The proxy reaches them over the mesh; they publish no port.
    retry(Duration::from_secs(20), || {
        let status = crate::common::http_status(
            &format!("127.0.0.1:{}", m.ports.listen),
            "/",
            Duration::from_secs(3),
        )?;
        ensure!(status == 200, "the proxy answered {status}");
        Ok(())
    })
    .expect("a request through the proxy");
    for node in &m.nodes {
        let ports = on_node(
            node,
            &format!(
                "docker ps --filter label=prism.fleet={} --format '{{{{.Ports}}}}'",
                m.own.fleet
            ),
        )
        .expect("docker ps");
        // `8080/tcp` is the image's EXPOSE; a published one reads
        // `0.0.0.0:32768->8080/tcp`.
        assert!(!ports.contains("->"), "published on {}: {ports}", node.name);
    }
    let zero = resolve(&gw, "0.web.blog.internal").expect("instance 0");
    assert_eq!(zero.len(), 1);
    let other: Vec<String> = both.iter().filter(|ip| **ip != zero[0]).cloned().collect();

    // This machine is in the mesh: it reaches the instance itself.
    let failed = Instant::now();
    ask(&zero[0], "/fail").expect("GET /fail over the mesh");
    retry(Duration::from_secs(20), || {
        let ips = resolve(&gw, "web.blog.internal")?;
        ensure!(ips == other, "{ips:?}");
        ensure!(
            resolve(&gw, "0.web.blog.internal")?.is_empty(),
            "0 still named"
        );
        Ok(())
    })
    .expect("the failing instance leaves the names");
    eprintln!(
        "a failing instance left the names {:.1} s after it failed",
        failed.elapsed().as_secs_f64()
    );
    let recovered = Instant::now();
    ask(&zero[0], "/recover").expect("GET /recover over the mesh");
    retry(Duration::from_secs(60), || {
        let ips = resolve(&gw, "web.blog.internal")?;
        ensure!(ips.len() == 2, "{ips:?}");
        Ok(())
    })
    .expect("a healthy instance is named again");
    eprintln!(
        "a recovered instance was named again {:.1} s after it recovered",
        recovered.elapsed().as_secs_f64()
    );
    // Other names go to the node's own resolvers; nothing else of the
    // domain is made up.
    assert!(
        resolve(&gw, "nothing.blog.internal")
            .expect("dig")
            .is_empty()
    );
}

/// The instance of the fleet's web running on `node`.
fn web_instance(node: &Node, fleet: &str) -> String {
    on_node(
        node,
        &format!(
            "docker ps --filter label=prism.fleet={fleet} --filter label=prism.service=web \
             --format '{{{{.Label \"prism.instance\"}}}}'"
        ),
    )
    .expect("the web's instance")
    .trim()
    .to_owned()
}

/// `GET path` of the test app at mesh address `ip`, from this machine.
fn ask(ip: &str, path: &str) -> Result<u16> {
    crate::common::http_status(&format!("{ip}:8080"), path, Duration::from_secs(3))
}

/// The WireGuard peers of `iface` on `node`.
fn peers(node: &Node, iface: &str) -> Result<Vec<String>> {
    let out = on_node(node, &format!("wg show {iface} peers"))?;
    Ok(out.lines().map(str::to_owned).collect())
}

/// Bytes received from and sent to `peer` on `node`'s `iface`.
fn transfer(node: &Node, iface: &str, peer: &str) -> Result<(u64, u64)> {
    let out = on_node(node, &format!("wg show {iface} transfer"))?;
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() == 3 && f[0] == peer {
            return Ok((f[1].parse()?, f[2].parse()?));
        }
    }
    bail!("no peer {peer} on {}", node.name)
}

fn public_key(node: &Node) -> Result<String> {
    mesh_state(node, "public-key")
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn the_mesh_is_encrypted_closed_to_outsiders_outlives_the_operator_and_forgets_gone_nodes() {
    let _serial = serial();
    let lab = Lab::load();
    let mut m = mesh(&lab, "m", 223, 3, &web_app(&lab, 2));
    let fleet = m.own.fleet.clone();
    healthy(&m.daemon, 2, Duration::from_secs(90));
    let a = running_on(&m.nodes, &fleet, "blog", "web")
        .expect("a web")
        .clone();
    let spare = m
        .nodes
        .iter()
        .find(|n| running_on(std::slice::from_ref(*n), &fleet, "blog", "web").is_err())
        .expect("a node without a web")
        .clone();
    let b = m
        .nodes
        .iter()
        .find(|n| **n != a && **n != spare)
        .expect("the other web's node")
        .clone();
    let gw_a = gateway(&a).expect("gateway");
    let b_name = format!("{}.web.blog.internal", web_instance(&b, &fleet));
    let get = format!("testapp get http://{b_name}:8080/ 200");

    // Encrypted: a's requests to b's container go through WireGuard,
    // whose counters for b grow by at least what was sent.
    let key_b = public_key(&b).expect("b's key");
    let (_, sent_before) = transfer(&a, &m.iface, &key_b).expect("counters");
    retry(Duration::from_secs(20), || {
        in_container(&a, &fleet, "blog", "web", &get)
    })
    .expect("a reaches b's web by name");
    let (_, sent_after) = transfer(&a, &m.iface, &key_b).expect("counters");
    // End to end: b's web saw a's container's own mesh address.
    let a_instance = web_instance(&a, &fleet);
    let a_ip = resolve(&gw_a, &format!("{a_instance}.web.blog.internal")).expect("a's address");
    assert_eq!(a_ip.len(), 1);
    let seen = on_node(
        &b,
        &format!(
            "docker logs $(docker ps -q --filter label=prism.fleet={fleet} \
             --filter label=prism.service=web | head -n 1) 2>&1 | grep -c 'testapp: {}:' || true",
            a_ip[0]
        ),
    )
    .expect("b's web log");
    assert!(
        seen.trim().parse::<u32>().unwrap_or(0) >= 200,
        "b's web saw {} requests from a's address {} (no masquerade on the mesh)",
        seen.trim(),
        a_ip[0]
    );
    assert!(
        sent_after >= sent_before + 200 * 40,
        "WireGuard carried {} bytes to b for 200 requests",
        sent_after - sent_before
    );

    // A node outside the mesh, routed to b's containers through b, gets
    // nothing through; the same from inside the mesh works.
    let b_ip = resolve(&gw_a, &b_name).expect("b's address");
    assert_eq!(b_ip.len(), 1);
    let mut outside = OwnNodes::new(format!("out{}", std::process::id()));
    let stranger = outside.add_in(ZONE).expect("a node outside");
    let subnet = format!("{}.0/24", b_ip[0].rsplit_once('.').expect("ip").0);
    on_node(
        &stranger,
        &format!("ip route replace {subnet} via {}", b.address),
    )
    .expect("a route through b");
    let probe = format!("timeout 3 bash -c 'echo > /dev/tcp/{}/8080'", b_ip[0]);
    assert!(
        on_node(&stranger, &probe).is_err(),
        "a node outside the mesh reached {} through {}",
        b_ip[0],
        b.name
    );
    // The same connection from this machine, in the mesh, goes through.
    ask(&b_ip[0], "/up").expect("this machine reaches b's container");
    drop(outside);

    // The operator stopped: names resolve, traffic flows.
    m.daemon.stop();
    assert_eq!(resolve(&gw_a, &b_name).expect("dig"), b_ip);
    in_container(&a, &fleet, "blog", "web", &get).expect("a reaches b with the operator down");
    ask(&b_ip[0], "/up").expect("this machine reaches b with the operator down");

    // A gone node's peer goes everywhere.
    let key_spare = public_key(&spare).expect("spare's key");
    assert!(peers(&a, &m.iface).expect("peers").contains(&key_spare));
    m.own.preempt(&spare.name).expect("preempt");
    m.daemon = Daemon::start(&m.file);
    retry(Duration::from_secs(60), || {
        for n in [&a, &b] {
            ensure!(
                !peers(n, &m.iface)?.contains(&key_spare),
                "{} still has the gone node's peer",
                n.name
            );
        }
        Ok(())
    })
    .expect("the gone node's peer is removed");
}
