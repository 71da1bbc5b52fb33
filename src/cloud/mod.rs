//! Where nodes come from: EC2 instances found by tag, or a static list in
//! fleet.toml. Both become the same `Node`, so everything after discovery
//! is blind to the source.

mod ebs;
mod ec2;
mod inventory;
mod listed;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use ebs::{CloudError, Ebs, TAG_FLEET, TAG_FORMATTED};
pub use ec2::Ec2;
pub use inventory::Stale;
pub(crate) use inventory::{Found, Inventory};

use crate::config::{Config, Provider};
use crate::ssh::Target;

/// How the machine is billed; spot nodes can be taken away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lifecycle {
    Spot,
    OnDemand,
    Static,
}

impl Lifecycle {
    pub fn parse(s: &str) -> Option<Lifecycle> {
        [Lifecycle::Spot, Lifecycle::OnDemand, Lifecycle::Static]
            .into_iter()
            .find(|l| l.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::Spot => "spot",
            Lifecycle::OnDemand => "on-demand",
            Lifecycle::Static => "static",
        }
    }
}

/// What the provider says of the machine (EC2's instance state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Presence {
    Pending,
    Running,
    /// Shutting down, stopping or stopped: it is going away, act at once.
    Leaving,
    /// Terminated: EC2 still lists it for a while; it is no node of the
    /// fleet any more, but its listing tells that it went.
    Ended,
}

/// One machine of the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    /// The instance id, or a static node's name: host keys are pinned per id.
    pub id: String,
    /// What people call it: the Name tag, the static name, else the id.
    pub name: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    pub provider: Provider,
    pub zone: Option<String>,
    pub instance_type: Option<String>,
    pub lifecycle: Lifecycle,
    pub presence: Presence,
    /// EC2 says stopped (not stopping, not shutting down): nothing runs on
    /// it any more, so the pods that hold data may leave it.
    pub halted: bool,
    /// Epoch milliseconds.
    pub launched_at: Option<i64>,
    /// Memory and CPU declared ahead (fleet.toml); the smaller of this and
    /// what the node reports is used.
    pub memory: Option<u64>,
    /// Millicores.
    pub cpu: Option<u64>,
    pub tags: BTreeMap<String, String>,
}

impl Node {
    pub fn target(&self) -> Target {
        Target {
            id: self.id.clone(),
            address: self.address.clone(),
            port: self.port,
            user: self.user.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("EC2 DescribeInstances failed: {0}")]
    Ec2(String),
    #[error("EC2 instance {id} has no {kind} address (set [discovery] address)")]
    NoAddress { id: String, kind: &'static str },
}

/// What the provider answered.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// The fleet's machines, terminated ones left out.
    pub nodes: Vec<Node>,
    /// Every id the answer named.
    pub listed: std::collections::BTreeSet<String>,
}

/// The fleet's inventory source, made once and asked on every pass.
pub enum Discovery {
    Ec2(Ec2),
    Listed(Vec<Node>),
}

impl Discovery {
    pub async fn from_config(config: &Config) -> Discovery {
        match config.fleet.discovery.provider {
            Provider::Ec2 => Discovery::Ec2(Ec2::from_config(config).await),
            Provider::Static => Discovery::Listed(listed::nodes(config)),
        }
    }

    /// The fleet's machines now (terminated ones left out), sorted by id.
    pub async fn nodes(&self) -> Result<Vec<Node>, DiscoveryError> {
        Ok(self.listing().await?.nodes)
    }

    /// The fleet's machines now, and every id the provider has word of
    /// (terminated ones included).
    pub async fn listing(&self) -> Result<Listing, DiscoveryError> {
        let mut all = match self {
            Discovery::Ec2(ec2) => ec2.nodes().await?,
            Discovery::Listed(nodes) => nodes.clone(),
        };
        all.sort_by(|a, b| a.id.cmp(&b.id));
        let listed = all.iter().map(|n| n.id.clone()).collect();
        all.retain(|n| n.presence != Presence::Ended);
        Ok(Listing { nodes: all, listed })
    }
}
