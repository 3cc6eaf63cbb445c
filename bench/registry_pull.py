"""`pyinspect pull` and `push` against a local registry, side by side with skopeo.

A Debian `docker-registry` (no auth) on a free 127.0.0.1 port holds an image of three
layers (random and text-like data, ~60 MB uncompressed). Each round, alternating:

- pull:  `pyinspect pull` into a fresh state root (download, verify digests while
         streaming, decompress, extract into the store) vs `skopeo copy docker://...
         oci:DIR` (download and verify, no extraction);
- push:  `pyinspect push` to a new repository vs `skopeo copy oci:DIR docker://...` of
         the same image to a new repository (both find the blobs in the registry's
         other repository and mount them: this measures the client's own cost).

Prints medians and the pyinspect/skopeo ratios (skopeo does less on pull: it does not
extract). Ratios, not absolute times, are the result on a shared machine.

    sudo .venv/bin/python bench/registry_pull.py [-n 5] [--mb 60]
"""

import argparse
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
PYINSPECT = str(VENV_BIN / "pyinspect")
ENV = {
    **{k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
    "PYINSPECT_PULL": "never",
}


def start_registry(tmp):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp / "registry.yml"
    cfg.write_text(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
        f"    rootdirectory: {tmp / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    raise SystemExit("docker-registry did not start")


def layer_tar(files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode = len(data), 1700000000, 0o644
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def image_archive(path, mb):
    """A docker-save archive of three layers: random, text-like, and mixed data."""
    part = (mb << 20) // 3
    words = b" ".join(b"word%d" % (i % 5000) for i in range(part // 8))[:part]
    layers = [
        layer_tar([("random.bin", os.urandom(part))]),
        layer_tar([("text.txt", words)]),
        layer_tar([("mixed.bin", os.urandom(part // 2) + bytes(part // 2))]),
    ]
    diff_ids = [f"sha256:{hashlib.sha256(x).hexdigest()}" for x in layers]
    cfg = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    with tarfile.open(path, "w") as tf:

        def add(name, data):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))

        add("config.json", cfg)
        for i, x in enumerate(layers):
            add(f"l{i}/layer.tar", x)
        add(
            "manifest.json",
            json.dumps(
                [
                    {
                        "Config": "config.json",
                        "RepoTags": ["bench:1"],
                        "Layers": [f"l{i}/layer.tar" for i in range(len(layers))],
                    }
                ]
            ).encode(),
        )
    return sum(len(x) for x in layers)


def timed(argv):
    t = time.monotonic()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    return time.monotonic() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5, help="rounds (default 5)")
    ap.add_argument("--mb", type=int, default=60, help="image size in MB (default 60)")
    args = ap.parse_args()
    for tool in ("docker-registry", "skopeo"):
        if not shutil.which(tool):
            print(f"registry_pull: {tool} is missing (make install)", file=sys.stderr)
            return 1
    tmp = Path(tempfile.mkdtemp(prefix="pi-bench-reg-"))
    proc = None
    try:
        proc, host = start_registry(tmp)
        size = image_archive(tmp / "image.tar", args.mb)
        seed = tmp / "seed"
        subprocess.run(
            [PYINSPECT, "--root", str(seed), "load", "-i", str(tmp / "image.tar")],
            check=True,
            stdout=subprocess.DEVNULL,
            env=ENV,
        )
        subprocess.run(
            [PYINSPECT, "--root", str(seed), "tag", "bench:1", f"{host}/bench/img:1"],
            check=True,
            env=ENV,
        )
        subprocess.run(
            [PYINSPECT, "--root", str(seed), "push", f"{host}/bench/img:1"],
            check=True,
            stdout=subprocess.DEVNULL,
            env=ENV,
        )
        times = {"pull": [], "skopeo-pull": [], "push": [], "skopeo-push": []}
        for i in range(args.n):
            root, oci = tmp / f"r{i}", tmp / f"oci{i}"
            pair = [
                ("pull", [PYINSPECT, "--root", str(root), "pull", f"{host}/bench/img:1"]),
                (
                    "skopeo-pull",
                    [
                        "skopeo",
                        "copy",
                        "--src-tls-verify=false",
                        f"docker://{host}/bench/img:1",
                        f"oci:{oci}:1",
                    ],
                ),
            ]
            for name, argv in pair if i % 2 == 0 else pair[::-1]:
                times[name].append(timed(argv))
            tag = uuid.uuid4().hex[:8]
            pair = [
                ("push", [PYINSPECT, "--root", str(seed), "push", f"{host}/bench/p{tag}:1"]),
                (
                    "skopeo-push",
                    [
                        "skopeo",
                        "copy",
                        "--dest-tls-verify=false",
                        f"oci:{oci}:1",
                        f"docker://{host}/bench/s{tag}:1",
                    ],
                ),
            ]
            subprocess.run(
                [PYINSPECT, "--root", str(seed), "tag", "bench:1", f"{host}/bench/p{tag}:1"],
                check=True,
                env=ENV,
            )
            for name, argv in pair if i % 2 == 0 else pair[::-1]:
                times[name].append(timed(argv))
            shutil.rmtree(root, ignore_errors=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"image: 3 layers, {size / 1e6:.1f} MB uncompressed; {args.n} rounds")
        for k in times:
            print(
                f"  {k:12s} median {med[k] * 1000:7.0f} ms  "
                f"({size / 1e6 / med[k]:.0f} MB/s of layer data)"
            )
        print(
            f"ratio pull pyinspect/skopeo: {med['pull'] / med['skopeo-pull']:.2f}x "
            "(pyinspect also extracts into the store)"
        )
        print(
            f"ratio push pyinspect/skopeo: {med['push'] / med['skopeo-push']:.2f}x "
            "(both mount the blobs the registry holds in another repository)"
        )
        return 0
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
