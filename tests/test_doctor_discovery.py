"""Which container namespaces doctor sees, and what it calls them.

Doctor finds containers with `pyinspect.host.discovery` and pairs them to this namespace's
veths with `pyinspect.host.vethmap`. These tests pin the cases its own namespace walk used to
cover and the shared code must keep: a namespace with no process that only an `ip netns`
name or a bind mount elsewhere (Docker's /run/docker/netns/<id>) keeps alive, an unnamed
one known only through a process, a namespace with no veth to this one (not a container
of this host), and a pyinspect record that is no longer running (OOM-killed).
"""

import os
import subprocess
import uuid

import pytest

from pyinspect import doctor
from pyinspect.probes.netns import in_netns
from pyinspect.runtime import state

pytestmark = pytest.mark.root


def collect(host_ns, root):
    """doctor's snapshot taken from inside `host_ns`, as the CLI does under nsenter."""
    with in_netns(host_ns.path):
        return doctor.HostView.collect(root)


@pytest.fixture
def bind_mounts():
    """Factory: bind_mount(src, dst); every mount is removed at teardown."""
    made = []

    def bind(src, dst):
        dst.touch()
        subprocess.run(["mount", "--bind", str(src), str(dst)], check=True)
        made.append(dst)

    yield bind
    for dst in reversed(made):
        subprocess.run(["umount", str(dst)], capture_output=True, check=False)


@pytest.fixture
def unshared():
    """Factory: a `sleep` in a new, unnamed network namespace; killed at teardown."""
    procs = []

    def start():
        p = subprocess.Popen(["unshare", "--net", "sleep", "600"])
        procs.append(p)
        for _ in range(200):
            if os.stat(f"/proc/{p.pid}/ns/net").st_ino != os.stat("/proc/self/ns/net").st_ino:
                return p.pid
            subprocess.run(["sleep", "0.01"], check=True)
        raise AssertionError("unshare did not make a network namespace")

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_namespaces_are_found_by_name_mount_or_process(
    make_netns, tmp_path, bind_mounts, unshared, state_root
):
    h, named, pinned, lonely = (make_netns(p) for p in ("pdg-h", "pdg-n", "pdg-p", "pdg-l"))
    pid = unshared()
    h.sh(
        f"ip link add pdgv1 type veth peer name eth0 netns {named.name} && "
        f"ip link add pdgv2 type veth peer name eth0 netns {pinned.name} && "
        f"ip link add pdgv3 type veth peer name eth0 netns {pid} && "
        "ip link set pdgv1 up && ip link set pdgv2 up && ip link set pdgv3 up"
    )
    named.sh(
        "ip link add eth1 type veth peer name eth2 && "  # a pair inside: not this host's
        "ip addr add 10.231.0.2/24 dev eth0 && ip link set eth0 up"
    )
    lonely.sh("ip link add eth0 type veth peer name eth1")  # no veth leads from h to it
    # Docker keeps a container's netns as a bind mount in /run/docker/netns/<id>: the same
    # here in a directory of the test's own, with the `ip netns` name gone
    docker_netns = tmp_path / "docker-netns"
    docker_netns.mkdir()
    bind_mounts(pinned.path, docker_netns / "0123abcd4567")
    subprocess.run(["ip", "netns", "del", pinned.name], check=True)

    view = collect(h, state_root)
    found = {c.name: c for c in view.containers}
    assert set(found) == {named.name, "0123abcd4567", f"pid{pid}"}, found.keys()

    n = found[named.name]
    assert (n.source, n.id, n.nspath, n.pids) == ("netns", "", named.path, [])
    assert (n.host_veth.name, n.eth.name, n.ip, n.prefixlen) == ("pdgv1", "eth0", "10.231.0.2", 24)
    assert n.eth.iflink == n.host_veth.ifindex and n.host_veth.iflink == n.eth.ifindex
    assert n.exec_prefix() == ["ip", "netns", "exec", named.name]
    assert {"eth1", "eth2", "eth0", "lo"} <= set(n.links)  # its own links, read inside it

    p = found["0123abcd4567"]
    assert (p.source, p.nspath, p.host_veth.name) == (
        "netns",
        str(docker_netns / "0123abcd4567"),
        "pdgv2",
    )
    assert p.exec_prefix() == ["nsenter", f"--net={docker_netns / '0123abcd4567'}"]

    u = found[f"pid{pid}"]
    assert (u.source, u.nspath, u.pids, u.host_veth.name) == (
        "process",
        f"/proc/{pid}/ns/net",
        [pid],
        "pdgv3",
    )


def test_a_stopped_pyinspect_container_is_still_listed(make_netns, state_root):
    h, c = make_netns("pdg-h"), make_netns("pdg-c")
    h.sh(f"ip link add pdgv1 type veth peer name eth0 netns {c.name}")  # doctor needs a veth
    cid = uuid.uuid4().hex + uuid.uuid4().hex
    network = {
        "mode": "bridge",
        "ip": "10.232.0.5",
        "gateway": "10.232.0.1",
        "ports": [{"proto": "tcp", "host_ip": "", "host_port": 8088, "container_port": 80}],
    }
    rec = state.Container(
        id=cid,
        name="pdg-oom",
        image="busybox",
        status="exited",
        oom_killed=True,
        network=network,
        created=state.now_rfc3339(),
        path=os.path.join(state.containers_dir(state_root), cid),
    )
    os.makedirs(rec.path)
    state.save(rec, static=True)

    view = collect(h, state_root)
    found = {c.name: c for c in view.containers}
    gone = found["pdg-oom"]
    assert (gone.id, gone.source, gone.status, gone.oom_killed) == (
        cid,
        "pyinspect",
        "exited",
        True,
    )
    assert gone.declared == network and gone.nspath == "" and gone.host_veth is None
    from pyinspect.doctor import checks

    hits = list(checks.oom(view))
    assert [(f.check, f.container) for f in hits] == [("oom_killed", "pdg-oom")]
    assert "status exited" in hits[0].summary
