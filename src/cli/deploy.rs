//! `prism deploy`, `prism scale`, `prism rollback`, `prism history`: edits
//! of fleet.toml (rollout/) made here on the operator's box, or through
//! its API with `--remote`. With `--wait`, the command follows the change
//! until it has rolled out, or failed (and was rolled back): exit 0 or 1.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use http::Method;

use super::Failure;
use super::remote::Remote;
use super::table::{age, render};
use crate::config::Config;
use crate::rollout::{self, Change, Outcome, Watch};
use crate::store::{Store, hostname, now_ms};

/// `SERVICE=IMAGE` on the command line.
pub fn service_image(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((svc, img)) if !svc.is_empty() && !img.trim().is_empty() => {
            Ok((svc.to_owned(), img.trim().to_owned()))
        }
        _ => Err(format!(
            "{s:?} is not SERVICE=IMAGE (e.g. web=registry.example.com/blog:1.5)"
        )),
    }
}

/// Who makes an edit from this machine: `user@host`.
fn who() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{}", hostname())
}

/// Makes `change` of `app` on this box's fleet.toml; with `wait`, follows
/// it for that long.
pub fn local(
    config: &Config,
    app: &str,
    change: &Change,
    wait: Option<Duration>,
) -> Result<(), Failure> {
    let state = config.state_path();
    let who = who();
    let recorded = rollout::make(&config.file, &state, app, change, &who)?;
    let Some(timeout) = wait else {
        println!(
            "{app}: {} (change #{}); the applier rolls it out at its next pass",
            recorded.change, recorded.id
        );
        return Ok(());
    };
    println!(
        "{app}: {} (change #{}); waiting up to {} for it to roll out",
        recorded.change,
        recorded.id,
        humantime::format_duration(timeout)
    );
    let watch = Watch {
        file: config.file.clone(),
        state,
        app: app.to_owned(),
        timeout,
        who,
    };
    let outcome = super::block_on(async { Ok(watch.wait(&recorded).await?) })?;
    report(app, &outcome)
}

/// The same through the API at `remote`.
pub async fn remote(
    remote: &Remote,
    app: &str,
    change: &Change,
    wait: Option<Duration>,
) -> Result<(), Failure> {
    let mut body = match change {
        Change::Deploy(images) => serde_json::json!({
            "services": images
                .iter()
                .map(|(svc, img)| (svc.clone(), serde_json::Value::from(img.as_str())))
                .collect::<serde_json::Map<_, _>>(),
        }),
        Change::Scale(n) => serde_json::json!({ "instances": n }),
        Change::Rollback => serde_json::json!({}),
    };
    let verb = match change {
        Change::Deploy(_) => "deploy",
        Change::Scale(_) => "scale",
        Change::Rollback => "rollback",
    };
    if let Some(timeout) = wait {
        body["wait"] = true.into();
        body["timeout"] = format!("{}s", timeout.as_secs().max(1)).into();
    }
    let app_path: String = form_urlencoded::byte_serialize(app.as_bytes()).collect();
    let answer = remote
        .call(
            Method::POST,
            &format!("/v1/apps/{app_path}/{verb}"),
            Some(body),
            wait.unwrap_or_default(),
        )
        .await?;
    let change = &answer["change"];
    println!(
        "{app}: {} (change #{})",
        change["change"].as_str().unwrap_or("?"),
        change["id"]
    );
    match answer.get("result") {
        None => Ok(()),
        Some(result) => {
            let outcome: Outcome = serde_json::from_value(result.clone())?;
            report(app, &outcome)
        }
    }
}

/// Says how a waited-for change ended; exit 1 unless it rolled out.
fn report(app: &str, outcome: &Outcome) -> Result<(), Failure> {
    match outcome {
        Outcome::Done => {
            println!("{app}: rolled out: every instance runs it, healthy and routed");
            Ok(())
        }
        Outcome::Failed { why } => {
            eprintln!("{app}: did not roll out: {why}; the change stays in fleet.toml");
            Err(Failure::Reported(1))
        }
        Outcome::RolledBack { why, id, settled } => {
            let state = if *settled {
                "the previous version runs again"
            } else {
                "the previous version is not running again yet"
            };
            eprintln!("{app}: did not roll out: {why}; rolled back (change #{id}): {state}");
            Err(Failure::Reported(1))
        }
    }
}

pub fn history(state: &Path, app: Option<&str>, json: bool) -> Result<(), Failure> {
    let changes = match Store::open_read_only(state)? {
        Some(store) => store.history(app, 100)?,
        None => Vec::new(),
    };
    print_history(&changes, json)
}

/// The same through the API at `remote`.
pub async fn remote_history(remote: &Remote, app: Option<&str>, json: bool) -> Result<(), Failure> {
    let query = match app {
        Some(app) => format!(
            "?app={}",
            form_urlencoded::byte_serialize(app.as_bytes()).collect::<String>()
        ),
        None => String::new(),
    };
    let answer = remote
        .call(
            Method::GET,
            &format!("/v1/history{query}"),
            None,
            Duration::ZERO,
        )
        .await?;
    let changes: Vec<crate::store::Change> = serde_json::from_value(answer)?;
    print_history(&changes, json)
}

fn print_history(changes: &[crate::store::Change], json: bool) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, &changes)?;
        writeln!(out)?;
        return Ok(());
    }
    if changes.is_empty() {
        writeln!(out, "no change recorded")?;
        return Ok(());
    }
    let now = now_ms();
    let rows: Vec<Vec<String>> = changes
        .iter()
        .map(|c| {
            vec![
                format!("#{}", c.id),
                age(now, c.at),
                c.app.clone(),
                c.who.clone(),
                c.change.clone(),
            ]
        })
        .collect();
    out.write_all(render(&["ID", "AGO", "APP", "WHO", "CHANGE"], &rows).as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_image_arguments() {
        assert_eq!(
            service_image("web=reg/blog:1.5"),
            Ok(("web".into(), "reg/blog:1.5".into()))
        );
        for bad in ["web", "=img", "web=", "web= "] {
            assert!(service_image(bad).is_err(), "{bad}");
        }
    }
}
