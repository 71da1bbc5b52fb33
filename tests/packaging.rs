//! What ships around the binary: `--version`, shell completions, man
//! pages, the systemd unit, the Vagrant setup and the AWS user data. None of
//! it needs the lab.

use std::path::PathBuf;
use std::process::{Command, Output};

const SUBCOMMANDS: [&str; 5] = ["validate", "plan", "reconcile", "daemon", "status"];

fn prism(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_prism"))
        .args(args)
        .env_remove("PRISM_CONFIG")
        .output()
        .expect("run prism")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `git args` in the crate's folder, or None when git is not there to ask.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(root())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| text(&out.stdout).trim().to_string())
}

#[test]
fn version_names_the_crate_version_and_the_commit() {
    let out = prism(&["--version"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let version = text(&out.stdout);
    let prefix = format!("prism {} (commit ", env!("CARGO_PKG_VERSION"));
    let commit = version
        .trim()
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{version:?} is not `{prefix}...)`"));
    match git(&["rev-parse", "--short", "HEAD"]) {
        // Built from this checkout: the commit checked out, maybe dirty.
        Some(head) => assert!(
            commit == head || commit == format!("{head}-dirty"),
            "--version says {commit}, HEAD is {head}"
        ),
        None => assert_eq!(commit, "unknown"),
    }
    // Subcommands report the same version.
    let sub = text(&prism(&["daemon", "--version"]).stdout);
    assert!(sub.contains(&format!("(commit {commit})")), "{sub}");
}

#[test]
fn completions_cover_every_subcommand_and_the_config_option() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = prism(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for word in SUBCOMMANDS.iter().chain(&["config", "log-format"]) {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
}

#[test]
fn an_unknown_shell_is_bad_usage() {
    let out = prism(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("bash"), "lists the shells");
    assert!(out.stdout.is_empty());
}

#[test]
fn bash_completions_are_valid_bash() {
    let out = prism(&["completions", "bash"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("prism.bash");
    std::fs::write(&file, &out.stdout).expect("write");
    let check = Command::new("bash")
        .arg("-n")
        .arg(&file)
        .output()
        .expect("run bash -n");
    assert!(check.status.success(), "{}", text(&check.stderr));
}

#[test]
fn the_man_page_is_roff_listing_the_subcommands() {
    let out = prism(&["man"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = text(&out.stdout);
    assert!(page.contains(".TH prism 1"), "{page}");
    assert!(page.contains(".SH SUBCOMMANDS"), "{page}");
    for sub in SUBCOMMANDS {
        assert!(page.contains(&format!("prism\\-{sub}(1)")), "lacks {sub}");
    }
    assert!(page.contains("Exit codes:"), "{page}");
}

#[test]
fn man_dir_writes_a_page_per_subcommand() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = prism(&["man", "--dir", &dir.path().display().to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(dir.path().join("prism.1").is_file());
    for sub in SUBCOMMANDS {
        let page = std::fs::read_to_string(dir.path().join(format!("prism-{sub}.1")))
            .unwrap_or_else(|e| panic!("prism-{sub}.1: {e}"));
        assert!(page.contains(&format!(".TH prism-{sub} 1")), "{page}");
    }
    let daemon = std::fs::read_to_string(dir.path().join("prism-daemon.1")).expect("read");
    assert!(daemon.contains("\\-\\-interval"), "{daemon}");
}

#[test]
fn man_dir_that_does_not_exist_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope");
    let out = prism(&["man", "--dir", &missing.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot write man pages into {}",
            missing.display()
        )),
        "{err}"
    );
}
