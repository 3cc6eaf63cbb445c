"""Running doctor: collect the host view, run the checks in order, keep the results;
apply fixes when asked."""

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import NotFoundError, UnavailableError, UsageError
from . import checks, ipv6, persistence, usernets
from .hostview import HostView
from .model import ContainerView, Finding, PortMapping, describe_action


@dataclass
class Report:
    """One doctor run: its findings and what could not be read (shown to the user)."""

    findings: list[Finding]
    notes: list[str] = field(default_factory=list)
    view: HostView | None = None


def _port_memory_key(c: ContainerView, port: PortMapping) -> str:
    return f"port:{c.name}:{port.proto}:{port.host_port}"


def _remember(view: HostView) -> tuple[dict, list[str]]:
    """Facts to keep for the next run: working port mappings (rule paths)."""
    working = checks.working_ports(view)
    keep, names = {}, {c.name for c in view.containers}
    for c in view.containers:
        for p in c.ports:
            ok = working.get((c.name, p.proto, p.host_port))
            if ok:
                keep[_port_memory_key(c, p)] = ok
    drop = [k for k in view.memory if k.startswith("port:") and k.split(":")[1] not in names]
    return keep, drop


def _only_container(
    root: str | Path, view: HostView, findings: list[Finding], container: str
) -> list[Finding]:
    known = {c.name for c in view.containers} | {c.id for c in view.containers}
    if container not in known and not any(
        c.id.startswith(container) for c in view.containers if c.id
    ):
        from ..runtime.containers import Runtime

        try:  # one of ours without a network (--net none) has nothing to check
            Runtime(root).get(container)
        except NotFoundError:
            raise NotFoundError(
                f"doctor: no such container: {container}", "see `pyinspect ps` or `ip netns`"
            ) from None
    return [
        f
        for f in findings
        if not f.container
        or f.container == container
        or any(
            c.name == f.container and c.id.startswith(container) for c in view.containers if c.id
        )
    ]


def examine(
    root: str | Path, container: str | None = None, port: int | None = None, store: bool = True
) -> Report:
    """Run every check against this network namespace; the findings are stored."""
    if os.geteuid() != 0:
        raise UnavailableError("doctor: needs root", "it reads iptables, netns and cgroups")
    st = persistence.open_store(root) if store else None
    try:
        memory = persistence.load_memory(st) if st else {}
        view = HostView.collect(root, memory, port_filter=port)
        findings = [
            f for _name, fn in checks.CHECKS + ipv6.CHECKS + usernets.CHECKS for f in fn(view) or ()
        ]
        if container:
            findings = _only_container(root, view, findings, container)
        if port is not None:
            findings = [f for f in findings if f.port in (None, port)]
        if st:
            persistence.add_trace_evidence(st, findings)
            keep, drop = _remember(view)
            persistence.save_memory(st, keep, drop)
            persistence.save_findings(st, findings, time.time_ns())
        return Report(findings, list(view.notes), view)
    finally:
        if st:
            st.close()


def run(
    root: str | Path, container: str | None = None, port: int | None = None, store: bool = True
) -> list[Finding]:
    """The findings of `examine()`."""
    return examine(root, container, port, store).findings


def apply_fixes(
    findings: list[Finding],
    confirm: Callable[[Finding], bool] = lambda finding: False,
    root: str | Path | None = None,
) -> list[tuple[Finding, str, str]]:
    """Apply fixes: safe ones directly, others only when `confirm(finding)` says yes.

    Returns [(finding, status, detail)] with status 'applied', 'skipped', 'failed'
    or 'manual' (no command can fix it).
    """
    results: list[tuple[Finding, str, str]] = []
    acks: dict = {}
    for f in findings:
        if not f.actions or all(a[0] == "ack" for a in f.actions):
            results.append((f, "manual", f.fix))
            continue
        if not f.safe and not confirm(f):
            results.append((f, "skipped", "not confirmed"))
            continue
        err = None
        for action in f.actions:
            try:
                if action[0] == "run":
                    proc = subprocess.run(
                        action[1], capture_output=True, text=True, timeout=60, check=False
                    )
                    if proc.returncode != 0:
                        err = f"{describe_action(action)}: {proc.stderr.strip()[:200]}"
                        break
                elif action[0] == "write":
                    Path(action[1]).write_text(str(action[2]))
                elif action[0] == "ack":
                    acks[action[1]] = action[2]
            except (OSError, subprocess.TimeoutExpired) as exc:
                err = f"{describe_action(action)}: {exc}"
                break
        results.append((f, "failed" if err else "applied", err or f.fix))
    if acks and root is not None:
        with persistence.open_store(root) as st:
            persistence.save_memory(st, acks)
    return results


def current_findings(
    root: str | Path, check: str, container: str | None = None, port: int | None = None
) -> list[Finding]:
    """Doctor run again now (nothing stored): the findings of `check` (for `container`
    and `port`). What the dashboard shows before a fix is confirmed."""
    report = examine(root, container=container or None, port=port, store=False)
    return [
        f
        for f in report.findings
        if f.check == check
        and (not container or f.container == container)
        and (port is None or f.port in (None, port))
    ]


def fix_finding(
    root: str | Path,
    check: str,
    container: str | None = None,
    port: int | None = None,
    confirmed: bool = False,
) -> list[tuple[Finding, str, str]]:
    """Apply the safe fix of a finding as it stands now, once `confirmed` (the dashboard's
    confirmation): doctor runs again first, so a stale page cannot apply an old command;
    fixes not marked safe are left to a person ('skipped'). UsageError unless confirmed,
    NotFoundError when the problem is gone."""

    if not confirmed:
        raise UsageError("doctor fix: not confirmed")
    found = current_findings(root, check, container, port)
    if not found:
        where = f" for {container}" if container else ""
        raise NotFoundError(f"doctor: no current finding {check}{where}: nothing to fix")
    results = apply_fixes(found, root=root)  # unsafe fixes: 'skipped' (not confirmed)
    examine(root, store=True)  # the stored findings reflect the fix
    return results
