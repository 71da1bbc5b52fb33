//! Looking at a lab node from inside, as root (`docker exec`), and asking
//! the mesh's resolvers: for the mesh's tests and benchmark.

use std::process::Command;

use anyhow::{Context, Result, ensure};

use crate::common::Node;

/// Runs `script` as root on the node.
pub fn on_node(node: &Node, script: &str) -> Result<String> {
    let out = Command::new("docker")
        .args(["exec", &node.container, "sh", "-c", script])
        .output()
        .context("docker exec")?;
    ensure!(
        out.status.success(),
        "{script} on {}: {}{}",
        node.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A field of the node's mesh state (`/etc/prism/mesh/state`).
pub fn mesh_state(node: &Node, key: &str) -> Result<String> {
    let state = on_node(node, "cat /etc/prism/mesh/state")?;
    state
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' '))
        .map(str::to_owned)
        .with_context(|| format!("no {key} in the mesh state of {}", node.name))
}

/// The node's mesh gateway, where its resolver answers.
pub fn gateway(node: &Node) -> Result<String> {
    let subnet = mesh_state(node, "subnet")?;
    let (net, _) = subnet.rsplit_once(".0/").context("a /24")?;
    Ok(format!("{net}.1"))
}

/// What `name` resolves to at the resolver at `gw`, sorted.
pub fn resolve(gw: &str, name: &str) -> Result<Vec<String>> {
    let out = Command::new("dig")
        .args(["+short", "+time=1", "+tries=1", &format!("@{gw}"), name])
        .output()
        .context("dig (dnsutils)")?;
    ensure!(out.status.success(), "dig @{gw} {name}: {out:?}");
    let mut ips: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    ips.sort();
    Ok(ips)
}
