"""What this host offers pyinspect: kernel, cgroups, iptables backends, sysctls, tracefs, BTF, eBPF.

`collect()` reads only (files under /proc and /sys, `iptables-*-save`, `nft list`),
changes nothing, and reports a missing piece as a value with a reason rather than
failing. Sysctls and rule counts are those of the network namespace it runs in.
"""

import importlib
import os
import shutil

from ..probes import iptsave

SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv6.conf.all.forwarding",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
    "net.bridge.bridge-nf-call-arptables",
    "net.netfilter.nf_log_all_netns",
)
BTF_PATH = "/sys/kernel/btf/vmlinux"
TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


def _mounts() -> list[dict[str, str]]:
    out = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                pre, _, post = line.partition(" - ")
                p, q = pre.split(), post.split()
                out.append({"mnt": p[4], "fstype": q[0], "opts": q[2] if len(q) > 2 else ""})
    except OSError:
        pass
    return out


def kernel() -> dict[str, str]:
    u = os.uname()
    return {"release": u.release, "version": u.version, "machine": u.machine}


def cgroups(mounts: list[dict[str, str]] | None = None) -> dict:
    """Layout v1 / hybrid / v2, and where each hierarchy is mounted."""
    mounts = _mounts() if mounts is None else mounts
    v2 = [m["mnt"] for m in mounts if m["fstype"] == "cgroup2"]
    v1 = {}
    known = set()
    try:
        with open("/proc/cgroups") as f:
            known = {ln.split()[0] for ln in f if ln.strip() and not ln.startswith("#")}
    except OSError:
        pass
    for m in mounts:
        if m["fstype"] == "cgroup":
            ctrls = [o for o in m["opts"].split(",") if o in known or o.startswith("name=")]
            v1[m["mnt"]] = ctrls
    if "/sys/fs/cgroup" in v2:
        layout = "v2"
    elif v1 and v2:
        layout = "hybrid"
    elif v1:
        layout = "v1"
    elif v2:
        layout = "v2"
    else:
        layout = "none"
    v2_controllers = []
    for mnt in v2[:1]:
        try:
            with open(os.path.join(mnt, "cgroup.controllers")) as f:
                v2_controllers = f.read().split()
        except OSError:
            pass
    return {
        "layout": layout,
        "v2_mounts": v2,
        "v2_controllers": v2_controllers,
        "v1_hierarchies": v1,
    }


def iptables() -> list[dict]:
    """Each backend present (legacy x_tables, iptables-nft, IPv6 twins, native nft) and its
    rule count (the nft count includes rules written through iptables-nft)."""
    out = []
    for name, tool, probe in (
        ("iptables-legacy", "iptables-legacy-save", "/proc/net/ip_tables_names"),
        ("iptables-nft", "iptables-nft-save", None),
        ("ip6tables-legacy", "ip6tables-legacy-save", "/proc/net/ip6_tables_names"),
        ("ip6tables-nft", "ip6tables-nft-save", None),
    ):
        path = shutil.which(tool)
        if not path:
            out.append({"backend": name, "present": False, "reason": f"{tool} not installed"})
            continue
        if probe is not None and not os.path.exists(probe):
            out.append(
                {
                    "backend": name,
                    "present": False,
                    "reason": f"{probe} missing (x_tables not loaded)",
                }
            )
            continue
        text, err = iptsave.run_save(tool, counters=False, timeout=10)
        if text is None:
            out.append({"backend": name, "present": False, "reason": err})
            continue
        rules, chains, tables = iptsave.counts(iptsave.parse_save(text, name))
        out.append(
            {
                "backend": name,
                "present": True,
                "rules": rules,
                "chains": chains,
                "tables": tables,
                "tool": tool.replace("-save", ""),
            }
        )
    items, err = iptsave.nft_ruleset(timeout=10)
    if items is None:
        out.append({"backend": "nftables", "present": False, "reason": err})
    else:
        out.append(
            {
                "backend": "nftables",
                "present": True,
                "rules": sum(1 for i in items if "rule" in i),
                "tables": sorted(
                    f"{i['table']['family']} {i['table']['name']}" for i in items if "table" in i
                ),
                "tool": "nft",
            }
        )
    return out


def iptables_writer(configured: str | None = None) -> dict:
    """The backend pyinspect writes its rules to here and what writes them (python-iptables
    or a restore tool), with a one-line note when legacy falls back from python-iptables
    and one when the nftables tables and chains pyinspect makes cannot be tidied."""
    from ..runtime import iptables as rt

    try:
        name = rt.backend(configured)
    except Exception as exc:  # noqa: BLE001 UsageError: a bad PYINSPECT_IPTABLES
        return {"backend": None, "writer": None, "note": str(exc)}
    from ..runtime import nftmade

    return {
        "backend": name,
        "writer": rt.writer(name),
        "note": rt.writer_note(name),
        "tidy_note": nftmade.untidy_reason() if name == "nft" else None,
    }


def sysctls() -> dict[str, str | None]:
    """{key: value} of SYSCTLS; None when not present (module not loaded, older kernel)."""
    from ..runtime import sysctl

    return {key: sysctl.read(key) for key in SYSCTLS}


def tracefs(mounts: list[dict[str, str]] | None = None) -> dict:
    mounts = _mounts() if mounts is None else mounts
    where = [m["mnt"] for m in mounts if m["fstype"] == "tracefs"]
    return {
        "mounted": bool(where),
        "mounts": where,
        "hint": None if where else "mount -t tracefs nodev /sys/kernel/tracing",
    }


def btf() -> dict:
    try:
        size = os.stat(BTF_PATH).st_size
    except OSError:
        return {"present": False, "path": BTF_PATH, "size": 0}
    return {"present": True, "path": BTF_PATH, "size": size}


def ebpf_hooks() -> list[dict] | None:
    """[{name, available, reason}] from probes.capabilities.detect(), or None if missing."""
    try:
        # (through sys.modules, where a test can take it away)
        capabilities = importlib.import_module("..probes.capabilities", __package__)
    except ImportError:
        return None
    try:
        return [
            {"name": h.name, "available": bool(h.available), "reason": h.reason}
            for h in capabilities.detect()
        ]
    except Exception as exc:  # noqa: BLE001 - detection failed: say so, keep the rest
        return [
            {
                "name": "detect",
                "available": False,
                "reason": f"capability detection failed: {type(exc).__name__}: {exc}",
            }
        ]


def probe_loaders() -> list[dict] | None:
    """[{probe, loader, object}] from probes.capabilities.probe_loaders(), or None."""
    try:
        # (through sys.modules, where a test can take it away)
        capabilities = importlib.import_module("..probes.capabilities", __package__)
    except ImportError:
        return None
    try:
        return capabilities.probe_loaders()
    except Exception as exc:  # noqa: BLE001 - keep the rest of info; say what went wrong
        return [
            {
                "probe": "all",
                "loader": "?",
                "object": f"loader detection failed: {type(exc).__name__}: {exc}",
            }
        ]


def netns_inode() -> int | None:
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return None


def collect(probe_ebpf: bool = True) -> dict:
    """Everything `pyinspect info` shows, as one dict."""
    mounts = _mounts()
    return {
        "kernel": kernel(),
        "cgroups": cgroups(mounts),
        "iptables": iptables(),
        "iptables_writer": iptables_writer(),
        "sysctls": sysctls(),
        "netns": netns_inode(),
        "tracefs": tracefs(mounts),
        "btf": btf(),
        "ebpf": ebpf_hooks() if probe_ebpf else None,
        "loaders": probe_loaders() if probe_ebpf else None,
    }
