"""The traced container's DNS lookups, from two places, as one kind of line:

    dns  web -> A db? 10.89.0.3 (embedded, local)
    dns  web -> A example.test? 10.200.0.9 (embedded, forwarded to 10.77.0.53:53, 1.2 ms)
    dns  web -> AAAA x.test? NXDOMAIN (udp 10.0.0.2:53 via eth0, 0.8 ms)

- the embedded DNS of a user network (runtime/netdns.py) reports every answer to a unix
  datagram socket this source binds in the container's `dns-trace/` directory (those
  queries go to 127.0.0.11 on the container's loopback: no capture point sees them);
- DNS over UDP/TCP port 53 in the analysed packets (IPv4 and IPv6: a container on the
  default bridge asks its resolvers itself), query and response matched by DNS id and
  question, decoded with dnslib from the first bytes the analysis sees (a longer reply
  shows the answers that fit, then `...`).

Each lookup becomes an event of kind `dns` (detail: the `Lookup` fields): stored in the
events table with the trace's other events, shown live by sinks.LiveText.event.
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .sources import Source

NO_REPLY_S = 3.0  # a query seen in packets without a response for this long: "no reply"
MAX_OPEN_QUERIES = 10_000  # queries waiting for their response, at most (a flood: oldest go)
READ_PER_POLL = 5000  # embedded reports decoded a poll (the rest wait for the next)
QUEUED = 100_000  # reports received and not yet decoded, at most (older ones are counted lost)


@dataclass
class Lookup:
    """One DNS question and its answer, as a trace line shows it."""

    ts_ns: int  # CLOCK_REALTIME of the answer (of the query when none came)
    client: str  # the container's name, or ip:port of another client
    qname: str
    qtype: str
    rcode: str  # NOERROR, NXDOMAIN, SERVFAIL...; "" when no reply came
    answers: list[str] = field(default_factory=list)
    source: str = "packets"  # "embedded" | "packets"
    proto: str = "udp"  # udp | tcp
    how: str = ""  # embedded: local | forwarded | failed
    upstream: str | None = None  # embedded, forwarded: the resolver asked
    server: str | None = None  # packets: the server's ip:port
    point: str | None = None  # packets: the capture point the query was decoded at
    latency_us: int | None = None
    truncated: bool = False  # packets: the answers did not fit in the analysed bytes

    def result(self) -> str:
        if not self.rcode:
            return "no reply"
        if self.rcode != "NOERROR":
            return self.rcode
        text = ", ".join(self.answers) if self.answers else "no records"
        return text + (" ..." if self.truncated else "")

    def where(self) -> str:
        took = f", {self.latency_us / 1000:.1f} ms" if self.latency_us is not None else ""
        if self.source == "embedded":
            emb = "embedded over tcp" if self.proto == "tcp" else "embedded"
            if self.how == "forwarded":
                return f"{emb}, forwarded to {self.upstream or '?'}{took}"
            return f"{emb}, {self.how}" + (took if self.how != "local" else "")
        via = f" via {self.point}" if self.point else ""
        return f"{self.proto} {self.server}{via}{took}"

    def text(self) -> str:
        return f"dns  {self.client} -> {self.qtype} {self.qname}? {self.result()} ({self.where()})"


def dns_item(ev: dict) -> dict:
    """The live/JSON output item of a stored `dns` event."""
    d: dict[str, Any] = ev.get("detail") or {}
    lk = Lookup(**{k: v for k, v in d.items() if k in Lookup.__dataclass_fields__})
    return {"type": "dns", "_ts": ev["ts_ns"], **asdict(lk), "text": lk.text()}


def _names():
    import dnslib

    return dnslib


def decode(data: bytes):
    """A DNS message, as much as `data` holds -> (id, is_response, qname, qtype, rcode,
    answers, truncated), or None when not even the question is there."""
    dns = _names()
    try:
        buf = dns.DNSBuffer(data)
        header = dns.DNSHeader.parse(buf)
        if header.q < 1:
            return None
        q = dns.DNSQuestion.parse(buf)
    except Exception:  # noqa: BLE001 dnslib raises several types for short or bad bytes
        return None
    qname = str(q.qname).rstrip(".") or "."
    qtype = dns.QTYPE.get(q.qtype, str(q.qtype))
    answers: list[str] = []
    truncated = False
    if header.qr:
        try:
            for _ in range(1, header.q):
                dns.DNSQuestion.parse(buf)
            for _ in range(header.a):
                rr = dns.RR.parse(buf)
                answers.append(_rdata(dns, rr))
        except Exception:  # noqa: BLE001 the rest was cut off by the snap length
            truncated = True
        truncated = truncated or bool(header.tc)
    rcode = dns.RCODE.get(header.rcode, str(header.rcode)) if header.qr else ""
    return header.id, bool(header.qr), qname, qtype, rcode, answers, truncated


def _rdata(dns, rr) -> str:
    text = str(rr.rdata)
    if rr.rtype in (dns.QTYPE.A, dns.QTYPE.AAAA):
        return text
    return f"{dns.QTYPE.get(rr.rtype, str(rr.rtype))} {text.rstrip('.') if text != '.' else text}"


def _l4_payload(frame: bytes):
    """Ethernet frame -> (proto, L4 payload) for UDP and TCP over IPv4/IPv6, else None."""
    off = 14
    etype = int.from_bytes(frame[12:14], "big")
    while etype in (0x8100, 0x88A8) and len(frame) >= off + 4:
        etype = int.from_bytes(frame[off + 2 : off + 4], "big")
        off += 4
    if etype == 0x0800 and len(frame) >= off + 20:
        nh, l4 = frame[off + 9], off + (frame[off] & 0xF) * 4
        if int.from_bytes(frame[off + 6 : off + 8], "big") & 0x1FFF:
            return None  # a later fragment
    elif etype == 0x86DD and len(frame) >= off + 40:
        nh, l4 = frame[off + 6], off + 40
        for _ in range(4):
            if nh in (0, 43, 60) and len(frame) >= l4 + 2:
                nh, l4 = frame[l4], l4 + (frame[l4 + 1] + 1) * 8
            elif nh == 44 and len(frame) >= l4 + 8:
                if int.from_bytes(frame[l4 + 2 : l4 + 4], "big") & 0xFFF8:
                    return None
                nh, l4 = frame[l4], l4 + 8
            else:
                break
    else:
        return None
    if nh == 17:
        return "udp", frame[l4 + 8 :]
    if nh == 6 and len(frame) >= l4 + 13:
        data = frame[l4 + (frame[l4 + 12] >> 4) * 4 :]
        return "tcp", data[2:]  # DNS over TCP: a 2-byte length first
    return None


def _ep(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class DnsLookups(Source):
    """The traced container's DNS lookups: reports of its embedded DNS (read()), and DNS
    in the settled journeys (packets()). Both return `dns` event dicts."""

    name = "dns lookups"

    def __init__(self, root, target, points):
        self.root = root
        self.target = target
        self.points = points
        self.sock: socket.socket | None = None
        self.path: str | None = None
        # a unix datagram socket queues only net.unix.max_dgram_qlen (10) datagrams: a
        # thread takes them as they come, read() decodes them at the poll
        self._raw: collections.deque[bytes] = collections.deque()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.lookups = 0  # lines made
        self._lost = 0
        self._seq = None
        self._queries: dict[tuple, tuple] = {}  # (id, qname, qtype) -> (ts, client, ...)
        self._inside = {i for i, p in enumerate(points) if p.netns is not None}

    # -- the embedded DNS --------------------------------------------------------------
    def start(self):
        t = self.target
        if t.source != "pyinspect" or not t.id:
            return self
        from pyinspect.runtime import netdns

        directory = netdns.listen_dir(self.root, t.id)
        if not os.path.isdir(os.path.dirname(directory)):
            return self
        os.makedirs(directory, exist_ok=True)
        _remove_stale(directory)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            dfd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
            try:  # through the directory's fd: a deep state dir would not fit sun_path
                sock.bind(f"/proc/self/fd/{dfd}/{os.getpid()}.sock")
            finally:
                os.close(dfd)
        except OSError:
            sock.close()
            raise
        sock.settimeout(0.2)  # the thread looks at _stopping this often
        self.sock, self.path = sock, os.path.join(directory, f"{os.getpid()}.sock")
        self._thread = threading.Thread(target=self._receive, name="pyinspect-dns", daemon=True)
        self._thread.start()
        time.sleep(2 * netdns.LISTEN_CHECK)  # the resolver looks for listeners this often
        return self

    def _receive(self):
        sock, raw = self.sock, self._raw
        assert sock is not None
        while not self._stopping:
            try:
                msg = sock.recv(65536)
            except (TimeoutError, InterruptedError):
                continue
            except OSError:
                return
            if len(raw) >= QUEUED:
                raw.popleft()  # the sequence numbers count it lost
            raw.append(msg)

    def read(self, final=False) -> list:
        out: list = []
        raw = self._raw
        for _ in range(len(raw) if final else min(len(raw), READ_PER_POLL)):
            ev = self._report(raw.popleft())
            if ev is not None:
                out.append(ev)
        return out

    def _report(self, msg: bytes):
        head, sep, reply = msg.partition(b"\n")
        parts = head.decode(errors="replace").split()
        if not sep or len(parts) != 8:
            return None
        seq, ts, proto, how, cip, cport, up, took = parts
        with contextlib.suppress(ValueError):
            n = int(seq)
            if self._seq is not None and n > self._seq + 1:
                self._lost += n - self._seq - 1
            self._seq = n
        got = decode(reply)
        if got is None:
            return None
        _id, _qr, qname, qtype, rcode, answers, truncated = got
        lk = Lookup(
            ts_ns=int(ts),
            client=self.target.name,
            qname=qname,
            qtype=qtype,
            rcode=rcode,
            answers=answers,
            source="embedded",
            proto=proto,
            how=how,
            upstream=None if up == "-" else up,
            latency_us=None if took == "-" else int(took),
            truncated=truncated,
        )
        return self._event(lk)

    @property
    def lost(self) -> int:
        return self._lost

    def stop(self) -> None:
        self._stopping = True
        if self._thread is not None:
            self._thread.join(2)
            self._thread = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.path:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            with contextlib.suppress(OSError):
                os.rmdir(os.path.dirname(self.path))  # the last listener: nothing to look for
            self.path = None

    # -- packets -----------------------------------------------------------------------
    def packets(self, journeys, final=False) -> list:
        """`dns` events of the DNS responses in these settled journeys (and, when a query
        got none within NO_REPLY_S or the trace ends, of the query)."""
        out = []
        for j in journeys:
            f = j.flow
            if f.proto not in ("udp", "tcp") or not j.captures:
                continue
            o, r = f.orig, f.reply
            if r is not None and 53 not in (o[1], o[3], r[1], r[3]):
                continue  # no packet of the flow has port 53 on either side of its NAT
            c = self._capture(j.captures)
            pkt = c.pkt
            if pkt is None or 53 not in (pkt.sport, pkt.dport):
                continue
            got = _l4_payload(c.data)
            if got is None:
                continue
            proto, payload = got
            msg = decode(bytes(payload))
            if msg is None:
                continue
            qid, response, qname, qtype, rcode, answers, truncated = msg
            key = (qid, qname.lower(), qtype)
            if not response:
                if key not in self._queries:
                    if len(self._queries) >= MAX_OPEN_QUERIES:
                        del self._queries[next(iter(self._queries))]
                    self._queries[key] = (c.ts_ns, pkt, proto, c.point)
                continue
            query = self._queries.pop(key, None)
            client_ip, client_port, point = pkt.dst, pkt.dport, c.point
            if query is not None:
                client_ip, client_port, point = query[1].src, query[1].sport, query[3]
            lk = Lookup(
                ts_ns=c.ts_ns,
                client=self._client(client_ip, client_port),
                qname=qname,
                qtype=qtype,
                rcode=rcode,
                answers=answers,
                proto=proto,
                server=_ep(pkt.src, pkt.sport),
                point=self.points[point].name,
                latency_us=(c.ts_ns - query[0]) // 1000 if query else None,
                truncated=truncated,
            )
            out.append(self._event(lk))
        now = time.time_ns()
        for key, (ts, pkt, proto, point) in list(self._queries.items()):
            if final or now - ts > NO_REPLY_S * 1e9:
                del self._queries[key]
                lk = Lookup(
                    ts_ns=ts,
                    client=self._client(pkt.src, pkt.sport),
                    qname=key[1],
                    qtype=key[2],
                    rcode="",
                    proto=proto,
                    server=_ep(pkt.dst, pkt.dport),
                    point=self.points[point].name,
                )
                out.append(self._event(lk))
        return out

    def _capture(self, captures):
        """The capture nearest the container (its own interface: the addresses before NAT)."""
        for c in captures:
            if c.point in self._inside:
                return c
        return captures[0]

    def _client(self, ip, port) -> str:
        return self.target.name if ip in self.target.addrs else _ep(ip, port)

    def _event(self, lk: Lookup) -> dict:
        self.lookups += 1
        return {
            "ts_ns": lk.ts_ns,
            "kind": "dns",
            "pid": None,
            "comm": None,
            "netns": self.target.netns,
            "detail": asdict(lk),
        }


def _remove_stale(directory: str) -> None:
    """Sockets of traces that were killed (their pid is gone)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            pid = name.removesuffix(".sock")
            if name.endswith(".sock") and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, name))
