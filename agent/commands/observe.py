"""Observation commands: `map` (the veth map) and `events` (the timeline)."""

import json
import sys

import click


def _table(headers, rows):
    widths = [len(h) for h in headers]
    for r in rows:
        widths = [max(w, len(str(c))) for w, c in zip(widths, r, strict=True)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(headers, widths, strict=True)).rstrip()]
    for r in rows:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


@click.command("map")
@click.option("--json", "as_json", is_flag=True, help="Print every field as JSON.")
@click.option(
    "--all", "show_all", is_flag=True, help="Also show loopback devices (hidden by default)."
)
@click.option(
    "--container",
    "-c",
    metavar="NAME",
    help="Only the interfaces of this container (name or id prefix).",
)
@click.option("--save", is_flag=True, help="Also store this snapshot in the interfaces table.")
@click.pass_obj
def map_(obj, as_json, show_all, container, save):
    """Show the veth map: every interface in every network namespace, its peer
    (ifname@netns, from IFLA_LINK + IFLA_LINK_NETNSID) and its container.

    \b
    Examples:
      pyinspect map
      pyinspect map -c web
      pyinspect map --json | jq '.[] | select(.kind == "veth")'
    """
    from ..errors import NotFoundError
    from ..host import vethmap

    errors: list[str] = []
    rows = vethmap.build(obj["root"], errors=errors)
    if save:
        from ..config import database_path
        from ..store import Store

        with Store(database_path(obj["root"])) as store:
            vethmap.snapshot(store, rows)
    if container:
        rows = [
            r
            for r in rows
            if container == r["container_name"] or (r["container_id"] or "").startswith(container)
        ]
        if not rows:
            raise NotFoundError(
                f"map: no interfaces for container {container!r}",
                "check the name with `pyinspect ps` or `pyinspect map`",
            )
    if errors:
        click.echo(
            f"note: {len(errors)} network namespace(s) could not be read "
            f"({errors[0][1]}); run as root to see them",
            err=True,
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    shown = [r for r in rows if show_all or r["kind"] != "loopback"]
    click.echo(
        _table(
            vethmap.COLUMNS,
            [
                (
                    r["netns_name"],
                    r["ifindex"],
                    r["ifname"],
                    vethmap.peer_label(r),
                    r["master"] or "-",
                    r["mac"] or "-",
                    ",".join(r["addrs"]) or "-",
                    r["container_name"] or "-",
                )
                for r in shown
            ],
        )
    )


@click.command("events")
@click.option("--container", "-c", metavar="NAME", help="Only this container (name or id prefix).")
@click.option(
    "--since",
    metavar="WHEN",
    help="Stored events from WHEN on: 30s, 10m, 2h, 1d, RFC3339 or epoch seconds.",
)
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    metavar="KIND",
    help="Only these kinds (fork, exec, exit, clone, unshare, setns, oom, "
    "cgroup_mkdir, cgroup_rmdir, cgroup_attach, cgroup_freeze, cgroup_unfreeze, link_add, "
    "link_del, ...); "
    "repeatable.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="At most this many stored events.",
)
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="After the stored events, run the probes here and print live events "
    "(also stored) until interrupted.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_obj
def events(obj, container, since, kinds, limit, follow, as_json):
    """Show the process, namespace, cgroup and link timeline, attributed to containers.

    Stored events are printed oldest first. With --follow the process and cgroup
    probes (eBPF tracepoints) and the link monitor (netlink) run inside this
    command; probes that cannot load are named on stderr with the reason, and
    lost records are reported when it stops.

    \b
    Examples:
      pyinspect events --since 10m
      pyinspect events --container web --follow
      pyinspect events --kind exec --json | jq .detail.argv
    """
    import signal

    from ..config import database_path
    from ..host import events as ev_lib
    from ..store import Store

    def show(ev):
        if as_json:
            click.echo(json.dumps(ev, sort_keys=True))
        else:
            click.echo(ev_lib.format_line(ev))

    with Store(database_path(obj["root"])) as store:
        for ev in ev_lib.query(store, container=container, since=since, kinds=kinds, limit=limit):
            show(ev)
        if not follow:
            return
        follower = ev_lib.Follower(obj["root"], store, container=container, kinds=kinds)
        stopping = []
        signal.signal(signal.SIGTERM, lambda *a: stopping.append(1))
        with follower:
            for line in follower.messages:
                click.echo(line, err=True)
            click.echo(follower.ready_line(), err=True)
            try:
                while not stopping:
                    for ev in follower.poll(200):
                        show(ev)
                    sys.stdout.flush()
            except KeyboardInterrupt:
                pass
            for ev in follower.drain():  # held for an owner until now
                show(ev)
        for line in follower.loss_summary():
            click.echo(line, err=True)
