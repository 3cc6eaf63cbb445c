"""`pyinspect build` of a 20-step Dockerfile (busybox base): cold, fully cached, and the same
steps done by hand as `pyinspect run` + a commit of the container's upper dir.

The by-hand side is what a user without `build` would do for each step: RUN -> `pyinspect
run` the command on the current image, tar the container's upper dir, `pyinspect load` an
archive whose config adds that layer, `pyinspect rm` the container; COPY -> a detached
container, `pyinspect cp`, then the same commit; ENV/WORKDIR/CMD -> edit the config and
load it. Both sides run in one network namespace of the bench's own (RUN uses the
bridge), on fresh state roots, alternating rounds. Prints medians, the cold-build/by-hand
ratio and the cached-build time against the 1 s target.

    sudo .venv/bin/python bench/build_cache.py [-n 3] [--json]
"""

import argparse
import hashlib
import io
import json
import os
import shutil
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
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

# 20 steps: FROM + 19 (10 RUN, 3 COPY, ENV, WORKDIR, LABEL, EXPOSE, USER, CMD)
STEPS = [
    ("ENV", "APP=/srv/app MODE=bench"),
    ("WORKDIR", "/srv/app"),
    ("RUN", "mkdir -p /srv/app/bin /srv/app/data"),
    ("COPY", "conf.txt /srv/app/conf.txt"),
    ("RUN", "echo built > /srv/app/data/status"),
    ("RUN", "seq 1 2000 > /srv/app/data/numbers"),
    ("COPY", "script.sh /srv/app/bin/script.sh"),
    ("RUN", "chmod 755 /srv/app/bin/script.sh"),
    ("RUN", "rm /var/www/index.html"),
    ("RUN", "ln -s /srv/app/bin/script.sh /usr/bin/app-script"),
    ("LABEL", "bench=build_cache"),
    ("RUN", "head -c 65536 /dev/zero > /srv/app/data/zeros"),
    ("COPY", "data.txt /srv/app/data/data.txt"),
    ("RUN", "wc -l /srv/app/data/numbers > /srv/app/data/count"),
    ("EXPOSE", "8080"),
    ("RUN", "cat /srv/app/conf.txt > /srv/app/data/conf.copy"),
    ("USER", "0"),
    ("RUN", "touch /srv/app/data/done"),
    ("CMD", '["/srv/app/bin/script.sh"]'),
]


def sh(*argv, check=True, **kw):
    return subprocess.run(argv, check=check, capture_output=True, text=True, env=ENV, **kw)


class Ns:
    def __init__(self):
        self.name = f"pibench-{uuid.uuid4().hex[:6]}"
        sh("ip", "netns", "add", self.name)
        sh("ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up")

    def pi(self, root, *args, check=True):
        r = subprocess.run(
            [
                "nsenter",
                f"--net=/run/netns/{self.name}",
                PYINSPECT,
                "--root",
                str(root),
                *map(str, args),
            ],
            capture_output=True,
            text=True,
            env=ENV,
            check=False,
        )
        if check and r.returncode != 0:
            raise SystemExit(
                f"build_cache: pyinspect {' '.join(map(str, args))}: {r.stderr.strip()[-400:]}"
            )
        return r

    def remove(self):
        sh("ip", "netns", "delete", self.name, check=False)


def make_context(d):
    d.mkdir(parents=True, exist_ok=True)
    (d / "conf.txt").write_text("mode=bench\n")
    (d / "script.sh").write_text("#!/bin/sh\necho app\n")
    (d / "data.txt").write_text("x" * 4096)
    lines = ["FROM busybox"]
    for cmd, arg in STEPS:
        lines.append(f"{cmd} {arg}")
    (d / "Dockerfile").write_text("\n".join(lines) + "\n")
    assert len(lines) == 20


# ---- by hand: run + commit ------------------------------------------------------------------


def _tar_upper(upper):
    """The container's upper dir as a layer tar (what `tar -C upper -c .` gives by hand)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for top, dirs, files in os.walk(upper):
            dirs.sort()
            for name in sorted(dirs + files):
                p = os.path.join(top, name)
                rel = os.path.relpath(p, upper)
                if rel in ("etc/hostname", "etc/hosts", "etc/resolv.conf"):
                    continue
                st = os.lstat(p)
                if os.path.isfile(p) or os.path.islink(p) or os.path.isdir(p):
                    tf.add(p, arcname=rel, recursive=False)
                elif st.st_rdev == 0:  # an overlay whiteout -> .wh.
                    ti = tarfile.TarInfo(os.path.join(os.path.dirname(rel), ".wh." + name))
                    tf.addfile(ti)
    return buf.getvalue()


def _load(ns, root, work, layers, cfg, tag):
    man = [
        {
            "Config": "config.json",
            "RepoTags": [tag],
            "Layers": [f"{i}/layer.tar" for i in range(len(layers))],
        }
    ]
    arch = work / "img.tar"
    with tarfile.open(arch, "w") as tf:

        def add(name, data):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))

        add("config.json", json.dumps(cfg).encode())
        for i, data in enumerate(layers):
            add(f"{i}/layer.tar", data)
        add("manifest.json", json.dumps(man).encode())
    ns.pi(root, "load", "-i", arch)


def by_hand(ns, root, ctx, work):
    """Every step as run + commit (layers kept in memory, each commit a `load`)."""
    inspect = json.loads(ns.pi(root, "inspect", "busybox").stdout)[0]
    saved = work / "base.tar"
    ns.pi(root, "save", "-o", saved, "busybox")
    with tarfile.open(saved) as tf:
        man = json.loads(tf.extractfile("manifest.json").read())[0]
        layers = [tf.extractfile(x).read() for x in man["Layers"]]
        cfg = json.loads(tf.extractfile(man["Config"]).read())
    assert inspect["Id"]
    image = "busybox"
    for i, (cmd, arg) in enumerate(STEPS):
        c = cfg["config"]
        if cmd in ("RUN", "COPY"):
            name = f"pibench-step-{i}"
            if cmd == "RUN":
                ns.pi(root, "run", "--name", name, image, "sh", "-c", arg)
            else:
                src, dst = arg.split()
                ns.pi(root, "run", "-d", "--name", name, image, "sleep", "60")
                ns.pi(root, "cp", ctx / src, f"{name}:{dst}")
            cj = json.loads(ns.pi(root, "inspect", name).stdout)[0]
            layer = _tar_upper(cj["GraphDriver"]["Data"]["UpperDir"])
            ns.pi(root, "rm", "-f", name)
            layers.append(layer)
            cfg["rootfs"]["diff_ids"].append("sha256:" + hashlib.sha256(layer).hexdigest())
        elif cmd == "ENV":
            c["Env"] = c.get("Env", []) + arg.split()
        elif cmd == "WORKDIR":
            c["WorkingDir"] = arg
        elif cmd == "LABEL":
            k, v = arg.split("=")
            c["Labels"] = {**(c.get("Labels") or {}), k: v}
        elif cmd == "EXPOSE":
            c["ExposedPorts"] = {f"{arg}/tcp": {}}
        elif cmd == "USER":
            c["User"] = arg
        elif cmd == "CMD":
            c["Cmd"] = json.loads(arg)
        image = f"pibench-hand:{i}"
        _load(ns, root, work, layers, cfg, image)
    return image


def fresh_root(base, name):
    root = base / name
    if root.exists():
        shutil.rmtree(root)
    root.mkdir()
    return root


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("build_cache: needs root (namespaces, overlayfs, iptables)")
    ns = Ns()
    base = Path(tempfile.mkdtemp(prefix="pibench-build-"))
    cold, cached, hand, cached_again = [], [], [], []
    try:
        ctx = base / "ctx"
        make_context(ctx)
        for _ in range(args.n):
            root = fresh_root(base, "b")
            ns.pi(root, "images")  # the embedded busybox is built before timing
            ns.pi(root, "inspect", "busybox")
            t = time.perf_counter()
            ns.pi(root, "build", "-q", "-t", "pibench:1", ctx)
            cold.append(time.perf_counter() - t)
            t = time.perf_counter()
            out = ns.pi(root, "build", "-t", "pibench:1", ctx).stdout
            cached.append(time.perf_counter() - t)
            if out.count("---> CACHED") != 19:
                raise SystemExit(f"build_cache: the second build was not all CACHED:\n{out}")
            t = time.perf_counter()
            ns.pi(root, "build", "-q", "-t", "pibench:1", ctx)
            cached_again.append(time.perf_counter() - t)
            ns.pi(root, "rm", "-f", *ns.pi(root, "ps", "-aq").stdout.split(), check=False)

            root = fresh_root(base, "h")
            ns.pi(root, "inspect", "busybox")
            work = base / "work"
            work.mkdir(exist_ok=True)
            t = time.perf_counter()
            by_hand(ns, root, ctx, work)
            hand.append(time.perf_counter() - t)
    finally:
        for name in ("b", "h"):
            root = base / name
            if root.exists():
                ids = ns.pi(root, "ps", "-aq", check=False).stdout.split()
                if ids:
                    ns.pi(root, "rm", "-f", *ids, check=False)
        ns.remove()
        shutil.rmtree(base, ignore_errors=True)
    res = {
        "rounds": args.n,
        "steps": 20,
        "cold_build_s": statistics.median(cold),
        "by_hand_s": statistics.median(hand),
        "cached_build_s": statistics.median(cached + cached_again),
        "cold_over_by_hand": statistics.median(cold) / statistics.median(hand),
        "cached_over_cold": statistics.median(cached + cached_again) / statistics.median(cold),
    }
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(
        f"20-step Dockerfile on busybox (10 RUN, 3 COPY, 6 config steps), {args.n} rounds, medians:"
    )
    print(f"  pyinspect build, cold (fresh root):      {res['cold_build_s']:.2f} s")
    print(f"  same steps by hand (run + commit/load):  {res['by_hand_s']:.2f} s")
    print(
        f"  pyinspect build, fully cached:           {res['cached_build_s']:.3f} s "
        f"(target < 1 s: {'met' if res['cached_build_s'] < 1 else 'NOT met'})"
    )
    print(f"  ratio cold build / by hand:              {res['cold_over_by_hand']:.2f}")
    print(f"  ratio cached / cold build:               {res['cached_over_cold']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
