//! The operator's passes over the fleet: discover, observe, record. Each is
//! one function the daemon, `reconcile --once` and the CLI share.

mod health;
mod lifecycle;
mod observe;

pub use health::{CheckResult, check, check_all};
pub use lifecycle::node_state;
pub use observe::{Observed, observe, record};
