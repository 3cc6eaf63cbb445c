"""Published ports: parse `-p`/`-P`, detect conflicts, pick free host ports.

A binding is a dict `{"host_ip", "host_port", "container_port", "proto"}`
(the shape stored in a container's `network["ports"]`). `host_port` 0 means
"pick one" until `assign()` fills it in. Conflicts are ports already published
by pyinspect and ports bound by a process in the current (host) network
namespace, read from /proc/net/{tcp,tcp6,udp,udp6}.
"""

import errno
import ipaddress
import socket

from ..errors import ConflictError, UsageError

PROTOS = ("tcp", "udp")
ANY = "0.0.0.0"


def _port(text, raw, what):
    try:
        value = int(text)
    except ValueError:
        raise UsageError(
            f"invalid port mapping {raw!r}: {what} port {text!r} is not a number"
        ) from None
    if not 1 <= value <= 65535:
        raise UsageError(
            f"invalid port mapping {raw!r}: {what} port {value} is out of range 1-65535"
        )
    return value


def _port_range(text, raw, what):
    """'80' -> [80]; '8000-8002' -> [8000, 8001, 8002]."""
    if "-" in text:
        lo, _, hi = text.partition("-")
        lo, hi = _port(lo, raw, what), _port(hi, raw, what)
        if hi < lo:
            raise UsageError(f"invalid port mapping {raw!r}: {what} range {text} is reversed")
        return list(range(lo, hi + 1))
    return [_port(text, raw, what)]


def parse(raw):
    """Parse one `-p` value `[IP:][HOST:]CTR[/tcp|udp]` into a list of bindings."""
    if not isinstance(raw, str) or not raw.strip():
        raise UsageError(f"invalid port mapping {raw!r}: empty")
    text = raw.strip()
    proto = "tcp"
    if "/" in text:
        text, _, proto = text.rpartition("/")
        proto = proto.lower()
        if proto not in PROTOS:
            raise UsageError(f"invalid port mapping {raw!r}: protocol {proto!r} is not tcp or udp")
    if text.startswith("[") or text.count(":") > 2:
        raise UsageError(f"invalid port mapping {raw!r}: IPv6 host addresses are not supported")
    parts = text.split(":")
    host_ip, host = ANY, ""
    if len(parts) == 1:
        ctr = parts[0]
    elif len(parts) == 2:
        host, ctr = parts
    else:
        host_ip, host, ctr = parts
        host_ip = host_ip or ANY
        try:
            ipaddress.IPv4Address(host_ip)
        except ValueError:
            raise UsageError(
                f"invalid port mapping {raw!r}: {host_ip!r} is not an IPv4 address"
            ) from None
    if not ctr:
        raise UsageError(f"invalid port mapping {raw!r}: no container port")
    ctr_ports = _port_range(ctr, raw, "container")
    host_ports = _port_range(host, raw, "host") if host else [0] * len(ctr_ports)
    if len(host_ports) != len(ctr_ports):
        raise UsageError(
            f"invalid port mapping {raw!r}: host and container ranges differ in length"
        )
    return [
        {"host_ip": host_ip, "host_port": h, "container_port": c, "proto": proto}
        for h, c in zip(host_ports, ctr_ports, strict=True)
    ]


def exposed(image_config):
    """The image's `ExposedPorts` ({"80/tcp": {}}) as `-P` bindings with host_port 0."""
    out = []
    cfg = image_config or {}
    cfg = cfg.get("config", cfg) if isinstance(cfg.get("config"), dict) else cfg
    for key in sorted(cfg.get("ExposedPorts") or {}):
        port, _, proto = str(key).partition("/")
        out.extend(parse(f"{port}/{proto or 'tcp'}"))
    return out


def requested(publish, publish_all=False, image_config=None):
    """All bindings a container asks for: each `-p`, plus the image's EXPOSE ports for `-P`."""
    out = []
    for raw in publish or ():
        out.extend(parse(raw))
    if publish_all:
        have = {(b["container_port"], b["proto"]) for b in out}
        out.extend(
            b for b in exposed(image_config) if (b["container_port"], b["proto"]) not in have
        )
    return out


def overlaps(a, b):
    """True when two bindings would catch the same packets."""
    return (
        a["proto"] == b["proto"]
        and a["host_port"] == b["host_port"]
        and a["host_port"]
        and (a["host_ip"] == b["host_ip"] or ANY in (a["host_ip"], b["host_ip"]))
    )


def _hex_ip(text):
    """An address from /proc/net/* ('0100007F' or 32 hex chars for IPv6) as text."""
    raw = bytes.fromhex(text)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    addr = ipaddress.IPv6Address(words)
    if addr.ipv4_mapped:
        return str(addr.ipv4_mapped)
    return ANY if addr.is_unspecified else str(addr)


def host_bound():
    """Sockets bound in this network namespace: [(proto, ip, port)], TCP listeners and UDP."""
    found = []
    for proto, name, state in (
        ("tcp", "tcp", "0A"),
        ("tcp", "tcp6", "0A"),
        ("udp", "udp", None),
        ("udp", "udp6", None),
    ):
        try:
            with open(f"/proc/net/{name}") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or (state and fields[3] != state):
                continue
            ip, _, port = fields[1].partition(":")
            found.append((proto, _hex_ip(ip), int(port, 16)))
    return found


def check(bindings, published=(), bound=None):
    """Raise ConflictError if a binding clashes with another one, with `published` or a host
    socket."""
    bound = host_bound() if bound is None else bound
    for i, b in enumerate(bindings):
        if not b["host_port"]:
            continue
        desc = f"{b['host_ip']}:{b['host_port']}/{b['proto']}"
        for other in bindings[:i]:
            if overlaps(b, other):
                raise ConflictError(f"cannot publish {desc}: given twice")
        for other in published:
            if overlaps(b, other):
                who = other.get("name") or other.get("id", "")[:12] or "another container"
                raise ConflictError(
                    f"cannot publish {desc}: already published by container {who}",
                    hint="choose another host port",
                )
        for proto, ip, port in bound:
            if (
                proto == b["proto"]
                and port == b["host_port"]
                and (ANY in (ip, b["host_ip"]) or ip == b["host_ip"])
            ):
                raise ConflictError(
                    f"cannot publish {desc}: port is already bound by a host process ({ip}:{port})",
                    hint="choose another host port",
                )


def check_local(bindings):
    """Raise UsageError if a binding names a host IP that is not an address of this netns."""
    for ip in sorted({b["host_ip"] for b in bindings if b["host_ip"] not in (ANY, "", None)}):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((ip, 0))
            except OSError as exc:
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise UsageError(
                        f"cannot publish on {ip}: not an address of this host",
                        hint="use one of the host's addresses, or none",
                    ) from None
                raise


def local_port_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def assign(bindings, published=(), bound=None):
    """Fill host_port 0 with the lowest free port of ip_local_port_range, then check all."""
    bound = host_bound() if bound is None else bound
    out = [dict(b) for b in bindings]
    lo, hi = local_port_range()
    for i, b in enumerate(out):
        if b["host_port"]:
            continue
        taken = list(published) + [x for x in out if x["host_port"]]
        for port in range(lo, hi + 1):
            cand = dict(b, host_port=port)
            if any(overlaps(cand, t) for t in taken):
                continue
            if any(p == cand["proto"] and q == port for p, _, q in bound):
                continue
            out[i] = cand
            break
        else:
            raise ConflictError(
                f"cannot publish container port {b['container_port']}/{b['proto']}: "
                f"no free host port in {lo}-{hi}"
            )
    check(out, published, bound)
    return out
