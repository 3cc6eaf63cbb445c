"""`pyinspect extcap`: live capture into Wireshark/tshark through Wireshark's extcap interface."""

import os
import select
import signal

import click


@click.command(
    epilog="""\b
Wireshark runs it (after `pyinspect extcap --install`):
  pyinspect extcap --extcap-interfaces
  pyinspect extcap --extcap-interface pyinspect-web --extcap-config
  pyinspect extcap --extcap-interface pyinspect-web --capture --fifo FIFO
By hand, pcapng on stdout (e.g. over ssh into a desktop Wireshark):
  pyinspect extcap --extcap-interface pyinspect-web --capture --fifo - | tshark -r -
  ssh host pyinspect extcap --extcap-interface pyinspect-web --capture --fifo - \\
      | wireshark -k -i -
See docs/wireshark.md."""
)
@click.option(
    "--extcap-interfaces",
    "list_ifaces",
    is_flag=True,
    help="List one interface per running container (extcap).",
)
@click.option("--extcap-version", metavar="VERSION", help="Wireshark's version (extcap).")
@click.option(
    "--extcap-interface",
    "interface",
    metavar="NAME",
    help="The interface (pyinspect-<container>) the other flags are about.",
)
@click.option("--extcap-dlts", "dlts", is_flag=True, help="Print the interface's link type.")
@click.option("--extcap-config", "config", is_flag=True, help="Print the interface's options.")
@click.option(
    "--extcap-capture-filter",
    "capture_filter",
    metavar="EXPR",
    help="Wireshark's capture filter (pcap-filter syntax); alone: check it.",
)
@click.option("--extcap-reload-option", hidden=True)
@click.option("--extcap-control-in", hidden=True)
@click.option("--extcap-control-out", hidden=True)
@click.option("--debug", "ws_debug", is_flag=True, hidden=True)
@click.option("--debug-file", hidden=True)
@click.option("--log-level", hidden=True)
@click.option("--log-file", hidden=True)
@click.option("--capture", is_flag=True, help="Capture into --fifo.")
@click.option("--fifo", metavar="PATH", help="Where the pcapng goes ('-': stdout).")
@click.option(
    "--container",
    "container",
    metavar="NAME",
    help="Container to capture (default: the interface's).",
)
@click.option(
    "--filter",
    "bpf_filter",
    metavar="EXPR",
    help="pcap-filter expression: only matching packets are captured.",
)
@click.option(
    "--snaplen",
    type=click.IntRange(0, 262144),
    default=None,
    help="Bytes kept per packet (default and 0: whole packets).",
)
@click.option(
    "--points",
    metavar="ROLES",
    help="Capture points, comma-separated: uplink,bridge,veth,container (default: all).",
)
@click.option(
    "--comments-delay",
    "delay",
    type=click.FloatRange(0, 10),
    default=1.0,
    show_default=True,
    help="At most this many seconds a packet is held back so the analysis can "
    "give it its NAT comment ('flow N: ...', as pcap export does); 0: no "
    "comments, no delay.",
)
@click.option(
    "--install", is_flag=True, help="Install the launcher into Wireshark's extcap folder and exit."
)
@click.option(
    "--install-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="With --install: this folder instead of Wireshark's.",
)
@click.option(
    "--install-sudo",
    is_flag=True,
    help="With --install: the launcher runs pyinspect through `sudo -n` (for a "
    "Wireshark run by a user; see docs/wireshark.md).",
)
@click.pass_context
def extcap(
    ctx,
    list_ifaces,
    extcap_version,
    interface,
    dlts,
    config,
    capture_filter,
    extcap_reload_option,
    extcap_control_in,
    extcap_control_out,
    ws_debug,
    debug_file,
    log_level,
    log_file,
    capture,
    fifo,
    container,
    bpf_filter,
    snaplen,
    points,
    delay,
    install,
    install_dir,
    install_sudo,
):
    """Live capture into Wireshark/tshark (Wireshark's extcap interface)."""
    from pyinspect import extcap as X
    from pyinspect.errors import UsageError

    root = ctx.obj["root"]
    if install:
        given = ctx.parent.params.get("root") if ctx.parent else None  # --root or env
        path = X.install(install_dir, root=str(root) if given else None, sudo=install_sudo)
        click.echo(f"installed {path}")
        return
    if list_ifaces:
        click.echo(X.interfaces_text(X.interfaces(root), _version()), nl=False)
        return
    if not interface:
        raise UsageError(
            "extcap: --extcap-interface is required",
            "pyinspect extcap --extcap-interfaces lists them",
        )
    if dlts:
        click.echo(X.dlts_text(interface), nl=False)
        return
    if config:
        click.echo(X.config_text(interface), nl=False)
        return
    expr = X.join_filters(bpf_filter, capture_filter)
    if not capture:
        if capture_filter is None:
            raise UsageError(
                "extcap: nothing to do", "give --capture, --extcap-config or --extcap-dlts"
            )
        X.check_filter(capture_filter)  # Wireshark's filter check: exit 0 = valid
        return
    if not fifo:
        raise UsageError("extcap: --capture needs --fifo PATH ('-' for stdout)")
    _capture(
        root,
        container or X.container_of(interface),
        fifo,
        expr,
        snaplen,
        X.parse_points(points),
        delay,
    )


def _version():
    from pyinspect import __version__

    return __version__


def _capture(root, container, fifo, expr, snaplen, roles, delay):
    """Trace `container` with its evidence going to `fifo` until Wireshark stops it
    (SIGTERM, SIGINT, SIGHUP, or the reader goes away), or the container does."""
    from pyinspect.errors import NotFoundError, UnavailableError
    from pyinspect.extcap import check_filter, check_privileges
    from pyinspect.trace import TraceOptions, TraceSession
    from pyinspect.trace.stream import StreamFile

    def on_signal(signum, frame):
        session.done = True  # the loop ends after this poll

    olds = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    fd = -1
    session = TraceSession(
        root,
        container,
        TraceOptions(
            snaplen=snaplen,
            stream_filter=expr,
            roles=roles,
            events=False,
            stream_delay=delay,
            live="off",  # the stream is the output
        ),
    )
    try:
        # the fifo is opened first, whatever follows: dumpcap waits for that open, and
        # sees an error below as the pipe closing, with our stderr as the reason
        try:
            fd = os.dup(1) if fifo == "-" else os.open(fifo, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise UnavailableError(
                f"extcap: cannot open --fifo {fifo}: {exc.strerror}",
                "Wireshark makes the fifo; by hand, give '-'",
            ) from None
        if fifo == "-":
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)  # nothing else goes to the stream
            os.close(null)
        check_privileges()
        if expr:
            check_filter(expr)  # before anything is attached
        session.opt.stream_fd = fd
        session.start()
        watch = select.poll()
        watch.register(fd, 0)  # POLLERR/POLLHUP: the reader went away
        while not session.done:
            session.poll()
            ev = session.evidence
            files = ev.files if ev else None
            error = ev and (ev.error or (files.error if isinstance(files, StreamFile) else None))
            if error:
                if "Broken pipe" in error:
                    break  # the reader closed the fifo: a normal stop
                raise UnavailableError(f"extcap: writing the capture failed: {error}")
            if watch.poll(0):
                break
            target = session.target
            if target is not None and not _alive(target):
                raise NotFoundError(f"extcap: container {target.name} stopped during the capture")
    finally:
        try:
            summary = session.stop() if session.target else None
        finally:
            for s, old in olds.items():
                signal.signal(s, old)
            if session.evidence is None and fd >= 0:
                os.close(fd)
    if summary and summary.get("lost"):
        click.echo(
            f"pyinspect: {summary['lost']} packets seen in the kernel are not in the "
            f"capture (the reader did not keep up and the ring buffers filled; see "
            f"docs/wireshark.md, Measured)",
            err=True,
        )


def _alive(target):
    """Whether the traced container's network namespace is still the one captured."""
    try:
        path = f"/proc/{target.pid}/ns/net" if target.pid else target.netns_path
        return os.stat(path).st_ino == target.netns
    except OSError:
        return False
