//! Job runs and the jobs' plan: argv as data, no node needed.

use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::config::Millicores;
use crate::observe::{ContainerId, Health, Identity};
use crate::reconcile::{NodeState, Secret, Secrets};

fn desired(secret: bool) -> (Desired, crate::config::Fleet) {
    let text = format!(
        r#"
        [fleet]
        name = "hobby"
        helper_image = "reg/helper@sha256:0123"
        [discovery]
        provider = "static"
        nodes = [{{ name = "n1", address = "10.0.0.1" }}]
        [apps.blog.services.web]
        image = "blog:1"
        env = {{ APP_ENV = "production" }}
        memory = "256M"
        {}
        [apps.blog.jobs.schedule]
        schedule = "* * * * *"
        service = "web"
        command = ["php", "artisan", "schedule:run"]
        env = {{ QUIET = "1" }}
        timeout = "30s"
        "#,
        if secret {
            r#"secrets = { APP_KEY = { env = "APP_KEY" } }"#
        } else {
            ""
        }
    );
    let fleet = crate::config::parse(Path::new("fleet.toml"), &text).expect("valid");
    let mut secrets = Secrets::default();
    if secret {
        secrets.insert("blog", "web", "APP_KEY", Secret::new("base64:s3cret"));
    }
    (Desired::build(&fleet, &secrets).expect("desired"), fleet)
}

#[test]
fn a_job_runs_detached_with_its_deadline_and_a_watchdog() {
    let (d, fleet) = desired(false);
    let job = &fleet.apps["blog"].jobs["schedule"];
    let run = job_run(&d, "blog", "schedule", job, 1700000000).expect("run");
    assert_eq!(run.name, "prism.hobby.blog.job.schedule.1700000000");
    assert_eq!(run.labels.deadline, 1700000030);
    assert_eq!(
        run.argv.join(" "),
        "docker run --detach --init --name prism.hobby.blog.job.schedule.1700000000 \
         --network prism.hobby.blog.0 --label prism.fleet=hobby --label prism.app=blog \
         --label prism.job=schedule --label prism.deadline=1700000030 --memory 268435456 \
         -e APP_ENV=production -e QUIET=1 -- blog:1 php artisan schedule:run"
    );
    assert_eq!(
        run.watchdog.join(" "),
        "docker run --detach --rm --name prism.hobby.blog.job.schedule.1700000000.timeout \
         --pid container:prism.hobby.blog.job.schedule.1700000000 --network none \
         --memory 16m --label prism.fleet=hobby \
         --label prism.watchdog=prism.hobby.blog.job.schedule.1700000000 \
         -- reg/helper@sha256:0123 sh -c sleep 30; kill -KILL -1"
    );
    assert!(run.env_file.is_none());
}

#[test]
fn secrets_go_to_the_env_file_never_argv() {
    let (d, fleet) = desired(true);
    let job = &fleet.apps["blog"].jobs["schedule"];
    let run = job_run(&d, "blog", "schedule", job, 1).expect("run");
    assert!(!run.argv.join(" ").contains("s3cret"));
    assert!(
        run.argv
            .windows(2)
            .any(|w| w == ["--env-file", "/dev/stdin"])
    );
    assert_eq!(
        run.env_file.expect("env file").expose(),
        "APP_KEY=base64:s3cret\n"
    );
}

fn node(id: &str, state: NodeState) -> NodeView {
    NodeView {
        id: id.into(),
        address: "10.0.0.1".into(),
        zone: None,
        memory: Bytes(1 << 30),
        cpu: Millicores(1000),
        state,
        images: None,
        stopped: false,
        silent_for: None,
        mesh: None,
    }
}

fn placed(node: &str) -> Vec<Placement> {
    vec![Placement {
        app: "blog".into(),
        instance: 0,
        node_id: node.into(),
        placed_at: 0,
    }]
}

fn run_container(state: RunState, deadline: i64, exit_code: i64) -> ContainerState {
    ContainerState {
        id: ContainerId::parse(&"c0ffee00".repeat(8)).expect("an id"),
        name: "prism.hobby.blog.job.schedule.100".into(),
        image: "blog:1".into(),
        image_id: "sha256:1".into(),
        identity: Identity::Job(JobLabels {
            fleet: "hobby".into(),
            app: "blog".into(),
            job: "schedule".into(),
            deadline,
        }),
        state,
        health: Health::None,
        exit_code,
        error: None,
        oom_killed: false,
        restart_count: 0,
        created_at: 100_000,
        started_at: Some(100_000),
        finished_at: Some(112_000),
        ports: vec![],
        volumes: BTreeMap::new(),
        mesh_ip: None,
    }
}

fn tick(at: i64) -> Tick {
    Tick {
        app: "blog".into(),
        job: "schedule".into(),
        at,
    }
}

fn kinds(plan: &JobPlan, node: &str) -> Vec<String> {
    plan.actions
        .get(node)
        .map(|a| a.iter().map(|a| a.to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn a_tick_runs_on_the_node_of_instance_0_after_the_helper_pull() {
    let (d, _) = desired(false);
    let nodes = [node("n1", NodeState::Ready)];
    let observed = BTreeMap::from([("n1".to_owned(), vec![])]);
    let plan = plan_jobs(&d, &[tick(200)], &nodes, &observed, &placed("n1"), 200);
    assert_eq!(
        kinds(&plan, "n1"),
        [
            "+ pull reg/helper@sha256:0123 (if missing)",
            "+ run job blog/schedule (prism.hobby.blog.job.schedule.200, until unix 230)"
        ]
    );
    assert!(plan.skipped.is_empty());
}

#[test]
fn a_run_still_going_skips_the_tick_on_any_node_and_after_a_restart() {
    let (d, _) = desired(false);
    let nodes = [node("n1", NodeState::Ready), node("n2", NodeState::Ready)];
    // The run was started by an operator that died: only its labels tell.
    let observed = BTreeMap::from([
        ("n1".to_owned(), vec![]),
        (
            "n2".to_owned(),
            vec![run_container(RunState::Running, 230, 0)],
        ),
    ]);
    let plan = plan_jobs(&d, &[tick(220)], &nodes, &observed, &placed("n1"), 220);
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
    assert_eq!(
        plan.skipped,
        [(tick(220), "the previous run still goes".into())]
    );
}

#[test]
fn ended_runs_are_reported_and_removed_overdue_ones_removed() {
    let (d, _) = desired(false);
    let nodes = [node("n1", NodeState::Ready)];
    let exited = run_container(RunState::Exited, 230, 3);
    let observed = BTreeMap::from([("n1".to_owned(), vec![exited])]);
    let plan = plan_jobs(&d, &[tick(240)], &nodes, &observed, &placed("n1"), 240);
    let acts = kinds(&plan, "n1");
    assert_eq!(
        acts[0],
        "- remove job blog/schedule (prism.hobby.blog.job.schedule.100, ended with exit 3 after 12s)"
    );
    assert!(acts[2].starts_with("+ run job blog/schedule"), "{acts:?}");
    // Running past deadline and grace: removed, and the tick waits.
    let overdue = run_container(RunState::Running, 230, 0);
    let observed = BTreeMap::from([("n1".to_owned(), vec![overdue.clone()])]);
    let late = 230 + OVERDUE_GRACE.as_secs() as i64 + 1;
    let plan = plan_jobs(&d, &[tick(late)], &nodes, &observed, &placed("n1"), late);
    assert_eq!(
        kinds(&plan, "n1"),
        [
            "- remove job blog/schedule (prism.hobby.blog.job.schedule.100, still running past its deadline (unix 230))"
        ]
    );
    assert_eq!(plan.skipped.len(), 1);
    // Within the grace, the watchdog has the first word: nothing yet.
    let observed = BTreeMap::from([("n1".to_owned(), vec![overdue])]);
    assert!(
        plan_jobs(&d, &[], &nodes, &observed, &placed("n1"), 235)
            .actions
            .is_empty()
    );
}

#[test]
fn a_tick_without_a_ready_node_is_skipped_saying_why() {
    let (d, _) = desired(false);
    let observed = BTreeMap::from([("n1".to_owned(), vec![])]);
    let plan = plan_jobs(
        &d,
        &[tick(1)],
        &[node("n1", NodeState::Ready)],
        &observed,
        &[],
        1,
    );
    assert_eq!(plan.skipped[0].1, "blog/0 is not placed on a node yet");
    let plan = plan_jobs(
        &d,
        &[tick(1)],
        &[node("n1", NodeState::Suspect)],
        &observed,
        &placed("n1"),
        1,
    );
    assert_eq!(plan.skipped[0].1, "its node n1 is not ready this pass");
}
