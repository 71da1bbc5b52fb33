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
mod host;
mod jobs;
mod lease;
mod lifecycle;
mod memory;
mod mesh_local;
mod metrics;
mod observe;
mod pass;
mod published;
mod requests;
mod routing;
mod run;
mod runtime;

pub use apply::{Applier, Outcome};
pub use front::FrontError;
pub(crate) use front::{Front, Serving};
pub use health::{check, check_all};
pub use host::{HOST_LABEL, host_argv, run_as_root};
pub(crate) use lease::HEARTBEAT_LATE;
pub use lease::{Fence, keep as keep_lease};
pub(crate) use memory::Memory;
pub use mesh_local::LocalMesh;
pub(crate) use metrics::FleetMetrics;
pub use observe::{Observed, observe, record};
pub use pass::{Operator, PassError, Planned};
pub(crate) use routing::ProxyRouter;
pub use routing::{Routes, routes};
pub(crate) use run::{Control, Heard, Loop, PassReport};
pub use run::{Input, LoopEnd};
pub(crate) use runtime::Applying;
pub use runtime::{Options, RunError, Running, StartError, start};
