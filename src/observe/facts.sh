# Prism node facts (run as `sh -c` with no arguments; see node.rs).
# Sections start with "@@ "; "@@ end" proves the output is complete.
echo "@@ prism-facts 2"
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
echo "@@ end"
