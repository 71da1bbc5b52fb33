"""The registries on the lab network, both holding the test app: the plain
one (HTTP) and the one with auth (HTTPS with the lab's CA, basic auth)."""

import base64
import json
import os
import secrets
import ssl
import tempfile
import time
import urllib.error
import urllib.request
import warnings

from .common import (
    AUTH_REGISTRY, AUTH_REGISTRY_HOST, AUTH_REGISTRY_IP, AUTH_REGISTRY_LAB, AUTH_USER, HELPER_IMAGE,
    HELPER_NODE_REPO, HELPER_PUSH, LABEL, NET, POSTGRES_IMAGE, POSTGRES_PUSH, REGISTRY, REGISTRY_HOST,
    REGISTRY_IP, TESTAPP_AUTH_NODE,
    TESTAPP_AUTH_PUSH, TESTAPP_IMAGE,
    TESTAPP_PUSH, TESTAPP_VARIANTS, Fail, container_info, docker, http_get, path, run, say, step, tail, warn,
    write_file,
)

AUTH_REGISTRY_CONFIG = """\
# Written by lab/lab up: the authenticated registry (HTTPS, basic auth).
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: /var/lib/registry
  delete:
    enabled: true
http:
  addr: :5000
  tls:
    certificate: /etc/prism-lab-auth/tls.crt
    key: /etc/prism-lab-auth/tls.key
auth:
  htpasswd:
    realm: prism-lab
    path: /etc/prism-lab-auth/htpasswd
"""


def registry_digest(repo="testapp", tag="1"):
    r = http_get(f"http://{REGISTRY_HOST}/v2/prism/{repo}/manifests/{tag}", method="HEAD", headers={
        "Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                  "application/vnd.oci.image.manifest.v1+json"})
    if r is None or r[0] != 200:
        return None
    return r[1].get("Docker-Content-Digest")


def ensure_registry(image):
    with step("registry"):
        info = container_info(REGISTRY)
        if info and not (info["State"]["Running"] and info["Config"]["Image"] == image):
            docker("rm", "-f", REGISTRY)
            info = None
        if info is None:
            os.makedirs(path("registry"), exist_ok=True)
            docker("run", "-d", "--name", REGISTRY, "--label", LABEL, "--network", NET, "--ip", REGISTRY_IP,
                   "-p", f"{REGISTRY_HOST}:5000", "-v", f"{path('registry')}:/var/lib/registry",
                   "--restart", "no", image)
        deadline = time.monotonic() + 20
        while True:
            r = http_get(f"http://{REGISTRY_HOST}/v2/")
            if r is not None and r[0] == 200:
                break
            if time.monotonic() > deadline:
                logs = docker("logs", "--tail", "5", REGISTRY, check=False)
                raise Fail(f"registry did not answer on http://{REGISTRY_HOST}/v2/ within 20 s: "
                           f"{tail(logs.stderr + logs.stdout)}")
            time.sleep(0.2)
    images = [("testapp", TESTAPP_IMAGE, TESTAPP_PUSH), ("helper", HELPER_IMAGE, HELPER_PUSH),
              ("postgres", POSTGRES_IMAGE, POSTGRES_PUSH)]
    images += [("testapp", f"prism-lab/testapp:{tag}", f"{REGISTRY_HOST}/prism/testapp:{tag}")
               for tag in TESTAPP_VARIANTS]
    for repo, image, push in images:
        tag = push.rsplit(":", 1)[1]
        with step(f"push {repo}:{tag}"):
            have = registry_digest(repo, tag)
            p = docker("image", "inspect", "--format", "{{json .RepoDigests}}", image)
            ours = [d.split("@", 1)[1] for d in json.loads(p.stdout) or [] if d.startswith(push.rsplit(":", 1)[0] + "@")]
            if have and have in ours:
                continue
            say(f"registry: pushing {push}")
            docker("push", "-q", push, timeout=300)


def helper_ref():
    """The helper image as nodes pull it, pinned by the registry's digest
    (by tag only while the registry cannot tell it)."""
    digest = registry_digest("helper")
    return f"{HELPER_NODE_REPO}@{digest}" if digest else f"{HELPER_NODE_REPO}:1"


def auth_path(*parts):
    return path("registry-auth", *parts)


def auth_password():
    """The auth registry's password: made once, kept in a 0600 file."""
    p = auth_path("password")
    if not os.path.exists(p):
        write_file(p, secrets.token_urlsafe(24) + "\n", mode=0o600)
    with open(p) as f:
        return f.read().strip()


def bcrypt_hash(password):
    """An htpasswd bcrypt hash (the registry reads only bcrypt), through
    libxcrypt: neither htpasswd nor a bcrypt module is among the lab's
    packages."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import crypt
        except ImportError:
            raise Fail("this python has no crypt module to hash the registry password with bcrypt")
        h = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
    if not h or not h.startswith("$2"):
        raise Fail("the system crypt() cannot make bcrypt hashes")
    return h


def ensure_auth_files():
    """CA, server certificate (for 172.31.250.3 and 127.0.0.1), htpasswd and
    registry config, made once. Server files go in server/, the only part
    the registry container sees; the CA key and password stay out."""
    with step("auth registry files"):
        server = auth_path("server")
        os.makedirs(server, exist_ok=True)
        os.chmod(auth_path(), 0o700)
        ca_key, ca_crt = auth_path("ca.key"), auth_path("ca.crt")
        if not os.path.exists(ca_crt):
            run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650",
                 "-subj", "/CN=prism-lab registry CA", "-keyout", ca_key, "-out", ca_crt])
            os.chmod(ca_key, 0o600)
        crt, key = os.path.join(server, "tls.crt"), os.path.join(server, "tls.key")
        if not os.path.exists(crt):
            csr = os.path.join(server, "tls.csr")
            ext = os.path.join(server, "tls.ext")
            write_file(ext, f"subjectAltName=IP:{AUTH_REGISTRY_IP},IP:127.0.0.1\n")
            run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes",
                 "-subj", f"/CN={AUTH_REGISTRY_IP}", "-keyout", key, "-out", csr])
            run(["openssl", "x509", "-req", "-in", csr, "-CA", ca_crt, "-CAkey", ca_key,
                 "-CAcreateserial", "-days", "3650", "-extfile", ext, "-out", crt])
            os.chmod(key, 0o600)
            for f in (csr, ext):
                os.remove(f)
        password = auth_password()
        htpasswd = os.path.join(server, "htpasswd")
        if not os.path.exists(htpasswd):
            write_file(htpasswd, f"{AUTH_USER}:{bcrypt_hash(password)}\n", mode=0o600)
        write_file(os.path.join(server, "config.yml"), AUTH_REGISTRY_CONFIG)
        return password


def auth_get(url, password=None, method="GET", headers=None):
    ctx = ssl.create_default_context(cafile=auth_path("ca.crt"))
    headers = dict(headers or {})
    if password is not None:
        token = base64.b64encode(f"{AUTH_USER}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    req = urllib.request.Request(url, method=method, headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=ctx))
    try:
        with opener.open(req, timeout=2.0) as r:
            return r.status, r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.headers
    except (urllib.error.URLError, OSError):
        return None


def ensure_auth_registry(image):
    """The authenticated registry beside the plain one (same image, its own
    config), holding the test app too."""
    password = ensure_auth_files()
    with step("auth registry"):
        info = container_info(AUTH_REGISTRY)
        if info and not (info["State"]["Running"] and info["Config"]["Image"] == image):
            docker("rm", "-f", AUTH_REGISTRY)
            info = None
        if info is None:
            os.makedirs(auth_path("data"), exist_ok=True)
            docker("run", "-d", "--name", AUTH_REGISTRY, "--label", LABEL, "--network", NET,
                   "--ip", AUTH_REGISTRY_IP, "-p", f"{AUTH_REGISTRY_HOST}:5000",
                   "-v", f"{auth_path('data')}:/var/lib/registry",
                   "-v", f"{auth_path('server')}:/etc/prism-lab-auth:ro",
                   "--entrypoint", "/usr/bin/docker-registry", "--restart", "no",
                   image, "serve", "/etc/prism-lab-auth/config.yml")
        deadline = time.monotonic() + 20
        while True:
            # Without credentials: 401 proves both TLS and auth are on.
            r = auth_get(f"https://{AUTH_REGISTRY_HOST}/v2/")
            if r is not None and r[0] == 401:
                break
            if time.monotonic() > deadline:
                logs = docker("logs", "--tail", "5", AUTH_REGISTRY, check=False)
                raise Fail(f"auth registry did not answer 401 on https://{AUTH_REGISTRY_HOST}/v2/ "
                           f"within 20 s (got {r and r[0]}): {tail(logs.stderr + logs.stdout)}")
            time.sleep(0.2)
    with step("push testapp (auth)"):
        r = auth_get(f"https://{AUTH_REGISTRY_HOST}/v2/prism/testapp/manifests/1", password, "HEAD", {
            "Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                      "application/vnd.oci.image.manifest.v1+json"})
        have = r[1].get("Docker-Content-Digest") if r and r[0] == 200 else None
        docker("tag", TESTAPP_IMAGE, TESTAPP_AUTH_PUSH)
        p = docker("image", "inspect", "--format", "{{json .RepoDigests}}", TESTAPP_IMAGE)
        prefix = TESTAPP_AUTH_PUSH.rsplit(":", 1)[0] + "@"
        ours = [d.split("@", 1)[1] for d in json.loads(p.stdout) or [] if d.startswith(prefix)]
        if have and have in ours:
            return
        say(f"auth registry: pushing {TESTAPP_AUTH_PUSH}")
        # A throwaway client config: the host's docker keeps no credentials.
        with tempfile.TemporaryDirectory(prefix="prism-lab-docker-") as cfg:
            docker("--config", cfg, "login", "--username", AUTH_USER, "--password-stdin",
                   AUTH_REGISTRY_HOST, input=password + "\n")
            docker("--config", cfg, "push", "-q", TESTAPP_AUTH_PUSH, timeout=300)


def trust_auth_registry(node):
    """Puts the lab CA where the node's dockerd looks for this registry's."""
    ca = auth_path("ca.crt")
    if not os.path.exists(ca):
        warn(f"{node['name']}: no {ca} yet (lab/lab up makes it): the auth registry is not trusted there")
        return
    with open(ca) as f:
        pem = f.read()
    d = f"/etc/docker/certs.d/{AUTH_REGISTRY_LAB}"
    docker("exec", "-i", node["container"], "sh", "-c", f"mkdir -p '{d}' && cat > '{d}/ca.crt'", input=pem)


def auth_registry_state():
    return {
        "container": AUTH_REGISTRY,
        "address": AUTH_REGISTRY_IP,
        "host": AUTH_REGISTRY_HOST,
        "lab": AUTH_REGISTRY_LAB,
        "testapp_image": TESTAPP_AUTH_NODE,
        "username": AUTH_USER,
        # Real paths: .lab/ may be a symlink out of a worktree that goes away.
        "password_file": os.path.realpath(auth_path("password")),
        "ca": os.path.realpath(auth_path("ca.crt")),
    }
