"""A snapshot of the kernel objects tests can leak, for the suite-wide leftover check."""

import os
import re
import subprocess


def _run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _iptables_rules():
    """Rules and user chains of the tables that exist (`-save` reads them without creating
    a table, and with it a netfilter hook, as `-t mangle -S` would)."""
    rules = set()
    for tool in ("iptables-legacy", "iptables-nft"):
        table = None
        for line in _run(f"{tool}-save").splitlines():
            if line.startswith("*"):
                table = line[1:].strip()
            elif line.startswith("-A "):
                rules.add(f"{tool} -t {table} {line}")
            elif line.startswith(":") and line.split()[1:2] == ["-"]:
                rules.add(f"{tool} -t {table} -N {line[1:].split()[0]}")
    return rules


def _cgroups():
    found = set()
    base = "/sys/fs/cgroup"
    for dirpath, dirnames, _ in os.walk(base):
        for d in dirnames:
            if "pyinspect" in d or d.startswith("pi-test"):
                found.add(os.path.join(dirpath, d))
        if dirpath.count("/") > 6:
            dirnames[:] = []
    return found


def _mounts():
    out = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mnt, fstype = fields[4], line.split(" - ")[1].split()[0]
            if (
                fstype == "overlay"
                or "pyinspect" in mnt
                or "pi-test" in mnt
                or mnt.startswith("/tmp/pytest")
            ):
                out.add(f"{fstype} {mnt}")
            if mnt.startswith("/run/netns/") or mnt.startswith("/var/run/netns/"):
                out.add(f"{fstype} {mnt}")
    return out


def _links():
    out = set()
    for line in _run("ip", "-o", "link", "show").splitlines():
        m = re.match(r"\d+: ([^:@]+)", line)
        if m:
            out.add(m.group(1))
    return out


def _tc_programs():
    """tc filters and tcx programs on this namespace's interfaces (pyinspect's or any)."""
    from pyinspect.probes import packets

    out = set()
    for line in _run("ip", "-o", "link", "show").splitlines():
        m = re.match(r"(\d+): ([^:@]+)", line)
        if not m:
            continue
        idx, name = int(m.group(1)), m.group(2)
        for side in ("ingress", "egress"):
            for pid in packets.tcx_program_ids(idx, side):
                out.add(f"{name} {side} tcx prog {pid}")
        if "pyinspect-trace" in _run("tc", "filter", "show", "dev", name, "ingress") + _run(
            "tc", "filter", "show", "dev", name, "egress"
        ):
            out.add(f"{name} tc filter pyinspect-trace")
    return out


# every process the suite starts inherits this (conftest sets it): one still alive at
# the end was left behind, whatever it runs (a child reparented to init included)
RUN_MARK = "PI_TEST_RUN"


def _processes():
    """Processes whose command line mentions a test state root or a pyinspect shim, and
    processes of this run (RUN_MARK in their environment) other than this one."""
    out = set()
    me = os.getpid()
    mark = f"{RUN_MARK}={os.environ.get(RUN_MARK, '')}".encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/environ", "rb") as f:
                ours = os.environ.get(RUN_MARK) and mark in f.read().split(b"\0")
        except OSError:
            continue
        if "pyinspect-shim" in cmd or "pi-test" in cmd or ours:
            out.add(f"{pid} {cmd.strip()[:120]}")
    return out


def snapshot():
    """What exists now: netns, links, rules, cgroups, mounts, stray processes."""
    return {
        "netns": set(_run("ip", "netns", "list").split()),
        "links": _links(),
        "iptables": _iptables_rules(),
        "cgroups": _cgroups(),
        "mounts": _mounts(),
        "processes": _processes(),
        "tc": _tc_programs(),
    }


def leftovers(before, after):
    """Objects present in `after` that were not in `before`, by kind (empty kinds dropped)."""
    out = {}
    for kind, items in after.items():
        extra = items - before.get(kind, set())
        if kind == "netns":
            extra = {n for n in extra if n not in ("(id:",) and not n.startswith("(")}
        if extra:
            out[kind] = sorted(extra)
    return out
