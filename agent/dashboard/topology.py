"""The topology picture, drawn as SVG from the veth map and the containers' details.

One band per network namespace that holds a bridge or the host side of a container's
veth (the host, or a namespace playing it): its uplinks, each bridge, every bridge port
(the host-side veth) and the container at its other end with its IPs and published
ports (host:port -> container:port). Then every other namespace pyinspect can see, with
its interfaces. Each interface shows its packet and byte rates when the caller computed
them (`row["rates"]`: rx_pps, tx_pps, rx_Bps, tx_Bps); colours give its state (down, up
without carrier) and a container with doctor findings; every box links to the container
or interface page.
"""

from html import escape
from urllib.parse import quote

COL_X = (20, 290, 560, 830)
BOX_W = 250
LINE = 13

STYLE = {
    "ok": ('fill="#fff" stroke="#57606a"', ""),
    "down": ('fill="#ffebe9" stroke="#cf222e"', "down"),
    "nocarrier": ('fill="#fff8c5" stroke="#9a6700" stroke-dasharray="4 2"', "no carrier"),
    "finding": ('fill="#fff" stroke="#cf222e" stroke-width="2.5"', "doctor finding"),
}


def _state(r: dict | None) -> str:
    if not r:
        return "ok"
    if not r.get("up"):
        return "down"
    if r.get("carrier") is False and r.get("kind") not in ("loopback", "bridge"):
        return "nocarrier"
    return "ok"


def _rate(r: dict | None) -> str:
    """`rx 1.2kp/s 340kB/s  tx ...` from the caller's rates ('' before a second reading)."""
    rates = (r or {}).get("rates")
    if not rates:
        return ""

    def num(v: float, unit: str) -> str:
        for div, p in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if v >= div:
                return f"{v / div:.1f}{p}{unit}"
        return f"{v:.0f}{unit}"

    return (
        f"rx {num(rates['rx_pps'], 'p/s')} {num(rates['rx_Bps'], 'B/s')}  "
        f"tx {num(rates['tx_pps'], 'p/s')} {num(rates['tx_Bps'], 'B/s')}"
    )


def _box(
    x: float,
    y: float,
    lines: list[str],
    state: str = "ok",
    cls: str = "node",
    href: str | None = None,
    title: str = "",
) -> tuple[str, float]:
    """An SVG box of text lines (the first bold); (markup, height)."""
    h = 8 + LINE * len(lines)
    attrs, label = STYLE[state]
    tip = "; ".join(t for t in (label, title) if t)
    texts = "".join(
        f'<text x="{x + 8}" y="{y + 4 + LINE * (i + 1) - 2}"'
        + (' font-weight="bold"' if i == 0 else ' fill="#57606a"')
        + f">{escape(str(t))}</text>"
        for i, t in enumerate(lines)
        if t is not None
    )
    body = (
        f'<g class="{cls} state-{state}">'
        + (f"<title>{escape(tip)}</title>" if tip else "")
        + f'<rect x="{x}" y="{y}" width="{BOX_W}" height="{h}" rx="5" {attrs}/>{texts}</g>'
    )
    if href:
        body = f'<a href="{escape(href)}">{body}</a>'
    return body, h


def _line(x1: float, y1: float, x2: float, y2: float) -> str:
    return f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#8c959f" stroke-width="1.5"/>'


def _addr(r: dict) -> str:
    addrs = [a for a in r.get("addrs") or [] if ":" not in str(a)]
    return addrs[0] if addrs else ""


def _iface_href(r: dict) -> str:
    return f"/interfaces/{quote(str(r['netns']))}/{quote(r['ifname'])}"


def layout(rows: list[dict], containers: set | None = None) -> list[dict]:
    """Bands of {netns, uplinks, bridges: [{bridge, ports}], routed: [veths]} from map rows:
    namespaces holding a bridge or the host side of a veth whose peer is a container
    (one of the ids `containers`, when given)."""
    by_ns: dict = {}
    for r in rows:
        by_ns.setdefault(r["netns"], []).append(r)
    bands = []
    for ns, links in by_ns.items():
        bridges = [r for r in links if r.get("kind") == "bridge"]
        host_veths = [
            r
            for r in links
            if r.get("kind") == "veth"
            and not r.get("master")
            and r.get("peer_netns") not in (None, ns)
            and r.get("container_name")
            and r.get("container_name") != r.get("netns_owner")
            and (containers is None or r.get("container_id") in containers)
        ]
        if not bridges and not host_veths:
            continue
        enslaved = {r["ifname"] for r in links if r.get("master")}
        taken = {r["ifname"] for r in host_veths}
        uplinks = [
            r
            for r in links
            if r.get("kind") not in ("bridge", "loopback", "ifb")
            and r["ifname"] not in enslaved
            and r["ifname"] not in taken
        ]
        band = {
            "netns": links[0].get("netns_name") or ns,
            "inode": ns,
            "uplinks": uplinks,
            "bridges": [
                {"bridge": br, "ports": [r for r in links if r.get("master") == br["ifname"]]}
                for br in bridges
            ],
            "routed": host_veths,
        }
        bands.append(band)
    return bands


def _container_lines(owner: str, port: dict, peer: dict, info) -> list[str]:
    lines = [f"{owner}/{port.get('peer_ifname')}"]
    addr = _addr(peer) if peer else ""
    lines.append(" ".join(x for x in ((info.runtime if info else ""), addr) if x))
    ip = (info.ips[0] if info and info.ips else addr.split("/")[0]) or "?"
    for p in (info.ports if info else [])[:6]:
        lines.append(f"{p.host_ip or '0.0.0.0'}:{p.host_port} -> {ip}:{p.container_port}/{p.proto}")
    if peer and _rate(peer):
        lines.append(_rate(peer))
    return lines


def render_svg(rows: list[dict], infos=(), flagged: dict | None = None) -> str:
    """An SVG document of every namespace's bridges, veths and containers (see module)."""
    flagged = flagged or {}
    by_id = {i.id: i for i in infos}
    parts: list[str] = []
    y: float = 10
    index = {(r["netns"], r["ifindex"]): r for r in rows}
    drawn_ns: set = set()
    legend = [("ok", "up"), ("down", "down"), ("nocarrier", "no carrier"), ("finding", "finding")]
    for i, (state, label) in enumerate(legend):
        attrs, _ = STYLE[state]
        lx = COL_X[0] + i * 120
        parts.append(
            f'<g class="legend"><rect x="{lx}" y="{y}" width="14" height="10" {attrs}/>'
            f'<text x="{lx + 20}" y="{y + 9}">{escape(label)}</text></g>'
        )
    y += 24
    real = {i.id for i in infos if i.is_container} if infos else None
    for band in layout(rows, real):
        drawn_ns.add(band["inode"])
        parts.append(
            f'<text x="{COL_X[0]}" y="{y + 12}" font-weight="bold">netns '
            f"{escape(str(band['netns']))}</text>"
        )
        y += 22
        top = y
        up_y: float = top
        up_mid = []
        for up in band["uplinks"]:
            box, h = _box(
                COL_X[0],
                up_y,
                [f"{up['ifname']} (uplink)", _addr(up), _rate(up)],
                _state(up),
                "uplink",
                _iface_href(up),
            )
            parts.append(box)
            up_mid.append(up_y + 10)
            up_y += h + 10
        by = top
        groups = [(b["bridge"], b["ports"]) for b in band["bridges"]]
        if band["routed"]:
            groups.append((None, band["routed"]))
        for br, ports in groups:
            bridge_y = by
            if br is not None:
                box, bh = _box(
                    COL_X[1],
                    bridge_y,
                    [f"{br['ifname']} (bridge)", _addr(br), _rate(br)],
                    _state(br),
                    "bridge",
                    _iface_href(br),
                )
            else:
                box, bh = _box(COL_X[1], bridge_y, ["(routed, no bridge)"], "ok", "bridge")
            parts.append(box)
            for m in up_mid:
                parts.append(_line(COL_X[0] + BOX_W, m, COL_X[1], bridge_y + 10))
            py = bridge_y
            for port in ports or []:
                vbox, vh = _box(
                    COL_X[2],
                    py,
                    [port["ifname"], f"ifindex {port['ifindex']}", _rate(port)],
                    _state(port),
                    "veth",
                    _iface_href(port),
                )
                parts.append(vbox)
                parts.append(_line(COL_X[1] + BOX_W, bridge_y + 10, COL_X[2], py + 10))
                ch = 0.0
                if port.get("peer_ifname"):
                    peer = index.get((port.get("peer_netns"), port.get("peer_ifindex"))) or {}
                    owner = (
                        peer.get("container_name")
                        or port.get("peer_netns_name")
                        or port.get("peer_netns")
                        or "?"
                    )
                    cid = peer.get("container_id") or port.get("container_id")
                    info = by_id.get(cid)
                    notes = flagged.get(owner) or (flagged.get(cid) if cid else None)
                    state = "finding" if notes else _state(peer)
                    cbox, ch = _box(
                        COL_X[3],
                        py,
                        _container_lines(str(owner), port, peer, info),
                        state,
                        "container",
                        f"/containers/{quote(cid)}" if cid else None,
                        "; ".join(notes or []),
                    )
                    parts.append(cbox)
                    parts.append(_line(COL_X[2] + BOX_W, py + 10, COL_X[3], py + 10))
                    drawn_ns.add(port.get("peer_netns"))
                py += max(vh, ch) + 10
            by = max(py, bridge_y + bh + 10)
        y = max(up_y, by) + 16
    rest: dict[int, list[dict]] = {}
    for r in rows:
        if r["netns"] not in drawn_ns:
            rest.setdefault(r["netns"], []).append(r)
    if rest:
        parts.append(
            f'<text x="{COL_X[0]}" y="{y + 12}" font-weight="bold">other network namespaces</text>'
        )
        y += 22
        col, row_h = 0, 0.0
        for _ns, links in sorted(rest.items(), key=lambda kv: str(kv[1][0].get("netns_name"))):
            first = links[0]
            lines = [f"netns {first.get('netns_name') or first['netns']}"]
            worst = "ok"
            for r in links[:6]:
                st = _state(r)
                if r.get("kind") not in ("loopback", "ifb"):  # idle ifb and lo are normal
                    worst = st if worst == "ok" else worst
                lines.append(
                    f"{r['ifname']} {r.get('kind') or ''} {_addr(r)}".strip()
                    + ("" if st == "ok" else f" [{STYLE[st][1]}]")
                )
            if len(links) > 6:
                lines.append(f"... {len(links) - 6} more")
            cid = first.get("container_id")
            href = f"/containers/{quote(cid)}" if cid else _iface_href(first)
            box, h = _box(COL_X[col], y, lines, worst, "netns", href)
            parts.append(box)
            row_h = max(row_h, h)
            col += 1
            if col == len(COL_X):
                col, y, row_h = 0, y + row_h + 10, 0.0
        y += row_h + 10
    if len(parts) <= len(legend):
        parts.append(f'<text x="20" y="{y + 20}">no network namespaces found</text>')
        y += 40
    width = COL_X[3] + BOX_W + 20
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" '
        f'viewBox="0 0 {width} {y}" id="topology-svg" font-family="sans-serif" '
        f'font-size="11">' + "".join(parts) + "</svg>"
    )
