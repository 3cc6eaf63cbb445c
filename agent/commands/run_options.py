"""`pyinspect run`'s options, declared once, and what `run` does with them (no click).

The click command (commands/containers.py) is built from RUN_OPTIONS, and so is
`parse_run_argv`, the parser of the console script's fast path (pyinspect.launch):
a well-formed `pyinspect [--root R] [--debug] run ...` starts its container without
importing click (whose import is a third of the start latency). Anything it does
not take as plainly well-formed (--help, unknown or malformed options, a bad
number) returns None, and click parses it instead, with its own errors.
"""

import os
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Opt:
    """One option: its flags, the parameter it fills, and how it takes a value."""

    dest: str
    flags: tuple
    kind: str = "value"  # value | flag | multiple | int
    help: str = ""
    metavar: str | None = None
    default: object = None
    show_default: bool = False


RUN_OPTIONS = (
    Opt("detach", ("-d", "--detach"), "flag", "Run in the background and print the id."),
    Opt("name", ("--name",), help="Container name ([a-zA-Z0-9][a-zA-Z0-9_.-]+)."),
    Opt("auto_remove", ("--rm",), "flag", "Remove the container when it exits."),
    Opt("env", ("-e", "--env"), "multiple", "Set an environment variable.", "K=V"),
    Opt(
        "volume",
        ("-v", "--volume"),
        "multiple",
        "A host path, a named volume or (CTR alone) an anonymous volume; MODE: ro, rw, nocopy.",
        "[HOST:|NAME:]CTR[:MODE]",
    ),
    Opt(
        "mount",
        ("--mount",),
        "multiple",
        "A mount: type=bind|volume|tmpfs,source=..,target=..[,readonly][,volume-nocopy]"
        "[,tmpfs-size=N][,tmpfs-mode=OCTAL].",
        "SPEC",
    ),
    Opt("tmpfs", ("--tmpfs",), "multiple", "A tmpfs (size=, mode=, ...).", "PATH[:OPTIONS]"),
    Opt(
        "volumes_from",
        ("--volumes-from",),
        "multiple",
        "Mount another container's host paths and volumes too.",
        "CONTAINER[:ro|rw]",
    ),
    Opt("workdir", ("-w", "--workdir"), help="Working directory inside the container."),
    Opt("hostname", ("--hostname",), help="Container host name (default: the short id)."),
    Opt("entrypoint", ("--entrypoint",), help='Override the image\'s ENTRYPOINT ("" clears it).'),
    Opt("memory", ("-m", "--memory"), help="Memory limit, e.g. 30m or 1g."),
    Opt("cpus", ("--cpus",), help="CPU limit, e.g. 0.5."),
    Opt("pids_limit", ("--pids-limit",), "int", "Maximum number of processes."),
    Opt("interactive", ("-i", "--interactive"), "flag", "Keep stdin open."),
    Opt("tty", ("-t", "--tty"), "flag", "Allocate a pseudo-terminal."),
    Opt(
        "network",
        ("--net", "--network"),
        help="bridge, none, host, container:NAME or a network made by `network create`.",
        default="bridge",
        show_default=True,
    ),
    Opt(
        "network_alias",
        ("--network-alias",),
        "multiple",
        "Another name the container answers to in its user network's DNS.",
        "ALIAS",
    ),
    Opt("dns", ("--dns",), "multiple", "A nameserver for the container.", "ADDRESS"),
    Opt("dns_search", ("--dns-search",), "multiple", "A DNS search domain.", "DOMAIN"),
    Opt("dns_option", ("--dns-option",), "multiple", "A resolv.conf option.", "OPTION"),
    Opt(
        "publish",
        ("-p", "--publish"),
        "multiple",
        "Publish a container port (bridge only).",
        "[IP:]HOST:CTR[/proto]",
    ),
    Opt("publish_all", ("-P", "--publish-all"), "flag", "Publish every exposed port."),
    Opt(
        "detach_keys",
        ("--detach-keys",),
        help="Keys that leave an -it container running (default: ctrl-p,ctrl-q).",
        metavar="KEYS",
        default="",
    ),
    Opt(
        "restart_policy",
        ("--restart",),
        help="Restart policy: no, always, unless-stopped or on-failure[:N].",
        metavar="POLICY",
        default="no",
        show_default=True,
    ),
)

_BY_FLAG = {flag: o for o in RUN_OPTIONS for flag in o.flags}


def defaults() -> dict:
    """Every option's value when it is not given."""
    return {
        o.dest: (() if o.kind == "multiple" else False if o.kind == "flag" else o.default)
        for o in RUN_OPTIONS
    }


def _take(values, opt, value):
    if opt.kind == "multiple":
        values[opt.dest] = (*values[opt.dest], value)
    elif opt.kind == "int":
        try:
            values[opt.dest] = int(value)
        except ValueError:
            raise _Unsure() from None
    else:
        values[opt.dest] = value


class _Unsure(Exception):
    """Not plainly well-formed: leave it to click."""


def parse_run_argv(argv):
    """(root or None, debug, values) for `[--root R] [--debug] run [OPTIONS] IMAGE [CMD...]`
    as click would parse it, or None when click should parse it."""
    try:
        return _parse(list(argv))
    except (_Unsure, IndexError):
        return None


def _parse(args):
    root, debug = None, False
    while args and args[0] != "run":
        a = args.pop(0)
        if a == "--root":
            root = args.pop(0)
        elif a.startswith("--root="):
            root = a[len("--root=") :]
        elif a == "--debug":
            debug = True
        else:
            raise _Unsure()
    if not args:
        raise _Unsure()
    args.pop(0)
    values = defaults()
    while args:
        a = args[0]
        if a == "--":
            args.pop(0)
            break
        if not a.startswith("-") or a == "-":
            break
        args.pop(0)
        if a.startswith("--"):
            name, eq, value = a.partition("=")
            opt = _BY_FLAG.get(name)
            if opt is None:
                raise _Unsure()
            if opt.kind == "flag":
                if eq:
                    raise _Unsure()
                values[opt.dest] = True
            else:
                _take(values, opt, value if eq else args.pop(0))
            continue
        for i, ch in enumerate(a[1:], 1):  # -dit, -eK=V, -e K=V
            opt = _BY_FLAG.get("-" + ch)
            if opt is None:
                raise _Unsure()
            if opt.kind == "flag":
                values[opt.dest] = True
                continue
            rest = a[i + 1 :]
            _take(values, opt, rest if rest else args.pop(0))
            break
    if not args:
        raise _Unsure()  # IMAGE is missing: click says so
    values["image"] = args.pop(0)
    values["command"] = tuple(args)
    return root, debug, values


def container_spec(values):
    """The ContainerSpec that parsed `run`/`create` `values` ask for."""
    from ..runtime.containers import ContainerSpec

    v = values
    # --network NAME: bridge, none, host and container:X are modes; any other value names
    # a user-defined network (bridged), as with Docker
    network_mode, network_name = v["network"], ""
    if network_mode not in ("bridge", "none", "host") and not network_mode.startswith("container:"):
        network_mode, network_name = "bridge", network_mode
    return ContainerSpec(
        image=v["image"],
        command=list(v["command"]) or None,
        entrypoint=v["entrypoint"],
        name=v["name"],
        env=list(v["env"]),
        volumes=list(v["volume"]),
        mount=list(v["mount"]),
        tmpfs=list(v["tmpfs"]),
        volumes_from=list(v["volumes_from"]),
        workdir=v["workdir"],
        hostname=v["hostname"],
        memory=v["memory"],
        cpus=v["cpus"],
        pids_limit=v["pids_limit"],
        interactive=v["interactive"],
        tty=v["tty"],
        auto_remove=v["auto_remove"],
        network_mode=network_mode,
        network_name=network_name,
        network_aliases=list(v["network_alias"]),
        dns=list(v["dns"]),
        dns_search=list(v["dns_search"]),
        dns_options=list(v["dns_option"]),
        publish=list(v["publish"]),
        publish_all=v["publish_all"],
        restart=v["restart_policy"],
        detach_keys=v["detach_keys"],
    )


def create(root, values) -> int:
    """Do `create` with parsed `values`: print the new container's id; 0."""
    from ..runtime.containers import Runtime
    from .pulling import ensure_image

    spec = container_spec(values)
    ensure_image(root, spec.image)  # a missing image is pulled first, as Docker's create does
    sys.stdout.write(Runtime(root).create(spec).id + "\n")
    return 0


def execute(root, values) -> int:
    """Do `run` with parsed `values` under state root `root`: the exit code (detached: 0,
    after printing the id)."""
    from ..runtime.containers import Runtime
    from .pulling import ensure_image

    v = values
    spec = container_spec(v)
    ensure_image(root, spec.image)  # a missing image is pulled first, like Docker's run
    rt = Runtime(root)
    if v["detach"]:
        c = rt.run(spec, detach=True)
        sys.stdout.write(c.id + "\n")
        sys.stdout.flush()
        return 0
    restore = None
    if spec.tty and spec.interactive and sys.stdin.isatty():
        import termios
        import tty as ttymod

        restore = termios.tcgetattr(0)
        ttymod.setraw(0)
    try:
        c = rt.run(spec, detach=False)
    finally:
        if restore is not None:
            import termios

            termios.tcsetattr(0, termios.TCSADRAIN, restore)
    return c.exit_code


def exit_now(code):
    """End the console script at once (flushing stdio): the interpreter's teardown
    costs the start path 10-50 ms and there is nothing left to clean up."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code & 0xFF)
