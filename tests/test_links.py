"""Link events from the netlink monitor, asserted exactly, in namespaces the test owns.

The probe is started (subscribed and snapshotted) before anything is changed: start()
returning is its ready signal. Each step then collects events until the expected
number has arrived, plus one short poll to catch anything unexpected.
"""

import os
import subprocess
import time

import pytest

from pyinspect.probes.links import LinkProbe

pytestmark = pytest.mark.root


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True)


def collect(probe, n, timeout=5.0):
    """Events until at least `n` arrived (or timeout), then one more short poll."""
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out += probe.events(100)
    out += probe.events(50)
    return out


def brief(events, labels):
    return [(labels[e["netns"]], e["kind"], e["ifname"]) for e in events]


@pytest.fixture
def probe_factory():
    made = []

    def make(filters=None, **kw):
        p = LinkProbe(**kw).start(filters)
        made.append(p)
        assert p.ready
        return p

    yield make
    for p in made:
        p.stop()


def test_veth_bridge_lifecycle_exact_events(make_netns, probe_factory):
    h, c = make_netns("pb"), make_netns("pb")
    hi, ci = os.stat(h.path).st_ino, os.stat(c.path).st_ino
    labels = {hi: "host", ci: "ctr"}
    p = probe_factory(netns=[h.name, c.path], own=False)
    assert set(p.watched) == {hi, ci}

    ip("-n", h.name, "link", "add", "A", "type", "veth", "peer", "name", "B")
    evs = collect(p, 2)
    assert brief(evs, labels) == [("host", "link_add", "B"), ("host", "link_add", "A")]
    a_idx = evs[1]["ifindex"]
    assert evs[1]["detail"]["kind"] == "veth" and evs[1]["detail"]["link"] == evs[0]["ifindex"]
    assert all(e["pid"] is None and e["ts_ns"] > 0 for e in evs)

    ip("-n", h.name, "link", "add", "pb-br0", "type", "bridge")
    evs = collect(p, 1)
    assert brief(evs, labels) == [("host", "link_add", "pb-br0")]
    br_idx = evs[0]["ifindex"]

    ip("-n", h.name, "link", "set", "A", "master", "pb-br0")
    evs = collect(p, 1)
    assert brief(evs, labels) == [("host", "link_master", "A")]
    assert evs[0]["detail"]["master"] == br_idx and evs[0]["detail"]["master_ifname"] == "pb-br0"
    assert evs[0]["detail"]["old_master"] is None

    ip("-n", h.name, "link", "set", "A", "up")
    assert brief(collect(p, 1), labels) == [("host", "link_up", "A")]

    # the seed's move: B into the container's netns; then renamed eth0 there
    ip("-n", h.name, "link", "set", "B", "netns", c.name)
    evs = collect(p, 2)
    assert brief(evs, labels) == [("host", "link_netns", "B"), ("ctr", "link_netns", "B")]
    out, into = evs
    assert out["detail"]["direction"] == "out" and out["detail"]["to_netns"] == ci
    new_idx = int(
        subprocess.run(
            ["ip", "netns", "exec", c.name, "cat", "/sys/class/net/B/ifindex"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert out["detail"]["new_ifindex"] == new_idx == into["ifindex"]
    assert into["detail"]["direction"] == "in" and into["detail"]["from_netns"] == hi

    ip("-n", c.name, "link", "set", "B", "name", "eth0")
    evs = collect(p, 1)
    assert brief(evs, labels) == [("ctr", "link_rename", "eth0")]
    assert evs[0]["detail"]["old_ifname"] == "B" and evs[0]["ifindex"] == new_idx

    ip("-n", c.name, "link", "set", "eth0", "up")
    assert brief(collect(p, 1), labels) == [("ctr", "link_up", "eth0")]

    ip("-n", h.name, "link", "set", "A", "nomaster")
    evs = collect(p, 1)
    assert brief(evs, labels) == [("host", "link_master", "A")]
    assert evs[0]["detail"]["master"] is None and evs[0]["detail"]["old_master"] == br_idx

    ip("-n", h.name, "link", "set", "A", "down")
    assert brief(collect(p, 1), labels) == [("host", "link_down", "A")]

    # deleting one end: the kernel closes the peer (down) and deletes it
    ip("-n", h.name, "link", "del", "A")
    evs = collect(p, 3)
    assert sorted(brief(evs, labels)) == [
        ("ctr", "link_del", "eth0"),
        ("ctr", "link_down", "eth0"),
        ("host", "link_del", "A"),
    ]
    assert next(e for e in evs if e["ifname"] == "A")["ifindex"] == a_idx
    assert p.lost == 0


def test_kinds_filter_and_all_named(make_netns, probe_factory):
    p = probe_factory(own=False, all_named=True)
    later = make_netns("pb")  # appears in /run/netns after the probe started
    ino = os.stat(later.path).st_ino
    deadline = time.monotonic() + 5
    while ino not in p.watched and time.monotonic() < deadline:
        p.events(100)
    assert ino in p.watched
    p.filters = {"kinds": {"link_rename"}}
    ip("-n", later.name, "link", "add", "pb-d0", "type", "bridge")
    ip("-n", later.name, "link", "set", "pb-d0", "name", "pb-d1")
    evs = [e for e in collect(p, 1) if e["netns"] == ino]
    assert [(e["kind"], e["ifname"], e["detail"]["old_ifname"]) for e in evs] == [
        ("link_rename", "pb-d1", "pb-d0")
    ]
    # a removed named namespace is let go (our socket would otherwise keep it alive)
    later.remove()
    deadline = time.monotonic() + 5
    while ino in p.watched and time.monotonic() < deadline:
        p.events(100)
    assert ino not in p.watched


def test_overrun_is_counted_and_resynced(make_netns, probe_factory):
    ns = make_netns("pb")
    p = probe_factory(netns=[ns.name], own=False, rcvbuf=1024)
    ns.sh("for i in $(seq 1 60); do ip link add pb-x$i type bridge; done")
    ns.sh("ip link del pb-x1 && ip link set pb-x2 name pb-y2")
    evs = collect(p, 1)
    assert p.lost >= 1
    assert any(e["detail"].get("resync") for e in evs)
    # after the resync the probe's view is the kernel's, and the events add up to it
    truth = set(ns.sh("ls /sys/class/net").stdout.split())
    assert {ln["ifname"] for ln in p.watched[os.stat(ns.path).st_ino].links.values()} == truth
    names = {"lo"}
    for e in evs:
        if e["kind"] == "link_add":
            names.add(e["ifname"])
        elif e["kind"] == "link_del":
            names.discard(e["ifname"])
        elif e["kind"] == "link_rename":
            names.discard(e["detail"]["old_ifname"])
            names.add(e["ifname"])
    assert names == truth


def test_not_started_is_an_error():
    from pyinspect.errors import UnavailableError

    with pytest.raises(UnavailableError):
        LinkProbe(own=False).events(0)


def test_own_namespace_is_the_callers(make_netns):
    """own=True watches the namespace of the thread that calls start()."""
    import threading

    from pyinspect.probes.netns import setns

    ns = make_netns("pb")
    box = {}

    def start_inside():  # a thread's netns is its own: enter, start, leave
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open(ns.path, os.O_RDONLY)
        try:
            setns(fd)
            box["probe"] = LinkProbe().start()
        finally:
            setns(home)
            os.close(fd)
            os.close(home)

    t = threading.Thread(target=start_inside)
    t.start()
    t.join()
    p = box["probe"]
    try:
        assert set(p.watched) == {os.stat(ns.path).st_ino}
        ip("-n", ns.name, "link", "add", "pb-own", "type", "bridge")
        evs = collect(p, 1)
        assert [(e["kind"], e["ifname"], e["netns"]) for e in evs] == [
            ("link_add", "pb-own", os.stat(ns.path).st_ino)
        ]
        assert evs[0]["detail"]["netns_label"] == "self"
    finally:
        p.stop()


def test_link_events_in_a_runc_container_are_attributed(make_netns, tmp_path, state_root):
    """A veth end moved into a real runc container: its events resolve to that container."""
    import shutil

    from pyinspect.host.discovery import Resolver

    from helpers.runc_helpers import Runc

    if not shutil.which("runc"):
        pytest.skip("runc is not installed")
    runc = Runc(tmp_path)
    p = None
    try:
        cid, pid = runc.run()
        ctr_ns = f"/proc/{pid}/ns/net"
        host = make_netns("pb")
        hi, ci = os.stat(host.path).st_ino, os.stat(ctr_ns).st_ino
        p = LinkProbe(netns=[host.name, ctr_ns], own=False).start()
        host.sh(f"ip link add pb-v0 type veth peer name pb-v1 && ip link set pb-v1 netns {pid}")
        subprocess.run(
            ["nsenter", f"--net={ctr_ns}", "ip", "link", "set", "pb-v1", "name", "eth1"], check=True
        )
        evs = collect(p, 5)
        labels = {hi: "host", ci: "ctr"}
        assert brief(evs, labels) == [
            ("host", "link_add", "pb-v1"),
            ("host", "link_add", "pb-v0"),
            ("host", "link_netns", "pb-v1"),
            ("ctr", "link_netns", "pb-v1"),
            ("ctr", "link_rename", "eth1"),
        ]
        r = Resolver(state_root)
        owners = [r.resolve(netns=e["netns"]) for e in evs]
        assert owners == [None, None, None, (cid, cid), (cid, cid)]
    finally:
        if p is not None:
            p.stop()
        runc.cleanup()


def test_all_netns_follows_anonymous_namespaces(make_netns, probe_factory):
    """all_netns: a process's anonymous netns is watched once it appears and let go
    when its last process exits (our socket alone would keep it alive)."""
    host = make_netns("pb")
    p = probe_factory(own=False, all_netns=True)
    sleeper = subprocess.Popen(["unshare", "--net", "--", "sleep", "1000"])
    try:

        def anon():
            try:
                ino = os.stat(f"/proc/{sleeper.pid}/ns/net").st_ino
            except OSError:
                return None
            return ino if ino != os.stat("/proc/self/ns/net").st_ino else None

        deadline = time.monotonic() + 5
        while not (anon() and anon() in p.watched) and time.monotonic() < deadline:
            p.events(100)
        ino = anon()
        assert ino in p.watched and os.stat(host.path).st_ino in p.watched
        assert p.watched[ino].label == f"netns:{ino}"
        ip("-n", host.name, "link", "add", "pb-a0", "type", "veth", "peer", "name", "pb-a1")
        ip("-n", host.name, "link", "set", "pb-a1", "netns", str(sleeper.pid))
        evs = []
        deadline = time.monotonic() + 5
        while len(evs) < 4 and time.monotonic() < deadline:  # other namespaces are busy too
            evs += [e for e in p.events(100) if e["netns"] in (ino, os.stat(host.path).st_ino)]
        labels = {ino: "ctr", os.stat(host.path).st_ino: "host"}
        assert brief(evs, labels) == [
            ("host", "link_add", "pb-a1"),
            ("host", "link_add", "pb-a0"),
            ("host", "link_netns", "pb-a1"),
            ("ctr", "link_netns", "pb-a1"),
        ]
    finally:
        sleeper.kill()
        sleeper.wait()
    hi = os.stat(host.path).st_ino
    seen = []
    deadline = time.monotonic() + 5
    while ino in p.watched and time.monotonic() < deadline:
        seen += brief([e for e in p.events(100) if e["netns"] == hi], labels)
    assert ino not in p.watched
    # once released, the namespace dies (asynchronously, in the kernel's cleanup work)
    # and takes the veth with it: the host end is deleted too
    deadline = time.monotonic() + 10
    while ("host", "link_del", "pb-a0") not in seen and time.monotonic() < deadline:
        seen += brief([e for e in p.events(100) if e["netns"] == hi], labels)
    assert ("host", "link_del", "pb-a0") in seen
