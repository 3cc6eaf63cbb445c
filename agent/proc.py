"""Small facts about host processes, shared by the agent, the probes and the runtime."""

import os


def pid_alive(pid: int) -> bool:
    """True if a process `pid` exists (signal 0; one we may not signal still exists).

    Only the pid is checked: a recycled pid counts as alive. Where that matters, compare
    the start time too (`pyinspect.runtime.state.alive`). Pids <= 0 name process groups,
    never one process: False.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def start_ticks(pid: int | None) -> int:
    """When `pid` started, in clock ticks since boot; 0 if it does not exist or is a
    zombie (as good as dead)."""
    if not pid or pid <= 0:
        return 0
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] == b"Z":
        return 0
    return int(fields[19])


def started_by(pid: int, epoch_ns: int) -> bool:
    """True if a process `pid` exists and started no later than `epoch_ns` (to the
    second): the process that recorded that time, not a later one given its pid."""
    ticks = start_ticks(pid)
    if not ticks:
        return False
    try:
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return pid_alive(pid)
    started_s = btime + ticks / os.sysconf("SC_CLK_TCK")
    return started_s <= epoch_ns / 1e9 + 1.0


def delete_netns(name: str) -> None:
    """Kill every process in the named network namespace (`ip netns`), then delete it.
    Missing namespaces and processes that are already gone are not errors."""
    import subprocess

    pids = subprocess.run(
        ["ip", "netns", "pids", name], capture_output=True, text=True, check=False
    ).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def started_ns(pid: int) -> int | None:
    """When a live `pid` started, in ns since the epoch (to the clock tick); None if gone."""
    ticks = start_ticks(pid)
    if not ticks:
        return None
    try:
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None
    return int((btime + ticks / os.sysconf("SC_CLK_TCK")) * 1e9)
