//! Deploy, scale and rollback as edits of fleet.toml: made on the file's
//! text (comments and layout kept), checked as `prism validate` checks
//! before anything is written, written in one step only if the file still
//! holds what was read, and recorded in the state file's history.

use std::io::Write;
use std::path::Path;

use crate::config::{self, ConfigError, Edit, EditError, app_text, apply_edit};
use crate::store::{Store, StoreError, now_ms};

/// How often an edit is tried again when the file changed under it.
const TRIES: usize = 3;

/// What a person or a token asks of one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Set these services' images.
    Deploy(Vec<(String, String)>),
    /// Set the app's instances.
    Scale(u32),
    /// Put the app back as it was before its newest change.
    Rollback,
}

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// No such app or service, or fleet.toml is not TOML.
    #[error(transparent)]
    Edit(#[from] EditError),
    /// The edit would make fleet.toml invalid, or it cannot be read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{app} has no change to roll back (prism history {app})")]
    NothingToRollBack { app: String },
    /// fleet.toml kept changing under the edit.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// fleet.toml was written; the history could not take it.
    #[error("fleet.toml was changed, but the change could not be recorded in the state file: {0}")]
    Unrecorded(StoreError),
    /// A rollback found the app changed since the change it undoes.
    #[error("{app} changed in fleet.toml since; it was left as it is")]
    Superseded { app: String },
    #[error("cannot write {file}: {source}")]
    Write {
        file: String,
        source: std::io::Error,
    },
}

/// An edit made and recorded.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Its id in the history.
    pub id: i64,
    /// When it was made (unix ms).
    pub at: i64,
    /// What changed, in words: `web=registry/blog:1.5`.
    pub change: String,
    /// The file before and after.
    pub before: String,
    pub after: String,
}

/// Makes `change` of `app` on `file`, recorded in the state at `state` as
/// made by `who`.
pub fn make(
    file: &Path,
    state: &Path,
    app: &str,
    change: &Change,
    who: &str,
) -> Result<Recorded, RolloutError> {
    let (edit, words) = match change {
        Change::Deploy(images) => {
            let words: Vec<String> = images.iter().map(|(s, i)| format!("{s}={i}")).collect();
            (
                Edit::Images {
                    app: app.to_owned(),
                    images: images.clone(),
                },
                words.join(" "),
            )
        }
        Change::Scale(instances) => (
            Edit::Scale {
                app: app.to_owned(),
                instances: *instances,
            },
            format!("instances={instances}"),
        ),
        Change::Rollback => {
            let last = Store::open(state)?.last_change(app)?.ok_or_else(|| {
                RolloutError::NothingToRollBack {
                    app: app.to_owned(),
                }
            })?;
            (
                Edit::Restore {
                    app: app.to_owned(),
                    from: last.before,
                },
                format!("rollback of #{} ({})", last.id, last.change),
            )
        }
    };
    record(file, state, &edit, &words, who, None)
}

/// Makes `edit` and records it as `words`, by `who`; with `unless_changed`
/// (a text of fleet.toml), only while the app is still as it is there.
pub(crate) fn record(
    file: &Path,
    state: &Path,
    edit: &Edit,
    words: &str,
    who: &str,
    unless_changed: Option<&str>,
) -> Result<Recorded, RolloutError> {
    let (before, after) = write(file, edit, unless_changed)?;
    let at = now_ms();
    let id = Store::open(state)
        .and_then(|s| s.record_change(at, edit.app(), who, words, &before, &after))
        .map_err(RolloutError::Unrecorded)?;
    Ok(Recorded {
        id,
        at,
        change: words.to_owned(),
        before,
        after,
    })
}

/// Holds the edit lock of `file` (a lock file beside it) while it lives:
/// edits by this process and by others (the command line, the API) take
/// turns, so no two interleave.
struct EditLock {
    /// The lock is the open file's: it goes when the file is closed.
    _file: std::fs::File,
}

impl EditLock {
    fn take(file: &Path) -> Result<EditLock, RolloutError> {
        let lock = file.with_file_name(format!(".{}.prism-lock", name_of(file)));
        let failed = |source| RolloutError::Write {
            file: lock.display().to_string(),
            source,
        };
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
            .map_err(failed)?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| failed(e.into()))?;
        Ok(EditLock { _file: f })
    }
}

fn name_of(file: &Path) -> String {
    file.file_name()
        .map_or_else(|| "fleet.toml".into(), |n| n.to_string_lossy().into_owned())
}

/// Reads, edits, checks and writes fleet.toml in place: written only when
/// the result is a valid fleet, and only if the file still holds what was
/// read (a hand edit meanwhile is never lost: the edit is made again on
/// it). Edits through Prism take turns ([`EditLock`]). The text before and
/// after.
fn write(
    file: &Path,
    edit: &Edit,
    unless_changed: Option<&str>,
) -> Result<(String, String), RolloutError> {
    let read = |f: &Path| {
        std::fs::read_to_string(f).map_err(|source| ConfigError::Read {
            file: f.to_path_buf(),
            source,
        })
    };
    let failed = |source| RolloutError::Write {
        file: file.display().to_string(),
        source,
    };
    let _turn = EditLock::take(file)?;
    for _ in 0..TRIES {
        let before = read(file)?;
        if let Some(expected) = unless_changed
            && app_text(&before, edit.app()) != app_text(expected, edit.app())
        {
            return Err(RolloutError::Superseded {
                app: edit.app().to_owned(),
            });
        }
        let after = apply_edit(&before, edit)?;
        config::parse(file, &after).map_err(ConfigError::Invalid)?;
        let tmp = file.with_file_name(format!(
            ".{}.prism-edit.{}",
            name_of(file),
            std::process::id()
        ));
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            if let Ok(meta) = std::fs::metadata(file) {
                f.set_permissions(meta.permissions())?;
            }
            f.write_all(after.as_bytes())?;
            f.sync_all()
        })();
        written.map_err(failed)?;
        if read(file)? != before {
            let _ = std::fs::remove_file(&tmp);
            continue;
        }
        std::fs::rename(&tmp, file).map_err(failed)?;
        return Ok((before, after));
    }
    Err(RolloutError::Conflict(format!(
        "{} changed under the edit {TRIES} times in a row; nothing was written",
        file.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLEET: &str = "[fleet]\nname = \"t\"\n[discovery]\nprovider = \"static\"\nnodes = [{ name = \"a\", address = \"10.0.0.5\" }]\n\n# the blog\n[apps.blog]\ninstances = 1\n[apps.blog.services.web]\nimage = \"blog:1\"  # pinned\nmemory = \"64M\"\n";

    #[test]
    fn an_edit_is_written_checked_recorded_and_rolled_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("fleet.toml");
        let state = dir.path().join("state.db");
        std::fs::write(&file, FLEET).expect("write");
        let deploy = Change::Deploy(vec![("web".into(), "blog:2".into())]);
        let done = make(&file, &state, "blog", &deploy, "ops@box").expect("deploy");
        assert_eq!((done.id, done.change.as_str()), (1, "web=blog:2"));
        let text = std::fs::read_to_string(&file).expect("read");
        assert_eq!(text, FLEET.replace("blog:1\"", "blog:2\""));
        assert_eq!(
            (done.before.as_str(), done.after.as_str()),
            (FLEET, text.as_str())
        );
        // Invalid results are never written: 0 instances is fine, but
        // 5000 is over the bound.
        let err = make(&file, &state, "blog", &Change::Scale(5000), "ops@box")
            .expect_err("over the bound");
        assert!(
            matches!(err, RolloutError::Config(ConfigError::Invalid(_))),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&file).expect("read"), text);
        make(&file, &state, "blog", &Change::Rollback, "token ci").expect("rollback");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), FLEET);
        let store = Store::open(&state).expect("store");
        let changes = store.history(Some("blog"), 10).expect("history");
        assert_eq!(
            changes
                .iter()
                .map(|c| (c.change.as_str(), c.who.as_str()))
                .collect::<Vec<_>>(),
            [
                ("rollback of #1 (web=blog:2)", "token ci"),
                ("web=blog:2", "ops@box")
            ]
        );
        // Nothing to roll back in another app; an unknown service is named.
        assert!(matches!(
            make(&file, &state, "shop", &Change::Rollback, "ops@box"),
            Err(RolloutError::NothingToRollBack { .. })
        ));
        let cron = Change::Deploy(vec![("cron".into(), "x".into())]);
        let err = make(&file, &state, "blog", &cron, "ops@box").expect_err("no cron");
        assert!(err.to_string().contains("no service \"cron\""), "{err}");
    }
}
