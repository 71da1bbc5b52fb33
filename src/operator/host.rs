//! Steps that need root on a node, run as the login user through Docker.
//!
//! Production nodes log in as `prism`, a user in the docker group, never
//! as root, and keep no sudo rule. Membership of the docker group is root
//! on that machine by Docker's design (it can start a privileged
//! container); Prism uses it openly for the few steps that need root
//! (mounting a volume, a network interface), instead of hiding it behind
//! sudo rules: a short-lived container from `[fleet]
//! helper_image` enters the host's namespaces (those of PID 1) and runs one
//! command there, with the host's own programs. It is removed when the
//! command ends (`--rm`): nothing of Prism's is left running on the node.
//! Each such command is recorded, whole, in the event log. A node whose
//! login user is root takes the same path.

use super::apply::ActionError;
use crate::observe::labels;
use crate::ssh::{ExecLimits, Output, Pool, Target};
use crate::store::{Level, NewEvent, Writer};

/// Labels the helper's container carries: the fleet's, and what it is.
pub const HOST_LABEL: &str = "prism.host-command";

/// `docker run` of the helper that runs `argv` as root in the host's
/// namespaces.
pub fn host_argv(fleet: &str, helper_image: &str, argv: &[String]) -> Vec<String> {
    // What root on the host needs, named rather than `--privileged`
    // (which asks for every capability, more than some hosts' own bounding
    // set holds): mounts and namespaces, another process's namespaces,
    // network devices; every device; no confinement profile (AppArmor's
    // docker-default forbids mounts).
    let mut out: Vec<String> = [
        "docker",
        "run",
        "--rm",
        "--cap-add",
        "SYS_ADMIN",
        "--cap-add",
        "SYS_PTRACE",
        "--cap-add",
        "NET_ADMIN",
        "--device-cgroup-rule",
        "a *:* rwm",
        "--security-opt",
        "apparmor=unconfined",
        "--security-opt",
        "seccomp=unconfined",
        "--pid",
        "host",
        "--network",
        "host",
        "--ipc",
        "host",
        "--uts",
        "host",
        "--label",
    ]
    .map(String::from)
    .into();
    out.push(format!("{}={fleet}", labels::FLEET));
    out.push("--label".into());
    out.push(format!("{HOST_LABEL}=1"));
    out.extend(
        [
            "--",
            helper_image,
            "nsenter",
            "-t",
            "1",
            "-m",
            "-u",
            "-i",
            "-n",
            "-p",
            "--",
            // The host's own PATH, not the helper image's.
            "env",
            HOST_PATH,
        ]
        .map(String::from),
    );
    out.extend(argv.iter().cloned());
    out
}

/// The PATH a root login has on Debian and its kin.
const HOST_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How a root command is named in an error: a script by its name and
/// arguments (`sh -c SCRIPT NAME ARGS…`), else the command as given.
fn short(argv: &[String]) -> String {
    match argv {
        [sh, c, _script, rest @ ..] if sh == "sh" && c == "-c" && !rest.is_empty() => {
            rest.join(" ")
        }
        _ => argv.join(" "),
    }
}

/// Runs `argv` as root on `target` through the helper (see the module);
/// records the exact command as an event first. An error when the
/// command could not be run or exited non-zero.
pub async fn run_as_root(
    pool: &Pool,
    journal: &Writer,
    target: &Target,
    fleet: &str,
    helper_image: &str,
    argv: &[String],
    limits: ExecLimits,
) -> Result<Output, ActionError> {
    let full = host_argv(fleet, helper_image, argv);
    let shown = shlex::try_join(full.iter().map(String::as_str)).unwrap_or_else(|_| full.join(" "));
    journal.event(
        NewEvent::new(
            Level::Info,
            "node.root_command",
            format!("as root through Docker, as {}: {shown}", target.user),
        )
        .node(target.id.clone()),
    );
    let out = pool.exec(target, &full, None, limits).await?;
    if out.success() {
        Ok(out)
    } else {
        Err(ActionError::Command {
            command: format!("{} (as root)", short(argv)),
            brief: out.brief(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helper_enters_the_hosts_namespaces_and_runs_the_command_as_given() {
        let argv: Vec<String> = ["mount", "-t", "tmpfs", "none", "/mnt/a b"]
            .map(String::from)
            .into();
        let got = host_argv("hobby", "reg/helper@sha256:0123", &argv);
        assert_eq!(
            got.join(" "),
            "docker run --rm --cap-add SYS_ADMIN --cap-add SYS_PTRACE --cap-add NET_ADMIN \
             --device-cgroup-rule a *:* rwm --security-opt apparmor=unconfined \
             --security-opt seccomp=unconfined --pid host --network host --ipc host --uts host \
             --label prism.fleet=hobby --label prism.host-command=1 -- reg/helper@sha256:0123 \
             nsenter -t 1 -m -u -i -n -p -- env \
             PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
             mount -t tmpfs none /mnt/a b"
        );
        // The command's words stay words: the SSH layer quotes each.
        assert_eq!(got.last().map(String::as_str), Some("/mnt/a b"));
        let script: Vec<String> = ["sh", "-c", "long\nscript", "prism-mount", "vol-1"]
            .map(String::from)
            .into();
        assert_eq!(short(&script), "prism-mount vol-1");
        assert_eq!(short(&argv), "mount -t tmpfs none /mnt/a b");
    }
}
