"""Container commands: run, create, ps, exec, logs, start, stop, restart, kill, rm, pause,
unpause, update, wait, rename, inspect, top, cp.

Thin click wrappers over `pyinspect.runtime.containers.Runtime`; the runtime is
imported inside each command so `pyinspect --help` stays cheap.
"""

import atexit
import os
import sys

import click

_NO_INTERSPERSE = {"allow_interspersed_args": False}


def _exit_fast(code):
    """When this process is the `pyinspect` console script, end it right after the
    command with os._exit: the interpreter's teardown (freeing every module) costs
    the start path 10-50 ms and there is nothing left to clean up. In-process
    callers (tests, other tools) are left alone."""
    if os.path.basename(sys.argv[0]) != "pyinspect":
        return

    def _now():
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code & 0xFF)

    atexit.register(_now)


def _runtime(obj):
    from ..runtime.containers import Runtime

    return Runtime(obj["root"])


def _echo_json(data):
    import json

    click.echo(json.dumps(data, indent=4))


def _run_options(f, without=()):
    """The click options of `run` (less those named in `without`), from the one table
    (run_options.RUN_OPTIONS)."""
    from .run_options import RUN_OPTIONS

    for o in reversed([o for o in RUN_OPTIONS if o.dest not in without]):
        f = click.option(
            *o.flags,
            o.dest,
            is_flag=o.kind == "flag",
            multiple=o.kind == "multiple",
            type=int if o.kind == "int" else None,
            metavar=o.metavar,
            help=o.help,
            default=False if o.kind == "flag" else o.default,
            show_default=o.show_default,
        )(f)
    return f


def _create_options(f):
    """`create` takes `run`'s options but -d (Docker's create has none)."""
    return _run_options(f, without=("detach",))


@click.command(context_settings=_NO_INTERSPERSE)
@_run_options
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def run(obj, **values):
    """Create and start a container from IMAGE, running COMMAND (default: the image's).

    Attached (without -d) it prints the container's output and exits with its
    exit code; with -d it prints the id and leaves the container running.
    """
    from .run_options import execute

    code = execute(obj["root"], values)
    _exit_fast(code)
    return code


@click.command(context_settings=_NO_INTERSPERSE)
@_create_options
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def create(obj, **values):
    """Create a container from IMAGE without starting it; print its id (`start` runs it)."""
    from .run_options import create as create_container

    return create_container(obj["root"], values)


@click.command()
@click.option("-a", "--all", "all_", is_flag=True, help="Show stopped containers too.")
@click.option("-q", "--quiet", is_flag=True, help="Only ids.")
@click.option(
    "--format",
    "fmt",
    default="table",
    show_default=True,
    metavar="FORMAT",
    help="table, json (one object per line), 'table TEMPLATE' or a Go template "
    "such as '{{.ID}} {{.Names}} {{.Ports}}'.",
)
@click.option(
    "-f",
    "--filter",
    "filters",
    multiple=True,
    metavar="KEY=VALUE",
    help="Only containers that match: name, id, status, exited, ancestor, network, "
    "publish, expose, before, since, label (Docker's filters; repeat for more).",
)
@click.option(
    "-s", "--size", is_flag=True, help="Show the writable layer's size (and with the image's)."
)
@click.pass_obj
def ps(obj, all_, quiet, fmt, filters, size):
    """List containers (running ones unless -a), with Docker's columns (PORTS,
    CREATED as "2 minutes ago") and --format placeholders (.ID, .Image, .Command,
    .CreatedAt, .RunningFor, .Ports, .State, .Status, .Names, .Networks, ...).

    \b
    Examples:
      pyinspect ps -a --filter status=exited -q
      pyinspect ps --filter publish=8088 --filter name=web
    """
    from ..dockerfmt.psfilter import PsFilter
    from ..dockerfmt.psformat import format_ps, ps_rows, wants_size
    from ..runtime.diskusage import container_sizes

    flt = PsFilter.parse(filters)
    rt = _runtime(obj)
    found = flt.select(rt.list(all=all_ or flt.lists_stopped), rt.image_id, rt.image_descends)
    if quiet:
        for c in found:
            click.echo(c.short_id)
        return 0
    size = wants_size(fmt, size)
    rows = ps_rows(found, container_sizes(obj["root"], found) if size else None)
    for line in format_ps(rows, fmt, size):
        click.echo(line)
    return 0


@click.command()
@click.argument("container")
@click.pass_obj
def diff(obj, container):
    """List what a container changed in its root filesystem: A added, C changed,
    D deleted (the overlay's upper layer against the image's layers).

    \b
    Examples:
      pyinspect diff test
    """
    for change in _runtime(obj).diff(container):
        click.echo(str(change))


@click.command()
@click.argument("container")
@click.argument("private_port", metavar="[PRIVATE_PORT[/PROTO]]", required=False)
@click.pass_obj
def port(obj, container, private_port):
    """List a container's port mappings, or the host addresses of one of its ports.

    \b
    Examples:
      pyinspect port test            # 80/tcp -> 0.0.0.0:8088
      pyinspect port test 80         # 0.0.0.0:8088
      pyinspect port test 53/udp
    """
    from ..dockerfmt.psformat import port_lines

    doc = _runtime(obj).inspect_container(container)
    ports = doc["NetworkSettings"]["Ports"]
    for line in port_lines(ports, container, private_port):
        click.echo(line)


@click.command(context_settings=_NO_INTERSPERSE)
@click.option("-i", "--interactive", is_flag=True, help="Pass stdin to the command.")
@click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-terminal.")
@click.option("-e", "--env", multiple=True, metavar="K=V", help="Set an environment variable.")
@click.option("-w", "--workdir", help="Working directory inside the container.")
@click.argument("container")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def exec_(obj, interactive, tty, env, workdir, container, command):
    """Run COMMAND in a running CONTAINER (its namespaces and cgroups); exits with its code."""
    restore = None
    if tty and interactive and sys.stdin.isatty():
        import termios
        import tty as ttymod

        restore = termios.tcgetattr(0)
        ttymod.setraw(0)
    try:
        return _runtime(obj).exec(
            container,
            list(command),
            env=list(env),
            workdir=workdir,
            interactive=interactive,
            tty=tty,
        )
    finally:
        if restore is not None:
            import termios

            termios.tcsetattr(0, termios.TCSADRAIN, restore)


exec_.name = "exec"


@click.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the container stops.")
@click.option("-n", "--tail", default="all", show_default=True, help="Only the last N lines.")
@click.argument("container")
@click.pass_obj
def logs(obj, follow, tail, container):
    """Print a container's stdout and stderr (to stdout and stderr)."""
    from ..errors import UsageError

    if tail == "all":
        n = None
    else:
        try:
            n = int(tail)
        except ValueError:
            raise UsageError(f"invalid --tail {tail!r}: expected a number or 'all'") from None
    outs = {"stdout": sys.stdout.buffer, "stderr": sys.stderr.buffer}
    for stream, data in _runtime(obj).logs(container, follow=follow, tail=n):
        out = outs.get(stream, sys.stdout.buffer)
        out.write(data)
        if follow:
            out.flush()
    return 0


def _each(names, fn, shown=None):
    """Apply `fn` to every name and print the name (or `shown(result)`); report
    failures one line each; non-zero if any failed."""
    from ..errors import PyinspectError

    failed = None
    for name in names:
        try:
            result = fn(name)
            click.echo(name if shown is None else shown(result))
        except PyinspectError as exc:
            if len(names) == 1:
                raise
            click.echo(f"Error: {exc}", err=True)
            failed = exc
    return failed.exit_code if failed else 0


@click.command()
@click.option("--no-stdin", is_flag=True, help="Do not send this terminal's input to it.")
@click.option(
    "--sig-proxy",
    type=click.BOOL,
    default=True,
    show_default=True,
    help="Pass SIGINT and SIGTERM on to it (without -t).",
)
@click.option(
    "--detach-keys",
    default="ctrl-p,ctrl-q",
    show_default=True,
    help="Keys that leave it running (with -it).",
)
@click.argument("container")
@click.pass_obj
def attach(obj, no_stdin, sig_proxy, detach_keys, container):
    """Show a running container's output from now on and, when it was created with -i,
    send it this terminal's input; exit with its exit code when it stops.

    \b
    Examples:
      pyinspect attach web
      pyinspect attach --sig-proxy=false web
    """
    from ..runtime.attach import attach as attach_to

    stdin = None if no_stdin else sys.stdin.fileno()
    code = attach_to(
        _runtime(obj),
        container,
        stdin,
        sys.stdout.buffer,
        sys.stderr.buffer,
        sig_proxy=sig_proxy,
        detach_keys=detach_keys,
    )
    _exit_fast(code)
    return code


@click.command()
@click.option("-a", "--attach", is_flag=True, help="Print its output and exit with its code.")
@click.option("-i", "--interactive", is_flag=True, help="Attach, with stdin (as created -i).")
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def start(obj, attach, interactive, containers):
    """Start stopped containers (detached, unless -a)."""
    from ..errors import UsageError

    rt = _runtime(obj)
    if not (attach or interactive):
        return _each(containers, rt.start)
    if len(containers) > 1:
        raise UsageError("start: -a/-i attach to one container at a time")
    code = rt.start(containers[0], attach=True).exit_code
    _exit_fast(code)
    return code


@click.command()
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def pause(obj, containers):
    """Freeze every process of running containers."""
    return _each(containers, _runtime(obj).pause)


@click.command()
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def unpause(obj, containers):
    """Let paused containers run again."""
    return _each(containers, _runtime(obj).unpause)


@click.command()
@click.option("-m", "--memory", help="Memory limit (e.g. 64m, 1g).")
@click.option("--cpus", help="Number of CPUs (e.g. 0.5).")
@click.option("--pids-limit", type=int, help="Most processes at once (-1: no limit).")
@click.option("--restart", help="Restart policy: no, always, unless-stopped, on-failure[:N].")
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def update(obj, memory, cpus, pids_limit, restart, containers):
    """Change containers' limits and restart policy, at once if they run.

    \b
    Examples:
      pyinspect update --memory 128m --cpus 0.5 web
      pyinspect update --restart unless-stopped web db
    """
    from ..errors import UsageError

    if memory is None and cpus is None and pids_limit is None and restart is None:
        raise UsageError(  # (Docker's words)
            "you must provide one or more flags when using this command",
            "--memory, --cpus, --pids-limit or --restart",
        )
    rt = _runtime(obj)
    return _each(containers, lambda name: rt.update(name, memory, cpus, pids_limit, restart))


@click.command()
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def wait(obj, containers):
    """Wait until containers stop, then print their exit codes."""
    return _each(containers, _runtime(obj).wait, shown=str)


@click.command()
@click.argument("container")
@click.argument("new_name")
@click.pass_obj
def rename(obj, container, new_name):
    """Rename a container (its `ip netns` link and user-network DNS name too)."""
    _runtime(obj).rename(container, new_name)


# `stop` and `restart`: docker's -t/--time
_stop_timeout = click.option(
    "-t",
    "--time",
    "timeout",
    type=int,
    default=10,
    show_default=True,
    help="Seconds to wait after SIGTERM before SIGKILL.",
)


@click.command()
@_stop_timeout
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def stop(obj, timeout, containers):
    """Stop running containers: SIGTERM, then SIGKILL after -t seconds."""
    rt = _runtime(obj)
    return _each(containers, lambda n: rt.stop(n, timeout))


@click.command()
@_stop_timeout
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def restart(obj, timeout, containers):
    """Stop and start containers again."""
    rt = _runtime(obj)
    return _each(containers, lambda n: rt.restart(n, timeout))


@click.command()
@click.option(
    "-s", "--signal", "sig", default="KILL", show_default=True, help="Signal name or number."
)
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def kill(obj, sig, containers):
    """Send a signal to running containers."""
    rt = _runtime(obj)
    return _each(containers, lambda n: rt.kill(n, sig))


@click.command()
@click.option("-f", "--force", is_flag=True, help="Kill running containers first.")
@click.option("-v", "--volumes", is_flag=True, help="Also remove their anonymous volumes.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def rm(obj, force, volumes, containers):
    """Remove containers and everything they made."""
    rt = _runtime(obj)
    return _each(containers, lambda n: rt.remove(n, force=force, volumes=volumes))


@click.command()
@click.option(
    "-f",
    "--format",
    "fmt",
    metavar="TEMPLATE",
    help="Print each object through a Go template, e.g. '{{.State.Pid}}', "
    "'{{.NetworkSettings.IPAddress}}', '{{json .Config}}'.",
)
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def inspect(obj, fmt, names):
    """Docker-like JSON for containers (or, failing that, images)."""
    from ..errors import PyinspectError

    tmpl = None
    if fmt is not None:
        from ..dockerfmt.gotemplate import parse

        tmpl = parse(fmt)
    rt = _runtime(obj)
    out, failed = [], None
    for name in names:
        try:
            doc = rt.inspect(name)
            if tmpl is not None:
                click.echo(tmpl.render(doc))
            else:
                out.append(doc)
        except PyinspectError as exc:
            if len(names) == 1:
                raise
            click.echo(f"Error: {exc}", err=True)
            failed = exc
    if tmpl is None:
        _echo_json(out)
    return failed.exit_code if failed else 0


@click.command(context_settings={**_NO_INTERSPERSE, "ignore_unknown_options": True})
@click.argument("container")
@click.argument("ps_options", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def top(obj, container, ps_options):
    """Show the processes of a running container: `ps` with PS_OPTIONS (default -ef)
    on the host, only the rows of the container's processes (host pids), like
    `docker top NAME aux`."""
    from ..dockerfmt.psformat import tabwrite

    data = _runtime(obj).top(container, list(ps_options) or None)
    rows = [data["Titles"]] + data["Processes"]
    for line in tabwrite(["\t".join(r) for r in rows], minwidth=20):
        click.echo(line)
    return 0


@click.command()
@click.argument("src")
@click.argument("dest")
@click.pass_obj
def cp(obj, src, dest):
    """Copy files between a container and the host: `cp NAME:PATH HOSTPATH` or
    `cp HOSTPATH NAME:PATH`. Paths inside the container resolve inside its root."""
    _runtime(obj).cp(src, dest)
    return 0


@click.command()
@click.option(
    "--boot",
    is_flag=True,
    help="As at boot (Docker's daemon start): also `always` containers the user had stopped.",
)
@click.pass_obj
def autostart(obj, boot):
    """Start the containers whose restart policy wants them running and whose monitor
    is gone (after a reboot or a killed monitor); prints their names."""
    for c in _runtime(obj).autostart(boot=boot):
        click.echo(c.name)
    return 0


@click.command("install-service")
@click.option(
    "--unit-dir",
    default="/etc/systemd/system",
    show_default=True,
    help="Where to write the unit file.",
)
@click.option("--no-enable", is_flag=True, help="Only write the unit (no systemctl).")
@click.pass_obj
def install_service(obj, unit_dir, no_enable):
    """Write (and enable) a systemd unit that runs `pyinspect autostart --boot` at boot,
    so containers with a restart policy come back after a reboot."""
    from ..service import install

    result = install(obj["root"], unit_dir, enable=not no_enable)
    click.echo(result.path)
    if result.note:
        click.echo(result.note, err=True)
    return 0
