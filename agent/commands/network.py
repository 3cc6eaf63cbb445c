"""`pyinspect network ...`: thin click shells over pyinspect.runtime.network."""

import json

import click


@click.group()
def network():
    """Manage pyinspect's networks: the default bridge, user networks, host and none.

    \b
    Examples:
      pyinspect network create --subnet 10.30.0.0/24 appnet
      pyinspect run -d --network appnet --name web busybox httpd -f
      pyinspect run --rm --network appnet busybox wget -qO- http://web/
      pyinspect network ls
      pyinspect network inspect bridge
      iptables -t nat -nvL PYINSPECT        # the DNAT rules (the host's iptables backend)
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
        if r.get("internal"):
            state += " internal"
        click.echo(
            f"{r['name']:<16}{r['driver']:<8}{r['subnet']:<20}{r['gateway']:<16}{count:<12}{state}"
        )


@network.command("inspect")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def inspect(obj, names):
    """Show a network as JSON: subnet, gateway, members, sysctls, where the rules live.

    NAME is a user network, the bridge (`pyinspect0`), `bridge` for the configured one,
    `host` or `none`.
    """
    from ..runtime import network as net

    out = [net.inspect(obj["root"], name) for name in names]
    click.echo(json.dumps(out, indent=2))


@network.command("create")
@click.option(
    "--subnet", "subnets", multiple=True, help="IPv4 subnet (and with --ipv6 an IPv6 one)."
)
@click.option("--gateway", help="Gateway address (default: the subnet's first).")
@click.option("--internal", is_flag=True, help="No traffic in or out of the network.")
@click.option("--ipv6", is_flag=True, help="Make the network dual-stack.")
@click.option(
    "-o",
    "--opt",
    "opts",
    multiple=True,
    metavar="KEY=VALUE",
    help="Driver option: com.docker.network.driver.mtu, com.docker.network.bridge.name.",
)
@click.option("-d", "--driver", default="bridge", show_default=True, help="Only bridge.")
@click.argument("name")
@click.pass_obj
def create(obj, subnets, gateway, internal, ipv6, opts, driver, name):
    """Create a user-defined bridge network; containers on it find each other by name."""
    from ..errors import UsageError
    from ..runtime import network as net

    if driver != "bridge":
        raise UsageError(f"driver {driver!r} is not supported", hint="use bridge")
    options = {}
    for o in opts:
        key, eq, value = o.partition("=")
        if not eq or not key:
            raise UsageError(f"invalid option {o!r}: expected KEY=VALUE")
        options[key] = value
    info = net.create_network(obj["root"], name, subnets, gateway, internal, ipv6, options)
    click.echo(info["Id"])


@network.command("rm")
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def rm(obj, names):
    """Remove user networks (refused while a running container is on one)."""
    from ..runtime import network as net

    for name in names:
        click.echo(net.remove_network(obj["root"], name))


@network.command("prune")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def prune(obj, force):
    """Remove the user networks no running container is on."""
    from ..runtime.network import prune_networks
    from .prune import NETWORKS_WARNING, confirmed, section

    if confirmed(NETWORKS_WARNING, force, space=False):
        section("Deleted Networks", prune_networks(obj["root"]))


@network.command("connect")
@click.option("--alias", "aliases", multiple=True, help="Another DNS name on this network.")
@click.argument("name")
@click.argument("container")
@click.pass_obj
def connect(obj, aliases, name, container):
    """Connect a running container to a network (a new ethN in it)."""
    from ..runtime import network as net
    from ..runtime.containers import Runtime

    c = Runtime(obj["root"]).get(container)
    info = net.attach(obj["root"], c, name, list(aliases))
    click.echo(f"{c.name}: {info['ifname']} {info['ip']}/{info['prefixlen']} on {name}")


@network.command("disconnect")
@click.argument("name")
@click.argument("container")
@click.pass_obj
def disconnect(obj, name, container):
    """Disconnect a container from a network it was connected to."""
    from ..runtime import network as net
    from ..runtime.containers import Runtime

    c = Runtime(obj["root"]).get(container)
    net.detach(obj["root"], c, name)
