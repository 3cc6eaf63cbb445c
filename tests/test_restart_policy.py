"""Restart policies (`run --restart`), for real: the monitor restarts crashing
containers with Docker's backoff and limits, `stop` suppresses restarts,
`unless-stopped` remembers a stop, and a killed monitor is recovered by the
next reconciling command, by `autostart`, and by the unit `install-service` writes.
"""

import itertools
import json
import os
import re
import shlex
import signal
import subprocess
import time

import pytest

from pyinspect.runtime import restart

from helpers.pccli import PcCli, assert_clean, one_line_error
from testbed import waits

pytestmark = pytest.mark.root


def wait_for(pred, timeout=15, what="condition"):
    return waits.wait_for(pred, timeout, 0.05, what)


def record(state_root, name):
    cid = os.readlink(state_root / "names" / name)
    return json.loads((state_root / "containers" / cid / "state.json").read_text())


def starts(state_root, name, marker):
    """Times (s) at which the container logged `marker` (one line per start)."""
    cid = os.readlink(state_root / "names" / name)
    out = []
    for line in (state_root / "containers" / cid / "container.log").read_text().splitlines():
        rec = json.loads(line)
        out += [rec["t"] / 1e9] * rec["d"].count(marker)
    return out


# -- the policy itself ----------------------------------------------------------------
def test_parse_and_decide_like_docker():
    assert restart.parse(None) == restart.parse("no") == restart.RestartPolicy("no", 0)
    assert restart.parse("on-failure:5") == restart.RestartPolicy("on-failure", 5)
    assert str(restart.parse("on-failure:0")) == "on-failure"
    for bad in ("sometimes", "always:3", "on-failure:-1", "on-failure:x", "unless-stopped:1"):
        with pytest.raises(Exception) as exc:
            restart.parse(bad)
        assert "restart policy" in str(exc.value)
    always, unless = restart.parse("always"), restart.parse("unless-stopped")
    on_failure, limited = restart.parse("on-failure"), restart.parse("on-failure:2")
    decide = restart.should_restart
    assert decide(always, 0, False, 9) and not decide(always, 1, True, 0)
    assert decide(always, 0, True, 0, at_boot=True)  # dockerd starting
    assert not decide(unless, 0, True, 0, at_boot=True) and decide(unless, 0, False, 0)
    assert decide(on_failure, 1, False, 100) and not decide(on_failure, 0, False, 0)
    assert decide(limited, 1, False, 1) and not decide(limited, 1, False, 2)
    assert not decide(restart.parse("no"), 1, False, 0, at_boot=True)
    b = restart.Backoff()
    assert [b.next(0.01) for _ in range(4)] == [0.1, 0.2, 0.4, 0.8]
    assert b.next(10.0) == 0.1  # up 10 s: back to the start
    for _ in range(20):
        last = b.next(0.0)
    assert last == restart.BACKOFF_MAX


def test_bad_restart_options_are_one_line_and_make_nothing(pc, state_root):
    for args, words in (
        (("--restart", "sometimes"), "invalid restart policy"),
        (("--restart", "always:2"), "cannot be used with restart policy"),
        (("--restart", "on-failure:-1"), "cannot be negative"),
        (("--rm", "--restart", "always"), "--restart and --rm"),
    ):
        line = one_line_error(
            pc("run", "-d", *args, "--net", "none", "busybox", "true", check=False), 2
        )
        assert words in line, line
    assert pc.ids() == []


# -- the monitor restarts -------------------------------------------------------------
def test_on_failure_counts_backs_off_and_stops_at_its_limit(pc, state_root):
    pc(
        "run",
        "-d",
        "--name",
        "rp-crash",
        "--net",
        "none",
        "--restart",
        "on-failure:3",
        "busybox",
        "sh",
        "-c",
        "echo started; exit 3",
    )
    wait_for(
        lambda: (
            len(starts(state_root, "rp-crash", "started")) == 4
            and not record(state_root, "rp-crash")["restarting"]
            and not record(state_root, "rp-crash")["shim_pid"]
        ),
        what="4 runs",
    )
    info = pc.inspect("rp-crash")
    assert info["RestartCount"] == 3
    assert info["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert info["State"]["Status"] == "exited" and info["State"]["ExitCode"] == 3
    assert not info["State"]["Restarting"]
    times = starts(state_root, "rp-crash", "started")
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Docker's backoff: 100 ms, then doubled before each further restart
    for gap, delay in zip(gaps, (0.1, 0.2, 0.4), strict=False):
        assert gap >= delay, gaps
    assert gaps[2] > gaps[0], gaps
    time.sleep(1.0)  # the limit holds: no fifth run
    assert len(starts(state_root, "rp-crash", "started")) == 4
    assert pc.inspect("rp-crash")["RestartCount"] == 3
    # a clean exit is not a failure: on-failure leaves it alone
    pc(
        "run",
        "-d",
        "--name",
        "rp-ok",
        "--net",
        "none",
        "--restart",
        "on-failure",
        "busybox",
        "echo",
        "fine",
    )
    wait_for(
        lambda: (
            not record(state_root, "rp-ok")["shim_pid"]
            and record(state_root, "rp-ok")["status"] == "exited"
        ),
        what="rp-ok exit",
    )
    time.sleep(0.5)
    assert pc.inspect("rp-ok")["RestartCount"] == 0


def test_always_restarts_and_stop_suppresses_restarts(pc, state_root, tmp_path):
    pc(
        "run",
        "-d",
        "--name",
        "rp-loop",
        "--net",
        "none",
        "--restart",
        "always",
        "busybox",
        "sh",
        "-c",
        "echo started; test -e /stay && exec sleep 1000; sleep 0.3",
    )
    wait_for(lambda: pc.inspect("rp-loop")["RestartCount"] >= 2, what="two restarts")
    row = json.loads(pc("ps", "-a", "--format", "json").stdout.splitlines()[0])
    assert row["State"] in ("running", "restarting")
    assert row["Status"].startswith(("Up ", "Restarting (0) "))
    pc("stop", "-t", "1", "rp-loop")
    info = pc.inspect("rp-loop")
    assert info["State"]["Status"] == "exited" and not info["State"]["Restarting"]
    count, runs = info["RestartCount"], len(starts(state_root, "rp-loop", "started"))
    time.sleep(1.5)  # longer than any backoff so far: nothing restarts it
    assert pc.inspect("rp-loop")["RestartCount"] == count
    assert len(starts(state_root, "rp-loop", "started")) == runs
    assert record(state_root, "rp-loop")["manually_stopped"]
    # `start` (Docker's): the count starts again from 0, the stop is forgotten
    stay = tmp_path / "stay"
    stay.write_text("")
    pc("cp", stay, "rp-loop:/stay")  # from now on it keeps running
    pc("start", "rp-loop")
    info = pc.inspect("rp-loop")
    assert info["State"]["Running"] and info["RestartCount"] == 0
    assert not record(state_root, "rp-loop")["manually_stopped"]


def test_restarting_container_ps_inspect_kill_stop_and_rm(pc, state_root):
    """A container waiting in its backoff is listed and inspected as Docker's (running,
    restarting); `rm` refuses it; `kill` and `stop` end the wait at once."""
    for name in ("rp-wait", "rp-wait2"):
        pc(
            "run",
            "-d",
            "--name",
            name,
            "--net",
            "none",
            "--restart",
            "always",
            "busybox",
            "sh",
            "-c",
            "exit 1",
        )
    for name in ("rp-wait", "rp-wait2"):  # from now on it waits 1.6 s or more each time
        wait_for(lambda n=name: record(state_root, n)["restart_count"] >= 5, what="backoff")
    wait_for(lambda: record(state_root, "rp-wait")["restarting"], what="restarting")
    state = pc.inspect("rp-wait")["State"]
    assert state["Status"] == "restarting" and state["Restarting"] and state["Running"]
    assert state["ExitCode"] == 1 and state["Pid"] == 0
    names = pc("ps", "--format", "{{.Names}} {{.State}} {{.Status}}").stdout
    assert re.search(r"^rp-wait restarting Restarting \(1\) .* ago$", names, re.MULTILINE), names
    line = one_line_error(pc("rm", "rp-wait", check=False), 4)
    assert "restarting" in line
    t0 = time.monotonic()
    pc("stop", "rp-wait")
    wait_for(lambda: record(state_root, "rp-wait2")["restarting"], what="restarting")
    pc("kill", "rp-wait2")
    assert time.monotonic() - t0 < 5
    for name in ("rp-wait", "rp-wait2"):
        info = pc.inspect(name)
        assert info["State"]["Status"] == "exited" and not info["State"]["Restarting"]
        assert not info["State"]["Running"]
        rec = record(state_root, name)
        assert not rec["shim_pid"] and rec["manually_stopped"]
        pc("rm", name)


# -- a killed monitor and the recovery paths ------------------------------------------
def gone(pid):
    """True once `pid` is dead (or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def kill_monitor(state_root, name):
    """kill -9 the container's monitor; wait until its init died with it."""
    rec = record(state_root, name)
    os.kill(rec["shim_pid"], signal.SIGKILL)
    wait_for(lambda: gone(rec["pid"]), what="the init to die")
    return rec["pid"]


def test_killed_monitor_is_recovered_by_the_next_command(pc, state_root):
    pc(
        "run",
        "-d",
        "--name",
        "rp-web",
        "--net",
        "none",
        "--restart",
        "unless-stopped",
        "busybox",
        "sleep",
        "1000",
    )
    pc("run", "-d", "--name", "rp-plain", "--net", "none", "busybox", "sleep", "1000")
    old = kill_monitor(state_root, "rp-web")
    kill_monitor(state_root, "rp-plain")
    rows = {
        json.loads(x)["Names"]: json.loads(x)
        for x in pc("ps", "-a", "--format", "json").stdout.splitlines()
    }
    assert rows["rp-web"]["State"] == "running" and rows["rp-web"]["Pid"] != old
    assert rows["rp-plain"]["State"] == "exited"  # no policy: stays down
    info = pc.inspect("rp-web")
    assert info["RestartCount"] == 1 and os.path.exists(f"/proc/{info['State']['Pid']}")
    merged = info["GraphDriver"]["Data"]["MergedDir"]
    with open("/proc/self/mountinfo") as f:
        mounts = [ln for ln in f if f" {merged} " in ln]
    assert len(mounts) == 1, mounts  # the dead monitor's was unmounted
    # a stop is remembered: neither a dead monitor nor autostart brings it back
    pc("stop", "-t", "1", "rp-web")
    assert pc("autostart").stdout == ""
    assert pc("autostart", "--boot").stdout == ""  # unless-stopped: not even at boot
    assert pc.inspect("rp-web")["State"]["Status"] == "exited"


def test_install_service_unit_brings_containers_back(pc, state_root, tmp_path):
    """The unit's command (what systemd runs at boot) restarts `always` containers whose
    monitor died, and `always` ones the user stopped (as dockerd does when it starts)."""
    units = tmp_path / "units"
    units.mkdir()
    out = pc("install-service", "--unit-dir", units, "--no-enable").stdout.strip()
    unit = (units / "pyinspect-autostart.service").read_text()
    assert out == str(units / "pyinspect-autostart.service")
    assert "Type=oneshot" in unit and "KillMode=process" in unit
    exec_start = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    argv = shlex.split(exec_start[len("ExecStart=") :])
    assert argv[1:] == ["--root", str(state_root), "autostart", "--boot"]
    assert os.access(argv[0], os.X_OK)
    pc(
        "run",
        "-d",
        "--name",
        "rp-db",
        "--net",
        "none",
        "--restart",
        "always",
        "busybox",
        "sleep",
        "1000",
    )
    pc(
        "run",
        "-d",
        "--name",
        "rp-off",
        "--net",
        "none",
        "--restart",
        "always",
        "busybox",
        "sleep",
        "1000",
    )
    pc("stop", "-t", "1", "rp-off")
    kill_monitor(state_root, "rp-db")
    # the machine "reboots": nothing ran pyinspect since; the unit's command runs
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split()) == ["rp-db", "rp-off"]
    for name in ("rp-db", "rp-off"):
        info = pc.inspect(name)
        assert info["State"]["Running"] and os.path.exists(f"/proc/{info['State']['Pid']}")
    assert pc.inspect("rp-db")["RestartCount"] == 1
    bad = pc("install-service", "--unit-dir", tmp_path / "nope", "--no-enable", check=False)
    assert "not a directory" in one_line_error(bad, 2)


def test_monitor_killed_while_waiting_to_restart(pc, state_root):
    """A monitor killed during the backoff: the record says restarting, the next
    reconcile settles it and the policy starts it again."""
    pc(
        "run",
        "-d",
        "--name",
        "rp-orphan",
        "--net",
        "none",
        "--restart",
        "always",
        "busybox",
        "sh",
        "-c",
        "sleep 0.2; exit 1",
    )
    wait_for(lambda: record(state_root, "rp-orphan")["restart_count"] >= 4, what="backoff")
    wait_for(lambda: record(state_root, "rp-orphan")["restarting"], what="a backoff wait")
    rec = record(state_root, "rp-orphan")
    os.kill(rec["shim_pid"], signal.SIGKILL)
    wait_for(lambda: gone(rec["shim_pid"]), what="the monitor to die")
    pc("ps")  # reconciles
    now = record(state_root, "rp-orphan")
    assert now["shim_pid"] and now["shim_pid"] != rec["shim_pid"]
    assert now["restart_count"] > rec["restart_count"]


# -- the init's way into its cgroups ------------------------------------------------
def test_fork_into_cgroup_and_its_refusal(tmp_path):
    """clone3(CLONE_INTO_CGROUP): the child starts in the cgroup2 directory (no
    migration); a descriptor that is not a cgroup2 directory is an OSError, on which
    the shim falls back to fork + cgroup.procs."""
    from pyinspect.runtime import isolation

    base = "/sys/fs/cgroup/unified" if os.path.isdir("/sys/fs/cgroup/unified") else "/sys/fs/cgroup"
    if not os.path.exists(f"{base}/cgroup.procs"):
        pytest.skip("no cgroup2 hierarchy")
    d = f"{base}/pi-test-clone-{os.getpid()}"
    os.mkdir(d)
    try:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        r, w = os.pipe()
        try:
            pid = isolation.fork_into_cgroup(fd)
            if pid == 0:
                with open("/proc/self/cgroup") as f:
                    os.write(w, f.read().encode())
                os._exit(0)
        finally:
            os.close(fd)
        os.close(w)
        with os.fdopen(r) as f:
            seen = f.read()
        assert os.waitpid(pid, 0)[1] == 0
        assert f"0::/{os.path.basename(d)}\n" in seen, seen
        fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with pytest.raises(OSError):
                isolation.fork_into_cgroup(fd)
        finally:
            os.close(fd)
    finally:
        os.rmdir(d)


def test_restarts_in_bridge_mode_reconnect_the_network(state_root, make_netns):
    """Every restart gets its network again (veth, address, the -p rule); after the
    last exit nothing of it is left."""
    pytest.importorskip("pyroute2")
    ns = make_netns("rp")
    cli = PcCli(state_root, netns=ns.name)
    try:
        cli(
            "run",
            "-d",
            "--name",
            "rp-br",
            "--restart",
            "on-failure:2",
            "-p",
            "8097:80",
            "busybox",
            "sh",
            "-c",
            "ip -o -4 addr show eth0 | grep -c inet; exit 1",
        )
        wait_for(
            lambda: (
                record(state_root, "rp-br")["restart_count"] == 2
                and not record(state_root, "rp-br")["shim_pid"]
            ),
            what="two restarts",
        )
        assert cli("logs", "rp-br").stdout == "1\n1\n1\n"
        assert "8097" not in ns.sh("iptables-save; iptables-legacy-save", check=False).stdout
        assert "veth" not in ns.sh("ip -o link").stdout
    finally:
        for cid in cli.ids():
            cli("rm", "-f", cid, check=False)
    assert_clean(state_root, [])
