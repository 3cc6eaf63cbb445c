"""The `pyinspect` CLI on a temp state root, for the runtime's tests: container listing
and inspection (`PcCli`), and the check that nothing of a root is left (`assert_clean`)."""

import json
import os
import time
from pathlib import Path

from conftest import Cli

CGROUP_BASE = "/sys/fs/cgroup"


def cgroup_parents():
    """pyinspect's parent cgroup in every hierarchy that has one now."""
    bases = (CGROUP_BASE, *(os.path.join(CGROUP_BASE, d) for d in os.listdir(CGROUP_BASE)))
    return [p for p in (os.path.join(b, "pyinspect") for b in bases) if os.path.isdir(p)]


def cgroup_dirs(cid):
    """Every cgroup directory of container `cid` that exists now."""
    return [p for p in (os.path.join(b, cid) for b in cgroup_parents()) if os.path.isdir(p)]


def processes_of(root):
    """Pids of shims whose state root is `root` (their cmdline is the CLI's)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if str(root).encode() in cmd and comm == "pyinspect-shim":
            out.append(int(pid))
    return out


def wait_no_cgroups(cid, timeout=5):
    deadline = time.monotonic() + timeout
    while cgroup_dirs(cid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return cgroup_dirs(cid)


class PcCli(Cli):
    def json(self, *args):
        return json.loads(self(*args).stdout)

    def inspect(self, name):
        return self.json("inspect", name)[0]

    def ids(self):
        return [
            json.loads(line)["Id"]
            for line in self("ps", "-a", "--format", "json").stdout.splitlines()
        ]

    def wait_status(self, name, status, timeout=10):
        deadline = time.monotonic() + timeout
        while True:
            info = self.inspect(name)
            if info["State"]["Status"] == status:
                return info
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} is {info['State']['Status']}, not {status}")
            time.sleep(0.05)


def assert_clean(root, ids, timeout=10):
    """Nothing of `root` is left (waiting for shims still freeing cgroups and files)."""
    deadline = time.monotonic() + timeout
    while processes_of(root) and time.monotonic() < deadline:
        time.sleep(0.02)
    for cid in ids:
        assert cgroup_dirs(cid) == [], f"cgroups of {cid[:12]} left"
    assert processes_of(root) == []
    cdir = Path(root) / "containers"
    assert not cdir.exists() or list(cdir.iterdir()) == []
    ndir = Path(root) / "names"
    assert not ndir.exists() or list(ndir.iterdir()) == []
    with open("/proc/self/mountinfo") as f:  # container roots are mounted on the host
        mounts = [line.split()[4] for line in f if f"{root}/" in line]
    assert mounts == [], f"mounts left: {mounts}"


def one_line_error(proc, code=None):
    assert proc.returncode != 0
    if code is not None:
        assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
    return lines[0]
