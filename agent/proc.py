"""Small facts about host processes, shared by the agent, the probes and the runtime."""

import os


def pid_alive(pid):
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


def delete_netns(name):
    """Kill every process in the named network namespace (`ip netns`), then delete it.
    Missing namespaces and processes that are already gone are not errors."""
    import subprocess
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True,
                          text=True).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
