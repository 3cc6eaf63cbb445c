"""`pyinspect serve`: the agent (probes on, events stored) and the dashboard.

The agent runs the event probes in one thread (events.Follower: process, cgroup, and
link events when available) and writes what they see into the store; the Flask app
reads the same store. Probes that cannot load are reported and skipped; the dashboard
still serves.

The server is uvicorn (one asyncio loop) running `web.streams.Dashboard`: Flask in a
pool of `threads` threads for ordinary requests, server-sent event streams written by
the loop from one polling thread (`StreamHub`), so open streams hold no request thread.
Every request needs the token (`<root>/web-token`, 0600); `serve` prints a login URL.
"""

import contextlib
import errno
import ipaddress
import os
import signal
import socket
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .config import database_path
from .errors import ConflictError, UsageError


def is_loopback(bind):
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        raise UsageError(f"bad --bind {bind!r}: not an IP address") from None


class Agent:
    """The probes of a serving pyinspect, recording into the store until stopped."""

    def __init__(self, root, overview, log=print):
        self.root = root
        self.overview = overview
        self.log = log
        self.messages = []
        self._stop = threading.Event()
        self._thread = None
        self._ready = threading.Event()

    def start(self, timeout=120):
        self._thread = threading.Thread(target=self._run, name="pyinspect-agent", daemon=True)
        self._thread.start()
        self._ready.wait(timeout)
        return self

    def _run(self):
        from .host import events
        from .store import Store

        store = Store(database_path(self.root))
        follower = events.Follower(self.root, store)
        try:
            follower.start()
        except Exception as exc:  # noqa: BLE001 - any probe failure degrades to no probes
            self.messages.append(f"agent: probes off: {exc}")
            self.overview.agent_status.update({name: False for name in events.PROBES})
            self._ready.set()
            store.close()
            return
        self.messages.extend(follower.messages)
        for probe in follower.probes:
            self.overview.agent_status[probe.NAME] = True
        for name in events.PROBES:
            self.overview.agent_status.setdefault(name, False)
        self.messages.append(follower.ready_line())
        self._ready.set()
        try:
            while not self._stop.is_set():
                follower.poll(200)
        finally:
            follower.stop()
            store.close()
            for name in list(self.overview.agent_status):
                self.overview.agent_status[name] = False

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)


@dataclass
class ServeOptions:
    """How `serve` listens: TCP `bind`:`port`, or only a Unix socket when `tcp` is off."""

    bind: str = "127.0.0.1"
    port: int = 8900
    unix_socket: str | None = None
    allow_hosts: list[str] = field(default_factory=list)
    tcp: bool = True
    threads: int = 8
    max_streams: int = 1000


def _tcp_socket(bind: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # inherited by accepted sockets: a response's head and body go out at once (without
    # it, a keep-alive client's delayed ACK held every body 40 ms)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((bind, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        cls = ConflictError if exc.errno == errno.EADDRINUSE else UsageError
        raise cls(
            f"serve: cannot listen on {bind}:{port}: {exc.strerror}",
            "choose another --port"
            if cls is ConflictError
            else "--bind takes an address of this host",
        ) from None
    sock.set_inheritable(True)
    return sock


def _unix_socket(path: str) -> socket.socket:
    """A listening Unix socket at `path`, mode 0600 from the start; a stale socket file
    is replaced, anything else there is refused."""
    p = Path(path)
    if p.exists() or p.is_symlink():
        if not stat.S_ISSOCK(p.lstat().st_mode):
            raise UsageError(f"serve: --unix-socket {path}: exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(p))
        except OSError:
            p.unlink()  # nobody listens: stale
        else:
            raise ConflictError(f"serve: --unix-socket {path}: another server listens there")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(p))
    except OSError as exc:
        sock.close()
        raise UsageError(f"serve: cannot create --unix-socket {path}: {exc.strerror}") from None
    finally:
        os.umask(old)
    os.chmod(p, 0o600)
    sock.listen(2048)
    return sock


def serve(root, options: ServeOptions | None = None, probes=True, log=print, **kw):
    """Run the agent and the dashboard until SIGINT/SIGTERM. (`bind=`, `port=`... as
    keywords still work: they fill ServeOptions.)"""
    import uvicorn

    from .web.app import create_app
    from .web.auth import HostPolicy, load_or_create_token
    from .web.streams import Dashboard

    opts = options or ServeOptions(**kw)
    if opts.tcp:
        is_loopback(opts.bind)  # validates --bind before anything is made
    sockets = []
    try:  # bind first: a taken port makes no token and starts no probes
        if opts.tcp:
            sockets.append(_tcp_socket(opts.bind, opts.port))
        if opts.unix_socket:
            sockets.append(_unix_socket(opts.unix_socket))
    except Exception:
        for s in sockets:
            s.close()
        raise
    port = sockets[0].getsockname()[1] if opts.tcp else 0
    token, new = load_or_create_token(root)
    hosts = (
        HostPolicy.for_bind(opts.bind, port, opts.allow_hosts)
        if opts.tcp
        else HostPolicy(names={h.lower() for h in opts.allow_hosts})
    )
    app = create_app(root, token=token, hosts=hosts)
    overview = app.extensions["pyinspect"]
    dashboard = Dashboard(app, overview, workers=opts.threads, max_streams=opts.max_streams)
    agent = None
    if probes:
        agent = Agent(root, overview, log=log).start()
        for line in agent.messages:
            log(line)
    where = f"{root}/web-token" + (" (new)" if new else "")
    if opts.tcp:
        host = f"[{opts.bind}]" if ":" in opts.bind else opts.bind
        base = f"http://{host}:{port}/"
        log(f"dashboard login (token in {where}): {base}?token={token}")
    if opts.unix_socket:
        log(
            f"dashboard on unix socket {opts.unix_socket} (0600): curl --unix-socket"
            f" {opts.unix_socket} -H 'Authorization: Bearer <token from {root}/web-token>'"
            " http://localhost/api/host"
        )
    log(f"dashboard: {base if opts.tcp else f'unix:{opts.unix_socket}'} (ready)")

    config = uvicorn.Config(
        dashboard,
        lifespan="on",
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=5,
    )
    server = _Server(config, dashboard)
    stopped = []
    previous = {
        sig: signal.signal(sig, lambda n, _f: stopped.append(n))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.close()
        if opts.unix_socket:
            with contextlib.suppress(OSError):
                os.unlink(opts.unix_socket)
        for trace in list(overview.traces.values()):
            trace.stop()
        if agent:
            agent.stop()


def _Server(config, dashboard):  # noqa: N802 - a class made on first use (uvicorn is lazy)
    """A uvicorn.Server that ends the open streams first when asked to stop (else it
    would wait for them to finish)."""
    import uvicorn

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None):
            if dashboard.hub is not None:
                dashboard.hub.close()
            await super().shutdown(sockets)

    return Server(config)
