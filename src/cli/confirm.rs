//! `prism confirm`: lets the changes the guards against mass change hold
//! back go ahead, by a request in the state store that the applier takes
//! (a cron `reconcile --once` takes it at its next run).

use super::Failure;
use crate::config::Config;
use crate::store::{NewRequest, RequestKind, Store};

pub fn run(config: &Config) -> Result<(), Failure> {
    let Some(store) = Store::open_existing(&config.state_path())? else {
        println!("nothing is held back: this fleet has not been reconciled yet");
        return Ok(());
    };
    let held = store.holds()?;
    if held.is_empty() {
        println!("nothing is held back");
        return Ok(());
    }
    let id = store.add_request(&NewRequest {
        kind: RequestKind::Confirm,
        node_id: None,
        container: None,
        by: format!("prism confirm (pid {})", std::process::id()),
    })?;
    for h in &held {
        println!("confirmed: {}", h.summary);
    }
    println!("request {id}: the applier lets these go ahead at its next pass");
    Ok(())
}
