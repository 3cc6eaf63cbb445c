"""The embedded default image `busybox:latest`, built locally from the host's static busybox.

No network: the one layer holds /bin/busybox, a relative symlink per applet at the path
`busybox --list-full` names (bin/sh among them), /etc/passwd and /etc/group, /tmp (1777),
/root, the /proc /sys /dev mount points and /var/www/index.html for `httpd`. Every tar
header is fixed (owner 0:0, mtime = the binary's mtime, sorted order), so the same host
binary always gives the same layer digest and the same image id.
"""

import io
import json
import os
import subprocess
import tarfile

from pyinspect.errors import UnavailableError

BUSYBOX = "/bin/busybox"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """root:x:0:
daemon:x:1:
www-data:x:33:
nogroup:x:65534:
"""
INDEX_HTML = """<!doctype html>
<html><head><title>pyinspect busybox</title></head>
<body><h1>It works</h1><p>Served by busybox httpd in a pyinspect container.</p></body></html>
"""

DIRS = {  # path -> mode
    "bin": 0o755,
    "sbin": 0o755,
    "usr": 0o755,
    "usr/bin": 0o755,
    "usr/sbin": 0o755,
    "etc": 0o755,
    "tmp": 0o1777,
    "root": 0o700,
    "proc": 0o555,
    "sys": 0o555,
    "dev": 0o755,
    "home": 0o755,
    "var": 0o755,
    "var/www": 0o755,
    "var/run": 0o755,
    "var/log": 0o755,
}


def _is_static(path):
    """True when the ELF file has no PT_INTERP program header (no dynamic loader needed)."""
    import struct

    with open(path, "rb") as f:
        ident = f.read(64)
        if ident[:4] != b"\x7fELF" or ident[4] != 2:
            return False
        (phoff,) = struct.unpack_from("<Q", ident, 32)
        phentsize, phnum = struct.unpack_from("<HH", ident, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        (p_type,) = struct.unpack_from("<I", table, i * phentsize)
        if p_type == 3:  # PT_INTERP
            return False
    return True


def _applets(busybox):
    out = subprocess.run(
        [busybox, "--list-full"], capture_output=True, text=True, timeout=10, check=True
    ).stdout
    return sorted({line.strip().strip("/") for line in out.splitlines() if line.strip()})


def build_layer(busybox=BUSYBOX):
    """(layer tar bytes, mtime, busybox version line) for the embedded image."""
    if not os.path.exists(busybox):
        raise UnavailableError(
            f"building the busybox image: {busybox} not found",
            "install busybox-static (scripts/install.sh)",
        )
    if not _is_static(busybox):
        raise UnavailableError(
            f"building the busybox image: {busybox} is not statically linked",
            "install busybox-static (scripts/install.sh)",
        )
    try:
        applets = _applets(busybox)
        version = (
            subprocess.run([busybox], capture_output=True, text=True, timeout=10, check=False)
            .stdout.splitlines()[0]
            .strip()
        )
    except (OSError, subprocess.SubprocessError, IndexError) as exc:
        raise UnavailableError(f"building the busybox image: cannot run {busybox}: {exc}") from None
    st = os.stat(busybox)
    mtime = int(st.st_mtime)

    entries = {}  # path -> TarInfo, data

    def add(name, kind, mode, data=b"", link=""):
        ti = tarfile.TarInfo(name)
        ti.type = kind
        ti.mode = mode
        ti.mtime = mtime
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        ti.linkname = link
        ti.size = len(data) if kind == tarfile.REGTYPE else 0
        entries[name] = (ti, data)

    for d, mode in DIRS.items():
        add(d, tarfile.DIRTYPE, mode)
    with open(busybox, "rb") as f:
        add("bin/busybox", tarfile.REGTYPE, 0o755, f.read())
    for applet in applets:
        if applet == "bin/busybox" or applet.count("/") < 1:
            continue
        parent = applet.rsplit("/", 1)[0]
        if parent not in entries:
            add(parent, tarfile.DIRTYPE, 0o755)
        target = "../" * applet.count("/") + "bin/busybox"
        if parent == "bin":
            target = "busybox"
        add(applet, tarfile.SYMTYPE, 0o777, link=target)
    add("bin/sh", tarfile.SYMTYPE, 0o777, link="busybox")
    add("etc/passwd", tarfile.REGTYPE, 0o644, PASSWD.encode())
    add("etc/group", tarfile.REGTYPE, 0o644, GROUP.encode())
    add("var/www/index.html", tarfile.REGTYPE, 0o644, INDEX_HTML.encode())

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name in sorted(entries):
            ti, data = entries[name]
            tf.addfile(ti, io.BytesIO(data) if ti.type == tarfile.REGTYPE else None)
    return buf.getvalue(), mtime, version


def image_config(diff_id, mtime, version):
    """The image config JSON bytes (canonical, so the id is stable)."""
    import time

    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime))
    arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386"}.get(
        os.uname().machine, os.uname().machine
    )
    config = {
        "architecture": arch,
        "os": "linux",
        "created": created,
        "config": {"Env": [PATH_ENV], "Cmd": ["sh"], "WorkingDir": "", "Entrypoint": None},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [
            {"created": created, "created_by": f"pyinspect: embedded from {BUSYBOX} ({version})"}
        ],
    }
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
