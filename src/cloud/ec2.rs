//! EC2 discovery: DescribeInstances filtered by the fleet's tags, paginated,
//! through the standard AWS credential chain and region.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, Instance, InstanceLifecycleType, InstanceStateName};

use super::{DiscoveryError, Lifecycle, Node, Presence};
use crate::config::{AddressKind, Config, Provider};

/// Instance states that still matter. Terminated instances are gone; a node
/// missing from the answer is gone too.
const STATES: [&str; 6] = [
    "pending",
    "running",
    "shutting-down",
    "stopping",
    "stopped",
    "terminated",
];

/// The AWS settings of fleet.toml's `[discovery]`: region, profile,
/// endpoint, with the standard credential chain.
pub(super) async fn sdk_config(config: &Config) -> aws_config::SdkConfig {
    let d = &config.fleet.discovery;
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = &d.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(profile) = &d.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(endpoint) = &d.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    // A pass waits on discovery: an endpoint that hangs must not stall
    // it. Transient errors (throttling, a dropped connection) are retried
    // here; what remains is retried by the inventory, with backoff.
    loader
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_attempt_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(12))
                .build(),
        )
        .retry_config(
            aws_config::retry::RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(200)),
        )
        .load()
        .await
}

pub struct Ec2 {
    client: aws_sdk_ec2::Client,
    tags: BTreeMap<String, String>,
    address: AddressKind,
    user: String,
    port: u16,
    memory: Option<u64>,
    cpu: Option<u64>,
}

impl Ec2 {
    pub async fn from_config(config: &Config) -> Ec2 {
        let fleet = &config.fleet;
        let d = &fleet.discovery;
        let client = aws_sdk_ec2::Client::new(&sdk_config(config).await);
        let tags = d.tags.clone().unwrap_or_else(|| {
            BTreeMap::from([("prism:fleet".to_owned(), fleet.fleet.name.clone())])
        });
        Ec2 {
            client,
            tags,
            address: d.address.unwrap_or_default(),
            user: fleet.ssh.user.clone(),
            port: fleet.ssh.port,
            memory: d.node_memory.map(|b| b.0),
            cpu: d.node_cpus.map(|m| m.0),
        }
    }

    pub async fn nodes(&self) -> Result<Vec<Node>, DiscoveryError> {
        let mut request = self.client.describe_instances().filters(
            Filter::builder()
                .name("instance-state-name")
                .set_values(Some(STATES.iter().map(|s| s.to_string()).collect()))
                .build(),
        );
        for (key, value) in &self.tags {
            request = request.filters(
                Filter::builder()
                    .name(format!("tag:{key}"))
                    .values(value)
                    .build(),
            );
        }
        let mut pages = request.into_paginator().send();
        let mut nodes = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| {
                DiscoveryError::Ec2(aws_sdk_ec2::error::DisplayErrorContext(e).to_string())
            })?;
            for instance in page.reservations().iter().flat_map(|r| r.instances()) {
                if let Some(node) = self.node(instance)? {
                    nodes.push(node);
                }
            }
        }
        Ok(nodes)
    }

    fn node(&self, i: &Instance) -> Result<Option<Node>, DiscoveryError> {
        let Some(id) = i.instance_id() else {
            return Ok(None);
        };
        let presence = match i.state().and_then(|s| s.name()) {
            Some(InstanceStateName::Pending) => Presence::Pending,
            Some(InstanceStateName::Running) => Presence::Running,
            Some(
                InstanceStateName::ShuttingDown
                | InstanceStateName::Stopping
                | InstanceStateName::Stopped,
            ) => Presence::Leaving,
            Some(InstanceStateName::Terminated) => Presence::Ended,
            _ => return Ok(None),
        };
        let (address, kind) = match self.address {
            AddressKind::Private => (i.private_ip_address(), "private"),
            AddressKind::Public => (i.public_ip_address(), "public"),
        };
        let address = match (address, presence) {
            (Some(a), _) => a.to_owned(),
            // A pending instance may not have its address yet; a leaving
            // one may have lost it. Neither is an error.
            (None, Presence::Pending | Presence::Leaving | Presence::Ended) => String::new(),
            (None, Presence::Running) => {
                return Err(DiscoveryError::NoAddress {
                    id: id.to_owned(),
                    kind,
                });
            }
        };
        let tags: BTreeMap<String, String> = i
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or("").to_owned())))
            .collect();
        let lifecycle = match i.instance_lifecycle() {
            Some(InstanceLifecycleType::Spot) => Lifecycle::Spot,
            _ => Lifecycle::OnDemand,
        };
        Ok(Some(Node {
            id: id.to_owned(),
            name: tags.get("Name").cloned().unwrap_or_else(|| id.to_owned()),
            address,
            port: self.port,
            user: self.user.clone(),
            provider: Provider::Ec2,
            zone: i
                .placement()
                .and_then(|p| p.availability_zone())
                .map(str::to_owned),
            instance_type: i.instance_type().map(|t| t.as_str().to_owned()),
            lifecycle,
            presence,
            halted: i.state().and_then(|s| s.name()) == Some(&InstanceStateName::Stopped),
            launched_at: i.launch_time().and_then(|t| t.to_millis().ok()),
            memory: self.memory,
            cpu: self.cpu,
            tags,
        }))
    }
}
