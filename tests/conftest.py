"""Shared fixtures: temp state roots, namespaces that play the host, and the leak check."""

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from pyinspect.proc import delete_netns

from helpers import kernelstate

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PYINSPECT = str(VENV_BIN / "pyinspect")
ARTIFACTS = REPO / "tests" / "artifacts"
# `run` of a missing image must not go to Docker Hub from a test (no traffic but loopback
# and the tests' own namespaces): tests that want the pull set PYINSPECT_PULL=missing.
os.environ["PYINSPECT_PULL"] = "never"
# every process the suite starts carries it: the leak check finds those still alive
os.environ[kernelstate.RUN_MARK] = uuid.uuid4().hex


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root (namespaces, cgroups, eBPF, iptables)")
        for item in items:
            if "root" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def no_leftovers():
    """Fail the run if the suite leaves kernel objects, mounts or processes behind."""
    if os.environ.get("PI_LEAKCHECK") == "0":  # only for developers sharing one machine
        yield
        return
    before = kernelstate.snapshot()
    yield
    extra = kernelstate.leftovers(before, kernelstate.snapshot())
    if extra:
        pytest.fail(f"the suite left kernel state behind: {extra}", pytrace=False)


def unique(prefix="pi-test"):
    """A short unique name (fits IFNAMSIZ when prefix is short)."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def state_root(tmp_path):
    """A fresh pyinspect state root for one test."""
    root = tmp_path / "root"
    root.mkdir()
    return root


class Netns:
    """A named network namespace made for a test; removed afterwards."""

    def __init__(self, name):
        self.name = name
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.sh("ip link set lo up")

    @property
    def path(self):
        return f"/run/netns/{self.name}"

    def run(self, *cmd, check=True, timeout=60, **kw):
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *cmd],
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,
        )

    def sh(self, script, check=True, timeout=60):
        return self.run("sh", "-c", script, check=check, timeout=timeout)

    def popen(self, *cmd, **kw):
        return subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kw)

    def remove(self):
        delete_netns(self.name)


@pytest.fixture
def make_netns():
    """Factory: make_netns() -> Netns with a unique name; all removed at teardown."""
    made = []

    def factory(prefix="pi-test"):
        ns = Netns(unique(prefix))
        made.append(ns)
        return ns

    yield factory
    for ns in reversed(made):
        ns.remove()


class Cli:
    """Runs the real `pyinspect` console script with a test state root, optionally in a netns."""

    def __init__(self, root, netns=None):
        self.root = root
        self.netns = netns

    def argv(self, *args):
        base = [PYINSPECT, "--root", str(self.root), *map(str, args)]
        if self.netns:
            base = ["nsenter", f"--net=/run/netns/{self.netns}", *base]
        return base

    def __call__(self, *args, check=True, timeout=120, input=None, env=None, text=True):
        proc = subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=text,
            timeout=timeout,
            input=input,
            env={**os.environ, **(env or {})},
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"pyinspect {' '.join(map(str, args))} exited {proc.returncode}\n"
                f"stdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc


@pytest.fixture
def pc(state_root):
    """`pyinspect` on a temp root (helpers.pccli.PcCli); afterwards every container of
    that root is force-removed and nothing of it may be left."""
    from helpers.pccli import PcCli, assert_clean

    cli = PcCli(state_root)
    yield cli
    seen = set(cli.ids())
    for _ in range(2):  # a restarting container may come back once
        for cid in cli.ids():
            seen.add(cid)
            cli("rm", "-f", cid, check=False)
    assert_clean(state_root, seen)


@pytest.fixture
def cli(state_root):
    """The pyinspect CLI on a temp root, in the machine's own network namespace."""
    return Cli(state_root)


@pytest.fixture
def artifacts():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


def have(tool):
    return shutil.which(tool) is not None


@pytest.fixture
def runc(tmp_path):
    """runc_helpers.Runc on a temp dir; every container it started is removed afterwards."""
    from helpers.runc_helpers import Runc

    if not shutil.which("runc"):
        pytest.skip("runc is not installed")
    r = Runc(tmp_path)
    yield r
    r.cleanup()


def tshark_fields(path, *fields, filt=None):
    """tshark -T fields rows (lists of field values) of a capture; fails on a read error."""
    cmd = ["tshark", "-r", str(path), "-T", "fields", "-E", "separator=|"]
    for f in fields:
        cmd += ["-e", f]
    if filt:
        cmd += ["-Y", filt]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return [line.split("|") for line in proc.stdout.splitlines()]
