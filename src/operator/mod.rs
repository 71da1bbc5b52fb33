//! The operator's passes over the fleet: discover, observe, record. Each is
//! one function the daemon, `reconcile --once` and the CLI share.

mod observe;

pub use observe::{Observed, observe, record};
