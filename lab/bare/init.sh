#!/bin/sh
# Entrypoint of the lab's bare node (see lab/bare/Dockerfile): make cgroups
# writable for the dockerd a bootstrap will install, start sshd for root and
# for `plain` (no root, no sudo) with the lab's key, then wait.
set -eu

say() { echo "lab-bare: $*"; }
die() { echo "lab-bare: $*" >&2; exit 1; }

. /usr/local/lib/lab-node-lib.sh
writable_cgroups
start_sshd plain
say "sshd up on $(hostname), no Docker"
exec sleep infinity
