//! The mesh, the pure half (`[network]`): which /24 each node holds, each
//! node's WireGuard peers, the names every node answers, and the actions
//! that bring a node there. The apply side runs them
//! (`operator/apply/mesh.rs`); the operator's box joins through
//! `operator/mesh_local.rs`.
//!
//! Slot 0 of the cidr's /24s is the operator's box; nodes take 1, 2, ….
//! A node keeps its /24 while its instance lives: what it reports holding
//! first, then what the store remembers, then the lowest free one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::plan::Action;
use super::schedule::NodeView;
use crate::config::Network;
use crate::observe::{ContainerId, ContainerState, Health, MeshFacts, RunState};

/// The keepalive the operator's box sends each node: NAT and stateful
/// firewalls between them forget a quiet UDP flow after about 30 s.
pub const KEEPALIVE_S: u16 = 25;

/// `[network]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshSettings {
    pub cidr: Ipv4Net,
    pub port: u16,
    pub domain: String,
    pub interface: String,
}

impl MeshSettings {
    /// `None` without `[network]` (or with a cidr validation refused).
    pub fn of(network: Option<&Network>) -> Option<MeshSettings> {
        let n = network?;
        Some(MeshSettings {
            cidr: n.net()?,
            port: n.port,
            domain: n.domain.clone(),
            interface: n.interface.clone(),
        })
    }

    /// The /24 of `slot`, if the cidr has one.
    pub fn subnet(&self, slot: u16) -> Option<Ipv4Net> {
        self.cidr.subnets(24).ok()?.nth(usize::from(slot))
    }

    /// Which slot `subnet` is, if it is one of the cidr's /24s.
    fn slot_of(&self, subnet: Ipv4Net) -> Option<u16> {
        if subnet.prefix_len() != 24 || !self.cidr.contains(&subnet) {
            return None;
        }
        let offset = u32::from(subnet.network()).checked_sub(u32::from(self.cidr.network()))?;
        u16::try_from(offset >> 8).ok()
    }

    /// How many /24s the cidr holds.
    fn slots(&self) -> u32 {
        1u32 << (24u8.saturating_sub(self.cidr.prefix_len()))
    }

    /// The operator's own address: the first of slot 0.
    pub fn operator_address(&self) -> Option<Ipv4Addr> {
        self.subnet(0).map(|s| gateway(&s))
    }
}

/// The first address of a /24: the node's mesh bridge, where its
/// containers' default route and names are.
pub fn gateway(subnet: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1))
}

/// A node's place in the mesh, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub slot: u16,
    pub public_key: Option<String>,
}

/// Every listed node's slot and key: kept where it has one, a free one
/// for a new node. Nodes no longer listed lose theirs (their instance is
/// gone). `None` for a node when the cidr has no free /24 left.
pub fn members(
    settings: &MeshSettings,
    nodes: &[NodeView],
    facts: &BTreeMap<String, MeshFacts>,
    stored: &BTreeMap<String, Member>,
) -> BTreeMap<String, Member> {
    let mut out: BTreeMap<String, Member> = BTreeMap::new();
    let mut taken: BTreeSet<u16> = BTreeSet::from([0]);
    let key_of = |id: &str| {
        facts
            .get(id)
            .and_then(|f| f.public_key.clone())
            .or_else(|| stored.get(id).and_then(|m| m.public_key.clone()))
    };
    // What the node says it holds wins over the store: its containers
    // have addresses there. Then the store, then a free one.
    let reported = |id: &str| {
        facts
            .get(id)
            .and_then(|f| f.subnet)
            .and_then(|n| settings.slot_of(n))
    };
    let remembered = |id: &str| stored.get(id).map(|m| m.slot);
    for claim in [&reported as &dyn Fn(&str) -> Option<u16>, &remembered] {
        for n in nodes {
            if out.contains_key(&n.id) {
                continue;
            }
            if let Some(slot) = claim(&n.id)
                && u32::from(slot) < settings.slots()
                && taken.insert(slot)
            {
                out.insert(
                    n.id.clone(),
                    Member {
                        slot,
                        public_key: key_of(&n.id),
                    },
                );
            }
        }
    }
    let mut free = (1..settings.slots()).filter_map(|s| u16::try_from(s).ok());
    for n in nodes {
        if out.contains_key(&n.id) {
            continue;
        }
        let Some(slot) = free.find(|s| !taken.contains(s)) else {
            break;
        };
        taken.insert(slot);
        out.insert(
            n.id.clone(),
            Member {
                slot,
                public_key: key_of(&n.id),
            },
        );
    }
    out
}

/// One WireGuard peer of a node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Peer {
    pub public_key: String,
    /// `address:port`; `None` for the operator's box, which may sit behind
    /// NAT: it reaches out, and the node answers where it came from.
    pub endpoint: Option<String>,
    /// Its /24 (cryptokey routing: only it may send from there).
    pub allowed: Ipv4Net,
}

/// What a node's mesh set-up is made of; `hash` tells whether the node
/// already has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MeshSetup {
    pub interface: String,
    pub port: u16,
    pub cidr: Ipv4Net,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub domain: String,
    pub peers: Vec<Peer>,
    pub hash: String,
}

impl MeshSetup {
    fn new(settings: &MeshSettings, subnet: Ipv4Net, mut peers: Vec<Peer>) -> MeshSetup {
        peers.sort();
        let mut h = Sha256::new();
        let text = format!(
            "prism-mesh-v1\n{}\n{}\n{}\n{}\n{}\n",
            settings.interface, settings.port, settings.cidr, subnet, settings.domain
        );
        h.update(text.as_bytes());
        for p in &peers {
            h.update(
                format!(
                    "{} {} {}\n",
                    p.public_key,
                    p.endpoint.as_deref().unwrap_or("-"),
                    p.allowed
                )
                .as_bytes(),
            );
        }
        let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        MeshSetup {
            interface: settings.interface.clone(),
            port: settings.port,
            cidr: settings.cidr,
            subnet,
            gateway: gateway(&subnet),
            domain: settings.domain.clone(),
            peers,
            hash: hex.get(..16).unwrap_or(&hex).to_owned(),
        }
    }
}

/// What the operator's box needs to join: every node with a key, at its
/// address.
pub fn operator_peers(
    settings: &MeshSettings,
    nodes: &[NodeView],
    members: &BTreeMap<String, Member>,
) -> Vec<Peer> {
    let mut peers: Vec<Peer> = nodes
        .iter()
        .filter_map(|n| {
            let m = members.get(&n.id)?;
            Some(Peer {
                public_key: m.public_key.clone()?,
                endpoint: Some(endpoint(&n.address, settings.port)),
                allowed: settings.subnet(m.slot)?,
            })
        })
        .collect();
    peers.sort();
    peers
}

fn endpoint(address: &str, port: u16) -> String {
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        _ => format!("{address}:{port}"),
    }
}

/// The names every node answers: `SERVICE.APP.DOMAIN` for each instance
/// that is running and healthy (or running, without a check), and
/// `INSTANCE.SERVICE.APP.DOMAIN`, at its mesh address. As a hosts file,
/// sorted, so that the same fleet always gives the same text; the
/// resolver shuffles the answers. `last_seen`: what a node that missed
/// this pass's probe ran when it last answered (a blip renames nothing).
/// `leaving`: containers this pass removes or restarts, unnamed first.
pub fn names(
    fleet: &str,
    domain: &str,
    views: &[NodeView],
    observed: &BTreeMap<String, Vec<ContainerState>>,
    last_seen: &BTreeMap<String, Vec<ContainerState>>,
    leaving: &BTreeSet<ContainerId>,
) -> String {
    let mut lines = BTreeSet::new();
    for view in views {
        if !view.serves() {
            continue;
        }
        let seen = observed.get(&view.id).or_else(|| last_seen.get(&view.id));
        for c in seen.into_iter().flatten() {
            let (Some(l), Some(ip)) = (c.identity.prism(), c.mesh_ip) else {
                continue;
            };
            if l.fleet != fleet
                || leaving.contains(&c.id)
                || c.state != RunState::Running
                || !matches!(c.health, Health::Healthy | Health::None)
            {
                continue;
            }
            let service = format!("{}.{}.{domain}", l.service, l.app);
            lines.insert(format!("{ip} {service}"));
            lines.insert(format!("{ip} {}.{service}", l.instance));
        }
    }
    let mut text = format!("# The names of fleet {fleet}'s instances, written by Prism.\n");
    for line in lines {
        text.push_str(&line);
        text.push('\n');
    }
    text
}

/// SHA-256 of the names file, as `sha256sum` prints it.
pub fn names_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the pass needs to plan the mesh.
pub struct MeshInput<'a> {
    pub settings: &'a MeshSettings,
    pub views: &'a [NodeView],
    pub members: &'a BTreeMap<String, Member>,
    /// The operator box's public key, once it has one.
    pub operator_key: Option<&'a str>,
    /// Per node that answered with Docker usable: what it holds.
    pub facts: &'a BTreeMap<String, Option<MeshFacts>>,
    /// The names file every node should serve.
    pub names: &'a str,
}

/// Per node, the mesh actions: `SetUpMesh` first (before any container
/// joins the mesh network), `WriteNames` last.
pub fn plan_mesh(input: &MeshInput<'_>) -> (BTreeMap<String, Action>, BTreeMap<String, Action>) {
    let s = input.settings;
    let mut setups = BTreeMap::new();
    let mut names = BTreeMap::new();
    let hash = names_hash(input.names);
    for view in input.views {
        let Some(facts) = input.facts.get(&view.id) else {
            continue;
        };
        let Some(me) = input.members.get(&view.id) else {
            continue;
        };
        let Some(subnet) = s.subnet(me.slot) else {
            continue;
        };
        let mut peers: Vec<Peer> = input
            .views
            .iter()
            .filter(|v| v.id != view.id)
            .filter_map(|v| {
                let m = input.members.get(&v.id)?;
                Some(Peer {
                    public_key: m.public_key.clone()?,
                    endpoint: Some(endpoint(&v.address, s.port)),
                    allowed: s.subnet(m.slot)?,
                })
            })
            .collect();
        if let (Some(key), Some(own)) = (input.operator_key, s.subnet(0)) {
            peers.push(Peer {
                public_key: key.to_owned(),
                endpoint: None,
                allowed: own,
            });
        }
        let setup = MeshSetup::new(s, subnet, peers);
        let current = facts.as_ref().is_some_and(|f| {
            f.applied.as_deref() == Some(setup.hash.as_str())
                && f.subnet == Some(subnet)
                && f.link
                && f.resolver
        });
        let served = facts
            .as_ref()
            .is_some_and(|f| f.names.as_deref() == Some(hash.as_str()));
        if !current {
            setups.insert(
                view.id.clone(),
                Action::SetUpMesh {
                    setup: Box::new(setup),
                },
            );
        }
        if !served {
            names.insert(
                view.id.clone(),
                Action::WriteNames {
                    hosts: input.names.to_owned(),
                    records: input.names.lines().filter(|l| !l.starts_with('#')).count(),
                },
            );
        }
    }
    (setups, names)
}

#[cfg(test)]
mod tests;
