"""The `pyinspect` command line: a thin, lazily loaded click shell over the libraries.

Each command lives in `pyinspect.commands.<module>`; only the module of the
command being run is imported, so `pyinspect run` does not pay for the probes,
the web app or the store. Errors from the libraries become one line here.
"""

import importlib
import os
import sqlite3
import sys

import click

from . import __version__
from .errors import CorruptInputError, PyinspectError, UnavailableError

# command name -> (module under pyinspect.commands, attribute, one-line help)
COMMANDS = {
    "version": ("info", "version", "Show the versions of pyinspect and what it runs on."),
    "info": (
        "info",
        "info",
        "Show the kernel, cgroups, iptables backends and which eBPF hooks load.",
    ),
    "demo": ("demo", "demo", "Run the end-to-end demo on embedded defaults."),
    # images
    "images": ("images", "images", "List images."),
    "history": ("images", "history", "Show the steps that made an image."),
    "load": ("images", "load", "Load an image from a docker-save archive or OCI layout."),
    "save": ("images", "save", "Save images to a docker-save/OCI archive."),
    "tag": ("images", "tag", "Give an image another name."),
    "rmi": ("images", "rmi", "Remove images."),
    "image": ("prune", "image", "Manage images: prune."),
    "container": ("prune", "container", "Manage containers: prune."),
    "system": ("system", "system", "Manage stored objects: df, prune."),
    "volume": ("volume", "volume", "Manage volumes: create, ls, inspect, rm, prune."),
    "login": ("registry", "login", "Log in to a registry."),
    "logout": ("registry", "logout", "Log out from a registry."),
    "pull": ("registry", "pull", "Pull an image from a registry."),
    "push": ("registry", "push", "Push an image to a registry."),
    "search": ("registry", "search", "Search a registry for repositories."),
    "build": ("build", "build", "Build an image from a Dockerfile."),
    "commit": ("snapshots", "commit", "Create an image from a container's changes."),
    "export": ("snapshots", "export", "Write a container's filesystem as a tar archive."),
    "import": ("snapshots", "import_", "Create an image from a filesystem tarball."),
    # containers
    "run": ("containers", "run", "Create and start a container."),
    "create": ("containers", "create", "Create a container without starting it."),
    "ps": ("containers", "ps", "List containers."),
    "exec": ("containers", "exec_", "Run a command in a running container."),
    "logs": ("containers", "logs", "Show a container's output."),
    "attach": ("containers", "attach", "Attach to a running container's output and stdin."),
    "start": ("containers", "start", "Start stopped containers."),
    "stop": ("containers", "stop", "Stop running containers."),
    "restart": ("containers", "restart", "Restart containers."),
    "kill": ("containers", "kill", "Send a signal to containers."),
    "rm": ("containers", "rm", "Remove containers."),
    "pause": ("containers", "pause", "Freeze every process of containers."),
    "unpause": ("containers", "unpause", "Let paused containers run again."),
    "update": ("containers", "update", "Change containers' limits and restart policy."),
    "wait": ("containers", "wait", "Wait until containers stop; print their exit codes."),
    "rename": ("containers", "rename", "Rename a container."),
    "inspect": ("containers", "inspect", "Show low-level JSON about containers or images."),
    "top": ("containers", "top", "Show a container's processes."),
    "port": ("containers", "port", "List a container's port mappings."),
    "diff": ("containers", "diff", "List what a container changed in its filesystem."),
    "stats": ("stats", "stats", "Show containers' CPU, memory, network and block I/O use."),
    "cp": ("containers", "cp", "Copy files between a container and the host."),
    "autostart": ("containers", "autostart", "Start containers their restart policy brings back."),
    "install-service": (
        "containers",
        "install_service",
        "Write a systemd unit that runs autostart at boot.",
    ),
    # networking
    "network": ("network", "network", "Inspect pyinspect's networks."),
    "map": ("observe", "map_", "Show the veth map: every interface, its peer and container."),
    "events": ("observe", "events", "Show the process, cgroup and link timeline."),
    "trace": ("trace", "trace", "Follow a container's packets through NAT, bridge and veth."),
    "pcap": ("pcap", "pcap", "Export and merge pcapng captures."),
    "extcap": ("extcap", "extcap", "Live capture into Wireshark/tshark (extcap interface)."),
    "serve": ("serve", "serve", "Run the agent and its dashboard."),
    "doctor": ("doctor", "doctor", "Check the usual causes of broken container networking."),
}


_used_root = [""]  # set by cli(); named in store errors


class LazyGroup(click.Group):
    """A group whose commands are imported only when invoked."""

    def list_commands(self, ctx):
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx, name):
        if name in self.commands:
            return self.commands[name]
        spec = COMMANDS.get(name)
        if spec is None:
            return None
        try:
            module = importlib.import_module(f"pyinspect.commands.{spec[0]}")
        except ModuleNotFoundError as exc:
            if exc.name == f"pyinspect.commands.{spec[0]}":
                return None  # not built yet: the group reports an unknown command
            raise
        return getattr(module, spec[1], None)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx) if name in COMMANDS]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="pyinspect")
@click.option(
    "--root",
    envvar="PYINSPECT_ROOT",
    type=click.Path(file_okay=False),
    help="State directory (default /var/lib/pyinspect).",
)
@click.option("--debug", is_flag=True, envvar="PYINSPECT_DEBUG", help="Show tracebacks on errors.")
@click.pass_context
def cli(ctx, root, debug):
    """pyinspect: where did my packet go? Containers, probes, traces and diagnosis."""
    from .config import state_root

    ctx.obj = {"root": state_root(root), "debug": debug}
    _used_root[:] = [ctx.obj["root"]]
    if debug:
        os.environ["PYINSPECT_DEBUG"] = "1"
    _undo_killed_traces(ctx.obj["root"])


def _undo_killed_traces(root):
    """A trace killed with -9 leaves tc filters and TRACE rules: the next command removes them.

    Costs one listdir when nothing was left (the tracer is imported only when needed).
    """
    try:
        names = os.listdir(os.path.join(root, "trace"))
    except OSError:
        return
    for name in names:
        stem = name[:-5] if name.endswith(".json") and not name.endswith(".nflog.json") else ""
        if not stem.isdigit() or int(stem) == os.getpid():
            continue
        try:
            os.kill(int(stem), 0)
        except ProcessLookupError:
            break  # a dead session's record: clean up below
        except PermissionError:
            pass
    else:
        return
    from .trace.stale import cleanup_stale

    for line in cleanup_stale(root):
        click.echo(f"note: removed what a killed trace left: {line}", err=True)


def _debug():
    """--debug or PYINSPECT_DEBUG set to anything but '', 0, false, no or off."""
    return os.environ.get("PYINSPECT_DEBUG", "").strip().lower() not in (
        "",
        "0",
        "false",
        "no",
        "off",
    )


def main(argv=None):
    """Entry point: run the CLI, turning library errors into `Error: ...` and an exit code."""
    try:
        rv = cli.main(args=argv, prog_name="pyinspect", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:  # one line, as every other error (not click's three)
        where = exc.ctx.command_path if exc.ctx else "pyinspect"
        click.echo(f"Error: {exc.format_message()} (see '{where} --help')", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except PyinspectError as exc:
        if _debug():
            raise
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except sqlite3.Error as exc:  # a query reached a damaged (or locked) store
        if _debug():
            raise
        damaged = type(exc) is sqlite3.DatabaseError  # SQLITE_CORRUPT / SQLITE_NOTADB
        from .config import database_path

        click.echo(
            f"Error: reading the store {database_path(_used_root[0])}: {exc} ("
            + ("move it away or use another --root)" if damaged else "try again)"),
            err=True,
        )
        sys.exit(CorruptInputError.exit_code if damaged else UnavailableError.exit_code)
    except Exception as exc:  # last resort: never a traceback without --debug
        if _debug():
            raise
        click.echo(
            f"Error: internal error: {type(exc).__name__}: {exc} "
            f"(run with --debug for the traceback)",
            err=True,
        )
        sys.exit(70)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
