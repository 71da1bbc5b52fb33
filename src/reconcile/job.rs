//! Scheduled jobs as `docker run --rm` argv: a one-off container on the
//! node of the app's first instance, in its pod network, labelled as a job
//! (so the planner leaves it alone). Pure.

use std::collections::BTreeMap;

use super::desired::{Desired, PodKey};
use super::docker::env_file_content;
use super::secrets::Secret;
use crate::config::{Bytes, Job};
use crate::observe::labels;

/// The label naming the job; job containers carry no service or instance
/// label, so they are never mistaken for a pod's containers.
pub const JOB_LABEL: &str = "prism.job";

/// One run of a job.
#[derive(Debug, Clone)]
pub struct JobRun {
    /// The pod whose node and network the job runs in.
    pub pod: PodKey,
    pub name: String,
    pub argv: Vec<String>,
    /// The secrets' env file, to send on stdin (`--env-file /dev/stdin`).
    pub env_file: Option<Secret>,
}

/// The run of `app`'s job `job_name` started at `at` (unix seconds), or
/// why it cannot be built.
pub fn job_run(
    desired: &Desired,
    app: &str,
    job_name: &str,
    job: &Job,
    at: i64,
) -> Result<JobRun, String> {
    let spec = desired
        .apps
        .get(app)
        .ok_or_else(|| format!("app {app} is not in fleet.toml"))?;
    let service = match &job.service {
        Some(s) => Some(
            spec.service(s)
                .ok_or_else(|| format!("job {job_name}: service {s} is not in app {app}"))?,
        ),
        None => None,
    };
    let image = match (&job.image, service) {
        (Some(image), _) => image.clone(),
        (None, Some(s)) => s.container.image.clone(),
        (None, None) => return Err(format!("job {job_name} names neither image nor service")),
    };
    let mut env: BTreeMap<String, String> =
        service.map(|s| s.container.env.clone()).unwrap_or_default();
    env.extend(job.env.iter().map(|(k, v)| (k.clone(), v.0.clone())));
    let secrets = service
        .map(|s| s.container.secrets.clone())
        .unwrap_or_default();
    let memory = job
        .memory
        .or(service.map(|s| s.container.memory))
        .unwrap_or(Bytes(128 << 20));
    let pod = PodKey::new(app, 0);
    let name = format!("prism.{}.{app}.job.{job_name}.{at}", desired.fleet);
    let mut argv: Vec<String> = ["docker", "run", "--rm", "--init", "--name"]
        .map(String::from)
        .into();
    argv.push(name.clone());
    argv.extend(["--network".into(), desired.network(&pod)]);
    for (key, value) in [
        (labels::FLEET, desired.fleet.as_str()),
        (labels::APP, app),
        (JOB_LABEL, job_name),
    ] {
        argv.extend(["--label".into(), format!("{key}={value}")]);
    }
    argv.extend(["--memory".into(), memory.0.to_string()]);
    for (k, v) in &env {
        argv.extend(["-e".into(), format!("{k}={v}")]);
    }
    let env_file = if secrets.is_empty() {
        None
    } else {
        argv.extend(["--env-file".into(), "/dev/stdin".into()]);
        Some(env_file_content(&secrets).map_err(|e| e.to_string())?)
    };
    argv.extend(["--".into(), image]);
    argv.extend(job.command.iter().cloned());
    Ok(JobRun {
        pod,
        name,
        argv,
        env_file,
    })
}

/// tokio-cron-scheduler reads six fields (seconds first); fleet.toml has
/// the usual five, or an `@` macro.
pub fn scheduler_cron(expr: &str) -> String {
    let expr = expr.trim();
    if expr.starts_with('@') {
        expr.to_owned()
    } else {
        format!("0 {expr}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::{Secret, Secrets};
    use std::path::Path;

    fn desired(secret: bool) -> (Desired, crate::config::Fleet) {
        let text = format!(
            r#"
            [fleet]
            name = "hobby"
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
    fn a_job_runs_in_its_services_image_env_and_pod_network() {
        let (d, fleet) = desired(false);
        let job = &fleet.apps["blog"].jobs["schedule"];
        let run = job_run(&d, "blog", "schedule", job, 1700000000).expect("run");
        assert_eq!(run.name, "prism.hobby.blog.job.schedule.1700000000");
        let argv = run.argv.join(" ");
        assert_eq!(
            argv,
            "docker run --rm --init --name prism.hobby.blog.job.schedule.1700000000 \
             --network prism.hobby.blog.0 --label prism.fleet=hobby --label prism.app=blog \
             --label prism.job=schedule --memory 268435456 -e APP_ENV=production -e QUIET=1 \
             -- blog:1 php artisan schedule:run"
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

    #[test]
    fn five_field_cron_gets_a_seconds_field() {
        assert_eq!(scheduler_cron("*/5 * * * *"), "0 */5 * * * *");
        assert_eq!(scheduler_cron("@hourly"), "@hourly");
    }
}
