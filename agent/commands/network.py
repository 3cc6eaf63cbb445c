"""`pyinspect network ls|inspect`: thin click shells over pyinspect.runtime.network."""

import json

import click


@click.group()
def network():
    """Inspect pyinspect's networks (the bridge, host and none).

    \b
    Examples:
      pyinspect network ls
      pyinspect network inspect bridge
      iptables-legacy -t nat -nvL PYINSPECT    # the DNAT rules (legacy backend)
    """


@network.command("ls")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
@click.pass_obj
def ls(obj, fmt):
    """List networks: name, driver, subnet, gateway, containers, bridge present here."""
    from ..runtime import network as net

    rows = net.networks(obj["root"])
    if fmt == "json":
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'NAME':<16}{'DRIVER':<8}{'SUBNET':<20}{'GATEWAY':<16}{'CONTAINERS':<12}STATE")
    for r in rows:
        count = "" if r["containers"] is None else str(r["containers"])
        state = "" if r["driver"] != "bridge" else ("up" if r["exists"] else "absent")
        click.echo(
            f"{r['name']:<16}{r['driver']:<8}{r['subnet']:<20}{r['gateway']:<16}{count:<12}{state}"
        )


@network.command("inspect")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def inspect(obj, names):
    """Show a network as JSON: subnet, gateway, members, sysctls, where the rules live.

    NAME is the bridge (`pyinspect0`), `bridge` for the configured one, `host` or `none`.
    """
    from ..runtime import network as net

    out = [net.inspect(obj["root"], name) for name in names]
    click.echo(json.dumps(out, indent=2))
