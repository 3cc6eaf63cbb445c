"""`pyinspect doctor`: find the usual causes of broken container networking, with evidence.

- model.py: `Finding`, `Link`, `ContainerView` (plain data);
- hostview.py: `HostView.collect()`, one read-only snapshot of this network namespace
  and the containers whose veths lead out of it (through probes/ and runtime.sysctl);
- checks.py: plain functions over that snapshot that yield Findings, listed in `CHECKS`;
- persistence.py: findings, remembered facts and trace evidence in the store;
- runner.py: `examine()`/`run()` put them together; `apply_fixes()` is the only thing
  that changes the host,
  `fix_finding()` the dashboard's way to it (one finding, as it stands now, safe fixes only).
"""

from .hostview import HostView, listeners, memory_info, parse_proc_net
from .model import (
    PROBLEM,
    SEVERITIES,
    ContainerView,
    Finding,
    Link,
    describe_action,
    problems,
    read_runbook,
    runbook_file,
)
from .runner import Report, apply_fixes, current_findings, examine, fix_finding, run

__all__ = [
    "PROBLEM",
    "SEVERITIES",
    "ContainerView",
    "Finding",
    "HostView",
    "Link",
    "Report",
    "apply_fixes",
    "current_findings",
    "describe_action",
    "examine",
    "fix_finding",
    "listeners",
    "memory_info",
    "parse_proc_net",
    "problems",
    "read_runbook",
    "run",
    "runbook_file",
]
