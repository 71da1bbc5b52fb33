# Prism: set up a node's part of the mesh, as root on the node (see mesh.rs).
# Args: IFACE PORT CIDR SUBNET GATEWAY DOMAIN HASH LOGIN_USER FLEET, then per
# peer: PUBLIC_KEY ENDPOINT(or -) ALLOWED_IPS.
# Idempotent: each step checks first. Prints "public-key KEY" at the end.
# The private key is made here, once, and never leaves the node.
set -eu
iface=$1 port=$2 cidr=$3 subnet=$4 gw=$5 domain=$6 hash=$7 user=$8 fleet=$9
shift 9
net=prism-mesh
dir=/etc/prism/mesh
names=/etc/prism/names
key=$dir/private.key

fail() { echo "$1" >&2; exit "${2:-3}"; }
for tool in wg:wireguard-tools wg-quick:wireguard-tools dnsmasq:dnsmasq-base iptables:iptables; do
    command -v "${tool%%:*}" >/dev/null 2>&1 ||
        fail "${tool%%:*} is missing on the node: install ${tool#*:} (contrib/aws/user-data.sh does)"
done
[ -d /run/systemd/system ] || fail "the mesh needs systemd on the node (wg-quick@ and the resolver are its units)"
dnsmasq=$(command -v dnsmasq)

# Writes stdin to $1 (mode $2) only if it differs; says whether it did.
put() {
    tmp=$(mktemp "$1.XXXXXX")
    cat > "$tmp"
    chmod "$2" "$tmp"
    if [ -f "$1" ] && cmp -s "$tmp" "$1"; then
        rm -f "$tmp"
        return 1
    fi
    mv -f "$tmp" "$1"
}

install -d -m 0755 /etc/prism "$dir"
# The login user writes the names (no root step per change); the resolver
# reads them.
install -d -m 0755 -o "$user" "$names"
if [ ! -s "$key" ]; then
    (umask 077 && wg genkey > "$key.new" && mv -f "$key.new" "$key")
fi
public=$(wg pubkey < "$key")

# The containers' network: this node's /24, its bridge named for the rules
# below; Docker's own masquerade off (the rules below masquerade all but
# mesh traffic, which keeps its addresses end to end); WireGuard's MTU, so
# that no packet needs a path MTU discovery through the tunnel.
if have=$(docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' "$net" 2>/dev/null); then
    [ "$have" = "$subnet " ] ||
        fail "the node's network $net has ${have% } where the mesh gives it $subnet; remove the network (its containers first) and Prism makes it anew" 4
else
    docker network create --driver bridge --subnet "$subnet" --gateway "$gw" \
        -o com.docker.network.bridge.name="$net" \
        -o com.docker.network.bridge.enable_ip_masquerade=false \
        -o com.docker.network.driver.mtu=1420 \
        --label "prism.fleet=$fleet" -- "$net" >/dev/null
fi

# Firewall, in chains of Prism's own (rewritten whole each time, so a
# change never leaves a stale rule): mesh traffic keeps its addresses,
# the rest leaves masqueraded; the mesh bridge takes new connections from
# the WireGuard interface and from nowhere else outside the node.
put "$dir/rules.sh" 0755 <<EOF || true
#!/bin/sh
# Written by Prism; run by wg-quick@$iface at each start.
set -e
iptables -t nat -N PRISM-MESH 2>/dev/null || true
iptables -t nat -F PRISM-MESH
iptables -t nat -A PRISM-MESH -s $subnet -d $cidr -j RETURN
iptables -t nat -A PRISM-MESH -s $subnet ! -o $net -j MASQUERADE
iptables -t nat -C POSTROUTING -j PRISM-MESH 2>/dev/null || iptables -t nat -I POSTROUTING -j PRISM-MESH
iptables -N DOCKER-USER 2>/dev/null || true
iptables -N PRISM-MESH 2>/dev/null || true
iptables -F PRISM-MESH
iptables -A PRISM-MESH -i $iface -o $net -j ACCEPT
iptables -A PRISM-MESH ! -i $net -o $net -m conntrack ! --ctstate RELATED,ESTABLISHED -j DROP
iptables -C DOCKER-USER -j PRISM-MESH 2>/dev/null || iptables -I DOCKER-USER -j PRISM-MESH
EOF

# WireGuard, through wg-quick@ (kernel WireGuard, or wireguard-go where
# the kernel lacks it): up at every boot, with no Prism process.
{
    printf '# Written by Prism (fleet %s): the mesh %s, this node %s.\n' "$fleet" "$cidr" "$subnet"
    printf '[Interface]\nListenPort = %s\nTable = off\n' "$port"
    printf 'PostUp = wg set %%i private-key %s\n' "$key"
    printf 'PostUp = ip route replace %s dev %%i\n' "$cidr"
    printf 'PostUp = %s/rules.sh\n' "$dir"
    while [ $# -ge 3 ]; do
        printf '\n[Peer]\nPublicKey = %s\nAllowedIPs = %s\n' "$1" "$3"
        [ "$2" = - ] || printf 'Endpoint = %s\n' "$2"
        shift 3
    done
} | put "/etc/wireguard/$iface.conf" 0600 || true
if [ -e "/sys/class/net/$iface" ]; then
    # Live: peers set in place (no packet lost for those that stay). The
    # key is read here, into a file only root can read, for `wg`.
    live=$(mktemp /run/prism-wg.XXXXXX)
    chmod 0600 "$live"
    {
        printf '[Interface]\nPrivateKey = %s\nListenPort = %s\n' "$(cat "$key")" "$port"
        sed -n '/^\[Peer\]/,$p' "/etc/wireguard/$iface.conf"
    } > "$live"
    wg syncconf "$iface" "$live" || { rm -f "$live"; fail "wg syncconf $iface failed"; }
    rm -f "$live"
    ip route replace "$cidr" dev "$iface"
    "$dir/rules.sh"
    systemctl enable --quiet "wg-quick@$iface" 2>/dev/null || true
else
    systemctl enable --quiet "wg-quick@$iface"
    systemctl restart "wg-quick@$iface" || fail "wg-quick@$iface did not start: $(journalctl -u "wg-quick@$iface" -n 5 --no-pager 2>&1 | tail -n 5)"
fi

# The resolver: dnsmasq on the mesh bridge's address, answering the names
# Prism writes (re-read on change) and sending other names to the node's
# own resolvers. It keeps answering while the operator is down.
changed=no
put "/etc/prism/names.conf" 0644 <<EOF && changed=yes
# Written by Prism: the fleet's names for containers on the mesh.
listen-address=$gw
bind-dynamic
no-hosts
hostsdir=$names
local=/$domain/
domain-needed
cache-size=1000
pid-file=/run/prism-names.pid
EOF
put /etc/systemd/system/prism-names.service 0644 <<EOF && changed=yes
[Unit]
Description=Names of Prism's containers (dnsmasq)
After=docker.service wg-quick@$iface.service

[Service]
ExecStart=$dnsmasq --keep-in-foreground --conf-file=/etc/prism/names.conf
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
EOF
[ -f "$names/hosts" ] || { printf '# No names yet.\n' > "$names/hosts" && chown "$user" "$names/hosts"; }
systemctl daemon-reload
systemctl enable --quiet prism-names
if [ "$changed" = yes ]; then
    systemctl restart prism-names
elif ! systemctl is-active --quiet prism-names; then
    systemctl start prism-names
fi

printf 'public-key %s\nsubnet %s\ninterface %s\napplied %s\n' "$public" "$subnet" "$iface" "$hash" |
    put "$dir/state" 0644 || true
echo "public-key $public"
