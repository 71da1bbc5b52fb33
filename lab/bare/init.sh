#!/bin/sh
# Entrypoint of the lab's bare node (see lab/bare/Dockerfile): make cgroups
# writable for the dockerd a bootstrap will install, start sshd for root and
# for `plain` (no root, no sudo) with the lab's key, then wait.
set -eu

say() { echo "lab-bare: $*"; }
die() { echo "lab-bare: $*" >&2; exit 1; }

# As lab/node/init.sh: Docker hands the container its cgroup v1
# controllers read-only; remount them writable for the future dockerd.
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
for home in /root /home/plain; do
    install -d -m 0700 "$home/.ssh"
    printf '%s\n' "$LAB_AUTHORIZED_KEY" > "$home/.ssh/authorized_keys"
    chmod 0600 "$home/.ssh/authorized_keys"
done
chown -R plain:plain /home/plain/.ssh
unset LAB_AUTHORIZED_KEY

mkdir -p /run/sshd
/usr/sbin/sshd -o PasswordAuthentication=no || die "sshd did not start"
say "sshd up on $(hostname), no Docker"
exec sleep infinity
