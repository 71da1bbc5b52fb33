# Prism: mount a durable volume, as root on the node (see volumes.rs).
# Args: VOLUME_ID DEVICE FILESYSTEM MAY_FORMAT(yes|no) DIR
# Prints "fs=TYPE" (and "formatted" first when it made the filesystem).
set -u
id=$1 requested=$2 fs=$3 may_format=$4 dir=$5
serial=$(printf '%s' "$id" | tr -d -)
# The device: by its volume id (Nitro: an NVMe disk whose serial is the
# id, linked by udev, else read from sysfs), else the name it was attached
# as (Xen shows /dev/sdf as /dev/xvdf). Attaching takes a moment to show.
find_device() {
    for c in "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_$serial" \
             "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_${serial}-ns-1"; do
        [ -b "$c" ] && { readlink -f "$c"; return 0; }
    done
    for s in /sys/block/nvme*/device/serial; do
        [ -r "$s" ] || continue
        if [ "$(tr -d ' ' < "$s")" = "$serial" ]; then
            # /sys/block/nvmeXnY/device/serial: the block device is nvmeXnY.
            b=${s%/device/serial}
            [ -b "/dev/${b##*/}" ] && { echo "/dev/${b##*/}"; return 0; }
        fi
    done
    for c in "$requested" "/dev/xvd${requested#/dev/sd}"; do
        [ -b "$c" ] && { readlink -f "$c"; return 0; }
    done
    return 1
}
dev=
i=0
while [ $i -lt 120 ]; do
    dev=$(find_device) && break
    dev=
    i=$((i + 1))
    sleep 0.5
done
[ -n "$dev" ] || { echo "the device of $id did not appear on the node (looked for serial $serial and $requested)" >&2; exit 3; }
if mountpoint -q "$dir"; then
    cur=$(findmnt -n -o SOURCE --mountpoint "$dir")
    if [ "$(readlink -f "$cur")" = "$dev" ]; then
        mkdir -p "$dir/data"
        echo "fs=$(findmnt -n -o FSTYPE --mountpoint "$dir")"
        exit 0
    fi
    echo "$dir has another device mounted ($cur), not $dev" >&2
    exit 4
fi
if grep -q "^$dev " /proc/self/mounts; then
    echo "$dev is mounted elsewhere on the node: $(grep "^$dev " /proc/self/mounts | cut -d' ' -f2)" >&2
    exit 4
fi
# What the device holds, probed directly (-p: no cache). Exit 2 means
# nothing at all: no filesystem, no partition table, no RAID member.
info=$(blkid -p -o export "$dev" 2>&1)
rc=$?
case $rc in
2)
    if [ "$may_format" != yes ]; then
        echo "$dev ($id) holds no filesystem, and it is no volume Prism made empty: it is not formatted (a damaged or foreign volume: look at it by hand)" >&2
        exit 5
    fi
    # blkid also says "nothing" when it cannot read: a new EBS volume
    # reads as zeros, so anything else (or a read error) is left alone.
    if ! cmp -s -n 1048576 "$dev" /dev/zero; then
        echo "$dev ($id) shows no filesystem but its first MiB is not all zeros (or cannot be read): not formatted; look at it by hand" >&2
        exit 5
    fi
    case $fs in
    ext4) mkfs.ext4 -q -m 0 "$dev" || exit 6 ;;
    xfs) mkfs.xfs -q "$dev" || exit 6 ;;
    *) echo "unknown filesystem $fs" >&2; exit 6 ;;
    esac
    echo formatted
    type=$fs
    ;;
0)
    type=$(printf '%s\n' "$info" | sed -n 's/^TYPE=//p')
    if [ -z "$type" ]; then
        echo "$dev ($id) holds something that is not a filesystem ($(printf '%s' "$info" | tr '\n' ' ')): not mounted, not formatted" >&2
        exit 5
    fi
    ;;
*)
    echo "blkid could not read $dev (exit $rc): $info" >&2
    exit 6
    ;;
esac
# A volume whose last node died was not unmounted: check it first.
case $type in
ext2 | ext3 | ext4)
    e2fsck -p "$dev" >&2
    r=$?
    if [ $r -gt 2 ]; then
        echo "e2fsck found errors on $dev ($id) it cannot fix (exit $r): not mounted" >&2
        exit 7
    fi
    ;;
esac
mkdir -p "$dir" || exit 8
mount -t "$type" "$dev" "$dir" || exit 8
mkdir -p "$dir/data" || exit 8
echo "fs=$type"
