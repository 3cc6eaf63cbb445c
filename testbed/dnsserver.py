"""A tiny authoritative DNS server (dnslib) to play "the upstream resolver" in a netns the
test or bench made: never the machine's own resolvers.

    python -m testbed.dnsserver ADDR PORT NAME=IP [NAME=IP ...]

Answers A queries for the given names (AAAA for a name given an IPv6 address), NXDOMAIN
for anything else, over UDP (on an IPv4 or IPv6 ADDR); prints
"ready" once bound and stops on SIGTERM/SIGINT. `start(ns, addr, records)` runs it in
the named netns and waits for "ready".
"""

import signal
import socket
import subprocess
import sys


def serve(addr: str, port: int, records: dict[str, str]) -> None:
    from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord

    sock = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((addr, port))
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    sock.settimeout(0.2)
    print("ready", flush=True)
    while not stop:
        try:
            data, client = sock.recvfrom(4096)
        except TimeoutError:
            continue
        except InterruptedError:
            continue
        try:
            q = DNSRecord.parse(data)
        except Exception:  # noqa: BLE001 garbage: no answer
            continue
        reply = q.reply()
        name = str(q.q.qname).rstrip(".").lower()
        ip = records.get(name)
        if ip and ":" in ip and q.q.qtype == QTYPE.AAAA:
            reply.add_answer(RR(q.q.qname, QTYPE.AAAA, rdata=AAAA(ip), ttl=60))
        elif ip and ":" not in ip and q.q.qtype == QTYPE.A:
            reply.add_answer(RR(q.q.qname, QTYPE.A, rdata=A(ip), ttl=60))
        elif not ip:
            reply.header.rcode = RCODE.NXDOMAIN
        sock.sendto(reply.pack(), client)
    sock.close()


def start(ns: str, addr: str, records: dict[str, str], port: int = 53) -> subprocess.Popen:
    """Run the server in netns `ns`; returns the process once it answers (caller stops it)."""
    argv = ["ip", "netns", "exec", ns, sys.executable, "-m", "testbed.dnsserver", addr, str(port)]
    argv += [f"{k}={v}" for k, v in records.items()]
    import os

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=here)
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        proc.wait()
        raise RuntimeError(f"dns server in {ns} did not start: {line!r}")
    return proc


if __name__ == "__main__":
    recs = dict(a.split("=", 1) for a in sys.argv[3:])
    serve(sys.argv[1], int(sys.argv[2]), {k.lower(): v for k, v in recs.items()})
