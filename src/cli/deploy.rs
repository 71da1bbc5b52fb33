//! `prism deploy`, `prism scale`, `prism rollback`, `prism history`: edits
//! of fleet.toml that keep its comments and layout, each checked before it
//! is written, written in one step, and recorded (who, when, the file
//! before and after) so that a rollback can put the app back. The applier
//! (a daemon or dashboard) picks the edit up as it does a hand edit; a
//! cron `reconcile --once` at its next run.

use std::io::Write;
use std::path::Path;

use super::Failure;
use super::table::{age, render};
use crate::config::{self, ConfigError, Edit, apply_edit};
use crate::store::{Store, hostname, now_ms};

/// How often an edit is tried again when the file changed under it.
const TRIES: usize = 3;

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

/// Makes `edit` on `file` and records it in the state at `state`; the id
/// of the change.
pub fn edit(file: &Path, state: &Path, edit: &Edit, change: &str) -> Result<i64, Failure> {
    let (before, after) = write_edit(file, edit)?;
    let store = Store::open(state)?;
    Ok(store.record_change(now_ms(), edit.app(), &who(), change, &before, &after)?)
}

/// Reads, edits, checks and writes fleet.toml in place: written only when
/// the result is a valid fleet, and only if the file still holds what was
/// read (a hand edit meanwhile is never lost: the edit is made again on
/// it). The text before and after.
fn write_edit(file: &Path, edit: &Edit) -> Result<(String, String), Failure> {
    let read = |f: &Path| {
        std::fs::read_to_string(f).map_err(|source| ConfigError::Read {
            file: f.to_path_buf(),
            source,
        })
    };
    for _ in 0..TRIES {
        let before = read(file)?;
        let after = apply_edit(&before, edit).map_err(Failure::Edit)?;
        config::parse(file, &after)
            .map_err(|invalid| Failure::Config(ConfigError::Invalid(invalid)))?;
        let tmp = file.with_file_name(format!(
            ".{}.prism-edit",
            file.file_name()
                .map_or_else(|| "fleet.toml".into(), |n| n.to_string_lossy())
        ));
        {
            let mut f = std::fs::File::create(&tmp)?;
            if let Ok(meta) = std::fs::metadata(file) {
                f.set_permissions(meta.permissions())?;
            }
            f.write_all(after.as_bytes())?;
            f.sync_all()?;
        }
        if read(file)? != before {
            let _ = std::fs::remove_file(&tmp);
            continue;
        }
        std::fs::rename(&tmp, file)?;
        return Ok((before, after));
    }
    Err(Failure::Conflict(format!(
        "{} changed under the edit {TRIES} times in a row; nothing was written",
        file.display()
    )))
}

pub fn deploy(
    file: &Path,
    state: &Path,
    app: &str,
    images: &[(String, String)],
) -> Result<(), Failure> {
    let change: Vec<String> = images.iter().map(|(s, i)| format!("{s}={i}")).collect();
    let change = change.join(" ");
    let id = edit(
        file,
        state,
        &Edit::Images {
            app: app.to_owned(),
            images: images.to_vec(),
        },
        &change,
    )?;
    println!("{app}: {change} (change #{id}); the applier rolls it out at its next pass");
    Ok(())
}

pub fn scale(file: &Path, state: &Path, app: &str, instances: u32) -> Result<(), Failure> {
    let change = format!("instances={instances}");
    let id = edit(
        file,
        state,
        &Edit::Scale {
            app: app.to_owned(),
            instances,
        },
        &change,
    )?;
    println!("{app}: {change} (change #{id})");
    Ok(())
}

/// Puts `app` back as it was before its newest change.
pub fn rollback(file: &Path, state: &Path, app: &str) -> Result<(), Failure> {
    let last = Store::open(state)?.last_change(app)?.ok_or_else(|| {
        Failure::Usage(format!(
            "{app} has no change to roll back (prism history {app})"
        ))
    })?;
    let change = format!("rollback of #{} ({})", last.id, last.change);
    let id = edit(
        file,
        state,
        &Edit::Restore {
            app: app.to_owned(),
            from: last.before,
        },
        &change,
    )?;
    println!("{app}: {change} (change #{id})");
    Ok(())
}

pub fn history(state: &Path, app: Option<&str>, json: bool) -> Result<(), Failure> {
    let changes = match Store::open_read_only(state)? {
        Some(store) => store.history(app, 100)?,
        None => Vec::new(),
    };
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

    const FLEET: &str = "[fleet]\nname = \"t\"\n[discovery]\nprovider = \"static\"\nnodes = [{ name = \"a\", address = \"10.0.0.5\" }]\n\n# the blog\n[apps.blog]\ninstances = 1\n[apps.blog.services.web]\nimage = \"blog:1\"  # pinned\nmemory = \"64M\"\n";

    #[test]
    fn an_edit_is_written_checked_recorded_and_rolled_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("fleet.toml");
        let state = dir.path().join("state.db");
        std::fs::write(&file, FLEET).expect("write");
        deploy(&file, &state, "blog", &[("web".into(), "blog:2".into())]).expect("deploy");
        let text = std::fs::read_to_string(&file).expect("read");
        assert_eq!(text, FLEET.replace("blog:1\"", "blog:2\""));
        // Invalid results are never written: 0 instances is fine, but
        // 5000 is over the bound.
        let err = scale(&file, &state, "blog", 5000).expect_err("over the bound");
        assert!(matches!(err, Failure::Config(_)), "{err}");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), text);
        rollback(&file, &state, "blog").expect("rollback");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), FLEET);
        let store = Store::open(&state).expect("store");
        let changes = store.history(Some("blog"), 10).expect("history");
        assert_eq!(
            changes
                .iter()
                .map(|c| c.change.as_str())
                .collect::<Vec<_>>(),
            ["rollback of #1 (web=blog:2)", "web=blog:2"]
        );
        assert!(changes[0].who.contains('@'));
        // Nothing to roll back in another app; an unknown service is named.
        assert!(matches!(
            rollback(&file, &state, "shop"),
            Err(Failure::Usage(_))
        ));
        let err =
            deploy(&file, &state, "blog", &[("cron".into(), "x".into())]).expect_err("no cron");
        assert!(err.to_string().contains("no service \"cron\""), "{err}");
    }
}
