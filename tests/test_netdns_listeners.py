"""The embedded DNS's reports to listening traces (runtime/netdns.Listeners), on real unix
datagram sockets: a listener that reads slower than the resolver answers still gets every
report, in order, and one that is gone costs nothing."""

import os
import socket
import time

from pyinspect.runtime import netdns


def _listener(directory, name):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(os.path.join(directory, name))
    sock.setblocking(False)
    return sock


def _drain(sock):
    got = []
    while True:
        try:
            got.append(sock.recv(65536))
        except BlockingIOError:
            return got


def _seqs(msgs):
    return [int(m.split(b" ", 1)[0]) for m in msgs]


def test_a_full_listener_gets_every_report_in_order(tmp_path):
    sock = _listener(tmp_path, "1.sock")
    ls = netdns.Listeners(str(tmp_path))
    try:
        assert ls.active()
        n = 200  # far more than a unix datagram socket queues (max_dgram_qlen, 10)
        for i in range(n):
            ls.report("udp", "local", ("10.0.0.2", 4000 + i), b"reply")
        assert ls.waiting()  # the socket was full: the rest waits
        got = _drain(sock)
        assert 0 < len(got) < n
        deadline = time.monotonic() + 5
        while ls.waiting() and time.monotonic() < deadline:
            ls.flush()  # what the resolver's loop does while reports wait
            got += _drain(sock)
        got += _drain(sock)
        assert _seqs(got) == list(range(1, n + 1))
        assert got[7].split(b"\n")[0].split()[2:6] == [b"udp", b"local", b"10.0.0.2", b"4007"]
        # a new report while others wait goes after them
        for _ in range(20):
            ls.report("udp", "local", ("10.0.0.2", 1), b"reply")
        ls.report("tcp", "forwarded", ("10.0.0.2", 2), b"late", ("10.9.9.9", 53), None)
        more = []
        while ls.waiting() or not more:
            ls.flush()
            more += _drain(sock)
        assert _seqs(more) == list(range(n + 1, n + 22))
        assert more[-1].endswith(b"\nlate")
    finally:
        ls.close()
        sock.close()


def test_a_gone_listener_is_dropped_with_its_backlog(tmp_path):
    sock = _listener(tmp_path, "2.sock")
    ls = netdns.Listeners(str(tmp_path))
    try:
        assert ls.active()
        for _ in range(30):
            ls.report("udp", "local", ("10.0.0.2", 1), b"reply")
        assert ls.waiting()
        sock.close()  # the trace was killed: its socket file stays, refusing
        ls.flush()
        assert not ls.waiting()
        assert not os.path.exists(tmp_path / "2.sock")  # unlinked by the resolver
    finally:
        ls.close()
