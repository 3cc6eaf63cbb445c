"""Netlink (rtnetlink) sockets bound to any network namespace, without forking or exec.

A netlink socket belongs to the network namespace of the thread that created it.
`RtnlSocket(ns_fd)` enters the namespace with setns(2) on the calling thread only,
creates the socket, and returns to the thread's own namespace at once; the socket
then answers for that namespace for as long as it lives. This is about 20x faster
than pyroute2's `IPRoute(netns=...)`, which forks a helper process per socket
(measured: 0.6 ms vs 12 ms per namespace, see docs/vethmap.md).

Messages are encoded and decoded with pyroute2's rtnetlink classes.
"""

import ctypes
import errno
import os
import socket
import threading

from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR
from pyroute2.netlink.rtnl import (RTM_GETADDR, RTM_GETLINK, RTM_GETNSID,
                                   RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netlink.rtnl.nsidmsg import nsidmsg

CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0
RTNLGRP_NSID = 28
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NSID_NOT_ASSIGNED = -1

_libc = ctypes.CDLL(None, use_errno=True)
_lock = threading.Lock()


def setns(fd, nstype=CLONE_NEWNET):
    """Move the calling thread into the namespace behind `fd`."""
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def ns_inode(path_or_fd):
    """The inode number that identifies a namespace file (path or open fd)."""
    st = os.fstat(path_or_fd) if isinstance(path_or_fd, int) else os.stat(path_or_fd)
    return st.st_ino


def open_ns(path):
    """Open a namespace file read-only; returns (fd, inode). OSError if it is gone."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return fd, os.fstat(fd).st_ino
    except OSError:
        os.close(fd)
        raise


def netlink_socket_in(ns_fd=None, groups=0):
    """A bound NETLINK_ROUTE socket created inside the netns `ns_fd` (None: our own)."""
    if ns_fd is None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
    else:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(ns_fd)
            try:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            finally:
                setns(home)
        finally:
            os.close(home)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((0, groups))
    except OSError:
        sock.close()
        raise
    return sock


class RtnlSocket:
    """Dumps and queries over one rtnetlink socket living in one network namespace."""

    def __init__(self, ns_fd=None, groups=0):
        self.sock = netlink_socket_in(ns_fd, groups)
        self.marshal = MarshalRtnl()
        self.seq = 0

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def fileno(self):
        return self.sock.fileno()

    def add_membership(self, group):
        """Join a multicast group by number (e.g. RTNLGRP_NSID)."""
        self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)

    def request(self, msg, msg_type, flags=NLM_F_REQUEST):
        """Send one request; return the list of replies (a dump is read to NLMSG_DONE)."""
        self.seq += 1
        seq = self.seq
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = seq
        msg.encode()
        self.sock.send(msg.data)
        out = []
        dump = bool(flags & NLM_F_DUMP)
        while True:
            data = self.sock.recv(1 << 20)
            finished = False
            for reply in self.marshal.parse(data):
                hdr = reply["header"]
                if hdr["sequence_number"] != seq:
                    continue  # a multicast event or a stale reply
                if hdr["type"] == NLMSG_DONE:
                    finished = True
                    break
                if hdr["type"] == NLMSG_ERROR:
                    if hdr.get("error"):
                        raise hdr["error"]
                    finished = True  # an ACK
                    break
                out.append(reply)
                if not dump:
                    finished = True
            if finished:
                return out

    def links(self):
        """RTM_GETLINK dump: every link in this namespace (ifinfmsg)."""
        return self.request(ifinfmsg(), RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP)

    def addrs(self):
        """RTM_GETADDR dump: every address in this namespace (ifaddrmsg)."""
        return self.request(ifaddrmsg(), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP)

    def nsid_of(self, fd):
        """The id this namespace gives the namespace behind `fd`, or None (RTM_GETNSID).

        Read-only: the kernel does not assign an id for this query.
        """
        msg = nsidmsg()
        msg["attrs"] = [("NETNSA_FD", fd)]
        try:
            replies = self.request(msg, RTM_GETNSID)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT, errno.EOPNOTSUPP):
                return None
            raise
        for reply in replies:
            nsid = reply.get_attr("NETNSA_NSID")
            if nsid is None:
                return None
            if nsid >= 0x80000000:
                nsid -= 1 << 32
            return None if nsid == NSID_NOT_ASSIGNED else nsid
        return None

    def recv_events(self):
        """Read one batch of multicast messages (blocks unless the socket is non-blocking)."""
        data = self.sock.recv(1 << 20)
        return list(self.marshal.parse(data))


LINK_GROUPS = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR
