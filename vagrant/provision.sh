#!/usr/bin/env bash
# Makes one Vagrant VM a Prism node: Docker, sshd with the host key made on
# the laptop (vagrant/known_hosts already lists it), and a login user
# `prism` that may run docker and logs in with the Prism key only.
# Vagrant runs it as root: provision.sh DIR, where DIR holds the uploaded
# ssh_host_ed25519_key{,.pub} and prism_ed25519.pub. Safe to run again.
set -euo pipefail

files=${1:?usage: provision.sh DIR (the keys uploaded by the Vagrantfile)}
user=prism

for f in ssh_host_ed25519_key ssh_host_ed25519_key.pub prism_ed25519.pub; do
    [ -s "$files/$f" ] || { echo "provision.sh: $files/$f is missing or empty" >&2; exit 1; }
done

export DEBIAN_FRONTEND=noninteractive
if ! command -v dockerd >/dev/null || ! command -v sshd >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends docker.io openssh-server ca-certificates
fi
systemctl enable --now docker

# sshd offers only the host key made on the laptop, so a client holding
# vagrant/known_hosts checks exactly that key.
install -m 0600 -o root -g root "$files/ssh_host_ed25519_key" /etc/ssh/ssh_host_ed25519_key
install -m 0644 -o root -g root "$files/ssh_host_ed25519_key.pub" /etc/ssh/ssh_host_ed25519_key.pub
cat > /etc/ssh/sshd_config.d/prism.conf <<'CONF'
HostKey /etc/ssh/ssh_host_ed25519_key
PasswordAuthentication no
KbdInteractiveAuthentication no
CONF
sshd -t
systemctl reload ssh

# The login user Prism uses: in the docker group, key login only.
if ! id -u "$user" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash "$user"
fi
usermod -aG docker "$user"
home=$(getent passwd "$user" | cut -d: -f6)
install -d -m 0700 -o "$user" -g "$user" "$home/.ssh"
install -m 0600 -o "$user" -g "$user" "$files/prism_ed25519.pub" "$home/.ssh/authorized_keys"

# The private host key is in place; leave no copy behind.
rm -rf -- "$files"
echo "provision.sh: $(hostname) is a Prism node: docker $(docker version --format '{{.Server.Version}}'), user $user"
