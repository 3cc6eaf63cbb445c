"""`container prune`, `image prune`, `network prune` and `system prune`, as Docker's
(Runtime.prune, ImageStore.prune and network.prune_networks do the work)."""

import sys

import click

from ..units import decimal_size


def section(title: str, lines: list) -> None:
    if lines:
        click.echo(f"{title}:")
        for line in lines:
            click.echo(line)
        click.echo()


def confirmed(warning: str, force: bool, space: bool = True) -> bool:
    """Docker's question before a prune (an answer read from stdin; none is no). A "no"
    still gets Docker's last line, "Total reclaimed space: 0B"."""
    if force:
        return True
    click.echo(f"WARNING! {warning}\nAre you sure you want to continue? [y/N] ", nl=False)
    if sys.stdin.readline().strip().lower() in ("y", "yes"):
        return True
    if space:
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

    if not confirmed("This will remove all stopped containers.", force):
        return
    removed, freed = Runtime(obj["root"]).prune()
    section("Deleted Containers", removed)
    click.echo(f"Total reclaimed space: {decimal_size(freed)}")


def _images(every: bool) -> str:
    """What an image prune removes, in Docker's question."""
    if every:
        return "all images without at least one container associated to them"
    return "all dangling images"


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

    if not confirmed(f"This will remove {_images(every)}.", force):
        return
    changes, freed = ImageStore(obj["root"]).prune(every)
    section("Deleted Images", [f"{k}: {v}" for change in changes for k, v in change.items()])
    click.echo(f"Total reclaimed space: {decimal_size(freed)}")


NETWORKS_WARNING = "This will remove all custom networks not used by at least one container."


def prune_networks(root) -> list:
    """The user networks `network prune` removed (no running container is on them)."""
    from ..runtime import network

    return network.prune_networks(root)


@click.group()
def system():
    """Manage pyinspect's stored objects (prune)."""


@system.command("prune")
@click.option("-a", "--all", "every", is_flag=True, help="Also tagged images no container uses.")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def system_prune(obj, every, force):
    """Remove stopped containers, unused user networks and dangling images (-a: every
    image no container uses)."""
    from ..runtime.containers import Runtime
    from ..runtime.images import ImageStore

    warning = (
        "This will remove:\n  - all stopped containers\n  - all networks not used by at "
        f"least one container\n  - {_images(every)}\n"
    )
    if not confirmed(warning, force):
        return
    removed, freed = Runtime(obj["root"]).prune()
    networks = prune_networks(obj["root"])
    changes, image_bytes = ImageStore(obj["root"]).prune(every)
    section("Deleted Containers", removed)
    section("Deleted Networks", networks)
    section("Deleted Images", [f"{k}: {v}" for change in changes for k, v in change.items()])
    click.echo(f"Total reclaimed space: {decimal_size(freed + image_bytes)}")
