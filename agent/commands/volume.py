"""`volume create|ls|inspect|rm|prune`, as Docker's (runtime.volumes does the work)."""

import json

import click

from .prune import confirmed, reclaimed, section


def _store(obj):
    from ..runtime.volumes import VolumeStore

    return VolumeStore(obj["root"])


@click.group()
def volume():
    """Manage volumes (create, ls, inspect, rm, prune)."""


@volume.command("create")
@click.option("-d", "--driver", default="local", show_default=True, help="Only local.")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE", help="Set a label.")
@click.argument("name", required=False, default="")
@click.pass_obj
def create(obj, driver, labels, name):
    """Create a volume (a random name when none is given); print its name."""
    from ..runtime.volumes import create_volume

    click.echo(create_volume(obj["root"], name, labels, driver).name)


@volume.command("ls")
@click.option("-q", "--quiet", is_flag=True, help="Only names.")
@click.option(
    "-f",
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help="dangling=true|false, name=, label=KEY[=VALUE], driver=local (repeat for more).",
)
@click.option(
    "--format",
    "fmt",
    metavar="FORMAT",
    help="table, json, 'table TEMPLATE' or a Go template such as '{{.Name}} {{.Mountpoint}}' "
    "(.Name, .Driver, .Mountpoint, .Labels, .Scope).",
)
@click.pass_obj
def ls(obj, quiet, filters, fmt):
    """List volumes, by name."""
    from ..dockerfmt.psformat import format_rows, volume_row
    from ..runtime.volumes import listing

    rows = [volume_row(v) for v in listing(obj["root"], filters)]
    if quiet:
        for r in rows:
            click.echo(r["Name"])
        return
    default = "table {{.Driver}}\t{{.Name}}"
    headers = {"Driver": "DRIVER", "Name": "VOLUME NAME", "Mountpoint": "MOUNTPOINT"}
    for line in format_rows(rows, fmt, default, headers):
        click.echo(line)


@volume.command("inspect")
@click.option("-f", "--format", "fmt", metavar="TEMPLATE", help="A Go template per volume.")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def inspect(obj, fmt, names):
    """Docker-like JSON for volumes."""
    from ..dockerfmt.psformat import format_object
    from ..errors import PyinspectError

    store = _store(obj)
    docs, failed = [], None
    for name in names:
        try:
            docs.append(store.get(name).document())
        except PyinspectError as exc:
            failed = exc
            if len(names) > 1:
                click.echo(f"Error: {exc}", err=True)
    if fmt is not None:
        for d in docs:
            click.echo(format_object(fmt, d))
    elif docs or failed is None:  # (as `inspect`: no "[]" when nothing was found)
        click.echo(json.dumps(docs, indent=4))
    if failed is not None:
        if len(names) == 1:
            raise failed
        return failed.exit_code
    return 0


@volume.command("rm")
@click.option("-f", "--force", is_flag=True, help="No error for a volume that does not exist.")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def rm(obj, force, names):
    """Remove volumes no container uses."""
    from ..runtime.volumes import remove
    from .containers import _each

    return _each(names, lambda n: remove(obj["root"], n, force) or n)


@volume.command("prune")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.option("--filter", "filters", multiple=True, metavar="label=KEY[=VALUE]", help="Only these.")
@click.pass_obj
def prune(obj, force, filters):
    """Remove every volume no container uses."""
    from ..runtime.volumes import parse_prune_filters, prune

    labels = parse_prune_filters(filters)
    if not confirmed(
        "This will remove all local volumes not used by at least one container.", force
    ):
        return
    result = prune(obj["root"], labels)
    section("Deleted Volumes", result.names)
    reclaimed(result.reclaimed)
