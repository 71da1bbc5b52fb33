# Prism Docker bootstrap (run as `sh -c` with no arguments; see mod.rs):
# installs Docker where it is missing, starts it where it is not running.
# Markers start with "@@ ", detail lines under one with "| "; "@@ end"
# proves the output is complete. The exit status is 0 on success.
echo "@@ prism-bootstrap 1"

log=$(mktemp 2>/dev/null) || log=/tmp/prism-bootstrap.$$
finish() { rm -f "$log"; echo "@@ end"; exit "$1"; }
# The tail of a step's output, as detail lines.
detail() { tail -n 25 "$1" 2>/dev/null | sed 's/^/| /'; }

# Docker that answers the login user needs nothing, not even root.
if command -v docker >/dev/null 2>&1 &&
    v=$(docker version --format "{{.Server.Version}}" 2>/dev/null); then
    echo "@@ result present $v"
    finish 0
fi

user=$(id -un 2>/dev/null || id -u)
if [ "$(id -u)" = 0 ]; then
    as_root() { "$@"; }
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
    as_root() { sudo -n "$@"; }
else
    echo "@@ result no-root $user"
    finish 1
fi

version() { as_root docker version --format "{{.Server.Version}}" 2>/dev/null; }
# Waits up to $1 seconds for the daemon to answer, or until process $2 (if
# given) is gone; sets $v.
wait_docker() {
    waited=0
    until v=$(version); do
        [ "$waited" -lt "$1" ] || return 1
        [ -z "${2:-}" ] || [ -d "/proc/$2" ] || return 1
        sleep 1
        waited=$((waited + 1))
    done
}
# A login user that is not root needs the docker group to use the socket;
# it applies from the next login.
join_group() {
    [ "$(id -u)" = 0 ] && return 0
    case " $(id -nG "$user" 2>/dev/null) " in *" docker "*) return 0 ;; esac
    if as_root usermod -aG docker "$user" >"$log" 2>&1; then
        echo "@@ group-added $user"
    else
        echo "@@ warn cannot add $user to the docker group"
        detail "$log"
    fi
}

# A field of /etc/os-release, read rather than sourced: nothing of the
# node's runs as code here.
os_field() { sed -n "s/^$1=//p" /etc/os-release 2>/dev/null | head -n 1 | tr -d "\"'"; }

systemd=no
[ -d /run/systemd/system ] && systemd=yes

if command -v docker >/dev/null 2>&1; then
    if wait_docker 0; then
        join_group
        echo "@@ result present $v"
        finish 0
    fi
    installed=yes
else
    installed=no
fi

if [ "$installed" = no ]; then
    id=$(os_field ID) like=$(os_field ID_LIKE) name=$(os_field PRETTY_NAME)
    echo "@@ os ${id:-unknown} $(os_field VERSION_ID)"
    tool='' package=''
    case "$id" in
        debian | ubuntu | raspbian) tool=apt-get package=docker.io ;;
        amzn) package=docker ;;
        fedora) package=moby-engine ;;
        *) case " $like " in *" debian "* | *" ubuntu "*) tool=apt-get package=docker.io ;; esac ;;
    esac
    if [ -n "$package" ] && [ -z "$tool" ]; then
        # Amazon Linux 2023 and Fedora have dnf; Amazon Linux 2 has yum.
        if command -v dnf >/dev/null 2>&1; then tool=dnf; else tool=yum; fi
    fi
    if [ -z "$tool" ] || ! command -v "$tool" >/dev/null 2>&1; then
        echo "@@ result unsupported-os ${name:-${id:-unknown}}"
        finish 1
    fi

    echo "@@ install $tool $package"
    if [ "$tool" = apt-get ]; then
        # A fresh instance may be running unattended-upgrades: wait for its lock.
        apt_get() { as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "$@"; }
        # A failed update is no reason to stop: the lists on the node still
        # name a version, and the cache may hold it. apt-get exits 0 when
        # only some lists failed, saying so in a W: line.
        if ! apt_get update >"$log" 2>&1 ||
            grep -qE "^(E: |W: Some index files failed)" "$log"; then
            echo "@@ warn apt-get update failed; installing from the package lists on the node"
            detail "$log"
        fi
        # The engine only: recommends such as git or needrestart are not Docker.
        apt_get install -y --no-install-recommends "$package" >"$log" 2>&1
    else
        as_root "$tool" install -y "$package" >"$log" 2>&1
    fi
    status=$?
    if [ "$status" -ne 0 ]; then
        echo "@@ result install-failed $tool $status"
        detail "$log"
        finish 1
    fi
    # What the mesh ([network]) uses on a node: wireguard-tools and
    # dnsmasq. Not Docker: a node without them still runs containers.
    if [ "$tool" = apt-get ]; then
        apt_get install -y --no-install-recommends wireguard-tools dnsmasq-base >"$log" 2>&1
    else
        as_root "$tool" install -y wireguard-tools dnsmasq >"$log" 2>&1
    fi || { echo "@@ warn the mesh's packages (wireguard-tools, dnsmasq) did not install"; detail "$log"; }
fi

# Start it with the node's service manager, else by hand.
if [ "$systemd" = yes ]; then
    method=systemd
    as_root systemctl enable --now docker >"$log" 2>&1 && wait_docker 60
elif wait_docker 0; then
    method=package
else
    if [ -x /etc/init.d/docker ]; then
        method=service
        if command -v service >/dev/null 2>&1; then
            as_root service docker start >"$log" 2>&1 && wait_docker 60
        else
            as_root /etc/init.d/docker start >"$log" 2>&1 && wait_docker 60
        fi
    fi
    if ! version >/dev/null; then
        [ -n "${method:-}" ] && { echo "@@ warn the docker service did not start; starting dockerd directly"; detail "$log"; }
        method=dockerd
        pid=$(as_root sh -c 'nohup dockerd </dev/null >>/var/log/dockerd.log 2>&1 & echo $!' 2>"$log")
        wait_docker 60 "$pid" || as_root tail -n 25 /var/log/dockerd.log >>"$log" 2>&1
    fi
fi
if ! v=$(version); then
    [ "$method" = systemd ] && as_root journalctl -u docker -n 25 --no-pager >>"$log" 2>&1
    echo "@@ result start-failed $method"
    detail "$log"
    finish 1
fi
echo "@@ start $method"
join_group
if [ "$installed" = no ]; then
    echo "@@ result installed $v"
else
    echo "@@ result started $v"
fi
finish 0
