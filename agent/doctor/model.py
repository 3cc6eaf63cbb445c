"""What doctor's checks work on and produce: links and containers as seen from the host,
and `Finding`s (what is wrong, the evidence, the fix and its runbook)."""

import ipaddress
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import NotFoundError

SEVERITIES = ("error", "warning", "info")
PROBLEM = ("error", "warning")  # severities that make the exit code 1
RUNBOOKS = "docs/runbooks"  # how findings name a runbook (docs/runbooks/<name>.md)
RUNBOOK_DIR = Path(__file__).resolve().parent / "runbooks"  # the files: package data
SIM_REMOTE = "198.51.100.7"  # TEST-NET-2: used only to describe packets to the rule walker

# A fix is a list of actions: ("run", argv) | ("write", path, text) | ("ack", key, value)
Action = tuple


@dataclass
class Finding:
    """One problem: what is wrong, the evidence that shows it, and how to fix it."""

    check: str
    severity: str
    container: str
    summary: str
    evidence: list[str]
    fix: str
    runbook: str
    safe: bool = False  # --fix applies it without asking
    actions: list[Action] = field(default_factory=list)
    port: int | None = None  # the host port concerned, if any

    def to_dict(self) -> dict:
        d = asdict(self)
        d["actions"] = [
            list(map(str, a[1])) if a[0] == "run" else list(map(str, a)) for a in self.actions
        ]
        d["runbook_file"] = str(runbook_file(self.runbook))
        return d


def runbook(name: str) -> str:
    """How a finding names the runbook `name` (the docs path; its stem is the name)."""
    return f"{RUNBOOKS}/{name}.md"


def runbook_file(ref: str) -> Path:
    """The installed runbook file of a name or a `runbook()` reference."""
    name = Path(ref).stem
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,80}", name):
        raise NotFoundError(f"no such runbook: {name}")
    return RUNBOOK_DIR / f"{name}.md"


def read_runbook(ref: str) -> str:
    """The text of a runbook, read from the package's data; NotFoundError if none."""
    path = runbook_file(ref)
    try:
        return path.read_text()
    except OSError:
        raise NotFoundError(f"no such runbook: {path.stem}") from None


def describe_action(action: Action) -> str:
    """The action as a command a person could type ('' for an acknowledgement)."""
    kind = action[0]
    if kind == "run":
        return " ".join(action[1])
    if kind == "write":
        return f"echo {action[2]} > {action[1]}"
    return ""


def problems(findings: list[Finding]) -> list[Finding]:
    """The findings that make doctor exit 1."""
    return [f for f in findings if f.severity in PROBLEM]


@dataclass
class PortMapping:
    """A host port published to a container: declared in pyinspect's state, named by a
    DNAT rule, or remembered from an earlier run."""

    proto: str
    host_ip: str  # '' for every address
    host_port: int
    container_port: int
    source: str  # pyinspect | rule | remembered
    rule: Any = None  # the DNAT rule (probes.iptsave.Rule) that names it, if any
    memory: dict | None = None  # what doctor remembered of it (its working rule path)


class Socket(NamedTuple):
    """A listening TCP or bound UDP socket (from /proc/<pid>/net/{tcp,udp}[6])."""

    proto: str
    addr: str
    port: int


@dataclass
class Link:
    """A network interface of one namespace."""

    ifindex: int
    name: str
    kind: str
    up: bool  # administratively up
    oper: str
    mtu: int
    master: str | None
    iflink: int | None  # peer ifindex for veths
    link_netnsid: int | None
    addrs: list[tuple[str, int]]  # [(ip, prefixlen)]
    hairpin: bool | None = None
    mac: str | None = None

    def networks(self) -> list:
        return [ipaddress.ip_interface(f"{ip}/{plen}").network for ip, plen in self.addrs]


@dataclass
class ContainerView:
    """A container's network namespace as doctor sees it from the host."""

    name: str
    id: str
    source: str  # pyinspect | runc | docker | containerd | ... (discovery) | netns | process
    nspath: str
    inode: int
    pids: list[int]
    links: dict[str, Link] = field(default_factory=dict)
    routes: list[dict] = field(default_factory=list)
    sockets: list[Socket] = field(default_factory=list)
    eth: Link | None = None  # container side of the veth pair
    host_veth: Link | None = None
    ip: str | None = None
    prefixlen: int | None = None
    ports: list[PortMapping] = field(default_factory=list)
    declared: dict = field(default_factory=dict)  # pyinspect network dict, if any
    memory: dict = field(default_factory=dict)  # {cgroup, oom_kill, limit, max_usage}
    status: str = "running"
    oom_killed: bool = False
    frozen_by: str | None = None  # the freezer file that holds it paused, if any
    resolv_conf: str | None = None  # its /etc/resolv.conf (None: not read)
    rulesets: dict[str, Any] = field(default_factory=dict)  # its own iptables (iptsave)
    forwarding: str | None = None
    sysctls: dict[str, str | None] = field(default_factory=dict)

    def exec_prefix(self) -> list[str]:
        """How a person runs a command in this container's network namespace."""
        if self.nspath.startswith("/run/netns/") or self.nspath.startswith("/var/run/netns/"):
            return ["ip", "netns", "exec", os.path.basename(self.nspath)]
        return ["nsenter", f"--net={self.nspath}"]

    def default_gateways(self) -> list[str]:
        return [r["gateway"] for r in self.routes if r["dst"] == "default"]
