//! A private registry with basic auth (the lab's 172.31.250.3:5000, HTTPS,
//! htpasswd): a fleet pulls the test app from it with credentials from
//! fleet.toml; a wrong password fails that app's pull, naming the registry,
//! while another app runs; the password shows nowhere.

use crate::common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::{AuthRegistry, Lab, http_status, published_addrs};
use prism::store::{Level, Store};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn reconcile(fleet: &Path, password_env: &str) -> Output {
    let file = fleet.to_str().expect("utf-8 path");
    common::prism_command(&["-c", file, "reconcile", "--once", "--timeout", "60s"])
        .env("PRISM_TEST_REGISTRY_PASSWORD", password_env)
        .output()
        .expect("run prism")
}

/// Nodes forget the registry: no image from it, no login to it. Then only
/// a login with the right password can make the private app run.
fn forget_registry(lab: &Lab, reg: &AuthRegistry) {
    for node in &lab.nodes {
        let _ = lab.ssh(
            &node.address,
            &format!(
                "docker logout {0} >/dev/null 2>&1; docker rmi -f {1} >/dev/null 2>&1; true",
                reg.lab, reg.testapp_image
            ),
        );
    }
}

/// Cleans the fleet and the nodes' login when dropped.
struct Cleanup<'a> {
    lab: &'a Lab,
    reg: &'a AuthRegistry,
    fleet: String,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        self.lab.remove_fleet(&self.fleet);
        forget_registry(self.lab, self.reg);
    }
}

fn apps(lab: &Lab, reg: &AuthRegistry, password: &str) -> String {
    format!(
        r#"
[registries."{host}"]
username = "{user}"
{password}

[apps.private]
[apps.private.services.web]
image = "{private}"
port = 8080
memory = "32M"

[apps.public]
[apps.public.services.web]
image = "{public}"
port = 8080
memory = "32M"
"#,
        host = reg.lab,
        user = reg.username,
        private = reg.testapp_image,
        public = lab.testapp_image,
    )
}

#[test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
fn pulls_with_credentials_and_a_wrong_password_fails_only_its_app() {
    let lab = Lab::load();
    let reg = lab
        .registry_auth
        .clone()
        .expect("lab.json has no registry_auth: run lab/lab up");
    let fleet = format!("reg{}", std::process::id());
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state.db");
    lab.remove_fleet(&fleet);
    forget_registry(&lab, &reg);
    let _cleanup = Cleanup {
        lab: &lab,
        reg: &reg,
        fleet: fleet.clone(),
    };
    let password = reg.password();

    // A wrong password, from a file: the private app's pull fails.
    let wrong = format!("wrong-{}-$(id)", std::process::id());
    let wrong_file = dir.path().join("wrong-password");
    std::fs::write(&wrong_file, format!("{wrong}\n")).expect("write");
    let file = lab.own_fleet(
        dir.path(),
        &fleet,
        &apps(
            &lab,
            &reg,
            &format!("password_file = {:?}", wrong_file.display().to_string()),
        ),
    );
    let out = reconcile(&file, "");
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(
        all.contains(&format!("docker login to registry {}", reg.lab)),
        "the failure names the registry: {all}"
    );
    assert!(!all.contains(&wrong) && !all.contains(&password), "{all}");
    let lines = lab.fleet_containers(&fleet);
    assert!(
        lines
            .iter()
            .any(|l| l.contains(" public web ") && l.ends_with(" running")),
        "the other app runs: {lines:#?}"
    );
    assert!(!lines.iter().any(|l| l.contains(" private ")), "{lines:#?}");
    let store = Store::open_existing(&state)
        .expect("state")
        .expect("exists");
    let events = store.events(1000).expect("events");
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e.level == Level::Error && e.kind == "apply.pull")
        .collect();
    assert!(
        failed.iter().any(|e| e.message.contains(&reg.lab)),
        "a failed pull event naming the registry: {events:#?}"
    );
    for e in &events {
        assert!(
            !e.message.contains(&wrong) && !e.message.contains(&password),
            "{}",
            e.message
        );
    }
    drop(store);

    // The right password, from the operator's environment: converged, and
    // the private app answers.
    let file = lab.own_fleet(
        dir.path(),
        &fleet,
        &apps(
            &lab,
            &reg,
            "password_env = \"PRISM_TEST_REGISTRY_PASSWORD\"",
        ),
    );
    let out = reconcile(&file, &password);
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains(&format!("logging in to {}", reg.lab)), "{all}");
    assert!(!all.contains(&password), "{all}");
    let addrs = published_addrs(&state, "private", "web");
    assert_eq!(addrs.len(), 1, "{:#?}", lab.fleet_containers(&fleet));
    assert_eq!(
        http_status(&addrs[0], "/up", Duration::from_secs(5)).expect("private web answers"),
        200
    );
    let store = Store::open_existing(&state)
        .expect("state")
        .expect("exists");
    for e in store.events(1000).expect("events") {
        assert!(!e.message.contains(&password), "{}", e.message);
    }
}
