"""`pyinspect demo`."""

import os
import shutil
import sys

import click


@click.command()
@click.option(
    "--serve-seconds",
    type=float,
    default=None,
    help="Keep the dashboard up this long at the end [default: 600 on a terminal, 0 otherwise].",
)
@click.pass_obj
def demo(obj, serve_seconds):
    """Run the Docker port-mapping walkthrough end to end, then clean up.

    A container `test` runs busybox httpd published on 8088; another machine (a
    network namespace) fetches a page through it while `pyinspect trace` follows
    the packets. Nothing is written to this machine's own routes or firewall.
    """
    from ..demo import Demo

    if serve_seconds is None:
        serve_seconds = 600.0 if sys.stdout.isatty() else 0.0
    exe = shutil.which("pyinspect") or os.path.join(os.path.dirname(sys.executable), "pyinspect")
    return Demo(pyinspect=exe, root=str(obj["root"]), serve_seconds=serve_seconds).run()
