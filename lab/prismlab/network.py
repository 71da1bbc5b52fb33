"""The docker network the nodes and the registries are on."""

import ipaddress
import json

from .common import GATEWAY, LABEL, NET, NET_BRIDGE, SUBNET, Fail, docker, step


def network_info():
    p = docker("network", "inspect", NET, check=False)
    if p.returncode != 0:
        return None
    return json.loads(p.stdout)[0]


def ensure_network():
    with step("network"):
        info = network_info()
        if info is not None:
            subnets = [c.get("Subnet") for c in (info.get("IPAM") or {}).get("Config") or []]
            if (info.get("Labels") or {}).get("prism-lab") != "1" or SUBNET not in subnets:
                raise Fail(f"a docker network named {NET} exists but is not the lab's "
                           f"(subnets {subnets}); remove it or rename it")
            return
        want = ipaddress.ip_network(SUBNET)
        ids = docker("network", "ls", "-q").stdout.split()
        if ids:
            for net in json.loads(docker("network", "inspect", *ids).stdout):
                for c in (net.get("IPAM") or {}).get("Config") or []:
                    try:
                        theirs = ipaddress.ip_network(c.get("Subnet", ""), strict=False)
                    except ValueError:
                        continue
                    if theirs.version == 4 and theirs.overlaps(want):
                        raise Fail(f"subnet {SUBNET} is taken by docker network {net['Name']} ({theirs})")
        docker("network", "create", "--driver", "bridge", "--subnet", SUBNET, "--gateway", GATEWAY,
               "--label", LABEL, "-o", f"com.docker.network.bridge.name={NET_BRIDGE}", NET)
