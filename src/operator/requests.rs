//! Requests other processes leave in the store for the applier (the
//! dashboard attached to a daemon, `prism confirm`): taken once a second
//! and handed to the loop, which acts on them and records what came of
//! each, on the request and as an event.

use std::sync::Arc;
use std::time::Duration;

use super::run::{Control, Input};
use crate::store::Writer;

/// How often the store is looked at for new requests.
const POLL: Duration = Duration::from_secs(1);

/// Takes requests every second and hands them to the loop, until the task
/// is dropped.
pub async fn poll(journal: Writer, control: Arc<Control>) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match journal.call("take requests", |s| s.take_requests()).await {
            Ok(requests) => {
                for req in requests {
                    tracing::info!(id = req.id, kind = req.kind.as_str(), by = %req.by, "request taken");
                    control.send(Input::Request(req));
                }
            }
            Err(e) => tracing::debug!(error = %e, "cannot read requests"),
        }
    }
}
