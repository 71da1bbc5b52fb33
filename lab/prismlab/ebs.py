"""The lab's EC2 endpoint: moto behind a small front that does to the
nodes what EC2 does to machines, so that what Prism sees through the API
happens on the nodes too.

- EBS volumes are sparse files under .lab/volumes. Attached, a volume
  appears in its node as a block device (a loop device of the host) at
  the name asked for, and by its volume id under /dev/disk/by-id, as on a
  Nitro instance; detached, or when the node dies, it goes away.
- Snapshots are copies under .lab/snapshots, taken point in time (the
  filesystem frozen while it is copied); a volume made from one starts as
  its copy.
- Terminating an instance kills its node, as EC2 would.
- AWS's failure modes of these calls are kept: a volume in use, another
  zone, a device name taken, a volume not available yet; a detach of a
  volume still mounted stays `busy` until it is unmounted, unless forced;
  create, attach, detach and snapshots take a moment (`creating`,
  `attaching`, `detaching`, `pending`).

Everything else goes to moto unchanged. Run as `python3 -m prismlab.ebs`
(lab/lab up starts it in the background)."""

import contextlib
import http.client
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET

from .common import MOTO_HOST, MOTO_PORT, REGION, STATE, path

# moto itself, behind the front.
BACKEND_PORT = 5053
NS = "http://ec2.amazonaws.com/doc/2016-11-15/"

VOLUMES = os.path.join(STATE, "volumes")
SNAPSHOTS = os.path.join(STATE, "snapshots")
DEVICE = re.compile(r"^/dev/(sd|xvd)[b-z][a-z]?$")
# How long the transitions take (AWS: seconds; here enough to be seen).
SETTLE = 0.3

LOCK = threading.RLock()
# volume id -> {"instance", "device", "container", "loop"} for volumes
# made to appear in a node.
attached = {}
# volume id -> {"force": bool} for detaches in progress.
detaching = {}
# volume id -> "creating" / "attaching" / "detaching" / "busy".
overlay = {}
# snapshot id -> "pending".
snap_overlay = {}


class Ec2Error(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def log(msg):
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def sh(*cmd, check=True, timeout=60, input=None):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, input=input)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {p.returncode}: {p.stderr.strip()}")
    return p


def backend():
    import boto3
    from botocore.config import Config
    return boto3.client(
        "ec2", region_name=REGION, endpoint_url=f"http://{MOTO_HOST}:{BACKEND_PORT}",
        aws_access_key_id="lab", aws_secret_access_key="lab",
        config=Config(retries={"max_attempts": 1}, connect_timeout=3, read_timeout=30),
    )


def save():
    with LOCK:
        tmp = path("ebs.json.tmp")
        with open(tmp, "w") as f:
            json.dump({"attached": attached}, f, indent=2)
        os.replace(tmp, path("ebs.json"))


def load():
    with contextlib.suppress(FileNotFoundError, ValueError):
        with open(path("ebs.json")) as f:
            attached.update(json.load(f).get("attached", {}))


def volume_file(vol_id):
    return os.path.join(VOLUMES, f"{vol_id}.img")


def snapshot_file(snap_id):
    return os.path.join(SNAPSHOTS, f"{snap_id}.img")


# ---------------------------------------------------------------- moto


def forward(method, target, headers, body):
    conn = http.client.HTTPConnection(MOTO_HOST, BACKEND_PORT, timeout=60)
    try:
        hdrs = {k: v for k, v in headers.items() if k.lower() not in ("connection", "transfer-encoding")}
        conn.request(method, target, body=body or None, headers=hdrs)
        r = conn.getresponse()
        data = r.read()
        out = [(k, v) for k, v in r.getheaders()
               if k.lower() not in ("connection", "transfer-encoding", "content-length")]
        return r.status, out, data
    finally:
        conn.close()


def error_xml(code, message):
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
            f"<Message>{xml_escape(message)}</Message></Error></Errors>"
            f"<RequestID>lab-{int(time.time() * 1000)}</RequestID></Response>").encode()


def xml_escape(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def describe_volume(vol_id):
    try:
        return backend().describe_volumes(VolumeIds=[vol_id])["Volumes"][0]
    except Exception as e:  # botocore's ClientError, by its code
        if "NotFound" in str(e):
            raise Ec2Error("InvalidVolume.NotFound", f"The volume '{vol_id}' does not exist.")
        raise


def describe_instance(inst_id):
    try:
        res = backend().describe_instances(InstanceIds=[inst_id])["Reservations"]
    except Exception as e:
        if "NotFound" in str(e) or "Malformed" in str(e):
            raise Ec2Error("InvalidInstanceID.NotFound", f"The instance ID '{inst_id}' does not exist")
        raise
    for r in res:
        for i in r["Instances"]:
            return i
    raise Ec2Error("InvalidInstanceID.NotFound", f"The instance ID '{inst_id}' does not exist")


def node_container(inst_id):
    """The lab node container of an instance: from its prism-lab:node tag."""
    try:
        inst = describe_instance(inst_id)
    except Ec2Error:
        return None
    tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
    node = tags.get("prism-lab:node")
    return f"prism-lab-{node}" if node else None


def running(container):
    p = sh("docker", "inspect", "--format", "{{.State.Running}}", container, check=False)
    return p.returncode == 0 and p.stdout.strip() == "true"


# ---------------------------------------------------------------- devices


def serial(vol_id):
    return vol_id.replace("-", "")


def plug(vol_id):
    """Makes the volume appear in its node: a loop device of the host,
    made at the requested name, linked by id."""
    with LOCK:
        rec = attached.get(vol_id)
        if rec is None:
            return
        f = volume_file(vol_id)
        if not os.path.exists(f):
            # A volume moto made alone (an instance's root): sized as moto says.
            size = describe_volume(vol_id).get("Size", 1)
            os.makedirs(VOLUMES, exist_ok=True)
            with open(f, "ab") as fh:
                fh.truncate(size << 30)
        loop = sh("losetup", "-f", "--show", f).stdout.strip()
        rec["loop"] = loop
        save()
    minor = int(loop.replace("/dev/loop", ""))
    dev = rec["device"]
    c = rec["container"]
    if c and running(c):
        script = ('set -e; rm -f "$1"; mknod "$1" b 7 "$2"; chgrp disk "$1" 2>/dev/null || true; '
                  'chmod 660 "$1"; mkdir -p /dev/disk/by-id; '
                  'ln -sfn "../../${1#/dev/}" "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_$3"')
        p = sh("docker", "exec", c, "sh", "-c", script, "plug", dev, minor, serial(vol_id), check=False)
        if p.returncode != 0:
            log(f"{vol_id}: could not make {dev} in {c}: {p.stderr.strip()}")
    log(f"{vol_id}: attached as {dev} ({loop}) in {c}")


def unplug(vol_id):
    """Takes the volume out of its node and frees the loop device."""
    with LOCK:
        rec = attached.pop(vol_id, None)
        save()
    if rec is None:
        return
    c = rec.get("container")
    if c and running(c):
        script = 'rm -f "$1" "/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_$2"'
        sh("docker", "exec", c, "sh", "-c", script, "unplug", rec["device"], serial(vol_id), check=False)
    if rec.get("loop"):
        sh("losetup", "-d", rec["loop"], check=False)
    log(f"{vol_id}: detached from {c}")


def mounted_in_node(rec):
    c = rec.get("container")
    if not c or not running(c):
        return False
    p = sh("docker", "exec", c, "cat", "/proc/1/mounts", check=False)
    names = {rec["device"], rec.get("loop") or ""}
    return any(line.split(" ", 1)[0] in names for line in p.stdout.splitlines())


# ---------------------------------------------------------------- actions


def attach_volume(p, forward_it):
    vol_id, inst_id, device = p.get("VolumeId", ""), p.get("InstanceId", ""), p.get("Device", "")
    with LOCK:
        vol = describe_volume(vol_id)
        if overlay.get(vol_id) == "creating" or vol["State"] == "creating":
            raise Ec2Error("IncorrectState", f"{vol_id} is not 'available'.")
        if vol.get("Attachments") or vol_id in attached:
            raise Ec2Error("VolumeInUse", f"{vol_id} is already attached to an instance")
        inst = describe_instance(inst_id)
        if inst["State"]["Name"] not in ("running", "stopped"):
            raise Ec2Error("IncorrectInstanceState", f"Instance '{inst_id}' is not 'running'.")
        if vol["AvailabilityZone"] != inst["Placement"]["AvailabilityZone"]:
            raise Ec2Error("InvalidVolume.ZoneMismatch",
                           f"The volume '{vol_id}' is not in the same availability zone as instance '{inst_id}'")
        if not DEVICE.match(device):
            raise Ec2Error("InvalidParameterValue",
                           f"Value ({device}) for parameter device is invalid. {device} is not a valid EBS device name.")
        used = {m["DeviceName"] for m in inst.get("BlockDeviceMappings", [])}
        used |= {r["device"] for r in attached.values() if r["instance"] == inst_id}
        if device in used:
            raise Ec2Error("InvalidParameterValue",
                           f"Invalid value '{device}' for unixDevice. Attachment point {device} is already in use")
        status, headers, body = forward_it()
        if status != 200:
            return status, headers, body
        attached[vol_id] = {"instance": inst_id, "device": device, "container": node_container(inst_id), "loop": None}
        overlay[vol_id] = "attaching"
        save()

    def finish():
        time.sleep(SETTLE)
        try:
            plug(vol_id)
        finally:
            with LOCK:
                overlay.pop(vol_id, None)
    threading.Thread(target=finish, daemon=True).start()
    return status, headers, body.replace(b"<status>attached</status>", b"<status>attaching</status>")


def detach_volume(p, _forward_it):
    vol_id = p.get("VolumeId", "")
    force = p.get("Force", "false").lower() == "true"
    with LOCK:
        vol = describe_volume(vol_id)
        atts = vol.get("Attachments") or []
        if not atts:
            raise Ec2Error("IncorrectState", f"Volume '{vol_id}' is in the 'available' state.")
        att = atts[0]
        if p.get("InstanceId") and p["InstanceId"] != att["InstanceId"]:
            raise Ec2Error("InvalidAttachment.NotFound",
                           f"The volume {vol_id} is not attached to instance {p['InstanceId']}")
        running_detach = vol_id in detaching
        detaching[vol_id] = {"force": force or detaching.get(vol_id, {}).get("force", False),
                             "instance": att["InstanceId"], "device": att["Device"]}
        overlay[vol_id] = "detaching"
    if not running_detach:
        threading.Thread(target=finish_detach, args=(vol_id,), daemon=True).start()
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<DetachVolumeResponse xmlns="{NS.rstrip("/")}">'
            f"<requestId>lab-{int(time.time() * 1000)}</requestId><volumeId>{vol_id}</volumeId>"
            f"<instanceId>{att['InstanceId']}</instanceId><device>{att['Device']}</device>"
            f"<status>detaching</status><attachTime>{att['AttachTime'].strftime('%Y-%m-%dT%H:%M:%S.000Z')}</attachTime>"
            "</DetachVolumeResponse>").encode()
    return 200, [("Content-Type", "text/xml")], body


def finish_detach(vol_id):
    """A detach completes once the volume is not mounted in its node, or
    at once when forced (EC2 cuts it off; here the node is gone anyway)."""
    time.sleep(SETTLE)
    while True:
        with LOCK:
            d = detaching.get(vol_id, {})
            rec = attached.get(vol_id)
        if not d.get("force") and rec is not None and mounted_in_node(rec):
            with LOCK:
                if overlay.get(vol_id) != "busy":
                    log(f"{vol_id}: still mounted in {rec.get('container')}: busy until unmounted")
                overlay[vol_id] = "busy"
            time.sleep(0.5)
            continue
        break
    unplug(vol_id)
    try:
        backend().detach_volume(VolumeId=vol_id, InstanceId=d.get("instance"), Device=d.get("device"), Force=True)
    except Exception as e:  # gone meanwhile (terminated): nothing to detach
        log(f"{vol_id}: moto's detach: {e}")
    with LOCK:
        detaching.pop(vol_id, None)
        overlay.pop(vol_id, None)


def terminate_instances(p, forward_it):
    """The instances' nodes die first (EC2 shuts the machine down), then
    moto marks them terminated, which detaches their volumes."""
    ids = [v for k, v in p.items() if k.startswith("InstanceId.")]
    for inst_id in ids:
        c = node_container(inst_id)
        if c and running(c):
            sh("docker", "kill", c, check=False)
            log(f"{inst_id}: terminated, so its node {c} was killed")
    with LOCK:
        gone = [v for v, r in attached.items() if r["instance"] in ids]
    for vol_id in gone:
        unplug(vol_id)
    return forward_it()


def create_volume(p, forward_it):
    snap = p.get("SnapshotId")
    if snap and not os.path.exists(snapshot_file(snap)):
        with LOCK:
            pending = snap_overlay.get(snap)
        if pending is None:
            raise Ec2Error("InvalidSnapshot.NotFound", f"The snapshot '{snap}' does not exist.")
    status, headers, body = forward_it()
    if status != 200:
        return status, headers, body
    m = re.search(rb"<volumeId>(vol-[0-9a-f]+)</volumeId>", body)
    if not m:
        return status, headers, body
    vol_id = m.group(1).decode()
    size = int(p.get("Size") or 0)
    with LOCK:
        overlay[vol_id] = "creating"

    def finish():
        time.sleep(SETTLE)
        os.makedirs(VOLUMES, exist_ok=True)
        f = volume_file(vol_id)
        try:
            if snap:
                while True:
                    with LOCK:
                        ready = snap not in snap_overlay
                    if ready:
                        break
                    time.sleep(0.2)
                sh("cp", "--sparse=always", snapshot_file(snap), f, timeout=3600)
                if size:
                    with open(f, "ab") as fh:
                        if fh.tell() < size << 30:
                            fh.truncate(size << 30)
            else:
                with open(f, "ab") as fh:
                    fh.truncate(max(size, 1) << 30)
        finally:
            with LOCK:
                overlay.pop(vol_id, None)
        log(f"{vol_id}: created ({size} GiB{', from ' + snap if snap else ''})")
    threading.Thread(target=finish, daemon=True).start()
    return status, headers, body.replace(b"<status>available</status>", b"<status>creating</status>")


def create_snapshot(p, forward_it):
    vol_id = p.get("VolumeId", "")
    describe_volume(vol_id)
    status, headers, body = forward_it()
    if status != 200:
        return status, headers, body
    m = re.search(rb"<snapshotId>(snap-[0-9a-f]+)</snapshotId>", body)
    if not m:
        return status, headers, body
    snap = m.group(1).decode()
    with LOCK:
        snap_overlay[snap] = "pending"
        rec = attached.get(vol_id)
    # Point in time: the filesystem is frozen for the copy when mounted.
    frozen = None
    if rec and rec.get("container") and running(rec["container"]):
        p2 = sh("docker", "exec", rec["container"], "sh", "-c",
                'grep "^$1 " /proc/1/mounts | cut -d" " -f2 | head -n1', "dir", rec["device"], check=False)
        d = p2.stdout.strip()
        if d and sh("docker", "exec", rec["container"], "fsfreeze", "-f", d, check=False).returncode == 0:
            frozen = d
    try:
        os.makedirs(SNAPSHOTS, exist_ok=True)
        src = volume_file(vol_id)
        if os.path.exists(src):
            sh("cp", "--sparse=always", src, snapshot_file(snap), timeout=3600)
        else:
            open(snapshot_file(snap), "wb").close()
    finally:
        if frozen:
            sh("docker", "exec", rec["container"], "fsfreeze", "-u", frozen, check=False)

    def finish():
        time.sleep(SETTLE)
        with LOCK:
            snap_overlay.pop(snap, None)
        log(f"{snap}: snapshot of {vol_id} completed")
    threading.Thread(target=finish, daemon=True).start()
    return status, headers, body.replace(b"<status>completed</status>", b"<status>pending</status>")


def delete_volume(p, forward_it):
    vol_id = p.get("VolumeId", "")
    with LOCK:
        if vol_id in attached or vol_id in detaching:
            raise Ec2Error("VolumeInUse", f"Volume {vol_id} is currently attached to {attached.get(vol_id, {}).get('instance', 'an instance')}")
    status, headers, body = forward_it()
    if status == 200:
        with contextlib.suppress(FileNotFoundError):
            os.remove(volume_file(vol_id))
    return status, headers, body


def delete_snapshot(p, forward_it):
    status, headers, body = forward_it()
    if status == 200:
        with contextlib.suppress(FileNotFoundError):
            os.remove(snapshot_file(p.get("SnapshotId", "")))
    return status, headers, body


def parse_xml(body):
    """The answer's root, and a function naming a tag in its namespace
    (kept as the default namespace when written back)."""
    root = ET.fromstring(body)
    ns = root.tag[1:].split("}", 1)[0] if root.tag.startswith("{") else ""
    ET.register_namespace("", ns)
    return root, (lambda tag: f"{{{ns}}}{tag}" if ns else tag)


def describe_volumes(p, forward_it):
    status, headers, body = forward_it()
    if status != 200:
        return status, headers, body
    with LOCK:
        states = dict(overlay)
    if not states:
        return status, headers, body
    root, q = parse_xml(body)
    for item in root.iter(q("item")):
        vid = item.find(q("volumeId"))
        if vid is None or vid.text not in states:
            continue
        state = states[vid.text]
        if state == "creating":
            st = item.find(q("status"))
            if st is not None:
                st.text = "creating"
            continue
        for att in item.iter(q("item")):
            ast = att.find(q("status"))
            if att is not item and ast is not None:
                ast.text = state
    return status, headers, ET.tostring(root, xml_declaration=True, encoding="UTF-8")


def describe_snapshots(p, forward_it):
    status, headers, body = forward_it()
    with LOCK:
        pending = set(snap_overlay)
    if status != 200 or not pending:
        return status, headers, body
    root, q = parse_xml(body)
    for item in root.iter(q("item")):
        sid = item.find(q("snapshotId"))
        st = item.find(q("status"))
        if sid is not None and st is not None and sid.text in pending:
            st.text = "pending"
    return status, headers, ET.tostring(root, xml_declaration=True, encoding="UTF-8")


SPECIAL = {
    "AttachVolume": attach_volume,
    "DetachVolume": detach_volume,
    "TerminateInstances": terminate_instances,
    "CreateVolume": create_volume,
    "CreateSnapshot": create_snapshot,
    "DeleteVolume": delete_volume,
    "DeleteSnapshot": delete_snapshot,
    "DescribeVolumes": describe_volumes,
    "DescribeSnapshots": describe_snapshots,
}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        params = {}
        if "x-www-form-urlencoded" in (self.headers.get("Content-Type") or ""):
            params = dict(urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        special = SPECIAL.get(params.get("Action", ""))

        def forward_it():
            return forward(self.command, self.path, dict(self.headers.items()), body)
        try:
            status, headers, out = special(params, forward_it) if special else forward_it()
        except Ec2Error as e:
            status, headers, out = 400, [("Content-Type", "text/xml")], error_xml(e.code, e.message)
        except Exception as e:  # the lab's own failure: say so, as a 500
            log(f"{params.get('Action', self.path)}: {type(e).__name__}: {e}")
            status, headers, out = 500, [("Content-Type", "text/xml")], error_xml("InternalError", str(e))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = handle_any


def reap():
    """Volumes of nodes that died without a terminate (killed by hand):
    their loop devices are freed; EC2 keeps them attached."""
    while True:
        time.sleep(1)
        with LOCK:
            recs = [(v, dict(r)) for v, r in attached.items() if r.get("loop")]
        for vol_id, rec in recs:
            c = rec.get("container")
            if c and not running(c):
                sh("losetup", "-d", rec["loop"], check=False)
                with LOCK:
                    if vol_id in attached:
                        attached[vol_id]["loop"] = None
                        attached[vol_id]["container"] = None
                        save()
                log(f"{vol_id}: its node {c} died; the loop device is freed")


def release_all():
    """Frees the loop devices of every lab volume (lab/lab down)."""
    if not os.path.isdir(VOLUMES):
        return 0
    n = 0
    for name in os.listdir(VOLUMES):
        f = os.path.join(VOLUMES, name)
        for line in sh("losetup", "-j", f, check=False).stdout.splitlines():
            sh("losetup", "-d", line.split(":", 1)[0], check=False)
            n += 1
    with contextlib.suppress(FileNotFoundError):
        os.remove(path("ebs.json"))
    return n


def main():
    load()
    threading.Thread(target=reap, daemon=True).start()
    server = http.server.ThreadingHTTPServer((MOTO_HOST, MOTO_PORT), Handler)
    server.daemon_threads = True
    log(f"EC2 front on {MOTO_HOST}:{MOTO_PORT}, moto on {MOTO_HOST}:{BACKEND_PORT}")
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
