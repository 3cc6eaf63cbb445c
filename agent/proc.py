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
