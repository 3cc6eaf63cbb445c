"""A C compiler image made from the host's Debian packages (no network): gcc, binutils,
libc6-dev and the shared libraries they load, plus busybox as /bin/sh.

`compiler_layer(path)` writes the one layer tar; `store_compiler_image(root, path)` puts
it in a pyinspect image store as `pi-gcc:test`. Big on purpose: the multi-stage test
turns it into an image holding one static binary.
"""

import json
import os
import shutil
import subprocess
import tarfile

PACKAGES = (
    "gcc",
    "gcc-12",
    "cpp-12",
    "binutils",
    "binutils-x86-64-linux-gnu",
    "libc6-dev",
    "libgcc-12-dev",
    "linux-libc-dev",
    "libc6",
)
SKIP = (
    "/usr/share/",
    "/usr/lib/gcc/x86_64-linux-gnu/12/lto1",
    "/usr/bin/lto-dump",
    "/usr/bin/x86_64-linux-gnu-lto-dump-12",
    "/usr/lib/gcc/x86_64-linux-gnu/12/plugin/",
)
ELF_TOOLS = (
    "/usr/lib/gcc/x86_64-linux-gnu/12/cc1",
    "/usr/lib/gcc/x86_64-linux-gnu/12/collect2",
    "/usr/lib/gcc/x86_64-linux-gnu/12/lto-wrapper",
    "/usr/bin/x86_64-linux-gnu-gcc-12",
    "/usr/bin/x86_64-linux-gnu-as",
    "/usr/bin/x86_64-linux-gnu-ld.bfd",
)
TAG = "pi-gcc:test"


def available():
    """None when the host can make the image, else why not."""
    for tool in ("dpkg", "ldd", "gcc"):
        if not shutil.which(tool):
            return f"{tool} is not installed"
    for p in PACKAGES:
        r = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True, check=False
        )
        if "install ok installed" not in r.stdout:
            return f"the Debian package {p} is not installed (make install)"
    if not os.path.exists("/bin/busybox"):
        return "busybox-static is not installed"
    return None


def _canonical(path):
    """The path with its directories resolved (usr-merged /lib -> /usr/lib)."""
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def _files():
    out = set()
    for p in PACKAGES:
        listing = subprocess.run(
            ["dpkg", "-L", p], capture_output=True, text=True, check=True
        ).stdout.split("\n")
        for f in listing:
            if not f or any(f.startswith(s) for s in SKIP):
                continue
            if os.path.islink(f) or os.path.isfile(f):
                out.add(_canonical(f))
    libs = subprocess.run(["ldd", *ELF_TOOLS], capture_output=True, text=True, check=False).stdout
    for line in libs.splitlines():
        parts = line.split("=>")
        if len(parts) == 2 and parts[1].strip().startswith("/"):
            lib = parts[1].split()[0]
            out.add(_canonical(lib))
            out.add(os.path.realpath(lib))
    return sorted(out)


def compiler_layer(path):
    """Write the layer tar to `path`."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name in ("bin", "sbin", "lib", "lib64"):
            host = "/" + name
            if os.path.islink(host):
                ti = tarfile.TarInfo(name)
                ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, os.readlink(host), 0o777
                tf.addfile(ti)
        for d in ("tmp", "root", "proc", "sys", "dev", "etc"):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tf.addfile(ti)
        for f in _files():
            ti = tf.gettarinfo(f, arcname=f.lstrip("/"))
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            if ti.isreg():
                with open(f, "rb") as fh:
                    tf.addfile(ti, fh)
            elif ti.issym():
                tf.addfile(ti)
        bb = tf.gettarinfo("/bin/busybox", arcname="usr/bin/busybox")
        with open("/bin/busybox", "rb") as fh:
            tf.addfile(bb, fh)
        for applet in ("sh", "ls", "cat", "mkdir", "rm", "echo", "true"):
            if not os.path.lexists(f"/usr/bin/{applet}") or applet == "sh":
                ti = tarfile.TarInfo(f"usr/bin/{applet}")
                ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, "busybox", 0o777
                tf.addfile(ti)
    return path


def config(diff_id):
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [
                {
                    "created": "2024-01-01T00:00:00Z",
                    "created_by": "tests/compilerimage.py: host gcc, binutils, libc6-dev",
                }
            ],
        }
    ).encode()


def store_compiler_image(root, layer_tar):
    """Put the image in the store at `root` (the tar is copied first); its tag."""
    from pyinspect.runtime.images import ImageStore

    store = ImageStore(root)
    copy = os.path.join(str(root), "compiler-layer.tar")
    shutil.copyfile(layer_tar, copy)
    diff_id = store.add_layer(copy)
    store.add_image(config(diff_id), [TAG])
    return TAG
