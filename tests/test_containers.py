"""The container runtime, for real: namespaces, overlayfs, cgroups, the shim, the CLI.

Every test runs the real `pyinspect` console script as root on a temp state
root; the `pc` fixture force-removes every container of that root afterwards
and checks that no cgroup, process or container file of it is left.
"""

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from pyinspect.runtime.containers import CREATE_GRACE_SECONDS

from helpers.pccli import (
    PcCli,
    assert_clean,
    cgroup_dirs,
    cgroup_parents,
    one_line_error,
    processes_of,
    wait_no_cgroups,
)

pytestmark = pytest.mark.root


def test_run_attached_prints_output_and_exit_code(pc, state_root):
    out = pc(
        "run",
        "--net",
        "none",
        "--name",
        "pc-echo",
        "busybox",
        "sh",
        "-c",
        "echo hi; echo oops >&2; exit 3",
        check=False,
    )
    assert out.returncode == 3
    assert out.stdout == "hi\n" and out.stderr == "oops\n"
    info = pc.inspect("pc-echo")
    assert info["State"]["Status"] == "exited" and info["State"]["ExitCode"] == 3
    assert info["Config"]["Cmd"] == ["sh", "-c", "echo hi; echo oops >&2; exit 3"]
    assert wait_no_cgroups(info["Id"]) == []
    logs = pc("logs", "pc-echo")
    assert logs.stdout == "hi\n" and logs.stderr == "oops\n"


def test_run_rm_removes_everything(pc, state_root):
    # 20000 files in its upper layer, so that removing it takes a while
    make = "mkdir /d && cd /d && seq 20000 | xargs touch && echo gone; hostname"
    out = pc("run", "--rm", "--net", "none", "busybox", "sh", "-c", make)
    gone, short_id = out.stdout.splitlines()
    assert gone == "gone"
    # as Docker's: `run --rm` returns once the container is removed, not only exited
    assert pc.ids() == []
    left = [d for base in cgroup_parents() for d in os.listdir(base) if d.startswith(short_id)]
    assert left == []
    assert list((state_root / "containers").iterdir()) == []
    assert_clean(state_root, [])
    # detached --rm: removed by the shim once the command exits
    cid = pc("run", "-d", "--rm", "--net", "none", "busybox", "sleep", "0.2").stdout.strip()
    deadline = time.monotonic() + 10
    while pc.ids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pc.ids() == []
    assert wait_no_cgroups(cid) == []


def test_detached_lifecycle(pc, state_root):
    cid = pc(
        "run",
        "-d",
        "--name",
        "pc-life",
        "--net",
        "none",
        "busybox",
        "sh",
        "-c",
        "trap 'echo term; exit 7' TERM; echo started; while true; do sleep 0.1; done",
    ).stdout.strip()
    assert len(cid) == 64
    # the CLI is gone; the container runs on under its shim
    info = pc.inspect("pc-life")
    pid = info["State"]["Pid"]
    assert info["State"]["Running"] and pid > 0 and os.path.exists(f"/proc/{pid}")
    assert info["Name"] == "/pc-life" and info["Id"] == cid
    rows = [json.loads(line) for line in pc("ps", "--format", "json").stdout.splitlines()]
    assert [r["Names"] for r in rows] == ["pc-life"] and rows[0]["State"] == "running"
    assert "pc-life" in pc("ps").stdout
    # by unique id prefix, too
    assert pc.inspect(cid[:8])["Id"] == cid
    # namespaces differ from the host's, the cgroup holds the init
    for ns in ("pid", "mnt", "uts", "ipc", "net"):
        assert os.stat(f"/proc/{pid}/ns/{ns}").st_ino != os.stat(f"/proc/self/ns/{ns}").st_ino, ns
    cg = info["Cgroups"]
    assert cg and all(str(pid) in Path(p, "cgroup.procs").read_text().split() for p in cg.values())
    top = pc("top", "pc-life").stdout
    assert str(pid) in top and "sh -c" in top
    # stop: the trap runs, exit code recorded
    pc("stop", "-t", "5", "pc-life")
    info = pc.inspect("pc-life")
    assert info["State"]["Status"] == "exited" and info["State"]["ExitCode"] == 7
    assert cgroup_dirs(cid) == []
    assert "pc-life" not in pc("ps").stdout and "Exited (7)" in pc("ps", "-a").stdout
    # start again (same container, same upper dir), then restart
    pc("exec", "pc-life", "true", check=False)  # not running: refused
    pc("start", "pc-life")
    info = pc.wait_status("pc-life", "running")
    first_pid = info["State"]["Pid"]
    pc("restart", "-t", "5", "pc-life")
    info = pc.wait_status("pc-life", "running")
    assert info["State"]["Pid"] != first_pid
    deadline = time.monotonic() + 10  # the third start's first line may still be in flight
    while pc("logs", "pc-life").stdout.count("started") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pc("logs", "pc-life").stdout.count("started") == 3
    # kill -s, and the running container cannot be removed without -f
    one_line_error(pc("rm", "pc-life", check=False), code=4)
    pc("kill", "-s", "TERM", "pc-life")
    info = pc.wait_status("pc-life", "exited")
    assert info["State"]["ExitCode"] == 7
    pc("start", "pc-life")
    pc.wait_status("pc-life", "running")
    pc("kill", "pc-life")
    assert pc.inspect("pc-life")["State"]["ExitCode"] == 137
    one_line_error(pc("kill", "pc-life", check=False), code=4)
    pc("rm", "pc-life")
    assert pc.ids() == []


def test_stop_escalates_to_sigkill(pc):
    pc("run", "-d", "--name", "pc-stubborn", "--net", "none", "busybox", "sleep", "100")
    t0 = time.monotonic()
    pc("stop", "-t", "1", "pc-stubborn")  # pid 1 ignores SIGTERM without a handler
    assert 0.9 < time.monotonic() - t0 < 6
    info = pc.inspect("pc-stubborn")
    assert info["State"]["ExitCode"] == 137 and not info["State"]["OOMKilled"]


def _cpu_ticks(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_pause_freezes_every_process_until_unpause(pc):
    """`pause` stops a busy container's processes for real (no CPU time while frozen,
    `kill -0` still finds them), `exec` is refused, `unpause` lets them run on."""
    pc("run", "-d", "--name", "pc-busy", "--net", "none", "busybox", "sh", "-c",
       "while :; do :; done")  # fmt: skip
    pid = pc.inspect("pc-busy")["State"]["Pid"]
    pc("pause", "pc-busy")
    assert pc.inspect("pc-busy")["State"]["Paused"] is True
    before = _cpu_ticks(pid)
    time.sleep(0.5)
    assert _cpu_ticks(pid) == before  # frozen: not one tick in half a second
    refused = pc("exec", "pc-busy", "true", check=False)
    assert "is paused, unpause the container before exec" in one_line_error(refused)
    pc("unpause", "pc-busy")
    time.sleep(0.3)
    assert _cpu_ticks(pid) > before and pc.inspect("pc-busy")["State"]["Status"] == "running"
    pc("pause", "pc-busy")
    pc("rm", "-f", "pc-busy")  # a paused container is killed and its cgroups go


def test_pause_without_a_cgroup2_directory_is_one_clear_error(tmp_path):
    """A pure cgroup v1 host (no unified hierarchy) has no cgroup2 freezer for a
    container: `pause` says so instead of failing later."""
    from pyinspect.errors import UnavailableError
    from pyinspect.runtime.cgroups import Cgroup

    cg = Cgroup("0" * 64, paths={"memory": str(tmp_path / "memory")})  # as made on pure v1
    assert not cg.frozen()
    with pytest.raises(UnavailableError, match="pause needs the cgroup2 freezer"):
        cg.freeze(True)


def test_wait_blocks_until_the_container_stops(pc):
    """`wait` returns each exit code: at once for a stopped container, when a running
    one exits, when a created one has been started and stopped, and for an --rm
    container or one removed with rm -f, whose record is gone by then."""
    pc("run", "--name", "pc-done", "--net", "none", "busybox", "sh", "-c", "exit 4", check=False)
    assert pc("wait", "pc-done").stdout == "4\n"
    pc("create", "--name", "pc-later", "--net", "none", "busybox", "sh", "-c", "sleep 1; exit 6")
    pc("run", "-d", "--rm", "--name", "pc-gone", "--net", "none", "busybox", "sh", "-c",
       "sleep 1; exit 9")  # fmt: skip
    waiter = subprocess.Popen(
        pc.argv("wait", "pc-gone", "pc-later"), stdout=subprocess.PIPE, text=True
    )
    time.sleep(0.5)
    assert waiter.poll() is None  # still waiting: neither has stopped
    time.sleep(1.5)
    assert waiter.poll() is None  # pc-gone is gone, pc-later was never started
    pc("start", "pc-later")
    out, _ = waiter.communicate(timeout=30)
    assert waiter.returncode == 0 and out == "9\n6\n"
    assert "pc-gone" not in pc("ps", "-a").stdout
    pc("run", "-d", "--name", "pc-removed", "--net", "none", "busybox", "sleep", "600")
    waiter = subprocess.Popen(pc.argv("wait", "pc-removed"), stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    pc("rm", "-f", "pc-removed")  # killed and removed while waited for: Docker's 137
    assert waiter.communicate(timeout=30)[0] == "137\n" and waiter.returncode == 0
    bad = pc("wait", "pc-nosuch", check=False)
    assert bad.returncode != 0 and "no such container" in one_line_error(bad)


def test_start_attached_relays_output_and_exit_code(pc):
    """`create` then `start -a`: the output here and the container's exit code, as an
    attached `run`; `-i` passes stdin to a container created with -i; an attached start
    of a running one, or of several, is refused in one line."""
    pc("create", "--name", "pc-att", "--net", "none", "busybox", "sh", "-c", "echo hi; exit 3")
    out = pc("start", "-a", "pc-att", check=False)
    assert (out.returncode, out.stdout) == (3, "hi\n")
    assert pc.inspect("pc-att")["State"]["ExitCode"] == 3
    pc("create", "-i", "--name", "pc-cat", "--net", "none", "busybox", "cat")
    out = pc("start", "-a", "-i", "pc-cat", input="through stdin\n")
    assert out.stdout == "through stdin\n"
    pc("run", "-d", "--name", "pc-up", "--net", "none", "busybox", "sleep", "600")
    assert "already running" in one_line_error(pc("start", "-a", "pc-up", check=False), 4)
    assert "one container" in one_line_error(pc("start", "-a", "pc-att", "pc-cat", check=False), 2)


def test_memory_limit_oom_kill_is_recorded(pc):
    alloc = 'x=$(head -c 100000000 /dev/zero | tr "\\0" a); echo kept ${#x}'
    out = pc(
        "run",
        "--name",
        "pc-oom",
        "--net",
        "none",
        "--memory",
        "30m",
        "busybox",
        "sh",
        "-c",
        alloc,
        check=False,
    )
    assert out.returncode == 137
    info = pc.inspect("pc-oom")
    assert info["State"]["OOMKilled"] is True and info["State"]["ExitCode"] == 137
    assert info["HostConfig"]["Memory"] == 30 * 1024 * 1024
    # the same allocation really allocates: it fits under a larger limit
    out = pc("run", "--rm", "--net", "none", "--memory", "200m", "busybox", "sh", "-c", alloc)
    assert out.stdout == "kept 100000000\n"


def test_cpu_and_pids_limits(pc):
    pc(
        "run",
        "-d",
        "--name",
        "pc-lim",
        "--net",
        "none",
        "--cpus",
        "0.5",
        "--pids-limit",
        "8",
        "busybox",
        "sleep",
        "100",
    )
    info = pc.inspect("pc-lim")
    assert info["HostConfig"]["NanoCpus"] == 500_000_000
    assert info["HostConfig"]["PidsLimit"] == 8
    cg = info["Cgroups"]
    if "pids" in cg:
        assert Path(cg["pids"], "pids.max").read_text().strip() == "8"
        assert Path(cg["cpu"], "cpu.cfs_quota_us").read_text().strip() == "50000"
    else:
        assert Path(cg["unified"], "pids.max").read_text().strip() == "8"
        assert Path(cg["unified"], "cpu.max").read_text().split()[0] == "50000"
    out = pc(
        "exec",
        "pc-lim",
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do sleep 5 & done; wait",
        check=False,
    )
    assert "can't fork" in out.stderr or "Resource temporarily unavailable" in out.stderr


def test_copy_on_write_never_changes_the_image(pc, state_root):
    pc(
        "run",
        "--name",
        "pc-cow",
        "--net",
        "none",
        "busybox",
        "sh",
        "-c",
        "echo new > /etc/pc-new; rm /bin/ls; echo changed > /etc/hostname-copy",
    )
    image = pc.inspect("busybox")
    for layer in image["GraphDriver"]["Data"]["LowerDirs"]:
        assert not os.path.exists(os.path.join(layer, "etc/pc-new"))
    out = pc(
        "run", "--rm", "--net", "none", "busybox", "sh", "-c", "ls /etc/pc-new 2>&1; ls /bin/ls"
    )
    assert "/bin/ls" in out.stdout and "No such file" in out.stdout
    upper = Path(pc.inspect("pc-cow")["GraphDriver"]["Data"]["UpperDir"])
    assert (upper / "etc/pc-new").read_text() == "new\n"
    # the change survives a restart of the same container
    pc("start", "pc-cow")
    pc.wait_status("pc-cow", "exited")


def test_volumes_rw_and_ro(pc, tmp_path):
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "keep").write_text("original\n")
    out = pc(
        "run",
        "--rm",
        "--net",
        "none",
        "-v",
        f"{rw}:/rw",
        "-v",
        f"{ro}:/ro:ro",
        "busybox",
        "sh",
        "-c",
        "echo written > /rw/f; cat /ro/keep; echo x > /ro/keep || echo refused; "
        "touch /ro/new 2>/dev/null || echo refused2",
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "original" in out.stdout and "refused" in out.stdout and "refused2" in out.stdout
    assert (rw / "f").read_text() == "written\n"
    assert (ro / "keep").read_text() == "original\n" and not (ro / "new").exists()
    pc("run", "--name", "pc-vol", "--net", "none", "-v", f"{ro}:/ro:ro", "busybox", "true")
    mounts = pc.inspect("pc-vol")["Mounts"]
    assert mounts == [
        {
            "Type": "bind",
            "Source": str(ro),
            "Destination": "/ro",
            "Mode": "ro",
            "RW": False,
            "Propagation": "rprivate",
        }
    ]


def test_hostname_env_workdir_entrypoint(pc):
    out = pc(
        "run",
        "--rm",
        "--net",
        "none",
        "--hostname",
        "pc-host",
        "-e",
        "A=1",
        "-e",
        "B=two words",
        "-w",
        "/work/dir",
        "busybox",
        "sh",
        "-c",
        'echo "$(hostname) $A $B $(pwd) $HOSTNAME"; cat /etc/hostname',
    )
    assert out.stdout == "pc-host 1 two words /work/dir pc-host\npc-host\n"
    out = pc("run", "--rm", "--net", "none", "--entrypoint", "echo", "busybox", "from", "entry")
    assert out.stdout == "from entry\n"
    # default hostname is the short id; default command is the image's (sh, stdin /dev/null)
    pc("run", "--name", "pc-def", "--net", "none", "busybox")
    info = pc.inspect("pc-def")
    assert info["Config"]["Hostname"] == info["Id"][:12]
    assert info["Path"] == "sh" and info["State"]["ExitCode"] == 0
    # isolation: own pid namespace (the command is pid 1), own /proc, ro /sys, minimal /dev
    out = pc(
        "run",
        "--rm",
        "--net",
        "none",
        "busybox",
        "sh",
        "-c",
        "echo $$; ls /proc | grep -c '^[0-9]'; touch /sys/x 2>&1 || true; ls /dev",
    )
    lines = out.stdout.splitlines()
    assert lines[0] == "1" and int(lines[1]) <= 3
    assert "Read-only file system" in out.stdout
    assert {"null", "zero", "urandom", "pts", "shm"} <= set(out.stdout.split())
    assert "sda" not in out.stdout and "kmsg" not in out.stdout


def test_network_modes_none_host_container(pc):
    pc("run", "-d", "--name", "pc-netn", "--net", "none", "busybox", "sleep", "100")
    pid = pc.inspect("pc-netn")["State"]["Pid"]
    out = pc("exec", "pc-netn", "ip", "-o", "link").stdout
    assert "lo:" in out and "UP" in out and "eth0" not in out
    assert pc("exec", "pc-netn", "ping", "-c", "1", "-W", "2", "127.0.0.1").returncode == 0
    pc("run", "-d", "--name", "pc-joined", "--net", "container:pc-netn", "busybox", "sleep", "100")
    jpid = pc.inspect("pc-joined")["State"]["Pid"]
    assert os.stat(f"/proc/{jpid}/ns/net").st_ino == os.stat(f"/proc/{pid}/ns/net").st_ino
    assert os.stat(f"/proc/{jpid}/ns/pid").st_ino != os.stat(f"/proc/{pid}/ns/pid").st_ino
    pc("run", "-d", "--name", "pc-host", "--net", "host", "busybox", "sleep", "100")
    hpid = pc.inspect("pc-host")["State"]["Pid"]
    assert os.stat(f"/proc/{hpid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino
    assert pc.inspect("pc-host")["HostConfig"]["NetworkMode"] == "host"
    one_line_error(pc("run", "--net", "container:pc-nope", "busybox", "true", check=False), 3)
    # a name that is not a mode names a user network, as with Docker: not found
    one_line_error(pc("run", "--net", "bogus", "busybox", "true", check=False), 3)
    one_line_error(pc("run", "--net", "none", "-p", "80:80", "busybox", "true", check=False), 2)


def test_exec(pc):
    pc(
        "run",
        "-d",
        "--name",
        "pc-ex",
        "--net",
        "none",
        "-e",
        "FROMRUN=1",
        "busybox",
        "sleep",
        "100",
    )
    pid = pc.inspect("pc-ex")["State"]["Pid"]
    out = pc(
        "exec",
        "-e",
        "X=y",
        "-w",
        "/tmp",
        "pc-ex",
        "sh",
        "-c",
        'echo "$X $FROMRUN $(pwd)"; cat /proc/1/cmdline; echo; readlink /proc/self/ns/net',
    )
    lines = out.stdout.splitlines()
    assert lines[0] == "y 1 /tmp" and lines[1].startswith("sleep")
    assert lines[2] == os.readlink(f"/proc/{pid}/ns/net")
    assert pc("exec", "pc-ex", "sh", "-c", "exit 5", check=False).returncode == 5
    # -i passes stdin through
    assert pc("exec", "-i", "pc-ex", "cat", input="piped\n").stdout == "piped\n"
    # the exec'd process is in the container's cgroup while it runs
    cg = list(pc.inspect("pc-ex")["Cgroups"].values())[0]
    out = pc("exec", "pc-ex", "sh", "-c", "cat /proc/self/cgroup")
    assert pc.inspect("pc-ex")["Id"] in out.stdout
    assert os.path.isdir(cg)
    # ... and it alone: pyinspect's own forked helper stays outside the container's cgroups
    # (else the container's OOM killer could pick it, and its pids limit would count it)
    running = subprocess.Popen(pc.argv("exec", "pc-ex", "sleep", "30"), stdout=subprocess.DEVNULL)
    try:
        pidns = os.readlink(f"/proc/{pid}/ns/pid")
        deadline = time.monotonic() + 10
        while True:
            members = {
                int(p)
                for d in cgroup_dirs(pc.inspect("pc-ex")["Id"])
                for p in Path(d, "cgroup.procs").read_text().split()
            }
            comms = {p: Path(f"/proc/{p}/comm").read_text().strip() for p in members}
            if "sleep" in [c for p, c in comms.items() if p != pid] or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert sorted(comms.values()) == ["sleep", "sleep"], comms
        assert all(os.readlink(f"/proc/{p}/ns/pid") == pidns for p in members), comms
    finally:
        running.kill()
        running.wait()
    # -t: a pseudo-terminal, -it: an interactive shell on it
    out = pc("exec", "-t", "pc-ex", "sh", "-c", "test -t 0 && test -t 1 && echo tty")
    assert out.stdout.strip() == "tty"  # (text mode folds the pty's \r\n)
    out = pc("exec", "-it", "pc-ex", "sh", input="echo sum-$((40+2))\nexit 4\n", check=False)
    assert out.returncode == 4 and "sum-42" in out.stdout
    err = one_line_error(pc("exec", "pc-ex", "no-such-cmd", check=False), 126)  # as Docker's
    assert "executable file not found" in err
    one_line_error(pc("exec", "pc-nope", "true", check=False), 3)


def test_run_interactive_stdin(pc):
    out = pc(
        "run",
        "--rm",
        "-i",
        "--net",
        "none",
        "busybox",
        "sh",
        "-c",
        "read x; echo got $x",
        input="hello\n",
    )
    assert out.stdout == "got hello\n"
    out = pc("run", "--rm", "-t", "--net", "none", "busybox", "sh", "-c", "test -t 1 && echo tty")
    assert out.stdout.strip() == "tty"  # (text mode folds the pty's \r\n)
    out = pc(
        "run",
        "--rm",
        "-it",
        "--net",
        "none",
        "busybox",
        "sh",
        input="echo sum-$((40+2))\nexit 6\n",
        check=False,
    )
    assert out.returncode == 6 and "sum-42" in out.stdout
    # -d -i keeps stdin open, so the image's default `sh` stays up like docker -dit
    pc("run", "-d", "-i", "--name", "pc-dit", "--net", "none", "busybox")
    time.sleep(0.3)
    assert pc.inspect("pc-dit")["State"]["Running"]


def test_logs_tail_and_follow(pc):
    pc(
        "run",
        "-d",
        "--name",
        "pc-logs",
        "--net",
        "none",
        "busybox",
        "sh",
        "-c",
        "for i in 1 2 3 4 5; do echo line$i; done; sleep 0.2; echo err >&2; "
        "while [ ! -e /tmp/go ]; do sleep 0.05; done; echo late",
    )
    deadline = time.monotonic() + 5
    while "err" not in pc("logs", "pc-logs").stderr and time.monotonic() < deadline:
        time.sleep(0.05)
    tail = pc("logs", "--tail", "2", "pc-logs")  # counts lines of both streams, like docker
    assert (tail.stdout, tail.stderr) == ("line5\n", "err\n")
    assert pc("logs", "--tail", "3", "pc-logs").stdout == "line4\nline5\n"
    follow = subprocess.Popen(
        pc.argv("logs", "-f", "pc-logs"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(0.3)
    assert follow.poll() is None  # still following the running container
    pc("exec", "pc-logs", "touch", "/tmp/go")
    t0 = time.monotonic()
    stdout, stderr = follow.communicate(timeout=30)  # returns once the container exits
    out = subprocess.CompletedProcess(follow.args, follow.returncode, stdout, stderr)
    assert out.stdout == "line1\nline2\nline3\nline4\nline5\nlate\n"
    assert out.stderr == "err\n"
    assert time.monotonic() - t0 < 5
    assert pc.inspect("pc-logs")["State"]["Status"] == "exited"
    assert pc("logs", "-n", "1", "pc-logs").stdout == "late\n"
    assert pc("logs", "--tail", "0", "pc-logs").stdout == ""


def test_cp_both_ways_and_symlink_escapes(pc, tmp_path):
    pc(
        "run",
        "-d",
        "--name",
        "pc-cp",
        "--net",
        "none",
        "busybox",
        "sh",
        "-c",
        "mkdir -p /d/sub; echo inner > /d/sub/f; ln -s / /escape; ln -s /etc/pc-secret /plink; "
        "ln -s ../../../../../tmp /d/up; echo container > /etc/pc-secret; sleep 100",
    )
    deadline = time.monotonic() + 5
    while pc("exec", "pc-cp", "test", "-e", "/etc/pc-secret", check=False).returncode:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    # container -> host: a directory, into an existing dir
    pc("cp", "pc-cp:/d", str(out_dir))
    assert (out_dir / "d/sub/f").read_text() == "inner\n"
    assert os.readlink(out_dir / "d/up") == "../../../../../tmp"  # copied as a link
    # a path through an absolute link resolves inside the container
    pc("cp", "pc-cp:/escape/etc/pc-secret", str(out_dir / "secret"))
    assert (out_dir / "secret").read_text() == "container\n"
    # host -> container through links that point "out": writes stay inside
    src = tmp_path / "h.txt"
    src.write_text("from host\n")
    marker = Path("/tmp") / f"pc-escape-{os.getpid()}"
    assert not marker.exists()
    pc("cp", str(src), f"pc-cp:/escape/tmp/{marker.name}")
    pc("cp", str(src), f"pc-cp:/d/up/{marker.name}-2")
    assert not marker.exists() and not Path(f"{marker}-2").exists()
    assert pc("exec", "pc-cp", "cat", f"/tmp/{marker.name}").stdout == "from host\n"
    assert pc("exec", "pc-cp", "cat", f"/tmp/{marker.name}-2").stdout == "from host\n"
    # a file at a link's path is replaced, never written through to the host
    pc("cp", str(src), "pc-cp:/plink")
    assert pc("exec", "pc-cp", "cat", "/etc/pc-secret").stdout in ("container\n", "from host\n")
    # host -> container: a directory
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    (tree / "a/b.txt").write_text("bee\n")
    pc("cp", str(tree), "pc-cp:/")
    assert pc("exec", "pc-cp", "cat", "/tree/a/b.txt").stdout == "bee\n"
    # stopped containers too (the root is mounted privately for the copy only)
    pc("stop", "-t", "0", "pc-cp")
    pc("cp", str(src), "pc-cp:/stopped.txt")
    pc("cp", "pc-cp:/stopped.txt", str(out_dir / "s2"))
    assert (out_dir / "s2").read_text() == "from host\n"
    one_line_error(pc("cp", "pc-cp:/nonexistent", str(out_dir), check=False), 3)
    one_line_error(pc("cp", str(tmp_path / "nope"), "pc-cp:/", check=False), 3)
    one_line_error(pc("cp", str(src), str(out_dir), check=False), 2)


def test_bad_inputs_are_one_line_and_change_nothing(pc, state_root):
    pc("run", "--name", "pc-dup", "--net", "none", "busybox", "true")
    before = sorted(os.listdir(state_root / "containers"))
    cases = [
        (("run", "--net", "none", "no-such-image", "true"), 3, "no such image"),
        (("inspect", "pc-nope"), 3, "no such"),
        (("stop", "pc-nope"), 3, "no such container"),
        (("logs", "pc-nope"), 3, "no such container"),
        (("run", "--net", "none", "--name", "pc-dup", "busybox", "true"), 4, "already in use"),
        (("run", "--net", "none", "--memory", "lots", "busybox", "true"), 2, "memory"),
        (("run", "--net", "none", "--memory", "1k", "busybox", "true"), 2, "minimum"),
        (("run", "--net", "none", "--cpus", "-1", "busybox", "true"), 2, "cpus"),
        (("run", "--net", "none", "--entrypoint", "", "busybox"), 2, "no command"),
        (("run", "--net", "none", "--name", "bad name!", "busybox", "true"), 2, "name"),
        (("run", "--net", "none", "-v", "./relative:/x", "busybox", "true"), 2, "absolute"),
        (("run", "--net", "none", "-w", "rel", "busybox", "true"), 2, "absolute"),
        (("kill", "-s", "NOPE", "pc-dup"), 2, "signal"),
        (("run", "--net", "none", "busybox", "no-such-command"), 127, "executable file"),
    ]
    for args, code, text in cases:
        line = one_line_error(pc(*args, check=False), code)
        assert text in line, (args, line)
    after = sorted(os.listdir(state_root / "containers"))
    # only the failed-exec container was added (it exists, like docker's, with exit 127)
    added = set(after) - set(before)
    assert len(added) == 1
    assert pc.inspect(added.pop())["State"]["ExitCode"] == 127
    proc = pc("run", "-d", "--net", "none", "busybox", "no-such-command", check=False)
    one_line_error(proc, 127)


def test_killed_cli_mid_run_leaves_nothing(pc, state_root):
    """SIGKILL the CLI at many points of `run`; after the reconciler and rm -f, nothing is left."""
    t0 = time.monotonic()
    pc("run", "--rm", "--net", "none", "busybox", "true")
    full = time.monotonic() - t0
    for i, frac in enumerate((0.05, 0.2, 0.35, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.3)):
        proc = subprocess.Popen(
            pc.argv(
                "run",
                "--name",
                f"pc-k{i}",
                "--net",
                "none",
                "--memory",
                "50m",
                "busybox",
                "sleep",
                "0.3",
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(full * frac)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # also kill the shim itself: its container dies with it (PDEATHSIG)
    pc("run", "-d", "--name", "pc-shimkill", "--net", "none", "busybox", "sleep", "100")
    info = pc.inspect("pc-shimkill")

    def children(pid):
        try:
            return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return []  # a shim of the runs above that just finished

    shim = [p for p in processes_of(state_root) if str(info["State"]["Pid"]) in children(p)]
    assert len(shim) == 1
    os.kill(shim[0], signal.SIGKILL)
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{info['State']['Pid']}") and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # every surviving container's `sleep 0.3` is over
    pc("ps", "-a")  # runs the reconciler
    settled = pc.inspect("pc-shimkill")
    assert settled["State"]["Status"] == "exited" and settled["State"]["ExitCode"] == 137
    assert cgroup_dirs(settled["Id"]) == []
    for line in pc("ps", "-a", "--format", "json").stdout.splitlines():
        row = json.loads(line)
        assert row["State"] != "running" or os.path.exists(f"/proc/{row['Pid']}")
    # everything else goes with rm -f (the fixture checks cgroups, shims, files)
    ids = pc.ids()
    for cid in ids:
        pc("rm", "-f", cid)
    # a run killed between mkdir and locking its `.tmp-<id>` is removed once past the grace
    time.sleep(CREATE_GRACE_SECONDS + 0.2)
    pc("ps", "-a")
    assert_clean(state_root, ids)


def test_rm_f_while_run_makes_the_container(pc, state_root):
    """`rm -f NAME` racing `run -d --name NAME` at several points of the making: rm either
    finds no such container yet (one line, as Docker says it) or waits for the making to
    end and removes it; `run` always ends well, and once both have ended and a last
    rm -f has run, nothing of the containers is left."""
    t0 = time.monotonic()
    pc("run", "--rm", "--net", "none", "busybox", "true")
    full = time.monotonic() - t0
    ids, outcomes = [], set()
    for i, frac in enumerate((0.0, 0.2, 0.4, 0.6, 0.8, 1.0)):
        name = f"pc-race{i}"
        run = subprocess.Popen(
            pc.argv("run", "-d", "--name", name, "--net", "none", "busybox", "sleep", "100"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(full * frac)
        rm = pc("rm", "-f", name, check=False)
        out, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
        ids.append(out.strip())
        if rm.returncode == 0:
            outcomes.add("removed")
            assert rm.stdout.strip() == name
            assert name not in pc("ps", "-a", "--format", "{{.Names}}").stdout.split()
        else:
            outcomes.add("not yet")
            assert one_line_error(rm) == f"Error: container '{name}': no such container " + (
                "(pyinspect ps -a lists them)"
            )
            pc("rm", "-f", name)  # made after rm looked: it is there, and goes now
    assert "removed" in outcomes, outcomes  # the wait for the making was exercised
    pc("ps", "-a")
    assert_clean(state_root, ids)


def test_reconciler_removes_half_created_leftovers(pc, state_root):
    """A record left between create and start by a dead `run` is removed."""
    pc("run", "--name", "pc-half", "--net", "none", "busybox", "true")
    path = next((state_root / "containers").iterdir())
    st = json.loads((path / "state.json").read_text())
    dead = subprocess.Popen(["true"])
    dead.wait()
    st.update(status="created", started_at="", creator=[dead.pid, 1])
    (path / "state.json").write_text(json.dumps(st))
    cdir = state_root / "containers"
    tmp = cdir / (".tmp-" + "0" * 64)
    tmp.mkdir()
    old = time.time() - 3600
    os.utime(tmp, (old, old))
    # a creation whose creator died after making its lock (the lock is free), past the
    # grace: removed; one just made, without a lock yet (its creator may be between mkdir
    # and flock): kept until the grace has passed
    freed = cdir / (".tmp-" + "2" * 64)
    freed.mkdir()
    (freed / "lock").touch()
    past = time.time() - CREATE_GRACE_SECONDS - 1
    os.utime(freed, (past, past))
    fresh = cdir / (".tmp-" + "1" * 64)
    fresh.mkdir()
    pc("ps", "-a")
    assert [p.name for p in cdir.iterdir()] == [fresh.name]
    os.utime(fresh, (past, past))
    pc("ps", "-a")
    assert list(cdir.iterdir()) == []
    assert list((state_root / "names").iterdir()) == []


def test_bridge_mode_waits_for_the_network(state_root, make_netns):
    """Default bridge mode (in a netns playing the host): the command starts only after
    network.connect() set up eth0 and /etc/hosts names the container's address."""
    pytest.importorskip("pyroute2")
    try:
        import pyinspect.runtime.network  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"no network module: {exc}")
    ns = make_netns("pc")
    cli = PcCli(state_root, netns=ns.name)
    try:
        out = cli(
            "run",
            "--rm",
            "--name",
            "pc-br",
            "busybox",
            "sh",
            "-c",
            "ip -o -4 addr show eth0; grep pc-br /etc/hosts || cat /etc/hosts",
        )
        assert "inet " in out.stdout and "eth0" in out.stdout
        ip = out.stdout.split("inet ")[1].split("/")[0]
        assert ip in out.stdout.split("\n", 1)[1]  # /etc/hosts has the address
        cli("run", "-d", "--name", "pc-br2", "busybox", "sleep", "100")
        info = cli.inspect("pc-br2")
        assert (
            info["NetworkSettings"]["IPAddress"] and info["HostConfig"]["NetworkMode"] == "bridge"
        )
        veth = info["NetworkSettings"]["Networks"]["bridge"]["HostVeth"]
        assert veth in ns.sh("ip -o link").stdout
        cli("rm", "-f", "pc-br2")
        assert veth not in ns.sh("ip -o link").stdout
    finally:
        for cid in cli.ids():
            cli("rm", "-f", cid, check=False)
    assert_clean(state_root, [])


def test_secure_join_and_parsers(tmp_path):
    """Pure helpers: in-root path resolution and Docker's option formats."""
    from pyinspect.errors import UsageError
    from pyinspect.runtime.cgroups import parse_cpus, parse_memory, parse_pids
    from pyinspect.runtime.containers import parse_signal, split_cp_arg
    from pyinspect.runtime.isolation import secure_join
    from pyinspect.runtime.volumes import VolumeArg, parse_volume

    root = tmp_path / "r"
    (root / "etc").mkdir(parents=True)
    os.symlink("/", root / "abs")
    os.symlink("../../../..", root / "up")
    os.symlink("/etc", root / "etclink")
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    r = str(root)
    assert secure_join(r, "/abs/etc/passwd") == f"{r}/etc/passwd"
    assert secure_join(r, "/up/up/tmp/x") == f"{r}/tmp/x"
    assert secure_join(r, "../../etc") == f"{r}/etc"
    assert secure_join(r, "/etclink/../etclink/hosts") == f"{r}/etc/hosts"
    assert secure_join(r, "/missing/a/b") == f"{r}/missing/a/b"
    with pytest.raises(OSError):
        secure_join(r, "/loop1/x")
    assert parse_memory("30m") == 30 << 20 and parse_memory("1g") == 1 << 30
    assert parse_memory("7340032") == 7 << 20 and parse_memory("6MB") == 6 << 20
    for bad in ("lots", "-5m", "1k", "30x"):
        with pytest.raises(UsageError):
            parse_memory(bad)
    assert parse_cpus("0.5") == 0.5 and parse_pids(0) is None and parse_pids("12") == 12
    assert parse_signal("TERM") == 15 and parse_signal("SIGKILL") == 9 and parse_signal("2") == 2
    assert parse_volume("/h:/c:ro") == VolumeArg("bind", "/h", "/c", True, True, "ro")
    assert split_cp_arg("web:/etc/x") == ("web", "/etc/x") and split_cp_arg("./a:b") == (
        None,
        "./a:b",
    )
    assert split_cp_arg("web:") == ("web", "")  # refused by cp (it used to mean "/")
    with pytest.raises(UsageError):
        parse_volume("/h:/c:rx")


def test_workdir_lookup_in_image_layers(tmp_path):
    """non_directory_in_image reads the layers as overlayfs shows them: the top layer
    wins, whiteouts and opaque directories hide lower entries, symlinks stay inside."""
    from pyinspect.runtime.isolation import non_directory_in_image

    base, top = tmp_path / "base", tmp_path / "top"
    for d in ("etc", "data", "etc2", "gone/sub", "top/kept"):
        (base / d).mkdir(parents=True)
    for f in ("etc/passwd", "data/file"):
        (base / f).write_text("x")
    os.symlink("/etc/passwd", base / "link")
    os.symlink("../etc", base / "data/rel")
    os.symlink("loop2", base / "loop1")
    os.symlink("loop1", base / "loop2")
    (top / "data").mkdir(parents=True)
    os.setxattr(top / "data", "trusted.overlay.opaque", b"y")  # hides base's data/*
    (top / "etc2").write_text("now a file")
    os.mknod(top / "gone", 0o600 | stat.S_IFCHR, os.makedev(0, 0))  # a whiteout
    (top / "top").mkdir()
    (top / "top" / "kept").mkdir()
    layers = [base, top]
    check = {
        "/etc/passwd": "/etc/passwd",
        "/etc/passwd/x": "/etc/passwd",
        "/link/x": "/etc/passwd",
        "/../etc/passwd": "/etc/passwd",
        "/etc2/x": "/etc2",  # the top layer's file wins over the base's dir
        "/etc": None,
        "/new/dir": None,
        "/top/kept": None,
        "/gone/sub": None,  # whited out: the start may make it
        "/data/file/x": None,  # hidden by the opaque directory above it
        "/data/rel/passwd": None,
    }  # so is the symlink
    assert {p: non_directory_in_image(layers, p) for p in check} == check
    assert non_directory_in_image([base], "/data/rel/passwd") == "/etc/passwd"
    with pytest.raises(OSError):
        non_directory_in_image(layers, "/loop1/x")


def test_damaged_record_of_a_running_container(pc, state_root):
    """A running container whose state.json got damaged is listed as damaged and left
    running by `ps -a`; plain `rm` refuses at once (its monitor still runs it);
    `rm -f` kills it through its cgroup and removes everything."""
    pc(
        "run",
        "-d",
        "--name",
        "pc-dmg",
        "--net",
        "none",
        "--memory",
        "50m",
        "busybox",
        "sleep",
        "100",
    )
    info = pc.inspect("pc-dmg")
    cid, pid = info["Id"], info["State"]["Pid"]
    (state_root / "containers" / cid / "state.json").write_text('{"status": "runn')
    rows = [json.loads(line) for line in pc("ps", "-a", "--format", "json").stdout.splitlines()]
    assert [(r["Id"], r["State"]) for r in rows] == [(cid, "damaged")]
    assert "state.json" in rows[0]["Error"] and os.path.exists(f"/proc/{pid}")
    t0 = time.monotonic()
    line = one_line_error(pc("rm", "pc-dmg", check=False), 4)
    assert "pc-dmg" in line and "rm -f" in line and time.monotonic() - t0 < 5
    assert os.path.exists(f"/proc/{pid}") and cgroup_dirs(cid)
    pc("rm", "-f", "pc-dmg")
    assert not (state_root / "containers" / cid).exists()
    assert_clean(state_root, [cid])
    assert not os.path.exists(f"/proc/{pid}")


def test_attached_run_forwards_signals(pc, state_root):
    """SIGINT/SIGTERM to an attached `run` reach the container (docker's sig-proxy)."""
    proc = subprocess.Popen(
        pc.argv(
            "run",
            "--name",
            "pc-sig",
            "--net",
            "none",
            "busybox",
            "sh",
            "-c",
            "trap 'echo caught; exit 9' INT; echo ready; while true; do sleep 0.1; done",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 9 and "caught" in out, err
    assert pc.inspect("pc-sig")["State"]["ExitCode"] == 9
    # inspect of several names: a JSON list; one unknown name -> its error line, non-zero
    both = pc("inspect", "pc-sig", "busybox", check=False)
    assert both.returncode == 0
    assert [d.get("Name", "image") for d in json.loads(both.stdout)] == ["/pc-sig", "image"]
    mixed = pc("inspect", "pc-sig", "pc-nope", check=False)
    assert mixed.returncode == 3 and len(json.loads(mixed.stdout)) == 1
    assert mixed.stderr.startswith("Error: ") and "pc-nope" in mixed.stderr
    assert pc("ps", "-a", "-q").stdout.split() == [pc.inspect("pc-sig")["Id"][:12]]


def test_hostile_image_symlinks_stay_inside_the_root(pc, tmp_path):
    """An image whose /proc and /dev are symlinks pointing "out" gets its mounts inside
    its own root (resolved like a chroot would), and the host is untouched."""
    from pyinspect.runtime.images import ImageStore

    from helpers import imagekit as kit

    bb = ImageStore(pc.root).resolve("busybox")
    base = (ImageStore(pc.root).blobs / bb.diff_ids[0][7:]).read_bytes()
    marker = f"pc-escape-{os.getpid()}"
    top = kit.layer(("proc", "sym", f"/../../{marker}-proc"), ("dev", "sym", f"../{marker}-dev"))
    arc = kit.docker_legacy(tmp_path / "hostile.tar", [([base, top], ["pc-hostile:1"], None)])
    pc("load", "-i", arc)
    out = pc(
        "run",
        "--rm",
        "--net",
        "none",
        "pc-hostile:1",
        "sh",
        "-c",
        f"cat /{marker}-proc/1/cmdline; echo; ls /{marker}-dev/null; echo ok > /dev/null",
    )
    assert out.stdout.startswith("sh") and f"/{marker}-dev/null" in out.stdout
    assert not os.path.exists(f"/{marker}-proc") and not os.path.exists(f"/{marker}-dev")
    assert not os.path.exists(f"/tmp/{marker}-dev")


def test_bridge_without_the_network_module_is_one_clear_error(pc, state_root):
    """When pyinspect.runtime.network cannot be imported, bridge runs fail in one line
    (exit 5) and create nothing; --net none still works in the same process."""
    import sys

    code = (
        "import sys; sys.modules['pyinspect.runtime.network'] = None; "
        "sys.argv[0] = 'pyinspect-test'; from pyinspect.cli import main; main()"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "--root",
            str(state_root),
            "run",
            "--name",
            "pc-nonet",
            "busybox",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    line = one_line_error(proc, 5)
    assert "bridge networking is unavailable" in line
    assert pc.ids() == []
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "--root",
            str(state_root),
            "run",
            "--rm",
            "--net",
            "none",
            "busybox",
            "echo",
            "still-fine",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout == "still-fine\n", proc.stderr


def _blocking_timing_fifo(path, free):
    """A FIFO for PYINSPECT_TIMING with room for exactly `free` more bytes, so the
    writer blocks at a known mark. Returns the fd holding it open (read+write)."""
    import fcntl

    os.mkfifo(path)
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
    fcntl.fcntl(fd, 1031, 4096)  # F_SETPIPE_SZ: one page
    os.write(fd, b"x" * (4096 - free))
    return fd


def test_sigkill_between_create_and_start_is_cleaned_up(pc, state_root, tmp_path):
    """Deterministic: the CLI is stopped right after `create` (its timing write blocks on a
    full FIFO), SIGKILLed there, and the reconciler removes the half-made container."""
    fifo = tmp_path / "timing"
    hold = _blocking_timing_fifo(fifo, free=len(b"run_entered 1234567890123456789\n"))
    proc = subprocess.Popen(
        pc.argv("run", "--name", "pc-half", "--net", "none", "busybox", "true"),
        env={**os.environ, "PYINSPECT_TIMING": str(fifo)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while not os.path.lexists(state_root / "names" / "pc-half"):  # created, now blocked
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        time.sleep(0.1)
        assert proc.poll() is None
        info = pc.inspect("pc-half")
        assert info["State"]["Status"] == "created"
    finally:
        leftover = processes_of(state_root)
        for p in leftover:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.kill()  # before the FIFO goes: with no reader its write fails and it runs on
        proc.communicate(timeout=20)
        os.close(hold)
    assert leftover == []  # no shim was ever forked
    pc("ps", "-a")  # reconcile
    assert pc.ids() == []
    assert_clean(state_root, [info["Id"]])


def test_sigkill_of_the_shim_while_starting_is_cleaned_up(pc, state_root, tmp_path):
    """Deterministic: the shim and the init are held at their first marks (after the
    shim forked the init, maybe after it made the cgroups); the shim is SIGKILLed, its
    init dies with it, the CLI reports the failure, and the reconciler frees the
    cgroups the dead shim never recorded."""
    import fcntl
    import termios

    marks = (
        b"run_entered 1234567890123456789\n",
        b"created 1234567890123456789\n",
        b"shim_forked 1234567890123456789\n",
    )
    fifo = tmp_path / "timing"
    hold = _blocking_timing_fifo(fifo, free=sum(map(len, marks)))
    proc = subprocess.Popen(
        pc.argv(
            "run", "--name", "pc-shimdie", "--net", "none", "--memory", "20m", "busybox", "true"
        ),
        env={**os.environ, "PYINSPECT_TIMING": str(fifo)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        buf = bytearray(4)
        while True:
            fcntl.ioctl(hold, termios.FIONREAD, buf)
            if int.from_bytes(buf, "little") >= 4096 and processes_of(state_root):
                break
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        time.sleep(0.3)  # the shim and the init are both blocked on their next mark now
        # (the init, forked from the shim, shows the shim's name until it execs)
        shims = [p for p in processes_of(state_root) if os.getsid(p) == p]
        assert len(shims) == 1
        cid = pc.inspect("pc-shimdie")["Id"]
        os.kill(shims[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=20)
    finally:
        for p in processes_of(state_root):  # never leave a blocked shim holding our pipes
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.close(hold)
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=20)
    assert proc.returncode == 125 and err.startswith("Error: ") and "Traceback" not in err
    assert cgroup_dirs(cid)  # made by the shim (blocked after), never recorded by it
    pc("ps", "-a")  # reconcile
    assert pc.ids() == []
    assert_clean(state_root, [cid])
