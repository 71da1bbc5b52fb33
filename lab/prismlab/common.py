"""What every part of the lab shares: its names and addresses, failures
and the steps they name, running commands, HTTP without proxies, and the
state in .lab/."""

import contextlib
import fcntl
import json
import os
import shlex
import subprocess
import sys
import threading
import urllib.error
import urllib.request

# lab/prismlab/common.py: the repository root is three levels up.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
SRC = os.path.join(ROOT, "lab")
STATE = os.path.abspath(os.environ.get("PRISM_LAB_DIR") or os.path.join(ROOT, ".lab"))

LABEL = "prism-lab=1"
NET = "prism-lab"
NET_BRIDGE = "prismlab0"
SUBNET = "172.31.250.0/24"
GATEWAY = "172.31.250.1"
REGISTRY = "prism-lab-registry"
REGISTRY_IP = "172.31.250.2"
REGISTRY_HOST = "127.0.0.1:5056"
REGISTRY_LAB = f"{REGISTRY_IP}:5000"
MOTO_HOST, MOTO_PORT = "127.0.0.1", 5055
MOTO_URL = f"http://{MOTO_HOST}:{MOTO_PORT}"
REGION = "eu-north-1"
AZS = ["eu-north-1a", "eu-north-1b", "eu-north-1c"]
AZ_FIRST = [10, 74, 138]
AZ_SUBNETS = ["172.31.250.0/26", "172.31.250.64/26", "172.31.250.128/26"]
MAX_INDEX = 150
# Addresses per zone: az-a's .10–.59 stop short of the decoys' .60/.61.
ZONE_SLOTS = 50
DECOY_IP = "172.31.250.60"
GONE_IP = "172.31.250.61"
AMI = "ami-0a1b2c3d4e5f60718"
# The bare node: sshd but no Docker, for Prism's bootstrap. Never an EC2
# instance (every fleet node has Docker); its own known_hosts file.
BARE_IP = "172.31.250.200"  # past the last node address (.187 at MAX_INDEX)
BARE_CONTAINER = "prism-lab-bare"

BASE_IMAGE = "prism-lab/base:bookworm"
# systemd: lab nodes run it as PID 1, as production nodes do.
# wireguard-tools and dnsmasq-base: the mesh and its names (what the Docker
# bootstrap installs on real nodes); wireguard-go: the host kernel has no
# WireGuard, so wg-quick falls back to it.
BASE_PACKAGES = (
    "openssh-server,docker.io,iproute2,ca-certificates,curl,systemd,systemd-sysv,"
    "wireguard-tools,wireguard-go,dnsmasq-base,iptables"
)
# The user nodes log in as, made by the nodes' user data (run on each new
# node): production's, in the docker group; root cannot log in.
NODE_USER = "prism"
USER_DATA = os.path.join(ROOT, "contrib", "aws", "user-data.sh")
TESTAPP_IMAGE = "prism-lab/testapp:1"
TESTAPP_PUSH = f"{REGISTRY_HOST}/prism/testapp:1"
TESTAPP_NODE = f"{REGISTRY_LAB}/prism/testapp:1"
TESTAPP_TARGET = "x86_64-unknown-linux-gnu"
# Tags of the test app built FROM it with one line more, for deploys of a
# new image (`2`: answers `app: image-2`) and of one that never turns
# healthy (`unhealthy`: /up answers 503).
TESTAPP_VARIANTS = {
    "2": "ENV PRISM_APP=image-2",
    "unhealthy": "ENV TESTAPP_HEALTH=fail",
}
# The lab's database server: PostgreSQL 15 from Debian's packages.
PGBASE_IMAGE = "prism-lab/pgbase"
PGBASE_PACKAGES = "postgresql-15"
POSTGRES_IMAGE = "prism-lab/postgres:1"
POSTGRES_PUSH = f"{REGISTRY_HOST}/prism/postgres:1"
POSTGRES_NODE = f"{REGISTRY_LAB}/prism/postgres:1"
# Prism's helper image: busybox alone, served by the registry and named by
# digest in the lab's fleet.toml.
HELPER_IMAGE = "prism-lab/helper:1"
HELPER_PUSH = f"{REGISTRY_HOST}/prism/helper:1"
HELPER_NODE_REPO = f"{REGISTRY_LAB}/prism/helper"
# A second registry, as a user's private one is: HTTPS (the lab's own CA,
# which each node trusts in /etc/docker/certs.d, read by dockerd at every
# pull, so no node restarts) and basic auth from an htpasswd file (bcrypt).
AUTH_REGISTRY = "prism-lab-registry-auth"
AUTH_REGISTRY_IP = "172.31.250.3"
AUTH_REGISTRY_HOST = "127.0.0.1:5057"
AUTH_REGISTRY_LAB = f"{AUTH_REGISTRY_IP}:5000"
AUTH_USER = "prism"
TESTAPP_AUTH_PUSH = f"{AUTH_REGISTRY_HOST}/prism/testapp:1"
TESTAPP_AUTH_NODE = f"{AUTH_REGISTRY_LAB}/prism/testapp:1"

# The stand-in instance metadata service inside each node: busybox httpd on
# the node's own loopback (it never leaves the node), serving files under
# IMDS_ROOT; absent files are 404, as on EC2 without a notice.
IMDS_PORT = 1338
IMDS_ROOT = "/run/lab-imds"
IMDS_URL = f"http://127.0.0.1:{IMDS_PORT}"
IMDS_ACTION = "latest/meta-data/spot/instance-action"
IMDS_REBALANCE = "latest/meta-data/events/recommendations/rebalance"

# Nothing the lab talks to is behind a proxy: keep clients off any.
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost,172.31.250.0/24"
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def path(*parts):
    return os.path.join(STATE, *parts)


# ---------------------------------------------------------------- failures


class Fail(Exception):
    """A lab step failed; `step` names it once known."""

    def __init__(self, msg, step=None):
        super().__init__(msg)
        self.msg = " | ".join(line.strip() for line in str(msg).splitlines() if line.strip())
        self.step = step


@contextlib.contextmanager
def step(name):
    """Names the step for any failure inside it."""
    try:
        yield
    except Fail as e:
        if e.step is None:
            e.step = name
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # boto3, OS and network errors alike
        raise Fail(f"{type(e).__name__}: {e}", name) from e


def tail(text, lines=3, width=400):
    rows = [r.strip() for r in (text or "").strip().splitlines() if r.strip()]
    out = " | ".join(rows[-lines:]) or "(no output)"
    return out if len(out) <= width else "..." + out[-width:]


def show(cmd):
    s = shlex.join(str(c) for c in cmd)
    return s if len(s) <= 160 else s[:157] + "..."


def run(cmd, *, input=None, timeout=300, env=None, cwd=None, check=True):
    """Runs cmd, captures its output; a failure names the command and the
    tail of what it printed on stderr."""
    try:
        p = subprocess.run(
            [str(c) for c in cmd], input=input, capture_output=True, text=True,
            encoding="utf-8", errors="replace", timeout=timeout, env=env, cwd=cwd,
        )
    except FileNotFoundError:
        raise Fail(f"{cmd[0]}: command not found (lab/lab install puts what the lab needs in place)")
    except subprocess.TimeoutExpired:
        raise Fail(f"`{show(cmd)}` did not finish within {timeout} s")
    if check and p.returncode != 0:
        raise Fail(f"`{show(cmd)}` exited {p.returncode}: {tail(p.stderr or p.stdout)}")
    return p


def docker(*args, **kw):
    return run(["docker", *args], **kw)


_say_lock = threading.Lock()


def say(msg):
    with _say_lock:
        print(f"lab: {msg}", flush=True)


def warn(msg):
    with _say_lock:
        print(f"lab: warning: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ http and containers


def http_get(url, timeout=2.0, method="GET", headers=None):
    """(status, headers, body) of a request, or None when nothing answers."""
    req = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with HTTP.open(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, b""
    except (urllib.error.URLError, OSError):
        return None


def container_info(name):
    p = docker("container", "inspect", name, check=False)
    if p.returncode != 0:
        return None
    return json.loads(p.stdout)[0]


# ------------------------------------------------------------------ state


def load_state():
    try:
        with open(path("lab.json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise Fail(f"cannot read {path('lab.json')}: {e} (lab/lab down, then up, starts afresh)")


def save_state(state):
    os.makedirs(STATE, exist_ok=True)
    write_file(path("lab.json"), json.dumps(state, indent=2) + "\n")


def write_file(p, text, mode=0o644):
    tmp = f"{p}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, p)


@contextlib.contextmanager
def lab_lock():
    """One mutating lab command at a time."""
    os.makedirs(STATE, exist_ok=True)
    fd = os.open(path("lab.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("waiting for another lab/lab command to finish")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def find_node(state, ref):
    """A live node by name (nodeK), index (K), address or container name."""
    for n in state["nodes"]:
        if ref in (n["name"], str(n["index"]), n["address"], n["container"]):
            return n
    gone = [n for n in state.get("preempted", []) if ref in (n["name"], n["address"])]
    if gone:
        raise Fail(f"{ref} was preempted already (lab/lab add makes a new node)")
    names = ", ".join(f"{n['name']} ({n['address']})" for n in state["nodes"]) or "none"
    raise Fail(f"no live node {ref!r}; live nodes: {names}")


def require_state():
    state = load_state()
    if state is None:
        raise Fail("the lab is not up (no .lab/lab.json): run lab/lab up")
    return state
