"""`pyinspect serve`."""

import click


@click.command()
@click.option(
    "--bind",
    default=None,
    help="Address to listen on (default 127.0.0.1).",
)
@click.option(
    "--port",
    default=None,
    type=click.IntRange(0, 65535),
    help="TCP port to listen on (default 8900; 0: any free port).",
)
@click.option(
    "--unix-socket",
    "unix_socket",
    default=None,
    metavar="PATH",
    help="Also listen on a Unix socket (mode 0600); alone, only there.",
)
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    metavar="NAME",
    help="Accept this Host header too (a name the dashboard is reached by); repeatable.",
)
@click.option("--no-probes", is_flag=True, help="Serve the dashboard without the probes.")
@click.pass_obj
def serve(obj, bind, port, unix_socket, allow_hosts, no_probes):
    """Run the agent (probes on, events stored) and the dashboard.

    Every request needs the token (created once, 0600 in the state root): open the
    login URL this prints, or send `Authorization: Bearer <token>`. Requests for any
    other Host than the bound address (or an --allow-host name) are refused.
    """
    from ..server import ServeOptions
    from ..server import serve as run

    opts = ServeOptions(
        bind=bind or "127.0.0.1",
        port=8900 if port is None else port,
        unix_socket=unix_socket,
        allow_hosts=list(allow_hosts),
        tcp=not (unix_socket and bind is None and port is None),
    )
    run(obj["root"], opts, probes=not no_probes, log=lambda line: click.echo(line, err=False))
