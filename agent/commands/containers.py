"""Container commands: run, ps, exec, logs, start, stop, restart, kill, rm, inspect, top, cp.

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


@click.command(context_settings=_NO_INTERSPERSE)
@click.option("-d", "--detach", is_flag=True, help="Run in the background and print the id.")
@click.option("--name", help="Container name ([a-zA-Z0-9][a-zA-Z0-9_.-]+).")
@click.option("--rm", "auto_remove", is_flag=True, help="Remove the container when it exits.")
@click.option("-e", "--env", multiple=True, metavar="K=V", help="Set an environment variable.")
@click.option("-v", "--volume", multiple=True, metavar="HOST:CTR[:ro]", help="Bind mount.")
@click.option("-w", "--workdir", help="Working directory inside the container.")
@click.option("--hostname", help="Container host name (default: the short id).")
@click.option("--entrypoint", help="Override the image's ENTRYPOINT (\"\" clears it).")
@click.option("-m", "--memory", help="Memory limit, e.g. 30m or 1g.")
@click.option("--cpus", help="CPU limit, e.g. 0.5.")
@click.option("--pids-limit", type=int, help="Maximum number of processes.")
@click.option("-i", "--interactive", is_flag=True, help="Keep stdin open.")
@click.option("-t", "--tty", is_flag=True, help="Allocate a pseudo-terminal.")
@click.option("--net", "--network", "network", default="bridge", show_default=True,
              help="bridge, none, host or container:NAME.")
@click.option("-p", "--publish", multiple=True, metavar="[IP:]HOST:CTR[/proto]",
              help="Publish a container port (bridge only).")
@click.option("-P", "--publish-all", is_flag=True, help="Publish every exposed port.")
@click.argument("image")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def run(obj, detach, name, auto_remove, env, volume, workdir, hostname, entrypoint, memory,
        cpus, pids_limit, interactive, tty, network, publish, publish_all, image, command):
    """Create and start a container from IMAGE, running COMMAND (default: the image's).

    Attached (without -d) it prints the container's output and exits with its
    exit code; with -d it prints the id and leaves the container running.
    """
    from ..runtime.containers import ContainerSpec
    spec = ContainerSpec(image=image, command=list(command) or None, entrypoint=entrypoint,
                         name=name, env=list(env), volumes=list(volume), workdir=workdir,
                         hostname=hostname, memory=memory, cpus=cpus, pids_limit=pids_limit,
                         interactive=interactive, tty=tty, auto_remove=auto_remove,
                         network_mode=network, publish=list(publish), publish_all=publish_all)
    rt = _runtime(obj)
    if detach:
        c = rt.run(spec, detach=True)
        click.echo(c.id)
        _exit_fast(0)
        return 0
    restore = None
    if tty and interactive and sys.stdin.isatty():
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
    _exit_fast(c.exit_code)
    return c.exit_code


@click.command()
@click.option("-a", "--all", "all_", is_flag=True, help="Show stopped containers too.")
@click.option("-q", "--quiet", is_flag=True, help="Only ids.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="Output format (json: one object per line).")
@click.pass_obj
def ps(obj, all_, quiet, fmt):
    """List containers (running ones unless -a)."""
    import json
    rows = _runtime(obj).list(all=all_)
    if quiet:
        for c in rows:
            click.echo(c.short_id)
        return 0
    if fmt == "json":
        for c in rows:
            click.echo(json.dumps(_ps_row(c)))
        return 0
    table = [("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NETWORK", "NAMES")]
    for c in rows:
        r = _ps_row(c)
        table.append((r["ID"], r["Image"], r["Command"], r["CreatedAt"][:19].replace("T", " "),
                      r["Status"], r["Networks"], r["Names"]))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(table[0]))]
    for row in table:
        click.echo("   ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
    return 0


def _ago(rfc3339):
    """'2026-01-01T10:00:00.123Z' -> '5 seconds' / '3 minutes' / '2 hours' / '4 days'."""
    import calendar
    import time
    try:
        then = calendar.timegm(time.strptime(rfc3339[:19], "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, TypeError):
        return "?"
    secs = max(0, int(time.time() - then))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if secs >= size:
            n = secs // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{secs} second{'s' if secs != 1 else ''}"


def _ps_row(c):
    argv = c.process.get("argv") or []
    cmd = " ".join(argv)
    if len(cmd) > 22:
        cmd = cmd[:21] + "…"
    if c.status == "running":
        status = f"Up {_ago(c.started_at)}"
    elif c.status == "exited":
        status = f"Exited ({c.exit_code}) {_ago(c.finished_at)} ago" + (
            " (OOMKilled)" if c.oom_killed else "")
    elif c.status == "damaged":
        status = "Damaged"
    else:
        status = "Created"
    row = {"ID": c.short_id, "Id": c.id, "Image": c.image, "Command": f'"{cmd}"',
           "CreatedAt": c.created, "State": c.status, "Status": status,
           "ExitCode": c.exit_code, "Pid": c.pid, "Names": c.name,
           "Networks": (c.network or {}).get("mode", c.spec.network_mode),
           "IPAddress": (c.network or {}).get("ip", "")}
    if c.status == "damaged":
        row["Error"] = c.error  # what is wrong with the record (`inspect` says it too)
    return row


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
        return _runtime(obj).exec(container, list(command), env=list(env), workdir=workdir,
                                  interactive=interactive, tty=tty)
    finally:
        if restore is not None:
            import termios
            termios.tcsetattr(0, termios.TCSADRAIN, restore)


exec_.name = "exec"


@click.command()
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the container stops.")
@click.option("-n", "--tail", default="all", show_default=True,
              help="Only the last N lines.")
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


def _each(names, fn):
    """Apply `fn` to every name; report failures one line each; non-zero if any failed."""
    from ..errors import PyinspectError
    failed = None
    for name in names:
        try:
            fn(name)
            click.echo(name)
        except PyinspectError as exc:
            if len(names) == 1:
                raise
            click.echo(f"Error: {exc}", err=True)
            failed = exc
    return failed.exit_code if failed else 0


@click.command()
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def start(obj, containers):
    """Start stopped containers (detached)."""
    rt = _runtime(obj)
    return _each(containers, rt.start)


@click.command()
@click.option("-t", "--time", "timeout", type=int, default=10, show_default=True,
              help="Seconds to wait after SIGTERM before SIGKILL.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def stop(obj, timeout, containers):
    """Stop running containers: SIGTERM, then SIGKILL after -t seconds."""
    rt = _runtime(obj)
    return _each(containers, lambda n: rt.stop(n, timeout))


@click.command()
@click.option("-t", "--time", "timeout", type=int, default=10, show_default=True,
              help="Seconds to wait after SIGTERM before SIGKILL.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def restart(obj, timeout, containers):
    """Stop and start containers again."""
    rt = _runtime(obj)
    return _each(containers, lambda n: rt.restart(n, timeout))


@click.command()
@click.option("-s", "--signal", "sig", default="KILL", show_default=True,
              help="Signal name or number.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def kill(obj, sig, containers):
    """Send a signal to running containers."""
    rt = _runtime(obj)
    return _each(containers, lambda n: rt.kill(n, sig))


@click.command()
@click.option("-f", "--force", is_flag=True, help="Kill running containers first.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_obj
def rm(obj, force, containers):
    """Remove containers and everything they made."""
    rt = _runtime(obj)
    return _each(containers, lambda n: rt.remove(n, force=force))


@click.command()
@click.argument("names", nargs=-1, required=True)
@click.pass_obj
def inspect(obj, names):
    """Docker-like JSON for containers (or, failing that, images)."""
    from ..errors import PyinspectError
    rt = _runtime(obj)
    out, failed = [], None
    for name in names:
        try:
            out.append(rt.inspect(name))
        except PyinspectError as exc:
            if len(names) == 1:
                raise
            click.echo(f"Error: {exc}", err=True)
            failed = exc
    _echo_json(out)
    return failed.exit_code if failed else 0


@click.command()
@click.argument("container")
@click.pass_obj
def top(obj, container):
    """Show the processes of a running container (host pids)."""
    data = _runtime(obj).top(container)
    rows = [data["Titles"]] + data["Processes"]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1])
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
