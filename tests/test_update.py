"""`pyinspect update` on pyinspect's own containers (Docker's outputs:
test_docker_engine.py): limits in the kernel at once, a cpu cgroup made for a container
started without one, the restart policy the monitor follows next, bad input."""

import time

import pytest

from helpers.pccli import one_line_error

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        not __import__("os").path.exists("/sys/fs/cgroup/memory/cgroup.procs"),
        reason="these read cgroup v1 files; a pure cgroup2 host has other names",
    ),
]


def cgroup_file(pid, controller, name):
    """The content of `name` in `pid`'s cgroup of v1 `controller` (this host's memory,
    cpu and pids are v1 controllers; cgroup2 holds only the freezer's part)."""
    for line in open(f"/proc/{pid}/cgroup").read().splitlines():
        _, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(","):
            return open(f"/sys/fs/cgroup/{ctrls}{path}/{name}").read().strip()
    raise AssertionError(f"no {controller} cgroup for {pid}")


def test_update_a_running_container(pc):
    pc("run", "-d", "--name", "up-run", "--net", "none", "-m", "64m", "busybox", "sleep", "600")
    pid = pc.wait_status("up-run", "running")["State"]["Pid"]
    assert cgroup_file(pid, "memory", "memory.limit_in_bytes") == str(64 << 20)
    before_cpu = cgroup_file(pid, "cpu", "cpu.cfs_quota_us")  # no --cpus: none of its own
    out = pc("update", "-m", "96m", "--cpus", "0.5", "--pids-limit", "20", "up-run")
    assert out.stdout == "up-run\n"
    assert cgroup_file(pid, "memory", "memory.limit_in_bytes") == str(96 << 20)
    assert cgroup_file(pid, "pids", "pids.max") == "20"
    assert cgroup_file(pid, "cpu", "cpu.cfs_quota_us") == "50000" != before_cpu
    host = pc.inspect("up-run")["HostConfig"]
    assert (host["Memory"], host["NanoCpus"], host["PidsLimit"]) == (96 << 20, 5 * 10**8, 20)
    # lowering works too (memsw is lowered after the limit), and -1 lifts the pids limit
    pc("update", "-m", "32m", "--pids-limit", "-1", "up-run")
    assert cgroup_file(pid, "memory", "memory.limit_in_bytes") == str(32 << 20)
    assert cgroup_file(pid, "pids", "pids.max") == "max"
    # a restart makes the cgroups afresh from the record: the new limits hold
    pc("restart", "-t", "1", "up-run")
    pid = pc.wait_status("up-run", "running")["State"]["Pid"]
    assert cgroup_file(pid, "memory", "memory.limit_in_bytes") == str(32 << 20)
    assert cgroup_file(pid, "cpu", "cpu.cfs_quota_us") == "50000"


def test_update_restart_policy_of_a_running_container(pc):
    pc("run", "-d", "--name", "up-rs", "--net", "none", "busybox", "sh", "-c",
       "sleep 1; exit 3")  # fmt: skip
    pc("update", "--restart", "on-failure:2", "up-rs")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = pc.inspect("up-rs")
        if info["State"]["Status"] == "exited" and info["RestartCount"] == 2:
            break
        time.sleep(0.2)
    assert (info["State"]["Status"], info["RestartCount"]) == ("exited", 2), info["State"]
    assert info["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}


def test_update_a_stopped_container_and_bad_input(pc):
    pc("create", "--name", "up-new", "--net", "none", "busybox", "sleep", "600")
    pc("update", "--pids-limit", "7", "--memory", "48m", "up-new")
    pc("start", "up-new")
    pid = pc.wait_status("up-new", "running")["State"]["Pid"]
    assert cgroup_file(pid, "pids", "pids.max") == "7"
    assert cgroup_file(pid, "memory", "memory.limit_in_bytes") == str(48 << 20)
    pc("run", "-d", "--rm", "--name", "up-rm", "--net", "none", "busybox", "sleep", "600")
    before = pc.inspect("up-new")
    for args, code, said in (
        (["--restart", "always", "up-rm"], 4, "AutoRemove is enabled"),
        (["up-new"], 2, "one or more flags"),
        (["--memory", "1k", "up-new"], 2, "the minimum is 6m"),
        (["--cpus", "abc", "up-new"], 2, "'abc'"),
        (["--restart", "sometimes", "up-new"], 2, "sometimes"),
        (["--memory", "64m", "up-nosuch"], 3, "up-nosuch"),
    ):
        proc = pc("update", *args, check=False)
        assert said in one_line_error(proc, code), (args, proc.stderr)
    after = pc.inspect("up-new")
    assert after["HostConfig"] == before["HostConfig"]
    pc("rm", "-f", "up-rm")
