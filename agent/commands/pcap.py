"""`pyinspect pcap export|ls|merge`: merged pcapng files for Wireshark."""

import json
import time

import click


def _store(obj):
    from ..config import database_path
    from ..store import Store

    return Store(database_path(obj["root"]))


def _when(ns):
    if not ns:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns / 1e9))


@click.group()
def pcap():
    """Export traced packets and merge captures into one pcapng per story.

    Every capture point (uplink, bridge, host veth, container eth0) becomes a named
    interface; packets carry their direction and a comment with the NAT annotation.
    """


@pcap.command("export")
@click.option("--session", "session_id", type=int, help="Trace session id (see `pcap ls`).")
@click.option("--container", help="Every trace session of this container (name or id).")
@click.option("--since", help="Start: a duration ago (5m), epoch seconds or ISO 8601.")
@click.option("--until", help="End: same forms as --since.")
@click.option(
    "--flow", help="Only this connection, both NAT sides: '[PROTO ]SRC:SPORT->DST:DPORT'."
)
@click.option("--filter", "bpf_filter", help="pcap-filter expression (tcpdump syntax).")
@click.option(
    "-o", "--output", required=True, type=click.Path(dir_okay=False), help="pcapng file to write."
)
@click.pass_obj
def export_(obj, session_id, container, since, until, flow, bpf_filter, output):
    """Export stored trace packets as one pcapng.

    Every capture point of the trace becomes a named interface; packets come in
    timestamp order with their direction and NAT comment.

    \b
    Examples:
      pyinspect pcap export --session 3 -o trace.pcapng
      pyinspect pcap export --container test --since 10m --filter 'tcp port 80' -o web.pcapng
      pyinspect pcap export --session 3 -o flow.pcapng \\
        --flow 'tcp 192.168.1.2:40000->192.168.1.10:8088'
    """
    from ..errors import UsageError
    from ..pcap.export import export

    if (session_id is None) == (container is None):
        raise UsageError("pcap export: give exactly one of --session ID or --container NAME")
    with _store(obj) as store:
        res = export(
            store,
            session_id=session_id,
            container=container,
            since=since,
            until=until,
            flow=flow,
            bpf_filter=bpf_filter,
            out=output,
        )
    click.echo(
        f"wrote {res['packets']} packets on {res['interfaces']} interfaces to {res['output']}"
    )
    if res["missing"]:
        click.echo(
            f"note: {len(res['missing'])} segment file(s) of the trace are gone: "
            f"{', '.join(res['missing'][:3])}",
            err=True,
        )


@pcap.command("ls")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per session.")
@click.pass_obj
def ls(obj, as_json):
    """List trace sessions that can be exported.

    PACKETS is what the trace's segment files hold (its summary; for a killed trace,
    the packets its analysis indexed); SEGS and BYTES are its segment files.
    """
    from ..pcap.export import list_sessions

    with _store(obj) as store:
        rows = list_sessions(store)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, sort_keys=True))
        return
    fmt = "{:>5}  {:<16} {:<19}  {:<19}  {:<9} {:>6} {:>9} {:>4} {:>8}  {}"
    click.echo(
        fmt.format(
            "ID",
            "CONTAINER",
            "STARTED (UTC)",
            "STOPPED (UTC)",
            "STATUS",
            "POINTS",
            "PACKETS",
            "SEGS",
            "BYTES",
            "PCAP",
        )
    )
    for r in rows:
        click.echo(
            fmt.format(
                r["id"],
                (r["container_name"] or r["container_id"] or "-")[:16],
                _when(r["started_ns"]),
                _when(r["stopped_ns"]),
                (r["status"] or "-")[:9],
                r["points"],
                r["packets"],
                r["segments"],
                _size(r["bytes"]),
                r["pcap_path"] or "-",
            )
        )


def _size(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024


@pcap.command("merge")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False),
    help="pcapng file to write (only created if every input reads cleanly).",
)
def merge(inputs, output):
    """Merge pcap/pcapng files into one pcapng.

    Packets are merged by timestamp. For captures made elsewhere, such as `tcpdump -w`
    inside a container. Interface
    names are kept: pcapng if_name, or the file name for classic pcap. A damaged input
    stops the merge with one error line and no output file.
    """
    from ..pcap.pcapng import merge as merge_files

    res = merge_files(inputs, output)
    click.echo(
        f"merged {res['packets']} packets from {res['inputs']} files "
        f"({res['interfaces']} interfaces) into {res['output']}"
    )
