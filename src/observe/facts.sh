# Prism node facts (run as `sh -c` with no arguments; see node.rs).
# Sections start with "@@ "; "@@ end" proves the output is complete.
echo "@@ prism-facts 1"
echo "@@ meminfo"
grep -E "^(MemTotal|MemAvailable):" /proc/meminfo
echo "@@ nproc"
nproc 2>/dev/null || getconf _NPROCESSORS_ONLN
d=/var/lib/docker
[ -d "$d" ] || d=/
echo "@@ df $d"
df -Pk "$d"
if command -v docker >/dev/null 2>&1; then
    v=$(docker version --format "{{.Server.Version}}" 2>&1)
    echo "@@ docker exit $?"
    printf "%s\n" "$v"
else
    echo "@@ docker missing"
fi
echo "@@ end"
