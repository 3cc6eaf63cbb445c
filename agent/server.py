"""`pyinspect serve`: the agent (probes on, events stored) and the dashboard behind waitress.

The agent runs the event probes in one thread (events.Follower: process, cgroup, and
link events when available) and writes what they see into the store; the Flask app
reads the same store. Probes that cannot load are reported and skipped; the dashboard
still serves. Binding beyond loopback requires the token (created 0600, shown once).
"""

import errno
import ipaddress
import signal
import threading

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
        from . import events
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


def serve(root, bind="127.0.0.1", port=8900, probes=True, threads=8, log=print):
    """Run the agent and the dashboard until SIGINT/SIGTERM."""
    import waitress

    from .web.app import create_app
    from .web.auth import load_or_create_token

    loopback = is_loopback(bind)  # validates --bind before anything is made
    app = create_app(root)
    overview = app.extensions["pyinspect"]
    try:  # bind first: a taken port makes no token and starts no probes
        server = waitress.create_server(
            app,
            host=bind,
            port=port,
            threads=threads,
            channel_timeout=30,
            clear_untrusted_proxy_headers=True,
        )
    except OSError as exc:
        cls = ConflictError if exc.errno == errno.EADDRINUSE else UsageError
        raise cls(
            f"serve: cannot listen on {bind}:{port}: {exc.strerror}",
            "choose another --port"
            if cls is ConflictError
            else "--bind takes an address of this host",
        ) from None
    if not loopback:  # set before server.run(), so before any request is served
        token, new = load_or_create_token(root)
        app.config["PYINSPECT_TOKEN"] = token
        if new:
            log(f"dashboard token (shown once, stored 0600 in {root}/web-token): {token}")
        else:
            log(f"dashboard token: in {root}/web-token")
    agent = None
    if probes:
        agent = Agent(root, overview, log=log).start()
        for line in agent.messages:
            log(line)
    log(f"dashboard: http://{bind}:{server.effective_port}/ (ready)")

    def _stop(*_):
        server.close()

    signal.signal(signal.SIGTERM, _stop)
    try:
        server.run()
    except (KeyboardInterrupt, OSError):
        pass
    finally:
        for trace in list(overview.traces.values()):
            trace.stop()
        if agent:
            agent.stop()
