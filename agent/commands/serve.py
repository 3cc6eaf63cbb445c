"""`pyinspect serve`."""

import click


@click.command()
@click.option(
    "--bind",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; anything but loopback requires the token.",
)
@click.option(
    "--port",
    default=8900,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port to listen on (0: any free port).",
)
@click.option("--no-probes", is_flag=True, help="Serve the dashboard without the probes.")
@click.pass_obj
def serve(obj, bind, port, no_probes):
    """Run the agent (probes on, events stored) and the dashboard.

    Loopback only by default. With --bind elsewhere a token is generated once,
    stored 0600 under the state root, and every request must present it.
    """
    from ..server import serve as run

    run(
        obj["root"],
        bind=bind,
        port=port,
        probes=not no_probes,
        log=lambda line: click.echo(line, err=False),
    )
