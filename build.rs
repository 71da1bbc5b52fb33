//! Embeds the git commit the binary was built from, for `prism --version`.
//!
//! PRISM_COMMIT is the short hash, `-dirty` appended when the sources that
//! make the binary differ from that commit, or `unknown` outside a git
//! checkout (a release tarball); a packager may set PRISM_BUILD_COMMIT to
//! name the commit instead.

use std::process::Command;

/// What goes into the binary: the files whose changes make it differ.
const SOURCES: [&str; 4] = ["src", "build.rs", "Cargo.toml", "Cargo.lock"];

fn main() {
    println!("cargo:rerun-if-env-changed=PRISM_BUILD_COMMIT");
    // Rerunning on source changes costs nothing extra (the crate rebuilds
    // then anyway) and keeps the dirty flag true to the binary.
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
    }
    let commit = match std::env::var("PRISM_BUILD_COMMIT") {
        Ok(given) if !given.trim().is_empty() => given.trim().to_string(),
        _ => from_git().unwrap_or_else(|| "unknown".to_string()),
    };
    println!("cargo:rustc-env=PRISM_COMMIT={commit}");
}

fn from_git() -> Option<String> {
    // A tarball unpacked inside some other checkout is not that checkout.
    let top = git(&["rev-parse", "--show-toplevel"])?;
    let here = std::env::var("CARGO_MANIFEST_DIR").ok()?;
    if std::fs::canonicalize(top).ok()? != std::fs::canonicalize(here).ok()? {
        return None;
    }
    // A new commit or checkout moves HEAD or the branch it points to; in a
    // worktree these live outside `.git/`, so ask git where they are.
    for path in ["HEAD", "packed-refs"] {
        watch(&git(&["rev-parse", "--git-path", path])?);
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch(&git(&["rev-parse", "--git-path", &branch])?);
    }
    let hash = git(&["rev-parse", "--short", "HEAD"])?;
    let mut diff = vec!["diff", "--quiet", "HEAD", "--"];
    diff.extend(SOURCES);
    match Command::new("git").args(&diff).status().ok()?.code() {
        Some(0) => Some(hash),
        Some(1) => Some(format!("{hash}-dirty")),
        _ => None,
    }
}

fn watch(path: &str) {
    // git prints paths relative to the current folder, which for a build
    // script is the package root, as cargo expects. A path that does not
    // exist yet (no packed-refs) still counts: cargo reruns when it appears.
    println!("cargo:rerun-if-changed={path}");
}

/// A git command's trimmed stdout, or None when git is missing, this is no
/// git checkout, or the command fails.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}
