"""Observation commands: `map` (the veth map) and `events` (the timeline)."""

import json

import click


def _table(headers, rows):
    widths = [len(h) for h in headers]
    for r in rows:
        widths = [max(w, len(str(c))) for w, c in zip(widths, r)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(headers, widths)).rstrip()]
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


@click.command("map")
@click.option("--json", "as_json", is_flag=True, help="Print every field as JSON.")
@click.option("--all", "show_all", is_flag=True,
              help="Also show loopback devices (hidden by default).")
@click.option("--save", is_flag=True, help="Also store this snapshot in the interfaces table.")
@click.pass_obj
def map_(obj, as_json, show_all, save):
    """Show the veth map: every interface in every network namespace, its peer
    (ifname@netns, from IFLA_LINK + IFLA_LINK_NETNSID) and its container.

    \b
    Examples:
      pyinspect map
      pyinspect map --json | jq '.[] | select(.kind == "veth")'
    """
    from .. import vethmap
    rows = vethmap.build(obj["root"])
    if save:
        from ..config import database_path
        from ..store import Store
        with Store(database_path(obj["root"])) as store:
            vethmap.snapshot(store, rows)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    shown = [r for r in rows if show_all or r["kind"] != "loopback"]
    click.echo(_table(vethmap.COLUMNS, [
        (r["netns_name"], r["ifindex"], r["ifname"], vethmap.peer_label(r),
         r["master"] or "-", r["mac"] or "-", ",".join(r["addrs"]) or "-",
         r["container_name"] or "-")
        for r in shown]))
