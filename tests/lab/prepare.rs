//! A new tagged instance on the lab (`lab/lab add --fleet`): it is
//! preparing while it pulls the fleet's images, takes a waiting pod once it
//! holds them, and an image that cannot be pulled does not hold it back.
//! And a node that stays unreachable costs one DescribeInstances per pass.
//! Only this test's own nodes are used, and preempted when it ends.

use crate::common;

use std::io::Read;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::{Arc, Mutex};

use common::{Lab, OwnNodes, ProxyPorts, Trust, lab_cmd, text};
use prism::store::{Level, Store};

/// Nodes are added and cut off here: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// This test's fleet on its own nodes, host keys pinned, `endpoint` as
/// the EC2 endpoint, then `lifecycle` and `apps`.
fn fleet_toml(
    lab: &Lab,
    dir: &Path,
    fleet: &str,
    endpoint: Option<&str>,
    lifecycle: &str,
    apps: &str,
) -> PathBuf {
    let rest = format!("{lifecycle}\n{apps}");
    let file = lab.own_nodes_fleet(dir, fleet, Trust::Pin, &ProxyPorts::free(), &rest);
    if let Some(endpoint) = endpoint {
        lab.set_endpoint(&file, endpoint);
    }
    file
}

fn prism(file: &Path, args: &[&str]) -> Output {
    let mut all = vec!["-c", file.to_str().expect("utf-8 path")];
    all.extend_from_slice(args);
    common::prism_command(&all).output().expect("run prism")
}

fn said(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}

fn store(file: &Path) -> Store {
    Store::open_existing(&file.with_file_name("state.db"))
        .expect("state")
        .expect("a state file")
}

fn instance(node: &common::Node) -> String {
    node.instance_id.clone().expect("a registered instance")
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn a_new_node_pulls_the_fleet_s_images_before_it_takes_a_pod_and_a_bad_image_does_not_hold_it() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let lab = Lab::load();
    let mut own = OwnNodes::new(format!("prep{}", std::process::id()));
    // An image only node `a` holds (tagged there, in no registry): the
    // pod that runs it stays on `a`, and a new node fails to pull it.
    let bad = lab.testapp_image.replace("/testapp:", "/only-on-a:");
    // One web pod per node (1200M each, nodes hold 1792M).
    let apps = format!(
        r#"
[apps.web]
instances = 2
[apps.web.services.web]
image = "{}"
port = 8080
memory = "1200M"

[apps.local]
[apps.local.services.web]
image = "{bad}"
memory = "64M"
"#,
        lab.testapp_image
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let file = fleet_toml(&lab, dir.path(), &own.fleet, None, "", &apps);

    // The fleet's first node is taken as it is, and runs web/0 and local/0.
    let a = own.add().expect("lab/lab add --fleet");
    let tag = format!(
        "docker pull -q {img} && docker tag {img} {bad}",
        img = lab.testapp_image
    );
    lab.ssh(&a.address, &tag).expect("tag the local image on a");
    let out = prism(&file, &["reconcile", "--once", "--timeout", "90s"]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(said(&out).contains("cannot place: web/1"), "{}", said(&out));
    let s = store(&file);
    let a_row = s.node(&instance(&a)).expect("read").expect("a recorded");
    assert_eq!(a_row.state.as_str(), "ready");
    assert!(
        s.containers()
            .expect("containers")
            .iter()
            .any(|c| c.node_id == a_row.id && c.app == "local" && c.state == "running"),
        "local/0 runs on a"
    );
    drop(s);

    // A node that joins is preparing: the plan pulls both images there
    // ahead of need, and places nothing on it yet.
    let b = own.add().expect("lab/lab add --fleet");
    let b_id = instance(&b);
    let held = |node: &common::Node| {
        lab.ssh(
            &node.address,
            "docker image ls --format '{{.Repository}}:{{.Tag}}'",
        )
        .expect("docker image ls")
    };
    assert!(!held(&b).contains(&lab.testapp_image), "a fresh node");
    let out = prism(&file, &["plan", "--json"]);
    assert!(out.status.success(), "{}", said(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("plan json");
    let pulls: Vec<(String, bool)> = plan["actions"][&b_id]
        .as_array()
        .unwrap_or_else(|| panic!("no actions on the new node: {plan:#}"))
        .iter()
        .map(|a| {
            (
                a["image"].as_str().unwrap_or("").to_owned(),
                a["prepare"] == true,
            )
        })
        .collect();
    let mut want = vec![(bad.clone(), true), (lab.testapp_image.clone(), true)];
    want.sort();
    assert_eq!(pulls, want, "{plan:#}");
    assert!(
        plan["placements"]
            .as_array()
            .expect("placements")
            .iter()
            .all(|p| p["node"] != b_id.as_str()),
        "{plan:#}"
    );
    assert_eq!(
        store(&file)
            .node(&b_id)
            .expect("read")
            .expect("b")
            .state
            .as_str(),
        "preparing"
    );

    // Reconciling pulls there; the bad image fails, which lets the node go
    // ready all the same, and it takes the waiting pod.
    let out = prism(&file, &["reconcile", "--once", "--timeout", "120s"]);
    let all = said(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("preparing the node): FAILED"), "{all}");
    assert!(held(&b).contains(&lab.testapp_image), "{}", held(&b));
    let s = store(&file);
    assert_eq!(
        s.node(&b_id).expect("read").expect("b").state.as_str(),
        "ready"
    );
    let web1 = s
        .placements()
        .expect("placements")
        .into_iter()
        .find(|p| p.app == "web" && p.instance == 1)
        .expect("web/1 placed");
    assert_eq!(web1.node_id, b_id);
    assert!(
        s.containers()
            .expect("containers")
            .iter()
            .any(|c| c.node_id == b_id && c.app == "web" && c.state == "running"),
        "web/1 runs on the new node"
    );
    assert_eq!(
        s.pull_failures(&b_id)
            .expect("failures")
            .into_iter()
            .collect::<Vec<_>>(),
        std::slice::from_ref(&bad)
    );
    // What happened on the new node, in order: preparing, the pulls (one
    // failed, said so), ready, then the pod.
    let mut events = s.events(10_000).expect("events");
    events.sort_by_key(|e| e.id);
    let on_b: Vec<&prism::store::Event> = events
        .iter()
        .filter(|e| e.node_id.as_deref() == Some(b_id.as_str()) || e.kind == "placement")
        .collect();
    let at = |f: &dyn Fn(&prism::store::Event) -> bool| {
        on_b.iter()
            .position(|e| f(e))
            .unwrap_or_else(|| panic!("{on_b:#?}"))
    };
    let discovered = at(&|e| e.kind == "node.discovered" && e.message.contains("preparing"));
    let failed =
        at(&|e| e.kind == "apply.pull" && e.level == Level::Error && e.message.contains(&bad));
    let pulled = at(&|e| {
        e.kind == "apply.pull" && e.level == Level::Info && e.message.contains(&lab.testapp_image)
    });
    let ready = at(&|e| e.kind == "node.ready");
    let placed = at(&|e| e.kind == "placement" && e.message.contains(&b_id));
    assert!(
        discovered < failed.min(pulled) && failed.max(pulled) < ready && ready < placed,
        "{on_b:#?}"
    );
}

/// A TCP forwarder on a loopback port to the lab's moto that keeps what
/// clients sent, to count EC2 calls.
struct Counting {
    port: u16,
    sent: Arc<Mutex<Vec<u8>>>,
}

impl Counting {
    fn start(target: &str) -> Counting {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let sent = Arc::new(Mutex::new(Vec::new()));
        let keep = sent.clone();
        let target = target.to_owned();
        // Ends with the test process.
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(upstream) = TcpStream::connect(&target) else {
                    continue;
                };
                let (mut from, mut to) =
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                let keep = keep.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 << 10];
                    loop {
                        match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                keep.lock().unwrap().extend_from_slice(&buf[..n]);
                                if std::io::Write::write_all(&mut to, &buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = to.shutdown(Shutdown::Write);
                });
                let (mut back, mut out) = (upstream, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut back, &mut out);
                    let _ = out.shutdown(Shutdown::Write);
                });
            }
        });
        Counting { port, sent }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// DescribeInstances calls made through it so far.
    fn describes(&self) -> usize {
        let sent = self.sent.lock().unwrap();
        let needle = b"Action=DescribeInstances";
        sent.windows(needle.len()).filter(|w| w == needle).count()
    }
}

/// `reconcile --once` with nothing to do is one pass; the DescribeInstances
/// it made.
fn one_pass(file: &Path, counting: &Counting) -> usize {
    let before = counting.describes();
    let out = prism(file, &["reconcile", "--once", "--timeout", "30s"]);
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    // The process has exited: whatever it sent has been read.
    std::thread::sleep(std::time::Duration::from_millis(200));
    counting.describes() - before
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn a_node_that_stays_unreachable_costs_one_describe_instances_per_pass() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let lab = Lab::load();
    let mut own = OwnNodes::new(format!("prepc{}", std::process::id()));
    let [victim, _other] = own.add_many::<2>().expect("lab/lab add --fleet");
    let counting = Counting::start(lab.moto_url.trim_start_matches("http://"));
    let dir = tempfile::tempdir().expect("tempdir");
    // Suspect for long: the passes below keep it so.
    let file = fleet_toml(
        &lab,
        dir.path(),
        &own.fleet,
        Some(&counting.url()),
        "[lifecycle]\nlost_after = 10\nprobe_timeout = \"3s\"\n",
        "",
    );
    let base = one_pass(&file, &counting);
    assert!(base >= 1, "no DescribeInstances seen");
    assert_eq!(one_pass(&file, &counting), base, "a quiet pass");

    lab_cmd(&["partition", &victim.name]).expect("lab/lab partition");
    // Its first miss asks EC2 again (was it terminated?); later ones don't.
    let first = one_pass(&file, &counting);
    let s = store(&file);
    assert_eq!(
        s.node(&instance(&victim))
            .expect("read")
            .expect("victim")
            .state
            .as_str(),
        "suspect"
    );
    drop(s);
    assert_eq!(first, base + 1, "the first miss asks again");
    for _ in 0..2 {
        assert_eq!(
            one_pass(&file, &counting),
            base,
            "an unreachable node's later passes"
        );
    }
}
