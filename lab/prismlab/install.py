"""What the lab needs in place: its packages, moto, and a dockerd that
answers (`lab/lab install`, and the first step of `up`)."""

import os
import subprocess
import sys
import time

from .common import Fail, run, say, step, tail

# pebble: ACME test server (and its DNS mock) for the proxy's TLS tests;
# tmux: the dashboard's end-to-end test drives prism in a tmux pane.
# wireguard-tools, wireguard-go: this machine joins the lab's mesh as the
# operator's box (the kernel has no WireGuard); dnsutils: dig, to ask the
# nodes' resolvers.
PACKAGES = ["docker.io", "debootstrap", "busybox-static", "openssh-client", "docker-registry",
            "pebble", "tmux", "wireguard-tools", "wireguard-go", "dnsutils"]
# Not for the lab itself: tools the tests of shipped files run (tests/offline/packaging.rs):
# shellcheck on the shell scripts, systemd-analyze on the unit, ruby -c on
# the Vagrantfile. `install` puts them in with the rest.
CHECK_PACKAGES = ["shellcheck", "systemd", "ruby"]


def docker_answers():
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def moto_installed():
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in ("moto", "flask", "boto3"))


def installed_packages(names):
    p = run(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status}\n", *names], check=False)
    return {line.split()[0] for line in p.stdout.splitlines() if line.endswith(" installed")}


def do_install(quiet=False):
    with step("install packages"):
        wanted = PACKAGES + CHECK_PACKAGES
        missing = [p for p in wanted if p not in installed_packages(wanted)]
        if missing:
            say(f"installing {' '.join(missing)}")
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            run(["apt-get", "update"], env=env, timeout=600)
            run(["apt-get", "install", "-y", "--no-install-recommends", *missing], env=env, timeout=1200)
    with step("install moto"):
        if not moto_installed():
            say("installing moto[server] with pip")
            pip = run([sys.executable, "-m", "pip", "install", "moto[server]"], timeout=900, check=False)
            if pip.returncode != 0 and "externally-managed-environment" in pip.stderr + pip.stdout:
                # Debian's own python3 refuses pip (PEP 668); the lab is a
                # root-only tool for a throwaway machine, so override it.
                pip = run([sys.executable, "-m", "pip", "install", "--break-system-packages", "moto[server]"],
                          timeout=900, check=False)
            if pip.returncode != 0:
                raise Fail(f"{sys.executable} -m pip install moto[server] exited {pip.returncode}: "
                           f"{tail(pip.stderr or pip.stdout)}")
            import importlib
            importlib.invalidate_caches()
            if not moto_installed():
                raise Fail(f"moto still cannot be imported by {sys.executable} after pip install")
    with step("start dockerd"):
        if not docker_answers():
            say("starting dockerd (log: /var/log/dockerd.log)")
            with open("/var/log/dockerd.log", "ab") as log:
                try:
                    subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
                except FileNotFoundError:
                    raise Fail("dockerd not found although docker.io is installed")
            deadline = time.monotonic() + 30
            while not docker_answers():
                if time.monotonic() > deadline:
                    try:
                        with open("/var/log/dockerd.log", errors="replace") as f:
                            log_tail = tail(f.read())
                    except OSError:
                        log_tail = "(no log)"
                    raise Fail(f"dockerd started but `docker info` did not answer within 30 s: {log_tail}")
                time.sleep(0.5)
    if not quiet:
        say("install: everything is in place")
