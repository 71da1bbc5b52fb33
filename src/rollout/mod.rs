//! Deploy, scale and rollback, for the command line and the API alike:
//! an audited, reversible edit of fleet.toml (edit.rs), and when asked, a
//! wait for it to roll out that puts the app back if it does not
//! (wait.rs). The applier rolls a change out as it does a hand edit.

mod edit;
mod wait;

pub use edit::{Change, Recorded, RolloutError, make};
pub use wait::{Outcome, Progress, Seen, Watch, progress};
