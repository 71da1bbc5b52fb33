#!/bin/sh
# Entrypoint of a lab node (see lab/node/Dockerfile): make cgroups
# writable, make this node's host keys, then become systemd, which starts
# sshd and Docker as on any machine.
set -eu

die() { echo "lab-node: $*" >&2; exit 1; }

. /usr/local/lib/lab-node-lib.sh
writable_cgroups
ssh-keygen -A >/dev/null
exec /lib/systemd/systemd
