"""Draining a non-blocking netlink socket: the receive loop the netlink probes share.

`drain(sock, parse, timeout)` reads every datagram queued now (waiting up to `timeout`
seconds for the first), hands each to `parse(datagram, ts_ns)` and returns the records
with the number of ENOBUFS overruns met on the way: the kernel's word that it dropped
messages because the receive buffer was full. Used by `conntrack.ConntrackEvents` and
`nftrace.NflogReader`.
"""

import errno
import select
import socket
import threading
import time

NETLINK_NETFILTER = 12
RECV_SIZE = 1 << 20

_bufs = threading.local()


def drain(sock, parse, timeout=0.0, bufsize=RECV_SIZE):
    """([records], overruns) from everything queued on `sock` now.

    `parse(data, ts_ns)` turns one datagram into a list of records (`ts_ns` is when it
    was read). Other socket errors are raised.
    """
    out: list = []
    overruns = 0
    if timeout and not select.select([sock], [], [], timeout)[0]:
        return out, overruns
    # one receive buffer a thread, the datagram copied out of it: recv(bufsize) would
    # allocate (and map) bufsize bytes for every datagram, twice a small one's cost
    buf = getattr(_bufs, "buf", None)
    if buf is None or len(buf) < bufsize:
        buf = _bufs.buf = bytearray(bufsize)
    view = memoryview(buf)
    recv_into = sock.recv_into
    while True:
        try:
            data = bytes(view[: recv_into(buf, bufsize)])
        except BlockingIOError:
            break
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                overruns += 1
                continue
            raise
        out.extend(parse(data, time.time_ns()))
    return out, overruns


class Receiver:
    """Base for a probe that reads one non-blocking netlink socket `self.sock`.

    Subclasses open the socket and define `_parse(data, ts_ns) -> [records]`; `read()`
    drains it and adds the kernel's overruns to `self.lost`.
    """

    sock: socket.socket | None = None
    lost = 0  # ENOBUFS overruns (messages the kernel could not queue)

    def fileno(self) -> int:
        assert self.sock is not None, "not started"
        return self.sock.fileno()

    def _parse(self, data: bytes, ts_ns: int) -> list:
        raise NotImplementedError

    def read(self, timeout=0.0):
        """Records available now (waits up to `timeout` seconds for the first)."""
        if not self.sock:
            return []
        out, overruns = drain(self.sock, self._parse, timeout)
        self.lost += overruns
        return out
