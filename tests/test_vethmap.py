"""The veth map against the kernel's own answer, read independently with ip(8) and sysfs.

The seed's `--net none` recipe is replayed in namespaces the test owns: a "host" netns
with a bridge, a "container" whose netns is anonymous (unshare) and later exposed the
seed's way (a /var/run/netns symlink to /proc/PID/ns/net), a veth made as A/B with B
moved into the container and renamed eth0. Then rename, a move to a third netns, and
deletion, checking the map after every step.
"""

import json
import os
import subprocess
import uuid

import pytest

from pyinspect.host import vethmap
from pyinspect.store import Store

from conftest import Cli

pytestmark = pytest.mark.root


def sh(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def ino(path):
    return os.stat(path).st_ino


def kernel_links(ns_path):
    """{ifindex: {...}} from `ip -j -d link` + `ip -j addr` run inside the netns file."""
    links = json.loads(sh("nsenter", f"--net={ns_path}", "ip", "-j", "-d", "link", "show"))
    addrs = json.loads(sh("nsenter", f"--net={ns_path}", "ip", "-j", "addr", "show"))
    out = {}
    for ln in links:
        out[ln["ifindex"]] = {
            "ifname": ln["ifname"],
            "mac": ln.get("address"),
            "master": ln.get("master"),
            "iflink": ln.get("link_index", ln["ifindex"]),
            "kind": (ln.get("linkinfo") or {}).get("info_kind"),
            "link_netnsid": ln.get("link_netnsid"),
            "addrs": set(),
        }
    for a in addrs:
        for info in a.get("addr_info", []):
            out[a["ifindex"]]["addrs"].add(f"{info['local']}/{info['prefixlen']}")
    return out


def sysfs(nsname, ifname, attr):
    """/sys/class/net/<ifname>/<attr> inside a named netns (`ip netns exec` remounts /sys)."""
    return int(sh("ip", "netns", "exec", nsname, "cat", f"/sys/class/net/{ifname}/{attr}"))


def rows_in(rows, netns_inode):
    return {r["ifindex"]: r for r in rows if r["netns"] == netns_inode}


def assert_matches_kernel(rows, ns_path):
    netns_inode = ino(ns_path)
    mine, truth = rows_in(rows, netns_inode), kernel_links(ns_path)
    assert set(mine) == set(truth), (mine, truth)
    for idx, t in truth.items():
        r = mine[idx]
        assert r["ifname"] == t["ifname"]
        assert r["mac"] == t["mac"]
        assert r["master"] == t["master"]
        assert r["iflink"] == t["iflink"]
        assert r["link_netnsid"] == t["link_netnsid"]
        # IPv6 link-local addresses appear asynchronously (DAD) after a link goes up
        assert {a for a in r["addrs"] if not a.startswith("fe80:")} == {
            a for a in t["addrs"] if not a.startswith("fe80:")
        }
        if t["kind"]:
            assert r["kind"] == t["kind"]


@pytest.fixture
def anon_container():
    """A process in a fresh, anonymous network namespace (`unshare --net`)."""
    procs = []

    def start():
        p = subprocess.Popen(["unshare", "--net", "--", "sleep", "1000"])
        procs.append(p)
        path = f"/proc/{p.pid}/ns/net"
        for _ in range(2000):  # until unshare has exec'd sleep in the new namespace
            try:
                if os.stat(path).st_ino != os.stat("/proc/self/ns/net").st_ino:
                    return p
            except FileNotFoundError:
                pass
            os.sched_yield()
        raise AssertionError("unshare did not enter a new netns")

    yield start
    for p in procs:
        p.kill()
        p.wait()


@pytest.fixture
def netns_link():
    """Seed-style /var/run/netns/<name> symlinks to /proc/PID/ns/net; removed afterwards."""
    made = []

    def link(pid):
        name = f"pb-{uuid.uuid4().hex[:6]}"
        os.makedirs("/var/run/netns", exist_ok=True)
        os.symlink(f"/proc/{pid}/ns/net", f"/var/run/netns/{name}")
        made.append(name)
        return name

    yield link
    for name in made:
        try:
            os.unlink(f"/var/run/netns/{name}")
        except FileNotFoundError:
            pass


def test_seed_net_none_veth_rename_move_delete(make_netns, anon_container, netns_link):
    host = make_netns("pb")  # plays the docker host
    other = make_netns("pb")  # a third namespace to move the veth into
    ctr = anon_container()
    ctr_ns = f"/proc/{ctr.pid}/ns/net"
    h_ino, c_ino, o_ino = ino(host.path), ino(ctr_ns), ino(other.path)

    # seed: ip link add A type veth peer name B; brctl addif docker0 A; ip link set A up
    host.sh(
        "ip link add pb-br0 type bridge && ip link set pb-br0 up && "
        "ip addr add 172.31.250.1/24 dev pb-br0 && "
        "ip link add A type veth peer name B && ip link set A master pb-br0 && "
        "ip link set A up"
    )
    # B into the container by PID, renamed eth0 there, addressed, up
    host.sh(f"ip link set B netns {ctr.pid}")
    sh(
        "nsenter",
        f"--net={ctr_ns}",
        "sh",
        "-c",
        "ip link set B name eth0 && ip addr add 172.31.250.100/24 dev eth0 && ip link set eth0 up",
    )

    # 1. the container's netns is anonymous: found through its process
    rows = vethmap.build()
    a = next(r for r in rows_in(rows, h_ino).values() if r["ifname"] == "A")
    e = next(r for r in rows_in(rows, c_ino).values() if r["ifname"] == "eth0")
    assert a["kind"] == e["kind"] == "veth"
    assert (a["peer_ifname"], a["peer_netns"], a["peer_ifindex"]) == ("eth0", c_ino, e["ifindex"])
    assert (e["peer_ifname"], e["peer_netns"], e["peer_ifindex"]) == ("A", h_ino, a["ifindex"])
    assert a["master"] == "pb-br0" and e["master"] is None
    assert "172.31.250.100/24" in e["addrs"]
    assert e["netns_name"] == f"netns:{c_ino}"
    assert e["peer_netns_name"] == host.name
    assert a["peer_netns_name"] == f"netns:{c_ino}"
    assert vethmap.peer_label(a) == f"eth0@netns:{c_ino}"
    # owning container: the foreign namespace, on both ends of the pair
    assert e["container_id"] == a["container_id"] == f"netns:{c_ino}"
    assert_matches_kernel(rows, host.path)
    assert_matches_kernel(rows, ctr_ns)

    # 2. exposed the seed's way (symlink in /var/run/netns): now named, same answers
    name = netns_link(ctr.pid)
    rows = vethmap.build()
    e = next(r for r in rows_in(rows, c_ino).values() if r["ifname"] == "eth0")
    assert e["netns_name"] == name
    # the seed's loop: eth0's iflink inside the container == A's ifindex on the host
    assert e["iflink"] == sysfs(name, "eth0", "iflink") == a["ifindex"]
    assert a["iflink"] == sysfs(host.name, "A", "iflink") == sysfs(name, "eth0", "ifindex")

    # 3. rename both ends
    host.sh("ip link set A name pb-vethA")
    sh("ip", "-n", name, "link", "set", "eth0", "name", "eth9")
    rows = vethmap.build()
    a = next(r for r in rows_in(rows, h_ino).values() if r["ifname"] == "pb-vethA")
    assert a["peer_ifname"] == "eth9" and a["peer_netns"] == c_ino
    assert_matches_kernel(rows, host.path)
    assert_matches_kernel(rows, ctr_ns)

    # 4. move the container end to a third namespace: it gets a new ifindex there
    sh("ip", "-n", name, "link", "set", "eth9", "netns", other.name)
    rows = vethmap.build()
    a = next(r for r in rows_in(rows, h_ino).values() if r["ifname"] == "pb-vethA")
    moved = next(r for r in rows_in(rows, o_ino).values() if r["ifname"] == "eth9")
    assert not [r for r in rows_in(rows, c_ino).values() if r["ifname"] == "eth9"]
    assert (a["peer_netns"], a["peer_ifname"], a["peer_ifindex"]) == (
        o_ino,
        "eth9",
        moved["ifindex"],
    )
    assert a["peer_netns_name"] == other.name
    assert (moved["peer_netns"], moved["peer_ifindex"]) == (h_ino, a["ifindex"])
    assert a["iflink"] == sysfs(other.name, "eth9", "ifindex")
    for path in (host.path, ctr_ns, other.path):
        assert_matches_kernel(rows, path)

    # 5. delete: both ends gone, the bridge stays with no ports
    host.sh("ip link del pb-vethA")
    rows = vethmap.build()
    assert {r["ifname"] for r in rows_in(rows, h_ino).values()} == {"lo", "pb-br0"}
    assert {r["ifname"] for r in rows_in(rows, o_ino).values()} == {"lo"}
    for path in (host.path, other.path):
        assert_matches_kernel(rows, path)


def test_same_ifindex_in_many_namespaces_resolves_by_nsid(make_netns):
    """Every container's eth0 has the same ifindex; only the nsid tells them apart."""
    host = make_netns("pb")
    ctrs = [make_netns("pb") for _ in range(4)]
    for i, c in enumerate(ctrs):
        host.sh(
            f"ip link add pb-h{i} type veth peer name pb-c{i} && ip link set pb-c{i} netns {c.name}"
        )
        c.sh(f"ip link set pb-c{i} name eth0")
    rows = vethmap.build()
    h = rows_in(rows, ino(host.path))
    ifindexes = set()
    for i, c in enumerate(ctrs):
        hr = next(r for r in h.values() if r["ifname"] == f"pb-h{i}")
        assert hr["peer_netns"] == ino(c.path) and hr["peer_ifname"] == "eth0"
        assert hr["peer_netns_name"] == c.name
        cr = rows_in(rows, ino(c.path))[hr["peer_ifindex"]]
        assert cr["peer_ifname"] == f"pb-h{i}" and cr["peer_netns"] == ino(host.path)
        assert hr["iflink"] == sysfs(c.name, "eth0", "ifindex")
        ifindexes.add(cr["ifindex"])
        assert_matches_kernel(rows, c.path)
    assert_matches_kernel(rows, host.path)
    # (ifindex reuse is what makes the seed's grep ambiguous; the nsid is not)
    assert len(ifindexes) <= 4


def test_veth_pair_inside_one_namespace(make_netns):
    ns = make_netns("pb")
    ns.sh("ip link add pb-x type veth peer name pb-y")
    rows = rows_in(vethmap.build(), ino(ns.path))
    x = next(r for r in rows.values() if r["ifname"] == "pb-x")
    assert x["peer_ifname"] == "pb-y" and x["peer_netns"] == ino(ns.path)
    assert x["link_netnsid"] is None
    assert vethmap.peer_label(x) == "pb-y"


def test_map_cli_and_snapshot(make_netns, state_root):
    host, ctr = make_netns("pb"), make_netns("pb")
    host.sh(f"ip link add pb-h type veth peer name pb-c && ip link set pb-c netns {ctr.name}")
    cli = Cli(state_root)
    out = json.loads(cli("map", "--json").stdout)
    h = next(r for r in out if r["netns"] == ino(host.path) and r["ifname"] == "pb-h")
    assert h["peer_ifname"] == "pb-c" and h["peer_netns_name"] == ctr.name
    text = cli("map", "--save").stdout
    assert text.splitlines()[0].split() == list(vethmap.COLUMNS)
    line = next(ln for ln in text.splitlines() if " pb-h " in ln)
    assert line.split()[0] == host.name and f"pb-c@{ctr.name}" in line
    with Store(state_root / "pyinspect.db") as store:
        saved = vethmap.latest(store)
    s = next(r for r in saved if r["netns"] == ino(host.path) and r["ifname"] == "pb-h")
    assert s["peer_ifname"] == "pb-c" and s["peer_netns"] == ino(ctr.path)


def test_peer_with_the_same_ifindex_in_another_namespace(make_netns):
    """`ip link add up0 type veth peer name eth0 netns X`: both ends are often ifindex 2."""
    a, b = make_netns("pb"), make_netns("pb")
    a.sh(f"ip link add pb-up0 type veth peer name eth0 netns {b.name}")
    rows = vethmap.build()
    up = next(r for r in rows_in(rows, ino(a.path)).values() if r["ifname"] == "pb-up0")
    e = next(r for r in rows_in(rows, ino(b.path)).values() if r["ifname"] == "eth0")
    assert up["ifindex"] == e["ifindex"]  # the case that looks like "no peer" in sysfs
    assert (up["peer_ifname"], up["peer_netns"]) == ("eth0", ino(b.path))
    assert (e["peer_ifname"], e["peer_netns"]) == ("pb-up0", ino(a.path))
    assert up["iflink"] == sysfs(b.name, "eth0", "ifindex")
    assert_matches_kernel(rows, a.path)
    assert_matches_kernel(rows, b.path)


def test_pyinspect_containers_bridge_and_seed_net_none(make_netns, state_root):
    """Real `pyinspect run` containers: a bridge one, and a `--net none` one wired by hand."""
    host = make_netns("pb")
    cli = Cli(state_root, netns=host.name)
    web, bare = f"pb-{uuid.uuid4().hex[:8]}", f"pb-{uuid.uuid4().hex[:8]}"
    try:
        cli("run", "-d", "--name", web, "busybox", "sleep", "600")
        cli("run", "-d", "--net", "none", "--name", bare, "busybox", "sleep", "600")
        info = json.loads(cli("inspect", web, bare).stdout)
        net = info[0]["NetworkSettings"]["Networks"]["bridge"]
        web_pid, bare_pid = info[0]["State"]["Pid"], info[1]["State"]["Pid"]
        web_id, bare_id = info[0]["Id"], info[1]["Id"]
        # the seed's --net none recipe, with the container found by its pid
        host.sh(
            f"ip link add A type veth peer name B && ip link set A master {net_bridge(info)}"
            f" && ip link set A up && ip link set B netns {bare_pid}"
        )
        sh(
            "nsenter",
            f"--net=/proc/{bare_pid}/ns/net",
            "sh",
            "-c",
            "ip link set B name eth0 && ip addr add 172.29.250.100/16 dev eth0 && "
            "ip link set eth0 up",
        )

        rows = json.loads(cli("map", "--json").stdout)
        h = ino(host.path)
        wnet, bnet = ino(f"/proc/{web_pid}/ns/net"), ino(f"/proc/{bare_pid}/ns/net")
        hv = next(r for r in rows if r["netns"] == h and r["ifname"] == net["HostVeth"])
        assert hv["ifindex"] == net["HostVethIfindex"] and hv["master"] == net_bridge(info)
        assert (hv["peer_ifname"], hv["peer_netns"]) == ("eth0", wnet)
        assert (hv["container_id"], hv["container_name"]) == (web_id, web)
        we = next(r for r in rows if r["netns"] == wnet and r["ifname"] == "eth0")
        assert we["mac"] == net["MacAddress"] and f"{net['IPAddress']}/16" in we["addrs"]
        assert we["container_name"] == web and we["peer_ifindex"] == hv["ifindex"]
        a = next(r for r in rows if r["netns"] == h and r["ifname"] == "A")
        be = next(r for r in rows if r["netns"] == bnet and r["ifname"] == "eth0")
        assert (a["peer_ifname"], a["peer_netns"], a["container_name"]) == ("eth0", bnet, bare)
        assert (be["peer_ifname"], be["peer_netns"]) == ("A", h)
        assert (be["container_id"], be["container_name"]) == (bare_id, bare)
        assert be["netns_name"] == bare  # no /var/run/netns link: named after its owner
        for path in (host.path, f"/proc/{web_pid}/ns/net", f"/proc/{bare_pid}/ns/net"):
            assert_matches_kernel(rows, path)
        # -c: only that container's interfaces (its eth0, and the host end of its veth)
        only = json.loads(cli("map", "-c", bare, "--json", "--all").stdout)
        assert {(r["netns"], r["ifname"]) for r in only} == {(bnet, "lo"), (bnet, "eth0"), (h, "A")}
        missing = cli("map", "-c", "pb-nosuch", check=False)
        assert missing.returncode == 3 and missing.stderr.count("\n") == 1
        assert "no interfaces for container 'pb-nosuch'" in missing.stderr
    finally:
        cli("rm", "-f", web, bare, check=False)


def net_bridge(info):
    return info[0]["NetworkSettings"]["Bridge"]


def test_unprivileged_map_says_what_it_could_not_read(make_netns, tmp_path):
    ns = make_netns("pb")
    ns.sh("ip link add pb-priv type bridge")
    from conftest import PYINSPECT

    proc = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            PYINSPECT,
            "--root",
            str(tmp_path / "nobody"),
            "map",
        ],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "could not be read (Operation not permitted); run as root" in proc.stderr
    assert "pb-priv" not in proc.stdout and proc.stdout.startswith("NETNS")
