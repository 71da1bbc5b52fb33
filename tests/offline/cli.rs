//! The `prism` binary as a user runs it: exit codes, messages, and status
//! read from a real state file.

use std::path::Path;
use std::process::Command;

use prism::store::{ContainerRecord, NodeRecord, Placement, Store};

use crate::common;
use common::{prism, text};

fn write_fleet(dir: &Path, body: &str) -> String {
    let file = dir.join("fleet.toml");
    std::fs::write(&file, body).expect("write fleet.toml");
    file.display().to_string()
}

const MINIMAL: &str = r#"
[fleet]
name = "t"
state = "state.db"

[discovery]
provider = "static"
nodes = [{ name = "n1", address = "127.0.0.1" }]

[apps.blog.services.web]
image = "blog:1"
port = 8080
"#;

#[test]
fn the_example_fleet_toml_is_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = prism(&["-c", &format!("{root}/fleet.toml"), "validate"]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("valid"));
}

#[test]
fn invalid_config_exits_2_with_a_located_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_fleet(
        dir.path(),
        &MINIMAL.replace("port = 8080", "port = 8080\nmemroy = \"1G\""),
    );
    let out = prism(&["-c", &file, "validate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "{file}:13:1: apps.blog.services.web.memroy: unknown key `memroy`"
        )),
        "{err}"
    );
    assert!(err.contains("help: did you mean `memory`?"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn status_refuses_an_invalid_config_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_fleet(dir.path(), &MINIMAL.replace("\"static\"", "\"ec3\""));
    let out = prism(&["-c", &file, "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("did you mean `ec2`?"));
    assert!(
        !dir.path().join("state.db").exists(),
        "nothing may be written"
    );
}

#[test]
fn missing_config_names_the_file_and_the_way_out() {
    let out = prism(&["-c", "/nonexistent/fleet.toml", "validate"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("cannot read /nonexistent/fleet.toml"), "{err}");
    assert!(err.contains("PRISM_CONFIG"), "{err}");
}

#[test]
fn config_comes_from_prism_config_when_not_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_fleet(dir.path(), MINIMAL);
    let out = Command::new(env!("CARGO_BIN_EXE_prism"))
        .arg("validate")
        .env("PRISM_CONFIG", &file)
        .output()
        .expect("run prism");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with(&format!("{file}: valid")));
}

#[test]
fn status_without_state_says_so_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_fleet(dir.path(), MINIMAL);
    let out = prism(&["-c", &file, "status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("No state recorded yet"));
    let out = prism(&["-c", &file, "status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["recorded"], false);
    assert_eq!(json["fleet"], "t");
    assert!(!dir.path().join("state.db").exists());
}

#[test]
fn status_reads_nodes_and_containers_from_the_state_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_fleet(dir.path(), MINIMAL);
    {
        let mut store = Store::open(&dir.path().join("state.db")).expect("store");
        let now = prism::store::now_ms();
        store
            .upsert_node(&NodeRecord {
                id: "n1".into(),
                name: "n1".into(),
                address: "127.0.0.1".into(),
                provider: prism::config::Provider::Static,
                zone: None,
                instance_type: None,
                lifecycle: prism::cloud::Lifecycle::Static,
                state: prism::reconcile::NodeState::Ready,
                condition: None,
                condition_detail: None,
                docker_version: Some("20.10.24".into()),
                memory_total: Some(2 << 30),
                memory_free: Some(1 << 30),
                cpus: Some(2000),
                disk_free: None,
                first_seen: now,
                last_seen: now,
                last_probe: Some(now),
            })
            .expect("node");
        store
            .replace_containers(
                "n1",
                &[ContainerRecord {
                    node_id: "n1".into(),
                    name: "prism-blog-web-0".into(),
                    app: "blog".into(),
                    service: "web".into(),
                    instance: 0,
                    image: "blog:1".into(),
                    state: "running".into(),
                    health: Some("healthy".into()),
                    restarts: 0,
                    ports: "8080".into(),
                    started_at: Some(now),
                    spec_hash: None,
                    observed_at: now,
                }],
            )
            .expect("containers");
        store
            .set_placement(&Placement {
                app: "blog".into(),
                instance: 0,
                node_id: "n1".into(),
                placed_at: now,
            })
            .expect("placement");
    }
    let out = prism(&["-c", &file, "status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("NODES (1)") && stdout.contains("CONTAINERS (1)"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("n1") && l.contains("ready")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("blog/web/0") && l.contains("healthy")),
        "{stdout}"
    );

    let out = prism(&["-c", &file, "status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["recorded"], true);
    assert_eq!(json["nodes"][0]["state"], "ready");
    assert_eq!(json["containers"][0]["service"], "web");
    assert_eq!(json["placements"][0]["node_id"], "n1");

    // A Name tag and a node's stderr are outside text: an OSC 52 (which
    // would write the reader's clipboard) or a screen clear is printed
    // escaped, never sent to the terminal.
    {
        let store = Store::open(&dir.path().join("state.db")).expect("store");
        let mut evil = store.node("n1").expect("read").expect("n1");
        evil.id = "n2".into();
        evil.name = "web\u{1b}]52;c;cm0gLXJmIC8=\u{7}".into();
        evil.condition = Some("unreachable".into());
        evil.condition_detail = Some("ssh: \u{1b}[2J\u{1b}[Hgone".into());
        store.upsert_node(&evil).expect("node");
    }
    let out = prism(&["-c", &file, "status"]);
    let stdout = text(&out.stdout);
    assert!(!stdout.contains(['\u{1b}', '\u{7}']), "{stdout:?}");
    assert!(
        stdout.contains("web\\u{1b}]52;c;cm0gLXJmIC8=\\u{7}"),
        "{stdout}"
    );
    assert!(stdout.contains("ssh: \\u{1b}[2J\\u{1b}[Hgone"), "{stdout}");
}

#[test]
fn a_corrupt_state_file_is_a_clear_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_fleet(dir.path(), MINIMAL);
    std::fs::write(dir.path().join("state.db"), "garbage ".repeat(1000)).expect("write");
    let out = prism(&["-c", &file, "status"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("not a Prism state database"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn help_documents_exit_codes() {
    for args in [
        &["--help"][..],
        &["status", "--help"],
        &["validate", "--help"],
    ] {
        let out = prism(args);
        assert!(out.status.success());
        let help = text(&out.stdout);
        assert!(
            help.contains("Exit codes:") && help.contains("fleet.toml is invalid"),
            "{help}"
        );
    }
}

#[test]
fn no_command_is_the_dashboard_which_needs_a_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_fleet(dir.path(), MINIMAL);
    // Output captured: no terminal. It says so before touching anything.
    for args in [&["-c", &file][..], &["-c", &file, "dashboard"]] {
        let out = prism(args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("the dashboard needs a terminal"),
            "{}",
            text(&out.stderr)
        );
        assert!(!dir.path().join("state.db").exists());
    }
    let help = text(&prism(&["--help"]).stdout);
    assert!(
        help.contains("Without a command, opens the live dashboard"),
        "{help}"
    );
    let help = text(&prism(&["dashboard", "--help"]).stdout);
    assert!(
        help.contains("attaches to it") && help.contains("Exit codes:"),
        "{help}"
    );
}

#[test]
fn deploy_scale_rollback_and_history_edit_fleet_toml_as_a_person_would() {
    let dir = tempfile::tempdir().expect("tempdir");
    let body = format!("# The fleet, commented.\n{MINIMAL}# the end\n");
    let file = write_fleet(dir.path(), &body);
    let run = |args: &[&str]| {
        let mut all = vec!["-c", file.as_str()];
        all.extend_from_slice(args);
        prism(&all)
    };
    let out = run(&["deploy", "blog", "web=blog:2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("web=blog:2 (change #1)"),
        "{}",
        text(&out.stdout)
    );
    let now = std::fs::read_to_string(&file).expect("read");
    assert_eq!(
        now,
        body.replace("\"blog:1\"", "\"blog:2\""),
        "only the image changed"
    );

    // Bad input writes nothing and exits 2, naming what is wrong.
    for (args, says) in [
        (vec!["deploy", "blog", "cron=x:1"], "no service \"cron\""),
        (vec!["deploy", "shop", "web=x:1"], "no app \"shop\""),
        (vec!["deploy", "blog", "web"], "SERVICE=IMAGE"),
        (vec!["scale", "blog", "100000"], "instances"),
        (vec!["rollback", "shop"], "no change to roll back"),
    ] {
        let out = run(&args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains(says),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(
            std::fs::read_to_string(&file).expect("read"),
            now,
            "{args:?}"
        );
    }

    let out = run(&["scale", "blog", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&["rollback", "blog"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let back = std::fs::read_to_string(&file).expect("read");
    assert!(
        back.contains("\"blog:2\"") && !back.contains("instances = 3"),
        "{back}"
    );
    let out = run(&["history", "blog", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let changes: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let what: Vec<&str> = changes
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|c| c["change"].as_str())
        .collect();
    assert_eq!(
        what,
        ["rollback of #2 (instances=3)", "instances=3", "web=blog:2"]
    );
}
