//! The operator: discover, observe, check health, record, plan, apply.
//!
//! | module | job |
//! |---|---|
//! | `runtime` | the one start-up of an applying process: lock, then ports, then the loop |
//! | `run` | the loop: owns what the operator remembers, runs passes, takes inputs |
//! | `pass` | one pass: discover → observe → record → plan (pure) |
//! | `apply` | the one place that changes nodes: a worker per node, a fence per action |
//! | `lease` | the apply lock's heartbeat and fence |
//! | `memory` | what the applier knows between passes, written through to the store |
//! | `observe`, `lifecycle`, `health` | probes, node states, Prism's own checks |
//! | `jobs`, `requests` | job ticks and requests from the store, as inputs to the loop |
//! | `front`, `routing`, `metrics`, `published` | the proxy in front, its routes, the metrics, the plan as published |

mod apply;
mod front;
mod health;
mod jobs;
mod lease;
mod lifecycle;
mod memory;
mod metrics;
mod observe;
mod pass;
mod published;
mod requests;
mod routing;
mod run;
mod runtime;

pub use apply::{ActionError, Applied, Applier, Outcome, Workers};
pub use front::{Front, FrontError, Serving};
pub use health::{CheckResult, check, check_all};
pub use lease::{Fence, HEARTBEAT, HEARTBEAT_LATE, keep as keep_lease};
pub use lifecycle::Misses;
pub use memory::Memory;
pub use metrics::FleetMetrics;
pub use observe::{Observed, observe, record};
pub use pass::{Operator, PassError, Planned};
pub use routing::{ProxyRouter, Router, Routes, routes};
pub use run::{Control, Heard, Input, Loop, LoopEnd, PASS_BUDGET, PassReport, Progress};
pub use runtime::{Applying, Options, RunError, Running, StartError, start};
