"""`container prune` and `image prune`, as Docker's (the runtime's Runtime.prune and
ImageStore.prune do the work)."""

import sys

import click

from ..units import decimal_size


def _confirmed(warning: str, force: bool) -> bool:
    """Docker's question before a prune (an answer read from stdin; none is no). A "no"
    still gets Docker's last line, "Total reclaimed space: 0B"."""
    if force:
        return True
    click.echo(f"WARNING! {warning}\nAre you sure you want to continue? [y/N] ", nl=False)
    if sys.stdin.readline().strip().lower() in ("y", "yes"):
        return True
    click.echo(f"Total reclaimed space: {decimal_size(0)}")
    return False


@click.group()
def container():
    """Manage containers (prune; the other verbs are top-level commands)."""


@container.command("prune")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def container_prune(obj, force):
    """Remove every stopped container (created or exited)."""
    from ..runtime.containers import Runtime

    if not _confirmed("This will remove all stopped containers.", force):
        return
    removed, freed = Runtime(obj["root"]).prune()
    if removed:
        click.echo("Deleted Containers:")
        for cid in removed:
            click.echo(cid)
        click.echo()
    click.echo(f"Total reclaimed space: {decimal_size(freed)}")


@click.group()
def image():
    """Manage images (prune; the other verbs are top-level commands)."""


@image.command("prune")
@click.option("-a", "--all", "every", is_flag=True, help="Also tagged images no container uses.")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def image_prune(obj, every, force):
    """Remove untagged images no container uses (-a: every image no container uses)."""
    from ..runtime.images import ImageStore

    what = (
        "This will remove all images without at least one container associated to them."
        if every
        else "This will remove all dangling images."
    )
    if not _confirmed(what, force):
        return
    changes, freed = ImageStore(obj["root"]).prune(every)
    if changes:
        click.echo("Deleted Images:")
        for change in changes:
            for key, value in change.items():
                click.echo(f"{key}: {value}")
        click.echo()
    click.echo(f"Total reclaimed space: {decimal_size(freed)}")
