"""`system prune` and `system df`, as Docker's (runtime.prune.prune_system and
runtime.diskusage.disk_usage do the work)."""

import click

from .prune import confirmed, image_lines, images_warning, reclaimed, section


@click.group()
def system():
    """Manage pyinspect's stored objects (df, prune)."""


@system.command("prune")
@click.option("-a", "--all", "every", is_flag=True, help="Also tagged images no container uses.")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.option("--volumes", "with_volumes", is_flag=True, help="Also volumes no container uses.")
@click.pass_obj
def system_prune(obj, every, force, with_volumes):
    """Remove stopped containers, unused user networks, (--volumes) unused volumes and
    dangling images (-a: every image no container uses)."""
    from ..runtime.prune import prune_system

    unused_volumes = "  - all volumes not used by at least one container\n" if with_volumes else ""
    warning = (
        "This will remove:\n  - all stopped containers\n  - all networks not used by at "
        f"least one container\n{unused_volumes}  - {images_warning(every)}\n"
    )
    if not confirmed(warning, force):
        return
    pruned = prune_system(obj["root"], every, with_volumes)
    section("Deleted Containers", pruned.containers)
    section("Deleted Networks", pruned.networks)
    section("Deleted Volumes", pruned.volumes)
    section("Deleted Images", image_lines(pruned.images))
    reclaimed(pruned.freed)


@system.command("df")
@click.option("-v", "--verbose", is_flag=True, help="Every image and container with its size.")
@click.option(
    "--format",
    "fmt",
    metavar="FORMAT",
    help="table, json, 'table TEMPLATE' or a Go template such as '{{.Type}} {{.Size}}' "
    "(.Type, .TotalCount, .Active, .Size, .Reclaimable; with -v: .Images, .Containers, "
    ".Volumes, .BuildCache).",
)
@click.pass_obj
def df(obj, verbose, fmt):
    """Show the space images, containers and the build cache take, as Docker's `system df`.

    \b
    Examples:
      pyinspect system df
      pyinspect system df -v
      pyinspect system df --format '{{.Type}}: {{.Reclaimable}}'
    """
    from ..dockerfmt import diskformat
    from ..dockerfmt.psformat import format_object, format_rows
    from ..runtime.diskusage import disk_usage

    usage = disk_usage(obj["root"])
    if verbose and fmt:
        data = diskformat.verbose_object(usage)
        click.echo(format_object(fmt, data))
        return
    if verbose:
        lines = diskformat.verbose_lines(usage)
    else:
        rows = diskformat.summary_rows(usage)
        lines = format_rows(rows, fmt, diskformat.SUMMARY_DEFAULT, diskformat.SUMMARY_HEADERS)
    for line in lines:
        click.echo(line)
