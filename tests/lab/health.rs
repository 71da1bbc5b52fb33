//! Prism's health checks against the lab's testapp on a real node: http
//! turns healthy after its threshold and unhealthy after `/fail`, failures
//! in the start period do not count, tcp tells an open port from a closed
//! one, and cmd runs in the container through `docker exec` over SSH.
//!
//! Each test labels its containers with a fleet of its own, so no one
//! else's reconcile touches them, and removes them even when it fails.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::Lab;
use common::prism_ssh::known_hosts_pool;
use prism::cloud::{Lifecycle, Node, Presence};
use prism::config::{Fleet, Service};
use prism::observe::{ContainerState, Health, ProbeLimits, Probed, probe};
use prism::operator::{Observed, check, check_all};
use prism::ssh::Pool;
use prism::store::{HealthBook, Store, Verdict, Writer};

/// A name no one else uses, of characters safe in a shell word.
fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn node(lab: &Lab, i: usize) -> Node {
    let n = &lab.nodes[i % lab.nodes.len()];
    Node {
        id: n.instance_id.clone().unwrap_or_else(|| n.name.clone()),
        name: n.name.clone(),
        address: n.address.clone(),
        port: 22,
        user: common::NODE_USER.into(),
        provider: prism::config::Provider::Ec2,
        zone: Some(n.az.clone()),
        instance_type: None,
        lifecycle: Lifecycle::Spot,
        presence: Presence::Running,
        halted: false,
        launched_at: None,
        memory: None,
        cpu: None,
        tags: BTreeMap::new(),
    }
}

/// A testapp container with Prism's labels (app `hc`, service `web`) in
/// fleet `fleet`, removed when dropped.
struct App<'a> {
    lab: &'a Lab,
    node: Node,
    fleet: String,
    name: String,
}

impl<'a> App<'a> {
    /// `docker run -d` with `extra` options (ports, env) before the image.
    fn run(lab: &'a Lab, node: Node, extra: &str) -> App<'a> {
        let fleet = unique("hc");
        let name = unique("health-test");
        let app = App {
            lab,
            node,
            fleet,
            name,
        };
        let cmd = format!(
            "docker run -d --name {} {extra} --label prism.fleet={} --label prism.app=hc \
             --label prism.service=web --label prism.instance=0 --label prism.spec=abc {}",
            app.name, app.fleet, lab.testapp_image
        );
        lab.ssh(&app.node.address, &cmd)
            .unwrap_or_else(|e| panic!("docker run on {}: {e:#}", app.node.name));
        app
    }

    fn docker(&self, args: &str) {
        self.lab
            .ssh(&self.node.address, &format!("docker {args}"))
            .unwrap_or_else(|e| panic!("docker {args} on {}: {e:#}", self.node.name));
    }

    /// This pass's observation of the node (only this test's fleet).
    async fn observe(&self, pool: &Pool) -> Observed {
        let probed = probe(
            pool,
            &self.node.target(),
            &self.fleet,
            ProbeLimits::default(),
        )
        .await;
        assert!(
            matches!(probed, Probed::Ready { .. }),
            "probe of {}: {probed:?}",
            self.node.name
        );
        Observed {
            node: self.node.clone(),
            probed,
        }
    }

    /// The container as observed now.
    async fn state(&self, pool: &Pool) -> ContainerState {
        match self.observe(pool).await.probed {
            Probed::Ready { containers, .. } => containers
                .into_iter()
                .find(|c| c.name == self.name)
                .unwrap_or_else(|| panic!("{} not observed", self.name)),
            other => panic!("probe: {other:?}"),
        }
    }

    /// A fleet.toml for this fleet with app `hc`'s service `web` as `service`.
    fn fleet(&self, service: &str) -> Fleet {
        let text = format!(
            "[fleet]\nname = \"{}\"\n[discovery]\nprovider = \"ec2\"\n\
             [apps.hc.services.web]\nimage = \"{}\"\n{service}\n",
            self.fleet, self.lab.testapp_image
        );
        prism::config::parse(Path::new("fleet.toml"), &text)
            .unwrap_or_else(|e| panic!("fleet.toml does not validate: {e:?}\n{text}"))
    }
}

impl Drop for App<'_> {
    fn drop(&mut self) {
        let _ = self
            .lab
            .ssh(&self.node.address, &format!("docker rm -f {}", self.name));
    }
}

/// The store the checks write through to, and the applier's memory of
/// them.
fn store() -> (tempfile::TempDir, Writer, HealthBook) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("state.db")).expect("open the store");
    (dir, Writer::start(store), HealthBook::default())
}

async fn events_of(journal: &Writer) -> Vec<prism::store::Event> {
    journal
        .call("read events", |s| s.events(20))
        .await
        .expect("events")
}

fn service(text: &str) -> Service {
    toml::from_str(text).unwrap_or_else(|e| panic!("service {text:?}: {e}"))
}

/// The node port container port 8080 is published on.
fn published_8080(c: &ContainerState) -> u16 {
    c.ports
        .iter()
        .find(|p| p.container_port == 8080 && p.host_ip.is_ipv4())
        .map(|p| p.host_port)
        .expect("8080 is published")
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn http_turns_healthy_after_its_threshold_and_unhealthy_after_failing() {
    let lab = Lab::load();
    let pool = known_hosts_pool(&lab);
    let app = App::run(&lab, node(&lab, 0), "-p 8080");
    let fleet = app.fleet(
        "port = 8080\nhosts = [\"hc.lab.test\"]\n\
         health = { http = \"/up\", interval = \"500ms\", timeout = \"500ms\", healthy_threshold = 2, unhealthy_threshold = 2 }",
    );
    let (_dir, journal, mut book) = store();
    let interval = Duration::from_millis(500);
    let record = |book: &HealthBook, id: &str| book.get(id).cloned().expect("a record");

    let pass = [app.observe(&pool).await];
    let id = match &pass[0].probed {
        Probed::Ready { containers, .. } => containers[0].id.clone(),
        _ => unreachable!("observe asserts Ready"),
    };
    let host_port = published_8080(&app.state(&pool).await);
    // testapp may still be binding its port: the first check may fail,
    // which only delays healthy by a check.
    let verdicts = check_all(&pool, &mut book, &journal, &fleet, &pass).await;
    assert_eq!(verdicts.get(&id), Some(&Health::Starting), "{verdicts:?}");
    let first = record(&book, id.as_str());
    assert_eq!(first.verdict, Verdict::Starting);

    // Not due yet: nothing is checked again.
    let again = check_all(&pool, &mut book, &journal, &fleet, &pass).await;
    assert_eq!(again.get(&id), Some(&Health::Starting));
    assert_eq!(record(&book, id.as_str()), first);

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        tokio::time::sleep(interval).await;
        let v = check_all(&pool, &mut book, &journal, &fleet, &pass).await;
        if v.get(&id) == Some(&Health::Healthy) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never healthy: {:?}",
            record(&book, id.as_str())
        );
    }
    let healthy = record(&book, id.as_str());
    assert_eq!(
        healthy.successes, 2,
        "healthy at the threshold: {healthy:?}"
    );
    assert_eq!(healthy.detail.as_deref(), Some("GET /up: 200"));
    assert_eq!(healthy.last_ok, Some(true));
    let events = events_of(&journal).await;
    assert!(
        events
            .iter()
            .any(|e| e.kind == "container.healthy" && e.message.contains(&app.name)),
        "{events:#?}"
    );

    // Switch the app to failing: one failure holds, two make it unhealthy.
    let status = common::http_status(
        &format!("{}:{host_port}", app.node.address),
        "/fail",
        Duration::from_secs(5),
    )
    .expect("GET /fail");
    assert_eq!(status, 200);
    tokio::time::sleep(interval).await;
    let v = check_all(&pool, &mut book, &journal, &fleet, &pass).await;
    assert_eq!(v.get(&id), Some(&Health::Healthy));
    let once = record(&book, id.as_str());
    assert_eq!((once.failures, once.last_ok), (1, Some(false)));
    assert_eq!(once.detail.as_deref(), Some("GET /up: 503"));
    tokio::time::sleep(interval).await;
    let v = check_all(&pool, &mut book, &journal, &fleet, &pass).await;
    assert_eq!(v.get(&id), Some(&Health::Unhealthy));
    let events = events_of(&journal).await;
    let unhealthy = events
        .iter()
        .find(|e| e.kind == "container.unhealthy")
        .unwrap_or_else(|| panic!("no unhealthy event: {events:#?}"));
    assert!(unhealthy.message.contains("GET /up: 503"), "{unhealthy:?}");
    assert_eq!(unhealthy.app.as_deref(), Some("hc"));

    // After a restart by Prism: starting, and checked again at once.
    assert!(book.reset(id.as_str()).is_some());
    let v = check_all(&pool, &mut book, &journal, &fleet, &pass).await;
    assert_eq!(v.get(&id), Some(&Health::Starting));
    assert_eq!(record(&book, id.as_str()).failures, 1);

    // Stopped: starting, not checked.
    app.docker(&format!("stop -t 1 {}", app.name));
    let stopped = [app.observe(&pool).await];
    let before = record(&book, id.as_str());
    tokio::time::sleep(interval).await;
    let v = check_all(&pool, &mut book, &journal, &fleet, &stopped).await;
    assert_eq!(v.get(&id), Some(&Health::Starting));
    assert_eq!(record(&book, id.as_str()), before);

    // Removed: its record goes.
    app.docker(&format!("rm -f {}", app.name));
    let gone = [app.observe(&pool).await];
    let v = check_all(&pool, &mut book, &journal, &fleet, &gone).await;
    assert!(v.is_empty(), "{v:?}");
    assert!(book.get(id.as_str()).is_none());
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn failures_in_the_start_period_do_not_count() {
    let lab = Lab::load();
    let pool = known_hosts_pool(&lab);
    let app = App::run(&lab, node(&lab, 1), "-p 8080 -e TESTAPP_HEALTH=fail");
    let fleet = app.fleet(
        "port = 8080\n\
         health = { http = \"/up\", interval = \"500ms\", timeout = \"500ms\", unhealthy_threshold = 2, start_period = \"3s\" }",
    );
    let (_dir, journal, mut book) = store();
    let pass = [app.observe(&pool).await];
    let c = app.state(&pool).await;
    let started = c.started_at.expect("started");

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut early = 0;
    loop {
        let v = check_all(&pool, &mut book, &journal, &fleet, &pass).await;
        let r = book.get(c.id.as_str()).cloned().expect("record");
        let at = r.last_check.expect("checked");
        assert_eq!(r.last_ok, Some(false), "{r:?}");
        if at < started + 3_000 {
            early += 1;
            assert_eq!((r.failures, r.verdict), (0, Verdict::Starting), "{r:?}");
        }
        if v.get(&c.id) == Some(&Health::Unhealthy) {
            assert!(
                at >= started + 3_000,
                "unhealthy inside the start period: {r:?}"
            );
            assert_eq!(r.failures, 2);
            break;
        }
        assert!(Instant::now() < deadline, "never unhealthy: {r:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(early >= 1, "no check ran inside the start period");
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn tcp_tells_an_open_port_from_a_closed_or_unpublished_one() {
    let lab = Lab::load();
    let pool = known_hosts_pool(&lab);
    let app = App::run(&lab, node(&lab, 2), "-p 8080 -p 9090");
    let c = app.state(&pool).await;
    let tcp = |port: u16| {
        service(&format!(
            "image = \"x\"\nport = 8080\nhealth = {{ tcp = {port}, timeout = \"2s\" }}"
        ))
    };

    let deadline = Instant::now() + Duration::from_secs(10);
    let open = loop {
        // testapp may still be binding its port.
        let r = check(&pool, &app.node, &c, &tcp(8080)).await;
        if r.passed || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let port = published_8080(&c);
    assert!(open.passed, "{open:?}");
    assert_eq!(
        open.detail,
        format!("TCP 8080: connect {}:{port}: ok", app.node.address)
    );

    // 9090 is published, but nothing listens on it in the container.
    let closed = check(&pool, &app.node, &c, &tcp(9090)).await;
    assert!(!closed.passed, "{closed:?}");
    assert!(closed.detail.contains("refused"), "{closed:?}");

    let unpublished = check(&pool, &app.node, &c, &tcp(7000)).await;
    assert!(!unpublished.passed);
    assert_eq!(
        unpublished.detail,
        "TCP 7000: container port 7000/tcp is not published on the node"
    );

    // A stopped container fails without a connection attempt.
    app.docker(&format!("stop -t 1 {}", app.name));
    let stopped = app.state(&pool).await;
    let r = check(&pool, &app.node, &stopped, &tcp(8080)).await;
    assert!(!r.passed);
    assert_eq!(r.detail, "not running (exited)");
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn cmd_runs_in_the_container_and_passes_on_exit_zero() {
    let lab = Lab::load();
    let pool = known_hosts_pool(&lab);
    let app = App::run(&lab, node(&lab, 0), "");
    let c = app.state(&pool).await;
    let cmd = |argv: &str| {
        service(&format!(
            "image = \"x\"\nhealth = {{ cmd = {argv}, interval = \"5s\", timeout = \"1s\" }}"
        ))
    };

    let r = check(&pool, &app.node, &c, &cmd("[\"true\"]")).await;
    assert_eq!((r.passed, r.detail.as_str()), (true, "true: exit 0"));
    let r = check(&pool, &app.node, &c, &cmd("[\"false\"]")).await;
    assert_eq!((r.passed, r.detail.as_str()), (false, "false: exit 1"));

    // Arguments reach the container as given: spaces, quotes, `;` and `$`
    // are not the node's shell's to interpret.
    let r = check(
        &pool,
        &app.node,
        &c,
        &cmd(r#"["sh", "-c", "echo \"it's $0; broken\" >&2; exit 3", "web"]"#),
    )
    .await;
    assert!(!r.passed);
    assert_eq!(
        r.detail,
        "sh -c echo \"it's $0; broken\" >&2; exit 3 web: exit 3: it's web; broken"
    );
    // The container's own file system: testapp's image has /bin/testapp.
    let r = check(
        &pool,
        &app.node,
        &c,
        &cmd(r#"["test", "-x", "/bin/testapp"]"#),
    )
    .await;
    assert!(r.passed, "{r:?}");

    let r = check(&pool, &app.node, &c, &cmd("[\"no-such-command\"]")).await;
    assert!(!r.passed);
    assert!(r.detail.starts_with("no-such-command: exit 12"), "{r:?}");

    let started = Instant::now();
    let r = check(&pool, &app.node, &c, &cmd("[\"sleep\", \"10\"]")).await;
    assert_eq!(
        (r.passed, r.detail.as_str()),
        (false, "sleep 10: no answer within 1s")
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the timeout holds"
    );
}
