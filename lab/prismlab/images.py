"""The lab's images: the debootstrapped base; the node, bare and registry
images on it; the test app. Each carries a hash of its inputs, so it is
rebuilt only when they change."""

import hashlib
import os
import shutil
import subprocess
import tempfile

from .common import (
    BASE_IMAGE, BASE_PACKAGES, HELPER_IMAGE, HELPER_PUSH, LABEL, PGBASE_IMAGE, PGBASE_PACKAGES,
    POSTGRES_IMAGE, POSTGRES_PUSH, REGISTRY_HOST, SRC, TESTAPP_IMAGE, TESTAPP_PUSH, TESTAPP_TARGET,
    TESTAPP_VARIANTS, Fail,
    docker, path, run, say, step, tail,
)


def image_id(ref):
    p = docker("image", "inspect", "--format", "{{.Id}}", ref, check=False)
    return p.stdout.strip() if p.returncode == 0 else None


def image_label(ref, key):
    p = docker("image", "inspect", "--format", f'{{{{index .Config.Labels "{key}"}}}}', ref, check=False)
    return p.stdout.strip() if p.returncode == 0 else None


def hash_files(files, extra=()):
    h = hashlib.sha256()
    for rel, full in sorted(files):
        h.update(rel.encode() + b"\0")
        with open(full, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    for e in extra:
        h.update(str(e).encode() + b"\0")
    return h.hexdigest()[:12]


def files_under(top, skip=("target",)):
    out = []
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if d not in skip and not d.startswith("."))
        for fn in filenames:
            full = os.path.join(dirpath, fn)
            out.append((os.path.relpath(full, top), full))
    return out


def file_sha(p):
    with open(p, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def debian_mirror():
    """The main Debian archive URI of this machine's apt sources."""
    import glob
    for src in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        with open(src) as f:
            stanzas = f.read().split("\n\n")
        for st in stanzas:
            fields = {}
            for line in st.splitlines():
                if ":" in line and not line.lstrip().startswith("#") and not line.startswith((" ", "\t")):
                    k, v = line.split(":", 1)
                    fields[k.strip().lower()] = v.split()
            if "deb" in fields.get("types", []) and "bookworm" in fields.get("suites", []) and fields.get("uris"):
                return fields["uris"][0]
    for src in ["/etc/apt/sources.list"]:
        try:
            lines = open(src).read().splitlines()
        except OSError:
            continue
        for line in lines:
            words = line.split("#", 1)[0].split()
            if words and words[0] == "deb":
                words = [w for w in words[1:] if not w.startswith("[") and not w.endswith("]")]
                if len(words) >= 2 and words[1] == "bookworm":
                    return words[0]
    raise Fail("no Debian bookworm archive in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list")


def debootstrap_image(tag, packages, name, keep_apt=False):
    """A Debian bookworm root filesystem (minbase and `packages`) from the
    machine's Debian archive, imported as `tag`, labelled with the
    packages. `keep_apt`: apt's lists and downloaded packages stay (the
    bare node installs Docker from them with no network)."""
    mirror = debian_mirror()
    os.makedirs(path("logs"), exist_ok=True)
    slug = name.replace(" ", "-")
    log = path("logs", f"debootstrap-{slug}.log")
    say(f"{name}: debootstrap bookworm from {mirror} (a minute or two; log {log})")
    root = tempfile.mkdtemp(prefix=f"prism-lab-{slug}-", dir="/var/tmp")
    try:
        with open(log, "w") as lf:
            p = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={packages}", "bookworm", root, mirror],
                stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        if p.returncode != 0:
            with open(log, errors="replace") as lf:
                raise Fail(f"debootstrap exited {p.returncode}: {tail(lf.read())}")
        # What a container never needs: docs, and apt's lists and caches
        # unless kept.
        apt = () if keep_apt else ("var/lib/apt/lists", "var/cache/apt")
        for sub in (*apt, "usr/share/doc", "usr/share/man"):
            shutil.rmtree(os.path.join(root, sub), ignore_errors=True)
        say(f"{name}: importing the root filesystem")
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        imp = subprocess.run(
            ["docker", "import", "--change", f"LABEL {LABEL}", "--change",
             f"LABEL prism-lab.packages={packages}", "--change",
             f"LABEL prism-lab.apt={'kept' if keep_apt else 'removed'}",
             "--change", 'CMD ["/bin/bash"]', "-", tag],
            stdin=tar.stdout, capture_output=True, text=True, errors="replace",
        )
        tar.stdout.close()
        tar_err = tar.stderr.read().decode(errors="replace")
        tar.wait()
        if tar.returncode != 0:
            raise Fail(f"tar of the root filesystem exited {tar.returncode}: {tail(tar_err)}")
        if imp.returncode != 0:
            raise Fail(f"docker import exited {imp.returncode}: {tail(imp.stderr)}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def ensure_base():
    with step("base image"):
        if (image_label(BASE_IMAGE, "prism-lab.packages") != BASE_PACKAGES
                or image_label(BASE_IMAGE, "prism-lab.apt") != "kept"):
            debootstrap_image(BASE_IMAGE, BASE_PACKAGES, "base image", keep_apt=True)


def ensure_postgres_image():
    """PostgreSQL from Debian's packages (lab/postgres/), tagged for the
    lab's registry."""
    with step("postgres image"):
        if image_label(PGBASE_IMAGE, "prism-lab.packages") != PGBASE_PACKAGES:
            debootstrap_image(PGBASE_IMAGE, PGBASE_PACKAGES, "postgres image")
        src = os.path.join(SRC, "postgres")
        h = hash_files(files_under(src), [image_id(PGBASE_IMAGE)])
        if image_label(POSTGRES_IMAGE, "prism-lab.hash") != h:
            build_image(POSTGRES_IMAGE, src, h, "postgres image")
        docker("tag", POSTGRES_IMAGE, POSTGRES_PUSH)


def build_image(tag, context, h, name):
    say(f"{name}: building {tag}")
    env = dict(os.environ, DOCKER_BUILDKIT="0")
    docker("build", "-q", "--label", LABEL, "--label", f"prism-lab.hash={h}", "-t", tag, context,
           env=env, timeout=600)


def ensure_node_image(kind="node"):
    """prism-lab/KIND:<hash>, built FROM the base out of lab/KIND/ and
    lab/node-common/."""
    with step(f"{kind} image"):
        base = image_id(BASE_IMAGE)
        if not base:
            raise Fail(f"{BASE_IMAGE} is missing (lab/lab up builds it)")
        # Each kind's own files, and what every node does at start.
        srcs = [os.path.join(SRC, kind), os.path.join(SRC, "node-common")]
        h = hash_files([f for src in srcs for f in files_under(src)], [base])
        tag = f"prism-lab/{kind}:{h}"
        if not image_id(tag):
            with tempfile.TemporaryDirectory(prefix=f"prism-lab-{kind}-") as ctx:
                for src in srcs:
                    for fn in os.listdir(src):
                        shutil.copy(os.path.join(src, fn), ctx)
                build_image(tag, ctx, h, f"{kind} image")
        return tag


def ensure_registry_image():
    with step("registry image"):
        binary = shutil.which("docker-registry") or "/usr/bin/docker-registry"
        if not os.path.exists(binary):
            raise Fail("docker-registry is not installed (lab/lab install)")
        src = os.path.join(SRC, "registry")
        h = hash_files(files_under(src), [image_id(BASE_IMAGE), file_sha(binary)])
        tag = f"prism-lab/registry:{h}"
        if not image_id(tag):
            with tempfile.TemporaryDirectory(prefix="prism-lab-registry-") as ctx:
                for fn in os.listdir(src):
                    shutil.copy(os.path.join(src, fn), ctx)
                shutil.copy(binary, os.path.join(ctx, "docker-registry"))
                build_image(tag, ctx, h, "registry image")
        return tag


def cargo():
    found = shutil.which("cargo")
    if found:
        return found
    home = os.path.expanduser("~/.cargo/bin/cargo")
    if os.path.exists(home):
        return home
    raise Fail("cargo not found on PATH nor in ~/.cargo/bin")


def ensure_testapp_image():
    with step("testapp image"):
        src = os.path.join(SRC, "testapp")
        busybox = "/bin/busybox"
        if not os.path.exists(busybox):
            raise Fail("/bin/busybox is missing (lab/lab install puts busybox-static in place)")
        h = hash_files(files_under(src), [file_sha(busybox)])
        if image_label(TESTAPP_IMAGE, "prism-lab.hash") != h:
            say("testapp image: building the test app (cargo, release, static)")
            target_dir = path("testapp-target")
            env = dict(os.environ, RUSTFLAGS="-C target-feature=+crt-static")
            locked = ["--locked"] if os.path.exists(os.path.join(src, "Cargo.lock")) else []
            run([cargo(), "build", "--release", *locked, "--manifest-path", os.path.join(src, "Cargo.toml"),
                 "--target-dir", target_dir, "--target", TESTAPP_TARGET], env=env, timeout=900)
            binary = os.path.join(target_dir, TESTAPP_TARGET, "release", "testapp")
            with tempfile.TemporaryDirectory(prefix="prism-lab-testapp-") as ctx:
                shutil.copy(os.path.join(src, "Dockerfile"), ctx)
                shutil.copy(busybox, os.path.join(ctx, "busybox"))
                shutil.copy(binary, os.path.join(ctx, "testapp"))
                build_image(TESTAPP_IMAGE, ctx, h, "testapp image")
        docker("tag", TESTAPP_IMAGE, TESTAPP_PUSH)
    with step("testapp variants"):
        base = image_id(TESTAPP_IMAGE)
        for tag, line in TESTAPP_VARIANTS.items():
            local = f"prism-lab/testapp:{tag}"
            h = hashlib.sha256(f"{base}\n{line}".encode()).hexdigest()
            if image_label(local, "prism-lab.hash") != h:
                with tempfile.TemporaryDirectory(prefix="prism-lab-testapp-") as ctx:
                    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
                        f.write(f"FROM {TESTAPP_IMAGE}\n{line}\n")
                    build_image(local, ctx, h, f"testapp:{tag} image")
            docker("tag", local, f"{REGISTRY_HOST}/prism/testapp:{tag}")


def ensure_helper_image():
    with step("helper image"):
        src = os.path.join(SRC, "helper")
        busybox = "/bin/busybox"
        if not os.path.exists(busybox):
            raise Fail("/bin/busybox is missing (lab/lab install puts busybox-static in place)")
        h = hash_files(files_under(src), [file_sha(busybox)])
        if image_label(HELPER_IMAGE, "prism-lab.hash") != h:
            with tempfile.TemporaryDirectory(prefix="prism-lab-helper-") as ctx:
                shutil.copy(os.path.join(src, "Dockerfile"), ctx)
                shutil.copy(busybox, os.path.join(ctx, "busybox"))
                build_image(HELPER_IMAGE, ctx, h, "helper image")
        docker("tag", HELPER_IMAGE, HELPER_PUSH)


def remove_images():
    """Removes the lab's images, children before parents."""
    ids = sorted(set(docker("images", "-q", "--filter", f"label={LABEL}").stdout.split()))
    removed, left = 0, ids
    for _ in range(6):
        if not left:
            break
        retry = []
        for i in left:
            p = docker("rmi", "-f", i, check=False, timeout=300)
            if p.returncode == 0:
                removed += 1
            elif "No such image" not in p.stderr:
                retry.append((i, p.stderr))
        if len(retry) == len(left):
            break
        left = [i for i, _ in retry]
    if left:
        raise Fail(f"could not remove {len(left)} images: {tail(retry[0][1])}")
    if removed:
        say(f"removed {removed} images")
