//! The operator's passes over the fleet: discover, observe, check health,
//! record, plan, apply. Each is one function the daemon, `reconcile --once` and the CLI share.

mod apply;
mod front;
mod health;
mod jobs;
mod lifecycle;
mod metrics;
mod observe;
mod pass;
mod published;
mod requests;
mod routing;
mod run;

pub use apply::{Outcome, apply};
pub use front::{Front, FrontError, Serving};
pub use health::{CheckResult, check, check_all};
pub use lifecycle::{GONE, Misses, node_state};
pub use metrics::FleetMetrics;
pub use observe::{Observed, Recorder, observe, observe_with_metadata};
pub use pass::{Operator, PassError, Planned};
pub use routing::{ProxyRouter, Router, Routes, routes};
pub use run::{Control, PassReport, run as run_loop, run_applier};
