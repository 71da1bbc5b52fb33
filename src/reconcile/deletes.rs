//! Volumes someone asked to delete (`prism volumes delete`, one request in
//! the state store per volume): the only way Prism deletes data. Planned
//! like any other action, so the one applier runs them. A volume that
//! fleet.toml still asks for, or that is attached or in use, is refused
//! with why. Pure.

use std::collections::BTreeMap;

use super::desired::Desired;
use super::plan::{Action, VolumeRef};
use super::schedule::{NodeState, NodeView};
use super::storage::{EbsState, Storage, local_volume, wanted};
use crate::store::{Request, VolumeKind};

/// Per node, the deletes to run there; the asks planned, with the node
/// each went to; and the asks refused, with why, by request id.
#[derive(Debug, Default)]
pub(crate) struct Deletes {
    pub actions: BTreeMap<String, Vec<Action>>,
    pub planned: Vec<(String, Request)>,
    pub refused: Vec<(i64, String)>,
}

/// The deletes `asks` want. A request names the volume by its id (`vol-…`
/// for EBS, the Docker volume's name for a local one, with its node).
pub(crate) fn plan_deletes(
    desired: &Desired,
    asks: &[Request],
    views: &[NodeView],
    storage: &Storage,
) -> Deletes {
    let mut out = Deletes::default();
    for ask in asks {
        match plan_one(desired, ask, views, storage) {
            Ok((node, action)) => {
                out.actions.entry(node.clone()).or_default().push(action);
                out.planned.push((node, ask.clone()));
            }
            Err(why) => out.refused.push((ask.id, why)),
        }
    }
    out
}

fn plan_one(
    desired: &Desired,
    ask: &Request,
    views: &[NodeView],
    storage: &Storage,
) -> Result<(String, Action), String> {
    let id = ask
        .container
        .as_deref()
        .ok_or("a volume delete needs the volume's id")?;
    let ready = |n: &NodeView| n.state == NodeState::Ready;
    if id.starts_with("vol-") {
        let ebs = storage
            .ebs
            .as_ref()
            .ok_or("EC2 could not list the fleet's EBS volumes this pass: nothing deleted")?;
        let v = ebs
            .iter()
            .find(|v| v.id == id)
            .ok_or_else(|| format!("{id} is not an EBS volume of this fleet"))?;
        let key = v
            .key
            .clone()
            .ok_or_else(|| format!("{id}'s tags do not name a pod's volume: left alone"))?;
        if wanted(desired, &key, VolumeKind::Durable) && !storage.superseded(v) {
            return Err(format!(
                "{key} ({id}) is still in fleet.toml: remove it (or lower the app's instances) first"
            ));
        }
        if let Some(a) = &v.attachment {
            return Err(format!(
                "{key} ({id}) is attached to {} ({}): try again once a pass has detached it",
                a.instance,
                a.state.as_str()
            ));
        }
        if v.state != EbsState::Available {
            return Err(format!("{key} ({id}) is {}", v.state.as_str()));
        }
        // An EC2 call: it runs on a ready node's worker, as every action
        // does, and touches nothing on that node.
        let node = views
            .iter()
            .find(|n| ready(n))
            .ok_or("no node is ready to run the delete: try again later")?;
        return Ok((
            node.id.clone(),
            Action::DeleteVolume {
                volume: key,
                id: VolumeRef::Ebs(id.to_owned()),
                request: ask.id,
            },
        ));
    }
    let node = ask
        .node_id
        .as_deref()
        .ok_or_else(|| format!("{id}: a local volume's delete needs its node"))?;
    if !views.iter().any(|n| n.id == node && ready(n)) {
        return Err(format!("node {node} is not ready: try again later"));
    }
    let present = storage
        .local
        .get(node)
        .ok_or_else(|| format!("node {node}'s volumes could not be listed this pass"))?;
    if !present.contains(id) {
        return Err(format!("node {node} has no volume {id} of this fleet"));
    }
    let (key, kind) = local_volume(&desired.fleet, id)
        .ok_or_else(|| format!("{id} is not a pod's volume: left alone"))?;
    if wanted(desired, &key, kind) {
        return Err(format!(
            "{key} ({id}) is still in fleet.toml: remove it (or lower the app's instances) first"
        ));
    }
    Ok((
        node.to_owned(),
        Action::DeleteVolume {
            volume: key,
            id: VolumeRef::Docker(id.to_owned()),
            request: ask.id,
        },
    ))
}
