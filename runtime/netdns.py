"""The embedded DNS of user networks: 127.0.0.11 inside each container, as Docker's.

Each container on a user network gets one `Resolver` run by its shim (a thread; the shim
lives in the network's home netns). Its UDP and TCP sockets are opened inside the
container's netns on 127.0.0.11:53 (the thread enters that netns to make them, then
returns), so nothing else is needed there: no address, no iptables. It answers A queries
for the names of the containers that share a network with this one (container name,
--network-alias, short id) from the networks' state files (ipam.py), and forwards any
other question to the upstream resolvers from the host's own netns: PYINSPECT_DNS_UPSTREAM
(`IP[:PORT],...`), else `dns_upstream` in config.json's `network`, else the host's
/etc/resolv.conf (loopback resolvers such as 127.0.0.53 work too: the forward leaves from
the host's netns), like Docker. On an --internal network nothing is forwarded (SERVFAIL).
Packets are encoded and decoded with dnslib.

Each answer is also reported to the traces listening (`Listeners`: `pyinspect trace`,
agent/trace/dns.py): one unix datagram per answer to every socket in the container's
`dns-trace/` directory, sent without blocking after the reply went out; with no socket
there the cost is one listdir every 10 ms of queries.
"""

import collections
import contextlib
import ipaddress
import itertools
import os
import secrets
import select
import socket
import threading
import time

from . import ipam, isolation

ADDR = "127.0.0.11"
UPSTREAM_ENV = "PYINSPECT_DNS_UPSTREAM"
TTL = 600
FORWARD_TIMEOUT = 2.0
LISTEN_DIR = "dns-trace"  # under the container's state dir: one socket per listening trace
LISTEN_CHECK = 0.01  # s between looks for listeners (only when queries arrive)


def listen_dir(root, container_id) -> str:
    """Where traces put their sockets to hear this container's embedded DNS."""
    return os.path.join(str(root), "containers", container_id, LISTEN_DIR)


class Listeners:
    """The traces that hear this resolver's answers: unix datagram sockets `<pid>.sock` in
    `listen_dir()`. `active()` costs a monotonic clock read, and a listdir at most every
    LISTEN_CHECK s. A report is one datagram to each: a header line (sequence number,
    CLOCK_REALTIME ns, udp|tcp, local|forwarded|failed, client ip and port, upstream
    ip:port or -, microseconds from query to reply or -) then the reply's bytes as sent.

    Sends never block the resolver. A listener whose queue is full (a unix datagram socket
    queues only net.unix.max_dgram_qlen, 10 by default) gets its reports later, in order:
    they wait in a backlog (up to BACKLOG_MAX each) that the next report and the resolver's
    loop (`flush()`, while `waiting()`) retry. Past that, or when it is gone, a listener
    misses reports, and the sequence numbers say so."""

    BACKLOG_MAX = 4096

    def __init__(self, directory):
        self.dir = directory
        self.addrs: list[str] = []
        self._checked = -1.0
        self._dirfd = -1
        self._sock: socket.socket | None = None
        self._seq = itertools.count(1)  # next() is atomic: the TCP threads report too
        self._lock = threading.Lock()  # the backlogs: the loop and the TCP threads send
        self._backlog: dict[str, collections.deque[bytes]] = {}  # socket name -> reports

    def active(self) -> bool:
        now = time.monotonic()
        if now - self._checked >= LISTEN_CHECK:
            self._checked = now
            self._scan()
        return bool(self.addrs)

    def _scan(self):
        try:
            names = sorted(n for n in os.listdir(self.dir) if n.endswith(".sock"))
        except OSError:
            names = []
        old, self._dirfd = self._dirfd, -1
        if names:
            try:  # addressed through the directory's fd: a deep state dir would not fit sun_path
                self._dirfd = os.open(self.dir, os.O_PATH | os.O_DIRECTORY)
            except OSError:
                names = []
        if names and self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            self._sock = sock
        self.addrs = [f"/proc/self/fd/{self._dirfd}/{n}" for n in names]
        with self._lock:
            for name in [n for n in self._backlog if n not in names]:
                del self._backlog[name]
        if old >= 0:  # after the new addresses (a TCP thread may be reporting)
            os.close(old)

    def report(self, proto, how, client, reply, upstream=None, started=None):
        """Send one answer to every listener (call only when `active()`)."""
        if self._sock is None:
            return
        took = "-" if started is None else str(int((time.monotonic() - started) * 1e6))
        up = "-" if not upstream else f"{upstream[0]}:{upstream[1]}"
        if upstream and ":" in upstream[0]:
            up = f"[{upstream[0]}]:{upstream[1]}"
        head = f"{next(self._seq)} {time.time_ns()} {proto} {how} {client[0]} {client[1]}"
        msg = f"{head} {up} {took}\n".encode() + bytes(reply)
        with self._lock:
            for addr in self.addrs:
                name = os.path.basename(addr)
                # behind whatever waits for this listener, in order (alone, as a rule)
                waiting = self._backlog.setdefault(name, collections.deque())
                if len(waiting) < self.BACKLOG_MAX:
                    waiting.append(msg)
                self._drain(addr, name, waiting)

    def waiting(self) -> bool:
        """Whether some listener has reports held back."""
        return bool(self._backlog)

    def flush(self):
        """Retry the held-back reports (the resolver's loop calls this while `waiting()`)."""
        with self._lock:
            for addr in self.addrs:
                name = os.path.basename(addr)
                if name in self._backlog:
                    self._drain(addr, name, self._backlog[name])

    def _drain(self, addr, name, waiting):
        while waiting:
            if not self._send(addr, name, waiting[0]):
                return
            waiting.popleft()
        self._backlog.pop(name, None)

    def _send(self, addr, name, msg) -> bool:
        """False when the listener is full now (try again later); True when sent or when
        it can never be (gone: unlinked if it was a killed trace's)."""
        assert self._sock is not None
        try:
            self._sock.sendto(msg, addr)
        except BlockingIOError:
            return False
        except ConnectionRefusedError:  # the socket of a trace that was killed
            with contextlib.suppress(OSError):
                os.unlink(addr)
            self._backlog.pop(name, None)
            self._checked = -1.0  # list the directory again at the next query
        except OSError:
            self._backlog.pop(name, None)  # gone (ENOENT): that listener misses it
        return True

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._dirfd >= 0:
            os.close(self._dirfd)
            self._dirfd = -1
        self.addrs = []
        self._backlog.clear()


def nameservers(text: str) -> list[str]:
    """The nameserver addresses of a resolv.conf's text, in order (a scope id kept)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] == ["nameserver"] and len(parts) > 1:
            try:
                ipaddress.ip_address(parts[1].split("%")[0])
            except ValueError:
                continue
            out.append(parts[1])
    return out


def upstreams(configured=None, resolv="/etc/resolv.conf") -> list[tuple[str, int]]:
    """[(ip, port)] the embedded DNS forwards to."""
    text = os.environ.get(UPSTREAM_ENV) or configured
    out = []
    if text:
        for item in str(text).split(","):
            item = item.strip()
            if not item:
                continue
            host, _, port = item.rpartition(":") if item.count(":") == 1 else (item, "", "")
            out.append((host or item, int(port) if port else 53))
        return out
    try:
        text = open(resolv).read()
    except OSError:
        text = ""
    out = [(ns, 53) for ns in nameservers(text)]
    return out or [("8.8.8.8", 53), ("8.8.4.4", 53)]  # Docker's fallback


class Records:
    """Name -> addresses for one container: the leases of the networks it is on, re-read
    when the state directory changes (state files are replaced by rename, which changes
    the directory's mtime), so a lookup costs one stat."""

    def __init__(self, root, container_id):
        self.root, self.cid = str(root), container_id
        self._dir = str(ipam.network_dir(self.root))
        self._mtime = None
        self._names: dict[str, list[str]] = {}
        self._internal = False
        self.version = 0  # bumped whenever the records are read again
        self._checked = -1.0

    def _refresh(self):
        now = time.monotonic()
        if now - self._checked < 0.002:  # at most one stat per 2 ms under a query burst
            return
        self._checked = now
        try:
            mtime = os.stat(self._dir).st_mtime_ns
        except OSError:
            mtime = None
        if mtime is not None and mtime == self._mtime:
            return
        # a change within the filesystem's timestamp tick could keep the same mtime:
        # a directory changed this recently is read again next time
        recent = mtime is None or time.time_ns() - mtime < 50_000_000
        self._mtime = None if recent else mtime
        names: dict[str, list[str]] = {}
        mine = []
        try:
            files = sorted(p for p in os.listdir(self._dir) if p.endswith(".json"))
        except OSError:
            files = []
        for fname in files:
            try:
                state = ipam.load(self.root, fname[:-5])
            except Exception:  # noqa: BLE001 a damaged file must not stop the resolver
                continue
            if not state or not state.get("user") or not ipam.find(state, self.cid)[0]:
                continue
            mine.append(state)
            for ip, lease in state["leases"].items():
                keys = {str(lease.get("name") or ""), str(lease.get("id", ""))[:12]}
                keys.update(lease.get("aliases") or ())
                for key in keys:
                    if key and ip not in names.setdefault(key.lower(), []):
                        names[key.lower()].append(ip)
        self._names = names
        self._internal = bool(mine) and all(s.get("internal") for s in mine)
        self.version += 1

    def internal(self) -> bool:
        """True when every user network of this container is --internal."""
        self._refresh()
        return self._internal

    def lookup(self, name: str) -> list[str]:
        """IPv4 addresses of `name` on the networks this container shares."""
        self._refresh()
        return list(self._names.get(name.rstrip(".").lower(), ()))

    def current(self) -> int:
        """The records' version after looking for changes (one stat)."""
        self._refresh()
        return self.version


class Resolver:
    """The DNS server of one container; `start()` then `stop()` (idempotent)."""

    def __init__(self, root, container_id, pid, upstream):
        self.records = Records(root, container_id)
        self.listeners = Listeners(listen_dir(root, container_id))
        self.pid = pid
        self.upstream = list(upstream)
        self.ep = select.epoll()
        self.handlers: dict = {}  # fd -> what its readiness means
        self.wake_r, self.wake_w = os.pipe()
        self.thread = None
        self.pending: dict = {}  # our id -> (client, its id, started, upstream index, query)
        self.up_socks: dict = {}  # upstream index -> its connected UDP socket
        self.last_expire = 0.0
        self.forwarded: set = set()  # question bytes known to be forwarded
        self.seen_version = -1
        self.udp: socket.socket  # both made by start()
        self.tcp: socket.socket
        self.error = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self):
        """Open the sockets in the container's netns (raises OSError when it cannot)."""
        try:
            self.udp, self.tcp = _sockets_in(self.pid)
        except OSError:
            for fd in (self.wake_r, self.wake_w):
                os.close(fd)
            self.ep.close()
            raise
        self._watch(self.udp.fileno(), "udp")
        self._watch(self.tcp.fileno(), "tcp")
        self._watch(self.wake_r, "wake")
        self.thread = threading.Thread(target=self._loop, name="pyinspect-dns", daemon=True)
        self.thread.start()
        return self

    def stop(self):
        if self.thread is None:
            return
        try:
            os.write(self.wake_w, b"x")
        except OSError:
            pass
        self.thread.join(5)
        self.thread = None
        for sock in [self.udp, self.tcp, *self.up_socks.values()]:
            sock.close()
        self.pending.clear()
        for fd in (self.wake_r, self.wake_w):
            os.close(fd)
        self.ep.close()
        self.listeners.close()

    # -- serving -------------------------------------------------------------------------
    def _watch(self, fd, what):
        self.handlers[fd] = what
        self.ep.register(fd, select.EPOLLIN)

    def _loop(self):
        while True:
            waiting = self.listeners.waiting()
            for fd, _ in self.ep.poll(0.005 if waiting else 0.5):
                what = self.handlers.get(fd)
                if what == "wake":
                    return
                try:
                    if what == "udp":
                        self._udp_query()
                    elif what == "tcp":
                        self._tcp_accept()
                    elif what is not None:
                        self._udp_reply(what)  # an upstream's socket
                except OSError:
                    pass  # one bad packet or a gone client: keep serving
            if self.pending:
                self._expire()
            if waiting:
                self.listeners.flush()

    def answer(self, data: bytes) -> bytes | None:
        """The reply for a query we answer ourselves, b"" to drop it, or None when it is
        to be forwarded. Only the question's name is decoded (dnslib's buffer) unless
        the name is ours: forwarded queries pass through as they came, and a question
        already seen to be forwarded (same bytes, records unchanged) is not decoded again."""
        if len(data) < 17 or data[2] & 0x80 or data[4:6] != b"\x00\x01":
            return b""  # a reply, too short, or not exactly one question: dropped
        version = self.records.current()
        if version != self.seen_version:
            self.forwarded.clear()
            self.seen_version = version
        question = bytes(data[12:])
        if question in self.forwarded:
            return None
        dns = _dnslib()
        try:
            buf = dns.DNSBuffer(data)
            buf.offset = 12
            qname = buf.decode_name()
            (qtype,) = buf.unpack("!H")
        except Exception:  # noqa: BLE001 dnslib raises several types for garbage
            return b""  # not DNS: dropped
        name = b".".join(qname.label).decode(errors="replace")
        ips = self.records.lookup(name)
        internal = not ips and self.records.internal()
        if not ips and not internal:
            if len(self.forwarded) > 4096:
                self.forwarded.clear()
            self.forwarded.add(question)
            return None
        try:
            q = dns.DNSRecord.parse(data)
        except Exception:  # noqa: BLE001 dnslib raises assorted errors on a malformed query
            return b""
        reply = q.reply()
        if internal:
            reply.header.rcode = dns.RCODE.SERVFAIL  # an --internal network forwards nothing
        elif qtype in (dns.QTYPE.A, dns.QTYPE.ANY):
            for ip in ips:
                reply.add_answer(dns.RR(qname, dns.QTYPE.A, rdata=dns.A(ip), ttl=TTL))
        return reply.pack()  # a known name: other types are answered empty (NOERROR)

    def _udp_query(self):
        """One query (epoll is level-triggered: more queued ones wake it again)."""
        try:
            data, client = self.udp.recvfrom(4096)
        except BlockingIOError:
            return
        started = time.monotonic()
        out = self.answer(data)
        if out:
            self.udp.sendto(out, client)
            if self.listeners.active():
                self.listeners.report("udp", "local", client, out, None, started)
        elif out is None:
            self._forward(data, client, 0)

    def _upstream_sock(self, index):
        sock = self.up_socks.get(index)
        if sock is None:
            host, port = self.upstream[index]
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect((host, port))  # replies from anyone else are not delivered
            self.up_socks[index] = sock
            self._watch(sock.fileno(), sock)
        return sock

    def _forward(self, data, client, index):
        """Send the query to upstream `index` under an id of ours (one socket per
        upstream); the reply goes back to `client` with its own id."""
        if index >= len(self.upstream):
            self._fail(data, client)
            return
        qid = secrets.randbelow(65536)
        while qid in self.pending:
            qid = secrets.randbelow(65536)
        try:
            self._upstream_sock(index).send(qid.to_bytes(2, "big") + data[2:])
        except OSError:
            self._forward(data, client, index + 1)
            return
        self.pending[qid] = (client, data[:2], time.monotonic(), index, data)

    def _udp_reply(self, sock):
        """One upstream reply, back to its client under the client's id."""
        try:
            reply = sock.recv(65535)
        except BlockingIOError:
            return
        except OSError:  # e.g. ICMP port unreachable from that upstream: try the next
            for qid, entry in list(self.pending.items()):
                if self.up_socks.get(entry[3]) is sock:
                    del self.pending[qid]
                    self._forward(entry[4], entry[0], entry[3] + 1)
            return
        qid = int.from_bytes(reply[:2], "big")
        entry = self.pending.get(qid)
        if len(reply) < 12 or entry is None or self.up_socks.get(entry[3]) is not sock:
            return  # late, or not from the upstream it was sent to
        del self.pending[qid]
        out = entry[1] + reply[2:]
        self.udp.sendto(out, entry[0])
        if self.listeners.active():
            self.listeners.report(
                "udp", "forwarded", entry[0], out, self.upstream[entry[3]], entry[2]
            )

    def _expire(self):
        now = time.monotonic()
        if now - self.last_expire < 0.2:
            return
        self.last_expire = now
        for qid, (client, _, started, index, data) in list(self.pending.items()):
            if now - started > FORWARD_TIMEOUT:
                del self.pending[qid]
                self._forward(data, client, index + 1)

    def _fail(self, data, client):
        dns = _dnslib()
        try:
            reply = dns.DNSRecord.parse(data).reply()
        except Exception:  # noqa: BLE001 garbage in: no reply
            return
        reply.header.rcode = dns.RCODE.SERVFAIL
        out = reply.pack()
        self.udp.sendto(out, client)
        if self.listeners.active():
            self.listeners.report("udp", "failed", client, out)

    def _tcp_accept(self):
        conn, client = self.tcp.accept()
        threading.Thread(target=self._tcp_serve, args=(conn, client), daemon=True).start()

    def _tcp_serve(self, conn, client=("", 0)):
        """One TCP query at a time (RFC 7766 clients may pipeline; each is answered)."""
        with conn:
            conn.settimeout(5)
            try:
                while True:
                    head = _recv_exact(conn, 2)
                    if not head:
                        return
                    data = _recv_exact(conn, int.from_bytes(head, "big"))
                    started = time.monotonic()
                    out, how, upstream = self.answer(data), "local", None
                    if out is None:
                        out, upstream = self._forward_tcp(data)
                        how = "forwarded" if out else "failed"
                    if not out:
                        return
                    conn.sendall(len(out).to_bytes(2, "big") + out)
                    if self.listeners.active():
                        self.listeners.report("tcp", how, client, out, upstream, started)
            except OSError:
                return

    def _forward_tcp(self, data):
        """A TCP query forwarded over TCP; an upstream that does not take TCP is asked
        over UDP instead (the answer goes back over the client's TCP connection).
        Returns (reply, (upstream ip, port)), or (b"", None)."""
        for host, port in self.upstream:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            try:
                with socket.create_connection((host, port), timeout=FORWARD_TIMEOUT) as s:
                    s.sendall(len(data).to_bytes(2, "big") + data)
                    head = _recv_exact(s, 2)
                    if head:
                        return _recv_exact(s, int.from_bytes(head, "big")), (host, port)
            except OSError:
                pass
            try:
                with socket.socket(family, socket.SOCK_DGRAM) as u:
                    u.settimeout(FORWARD_TIMEOUT)
                    u.connect((host, port))
                    u.send(data)
                    reply = u.recv(65535)
                    if reply[:2] == data[:2]:
                        return reply, (host, port)
            except OSError:
                continue
        return b"", None


_DNSLIB = None


def _dnslib():
    """dnslib, imported once (the shim imports it only when a container needs DNS)."""
    global _DNSLIB
    if _DNSLIB is None:
        import dnslib

        _DNSLIB = dnslib
    return _DNSLIB


def _recv_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return b""
        buf += chunk
    return buf


def _sockets_in(pid):
    """UDP and TCP sockets on 127.0.0.11:53 in the netns of `pid`, made from a thread that
    enters it and comes back (a socket stays in the netns it was made in)."""
    result: dict = {}

    def make():
        here = os.open(f"/proc/self/task/{threading.get_native_id()}/ns/net", os.O_RDONLY)
        there = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        try:
            isolation.setns(there, isolation.CLONE_NEWNET)
            try:
                udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                udp.bind((ADDR, 53))
                tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((ADDR, 53))
                tcp.listen(16)
                result["socks"] = (udp, tcp)
            finally:
                isolation.setns(here, isolation.CLONE_NEWNET)
        except OSError as exc:
            result["error"] = exc
        finally:
            os.close(here)
            os.close(there)

    t = threading.Thread(target=make, name="pyinspect-dns-setup")
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    udp, tcp = result["socks"]
    udp.setblocking(False)
    tcp.setblocking(False)
    return udp, tcp
