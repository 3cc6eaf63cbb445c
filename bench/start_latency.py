"""Start latency: `pyinspect run --rm --net none busybox true` against `runc run`.

Both start the same busybox rootfs with pid/mount/uts/ipc/net namespaces and
run `true`. runc gets an OCI bundle made with `runc spec` in a temp dir
(read-only root, no terminal, cgroups under a unique parent); pyinspect uses
its image store (overlayfs with a fresh upper dir, cgroups, a log file, state
files, --rm cleanup). Runs alternate so both see the same machine noise.

Bytecode is compiled first and PYTHONDONTWRITEBYTECODE dropped, so the
steady state is measured (as on an installed system, where .pyc files exist).
Prints the median wall time of each, the ratio, and what bounds pyinspect:
interpreter start (the console script `make install` writes starts Python
with -S), imports (from -X importtime), and the stages inside `run`
(timestamps written when PYINSPECT_TIMING names a file).

    sudo .venv/bin/python bench/start_latency.py [-n 30] [--json]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
PYINSPECT = str(VENV_BIN / "pyinspect")


REPO = Path(__file__).resolve().parent.parent
# Measure the steady state: bytecode cached, as on any installed system.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(argv, env=None):
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env or ENV, check=False
    )
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"start_latency: {' '.join(argv)} failed: {proc.stderr.decode()[-300:]}")
    return dt


def make_bundle(tmp, rootfs):
    bundle = tmp / "bundle"
    bundle.mkdir()
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"]["args"] = ["true"]
    cfg["process"]["terminal"] = False
    cfg["root"] = {"path": str(rootfs), "readonly": True}
    cfg["linux"]["cgroupsPath"] = f"/pc-bench-{os.getpid()}/runc"
    (bundle / "config.json").write_text(json.dumps(cfg))
    return bundle


def import_breakdown(root):
    """Top-level import costs (ms, cumulative) of `pyinspect run`, from -X importtime."""
    env = {**ENV, "PYTHONPROFILEIMPORTTIME": "1"}
    proc = subprocess.run(
        [PYINSPECT, "--root", str(root), "run", "--rm", "--net", "none", "busybox", "true"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    rows = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cum, name = line[len("import time:") :].split("|")
        if cum.strip().isdigit() and not name.startswith("  "):
            rows.append((int(cum) / 1000, name.strip()))
    rows.sort(reverse=True)
    return rows


def stages(root, runs=5):
    """Median time from process spawn to each stage mark inside `run`."""
    marks = {}
    for _ in range(runs):
        with tempfile.NamedTemporaryFile("r", suffix=".timing") as f:
            env = {**ENV, "PYINSPECT_TIMING": f.name}
            t0 = time.time_ns()
            subprocess.run(
                [PYINSPECT, "--root", str(root), "run", "--rm", "--net", "none", "busybox", "true"],
                check=True,
                env=env,
                stdout=subprocess.DEVNULL,
            )
            t_end = time.time_ns()
            for line in open(f.name):
                name, ns = line.split()
                marks.setdefault(name, []).append((int(ns) - t0) / 1e6)
            marks.setdefault("cli exited", []).append((t_end - t0) / 1e6)
    return sorted(((statistics.median(v), k) for k, v in marks.items()))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=30, help="runs of each (default 30)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("start_latency: run as root")
    if not shutil.which("runc"):
        raise SystemExit("start_latency: runc is not installed (apt-get install runc)")
    tmp = Path(tempfile.mkdtemp(prefix="pc-bench-"))
    root = tmp / "state"
    runc_root = tmp / "runc-state"
    try:
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(REPO / "agent"), str(REPO / "runtime")],
            stdout=subprocess.DEVNULL,
            check=True,
        )
        timed([PYINSPECT, "--root", str(root), "run", "--rm", "--net", "none", "busybox", "true"])
        info = json.loads(
            subprocess.run(
                [PYINSPECT, "--root", str(root), "inspect", "busybox"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        layers = info[0]["GraphDriver"]["Data"]["LowerDirs"]
        if len(layers) != 1:
            raise SystemExit("start_latency: expected the one-layer busybox image")
        bundle = make_bundle(tmp, layers[0])
        ours, theirs = [], []
        for i in range(args.n):
            ours.append(
                timed(
                    [
                        PYINSPECT,
                        "--root",
                        str(root),
                        "run",
                        "--rm",
                        "--net",
                        "none",
                        "busybox",
                        "true",
                    ]
                )
            )
            theirs.append(
                timed(
                    [
                        "runc",
                        "--root",
                        str(runc_root),
                        "run",
                        "-b",
                        str(bundle),
                        f"pc-bench-{os.getpid()}-{i}",
                    ]
                )
            )
        interp = statistics.median(timed([sys.executable, "-c", "pass"]) for _ in range(10))
        interp_s = statistics.median(timed([sys.executable, "-S", "-c", "pass"]) for _ in range(10))
        cli_help = statistics.median(timed([PYINSPECT, "--version"]) for _ in range(10))
        with open(PYINSPECT) as f:
            siteless = f.readline().rstrip().endswith(" -S")
        imports = import_breakdown(root)
        marks = stages(root)
        m_ours, m_runc = statistics.median(ours), statistics.median(theirs)
        result = {
            "runs": args.n,
            "pyinspect_min_ms": round(min(ours) * 1000, 1),
            "runc_min_ms": round(min(theirs) * 1000, 1),
            "load_average": os.getloadavg()[0],
            "pyinspect_median_ms": round(m_ours * 1000, 1),
            "runc_median_ms": round(m_runc * 1000, 1),
            "ratio": round(m_ours / m_runc, 2),
            "python_startup_ms": round(interp * 1000, 1),
            "python_startup_no_site_ms": round(interp_s * 1000, 1),
            "cli_version_ms": round(cli_help * 1000, 1),
            "console_script_without_site": siteless,
            "imports_ms": [(name, round(ms, 1)) for ms, name in imports[:8]],
            "stages_ms": [(name, round(ms, 1)) for ms, name in marks],
        }
        if args.json:
            print(json.dumps(result))
            return
        print(f"start latency over {args.n} runs each (median wall time)")
        print(f"  pyinspect run --rm --net none busybox true : {result['pyinspect_median_ms']} ms")
        print(f"  runc run (same rootfs, same namespaces)    : {result['runc_median_ms']} ms")
        print(f"  ratio of medians                           : {result['ratio']}x (target <= 3x)")
        print(
            f"  (fastest runs: {result['pyinspect_min_ms']} vs {result['runc_min_ms']} ms; "
            f"load average {result['load_average']:.1f} on {os.cpu_count()} cpus)"
        )
        print("what bounds pyinspect:")
        print(
            f"  python interpreter start (site)  : {result['python_startup_ms']} ms "
            f"(-S: {result['python_startup_no_site_ms']} ms)"
        )
        print(
            "  console script                   : "
            + (
                "site-less (-S), as make install writes it"
                if siteless
                else "pip's (with site: run make install for the site-less one)"
            )
        )
        print(
            f"  pyinspect --version (CLI+click)  : {result['cli_version_ms']} ms "
            "(every command but a plain `run`)"
        )
        print("  biggest top-level imports of `run` (cumulative ms):")
        for name, ms in result["imports_ms"]:
            print(f"    {ms:7.1f}  {name}")
        print("  stages of `run`, ms since the CLI was spawned (median of 5):")
        for name, ms in result["stages_ms"]:
            print(f"    {ms:7.1f}  {name}")
    finally:
        subprocess.run(
            ["runc", "--root", str(runc_root), "list", "-q"], capture_output=True, check=False
        )
        for base in Path("/sys/fs/cgroup").iterdir():
            d = base / f"pc-bench-{os.getpid()}"
            if d.is_dir():
                for sub in d.iterdir():
                    if sub.is_dir():
                        sub.rmdir()
                d.rmdir()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
