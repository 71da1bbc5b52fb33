"""Faults a test asks for: preemption, spot interruption notices, network
partitions and a stopped dockerd."""

import json
import subprocess
import time

from .common import (
    IMDS_ACTION, IMDS_REBALANCE, IMDS_ROOT, IMDS_URL, MOTO_URL, NET, Fail, container_info, docker,
    find_node, lab_lock, require_state, save_state, say, step, warn,
)
from .nodes import ensure_imds, is_partitioned, ssh_banner, write_known_hosts
from .ec2 import ec2, moto_answers


def cmd_preempt(args):
    with lab_lock():
        state = require_state()
        with step("preempt"):
            node = find_node(state, args.node)
        c = node["container"]
        with step("kill container"):
            t0 = time.monotonic()
            info = container_info(c)
            if info is None:
                warn(f"container {c} was already gone")
            else:
                if info["State"]["Running"]:
                    docker("kill", c)
                killed = time.monotonic() - t0
                docker("rm", "-f", c)
                say(f"killed {c} ({node['address']}) in {killed:.2f} s and removed it")
        state["nodes"].remove(node)
        node["preempted_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        state.setdefault("preempted", []).append(node)
        save_state(state)
        write_known_hosts(state)
        with step("terminate instance"):
            if not node.get("instance_id"):
                warn(f"{node['name']} had no instance registered")
            elif not moto_answers():
                raise Fail(f"moto does not answer on {MOTO_URL}: instance {node['instance_id']} not terminated")
            else:
                ec2().terminate_instances(InstanceIds=[node["instance_id"]])
                say(f"terminated instance {node['instance_id']} ({node['name']}, {node['az']})")
    say(f"preempted {node['name']}")


def cmd_notice(args):
    with lab_lock():
        state = require_state()
        with step("notice"):
            node = find_node(state, args.node)
            info = container_info(node["container"])
            if info is None or not info["State"]["Running"]:
                raise Fail(f"{node['name']}'s container {node['container']} is not running")
        ensure_imds(node)
        c = node["container"]
        with step("write notice"):
            stamp = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
            if args.clear:
                docker("exec", c, "rm", "-f", f"{IMDS_ROOT}/{IMDS_ACTION}", f"{IMDS_ROOT}/{IMDS_REBALANCE}")
                say(f"cleared the notices of {node['name']}")
                return
            if args.rebalance:
                rel, body = IMDS_REBALANCE, {"noticeTime": stamp(time.time())}
            else:
                rel, body = IMDS_ACTION, {"action": "terminate", "time": stamp(time.time() + args.seconds)}
            docker("exec", "-i", c, "sh", "-c", 'cat > "$1.new" && mv "$1.new" "$1"', "sh",
                   f"{IMDS_ROOT}/{rel}", input=json.dumps(body))
    say(f"{node['name']}: {IMDS_URL}/{rel} (inside the node) now says {json.dumps(body)}")


def cmd_partition(args):
    with lab_lock():
        state = require_state()
        with step("partition"):
            node = find_node(state, args.node)
            info = container_info(node["container"])
            if info is None or not info["State"]["Running"]:
                raise Fail(f"{node['name']}'s container {node['container']} is not running")
            if is_partitioned(info):
                say(f"{node['name']} ({node['address']}) is partitioned already")
                return
            docker("network", "disconnect", NET, node["container"])
    say(f"partitioned {node['name']} ({node['address']}): it is off the lab network, still running")


def cmd_heal(args):
    with lab_lock():
        state = require_state()
        with step("heal"):
            node = find_node(state, args.node)
            info = container_info(node["container"])
            if info is None or not info["State"]["Running"]:
                raise Fail(f"{node['name']}'s container {node['container']} is not running")
            if not is_partitioned(info):
                say(f"{node['name']} ({node['address']}) is not partitioned")
                return
            docker("network", "connect", "--ip", node["address"], NET, node["container"])
            deadline = time.monotonic() + 10
            while not ssh_banner(node["address"]):
                if time.monotonic() > deadline:
                    raise Fail(f"reconnected, but sshd on {node['address']}:22 did not answer within 10 s")
                time.sleep(0.2)
    say(f"healed {node['name']}: back on the lab network at {node['address']}")


def cmd_dockerd(args):
    with lab_lock():
        state = require_state()
        with step(f"dockerd {args.action}"):
            node = find_node(state, args.node)
            c = node["container"]
            info = container_info(c)
            if info is None or not info["State"]["Running"]:
                raise Fail(f"{node['name']}'s container {c} is not running")
            # As on any machine: through systemd, the socket too (else a
            # client's connect would start Docker again).
            verb = "stop" if args.action == "stop" else "start"
            docker("exec", c, "systemctl", verb, "docker.socket", "docker.service", timeout=60)
            if args.action == "stop":
                say(f"dockerd stopped on {node['name']} ({node['address']}); sshd still answers")
            else:
                deadline = time.monotonic() + 30
                while subprocess.run(["docker", "exec", c, "docker", "version"],
                                     capture_output=True).returncode != 0:
                    if time.monotonic() > deadline:
                        raise Fail(f"dockerd on {node['name']} did not answer within 30 s")
                    time.sleep(0.2)
                say(f"dockerd runs on {node['name']} ({node['address']})")
