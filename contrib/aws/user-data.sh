#!/bin/bash
# EC2 user data for a Prism node (the launch template's UserData): makes
# sure Docker is installed and running, and makes a login user `prism`, in
# the docker group, that logs in with the operator's key only. Nothing of
# Prism's runs here. Fill in PRISM_PUBKEY (README.md, "Running in
# production"). Works on Debian and Ubuntu (apt) and Amazon Linux 2023
# (dnf), and on images with Docker already installed (then no package is
# fetched). Safe to run again (cloud-init may): each step checks first.
set -euo pipefail

PRISM_PUBKEY='REPLACE-WITH-THE-OPERATOR-PUBLIC-KEY'
user=prism

say() { echo "prism user-data: $*"; }

case "$PRISM_PUBKEY" in
    ssh-ed25519\ * | ecdsa-sha2-* | ssh-rsa\ *) ;;
    *)
        echo "prism user-data: PRISM_PUBKEY holds no SSH public key; fill it in" >&2
        exit 1
        ;;
esac

# Docker, and what the mesh ([network]) uses: wireguard-tools and dnsmasq
# (the kernel's WireGuard on these images). Installed only where missing.
if command -v dockerd >/dev/null && command -v docker >/dev/null &&
    command -v wg >/dev/null && command -v dnsmasq >/dev/null; then
    say "Docker and the mesh's tools are installed already"
elif command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends docker.io wireguard-tools dnsmasq-base
elif command -v dnf >/dev/null; then
    dnf install -y -q docker wireguard-tools dnsmasq
else
    echo "prism user-data: Docker is missing, and there is neither apt-get nor dnf; install it another way" >&2
    exit 1
fi

# Started now and at every boot, by systemd where it runs.
if [ -d /run/systemd/system ]; then
    systemctl enable --now docker
elif ! docker info >/dev/null 2>&1; then
    service docker start
fi

if ! id -u "$user" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash "$user"
fi
# The docker group is root on this machine, by Docker's design: that is
# what lets Prism's steps that need root run in a short-lived container of
# its own, with no sudo rule and no process of Prism's left behind.
usermod -aG docker "$user"
home=$(getent passwd "$user" | cut -d: -f6)
install -d -m 0700 -o "$user" -g "$user" "$home/.ssh"
printf '%s\n' "$PRISM_PUBKEY" > "$home/.ssh/authorized_keys"
chown "$user:$user" "$home/.ssh/authorized_keys"
chmod 0600 "$home/.ssh/authorized_keys"

# Docker may take a moment after its start.
for _ in $(seq 1 30); do
    docker info >/dev/null 2>&1 && break
    sleep 1
done
say "docker $(docker version --format '{{.Server.Version}}'), login user $user"
