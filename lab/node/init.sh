#!/bin/sh
# Entrypoint of a lab node (see lab/node/Dockerfile): make cgroups writable,
# start sshd for root with the lab's key, then become the node's dockerd.
set -eu

say() { echo "lab-node: $*"; }
die() { echo "lab-node: $*" >&2; exit 1; }

. /usr/local/lib/lab-node-lib.sh
writable_cgroups
start_sshd
say "sshd up on $(hostname)"

# The inner dockerd is the node's engine. It runs beside this script rather
# than in its place, so `lab/lab dockerd NODE stop` can stop Docker while the
# node itself (sshd) stays up, as `systemctl stop docker` would.
lab-dockerd &
dockerd_pid=$!
trap 'kill -TERM "$dockerd_pid" 2>/dev/null; wait "$dockerd_pid"; exit 0' TERM INT
while :; do
    sleep 3600 &
    wait $! || true
done
