"""The EC2 stand-in: moto in the background, the lab's VPC and subnets,
one spot instance per node and two decoys."""

import contextlib
import os
import signal
import subprocess
import sys
import time

from .common import (
    AMI, AZS, AZ_SUBNETS, DECOY_IP, GONE_IP, MOTO_HOST, MOTO_URL, REGION, SRC, STATE, SUBNET,
    Fail, http_get, path, say, step, tail, warn, write_file,
)
from .ebs import BACKEND_PORT, release_all


def moto_answers():
    r = http_get(f"{MOTO_URL}/moto-api/", timeout=1.0)
    return r is not None


def pid_of(name, marker):
    """The pid in .lab/NAME.pid, if that process still runs `marker`."""
    try:
        with open(path(f"{name}.pid")) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ")
    except OSError:
        return None
    return pid if marker in cmd else None


def moto_pid():
    return pid_of("moto", b"moto")


def spawn(name, argv, cwd):
    log = open(path(f"{name}.log"), "ab")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True, cwd=cwd)
    log.close()
    write_file(path(f"{name}.pid"), f"{proc.pid}\n")
    return proc


def start_moto():
    """Starts the lab's EC2 endpoint in the background unless it answers:
    moto, and in front of it the EBS stand-in (prismlab.ebs). Returns a
    waiter."""
    if moto_answers():
        return lambda: None
    os.makedirs(STATE, exist_ok=True)
    procs = []
    if not moto_pid():
        procs.append(("moto", spawn("moto", [sys.executable, "-m", "moto.server", "-H", MOTO_HOST,
                                             "-p", str(BACKEND_PORT)], STATE)))
    if not pid_of("ebs", b"prismlab.ebs"):
        procs.append(("ebs", spawn("ebs", [sys.executable, "-m", "prismlab.ebs"], SRC)))

    def wait():
        with step("moto"):
            deadline = time.monotonic() + 30
            while not moto_answers():
                for name, proc in procs:
                    if proc.poll() is not None:
                        with open(path(f"{name}.log"), errors="replace") as f:
                            raise Fail(f"{name} exited {proc.returncode}: {tail(f.read())}")
                if time.monotonic() > deadline:
                    raise Fail(f"the EC2 endpoint did not answer on {MOTO_URL} within 30 s "
                               f"(logs {path('moto.log')}, {path('ebs.log')})")
                time.sleep(0.2)
            for _, proc in procs:
                proc.returncode = 0  # they live on after us, on purpose
    return wait


def stop_moto():
    stopped = False
    for name, marker in (("ebs", b"prismlab.ebs"), ("moto", b"moto")):
        pid = pid_of(name, marker)
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while pid_of(name, marker) == pid and time.monotonic() < deadline:
                time.sleep(0.1)
            if pid_of(name, marker) == pid:
                os.kill(pid, signal.SIGKILL)
            say(f"stopped {name} (pid {pid})")
            stopped = True
        with contextlib.suppress(FileNotFoundError):
            os.remove(path(f"{name}.pid"))
    if not stopped and moto_answers():
        warn(f"something answers on {MOTO_URL} that the lab did not start: left alone")
    freed = release_all()
    if freed:
        say(f"freed {freed} loop devices of lab volumes")


def ec2():
    import boto3
    from botocore.config import Config
    return boto3.client(
        "ec2", region_name=REGION, endpoint_url=MOTO_URL,
        aws_access_key_id="lab", aws_secret_access_key="lab",
        config=Config(retries={"max_attempts": 2}, connect_timeout=3, read_timeout=30),
    )


def instances(client, filters=()):
    out = []
    for page in client.get_paginator("describe_instances").paginate(Filters=list(filters)):
        for res in page["Reservations"]:
            out.extend(res["Instances"])
    return out


def tags_of(inst):
    return {t["Key"]: t["Value"] for t in inst.get("Tags", [])}


def tag_spec(tags):
    return [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]


def ensure_vpc(client, state):
    vpcs = client.describe_vpcs(Filters=[{"Name": "tag:prism-lab", "Values": ["1"]}])["Vpcs"]
    if vpcs:
        vpc = vpcs[0]["VpcId"]
    else:
        vpc = client.create_vpc(CidrBlock=SUBNET)["Vpc"]["VpcId"]
        client.create_tags(Resources=[vpc], Tags=[{"Key": "prism-lab", "Value": "1"}, {"Key": "Name", "Value": "prism-lab"}])
    have = {s["CidrBlock"]: s["SubnetId"] for s in
            client.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]}
    subnets = {}
    for az, cidr in zip(AZS, AZ_SUBNETS):
        if cidr not in have:
            sid = client.create_subnet(VpcId=vpc, CidrBlock=cidr, AvailabilityZone=az)["Subnet"]["SubnetId"]
            client.create_tags(Resources=[sid], Tags=[{"Key": "prism-lab", "Value": "1"}, {"Key": "Name", "Value": f"prism-lab-{az}"}])
            have[cidr] = sid
        subnets[az] = have[cidr]
    state["moto"].update(vpc_id=vpc, subnets=subnets)
    return subnets


def run_instance(client, subnet, addr, tags):
    r = client.run_instances(
        ImageId=AMI, MinCount=1, MaxCount=1, InstanceType="t3.small", SubnetId=subnet,
        PrivateIpAddress=addr, InstanceMarketOptions={"MarketType": "spot"}, TagSpecifications=tag_spec(tags),
    )
    return r["Instances"][0]["InstanceId"]


def node_tags(node):
    return {"prism:fleet": node.get("fleet", "lab"), "Name": node["name"], "prism-lab:node": node["name"]}


def register(state, only=None):
    """Registers every live node moto does not know as running; terminates
    instances of nodes the lab no longer has; makes the two decoys once."""
    with step("ec2 registration"):
        client = ec2()
        subnets = ensure_vpc(client, state)
        live = instances(client, [{"Name": "tag-key", "Values": ["prism-lab:node"]},
                                  {"Name": "instance-state-name", "Values": ["pending", "running"]}])
        by_name = {}
        for inst in live:
            by_name.setdefault(tags_of(inst)["prism-lab:node"], []).append(inst)
        wanted = {n["name"] for n in state["nodes"]}
        for node in state["nodes"]:
            if only is not None and node["name"] not in only:
                continue
            found = [i for i in by_name.get(node["name"], []) if i.get("PrivateIpAddress") == node["address"]]
            if found:
                node["instance_id"] = found[0]["InstanceId"]
                extra = [i["InstanceId"] for i in by_name[node["name"]] if i["InstanceId"] != node["instance_id"]]
            else:
                node["instance_id"] = run_instance(client, subnets[node["az"]], node["address"], node_tags(node))
                extra = [i["InstanceId"] for i in by_name.get(node["name"], [])]
                say(f"{node['name']}: registered instance {node['instance_id']} ({node['address']}, {node['az']})")
            if extra:
                client.terminate_instances(InstanceIds=extra)
        stale = [i["InstanceId"] for name, insts in by_name.items() if name not in wanted for i in insts]
        if stale:
            client.terminate_instances(InstanceIds=stale)
            say(f"terminated instances of nodes the lab no longer has: {' '.join(stale)}")
        decoys = state.setdefault("decoys", {})
        roles = {tags_of(i).get("prism-lab:role"): i["InstanceId"] for i in
                 instances(client, [{"Name": "tag-key", "Values": ["prism-lab:role"]}])}
        if "decoy" not in roles:
            roles["decoy"] = run_instance(client, subnets[AZS[0]], DECOY_IP,
                                          {"Name": "not-ours", "prism-lab:role": "decoy"})
        if "terminated" not in roles:
            roles["terminated"] = run_instance(client, subnets[AZS[0]], GONE_IP,
                                               {"prism:fleet": "lab", "Name": "gone", "prism-lab:role": "terminated"})
            client.terminate_instances(InstanceIds=[roles["terminated"]])
        decoys.update(not_ours=roles["decoy"], terminated=roles["terminated"])
