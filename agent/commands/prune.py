"""`container prune`, `image prune` and the question and lists every prune shares (`network
prune`, `system prune`), as Docker's (Runtime.prune and ImageStore.prune do the work)."""

import sys

import click

from ..units import decimal_size


def section(title: str, lines: list) -> None:
    if lines:
        click.echo(f"{title}:")
        for line in lines:
            click.echo(line)
        click.echo()


def image_lines(changes: list[dict[str, str]]) -> list[str]:
    """Docker's lines for what an image prune did: `untagged: REF`, `deleted: ID`."""
    return [f"{k}: {v}" for change in changes for k, v in change.items()]


def reclaimed(n: int) -> None:
    """Docker's last line of a prune (units.HumanSize: 4 significant digits)."""
    click.echo(f"Total reclaimed space: {decimal_size(n, 4)}")


def confirmed(warning: str, force: bool, space: bool = True) -> bool:
    """Docker's question before a prune (an answer read from stdin; none is no). A "no"
    still gets Docker's last line, "Total reclaimed space: 0B"."""
    if force:
        return True
    click.echo(f"WARNING! {warning}\nAre you sure you want to continue? [y/N] ", nl=False)
    if sys.stdin.readline().strip().lower() in ("y", "yes"):
        return True
    if space:
        reclaimed(0)
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
    reclaimed(freed)


def images_warning(every: bool) -> str:
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

    if not confirmed(f"This will remove {images_warning(every)}.", force):
        return
    changes, freed = ImageStore(obj["root"]).prune(every)
    section("Deleted Images", image_lines(changes))
    reclaimed(freed)


NETWORKS_WARNING = "This will remove all custom networks not used by at least one container."
