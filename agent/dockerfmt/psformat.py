"""Docker's shapes for `ps`, `top` and `port`: rows, relative times, the PORTS column, tables.

`ps_row(c)` is the dict `ps --format json` prints and `--format` templates see
(Docker's keys: ID, Image, Command, CreatedAt, RunningFor, Ports, State, Status,
Names, Networks, ...); `human_duration` is Docker's (go-units HumanDuration);
`display_ports` is Docker's PORTS column (`0.0.0.0:8088->80/tcp`, ranges grouped);
`port_lines` what `docker port` prints from an inspect document's ports;
`tabwrite` aligns cells like Go's tabwriter as the docker CLI sets it up.
"""

import calendar
import re
import time

from ..errors import NotFoundError, UsageError
from ..runtime.volumes import record_mounts
from . import gotemplate

# ps --format placeholders -> table headers (docker/cli formatter)
PS_HEADERS = {
    "ID": "CONTAINER ID",
    "Image": "IMAGE",
    "Command": "COMMAND",
    "CreatedAt": "CREATED AT",
    "RunningFor": "CREATED",
    "Ports": "PORTS",
    "State": "STATE",
    "Status": "STATUS",
    "Size": "SIZE",
    "Names": "NAMES",
    "Labels": "LABELS",
    "Mounts": "MOUNTS",
    "Networks": "NETWORKS",
    "LocalVolumes": "LOCAL VOLUMES",
    "Pid": "PID",
    "IPAddress": "IP ADDRESS",
    "ExitCode": "EXIT CODE",
    "Id": "CONTAINER ID",
}
PS_DEFAULT = (
    "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t{{.Ports}}\t{{.Names}}"
)


def human_duration(seconds: float) -> str:
    """Docker's HumanDuration: 'Less than a second', '5 seconds', 'About a minute', ..."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def parse_time(rfc3339: str):
    """Seconds since the epoch of an RFC 3339 UTC time ('...Z'), or None."""
    try:
        whole = calendar.timegm(time.strptime(rfc3339[:19], "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, TypeError):
        return None
    frac = rfc3339[19:].rstrip("Z")
    return whole + (float("0" + frac) if frac.startswith(".") else 0.0)


def since(rfc3339: str, now=None) -> str:
    """human_duration from `rfc3339` to now."""
    then = parse_time(rfc3339)
    if then is None:
        return "?"
    return human_duration(max(0.0, (now or time.time()) - then))


def display_ports(ports) -> str:
    """Docker's PORTS column from [{"IP", "PrivatePort", "PublicPort", "Type"}] (api
    types.Port): published ports as `0.0.0.0:8088->80/tcp`, exposed ones as `80/tcp`,
    consecutive ones grouped as `8000-8001->80-81`."""
    ports = sorted(
        ports, key=lambda p: (p["PrivatePort"], p.get("IP", ""), p.get("PublicPort", 0), p["Type"])
    )
    groups: dict[str, list[int]] = {}
    order: list[str] = []
    result: list[str] = []
    mappings: list[str] = []
    for p in ports:
        current = p["PrivatePort"]
        key = p["Type"]
        if p.get("IP"):
            if p.get("PublicPort") != current:
                mappings.append(f"{_host(p['IP'])}:{p['PublicPort']}->{current}/{p['Type']}")
                continue
            key = f"{p['IP']}/{p['Type']}"
        group = groups.get(key)
        if group is None:
            groups[key] = [current, current]
            order.append(key)
        elif current == group[1] + 1:
            group[1] = current
        else:
            result.append(_form_group(key, *group))
            groups[key] = [current, current]
    for key in order:
        result.append(_form_group(key, *groups[key]))
    return ", ".join(result + mappings)


def _host(ip: str) -> str:
    """An address as the host part of `host:port` (IPv6 in brackets, as Go's)."""
    return f"[{ip}]" if ":" in ip else ip


def _host_port(binding) -> str:
    """Go's net.JoinHostPort of a binding ({"HostIp", "HostPort"})."""
    return f"{_host(binding.get('HostIp') or '')}:{binding.get('HostPort') or ''}"


def _natural(text: str) -> list:
    """A sort key that orders digit runs by value (`9002` before `10000`)."""
    return [int(s) if i % 2 else s for i, s in enumerate(re.split(r"(\d+)", text))]


def port_lines(ports, name: str, private: str | None = None) -> list[str]:
    """`docker port NAME [PRIVATE]`'s lines from NetworkSettings.Ports ({"80/tcp": [{"HostIp",
    "HostPort"}, ...] or None}): every binding as `80/tcp -> 0.0.0.0:8088`, or with
    `private` (`80`, `80/udp`; tcp when no protocol is given) that port's host addresses.
    NotFoundError when `private` is not published, UsageError when it is no port."""
    if private is None:
        out = [
            f"{key} -> {_host_port(b)}" for key, binds in (ports or {}).items() for b in binds or []
        ]
    else:
        port, _, proto = private.partition("/")
        if not port.isdigit() or int(port) > 65535:
            raise UsageError(f"invalid port ({port})")
        key = f"{int(port)}/{proto or 'tcp'}"
        binds = (ports or {}).get(key)
        if not binds:  # (Docker 20.10 names the port with its protocol, as here)
            raise NotFoundError(f"No public port '{key}' published for {name}")
        out = [_host_port(b) for b in binds]
    return sorted(out, key=_natural)


def _form_group(key, first, last):
    ip, _, kind = key.rpartition("/")
    group = str(first) if first == last else f"{first}-{last}"
    if ip:
        group = f"{_host(ip)}:{group}->{group}"
    return f"{group}/{kind}"


def container_ports(c):
    """The api types.Port list of container `c`: published ports while it runs, and
    the image's exposed ports."""
    out, seen = [], set()
    if c.status == "running":
        for p in (c.network or {}).get("ports") or []:
            try:
                priv, pub = int(p.get("container_port")), int(p.get("host_port"))
            except (TypeError, ValueError):
                continue
            proto = p.get("proto", "tcp")
            out.append(
                {
                    "IP": p.get("host_ip") or "0.0.0.0",
                    "PrivatePort": priv,
                    "PublicPort": pub,
                    "Type": proto,
                }
            )
            seen.add((priv, proto))
    for key in (c.image_config or {}).get("ExposedPorts") or {}:
        port, _, proto = str(key).partition("/")
        if port.isdigit() and (int(port), proto or "tcp") not in seen:
            out.append(
                {"IP": "", "PrivatePort": int(port), "PublicPort": 0, "Type": proto or "tcp"}
            )
    return out


def docker_time(rfc3339):
    """'2026-01-01T10:00:00.1Z' -> '2026-01-01 10:00:00 +0000 UTC' (Go's Time.String)."""
    return (rfc3339[:19].replace("T", " ") + " +0000 UTC") if rfc3339 else ""


def docker_state(c) -> str:
    """Docker's state word for a container record (a damaged one is Docker's `dead`)."""
    if getattr(c, "restarting", False):
        return "restarting"
    if c.status == "damaged":
        return "dead"
    return "paused" if getattr(c, "paused", False) else c.status


def ps_row(c, now=None) -> dict:
    """What `ps` shows of container `c` (a runtime.state.Container), Docker's keys."""
    argv = c.process.get("argv") or []
    # Docker's: the path, then the arguments, one with a space in single quotes
    cmd = " ".join([*argv[:1], *(f"'{a}'" if " " in a else a for a in argv[1:])])
    state = "damaged" if c.status == "damaged" else docker_state(c)  # (says more than dead)
    if c.status == "running":
        status = f"Up {since(c.started_at, now)}" + (" (Paused)" if state == "paused" else "")
    elif getattr(c, "restarting", False):
        status = f"Restarting ({c.exit_code}) {since(c.finished_at, now)} ago"
    elif c.status == "exited":
        status = f"Exited ({c.exit_code}) {since(c.finished_at, now)} ago" + (
            " (OOMKilled)" if c.oom_killed else ""
        )
    elif c.status == "damaged":
        status = "Damaged"
    else:
        status = "Created"
    mounts = record_mounts(c)
    row = {
        "Command": f'"{cmd}"',
        "CreatedAt": docker_time(c.created),
        "ID": c.short_id,
        "Image": c.image,
        "Labels": "",
        "LocalVolumes": str(sum(m.get("type") == "volume" for m in mounts)),
        "Mounts": ",".join(_ellipsis(m.get("name") or m["source"], 15) for m in mounts),
        "Names": c.name,
        "Networks": (c.network or {}).get("mode") or c.spec.network_mode or "",
        "Ports": display_ports(container_ports(c)),
        "RunningFor": f"{since(c.created, now)} ago",
        "Size": "0B",
        "State": state,
        "Status": status,
        # pyinspect's own (scripts read them)
        "Id": c.id,
        "ExitCode": c.exit_code,
        "Pid": c.pid,
        "IPAddress": (c.network or {}).get("ip", ""),
    }
    if c.status == "damaged":
        row["Error"] = c.error  # what is wrong with the record (`inspect` says it too)
    return row


def _ellipsis(text: str, width: int) -> str:
    """Docker's stringutils.Ellipsis: cut to `width` characters, the last one "…"."""
    return text if len(text) <= width else text[: width - 1] + "…"


def truncate_command(row, width=20):
    """The COMMAND cell as the default table shows it (Docker: quoted, 20 runes + …)."""
    cmd = row["Command"][1:-1]
    if len(cmd) > width:
        cmd = cmd[: width - 1] + "…"
    return {**row, "Command": f'"{cmd}"'}


def tabwrite(lines, minwidth=10, padding=3):
    """Align tab-separated `lines` like Go's tabwriter (docker/cli: minwidth 10 for
    `ps`, 20 for `top`; padding 3; the last cell of a line is not padded)."""
    rows = [line.split("\t") for line in lines]
    ncols = max((len(r) for r in rows), default=0)
    widths = []
    for i in range(ncols - 1):
        cells = [len(r[i]) for r in rows if len(r) > i + 1]
        widths.append(max(minwidth, max(cells, default=0) + padding))
    out: list[str] = []
    for r in rows:
        padded = [cell.ljust(widths[i]) if i < len(r) - 1 else cell for i, cell in enumerate(r)]
        out.append("".join(padded).rstrip(" ") if len(r) > 1 else "".join(padded))
    return out


def format_ps(rows, fmt=None, size=False):
    """The lines `ps --format FMT` prints for `rows` (ps_row dicts): FMT is `table`
    (default; `size`: with Docker's SIZE column last), `json`, `table TEMPLATE` or a Go
    template. TemplateError when the template is invalid."""
    if fmt in (None, "", "table"):
        rows = [truncate_command(r) for r in rows]
    return format_rows(rows, fmt, PS_DEFAULT + ("\t{{.Size}}" if size else ""), PS_HEADERS)


def wants_size(fmt: str | None, size: bool) -> bool:
    """`ps -s`, or a template naming .Size: Docker's CLI computes the sizes then too."""
    return size or ".Size" in (fmt or "")


def ps_rows(containers, sizes: dict | None = None, now=None) -> list[dict]:
    """`ps` rows of `containers`; with `sizes` ({id: (writable, virtual)}), their SIZE."""
    rows = [ps_row(c, now) for c in containers]
    if sizes is not None:
        rows = [{**r, "Size": ps_size(*sizes[c.id])} for r, c in zip(rows, containers, strict=True)]
    return rows


def ps_size(writable: int, virtual: int) -> str:
    """Docker's ps SIZE: the writable layer, then with the image's layers."""
    from ..units import decimal_size

    return f"{decimal_size(writable)} (virtual {decimal_size(virtual)})"


HISTORY_HEADERS = {
    "ID": "IMAGE",
    "CreatedSince": "CREATED",
    "CreatedAt": "CREATED AT",
    "CreatedBy": "CREATED BY",
    "Size": "SIZE",
    "Comment": "COMMENT",
}
HISTORY_DEFAULT = "table {{.ID}}\t{{.CreatedSince}}\t{{.CreatedBy}}\t{{.Size}}\t{{.Comment}}"


SEARCH_DEFAULT = (
    "table {{.Name}}\t{{.Description}}\t{{.StarCount}}\t{{.IsOfficial}}\t{{.IsAutomated}}"
)
SEARCH_HEADERS = {
    "Name": "NAME",
    "Description": "DESCRIPTION",
    "StarCount": "STARS",
    "IsOfficial": "OFFICIAL",
    "IsAutomated": "AUTOMATED",
}


def search_row(result, trunc=True) -> dict:
    """What `search` shows of one repository (runtime.registry.search.SearchResult),
    Docker's keys: the description on one line, cut at 45 columns unless `trunc` is off;
    [OK] for true."""
    desc = " ".join(result.description.split())
    if trunc and len(desc) > 45:
        desc = desc[:44] + "\u2026"
    return {
        "Name": result.name,
        "Description": desc,
        "StarCount": str(result.stars),
        "IsOfficial": "[OK]" if result.official else "",
        "IsAutomated": "[OK]" if result.automated else "",
    }


def volume_row(vol) -> dict:
    """`docker volume ls --format`'s fields of a runtime.volumes.Volume."""
    return {
        "Name": vol.name,
        "Driver": "local",
        "Mountpoint": vol.mountpoint,
        "Labels": ",".join(f"{k}={v}" for k, v in vol.labels.items()),
        "Scope": "local",
        "Links": "N/A",
        "Size": "N/A",
    }


def history_row(entry, trunc=True, human=True, now=None) -> dict:
    """What `history` shows of one step (runtime.images.HistoryEntry), Docker's keys:
    a 12-digit ID and CREATED BY cut at 45 columns unless `trunc` is off; sizes and
    times for people unless `human` is off (then bytes and RFC 3339)."""
    from datetime import datetime

    from ..units import decimal_size

    ident = entry.image_id
    if trunc and ident.startswith("sha256:"):
        ident = ident[7:19]
    by = entry.created_by.replace("\t", " ")
    if trunc and len(by) > 45:
        by = by[:44] + "\u2026"
    then = parse_time(entry.created)
    at = ""
    if then is not None:
        at = datetime.fromtimestamp(int(then)).astimezone().isoformat(timespec="seconds")
        at = at.replace("+00:00", "Z")
    if not human:
        created = at or "N/A"
    else:
        created = f"{since(entry.created, now)} ago" if then is not None else "N/A"
    return {
        "ID": ident,
        "CreatedSince": created,
        "CreatedAt": at,
        "CreatedBy": by,
        "Size": decimal_size(entry.size) if human else str(entry.size),
        "Comment": entry.comment,
    }


def format_object(fmt, data) -> str:
    """What `--format FMT` prints for one object (`version`, `system df -v`): `json`, or
    a Go template (\\t and \\n as written in a shell, as docker/cli takes them)."""
    import json

    if fmt == "json":
        return json.dumps(data)
    return gotemplate.render(fmt.replace("\\t", "\t").replace("\\n", "\n"), data)


def format_rows(rows, fmt, default, headers):
    """The lines a listing prints for `rows` with `--format FMT`: `table` (`default`),
    `json`, `table TEMPLATE` (its header from `headers`) or a Go template.
    TemplateError when the template is invalid."""
    import json

    if fmt:  # docker/cli takes \t and \n as written in a shell
        fmt = fmt.replace("\\t", "\t").replace("\\n", "\n")
    if fmt in (None, "", "table"):
        fmt = default
    if fmt == "json":
        return [json.dumps(r) for r in rows]
    if fmt.startswith("table"):
        body = fmt[len("table") :].lstrip(" ")
        tmpl = gotemplate.parse(body)
        header = gotemplate.render(
            body,
            {k: headers.get(k, k.upper()) for k in set(headers) | set(rows[0] if rows else {})},
        )
        lines = [header] + [tmpl.render(r) for r in rows]
        return tabwrite("\n".join(lines).split("\n"))
    tmpl = gotemplate.parse(fmt)
    return [tmpl.render(r) for r in rows]
