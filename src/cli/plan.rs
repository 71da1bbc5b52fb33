//! `prism plan`: what a reconcile would do now. Reads the nodes, changes
//! nothing on them.

use std::io::Write;

use serde::Serialize;

use super::Failure;
use crate::cloud::Node;
use crate::config::Config;
use crate::operator::{Operator, Planned};
use crate::reconcile::{NodeView, Plan};

#[derive(Serialize)]
struct PlanJson<'a> {
    fleet: &'a str,
    nodes: &'a [NodeView],
    #[serde(flatten)]
    plan: &'a Plan,
}

pub async fn run(config: Config, json: bool) -> Result<(), Failure> {
    let operator = Operator::new(config).await?;
    let planned = operator.observe_and_plan().await?;
    let mut out = std::io::stdout().lock();
    if json {
        let doc = PlanJson {
            fleet: &operator.desired.fleet,
            nodes: &planned.views,
            plan: &planned.plan,
        };
        serde_json::to_writer_pretty(&mut out, &doc)?;
        writeln!(out)?;
    } else {
        out.write_all(human(&planned).as_bytes())?;
    }
    Ok(())
}

/// A node's name for people: `node1 (i-0abc…)`, or the id alone.
pub fn node_label(nodes: &[Node], id: &str) -> String {
    match nodes.iter().find(|n| n.id == id) {
        Some(n) if n.name != n.id => format!("{} ({})", n.name, n.id),
        _ => id.to_owned(),
    }
}

pub fn human(planned: &Planned) -> String {
    let plan = &planned.plan;
    let mut text = String::new();
    for (node, actions) in &plan.actions {
        text.push_str(&format!("on {}:\n", node_label(&planned.nodes, node)));
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
    if plan.is_empty() && plan.waiting.is_empty() {
        text.push_str("No changes: the nodes run what fleet.toml asks for.\n");
    }
    text
}
