//! What ships around the binary: `--version`, shell completions, man
//! pages, the systemd unit, the Vagrant setup and the AWS user data. None of
//! it needs the lab.

use std::path::PathBuf;
use std::process::Command;

use crate::common;
use common::{prism, text};

const SUBCOMMANDS: [&str; 5] = ["validate", "plan", "reconcile", "daemon", "status"];

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
#[ignore = "needs the checking tools lab/lab install adds (make test runs it)"]
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

/// A checking tool the tests need; `lab/lab install` installs them all.
fn tool(name: &str) -> String {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .expect("run sh");
    assert!(
        found.status.success(),
        "{name} is not installed: run `lab/lab install` (as root), which installs the checking tools"
    );
    text(&found.stdout).trim().to_string()
}

/// `Key=Value` lines of a unit file, in order, comments skipped.
fn unit_settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn setting<'a>(settings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

const UNIT: &str = "contrib/systemd/prism.service";

#[test]
#[ignore = "needs the checking tools lab/lab install adds (make test runs it)"]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let analyze = tool("systemd-analyze");
    let dir = tempfile::tempdir().expect("tempdir");
    // verify insists the ExecStart binary exists and Documentation= man
    // pages resolve: point it at the binary under test and its own pages.
    let unit = std::fs::read_to_string(root().join(UNIT)).expect("read the unit");
    let unit = unit.replace("/usr/local/bin/prism", env!("CARGO_BIN_EXE_prism"));
    let file = dir.path().join("prism.service");
    std::fs::write(&file, unit).expect("write");
    let man1 = dir.path().join("man").join("man1");
    std::fs::create_dir_all(&man1).expect("mkdir");
    let out = prism(&["man", "--dir", &man1.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = Command::new(analyze)
        .arg("verify")
        .arg(&file)
        .env("MANPATH", dir.path().join("man"))
        .output()
        .expect("run systemd-analyze");
    // verify exits 0 on unknown keys and bad values too, only warning.
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {UNIT}: {said}"
    );
}

#[test]
#[ignore = "needs the checking tools lab/lab install adds (make test runs it)"]
fn the_systemd_unit_runs_the_daemon_where_the_example_fleet_keeps_state() {
    let unit = std::fs::read_to_string(root().join(UNIT)).expect("read the unit");
    let s = unit_settings(&unit);
    assert_eq!(setting(&s, "ExecStart"), ["/usr/local/bin/prism daemon"]);
    assert_eq!(setting(&s, "User"), ["prism"]);
    assert_eq!(setting(&s, "Restart"), ["on-failure"]);
    assert_eq!(setting(&s, "KillSignal"), ["SIGTERM"]);
    // Longer than the slowest action of a pass (a 10-minute image pull).
    let stop = humantime::parse_duration(setting(&s, "TimeoutStopSec")[0]).expect("a duration");
    assert!(stop > std::time::Duration::from_secs(600), "{stop:?}");
    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        assert_eq!(setting(&s, key), ["CAP_NET_BIND_SERVICE"], "{key}");
    }
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(setting(&s, key), [value], "{key}");
    }

    // The config it names keeps its state in the one writable folder.
    let config = setting(&s, "Environment")
        .iter()
        .find_map(|e| e.strip_prefix("PRISM_CONFIG="))
        .expect("the unit sets PRISM_CONFIG");
    assert_eq!(config, "/etc/prism/fleet.toml");
    // Plain log lines for the journal (tracing colours them otherwise).
    assert!(setting(&s, "Environment").contains(&"NO_COLOR=1"));
    let state_dir = format!("/var/lib/{}", setting(&s, "StateDirectory")[0]);
    assert_eq!(setting(&s, "ReadWritePaths"), [state_dir.as_str()]);
    assert_eq!(setting(&s, "WorkingDirectory"), [state_dir.as_str()]);
    let example = prism::config::Config::load(&root().join("fleet.toml")).expect("fleet.toml");
    assert!(
        example.state_path().starts_with(&state_dir),
        "the example fleet.toml keeps state in {}, outside {state_dir}",
        example.state_path().display()
    );

    // systemd-sysusers makes the user with the state folder as its home
    // (so `~/` in fleet.toml resolves there); tried on an empty root.
    let dir = tempfile::tempdir().expect("tempdir");
    let etc = dir.path().join("etc");
    std::fs::create_dir(&etc).expect("mkdir");
    for file in ["passwd", "group"] {
        std::fs::write(etc.join(file), "").expect("write");
    }
    let out = Command::new(tool("systemd-sysusers"))
        .arg(format!("--root={}", dir.path().display()))
        .arg(root().join("contrib/systemd/prism.sysusers"))
        .output()
        .expect("run systemd-sysusers");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let passwd = std::fs::read_to_string(etc.join("passwd")).expect("read passwd");
    let user = passwd
        .lines()
        .find(|l| l.starts_with("prism:"))
        .unwrap_or_else(|| panic!("no user prism in {passwd:?}"));
    let fields: Vec<&str> = user.split(':').collect();
    assert_eq!(fields[5], state_dir, "home of {user}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "shell of {user}");
}

/// Shell scripts that ship: provisioning, user data, the benchmark, and
/// the scripts Prism runs on nodes (`sh -c`, checked as POSIX sh).
const SHELL_SCRIPTS: [&str; 7] = [
    "vagrant/provision.sh",
    "contrib/aws/user-data.sh",
    "scripts/footprint",
    "src/operator/apply/mesh.sh",
    "src/operator/apply/mount.sh",
    "src/observe/facts.sh",
    "src/bootstrap/install-docker.sh",
];

#[test]
#[ignore = "needs the checking tools lab/lab install adds (make test runs it)"]
fn shipped_shell_scripts_pass_shellcheck() {
    let shellcheck = tool("shellcheck");
    for script in SHELL_SCRIPTS {
        let path = root().join(script);
        let shebang = std::fs::read_to_string(&path)
            .expect("read script")
            .starts_with("#!");
        let mut cmd = Command::new(&shellcheck);
        if !shebang {
            cmd.args(["--shell", "sh"]);
        }
        let out = cmd.arg(&path).output().expect("run shellcheck");
        assert!(
            out.status.success(),
            "shellcheck {script}:\n{}",
            text(&out.stdout)
        );
    }
}

#[test]
fn user_data_refuses_to_run_without_a_public_key() {
    // An empty PATH: should the check ever pass, nothing gets installed and
    // the script stops at "neither apt-get nor dnf" instead.
    let out = Command::new("/bin/bash")
        .arg(root().join("contrib/aws/user-data.sh"))
        .env_clear()
        .env("PATH", "/nonexistent")
        .output()
        .expect("run bash");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("PRISM_PUBKEY holds no SSH public key"),
        "{err}"
    );
}

#[test]
fn the_vagrant_fleet_is_valid() {
    let file = root().join("vagrant/fleet.toml");
    let out = prism(&["-c", &file.display().to_string(), "validate"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("3 static node(s)"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
#[ignore = "needs the checking tools lab/lab install adds (make test runs it)"]
fn the_vagrantfile_is_ruby() {
    let out = Command::new(tool("ruby"))
        .arg("-c")
        .arg(root().join("vagrant/Vagrantfile"))
        .output()
        .expect("run ruby");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[derive(Debug, serde::Deserialize)]
struct Machine {
    name: String,
    ips: Vec<String>,
    provision: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// The Vagrantfile evaluated by a stand-in for Vagrant, in a copy of
/// vagrant/ at `dir` (it writes keys and known_hosts beside itself), with
/// the user data where it finds it (`dir/../contrib/aws/`).
fn vagrant_machines(dir: &std::path::Path) -> Vec<Machine> {
    let contrib = dir.join("../contrib/aws");
    std::fs::create_dir_all(&contrib).expect("mkdir");
    std::fs::copy(
        root().join("contrib/aws/user-data.sh"),
        contrib.join("user-data.sh"),
    )
    .expect("copy the user data");
    for file in ["Vagrantfile", "provision.sh"] {
        std::fs::copy(root().join("vagrant").join(file), dir.join(file)).expect("copy");
    }
    let out = Command::new(tool("ruby"))
        .arg(root().join("tests/packaging/vagrant_stub.rb"))
        .arg(dir.join("Vagrantfile"))
        .output()
        .expect("run ruby");
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("the stub prints JSON")
}

#[test]
#[ignore = "needs the checking tools lab/lab install adds (make test runs it)"]
fn the_vagrantfile_brings_up_the_nodes_fleet_toml_lists_with_pinned_host_keys() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("vagrant");
    std::fs::create_dir(&dir).expect("mkdir");
    let machines = vagrant_machines(&dir);
    let fleet = prism::config::Config::load(&root().join("vagrant/fleet.toml")).expect("load");
    let listed: Vec<(String, Vec<String>)> = fleet
        .fleet
        .discovery
        .nodes
        .iter()
        .map(|n| (n.name.clone(), vec![n.address.clone()]))
        .collect();
    let defined: Vec<(String, Vec<String>)> = machines
        .iter()
        .map(|m| (m.name.clone(), m.ips.clone()))
        .collect();
    assert_eq!(defined, listed);

    // known_hosts names each address with the host key made for that VM,
    // which is the key its provisioning installs.
    let known_hosts = dir.as_path().join("known_hosts");
    for m in &machines {
        let host_pub = std::fs::read_to_string(
            dir.as_path()
                .join("keys")
                .join(format!("{}_host_ed25519.pub", m.name)),
        )
        .expect("the Vagrantfile made the host key");
        let key: Vec<&str> = host_pub.split_whitespace().take(2).collect();
        let found = Command::new("ssh-keygen")
            .args(["-F", &m.ips[0], "-f"])
            .arg(&known_hosts)
            .output()
            .expect("run ssh-keygen (openssh-client)");
        assert!(found.status.success(), "{} not in known_hosts", m.ips[0]);
        assert!(text(&found.stdout).contains(&key.join(" ")), "{}", m.name);

        let uploads: Vec<(&str, &str)> = m
            .provision
            .iter()
            .filter(|p| p["kind"] == "file")
            .map(|p| {
                (
                    p["source"].as_str().expect("source"),
                    p["destination"].as_str().expect("destination"),
                )
            })
            .collect();
        let host_key = format!("{}_host_ed25519", m.name);
        assert!(
            uploads.iter().any(|(from, to)| from.ends_with(&host_key)
                && *to == "/tmp/prism-provision/ssh_host_ed25519_key"),
            "{uploads:?}"
        );
        for (from, _) in &uploads {
            assert!(std::path::Path::new(from).is_file(), "{from} is missing");
        }
        // The same user data as the EC2 nodes': one user, one way.
        assert!(
            uploads
                .iter()
                .any(|(from, to)| from.ends_with("contrib/aws/user-data.sh")
                    && *to == "/tmp/prism-provision/user-data.sh"),
            "{uploads:?}"
        );
        let shell = m.provision.last().expect("a provisioner");
        assert_eq!(shell["kind"], "shell");
        assert_eq!(shell["path"], "provision.sh");
        assert_eq!(shell["args"][0], "/tmp/prism-provision");
    }

    // The login key fleet.toml names is the one whose public half goes up.
    assert_eq!(
        fleet.fleet.ssh.identity.as_deref(),
        Some(std::path::Path::new("keys/prism_ed25519"))
    );
    let key = dir.as_path().join("keys/prism_ed25519");
    let public = Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(&key)
        .output()
        .expect("run ssh-keygen");
    let uploaded =
        std::fs::read_to_string(dir.as_path().join("keys/prism_ed25519.pub")).expect("read");
    assert!(
        uploaded.starts_with(text(&public.stdout).trim()),
        "{uploaded}"
    );
}

#[test]
#[ignore = "needs the checking tools lab/lab install adds (make test runs it)"]
fn the_vagrantfile_keeps_keys_it_already_made() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("vagrant");
    std::fs::create_dir(&dir).expect("mkdir");
    vagrant_machines(&dir);
    let first = std::fs::read_to_string(dir.join("known_hosts")).expect("read");
    vagrant_machines(&dir);
    let again = std::fs::read_to_string(dir.join("known_hosts")).expect("read");
    assert_eq!(
        first, again,
        "a second `vagrant` command must not change host keys"
    );
}

#[test]
fn the_footprint_benchmark_refuses_a_bad_duration_before_touching_anything() {
    // Checked before building, or adding lab nodes.
    for bad in ["0", "ten", "-1", "2m"] {
        let out = Command::new(root().join("scripts/footprint"))
            .arg(bad)
            .output()
            .expect("run scripts/footprint");
        assert_eq!(out.status.code(), Some(1), "{bad}");
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!(
                "MINUTES must be a whole number above 0, not '{bad}'"
            )),
            "{err}"
        );
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    }
}
