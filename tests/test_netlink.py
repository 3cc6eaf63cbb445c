"""The shared netlink receive loop (`pyinspect.probes.netlink.drain`) and `pyinspect.proc`,
on a real rtnetlink socket in a namespace of the test's own: link notifications are the
records, and a tiny receive buffer makes the kernel report a real overrun (ENOBUFS)."""

import os
import socket
import struct
import subprocess
import time

import pytest

from pyinspect.probes.netlink import drain
from pyinspect.probes.netns import netlink_socket_in
from pyinspect.proc import pid_alive

RTM_NEWLINK = 16
RTMGRP_LINK = 1


def message_types(data, ts_ns):
    """One record per netlink message of a datagram: (type, ts_ns)."""
    out, off = [], 0
    while off + 16 <= len(data):
        ln, mtype = struct.unpack_from("=IH", data, off)
        if ln < 16:
            break
        out.append((mtype, ts_ns))
        off += (ln + 3) & ~3
    return out


@pytest.fixture
def link_events(make_netns):
    """(netns, non-blocking socket subscribed to its link notifications)."""
    ns = make_netns("dgx")
    fd = os.open(ns.path, os.O_RDONLY)
    try:
        sock = netlink_socket_in(fd, RTMGRP_LINK)
    finally:
        os.close(fd)
    sock.setblocking(False)
    yield ns, sock
    sock.close()


@pytest.mark.root
def test_drain_returns_every_queued_message_then_nothing(link_events):
    ns, sock = link_events
    started = time.monotonic()
    assert drain(sock, message_types, timeout=0.2) == ([], 0)
    assert time.monotonic() - started >= 0.15  # it waited for a first message
    ns.sh("ip link add dga0 type veth peer name dgb0 && ip link add dga1 type veth peer name dgb1")
    before = time.time_ns()
    records, overruns = drain(sock, message_types, timeout=2)
    assert overruns == 0
    assert sum(1 for t, _ in records if t == RTM_NEWLINK) >= 4  # both ends of both pairs
    assert all(ts >= before for _, ts in records)
    assert drain(sock, message_types) == ([], 0)  # drained: nothing left, no wait


@pytest.mark.root
def test_drain_counts_overruns_and_keeps_reading(link_events):
    ns, sock = link_events
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel's minimum
    batch = "".join(f"link add dga{i} type veth peer name dgb{i}\n" for i in range(40))
    subprocess.run(
        ["ip", "netns", "exec", ns.name, "ip", "-batch", "-"],
        input=batch,
        text=True,
        check=True,
        timeout=60,
    )
    records, overruns = drain(sock, message_types)
    assert overruns >= 1  # the kernel dropped notifications and said so
    assert records and len(records) < 80  # what fitted was still read
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    ns.sh("ip link del dga0")
    records, overruns = drain(sock, message_types, timeout=2)
    assert overruns == 0 and records  # the socket works on after an overrun


def test_pid_alive():
    assert pid_alive(os.getpid())
    assert pid_alive(1)  # exists even where we may not signal it
    child = subprocess.Popen(["true"])
    child.wait()
    assert not pid_alive(child.pid)  # reaped: gone (unless the pid was reused at once)
    assert not pid_alive(0) and not pid_alive(-1)  # process groups, not a process
