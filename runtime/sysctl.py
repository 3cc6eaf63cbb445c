"""Sysctls: the one reader of /proc/sys in pyinspect, and the bridge settings it changes.

`read(key)` / `path(key)` are what doctor, `pyinspect info` and the runtime use to read
a sysctl. The rest sets the sysctls bridge networking needs, only when needed, and
reverts them only if pyinspect set them.

All keys here are per network namespace (net.*), so they act on the namespace
of the calling process. Each change is recorded in the network state
(`state["sysctls"][key] = {"before", "set"}`); `revert()` restores `before`
only while the value is still the one pyinspect wrote, so a later change by
someone else is left alone.
"""

from pathlib import Path

from ..errors import UnavailableError

IP_FORWARD = "net.ipv4.ip_forward"
IP6_FORWARD = "net.ipv6.conf.all.forwarding"
BRIDGE_NF_IPTABLES = "net.bridge.bridge-nf-call-iptables"
BRIDGE_NF_IP6TABLES = "net.bridge.bridge-nf-call-ip6tables"
REPORTED = (IP_FORWARD, IP6_FORWARD, BRIDGE_NF_IPTABLES, BRIDGE_NF_IP6TABLES)


# keys whose fourth part is an interface name, which may itself contain dots (eth0.100)
_PER_INTERFACE = (
    ("net", "ipv4", "conf"),
    ("net", "ipv6", "conf"),
    ("net", "ipv4", "neigh"),
    ("net", "ipv6", "neigh"),
)


def path(key: str) -> Path:
    """/proc/sys path of a dotted key; in `net.ipv{4,6}.{conf,neigh}.<if>.<name>` the
    interface name keeps its dots."""
    parts = key.split(".")
    if tuple(parts[:3]) in _PER_INTERFACE and len(parts) > 5:
        parts = parts[:3] + [".".join(parts[3:-1]), parts[-1]]
    return Path("/proc/sys", *parts)


def read(key: str) -> str | None:
    """The current value as text in the calling thread's network namespace, or None when
    the key does not exist here."""
    try:
        return path(key).read_text().strip()
    except OSError:
        return None


def write(key: str, value: object) -> None:
    try:
        path(key).write_text(f"{value}\n")
    except OSError as exc:
        raise UnavailableError(
            f"cannot set {key}={value}: {exc.strerror}",
            hint="pyinspect needs root for bridge networking",
        ) from None


def ensure(state: dict, key: str, value: object, required: bool = True) -> bool:
    """Set key=value if it differs, and record the change in `state`. Returns True if it is set.

    A missing key (e.g. br_netfilter not loaded) raises UnavailableError when
    `required`, else returns False.
    """
    value = str(value)
    current = read(key)
    if current is None:
        if required:
            raise UnavailableError(f"cannot set {key}: no such sysctl in this kernel")
        return False
    if current != value:
        write(key, value)
        state.setdefault("sysctls", {}).setdefault(key, {"before": current, "set": value})
    return True


def revert(state: dict) -> None:
    """Restore every sysctl pyinspect changed, unless someone changed it again since."""
    for key, rec in sorted(state.get("sysctls", {}).items()):
        if read(key) == rec["set"]:
            try:
                write(key, rec["before"])
            except UnavailableError:
                continue
    state["sysctls"] = {}


def report(states: tuple | list = ()) -> list[dict]:
    """For `pyinspect info`: [{"key", "value", "changed_by_pyinspect", "before"}] in this netns."""
    changed = {}
    for state in states:
        changed.update(state.get("sysctls", {}))
    return [
        {
            "key": key,
            "value": read(key),
            "changed_by_pyinspect": key in changed,
            "before": changed.get(key, {}).get("before"),
        }
        for key in REPORTED
    ]
