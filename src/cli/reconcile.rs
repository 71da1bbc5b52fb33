//! `prism reconcile --once`: converge, then exit. For cron: prints nothing
//! when there was nothing to do. It applies as the daemon does (the lock
//! with its heartbeat, then passes through the one applier), without the
//! proxy.

use std::time::{Duration, Instant};

use super::Failure;
use crate::config::Config;
use crate::operator::{Applying, Control, Heard, Input, Loop};

/// Pause between passes while waiting for new containers to be ready.
const SETTLE: Duration = Duration::from_secs(1);

/// Exit status of a run that did not fail outright.
pub(crate) enum Converged {
    Yes,
    /// Some action failed, or the timeout came first.
    No,
}

pub async fn once(config: Config, timeout: Duration) -> Result<Converged, Failure> {
    let started = Instant::now();
    let (operator, memory, applying) = Applying::begin(config, "reconcile --once").await?;
    let stop = applying.fence.clone();
    let heartbeat = crate::operator::keep_lease(stop, || {});
    let (control, inbox) = Control::new();
    let mut the_loop = Loop {
        applier: applying.applier(&operator),
        operator: std::sync::Arc::new(operator),
        memory,
        journal: applying.journal.clone(),
        fence: applying.fence.clone(),
        workers: applying.workers.clone(),
        interval: SETTLE,
        budget: timeout,
        progress: Some(Box::new(|heard: Heard<'_>| match heard {
            Heard::Placement(c) => println!("{c}"),
            Heard::Outcome(node, o) => match &o.result {
                Ok(_) => println!("{node}: {}", o.action),
                Err(e) => eprintln!("{node}: {}: FAILED: {e}", o.action),
            },
        })),
        pending: None,
        held_reload: None,
        control,
        inbox,
    };
    // What was asked meanwhile (a confirm, a drain, a restart) counts for
    // this run, as a daemon would take it.
    let asked = applying
        .journal
        .call("take requests", |s| s.take_requests())
        .await?;
    for req in asked {
        the_loop.take(Input::Request(req));
    }
    let result = converge(&mut the_loop, started, timeout).await;
    heartbeat.abort();
    drop(the_loop);
    applying.finish().await;
    result
}

async fn converge(l: &mut Loop, started: Instant, timeout: Duration) -> Result<Converged, Failure> {
    loop {
        l.budget = timeout.saturating_sub(started.elapsed());
        let (report, _, outcomes) = l.pass().await;
        // For `prism status`, `prism volumes` and an attached dashboard.
        l.journal.submit("publish the pass's plan", {
            let published = report.published();
            move |s| s.publish_plan(&published)
        });
        if let Some(e) = &report.error {
            eprintln!("error: {e}");
            return Err(Failure::Reported(1));
        }
        let Some(planned) = &report.planned else {
            return Ok(Converged::No);
        };
        for p in &planned.plan.problems {
            eprintln!("{p}");
        }
        for h in &planned.held {
            eprintln!(
                "{h}: `prism confirm` lets it go ahead, or it does by itself once seen for [guard] hold"
            );
        }
        // A preparing node's failed pull only lets it go ready: the next
        // pass places its pods, whose own pulls then fail.
        if outcomes.iter().any(|o| o.failed() && !o.prepare()) {
            return Ok(Converged::No);
        }
        let plan = &planned.plan;
        let idle = l.workers.at_work().is_empty();
        if plan.is_empty() && plan.waiting.is_empty() && planned.held.is_empty() && idle {
            return Ok(Converged::Yes);
        }
        if started.elapsed() + SETTLE >= timeout {
            for w in &plan.waiting {
                eprintln!("waiting: {w}");
            }
            eprintln!(
                "not converged after {}: the next run goes on from here",
                humantime::format_duration(timeout)
            );
            return Ok(Converged::No);
        }
        tokio::time::sleep(SETTLE).await;
    }
}
