//! `prism reconcile --once` and `prism plan` against the lab: a fleet of the
//! test's own on the lab's real nodes, converged, changed, interrupted and
//! converged again.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::{Lab, http_status};
use prism::store::{LockHolder, Store};

/// The tests share the lab's nodes; one at a time keeps timings sane.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poison| poison.into_inner())
}

fn prism_cmd(fleet: &Path, args: &[&str]) -> Command {
    let file = fleet.to_str().expect("utf-8 path");
    common::prism_command(&[&["-c", file], args].concat())
}

fn reconcile(fleet: &Path) -> Output {
    prism_cmd(fleet, &["reconcile", "--once"])
        .output()
        .expect("run prism")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn converge(fleet: &Path) -> String {
    let out = reconcile(fleet);
    assert_eq!(
        out.status.code(),
        Some(0),
        "reconcile did not converge:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Removes the test fleet's containers from every node when dropped.
struct Fleet<'a> {
    lab: &'a Lab,
    name: String,
    dir: tempfile::TempDir,
}

impl<'a> Fleet<'a> {
    fn new(lab: &'a Lab, tag: &str) -> Fleet<'a> {
        let name = format!("t{}{tag}", std::process::id());
        lab.remove_fleet(&name);
        Fleet {
            lab,
            name,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn file(&self, apps: &str) -> std::path::PathBuf {
        self.lab.own_fleet(self.dir.path(), &self.name, apps)
    }

    fn containers(&self) -> Vec<String> {
        self.lab.fleet_containers(&self.name)
    }
}

impl Drop for Fleet<'_> {
    fn drop(&mut self) {
        self.lab.remove_fleet(&self.name);
    }
}

fn web_app(lab: &Lab, instances: u32, env: &str) -> String {
    format!(
        r#"
[apps.shop]
instances = {instances}
[apps.shop.services.web]
image = "{image}"
port = 8080
hosts = ["shop.lab.test"]
memory = "64M"
env = {{ GREETING = "{env}" }}
[apps.shop.services.worker]
image = "{image}"
command = ["sh", "-c", "while true; do sleep 60; done"]
memory = "32M"
depends_on = ["web"]
"#,
        image = lab.testapp_image
    )
}

/// `(node, service, instance)` of running containers.
fn running(lines: &[String]) -> Vec<(String, String, String)> {
    lines
        .iter()
        .filter(|l| l.ends_with(" running"))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0].to_owned(), f[3].to_owned(), f[4].to_owned())
        })
        .collect()
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn reconcile_once_converges_then_has_nothing_to_do() {
    let _serial = serial();
    let lab = Lab::load();
    let fleet = Fleet::new(&lab, "a");
    let file = fleet.file(&web_app(&lab, 2, "hello"));

    let plan = prism_cmd(&file, &["plan"]).output().expect("plan");
    let plan_text = text(&plan.stdout);
    assert!(plan.status.success(), "{plan_text}{}", text(&plan.stderr));
    assert!(plan_text.contains("+ create shop/0 web"), "{plan_text}");
    assert!(fleet.containers().is_empty(), "plan must change nothing");

    let first = converge(&file);
    assert!(first.contains("+ create shop/1 worker"), "{first}");
    let lines = fleet.containers();
    let up = running(&lines);
    assert_eq!(up.len(), 4, "{lines:#?}");
    // The two instances are spread over two nodes.
    let nodes: std::collections::BTreeSet<_> = up.iter().map(|u| u.0.clone()).collect();
    assert_eq!(nodes.len(), 2, "{lines:#?}");

    // Each web answers on its node's published port.
    let store = Store::open_existing(&fleet.dir.path().join("state.db"))
        .expect("state")
        .expect("exists");
    let webs: Vec<_> = store
        .containers()
        .expect("containers")
        .into_iter()
        .filter(|c| c.service == "web")
        .collect();
    assert_eq!(webs.len(), 2);
    for web in &webs {
        let node = store.node(&web.node_id).expect("node").expect("recorded");
        let port = web
            .ports
            .rsplit_once("->")
            .and_then(|(host, _)| host.rsplit_once(':'))
            .map(|(_, p)| p.to_owned())
            .expect("published port");
        let addr = format!("{}:{port}", node.address);
        assert_eq!(
            http_status(&addr, "/up", Duration::from_secs(5)).expect("web answers"),
            200
        );
    }

    // Nothing left to do: silent, exit 0, nothing changed.
    let again = converge(&file);
    assert_eq!(again, "", "a converged fleet prints nothing");
    assert_eq!(fleet.containers(), lines);

    let plan = prism_cmd(&file, &["plan", "--json"])
        .output()
        .expect("plan");
    let json: serde_json::Value = serde_json::from_slice(&plan.stdout).expect("json");
    assert_eq!(json["actions"], serde_json::json!({}), "{json:#}");
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn spec_change_and_scale_down_replace_and_remove() {
    let _serial = serial();
    let lab = Lab::load();
    let fleet = Fleet::new(&lab, "b");
    converge(&fleet.file(&web_app(&lab, 2, "one")));
    let before = running(&fleet.containers());

    // A new env value is a new spec: web is replaced, worker is not.
    let out = converge(&fleet.file(&web_app(&lab, 2, "two")));
    assert!(out.contains("~ replace shop/0 web"), "{out}");
    assert!(!out.contains("worker"), "{out}");
    let lines = fleet.containers();
    let after = running(&lines);
    assert_eq!(after.len(), 4, "old containers are removed: {lines:#?}");
    assert_eq!(
        before.iter().map(|b| &b.0).collect::<Vec<_>>(),
        after.iter().map(|a| &a.0).collect::<Vec<_>>(),
        "pods stay on their nodes"
    );
    let webs: Vec<_> = lines.iter().filter(|l| l.contains(" web ")).collect();
    let specs: std::collections::BTreeSet<_> = webs
        .iter()
        .map(|l| l.split(' ').nth(5).unwrap_or(""))
        .collect();
    assert_eq!(specs.len(), 1, "one spec of web left: {webs:#?}");

    // Scale down: instance 1 goes.
    let out = converge(&fleet.file(&web_app(&lab, 1, "two")));
    assert!(out.contains("- remove shop/1 web"), "{out}");
    let after = running(&fleet.containers());
    assert_eq!(after.len(), 2);
    assert!(after.iter().all(|a| a.2 == "0"), "{after:?}");

    // The app removed from fleet.toml: everything goes, once the guard
    // against mass change has seen it for its hold (1 s here).
    converge(&fleet.file("[guard]\nhold = \"1s\"\n"));
    assert!(fleet.containers().is_empty());
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn a_reconcile_killed_halfway_converges_without_duplicates() {
    let _serial = serial();
    let lab = Lab::load();
    let fleet = Fleet::new(&lab, "c");
    let file = fleet.file(&web_app(&lab, 2, "x"));
    let mut child = prism_cmd(&file, &["reconcile", "--once"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    // Kill it as soon as the first container exists.
    for line in BufReader::new(stdout).lines() {
        if line.expect("line").contains("+ create shop/") {
            break;
        }
    }
    child.kill().expect("kill");
    let _ = child.wait();
    let partial = running(&fleet.containers());
    assert!(
        partial.len() < 4,
        "killed too late to prove anything: {partial:?}"
    );

    converge(&file);
    let lines = fleet.containers();
    let up = running(&lines);
    assert_eq!(up.len(), 4, "no duplicates, nothing missing: {lines:#?}");
    let mut keys: Vec<_> = up.iter().map(|u| (u.1.clone(), u.2.clone())).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 4, "{lines:#?}");
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn a_second_applier_is_refused_and_told_who_holds_the_lock() {
    let _serial = serial();
    let lab = Lab::load();
    let fleet = Fleet::new(&lab, "d");
    let file = fleet.file(&web_app(&lab, 1, "x"));
    let mut store = Store::open(&fleet.dir.path().join("state.db")).expect("store");
    let holder = LockHolder::this_process("daemon");
    let lease = store
        .try_lock(&holder, Duration::from_secs(60))
        .expect("lock");
    let out = reconcile(&file);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("daemon") && err.contains(&std::process::id().to_string()),
        "{err}"
    );
    assert!(fleet.containers().is_empty(), "the loser changed nothing");
    store.unlock(&lease).expect("unlock");
    converge(&file);
    assert_eq!(running(&fleet.containers()).len(), 2);
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn secrets_reach_the_container_but_no_output_or_event() {
    let _serial = serial();
    let lab = Lab::load();
    let fleet = Fleet::new(&lab, "e");
    let secret = format!("s3cr3t-{}-$(id);'\"", std::process::id());
    let apps = format!(
        r#"
[apps.vault]
[apps.vault.services.web]
image = "{}"
port = 8080
memory = "32M"
secrets = {{ API_TOKEN = {{ env = "PRISM_TEST_API_TOKEN" }} }}
"#,
        lab.testapp_image
    );
    let file = fleet.file(&apps);
    let out = prism_cmd(&file, &["reconcile", "--once"])
        .env("PRISM_TEST_API_TOKEN", &secret)
        .output()
        .expect("run");
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(!all.contains(&secret), "{all}");
    let store = Store::open_existing(&fleet.dir.path().join("state.db"))
        .expect("state")
        .expect("exists");
    for e in store.events(1000).expect("events") {
        assert!(!e.message.contains(&secret), "{}", e.message);
    }
    let c = store
        .containers()
        .expect("containers")
        .into_iter()
        .find(|c| c.app == "vault")
        .expect("vault runs");
    let node = store.node(&c.node_id).expect("node").expect("recorded");
    let env = lab
        .ssh(
            &node.address,
            &format!(
                "docker inspect --format '{{{{range .Config.Env}}}}{{{{println .}}}}{{{{end}}}}' {}",
                c.name
            ),
        )
        .expect("inspect");
    assert!(
        env.lines().any(|l| l == format!("API_TOKEN={secret}")),
        "{env}"
    );

    // Without the variable, nothing is applied and the error names it.
    let out = reconcile(&file);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("PRISM_TEST_API_TOKEN"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn the_daemon_converges_holds_the_lock_and_stops_cleanly_on_sigterm() {
    let _serial = serial();
    let lab = Lab::load();
    let fleet = Fleet::new(&lab, "f");
    let file = fleet.file(&web_app(&lab, 1, "d"));
    let mut daemon = prism_cmd(
        &file,
        &[
            "daemon",
            "--interval",
            "1s",
            "--log-format",
            "json",
            "--no-proxy",
        ],
    )
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn daemon");
    let stderr = daemon.stderr.take().expect("stderr");
    let logs = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let converged = common::retry(Duration::from_secs(60), || {
        let up = running(&fleet.containers());
        anyhow::ensure!(up.len() == 2, "{up:?}");
        Ok(())
    });
    // Meanwhile, cron's run is turned away, naming the daemon.
    let cron = reconcile(&file);
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let status = daemon.wait().expect("wait");
    let logs = logs.join().expect("logs");
    converged.unwrap_or_else(|e| panic!("daemon did not converge: {e:#}\n{logs:#?}"));
    assert_eq!(cron.status.code(), Some(2), "{}", text(&cron.stderr));
    assert!(
        text(&cron.stderr).contains("daemon"),
        "{}",
        text(&cron.stderr)
    );
    assert_eq!(status.code(), Some(0), "{logs:#?}");
    for line in &logs {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
    }
    assert!(
        logs.iter().any(|l| l.contains("daemon stopped")),
        "{logs:#?}"
    );
    // The lock went with it: a run now is allowed (and has nothing to do).
    assert_eq!(converge(&file), "");
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn health_gates_a_replacement_and_an_unhealthy_container_is_restarted() {
    let _serial = serial();
    let lab = Lab::load();
    let fleet = Fleet::new(&lab, "g");
    let app = |version: &str| {
        format!(
            r#"
[apps.api]
[apps.api.services.web]
image = "{}"
port = 8080
memory = "32M"
env = {{ VERSION = "{version}" }}
health = {{ http = "/up", interval = "1s", timeout = "1s", healthy_threshold = 2, unhealthy_threshold = 2 }}
"#,
            lab.testapp_image
        )
    };
    converge(&fleet.file(&app("1")));

    // The new container must pass its checks before the old one goes.
    let out = converge(&fleet.file(&app("2")));
    let replaced = out.find("~ replace api/0 web").expect(&out);
    let removed = out.find("- remove api/0 web").expect(&out);
    assert!(replaced < removed, "{out}");
    assert!(out.contains("spec changed"), "{out}");
    let up = running(&fleet.containers());
    assert_eq!(up.len(), 1, "{up:?}");

    // Make it fail its checks: the next runs restart it.
    let addr = web_address(&fleet);
    http_status(&addr, "/fail", Duration::from_secs(5)).expect("/fail");
    assert_eq!(
        http_status(&addr, "/up", Duration::from_secs(5)).expect("/up"),
        503
    );
    let mut restarted = String::new();
    for _ in 0..6 {
        restarted.push_str(&converge(&fleet.file(&app("2"))));
        if restarted.contains("~ restart api/0 web") {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(restarted.contains("~ restart api/0 web"), "{restarted}");
    // A restart publishes the port anew (ephemeral): read it again.
    converge(&fleet.file(&app("2")));
    let addr = web_address(&fleet);
    common::retry(Duration::from_secs(20), || {
        let s = http_status(&addr, "/up", Duration::from_secs(2))?;
        anyhow::ensure!(s == 200, "/up says {s}");
        Ok(())
    })
    .expect("healthy again after the restart");
}

/// `address:port` of the test fleet's one web container, as last recorded.
fn web_address(fleet: &Fleet) -> String {
    let store = Store::open_existing(&fleet.dir.path().join("state.db"))
        .expect("state")
        .expect("exists");
    let web = store
        .containers()
        .expect("containers")
        .into_iter()
        .find(|c| c.service == "web")
        .expect("web");
    let node = store.node(&web.node_id).expect("node").expect("recorded");
    let port = web
        .ports
        .rsplit_once("->")
        .and_then(|(h, _)| h.rsplit_once(':'))
        .map(|(_, p)| p.to_owned())
        .expect("port");
    format!("{}:{port}", node.address)
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn the_daemon_runs_scheduled_jobs_on_the_apps_node_and_records_how_they_ended() {
    let _serial = serial();
    let lab = Lab::load();
    let fleet = Fleet::new(&lab, "h");
    let apps = format!(
        r#"
[apps.cron]
[apps.cron.services.web]
image = "{image}"
port = 8080
memory = "32M"
env = {{ WHO = "web-env" }}
[apps.cron.jobs.hello]
schedule = "* * * * *"
service = "web"
command = ["sh", "-c", "test \"$WHO\" = web-env && echo hello"]
[apps.cron.jobs.broken]
schedule = "* * * * *"
image = "{image}"
command = ["sh", "-c", "echo broken >&2; exit 3"]
"#,
        image = lab.testapp_image
    );
    let file = fleet.file(&apps);
    let mut daemon = prism_cmd(&file, &["daemon", "--interval", "2s", "--no-proxy"])
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn daemon");
    let state = fleet.dir.path().join("state.db");
    // Jobs tick on the minute: wait for one of each.
    let ended = common::retry(Duration::from_secs(130), || {
        let store = Store::open_existing(&state)?.ok_or_else(|| anyhow::anyhow!("no state"))?;
        let kinds: Vec<(String, String)> = store
            .events(1000)?
            .into_iter()
            .filter(|e| e.kind.starts_with("job."))
            .map(|e| (e.kind, e.message))
            .collect();
        let ok = kinds
            .iter()
            .any(|(k, m)| k == "job.ok" && m.contains("cron/hello"));
        let failed = kinds.iter().any(|(k, m)| {
            k == "job.failed"
                && m.contains("cron/broken")
                && m.contains("exit 3")
                && m.contains("broken")
        });
        anyhow::ensure!(ok && failed, "{kinds:#?}");
        Ok(())
    });
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    let _ = daemon.wait();
    ended.expect("both jobs ran and were recorded");
    // A run is reported and removed by the pass after it ended, whichever
    // applier runs it: after a `reconcile --once`, none that ended is
    // left (one that started on the last tick may still run).
    converge(&file);
    let left: Vec<String> = fleet
        .containers()
        .into_iter()
        .filter(|l| l.contains(".job.") && !l.ends_with(" running"))
        .collect();
    assert!(left.is_empty(), "{left:#?}");
}
