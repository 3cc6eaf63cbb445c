"""`pyinspect stats`: containers' resource use, like `docker stats`."""

import signal
import sys
import threading

import click


@click.command()
@click.option("--no-stream", is_flag=True, help="Print one reading and exit.")
@click.option(
    "--format",
    "fmt",
    metavar="FORMAT",
    help="table (default), json, 'table TEMPLATE' or a Go template, e.g. "
    "'{{.Name}}: {{.CPUPerc}} {{.MemUsage}}'.",
)
@click.option("--interval", default=1.0, show_default=True, help="Seconds between readings.")
@click.argument("names", nargs=-1)
@click.pass_obj
def stats(obj, no_stream, fmt, interval, names):
    """Show CPU %, memory, network and block I/O and pids of running containers (every
    runtime's), refreshed until interrupted.

    \b
    Examples:
      pyinspect stats
      pyinspect stats --no-stream web
      pyinspect stats --no-stream --format '{{.Name}} {{.MemPerc}}'
    """
    from ..dockerfmt.gotemplate import parse
    from ..errors import UsageError
    from ..host.stats import Sampler, format_stats

    if not 0.1 <= interval <= 3600:
        raise UsageError(f"stats: --interval {interval:g} is outside 0.1..3600")
    if fmt and fmt not in ("table", "json"):
        # a bad template is one line (gotemplate.TemplateError) before anything is read
        parse(fmt[len("table") :].lstrip(" ") if fmt.startswith("table") else fmt)
    sampler = Sampler(obj["root"])
    if no_stream:
        for line in format_stats(sampler.sample(list(names) or None), fmt):
            click.echo(line)
        return 0
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    tty = sys.stdout.isatty()
    try:
        while not stop.is_set():
            lines = format_stats(sampler.sample(list(names) or None), fmt)
            if tty:
                click.echo("\x1b[2J\x1b[H", nl=False)
            click.echo("\n".join(lines))
            sys.stdout.flush()
            stop.wait(interval)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 0
