//! The commands of mesh actions: the set-up (as root, through Docker, by
//! `mesh.sh`) and the names (as the login user).

use std::time::Duration;

use super::Context;
use super::commands::{ActionError, as_root, limits};
use crate::reconcile::{Action, MeshSetup};
use crate::ssh::Target;

/// The set-up script: a constant, its input passed as arguments.
const MESH_SCRIPT: &str = include_str!("mesh.sh");

/// Where the resolver reads the names (`mesh.sh` makes the folder the
/// login user's).
pub(crate) const NAMES_DIR: &str = "/etc/prism/names";

/// A first set-up installs units and may start wireguard-go.
const SETUP: Duration = Duration::from_secs(90);
const NAMES: Duration = Duration::from_secs(20);

/// Whether `action` is one of this module's.
pub(super) fn handles(action: &Action) -> bool {
    matches!(action, Action::SetUpMesh { .. } | Action::WriteNames { .. })
}

/// Runs a mesh action (see [`handles`]).
pub(super) async fn run(cx: &Context, target: &Target, action: &Action) -> Result<(), ActionError> {
    match action {
        Action::SetUpMesh { setup } => {
            let argv = setup_argv(setup, &target.user, &cx.fleet);
            as_root(cx, target, &argv, SETUP).await.map(|_| ())
        }
        Action::WriteNames { hosts, .. } => {
            let out = cx
                .pool
                .exec(target, &names_argv(), Some(hosts.as_bytes()), limits(NAMES))
                .await?;
            if out.success() {
                Ok(())
            } else {
                Err(ActionError::Command {
                    command: format!("writing the names to {NAMES_DIR}/hosts"),
                    brief: out.brief(),
                })
            }
        }
        _ => Ok(()),
    }
}

/// `sh -c SCRIPT prism-mesh ARGS…` (see `mesh.sh` for the arguments).
pub(crate) fn setup_argv(setup: &MeshSetup, user: &str, fleet: &str) -> Vec<String> {
    let mut argv: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        MESH_SCRIPT.into(),
        "prism-mesh".into(),
        setup.interface.clone(),
        setup.port.to_string(),
        setup.cidr.to_string(),
        setup.subnet.to_string(),
        setup.gateway.to_string(),
        setup.domain.clone(),
        setup.hash.clone(),
        user.into(),
        fleet.into(),
    ];
    for p in &setup.peers {
        argv.push(p.public_key.clone());
        argv.push(p.endpoint.clone().unwrap_or_else(|| "-".into()));
        argv.push(p.allowed.to_string());
    }
    argv
}

/// Writes stdin to the names file in one step: a dot-file first (the
/// resolver skips those), then renamed over the old one.
fn names_argv() -> Vec<String> {
    [
        "sh",
        "-c",
        "set -e; d=$1; cat > \"$d/.hosts.new\"; chmod 0644 \"$d/.hosts.new\"; mv -f \"$d/.hosts.new\" \"$d/hosts\"",
        "prism-names",
        NAMES_DIR,
    ]
    .map(String::from)
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::Peer;

    #[test]
    fn the_setup_passes_everything_as_arguments_and_nothing_secret() {
        let setup = MeshSetup {
            interface: "prism0".into(),
            port: 51820,
            cidr: "10.210.0.0/16".parse().unwrap(),
            subnet: "10.210.2.0/24".parse().unwrap(),
            gateway: "10.210.2.1".parse().unwrap(),
            domain: "internal".into(),
            peers: vec![
                Peer {
                    public_key: "AAAA".into(),
                    endpoint: None,
                    allowed: "10.210.0.0/24".parse().unwrap(),
                },
                Peer {
                    public_key: "BBBB".into(),
                    endpoint: Some("172.31.250.10:51820".into()),
                    allowed: "10.210.1.0/24".parse().unwrap(),
                },
            ],
            hash: "0123456789abcdef".into(),
        };
        let argv = setup_argv(&setup, "prism", "lab");
        assert_eq!(argv[2], MESH_SCRIPT, "the script is a constant");
        assert_eq!(
            argv[3..].join(" "),
            "prism-mesh prism0 51820 10.210.0.0/16 10.210.2.0/24 10.210.2.1 internal \
             0123456789abcdef prism lab AAAA - 10.210.0.0/24 BBBB 172.31.250.10:51820 10.210.1.0/24"
        );
        // The script reads its arguments once, by position.
        assert!(MESH_SCRIPT.contains(
            "iface=$1 port=$2 cidr=$3 subnet=$4 gw=$5 domain=$6 hash=$7 user=$8 fleet=$9"
        ));
        // The private key is made on the node and only ever read there.
        assert!(MESH_SCRIPT.contains("wg genkey > \"$key.new\""));
        assert!(!MESH_SCRIPT.contains("echo \"$(cat \"$key\")"));
    }
}
