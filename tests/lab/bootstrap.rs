//! Docker bootstrap against the lab's bare node: a real Debian 12 with sshd
//! and no Docker (`lab/lab bare up`; its packages wait in apt's cache, the
//! lab never reaches the internet). The test starts the bare node fresh and
//! removes it when done; the lab's fleet nodes are not touched.

use crate::common;

use std::time::Instant;

use common::prism_ssh::{bare_pool, bare_target, limits, run};
use common::{Lab, lab_cmd};
use prism::bootstrap::{Action, BootstrapError, Failure, install_docker};
use prism::observe::{Condition, ProbeLimits, Probed, probe};
use prism::ssh::{Pool, Target};

/// Removes the bare node when the test ends, passing or failing.
struct BareNode;

impl Drop for BareNode {
    fn drop(&mut self) {
        if let Err(e) = lab_cmd(&["bare", "down"]) {
            eprintln!("could not remove the bare node: {e:#}");
        }
    }
}

/// What Prism's probe says of Docker on the node: its version when it runs.
async fn docker(pool: &Pool, node: &Target) -> Result<String, Condition> {
    match probe(pool, node, "lab", ProbeLimits::default()).await {
        Probed::Ready { docker_version, .. } => Ok(docker_version),
        other => Err(other
            .condition()
            .cloned()
            .expect("not ready has a condition")),
    }
}

#[tokio::test]
#[ignore = "needs the lab: lab/lab up (make test runs it)"]
async fn a_node_without_docker_gets_it_installed_and_started() {
    Lab::load();
    // Fresh, so Docker is surely missing, whatever an earlier run left.
    lab_cmd(&["bare", "down"]).expect("lab/lab bare down");
    let started = Instant::now();
    lab_cmd(&["bare", "up"]).expect("lab/lab bare up");
    let _bare = BareNode;
    eprintln!("bare node up in {:.1?}", started.elapsed());
    let lab = Lab::load();
    let bare = lab.bare.clone().expect("lab.json lists the bare node");
    let pool = bare_pool(&lab);
    let root = bare_target(&bare, "root");
    let plain = bare_target(&bare, "plain");

    assert_eq!(docker(&pool, &root).await, Err(Condition::DockerMissing));

    // A login that is neither root nor a sudoer is refused, by name.
    match install_docker(&pool, &plain).await {
        Err(BootstrapError::Failed {
            node,
            failure: Failure::NoRoot { user },
        }) => assert_eq!((node.as_str(), user.as_str()), ("bare-plain", "plain")),
        other => panic!("expected NoRoot for plain, got {other:?}"),
    }

    let started = Instant::now();
    let outcome = install_docker(&pool, &root)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "install_docker in {:.1?}: {}",
        started.elapsed(),
        outcome.summary()
    );
    let Action::Installed { tool, package, .. } = &outcome.action else {
        panic!("expected Installed, got {outcome:?}");
    };
    assert_eq!((tool.as_str(), package.as_str()), ("apt-get", "docker.io"));
    assert_eq!(outcome.os.as_deref(), Some("debian 12"));
    // The lab has no network: apt-get update fails, the cache serves.
    assert!(
        outcome
            .warnings
            .iter()
            .any(|w| w.message.starts_with("apt-get update failed")),
        "{:?}",
        outcome.warnings
    );
    assert!(
        outcome.version.starts_with(|c: char| c.is_ascii_digit()),
        "{}",
        outcome.version
    );

    assert_eq!(docker(&pool, &root).await, Ok(outcome.version.clone()));
    // It runs containers, pulled from the lab's registry (plain HTTP, as
    // the bare image's /etc/docker/daemon.json allows).
    let out = pool
        .exec(
            &root,
            &common::prism_ssh::argv(&[
                "docker",
                "run",
                "--rm",
                &lab.testapp_image,
                "sh",
                "-c",
                "echo ran",
            ]),
            None,
            limits(120),
        )
        .await
        .expect("docker run over SSH");
    assert!(out.success(), "docker run: {}", out.stderr_text());
    assert_eq!(out.stdout_text().trim(), "ran");

    // Again: nothing to do.
    let again = install_docker(&pool, &root)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.action, Action::AlreadyPresent);
    assert_eq!(again.version, outcome.version);
    assert!(again.warnings.is_empty() && again.os.is_none(), "{again:?}");

    // Docker that answers the login user needs no root: once plain is in
    // the docker group (from its next login), it is present for plain too.
    let out = run(&pool, &root, &["usermod", "-aG", "docker", "plain"]).await;
    assert!(out.success(), "usermod: {}", out.stderr_text());
    pool.forget(&plain).await;
    let present = install_docker(&pool, &plain)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(present.action, Action::AlreadyPresent);
}
