"""The topology picture: uplink -> bridge -> veth -> container, drawn as SVG from the veth map.

One band per network namespace that holds a bridge (the host, or a namespace playing
it): its uplinks on the left, each bridge in the middle, and for every bridge port
the veth, its peer interface and the container (or namespace) that owns the peer.
"""

from html import escape

ROW_H = 44
COL_X = (20, 230, 440, 650)
BOX_W = 190
BOX_H = 30


def _box(x, y, title, sub="", cls="node"):
    t = escape(str(title))
    s = escape(str(sub))
    return (
        f'<g class="{cls}"><rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="5" '
        f'fill="#fff" stroke="#57606a"/><text x="{x + 8}" y="{y + 13}">{t}</text>'
        f'<text x="{x + 8}" y="{y + 26}" fill="#57606a">{s}</text></g>'
    )


def _line(x1, y1, x2, y2):
    return f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="#8c959f" stroke-width="1.5"/>'


def layout(rows):
    """Bands of {netns, uplinks, bridges: [{bridge, ports: [{veth, peer}]}]} from map rows."""
    by_ns: dict[int, list[dict]] = {}
    for r in rows:
        by_ns.setdefault(r["netns"], []).append(r)
    bands = []
    for ns, links in by_ns.items():
        bridges = [r for r in links if r.get("kind") == "bridge"]
        if not bridges:
            continue
        enslaved = {r["ifname"] for r in links if r.get("master")}
        uplinks = [
            r
            for r in links
            if r.get("kind") not in ("bridge", "loopback", "ifb")
            and r["ifname"] not in enslaved
            and r.get("up")
        ]
        band_bridges: list[dict] = []
        band = {
            "netns": links[0].get("netns_name") or ns,
            "uplinks": uplinks,
            "bridges": band_bridges,
        }
        for br in bridges:
            ports = [r for r in links if r.get("master") == br["ifname"]]
            band_bridges.append({"bridge": br, "ports": ports})
        bands.append(band)
    return bands


def _addr(r):
    addrs = [a for a in r.get("addrs") or [] if ":" not in str(a)]
    return addrs[0] if addrs else ""


def render_svg(rows):
    """An SVG document of the bridges, their veths and the containers behind them."""
    parts, y = [], 10
    index = {(r["netns"], r["ifindex"]): r for r in rows}
    for band in layout(rows):
        parts.append(
            f'<text x="{COL_X[0]}" y="{y + 12}" font-weight="bold">netns '
            f"{escape(str(band['netns']))}</text>"
        )
        y += 22
        top = y
        up_y = top
        for up in band["uplinks"]:
            parts.append(_box(COL_X[0], up_y, f"{up['ifname']} (uplink)", _addr(up)))
            up_y += ROW_H
        by = top
        for b in band["bridges"]:
            br = b["bridge"]
            bridge_y = by
            parts.append(_box(COL_X[1], bridge_y, f"{br['ifname']} (bridge)", _addr(br), "bridge"))
            for i in range(len(band["uplinks"])):
                parts.append(
                    _line(
                        COL_X[0] + BOX_W,
                        top + i * ROW_H + BOX_H / 2,
                        COL_X[1],
                        bridge_y + BOX_H / 2,
                    )
                )
            py = bridge_y
            for port in b["ports"] or []:
                parts.append(
                    _box(COL_X[2], py, port["ifname"], f"ifindex {port['ifindex']}", "veth")
                )
                parts.append(
                    _line(COL_X[1] + BOX_W, bridge_y + BOX_H / 2, COL_X[2], py + BOX_H / 2)
                )
                if port.get("peer_ifname"):
                    peer = index.get((port.get("peer_netns"), port.get("peer_ifindex"))) or {}
                    owner = (
                        peer.get("container_name")
                        or port.get("peer_netns_name")
                        or port.get("peer_netns")
                        or "?"
                    )
                    parts.append(
                        _box(
                            COL_X[3],
                            py,
                            f"{owner}/{port['peer_ifname']}",
                            f"ifindex {port.get('peer_ifindex')}",
                            "container",
                        )
                    )
                    parts.append(_line(COL_X[2] + BOX_W, py + BOX_H / 2, COL_X[3], py + BOX_H / 2))
                py += ROW_H
            by = max(py, bridge_y + ROW_H)
        y = max(up_y, by) + 16
    if not parts:
        parts.append('<text x="20" y="30">no bridges found in any network namespace</text>')
        y = 50
    width = COL_X[3] + BOX_W + 20
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" '
        f'viewBox="0 0 {width} {y}" id="topology-svg">' + "".join(parts) + "</svg>"
    )
