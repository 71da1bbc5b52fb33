//! A daemon publishes each pass's plan in the state store, and a dashboard
//! attached to it (another process, reading only the store) shows it on
//! its plan screen: the actions on a node of this test's own fleet (`lab/lab
//! add --fleet`), and a pod no node can hold. Needs the lab (`lab/lab up`).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::{Lab, OwnNodes, ProxyPorts, Trust};
use prism::store::{PublishedPlan, Store};
use prism::tui::app::{App, Mode, Screen};
use prism::tui::data::{DesiredPods, Snapshot};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

/// This test's fleet on its own nodes, with one app that fits and one
/// that fits no node.
fn fleet_toml(lab: &Lab, dir: &Path, fleet: &str) -> PathBuf {
    let apps = format!(
        r#"
[apps.small.services.web]
image = "{image}"
port = 8080
memory = "32M"
[apps.huge]
instances = 2
[apps.huge.services.web]
image = "{image}"
memory = "1000M"
"#,
        image = lab.testapp_image
    );
    lab.own_nodes_fleet(dir, fleet, Trust::KnownHosts, &ProxyPorts::free(), &apps)
}

/// Stops the daemon (SIGTERM) however the test ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// The attached dashboard's plan screen, drawn from the store alone.
fn attached_screen(store: &Store, fleet: &str) -> Result<String> {
    let snap = Snapshot::load(store)?;
    let lock = snap.lock.clone().context("no daemon holds the lock")?;
    let now = prism::store::now_ms();
    let mut app = App::new(
        fleet.to_owned(),
        Mode::Attached(lock),
        DesiredPods::default(),
        now,
    );
    app.set_data(snap);
    app.screen = Screen::Plan;
    let mut t = Terminal::new(TestBackend::new(120, 30))?;
    t.draw(|f| prism::tui::ui::draw(f, &mut app))?;
    let buf = t.backend().buffer();
    let mut text = String::new();
    for y in 0..buf.area.height {
        for x in 0..buf.area.width {
            text.push_str(buf[(x, y)].symbol());
        }
        text.push('\n');
    }
    Ok(text)
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn a_daemons_plan_reaches_an_attached_dashboard() -> Result<()> {
    let lab = Lab::load();
    let fleet = format!("dashplan{}", std::process::id());
    // Dropped in reverse: the daemon stops before the node goes.
    let mut nodes = OwnNodes::new(fleet.clone());
    let node = nodes.add()?;
    let node_id = node.instance_id.clone().context("own node has no id")?;
    let dir = tempfile::tempdir()?;
    let config = fleet_toml(&lab, dir.path(), &fleet);
    let state = dir.path().join("state.db");
    let config_arg = config.display().to_string();
    let _daemon = Daemon(
        common::prism_command(&[
            "-c",
            &config_arg,
            "daemon",
            "--no-proxy",
            "--interval",
            "1s",
        ])
        .spawn()?,
    );
    // Every plan published, read as an attached reader does, often enough
    // to see the first pass's before the next replaces it.
    let mut seen: Vec<PublishedPlan> = Vec::new();
    let start = Instant::now();
    let converged = loop {
        if start.elapsed() > Duration::from_secs(120) {
            bail!("no converged plan after 120s; seen: {seen:#?}");
        }
        std::thread::sleep(Duration::from_millis(100));
        let Some(store) = Store::open_existing(&state)? else {
            continue;
        };
        let Some(plan) = store.last_plan()? else {
            continue;
        };
        if seen.last().is_some_and(|p| p.at == plan.at) {
            continue;
        }
        seen.push(plan.clone());
        // The pass that created small/0 may come and go between two reads;
        // the store's placement says it happened.
        let created = store
            .placements()?
            .iter()
            .any(|p| p.app == "small" && p.node_id == node_id);
        if created && plan.plan.nodes.is_empty() && plan.error.is_none() {
            break plan;
        }
    };
    ensure!(converged.plan.unplaceable[0].line.contains("cannot place"));
    // The row is replaced by each pass: a later pass shows up in turn.
    let later = Instant::now();
    while seen.last().is_some_and(|p| p.at == converged.at) {
        ensure!(
            later.elapsed() < Duration::from_secs(30),
            "no pass after {converged:#?}"
        );
        std::thread::sleep(Duration::from_millis(100));
        if let Some(plan) = Store::open(&state)?.last_plan()?
            && plan.at != converged.at
        {
            seen.push(plan);
        }
    }
    // The pod no node can hold is in every pass's plan.
    ensure!(
        seen.iter().filter(|p| p.error.is_none()).all(|p| p
            .plan
            .unplaceable
            .iter()
            .any(|u| u.app == "huge")),
        "{seen:#?}"
    );
    let store = Store::open(&state)?;
    let screen = attached_screen(&store, &fleet)?;
    ensure!(screen.contains("plan of the last pass, "), "{screen}");
    ensure!(screen.contains("! cannot place: huge/1"), "{screen}");
    ensure!(screen.contains("operator: daemon pid"), "{screen}");
    ensure!(screen.contains("1 unplaceable"), "{screen}");
    Ok(())
}
