"""Server-sent event streams that hold no request thread.

Under `pyinspect serve` the Flask app runs behind `Dashboard`, an ASGI app (uvicorn)
that hands ordinary requests to Flask in a small thread pool (a2wsgi). A stream view
still runs in Flask (token, Host, argument checks, 4xx), but instead of looping it
registers a `Feed` with the `StreamHub` and returns; the event loop then writes the
stream. One hub thread polls the store once per interval for each distinct feed,
however many clients follow it, and hands each client the rows past its own cursor. A
client that cannot keep up (its queue full) is cut off; past `max_streams` a new stream
is a 503. Without the hub (Flask's test client, any plain WSGI server) the same views
fall back to a generator that polls on its own (`sse_generator`).
"""

import asyncio
import contextlib
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

RETRY = "retry: 2000\n\n"
KEEPALIVE = ": keepalive\n\n"
SCOPE_HUB = "pyinspect.hub"
SCOPE_SLOT = "pyinspect.stream"
FEED_PAGE = 500  # rows a feed returns at most per fetch


@dataclass(frozen=True)
class Feed:
    """What a stream follows: `kind` and its arguments (hashable: clients share it)."""

    kind: str  # "timeline" | "flows" | "ladder" | "drops"
    args: tuple = ()

    def fetch(self, overview, last: int) -> list[dict]:
        """Rows with an `id` above `last`, in ascending id order."""
        if self.kind == "timeline":
            (container,) = self.args
            return overview.timeline(
                container=container, after_id=last, limit=FEED_PAGE, ascending=True
            )
        if self.kind == "flows":
            (session,) = self.args
            return sorted(overview.flows(session_id=session, after_id=last), key=_row_id)
        if self.kind in ("ladder", "drops"):
            from ..dashboard import ladder

            session, flow = self.args
            read = ladder.new_journeys if self.kind == "ladder" else ladder.new_drops
            return read(overview.root, session, flow, last)
        raise ValueError(f"no such feed: {self.kind}")


def _row_id(row: dict) -> int:
    return row["id"]


def event_text(row: dict) -> str:
    return f"id: {row['id']}\ndata: {json.dumps(row, default=str)}\n\n"


def sse_generator(fetch: Callable[[int], list[dict]], after: int, seconds: int) -> Iterator[str]:
    """The thread-holding fallback: poll `fetch(last)` every 0.5 s for `seconds`."""
    last, deadline = after, time.monotonic() + seconds
    yield RETRY
    while time.monotonic() < deadline:
        rows = fetch(last)
        for row in rows:
            last = max(last, row["id"])
            yield event_text(row)
        if not rows:
            yield KEEPALIVE
            time.sleep(0.5)


class Busy(Exception):
    """The hub has `max_streams` streams open."""


@dataclass(eq=False)
class Subscription:
    feed: Feed
    cursor: int
    deadline: float
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(maxsize=256))
    closed: bool = False

    def put(self, item: str | None) -> None:
        """From any thread: queue `item` (None ends the stream) for the event loop."""

        def _put():
            if self.closed:
                return
            try:
                self.queue.put_nowait(item)
            except asyncio.QueueFull:  # a client that does not read: cut it off
                self.closed = True
                with contextlib.suppress(asyncio.QueueEmpty):
                    self.queue.get_nowait()
                self.queue.put_nowait(None)

        with contextlib.suppress(RuntimeError):  # the loop is gone
            self.loop.call_soon_threadsafe(_put)


class StreamHub:
    """One polling thread for every open stream; see the module docstring."""

    def __init__(
        self,
        overview,
        loop: asyncio.AbstractEventLoop,
        max_streams: int = 1000,
        interval: float = 0.5,
        keepalive: float = 15.0,
    ) -> None:
        self.overview = overview
        self.loop = loop
        self.max_streams = max_streams
        self.interval = interval
        self.keepalive = keepalive
        self.polls = 0  # store queries made (the bench reports them)
        self._subs: dict[Feed, set[Subscription]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pyinspect-streams", daemon=True)
        self._thread.start()

    @property
    def open_streams(self) -> int:
        with self._lock:
            return sum(len(s) for s in self._subs.values())

    def subscribe(self, feed: Feed, after: int, seconds: int) -> Subscription:
        """A new stream of `feed` past `after`, for `seconds`; Busy when full."""
        if self._stop.is_set():
            raise Busy("the dashboard is shutting down")
        sub = Subscription(feed, after, time.monotonic() + seconds, self.loop)
        with self._lock:
            if sum(len(s) for s in self._subs.values()) >= self.max_streams:
                raise Busy(f"{self.max_streams} live streams are open")
            self._subs.setdefault(feed, set()).add(sub)
        self._wake.set()  # its backlog now, not at the next tick
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        sub.closed = True
        with self._lock:
            subs = self._subs.get(sub.feed)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[sub.feed]

    def close(self) -> None:
        """End every stream (the server is stopping) and the polling thread."""
        self._stop.set()
        self._wake.set()
        with self._lock:
            subs = [s for group in self._subs.values() for s in group]
            self._subs.clear()
        for s in subs:
            s.put(None)
        self._thread.join(timeout=10)

    def _fetch_all(self, feed: Feed, cursor: int, pages: int = 10) -> list[dict]:
        """Rows past `cursor`, page after page while pages come back full (a burst is
        sent in one tick, up to `pages` pages)."""
        rows: list[dict] = []
        for _ in range(pages):
            page = feed.fetch(self.overview, cursor)
            self.polls += 1
            rows += page
            if len(page) < FEED_PAGE or not page:
                break
            cursor = page[-1]["id"]
        return rows

    def _run(self) -> None:
        last_keepalive = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            now = time.monotonic()
            with self._lock:
                groups = [(feed, list(subs)) for feed, subs in self._subs.items()]
            for feed, subs in groups:
                live = [s for s in subs if not s.closed]
                for s in subs:
                    if s.deadline <= now and not s.closed:
                        s.put(None)
                        self.unsubscribe(s)
                live = [s for s in live if s.deadline > now]
                if not live:
                    continue
                try:
                    rows = self._fetch_all(feed, min(s.cursor for s in live))
                except Exception as exc:  # noqa: BLE001 - one bad feed ends its streams only
                    for s in live:
                        s.put(f"event: error\ndata: {json.dumps(str(exc))}\n\n")
                        s.put(None)
                        self.unsubscribe(s)
                    continue
                if not rows:
                    continue
                texts = [(row["id"], event_text(row)) for row in rows]
                for s in live:
                    chunk = "".join(t for rid, t in texts if rid > s.cursor)
                    if chunk:
                        s.cursor = max(s.cursor, texts[-1][0])
                        s.put(chunk)
            if now - last_keepalive >= self.keepalive:
                last_keepalive = now
                with self._lock:
                    everyone = [s for group in self._subs.values() for s in group]
                for s in everyone:
                    s.put(KEEPALIVE)


def open_stream(environ: dict, feed: Feed, after: int, seconds: int) -> bool:
    """In a stream view: hand the stream to the hub when the server has one (True), or
    return False (the view then streams with sse_generator). Busy when the hub is full."""
    scope = environ.get("asgi.scope") or {}
    hub: StreamHub | None = scope.get(SCOPE_HUB)
    slot = scope.get(SCOPE_SLOT)
    if hub is None or slot is None:
        return False
    slot["subscription"] = hub.subscribe(feed, after, seconds)
    return True


class Dashboard:
    """The ASGI app `pyinspect serve` runs: Flask through a2wsgi, streams on the loop."""

    _ids = itertools.count(1)

    def __init__(self, flask_app, overview, workers: int = 8, max_streams: int = 1000) -> None:
        from a2wsgi import WSGIMiddleware

        self.wsgi = WSGIMiddleware(flask_app, workers=workers)
        self.overview = overview
        self.max_streams = max_streams
        self.hub: StreamHub | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> StreamHub:
        self.hub = StreamHub(self.overview, loop, max_streams=self.max_streams)
        return self.hub

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        scope = dict(scope)
        server = scope.get("server")
        if server is None or server[1] is None:  # a Unix socket: the Host check knows
            from .auth import UNIX_SERVER

            scope["server"] = (UNIX_SERVER, 0)
        slot: dict = {}
        scope[SCOPE_HUB] = self.hub
        scope[SCOPE_SLOT] = slot

        async def relay(message):
            if (
                message["type"] == "http.response.body"
                and not message.get("more_body")
                and "subscription" in slot
            ):
                message = dict(message, more_body=True)  # the stream goes on below
            await send(message)

        try:
            await self.wsgi(scope, receive, relay)
        except BaseException:
            if "subscription" in slot and self.hub is not None:
                self.hub.unsubscribe(slot["subscription"])
            raise
        sub: Subscription | None = slot.get("subscription")
        if sub is not None:
            await self._pump(sub, receive, send)

    async def _pump(self, sub: Subscription, receive, send) -> None:
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            while True:
                get = asyncio.ensure_future(sub.queue.get())
                done, _ = await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
                if gone in done:
                    get.cancel()
                    return
                item = get.result()
                if item is None:
                    break
                await send({"type": "http.response.body", "body": item.encode(), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            gone.cancel()
            if self.hub is not None:
                self.hub.unsubscribe(sub)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.hub is None:
                    self.start(asyncio.get_running_loop())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _disconnected(receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
