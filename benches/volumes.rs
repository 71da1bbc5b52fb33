//! Durable volumes on the lab: how fast a database on an EBS volume (the
//! lab's stand-in) comes back after its node dies, and what a spot notice
//! costs it.
//!
//! Two nodes of the benchmark's own fleet in one zone, PostgreSQL from
//! Debian's packages with its data on a 1 GiB durable volume, `prism
//! daemon` with default settings, and a client committing one row after
//! another all along. Ten times: `lab/lab preempt` the database's node and
//! measure the seconds from the kill until Prism's checks find the
//! database healthy on the other node; then check that every row the
//! server acknowledged is there, and `lab/lab add` a replacement in the
//! zone. Prints p50 and max. Then a spot notice on the database's node:
//! the longest time without an acknowledged write, and how many
//! acknowledged writes were lost. Last, a zone move: `[lifecycle]
//! zone_wait = "10s"`, the database's node is the last of its zone, a
//! node waits in another; kill it and measure until the database is
//! healthy in the other zone with every row.
//!
//! Each run uses 14 of the lab's eu-north-1a addresses (50) and one of
//! eu-north-1b's.
//!
//!     cargo bench --profile dev --bench volumes      (or: make bench-volumes)

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use common::{Lab, LoggedDaemon, Node, OwnNodes, ProxyPorts, Trust, lab_cmd, retry};

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/db.rs"]
mod db;
use prism::store::Store;

const KILLS: usize = 10;
const ZONE: &str = "eu-north-1a";

fn main() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lab = Lab::load();
    let fleet = format!("volbench{}", std::process::id());
    let mut own = OwnNodes::new(fleet.clone());
    own.add_in(ZONE)?;
    own.add_in(ZONE)?;
    let dir = tempfile::tempdir()?;
    let kills: usize = std::env::var("VOLUMES_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(KILLS);
    let logs = root.join("target").join("bench-volumes");
    std::fs::create_dir_all(&logs)?;
    let app = format!(
        r#"
[apps.db.volumes.pgdata]
size = "1G"
[apps.db.services.postgres]
image = "{}"
port = 5432
memory = "256M"
volumes = ["pgdata:/var/lib/postgresql/data"]
health = {{ tcp = 5432, interval = "1s", timeout = "1s", start_period = "90s" }}
"#,
        lab.postgres_image
    );
    // Default settings but for the lab's stand-in metadata service.
    let rest = format!("[lifecycle]\nmetadata_url = \"http://127.0.0.1:1338\"\n{app}");
    let file = lab.own_nodes_fleet(dir.path(), &fleet, Trust::Pin, &ProxyPorts::free(), &rest);
    let state = dir.path().join("state.db");
    println!(
        "volumes benchmark: fleet {fleet}, 2 nodes in {ZONE}, PostgreSQL on a 1 GiB durable volume, default [lifecycle] settings"
    );
    let mut daemon = LoggedDaemon::start(&file, &logs.join("daemon.log"))?;
    healthy_on(&state, None, Duration::from_secs(180))?;
    let writer = db::Writer::start(&state, "db", "postgres", 0);
    let mut times = Vec::new();
    let mut checked = 0;
    for round in 1..=kills {
        let victim = own.by_instance(&on_of(&state)?)?;
        std::thread::sleep(Duration::from_secs(2));
        let killed = Instant::now();
        own.preempt(&victim.name)?;
        let to = healthy_on(&state, Some(&victim), Duration::from_secs(180))?;
        let took = killed.elapsed();
        times.push(took);
        let node = own.by_instance(&to)?;
        let rows = rows_on(&state, &node)?;
        checked = rows.len();
        println!(
            "  kill {round:>2}: {} killed; database healthy on {} after {:.2} s, {} rows there",
            victim.name,
            node.name,
            took.as_secs_f64(),
            rows.len()
        );
        own.add_in(ZONE)?;
    }
    // A spot notice, two minutes ahead: stop before start.
    let before = writer.stop();
    let found = rows_on(&state, &own.by_instance(&on_of(&state)?)?)?;
    let lost_in_kills = db::lost(&before.acked, &found);
    let writer = db::Writer::start(&state, "db", "postgres", 10_000_000);
    std::thread::sleep(Duration::from_secs(3));
    let noticed = own.by_instance(&on_of(&state)?)?;
    let at = Instant::now();
    lab_cmd(&["notice", &noticed.name])?;
    let to = healthy_on(&state, Some(&noticed), Duration::from_secs(180))?;
    let moved = at.elapsed();
    std::thread::sleep(Duration::from_secs(5));
    let during = writer.stop();
    let found = rows_on(&state, &own.by_instance(&to)?)?;
    let lost_in_notice = db::lost(&during.acked, &found);
    daemon.stop();

    // A zone move: the noticed node goes, the database's node is then the
    // zone's last; a node waits in another zone.
    own.preempt(&noticed.name)?;
    let zoned = format!(
        "[lifecycle]\nmetadata_url = \"http://127.0.0.1:1338\"\nzone_wait = \"10s\"\n{app}"
    );
    let file = lab.own_nodes_fleet(dir.path(), &fleet, Trust::Pin, &ProxyPorts::free(), &zoned);
    let mut daemon = LoggedDaemon::start(&file, &logs.join("daemon-zone.log"))?;
    let last = own.by_instance(&healthy_on(&state, None, Duration::from_secs(120))?)?;
    let other = own.add_in("eu-north-1b")?;
    wait_ready(&state, other.instance_id.as_deref().unwrap_or_default())?;
    let writer = db::Writer::start(&state, "db", "postgres", 20_000_000);
    std::thread::sleep(Duration::from_secs(3));
    let before_move = writer.stop();
    fill(&state, &last, FILL_MIB)?;
    let size = data_size(&state, &last)?;
    let killed = Instant::now();
    own.preempt(&last.name)?;
    healthy_on(&state, Some(&last), Duration::from_secs(300))?;
    let zone_move = killed.elapsed();
    let found = rows_on(&state, &other)?;
    let lost_in_move = db::lost(&before_move.acked, &found);
    daemon.stop();

    times.sort();
    let (Some(p50), Some(max)) = (times.get(times.len() / 2), times.last()) else {
        bail!("no kill measured");
    };
    println!(
        "kill → database healthy elsewhere with every acknowledged write: p50 {:.2} s, max {:.2} s over {} kills (targets: p50 ≤ 15 s, max ≤ 30 s)",
        p50.as_secs_f64(),
        max.as_secs_f64(),
        times.len()
    );
    println!(
        "  {} writes acknowledged through the kills, {} lost; {checked} rows at the end",
        before.acked.len(),
        lost_in_kills.len()
    );
    println!(
        "spot notice → database healthy on the other node after {:.2} s; longest time without an acknowledged write {:.2} s; {} writes acknowledged, {} lost (target 0)",
        moved.as_secs_f64(),
        during.longest_gap.as_secs_f64(),
        during.acked.len(),
        lost_in_notice.len()
    );
    println!(
        "zone move of the 1 GiB volume ({size} of data): zone's last node killed → database healthy in the other zone after {:.2} s, of which zone_wait 10 s; {} rows acknowledged before, {} lost",
        zone_move.as_secs_f64(),
        before_move.acked.len(),
        lost_in_move.len()
    );
    ensure!(
        lost_in_kills.is_empty() && lost_in_notice.is_empty() && lost_in_move.is_empty(),
        "acknowledged writes lost"
    );
    Ok(())
}

/// Waits until node `id` is ready.
fn wait_ready(state: &Path, id: &str) -> Result<()> {
    retry(Duration::from_secs(90), || {
        let node = Store::open_existing(state)?
            .context("no state file")?
            .node(id)?
            .context("not recorded yet")?;
        ensure!(
            node.state.as_str() == "ready",
            "{id} is {}",
            node.state.as_str()
        );
        Ok(())
    })
}

/// About this much incompressible data goes into the database before the
/// zone move, so that the snapshot copies something (`VOLUMES_FILL_MIB`);
/// with its WAL it must fit the 1 GiB volume.
const FILL_MIB: u64 = 300;

/// Writes about `mib` MiB of random bytes into a table of their own.
fn fill(state: &Path, node: &Node, mib: u64) -> Result<()> {
    let mib = std::env::var("VOLUMES_FILL_MIB")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(mib);
    let (_, mut client) = db::client_of(state, "db", "postgres", Some(&node.address))?;
    client.batch_execute(
        "CREATE TABLE IF NOT EXISTS fill (i bigint, b bytea);
         ALTER TABLE fill ALTER COLUMN b SET STORAGE EXTERNAL;",
    )?;
    // 1 MiB a statement: 128 rows of 8 KiB from gen_random_bytes-free
    // sources (md5 of random, decoded), uncompressed.
    for _ in 0..mib {
        client.batch_execute(
            "INSERT INTO fill SELECT g, decode(string_agg(md5(random()::text), ''), 'hex')
             FROM generate_series(1, 128) g, generate_series(1, 512) h GROUP BY g",
        )?;
    }
    Ok(())
}

/// The database's size on disk, as PostgreSQL counts it.
fn data_size(state: &Path, node: &Node) -> Result<String> {
    let (_, mut client) = db::client_of(state, "db", "postgres", Some(&node.address))?;
    let row = client.query_one("SELECT pg_size_pretty(pg_database_size('postgres'))", &[])?;
    Ok(row.get(0))
}

/// The node pod db/0 is placed on.
fn on_of(state: &Path) -> Result<String> {
    Store::open_existing(state)?
        .context("no state file yet")?
        .placements()?
        .into_iter()
        .find(|p| p.app == "db" && p.instance == 0)
        .map(|p| p.node_id)
        .context("db/0 not placed")
}

/// Waits until db/0 is healthy on its placed node, which is not `off`.
fn healthy_on(state: &Path, off: Option<&Node>, limit: Duration) -> Result<String> {
    let started = Instant::now();
    loop {
        let found = (|| -> Result<Option<String>> {
            let on = on_of(state)?;
            if off.is_some_and(|n| n.instance_id.as_deref() == Some(on.as_str())) {
                return Ok(None);
            }
            let store = Store::open_existing(state)?.context("no state file")?;
            let healthy = store
                .health_records()?
                .into_iter()
                .any(|r| r.app == "db" && r.node_id == on && r.verdict.as_str() == "healthy");
            Ok(healthy.then_some(on))
        })();
        if let Ok(Some(on)) = found {
            return Ok(on);
        }
        if started.elapsed() > limit {
            bail!("db/0 not healthy elsewhere within {limit:?}: {found:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every row of the database on `node`.
fn rows_on(state: &Path, node: &Node) -> Result<BTreeSet<i64>> {
    retry(Duration::from_secs(60), || {
        db::rows_on(state, "db", "postgres", &node.address)
    })
}
