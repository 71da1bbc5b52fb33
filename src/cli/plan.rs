//! `prism plan`: what a reconcile would do now. Reads the nodes, changes
//! nothing on them.

use std::io::Write;

use serde::Serialize;

use super::Failure;
use crate::config::Config;
use crate::operator::{Memory, Operator, Planned};
use crate::reconcile::{Hold, NodeView, Plan};
use crate::store::{Store, Writer};

#[derive(Serialize)]
struct PlanJson<'a> {
    fleet: &'a str,
    nodes: &'a [NodeView],
    #[serde(flatten)]
    plan: &'a Plan,
    /// Changes held back by the guards against mass change.
    held: &'a [Hold],
}

pub async fn run(config: Config, json: bool) -> Result<(), Failure> {
    let store = Store::open(&config.state_path())?;
    let mut memory = Memory::load(&store)?;
    let journal = Writer::start(store);
    let operator = Operator::new(config, Some(journal.clone())).await?;
    let mut planned = operator.observe_and_plan(&mut memory, &journal).await?;
    operator.guard_apps(&mut memory, &journal, &mut planned);
    // What the probes recorded lands before the process ends.
    journal.call("finish writing", |_| Ok(())).await?;
    let mut out = std::io::stdout().lock();
    if json {
        let doc = PlanJson {
            fleet: &operator.desired.fleet,
            nodes: &planned.views,
            plan: &planned.plan,
            held: &planned.held,
        };
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        out.write_all(human(&planned).as_bytes())?;
    }
    Ok(())
}

pub fn human(planned: &Planned) -> String {
    let plan = &planned.plan;
    let mut text = String::new();
    for (node, actions) in &plan.actions {
        text.push_str(&format!("on {}:\n", planned.label(node)));
        for a in actions {
            text.push_str(&format!("  {a}\n"));
        }
    }
    if !plan.placement_changes.is_empty() {
        text.push_str("placements:\n");
        for c in &plan.placement_changes {
            text.push_str(&format!("  {c}\n"));
        }
    }
    for p in &plan.problems {
        text.push_str(&format!("{p}\n"));
    }
    for w in &plan.waiting {
        text.push_str(&format!("… {w}\n"));
    }
    for h in &planned.held {
        text.push_str(&format!(
            "{h}\n  it goes ahead once still seen after [guard] hold, or at once with `prism confirm`\n"
        ));
    }
    if plan.is_empty() && plan.waiting.is_empty() && planned.held.is_empty() {
        text.push_str("No changes: the nodes run what fleet.toml asks for.\n");
    }
    text
}
