#!/usr/bin/env bash
# Makes one Vagrant VM a Prism node as production nodes are made: sshd with
# the host key made on the laptop (vagrant/known_hosts already lists it),
# then the nodes' EC2 user data (contrib/aws/user-data.sh) with the Prism
# key: Docker, and the login user `prism` in the docker group.
# Vagrant runs it as root: provision.sh DIR, where DIR holds the uploaded
# ssh_host_ed25519_key{,.pub}, prism_ed25519.pub and user-data.sh. Safe to
# run again.
set -euo pipefail

files=${1:?usage: provision.sh DIR (the files uploaded by the Vagrantfile)}

for f in ssh_host_ed25519_key ssh_host_ed25519_key.pub prism_ed25519.pub user-data.sh; do
    [ -s "$files/$f" ] || { echo "provision.sh: $files/$f is missing or empty" >&2; exit 1; }
done

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

# The same user data as an EC2 node's, with the Prism key filled in.
key=$(head -n1 "$files/prism_ed25519.pub")
sed "s|REPLACE-WITH-THE-OPERATOR-PUBLIC-KEY|$key|" "$files/user-data.sh" | bash

# The private host key is in place; leave no copy behind.
rm -rf -- "$files"
echo "provision.sh: $(hostname) is a Prism node"
