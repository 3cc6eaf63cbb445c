"""`pyinspect build`: a thin click shell over pyinspect.runtime.build."""

import signal
import sys
import time

import click

from ..errors import PyinspectError
from ..runtime.build import Progress


class _Printer(Progress):
    """Step lines and RUN output; bold step headers on a terminal, plain text otherwise.
    Quiet: nothing until the end (RUN output is kept to show if the build fails)."""

    def __init__(self, quiet, tty):
        self.quiet = quiet
        self.tty = tty
        self.kept = []
        self.t0 = time.monotonic()

    def _line(self, text):
        if not self.quiet:
            click.echo(text)

    def step(self, n, total, text):
        text = text.replace("\n", " ")
        self._line(
            f"\x1b[1mStep {n}/{total} : {text}\x1b[0m" if self.tty else f"Step {n}/{total} : {text}"
        )

    def cached(self, state_id):
        self._line(" ---> CACHED")

    def output(self, stream, data):
        if self.quiet:
            self.kept.append(data)
            del self.kept[:-200]
            return
        out = sys.stdout.buffer
        out.write(data)
        out.flush()

    def done(self, state_id, seconds):
        extra = f" ({seconds:.1f}s)" if self.tty and seconds >= 0.1 else ""
        self._line(f" ---> {state_id[7:19]}{extra}")

    def warning(self, text):
        click.echo(f"warning: {text}", err=True)


@click.command()
@click.argument("context", type=click.Path(file_okay=False))
@click.option(
    "-t", "--tag", "tags", multiple=True, metavar="NAME[:TAG]", help="Name the image (repeatable)."
)
@click.option(
    "-f",
    "--file",
    "dockerfile",
    metavar="PATH",
    help="The Dockerfile (default CONTEXT/Dockerfile).",
)
@click.option("--target", metavar="STAGE", help="Build this stage and what it needs only.")
@click.option(
    "--build-arg",
    "build_args",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set an ARG (repeatable; KEY alone takes it from the environment).",
)
@click.option("--no-cache", is_flag=True, help="Run every step; do not reuse cached steps.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the image id.")
@click.pass_obj
def build(obj, context, tags, dockerfile, target, build_args, no_cache, quiet):
    """Build an image from a Dockerfile and a context directory.

    Steps run like Docker's classic builder: RUN in a pyinspect container on the
    bridge network, COPY/ADD from CONTEXT (minus .dockerignore), one layer per step
    that changes files; a step whose parent and inputs are unchanged is CACHED.

    \b
    Examples:
      pyinspect build -t my-nginx:busybox .
      pyinspect build -f Dockerfile.multi --target builder -t app:build .
      pyinspect build --build-arg VERSION=2 --no-cache -q .
    """
    from ..runtime.build import BuildOptions, Interrupted
    from ..runtime.build import build as run_build

    printer = _Printer(quiet, sys.stdout.isatty())

    def on_term(signum, frame):
        raise Interrupted("build: interrupted by SIGTERM (its containers and files removed)")

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        result = run_build(
            obj["root"],
            BuildOptions(
                context=context,
                dockerfile=dockerfile,
                tags=list(tags),
                target=target,
                build_args=list(build_args),
                no_cache=no_cache,
            ),
            printer,
        )
    except PyinspectError:
        if quiet and printer.kept:
            sys.stderr.buffer.write(b"".join(printer.kept))
            sys.stderr.flush()
        raise
    finally:
        signal.signal(signal.SIGTERM, old)
    if quiet:
        click.echo(result.image_id)
        return
    click.echo(f"Successfully built {result.image_id[7:19]}")
    for t in result.tags:
        click.echo(f"Successfully tagged {t}")
