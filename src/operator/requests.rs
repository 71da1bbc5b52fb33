//! Serves requests other processes left in the store for the applier
//! (the dashboard attached to a daemon): reconcile now, restart a
//! container, drain a node. Each is taken once, acted on, and its outcome
//! recorded on the request and as an event.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;

use super::{Control, Operator};
use crate::reconcile::docker::{STOP_GRACE, restart_argv};
use crate::ssh::ExecLimits;
use crate::store::{ContainerRecord, Level, NewEvent, Request, RequestKind};
use crate::tasks::panic_message;

/// How often the store is looked at for new requests.
const POLL: Duration = Duration::from_secs(1);

/// Takes and serves requests every second, until the task is dropped.
pub async fn serve(operator: Arc<Operator>, control: Arc<Control>) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let taken = operator.lock().take_requests();
        let requests = match taken {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read requests");
                continue;
            }
        };
        for req in requests {
            let outcome = unless_panicked(handle(&operator, &control, &req)).await;
            let (ok, text) = match &outcome {
                Ok(t) => (true, t.as_str()),
                Err(t) => (false, t.as_str()),
            };
            tracing::info!(id = req.id, kind = req.kind.as_str(), by = %req.by, ok, "{text}");
            let store = operator.lock();
            let level = if ok { Level::Info } else { Level::Error };
            let mut event = NewEvent::new(
                level,
                &format!("request.{}", req.kind.as_str()),
                format!("{text} (asked by {})", req.by),
            );
            event.node_id = req.node_id.clone();
            if let Err(e) = store
                .finish_request(req.id, ok, text)
                .and_then(|()| store.record_event(&event).map(|_| ()))
            {
                tracing::warn!(error = %e, id = req.id, "cannot record a request's outcome");
            }
        }
    }
}

/// `acting`'s outcome, or a failure naming the panic if it panicked: the
/// request is still answered, and the server goes on with the next one.
async fn unless_panicked(
    acting: impl Future<Output = Result<String, String>>,
) -> Result<String, String> {
    match AssertUnwindSafe(acting).catch_unwind().await {
        Ok(outcome) => outcome,
        Err(payload) => {
            let message = panic_message(payload.as_ref());
            tracing::error!(panic = %message, "acting on a request panicked");
            Err(format!("Prism panicked while acting on it: {message}"))
        }
    }
}

/// Acts on one request: what was done, or why not.
pub async fn handle(
    operator: &Operator,
    control: &Control,
    req: &Request,
) -> Result<String, String> {
    match req.kind {
        RequestKind::Reconcile => {
            control.reconcile_now();
            Ok("reconcile started".into())
        }
        RequestKind::Restart => restart(operator, req).await,
        RequestKind::Drain => {
            let Some(id) = req.node_id.as_deref() else {
                return Err("drain needs a node".into());
            };
            let Some(node) = operator.drain(id) else {
                return Err(format!("node {id} was not found by the latest pass"));
            };
            control.reconcile_now();
            Ok(format!(
                "draining {} ({}): its pods start elsewhere, then leave it",
                node.name, node.id
            ))
        }
    }
}

/// The node and container a restart request names, if Prism recorded
/// that container on that node: a request cannot name anything else on
/// the machine.
fn restart_of<'a>(
    req: &'a Request,
    recorded: &[ContainerRecord],
) -> Result<(&'a str, &'a str), String> {
    let (Some(node_id), Some(name)) = (req.node_id.as_deref(), req.container.as_deref()) else {
        return Err("restart needs a node and a container".into());
    };
    if recorded
        .iter()
        .any(|c| c.node_id == node_id && c.name == name)
    {
        Ok((node_id, name))
    } else {
        Err(format!("no fleet container {name} on {node_id}"))
    }
}

async fn restart(operator: &Operator, req: &Request) -> Result<String, String> {
    let recorded = operator.lock().containers().map_err(|e| e.to_string())?;
    let (node_id, name) = restart_of(req, &recorded)?;
    let Some(node) = operator.node(node_id) else {
        return Err(format!("node {node_id} was not found by the latest pass"));
    };
    let argv = restart_argv(name, STOP_GRACE);
    let limits = ExecLimits {
        timeout: STOP_GRACE + Duration::from_secs(30),
        ..ExecLimits::default()
    };
    match operator
        .pool
        .exec(&node.target(), &argv, None, limits)
        .await
    {
        Ok(out) if out.success() => Ok(format!("restarted {name} on {}", node.name)),
        Ok(out) => Err(format!(
            "docker restart {name} on {}: {}",
            node.name,
            out.brief()
        )),
        Err(e) => Err(format!("docker restart {name} on {}: {e}", node.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RequestState;

    #[tokio::test]
    async fn a_panic_while_acting_is_a_failed_request_with_its_message() {
        let ok = unless_panicked(async { Ok("done".to_owned()) }).await;
        assert_eq!(ok, Ok("done".to_owned()));
        let failed = unless_panicked(async {
            if true {
                panic!("no such node row");
            }
            Ok(String::new())
        })
        .await;
        assert_eq!(
            failed,
            Err("Prism panicked while acting on it: no such node row".to_owned())
        );
    }

    fn request(node: Option<&str>, container: Option<&str>) -> Request {
        Request {
            id: 1,
            at: 0,
            kind: RequestKind::Restart,
            node_id: node.map(Into::into),
            container: container.map(Into::into),
            by: "dashboard (pid 1)".into(),
            state: RequestState::Running,
            done_at: None,
            result: None,
        }
    }

    fn recorded(node: &str, name: &str) -> ContainerRecord {
        ContainerRecord {
            node_id: node.into(),
            name: name.into(),
            app: "blog".into(),
            service: "web".into(),
            instance: 0,
            image: "blog:1".into(),
            state: "running".into(),
            health: None,
            restarts: 0,
            ports: String::new(),
            started_at: None,
            spec_hash: None,
            observed_at: 0,
        }
    }

    #[test]
    fn only_a_recorded_fleet_container_is_restarted() {
        let known = [recorded("i-1", "prism-blog-web-0")];
        assert_eq!(
            restart_of(&request(Some("i-1"), Some("prism-blog-web-0")), &known),
            Ok(("i-1", "prism-blog-web-0"))
        );
        // Not on that node, not Prism's, or not named at all.
        assert_eq!(
            restart_of(&request(Some("i-2"), Some("prism-blog-web-0")), &known),
            Err("no fleet container prism-blog-web-0 on i-2".into())
        );
        assert!(restart_of(&request(Some("i-1"), Some("postgres")), &known).is_err());
        assert!(restart_of(&request(None, Some("prism-blog-web-0")), &known).is_err());
        assert!(restart_of(&request(Some("i-1"), None), &known).is_err());
    }
}
