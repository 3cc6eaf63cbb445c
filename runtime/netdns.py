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
"""

import ipaddress
import os
import selectors
import socket
import threading
import time

from . import ipam, isolation

ADDR = "127.0.0.11"
UPSTREAM_ENV = "PYINSPECT_DNS_UPSTREAM"
TTL = 600
FORWARD_TIMEOUT = 2.0


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
        lines = open(resolv).read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split()
        if parts[:1] == ["nameserver"] and len(parts) > 1:
            try:
                ipaddress.ip_address(parts[1].split("%")[0])
            except ValueError:
                continue
            out.append((parts[1], 53))
    return out or [("8.8.8.8", 53), ("8.8.4.4", 53)]  # Docker's fallback


class Records:
    """Name -> addresses for one container: the leases of the networks it is on."""

    def __init__(self, root, container_id):
        self.root, self.cid = str(root), container_id
        self._cache: dict = {}

    def _states(self):
        out = []
        d = ipam.network_dir(self.root)
        try:
            names = sorted(p for p in os.listdir(d) if p.endswith(".json"))
        except OSError:
            return out
        for fname in names:
            path = os.path.join(d, fname)
            try:
                mtime = os.stat(path).st_mtime_ns
            except OSError:
                continue
            hit = self._cache.get(path)
            if hit is None or hit[0] != mtime:
                try:
                    state = ipam.load(self.root, fname[:-5])
                except Exception:  # noqa: BLE001 a damaged file must not stop the resolver
                    state = None
                hit = (mtime, state)
                self._cache[path] = hit
            if hit[1] and hit[1].get("user"):
                out.append(hit[1])
        return out

    def internal(self) -> bool:
        """True when every user network of this container is --internal."""
        mine = [s for s in self._states() if ipam.find(s, self.cid)[0]]
        return bool(mine) and all(s.get("internal") for s in mine)

    def lookup(self, name: str) -> list[str]:
        """IPv4 addresses of `name` on the networks this container shares."""
        name = name.rstrip(".").lower()
        found = []
        for state in self._states():
            if not ipam.find(state, self.cid)[0]:
                continue
            for ip, lease in state["leases"].items():
                names = {str(lease.get("name") or "").lower(), str(lease.get("id", ""))[:12]}
                names.update(a.lower() for a in lease.get("aliases") or ())
                if name in names and ip not in found:
                    found.append(ip)
        return found


class Resolver:
    """The DNS server of one container; `start()` then `stop()` (idempotent)."""

    def __init__(self, root, container_id, pid, upstream):
        self.records = Records(root, container_id)
        self.pid = pid
        self.upstream = list(upstream)
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        self.thread = None
        self.pending: dict = {}  # forward socket -> (client addr, started, upstream index, query)
        self.udp = self.tcp = None
        self.error = None

    # -- lifecycle -----------------------------------------------------------------------
    def start(self):
        """Open the sockets in the container's netns (raises OSError when it cannot)."""
        self.udp, self.tcp = _sockets_in(self.pid)
        self.sel.register(self.udp, selectors.EVENT_READ, "udp")
        self.sel.register(self.tcp, selectors.EVENT_READ, "tcp")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
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
        for sock in [self.udp, self.tcp, *self.pending]:
            if sock is not None:
                sock.close()
        self.pending.clear()
        for fd in (self.wake_r, self.wake_w):
            os.close(fd)
        self.sel.close()

    # -- serving -------------------------------------------------------------------------
    def _loop(self):
        while True:
            for key, _ in self.sel.select(timeout=0.5):
                kind = key.data
                if kind == "wake":
                    return
                try:
                    if kind == "udp":
                        self._udp_query()
                    elif kind == "tcp":
                        self._tcp_accept()
                    else:
                        self._udp_reply(key.fileobj)
                except OSError:
                    pass  # one bad packet or a gone client: keep serving
            self._expire()

    def answer(self, data: bytes) -> bytes | None:
        """The reply for a query we answer ourselves, or None when it is to be forwarded."""
        from dnslib import QTYPE, RCODE, RR, A, DNSRecord

        try:
            q = DNSRecord.parse(data)
        except Exception:  # noqa: BLE001 dnslib raises several types for garbage
            return b""  # not DNS: dropped
        if not q.questions:
            return b""
        qn = q.q.qname
        ips = self.records.lookup(str(qn))
        reply = q.reply()
        if ips:
            if q.q.qtype in (QTYPE.A, QTYPE.ANY):
                for ip in ips:
                    reply.add_answer(RR(qn, QTYPE.A, rdata=A(ip), ttl=TTL))
            return reply.pack()  # a known name: other types are answered empty (NOERROR)
        if self.records.internal():
            reply.header.rcode = RCODE.SERVFAIL
            return reply.pack()
        return None

    def _udp_query(self):
        data, client = self.udp.recvfrom(4096)
        out = self.answer(data)
        if out:
            self.udp.sendto(out, client)
        elif out is None:
            self._forward(data, client, 0)

    def _forward(self, data, client, index):
        if index >= len(self.upstream):
            self._fail(data, client)
            return
        host, port = self.upstream[index]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.connect((host, port))
            sock.send(data)
        except OSError:
            sock.close()
            self._forward(data, client, index + 1)
            return
        self.pending[sock] = (client, time.monotonic(), index, data)
        self.sel.register(sock, selectors.EVENT_READ, "fwd")

    def _udp_reply(self, sock):
        client, _, index, data = self.pending.pop(sock)
        self.sel.unregister(sock)
        try:
            reply = sock.recv(65535)
        except OSError:
            reply = b""
        sock.close()
        if reply:
            self.udp.sendto(reply, client)
        else:
            self._forward(data, client, index + 1)

    def _expire(self):
        now = time.monotonic()
        for sock, (client, started, index, data) in list(self.pending.items()):
            if now - started > FORWARD_TIMEOUT:
                del self.pending[sock]
                self.sel.unregister(sock)
                sock.close()
                self._forward(data, client, index + 1)

    def _fail(self, data, client):
        from dnslib import RCODE, DNSRecord

        try:
            reply = DNSRecord.parse(data).reply()
        except Exception:  # noqa: BLE001 garbage in: no reply
            return
        reply.header.rcode = RCODE.SERVFAIL
        self.udp.sendto(reply.pack(), client)

    def _tcp_accept(self):
        conn, _ = self.tcp.accept()
        threading.Thread(target=self._tcp_serve, args=(conn,), daemon=True).start()

    def _tcp_serve(self, conn):
        """One TCP query at a time (RFC 7766 clients may pipeline; each is answered)."""
        with conn:
            conn.settimeout(5)
            try:
                while True:
                    head = _recv_exact(conn, 2)
                    if not head:
                        return
                    data = _recv_exact(conn, int.from_bytes(head, "big"))
                    out = self.answer(data)
                    if out is None:
                        out = self._forward_tcp(data)
                    if not out:
                        return
                    conn.sendall(len(out).to_bytes(2, "big") + out)
            except OSError:
                return

    def _forward_tcp(self, data):
        for host, port in self.upstream:
            try:
                with socket.create_connection((host, port), timeout=FORWARD_TIMEOUT) as s:
                    s.sendall(len(data).to_bytes(2, "big") + data)
                    head = _recv_exact(s, 2)
                    if head:
                        return _recv_exact(s, int.from_bytes(head, "big"))
            except OSError:
                continue
        return b""


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
