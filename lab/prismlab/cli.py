"""The command line: the commands that install, bring up, grow, report on
and take down the lab, and main() with the parser."""

import argparse
import concurrent.futures
import contextlib
import json
import os
import shlex
import shutil
import sys
import time

from .common import (
    AUTH_REGISTRY, AUTH_REGISTRY_HOST, AUTH_REGISTRY_LAB, AUTH_USER, BARE_CONTAINER, BARE_IP,
    AZS, GATEWAY, IMDS_URL, LABEL, MAX_INDEX, MOTO_URL, NET, REGION, REGISTRY, REGISTRY_HOST,
    REGISTRY_IP, REGISTRY_LAB, STATE, SUBNET, TESTAPP_NODE, TESTAPP_VARIANTS, POSTGRES_NODE, Fail, container_info, docker, lab_lock,
    NODE_USER, load_state, path, require_state, save_state, say, step, warn, write_file,
)
from .install import do_install, docker_answers
from .images import (
    ensure_base, ensure_helper_image, ensure_node_image, ensure_postgres_image, ensure_registry_image,
    ensure_testapp_image, remove_images,
)
from .network import ensure_network, network_info
from .registry import (
    auth_path, auth_registry_state, ensure_auth_registry, ensure_registry, helper_ref,
    trust_auth_registry,
)
from .nodes import (
    bare_spec, ensure_imds, ensure_key, is_partitioned, node_spec, start_node, write_known_hosts,
)
from .ec2 import ec2, instances, moto_answers, register, start_moto, stop_moto, tags_of
from .faults import cmd_dockerd, cmd_heal, cmd_notice, cmd_partition, cmd_preempt

FLEET_TOML = """\
# Written by lab/lab up: Prism pointed at the local lab.
[fleet]
name = "lab"
state = "state.db"
helper_image = "{helper}"

[ssh]
user = "prism"
identity = "id_ed25519"
host_keys = "known_hosts"
known_hosts = "known_hosts"

[discovery]
provider = "ec2"
region = "eu-north-1"
endpoint = "http://127.0.0.1:5055"
node_memory = "2G"
node_cpus = 2

[proxy]
listen = "127.0.0.1:8080"

[apps.demo]
instances = 2
[apps.demo.services.web]
image = "172.31.250.2:5000/prism/testapp:1"
port = 8080
hosts = ["demo.lab.test"]
memory = "64M"
health = { http = "/up", interval = "2s", timeout = "1s" }
[apps.demo.services.worker]
image = "172.31.250.2:5000/prism/testapp:1"
command = ["sh", "-c", "while true; do sleep 60; done"]
memory = "32M"
"""


# ------------------------------------------------------------------ files


def new_state():
    return {
        "version": 1,
        "next_index": 1,
        "nodes": [],
        "preempted": [],
        "network": {"name": NET, "subnet": SUBNET, "gateway": GATEWAY},
        "moto": {"url": MOTO_URL, "region": REGION},
        "registry": {
            "container": REGISTRY,
            "address": REGISTRY_IP,
            "host": REGISTRY_HOST,
            "lab": REGISTRY_LAB,
            "testapp_image": TESTAPP_NODE,
            "testapp_variants": {tag: f"{REGISTRY_LAB}/prism/testapp:{tag}" for tag in TESTAPP_VARIANTS},
            "postgres_image": POSTGRES_NODE,
        },
        "ssh": {"user": NODE_USER, "identity": path("id_ed25519"), "known_hosts": path("known_hosts")},
        "decoys": {},
    }


def write_client_files(state):
    with step("write files"):
        save_state(state)
        write_known_hosts(state)
        write_file(path("fleet.toml"), FLEET_TOML.replace("{helper}", helper_ref()))
        write_file(path("env"),
                   "# Written by lab/lab up: source it to point Prism and AWS clients at the lab.\n"
                   f"export AWS_ACCESS_KEY_ID=lab AWS_SECRET_ACCESS_KEY=lab AWS_REGION={REGION} "
                   f"PRISM_CONFIG={shlex.quote(path('fleet.toml'))}\n")


# ------------------------------------------------------------------ commands


def cmd_install(args):
    with lab_lock():
        do_install()


def cmd_up(args):
    t0 = time.monotonic()
    if args.nodes < 1:
        raise Fail("--nodes must be at least 1", "arguments")
    with lab_lock():
        do_install(quiet=True)
        with step("moto"):
            wait_moto = start_moto()
        ensure_base()
        node_image = ensure_node_image()
        registry_image = ensure_registry_image()
        ensure_testapp_image()
        ensure_helper_image()
        ensure_postgres_image()
        ensure_network()
        pubkey = ensure_key()

        state = load_state() or new_state()
        state["ssh"] = new_state()["ssh"]
        state["registry"] = new_state()["registry"]
        state["nodes"] = sorted(state["nodes"], key=lambda n: n["index"])
        # Nodes added to another fleet (`add --fleet`) are not counted.
        while sum(1 for n in state["nodes"] if n.get("fleet", "lab") == "lab") < args.nodes:
            k = state["next_index"]
            if k > MAX_INDEX:
                raise Fail(f"node index {k} is past the lab's {MAX_INDEX}: lab/lab down, then up", "nodes")
            state["nodes"].append(node_spec(k, state))
            state["next_index"] = k + 1
        if len(state["nodes"]) > args.nodes:
            say(f"keeping all {len(state['nodes'])} live nodes (more than --nodes {args.nodes})")

        with concurrent.futures.ThreadPoolExecutor(max_workers=len(state["nodes"]) + 1) as pool:
            reg = pool.submit(ensure_registry, registry_image)
            starts = {pool.submit(start_node, n, node_image, pubkey): n for n in state["nodes"]}
            errors = []
            for fut, node in starts.items():
                try:
                    if fut.result():
                        say(f"{node['name']}: started at {node['address']} ({node['az']})")
                except Fail as e:
                    errors.append(e)
            try:
                reg.result()
                ensure_auth_registry(registry_image)
                state["registry_auth"] = auth_registry_state()
                for n in state["nodes"]:
                    trust_auth_registry(n)
            except Fail as e:
                errors.append(e)
            if errors:
                first = errors[0]
                if len(errors) > 1:
                    first.msg += f" (and {len(errors) - 1} more failures)"
                save_state(state)
                raise first
        wait_moto()
        register(state)
        write_client_files(state)
    elapsed = time.monotonic() - t0
    for n in state["nodes"]:
        say(f"  {n['name']:<7} {n['address']:<15} {n['az']}  {n['instance_id']}")
    say(f"registry {REGISTRY_HOST} (nodes: {REGISTRY_LAB}), moto {MOTO_URL}; `. {path('env')}` for Prism")
    say(f"up: {len(state['nodes'])} nodes in {elapsed:.1f} s")


def cmd_add(args):
    t0 = time.monotonic()
    with lab_lock():
        state = require_state()
        with step("add"):
            if network_info() is None:
                raise Fail(f"docker network {NET} is missing: run lab/lab up")
            if not moto_answers():
                raise Fail(f"moto does not answer on {MOTO_URL}: run lab/lab up")
            k = state["next_index"]
            if k > MAX_INDEX:
                raise Fail(f"node index {k} is past the lab's {MAX_INDEX}: lab/lab down, then up")
        node_image = ensure_node_image()
        pubkey = ensure_key()
        node = node_spec(k, state, args.fleet, args.zone)
        state["next_index"] = k + 1
        state["nodes"].append(node)
        save_state(state)
        start_node(node, node_image, pubkey)
        trust_auth_registry(node)
        ensure_imds(node)
        register(state, only={node["name"]})
        write_client_files(state)
    say(f"added {node['name']} at {node['address']} ({node['az']}) to fleet {node['fleet']}, "
        f"instance {node['instance_id']}, "
        f"in {time.monotonic() - t0:.1f} s")


def cmd_bare_up(args):
    t0 = time.monotonic()
    with lab_lock():
        state = require_state()
        with step("bare"):
            if network_info() is None:
                raise Fail(f"docker network {NET} is missing: run lab/lab up")
        ensure_base()
        image = ensure_node_image("bare")
        pubkey = ensure_key()
        node = bare_spec()
        started = start_node(node, image, pubkey, engine=False)
        with step("write files"):
            state["bare"] = node
            save_state(state)
            write_file(path("bare_known_hosts"), "".join(f"{node['address']} {k}\n" for k in node["host_keys"]))
    what = "started" if started else "already running"
    say(f"bare node {what} at {BARE_IP} ({BARE_CONTAINER}), no Docker; host keys in {path('bare_known_hosts')} "
        f"({time.monotonic() - t0:.1f} s)")


def cmd_bare_down(args):
    with lab_lock():
        with step("remove bare node"):
            if container_info(BARE_CONTAINER) is not None:
                docker("rm", "-f", BARE_CONTAINER, timeout=120)
                say(f"removed {BARE_CONTAINER}")
            else:
                say(f"{BARE_CONTAINER} was not running")
        with step("remove state"):
            state = load_state()
            if state is not None and state.pop("bare", None) is not None:
                save_state(state)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path("bare_known_hosts"))


def cmd_status(args):
    report = {"dockerd": None, "moto": None, "network": None, "registry": None,
              "nodes": [], "instances": [], "stray_containers": []}
    state = load_state()
    report["lab_json"] = path("lab.json") if state else None

    dockerd_ok = docker_answers()
    report["dockerd"] = "up" if dockerd_ok else "down"
    containers = {}
    if dockerd_ok:
        p = docker("ps", "-aq", "--filter", f"label={LABEL}")
        ids = p.stdout.split()
        if ids:
            for info in json.loads(docker("container", "inspect", *ids).stdout):
                containers[info["Name"].lstrip("/")] = info
        report["network"] = "up" if network_info() else "missing"
        reg = containers.get(REGISTRY)
        report["registry"] = reg["State"]["Status"] if reg else "missing"
        reg = containers.get(AUTH_REGISTRY)
        report["registry_auth"] = reg["State"]["Status"] if reg else "missing"

    moto_ok = moto_answers()
    report["moto"] = "up" if moto_ok else "down"
    by_id = {}
    if moto_ok:
        try:
            for inst in instances(ec2()):
                row = {"id": inst["InstanceId"], "state": inst["State"]["Name"],
                       "address": inst.get("PrivateIpAddress"),
                       "az": (inst.get("Placement") or {}).get("AvailabilityZone"),
                       "lifecycle": inst.get("InstanceLifecycle"), "tags": tags_of(inst)}
                report["instances"].append(row)
                by_id[row["id"]] = row
        except Exception as e:  # a broken moto is reported, not fatal here
            report["moto"] = f"error: {type(e).__name__}: {e}"

    known = set()
    for kind, nodes in (("live", (state or {}).get("nodes", [])), ("preempted", (state or {}).get("preempted", []))):
        for n in nodes:
            known.add(n["container"])
            info = containers.get(n["container"])
            if not dockerd_ok:
                cstate = "unknown"
            else:
                cstate = info["State"]["Status"] if info else "missing"
            inst = by_id.get(n.get("instance_id"))
            report["nodes"].append({
                "name": n["name"], "lab": kind, "address": n["address"], "az": n["az"],
                "container": n["container"], "container_state": cstate,
                "partitioned": bool(info and info["State"]["Running"] and is_partitioned(info)),
                "instance_id": n.get("instance_id"),
                "instance_state": inst["state"] if inst else ("unknown" if not moto_ok else "missing"),
            })
    bare = (state or {}).get("bare")
    if bare:
        known.add(bare["container"])
        info = containers.get(bare["container"])
        report["bare"] = {"address": bare["address"], "container": bare["container"],
                          "container_state": (info["State"]["Status"] if info else "missing")
                          if dockerd_ok else "unknown"}
    report["stray_containers"] = sorted(c for c in containers if c not in known and c not in (REGISTRY, AUTH_REGISTRY))

    if args.json:
        print(json.dumps(report, indent=2))
        return
    if state is None:
        print("lab: not up (no .lab/lab.json)")
    print(f"dockerd:  {report['dockerd']}" + ("" if dockerd_ok else "  (docker info fails: lab/lab install starts it)"))
    print(f"moto:     {report['moto']}" + (f"  ({MOTO_URL})" if moto_ok else f"  (nothing answers on {MOTO_URL})"))
    if dockerd_ok:
        print(f"network:  {report['network']}  ({NET} {SUBNET})")
        print(f"registry: {report['registry']}  ({REGISTRY_HOST}, nodes: {REGISTRY_LAB})")
        print(f"registry with auth: {report['registry_auth']}  (https://{AUTH_REGISTRY_HOST}, "
              f"nodes: {AUTH_REGISTRY_LAB}, user {AUTH_USER}, password in {auth_path('password')})")
    if report["nodes"]:
        print()
        print(f"{'NODE':<8} {'LAB':<10} {'ADDRESS':<15} {'AZ':<12} {'CONTAINER':<10} {'NETWORK':<12} {'INSTANCE':<21} STATE")
        for n in report["nodes"]:
            net = "partitioned" if n["partitioned"] else ("connected" if n["container_state"] == "running" else "-")
            print(f"{n['name']:<8} {n['lab']:<10} {n['address']:<15} {n['az']:<12} {n['container_state']:<10} "
                  f"{net:<12} {n['instance_id'] or '-':<21} {n['instance_state']}")
    if report.get("bare"):
        b = report["bare"]
        print(f"\nbare node (no Docker, not in EC2): {b['address']}, container {b['container']} {b['container_state']}")
    if report["instances"]:
        print()
        print(f"{'INSTANCE':<21} {'STATE':<11} {'ADDRESS':<15} {'AZ':<12} TAGS")
        for i in report["instances"]:
            tags = ",".join(f"{k}={v}" for k, v in sorted(i["tags"].items()))
            print(f"{i['id']:<21} {i['state']:<11} {i['address'] or '-':<15} {i['az'] or '-':<12} {tags}")
    if report["stray_containers"]:
        print()
        print("containers labelled prism-lab=1 that lab.json does not list: " + " ".join(report["stray_containers"]))


def cmd_down(args):
    errors = []

    def attempt(name, fn):
        """Every step runs even when one fails; the first failure is raised."""
        try:
            with step(name):
                fn()
        except Fail as e:
            warn(f"{e.step}: {e.msg}")
            errors.append(e)

    def containers():
        ids = docker("ps", "-aq", "--filter", f"label={LABEL}").stdout.split()
        if ids:
            docker("rm", "-f", *ids, timeout=120)
            say(f"removed {len(ids)} containers")

    def network():
        nets = docker("network", "ls", "-q", "--filter", f"label={LABEL}").stdout.split()
        if nets:
            docker("network", "rm", *nets)
            say(f"removed network {NET}")

    def state_files():
        for fn in ("lab.json", "known_hosts", "bare_known_hosts", "env", "fleet.toml"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path(fn))
        if args.purge and os.path.isdir(STATE):
            shutil.rmtree(STATE)
            say(f"removed {STATE}")

    with lab_lock():
        if docker_answers():
            attempt("remove containers", containers)
            attempt("remove network", network)
            if args.purge:
                attempt("remove images", remove_images)
        else:
            say("dockerd is not running: no containers to remove")
        attempt("stop moto", stop_moto)
        attempt("remove state", state_files)
    if errors:
        raise errors[0]
    say("down")


# ------------------------------------------------------------------ main


def main():
    ap = argparse.ArgumentParser(
        prog="lab/lab",
        description="Prism's local lab: spot nodes (sshd + dockerd containers), an EC2 API (moto) "
                    "and an image registry on one machine. Run as root.",
        epilog="State: .lab/ (lab.json, env, fleet.toml, id_ed25519, known_hosts). "
               "After up: `. .lab/env` points Prism at the lab.",
    )
    sub = ap.add_subparsers(dest="cmd", metavar="COMMAND", required=True)

    p = sub.add_parser("install", help="install what the lab needs and start dockerd",
                       description="Install missing packages (docker.io, debootstrap, busybox-static, "
                                   "openssh-client, docker-registry; moto[server] with pip) and start "
                                   "dockerd if it does not answer.")
    p.set_defaults(func=cmd_install)

    p = sub.add_parser("up", help="bring the lab up (idempotent)",
                       description="Build what is missing (base, node, registry and testapp images), "
                                   "start the network, registry, nodes and moto, register the nodes as "
                                   "spot instances, and write .lab/{lab.json,env,fleet.toml,known_hosts}. "
                                   "Running nodes are kept; the lab is topped up to --nodes live nodes "
                                   "with fresh node numbers (a preempted node's number is never reused).")
    p.add_argument("--nodes", type=int, default=3, metavar="N", help="live nodes wanted (default 3)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("add", help="add a fresh node (next unused number, new address)",
                       description="Start a fresh node with the next unused number and register its instance.")
    p.add_argument("--fleet", default="lab", metavar="NAME",
                   help="tag the instance prism:fleet=NAME (default lab); a test that preempts nodes adds "
                        "them to its own fleet so that other fleets never place pods there")
    p.add_argument("--zone", choices=AZS, metavar="AZ",
                   help=f"the node's availability zone, one of {', '.join(AZS)} (default: the zones take turns)")
    p.set_defaults(func=cmd_add)

    p = sub.add_parser("preempt", help="kill a node and terminate its instance",
                       description="docker kill the node (everything it ran dies with it), remove it, "
                                   "and terminate its EC2 instance.")
    p.add_argument("node", metavar="NODE", help="nodeK or its address")
    p.set_defaults(func=cmd_preempt)

    p = sub.add_parser("notice", help="raise a spot interruption notice on a node",
                       description="Have the node's stand-in instance metadata service (busybox httpd on "
                                   f"the node's loopback, {IMDS_URL} as seen from the node; started if "
                                   "missing) announce that the instance will be terminated, as EC2 does "
                                   "two minutes ahead, or recommend a rebalance. Prism reads it with "
                                   f'`[lifecycle] metadata_url = "{IMDS_URL}"`.')
    p.add_argument("node", metavar="NODE", help="nodeK or its address")
    p.add_argument("--in", dest="seconds", type=int, default=120, metavar="SECONDS",
                   help="the termination time announced, from now (default 120)")
    p.add_argument("--rebalance", action="store_true", help="a rebalance recommendation instead")
    p.add_argument("--clear", action="store_true", help="withdraw both notices")
    p.set_defaults(func=cmd_notice)

    p = sub.add_parser("partition", help="cut a node off the lab network",
                       description="Disconnect the node from the lab network; it keeps running.")
    p.add_argument("node", metavar="NODE", help="nodeK or its address")
    p.set_defaults(func=cmd_partition)

    p = sub.add_parser("heal", help="reconnect a partitioned node at its address",
                       description="Connect the node to the lab network again, at the same address.")
    p.add_argument("node", metavar="NODE", help="nodeK or its address")
    p.set_defaults(func=cmd_heal)

    p = sub.add_parser("dockerd", help="stop or start Docker on a node (sshd stays up)",
                       description="Stop the node's dockerd (TERM, wait until gone) or start it again, "
                                   "as systemctl would on a real machine; the node stays reachable.")
    p.add_argument("node", metavar="NODE", help="nodeK or its address")
    p.add_argument("action", choices=["stop", "start"])
    p.set_defaults(func=cmd_dockerd)
    p = sub.add_parser("bare", help="a node with sshd but no Docker, for the bootstrap (up/down)",
                       description=f"A node at {BARE_IP} running sshd but no Docker: docker.io, containerd "
                                   "and runc removed, their packages kept in apt's cache so that apt-get "
                                   "installs them offline. Root and `plain` (no sudo) accept the lab key; "
                                   "its host keys go to .lab/bare_known_hosts. Never registered in EC2.")
    bare = p.add_subparsers(dest="bare_cmd", metavar="ACTION", required=True)
    bare.add_parser("up", help="start it (idempotent: a running one is kept)").set_defaults(func=cmd_bare_up)
    bare.add_parser("down", help="remove it (idempotent)").set_defaults(func=cmd_bare_down)

    p = sub.add_parser("status", help="nodes and EC2 instances side by side",
                       description="Each node's container, network and instance state, every instance "
                                   "moto knows, and whether dockerd and moto run.")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("down", help="remove what the lab runs (keeps cached images)",
                       description="Remove the lab's containers and network and stop moto. Cached images, "
                                   "the ssh key and the registry's data stay unless --purge.")
    p.add_argument("--purge", action="store_true", help="also remove the lab's images and .lab/")
    p.set_defaults(func=cmd_down)

    args = ap.parse_args()
    if os.geteuid() != 0 and args.cmd != "status":
        print(f"lab: {args.cmd} failed at start: run as root", file=sys.stderr)
        sys.exit(1)
    try:
        args.func(args)
    except Fail as e:
        print(f"lab: {args.cmd} failed at step '{e.step or args.cmd}': {e.msg}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"lab: {args.cmd} interrupted", file=sys.stderr)
        sys.exit(130)
