# Prism node facts (run as `sh -c SCRIPT prism-facts [METADATA_URL]`; see
# node.rs). Sections start with "@@ "; "@@ end" proves the output is complete.
metadata=${1:-}
echo "@@ prism-facts 3"
echo "@@ meminfo"
grep -E "^(MemTotal|MemAvailable):" /proc/meminfo
echo "@@ nproc"
nproc 2>/dev/null || getconf _NPROCESSORS_ONLN
d=/var/lib/docker
[ -d "$d" ] || d=/
echo "@@ df $d"
df -Pk "$d"
# Docker itself is asked over its API socket, not here; this only tells,
# should that fail, whether Docker is installed and the socket usable.
if command -v docker >/dev/null 2>&1; then cli=present; else cli=missing; fi
s=/var/run/docker.sock
if [ ! -S "$s" ]; then sock=missing
elif [ -r "$s" ] && [ -w "$s" ]; then sock=usable
else sock=denied
fi
echo "@@ docker cli=$cli socket=$sock"
# Durable volumes mounted where Prism mounts them: device and directory.
echo "@@ mounts"
grep " /var/lib/prism/volumes/" /proc/self/mounts | cut -d' ' -f1,2
# The mesh as Prism's set-up left it (see operator/apply/mesh.sh): its
# state file, whether its interface and resolver run, the names served.
state=/etc/prism/mesh/state
if [ -r "$state" ]; then
    echo "@@ mesh"
    cat "$state"
    iface=$(sed -n 's/^interface //p' "$state")
    [ -n "$iface" ] && [ -e "/sys/class/net/$iface" ] && echo "link up"
    # The resolver's pid file (no systemctl: a user may lack D-Bus).
    pid=$(cat /run/prism-names.pid 2>/dev/null) &&
        [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dnsmasq ] && echo "resolver up"
    [ -r /etc/prism/names/hosts ] && echo "names $(sha256sum < /etc/prism/names/hosts | cut -d' ' -f1)"
fi
# A spot node's interruption notice and rebalance recommendation, when the
# instance metadata service's URL is given: each section holds the answer's
# body, then its HTTP status on a line of its own (000: no answer).
if [ -n "$metadata" ]; then
    if command -v curl >/dev/null 2>&1; then
        get() { curl -s --noproxy '*' --connect-timeout 1 -m 2 "$@"; }
        # IMDSv2 wants a token; IMDSv1 (and the lab's stand-in) answer without.
        token=$(get -f -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 60" "$metadata/latest/api/token") || token=
        read_md() {
            echo "@@ $1"
            if [ -n "$token" ]; then
                get -H "X-aws-ec2-metadata-token: $token" -w '\n%{http_code}\n' "$metadata/latest/meta-data/$2"
            else
                get -w '\n%{http_code}\n' "$metadata/latest/meta-data/$2"
            fi
        }
        read_md spot-action spot/instance-action
        read_md rebalance events/recommendations/rebalance
    else
        echo "@@ metadata-unread curl is missing"
    fi
fi
echo "@@ end"
