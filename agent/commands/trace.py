"""`pyinspect trace`: follow a container's packets through NAT, the bridge and its veth."""

import json
import signal
import sys

import click


def _print(items, as_json):
    """One write (and flush) for a whole poll's lines: click.echo per line flushed each."""
    if not items:
        return
    if as_json:
        lines = [
            json.dumps({k: v for k, v in i.items() if k[0] != "_"}, default=str) for i in items
        ]
    else:
        lines = [i["text"] for i in items]
    # a stop signal arriving mid-write cut lines short: it waits until the write is done
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        click.echo("\n".join(lines))
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


@click.command(
    epilog="""\b
Examples:
  pyinspect trace --container web                    # until Ctrl-C
  pyinspect trace --container web --duration 10 -w web.pcapng
  pyinspect trace --container web --port 80 --filter 'tcp[tcpflags] & tcp-syn != 0'
  pyinspect trace --container web --via eth0 --count 20 --json

Run it in the namespace that holds the container's bridge (the host). The line
"tracing ... Ctrl-C to stop" is printed once everything is attached."""
)
@click.option(
    "--container",
    "-c",
    "container",
    required=True,
    help="Container name or id (pyinspect's, runc's, Docker's) or a named netns.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    help="Only this port (container port or its published host port).",
)
@click.option(
    "--filter",
    "bpf_filter",
    metavar="EXPR",
    help="pcap-filter expression (tcpdump syntax); a connection is shown if any "
    "of its packets matches at any capture point.",
)
@click.option(
    "--via",
    multiple=True,
    metavar="IFACE",
    help="Uplink interface(s) to capture on (default: every non-bridge interface).",
)
@click.option(
    "--snaplen",
    type=int,
    default=None,
    help="Bytes kept per packet in the pcap files. Default: whole packets with "
    "-w (262144, as tcpdump), else the "
    "first 128 bytes (the headers). 0 = whole packets.",
)
@click.option(
    "--max-size",
    "max_size",
    metavar="SIZE",
    default=None,
    help="Cap on the trace's pcap files (e.g. 500M, 2G; 0 = none). Default: "
    "4G or the free disk space less 1G, whichever is smaller. Packets past "
    "the cap are counted as capped.",
)
@click.option(
    "-B",
    "--buffer-size",
    "buffer_kib",
    type=click.IntRange(min=1),
    default=None,
    help="Evidence buffer per CPU in KiB (as tcpdump's -B; rounded up to a power of "
    "two pages). Default: 64 MiB, or 1/128 of memory over the CPUs if that is less "
    "(at least 4 MiB). Packets that find it full are counted as lost.",
)
@click.option(
    "--duration", type=click.FloatRange(min=0, min_open=True), help="Stop after this many seconds."
)
@click.option("--count", type=click.IntRange(min=1), help="Stop after this many traced packets.")
@click.option(
    "--max-rate",
    type=click.IntRange(min=0),
    default=None,
    help="Packets per second the analysis (flows, NAT hops, live lines) looks at, "
    "with bursts of up to a second's worth after a quiet spell; the kernel "
    "counts the rest as shed (TCP SYN/FIN/RST have a budget of their own). "
    "The pcap files keep every packet whatever this is. "
    "Default: automatic (what 1% of a core can process, at least 100; more "
    "only when over a core is idle). 0 = no limit.",
)
@click.option(
    "--events/--no-events",
    default=True,
    show_default=True,
    help="Interleave the container's process events (fork, exec, exit).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option(
    "-w",
    "--write",
    "pcap",
    type=click.Path(dir_okay=False),
    help="Write the merged capture (every point, NAT comments) as pcapng.",
)
@click.pass_context
def trace(
    ctx,
    container,
    port,
    bpf_filter,
    via,
    snaplen,
    max_size,
    buffer_kib,
    duration,
    count,
    max_rate,
    events,
    as_json,
    pcap,
):
    """Follow a container's packets through NAT, the bridge and its veth."""
    from pyinspect.trace import TraceOptions, TraceSession, format_summary, parse_size

    opts = TraceOptions(
        port=port,
        filter=bpf_filter,
        via=list(via) or None,
        snaplen=snaplen,
        duration=duration,
        count=count,
        pcap=pcap,
        events=events,
        max_size=parse_size(max_size) if max_size is not None else None,
        ring_mb=None if buffer_kib is None else buffer_kib / 1024,
        own_gc=True,  # this process is the trace's
        live="full" if as_json else "text",
    )
    if max_rate is not None:
        opts.max_rate = max_rate
    session = TraceSession(ctx.obj["root"], container, opts)

    def on_term(signum, frame):
        session.done = True  # the loop ends after this poll: no line is cut mid-write

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        session.start()
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "type": "ready",
                        "text": session.ready,
                        "points": [p.name for p in session.points],
                        "notes": session.notes,
                    }
                )
            )
        else:
            click.echo(session.ready)
            for n in session.notes:
                click.echo(f"note: {n}")
        sys.stdout.flush()  # the ready line out before the first poll
        try:
            while not session.done:
                _print(session.poll(), as_json)
        except KeyboardInterrupt:
            pass
    finally:
        try:
            summary = session.stop() if session.target else None
        finally:
            signal.signal(signal.SIGTERM, old)
    _print(getattr(session, "tail", []), as_json)
    if summary is None:
        return
    if as_json:
        click.echo(json.dumps({"type": "summary", **summary}, default=str))
    else:
        for line in format_summary(summary):
            click.echo(line)
