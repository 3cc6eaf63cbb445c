"""Link events from rtnetlink: veth/bridge add and delete, netns moves, renames, up/down, master.

    with LinkProbe(netns=["/run/netns/ns1"]) as probe:   # start() returns once subscribed
        for ev in probe.events(100): ...                   # [] when nothing happened

Kinds: link_add, link_del, link_rename, link_up, link_down, link_master (joined, left or
changed bridge), link_netns (moved between namespaces: one record on the namespace it
left, `detail.direction == "out"`, and one on the namespace it entered, "in", when that
one is watched too). Records are dicts with the probes' common fields (ts_ns, kind, pid,
ppid, comm, cgroup_id, netns, pidns, mntns, detail) plus ifindex and ifname; pid/comm
are None because rtnetlink does not say who made the change.

Why netlink and not a tracepoint: the kernel has no tracepoint for link creation,
deletion, rename, namespace moves or master changes (`net:*` covers packets,
`bridge:*` the FDB); rtnetlink multicast is the kernel's own stable, complete
notification for all of them, carries the new state, and needs no eBPF. What it lacks
is *who* (pid/comm): only a kprobe on rtnl_newlink/dev_change_net_namespace could add
that, kprobes are refused here, and the process probe's setns/unshare tracepoints
already say who moved into which namespace. So no tracepoint is attached here.

Each watched namespace gets its own socket (made inside it with setns on one thread,
see `probes.netns`). Note: an open socket keeps its namespace alive; stop() releases it.
Timestamps are wall-clock ns at receipt (netlink carries none).
"""

import errno
import os
import select
import socket
import time

from .netns import LINK_GROUPS, RtnlSocket, link_from_message, list_netns, open_ns

AF_UNSPEC = 0
IFF_UP = 0x1
RTM_NEWLINK = 16
RTM_DELLINK = 17
KINDS = ("link_add", "link_del", "link_rename", "link_up", "link_down", "link_master", "link_netns")
RESCAN_NS = 0.5  # seconds between rescans for namespaces when watching all (named) ones


class _Watched:
    """One namespace: its fd, an event socket, a query socket and the links we know."""

    def __init__(self, path, label, rcvbuf=None):
        self.path, self.label = path, label
        self.auto = False  # found by the scan (not asked for): dropped when its netns goes
        self.fd, self.inode = open_ns(path) if path else open_ns("/proc/thread-self/ns/net")
        try:
            self.events = RtnlSocket(self.fd, groups=LINK_GROUPS)  # subscribe first...
            self.events.sock.setblocking(False)
            if rcvbuf:
                self.events.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.query = RtnlSocket(self.fd)  # ...then dump, so nothing falls in between
            self.links = {ln["index"]: _state(ln) for ln in self.query.links()}
        except Exception:
            self.close()
            raise
        self.nsids = {}

    def close(self):
        for s in (getattr(self, "events", None), getattr(self, "query", None)):
            if s is not None:
                s.close()
        os.close(self.fd)


def _state(link):
    """What we remember of a link (a `decode_link` / `link_from_message` dict)."""
    return {
        "ifname": link["ifname"],
        "flags": link["flags"],
        "master": link["master"] or None,
        "kind": link["kind"],
        "link": link["link"],
        "link_netnsid": link["link_netnsid"],
        "mac": link["address"],
        "operstate": link["operstate"],
    }


class LinkProbe:
    """Watch link changes in our own netns and, optionally, other namespaces."""

    NAME = "links"

    def __init__(self, netns=None, own=True, all_named=False, all_netns=False, rcvbuf=None):
        """netns: paths or `ip netns` names to watch besides (own=True) our own namespace;
        all_named: also watch every /run/netns namespace, including ones added later;
        all_netns: watch every namespace on the host (named, bind-mounted, or of any
        process), including ones added later; rcvbuf: socket receive buffer in bytes."""
        self.rcvbuf = rcvbuf
        self.all_netns = all_netns
        self.requested = list(netns or [])
        self.own = own
        self.all_named = all_named
        self.watched = {}  # inode -> _Watched
        self._pending = []
        self._lost = 0
        self._last_scan = 0.0
        self.ready = False

    # -- lifecycle ----------------------------------------------------------------
    def start(self, filters=None):
        """Subscribe and snapshot every watched namespace; events flow on return."""
        self.filters = dict(filters or {})
        try:
            if self.own:
                self._watch(None, "self")
            for ns in self.requested:
                path = ns if "/" in ns else f"/run/netns/{ns}"
                self._watch(path, os.path.basename(ns) if "/" not in ns else ns)
            if self.all_named or self.all_netns:
                self._rescan()
        except Exception:
            self.stop()
            raise
        self.ready = True
        return self

    def stop(self):
        """Close every socket and namespace fd. Idempotent."""
        for w in self.watched.values():
            w.close()
        self.watched = {}
        self.ready = False

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def running(self):
        return self.ready

    @property
    def lost(self):
        """Times the kernel dropped notifications (socket overrun, ENOBUFS); we resync."""
        return self._lost

    def _watch(self, path, label):
        w = _Watched(path, label, self.rcvbuf)
        w.auto = False
        if w.inode in self.watched:
            w.close()
            return self.watched[w.inode]
        self.watched[w.inode] = w
        return w

    def _rescan(self):
        """Start watching namespaces that appeared, let go of those that went away."""
        self._last_scan = time.monotonic()
        found = list_netns(processes=self.all_netns)
        for ino, (paths, names) in found.items():
            if ino in self.watched:
                continue
            if not self.all_netns and not names:
                continue
            for path in paths:
                try:
                    w = self._watch(path, names[0] if names else f"netns:{ino}")
                except OSError:
                    continue
                w.auto = True
                break
        for ino, w in list(self.watched.items()):
            if w.auto and ino not in found:  # our socket alone would keep it alive
                w.close()
                del self.watched[ino]

    # -- reading ------------------------------------------------------------------
    def events(self, timeout_ms=100):
        """Wait up to timeout_ms for notifications; return the link event dicts (maybe [])."""
        if not self.ready:
            from ..errors import UnavailableError

            raise UnavailableError("links probe: not started")
        if (self.all_named or self.all_netns) and time.monotonic() - self._last_scan >= RESCAN_NS:
            self._rescan()
        socks = {w.events.sock: w for w in self.watched.values()}
        if not socks:  # watching only namespaces that do not exist yet
            time.sleep(min(max(timeout_ms, 0) / 1000, RESCAN_NS))
            return []
        ready, _, _ = select.select(list(socks), [], [], max(timeout_ms, 0) / 1000)
        if not ready:
            return []
        # The kernel queues a move's DELLINK (old netns) before its NEWLINK (new netns).
        # Drain every socket now, find the moves, then report namespace by namespace in
        # kernel order, a move's source namespace before its target.
        msgs = {w.inode: self._drain(w) for w in list(self.watched.values())}
        now = time.time_ns()
        moves = {}  # (target inode, new ifindex) -> (source _Watched, message)
        for inode, batch in msgs.items():
            w = self.watched[inode]
            for mtype, m in batch:
                if mtype == RTM_DELLINK and m["new_netnsid"] is not None:
                    moves[(self._nsid_target(w, m["new_netnsid"]), m["new_ifindex"])] = (w, m)
        out = []
        for inode in _source_first(
            list(msgs), {(src.inode, dst) for (dst, _i), (src, _m) in moves.items()}
        ):
            w = self.watched[inode]
            for mtype, m in msgs[inode]:
                if mtype == RTM_DELLINK and m["new_netnsid"] is not None:
                    out.append(self._moved_out(w, m, now))
                else:
                    out += self._handle(w, mtype, m, now, moves)
        out, self._pending = self._pending + out, []
        kinds = self.filters.get("kinds")
        if kinds:
            out = [e for e in out if e["kind"] in kinds]
        return out

    def _drain(self, w):
        msgs = []
        while True:
            try:
                msgs += [
                    (m["header"]["type"], link_from_message(m))
                    for m in w.events.recv_events()
                    if m["header"]["type"] in (RTM_NEWLINK, RTM_DELLINK)
                    and m["family"] == AF_UNSPEC
                ]  # AF_BRIDGE ones are port info
            except BlockingIOError:
                return msgs
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                # overrun: what we hold and what is still queued is older than the
                # dump we are about to take; drop it and report the net difference
                self._lost += 1
                msgs = []
                self._discard_queued(w)
                self._resync(w)

    @staticmethod
    def _discard_queued(w):
        while True:
            try:
                w.events.sock.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise

    def _resync(self, w):
        """After an overrun: re-dump and report the differences as events."""
        now = time.time_ns()
        fresh = {ln["index"]: ln for ln in w.query.links()}
        for idx in sorted(set(w.links) - set(fresh)):
            old = w.links.pop(idx)
            self._pending.append(
                self._record(
                    w, "link_del", idx, old["ifname"], now, {"kind": old["kind"], "resync": True}
                )
            )
        for idx, m in sorted(fresh.items()):
            for ev in self._compare(w, idx, m, now):
                ev["detail"]["resync"] = True
                self._pending.append(ev)

    def _record(self, w, kind, ifindex, ifname, ts, detail):
        return {
            "ts_ns": ts,
            "kind": kind,
            "pid": None,
            "ppid": None,
            "comm": None,
            "cgroup_id": None,
            "netns": w.inode,
            "pidns": None,
            "mntns": None,
            "ifindex": ifindex,
            "ifname": ifname,
            "detail": {"netns_label": w.label, **detail},
        }

    def _nsid_target(self, w, nsid):
        """The inode of the watched namespace that `w` calls `nsid` (RTM_GETNSID), or None."""
        if nsid in w.nsids:
            return w.nsids[nsid]
        for other in self.watched.values():
            if other is w:
                continue
            got = w.query.nsid_of(other.fd)
            if got is not None:
                w.nsids[got] = other.inode
        return w.nsids.get(nsid)

    def _moved_out(self, w, m, now):
        idx = m["index"]
        nsid = m["new_netnsid"]
        old = w.links.pop(idx, None) or _state(m)
        target = self._nsid_target(w, nsid)
        return self._record(
            w,
            "link_netns",
            idx,
            m["ifname"],
            now,
            {
                "direction": "out",
                "kind": old["kind"],
                "to_nsid": nsid,
                "to_netns": target,
                "new_ifindex": m["new_ifindex"],
            },
        )

    def _handle(self, w, mtype, m, now, moves):
        idx = m["index"]
        name = m["ifname"]
        if mtype == RTM_DELLINK:
            old = w.links.pop(idx, None)
            if old is None:
                return []
            return [self._record(w, "link_del", idx, name, now, {"kind": old["kind"]})]
        return self._compare(w, idx, m, now, moves)

    def _compare(self, w, idx, m, now, moves=None):
        new = _state(m)
        old = w.links.get(idx)
        w.links[idx] = new
        name = new["ifname"]
        if old is None:
            came = (moves or {}).pop((w.inode, idx), None)
            if came is not None:
                src, msg = came
                return [
                    self._record(
                        w,
                        "link_netns",
                        idx,
                        name,
                        now,
                        {
                            "direction": "in",
                            "kind": new["kind"],
                            "from_netns": src.inode,
                            "old_ifindex": msg["index"],
                            "old_ifname": msg["ifname"],
                        },
                    )
                ]
            return [
                self._record(
                    w,
                    "link_add",
                    idx,
                    name,
                    now,
                    {
                        "kind": new["kind"],
                        "link": new["link"],
                        "link_netnsid": new["link_netnsid"],
                        "master": new["master"],
                        "mac": new["mac"],
                        "up": bool(new["flags"] & IFF_UP),
                    },
                )
            ]
        out = []
        if old["ifname"] != name:
            out.append(
                self._record(
                    w,
                    "link_rename",
                    idx,
                    name,
                    now,
                    {"old_ifname": old["ifname"], "kind": new["kind"]},
                )
            )
        if (old["flags"] ^ new["flags"]) & IFF_UP:
            kind = "link_up" if new["flags"] & IFF_UP else "link_down"
            out.append(
                self._record(
                    w, kind, idx, name, now, {"kind": new["kind"], "operstate": new["operstate"]}
                )
            )
        if old["master"] != new["master"]:
            out.append(
                self._record(
                    w,
                    "link_master",
                    idx,
                    name,
                    now,
                    {
                        "kind": new["kind"],
                        "master": new["master"],
                        "master_ifname": (w.links.get(new["master"]) or {}).get("ifname"),
                        "old_master": old["master"],
                        "old_master_ifname": (w.links.get(old["master"]) or {}).get("ifname"),
                    },
                )
            )
        return out


def _source_first(inodes, edges):
    """`inodes` reordered so a move's source namespace comes before its target."""
    left, out = list(inodes), []
    while left:
        pick = next(
            (n for n in left if not any((s, n) in edges for s in left if s != n)), left[0]
        )  # a cycle (moves both ways): keep the given order
        out.append(pick)
        left.remove(pick)
    return out


def available():
    """(ok, reason): whether rtnetlink link notifications can be subscribed here."""
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
        s.bind((0, LINK_GROUPS))
        s.close()
        return True, "rtnetlink link notifications"
    except OSError as exc:
        return False, f"rtnetlink refused: {exc.strerror}"
