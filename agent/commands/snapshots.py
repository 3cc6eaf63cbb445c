"""Images from root filesystems and back: commit, export, import (pyinspect.runtime.snapshot
and pyinspect.runtime.export do the work)."""

import sys

import click

_CHANGE_HELP = (
    "Apply a Dockerfile instruction to the image's config (CMD, ENTRYPOINT, ENV, EXPOSE, "
    "HEALTHCHECK, LABEL, ONBUILD, USER, VOLUME, WORKDIR); repeatable."
)


@click.command()
@click.option("-a", "--author", default="", help='Author (e.g. "Jane <jane@example.com>").')
@click.option("-c", "--change", "changes", multiple=True, help=_CHANGE_HELP)
@click.option("-m", "--message", default="", help="Commit message.")
@click.option(
    "--pause/--no-pause",
    default=True,
    help="Freeze a running container while its files are read (default; Docker's "
    "--pause=false is --no-pause).",
)
@click.argument("container")
@click.argument("repository", required=False)
@click.pass_obj
def commit(obj, author, changes, message, pause, container, repository):
    """Make an image from a container's changes and settings; print its id.

    \b
    Examples:
      pyinspect commit web my-web:v2
      pyinspect commit -c 'CMD ["httpd", "-f"]' -m "add pages" web
    """
    from ..runtime.containers import Runtime
    from ..runtime.snapshot import ImageOptions, commit

    opts = ImageOptions(repository, list(changes), message, author, pause)
    click.echo(commit(Runtime(obj["root"]), container, opts).id)


@click.command()
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False),
    help="Tar file to write (default: standard output, if not a terminal).",
)
@click.argument("container")
@click.pass_obj
def export(obj, output, container):
    """Write a container's root filesystem as a tar archive (running or stopped).

    \b
    Examples:
      pyinspect export -o web.tar web
      pyinspect export web | pyinspect import - web:flat
    """
    from ..errors import UsageError
    from ..runtime.containers import Runtime
    from ..runtime.export import export as export_root
    from ..runtime.export import export_file

    rt = Runtime(obj["root"])
    if output:
        export_file(rt, container, output)
        return
    if sys.stdout.isatty():
        raise UsageError("export: refusing to write an archive to a terminal", "use -o FILE")
    sys.stdout.flush()
    export_root(rt, container, sys.stdout.fileno())


@click.command("import")
@click.option("-c", "--change", "changes", multiple=True, help=_CHANGE_HELP)
@click.option("-m", "--message", default="", help="Commit message for the imported image.")
@click.argument("source")
@click.argument("repository", required=False)
@click.pass_obj
def import_(obj, changes, message, source, repository):
    """Make a one-layer image from a root filesystem tarball (FILE, - for standard input,
    or an http:// or https:// URL; plain, gzip, bzip2 or xz); print its id.

    \b
    Examples:
      pyinspect import rootfs.tar my-base:1
      pyinspect export web | pyinspect import -c 'CMD ["sh"]' - web:flat
    """
    from ..runtime.snapshot import ImageOptions, import_from

    opts = ImageOptions(repository, list(changes), message)
    image = import_from(obj["root"], source, opts, sys.stdin.buffer)
    click.echo(image.id)
