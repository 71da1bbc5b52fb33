# Sourced by the lab's node entrypoints (lab/node/init.sh, lab/bare/init.sh):
# what every lab machine does at start before its own part. lab/lab copies
# it into each node image's build context.

# Docker hands the container its cgroup v1 controllers read-only; a dockerd
# in the node (running, or installed later by a bootstrap) must create
# cgroups, so mount them again, writable. The private cgroup namespace makes
# each hierarchy's root this node's own cgroup.
writable_cgroups() {
    [ "$(stat -f -c %T /sys/fs/cgroup 2>/dev/null)" != cgroup2fs ] || return 0
    for c in cpu cpuacct cpuset memory devices freezer blkio pids; do
        [ -d "/sys/fs/cgroup/$c" ] || continue
        umount "/sys/fs/cgroup/$c" 2>/dev/null || true
        mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c" || die "cannot mount cgroup $c"
    done
    if [ -d /sys/fs/cgroup/systemd ]; then
        umount /sys/fs/cgroup/systemd 2>/dev/null || true
        mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd || die "cannot mount cgroup name=systemd"
    fi
    # systemd as a node's init keeps its own tree in the unified (v2) one.
    if [ -d /sys/fs/cgroup/unified ]; then
        umount /sys/fs/cgroup/unified 2>/dev/null || true
        mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup/unified || die "cannot mount cgroup2"
    fi
}

# Fresh host keys, $LAB_AUTHORIZED_KEY for root and each named user, then
# sshd (keys only).
start_sshd() {
    [ -n "${LAB_AUTHORIZED_KEY:-}" ] || die "LAB_AUTHORIZED_KEY is empty: no key could log in"
    ssh-keygen -A >/dev/null
    for user in root "$@"; do
        home=$(getent passwd "$user" | cut -d: -f6)
        [ -n "$home" ] || die "no user $user"
        install -d -m 0700 "$home/.ssh"
        printf '%s\n' "$LAB_AUTHORIZED_KEY" > "$home/.ssh/authorized_keys"
        chmod 0600 "$home/.ssh/authorized_keys"
        chown -R "$user:" "$home/.ssh"
    done
    unset LAB_AUTHORIZED_KEY
    mkdir -p /run/sshd
    /usr/sbin/sshd -o PasswordAuthentication=no || die "sshd did not start"
}
