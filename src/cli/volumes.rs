//! `prism volumes`: the fleet's volumes as the applier's last pass saw
//! them, and `prism volumes delete`, the only way Prism deletes data: one
//! request per volume in the state store, carried out by the applier (a
//! daemon or dashboard at once, a cron `reconcile --once` at its next run).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::Failure;
use super::table::{opt, render};
use crate::config::Config;
use crate::store::{
    NewRequest, RequestKind, RequestState, Store, VolumeKind, VolumeLine, VolumeLines,
};

/// The volumes the last pass saw; `None` when none has been published.
fn published(store: &Store) -> Result<Option<(i64, VolumeLines)>, Failure> {
    Ok(store.last_plan()?.map(|p| (p.at, p.volumes)))
}

pub fn list(config: &Config, json: bool) -> Result<(), Failure> {
    let Some(store) = Store::open_existing(&config.state_path())? else {
        return not_reconciled(json);
    };
    let Some((at, lines)) = published(&store)? else {
        return not_reconciled(json);
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&lines)?);
        return Ok(());
    }
    let names = node_names(&store)?;
    let now = crate::store::now_ms();
    let rows = rows(
        &lines,
        |id| names.get(id).cloned().unwrap_or_else(|| id.to_owned()),
        now,
    );
    let age = super::table::age(now, at);
    if rows.is_empty() {
        println!("no volumes (as the pass {age} ago saw them)");
    } else {
        print!("{}", render(&HEADER, &rows));
        println!(
            "\nas the pass {age} ago saw them; `prism volumes delete APP` deletes those no longer wanted"
        );
    }
    if lines.ebs_unlisted {
        println!(
            "EC2 could not list the fleet's EBS volumes in that pass: durable volumes are missing above"
        );
    }
    Ok(())
}

/// The columns of the volumes table (`prism volumes`, the dashboard).
pub(crate) const HEADER: [&str; 10] = [
    "POD", "VOLUME", "KIND", "SIZE", "ZONE", "NODE", "STATE", "WANTED", "SNAPSHOT", "ID",
];

/// The volumes as table rows, nodes by name.
pub(crate) fn rows(
    lines: &VolumeLines,
    node_name: impl Fn(&str) -> String,
    now: i64,
) -> Vec<Vec<String>> {
    lines
        .volumes
        .iter()
        .map(|v| {
            vec![
                format!("{}/{}", v.app, v.instance),
                v.volume.clone(),
                v.kind.as_str().to_owned(),
                v.size_gib
                    .map_or_else(|| "-".to_owned(), |g| format!("{g}G")),
                opt(v.zone.as_deref()),
                v.node.as_deref().map_or_else(|| "-".to_owned(), &node_name),
                v.state.clone(),
                if v.wanted { "yes" } else { "no: kept" }.to_owned(),
                match &v.last_snapshot {
                    Some(s) => match s.at {
                        Some(at) => format!("{} ago, {}", super::table::age(now, at), s.state),
                        None => s.state.clone(),
                    },
                    None => "-".to_owned(),
                },
                v.id.clone(),
            ]
        })
        .collect()
}

fn not_reconciled(json: bool) -> Result<(), Failure> {
    if json {
        println!("{}", serde_json::to_string_pretty(&VolumeLines::default())?);
    } else {
        println!("no volumes known: this fleet has not been reconciled yet");
    }
    Ok(())
}

fn node_names(store: &Store) -> Result<BTreeMap<String, String>, Failure> {
    Ok(store.nodes()?.into_iter().map(|n| (n.id, n.name)).collect())
}

/// What `prism volumes delete` asks for.
pub struct DeleteArgs<'a> {
    pub app: &'a str,
    pub instance: Option<u32>,
    pub yes: bool,
    pub wait: Duration,
}

pub fn delete(config: &Config, args: &DeleteArgs<'_>) -> Result<(), Failure> {
    let Some(store) = Store::open_existing(&config.state_path())? else {
        eprintln!("error: this fleet has not been reconciled yet: it has no volumes");
        return Err(Failure::Reported(1));
    };
    let Some((_, lines)) = published(&store)? else {
        eprintln!("error: no pass has listed the fleet's volumes yet");
        return Err(Failure::Reported(1));
    };
    let chosen: Vec<&VolumeLine> = lines
        .volumes
        .iter()
        .filter(|v| v.app == args.app && args.instance.is_none_or(|i| i == v.instance))
        .collect();
    let whose = match args.instance {
        Some(i) => format!("{}/{i}", args.app),
        None => args.app.to_owned(),
    };
    if chosen.is_empty() {
        eprintln!("error: the last pass saw no volume of {whose}");
        if lines.ebs_unlisted {
            eprintln!(
                "(EC2 could not list EBS volumes in that pass: try again after the next one)"
            );
        }
        return Err(Failure::Reported(1));
    }
    let wanted: Vec<&&VolumeLine> = chosen.iter().filter(|v| v.wanted).collect();
    if !wanted.is_empty() {
        for v in &wanted {
            eprintln!(
                "error: {}/{}/{} is still in fleet.toml",
                v.app, v.instance, v.volume
            );
        }
        eprintln!(
            "remove [apps.{}] (or lower its instances) and let a pass run before deleting its data",
            args.app
        );
        return Err(Failure::Reported(2));
    }
    for v in &chosen {
        println!("{}", describe(v));
    }
    if !args.yes {
        eprintln!(
            "these {} volumes and everything on them would be deleted, for good: add --yes to do it",
            chosen.len()
        );
        return Err(Failure::Reported(2));
    }
    let by = format!("prism volumes delete (pid {})", std::process::id());
    let mut asked = Vec::new();
    for v in &chosen {
        let id = store.add_request(&NewRequest {
            kind: RequestKind::DeleteVolume,
            node_id: match v.kind {
                VolumeKind::Durable => None,
                VolumeKind::Local | VolumeKind::Image => v.node.clone(),
            },
            container: Some(v.id.clone()),
            by: by.clone(),
        })?;
        asked.push(id);
    }
    wait_for(&store, &asked, args.wait)
}

fn describe(v: &VolumeLine) -> String {
    let size = v.size_gib.map(|g| format!(", {g} GiB")).unwrap_or_default();
    format!(
        "{}/{}/{}: {} volume {}{size}",
        v.app,
        v.instance,
        v.volume,
        v.kind.as_str(),
        v.id
    )
}

/// Waits for the applier's answers; what is still pending is done by the
/// next applier to run.
fn wait_for(store: &Store, ids: &[i64], wait: Duration) -> Result<(), Failure> {
    let started = Instant::now();
    loop {
        let requests = store.requests(1000)?;
        let mine: Vec<_> = requests.iter().filter(|r| ids.contains(&r.id)).collect();
        let finished = mine
            .iter()
            .filter(|r| matches!(r.state, RequestState::Done | RequestState::Failed))
            .count();
        if finished == ids.len() || started.elapsed() >= wait {
            let mut failed = false;
            for r in &mine {
                let result = r.result.as_deref().unwrap_or("");
                match r.state {
                    RequestState::Done => println!("{result}"),
                    RequestState::Failed => {
                        failed = true;
                        eprintln!("error: {result}");
                    }
                    RequestState::Pending | RequestState::Running => println!(
                        "request {}: not done yet; the applier (daemon, dashboard or the next `prism reconcile --once`) carries it out",
                        r.id
                    ),
                }
            }
            return if failed {
                Err(Failure::Reported(1))
            } else {
                Ok(())
            };
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
