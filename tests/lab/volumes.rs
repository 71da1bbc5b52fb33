//! Volumes on the lab (issue 18): PostgreSQL from Debian's packages keeps
//! its data on a durable volume (the lab's EBS stand-in: a loop device that
//! EC2 attaches to a node), and every test counts the rows the server
//! acknowledged before and after. A preempted node's database comes back
//! on another node of its zone with every row; a blip never moves it and
//! never runs a second copy; a node silent past `fence_after` is
//! terminated first; a spot notice stops it before it starts elsewhere;
//! a zone left without nodes sees the volume move through a snapshot.
//! Local volumes belong to one pod instance, an image's own `VOLUME`
//! survives a spec change, a device holding a filesystem is never
//! formatted, volumes outlive their pods until `prism volumes delete`, and
//! scheduled snapshots keep the newest. Nodes are the test's own (`lab/lab
//! add --fleet --zone`); tests that kill or cut off nodes run one at a
//! time (`serial`), the others alongside.

use crate::common::{self, Lab, Node, OwnNodes, ProxyPorts, Trust, lab_cmd, retry};
use crate::db;
use crate::lifecycle::{Daemon, containers_on, instance_id, serial};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

/// The zone of every test's nodes: a volume never leaves it here.
const ZONE: &str = "eu-north-1a";

fn own(tag: &str) -> OwnNodes {
    OwnNodes::new(format!("vol{}{tag}", std::process::id()))
}

/// The test's fleet on its own nodes: quick probes, the lab's metadata
/// stand-in, `lifecycle` added to `[lifecycle]`, then `apps`.
fn fleet(lab: &Lab, dir: &Path, fleet: &str, lifecycle: &str, apps: &str) -> PathBuf {
    let rest = format!(
        "[lifecycle]\nlost_after = 2\nnotice_interval = \"1s\"\n\
         metadata_url = \"http://127.0.0.1:1338\"\n{lifecycle}\n{apps}"
    );
    lab.own_nodes_fleet(dir, fleet, Trust::Pin, &ProxyPorts::free(), &rest)
}

/// App `db`: PostgreSQL with `volume` (the body of
/// `[apps.db.volumes.pgdata]`) mounted at its data directory, or with only
/// the image's own `VOLUME` when `volume` is None.
/// `start_period`: a first start runs initdb, which a restart for a failed
/// check (a slow, busy machine) would cut short and leave broken.
fn db_app(lab: &Lab, instances: u32, volume: Option<&str>) -> String {
    let (table, mount) = match volume {
        Some(body) => (
            format!("[apps.db.volumes.pgdata]\n{body}\n"),
            "volumes = [\"pgdata:/var/lib/postgresql/data\"]\n",
        ),
        None => (String::new(), ""),
    };
    format!(
        r#"
[apps.db]
instances = {instances}
{table}
[apps.db.services.postgres]
image = "{}"
port = 5432
memory = "256M"
{mount}health = {{ tcp = 5432, interval = "1s", timeout = "1s", healthy_threshold = 1, unhealthy_threshold = 2, start_period = "90s" }}
"#,
        lab.postgres_image
    )
}

const DURABLE: &str = "size = \"1G\"";

/// The node (instance id) pod `db/instance` is placed on.
fn placed(daemon: &Daemon, instance: u32) -> Result<String> {
    daemon
        .store()?
        .placements()?
        .into_iter()
        .find(|p| p.app == "db" && p.instance == instance)
        .map(|p| p.node_id)
        .context("db pod not placed")
}

/// Waits until `instances` db pods run healthy; pod 0's node.
fn healthy_db(daemon: &Daemon, instances: usize, limit: Duration) -> Result<String> {
    retry(limit, || {
        let healthy: Vec<_> = daemon
            .healthy()?
            .into_iter()
            .filter(|h| h.app == "db")
            .collect();
        ensure!(healthy.len() == instances, "healthy: {healthy:?}");
        let on = placed(daemon, 0)?;
        ensure!(
            healthy.iter().any(|h| h.node_id == on),
            "pod 0 is placed on {on}, healthy elsewhere: {healthy:?}"
        );
        Ok(on)
    })
}

/// Waits until pod db/0 runs healthy on a node other than `off`; that node.
fn healthy_off(daemon: &Daemon, off: &Node, limit: Duration) -> Result<String> {
    retry(limit, || {
        let id = healthy_db(daemon, 1, Duration::from_secs(1))?;
        ensure!(id != instance_id(off), "still on {id}");
        Ok(id)
    })
}

/// The database's address as the state store last recorded it, once it
/// is on `node` and answers.
fn db_addr(daemon: &Daemon, node: &Node) -> Result<String> {
    retry(Duration::from_secs(30), || {
        db::client_of(&daemon_state(daemon), "db", "postgres", Some(&node.address))
            .map(|(addr, _)| addr)
    })
}

/// Every row of the database on `node`.
fn rows_on(daemon: &Daemon, node: &Node) -> Result<std::collections::BTreeSet<i64>> {
    retry(Duration::from_secs(30), || {
        db::rows_on(&daemon_state(daemon), "db", "postgres", &node.address)
    })
}

fn daemon_state(daemon: &Daemon) -> PathBuf {
    daemon.state_path().to_path_buf()
}

/// `N` nodes of fleet `own` in [`ZONE`].
fn nodes_in_zone<const N: usize>(own: &mut OwnNodes) -> [Node; N] {
    let nodes: Vec<Node> = (0..N)
        .map(|_| own.add_in(ZONE).expect("lab/lab add --zone"))
        .collect();
    nodes.try_into().unwrap_or_else(|_| panic!("{N} nodes"))
}

/// Which of `nodes` is instance `id`, and the others.
fn split(nodes: &[Node], id: &str) -> (Node, Vec<Node>) {
    let (on, others): (Vec<Node>, Vec<Node>) =
        nodes.iter().cloned().partition(|n| instance_id(n) == id);
    let on = on
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{id} is none of the test's nodes"));
    (on, others)
}

/// A fleet of its own on one node of [`ZONE`] running `apps`; `before`
/// runs once the node is up, before the daemon starts. Fields drop in
/// order: the daemon stops first, the node goes last.
struct OneNode {
    daemon: Daemon,
    file: PathBuf,
    _dir: tempfile::TempDir,
    node: Node,
    own: OwnNodes,
}

fn one_node<T>(
    lab: &Lab,
    tag: &str,
    apps: &str,
    before: impl FnOnce(&OwnNodes, &Node) -> T,
) -> (OneNode, T) {
    let mut own = own(tag);
    let [node]: [Node; 1] = nodes_in_zone(&mut own);
    let made = before(&own, &node);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = fleet(lab, dir.path(), &own.fleet, "", apps);
    let daemon = Daemon::start(&file);
    let one = OneNode {
        daemon,
        file,
        _dir: dir,
        node,
        own,
    };
    (one, made)
}

/// A durable database on two nodes of one zone, with `rows` acknowledged
/// rows written. Fields drop in order: the daemon stops first.
struct Stateful {
    daemon: Daemon,
    _dir: tempfile::TempDir,
    on: Node,
    other: Node,
    acked: Vec<i64>,
    own: OwnNodes,
}

fn stateful(lab: &Lab, tag: &str, lifecycle: &str, rows: i64) -> Stateful {
    let mut own = own(tag);
    let nodes: [Node; 2] = nodes_in_zone(&mut own);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = fleet(
        lab,
        dir.path(),
        &own.fleet,
        lifecycle,
        &db_app(lab, 1, Some(DURABLE)),
    );
    let daemon = Daemon::start(&file);
    let id = healthy_db(&daemon, 1, Duration::from_secs(120)).expect("the database runs");
    let (on, others) = split(&nodes, &id);
    let other = others.into_iter().next().expect("a second node");
    let addr = db_addr(&daemon, &on).expect("db address");
    let acked =
        retry(Duration::from_secs(30), || db::write_rows(&addr, 0, rows)).expect("rows written");
    Stateful {
        daemon,
        _dir: dir,
        on,
        other,
        acked,
        own,
    }
}

impl Stateful {
    /// Every acknowledged row is in the database on `node`.
    fn assert_rows_on(&self, node: &Node) {
        let found = rows_on(&self.daemon, node).expect("rows read");
        let lost = db::lost(&self.acked, &found);
        assert!(
            lost.is_empty(),
            "{} of {} acknowledged rows lost: {:?}",
            lost.len(),
            self.acked.len(),
            &lost[..lost.len().min(10)]
        );
    }

    fn containers_on(&self, lab: &Lab, node: &Node) -> Vec<String> {
        containers_on(lab, node, &self.own.fleet).unwrap_or_default()
    }
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn a_preempted_node_s_database_comes_back_in_its_zone_with_every_acknowledged_row() {
    let _serial = serial();
    let lab = Lab::load();
    let mut s = stateful(&lab, "p", "", 200);
    let killed = Instant::now();
    let victim = s.on.clone();
    s.own.preempt(&victim.name).expect("lab/lab preempt");
    let id = healthy_off(&s.daemon, &victim, Duration::from_secs(90))
        .expect("the database runs again after the preemption");
    eprintln!(
        "database healthy on another node {:.1} s after the kill",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(id, instance_id(&s.other), "the database moved elsewhere");
    s.assert_rows_on(&s.other.clone());
    let events = s.daemon.events();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "volume.attached" && e.node_id.as_deref() == Some(id.as_str())),
        "no volume.attached event on the new node: {:?}",
        events.iter().map(|e| &e.kind).collect::<Vec<_>>()
    );
}

/// Watches `node` for containers of the fleet while `during` runs.
fn never_on(lab: &Lab, s: &Stateful, node: &Node, during: impl FnOnce()) {
    let seen = std::sync::Mutex::new(Vec::<String>::new());
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let found = s.containers_on(lab, node);
                if !found.is_empty()
                    && let Ok(mut seen) = seen.lock()
                {
                    seen.extend(found);
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        during();
        // The passes after the fault, too.
        std::thread::sleep(Duration::from_secs(8));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let seen = seen.into_inner().unwrap_or_default();
    assert!(
        seen.is_empty(),
        "a second copy of the database ran on {}: {seen:?}",
        node.name
    );
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn a_blip_never_moves_a_database_nor_runs_a_second_copy() {
    let _serial = serial();
    let lab = Lab::load();
    let s = stateful(&lab, "b", "", 100);
    let (on, other) = (s.on.clone(), s.other.clone());

    never_on(&lab, &s, &other, || {
        lab_cmd(&["dockerd", &on.name, "stop"]).expect("lab/lab dockerd stop");
        std::thread::sleep(Duration::from_secs(10));
        lab_cmd(&["dockerd", &on.name, "start"]).expect("lab/lab dockerd start");
    });
    let id = healthy_db(&s.daemon, 1, Duration::from_secs(60)).expect("healthy after dockerd");
    assert_eq!(id, instance_id(&on), "the database moved on a dockerd blip");
    s.assert_rows_on(&on);

    never_on(&lab, &s, &other, || {
        lab_cmd(&["partition", &on.name]).expect("lab/lab partition");
        std::thread::sleep(Duration::from_secs(20));
        lab_cmd(&["heal", &on.name]).expect("lab/lab heal");
    });
    let id = healthy_db(&s.daemon, 1, Duration::from_secs(60)).expect("healthy after the heal");
    assert_eq!(id, instance_id(&on), "the database moved on a partition");
    s.assert_rows_on(&on);
    assert!(
        !s.daemon.events().iter().any(|e| e.kind == "node.fenced"),
        "a 20 s partition fenced the node (fence_after is 60 s)"
    );
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn a_node_silent_past_fence_after_is_terminated_before_its_database_moves() {
    let _serial = serial();
    let lab = Lab::load();
    let s = stateful(&lab, "f", "fence_after = \"10s\"\n", 100);
    let (on, other) = (s.on.clone(), s.other.clone());
    let cut = Instant::now();
    lab_cmd(&["partition", &on.name]).expect("lab/lab partition");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let ec2 = runtime.block_on(lab.ec2());
    retry(Duration::from_secs(60), || {
        let inst = runtime.block_on(common::describe_instance(&ec2, &instance_id(&on)))?;
        ensure!(
            matches!(inst.state.as_deref(), Some("shutting-down" | "terminated")),
            "instance {}: {:?}",
            inst.id,
            inst.state
        );
        Ok(())
    })
    .expect("the silent node's instance is terminated");
    let fenced = cut.elapsed();
    assert!(
        fenced >= Duration::from_secs(10),
        "fenced {fenced:?} after the cut, before fence_after"
    );
    let id = healthy_off(&s.daemon, &on, Duration::from_secs(90)).expect("the database moves");
    eprintln!(
        "fenced {:.1} s and healthy on another node {:.1} s after the cut",
        fenced.as_secs_f64(),
        cut.elapsed().as_secs_f64()
    );
    assert_eq!(id, instance_id(&other));
    s.assert_rows_on(&other);
    let events = s.daemon.events();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "node.fenced"
                && e.node_id.as_deref() == Some(instance_id(&on).as_str())),
        "no node.fenced event"
    );
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn a_spot_notice_moves_a_database_stop_before_start_losing_no_acknowledged_write() {
    let _serial = serial();
    let lab = Lab::load();
    let s = stateful(&lab, "n", "", 10);
    let (on, other) = (s.on.clone(), s.other.clone());
    let writer = db::Writer::start(&daemon_state(&s.daemon), "db", "postgres", 1_000_000);
    std::thread::sleep(Duration::from_secs(3));
    let noticed = Instant::now();
    lab_cmd(&["notice", &on.name]).expect("lab/lab notice");
    let id = healthy_off(&s.daemon, &on, Duration::from_secs(90))
        .expect("the database moves off the noticed node");
    eprintln!(
        "database healthy on the other node {:.1} s after the notice",
        noticed.elapsed().as_secs_f64()
    );
    assert_eq!(id, instance_id(&other));
    // Writes go on against the new copy for a while.
    let addr = db_addr(&s.daemon, &other).expect("db address");
    retry(Duration::from_secs(30), || db::rows(&addr).map(|_| ())).expect("db answers");
    std::thread::sleep(Duration::from_secs(3));
    let writes = writer.stop();
    let found = db::rows(&addr).expect("rows read");
    let lost = db::lost(&writes.acked, &found);
    eprintln!(
        "{} writes acknowledged, {} failed, longest gap {:.1} s, {} lost",
        writes.acked.len(),
        writes.failed,
        writes.longest_gap.as_secs_f64(),
        lost.len()
    );
    assert!(writes.acked.len() > 50, "too few writes: {writes:?}");
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    s.assert_rows_on(&other);
}

/// Names of the fleet's Docker volumes on `node`.
fn docker_volumes(lab: &Lab, node: &Node, fleet: &str) -> Vec<String> {
    lab.ssh(
        &node.address,
        &format!("docker volume ls -q --filter label=prism.fleet={fleet}"),
    )
    .expect("docker volume ls")
    .lines()
    .map(str::to_owned)
    .collect()
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn two_instances_on_one_node_get_a_local_volume_each() {
    let lab = Lab::load();
    let apps = db_app(&lab, 2, Some("kind = \"local\""));
    let (t, ()) = one_node(&lab, "l", &apps, |_, _| ());
    let (daemon, node, own) = (&t.daemon, &t.node, &t.own);
    healthy_db(daemon, 2, Duration::from_secs(120)).expect("both instances run");
    let vols = docker_volumes(&lab, node, &own.fleet);
    assert_eq!(vols.len(), 2, "one volume per pod instance, found {vols:?}");
    assert_ne!(vols[0], vols[1]);
    // What one instance writes, the other does not see.
    let addrs = common::published_addrs(&daemon_state(daemon), "db", "postgres");
    assert_eq!(addrs.len(), 2, "addresses: {addrs:?}");
    let acked = retry(Duration::from_secs(30), || db::write_rows(&addrs[0], 0, 20))
        .expect("rows written to one instance");
    let other = retry(Duration::from_secs(30), || db::rows(&addrs[1])).expect("rows read");
    assert!(other.is_empty(), "the other instance sees {other:?}");
    let found = db::rows(&addrs[0]).expect("rows read");
    assert!(db::lost(&acked, &found).is_empty());
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn an_image_s_own_volume_keeps_its_data_through_a_spec_change() {
    let lab = Lab::load();
    let (t, ()) = one_node(&lab, "i", &db_app(&lab, 1, None), |_, _| ());
    let (daemon, node, own, file) = (&t.daemon, &t.node, &t.own, &t.file);
    healthy_db(daemon, 1, Duration::from_secs(120)).expect("the database runs");
    let addr = db_addr(daemon, node).expect("db address");
    let acked =
        retry(Duration::from_secs(30), || db::write_rows(&addr, 0, 100)).expect("rows written");
    let before = containers_on(&lab, node, &own.fleet).expect("docker ps");

    // A memory change: a new container replaces the old one.
    let text = std::fs::read_to_string(file).expect("read fleet.toml");
    std::fs::write(file, text.replace("memory = \"256M\"", "memory = \"300M\""))
        .expect("write fleet.toml");
    retry(Duration::from_secs(120), || {
        let now = containers_on(&lab, node, &own.fleet)?;
        ensure!(
            now.len() == 1 && !before.contains(&now[0]),
            "containers: {now:?} (before: {before:?})"
        );
        healthy_db(daemon, 1, Duration::from_secs(1)).map(|_| ())
    })
    .expect("the new container runs");
    let found = rows_on(daemon, node).expect("rows read");
    let lost = db::lost(&acked, &found);
    assert!(lost.is_empty(), "{} rows lost in the change", lost.len());
    let vols = docker_volumes(&lab, node, &own.fleet);
    assert_eq!(vols.len(), 1, "one volume of the pod: {vols:?}");
    let dangling = lab
        .ssh(&node.address, "docker volume ls -q --filter dangling=true")
        .expect("docker volume ls");
    assert_eq!(dangling.trim(), "", "dangling volumes left");
}

/// The tags Prism puts on pod db/0's volume `pgdata` (and its snapshots)
/// in `fleet`, and `extra`.
fn db0_tags(
    fleet: &str,
    on: aws_sdk_ec2::types::ResourceType,
    extra: &[(&str, &str)],
) -> aws_sdk_ec2::types::TagSpecification {
    let tags = [
        ("prism:fleet", fleet),
        ("prism:app", "db"),
        ("prism:instance", "0"),
        ("prism:volume", "pgdata"),
    ];
    tags.iter()
        .chain(extra)
        .fold(
            aws_sdk_ec2::types::TagSpecification::builder().resource_type(on),
            |spec, (k, v)| spec.tags(aws_sdk_ec2::types::Tag::builder().key(*k).value(*v).build()),
        )
        .build()
}

/// `blkid` of a device inside a node (run as root in the node's container,
/// as the volume's earlier owner would have).
fn blkid(node: &Node, device: &str) -> String {
    let out = std::process::Command::new("docker")
        .args([
            "exec",
            &node.container,
            "blkid",
            "-p",
            "-o",
            "export",
            device,
        ])
        .output()
        .expect("docker exec blkid");
    common::text(&out.stdout)
}

fn node_root(node: &Node, script: &str) {
    let out = std::process::Command::new("docker")
        .args(["exec", &node.container, "sh", "-euc", script])
        .output()
        .expect("docker exec");
    assert!(
        out.status.success(),
        "{script}: {}",
        common::text(&out.stderr)
    );
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn a_device_that_holds_a_filesystem_is_never_formatted() {
    use aws_sdk_ec2::types::ResourceType;
    let lab = Lab::load();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let ec2 = runtime.block_on(lab.ec2());
    let apps = db_app(&lab, 1, Some(DURABLE));
    let (t, uuid_before) = one_node(&lab, "d", &apps, |own, node| {
        // A volume of pod db/0 that someone formatted (xfs-less ext4 with a
        // file on it) and Prism never tagged as its own filesystem.
        let vol = runtime
            .block_on(
                ec2.create_volume()
                    .availability_zone(ZONE)
                    .size(1)
                    .tag_specifications(db0_tags(&own.fleet, ResourceType::Volume, &[]))
                    .send(),
            )
            .expect("CreateVolume");
        let id = vol.volume_id().expect("volume id").to_owned();
        let state = |want: &str| {
            retry(Duration::from_secs(30), || {
                let out = runtime.block_on(ec2.describe_volumes().volume_ids(&id).send())?;
                let v = out.volumes().first().context("no volume")?;
                let attached = v
                    .attachments()
                    .first()
                    .and_then(|a| a.state())
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_else(|| v.state().map(|s| s.as_str()).unwrap_or("").to_owned());
                ensure!(attached == want, "{id}: {attached}");
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{id} never {want}: {e:#}"))
        };
        state("available");
        runtime
            .block_on(
                ec2.attach_volume()
                    .volume_id(&id)
                    .instance_id(instance_id(node))
                    .device("/dev/sdk")
                    .send(),
            )
            .expect("AttachVolume");
        state("attached");
        node_root(
            node,
            "mkfs.ext4 -q /dev/sdk && mkdir -p /mnt/pre && mount /dev/sdk /mnt/pre && \
             mkdir /mnt/pre/data && echo kept > /mnt/pre/marker && umount /mnt/pre",
        );
        let uuid_before = blkid(node, "/dev/sdk");
        assert!(uuid_before.contains("TYPE=ext4"), "{uuid_before}");
        runtime
            .block_on(ec2.detach_volume().volume_id(&id).send())
            .expect("DetachVolume");
        state("available");

        uuid_before
    });
    let (daemon, node, own) = (&t.daemon, &t.node, &t.own);
    healthy_db(daemon, 1, Duration::from_secs(120)).expect("the database runs on it");
    let mounted = format!("/var/lib/prism/volumes/prism.{}.db.0.pgdata", own.fleet);
    let marker = lab
        .ssh(&node.address, &format!("cat {mounted}/marker"))
        .expect("the marker is still there");
    assert_eq!(marker.trim(), "kept");
    let device = lab
        .ssh(&node.address, &format!("findmnt -n -o SOURCE {mounted}"))
        .expect("findmnt");
    let after = blkid(node, device.trim());
    let uuid = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("UUID="))
            .map(str::to_owned)
    };
    assert_eq!(uuid(&after), uuid(&uuid_before), "the filesystem changed");
}

/// `prism volumes --json` on the test's fleet.
fn volumes_json(file: &Path) -> serde_json::Value {
    let out = common::prism(&["-c", file.to_str().expect("utf-8"), "volumes", "--json"]);
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn a_scaled_down_pod_s_volume_is_kept_and_deleted_only_when_asked() {
    let lab = Lab::load();
    let (t, ()) = one_node(&lab, "s", &db_app(&lab, 2, Some(DURABLE)), |_, _| ());
    let (daemon, node, file) = (&t.daemon, &t.node, &t.file);
    healthy_db(daemon, 2, Duration::from_secs(120)).expect("both instances run");
    let addrs = common::published_addrs(&daemon_state(daemon), "db", "postgres");
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    // Each instance its own rows: 0.. and 1000..
    let acked: Vec<Vec<i64>> = addrs
        .iter()
        .zip([0, 1000])
        .map(|(addr, from)| {
            retry(Duration::from_secs(30), || db::write_rows(addr, from, 50)).expect("rows")
        })
        .collect();

    // Down to one instance: db/1's volume is detached and kept.
    let text = std::fs::read_to_string(file).expect("read fleet.toml");
    std::fs::write(file, text.replace("instances = 2", "instances = 1")).expect("write");
    let kept = retry(Duration::from_secs(90), || {
        let json = volumes_json(file);
        let vols = json["volumes"].as_array().context("volumes")?.clone();
        ensure!(vols.len() == 2, "{vols:?}");
        let one = vols
            .iter()
            .find(|v| v["instance"] == 1)
            .context("db/1's volume")?
            .clone();
        ensure!(
            one["wanted"] == false && one["state"] == "available",
            "{one}"
        );
        ensure!(
            vols.iter()
                .any(|v| v["instance"] == 0 && v["wanted"] == true)
        );
        Ok(one["id"].as_str().context("id")?.to_owned())
    })
    .expect("db/1's volume listed, kept, detached");

    let path = file.to_str().expect("utf-8");
    let delete = |args: &[&str]| {
        let mut all = vec!["-c", path, "volumes", "delete", "db"];
        all.extend(args);
        common::prism(&all)
    };
    let out = delete(&["--instance", "1"]);
    assert_eq!(out.status.code(), Some(2), "without --yes nothing goes");
    assert!(common::text(&out.stdout).contains(&kept));
    let out = delete(&["--yes"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "db/0's volume is still in fleet.toml: {}",
        common::text(&out.stderr)
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let ec2 = runtime.block_on(lab.ec2());
    let exists = |id: &str| {
        runtime
            .block_on(ec2.describe_volumes().volume_ids(id).send())
            .map(|o| !o.volumes().is_empty())
            .unwrap_or(false)
    };
    assert!(exists(&kept), "deleted without --yes");
    let out = delete(&["--instance", "1", "--yes"]);
    assert!(
        out.status.success(),
        "{}{}",
        common::text(&out.stdout),
        common::text(&out.stderr)
    );
    assert!(!exists(&kept), "{kept} still exists");
    assert!(
        daemon
            .events()
            .iter()
            .any(|e| e.kind == "volume.deleted" && e.message.contains(&kept))
    );
    // db/0 and its rows are untouched.
    let found = rows_on(daemon, node).expect("rows read");
    assert!(
        acked.iter().any(|rows| db::lost(rows, &found).is_empty()),
        "db/0 lost acknowledged rows: it has {found:?}"
    );
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn a_database_whose_zone_stays_empty_moves_zones_through_a_snapshot_with_every_row() {
    let _serial = serial();
    let lab = Lab::load();
    let mut own = own("z");
    let a = own.add_in(ZONE).expect("lab/lab add --zone");
    let dir = tempfile::tempdir().expect("tempdir");
    let file = fleet(
        &lab,
        dir.path(),
        &own.fleet,
        "zone_wait = \"10s\"\n",
        &db_app(&lab, 1, Some(DURABLE)),
    );
    let daemon = Daemon::start(&file);
    healthy_db(&daemon, 1, Duration::from_secs(120)).expect("the database runs");
    let addr = db_addr(&daemon, &a).expect("db address");
    let acked =
        retry(Duration::from_secs(30), || db::write_rows(&addr, 0, 300)).expect("rows written");
    let b = own.add_in("eu-north-1b").expect("lab/lab add --zone");
    retry(Duration::from_secs(60), || {
        ensure!(daemon.node_state(&instance_id(&b))? == "ready");
        Ok(())
    })
    .expect("the node in the other zone is ready");

    let killed = Instant::now();
    own.preempt(&a.name).expect("lab/lab preempt");
    let id = healthy_off(&daemon, &a, Duration::from_secs(180)).expect("the database moves zones");
    eprintln!(
        "database healthy in eu-north-1b {:.1} s after its zone's last node was killed (zone_wait 10 s)",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(id, instance_id(&b));
    let found = rows_on(&daemon, &b).expect("rows read");
    let lost = db::lost(&acked, &found);
    assert!(lost.is_empty(), "{} rows lost in the move", lost.len());
    // Both volumes are kept: the old one shown as moved, not wanted.
    let json = volumes_json(&file);
    let vols = json["volumes"].as_array().expect("volumes").clone();
    assert_eq!(vols.len(), 2, "{vols:?}");
    assert!(
        vols.iter()
            .any(|v| v["zone"] == "eu-north-1b" && v["wanted"] == true),
        "{vols:?}"
    );
    assert!(
        vols.iter().any(|v| v["zone"] == ZONE
            && v["wanted"] == false
            && v["state"].as_str().is_some_and(|s| s.contains("moved"))),
        "{vols:?}"
    );
    let events = daemon.events();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "volume.created" && e.message.contains("moved db/0/pgdata")),
        "no move event"
    );
    drop(daemon);
    drop(own);
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn scheduled_snapshots_keep_the_newest_and_never_touch_another_s() {
    use aws_sdk_ec2::types::ResourceType;
    let lab = Lab::load();
    let apps = db_app(
        &lab,
        1,
        Some("size = \"1G\"\nsnapshots = { schedule = \"* * * * *\", keep = 1 }"),
    );
    let (t, ()) = one_node(&lab, "snap", &apps, |_, _| ());
    let (daemon, own, file) = (&t.daemon, &t.own, &t.file);
    healthy_db(daemon, 1, Duration::from_secs(120)).expect("the database runs");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let ec2 = runtime.block_on(lab.ec2());
    let volume = retry(Duration::from_secs(30), || {
        let json = volumes_json(file);
        Ok(json["volumes"][0]["id"]
            .as_str()
            .context("no volume yet")?
            .to_owned())
    })
    .expect("the volume");
    // An earlier scheduled snapshot, and one someone took by hand.
    let snap = |scheduled: bool| {
        let extra: &[(&str, &str)] = if scheduled {
            &[("prism:snapshot", "scheduled")]
        } else {
            &[]
        };
        let tags = db0_tags(&own.fleet, ResourceType::Snapshot, extra);
        runtime
            .block_on(
                ec2.create_snapshot()
                    .volume_id(&volume)
                    .tag_specifications(tags)
                    .send(),
            )
            .expect("CreateSnapshot")
            .snapshot_id()
            .expect("id")
            .to_owned()
    };
    let (old, by_hand) = (snap(true), snap(false));
    let exists = |id: &str| {
        runtime
            .block_on(ec2.describe_snapshots().snapshot_ids(id).send())
            .map(|o| !o.snapshots().is_empty())
            .unwrap_or(false)
    };
    // Each minute's tick takes a snapshot, then prunes the schedule's
    // completed ones past the newest (keep = 1; the one just started is
    // not counted until it completes): by the second tick, the earlier
    // one is gone; the one taken by hand stays.
    retry(Duration::from_secs(200), || {
        ensure!(!exists(&old), "{old} still there");
        Ok(())
    })
    .expect("the older scheduled snapshot is pruned");
    assert!(exists(&by_hand), "a snapshot taken by hand was deleted");
    let events = daemon.events();
    assert!(
        events.iter().any(|e| e.kind == "volume.snapshot"),
        "no snapshot event"
    );
    let json = volumes_json(file);
    assert!(
        json["volumes"][0]["last_snapshot"]["id"]
            .as_str()
            .is_some_and(|s| s.starts_with("snap-")),
        "{json}"
    );
}
