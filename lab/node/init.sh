#!/bin/sh
# Entrypoint of a lab node (see lab/node/Dockerfile): make cgroups writable,
# start sshd for root with the lab's key, then become the node's dockerd.
set -eu

say() { echo "lab-node: $*"; }
die() { echo "lab-node: $*" >&2; exit 1; }

# Docker hands the container its cgroup v1 controllers read-only; the inner
# dockerd must create cgroups, so mount them again, writable. The private
# cgroup namespace makes each hierarchy's root this node's own cgroup.
if [ "$(stat -f -c %T /sys/fs/cgroup 2>/dev/null)" != cgroup2fs ]; then
    for c in cpu cpuacct cpuset memory devices freezer blkio pids; do
        [ -d "/sys/fs/cgroup/$c" ] || continue
        umount "/sys/fs/cgroup/$c" 2>/dev/null || true
        mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c" || die "cannot mount cgroup $c"
    done
    if [ -d /sys/fs/cgroup/systemd ]; then
        umount /sys/fs/cgroup/systemd 2>/dev/null || true
        mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd || die "cannot mount cgroup name=systemd"
    fi
fi

[ -n "${LAB_AUTHORIZED_KEY:-}" ] || die "LAB_AUTHORIZED_KEY is empty: no key could log in"
ssh-keygen -A >/dev/null
install -d -m 0700 /root/.ssh
printf '%s\n' "$LAB_AUTHORIZED_KEY" > /root/.ssh/authorized_keys
chmod 0600 /root/.ssh/authorized_keys
unset LAB_AUTHORIZED_KEY

mkdir -p /run/sshd
/usr/sbin/sshd -o PasswordAuthentication=no || die "sshd did not start"
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
