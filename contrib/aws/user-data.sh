#!/bin/bash
# EC2 user data for a Prism node (the launch template's UserData): installs
# and starts Docker, and makes a login user `prism`, in the docker group,
# that logs in with the operator's key only. Nothing of Prism's runs here.
# Fill in PRISM_PUBKEY (README.md, "Running in production"). Works on
# Debian and Ubuntu (apt) and Amazon Linux 2023 (dnf).
set -euo pipefail

PRISM_PUBKEY='REPLACE-WITH-THE-OPERATOR-PUBLIC-KEY'
user=prism

case "$PRISM_PUBKEY" in
    ssh-ed25519\ * | ecdsa-sha2-* | ssh-rsa\ *) ;;
    *)
        echo "prism user-data: PRISM_PUBKEY holds no SSH public key; fill it in" >&2
        exit 1
        ;;
esac

if command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends docker.io
elif command -v dnf >/dev/null; then
    dnf install -y -q docker
else
    echo "prism user-data: neither apt-get nor dnf; install Docker another way" >&2
    exit 1
fi
systemctl enable --now docker

if ! id -u "$user" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash "$user"
fi
usermod -aG docker "$user"
home=$(getent passwd "$user" | cut -d: -f6)
install -d -m 0700 -o "$user" -g "$user" "$home/.ssh"
printf '%s\n' "$PRISM_PUBKEY" > "$home/.ssh/authorized_keys"
chown "$user:$user" "$home/.ssh/authorized_keys"
chmod 0600 "$home/.ssh/authorized_keys"
echo "prism user-data: docker $(docker version --format '{{.Server.Version}}'), login user $user"
