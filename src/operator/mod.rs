//! The operator's passes over the fleet: discover, observe, record. Each is
//! one function the daemon, `reconcile --once` and the CLI share.

mod lifecycle;
mod observe;

pub use lifecycle::node_state;
pub use observe::{Observed, observe, record};
