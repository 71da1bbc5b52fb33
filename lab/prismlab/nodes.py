"""Nodes: containers running sshd and, but for the bare node, their own
dockerd; the lab's ssh key and the nodes' host keys; the stand-in instance
metadata service inside each node."""

import os
import socket
import time

from .common import (
    AZS, AZ_FIRST, ZONE_SLOTS, BARE_CONTAINER, BARE_IP, IMDS_ACTION, IMDS_PORT, IMDS_REBALANCE, IMDS_ROOT,
    LABEL, NET, STATE, USER_DATA, Fail, container_info, docker, path, run, step, tail, warn,
    write_file,
)

NODE_RUN_FLAGS = [
    "--cgroupns", "private",
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined",
    "--security-opt", "apparmor=unconfined",
    "--security-opt", "systempaths=unconfined",
    "--tmpfs", "/run",
    "--tmpfs", "/var/lib/docker:size=2g",
    # Every device, as a VM's root has: Prism's privileged helper
    # containers (root steps as the login user) need it.
    "--device-cgroup-rule", "a *:* rwm",
    # The mesh's userspace WireGuard (wireguard-go) needs a TUN device.
    "--device", "/dev/net/tun",
]


def node_spec(k, state, fleet="lab", zone=None):
    """Node number k in `zone` (by default the zones take turns) at the
    lowest address of that zone's subnet no node of this lab has had."""
    az = (k - 1) % 3 if zone is None else AZS.index(zone)
    taken = {n["address"] for n in state["nodes"] + state.get("preempted", [])}
    free = (f"172.31.250.{AZ_FIRST[az] + j}" for j in range(ZONE_SLOTS))
    addr = next((a for a in free if a not in taken), None)
    if addr is None:
        raise Fail(f"no address left in {AZS[az]} ({ZONE_SLOTS} nodes have had one): lab/lab down, then up")
    return {
        "name": f"node{k}",
        "index": k,
        "address": addr,
        "az": AZS[az],
        "container": f"prism-lab-node{k}",
        "instance_id": None,
        "host_keys": [],
        "fleet": fleet,
    }


def ensure_key():
    with step("ssh key"):
        key = path("id_ed25519")
        if not os.path.exists(key):
            os.makedirs(STATE, exist_ok=True)
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "prism-lab", "-f", key])
        with open(key + ".pub") as f:
            return f.read().strip()


def is_partitioned(info):
    return NET not in ((info.get("NetworkSettings") or {}).get("Networks") or {})


def ssh_banner(addr, timeout=1.0):
    try:
        with socket.create_connection((addr, 22), timeout=timeout) as s:
            s.settimeout(timeout)
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def start_node(node, image, pubkey, timeout=90, engine=True):
    """Makes sure node's container runs and answers (sshd, and its dockerd
    unless engine is False); fills in host_keys."""
    name, c = node["name"], node["container"]
    with step(name):
        info = container_info(c)
        if info and not info["State"]["Running"]:
            docker("rm", "-f", c)
            info = None
        if info is None:
            docker("run", "-d", "--name", c, "--hostname", name,
                   "--label", LABEL, "--label", f"prism-lab.node={name}",
                   *NODE_RUN_FLAGS, "--network", NET, "--ip", node["address"],
                   "-e", f"LAB_AUTHORIZED_KEY={pubkey}", image)
            started = True
        else:
            started = False
            if info["Config"]["Image"] != image:
                fresh = f"lab/lab preempt {name} && lab/lab add" if engine else "lab/lab bare down && lab/lab bare up"
                warn(f"{name} runs an older node image, kept ({fresh} to refresh)")
            if is_partitioned(info):
                warn(f"{name} is partitioned: left so (lab/lab heal {name})")
        deadline = time.monotonic() + timeout
        ssh_ok = False
        docker_ok = not engine
        partitioned = info is not None and is_partitioned(info)
        while not (docker_ok and (ssh_ok or partitioned)):
            if time.monotonic() > deadline:
                logs = docker("logs", "--tail", "5", c, check=False)
                what = "sshd on port 22" if not ssh_ok else "the inner dockerd"
                raise Fail(f"{what} of {node['address']} did not answer within {timeout} s: "
                           f"{tail(logs.stderr + logs.stdout)}")
            st = container_info(c)
            if st is None or not st["State"]["Running"]:
                logs = docker("logs", "--tail", "5", c, check=False)
                raise Fail(f"container {c} stopped while starting: {tail(logs.stderr + logs.stdout)}")
            if not ssh_ok and not partitioned:
                ssh_ok = ssh_banner(node["address"])
            if not docker_ok:
                # One slow answer (a loaded machine: images pushed, other
                # nodes starting) is a "not yet"; only the deadline fails.
                left = max(1, min(20, deadline - time.monotonic()))
                try:
                    docker_ok = docker("exec", c, "docker", "info", "--format", "{{.ServerVersion}}",
                                       check=False, timeout=left).returncode == 0
                except Fail:
                    docker_ok = False
            if not (docker_ok and (ssh_ok or partitioned)):
                time.sleep(0.2)
        if engine and started:
            run_user_data(node)
        keys = docker("exec", c, "sh", "-c", "cat /etc/ssh/ssh_host_*_key.pub").stdout
        node["host_keys"] = [" ".join(line.split()[:2]) for line in keys.splitlines() if len(line.split()) >= 2]
        if not any(k.startswith("ssh-ed25519 ") for k in node["host_keys"]):
            raise Fail(f"{c} has no ed25519 host key")
        return started


def run_user_data(node):
    """Runs the nodes' EC2 user data (contrib/aws/user-data.sh) on a new
    node as cloud-init would, as root, with the lab's key filled in: it
    makes the login user NODE_USER."""
    with open(USER_DATA) as f:
        script = f.read().replace("REPLACE-WITH-THE-OPERATOR-PUBLIC-KEY", ensure_key())
    p = docker("exec", "-i", node["container"], "bash", "-s", input=script, check=False, timeout=120)
    if p.returncode != 0:
        raise Fail(f"{node['name']}: the user data exited {p.returncode}: {tail(p.stderr or p.stdout)}")


def imds_listening(c):
    return docker("exec", c, "sh", "-c", f"ss -Hltn 'sport = :{IMDS_PORT}' | grep -q .",
                  check=False).returncode == 0


def ensure_imds(node):
    """Starts the stand-in metadata service in the node unless it runs."""
    c = node["container"]
    with step(f"{node['name']} metadata"):
        if imds_listening(c):
            return
        if not os.path.exists("/bin/busybox"):
            raise Fail("/bin/busybox is missing (lab/lab install puts busybox-static in place)")
        # Named busybox: it picks the applet from its name otherwise.
        docker("exec", c, "mkdir", "-p", "/usr/local/lib/lab")
        docker("cp", "/bin/busybox", f"{c}:/usr/local/lib/lab/busybox")
        docker("exec", c, "mkdir", "-p", os.path.dirname(f"{IMDS_ROOT}/{IMDS_ACTION}"),
               os.path.dirname(f"{IMDS_ROOT}/{IMDS_REBALANCE}"))
        docker("exec", "-d", c, "/usr/local/lib/lab/busybox", "httpd", "-f",
               "-p", f"127.0.0.1:{IMDS_PORT}", "-h", IMDS_ROOT)
        deadline = time.monotonic() + 10
        while not imds_listening(c):
            if time.monotonic() > deadline:
                raise Fail(f"the stand-in metadata service of {node['name']} did not listen within 10 s")
            time.sleep(0.1)


def write_known_hosts(state):
    lines = [f"{n['address']} {k}" for n in state["nodes"] for k in n.get("host_keys", [])]
    write_file(path("known_hosts"), "".join(line + "\n" for line in lines))


def bare_spec():
    return {"name": "bare", "address": BARE_IP, "container": BARE_CONTAINER, "host_keys": []}
